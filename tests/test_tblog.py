"""TensorBoard event files, read back with TensorBoard's own reader: the tags, one point per step,
the values the run recorded, a resumed or restarted run continuing its curves without duplicates,
and the range test's curve."""
import json

import pytest
from ignite.engine import Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import lr_range
import tblog
import train
from cli import UserError
from config import Config
from conftest import DATA
from test_bad_input import call
from test_lr_range import synthetic_curve

IPE, EPOCHS = 4, 4  # 128 images / 32 per batch


def config(out, **kw):
    return Config(data=str(DATA), out=str(out), device="cpu", subset=128, bs=32, epochs=EPOCHS,
                  peak_epoch=1, lr_min=0.01, lr_max=0.1, width=0.125, tensorboard=True,
                  precision="fp32", **kw)


def read(folder):
    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    ea.Reload()
    return ea


def steps(ea, tag):
    return [e.step for e in ea.Scalars(tag)]


class Killed(Exception):
    pass


def kill_at(monkeypatch, iteration):
    """The next training run raises Killed as its iteration `iteration` starts, after TensorBoard
    was attached."""
    real_attach = tblog.attach_run

    def attach_then_die(trainer, *args, **kwargs):
        trainer.add_event_handler(Events.ITERATION_STARTED(once=iteration),
                                  lambda e: (_ for _ in ()).throw(Killed()))
        return real_attach(trainer, *args, **kwargs)

    monkeypatch.setattr(tblog, "attach_run", attach_then_die)


def test_a_run_and_its_resume_draw_each_curve_once(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_attach = tblog.attach_run
    kill_at(monkeypatch, 3 * IPE + 2)  # after epoch 3 was logged, not checkpointed
    with pytest.raises(Killed):
        train.train(config(out, save_every=2))
    assert sorted(p.name for p in out.glob("*.pt")) == ["checkpoint_2.pt"]
    # epoch 3 logged past the checkpoint
    assert steps(read(out), "train/loss") == [IPE, 2 * IPE, 3 * IPE]
    monkeypatch.setattr(tblog, "attach_run", real_attach)
    cfg = train.config_from_args(train.parse_args(["--resume", str(out), "--device", "cpu"]))
    train.train(cfg)

    ea = read(out)
    scalars = set(ea.Tags()["scalars"])
    assert scalars >= {"train/loss", "train/accuracy", "test/loss", "test/accuracy",
                       "time/train_seconds", "time/eval_seconds", "schedule/lr",
                       "schedule/momentum", "final/accuracy", "final/tta_accuracy"}
    epoch_ends = [IPE * e for e in range(1, EPOCHS + 1)]
    for tag in ("train/loss", "train/accuracy", "test/loss", "test/accuracy", "time/train_seconds"):
        # epoch 3 once: the resume purged the killed run's point
        assert steps(ea, tag) == epoch_ends, tag
    assert steps(ea, "schedule/lr") == list(range(1, EPOCHS * IPE + 1))
    metrics = json.loads((out / "metrics.json").read_text())
    for tag in ("lr", "momentum"):
        values = [e.value for e in ea.Scalars(f"schedule/{tag}")]
        assert values == pytest.approx(metrics["per_iteration"][tag])
    values = [e.value for e in ea.Scalars("test/accuracy")]
    assert values == pytest.approx([h["eval_acc"] for h in metrics["epochs"]])
    final = [(EPOCHS * IPE + 1, pytest.approx(metrics["final"]["accuracy"]))]
    assert [(e.step, e.value) for e in ea.Scalars("final/accuracy")] == final
    assert "config/text_summary" in ea.Tags()["tensors"]


def test_a_run_restarted_before_its_first_checkpoint_drops_what_the_killed_one_logged(
        tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_attach = tblog.attach_run
    kill_at(monkeypatch, IPE + 2)  # epoch 1 logged, nothing saved
    with pytest.raises(Killed):
        train.train(config(out, save_every=3))
    assert not list(out.glob("*.pt")) and steps(read(out), "train/loss") == [IPE]
    monkeypatch.setattr(tblog, "attach_run", real_attach)
    train.train(train.config_from_args(train.parse_args(["--resume", str(out), "--device", "cpu"])))

    ea = read(out)
    assert steps(ea, "train/loss") == [IPE * e for e in range(1, EPOCHS + 1)]
    assert steps(ea, "schedule/lr") == list(range(1, EPOCHS * IPE + 1))


def test_the_range_test_logs_its_curve(tmp_path, monkeypatch):
    # the sweep itself is tested elsewhere: here, what the test writes of it
    curve = synthetic_curve()
    monkeypatch.setattr(lr_range, "sweep", lambda *args: tuple(map(list, curve)))
    cfg = Config(data=str(DATA), device="cpu", bs=32, subset=64, sweeps=2, width=0.125,
                 tensorboard=True, precision="fp32")
    result = lr_range.run_range_test(cfg, tmp_path / "lr")
    ea = read(tmp_path / "lr")
    assert steps(ea, "lr_range/loss") == list(range(len(curve[0])))
    assert [e.value for e in ea.Scalars("lr_range/lr")] == pytest.approx(result["lrs"])
    assert [e.value for e in ea.Scalars("lr_range/smoothed")] == pytest.approx(result["smoothed"])
    assert [e.value for e in ea.Scalars("lr_range/lr_max")] == pytest.approx([result["lr_max"]])
    assert [e.value for e in ea.Scalars("lr_range/lr_min")] == pytest.approx([result["lr_min"]])
    assert "lr_range/curve" in ea.Tags()["images"]


def test_without_tensorboard_the_run_is_as_before(tmp_path, monkeypatch):
    monkeypatch.setattr(tblog, "available", lambda: False)
    args = ["--data", str(DATA), "--device", "cpu", "--subset", "64", "--bs", "32", "--epochs", "2",
            "--peak-epoch", "1", "--width", "0.125", "--lr-min", "0.01", "--lr-max", "0.1", "--out"]
    code, err = call("train.py", [*args, str(tmp_path / "asked"), "--tensorboard"])
    said = "train.py: error: --tensorboard needs the tensorboard package: pip install tensorboard"
    assert code == 2 and err.strip() == said
    assert not (tmp_path / "asked").exists()
    code, err = call("train.py", [*args, str(tmp_path / "quiet")])
    assert code == 0, err
    assert (tmp_path / "quiet" / "metrics.json").exists()
    assert not list((tmp_path / "quiet").glob("events.*"))
    with pytest.raises(UserError, match="pip install tensorboard"):
        tblog.wanted(True)
