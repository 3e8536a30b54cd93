"""Many processes on one CPU with the gloo backend, launched by torchrun exactly as on a multi-GPU
box."""
import json

import pytest
import torch

import data
import engine
import train
from cli import UserError
from config import Config
from conftest import DATA, free_port, run_script, torchrun

RUN = ["--data", DATA, "--device", "cpu", "--subset", "192", "--bs", "32", "--lr-min", "0.02",
       "--lr-max", "0.3",
       # a quarter of the width: the plumbing is the same
       "--epochs", "2", "--peak-epoch", "1", "--width", "0.25"]


def test_global_batch_is_split_bit_for_bit_over_two_processes():
    arrays = data.load_cifar10(DATA, download=False)
    cfg = Config(bs=64, seed=4, subset=300)
    one, _ = data.make_loaders(arrays, cfg, "cpu")
    parts = [data.make_loaders(arrays, cfg, "cpu", r, 2)[0] for r in (0, 1)]
    for _ in range(2):  # two epochs: order and augmentation reshuffle alike on every process
        whole, halves = list(one), [list(p) for p in parts]
        assert len(whole) == len(halves[0]) == len(halves[1]) == 5  # the same iterations per epoch
        for (x, y), (x0, y0), (x1, y1) in zip(whole, *halves):
            # 32 + 32, and 22 + 22 for the partial last batch
            assert len(y0) == len(y1) == len(y) // 2
            assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_evaluation_set_is_split_into_consecutive_parts():
    arrays = data.load_cifar10(DATA, download=False)
    parts = [data.make_loaders(arrays, Config(bs=64, subset=199), "cpu", r, 2)[1] for r in (0, 1)]
    assert [p.n for p in parts] == parts[0].sizes == [100, 99]
    assert torch.equal(torch.cat([p.labels for p in parts]), torch.as_tensor(arrays[3][:199]))


@pytest.mark.parametrize("bs, world", [(512, 3), (33, 2)])
def test_a_batch_that_does_not_split_is_refused(tmp_path, bs, world):
    args = ["--device", "cpu", "--bs", str(bs), "--out", str(tmp_path / "x")]
    cfg = train.config_from_args(train.parse_args(args))
    with pytest.raises(UserError, match=f"--bs {bs} does not split evenly over {world} processes"):
        train.check_config(cfg, world)


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    """tests/dist_worker.py on 1 process and on 2 (torchrun): two steps with each batch-norm mode,
    one evaluation."""
    d = tmp_path_factory.mktemp("dist")
    r1 = run_script("tests/dist_worker.py", d / "one.pt")
    assert r1.returncode == 0, r1.stderr
    r2 = torchrun(["--standalone", "--nproc_per_node", "2"], "tests/dist_worker.py", d / "two.pt")
    assert r2.returncode == 0, r2.stderr
    one, two = (torch.load(d / name, weights_only=False) for name in ("one.pt", "two.pt"))
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
            # float64
            torch.testing.assert_close(two["sync_bn"][k], v, rtol=1e-9, atol=1e-10, msg=k)
    # without --sync-bn each process normalises by its own half-batch: the weights really differ
    gap = max((two["own_bn"][k] - v).abs().max().item() for k, v in one["own_bn"].items()
              if v.is_floating_point())
    assert gap > 1e-3


@pytest.mark.slow
def test_evaluation_counts_every_image_once_on_two_processes(worker_results):
    one, two = worker_results
    e1, e2 = one["eval"], two["eval"]
    assert e1["local_n"] == 199 and e2["local_n"] == 100  # rank 0's part; rank 1 held the other 99
    assert e2["accuracy"] == e1["accuracy"] and e2["loss"] == pytest.approx(e1["loss"], rel=1e-6)
    assert torch.equal(e2["preds"], e1["preds"]) and torch.equal(e2["labels"], e1["labels"])


def check_complete_run(out, world, iters=6):
    for name in ("config.json", "metrics.json", "curves.png", "lr.png", "misclassified.png",
                 "confusion.png",
                 "checkpoint_2.pt"):
        assert (out / name).stat().st_size > 0, name
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["world_size"] == world and metrics["final"]["world_size"] == world
    assert len(list(out.glob("events.out.tfevents.*"))) == 1  # TensorBoard: rank 0 alone logs
    # 192 / 32: global batches
    assert len(metrics["epochs"]) == 2 and len(metrics["per_iteration"]["lr"]) == 2 * iters
    state = torch.load(out / "checkpoint_2.pt", weights_only=False)["model"]
    # the plain model: a one-process run loads it
    assert not any(k.startswith("module.") for k in state)
    model = engine.build_model(0, "cpu", width=config["width"])
    model.load_state_dict(state)
    return metrics


@pytest.mark.slow
def test_torchrun_two_processes_on_one_machine(tmp_path):
    out = tmp_path / "run"
    r = torchrun(["--standalone", "--nproc_per_node", "2"], "train.py", *RUN, "--out", out)
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
    # one run folder between the two nodes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.slow
def test_torchrun_without_lrs_runs_the_range_test_on_every_process_and_trains_with_it(tmp_path):
    """No --lr-min/--lr-max under torchrun: every process sweeps its slice of each batch (Ignite's
    finder all-reduces the loss on every iteration, so rank 0 alone would wait forever), rank 0
    writes one result, and both train with it; lr_range.py under torchrun does the same."""
    two = ["--standalone", "--nproc_per_node", "2"]
    no_lrs = ["--data", DATA, "--device", "cpu", "--subset", "256", "--bs", "64", "--epochs", "2",
              "--peak-epoch", "1", "--width", "0.25"]
    sweep = ["--num-iter", "60", "--start-lr", "1e-3", "--sweeps", "1"]  # the loss falls on 256
    r = torchrun(two, "train.py", *no_lrs, *sweep, cwd=tmp_path, timeout=300)  # runs/<stamp>
    assert r.returncode == 0, r.stderr
    (run,) = (tmp_path / "runs").iterdir()
    found = json.loads((run / "lr_range" / "lr_range.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert found["world_size"] == 2 and found["bn_batch"] == 64  # --sync-bn: the global batch's
    assert (config["lr_min_used"], config["lr_max_used"]) == (found["lr_min"], found["lr_max"])
    assert r.stdout.count("LRMIN") == 1 and r.stdout.count("LR range test:") == 1
    check_complete_run(run, 2, iters=4)
    r = torchrun(two, "lr_range.py", *no_lrs[:8], "--width", "0.25", *sweep, cwd=tmp_path,
                 timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("LRMIN") == 1
    assert (tmp_path / "runs" / "lr_range" / "lr_range.json").exists()


def test_compile_under_torchrun_is_refused(tmp_path):
    cfg = train.config_from_args(train.parse_args(["--device", "cpu", "--compile", "--out",
                                                   str(tmp_path / "x")]))
    with pytest.raises(UserError, match="--compile runs on one process only"):
        train.check_config(cfg, 2)


def test_cpu_processes_hide_the_gpus(monkeypatch):
    """torchrun --device cpu on a box with fewer GPUs than processes: ignite would hand each process
    the GPU of its local rank ("invalid device ordinal"); CPU processes see none."""
    import distributed

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    class Parallel:  # stands in for idist.Parallel: what the process would start with
        def __init__(self, backend):
            seen["backend"], seen["visible"] = backend, __import__("os").environ.get(
                "CUDA_VISIBLE_DEVICES")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def run(self, fn, cfg):
            fn(0, cfg)

    monkeypatch.setattr(distributed.idist, "Parallel", Parallel)
    monkeypatch.setattr(distributed, "leave_together", lambda: None)
    distributed.launch(lambda c: seen.update(ran=c.device), Config(device="cpu"))
    assert seen == {"backend": "gloo", "visible": "", "ran": "cpu"}


@pytest.mark.slow
def test_flags_are_refused_in_one_line_by_every_process(tmp_path):
    r = torchrun(["--standalone", "--nproc_per_node", "2"], "train.py", *RUN, "--bs", "33", "--out",
                 tmp_path / "x")
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if "train.py: error:" in line]
    assert errors == ["train.py: error: --bs 33 does not split evenly over 2 processes: use a "
                      "multiple of 2"]
    assert not (tmp_path / "x").exists()
