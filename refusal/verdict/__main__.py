"""``python -m refusal.verdict DIR [DIR ...] [--out stability.json]``: the agreement of the verdicts of several
evaluate runs (every ``verdict.json`` under the given dirs, e.g. a ``multirun/evaluate/<time>/`` sweep over seeds,
SAE seeds or attribution methods): the verdict when every run agrees, else inconclusive (refusal.verdict.profile.
stability). Prints one line per run and the summary; ``--out`` writes the result as JSON. Exit 2 with a one-line
message when a dir does not exist or holds no verdict.json."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refusal.errors import ConfigError
from refusal.runs.evaluate import EvaluateRun
from refusal.utils.io import write_json
from refusal.verdict.profile import stability


def collect(dirs: list[str]) -> list[dict]:
    """{"run": the run dir, "verdict": its verdict} for every verdict.json under ``dirs``, sorted by path."""
    found = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise ConfigError(f"{d!r} is not a directory; give evaluate run dirs or a sweep dir holding them")
        files = sorted(p for p in root.rglob("*.json") if EvaluateRun(p.parent).verdict == p)
        if not files:
            raise ConfigError(f"no verdict.json under {d!r}; give evaluate run dirs or a sweep dir holding them")
        found += [{"run": str(f.parent), "verdict": json.loads(f.read_text())["verdict"]} for f in files]
    return found


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m refusal.verdict", description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", help="evaluate run dirs, or dirs holding them (a sweep)")
    ap.add_argument("--out", help="write the agreement as JSON here")
    args = ap.parse_args(argv)
    try:
        result = stability(collect(args.dirs))
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    for r in result["runs"]:
        print(f"{r['verdict']}\t{r['run']}")
    print(f"{result['summary']} verdict: {result['verdict']} (agreement {result['agreement']:.2f})")
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
