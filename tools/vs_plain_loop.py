"""What Ignite and train.py's machinery cost: train.py's training (its Engine, schedulers, per-epoch
evaluation, metrics, checkpoints) against the plain PyTorch loop of tests/plain_loop.py on the same
batches, alternately, at the same precision and memory layout, and the weights both end with (the
same, to rounding); then the bare step (the plain step on one random batch: no data path) as the
floor.

    python tools/vs_plain_loop.py --data DIR --device cpu --width 0.25 --epochs 2 --repeats 2

Prints seconds per run, ms per training step (evaluation and the first epoch left out) and the
ratios; writes vs_plain_loop.json into --out.
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

import config  # noqa: E402
import data  # noqa: E402
import train  # noqa: E402
from cli import Parser, pick_device, run_cli  # noqa: E402
from engine import build_model, resolve_precision, versions  # noqa: E402
from files import write_json  # noqa: E402
from plain_loop import evaluate_plain, train_plain  # noqa: E402


def step_ms(epoch_seconds, iters_per_epoch):
    """ms per step over the epochs after the first (whose first steps create the kernels)."""
    later = epoch_seconds[1:] or epoch_seconds
    return 1000 * sum(later) / (len(later) * iters_per_epoch)


def time_plain(cfg, arrays):
    """(loop seconds, ms per training step, weights, accuracy) of the plain loop on train.py's
    batches."""
    train_loader, eval_loader = data.make_loaders(arrays, cfg, cfg.device)
    sync = torch.cuda.synchronize if cfg.device == "cuda" else (lambda: None)
    marks = [time.perf_counter()]  # training starts, then each evaluation's start and end

    def evaluate(model):
        sync()
        marks.append(time.perf_counter())
        result = evaluate_plain(model, eval_loader, cfg.precision)
        marks.append(time.perf_counter())
        return result

    model, history = train_plain(lambda: iter(train_loader), len(train_loader), cfg.epochs,
                                 cfg.peak_epoch, cfg.lr_min, cfg.lr_max, seed=cfg.seed,
                                 width=cfg.width, evaluate=evaluate, precision=cfg.precision,
                                 device=cfg.device)
    epoch_s = [b - a for a, b in zip(marks[0::2], marks[1::2])]
    return (marks[-1] - marks[0], step_ms(epoch_s, len(train_loader)), model.state_dict(),
            history[-1][2][1])


def time_bare(cfg, steps=10):
    """ms per step of the bare reference: model, SGD with Nesterov, cross-entropy at the run's
    precision and layout on one fixed random batch, after 2 warm-up steps."""
    sync = torch.cuda.synchronize if cfg.device == "cuda" else (lambda: None)
    model = build_model(cfg.seed, cfg.device, cfg.width)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr_min, momentum=0.9, nesterov=True,
                                weight_decay=cfg.weight_decay)
    x = torch.randn(cfg.bs, 3, 32, 32, device=cfg.device)
    x = x.contiguous(memory_format=torch.channels_last)
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
    """The same for train.train: its loop seconds; ms per step from its synchronised epochs."""
    with tempfile.TemporaryDirectory() as tmp:
        run = dataclasses.replace(cfg, out=str(Path(tmp) / "run"))
        summary = train.train(run)
        weights = torch.load(Path(run.out) / f"checkpoint_{cfg.epochs}.pt", weights_only=True)
        iters = json.loads((Path(run.out) / "config.json").read_text())["iters_per_epoch"]
        epochs = json.loads((Path(run.out) / "metrics.json").read_text())["epochs"]
    ms = step_ms([e["train_seconds"] for e in epochs], iters)
    return summary["loop_seconds"], ms, weights["model"], summary["accuracy"]


def compare(cfg, arrays):
    """One plain-loop run and one train.py run: their seconds, ms per step, and the weights' gap."""
    t_plain, ms_plain, w_plain, acc_plain = time_plain(cfg, arrays)
    t_train, ms_train, w_train, acc_train = time_train(cfg)
    gap = max((w_plain[k].float() - w_train[k].float().to(w_plain[k].device)).abs().max().item()
              for k in w_plain)
    print(f"plain loop {t_plain:.1f} s, {ms_plain:.0f} ms/step ({acc_plain:.2%}); train.py "
          f"{t_train:.1f} s, {ms_train:.0f} ms/step ({acc_train:.2%}); largest weight difference "
          f"{gap:.2e}", flush=True)
    return {"plain loop": (t_plain, ms_plain), "train.py": (t_train, ms_train)}, gap


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    p = Parser(__doc__)
    config.add_args(p, config.COMMON, "width", "precision", "epochs", "lr_min", "lr_max",
                    out=("runs/vs_plain_loop", "folder for vs_plain_loop.json"), epochs=2,
                    lr_min=0.004, lr_max=0.4)
    p.add_argument("--repeats", type=int, default=2, help="runs of each, alternating (default: 2)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    cfg = config.from_args(args, device=device, peak_epoch=max(1, args.epochs // 5),
                           tensorboard=False, precision=resolve_precision(args.precision, device))
    train.check_config(cfg)
    arrays = data.load_cifar10(cfg.data)
    runs = [compare(cfg, arrays) for _ in range(args.repeats)]
    med = {k: [statistics.median(r[0][k][i] for r in runs) for i in (0, 1)]
           for k in ("train.py", "plain loop")}
    bare = time_bare(cfg)
    (t_train, ms_train), (t_plain, ms_plain) = med["train.py"], med["plain loop"]
    print(f"median ({cfg.precision}, width {cfg.width:g}): train.py {t_train:.1f} s, "
          f"{ms_train:.0f} ms/step; plain loop {t_plain:.1f} s, {ms_plain:.0f} ms/step; ratio "
          f"{t_train / t_plain:.3f} (loop), {ms_train / ms_plain:.3f} (step)")
    print(f"bare step on a random batch (no data path): {bare:.0f} ms; train.py's step / bare: "
          f"{ms_train / bare:.3f}")
    write_json(Path(cfg.out) / "vs_plain_loop.json",
               {"seconds": {k: [r[0][k][0] for r in runs] for k in med},
                "step_ms": {k: [r[0][k][1] for r in runs] for k in med},
                "ratio": t_train / t_plain, "bare_step_ms": bare,
                "weight_gap": [r[1] for r in runs],
                "config": dataclasses.asdict(cfg), "versions": versions(cfg.device)})


if __name__ == "__main__":
    run_cli(main)
