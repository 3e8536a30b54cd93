#!/usr/bin/env bash
# The CPU twin: the whole recipe on a CPU, at a quarter of the network's width (16-32-64-128 channels, 412,954
# parameters) and nothing else changed: the full 50,000 training images, batch 512, 24 epochs peaking at epoch 5,
# the LRs found by the range test at that width, evaluated on the 10,000 test images. About half an hour per seed
# on 2 cores, so the recipe's accuracy can be measured on any machine.
#   bash scripts/cpu_twin.sh [OUT] [extra train.py flags...]      (OUT default runs/cpu_twin; SEEDS="0 1 2")
# Writes OUT/lr_range/, OUT/seedS/ (config.json, metrics.json, figures, checkpoints), OUT/summary.txt: the table
# with each run's accuracy and seconds, the median and the minimum. Rerun the same command to continue.
set -euo pipefail
out=${1:-runs/cpu_twin}; shift || true
COMMON="--device cpu --width ${WIDTH:-0.25} ${COMMON:-}" SEEDS=${SEEDS:-0 1 2} GPUS=1 \
  bash "$(dirname "$0")/seeds.sh" "$out" "$@"
