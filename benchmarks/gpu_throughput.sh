#!/usr/bin/env bash
# The streaming issue's GPU measurements in one run, so one device session covers them:
# start-up (cold, then warm, split per worker), the pipeline's own ceiling (a model that
# copies its input, ONNX Runtime on the CPU), that ceiling against pvapy's own
# passthrough (one stock consumer running AdImageProcessor) swept in the same run, p99
# latency at 2 kHz, one worker's highest lossless rate, the split-stream soak, and the
# same soak as 4 streams x 4 workers at batch 64.  Each step's output goes to
# DIR/<step>.txt and its results to DIR/<step>.json.
#
#     bash benchmarks/gpu_throughput.sh MODEL DIR [STREAMS WORKERS RATE SECONDS]
#
# MODEL: the small phase model (.pth or .onnx); the rest default to 4 streams of 3
# workers at 40,000 frames/s for 60 s (split_soak_b64 takes the rate and seconds, with
# 4 streams of 4 workers).  PYTHON, BACKEND, PRECISION, LATENCY_RATE, SWEEP_START and
# PIPELINE_START (default python3, torch, bf16, 2000, 4000, 4000) let the same steps run
# small on a CPU first.  FRAME_OUTPUTS (default none) is the workers' --frame-outputs in
# the stream.py steps: stream.py reads only the batch channels.  STEPS (default all)
# names the steps to run, e.g. STEPS="split_soak split_soak_b64", so that a device lease
# can take them in two calls.
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
frame_outputs=${FRAME_OUTPUTS:-none}
pipeline_start=${PIPELINE_START:-4000}
here=$(dirname "$0")
mkdir -p "$out"
engine=(--model "$model" --backend "$backend" --precision "$precision")
stream=("$python" "$here/stream.py" --server-queue-size 1000 --frame-outputs "$frame_outputs")
pipeline=(--copy-model --backend onnxruntime --threads 1 --sweep --rate "$pipeline_start"
    --seconds 4 --batch-size 32 --batch-timeout 0.002 --refine 2)

step() {
    local name=$1
    shift
    [[ " ${STEPS:-all} " == *" all "* || " ${STEPS:-all} " == *" $name "* ]] || return 0
    echo "== $name: $*" | tee "$out/$name.txt"
    "$@" 2>&1 | tee -a "$out/$name.txt"
}

# startup.py prints one line per start; its JSON is read from them.
startup_json() {
    "$python" - "$out/startup.txt" > "$out/startup.json" <<'EOF'
import json, re, sys

text = open(sys.argv[1]).read()
line = re.compile(r"start (\d+): ready in ([\d.]+) s \((.*?)\); (.*)")
worker = re.compile(r"process ([\d.]+) s, engine ([\d.]+) s")
starts = [
    {
        "start": int(m[1]),
        "ready_s": float(m[2]),
        "engine": m[3],
        "workers": [{"process_s": float(p), "engine_s": float(e)} for p, e in worker.findall(m[4])],
    }
    for m in line.finditer(text)
]
json.dump({"starts": starts}, sys.stdout, indent=2)
EOF
}

step startup "$python" "$here/startup.py" "${engine[@]}" --starts 3
[ -f "$out/startup.txt" ] && startup_json
step pipeline_only "${stream[@]}" "${pipeline[@]}" --json "$out/pipeline_only.json"
step passthrough_compare "${stream[@]}" "${pipeline[@]}" --compare-passthrough \
    --json "$out/passthrough_compare.json"
step latency_2khz "${stream[@]}" "${engine[@]}" --rate "${LATENCY_RATE:-2000}" --seconds 10 \
    --batch-size 8 --batch-timeout 0.001 --json "$out/latency_2khz.json"
step one_worker "${stream[@]}" "${engine[@]}" --sweep --rate "${SWEEP_START:-4000}" \
    --seconds 4 --batch-size 32 --batch-timeout 0.002 --refine 2 --json "$out/one_worker.json"
step split_soak "${stream[@]}" "${engine[@]}" --streams "$streams" --workers "$workers" \
    --rate "$rate" --seconds "$seconds" --batch-size 32 --json "$out/split_soak.json"
step split_soak_b64 "${stream[@]}" "${engine[@]}" --streams 4 --workers 4 \
    --rate "$rate" --seconds "$seconds" --batch-size 64 --json "$out/split_soak_b64.json"
