#!/usr/bin/env bash
# Make the bundled demo model again: the three `ptychonn-ophyd train` runs that made
# ptychonn_ophyd/data/ptychonn_demo_small_phase.* on an H200 (about 20 minutes there),
# each starting from the one before.  GPU arithmetic is not bit-for-bit repeatable:
# expect the shipped recipe's accuracy, not its bytes.
#
#   bash benchmarks/demo_model.sh OUT
#
# OUT/v1, OUT/ft2 and OUT/ft3 each get NAME.pth, NAME.onnx and NAME_recipe.json; OUT/ft3
# is the demo model.  EXTRA is appended to every command (argparse keeps an option's
# last value), for a CPU rehearsal:
#   EXTRA="--epochs 1 --frames-per-epoch 128 --batch-size 32 --validation-frames 64 \
#       --check-every 0 --quiet" bash benchmarks/demo_model.sh /tmp/demo_model
set -euo pipefail
out=$1
name=ptychonn_demo_small_phase
train() { ${PTYCHONN:-ptychonn-ophyd} train --name "$name" --seed 0 "$@" ${EXTRA:-}; }

train --out "$out/v1" --epochs 25 --frames-per-epoch 65536 --batch-size 64 --lr 3e-4
train --out "$out/ft2" --initial-weights "$out/v1/$name.pth" \
    --epochs 20 --frames-per-epoch 262144 --batch-size 256 --lr 3e-4
train --out "$out/ft3" --initial-weights "$out/ft2/$name.pth" \
    --epochs 21 --frames-per-epoch 262144 --batch-size 256 --lr 3e-4
echo "the demo model: $out/ft3/$name.pth (shipped: ptychonn_ophyd/data/${name}_recipe.json)"
