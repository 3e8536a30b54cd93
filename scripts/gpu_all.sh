#!/usr/bin/env bash
# Everything a GPU session measures, in order, logs under ${OUT:-runs/gpu}: the five-seed accuracy
# table (the headline), the benchmark (data path, eager and compiled 24-epoch runs), the range
# test's stability. Run from the repository root after `source scripts/gpu_prepare.sh`; each step
# is a script of its own.
#   bash scripts/gpu_all.sh [seeds|bench|stability ...]        (default: seeds bench stability)
set -uo pipefail
python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
  || { echo "gpu_all.sh: torch sees no GPU; these steps are GPU measurements" >&2; exit 2; }
out=${OUT:-runs/gpu}
mkdir -p "$out"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(seeds bench stability)
export PYTHONUNBUFFERED=1
for step in "${steps[@]}"; do
  echo "=== $step $(date -u +%H:%M:%S)"
  case $step in
    seeds) python3 scripts/seeds.py --out "$out/seeds" @presets/gpu.txt 2>&1 \
             | tee "$out/seeds.log" ;;
    bench) python3 scripts/bench.py --device cuda --out "$out/bench" 2>&1 | tee "$out/bench.log" ;;
    stability) bash tools/lr_stability.sh "$out/lr_stability" --device cuda 2>&1 \
                 | tee "$out/stability.log" ;;
    *) echo "gpu_all.sh: unknown step $step" >&2; exit 2 ;;
  esac
done
