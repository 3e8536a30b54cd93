"""LR range test (Smith 2015; fastai's lr_find) that FINDS both bounds of the one-cycle: LRMIN and LRMAX.

    python lr_range.py                      # writes runs/lr_range/lr_range.{json,png}; train.py reads the JSON
    python lr_range.py --subset 1024 --num-iter 40 --device cpu   # a quick CPU run

Ignite's FastaiLRFinder sweeps the LR exponentially from --start-lr to --end-lr over --num-iter iterations
(iteration k, counted from 0, runs at start * (end/start)^(k/num_iter)) of the training step train.py runs
(engine.py: same model, SGD + Nesterov momentum 0.9 + weight decay, augmentation, precision), on the TRAINING
images only, stopping once the loss diverges. Then one stated rule reads the curve (`pick_lrs`):
  1. smooth the raw loss with a centred moving average over log-LR (no lag, unlike an EMA, so the minimum
     does not drift to higher LRs);
  2. LRMAX = the valley, the LR just before the smoothed loss turns up: the lowest point reached before the
     loss first climbs back by TURN_FRACTION of the drop made so far, taken as the (geometric) centre of its
     floor: the first to the last LR, up to that turn, whose loss is within VALLEY_TOLERANCE of the drop of that
     point (all of them, so a noisy bump inside a flat floor does not cut it in two). Not the global minimum:
     with batch norm the loss can spike at LR ~1 and fall again at LR ~5 (seen in our sweeps), and a larger LR
     there would not train. LRMAX is half of that valley (MAX_BACKOFF = 2), chosen on the CPU twin's validation
     split (docs/cpu_twin.md);
  3. LRMIN = where the loss starts to fall: the LR from which on the smoothed loss stays at least FALL_FRACTION
     of its drop (starting level = median of the first window of raw losses, down to the valley) below the start.
The rule reads the LR-by-LR mean of --sweeps K sweeps (default 3; seeds seed..seed+K-1): the valley of one
sweep is a broad, noisy floor, so one sweep's LRMAX varied 1.5-1.6x between five seeds and the mean of three
varied 1.23x (docs/lr_range.md, a CPU proxy). Three sweeps cost about six epochs' worth of steps.
A short sweep starts higher on its own: ten iterations per decade of LR where it can (see --start-lr).
Under torchrun the range test runs on rank 0 alone (on its GPU); the other processes exit at once.
A loss that never falls, or is NaN from the first step, is an error and writes nothing.
"""
import dataclasses
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.handlers import FastaiLRFinder

import data
import engine
import tblog
from cli import (BN_WEIGHT, CUTOUT_MODE, FLIP, INIT, LR_JSON, PAD_FILL, Parser, UserError, add_common_args, add_recipe_args,
                 add_tensorboard_arg, check_common_args, run_cli)
from files import check_writable, read_lr_result, save_figure, write_json
from report import progress

SMOOTH_FRACTION = 0.1  # moving-average window, as a fraction of the points recorded
TURN_FRACTION = 0.25  # the loss has turned up once it climbs back by 25 % of the drop made so far
VALLEY_TOLERANCE = 0.05  # the valley's floor: within 5 % of the drop of its lowest point; the valley is its centre
MAX_BACKOFF = 2.0  # LRMAX = valley / MAX_BACKOFF: chosen on the CPU twin's validation split (docs/cpu_twin.md)
RULE_VERSION = 3  # 1: LRMAX = the valley; 2: a quarter of it, floor cut at the first bump; 3: half, whole floor
FALL_FRACTION = 0.1  # LRMIN = first LR where the smoothed loss has made 10 % of its drop to the valley
MIN_DROP = 0.1  # a curve whose smoothed loss never falls 10 % below its start has no answer
RULE = (f"smooth the loss with a centred moving average ({SMOOTH_FRACTION:.0%} of the points); valley = lowest "
        f"smoothed loss before it first climbs back by {TURN_FRACTION:.0%} of the drop so far, taken as the centre "
        f"of its whole floor up to that turn (within {VALLEY_TOLERANCE:.0%} of the drop); "
        f"LRMAX = valley LR / {MAX_BACKOFF:g}; LRMIN = LR from which on the smoothed loss stays "
        f"{FALL_FRACTION:.0%} of its drop (start to valley) below the start")


@dataclasses.dataclass
class RangeConfig:
    data: str = "data"
    out: str = str(Path(LR_JSON).parent)
    device: str = "cpu"
    seed: int = 0
    bs: int = 512
    subset: int = 0
    val: int = 0  # held-out training images, excluded from the sweep (so train.py --val sees the same split)
    num_iter: int = 200
    sweeps: int = 3  # average the loss curves of this many sweeps (seeds seed, seed+1, ...) before the rule
    start_lr: float | None = None  # None -> auto_start_lr(num_iter, end_lr)
    end_lr: float = 10.0
    momentum: float = 0.9
    weight_decay: float = engine.WEIGHT_DECAY
    diverge: float = 4.0  # stop once the (EMA-smoothed) loss exceeds this multiple of its best
    rule_version: int = RULE_VERSION  # a result read by another version of the rule is not reused
    width: float = 1.0  # channel multiplier of the network (model.py)
    precision: str = "fp32"  # resolved: bf16 / fp16 / fp32 (engine.auto_precision)
    bn_decay: bool = engine.BN_DECAY  # weight decay on the 1-D parameters too (engine.make_optimizer)
    bn_lr_scale: float = engine.BN_LR_SCALE  # their LR / the convolutions' LR (engine.make_optimizer)
    bn_weight: str = BN_WEIGHT  # batch-norm weights: learned / frozen at 1 (model.py)
    pad_fill: str = PAD_FILL  # data.pad
    init: str = INIT  # the convolutions' initial weights (model.py)
    logit_scale: float = engine.LOGIT_SCALE  # the classifier's output multiplier (model.py)
    flip: str = FLIP  # data.Loader
    cutout: str = CUTOUT_MODE  # data.draw_augmentation
    ghost_bn: int = 0  # model.GhostBatchNorm2d
    tensorboard: bool = False  # also write the curve as TensorBoard events into `out` (tblog.py)


# the settings that shape the loss curve: those of the run it is for, and those of the sweep itself
RUN_KEYS = ("bs", "subset", "val", "weight_decay", "width", "precision", "bn_decay", "bn_lr_scale", "bn_weight", "pad_fill", "init",
            "flip", "logit_scale", "cutout", "ghost_bn")
SWEEP_KEYS = ("num_iter", "sweeps", "start_lr", "end_lr", "momentum", "diverge", "rule_version")
# keys older results lack: the values they had
LEGACY = {"width": 1.0, "bn_decay": True, "pad_fill": "zero", "init": "default", "flip": "random",
          "logit_scale": engine.LOGIT_SCALE, "cutout": "clip", "ghost_bn": 0, "bn_lr_scale": 1.0, "bn_weight": "learned",
          "rule_version": 1}
ITERS_PER_DECADE = 10  # the fewest sweep iterations per factor of 10 in LR that still resolve the fall
MIN_DECADES, MAX_DECADES = 4, 6  # a sweep spans at least 1e-3..10: this network's loss starts to fall near 1e-3


def read_result(path):
    """A saved range-test result, checked: one line if it is damaged or not one (files.read_lr_result)."""
    return read_lr_result(path, [k for k in RUN_KEYS + SWEEP_KEYS if k not in LEGACY and k != "precision"])


def auto_start_lr(num_iter, end_lr):
    return end_lr / 10 ** min(MAX_DECADES, max(MIN_DECADES, num_iter / ITERS_PER_DECADE))


def settled(cfg):
    """cfg with its automatic start LR filled in, as the sweep will run it."""
    return cfg if cfg.start_lr is not None else dataclasses.replace(cfg, start_lr=auto_start_lr(cfg.num_iter, cfg.end_lr))


def mismatch(saved, cfg, keys):
    """'' if the saved result was made with `cfg`'s value of every key, else what differs, in words."""
    cfg = settled(cfg)
    legacy = {**LEGACY, "precision": "bf16" if saved.get("device") == "cuda" else "fp32"}  # before the flag
    old = {k: saved.get(k, legacy.get(k)) for k in keys}
    return ", ".join(f"{k} {old[k]} (here {getattr(cfg, k)})" for k in keys if old[k] != getattr(cfg, k))


def smooth(values, window):
    """Centred moving average; the window shrinks symmetrically near the ends so no point borrows from one side."""
    v = np.asarray(values, dtype=np.float64)
    half = max(int(window) // 2, 0)
    c = np.concatenate([[0.0], np.cumsum(v)])
    out = np.empty_like(v)
    for i in range(len(v)):
        h = min(half, i, len(v) - 1 - i)
        out[i] = (c[i + h + 1] - c[i - h]) / (2 * h + 1)
    return out


def find_valley(s, start, turn_fraction=TURN_FRACTION, min_drop=MIN_DROP):
    """Index of the lowest smoothed loss before the curve first turns up (climbs back by turn_fraction of the
    drop made so far, once that drop is at least min_drop of the start); the global minimum if it never does.
    Returns (index, turn): turn is the first index past the valley's side, len(s) if the loss never turned up."""
    best = 0
    for i, v in enumerate(s):
        if v < s[best]:
            best = i
        drop = start - s[best]
        if drop > min_drop * abs(start) and v - s[best] > turn_fraction * drop:
            return best, i
    return int(np.argmin(s)), len(s)


def pick_lrs(lrs, losses, turn_fraction=TURN_FRACTION, valley_tolerance=VALLEY_TOLERANCE, max_backoff=MAX_BACKOFF,
             fall_fraction=FALL_FRACTION, smooth_fraction=SMOOTH_FRACTION):
    """The rule (module docstring). Returns a dict with lr_min, lr_max, lr_valley, smoothed, and a warning or None.
    Raises UserError when the curve gives no answer."""
    lrs, losses = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(losses)
    if len(losses) == 0 or not finite[0]:
        raise UserError("the loss was NaN/inf from the first step: check the data and the model, or lower --start-lr")
    n = int(np.argmin(finite)) if not finite.all() else len(losses)  # keep the curve up to the first NaN/inf
    if n < 10:
        raise UserError(f"only {n} finite losses before divergence: lower --start-lr or raise --num-iter")
    lrs, losses = lrs[:n], losses[:n]
    window = max(3, round(smooth_fraction * n))
    s = smooth(losses, window)
    start = float(np.median(losses[:window]))  # the starting level, robust to one noisy first batch
    i_valley, i_turn = find_valley(s, start, turn_fraction)
    drop = start - s[i_valley]
    if drop < MIN_DROP * abs(start) or i_valley < 3:
        later = f", or a later start, --start-lr {100 * lrs[0]:.2g}" if lrs[0] <= 1e-4 else ""
        raise UserError(f"the loss never fell (from {start:.3f} at LR {lrs[0]:.2g} to at best {s[i_valley]:.3f} at "
                        f"{lrs[i_valley]:.2g}, {n} iterations): try --num-iter {2 * n}{later}, or check model and data")
    # from here on the loss stays below the threshold: an early noisy dip does not count as the start of the fall
    above = np.nonzero(s[:i_valley + 1] > start - fall_fraction * drop)[0]
    i_fall = int(above[-1]) + 1 if len(above) else 0
    # the floor of a flat valley is several LR steps wide and noise picks its lowest point: take its centre, over
    # every point of the floor up to where the loss turns up (a bump inside the floor would halve it otherwise)
    floor = np.nonzero(s[:i_turn] <= s[i_valley] + valley_tolerance * drop)[0]
    a, b = int(floor[0]), int(floor[-1])
    lr_valley, lr_min = float(np.sqrt(lrs[a] * lrs[b])), float(lrs[i_fall])
    lr_max = lr_valley / max_backoff
    if lr_min >= lr_max:
        raise UserError(f"the loss only started to fall (LR {lr_min:.3g}) above the rule's LRMAX {lr_max:.3g}: "
                        "lower --start-lr or raise --num-iter so the sweep resolves the falling part")
    warning = None
    if i_turn == n and finite.all():  # never turned up
        warning = (f"the loss never turned up before the end of the sweep (LR {lrs[-1]:.3g}): LRMAX may be "
                   "underestimated; raise --end-lr")
    return {"lr_min": lr_min, "lr_max": lr_max, "lr_valley": lr_valley, "smoothed": s.tolist(), "n_used": n,
            "warning": warning}


def mean_curve(curves):
    """[(lrs, losses), ...] of sweeps with the same exponential schedule -> (lrs, losses averaged LR by LR), up to
    the shortest sweep (one that diverged early ends the mean there)."""
    n = min(len(losses) for _, losses in curves)
    return list(curves[0][0][:n]), np.mean([losses[:n] for _, losses in curves], axis=0).tolist()


def sweep(cfg, model, optimizer, loader):
    """Run FastaiLRFinder over the shared training step on its own engine (only the finder and a NaN stop are
    attached to it). Returns (lrs, raw losses); model and optimizer are restored on exit."""
    cfg = settled(cfg)
    trainer = engine.create_trainer(model, optimizer, nn.CrossEntropyLoss(), cfg.device, cfg.precision)
    lrs, raw = [], []

    @trainer.on(Events.ITERATION_STARTED)
    def record_lr(e):
        if e.state.iteration == 1:  # the finder's scheduler already stepped once when it was built: undo that
            for group in optimizer.param_groups:
                group["lr"] = cfg.start_lr
        lrs.append(optimizer.param_groups[0]["lr"])  # the LR this iteration actually runs with

    @trainer.on(Events.ITERATION_COMPLETED)
    def record_loss(e):
        raw.append(e.state.output["loss"].item())  # one sync per iteration is fine for a short sweep
        if not math.isfinite(raw[-1]) or len(raw) == cfg.num_iter:
            e.terminate()  # NaN never compares greater than the divergence threshold; the finder runs one more

    finder = FastaiLRFinder()
    with finder.attach(trainer, to_save={"model": model, "optimizer": optimizer}, output_transform=lambda o: o["loss"],
                       num_iter=cfg.num_iter, start_lr=cfg.start_lr, end_lr=cfg.end_lr, step_mode="exp",
                       smooth_f=0.05, diverge_th=cfg.diverge) as t, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Run completed without loss diverging")  # pick_lrs says it better
        t.run(loader, max_epochs=math.ceil(cfg.num_iter / len(loader)))
    return lrs[:len(raw)], raw


def run_range_test(cfg, arrays=None):
    """The whole test: load, sweep, pick, write lr_range.json and lr_range.png. Returns the JSON's dict."""
    cfg = settled(cfg)
    check(cfg)
    t0 = time.perf_counter()
    if arrays is None:
        arrays = data.load_cifar10(cfg.data)
    loader, _ = data.make_loaders(arrays, cfg.bs, cfg.device, cfg.seed, cfg.subset, cfg.val,  # one upload
                                  **data.aug_args(cfg))
    print(f"LR range test: {cfg.sweeps} sweep(s) of {cfg.num_iter} iterations, LR {cfg.start_lr:g} -> {cfg.end_lr:g}, "
          f"into {cfg.out}")  # minutes on a CPU: say what runs before it does
    curves = []
    for i, seed in enumerate(range(cfg.seed, cfg.seed + cfg.sweeps)):  # each: its own weights, order, augmentation
        loader.seed, loader.epoch = seed, 0  # the draws a fresh loader with this seed would make
        model = engine.build_model(seed, cfg.device, **engine.net_args(cfg))
        optimizer = engine.make_optimizer(model, cfg.start_lr, cfg.momentum, cfg.weight_decay, cfg.bn_decay,
                                          cfg.bn_lr_scale)
        curves.append(sweep(cfg, model, optimizer, loader))
        elapsed, left = progress(time.perf_counter() - t0, i + 1, cfg.sweeps)
        print(f"  sweep {i + 1}/{cfg.sweeps} (seed {seed}): {len(curves[-1][1])} iterations, {elapsed} so far, "
              f"about {left} left", flush=True)
    if cfg.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    lrs, losses = mean_curve(curves)
    picked = pick_lrs(lrs, losses)
    result = {"lr_min": picked["lr_min"], "lr_max": picked["lr_max"], "lr_valley": picked["lr_valley"],
              "rule": RULE, "seed": cfg.seed, "max_backoff": MAX_BACKOFF,
              **{k: getattr(cfg, k) for k in RUN_KEYS + SWEEP_KEYS},  # what reuse is checked against
              "device": cfg.device, "seconds": seconds, "warning": picked["warning"],
              "lrs": lrs, "losses": losses, "smoothed": picked["smoothed"],
              "sweep_losses": [c[1] for c in curves] if cfg.sweeps > 1 else None, "versions": engine.versions(cfg.device)}
    import matplotlib.pyplot as plt

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot(result)
    save_figure(figure, out / "lr_range.png")
    if cfg.tensorboard:
        tblog.log_range_test(out, result, figure)
    plt.close(figure)
    write_json(out / "lr_range.json", result)
    if picked["warning"]:
        print(f"warning: {picked['warning']}")
    print(f"LRMIN {result['lr_min']:.4g}  LRMAX {result['lr_max']:.4g}  (valley {result['lr_valley']:.4g}; "
          f"{len(losses)} iterations, {seconds:.1f} s) -> {out / 'lr_range.json'}")
    return result


def plot(result):
    """The figure of a result: single sweeps, their mean, the smoothed curve, LRMIN and LRMAX."""
    import matplotlib.pyplot as plt

    lrs, n = result["lrs"], len(result["smoothed"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, curve in enumerate(result.get("sweep_losses") or []):
        ax.plot(lrs[:len(curve)], curve[:len(lrs)], color="0.6", alpha=0.3, lw=0.8,
                label="single sweeps" if i == 0 else None)
    ax.plot(lrs, result["losses"], color="C0", alpha=0.35, lw=1,
            label=f"raw loss (mean of {result['sweeps']} sweeps)" if result.get("sweeps", 1) > 1 else "raw loss")
    ax.plot(lrs[:n], result["smoothed"], color="C0", lw=2, label="smoothed (centred moving average)")
    marks = [("lr_min", "C2", "LRMIN"), ("lr_max", "C3", "LRMAX")]
    if result["lr_valley"] != result["lr_max"]:
        marks.append(("lr_valley", "0.5", "valley"))
    for key, colour, name in marks:
        ax.axvline(result[key], color=colour, ls="--", lw=1.2, label=f"{name} = {result[key]:.3g}")
    finite = [v for v in result["losses"] if math.isfinite(v)]
    ax.set_ylim(min(finite) * 0.9, min(max(finite), 2 * result["smoothed"][0]) * 1.05)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss",
           title=f"LR range test: batch {result['bs']}, {len(lrs)} iterations, " + (
               f"mean of {k} sweeps, seeds {result['seed']}..{result['seed'] + k - 1}" if (k := result.get("sweeps", 1)) > 1
               else f"seed {result['seed']}"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def check(cfg):
    if cfg.sweeps < 1:
        raise UserError(f"--sweeps must be at least 1, got {cfg.sweeps}")
    if cfg.num_iter < 10:
        raise UserError(f"--num-iter must be at least 10, got {cfg.num_iter}")
    if not 0 < cfg.start_lr < cfg.end_lr or not math.isfinite(cfg.end_lr):
        raise UserError(f"need 0 < --start-lr < --end-lr, got {cfg.start_lr} and {cfg.end_lr}")


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    p = Parser(__doc__)
    d = RangeConfig()
    add_common_args(p, out_default=d.out, out_help="folder for lr_range.json and lr_range.png")
    add_recipe_args(p, d)
    add_tensorboard_arg(p)
    p.add_argument("--num-iter", type=int, default=d.num_iter, help=f"iterations of the sweep (default: {d.num_iter})")
    p.add_argument("--start-lr", type=float, default=None,
                   help=f"first LR of the sweep (default: --end-lr / 10^clamp(num_iter/{ITERS_PER_DECADE}, {MIN_DECADES}, "
                   f"{MAX_DECADES}): 1e-5 for 200 iterations, 1e-4 for 50, 1e-3 for 40 or fewer)")
    p.add_argument("--end-lr", type=float, default=d.end_lr, help=f"last LR of the sweep (default: {d.end_lr:g})")
    p.add_argument("--val", type=int, default=0, metavar="N",
                   help="leave out the last N training images, as train.py --val N does (default: 0)")
    p.add_argument("--sweeps", type=int, default=d.sweeps,
                   help=f"average the loss curves of K sweeps (seeds seed..seed+K-1) before the rule (default: {d.sweeps})")
    args = p.parse_args(argv)
    check_common_args(args)
    check_writable(args.out, "folder")
    if os.environ.get("RANK", "0") != "0":  # under torchrun: rank 0 alone runs the test
        return
    # the run's settings by RUN_KEYS, as train.resolve_lrs passes them, so a new recipe flag needs no line here
    args.precision = engine.resolve_precision(args.precision, args.device)
    cfg = RangeConfig(data=args.data, out=args.out, device=args.device, seed=args.seed, num_iter=args.num_iter,
                      start_lr=args.start_lr, end_lr=args.end_lr, sweeps=args.sweeps,
                      tensorboard=tblog.wanted(args.tensorboard), **{k: getattr(args, k) for k in RUN_KEYS})
    run_range_test(cfg)


if __name__ == "__main__":
    run_cli(main)
