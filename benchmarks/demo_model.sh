#!/usr/bin/env bash
# Make the bundled demo model again: the two `ptychonn-ophyd train` runs that made
# ptychonn_ophyd/data/ptychonn_demo_small_phase.* on an H200 (about 17 and 13 minutes
# there).  GPU arithmetic is not bit-for-bit repeatable: expect the shipped recipe's
# accuracy, not its bytes.
#
#   bash benchmarks/demo_model.sh OUT
#
# OUT gets NAME.pth, NAME.onnx and NAME_recipe.json (whose initial_weights_recipe is
# the first run's), and OUT/stage1 the first run's files.  EXTRA is appended to both
# commands (argparse keeps an option's last value), for a CPU rehearsal:
#   EXTRA="--epochs 1 --frames-per-epoch 128 --batch-size 32 --validation-frames 64 \
#       --check-every 0 --quiet" bash benchmarks/demo_model.sh /tmp/demo_model
set -euo pipefail
out=$1
name=ptychonn_demo_small_phase
train="${PTYCHONN:-ptychonn-ophyd} train --name $name"
# From fresh weights, train's defaults (training.config.TrainingConfig): nconv 32,
# 40 epochs of 262,144 frames at batch 256, one-cycle to lr 5e-4, seed 0.
$train --out "$out/stage1" ${EXTRA:-}
# From that model, 30 more epochs of fresh frames (seed 11), one-cycle to lr 2e-4.
$train --out "$out" --initial-weights "$out/stage1/$name.pth" --seed 11 --lr 2e-4 \
    --epochs 30 ${EXTRA:-}
echo "the demo model: $out/$name.pth (shipped: ptychonn_ophyd/data/${name}_recipe.json)"
