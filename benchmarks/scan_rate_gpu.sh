#!/usr/bin/env bash
# Issue 28's measurements on a GPU host in one call: the disk's write floor
# (write_floor.py), a 100 x 100 fly scan at 2 kHz with the results stored in the session
# and then by the store process, the store process at 5 and 10 kHz (100 x 100 x 5 and
# x 10 passes, 8 workers, batch 32), the fast scan through one session with the store
# process (default 150 x 150 x 27 passes = 607,500 frames at 20 kHz: 30 s, 8 workers,
# batch 32), that scan again with the simulated detector sending from a process of
# its own, as an IOC does (--detector-process), and once more with the detector
# scattering its frames over CHANNELS channels (default 2), each from a process of its
# own and read by WORKERS / CHANNELS workers (--channels).  The copy model runs on the CPUs;
# --catalog none (no Tiled server stack there), the rows still go to the runs' HDF5
# files.  Each step's output goes to DIR/<step>.txt.
#
#     bash benchmarks/scan_rate_gpu.sh DIR [SIDE PASSES RATE WORKERS CHANNELS]
#
# STEPS (default all) names the steps to run; PYTHON (default python3).  A GPU host
# without a package registry needs these carried as cp312 wheels (the device tool's
# README says how): pvapy 5.6.0, pydantic 2.14.4, pydantic_core 2.50.5,
# annotated-types, typing-inspection, typing_extensions, bluesky 1.15.1, ophyd 1.11.2,
# event-model 1.24.0, historydict, msgpack-numpy, opentelemetry-api,
# importlib_metadata, zipp, Pint, flexcache, flexparser, platformdirs, jsonschema,
# jsonschema-specifications, referencing, rpds-py (19 MB); h5py, psutil and numpy are
# there already.
set -uo pipefail
out=${1:?output folder}
side=${2:-150}
passes=${3:-27}
rate=${4:-20000}
workers=${5:-8}
channels=${6:-2}
python=${PYTHON:-python3}
here=$(dirname "$0")
mkdir -p "$out"
scan=("$python" "$here/scan_rate.py" --catalog none)

step() {
    local name=$1
    shift
    [[ " ${STEPS:-all} " == *" all "* || " ${STEPS:-all} " == *" $name "* ]] || return 0
    echo "== $name: $*" | tee "$out/$name.txt"
    "$@" 2>&1 | grep -v Warning | tee -a "$out/$name.txt"
}

step write_floor "$python" "$here/write_floor.py" --rows 32000 --part 1000
step scan_2khz "${scan[@]}" --side 100 --rate 2000
step scan_2khz_store "${scan[@]}" --side 100 --rate 2000 --store-process
for khz in 5 10; do
    step "scan_${khz}khz_store" "${scan[@]}" --side 100 --passes "$khz" --rate "${khz}000" \
        --workers 8 --batch-size 32 --store-process
done
step scan_fast_store "${scan[@]}" --side "$side" --passes "$passes" --rate "$rate" \
    --workers "$workers" --batch-size 32 --store-process
step scan_fast_detector "${scan[@]}" --side "$side" --passes "$passes" --rate "$rate" \
    --workers "$workers" --batch-size 32 --store-process --detector-process
step scan_fast_scattered "${scan[@]}" --side "$side" --passes "$passes" --rate "$rate" \
    --workers "$workers" --batch-size 32 --store-process --detector-process \
    --channels "$channels"
