#!/usr/bin/env bash
# Everything a GPU session measures, in order, logs under ${OUT:-runs/gpu}: the benchmark (data path, eager and
# compiled 24-epoch runs), the range-test stability over five seeds, the five-seed accuracy table.
# Run after `source scripts/gpu_prepare.sh`. Each step is also a script of its own.
#   bash scripts/gpu_all.sh [bench|stability|seeds|ablate ...]     (default: bench stability seeds)
set -uo pipefail
out=${OUT:-runs/gpu}
mkdir -p "$out"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(bench stability seeds)
export PYTHONUNBUFFERED=1
for step in "${steps[@]}"; do
  echo "=== $step $(date -u +%H:%M:%S)"
  case $step in
    bench) python3 scripts/bench.py --out "$out/bench" 2>&1 | tee "$out/bench.log" ;;
    stability) bash scripts/lr_stability.sh "$out/lr_stability" 2>&1 | tee "$out/stability.log" ;;
    seeds) bash scripts/seeds.sh "$out/seeds" 2>&1 | tee "$out/seeds.log" ;;
    ablate) bash scripts/ablate.sh "$out/ablate" 2>&1 | tee "$out/ablate.log" ;;
    *) echo "gpu_all.sh: unknown step $step" >&2; exit 2 ;;
  esac
done
