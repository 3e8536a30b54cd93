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
import schedule
import train
from cli import LR_JSON, UserError
from conftest import DATA, ROOT, run_script, torchrun

SMOKE = ["--data", DATA, "--device", "cpu", "--subset", "256", "--bs", "32", "--lr-min", "0.01", "--lr-max", "0.1",
         "--width", "0.25"]  # a quarter of the width (model.py): every code path, 1/16 of the arithmetic
ARTEFACTS = ["config.json", "metrics.json", "curves.png", "lr.png", "misclassified.png", "confusion.png"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    r = run_script("train.py", *SMOKE, "--epochs", "3", "--peak-epoch", "1", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


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
    assert cfg["lr_source"] == "flags" and cfg["versions"]["torch"] == torch.__version__
    assert "test accuracy" in r.stdout.strip().splitlines()[-1]
    table = [line.split() for line in r.stdout.splitlines() if line.split() and line.split()[0] in "123"]
    assert [t[0] for t in table] == ["1", "2", "3"] and table[-1][-1] == "0:00:00", r.stdout  # nothing left at the end
    assert all(t[-2].count(":") == 2 for t in table), r.stdout  # the time so far, h:mm:ss


@pytest.mark.slow
def test_applied_schedule_is_the_one_cycle(smoke_run):
    out, _ = smoke_run
    trace = json.loads((out / "metrics.json").read_text())["per_iteration"]
    ipe = 8  # 256 images / 32
    lr_ms, mom_ms = schedule.one_cycle_milestones(ipe, 3, 1, 0.01, 0.1)
    assert trace["lr"] == pytest.approx(schedule.simulate(lr_ms, 3 * ipe))
    assert trace["momentum"] == pytest.approx(schedule.simulate(mom_ms, 3 * ipe))
    assert trace["lr"][ipe - 1] == pytest.approx(0.1)  # the last iteration of the peak epoch runs at LRMAX
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    assert epochs[0]["lr"] == pytest.approx(0.1)  # ... so the peak epoch's table row shows LRMAX
    assert trace["lr"][-1] == pytest.approx(0.01) and min(trace["lr"]) >= 0.01  # ends at LRMIN, never below


@pytest.mark.slow
def test_refuses_to_overwrite_a_run(smoke_run):
    out, _ = smoke_run
    r = run_script("train.py", *SMOKE, "--epochs", "2", "--peak-epoch", "1", "--out", out)
    assert r.returncode == 2 and "already holds a run" in r.stderr


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_weights(tmp_path):
    args = ["--data", DATA, "--device", "cpu", "--subset", "384", "--bs", "32", "--lr-min", "0.02", "--lr-max", "0.3",
            "--epochs", "2", "--peak-epoch", "1", "--ema-half-life", "1",  # with weight averaging, whose state must resume too
            "--width", "0.25"]
    r = run_script("train.py", *args, "--out", tmp_path / "whole")
    assert r.returncode == 0, r.stderr
    killed = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args), "--out", str(killed)], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint_1.pt").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "checkpoint_2.pt").exists(), "killed too late: epoch 2 had finished"
    first_config = json.loads((killed / "config.json").read_text())
    shutil.copytree(killed, tmp_path / "killed2")
    r = run_script("train.py", "--resume", killed, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in killed.glob("*.pt")) == ["checkpoint_2.pt"]  # the old run's file went after
    config = json.loads((killed / "config.json").read_text())
    assert {k: v for k, v in config.items() if k != "resumes"} == first_config  # the original, untouched
    assert [(x["device"], x["world_size"]) for x in config["resumes"]] == [("cpu", 1)] and config["resumes"][0]["at"]
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
    # the same killed run resumed on two processes (torchrun, gloo): it finishes, from the plain checkpoint
    r = torchrun(["--standalone", "--nproc_per_node", "2"], "train.py", "--resume", tmp_path / "killed2",
                 "--device", "cpu")
    assert r.returncode == 0, r.stderr
    two = json.loads((tmp_path / "killed2" / "metrics.json").read_text())
    assert [e["epoch"] for e in two["epochs"]] == [1, 2] and two["final"]["world_size"] == 2
    assert two["epochs"][0] == mb["epochs"][0]  # epoch 1 is the killed run's own
    resumes = json.loads((tmp_path / "killed2" / "config.json").read_text())["resumes"]
    assert [x["world_size"] for x in resumes] == [2]
    r = run_script("train.py", "--resume", killed, "--device", "cpu")  # a finished run: no more training
    assert r.returncode == 0, r.stderr
    again = json.loads((killed / "metrics.json").read_text())
    assert again["epochs"] == mb["epochs"] and again["final"]["accuracy"] == mb["final"]["accuracy"]


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_iteration(tmp_path):
    out = tmp_path / "nan"
    r = run_script("train.py", "--data", DATA, "--device", "cpu", "--subset", "64", "--bs", "32", "--epochs", "2",
                   "--peak-epoch", "1", "--lr-min", "1e29", "--lr-max", "1e30", "--width", "0.25", "--out", out)
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
    (["--ema-half-life", "-1"], "--ema-half-life must be in"),
    (["--epochs", "4", "--peak-epoch", "2", "--ema-half-life", "4"], "--ema-half-life must be in"),
])
def test_impossible_flags_are_refused(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        train.check_config(train.config_from_args(train.parse_args(["--device", "cpu", "--out", str(tmp_path / "x"),
                                                                     *flags])))


@pytest.mark.slow
def test_impossible_flag_on_the_command_line(tmp_path):
    r = run_script("train.py", "--device", "cpu", "--epochs", "3", "--peak-epoch", "7", "--out", tmp_path / "x")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--peak-epoch" in r.stderr
    assert not (tmp_path / "x").exists()


def test_lrs_come_from_the_range_test(tmp_path, monkeypatch, capsys):
    cfg = train.Config(data=str(DATA), out=str(tmp_path / "run"), bs=64, subset=256,
                       lr_json=str(tmp_path / "lr_range.json"))
    ran = []

    def fake_range_test(rc, arrays=None):  # stands in for the sweep; records what it was asked for
        ran.append(rc)
        return {"lr_min": 0.003, "lr_max": 0.3}

    import lr_range
    monkeypatch.setattr(lr_range, "run_range_test", fake_range_test)
    with pytest.raises(UserError, match="lr_range.json: no such LR range-test result"):  # named, so it must exist
        train.resolve_lrs(cfg, None)
    monkeypatch.chdir(tmp_path)  # no result at the default path: the test runs, into the run folder
    assert train.resolve_lrs(train.Config(**{**cfg.__dict__, "lr_json": LR_JSON}), None) == (
        0.003, 0.3, str(tmp_path / "run" / "lr_range" / "lr_range.json"))
    assert (ran[0].bs, ran[0].subset, ran[0].seed, ran[0].out) == (64, 256, 0, str(tmp_path / "run" / "lr_range"))
    made = lr_range.settled(ran[0])  # the settings a real test would have written into its JSON
    saved = {"lr_min": 0.01, "lr_max": 0.5, **{k: getattr(made, k) for k in lr_range.RUN_KEYS + lr_range.SWEEP_KEYS}}
    (tmp_path / "lr_range.json").write_text(json.dumps(saved))
    assert train.resolve_lrs(cfg, None) == (0.01, 0.5, cfg.lr_json)  # a matching JSON is used as it is
    assert train.resolve_lrs(train.Config(**{**cfg.__dict__, "lr_max": 0.7}), None) == (0.01, 0.7, cfg.lr_json)
    assert len(ran) == 1

    def resolve(config, change):
        Path(config.lr_json).write_text(json.dumps({**saved, **change}))
        capsys.readouterr()
        got = train.resolve_lrs(config, None)
        said = capsys.readouterr().out.strip()
        assert len(said.splitlines()) == 1 and list(change)[0] in said, said  # one line, naming the setting
        return got, said

    # made for another run (batch, subset, split, weight decay, network width, ...): never reused, and says why
    others = ({"bs": 512}, {"subset": 0}, {"val": 5000}, {"weight_decay": 5e-5}, {"width": 0.25}, {"bn_decay": False},
              {"pad_fill": "reflect"}, {"init": "dirac"}, {"flip": "alternate"}, {"logit_scale": 0.25},
              {"cutout": "inside"}, {"ghost_bn": 32}, {"bn_lr_scale": 8.0},
              {"bn_weight": "frozen"})
    for change in others:
        assert "not reused" in resolve(cfg, change)[1]
    assert len(ran) == 1 + len(others)
    # a result older than the width flag was made for the exercise's network: reused at width 1 only
    Path(cfg.lr_json).write_text(json.dumps({k: v for k, v in saved.items() if k not in lr_range.LEGACY}))
    assert train.resolve_lrs(cfg, None) == (0.01, 0.5, cfg.lr_json) and len(ran) == 1 + len(others)
    capsys.readouterr()
    train.resolve_lrs(train.Config(**{**cfg.__dict__, "width": 0.25}), None)
    assert "width 1.0 (here 0.25)" in capsys.readouterr().out
    n = len(ran)
    # made by another sweep (iterations, sweeps, range, momentum): named with --lr-json, it is taken as chosen and
    # the difference said; found at the default path, it is stale and the test runs again
    sweeps = ({"num_iter": 40}, {"sweeps": 1}, {"start_lr": 1e-4}, {"end_lr": 1.0}, {"momentum": 0.95})
    for change in sweeps:
        got, said = resolve(cfg, change)
        assert got == (0.01, 0.5, cfg.lr_json) and "using the LRs of this file as named" in said
    assert len(ran) == n
    default = train.Config(**{**cfg.__dict__, "lr_json": LR_JSON})
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
        monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("killed")))

    with pytest.raises(KeyboardInterrupt):
        trainer.run([0, 1], max_epochs=3)
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*.pt")) == ["checkpoint_1.pt"]  # epoch 1 survives
    monkeypatch.undo()
    saver = SafeDiskSaver(str(tmp_path))  # the resumed process: its first save replaces what it started from
    saver.retire(tmp_path / "checkpoint_1.pt")
    attach(saver, 1).run([0, 1], max_epochs=2)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_3.pt"]


def test_tta_survives_a_model_that_reuses_its_output_memory():
    """A CUDA-graphed model (--compile reduce-overhead) may return the same buffer from consecutive calls."""

    class Reusing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.out = torch.zeros(4, 10)

        def forward(self, x):
            self.out.copy_(x[:, 0, 0, :10])  # depends on the image: the flipped one gives other logits
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
    assert seen == [False, False]  # one static graph per batch size; the 8s keep theirs, nothing went dynamic
    torch._dynamo.reset()


def test_recomputed_bn_statistics_are_the_average_over_the_batches():
    import model

    torch.manual_seed(0)
    net = model.ResNet9(width=0.125).eval()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [(torch.randn(8, 3, 32, 32) * 2 + 1, None) for _ in range(3)]
    engine.recompute_bn_stats(net, batches, "cpu")
    conv, bn = net.prep[0], net.prep[1]
    with torch.no_grad():
        outs = [conv(x) for x, _ in batches]
    torch.testing.assert_close(bn.running_mean, torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([o.var((0, 2, 3)) for o in outs]).mean(0))  # unbiased
    assert bn.momentum == 0.1 and not net.training  # put back as they were
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())  # the weights untouched


def test_ema_half_life_in_epochs():
    m = engine.ema_momentum(2.0, 100)  # 2 epochs of 100 iterations = 40 updates
    assert (1 - m) ** (2.0 * 100 / engine.EMA_EVERY) == pytest.approx(0.5)  # the old weights' share halves
    with pytest.raises(UserError, match="shorter than one EMA update"):
        engine.ema_momentum(0.01, 100)  # 0.2 updates: the "average" would be the current weights


@pytest.mark.slow
def test_summarize_prints_the_seed_table(smoke_run):
    out, _ = smoke_run
    r = run_script("scripts/summarize.py", out)
    assert r.returncode == 0, r.stderr
    acc = 100 * json.loads((out / "metrics.json").read_text())["final"]["accuracy"]
    assert f"median {acc:.2f} %, min {acc:.2f} %" in r.stdout


@pytest.mark.slow
def test_bn_recal_reproduces_the_run_then_recomputes(smoke_run, tmp_path):
    out, _ = smoke_run
    r = run_script("scripts/bn_recal.py", "--data", DATA, "--out", tmp_path / "recal.json", out)
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "recal.json").read_text())
    row = got["runs"][0]
    assert row["as trained"] == json.loads((out / "metrics.json").read_text())["final"]["accuracy"]
    assert 0 <= row["clean"] <= 1 and 0 <= row["augmented"] <= 1 and set(got["paired"]) == {"clean", "augmented"}
    r = run_script("scripts/bn_recal.py", "--data", DATA, "--out", tmp_path / "x.json", tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1  # not a run folder: one line


@pytest.mark.slow
def test_summarize_groups_ablation_variants(smoke_run, tmp_path):
    out, _ = smoke_run
    for name in ("base-s0", "base-s1", "ema-s0"):
        (tmp_path / name).mkdir()
        for f in ("config.json", "metrics.json"):
            shutil.copy(out / f, tmp_path / name / f)
    r = run_script("scripts/summarize.py", *sorted(tmp_path.iterdir()))
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.split()}
    assert lines["base"][1] == "2" and lines["ema"][1] == "1"  # runs per variant
    assert "up" in lines["ema"] and "up" not in lines["base"]  # ema is set against base
    r = run_script("scripts/summarize.py", "--base", "ema", *sorted(tmp_path.iterdir()))
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.split()}
    assert "up" in lines["base"] and "up" not in lines["ema"]  # and now base against ema
    r = run_script("scripts/summarize.py", "--base", "emma", *sorted(tmp_path.iterdir()))
    assert r.returncode == 2 and "--base emma: no such variant" in r.stderr and len(r.stderr.splitlines()) == 1


@pytest.mark.slow
def test_bench_runs_on_cpu(tmp_path):
    r = run_script("scripts/bench.py", "--modes", "eager", "--data", DATA, "--device", "cpu", "--width", "0.25",
                   "--subset", "64", "--bs", "32", "--epochs", "2", "--peak-epoch", "1", "--lr-min", "0.01", "--lr-max", "0.1",
                   "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    bench = json.loads((tmp_path / "bench.json").read_text())
    (res,) = bench["runs"]
    assert bench["data"]["batches"] == 2 and bench["data"]["epoch_aug_s"] > 0
    assert res["mode"] == "eager" and res["train_s"] > 0 and res["images_per_s"] > 0
    assert res["pflop"] == pytest.approx(3 * 2 * 24_036_608 * 64 * 2 / 1e15)  # multiply-adds at width 0.25
    assert "img/s" in r.stdout


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_end_to_end(tmp_path, precision):
    """The GPUs' paths run on the CPU too (torch's CPU autocast, fp16's gradient scaler): the step, EMA, both
    evaluators, the NaN check and the checkpoint cope with bf16/fp16 activations, and the weights stay float32."""
    import matplotlib

    matplotlib.use("Agg")
    with engine.autocast("cpu", precision):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == engine.DTYPES[precision]
    assert engine.build_model(0, "cpu", width=0.25).prep[0].weight.is_contiguous(memory_format=torch.channels_last)
    cfg = train.Config(data=str(DATA), out=str(tmp_path / "run"), device="cpu", subset=64, bs=16, epochs=2,
                       peak_epoch=1, lr_min=0.01, lr_max=0.1, ema_half_life=1.5, label_smoothing=0.1, width=0.25,
                       precision=precision, tensorboard=False)
    summary = train.train(cfg)
    epochs = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    assert all(math.isfinite(e["train_loss"]) and math.isfinite(e["eval_loss"]) for e in epochs)
    assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["tta_accuracy"] <= 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == precision
    state = torch.load(tmp_path / "run" / "checkpoint_2.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())  # master weights
    assert ("scaler" in state) == (precision == "fp16") and state.get("scaler", {"scale": 1.0})["scale"] > 0


@pytest.mark.parametrize("cuda, capability, cpu_bf16, picked", [
    (True, (9, 0), False, "bf16"), (True, (8, 0), False, "bf16"),  # H100/H200, A100: bf16 tensor cores
    (True, (7, 5), True, "fp16"), (True, (7, 0), True, "fp16"),  # T4, V100: fp16 tensor cores only
    (True, (6, 0), True, "fp32"),  # P100: no tensor cores
    (False, None, True, "bf16"), (False, None, False, "fp32"),  # a CPU with AVX512-BF16 or AMX; one without
])
def test_auto_precision_follows_what_the_device_computes(monkeypatch, cuda, capability, cpu_bf16, picked):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(engine, "cpu_computes_bf16", lambda: cpu_bf16)
    device = "cuda" if cuda else "cpu"
    assert engine.resolve_precision("auto", device) == picked
    assert engine.resolve_precision("fp32", device) == "fp32"  # a flag forces the choice
    assert (engine.make_scaler("cpu", picked) is not None) == (picked == "fp16")


def test_cpu_bf16_probe_reads_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)  # an older torch: the flags of /proc/cpuinfo decide
    real_open = builtins.open
    for flags, expected in (("fpu avx512f avx512_bf16 sse", True), ("fpu amx_bf16", True), ("fpu avx512f", False)):
        (tmp_path / "cpuinfo").write_text(f"model name : X\nflags : {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(tmp_path / "cpuinfo" if f == "/proc/cpuinfo"
                                                                           else f, *a, **k))
        assert engine.cpu_computes_bf16() is expected


@pytest.mark.slow
def test_profile_step_runs_on_cpu(tmp_path):
    r = run_script("scripts/profile_step.py", "--data", DATA, "--device", "cpu", "--width", "0.25", "--subset", "64",
                   "--bs", "32",
                   "--warmup", "1", "--steps", "2", "--rows", "5", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "profile.json").read_text())
    assert prof["step_ms"] > 0 and 0 < prof["host_ms"] and prof["steps"] == 2
    assert (tmp_path / "trace.json").stat().st_size > 0 and "convolution" in r.stdout


@pytest.mark.slow
def test_ignite_overhead_script_runs():
    r = run_script("scripts/ignite_overhead.py", "--epochs", "2", "--iters", "5", "--repeats", "1")
    assert r.returncode == 0, r.stderr
    assert "bare engine" in r.stdout and "train.py handlers" in r.stdout and "us/iteration" in r.stdout


def test_paired_difference_pairs_by_seed():
    from scripts import summarize

    base, other = {0: 90.0, 1: 91.0, 2: 89.0}, {1: 91.5, 2: 89.1, 3: 95.0}  # seed 3 has no partner, seed 0 neither
    n, mean, se, up = summarize.paired_difference(base, other)
    assert (n, up) == (2, 2) and mean == pytest.approx(0.3) and se == pytest.approx(0.2)
    assert summarize.paired_difference(base, {5: 1.0}) is None
    assert summarize.paired_difference(base, {0: 89.0})[2] is None  # one pair: no standard error
    assert summarize.paired_cell(base, other) == "+0.30 ± 0.20, 2 of 2 up"
