"""Known third-party noise is silenced by its own text; anything else from the same sources still shows."""
import logging
import warnings

from refusal.utils.quiet import LIGHTNING_TIP, silence_known_noise


def test_the_lightning_tip_and_the_leafspec_warning_are_dropped_and_nothing_else(caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        silence_known_noise()  # idempotent: one filter
        name, prefix = LIGHTNING_TIP
        logger = logging.getLogger(name)
        assert sum(getattr(f, "prefix", None) == prefix for f in logger.filters) == 1
        with caplog.at_level(logging.INFO, logger=name):
            logger.info(prefix + " try installing something")
            logger.info("GPU available: False, used: False")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use something else", FutureWarning)
        warnings.warn("a new deprecation nobody has looked at", FutureWarning)
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    assert [str(w.message) for w in caught] == ["a new deprecation nobody has looked at"]
