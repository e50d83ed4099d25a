#!/usr/bin/env bash
# The GPU check as one run on a lent CUDA machine without network (README: "Speed, memory and adaptive SIG").
#
# Here, once:  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                --implementation cp --platform manylinux2014_x86_64 -d .whl \
#                lit-nlp==1.3.1 captum==0.9.0 time-interpret==0.3.0
# There:       bash benchmarks/device_check.sh [gpu|lm]  (carry .whl; results under $OUT)
#
# Writes $OUT/gpu_check.json (rewritten after every step, so a run cut short keeps what it
# measured), $OUT/gpu_check.log and $OUT/profiles/*.txt. About 4 minutes on an H200, plus
# compiling (minutes, last); GPU_CHECK_ARGS overrides the check's arguments. `lm` runs the
# causal-LM benchmark instead, as a second call (each call of the device tool has 10 minutes):
# random-weight SmolLM2 and 1B Llama shapes, IG, path SIG and exact SIG against their floors and
# captum's IG ($OUT/lm_speed_<shape>.json, each written after every method), LM_CHECK_SECONDS
# each (default 240); LM_SHAPES overrides the shapes.
set -o pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
  exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_check.log"
if [ "${1:-gpu}" = lm ]; then
  for shape in ${LM_SHAPES:-smollm2 llama-1b}; do
    timeout "${LM_CHECK_SECONDS:-240}" python3 -W ignore -m benchmarks.lm_speed --model "random:$shape" --device cuda \
      --steps 50 --sig_steps 8 --repeats 2 --peers captum_ig --json "$OUT/lm_speed_$shape.json" 2>&1 |
      grep --line-buffered -v "Loading weights" | tee -a "$OUT/lm_speed.log"
  done
  exit 0
fi
# shellcheck disable=SC2086
timeout "${GPU_CHECK_SECONDS:-540}" python3 -W ignore -m benchmarks.gpu_check --json "$OUT/gpu_check.json" \
  ${GPU_CHECK_ARGS:---profile_dir $OUT/profiles --compile_shapes bert-base} 2>&1 |
  grep --line-buffered -v "Loading weights" | tee -a "$OUT/gpu_check.log"
