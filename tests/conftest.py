import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"  # 400 train + 200 test images: the first ones of the real CIFAR-10 files
sys.path.insert(0, str(ROOT))


def run_script(script, *args, timeout=600):
    """Run one of the project's scripts as a user would, on the CPU, and return the CompletedProcess."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
