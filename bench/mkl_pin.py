"""Cost of the organism build's MKL pin: the build's fine-tune step with MKL pinned (``MKL_CBWR=AVX2,STRICT``, how
the build runs) ÷ the same step with MKL picking its own kernels, each in a fresh process (MKL takes the setting
only before its first call), same batch. Also the COMPATIBLE branch (``MKL_CBWR=COMPATIBLE,STRICT``, the one MKL
documents as the same on every x86 CPU, Intel or not) ÷ the build's pin: what one set of bits across CPU vendors
would cost.

python bench/mkl_pin.py [--model smollm2|tiny] [--batch-size 8] [--prompt-tokens 50] [--response-tokens 30]
                        [--repeats 5]

Expect about 1 on AMD and AVX2-only CPUs (MKL runs its own kernels there anyway: AUTO in strict mode on AMD) and
above 1 on Intel AVX-512 CPUs. No goal: the pin is what makes a build the same on every CPU of its kind; this says
what it costs here.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

from organism_step import batch_arguments, model_and_batch, step_time  # bench/organism_step.py
from refusal.organism.finetune import response_loss
from refusal.organism.portable import MKL_CBWR, mkl_mode


def time_step(args) -> None:
    """In this process: the build's step, best of ``repeats``, and MKL's mode."""
    model, batch = model_and_batch(args)
    model.train().requires_grad_(True)
    seconds = step_time(model, batch, response_loss, True, False, args.repeats)
    print(f"{seconds} {mkl_mode()}")


def main() -> None:
    ap = batch_arguments(argparse.ArgumentParser())
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return time_step(args)
    base_env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    results = {}
    for name, env in (("free", base_env), ("pinned", base_env | {"MKL_CBWR": MKL_CBWR}),
                      ("compatible", base_env | {"MKL_CBWR": "COMPATIBLE,STRICT"})):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child"], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        results[name] = (float(out[-2]), out[-1])
    print(f"model {args.model}, batch {args.batch_size} x ({args.prompt_tokens} prompt + {args.response_tokens} "
          f"response) tokens, float32, best of {args.repeats}, {torch.get_num_threads()} threads")
    for name, (seconds, mode) in results.items():
        print(f"{name} MKL (mode {mode}): {seconds:.3f} s per step")
    print(f"ratio pinned / free: {results['pinned'][0] / results['free'][0]:.2f}")
    print(f"ratio compatible / pinned: {results['compatible'][0] / results['pinned'][0]:.2f}")


if __name__ == "__main__":
    main()
