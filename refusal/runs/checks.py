"""The check every later stage makes against the runs it reads: the model loaded now is the one they used."""
from __future__ import annotations

from refusal.errors import ConfigError


def check_model(loaded, train_manifest: dict | None = None, discover_manifest: dict | None = None) -> None:
    """A one-line error when the train or discover run used another model (by name) or the discover run other
    weights (by hash) than ``loaded``."""
    for what, manifest in (("train", train_manifest), ("discover", discover_manifest)):
        if manifest and manifest.get("model") not in (None, loaded.name):
            raise ConfigError(f"the {what} run used model {manifest.get('model')!r} but the loaded model is "
                              f"{loaded.name!r}; pass that run's model (model=...)")
    want = (discover_manifest or {}).get("weights_hash")
    if want and want != loaded.weights_hash:
        raise ConfigError(f"the discover run used model weights {want} but the loaded model has {loaded.weights_hash}; "
                          "pass the discover run's model config")
