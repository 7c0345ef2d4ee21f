#!/usr/bin/env bash
# The real experiment of issue 6 on this CPU: ImageNet-pretrained efficientnet_lite0 finetuned on ELPV (the
# baseline), then plans at two or three measured-CPU speed-up targets (planned with this CPU's profile), each
# finetuned with distillation from the baseline, merged, exported and measured. Prints a markdown table of test
# accuracy and measured images/s vs the baseline (all networks timed in one interleaved run: same batch, same
# threads), and writes it to OUT_DIR/table.md.
#
#   bench/elpv_experiment.sh OUT_DIR                 # from the repository root; restartable (finished runs are
#                                                    # skipped, interrupted ones resume from their last.pt)
#   SMOKE=1 bench/elpv_experiment.sh /tmp/smoke      # 96 px, 1 epoch of 3 steps per run: checks the pipeline
#
# Environment: EPOCHS (10), IMAGE_SIZE (224, the profile's), BATCH (32), LR (0.01), PLAN_LR (LR), TARGETS
# ("1.5 2 3"), THREADS (2), NPROC (1; > 1 trains under torchrun with that many processes of THREADS / NPROC
# threads each), BENCH_REPEATS (5). The final joint timing always uses THREADS threads in one process.
# Time on the 2-core CPU (batch 32, 2 threads, 57 steps per epoch, measured 2026-11-29): about 1.9 s per step
# at 224 px for the baseline and 2.7-3.3 s with distillation (the teacher's forward pass), i.e. ~2 min and ~3 min
# per epoch with validation; 10 epochs: ~2 h for all four runs. At IMAGE_SIZE=160: ~0.75 / 1.05 s per step
# (~45 min); at 96: ~0.27 / 0.36 s per step (~15 min). The machine is noisy: +-30%.
set -euo pipefail
OUT=${1:?usage: bench/elpv_experiment.sh OUT_DIR}
mkdir -p "$OUT"
MODEL=efficientnet_lite0
PROFILE=profiles/local-cpu/efficientnet_lite0_b32_fp32_nchw.json
if [[ "${SMOKE:-0}" == 1 ]]; then
  EPOCHS=${EPOCHS:-1}; IMAGE_SIZE=${IMAGE_SIZE:-96}; BENCH_REPEATS=${BENCH_REPEATS:-2}
  EXTRA=(--max-steps-per-epoch 3)
else
  EPOCHS=${EPOCHS:-10}; IMAGE_SIZE=${IMAGE_SIZE:-224}; BENCH_REPEATS=${BENCH_REPEATS:-5}
  EXTRA=()
fi
BATCH=${BATCH:-32}; LR=${LR:-0.01}; PLAN_LR=${PLAN_LR:-$LR}; TARGETS=${TARGETS:-1.5 2 3}
THREADS=${THREADS:-2}; NPROC=${NPROC:-1}
PROC_THREADS=$(( THREADS / NPROC > 0 ? THREADS / NPROC : 1 ))  # training threads per process
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=$PROC_THREADS
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
if [[ "$NPROC" -gt 1 ]]; then
  TRAIN=(python -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m cli train)
else
  TRAIN=(dsa train)
fi
COMMON=(--model "$MODEL" --data elpv --image-size "$IMAGE_SIZE" --epochs "$EPOCHS" --batch-size "$BATCH"
  --threads "$PROC_THREADS" --bench-batch-size "$BATCH" --bench-repeats "$BENCH_REPEATS" --format json
  "${EXTRA[@]}")

run() {  # run NAME ARGS...: one training run, skipped when it already finished
  local name=$1; shift
  if [[ -f "$OUT/$name/result.json" ]]; then log "$name: finished before, skipped"; return; fi
  log "$name: dsa train $*"
  local t0=$SECONDS
  local resume=()
  [[ -f "$OUT/$name/last.pt" ]] && resume=(--resume)  # an interrupted run continues
  "${TRAIN[@]}" "${COMMON[@]}" "${resume[@]}" --out "$OUT/$name" "$@" > "$OUT/$name.stdout.json"
  log "$name: done in $((SECONDS - t0)) s"
}

run baseline --pretrained --lr "$LR"
for x in $TARGETS; do
  plan="$OUT/plans/target_$x.json"
  if [[ ! -f "$plan" ]]; then
    mkdir -p "$OUT/plans"
    dsa plan --model "$MODEL" --profile "$PROFILE" --target-speedup "$x" --batch-size 32 --out "$plan" \
      > "$OUT/plans/target_$x.txt"
  fi
  run "plan_$x" --checkpoint "$OUT/baseline/last.pt" --plan "$plan" --distill --lr "$PLAN_LR"
done

log "timing the baseline and every merged network in one interleaved run"
python - "$OUT" "$IMAGE_SIZE" "$BATCH" "$THREADS" "$BENCH_REPEATS" $TARGETS <<'EOF' | tee "$OUT/table.md"
import json
import sys
from pathlib import Path

import torch

from dsa.measure.timing import measure
from dsa.networks import load_for_eval

out, size, batch, threads, repeats, targets = Path(sys.argv[1]), *map(int, sys.argv[2:6]), sys.argv[6:]
torch.set_num_threads(threads)
base = json.loads((out / "baseline" / "result.json").read_text())
nets = {"baseline": load_for_eval(out / "baseline" / "last.pt").module}
for x in targets:
    nets[f"plan_{x}"] = load_for_eval(out / f"plan_{x}" / "merged.pt").module
timing = measure(nets, batch, size, "cpu", False, warmup=2, repeats=max(repeats, 1))
(out / "timing.json").write_text(json.dumps({k: v.to_json() for k, v in timing.items()}, indent=2) + "\n")
b_ips, b_test = timing["baseline"].images_per_s, base["accuracy"]["test"]["top1"]
print(f"efficientnet_lite0 (ImageNet-pretrained) on ELPV, {size} px; images/s: batch {batch}, {threads} threads, "
      f"fp32 NCHW, {max(repeats, 1)} interleaved repeats (median), one run\n")
print("| network | removed activations | predicted speed-up | test top-1 | vs baseline (points) | val top-1 | "
      "images/s | measured speed-up | speed-up in its own run | merged = merge-ready |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
print(f"| baseline | 0 | 1.00x | {b_test:.2f}% | - | {base['accuracy']['val']['top1']:.2f}% | {b_ips:.1f} | 1.00x | - | - |")
for x in targets:
    r = json.loads((out / f"plan_{x}" / "result.json").read_text())
    plan = json.loads((out / "plans" / f"target_{x}.json").read_text())
    acc = r["accuracy"]
    test, val = acc["test"]["merged"]["top1"], acc["val"]["merged"]["top1"]
    own = r.get("bench", {}).get("speedup")
    ips = timing[f"plan_{x}"].images_per_s
    print(f"| plan {x}x | {len(plan['removed'])} | {plan['metadata']['prediction']['speedup']:.2f}x | {test:.2f}% | "
          f"{test - b_test:+.2f} | {val:.2f}% | {ips:.1f} | {ips / b_ips:.2f}x | "
          f"{'-' if own is None else f'{own:.2f}x'} | {'yes' if r['merged_equals_merge_ready'] else 'NO'} |")
EOF
log "done: $OUT/table.md"
