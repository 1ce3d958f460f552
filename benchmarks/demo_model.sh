#!/usr/bin/env bash
# Make the bundled demo model again: the one `ptychonn-ophyd train` run that made
# ptychonn_ophyd/data/ptychonn_demo_small_phase.* on an H200 (about 17 minutes there),
# from fresh weights.  GPU arithmetic is not bit-for-bit repeatable: expect the shipped
# recipe's accuracy, not its bytes.
#
#   bash benchmarks/demo_model.sh OUT
#
# OUT gets NAME.pth, NAME.onnx and NAME_recipe.json.  EXTRA is appended to the command
# (argparse keeps an option's last value), for a CPU rehearsal:
#   EXTRA="--epochs 1 --frames-per-epoch 128 --batch-size 32 --validation-frames 64 \
#       --check-every 0 --quiet" bash benchmarks/demo_model.sh /tmp/demo_model
set -euo pipefail
out=$1
name=ptychonn_demo_small_phase
# train's defaults are the recipe (training.config.TrainingConfig): nconv 32, 40 epochs
# of 262,144 frames at batch 256, lr 5e-4, seed 0.
${PTYCHONN:-ptychonn-ophyd} train --name "$name" --out "$out" ${EXTRA:-}
echo "the demo model: $out/$name.pth (shipped: ptychonn_ophyd/data/${name}_recipe.json)"
