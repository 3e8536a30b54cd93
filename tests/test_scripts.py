"""The scripts a user runs (scripts/) and the tools that check the project (tools/), each run as a
user would, on tests/data."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import engine
from cli import UserError
from conftest import DATA, ROOT, run_script
from scripts import summarize
from tools import bn_recal, reread_range

def test_recomputed_bn_statistics_are_the_average_over_the_batches():
    import model

    torch.manual_seed(0)
    net = model.ResNet9(width=0.125).eval()
    weights = {k: v.clone() for k, v in net.state_dict().items()
               if "running" not in k and "num_batches" not in k}
    batches = [(torch.randn(8, 3, 32, 32) * 2 + 1, None) for _ in range(3)]
    bn_recal.recompute_bn_stats(net, batches, "cpu")
    conv, bn = net.prep[0], net.prep[1]
    with torch.no_grad():
        outs = [conv(x) for x, _ in batches]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean)
    unbiased = torch.stack([o.var((0, 2, 3)) for o in outs]).mean(0)
    torch.testing.assert_close(bn.running_var, unbiased)
    assert bn.momentum == 0.1 and not net.training  # put back as they were
    # the weights untouched
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())


def test_reread_range_reads_a_saved_curve_with_todays_rule(tmp_path, capsys):
    import lr_rule
    from test_lr_range import synthetic_curve

    lrs, losses = synthetic_curve()
    now = lr_rule.pick_lrs(lrs, losses)
    saved = tmp_path / "old" / "lr_range.json"  # as an older rule saved it: other LRs
    saved.parent.mkdir()
    saved.write_text(json.dumps({"lrs": lrs.tolist(), "losses": losses.tolist(), "lr_min": 1e-3,
                                 "lr_max": now["lr_max"] / 2, "rule_version": 3, "seed": 0,
                                 "bs": 512}))
    before = saved.read_text()
    reread_range.main([str(saved), "--out", str(tmp_path / "figs")])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"{now['lr_min']:.3g} / {now['lr_max']:.3g}" in row
    assert f"0.001 / {now['lr_max'] / 2:.3g}" in row
    assert (tmp_path / "figs" / "old.png").stat().st_size > 0
    assert saved.read_text() == before  # the result itself untouched
    (tmp_path / "bad.json").write_text('{"lr_min": 0.1}')
    with pytest.raises(UserError, match="holds no loss curve"):
        reread_range.main([str(tmp_path / "bad.json")])


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
    r = run_script("tools/bn_recal.py", "--data", DATA, "--out", tmp_path / "recal.json", out)
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "recal.json").read_text())
    row = got["runs"][0]
    assert row["as trained"] == json.loads((out / "metrics.json").read_text())["final"]["accuracy"]
    assert 0 <= row["clean"] <= 1 and 0 <= row["augmented"] <= 1
    assert set(got["paired"]) == {"clean", "augmented"}
    r = run_script("tools/bn_recal.py", "--data", DATA, "--out", tmp_path / "x.json", tmp_path)
    # not a run folder: one line
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


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
    # one seed per variant: the paired line only when a base is named
    pair = [tmp_path / "base-s0", tmp_path / "ema-s0"]
    assert "paired" not in run_script("scripts/summarize.py", *pair).stdout
    r = run_script("scripts/summarize.py", "--base", "base", *pair)
    assert r.returncode == 0 and "+0.00, 0 of 1 up" in r.stdout  # the same run twice: not up
    r = run_script("scripts/summarize.py", "--base", "emma", *sorted(tmp_path.iterdir()))
    assert r.returncode == 2 and "--base emma: no such variant" in r.stderr
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.slow
def test_bench_runs_on_cpu(tmp_path):
    # --subset above the 400 training images there: the counts are of the images trained on
    r = run_script("scripts/bench.py", "--modes", "eager", "--data", DATA, "--device", "cpu",
                   "--width", "0.25", "--subset", "1000", "--bs", "200", "--epochs", "2",
                   "--peak-epoch", "1", "--lr-min", "0.01", "--lr-max", "0.1", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    bench = json.loads((tmp_path / "bench.json").read_text())
    (res,) = bench["runs"]
    assert bench["data"]["batches"] == 2 and bench["data"]["epoch_aug_s"] > 0
    assert res["mode"] == "eager" and res["train_s"] > 0 and res["images_per_s"] > 0
    assert bench["data"]["train_images"] == 400
    assert res["pflop"] == pytest.approx(3 * 2 * 24_036_608 * 400 * 2 / 1e15)  # MACs at width 1/4
    assert "img/s" in r.stdout


@pytest.mark.slow
def test_profile_step_runs_on_cpu(tmp_path):
    r = run_script("tools/profile_step.py", "--data", DATA, "--device", "cpu", "--width", "0.25",
                   "--subset", "64", "--bs", "32", "--warmup", "1", "--steps", "2", "--rows", "5",
                   "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "profile.json").read_text())
    assert prof["step_ms"] > 0 and 0 < prof["host_ms"] and prof["steps"] == 2
    assert (tmp_path / "trace.json").stat().st_size > 0 and "convolution" in r.stdout


@pytest.mark.slow
def test_ignite_overhead_script_runs():
    r = run_script("tools/ignite_overhead.py", "--epochs", "2", "--iters", "5", "--repeats", "1")
    assert r.returncode == 0, r.stderr
    assert "bare engine" in r.stdout and "train.py handlers" in r.stdout
    assert "us/iteration" in r.stdout


def test_paired_difference_pairs_by_seed():
    # seed 3 has no partner, seed 0 neither
    base, other = {0: 90.0, 1: 91.0, 2: 89.0}, {1: 91.5, 2: 89.1, 3: 95.0}
    n, mean, se, up = summarize.paired_difference(base, other)
    assert (n, up) == (2, 2) and mean == pytest.approx(0.3) and se == pytest.approx(0.2)
    assert summarize.paired_difference(base, {5: 1.0}) is None
    assert summarize.paired_difference(base, {0: 89.0})[2] is None  # one pair: no standard error
    assert summarize.paired_cell(base, other) == "+0.30 ± 0.20, 2 of 2 up"



@pytest.mark.slow
def test_seeds_runs_the_range_test_once_then_each_seed_and_carries_on(tmp_path):
    """One command for the claim: the range test once, a run per seed with its LRs, the table.
    Killed during seed 1, the same command keeps seed 0 and resumes seed 1 from its checkpoint."""
    out = tmp_path / "seeds"
    tiny = ["--data", DATA, "--device", "cpu", "--subset", "256", "--bs", "64", "--width", "0.125",
            "--epochs", "2", "--peak-epoch", "1", "--num-iter", "60", "--start-lr", "1e-3",
            "--sweeps", "1"]
    cmd = [sys.executable, str(ROOT / "scripts" / "seeds.py"), "--out", str(out), "--seeds", "0",
           "1", *map(str, tiny)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)  # its own process group: seeds.py and its train.py
    deadline = time.time() + 300
    while not (out / "seed1" / "checkpoint_1.pt").exists() and p.poll() is None \
            and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "seed1" / "checkpoint_2.pt").exists(), "killed too late: seed 1 had finished"
    seed0 = (out / "seed0" / "metrics.json").read_text()
    r = run_script("scripts/seeds.py", "--out", out, "--seeds", "0", "1", *tiny)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "seed 1: resuming" in r.stdout and "seed 0" not in r.stdout
    assert "range test" not in r.stdout
    assert (out / "seed0" / "metrics.json").read_text() == seed0  # kept as it was
    result = json.loads((out / "lr_range" / "lr_range.json").read_text())
    for seed in (0, 1):
        config = json.loads((out / f"seed{seed}" / "config.json").read_text())
        assert config["seed"] == seed and config["lr_min_used"] == result["lr_min"]
        assert config["width"] == 0.125 and config["lr_source"] == str(out / "lr_range" /
                                                                      "lr_range.json")
        assert config["lr_rule_version"] == result["rule_version"]  # the rule that read them
    assert "final" in json.loads((out / "seed1" / "metrics.json").read_text())
    summary = (out / "summary.txt").read_text()
    assert "median" in summary and "seed0" in summary and "seed1" in summary
