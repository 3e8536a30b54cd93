import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"  # 400 train + 200 test images: the first ones of the real CIFAR-10 files
sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts scripts, torchrun or training runs; the quick subset leaves it out "
                            "(python -m pytest -q tests -m 'not slow')")


def run_script(script, *args, timeout=600):
    """Run one of the project's scripts as a user would, on the CPU, and return the CompletedProcess."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(launch, script, *args, wait=True, timeout=600, cwd=ROOT):
    """`torchrun LAUNCH... SCRIPT ARGS...` on CPU processes (gloo), as a user would type it; one thread each."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", *map(str, launch), str(ROOT / script), *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
