#!/usr/bin/env bash
# Launch the same short 2-process CPU run N times and count the launches that did not end cleanly
# (non-zero exit, no final line, or an incomplete run folder): a race at exit shows now and then.
#   bash tools/torchrun_repeat.sh [N=30] [OUT=runs/torchrun_repeat]      (from the repository root)
set -uo pipefail
n=${1:-30}; out=${2:-runs/torchrun_repeat}
mkdir -p "$out"
data=${DATA:-tests/data}
fails=0
for i in $(seq 1 "$n"); do
  run="$out/run$i"
  rm -rf "$run"
  OMP_NUM_THREADS=1 python3 -m torch.distributed.run --standalone --nproc_per_node 2 train.py \
    --device cpu --data "$data" --subset 256 --bs 64 --epochs 2 --peak-epoch 1 --lr-min 0.01 \
    --lr-max 0.1 --width 0.25 --out "$run" > "$run.log" 2>&1
  rc=$?
  if [ "$rc" -ne 0 ] || ! grep -q "test accuracy" "$run.log" || [ ! -f "$run/confusion.png" ] \
     || ! grep -q '"final"' "$run/metrics.json" 2>/dev/null; then
    fails=$((fails + 1))
    echo "launch $i: FAILED (exit $rc), see $run.log"
  fi
done
echo "$((n - fails)) of $n launches ended cleanly, $fails failed"
[ "$fails" -eq 0 ]
