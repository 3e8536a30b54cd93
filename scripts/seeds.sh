#!/usr/bin/env bash
# The accuracy claim: one LR range test, then full 24-epoch runs (seeds 0..4; SEEDS="0 1 2" for others) with the
# LRs it found, and a table of final test accuracy, flip-TTA accuracy, LRs and seconds.
#   bash scripts/seeds.sh [OUT] [extra train.py flags...]        (OUT default runs/seeds)
# A finished seed is kept and an interrupted one resumed, so the same command continues where it stopped.
# On a box with several GPUs the seeds run concurrently, one per GPU (GPUS=N overrides the count; GPUS=1 runs
# them one after another). Each seed's log is OUT/seedS.log.
# COMMON="..." adds flags to both scripts, RANGE="..." to lr_range.py alone (e.g. a tiny CPU rehearsal:
#   COMMON="--data tests/data --device cpu --subset 256 --bs 64" RANGE="--num-iter 40" \
#   bash scripts/seeds.sh /tmp/seeds --epochs 2 --peak-epoch 1)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
out=${1:-runs/seeds}; shift || true
mkdir -p "$out"
# shellcheck disable=SC2086
[ -f "$out/lr_range/lr_range.json" ] || python3 lr_range.py --out "$out/lr_range" --seed 0 ${COMMON:-} ${RANGE:-}
gpus=${GPUS:-$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")}
pids=()
wait_all() {
  for p in "${pids[@]}"; do wait "$p" || { echo "seeds.sh: a run failed, see $out/seed*.log" >&2; exit 1; }; done
  pids=()
}
for seed in ${SEEDS:-0 1 2 3 4}; do
  run="$out/seed$seed"
  if finished "$run"; then continue; fi
  if [ -f "$run/config.json" ]; then
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$((seed % gpus)) python3 train.py --resume "$run" ${COMMON:-} >> "$run.log" 2>&1 &
  else
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$((seed % gpus)) python3 train.py --epochs 24 --bs 512 --seed "$seed" \
      --lr-json "$out/lr_range/lr_range.json" --out "$run" ${COMMON:-} "$@" > "$run.log" 2>&1 &
  fi
  pids+=($!)
  if [ ${#pids[@]} -ge "$gpus" ]; then wait_all; fi  # every GPU busy: wait for this round
done
wait_all
python3 scripts/summarize.py "$out"/seed*/ | tee "$out/summary.txt"
