#!/usr/bin/env bash
# Issue 15 on a real task: efficientnet_lite0 finetuned on ELPV (the baseline of issue 6), planned for INT8
# deployment under OpenVINO (a profile taken with every graph quantized by NNCF, at the training resolution),
# finetuned with distillation from the baseline, merged; then every network quantized post-training and evaluated
# in both forms, and timed in both forms under OpenVINO (bench/elpv_int8.py). Restartable: finished steps are
# skipped.
#
#   bench/elpv_int8.sh OUT_DIR                      # from the repository root
#   BASELINE_DIR=runs/elpv_runtimes/baseline bench/elpv_int8.sh OUT_DIR   # reuse a finetuned baseline
#
# Environment: TARGETS ("2.0": INT8 speed-ups over the original INT8 network asked of the planner), IMPORTANCE (an
# importance file for `dsa plan --importance`; default bench/results/proxy_study/importance/finetune.json, issue 7's
# finetune proxy), EXTRA_MERGED ("label=path ..." more merged checkpoints to evaluate and time), EPOCHS (6),
# IMAGE_SIZE (160), BATCH (32), LR (0.01), THREADS (2). Time on the 2-core CPU at 160 px: ~6 min for the
# baseline, ~10 min for the INT8 profile, ~8 min per planned finetune, ~5 min per network for quantizing and
# evaluating.
set -euo pipefail
OUT=${1:?usage: bench/elpv_int8.sh OUT_DIR}
mkdir -p "$OUT/plans" "$OUT/profiles"
MODEL=efficientnet_lite0 RUNTIME=openvino
EPOCHS=${EPOCHS:-6}; IMAGE_SIZE=${IMAGE_SIZE:-160}; BATCH=${BATCH:-32}; LR=${LR:-0.01}; THREADS=${THREADS:-2}
TARGETS=${TARGETS:-2.0}; IMPORTANCE=${IMPORTANCE:-bench/results/proxy_study/importance/finetune.json}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=$THREADS
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
COMMON=(--model "$MODEL" --data elpv --image-size "$IMAGE_SIZE" --epochs "$EPOCHS" --batch-size "$BATCH"
  --threads "$THREADS" --bench-batch-size "$BATCH" --bench-repeats 3 --format json)

run() {  # run NAME ARGS...: one training run, skipped when it already finished
  local name=$1; shift
  if [[ -f "$OUT/$name/result.json" ]]; then log "$name: finished before, skipped"; return; fi
  log "$name: dsa train $*"
  local resume=()
  [[ -f "$OUT/$name/last.pt" ]] && resume=(--resume)
  dsa train "${COMMON[@]}" "${resume[@]}" --out "$OUT/$name" "$@" > "$OUT/$name.stdout.json"
  log "$name: done"
}

if [[ -n "${BASELINE_DIR:-}" && ! -e "$OUT/baseline" ]]; then ln -s "$(realpath "$BASELINE_DIR")" "$OUT/baseline"; fi
run baseline --pretrained --lr "$LR"
prof="$OUT/profiles/${MODEL}_b${BATCH}_${IMAGE_SIZE}px_int8_$RUNTIME.json"
if [[ ! -f "$prof" ]]; then
  log "profiling in INT8 under $RUNTIME at $IMAGE_SIZE px"
  dsa profile --model "$MODEL" --runtime "$RUNTIME" --precision int8 --input-size "$IMAGE_SIZE" \
    --batch-size "$BATCH" --threads "$THREADS" --repeats 7 --out "$prof"
  dsa calibrate --profile "$prof"  # the roofline that prices what the profile lacks, fitted to it
fi
merged=()
for t in $TARGETS; do
  plan="$OUT/plans/int8_$t.json"
  if [[ ! -f "$plan" ]]; then
    dsa plan --model "$MODEL" --runtime "$RUNTIME" --precision int8 --profile "$prof" --target-speedup "$t" \
      --importance "$IMPORTANCE" --out "$plan" > "$OUT/plans/int8_$t.txt"
  fi
  run "plan_int8_$t" --checkpoint "$OUT/baseline/last.pt" --plan "$plan" --distill --lr "$LR"
  merged+=(--merged "INT8 plan $t=$OUT/plan_int8_$t/merged.pt")
done
for m in ${EXTRA_MERGED:-}; do merged+=(--merged "$m"); done
log "quantizing, evaluating and timing every network in float32 and INT8 under $RUNTIME"
python bench/elpv_int8.py --baseline "$OUT/baseline/last.pt" "${merged[@]}" --runtime "$RUNTIME" --batch "$BATCH" \
  --threads "$THREADS" --out "$OUT/int8"
log "done: $OUT/int8/table.md"
