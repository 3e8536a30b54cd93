"""Every script against bad input, as a careless user gives it: each row must end with ONE line on
stderr that names what is wrong, exit status 2, and leave every file already on disk as it was. The
scripts run in this process (their main(argv) under run_cli, as `python SCRIPT` runs them), so the
table stays quick."""
import hashlib
import json
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest
import torch

import data
import lr_range
import model
import train
import triangle
from cli import run_cli
from scripts import seeds
from config import Config
from conftest import DATA

MAINS = {"train.py": train.main, "lr_range.py": lr_range.main, "triangle.py": triangle.main,
         "data.py": data.main, "model.py": model.main, "seeds.py": seeds.main}
CPU = ["--data", str(DATA), "--device", "cpu"]
TINY = [*CPU, "--subset", "64", "--bs", "32", "--epochs", "2", "--peak-epoch", "1", "--width",
        "0.125"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real two-epoch run folder (config, metrics, checkpoint), made once and copied by the rows
    that damage it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    code, err = call("train.py", [*TINY, "--lr-min", "0.01", "--lr-max", "0.1", "--out", str(out)])
    assert code == 0 and (out / "checkpoint_2.pt").exists(), err
    return out


def call(script, argv):
    """(exit status, stderr) of `python SCRIPT ARGV`, in this process."""
    saved_argv, saved_err = sys.argv, sys.stderr
    sys.argv = [script, *argv]
    import io
    sys.stderr = err = io.StringIO()
    try:
        run_cli(lambda: MAINS[script](argv))
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv, sys.stderr = saved_argv, saved_err
    return code, err.getvalue()


def snapshot(root):
    """Every file and folder under root with its content's hash: what 'nothing changed' compares."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file()
            else "dir" for p in sorted(pathlib.Path(root).rglob("*"))}


# ------------------------------------------------------------------ the damage each row does before
# the call


def copy_run(tmp, run):
    shutil.copytree(run, tmp / "run")
    return tmp / "run"


def damage(relpath, content):
    def setup(tmp, run):
        d = copy_run(tmp, run)
        (d / relpath).write_bytes(content(d / relpath) if callable(content) else content)
    return setup


def truncate(path):
    return path.read_bytes()[: path.stat().st_size // 2]


def edit_config(**change):
    def setup(tmp, run):
        d = copy_run(tmp, run)
        c = json.loads((d / "config.json").read_text())
        edited = {k: v for k, v in {**c, **change}.items() if v is not ...}  # ...: leave it out
        (d / "config.json").write_text(json.dumps(edited))
    return setup


# a pickled callable: loading it with weights_only=False would create the marker file
class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def code_in_checkpoint(tmp, run):
    d = copy_run(tmp, run)
    saved = torch.load(d / "checkpoint_2.pt", weights_only=True)
    torch.save({**saved, "trainer": RunsCode(tmp / "code_ran")}, d / "checkpoint_2.pt")


def a_file(name, content=b"x"):
    def setup(tmp, run):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(content)
    return setup


def a_folder(name):
    return lambda tmp, run: (tmp / name).mkdir(parents=True)


def npz_pair(train_bytes=None, test_folder=False):
    def setup(tmp, run):
        (tmp / "d").mkdir()
        train = DATA / "cifar10_train.npz"
        content = train_bytes(train) if train_bytes else train.read_bytes()
        (tmp / "d" / train.name).write_bytes(content)
        if test_folder:
            (tmp / "d" / "cifar10_test.npz").mkdir()
        else:
            shutil.copy(DATA / "cifar10_test.npz", tmp / "d")
    return setup


def lr_json(obj):
    return a_file("lr.json", (obj if isinstance(obj, str) else json.dumps(obj)).encode())


def result(**lrs):
    """A range-test result with every key, and these LRs."""
    return {**lr_range.reuse_key(Config()), **lrs}


NONE = None
R = "{tmp}/run"
ROWS = [  # (script, argv, setup, what the one line must say)
    ("train.py", ["--data", "{tmp}/f", "--device", "cpu"], a_file("f"), "is a file; --data names "
     "the folder"),
    ("train.py", ["--data", "{tmp}/d", "--device", "cpu"],
     npz_pair(truncate), "corrupt or truncated npz"),
    ("train.py", ["--data", "{tmp}/d", "--device", "cpu"],
     npz_pair(test_folder=True), "cifar10_test.npz: cannot be read"),
    ("train.py", [*TINY, "--out", "{tmp}/f/run"], a_file("f"), "is a file; give another --out"),
    ("train.py", [*TINY, "--out", "{tmp}/f"], a_file("f"), "is a file, not a folder"),
    ("train.py", [*TINY, "--out", R, "--lr-min", "0.01", "--lr-max", "0.1"],
     copy_run, "already holds a run"),
    ("train.py", ["--resume", "{tmp}/nothing", "--device", "cpu"], NONE, "no config.json there"),
    ("train.py", ["--resume", R, "--device", "cpu"],
     damage("checkpoint_2.pt", truncate), "damaged or truncated checkpoint"),
    ("train.py", ["--resume", R, "--device", "cpu"],
     damage("checkpoint_2.pt", b""), "damaged or truncated checkpoint"),
    ("train.py", ["--resume", R, "--device", "cpu"], code_in_checkpoint, "refused, it holds more "
     "than tensors"),
    ("train.py", ["--resume", R, "--device", "cpu"],
     damage("config.json", b"{not json"), "unreadable run configuration"),
    ("train.py", ["--resume", R, "--device", "cpu"],
     damage("config.json", b"[1, 2]"), "not a run configuration (a JSON list"),
    ("train.py", ["--resume", R, "--device", "cpu"],
     edit_config(lr_min_used=...), "it lacks lr_min_used"),
    ("train.py", ["--resume", R, "--device", "cpu"], edit_config(epochs="24"), "epochs must be "
     "int, got '24'"),
    ("train.py", ["--resume", R, "--device", "cpu"], edit_config(width=0.25), "the checkpoint "
     "holds a network with"),
    ("train.py", ["--resume", R, "--device", "cpu"],
     damage("metrics.json", truncate), "unreadable metrics file"),
    ("train.py", ["--resume", R, "--device", "cpu"],
     lambda tmp, run: [p.unlink() for p in copy_run(tmp, run).glob("*.pt")], "no checkpoint_*.pt "
     "there"),
    ("train.py", [*TINY, "--lr-json", "{tmp}/lr.json"],
     lr_json({"lr_min": 0.01}), "not an LR range-test result, it lacks lr_max"),
    ("train.py", [*TINY, "--lr-json", "{tmp}/lr.json"],
     lr_json("{\"lr_min\": 0.0"), "unreadable LR range-test result"),
    ("train.py", [*TINY, "--lr-json", "{tmp}/lr.json"],
     lr_json(result(lr_min=0.5, lr_max=0.1)), "0 <= lr_min < lr_max"),
    ("train.py", [*TINY, "--lr-json", "{tmp}/lr.json"],
     lr_json(result(lr_min="0.01", lr_max=1)), "0 <= lr_min < lr_max"),
    ("train.py", [*TINY, "--lr-json", "{tmp}/missing.json"], NONE, "no such LR range-test result"),
    ("train.py", [*TINY, "--lr-json", "{tmp}/lr.json"], a_folder("lr.json"), "unreadable LR "
     "range-test result"),
    ("train.py", [*TINY, "--width", "0"], NONE, "--width must be a positive number"),
    ("train.py", [*TINY, "--width", "nan"], NONE, "--width must be a positive number"),
    ("train.py", [*TINY, "--weight-decay", "-1"], NONE, "--weight-decay must be >= 0"),
    ("train.py", [*TINY, "--precision", "fp8"], NONE, "invalid choice: 'fp8'"),
    ("train.py", [*TINY, "--pad-fill", "reflect"], NONE, "unrecognized arguments: --pad-fill"),
    ("train.py", ["--resume", R, "--device", "cpu"], edit_config(ghost_bn=32), "made with ghost_bn "
     "32, which this version no longer has"),
    ("train.py", [*TINY, "--momentum", "0.9"], NONE, "--momentum: expected 2 arguments"),
    ("train.py", [*TINY, "--epochs", "many"], NONE, "invalid int value: 'many'"),
    ("train.py", [*TINY, "--subset", "-5"], NONE, "--subset must be >= 0"),
    ("train.py", [*TINY, "--val", "400"], NONE, "--val 400 leaves no training images"),
    ("train.py", [*TINY, "--eval-bs", "0"], NONE, "--eval-bs must be positive"),
    ("lr_range.py", [*CPU, "--out", "{tmp}/f"], a_file("f"), "is a file, not a folder"),
    ("lr_range.py", [*CPU, "--out", "{tmp}/f/lr"], a_file("f"), "is a file; give another --out"),
    ("lr_range.py", [*CPU, "--num-iter", "5"], NONE, "--num-iter must be at least 10"),
    ("lr_range.py", [*CPU, "--sweeps", "0"], NONE, "--sweeps must be positive"),
    ("lr_range.py", [*CPU, "--start-lr", "1", "--end-lr", "0.1"], NONE, "need 0 < --start-lr < "
     "--end-lr"),
    ("lr_range.py", ["--data", "{tmp}/f", "--device", "cpu"], a_file("f"), "is a file; --data "
     "names the folder"),
    ("lr_range.py", [*CPU, "--bs", "0"], NONE, "--bs must be positive"),
    ("lr_range.py", [*CPU, "--start-lr", "0"], NONE, "need 0 < --start-lr < --end-lr, got 0.0"),
    ("train.py", [*TINY, "--start-lr", "0"], NONE, "need 0 < --start-lr < --end-lr, got 0.0"),
    ("seeds.py", ["--out", "{tmp}/s", "--gpus", "0", *TINY], NONE, "--gpus must be at least 1"),
    ("triangle.py", ["--out", "{tmp}/tri.xyz"], NONE, "cannot write a figure as 'xyz'"),
    ("triangle.py", ["--out", "{tmp}/tri"], NONE, "cannot write a figure as 'no extension'"),
    ("triangle.py", ["--out", "{tmp}/f/tri.png"], a_file("f"), "is a file; give another --out"),
    ("triangle.py", ["--out", "{tmp}/d.png"], a_folder("d.png"), "is a folder; give a file name"),
    ("triangle.py", ["--one-cycle", "--lr-json", "{tmp}/lr.json", "--out", "{tmp}/o.png"],
     lr_json("]"), "unreadable LR"),
    ("triangle.py", ["--one-cycle", "--lr-json", "{tmp}/none.json", "--out", "{tmp}/o.png"], NONE,
     "none.json: no such LR range-test result"),  # the file named, so it must be there
    ("triangle.py", ["--stepsize", "0", "--out", "{tmp}/o.png"], NONE, "stepsize"),
    ("triangle.py", ["--base-lr", "0.2", "--max-lr", "0.1", "--out", "{tmp}/o.png"], NONE, "0.2"),
    ("triangle.py", ["--max-lr", "0.001", "--out", "{tmp}/o.png"], NONE, "0.001"),
    ("triangle.py", ["--cycles", "-1", "--out", "{tmp}/o.png"], NONE, "cycles"),
    ("data.py", [*CPU, "--out", "{tmp}/aug.xyz"], NONE, "cannot write a figure as 'xyz'"),
    ("data.py", [*CPU, "--out", "{tmp}/aug.png", "--rows", "0"], NONE, "--rows must be positive"),
    ("model.py", ["--width", "-1"], NONE, "--width must be a positive number"),
    ("model.py", ["--width", "wide"], NONE, "invalid float value: 'wide'"),
]


@pytest.mark.parametrize("script, argv, setup, says", ROWS,
                         ids=[f"{r[0]}:{r[3][:40]}" for r in ROWS])
def test_bad_input_is_one_line_and_changes_nothing(tmp_path, monkeypatch, finished_run, script,
                                                   argv, setup, says):
    monkeypatch.chdir(tmp_path)  # where default outputs would go
    if setup:
        setup(tmp_path, finished_run)
    before = snapshot(tmp_path)
    code, err = call(script, [a.replace("{tmp}", str(tmp_path)) if isinstance(a, str) else a
                              for a in argv])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: ") and says in lines[0], err
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "code_ran").exists()


def test_unwritable_and_unreadable_paths(tmp_path, monkeypatch):
    """A read-only folder and an unreadable data file. Root ignores permission bits, so where the
    tests run as root the refusal the kernel would give is made by hand (os.access and the read say
    'permission denied')."""
    (tmp_path / "ro").mkdir()
    (tmp_path / "d").mkdir()
    for name in ("cifar10_train.npz", "cifar10_test.npz"):
        shutil.copy(DATA / name, tmp_path / "d")
    os.chmod(tmp_path / "ro", 0o555)
    os.chmod(tmp_path / "d" / "cifar10_train.npz", 0)
    if os.geteuid() == 0:
        real_access, real_load = os.access, np.load
        monkeypatch.setattr(os, "access", lambda p, mode: real_access(p, mode)
                            and pathlib.Path(p) != tmp_path / "ro")

        def load(path, *a, **k):
            if pathlib.Path(path).name == "cifar10_train.npz":
                raise PermissionError(13, "Permission denied", str(path))
            return real_load(path, *a, **k)
        monkeypatch.setattr(np, "load", load)
    try:
        for script, argv, says in [
            ("train.py", [*TINY, "--out", f"{tmp_path}/ro/run"], "is read-only for this user"),
            ("lr_range.py", [*CPU, "--out", f"{tmp_path}/ro/lr"], "is read-only for this user"),
            ("triangle.py", ["--out", f"{tmp_path}/ro/tri.png"], "is read-only for this user"),
            ("train.py", ["--data", f"{tmp_path}/d", "--device", "cpu", "--out", f"{tmp_path}/run"],
             "cifar10_train.npz: cannot be read (Permission denied)"),
        ]:
            code, err = call(script, argv)
            assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "ro"]
        assert not any((tmp_path / "ro").iterdir())
    finally:
        os.chmod(tmp_path / "ro", 0o755)
        os.chmod(tmp_path / "d" / "cifar10_train.npz", 0o644)


def test_a_full_disk_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "tri.png"
    assert call("triangle.py", ["--out", str(out)])[0] == 0
    before = out.read_bytes()
    real_replace = os.replace

    def disk_full(src, dst):
        if pathlib.Path(dst) == out:
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", disk_full)
    code, err = call("triangle.py", ["--out", str(out), "--cycles", "5"])
    assert code == 1 and err.strip() == f"triangle.py: error: {out}: No space left on device", err
    # no temporary
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["tri.png"]


def test_a_cpu_fallback_is_said_unless_chosen(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--data", str(DATA), "--subset", "64", "--bs", "32", "--epochs", "2", "--peak-epoch",
            "1", "--width", "0.125", "--lr-min", "0.01", "--lr-max", "0.1", "--out"]
    code, err = call("train.py", [*argv, str(tmp_path / "a")])
    assert code == 0 and err.strip().splitlines()[0].startswith("train.py: note: torch")
    assert "sees no CUDA GPU" in err
    assert "--device cpu" in err and "nvidia-smi" in err
    code, err = call("train.py", [*argv, str(tmp_path / "b"), "--device", "cpu"])
    assert code == 0 and "note:" not in err, err
