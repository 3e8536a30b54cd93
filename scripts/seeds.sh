#!/usr/bin/env bash
# The accuracy claim: one LR range test, then five full 24-epoch runs (seeds 0..4) with the LRs it found,
# and a table of final test accuracy, flip-TTA accuracy, LRs and wall time.
#   bash scripts/seeds.sh [OUT] [extra train.py flags...]        (OUT default runs/seeds)
set -euo pipefail
out=${1:-runs/seeds}; shift || true
mkdir -p "$out"
python3 lr_range.py --out "$out/lr_range" --seed 0
for seed in 0 1 2 3 4; do
  python3 train.py --epochs 24 --bs 512 --seed "$seed" --lr-json "$out/lr_range/lr_range.json" \
    --out "$out/seed$seed" --save-every 24 "$@"
done
python3 scripts/summarize.py "$out"/seed*
