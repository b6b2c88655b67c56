#!/usr/bin/env bash
# The GPU path, end to end, on a CUDA machine (run it whenever one is available; it prints one line per figure):
#   1. the demo with trainer=gpu (bf16-mixed) and the model, its organism build and collection on CUDA;
#   2. collection speed on CUDA (bench/collect.py: ours ÷ a bare forward, interleaved);
#   3. the SAELens race on CUDA (bench/sae_vs_saelens.py) at d_sae 4608 and 32768, fp32 and bf16 autocast, and
#      dense ÷ sparse SAE steps on CUDA (bench/sae_kernels.py: where sae.kernel=auto should switch on a GPU);
#   4. DDP (NCCL) with one rank per GPU, the demo's SAE training (skipped with one GPU: nothing to compare).
# Needs a CUDA build of torch in $PY's environment; on a machine without CUDA it says so and exits 0.
#   bash bench/gpu_check.sh            (PY=.venv/bin/python by default; OUT=outputs/gpu_check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/gpu_check}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)')): nothing run"
  exit 0
fi
N_GPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
"$PY" -c "import torch; print('gpu_check:', torch.__version__, 'cuda', torch.version.cuda, '|', \
', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))"
mkdir -p "$OUT"

timed() {  # timed NAME CMD...: run CMD (its output to $OUT/NAME.log), print its wall time and exit status
  local name=$1; shift
  local t0=$SECONDS status=ok
  "$@" >"$OUT/$name.log" 2>&1 || status="FAILED (exit $?)"
  echo "$name: $status in $((SECONDS - t0)) s (log: $OUT/$name.log)"
}

GPU=(trainer=gpu model.device=cuda)
timed demo_train "$PY" train.py experiment=demo "${GPU[@]}" hydra.run.dir="$OUT/demo/train"
# discover and evaluate take the model config (device included) from the train run
timed demo_discover "$PY" discover.py train_dir="$OUT/demo/train" circuit=demo hydra.run.dir="$OUT/demo/discover"
timed demo_evaluate "$PY" evaluate.py train_dir="$OUT/demo/train" discover_dir="$OUT/demo/discover" \
  evaluation=demo hydra.run.dir="$OUT/demo/evaluate"
grep -h "verdict" "$OUT/demo_evaluate.log" | tail -1 || true

"$PY" bench/collect.py --device cuda 2>&1 | tee "$OUT/collect.log" | grep -E "ratio|tokens/s" || true

for d_sae in 4608 32768; do
  for precision in "" --autocast; do
    "$PY" bench/sae_vs_saelens.py --device cuda --d-sae "$d_sae" --steps 100 --warmup 10 $precision 2>&1 \
      | tee "$OUT/race_${d_sae}${precision}.log" | grep -E "^(device|ours|saelens|ratio)" || true
  done
done

"$PY" bench/sae_kernels.py --device cuda --d-sae 32768 --k 33,164,328,1638,3277 2>&1 | tee "$OUT/kernels.log" \
  | grep -E "^(device|k=)" || true

if [ "$N_GPU" -gt 1 ]; then
  timed ddp_train "$PY" train.py experiment=demo trainer=ddp trainer.devices="$N_GPU" model.device=cuda \
    hydra.run.dir="$OUT/ddp/train"
  grep -hE "samples/s|explained_variance" "$OUT/ddp_train.log" | tail -3 || true
else
  echo "ddp_train: skipped (1 GPU; DDP needs 2 or more)"
fi
