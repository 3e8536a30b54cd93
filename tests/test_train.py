import dataclasses
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import engine
import lr_range
import lr_rule
import report
import schedule
import train
from cli import UserError
from config import LR_JSON, Config
from conftest import DATA, ROOT, SMOKE, run_script, torchrun

ARTEFACTS = ["config.json", "metrics.json", "curves.png", "lr.png", "misclassified.png",
             "confusion.png"]

@pytest.mark.slow
def test_smoke_run_writes_every_artefact_and_learns(smoke_run):
    out, r = smoke_run
    for name in ARTEFACTS + ["checkpoint_3.pt"]:
        assert (out / name).stat().st_size > 0, name
    m = json.loads((out / "metrics.json").read_text())
    losses = [e["train_loss"] for e in m["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0] and losses[-1] < math.log(10)
    assert m["final"]["eval_set"] == "test" and 0 <= m["final"]["tta_accuracy"] <= 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lr_source"] == "flags" and cfg["lr_rule_version"] is None
    assert cfg["versions"]["torch"] == torch.__version__
    assert cfg["command"].startswith("train.py --data ")  # started as /.../train.py
    assert "test accuracy" in r.stdout.strip().splitlines()[-1]
    table = [line.split() for line in r.stdout.splitlines() if line.split()[:1] in (["1"], ["2"],
                                                                                    ["3"])]
    # nothing left at the end
    assert [t[0] for t in table] == ["1", "2", "3"] and table[-1][-1] == "0:00:00", r.stdout
    assert all(t[-2].count(":") == 2 for t in table), r.stdout  # the time so far, h:mm:ss


def test_the_command_names_the_script_from_the_repository_root():
    assert report.command([str(ROOT / "scripts" / "seeds.py"), "--out", "/x"]) == \
        "scripts/seeds.py --out /x"  # the flags as given
    assert report.command(["train.py", "--seed", "1"]) == "train.py --seed 1"
    assert report.command(["/elsewhere/train.py"]) == "train.py"


@pytest.mark.slow
def test_applied_schedule_is_the_one_cycle(smoke_run):
    out, _ = smoke_run
    trace = json.loads((out / "metrics.json").read_text())["per_iteration"]
    ipe = 8  # 256 images / 32
    lr_ms, mom_ms = schedule.one_cycle_milestones(ipe, 3, 1, 0.01, 0.1)
    assert trace["lr"] == pytest.approx(schedule.simulate(lr_ms, 3 * ipe))
    assert trace["momentum"] == pytest.approx(schedule.simulate(mom_ms, 3 * ipe))
    # the last iteration of the peak epoch runs at LRMAX
    assert trace["lr"][ipe - 1] == pytest.approx(0.1)
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    assert epochs[0]["lr"] == pytest.approx(0.1)  # ... so the peak epoch's table row shows LRMAX
    # ends at LRMIN, never below
    assert trace["lr"][-1] == pytest.approx(0.01) and min(trace["lr"]) >= 0.01


@pytest.mark.slow
def test_refuses_to_overwrite_a_run(smoke_run):
    out, _ = smoke_run
    r = run_script("train.py", *SMOKE, "--epochs", "2", "--peak-epoch", "1", "--out", out)
    assert r.returncode == 2 and "already holds a run" in r.stderr


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_weights(tmp_path):
    args = ["--data", DATA, "--device", "cpu", "--subset", "384", "--bs", "32", "--lr-min", "0.02",
            "--lr-max", "0.3", "--epochs", "2", "--peak-epoch", "1", "--width", "0.25",
            "--ema-half-life", "1"]  # with weight averaging, whose state must resume too
    r = run_script("train.py", *args, "--out", tmp_path / "whole")
    assert r.returncode == 0, r.stderr
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "train.py"), *map(str, args), "--out", str(killed)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint_1.pt").exists() and p.poll() is None \
            and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "checkpoint_2.pt").exists(), "killed too late: epoch 2 had finished"
    first_config = json.loads((killed / "config.json").read_text())
    shutil.copytree(killed, tmp_path / "killed2")
    r = run_script("train.py", "--resume", killed, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    # the old run's file went after
    assert sorted(p.name for p in killed.glob("*.pt")) == ["checkpoint_2.pt"]
    config = json.loads((killed / "config.json").read_text())
    # the original, untouched
    assert {k: v for k, v in config.items() if k != "resumes"} == first_config
    assert [(x["device"], x["world_size"]) for x in config["resumes"]] == [("cpu", 1)]
    assert config["resumes"][0]["at"]
    a = torch.load(tmp_path / "whole" / "checkpoint_2.pt", weights_only=False)
    b = torch.load(killed / "checkpoint_2.pt", weights_only=False)
    for part in ("model", "ema_model"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)
    assert not torch.equal(a["model"]["fc.weight"], a["ema_model"]["fc.weight"])
    for i, s in a["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", killed))
    assert [e["train_loss"] for e in ma["epochs"]] == [e["train_loss"] for e in mb["epochs"]]
    assert ma["per_iteration"] == mb["per_iteration"]
    # wall seconds carry on over the kill: the killed process's to epoch 1, then the resumed one's
    w1, w2 = (e["wall_seconds"] for e in mb["epochs"])
    assert w2 >= w1 + mb["epochs"][1]["train_seconds"] + mb["epochs"][1]["eval_seconds"]
    assert mb["final"]["wall_seconds"] >= w2
    # the same killed run resumed on two processes (torchrun, gloo): it finishes, from the plain
    # checkpoint
    r = torchrun(["--standalone", "--nproc_per_node", "2"], "train.py", "--resume",
                 tmp_path / "killed2", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    two = json.loads((tmp_path / "killed2" / "metrics.json").read_text())
    assert [e["epoch"] for e in two["epochs"]] == [1, 2] and two["final"]["world_size"] == 2
    assert two["epochs"][0] == mb["epochs"][0]  # epoch 1 is the killed run's own
    resumes = json.loads((tmp_path / "killed2" / "config.json").read_text())["resumes"]
    assert [x["world_size"] for x in resumes] == [2]
    # a finished run: no more training
    r = run_script("train.py", "--resume", killed, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    again = json.loads((killed / "metrics.json").read_text())
    assert again["epochs"] == mb["epochs"] and again["final"]["accuracy"] == mb["final"]["accuracy"]


@pytest.mark.slow
def test_resume_before_the_first_checkpoint_starts_the_run_again(tmp_path):
    """Killed in its first epoch, a run holds only config.json: --resume trains it from the start
    with that config, as an unbroken run would."""
    args = ["--data", DATA, "--device", "cpu", "--subset", "256", "--bs", "32", "--lr-min", "0.02",
            "--lr-max", "0.3", "--epochs", "2", "--peak-epoch", "1", "--width", "0.125"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    r = run_script("train.py", *args, "--out", whole)
    assert r.returncode == 0, r.stderr
    killed.mkdir()
    shutil.copy(whole / "config.json", killed / "config.json")
    r = run_script("train.py", "--resume", killed, "--device", "cpu")
    assert r.returncode == 0 and "from the start" in r.stdout, r.stderr
    a, b = (torch.load(d / "checkpoint_2.pt", weights_only=True) for d in (whole, killed))
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (whole, killed))
    assert [e["train_loss"] for e in ma["epochs"]] == [e["train_loss"] for e in mb["epochs"]]
    assert mb["final"]["accuracy"] == ma["final"]["accuracy"]


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_iteration(tmp_path):
    out = tmp_path / "nan"
    r = run_script("train.py", "--data", DATA, "--device", "cpu", "--subset", "64", "--bs", "32",
                   "--epochs", "2", "--peak-epoch", "1", "--lr-min", "1e29", "--lr-max", "1e30",
                   "--width", "0.25", "--out", out)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "NaN/inf at epoch 1, iteration" in err[0], r.stderr
    assert (out / "metrics.json").exists() and (out / "lr.png").exists()


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be positive"),
    (["--bs", "0"], "--bs must be positive"),
    (["--epochs", "5", "--peak-epoch", "5"], "--peak-epoch must be between"),
    (["--lr-min", "0.5", "--lr-max", "0.4"], "must be below --lr-max"),
    (["--lr-min", "-0.1", "--lr-max", "0.4"], "--lr-min must be a finite number >= 0"),
    (["--lr-max", "-1"], "--lr-max must be a finite number >= 0"),
    (["--momentum", "0.95", "1.2"], "--momentum values must be in"),
    (["--ema-half-life", "-1"], "--ema-half-life must be >= 0"),
    (["--epochs", "4", "--peak-epoch", "2", "--ema-half-life", "4"], "--ema-half-life must be in"),
])
def test_impossible_flags_are_refused(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        args = train.parse_args(["--device", "cpu", "--out", str(tmp_path / "x"), *flags])
        train.check_config(train.config_from_args(args))


@pytest.mark.slow
def test_impossible_flag_on_the_command_line(tmp_path):
    r = run_script("train.py", "--device", "cpu", "--epochs", "3", "--peak-epoch", "7", "--out",
                   tmp_path / "x")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--peak-epoch" in r.stderr
    assert not (tmp_path / "x").exists()


def test_lrs_come_from_the_range_test(tmp_path, monkeypatch, capsys):
    cfg = Config(data=str(DATA), out=str(tmp_path / "run"), bs=64, subset=256, precision="fp32",
                 lr_json=str(tmp_path / "lr_range.json"))
    ran = []

    def fake_range_test(rc, out, arrays=None):  # stands in for the sweeps; records what it got
        ran.append((rc, out))
        return {"lr_min": 0.003, "lr_max": 0.3, "rule_version": lr_rule.RULE_VERSION}

    monkeypatch.setattr(lr_range, "run_range_test", fake_range_test)
    with pytest.raises(UserError, match="lr_range.json: no such LR range-test result"):
        train.resolve_lrs(cfg, None)  # named, so it must exist
    monkeypatch.chdir(tmp_path)  # no result at the default path: the test runs, into the run folder
    default = dataclasses.replace(cfg, lr_json=LR_JSON)
    found = (0.003, 0.3, str(tmp_path / "run" / "lr_range" / "lr_range.json"), lr_rule.RULE_VERSION)
    assert train.resolve_lrs(default, None) == found
    assert (ran[0][0].bs, ran[0][0].subset, ran[0][1]) == (64, 256, tmp_path / "run" / "lr_range")
    saved = {"lr_min": 0.01, "lr_max": 0.5, **lr_range.reuse_key(cfg)}  # what a real test writes
    (tmp_path / "lr_range.json").write_text(json.dumps(saved))
    named = (0.01, 0.5, cfg.lr_json, lr_rule.RULE_VERSION)  # and the rule that read them
    assert train.resolve_lrs(cfg, None) == named  # a matching result is used
    assert train.resolve_lrs(dataclasses.replace(cfg, lr_max=0.7), None) == (0.01, 0.7, *named[2:])
    assert len(ran) == 1

    def resolve(config, change):
        Path(config.lr_json).write_text(json.dumps({**saved, **change}))
        capsys.readouterr()
        got = train.resolve_lrs(config, None)
        said = capsys.readouterr().out.strip()
        assert len(said.splitlines()) == 1 and list(change)[0] in said, said  # one line, naming it
        return got, said

    # made for another step (batch, subset, split, decay, width, precision, batch-norm batch) or
    # with a setting this version no longer has: never reused, and the line says why
    others = ({"bs": 512}, {"subset": 0}, {"val": 5000}, {"weight_decay": 5e-5}, {"width": 0.25},
              {"precision": "bf16"}, {"bn_batch": 32}, {"pad_fill": "reflect"}, {"ghost_bn": 32})
    for change in others:
        assert "not reused" in resolve(cfg, change)[1]
    assert len(ran) == 1 + len(others)
    # a removed setting at the value that is today's step, and a result older than the width,
    # precision and bn_batch keys (the exercise's network, fp32 on a CPU, one process): reused
    old = {k: v for k, v in saved.items() if k not in ("width", "precision", "bn_batch")}
    Path(cfg.lr_json).write_text(json.dumps({**old, "pad_fill": "zero", "device": "cpu"}))
    assert train.resolve_lrs(cfg, None) == named and len(ran) == 1 + len(others)
    capsys.readouterr()
    train.resolve_lrs(dataclasses.replace(cfg, width=0.25), None)
    assert "width 1.0 (here 0.25)" in capsys.readouterr().out
    n = len(ran)
    # made by another sweep: named with --lr-json, it is taken as chosen and the difference said;
    # found at the default path, it is stale and the test runs again
    sweeps = ({"num_iter": 40}, {"sweeps": 3}, {"start_lr": 1e-3}, {"end_lr": 1.0},
              {"momentum": 0.95})
    for change in sweeps:
        got, said = resolve(cfg, change)
        assert got == named and "using the LRs of this file as named" in said
    assert len(ran) == n
    Path(LR_JSON).parent.mkdir(parents=True)
    for change in sweeps:
        assert "not reused" in resolve(default, change)[1]
    assert len(ran) == n + len(sweeps)


def test_a_kill_inside_a_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Ignite's Checkpoint asks its saver to remove the old file BEFORE it writes the new one."""
    from ignite.engine import Engine, Events
    from ignite.handlers import Checkpoint

    from files import SafeDiskSaver

    def attach(saver, first_epoch):
        trainer = Engine(lambda e, b: None)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, Checkpoint(
            {"model": torch.nn.Linear(2, 2), "trainer": trainer}, saver, n_saved=1,
            global_step_transform=lambda e, _: first_epoch + e.state.epoch))
        return trainer

    trainer = attach(SafeDiskSaver(str(tmp_path)), 0)

    @trainer.on(Events.EPOCH_STARTED(once=2))
    def the_disk_dies(engine):  # the epoch-2 save is killed mid-write
        monkeypatch.setattr(torch, "save",
                            lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("killed")))

    with pytest.raises(KeyboardInterrupt):
        trainer.run([0, 1], max_epochs=3)
    # epoch 1 survives
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_1.pt"]
    monkeypatch.undo()
    # the resumed process: its first save replaces what it started from
    saver = SafeDiskSaver(str(tmp_path))
    saver.retire(tmp_path / "checkpoint_1.pt")
    attach(saver, 1).run([0, 1], max_epochs=2)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_3.pt"]


def test_tta_survives_a_model_that_reuses_its_output_memory():
    """A CUDA-graphed model (--compile reduce-overhead) may return the same buffer from consecutive
    calls."""

    class Reusing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.out = torch.zeros(4, 10)

        def forward(self, x):
            # depends on the image: the flipped one gives other logits
            self.out.copy_(x[:, 0, 0, :10])
            return self.out

    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    ev = engine.create_evaluator(Reusing(), "cpu", tta=True)
    logits, _ = ev._process_function(ev, (x, y))
    torch.testing.assert_close(logits, (x[:, 0, 0, :10] + x.flip(3)[:, 0, 0, :10]) / 2)


def test_compiled_model_keeps_static_shapes_after_the_partial_batch():
    seen = []  # (symbolic?) of each graph torch.compile hands its backend

    def backend(gm, example_inputs):
        seen.append(any(isinstance(a, torch.SymInt) or isinstance(a, torch.Tensor) and
                        any(isinstance(d, torch.SymInt) for d in a.shape) for a in example_inputs))
        return gm.forward

    torch._dynamo.reset()
    net = engine.compile_model(engine.build_model(0, "cpu").eval(), "default", backend=backend)
    with torch.no_grad():
        for n in (8, 5, 8, 8):  # full batches, the epoch's partial last one, full batches again
            net(torch.randn(n, 3, 32, 32))
    # one static graph per batch size; the 8s keep theirs, nothing went dynamic
    assert seen == [False, False]
    torch._dynamo.reset()


def test_ema_half_life_in_epochs():
    m = engine.ema_momentum(2.0, 100)  # 2 epochs of 100 iterations = 40 updates
    # the old weights' share halves
    assert (1 - m) ** (2.0 * 100 / engine.EMA_EVERY) == pytest.approx(0.5)
    with pytest.raises(UserError, match="shorter than one EMA update"):
        engine.ema_momentum(0.01, 100)  # 0.2 updates: the "average" would be the current weights


