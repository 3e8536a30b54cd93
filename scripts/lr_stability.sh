#!/usr/bin/env bash
# Stability of the range-test rule: five seeds, LRMIN/LRMAX of each and the max/min ratio (the goal: < 1.5).
# (runs seed0, seedK, ..., seed4K for K sweeps per result, lr_range.py's --sweeps)
#   bash scripts/lr_stability.sh [OUT] [extra lr_range.py flags]
set -euo pipefail
out=${1:-runs/lr_stability}; shift || true
# each of the five results pools --sweeps K sweeps (seeds seed..seed+K-1): space the seeds K apart so
# that the five estimates share no sweep and are independent
k=$(python3 -c "import lr_range; print(lr_range.RangeConfig.sweeps)"); prev=""
for a in "$@"; do
  [ "$prev" = "--sweeps" ] && k=$a
  case $a in --sweeps=*) k=${a#--sweeps=} ;; esac
  prev=$a
done
for i in 0 1 2 3 4; do
  seed=$((i * k))
  python3 lr_range.py --seed "$seed" --out "$out/seed$seed" "$@"
done
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
from tabulate import tabulate
rows = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("seed*/lr_range.json"))]
print(tabulate([(r["seed"], f"{r['lr_min']:.4g}", f"{r['lr_max']:.4g}", f"{r['seconds']:.1f}") for r in rows],
               headers=["seed", "LRMIN", "LRMAX", "seconds"]))
for k in ("lr_min", "lr_max"):
    v = [r[k] for r in rows]
    print(f"{k}: max/min = {max(v) / min(v):.3f}")
PY
