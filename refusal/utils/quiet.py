"""Known-harmless third-party messages, silenced where they arise: each by its own text (never a whole warning
category or logger), so an error or a new warning still shows. Called by every entry point (``run_task``)."""
from __future__ import annotations

import logging
import warnings

# Lightning logs an advertisement for its hosted logger whenever a Trainer is built without it
LIGHTNING_TIP = ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging")
WARNINGS = (
    # Lightning's pytree helper still builds torch's deprecated LeafSpec (its own code, nothing we can change)
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # our batches come ready-made from one process: the DataLoader length check does not apply
    r".*IterableDataset.*__len__.*",
)


class DropPrefix(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def silence_known_noise() -> None:
    """Install the filters (idempotent)."""
    name, prefix = LIGHTNING_TIP
    logger = logging.getLogger(name)
    if not any(isinstance(f, DropPrefix) and f.prefix == prefix for f in logger.filters):
        logger.addFilter(DropPrefix(prefix))
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=message)
