#!/usr/bin/env bash
# Train candidate demo models on a lent GPU, sized to a time budget, and measure data
# generation.  Run on the device machine from the repository root, with the wheels of
# pvapy and pydantic in .whl/ (README of the device tool):
#
#   bash benchmarks/train_gpu.sh OUT SECONDS "VARIANT:NCONV:BATCH:LR[:INITIAL.pth]" ...
#
# Each candidate trains concurrently with the others for about SECONDS (its epochs are
# set from a short solo probe of its width's training rate) and writes OUT/VARIANT.log
# and OUT/VARIANT.tar, which holds the model, its ONNX export and its recipe.  A CPU rehearsal:
#   PY=.venv/bin/python DEVICES=cpu PER_EPOCH=128 PROBE=256 VALIDATION=64 \
#       bash benchmarks/train_gpu.sh /tmp/rehearsal 100 "small:8:32:2e-3"
set -uo pipefail
out=$1 budget=$2
shift 2
py=${PY:-python3} per_epoch=${PER_EPOCH:-65536} probe=${PROBE:-32768}
validation=${VALIDATION:-2048} name=${NAME:-ptychonn_demo_small_phase}
mkdir -p "$out"
if [ -d .whl ]; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
cli='import sys; from ptychonn_ophyd.cli import main; sys.exit(main())'

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.get_num_threads(), "threads")'
for device in ${DEVICES:-cuda cpu}; do
    $py benchmarks/training_data.py --device "$device" --batch 1024 --seconds 5
done

declare -A rate
for spec in "$@"; do
    IFS=: read -r _ nconv batch _ _ <<<"$spec"
    key=$nconv:$batch
    [ -n "${rate[$key]:-}" ] && continue
    $py -c "$cli" train --out "/tmp/probe$nconv-$batch" --nconv "$nconv" --batch-size "$batch" \
        --epochs 2 --frames-per-epoch "$probe" --validation-frames 256 --check-every 0 --quiet \
        >"/tmp/probe$nconv-$batch.log" 2>&1
    rate[$key]=$($py -c "import json; print(json.load(open('/tmp/probe$nconv-$batch/small_phase_recipe.json'))['history'][-1]['frames_per_s'])")
    [ -n "${rate[$key]}" ] || { tail -n 5 "/tmp/probe$nconv-$batch.log"; exit 1; }
    echo "solo training rate at nconv $nconv, batch $batch: ${rate[$key]} frames/s"
done

pids=()
for spec in "$@"; do
    IFS=: read -r variant nconv batch lr initial <<<"$spec"
    epochs=$($py -c "print(max(1, int($budget * ${rate[$nconv:$batch]} / $# / $per_epoch)))")
    echo "$variant: nconv $nconv, batch $batch, lr $lr, $epochs epochs of $per_epoch frames," \
        "from ${initial:-fresh weights}"
    timeout $((budget + 140)) $py -c "$cli" train --out "$out/$variant" --name "$name" \
        --nconv "$nconv" --batch-size "$batch" --lr "$lr" --epochs "$epochs" \
        --frames-per-epoch "$per_epoch" \
        --validation-frames "$validation" --initial-weights "${initial:-}" --quiet \
        >"$out/$variant.log" 2>&1 &
    pids+=($!)
done
wait "${pids[@]}"
for spec in "$@"; do
    IFS=: read -r variant _ <<<"$spec"
    grep -h "INFO" "$out/$variant.log" | sed "s/^.*INFO [a-z_.]*: /$variant /"
    tail -n 2 "$out/$variant.log"
    tar -C "$out" -cf "$out/$variant.tar" "$variant" && rm -r "${out:?}/$variant"
done
