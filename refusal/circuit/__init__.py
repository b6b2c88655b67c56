"""Causal sparse feature circuits: SAEs spliced into the model (splice, model), nodes (nodes), per-prompt
attribution (attribution, patch, metric), edges, node selection (select), circuits as JSON (circuit, discovery),
comparison across categories (compare), permutation tests and bootstrap (stats), the verdict rules of discovery
and transfer and their combination (verdict), the PNG plots of discovery and evaluation (plots) and the discovery
summary (summary)."""
from refusal.circuit.attribution import METHODS, Attributions, attribute, node_space
from refusal.circuit.circuit import Circuit, circuit_filename
from refusal.circuit.model import CircuitModel
from refusal.circuit.nodes import AGGREGATIONS, POSITIONS, NodeSpace
from refusal.circuit.patch import PATCHES, PatchSource
from refusal.circuit.select import Selection
from refusal.circuit.splice import HookedSAE, splice
from refusal.circuit.verdict import DecisionRule

__all__ = ["AGGREGATIONS", "Attributions", "Circuit", "CircuitModel", "DecisionRule", "HookedSAE", "METHODS",
           "NodeSpace", "PATCHES", "POSITIONS", "PatchSource", "Selection", "attribute", "circuit_filename",
           "node_space", "splice"]
