import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import engine
import lr_range
import lr_rule
from config import Config
from conftest import DATA, ROOT, run_script
from data import UserError
from report import clock


def synthetic_curve(seed=0, n=200, noise=0.03, valley=3.0):
    """A range-test-like curve: flat at ln 10, falls (logistic in log LR), then blows up past the
    valley."""
    rng = np.random.default_rng(seed)
    lrs = np.geomspace(1e-5, 10, n)
    x = np.log10(lrs)
    fall = 1.5 / (1 + np.exp(-(x + 2.0) * 3))  # half-way at LR 1e-2
    dip = 0.3 * np.exp(-((x - np.log10(valley)) ** 2) / 0.3)
    blow = np.where(lrs > valley, 8 * np.log10(lrs / valley) ** 2, 0) - dip
    return lrs, 2.3 - fall + blow + rng.normal(0, noise, n)


def test_rule_on_a_known_curve():
    lrs, losses = synthetic_curve()
    p = lr_rule.pick_lrs(lrs, losses)
    assert 1.5 < p["lr_max"] < 6  # the true minimum is at 3
    # the fall begins well before its midpoint at 1e-2
    assert 1e-4 < p["lr_min"] < 1e-2 < p["lr_max"]
    assert p["warning"] is None


def test_rule_takes_the_first_valley_not_a_later_deeper_one():
    # the shape of a real batch-512 sweep of this network: down to a valley at ~0.2, a spike at ~1,
    # a second, slightly deeper dip at ~4 (batch norm recovers), then divergence
    lrs = np.geomspace(1e-5, 10, 150)
    x = np.log10(lrs)
    losses = (2.3 - 0.65 / (1 + np.exp(-(x + 2) * 2.5)) + 0.8 * np.exp(-((x - 0.0) ** 2) / 0.02)
              - 0.05 * np.exp(-((x - 0.6) ** 2) / 0.01) + np.where(x > 0.8, 3 * (x - 0.8), 0))
    losses += np.where((x > -0.7) & (x < 0), 0.4 * (x + 0.7) ** 2, 0)
    p = lr_rule.pick_lrs(lrs, losses)
    assert 0.1 < p["lr_max"] < 0.5, p["lr_max"]
    # the global minimum is the later dip
    assert np.argmin(p["smoothed"]) > np.searchsorted(lrs, 1.0)


def test_rule_is_stable_under_noise():
    picks = [lr_rule.pick_lrs(*synthetic_curve(seed=s)) for s in range(5)]
    lr_max = [p["lr_max"] for p in picks]
    assert max(lr_max) / min(lr_max) < 1.5
    lr_min = [p["lr_min"] for p in picks]
    assert max(lr_min) / min(lr_min) < 1.5


def test_a_bump_inside_a_flat_floor_does_not_cut_the_floor_in_two():
    # a flat floor from 0.1 to 3 with a small bump at 0.5 (above the floor's tolerance, far below
    # the turn), its lowest point at 2: the whole floor counts (centre ~0.55), not only the part
    # right of the bump (~1.7)
    lrs = np.geomspace(1e-5, 10, 200)
    x = np.log10(lrs)
    bump = 0.15 * np.exp(-((x - np.log10(0.5)) ** 2) / 0.03)
    dip = 0.01 * np.exp(-((x - np.log10(2)) ** 2) / 0.05)
    losses = 2.3 - 1.0 / (1 + np.exp(-(x + 2) * 3)) + bump - dip \
        + np.where(lrs > 3, 6 * np.log10(lrs / 3) ** 2, 0)
    p = lr_rule.pick_lrs(lrs, losses)
    assert 0.3 < p["lr_max"] < 1.0, p["lr_max"]


def test_rule_stops_at_the_first_nan_and_warns_without_divergence():
    lrs, losses = synthetic_curve()
    cut = losses.copy()
    cut[150:] = np.nan
    p = lr_rule.pick_lrs(lrs, cut)
    assert p["n_used"] == 150 and p["lr_max"] <= lrs[149]
    p = lr_rule.pick_lrs(lrs[:120], losses[:120])  # the sweep ended while the loss still fell
    assert p["warning"] and "never turned up" in p["warning"]


@pytest.mark.parametrize("losses, message", [
    (np.full(50, 2.3), "never fell"),
    (np.r_[np.nan, np.full(49, 2.3)], "NaN/inf from the first step"),
    (np.r_[2.3, 2.2, 2.1, np.full(47, np.nan)], "finite losses"),
])
def test_rule_refuses_curves_without_an_answer(losses, message):
    with pytest.raises(UserError, match=message):
        lr_rule.pick_lrs(np.geomspace(1e-5, 10, len(losses)), losses)


def test_a_short_sweep_starts_later_but_never_above_1e_3():
    starts = {n: lr_range.auto_start_lr(n, 10.0) for n in (900, 750, 675, 600, 200, 40, 10)}
    assert starts == pytest.approx({900: 1e-4, 750: 1e-4, 675: 10 ** -3.5, 600: 1e-3, 200: 1e-3,
                                    40: 1e-3, 10: 1e-3})
    with pytest.raises(UserError, match=r"try --num-iter 100, or a later start, --start-lr 0.001,"):
        lr_rule.pick_lrs(np.geomspace(1e-5, 10, 50), np.full(50, 2.3))
    # starting at 1e-3, later is no help
    with pytest.raises(UserError, match=r"try --num-iter 100, or check"):
        lr_rule.pick_lrs(np.geomspace(1e-3, 10, 50), np.full(50, 2.3))


def test_mean_curve_averages_lr_by_lr_up_to_the_shortest_sweep():
    lrs = np.geomspace(1e-3, 1, 6).tolist()
    curves = [(lrs, [2, 2, 1, 1, 3, 9]), (lrs[:4], [4, 2, 3, float("nan")])]
    got_lrs, got = lr_rule.mean_curve(curves)
    # a NaN stays NaN: the rule stops there
    assert got_lrs == lrs[:4] and got[:3] == [3, 2, 2] and np.isnan(got[3])


def test_smooth_is_centred():
    v = np.r_[np.zeros(10), np.ones(10)]
    s = lr_rule.smooth(v, 5)
    assert s[0] == 0 and s[-1] == 1 and s[9] == pytest.approx(0.4) and s[10] == pytest.approx(0.6)
    # no lag on a ramp
    np.testing.assert_allclose(lr_rule.smooth(np.arange(20.0), 7), np.arange(20.0))


def test_a_sweep_says_where_it_stands_every_tenth_or_every_minute(monkeypatch):
    said, ticks = [], iter(range(0, 10**6, 7))  # 7 s per iteration
    monkeypatch.setattr(lr_range.time, "perf_counter", lambda: next(ticks))
    report = lr_range.Progress(Config(num_iter=100, sweeps=2), 1, 0, said.append)
    lrs, losses = [], []
    for k in range(100):
        lrs.append(1e-4 * 1.1 ** k), losses.append(2.3 - 0.01 * k)
        report(lrs, losses)
    done = [int(line.split()[1].split("/")[0]) for line in said]
    # every 10 iterations, and in between where a minute passed since the last line (9 x 7 s)
    assert {10, 20, 50, 90} <= set(done) and 9 in done and 100 not in done, said
    assert all(b - a <= 10 for a, b in zip(done, done[1:])), done
    first = said[done.index(10)]
    # the second sweep of two: 110 of 200 iterations done, in the time taken so far
    assert f"LR {lrs[9]:.3g}, loss {sum(losses[:10]) / 10:.3f} (mean of the last 10)" in first
    assert first.endswith(f"0:01:10 so far, about {clock(70 / 110 * 90)} left"), first


@pytest.mark.slow
def test_model_and_optimizer_restored_bit_for_bit():
    cfg = Config(data=str(DATA), subset=128, bs=32, num_iter=12, device="cpu", start_lr=1e-5,
                 width=0.25, precision="fp32")
    arrays = data.load_cifar10(DATA, download=False)
    loader, _ = data.make_loaders(arrays, cfg, "cpu")
    model = engine.build_model(0, "cpu", cfg.width)
    optimizer = engine.make_optimizer(model, 0.05, 0.9, 5e-4)
    # one epoch first: momentum buffers and BN running statistics are then non-trivial
    trainer = engine.create_trainer(model, optimizer, torch.nn.CrossEntropyLoss(), "cpu")
    trainer.run(loader, max_epochs=1)
    before = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    lrs, losses = lr_range.sweep(cfg, model, model, optimizer, loader)
    assert len(lrs) == len(losses) == 12 and lrs[-1] > 100 * lrs[0]
    # iteration k runs at start * (end/start)^(k/num_iter), from the first one on
    np.testing.assert_allclose(lrs, 1e-5 * (cfg.end_lr / 1e-5) ** (np.arange(12) / 12), rtol=1e-9)
    after = (model.state_dict(), optimizer.state_dict())
    for k, v in before[0].items():
        assert torch.equal(v, after[0][k]), k
    assert before[1]["param_groups"] == after[1]["param_groups"]
    for i, s in before[1]["state"].items():
        assert torch.equal(s["momentum_buffer"], after[1]["state"][i]["momentum_buffer"]), i


@pytest.mark.slow
def test_cli_end_to_end_on_cpu(tmp_path):
    r = run_script("lr_range.py", "--data", DATA, "--out", tmp_path, "--device", "cpu", "--subset",
                   "256", "--bs", "64", "--num-iter", "40", "--sweeps", "2", "--width", "0.5")
    assert r.returncode == 0, r.stderr
    said_first = "LR range test: 2 sweep(s) of 40 iterations, LR 0.001 -> 10"
    assert r.stdout.startswith(said_first), r.stdout
    progress = [line.split() for line in r.stdout.splitlines() if line.strip().startswith("sweep ")]
    # a line per sweep: time so far, the rest
    assert [p[1] for p in progress] == ["1/2", "2/2"], r.stdout
    assert progress[0][-1] == "left" and progress[1][-2] == "0:00:00", r.stdout
    # and inside each sweep, every 10 % of it: iteration, LR, recent loss, time left
    within = [line.split()[1] for line in r.stdout.splitlines() if "iteration " in line]
    assert within == [f"{k}/40:" for k in range(4, 40, 4)] * 2, r.stdout
    res = json.loads((tmp_path / "lr_range.json").read_text())
    # the rule reads their LR-by-LR mean
    assert res["sweeps"] == 2 and len(res["sweep_losses"]) == 2
    n = len(res["losses"])
    np.testing.assert_allclose(res["losses"], np.mean([c[:n] for c in res["sweep_losses"]], axis=0))
    # two seeds, two different sweeps
    assert res["sweep_losses"][0][:n] != res["sweep_losses"][1][:n]
    assert (tmp_path / "lr_range.png").read_bytes()[:4] == b"\x89PNG"
    for key in ("lrs", "losses", "lr_min", "lr_max", "rule", "seed", "bs"):
        assert key in res
    assert res["bs"] == 64 and res["seed"] == 0 and len(res["lrs"]) == len(res["losses"])
    # the first iteration too
    assert res["start_lr"] == pytest.approx(1e-3) and res["lrs"][0] == pytest.approx(1e-3)
    # an exponential sweep: equal steps in log LR from the first iteration on
    ratios = np.diff(np.log(res["lrs"]))
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-6)
    assert res["lrs"][0] <= res["lr_min"] < res["lr_max"] <= res["lrs"][-1]


@pytest.mark.slow
def test_cli_loss_never_falls_writes_nothing(tmp_path):
    (tmp_path / "lr_range.json").write_text('{"old": true}')
    r = run_script("lr_range.py", "--data", DATA, "--out", tmp_path, "--device", "cpu", "--subset",
                   "64", "--bs", "32", "--num-iter", "10", "--start-lr", "1e-9", "--end-lr", "1e-8",
                   "--sweeps", "1",
                   "--width", "0.25")
    assert r.returncode == 2 and "never fell" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert json.loads((tmp_path / "lr_range.json").read_text()) == {"old": True}  # untouched
    assert not (tmp_path / "lr_range.png").exists()


@pytest.mark.slow
def test_a_log_file_gets_each_line_while_the_script_runs(tmp_path):
    """Redirected into a file or a pipe, Python would hold the output back until the end; the
    scripts say each line as it happens, so the range test's first line arrives while its sweeps
    still run."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    p = subprocess.Popen([sys.executable, "lr_range.py", "--data", DATA, "--out", tmp_path,
                          "--device", "cpu", "--subset", "64", "--bs", "32", "--num-iter", "200",
                          "--sweeps", "1", "--width", "0.25"],
                         cwd=ROOT, env={**env, "MPLBACKEND": "Agg"}, stdout=subprocess.PIPE,
                         text=True)
    try:
        first = p.stdout.readline()
        assert first.startswith("LR range test:"), first
        # it came before the sweep's result, not at the exit
        assert not (tmp_path / "lr_range.json").exists()
    finally:
        p.kill()
        p.communicate()
