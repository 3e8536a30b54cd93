#!/usr/bin/env bash
# Choosing the defaults on a validation split, never on the test set: the last VAL training images (default
# 5,000) are held out, for the range test too, and each variant trains 24 epochs on the rest, once per seed.
#   bash scripts/ablate.sh OUT [VARIANT ...]      (default: every variant below; the table at the end)
#   VARIANT: base | pad_reflect | pad_mean | no_bn_decay | drop_last | mom_cycled (0.95 -> 0.85 -> 0.95)
#            | mom0.9 (constant, the default since 2026-11-24) | ls0.2 | ema | dirac (identity init) | alt_flip (alternating flip) | wdX (weight decay X, e.g. wd2.5e-4)
#            | logitX (logits x X instead of x0.125, e.g. logit0.25) | cutout_inside (the square always whole)
#            | ghostN (ghost batch norm over groups of N images, e.g. ghost32)
#            | bnlrK (batch-norm weights and biases at K x the LR, their decay / K, e.g. bnlr8)
#            | frozen_bnlrK (batch-norm weights frozen at 1, the biases at K x the LR, e.g. frozen_bnlr64: airbench's)
#            | lrmax_xK (LRMAX = K x the found one, e.g. lrmax_x0.5) | lrmin_divK (LRMIN = found / K)
# SEEDS="0 1" (default) picks the seeds; BASE="..." adds train.py flags to every variant (a setting already
# chosen); COMMON="..." adds flags to both scripts (--width 0.25 for the CPU twin), RANGE="..." to lr_range.py.
# A finished run is kept, an unfinished one resumed, so the same command continues an interrupted ablation.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
out=${1:?usage: bash scripts/ablate.sh OUT [VARIANT ...]}; shift
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(base lrmax_x0.5 lrmax_x0.25 lrmax_x2 lrmin_div10 mom_cycled no_bn_decay
                                        pad_reflect pad_mean drop_last ls0.2 ema)
mkdir -p "$out"
val=${VAL:-5000}
lrs="$out/lr_range/lr_range.json"
# shellcheck disable=SC2086
[ -f "$lrs" ] || python3 lr_range.py --val "$val" --out "$out/lr_range" ${COMMON:-} ${RANGE:-}
# the found LR `key` times `mul` divided by `div`
lr() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]] * float(sys.argv[3]) / float(sys.argv[4]))" "$lrs" "$@"; }
flags_of() {
  case "$1" in
    base) echo "" ;;
    pad_reflect) echo "--pad-fill reflect" ;;
    pad_mean) echo "--pad-fill mean" ;;
    no_bn_decay) echo "--no-bn-decay" ;;
    drop_last) echo "--drop-last" ;;
    mom0.9) echo "--momentum 0.9 0.9" ;;
    mom_cycled) echo "--momentum 0.95 0.85" ;;
    ls0.2) echo "--label-smoothing 0.2" ;;
    ema) echo "--ema-half-life 1.5" ;;
    dirac) echo "--init dirac" ;;
    alt_flip) echo "--flip alternate" ;;
    wd*) echo "--weight-decay ${1#wd}" ;;
    logit*) echo "--logit-scale ${1#logit}" ;;
    cutout_inside) echo "--cutout inside" ;;
    ghost*) echo "--ghost-bn ${1#ghost}" ;;
    bnlr*) echo "--bn-lr-scale ${1#bnlr}" ;;
    frozen_bnlr*) echo "--bn-weight frozen --bn-lr-scale ${1#frozen_bnlr}" ;;
    lrmax_x*) echo "--lr-max $(lr lr_max "${1#lrmax_x}" 1)" ;;
    lrmin_div*) echo "--lr-min $(lr lr_min 1 "${1#lrmin_div}")" ;;
    *) echo "ablate.sh: unknown variant $1" >&2; return 2 ;;
  esac
}
for name in "${variants[@]}"; do
  flags=$(flags_of "$name")
  for seed in ${SEEDS:-0 1}; do
    run="$out/$name-s$seed"
    if finished "$run"; then continue; fi
    if [ -f "$run/config.json" ]; then  # an interrupted run: its own settings, only the device may change
      # shellcheck disable=SC2086
      python3 train.py --resume "$run" ${COMMON:-} >> "$run.log" 2>&1 || echo "$run failed, see $run.log" >&2
    else  # a variant that diverges fails alone, in its log, and the others still run
      # shellcheck disable=SC2086
      python3 train.py --val "$val" --seed "$seed" --lr-json "$lrs" --out "$run" $flags ${BASE:-} ${COMMON:-} \
        > "$run.log" 2>&1 || echo "$run failed, see $run.log" >&2
    fi
    tail -n 1 "$run.log"
  done
done
python3 scripts/summarize.py "$out"/*-s*/
