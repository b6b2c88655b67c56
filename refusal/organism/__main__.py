"""``python -m refusal.organism <model.yaml>``: build (or measure again) the organism a saved ``model`` config
describes, in this process; child.py runs it with MKL pinned. Exit 3 with the message on the last line for bad
input."""
from __future__ import annotations

import logging
import sys

from omegaconf import OmegaConf

from refusal.errors import ConfigError
from refusal.organism.build import ensure_built
from refusal.organism.child import EXIT_CONFIG, die_with_parent
from refusal.utils.quiet import silence_known_noise


def main(argv: list[str]) -> int:
    die_with_parent()
    silence_known_noise()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
    if len(argv) != 1:
        print("usage: python -m refusal.organism <model.yaml>")
        return 2
    try:
        ensure_built(OmegaConf.load(argv[0]))
    except ConfigError as err:
        print(str(err).replace("\n", " "), flush=True)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
