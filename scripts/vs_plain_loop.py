"""What Ignite and train.py's machinery cost: train.py's training (its Engine, schedulers, per-epoch evaluation,
metrics, checkpoints) against the plain PyTorch loop of tests/plain_loop.py on the same batches, alternately, and the
weights both end with (the same, to float32 rounding).

    python scripts/vs_plain_loop.py --data DIR --device cpu --width 0.25 --epochs 2 --repeats 2

Prints seconds per run for each and the ratio train.py / plain loop; writes vs_plain_loop.json into --out.
"""
import dataclasses
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
from cli import Parser, add_common_args, add_width_arg, check_common_args, run_cli  # noqa: E402
from engine import versions  # noqa: E402
from files import write_json  # noqa: E402
from plain_loop import evaluate_plain, train_plain  # noqa: E402


def time_plain(cfg, arrays):
    train_loader, eval_loader = data.make_loaders(arrays, cfg.bs, cfg.device, cfg.seed, cfg.subset)
    t0 = time.perf_counter()
    model, history = train_plain(lambda: iter(train_loader), len(train_loader), cfg.epochs, cfg.peak_epoch,
                                 cfg.lr_min, cfg.lr_max, seed=cfg.seed, width=cfg.width,
                                 evaluate=lambda m: evaluate_plain(m, eval_loader))
    return time.perf_counter() - t0, model.state_dict(), history[-1][2][1]


def time_train(cfg):
    with tempfile.TemporaryDirectory() as tmp:
        run = dataclasses.replace(cfg, out=str(Path(tmp) / "run"))
        summary = train.train(run)
        weights = torch.load(Path(run.out) / f"checkpoint_{cfg.epochs}.pt", weights_only=True)["model"]
    return summary["loop_seconds"], weights, summary["accuracy"]


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    p = Parser(__doc__)
    add_common_args(p, out_default="runs/vs_plain_loop", out_help="folder for vs_plain_loop.json")
    add_width_arg(p)
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (default: 2, peak after the first)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each, alternating (default: 2)")
    p.add_argument("--lr-min", type=float, default=0.004, help="LRMIN (default: 0.004)")
    p.add_argument("--lr-max", type=float, default=0.4, help="LRMAX (default: 0.4)")
    args = p.parse_args(argv)
    check_common_args(args)
    cfg = train.Config(data=args.data, device=args.device, seed=args.seed, bs=args.bs, subset=args.subset,
                       epochs=args.epochs, peak_epoch=max(1, args.epochs // 5), lr_min=args.lr_min,
                       lr_max=args.lr_max, width=args.width, tensorboard=False)
    train.check_config(cfg)
    arrays = data.load_cifar10(cfg.data)
    times = {"train.py": [], "plain loop": []}
    for _ in range(args.repeats):
        t_plain, w_plain, acc_plain = time_plain(cfg, arrays)
        t_train, w_train, acc_train = time_train(cfg)
        times["plain loop"].append(t_plain)
        times["train.py"].append(t_train)
        gap = max((w_plain[k].float() - w_train[k].float()).abs().max().item() for k in w_plain)
        print(f"plain loop {t_plain:.1f} s ({acc_plain:.2%}), train.py {t_train:.1f} s ({acc_train:.2%}), "
              f"largest weight difference {gap:.2e}", flush=True)
    ratio = statistics.median(times["train.py"]) / statistics.median(times["plain loop"])
    print(f"median: train.py {statistics.median(times['train.py']):.1f} s, plain loop "
          f"{statistics.median(times['plain loop']):.1f} s, ratio {ratio:.3f}")
    write_json(Path(args.out) / "vs_plain_loop.json", {"seconds": times, "ratio": ratio, "config": dataclasses.asdict(cfg),
                                                      "versions": versions(args.device)})


if __name__ == "__main__":
    run_cli(main)
