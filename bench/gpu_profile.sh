#!/usr/bin/env bash
# Measure dsa's models on a CUDA GPU (issue 8): device ceilings, per-op and per-candidate-segment profiles
# of mobilenet_v2_140 and efficientnet_lite0 at batch 128 in fp32 and fp16 (NCHW and channels_last), and
# the throughput of the original vs merged networks (DS-A..F for MobileNetV2) under the paper's protocol
# (eager, NCHW, 50 warm-up + 30 timed passes) and a tuned one (cudnn.benchmark, channels_last).
#
#   bench/gpu_profile.sh OUT_DIR                      # on the GPU machine, from the repository root
#   DRY_RUN=1 bench/gpu_profile.sh /tmp/dry            # a tiny CPU rehearsal of every step (used by the tests)
#
# Environment: DEVICE (cuda), BATCH (128), WARMUP (5), REPEATS (20), MODELS, PRECISIONS (fp32 fp16),
# LAYOUTS (nchw channels_last), THROUGHPUT (1: also time the merged networks).
set -euo pipefail
OUT=${1:?usage: bench/gpu_profile.sh OUT_DIR}
mkdir -p "$OUT"
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  DEVICE=${DEVICE:-cpu}; BATCH=${BATCH:-2}; WARMUP=${WARMUP:-0}; REPEATS=${REPEATS:-1}
  MODELS=${MODELS:-tests.tiny_models:tiny_mbv2}; PRECISIONS=${PRECISIONS:-fp32}; SIZE_ARGS="--input-size 32"
  THROUGHPUT_ARGS="--repeats 1 --warmup 0 --input-size 32"; SECONDS_MEASURE=1
else
  DEVICE=${DEVICE:-cuda}; BATCH=${BATCH:-128}; WARMUP=${WARMUP:-5}; REPEATS=${REPEATS:-20}
  MODELS=${MODELS:-mobilenet_v2_140 efficientnet_lite0}; PRECISIONS=${PRECISIONS:-fp32 fp16}; SIZE_ARGS=""
  THROUGHPUT_ARGS=""; SECONDS_MEASURE=5
fi
LAYOUTS=${LAYOUTS:-nchw channels_last}
export PYTHONUNBUFFERED=1
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

log "device ceilings"
dsa devices --measure --device "$DEVICE" --seconds "$SECONDS_MEASURE" --out "$OUT/device.json" --format json > "$OUT/device_report.json"

for model in $MODELS; do
  tag=${model//[:\/.]/_}
  # every inverted-residual block merged: DS-F for MobileNetV2 (19 keep-list entries), all blocks otherwise
  n=$(dsa analyze --model "$model" $SIZE_ARGS --format json | python -c "import json,sys; print(len(json.load(sys.stdin)['blocks']))")
  keep="1$(printf ',0%.0s' $(seq 1 $((n - 2)))),1"
  dsa plan --model "$model" $SIZE_ARGS --act-list "$keep" --out "$OUT/${tag}_all-blocks.json" > /dev/null
  for precision in $PRECISIONS; do
    for layout in $LAYOUTS; do
      flag=""; [[ "$layout" == channels_last ]] && flag="--channels-last"
      log "profile $model $precision $layout"
      dsa profile --model "$model" $SIZE_ARGS --device "$DEVICE" --batch-size "$BATCH" --precision "$precision" \
        $flag --warmup "$WARMUP" --repeats "$REPEATS" --plan "$OUT/${tag}_all-blocks.json" \
        --out "$OUT/${tag}_b${BATCH}_${precision}_${layout}.json"
    done
  done
  if [[ "${THROUGHPUT:-1}" == 1 ]]; then
    for protocol in paper tuned; do
      log "throughput $model ($protocol protocol)"
      python bench/merge_throughput.py --model "$model" --device "$DEVICE" --batch-size "$BATCH" \
        --precisions "${PRECISIONS// /,}" --protocol "$protocol" $THROUGHPUT_ARGS \
        --out "$OUT/${tag}_throughput_${protocol}.json" > "$OUT/${tag}_throughput_${protocol}.md"
    done
  fi
done
log "done: $(ls "$OUT" | wc -l) files in $OUT"
