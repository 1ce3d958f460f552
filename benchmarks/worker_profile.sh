#!/usr/bin/env bash
# Where one worker's CPU goes: per-thread CPU seconds from /proc and a native py-spy
# profile of the worker while benchmarks/stream.py feeds it at RATE frames/s.
#
#     bash benchmarks/worker_profile.sh DIR RATE [stream.py options ...]
#
# Writes DIR/threads.txt (CPU seconds per thread over 8 s) and DIR/profile.txt (py-spy's
# raw stacks); py-spy must be on the PATH.
set -uo pipefail
out=${1:?output folder}
rate=${2:?frames/s}
shift 2
python=${PYTHON:-python3}
here=$(dirname "$0")
mkdir -p "$out"
"$python" "$here/stream.py" --rate "$rate" --seconds 30 "$@" > "$out/stream.txt" 2>&1 &
feeder=$!
pid=""
for _ in $(seq 120); do
    pid=$(pgrep -f "pvapy.cli.hpcConsumer" | head -1)
    [ -n "$pid" ] && grep -q "ready" "$(ls -t /tmp/ptychonn-stream-*/logs-1/worker-1.log | head -1)" 2>/dev/null && break
    sleep 0.5
done
sleep 8  # into the burst
ticks() { for t in /proc/"$pid"/task/*; do echo "$(cat "$t"/comm) $(awk '{print $14+$15}' "$t"/stat)"; done; }
ticks > "$out/before.txt"
py-spy record -p "$pid" -d 8 -r 200 --native --threads --format raw -o "$out/profile.txt" > /dev/null 2>&1
ticks > "$out/after.txt"
hz=$(getconf CLK_TCK)
paste "$out/before.txt" "$out/after.txt" |
    awk -v hz="$hz" '{d=($4-$2)/hz; if (d>0.05) printf "%-20s %6.2f s\n", $1, d}' |
    sort -k2 -nr > "$out/threads.txt"
wait "$feeder"
cat "$out/threads.txt"
tail -2 "$out/stream.txt"
