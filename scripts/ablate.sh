#!/usr/bin/env bash
# Choosing the extras on a validation split, never on the test set: the last 5,000 training images are held out
# (--val 5000, for the range test too), and each variant trains 24 epochs on the other 45,000 with two seeds.
#   bash scripts/ablate.sh [OUT] [extra train.py flags]   -> the table of validation accuracy per variant
# COMMON="..." adds flags to both scripts, RANGE="..." to lr_range.py alone (as in seeds.sh); VAL=N another split.
set -euo pipefail
out=${1:-runs/ablate}; shift || true
mkdir -p "$out"
val=${VAL:-5000}
# shellcheck disable=SC2086
python3 lr_range.py --val "$val" --out "$out/lr_range" ${COMMON:-} ${RANGE:-}
# the rule's LRMAX against 2x and 4x of it (LRMIN stays the found one): does the valley of a fast sweep
# underestimate the peak a 5-epoch warm-up tolerates? The answer would change the rule, so it is asked on --val.
lr_max=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['lr_max'])" "$out/lr_range/lr_range.json")
declare -A variants=(
  [base]=""
  [lrmax_x2]="--lr-max $(python3 -c "print(2 * $lr_max)")"
  [lrmax_x4]="--lr-max $(python3 -c "print(4 * $lr_max)")"
  [ls0.2]="--label-smoothing 0.2"
  [ema]="--ema-half-life 1.5"
  [mom0.9]="--momentum 0.9 0.9"
  [ls0.2_ema]="--label-smoothing 0.2 --ema-half-life 1.5"
)
for name in "${!variants[@]}"; do
  for seed in 0 1; do
    # shellcheck disable=SC2086
    python3 train.py --val "$val" --seed "$seed" --lr-json "$out/lr_range/lr_range.json" --save-every 24 \
      --out "$out/$name-s$seed" ${variants[$name]} ${COMMON:-} "$@"
  done
done
python3 scripts/summarize.py "$out"/*-s*
