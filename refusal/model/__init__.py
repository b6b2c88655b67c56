from refusal.model.chat import ChatFormatter, EncodedBatch
from refusal.model.hooks import HookSpec, capture_activations, expand_hook_names, parse_hook_name, parse_layers
from refusal.model.loading import LoadedModel, load_model

__all__ = [
    "ChatFormatter",
    "EncodedBatch",
    "HookSpec",
    "LoadedModel",
    "capture_activations",
    "expand_hook_names",
    "load_model",
    "parse_hook_name",
    "parse_layers",
]
