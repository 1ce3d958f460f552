#!/usr/bin/env bash
# The streaming issue's GPU measurements in one run, so one device session covers them:
# start-up (cold, then warm, split per worker), the pipeline's own ceiling (a model that
# copies its input, ONNX Runtime on the CPU), p99 latency at 2 kHz, one worker's highest
# lossless rate, and the split-stream soak.  Each step's output goes to DIR/<step>.txt
# (and .json).
#
#     bash benchmarks/gpu_throughput.sh MODEL DIR [STREAMS WORKERS RATE SECONDS]
#
# MODEL: the small phase model (.pth or .onnx); the rest default to 4 streams of 3
# workers at 40,000 frames/s for 60 s.  PYTHON, BACKEND, PRECISION, LATENCY_RATE,
# SWEEP_START and PIPELINE_START (default python3, torch, bf16, 2000, 4000, 4000) let the
# same steps run small on a CPU first.
set -uo pipefail
model=${1:?model path}
out=${2:?output folder}
streams=${3:-4}
workers=${4:-3}
rate=${5:-40000}
seconds=${6:-60}
python=${PYTHON:-python3}
backend=${BACKEND:-torch}
precision=${PRECISION:-bf16}
here=$(dirname "$0")
mkdir -p "$out"
engine=(--model "$model" --backend "$backend" --precision "$precision")
stream=("$python" "$here/stream.py" --server-queue-size 1000)

step() {
    local name=$1
    shift
    echo "== $name: $*" | tee "$out/$name.txt"
    "$@" 2>&1 | tee -a "$out/$name.txt"
}

step startup "$python" "$here/startup.py" "${engine[@]}" --starts 3
step pipeline_only "${stream[@]}" --copy-model --backend onnxruntime --threads 1 --sweep \
    --rate "${PIPELINE_START:-4000}" --seconds 4 --batch-size 32 --batch-timeout 0.002 \
    --refine 2 --json "$out/pipeline_only.json"
step latency_2khz "${stream[@]}" "${engine[@]}" --rate "${LATENCY_RATE:-2000}" --seconds 10 \
    --batch-size 8 --batch-timeout 0.001 --json "$out/latency_2khz.json"
step one_worker "${stream[@]}" "${engine[@]}" --sweep --rate "${SWEEP_START:-4000}" \
    --seconds 4 --batch-size 32 --batch-timeout 0.002 --refine 2 --json "$out/one_worker.json"
step split_soak "${stream[@]}" "${engine[@]}" --streams "$streams" --workers "$workers" \
    --rate "$rate" --seconds "$seconds" --batch-size 32 --json "$out/split_soak.json"
