"""Benchmark of the whole train.py run as a user runs it: 24 epochs with the per-epoch test
evaluation, a checkpoint per epoch and TensorBoard's files (when installed), timed on the device.

    python scripts/bench.py --device cuda --data DIR         # a GPU box: eager, then --compile
    python scripts/bench.py --modes eager --subset 256 --epochs 2 --device cpu   # the code on a CPU

For each mode it runs train.train() once to warm up (torch.compile's compilation, cuDNN's
autotuning) and once timed, then prints: seconds per epoch (training only, synchronised), training
and evaluation seconds, the loop (the epochs with per-epoch evaluation, metrics and checkpoints: the
speed goal), the process's wall time, images/s, TFLOP/s against the model's count (3 x 2 x
multiply-adds per image), the warm-up's extra seconds, peak GPU memory, accuracy, GPU and torch. The
LRs come from --lr-json (or --lr-min/--lr-max) and are settled before any timing; lr_range.py times
itself. First it times the data path: reading the files, putting the dataset on the device, one
epoch of augmented batches. Results go to stdout and OUT/bench.json.
"""
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

import config  # noqa: E402
import data  # noqa: E402
import engine  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402
from cli import Parser, UserError, pick_device, run_cli  # noqa: E402
from files import write_json  # noqa: E402


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bench_data(cfg):
    """Seconds to read the files, to put the dataset on the device (with its statistics), and for
    one epoch of augmented training batches; the best of 3 (the first includes one-off start-up
    costs)."""
    times = {"read_s": [], "upload_s": [], "epoch_aug_s": []}
    for _ in range(3):
        t0 = time.perf_counter()
        arrays = data.load_cifar10(cfg.data)
        t1 = time.perf_counter()
        loader, _ = data.make_loaders(arrays, cfg, cfg.device)
        sync(cfg.device)
        t2 = time.perf_counter()
        for _ in loader:
            pass
        sync(cfg.device)
        t3 = time.perf_counter()
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[k].append(v)
    first = sum(v[0] for v in times.values())
    return {k: min(v) for k, v in times.items()} | {"first_total_s": first, "batches": len(loader),
                                                    "train_images": loader.n}


def compile_mode(mode):
    """bench mode -> Config.compile: eager -> "", compile -> "default", compile:MODE -> MODE."""
    return "" if mode == "eager" else mode.partition(":")[2] or "default"


def run_once(cfg):
    """One train.train() run; the peak memory is this run's alone (what earlier runs left is
    freed)."""
    if cfg.device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    summary = train.train(cfg)
    wall = time.perf_counter() - t0
    history = json.loads((Path(cfg.out) / "metrics.json").read_text())["epochs"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cfg.device == "cuda" else float("nan")
    return summary, history, wall, peak


def bench_mode(mode, base, macs, n_images):
    """A warm-up run, then a timed one, of train.train() in one mode: the table's numbers, or the
    error."""
    runs = []
    torch._dynamo.reset()  # each mode compiles from scratch: its warm-up run pays, the timed not
    try:
        for attempt in ("warm-up", "timed"):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = config.Config(**{**vars(base), "out": str(Path(tmp) / "run"),
                                       "compile": compile_mode(mode)})
                print(f"--- {mode}: {attempt} run")
                runs.append(run_once(train.check_config(cfg)))
    except Exception as e:  # a failing compile mode must not cost a GPU session the other numbers
        print(f"--- {mode} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return {"mode": mode, "error": f"{type(e).__name__}: {e}"[:2000]}
    (summary, history, wall, peak), warm_wall = runs[1], runs[0][2]
    images = n_images * base.epochs
    per_epoch = [h["train_seconds"] for h in history]
    flops = 3 * 2 * macs * images
    return {"mode": mode, "median_epoch_s": statistics.median(per_epoch), "train_s": sum(per_epoch),
            "eval_s": summary["eval_seconds"], "loop_s": summary["loop_seconds"], "wall_s": wall,
            "images_per_s": images / sum(per_epoch), "tflops": flops / sum(per_epoch) / 1e12,
            "pflop": flops / 1e15, "warmup_extra_s": warm_wall - wall, "peak_gib": peak,
            "accuracy": summary["accuracy"], "tta_accuracy": summary["tta_accuracy"],
            "device": torch.cuda.get_device_name() if base.device == "cuda" else engine.cpu_name(),
            "torch": torch.__version__, "precision": base.precision, "epochs": base.epochs,
            "bs": base.bs, "subset": base.subset, "width": base.width}


def print_tables(d, results):
    print(tabulate([(f"{d['read_s']:.3f}", f"{d['upload_s']:.3f}", f"{d['epoch_aug_s']:.3f}",
                     d["batches"], f"{d['first_total_s']:.3f}")],
                   headers=["read files s", "to device + stats s", "1 epoch augmented s", "batches",
                            "first time, all s"]))
    keys = ["median_epoch_s", "train_s", "eval_s", "loop_s", "wall_s", "images_per_s", "tflops",
            "warmup_extra_s", "peak_gib"]
    rows = [(r["mode"], "failed") if "error" in r else
            (r["mode"], *(f"{r[k]:,.2f}" for k in keys), f"{100 * r['accuracy']:.2f}", r["device"],
             r["precision"], r["torch"]) for r in results]
    print(tabulate(rows, headers=["mode", "s/epoch", "train s", "eval s", "loop s", "wall s",
                                  "img/s", "TFLOP/s", "warm-up +s", "peak GiB", "acc %", "device",
                                  "precision", "torch"]))


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    p = Parser(__doc__)
    config.add_args(p, config.COMMON, "width", "precision", "epochs", "peak_epoch", "lr_min",
                    "lr_max", "lr_json", out=("runs/bench", "folder for bench.json"))
    p.add_argument("--modes", default="eager,compile",
                   help="comma list of eager, compile, compile:MODE with MODE one of "
                   f"{', '.join(config.COMPILE_MODES)} (default: eager,compile); a mode that fails "
                   "is reported and the others still run")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    for mode in modes:
        if not (mode in ("eager", "compile") or mode.startswith("compile:")
                and compile_mode(mode) in config.COMPILE_MODES):
            raise UserError(f"--modes: unknown mode {mode!r} (eager, compile, compile:MODE)")
    base = config.from_args(args, device=pick_device(args.device))
    base.precision = engine.resolve_precision(base.precision, base.device)
    macs = model.count_macs(model.ResNet9(width=base.width))
    d = bench_data(base)
    # the LRs are settled before any timing: a missing range test runs here, untimed
    lr_min, lr_max, source, _ = train.resolve_lrs(base, data.load_cifar10(base.data))
    print(f"LRMIN {lr_min:.4g}, LRMAX {lr_max:.4g} from {source}")
    base = config.Config(**{**vars(base), "lr_min": lr_min, "lr_max": lr_max})
    results = [bench_mode(mode, base, macs, d["train_images"]) for mode in modes]
    print_tables(d, results)
    pflop = 3 * 2 * macs * d["train_images"] * base.epochs / 1e15
    print(f"FLOP count: {pflop:.3f} PFLOP for {base.epochs} epochs (3 x 2 x {macs:,} multiply-adds "
          "per image)")
    out = Path(base.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", {"data": d, "runs": results})


if __name__ == "__main__":
    run_cli(main)
