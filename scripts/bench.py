"""Benchmark of the whole train.py run: 24 epochs with the per-epoch test evaluation, timed on the device.

    python scripts/bench.py                         # GPU box: eager, then --compile, 24 epochs each
    python scripts/bench.py --modes eager --subset 256 --epochs 2 --device cpu   # the same code on a CPU

For each mode it runs train.train() once to warm up (torch.compile's compilation, cuDNN autotuning) and once
timed, then prints: seconds per epoch (training only, synchronised), total training and evaluation seconds,
the whole run's wall time, images/s, achieved TFLOP/s against the model's FLOP count (3 x 2 x multiply-adds
per image: forward + backward), the loop (the 24 epochs with per-epoch evaluation, metrics and checkpoint:
the speed goal) and the whole process's wall time, the warm-up run's extra seconds, peak GPU memory, accuracy, GPU and torch.
LRs come from --lr-json (or --lr-min/--lr-max) and are settled before any timing; lr_range.py times itself.
Before that it times the data path: reading the files, putting the dataset on the device, and one epoch of
augmented batches. Results go to stdout and OUT/bench.json.
"""
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

import data  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402
from cli import COMPILE_MODES, LR_JSON, Parser, UserError, add_common_args, add_width_arg, check_common_args, run_cli  # noqa: E402
from files import write_json  # noqa: E402


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bench_data(args):
    """Seconds to read the files, to put the dataset on the device (with its statistics), and for one epoch of
    augmented training batches; each repeated, the best of 3 (the first includes one-off start-up costs)."""
    times = {"read_s": [], "upload_s": [], "epoch_aug_s": []}
    for _ in range(3):
        t0 = time.perf_counter()
        arrays = data.load_cifar10(args.data)
        t1 = time.perf_counter()
        loader, _ = data.make_loaders(arrays, args.bs, args.device, args.seed, args.subset)
        sync(args.device)
        t2 = time.perf_counter()
        for _ in loader:
            pass
        sync(args.device)
        t3 = time.perf_counter()
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[k].append(v)
    return {k: min(v) for k, v in times.items()} | {"first_total_s": sum(v[0] for v in times.values()),
                                                     "batches": len(loader)}


def compile_mode(mode):
    """bench mode -> train.Config.compile: eager -> "", compile -> "default", compile:MODE -> MODE."""
    return "" if mode == "eager" else mode.partition(":")[2] or "default"


def run_once(cfg):
    if cfg.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    summary = train.train(cfg)
    wall = time.perf_counter() - t0
    history = json.loads((Path(cfg.out) / "metrics.json").read_text())["epochs"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cfg.device == "cuda" else float("nan")
    return summary, history, wall, peak


def bench_mode(mode, args, lr_min, lr_max, macs):
    """A warm-up run, then a timed one, of train.train() in one mode; the numbers of the table, or the error."""
    runs = []
    torch._dynamo.reset()  # each mode compiles from scratch: its warm-up run pays, its timed run does not
    try:
        for attempt in ("warm-up", "timed"):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = train.Config(data=args.data, out=str(Path(tmp) / "run"), device=args.device, seed=args.seed,
                                   bs=args.bs, subset=args.subset, epochs=args.epochs, peak_epoch=args.peak_epoch,
                                   lr_min=lr_min, lr_max=lr_max, compile=compile_mode(mode), save_every=args.epochs,
                                   width=args.width, tensorboard=False)
                train.check_config(cfg)
                print(f"--- {mode}: {attempt} run")
                runs.append(run_once(cfg))
    except Exception as e:  # one failing compile mode must not cost the other measurements of a GPU session
        print(f"--- {mode} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return {"mode": mode, "error": f"{type(e).__name__}: {e}"[:2000]}
    (summary, history, wall, peak), warm_wall = runs[1], runs[0][2]
    n_train = args.subset or 50_000
    per_epoch = [h["train_seconds"] for h in history]
    train_s = sum(per_epoch)
    flops = 3 * 2 * macs * n_train * args.epochs
    return {"mode": mode, "median_epoch_s": statistics.median(per_epoch), "train_s": train_s,
            "eval_s": summary["eval_seconds"], "loop_s": summary["loop_seconds"], "wall_s": wall,
            "images_per_s": n_train * args.epochs / train_s,
            "tflops": flops / train_s / 1e12, "pflop": flops / 1e15, "warmup_extra_s": warm_wall - wall,
            "peak_gib": peak, "accuracy": summary["accuracy"], "tta_accuracy": summary["tta_accuracy"],
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
            "epochs": args.epochs, "bs": args.bs, "subset": args.subset, "width": args.width}


def main():
    import matplotlib

    matplotlib.use("Agg")
    p = Parser(__doc__)
    add_common_args(p, out_default="runs/bench", out_help="folder for bench.json")
    add_width_arg(p)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--peak-epoch", type=int, default=5)
    p.add_argument("--lr-min", type=float, default=None, help="default: from --lr-json, as train.py")
    p.add_argument("--lr-max", type=float, default=None, help="default: from --lr-json, as train.py")
    p.add_argument("--lr-json", default=LR_JSON, help="range-test result (run first when missing)")
    p.add_argument("--modes", default="eager,compile",
                   help="comma list of eager, compile, compile:MODE with MODE one of " + ", ".join(COMPILE_MODES) +
                   " (default: eager,compile); a mode that fails is reported and the others still run")
    args = p.parse_args()
    check_common_args(args)
    modes = args.modes.split(",")
    for mode in modes:
        if not (mode in ("eager", "compile") or mode.startswith("compile:") and compile_mode(mode) in COMPILE_MODES):
            raise UserError(f"--modes: unknown mode {mode!r} (eager, compile, compile:MODE)")
    macs = model.count_macs(model.ResNet9(width=args.width))
    d = bench_data(args)
    print(tabulate([(f"{d['read_s']:.3f}", f"{d['upload_s']:.3f}", f"{d['epoch_aug_s']:.3f}", d["batches"],
                     f"{d['first_total_s']:.3f}")],
                   headers=["read files s", "to device + stats s", "1 epoch augmented s", "batches", "first time, all s"]))
    # the LRs are settled before any timing: a missing range test runs here, untimed
    base = train.Config(data=args.data, out=args.out, device=args.device, seed=args.seed, bs=args.bs,
                        subset=args.subset, lr_min=args.lr_min, lr_max=args.lr_max, lr_json=args.lr_json,
                        width=args.width)
    lr_min, lr_max, source = train.resolve_lrs(base, data.load_cifar10(args.data))
    print(f"LRMIN {lr_min:.4g}, LRMAX {lr_max:.4g} from {source}")
    results = [bench_mode(mode, args, lr_min, lr_max, macs) for mode in modes]
    rows = [(r["mode"], "failed") + ("",) * 11 if "error" in r else
            (r["mode"], f"{r['median_epoch_s']:.3f}", f"{r['train_s']:.2f}", f"{r['eval_s']:.2f}", f"{r['loop_s']:.2f}",
             f"{r['wall_s']:.2f}", f"{r['images_per_s']:,.0f}", f"{r['tflops']:.1f}", f"{r['warmup_extra_s']:.1f}",
             f"{r['peak_gib']:.2f}", f"{100 * r['accuracy']:.2f}", r["device"], r["torch"]) for r in results]
    print(tabulate(rows, headers=["mode", "s/epoch", "train s", "eval s", "loop s", "wall s", "img/s", "TFLOP/s",
                                  "warm-up +s", "peak GiB", "acc %", "device", "torch"]))
    pflop = 3 * 2 * macs * (args.subset or 50_000) * args.epochs / 1e15
    print(f"FLOP count: {pflop:.3f} PFLOP for {args.epochs} epochs (3 x 2 x {macs:,} multiply-adds per image)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", {"data": d, "runs": results})


if __name__ == "__main__":
    run_cli(main)
