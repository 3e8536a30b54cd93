"""What Ignite and train.py's machinery cost: train.py's training (its Engine, schedulers, per-epoch evaluation,
metrics, checkpoints) against the plain PyTorch loop of tests/plain_loop.py on the same batches, alternately, and the
weights both end with (the same, to float32 rounding), at the same precision and memory layout on both sides.

    python scripts/vs_plain_loop.py --data DIR --device cpu --width 0.25 --epochs 2 --repeats 2

Prints seconds per run for each, ms per training step (evaluation and the first epoch excluded) and the ratio,
then the bare step (the plain step on one random batch: no data path) as the floor; writes vs_plain_loop.json.
"""
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import torch  # noqa: E402

import data  # noqa: E402
import train  # noqa: E402
from cli import Parser, add_common_args, add_precision_arg, add_width_arg, check_common_args, run_cli  # noqa: E402
from engine import resolve_precision, versions  # noqa: E402
from files import write_json  # noqa: E402
from model import ResNet9  # noqa: E402
from plain_loop import evaluate_plain, train_plain  # noqa: E402


def time_plain(cfg, arrays):
    """(loop seconds, ms per training step, weights, accuracy) of the plain loop on train.py's batches."""
    train_loader, eval_loader = data.make_loaders(arrays, cfg.bs, cfg.device, cfg.seed, cfg.subset)
    sync = torch.cuda.synchronize if cfg.device == "cuda" else (lambda: None)
    marks = [time.perf_counter()]  # training starts, then each evaluation's start and end

    def evaluate(model):
        sync()
        marks.append(time.perf_counter())
        result = evaluate_plain(model, eval_loader, cfg.precision)
        marks.append(time.perf_counter())
        return result

    model, history = train_plain(lambda: iter(train_loader), len(train_loader), cfg.epochs, cfg.peak_epoch,
                                 cfg.lr_min, cfg.lr_max, seed=cfg.seed, width=cfg.width, evaluate=evaluate,
                                 precision=cfg.precision, device=cfg.device)
    epoch_s = [b - a for a, b in zip(marks[0::2], marks[1::2])]
    return marks[-1] - marks[0], step_ms(epoch_s, len(train_loader)), model.state_dict(), history[-1][2][1]


def step_ms(epoch_seconds, iters_per_epoch):
    """ms per step over the epochs after the first (whose first steps create oneDNN's / cuDNN's kernels)."""
    later = epoch_seconds[1:] or epoch_seconds
    return 1000 * sum(later) / (len(later) * iters_per_epoch)


def time_bare(cfg, steps=10):
    """ms per step of the bare reference: the plain step (model, SGD with Nesterov, cross-entropy) at the run's
    precision and layout on one fixed random batch, after 2 warm-up steps: no data path, no schedule, no metrics."""
    sync = torch.cuda.synchronize if cfg.device == "cuda" else (lambda: None)
    torch.manual_seed(cfg.seed)
    model = ResNet9(width=cfg.width).to(cfg.device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr_min, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(cfg.bs, 3, 32, 32, device=cfg.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (cfg.bs,), device=cfg.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    ts = []
    for _ in range(2 + steps):
        t = time.perf_counter()
        with torch.autocast(torch.device(cfg.device).type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync()
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts[2:])


def time_train(cfg):
    """The same for train.train: its loop seconds; ms per step from its synchronised per-epoch training time."""
    with tempfile.TemporaryDirectory() as tmp:
        run = dataclasses.replace(cfg, out=str(Path(tmp) / "run"))
        summary = train.train(run)
        weights = torch.load(Path(run.out) / f"checkpoint_{cfg.epochs}.pt", weights_only=True)["model"]
        iters = json.loads((Path(run.out) / "config.json").read_text())["iters_per_epoch"]
        epoch_s = [e["train_seconds"] for e in json.loads((Path(run.out) / "metrics.json").read_text())["epochs"]]
    return summary["loop_seconds"], step_ms(epoch_s, iters), weights, summary["accuracy"]


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    p = Parser(__doc__)
    add_common_args(p, out_default="runs/vs_plain_loop", out_help="folder for vs_plain_loop.json")
    add_width_arg(p)
    add_precision_arg(p)
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (default: 2, peak after the first)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each, alternating (default: 2)")
    p.add_argument("--lr-min", type=float, default=0.004, help="LRMIN (default: 0.004)")
    p.add_argument("--lr-max", type=float, default=0.4, help="LRMAX (default: 0.4)")
    args = p.parse_args(argv)
    check_common_args(args)
    cfg = train.Config(data=args.data, device=args.device, seed=args.seed, bs=args.bs, subset=args.subset,
                       epochs=args.epochs, peak_epoch=max(1, args.epochs // 5), lr_min=args.lr_min,
                       lr_max=args.lr_max, width=args.width, tensorboard=False,
                       precision=resolve_precision(args.precision, args.device))
    train.check_config(cfg)
    arrays = data.load_cifar10(cfg.data)
    times, step_ms, gaps = {"train.py": [], "plain loop": []}, {"train.py": [], "plain loop": []}, []
    for _ in range(args.repeats):
        t_plain, ms_plain, w_plain, acc_plain = time_plain(cfg, arrays)
        t_train, ms_train, w_train, acc_train = time_train(cfg)
        for key, t, ms in (("plain loop", t_plain, ms_plain), ("train.py", t_train, ms_train)):
            times[key].append(t)
            step_ms[key].append(ms)
        gaps.append(max((w_plain[k].float() - w_train[k].float().to(w_plain[k].device)).abs().max().item()
                        for k in w_plain))
        print(f"plain loop {t_plain:.1f} s, {ms_plain:.0f} ms/step ({acc_plain:.2%}); train.py {t_train:.1f} s, "
              f"{ms_train:.0f} ms/step ({acc_train:.2%}); largest weight difference {gaps[-1]:.2e}", flush=True)
    bare = time_bare(cfg)
    med = {k: statistics.median(v) for k, v in times.items()}
    ms = {k: statistics.median(v) for k, v in step_ms.items()}
    ratio = med["train.py"] / med["plain loop"]
    print(f"median ({cfg.precision}, width {cfg.width:g}): train.py {med['train.py']:.1f} s, {ms['train.py']:.0f} "
          f"ms/step; plain loop {med['plain loop']:.1f} s, {ms['plain loop']:.0f} ms/step; ratio {ratio:.3f} (loop), "
          f"{ms['train.py'] / ms['plain loop']:.3f} (step)")
    print(f"bare step on a random batch (no data path): {bare:.0f} ms; train.py's step / bare: "
          f"{ms['train.py'] / bare:.3f}")
    write_json(Path(args.out) / "vs_plain_loop.json", {"seconds": times, "step_ms": step_ms, "ratio": ratio,
                                                      "bare_step_ms": bare, "weight_gap": gaps, "config": dataclasses.asdict(cfg),
                                                      "versions": versions(args.device)})


if __name__ == "__main__":
    run_cli(main)
