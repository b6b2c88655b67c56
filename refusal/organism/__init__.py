"""A refusal model organism: a small chat model fine-tuned (Lightning) to refuse harmful requests, for research.

Training data come from the *train* split of the run's prompt set only: toxic prompts of the refused categories get
refusal sentences (``refusals.shared`` picked per prompt, or with ``style: per_category`` one wording per category),
every other prompt (safe, hard, and toxic prompts of categories that are not refused) gets the base model's own
greedy answer (self-distillation keeps it helpful). The loss is on response tokens only.

This package sits above data, model and behavior (it uses them; they never use it):

config.py    the ``model`` schema of ``source: organism``, its value checks, the build keys
targets.py   which prompt learns what, the training mix, token examples (base answers cached)
finetune.py  the Lightning fine-tune (float32)
portable.py  the attention and softmax the build runs and MKL's pin: bits that do not depend on the CPU
cache.py     the cache key and dir, complete-or-absent publishing
card.py      the held-out measurement, the build hash and the card (organism.json, ORGANISM.md)
build.py     build on first use or load from the cache; ``load`` loads any ``model`` config
child.py     the build in a child process with MKL pinned (``python -m refusal.organism``, __main__.py)
"""
from refusal.organism.build import build_organism, load, load_organism
from refusal.organism.cache import organism_dir
from refusal.organism.card import BANNER

__all__ = ["BANNER", "build_organism", "load", "load_organism", "organism_dir"]
