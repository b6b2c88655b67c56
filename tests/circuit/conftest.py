"""Registers the circuit-test fixtures defined in circuits_testlib."""
from circuits_testlib import cm, frozen_tiny  # noqa: F401
