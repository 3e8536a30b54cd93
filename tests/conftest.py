import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# 400 train + 200 test images: the first ones of the real CIFAR-10 files
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts scripts, torchrun or training runs; the quick "
                            "subset leaves it out "
                            "(python -m pytest -q tests -m 'not slow')")


def run_script(script, *args, timeout=600):
    """Run one of the project's scripts as a user would, on the CPU, and return the
    CompletedProcess."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(launch, script, *args, wait=True, timeout=600, cwd=ROOT):
    """`torchrun LAUNCH... SCRIPT ARGS...` on CPU processes (gloo), as a user would type it; one
    thread each."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", *map(str, launch), str(ROOT / script),
           *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# a quarter of the width (model.py): every code path at 1/16 of the arithmetic
SMOKE = ["--data", DATA, "--device", "cpu", "--subset", "256", "--bs", "32", "--lr-min", "0.01",
         "--lr-max", "0.1", "--width", "0.25"]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A 3-epoch train.py run, made once for the tests that read one."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    r = run_script("train.py", *SMOKE, "--epochs", "3", "--peak-epoch", "1", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r
