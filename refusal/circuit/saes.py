"""Load the SAEs to splice and refuse any that does not fit the loaded model (model name, hook, width)."""
from __future__ import annotations

from pathlib import Path

from refusal.circuit.splice import HookedSAE
from refusal.errors import ConfigError
from refusal.model.hooks import hook_width, parse_hook_name
from refusal.model.loading import LoadedModel
from refusal.sae.io import WEIGHTS_FILE, load_saelens
from refusal.utils.io import file_hash


def load_hooked_saes(dirs: list[tuple[str | None, str | Path]], loaded: LoadedModel) -> dict[str, HookedSAE]:
    """``dirs``: (expected hook or None, SAELens dir). Returns {hook: HookedSAE} in model order."""
    if not dirs:
        raise ConfigError("no SAE dirs given; set train_dir=<train run dir> or sae_dirs=[<SAELens dir>, ...]")
    out: dict[str, HookedSAE] = {}
    for expected, d in dirs:
        sae, meta = load_saelens(d, device=loaded.device)
        hook, model_name = meta.get("hook_name"), meta.get("model_name")
        if model_name != loaded.name:
            raise ConfigError(f"SAE {d} was trained on model {model_name!r} but the loaded model is {loaded.name!r}; "
                              "choose the matching model=... or SAEs of this model")
        if not hook:
            raise ConfigError(f"SAE {d} has no hook_name in cfg.json; it cannot be spliced")
        if expected is not None and hook != expected:
            raise ConfigError(f"SAE {d} is for hook {hook!r} but the train manifest lists it for {expected!r}")
        spec = parse_hook_name(hook, loaded.n_layers)
        width = hook_width(loaded.model, hook)
        if sae.d_in != width:
            raise ConfigError(f"SAE {d} has d_in={sae.d_in} but {loaded.name!r} has width {width} at {hook}")
        if spec.name in out:
            raise ConfigError(f"two SAEs for hook {spec.name!r}: {out[spec.name].path} and {d}")
        sae.requires_grad_(False)
        out[spec.name] = HookedSAE(spec.name, sae, str(d),
                                   file_hash(Path(d) / WEIGHTS_FILE))
    order = sorted(out, key=lambda h: parse_hook_name(h, loaded.n_layers))
    return {h: out[h] for h in order}
