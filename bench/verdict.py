"""The verdict on organisms whose answer is known by construction: train -> discover -> evaluate on each, blind to
how it was made, then a confusion table (designed verdict x verdict given) and the recovered convergence layer
against the planted one.

python bench/verdict.py [--cases wired|planted|organism] [--seeds 0 1] [--sae exact trained] [--sae-seeds 0 1]
                        [--methods atp ig] [--out DIR] [--sae-steps 1000] [--size K] [--designs D ...]
                        [--model OVERRIDE ...]

Per organism (design x seed), the runs over SAE seeds and attribution methods are one stability sweep: the
organism's verdict is their agreement (refusal.verdict.stability: inconclusive unless every run agrees).

Cases:
- wired (seconds each): tiny models whose refusal is wired by hand (refusal/organism/wired.py), designs monolithic,
  modular and gated, one random model per seed, at layers 0-2 (the writer is in layer 1), each with two
  dictionaries: ``exact`` (the signed-basis SAE, one latent per wired dimension: tests discover + evaluate) and
  ``trained`` (TopK SAEs trained by train.py: the whole pipeline).
- planted (about an hour each on a 2-core CPU): SmolLM2 planted organisms (conf/model/planted_*.yaml) built
  with model.seed = each seed; SAEs at four layers around the adapters.
- organism (about 8 minutes per organism seed, then about 5 per run): the refuse-all organism
  (conf/model/smollm2_organism.yaml) with model.seed = each seed, the demo's SAE (layer 15), circuit and evaluation
  settings. Its answer is not known by construction, so no confusion table: its verdict is the agreement of every
  run over organism seeds, SAE seeds and attribution methods (the stability issue 14 asks of the real model).
In every case the prompts' split is fixed (data.seed=0): an SAE seed (seed=) changes the SAE only, an organism seed
(model.seed) the organism's fine-tune only.
Every run's dirs stay under --out (runs resume from what is there; delete a case's dir to redo it).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import refusal.schemas  # noqa: F401  (config schemas)
from refusal.organism.cache import CARD_JSON, organism_dir
from refusal.organism.wired import DESIGNS, WRITER_LAYER, exact_train_dir, save_wired, wired_prompts
from refusal.runs import DiscoverRun, EvaluateRun, TrainRun
from refusal.runs.saved import SAVED_CONFIG
from refusal.tasks.discover import discover
from refusal.tasks.evaluate import evaluate
from refusal.tasks.train import train
from refusal.utils.io import stable_hash
from refusal.verdict import stability
from refusal.verdict.final import ran
from refusal.verdict.rules import VERDICTS

CONF = Path(__file__).resolve().parents[1] / "conf"
DESIGNED = {"monolithic": "monolithic", "modular": "modular", "mixed": "mixed", "gated": "monolithic"}
PLANTED_LAYERS = [6, 10, 15, 20]  # analysed layers; the adapters' layers come from the organism's card


def compose_task(task: str, out: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(task, overrides=["logger=csv", f"paths.output_dir={out}", f"paths.root_dir={out}", *overrides])


def table_data(path: Path) -> dict:
    """A data config reading a prompt file with its own splits."""
    return {"seed": 0, "taxonomy": {}, "categories": None, "balance": "use_all", "max_per_category": None,
            "min_toxic_per_category": 1, "split_fractions": {"train": 0.45, "val": 0.1, "test": 0.45},
            "sources": [{"_target_": "refusal.data.sources.table", "path": str(path), "prompt_column": "prompt",
                         "category_column": "category", "label_column": "label", "id_column": "id",
                         "source_name": "wired"}]}


def wired_case(root: Path, design: str, seed: int, steps: int, sae: str) -> dict:
    """Overrides per task, the data config and the planted layer of one wired case (the model dir is written
    once; with the exact SAE the train dir is written here, not trained)."""
    model = root / "model"
    if not (model / "config.json").is_file():
        save_wired(model, design, seed=seed)
    prompts = root / "prompts.jsonl"
    wired_prompts().to_jsonl(prompts)
    common = ["model=hf", f"model.path={model}", f"model.name=wired-{design}-{seed}", "model.device=cpu"]
    if sae == "exact" and not TrainRun(root / "train").manifest.is_file():
        exact_train_dir(root / "train", wired_prompts(), [f"blocks.{i}.hook_resid_post" for i in range(3)],
                        f"wired-{design}-{seed}")
    return {"train": [*common, "activations.layers=[0,1,2]", "sae.expansion_factor=4", "sae.k_percent=0.125",
                      f"trainer.max_steps={steps}",
                      "trainer.log_every_n_steps=50", "activations.loader.batch_size=256",
                      "activations.loader.samples_per_epoch=12800", "~behavior"],
            "discover": common, "evaluate": common, "data": table_data(prompts), "layer": WRITER_LAYER}


def planted_case(kind: str, seed: int, model_overrides: list[str]) -> dict:
    """The planted organism (built by train.py on first use) with the demo's SAE, circuit and evaluation settings
    at four layers; its planted layer is read from its card afterwards. discover and evaluate take the model (and
    its data) from the train run."""
    common = [f"model=planted_{kind}", f"model.seed={seed}", "data.seed=0", *model_overrides]  # one split
    return {"train": [*common, "experiment=demo", f"activations.layers=[{','.join(map(str, PLANTED_LAYERS))}]"],
            "discover": ["circuit=demo"], "evaluate": ["evaluation=demo"], "data": None, "layer": None}


def organism_case(seed: int, accept_design_miss: bool, model_overrides: list[str]) -> dict:
    """The refuse-all organism built with model.seed = seed, analysed as `make demo` does (layer 15); discover and
    evaluate take the model from the train run. ``accept_design_miss``: use a build that misses its behaviour check
    (its card says so; the run's row records the check)."""
    common = ["model=smollm2_organism", f"model.seed={seed}", "data.seed=0",  # data.seed: one split for every run
              *(["model.accept_design_miss=true"] if accept_design_miss else []), *model_overrides]
    return {"train": [*common, "experiment=demo"], "discover": ["circuit=demo"], "evaluate": ["evaluation=demo"],
            "data": None, "layer": None}


def shared_carries(ev: Path) -> dict:
    """Per basis, the share of the counted categories' refusal the shared part carries where it carries most."""
    result = json.loads(EvaluateRun(ev).stage("bottleneck").read_text())
    found = {"features": result.get("model"), "directions": (result.get("directions") or {}).get("model")}
    out = {}
    for basis, model in found.items():
        share = ((model or {}).get("best_layer") or {}).get("mean_shared_share")
        if share:
            out[basis] = [round(share[k], 3) for k in ("estimate", "low", "high")]
    return out


def run_case(root: Path, case: dict, size: int, sae_seed: int | None, method: str) -> dict:
    """train -> discover -> evaluate in ``root`` (each skipped when its output is there); the verdict.json. The
    train dir depends on the SAE seed, the discover and evaluate dirs also on the attribution method."""
    def cfg(task, out, *more):
        c = compose_task(task, out, [*case[task], *more])
        if case["data"] is not None and task == "train":  # discover and evaluate read the train run's prompts
            c.data = OmegaConf.merge(c.data, case["data"])
        if task == "train" and not TrainRun(out).manifest.is_file():  # saved as hydra would (a run train() makes;
            # an exact-SAE train dir keeps its own prompts): discover and evaluate adopt its model and data
            (out / SAVED_CONFIG).parent.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(c, out / SAVED_CONFIG)
        return c

    tag = "exact" if sae_seed is None else f"seed{sae_seed}"
    tr = root / ("train" if sae_seed is None else f"train-{tag}")
    di, ev = root / f"discover-{tag}-{method}", root / f"evaluate-{tag}-{method}-size{size}"
    seed = [] if sae_seed is None else [f"seed={sae_seed}"]  # an exact SAE trains nothing: no seed to set
    train_cfg = cfg("train", tr, "ckpt_path=last", *seed)  # (re)saves its config
    if not TrainRun(tr).manifest.is_file():
        train(train_cfg)
    if not DiscoverRun(di).summary.is_file():
        discover(cfg("discover", di, f"train_dir={tr}", f"circuit.attribution_method={method}"))
    transfer_file = EvaluateRun(ev).stage("transfer")
    if not (EvaluateRun(ev).verdict.is_file() and transfer_file.is_file()
            and ran(json.loads(transfer_file.read_text()))):
        evaluate(cfg("evaluate", ev, f"train_dir={tr}", f"discover_dir={di}", "evaluation.stages=[bottleneck,transfer]",
                     f"evaluation.bottleneck.size={size}", f"evaluation.transfer.size={size}"))
    transfer = json.loads(transfer_file.read_text())
    return {**json.loads(EvaluateRun(ev).verdict.read_text()), "carries": shared_carries(ev),
            "transfer": (transfer.get("decision") or {}).get("verdict")}


def organism_card(case: dict) -> dict:
    """The organism's card (organism.json) of a case's train config; {} where there is none (a wired model)."""
    card = organism_dir(compose_task("train", Path("."), case["train"]).model) / CARD_JSON
    return json.loads(card.read_text()) if card.is_file() else {}


def planted_layer(card: dict) -> int | None:
    """The first adapter layer on a planted organism's card (the layer its refusal is written from); None for
    another organism."""
    layers = (card.get("design") or {}).get("plant", {}).get("layers")
    return min(layers) if layers else None


def design_check(card: dict) -> str | None:
    """The organism's design-check word on its card (None: no organism card)."""
    return (card.get("check") or {}).get("word")


def confusion(rows: list[dict]) -> str:
    lines = ["designed \\ given | " + " | ".join(VERDICTS), "---|" + "---|" * len(VERDICTS)]
    for want in ("monolithic", "modular", "mixed"):
        got = [r["verdict"] for r in rows if DESIGNED[r["design"]] == want]
        if got:
            lines.append(f"{want} | " + " | ".join(str(got.count(v)) for v in VERDICTS))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", choices=["wired", "planted", "organism"], default="wired")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=Path("outputs/bench_verdict"))
    ap.add_argument("--sae", choices=["exact", "trained"], nargs="+", default=["exact", "trained"],
                    help="wired cases: the dictionaries")
    ap.add_argument("--sae-steps", type=int, default=1000, help="wired cases: SAE training steps")
    ap.add_argument("--sae-seeds", type=int, nargs="+", default=[0, 1], help="trained SAEs: the run seeds (seed=)")
    ap.add_argument("--methods", nargs="+", default=["atp", "ig"], help="circuit.attribution_method values")
    ap.add_argument("--size", type=int, default=None, help="evaluation.bottleneck.size (default: 4 wired, 16 planted)")
    ap.add_argument("--designs", nargs="+", default=None, choices=[*DESIGNS, "mixed", "refuse-all"],
                    help="only these designs of the case (default: every one)")
    ap.add_argument("--model", nargs="+", default=[], metavar="OVERRIDE",
                    help="planted and organism cases: extra model overrides, e.g. 'model.categories=[a,b]' (the "
                         "case's dirs get a suffix hashed from them)")
    ap.add_argument("--accept-design-miss", action="store_true",
                    help="organism cases: analyse a build that misses its behaviour check (recorded per run)")
    args = ap.parse_args(argv)
    designs = args.designs or {"wired": DESIGNS, "planted": ("monolithic", "modular", "mixed", "gated"),
                               "organism": ("refuse-all",)}[args.cases]
    if args.model and args.cases == "wired":
        ap.error("--model applies to the planted and organism cases (a wired model is not a config)")
    size = args.size or (4 if args.cases == "wired" else 16)
    rows, groups = [], []
    saes = args.sae if args.cases == "wired" else ["trained"]
    for sae in saes:
        for design in designs:
            for seed in args.seeds:
                root = args.out / args.cases / sae / (f"{design}-{seed}" + (f"-{stable_hash(args.model)[:8]}"
                                                                            if args.model else ""))
                root.mkdir(parents=True, exist_ok=True)
                case = (wired_case(root, design, seed, args.sae_steps, sae) if args.cases == "wired"
                        else organism_case(seed, args.accept_design_miss, args.model) if args.cases == "organism"
                        else planted_case(design, seed, args.model))
                runs = []
                for sae_seed in [None] if sae == "exact" else args.sae_seeds:
                    for method in args.methods:
                        start = time.time()
                        v = run_case(root, case, size, sae_seed, method)
                        card = organism_card(case) if case["layer"] is None else {}
                        layer = case["layer"] if case["layer"] is not None else planted_layer(card)
                        runs.append({"sae": sae, "design": design, "seed": seed, "sae_seed": sae_seed,
                                     "method": method, "verdict": v["verdict"], "by_basis": v.get("by_basis"),
                                     "convergence": v.get("convergence_layer"), "planted_layer": layer,
                                     "carries": v["carries"], "transfer": v["transfer"],
                                     "design_check": design_check(card),
                                     "seconds": round(time.time() - start, 1)})
                        print(json.dumps(runs[-1]), flush=True)
                        with open(args.out / args.cases / "runs.jsonl", "a") as f:  # read by later invocations
                            f.write(json.dumps(runs[-1]) + "\n")
                agreed = stability([{"run": f"sae seed {r['sae_seed']}, {r['method']}", "verdict": r["verdict"]}
                                    for r in runs])
                transfer = stability([{"run": f"sae seed {r['sae_seed']}, {r['method']}", "verdict": r["transfer"]}
                                      for r in runs])
                groups.append({**runs[0], "verdict": agreed["verdict"], "agreement": agreed["agreement"],
                               "runs": len(runs), "transfer": transfer["verdict"]})
                rows += runs
    if args.cases == "organism":  # every run recorded under --out, this invocation's and earlier ones' (last wins)
        recorded = {}
        for line in (args.out / args.cases / "runs.jsonl").read_text().splitlines():
            r = json.loads(line)
            recorded[(r["seed"], r["sae_seed"], r["method"])] = r
        rows = list(recorded.values())
        overall = stability([{"run": f"organism seed {r['seed']}, sae seed {r['sae_seed']}, {r['method']}",
                              "verdict": r["verdict"]} for r in rows])
        for r in sorted(rows, key=lambda r: (r["seed"], r["sae_seed"], r["method"])):
            print(f"organism seed {r['seed']} (design check: {r.get('design_check')}), SAE seed {r['sae_seed']}, "
                  f"{r['method']}: {r['verdict']} {r['by_basis']}; shared part carries {r['carries']}; transfer rule "
                  f"{r.get('transfer')}")
        print("\nper organism seed: " + ", ".join(f"seed {g['seed']} {g['verdict']} ({g['agreement']:.2f} of "
                                                 f"{g['runs']})" for g in groups))
        print(f"over every run ({len(rows)}): {overall['verdict']}, agreement {overall['agreement']:.2f}")
        return 0
    for sae in saes:
        mine = [g for g in groups if g["sae"] == sae]
        print(f"\n{sae} SAEs (one verdict per organism: the runs' agreement over SAE seeds and attribution "
              f"methods, inconclusive unless all agree):\n{confusion(mine)}")
        print("agreement: " + ", ".join(f"{g['design']}-{g['seed']} {g['agreement']:.2f} of {g['runs']}"
                                        for g in mine))
        print(f"the transfer rule (descriptive evidence, not the verdict), same agreement:\n"
              f"{confusion([{**g, 'verdict': g['transfer']} for g in mine])}")
    conv = [r for r in rows if DESIGNED[r["design"]] != "modular" and r["planted_layer"] is not None]
    hits = sum(r["convergence"] is not None and abs(r["convergence"] - r["planted_layer"]) <= 1 for r in conv)
    print(f"runs whose convergence layer is within ±1 of the planted layer: {hits}/{len(conv)}")
    right = sum(g["verdict"] == DESIGNED[g["design"]] for g in groups)
    print(f"organisms given their designed verdict: {right}/{len(groups)}")
    return 0 if right == len(groups) else 1

if __name__ == "__main__":
    raise SystemExit(main())
