"""train.py against a plain PyTorch loop written from the README (tests/plain_loop.py): the same
initial weights and the same batches must give the same weights and the same numbers, so what the
README says is what runs."""
import json

import pytest
import torch

import data
from config import Config
from conftest import DATA, run_script
from plain_loop import evaluate_plain, one_cycle, train_plain

EPOCHS, PEAK, BS, SUBSET, WIDTH, LR_MIN, LR_MAX = 3, 1, 64, 256, 0.25, 0.02, 0.4


def test_readme_formula_is_the_one_cycle():
    assert one_cycle(1, 5, 24, 0.01, 1.0) == 0.01 and one_cycle(5, 5, 24, 0.01, 1.0) == 1.0
    assert one_cycle(24, 5, 24, 0.01, 1.0) == pytest.approx(0.01)
    assert one_cycle(3, 5, 24, 0.0, 1.0) == 0.5


@pytest.mark.slow
@pytest.mark.parametrize("flags, plain", [
    (["--precision", "fp32"], {}),  # the defaults, as the README states them, in float32
    (["--precision", "bf16"], {"precision": "bf16"}),  # and in bf16 (auto's pick on many machines)
    (["--precision", "fp32", "--label-smoothing", "0.2", "--momentum", "0.95", "0.85"],
     {"label_smoothing": 0.2, "momentum": (0.95, 0.85)}),
])
def test_train_py_equals_the_plain_loop(tmp_path, flags, plain):
    out = tmp_path / "run"
    r = run_script("train.py", "--data", DATA, "--device", "cpu", "--subset", SUBSET, "--bs", BS,
                   "--width", WIDTH, "--epochs", EPOCHS, "--peak-epoch", PEAK, "--lr-min", LR_MIN,
                   "--lr-max", LR_MAX, "--seed", 3, "--out", out, *flags)
    assert r.returncode == 0, r.stderr

    precision = plain.get("precision", "fp32")
    cfg = Config(bs=BS, seed=3, subset=SUBSET)
    train_loader, eval_loader = data.make_loaders(data.load_cifar10(DATA), cfg, "cpu")  # the same
    model, history = train_plain(lambda: iter(train_loader), len(train_loader), EPOCHS, PEAK,
                                 LR_MIN, LR_MAX, seed=3, width=WIDTH, **plain,
                                 evaluate=lambda m: evaluate_plain(m, eval_loader, precision))

    saved = torch.load(out / f"checkpoint_{EPOCHS}.pt", weights_only=True)["model"]
    mine = model.state_dict()
    assert saved.keys() == mine.keys()
    for k in saved:  # one CPU: the same operations in the same order, up to the LR's last bits
        torch.testing.assert_close(saved[k], mine[k], rtol=1e-4, atol=1e-5, msg=k)
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    for e, (train_loss, train_acc, (eval_loss, eval_acc)) in zip(epochs, history, strict=True):
        assert e["train_loss"] == pytest.approx(train_loss, rel=1e-4)
        assert e["train_acc"] == pytest.approx(train_acc)
        assert e["eval_loss"] == pytest.approx(eval_loss, rel=1e-4)
        assert e["eval_acc"] == pytest.approx(eval_acc)
    final = json.loads((out / "metrics.json").read_text())["final"]
    assert history[-1][2][1] == pytest.approx(final["accuracy"])
