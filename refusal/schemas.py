"""Registers the schema of every config group in Hydra's ConfigStore (see refusal/config.py). Imported by the entry
points (through refusal.tasks.runner) and by the tests before any config is composed."""
import importlib

# one module per package that owns a config group; each registers its schema(s) when imported
SCHEMA_MODULES: tuple[str, ...] = (
    "refusal.activations.config",
    "refusal.behavior.config",
    "refusal.circuit.config",
    "refusal.data.config",
    "refusal.evaluation.config",
    "refusal.logger.config",
    "refusal.model.config",
    "refusal.organism.config",
    "refusal.organism.planted_config",
    "refusal.sae.config",
    "refusal.tasks.config",
)

for _module in SCHEMA_MODULES:
    importlib.import_module(_module)
