"""LR range test (Smith 2015; fastai's lr_find) that FINDS both bounds of the one-cycle: LRMIN and
LRMAX.

    python lr_range.py            # writes runs/lr_range/lr_range.{json,png}; train.py reads it
    python lr_range.py --subset 1024 --num-iter 40 --device cpu   # a quick CPU run

Ignite's FastaiLRFinder sweeps the LR exponentially from --start-lr to --end-lr over --num-iter
iterations (iteration k, from 0, runs at start * (end/start)^(k/num_iter)) of the training step
train.py runs (engine.py: the same model, SGD with Nesterov momentum 0.9 and weight decay,
augmentation, precision), on the TRAINING images only, and stops once the loss diverges. The sweep
is slow on purpose: 150 iterations per factor of 10 (1e-4 -> 10 in 750 iterations, about 7.7
epochs' worth of steps), near the pace at which the one-cycle's warm-up climbs to LRMAX. A fast
sweep (10 per decade) finds its valley at a lower LR the wider the network, while the LR that
trains best does not follow it (docs/lr_range.md). The rule of lr_rule.py reads the curve (the
LR-by-LR mean of --sweeps K sweeps, seeds seed..seed+K-1, where K > 1). Under torchrun every
process sweeps, as it trains: its slice of every global batch, gradients averaged, batch norm as
--sync-bn says, so the LRs fit the step that will use them; rank 0 writes. A loss that never falls,
or is NaN from the first step, is an error and writes nothing.
"""
import math
import time
import warnings
from pathlib import Path

import ignite.distributed as idist
import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.handlers import FastaiLRFinder

import config
import data
import distributed
import engine
import lr_rule
import tblog
from cli import Parser, UserError, pick_device, run_cli
from config import COMMON, RANGE, REMOVED, STEP
from files import check_writable, read_lr_result, save_figure, write_json
from report import progress

MOMENTUM = 0.9  # the sweep's momentum: the recipe's constant 0.9
DIVERGE = 4.0  # stop a sweep once its (EMA-smoothed) loss exceeds this multiple of its best
# the sweep's pace: iterations per factor of 10 in LR (docs/lr_range.md: the valley moves with it)
ITERS_PER_DECADE = 150
# a sweep spans 1e-3..10 at least (the loss starts to fall near 1e-3 at width 1/4, earlier at 1),
# 1e-4..10 at most; a short sweep (a quick run, a test) has fewer iterations per decade
MIN_DECADES, MAX_DECADES = 4, 5
# a sweep says where it stands every 10 % of its iterations, or every minute if that comes first
REPORT_FRACTION, REPORT_SECONDS, REPORT_WINDOW = 0.1, 60.0, 20
# What a saved result must have been made with to be reused: the run's step (bn_batch: the images
# each batch-norm statistic sees, bs/N per process under torchrun without --sync-bn) and the sweep
# itself.
RUN_KEYS = ("bs", "subset", "bn_batch",
            *(f.name for f in config.fields(STEP) if f.metadata.get("key", True)))
SWEEP_KEYS = ("num_iter", "sweeps", "start_lr", "end_lr", "momentum", "diverge", "rule_version")


def auto_start_lr(num_iter, end_lr):
    return end_lr / 10 ** min(MAX_DECADES, max(MIN_DECADES, num_iter / ITERS_PER_DECADE))


def sweep_start(cfg):
    """The sweep's first LR: --start-lr as given (0 too, which check() refuses), else the
    automatic one."""
    return auto_start_lr(cfg.num_iter, cfg.end_lr) if cfg.start_lr is None else cfg.start_lr


def reuse_key(cfg, world=1):
    """The values of RUN_KEYS and SWEEP_KEYS a range test with settings `cfg` on `world` processes
    has."""
    made = {"bn_batch": cfg.bs if cfg.sync_bn or world == 1 else cfg.bs // world,
            "start_lr": sweep_start(cfg),
            "momentum": MOMENTUM,
            "diverge": DIVERGE, "rule_version": lr_rule.RULE_VERSION}
    return {k: made[k] if k in made else getattr(cfg, k) for k in RUN_KEYS + SWEEP_KEYS}


def mismatch(saved, wanted, keys, removed=False):
    """'' if the saved result was made with the `wanted` value of every key, else what differs, in
    words. Keys older results lack take the value they stood for; with `removed`, a setting since
    removed must be at the value that is today's step."""
    legacy = {"width": 1.0, "rule_version": lr_rule.LEGACY_RULE_VERSION,
              "bn_batch": saved.get("bs"),
              "precision": "bf16" if saved.get("device") == "cuda" else "fp32"}
    old = {k: saved.get(k, legacy.get(k)) for k in keys}
    said = [f"{k} {old[k]} (here {wanted[k]})" for k in keys if old[k] != wanted[k]]
    said += [f"{k} {saved[k]} (a setting this version no longer has)" for k, v in REMOVED.items()
             if removed and k in saved and saved[k] != v]
    return ", ".join(said)


def read_result(path):
    """A saved range-test result, checked: one line if it is damaged or not one."""
    return read_lr_result(path, ["bs", "subset", "weight_decay", "num_iter", "end_lr", "start_lr"])


def sweep(cfg, model, raw, optimizer, loader, report=None):
    """FastaiLRFinder over the shared training step on an engine of its own (only the finder, a NaN
    stop and `report(lrs, losses)` after each iteration attached). Returns (lrs, losses averaged
    over the processes); the model and optimizer are restored on exit."""
    start_lr = sweep_start(cfg)
    trainer = engine.create_trainer(model, optimizer, nn.CrossEntropyLoss(), loader.device,
                                    cfg.precision)
    lrs, losses = [], []

    @trainer.on(Events.ITERATION_STARTED)
    def record_lr(e):
        # the finder's scheduler stepped once when it was built: undo that
        if e.state.iteration == 1:
            for group in optimizer.param_groups:
                group["lr"] = start_lr
        lrs.append(optimizer.param_groups[0]["lr"])  # the LR this iteration actually runs with

    @trainer.on(Events.ITERATION_COMPLETED)
    def record_loss(e):  # one sync per iteration is fine for a short sweep; every process agrees
        total = idist.all_reduce(e.state.output["loss"].detach().float().clone())  # in place
        losses.append(total.item() / idist.get_world_size())
        if report:
            report(lrs, losses)
        if not math.isfinite(losses[-1]) or len(losses) == cfg.num_iter:
            e.terminate()  # NaN never exceeds the finder's divergence threshold

    finder = FastaiLRFinder()
    to_save = {"model": raw, "optimizer": optimizer}
    with finder.attach(trainer, to_save=to_save, num_iter=cfg.num_iter,
                       output_transform=lambda o: o["loss"], start_lr=start_lr, end_lr=cfg.end_lr,
                       step_mode="exp", smooth_f=0.05, diverge_th=DIVERGE) as t, \
            warnings.catch_warnings():
        # lr_rule.pick_lrs says it, as a warning of its own
        warnings.filterwarnings("ignore", "Run completed without loss diverging")
        t.run(loader, max_epochs=math.ceil(cfg.num_iter / len(loader)))
    return lrs[:len(losses)], losses


class Progress:
    """Where a sweep stands, said every REPORT_FRACTION of it or every REPORT_SECONDS, whichever
    comes first: a sweep at width 1 runs for half an hour on a CPU. The time left assumes every
    remaining sweep runs to its end (one that diverges ends sooner)."""

    def __init__(self, cfg, index, t0, say):
        self.n, self.sweeps, self.index = cfg.num_iter, cfg.sweeps, index
        self.t0, self.say = t0, say
        self.every = max(1, round(REPORT_FRACTION * self.n))
        self.last = time.perf_counter()

    def __call__(self, lrs, losses):
        k, now = len(losses), time.perf_counter()
        if k == self.n or (k % self.every and now - self.last < REPORT_SECONDS):
            return  # the sweep's own line follows its last iteration
        self.last = now
        elapsed, left = progress(now - self.t0, self.index * self.n + k, self.sweeps * self.n)
        self.say(progress_line(k, self.n, lrs[k - 1], losses, elapsed, left))


def progress_line(k, n, lr, losses, elapsed, left):
    """One line of a sweep's progress: iteration, its LR, the loss averaged over the last
    iterations (one batch's loss is noisy), the time so far and the rest."""
    recent = losses[-REPORT_WINDOW:]
    loss = sum(recent) / len(recent)
    return (f"    iteration {k}/{n}: LR {lr:.3g}, loss {loss:.3f} (mean of the last "
            f"{len(recent)}), {elapsed} so far, about {left} left")


def run_range_test(cfg, out, arrays=None):
    """The whole test on this process (one of several under torchrun): sweep, pick, and on rank 0
    write OUT/lr_range.json and lr_range.png. Returns the JSON's dict on every process."""
    check(cfg)
    rank, world = idist.get_rank(), idist.get_world_size()
    device = distributed.process_device(cfg.device)
    say = print if rank == 0 else (lambda *a, **k: None)
    t0 = time.perf_counter()
    arrays = data.load_cifar10(cfg.data) if arrays is None else arrays
    loader, _ = data.make_loaders(arrays, cfg, device, rank, world)
    key = reuse_key(cfg, world)
    say(f"LR range test: {cfg.sweeps} sweep(s) of {cfg.num_iter} iterations, LR "
        f"{key['start_lr']:g} -> "
        f"{cfg.end_lr:g}, into {out}")  # minutes on a CPU: say what runs before it does
    curves = []
    for i, seed in enumerate(range(cfg.seed, cfg.seed + cfg.sweeps)):  # own weights, order, draws
        loader.seed, loader.epoch = seed, 0  # the draws a fresh loader with this seed would make
        raw = engine.build_model(seed, device, cfg.width)
        model = distributed.wrap_model(raw, device, cfg.sync_bn)
        optimizer = engine.make_optimizer(raw, key["start_lr"], MOMENTUM, cfg.weight_decay)
        report = Progress(cfg, i, t0, say)
        curves.append(sweep(cfg, model, raw, optimizer, loader, report))
        elapsed, left = progress(time.perf_counter() - t0, i + 1, cfg.sweeps)
        say(f"  sweep {i + 1}/{cfg.sweeps} (seed {seed}): {len(curves[-1][1])} iterations, "
            f"{elapsed} "
            f"so far, about {left} left")
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return distributed.on_rank0(lambda: finish(cfg, out, curves, key, seconds))


def finish(cfg, out, curves, key, seconds):
    """The rule over the mean curve, then lr_range.json and its figure (rank 0)."""
    lrs, losses = lr_rule.mean_curve(curves)
    picked = lr_rule.pick_lrs(lrs, losses)
    result = {"lr_min": picked["lr_min"], "lr_max": picked["lr_max"], "rule": lr_rule.RULE,
              "seed": cfg.seed, **key, "device": cfg.device,
              "world_size": idist.get_world_size(), "seconds": seconds,
              "warning": picked["warning"], "lrs": lrs, "losses": losses,
              "smoothed": picked["smoothed"],
              "sweep_losses": [c[1] for c in curves] if cfg.sweeps > 1 else None,
              "versions": engine.versions(cfg.device)}
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot(result)
    save_figure(figure, out / "lr_range.png")
    if tblog.wanted(cfg.tensorboard):
        tblog.log_range_test(out, result, figure)
    plt.close(figure)
    write_json(out / "lr_range.json", result)
    if picked["warning"]:
        print(f"warning: {picked['warning']}")
    print(f"LRMIN {result['lr_min']:.4g}  LRMAX {result['lr_max']:.4g}  ({len(losses)} "
          f"iterations, {seconds:.1f} s) -> {out / 'lr_range.json'}")
    return result


def plot(result):
    """The figure of a result: single sweeps, their mean, the smoothed curve, LRMIN and LRMAX."""
    import matplotlib.pyplot as plt

    lrs, n, k = result["lrs"], len(result["smoothed"]), result.get("sweeps", 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, curve in enumerate(result.get("sweep_losses") or []):
        ax.plot(lrs[:len(curve)], curve[:len(lrs)], color="0.6", alpha=0.3, lw=0.8,
                label="single sweeps" if i == 0 else None)
    ax.plot(lrs, result["losses"], color="C0", alpha=0.35, lw=1,
            label=f"raw loss (mean of {k} sweeps)" if k > 1 else "raw loss")
    ax.plot(lrs[:n], result["smoothed"], color="C0", lw=2,
            label="smoothed (centred moving average)")
    marks = [("lr_min", "C2", "LRMIN"), ("lr_max", "C3", "LRMAX")]
    for key, colour, name in marks:
        ax.axvline(result[key], color=colour, ls="--", lw=1.2, label=f"{name} = {result[key]:.3g}")
    finite = [v for v in result["losses"] if math.isfinite(v)]
    ax.set_ylim(min(finite) * 0.9, min(max(finite), 2 * result["smoothed"][0]) * 1.05)
    ax.set_xscale("log")
    seeds = f"mean of {k} sweeps, seeds {result['seed']}..{result['seed'] + k - 1}" if k > 1 \
        else f"seed {result['seed']}"
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss",
           title=f"LR range test: width {result.get('width', 1.0):g}, batch {result['bs']}, "
                 f"{len(lrs)} iterations, {seeds}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def check(cfg):
    start = sweep_start(cfg)
    if cfg.num_iter < 10:
        raise UserError(f"--num-iter must be at least 10, got {cfg.num_iter}")
    if not 0 < start < cfg.end_lr or not math.isfinite(cfg.end_lr):
        raise UserError(f"need 0 < --start-lr < --end-lr, got {start} and {cfg.end_lr}")


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    p = Parser(__doc__)
    config.add_args(p, COMMON, STEP, RANGE,
                    out=(str(Path(config.LR_JSON).parent), "folder for lr_range.json and "
                         "lr_range.png"),
                    texts={"subset": "sweep only the first N training images, for quick runs "
                           "(0 = all); a run of train.py --subset N reuses the result",
                           "val": "leave out the last N training images, as train.py --val N "
                           "holds them out to choose settings, so the LRs fit that run (0 = "
                           "sweep all 50,000)"})
    args = p.parse_args(argv)
    cfg = config.from_args(args, device=pick_device(args.device))
    cfg.precision = engine.resolve_precision(cfg.precision, cfg.device)
    check(cfg)
    distributed.check_batch(cfg.bs, distributed.env_world_size())
    check_writable(cfg.out, "folder")
    tblog.wanted(cfg.tensorboard)
    distributed.launch(lambda c: run_range_test(c, c.out), cfg)


if __name__ == "__main__":
    run_cli(main)
