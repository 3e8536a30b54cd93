#!/usr/bin/env bash
# Stability of the range-test rule: five independent results, LRMIN/LRMAX of each and the max/min
# ratio (the goal: < 1.5). Each result pools --sweeps K sweeps (seeds seed..seed+K-1), so the five
# start K seeds apart (0, K, ..., 4K) and share no sweep.
#   bash tools/lr_stability.sh [OUT] [lr_range.py flags...]              (from the repository root)
set -euo pipefail
out=${1:-runs/lr_stability}; shift || true
k=$(python3 -c "import config; print(config.Config.sweeps)"); prev=""
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
print(tabulate([(r["seed"], f"{r['lr_min']:.4g}", f"{r['lr_max']:.4g}", f"{r['seconds']:.1f}")
                for r in rows], headers=["seed", "LRMIN", "LRMAX", "seconds"]))
for k in ("lr_min", "lr_max"):
    v = [r[k] for r in rows]
    print(f"{k}: max/min = {max(v) / min(v):.3f}")
PY
