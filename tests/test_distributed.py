"""Many processes on one CPU with the gloo backend, launched by torchrun exactly as on a multi-GPU box."""
import json

import pytest
import torch

import data
import train
from cli import UserError
from conftest import DATA, free_port, run_script, torchrun

RUN = ["--data", DATA, "--device", "cpu", "--subset", "192", "--bs", "32", "--lr-min", "0.02", "--lr-max", "0.3",
       "--epochs", "2", "--peak-epoch", "1", "--width", "0.25"]  # a quarter of the width: the plumbing is the same


def test_global_batch_is_split_bit_for_bit_over_two_processes():
    arrays = data.load_cifar10(DATA, download=False)
    one, _ = data.make_loaders(arrays, 64, "cpu", seed=4, subset=300)
    parts = [data.make_loaders(arrays, 64, "cpu", seed=4, subset=300, rank=r, world=2)[0] for r in (0, 1)]
    for _ in range(2):  # two epochs: order and augmentation reshuffle alike on every process
        whole, halves = list(one), [list(p) for p in parts]
        assert len(whole) == len(halves[0]) == len(halves[1]) == 5  # the same iterations per epoch
        for (x, y), (x0, y0), (x1, y1) in zip(whole, *halves):
            assert len(y0) == len(y1) == len(y) // 2  # 32 + 32, and 22 + 22 for the partial last batch
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_evaluation_set_is_split_into_consecutive_parts():
    arrays = data.load_cifar10(DATA, download=False)
    parts = [data.make_loaders(arrays, 64, "cpu", subset=199, rank=r, world=2)[1] for r in (0, 1)]
    assert [p.n for p in parts] == parts[0].sizes == [100, 99]
    assert torch.equal(torch.cat([p.labels for p in parts]), torch.as_tensor(arrays[3][:199]))


@pytest.mark.parametrize("bs, world", [(512, 3), (33, 2)])
def test_a_batch_that_does_not_split_is_refused(tmp_path, bs, world):
    cfg = train.config_from_args(train.parse_args(["--device", "cpu", "--bs", str(bs), "--out", str(tmp_path / "x")]))
    with pytest.raises(UserError, match=f"--bs {bs} does not split evenly over {world} processes"):
        train.check_config(cfg, world)


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    """tests/dist_worker.py on 1 process and on 2 (torchrun): two steps with each batch-norm mode, one evaluation."""
    d = tmp_path_factory.mktemp("dist")
    r1 = run_script("tests/dist_worker.py", d / "one.pt")
    assert r1.returncode == 0, r1.stderr
    r2 = torchrun(["--standalone", "--nproc_per_node", "2"], "tests/dist_worker.py", d / "two.pt")
    assert r2.returncode == 0, r2.stderr
    one, two = torch.load(d / "one.pt", weights_only=False), torch.load(d / "two.pt", weights_only=False)
    assert (one["world"], two["world"]) == (1, 2)
    return one, two


@pytest.mark.slow
def test_release_ends_what_holds_the_process_group(worker_results):
    _, two = worker_results
    assert two["ddp_before_release"] >= 1 and two["ddp_after_release"] == 0


@pytest.mark.slow
def test_sync_bn_makes_two_processes_train_like_one(worker_results):
    one, two = worker_results
    for k, v in one["own_bn"].items():  # with one process both modes are plain batch norm
        assert torch.equal(v, one["sync_bn"][k]), k
    for k, v in one["own_bn"].items():
        if v.is_floating_point():
            torch.testing.assert_close(two["sync_bn"][k], v, rtol=1e-9, atol=1e-10, msg=k)  # float64
    # without --sync-bn each process normalises by its own half-batch: the weights really differ
    gap = max((two["own_bn"][k] - v).abs().max().item() for k, v in one["own_bn"].items() if v.is_floating_point())
    assert gap > 1e-3


@pytest.mark.slow
def test_evaluation_counts_every_image_once_on_two_processes(worker_results):
    one, two = worker_results
    e1, e2 = one["eval"], two["eval"]
    assert e1["local_n"] == 199 and e2["local_n"] == 100  # rank 0's part; rank 1 held the other 99
    assert e2["accuracy"] == e1["accuracy"] and e2["loss"] == pytest.approx(e1["loss"], rel=1e-6)
    assert torch.equal(e2["preds"], e1["preds"]) and torch.equal(e2["labels"], e1["labels"])


def check_complete_run(out, world):
    for name in ("config.json", "metrics.json", "curves.png", "lr.png", "misclassified.png", "confusion.png",
                 "checkpoint_2.pt"):
        assert (out / name).stat().st_size > 0, name
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["world_size"] == world and metrics["final"]["world_size"] == world
    assert len(list(out.glob("events.out.tfevents.*"))) == 1  # TensorBoard: rank 0 alone logs
    assert len(metrics["epochs"]) == 2 and len(metrics["per_iteration"]["lr"]) == 2 * 6  # 192 / 32: global batches
    state = torch.load(out / "checkpoint_2.pt", weights_only=False)["model"]
    assert not any(k.startswith("module.") for k in state)  # the plain model: a one-process run loads it
    model = train.build_model(0, "cpu", width=config["width"])
    model.load_state_dict(state)
    return metrics


@pytest.mark.slow
def test_torchrun_two_processes_on_one_machine(tmp_path):
    out = tmp_path / "run"
    r = torchrun(["--standalone", "--nproc_per_node", "2"], "train.py", *RUN, "--sync-bn", "--out", out)
    assert r.returncode == 0, r.stderr
    check_complete_run(out, 2)
    rows = [line for line in r.stdout.splitlines() if line.strip().startswith(("1 ", "2 "))]
    assert len(rows) == 2  # one table, from rank 0 alone
    assert r.stdout.count("test accuracy") == 1


@pytest.mark.slow
def test_torchrun_two_nodes_with_c10d_rendezvous(tmp_path):
    out, port = tmp_path / "run", free_port()
    launch = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes"]
    nodes = [torchrun(launch, "train.py", *RUN, "--out", out, wait=False) for _ in range(2)]
    for p in nodes:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    check_complete_run(out, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # one run folder between the two nodes


@pytest.mark.slow
def test_range_test_on_rank_0_and_one_fresh_run_folder(tmp_path):
    """lr_range.py under torchrun sweeps on rank 0 alone; train.py without --out names one folder for all."""
    two = ["--standalone", "--nproc_per_node", "2"]
    r = torchrun(two, "lr_range.py", "--data", DATA, "--device", "cpu", "--subset", "64", "--bs", "32",
                 "--num-iter", "20", "--sweeps", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("LRMIN") == 1 and (tmp_path / "runs" / "lr_range" / "lr_range.json").exists()
    r = torchrun(two, "train.py", *RUN, cwd=tmp_path)  # RUN has no --out: a fresh runs/<timestamp>
    assert r.returncode == 0, r.stderr
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.name != "lr_range")
    assert len(runs) == 1, runs
    check_complete_run(tmp_path / "runs" / runs[0], 2)


@pytest.mark.slow
def test_flags_are_refused_in_one_line_by_every_process(tmp_path):
    r = torchrun(["--standalone", "--nproc_per_node", "2"], "train.py", *RUN, "--bs", "33", "--out", tmp_path / "x")
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if "train.py: error:" in line]
    assert errors == ["train.py: error: --bs 33 does not split evenly over 2 processes: use a multiple of 2"]
    assert not (tmp_path / "x").exists()
