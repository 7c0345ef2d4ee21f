#!/usr/bin/env bash
# Issue 17 on a real task: does LayerMerge-style pruning (`dsa plan --prune-convs`) help at equal speed-up?
# efficientnet_lite0 finetuned on ELPV (the baseline of issue 6, reused from bench/elpv_runtimes.sh's OUT_DIR), an
# OpenVINO profile at the training resolution (taken anew: the wider segment space has more merged convs to time),
# then at one predicted target speed-up the planner's plan without and with --prune-convs, each finetuned with
# distillation from the baseline (the recipe of elpv_runtimes.sh), merged, and timed under OpenVINO against the
# baseline, interleaved, three runs. One seed each. Writes OUT_DIR/table.md.
#
#   bench/elpv_prune.sh OUT_DIR BASELINE_CKPT   # restartable (finished steps are skipped)
#
# Environment: EPOCHS (6), IMAGE_SIZE (160), BATCH (32), LR (0.01), TARGET (1.4), THREADS (2), BENCH_REPEATS (3).
set -euo pipefail
OUT=${1:?usage: bench/elpv_prune.sh OUT_DIR BASELINE_CKPT}
BASE=${2:?usage: bench/elpv_prune.sh OUT_DIR BASELINE_CKPT}
mkdir -p "$OUT/plans" "$OUT/profiles"
MODEL=efficientnet_lite0
EPOCHS=${EPOCHS:-6}; IMAGE_SIZE=${IMAGE_SIZE:-160}; BATCH=${BATCH:-32}; LR=${LR:-0.01}; TARGET=${TARGET:-1.4}
THREADS=${THREADS:-2}; BENCH_REPEATS=${BENCH_REPEATS:-3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=$THREADS
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
prof="$OUT/profiles/${MODEL}_b${BATCH}_${IMAGE_SIZE}px_openvino.json"
if [[ ! -f "$prof" ]]; then
  log "profiling under openvino at $IMAGE_SIZE px"
  dsa profile --model "$MODEL" --runtime openvino --input-size "$IMAGE_SIZE" --batch-size "$BATCH" \
    --threads "$THREADS" --repeats 7 --out "$prof"
fi
for variant in plain prune; do
  plan="$OUT/plans/$variant.json"
  extra=(); [[ $variant == prune ]] && extra=(--prune-convs)
  [[ -f "$plan" ]] || dsa plan --model "$MODEL" --runtime openvino --profile "$prof" --target-speedup "$TARGET" \
    "${extra[@]}" --out "$plan" > "$OUT/plans/$variant.txt"
  if [[ ! -f "$OUT/$variant/result.json" ]]; then
    resume=(); [[ -f "$OUT/$variant/last.pt" ]] && resume=(--resume)
    log "$variant: finetuning"
    dsa train --model "$MODEL" --data elpv --image-size "$IMAGE_SIZE" --epochs "$EPOCHS" --batch-size "$BATCH" \
      --threads "$THREADS" --bench-batch-size "$BATCH" --bench-repeats "$BENCH_REPEATS" --format json \
      --checkpoint "$BASE" --plan "$plan" --distill --lr "$LR" "${resume[@]}" --out "$OUT/$variant" \
      > "$OUT/$variant.stdout.json"
  fi
done
log "timing both merged networks under openvino against the baseline, interleaved"
python - "$OUT" "$BASE" "$IMAGE_SIZE" "$BATCH" "$THREADS" "$BENCH_REPEATS" <<'PY' | tee "$OUT/table.md"
import json
import sys
from pathlib import Path

import torch

from dsa.measure.timing import measure
from dsa.networks import load_for_eval

out, base_ckpt = Path(sys.argv[1]), Path(sys.argv[2])
size, batch, threads, repeats = map(int, sys.argv[3:7])
torch.set_num_threads(threads)
base = json.loads((base_ckpt.parent / "result.json").read_text())
b_test = base["accuracy"]["test"]["top1"]
nets = {"baseline": load_for_eval(base_ckpt).module}
for v in ("plain", "prune"):
    nets[v] = load_for_eval(out / v / "merged.pt").module
runs = []
for _ in range(3):
    t = measure(nets, batch, size, "cpu", False, 2, repeats, runtime="openvino", threads=threads)
    runs.append({k: t[k].images_per_s / t["baseline"].images_per_s for k in ("plain", "prune")})
print(f"efficientnet_lite0 (ImageNet-pretrained) finetuned on ELPV, {size} px; OpenVINO CPU, batch {batch}, "
      f"{threads} threads, fp32; {repeats} interleaved repeats per run, three runs; one seed per row\n")
print("| plan | removed activations | pruned | predicted speed-up | test top-1 | vs baseline (points) | "
      "measured speed-up, three runs | merged = merge-ready |")
print("|---|---:|---:|---:|---:|---:|---|---|")
print(f"| baseline | 0 | 0 | 1.00x | {b_test:.2f}% | - | 1.00x | - |")
for v in ("plain", "prune"):
    r = json.loads((out / v / "result.json").read_text())
    plan = json.loads((out / "plans" / f"{v}.json").read_text())
    test = r["accuracy"]["test"]["merged"]["top1"]
    ms = sorted(x[v] for x in runs)
    name = "without pruning" if v == "plain" else "with --prune-convs"
    print(f"| {name} | {len(plan['removed'])} | {len(plan['pruned'])} | "
          f"{plan['metadata']['prediction']['speedup']:.2f}x | {test:.2f}% | {test - b_test:+.2f} | "
          f"{' / '.join(f'{x[v]:.2f}x' for x in runs)} (median {ms[1]:.2f}x) | "
          f"{'yes' if r['merged_equals_merge_ready'] else 'NO'} |")
(out / "timing.json").write_text(json.dumps(runs, indent=2) + "\n")
PY
log "done: $OUT/table.md"
