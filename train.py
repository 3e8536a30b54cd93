"""Train the ResNet-9 on CIFAR-10 with a one-cycle learning rate whose bounds come from the LR range test.

    python train.py --epochs 24 --bs 512            # GPU: the real run
    python train.py --subset 512 --epochs 2 --peak-epoch 1 --width 0.25 --lr-min 0.004 --lr-max 0.4 --device cpu
    torchrun --standalone --nproc_per_node 8 train.py --epochs 24 --bs 512   # 8 GPUs, the same recipe

The recipe (README.md): SGD, Nesterov, weight decay 5e-4; the one-cycle of schedule.py; logits x0.125 (model.py);
batched crop/flip/cutout on the device (data.py); the precision engine.auto_precision picks for the device. LRMIN
and LRMAX come from lr_range.json (lr_range.py), run first when none fits this run's settings. Under torchrun,
--bs is the global batch and only rank 0 prints and writes (distributed.py). A run writes into --out (default:
runs/YYYYmmdd-HHMMSS): config.json, metrics.json, figures, checkpoint_<epoch>.pt, TensorBoard events (tblog.py)
and, when it ran the range test itself, lr_range/; `--resume DIR` continues a killed run exactly."""
import dataclasses
import logging
import math
import sys
import time
import typing
from pathlib import Path

import ignite.distributed as idist
import torch
import torch.nn as nn
from ignite.engine import Events
from ignite.handlers import Checkpoint, ProgressBar

import data
import distributed
import lr_range
import report
import tblog
from cli import (BN_WEIGHT, CUTOUT_MODE, FLIP, INIT, LR_JSON, PAD_FILL, Parser, UserError, add_common_args, add_compile_arg,
                 add_recipe_args, add_tensorboard_arg, check_common_args, run_cli)
from engine import (BN_DECAY, BN_LR_SCALE, EMA_EVERY, LOGIT_SCALE, WEIGHT_DECAY, NonFiniteLoss, Stamp, attach_ema,
                    build_model, compile_model, create_evaluator, create_trainer, make_optimizer, net_args,
                    resolve_precision)
from files import SafeDiskSaver, check_writable, fresh_run_dir, latest_checkpoint, load_checkpoint, read_json
from schedule import MOMENTUM_MAX, MOMENTUM_MIN, attach_one_cycle, one_cycle_milestones

@dataclasses.dataclass
class Config:
    """Every setting of a run; saved as config.json. Learning rates are per-sample-mean-loss SGD rates."""
    data: str = "data"
    out: str = ""  # "" -> a fresh runs/<timestamp>
    device: str = "cpu"
    seed: int = 0
    bs: int = 512  # global: split over the processes under torchrun
    subset: int = 0  # >0: first N train and N test images
    val: int = 0  # >0: hold out the last N training images and evaluate on them instead of the test set
    epochs: int = 24
    peak_epoch: int = 5
    lr_min: float | None = None  # None -> found by the LR range test
    lr_max: float | None = None
    lr_json: str = LR_JSON
    momentum_max: float = MOMENTUM_MAX
    momentum_min: float = MOMENTUM_MIN
    weight_decay: float = WEIGHT_DECAY
    label_smoothing: float = 0.0
    ema_half_life: float = 0.0  # epochs; >0: evaluate an exponential moving average of the weights
    eval_bs: int = 1000
    width: float = 1.0  # channel multiplier (model.py): 1 = the exercise's network, 0.25 = the CPU twin
    precision: str = "auto"  # bf16 / fp16 / fp32; "auto": engine.auto_precision picks by the device
    bn_decay: bool = BN_DECAY  # weight decay on batch-norm weights/biases and the classifier's bias too
    bn_lr_scale: float = BN_LR_SCALE  # their LR / the convolutions' LR (engine.make_optimizer)
    bn_weight: str = BN_WEIGHT  # batch-norm weights: learned / frozen at 1 (model.py)
    pad_fill: str = PAD_FILL  # the crop's border (data.pad): zero / reflect / mean
    init: str = INIT  # the convolutions' initial weights (model.py): default / dirac
    logit_scale: float = LOGIT_SCALE  # the classifier's output multiplier (model.py)
    flip: str = FLIP  # the horizontal flip (data.Loader): random / alternate
    cutout: str = CUTOUT_MODE  # where cutout's square may fall (data.draw_augmentation): clip / inside
    ghost_bn: int = 0  # >0: batch-norm training statistics over groups of this many images (model.py)
    drop_last: bool = False  # skip each epoch's partial last batch
    compile: str = ""  # "" = eager; else a torch.compile mode from cli.COMPILE_MODES
    sync_bn: bool = False  # under torchrun: batch-norm statistics over the global batch
    tensorboard: bool | None = None  # None: when the tensorboard package is installed (tblog.py)
    save_every: int = 1  # epochs between checkpoints
    resume: str = ""


def check_config(cfg, world=1):
    if cfg.epochs <= 0:
        raise UserError(f"--epochs must be positive, got {cfg.epochs}")
    if not 0 < cfg.peak_epoch < cfg.epochs:
        raise UserError(f"--peak-epoch must be between 1 and epochs-1 = {cfg.epochs - 1}, got {cfg.peak_epoch}")
    for name in ("lr_min", "lr_max"):
        v = getattr(cfg, name)
        if v is not None and (v < 0 or not math.isfinite(v)):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
    if cfg.lr_max is not None and cfg.lr_max == 0:
        raise UserError("--lr-max must be > 0")
    if cfg.lr_min is not None and cfg.lr_max is not None and cfg.lr_min >= cfg.lr_max:
        raise UserError(f"--lr-min ({cfg.lr_min}) must be below --lr-max ({cfg.lr_max})")
    if not (0 < cfg.momentum_min < 1 and 0 < cfg.momentum_max < 1):
        raise UserError(f"--momentum values must be in (0, 1) for Nesterov SGD, got {cfg.momentum_max} {cfg.momentum_min}")
    if not 0 <= cfg.ema_half_life < cfg.epochs:
        raise UserError(f"--ema-half-life must be in [0, epochs = {cfg.epochs}) epochs, got {cfg.ema_half_life}")
    if not 0 <= cfg.label_smoothing < 1:
        raise UserError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.save_every <= 0 or cfg.eval_bs <= 0 or cfg.val < 0:
        raise UserError("--save-every and --eval-bs must be positive, --val >= 0")
    if cfg.sync_bn and cfg.ghost_bn:
        raise UserError("--ghost-bn and --sync-bn exclude each other (statistics over groups / over all processes)")
    distributed.check_batch(cfg.bs, world)
    tblog.wanted(cfg.tensorboard)


def resolve_lrs(cfg, arrays):
    """(lr_min, lr_max, source): flags win; else lr_range.json if it was made for this run's batch size, subset,
    validation split and weight decay and, unless named with --lr-json, with the sweep settings this run's own
    test would use (a file named on purpose is taken as chosen, and the differences are said); else the range
    test runs now, on the training images only, into the run folder."""
    if cfg.lr_min is not None and cfg.lr_max is not None:
        return cfg.lr_min, cfg.lr_max, "flags"
    wanted = lr_range.RangeConfig(data=cfg.data, out=str(Path(cfg.out) / "lr_range"), device=cfg.device, seed=cfg.seed,
                                  tensorboard=tblog.wanted(cfg.tensorboard), **{k: getattr(cfg, k) for k in lr_range.RUN_KEYS})
    found, path = None, Path(cfg.lr_json)
    named = cfg.lr_json != LR_JSON
    if path.exists() or named:  # a file named on purpose must be there
        saved = lr_range.read_result(path)
        stale = lr_range.mismatch(saved, wanted, lr_range.RUN_KEYS)
        sweep = lr_range.mismatch(saved, wanted, lr_range.SWEEP_KEYS)
        if stale or (sweep and not named):
            print(f"{path} not reused, it was made with other settings: {stale or sweep}; running the range test now")
        else:
            found, source = saved, str(path)
            if sweep:
                print(f"{path}: using the LRs of this file as named, from a sweep with {sweep}")
    if found is None:
        found, source = lr_range.run_range_test(wanted, arrays=arrays), str(Path(wanted.out) / "lr_range.json")
    lr_min = cfg.lr_min if cfg.lr_min is not None else found["lr_min"]
    lr_max = cfg.lr_max if cfg.lr_max is not None else found["lr_max"]
    if not 0 <= lr_min < lr_max:
        raise UserError(f"LR bounds must satisfy 0 <= LRMIN < LRMAX, got {lr_min:.4g} and {lr_max:.4g} from {source}")
    return lr_min, lr_max, source


# ---------------------------------------------------------------------------------------------- model and engines


def build_engines(cfg, device, n_iter, lr_min, lr_max):
    """The model, optimizer, trainer with its schedules (and EMA), the evaluator, and what a checkpoint holds."""
    raw = build_model(cfg.seed, device, **net_args(cfg))
    model = compile_model(distributed.wrap_model(raw, device, cfg.sync_bn), cfg.compile)
    optimizer = make_optimizer(raw, lr_min, cfg.momentum_max, cfg.weight_decay, cfg.bn_decay, cfg.bn_lr_scale)
    trainer = create_trainer(model, optimizer, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), device,
                             cfg.precision)
    lr_ms, mom_ms = one_cycle_milestones(n_iter, cfg.epochs, cfg.peak_epoch, lr_min, lr_max, cfg.momentum_max,
                                         cfg.momentum_min)
    lr_sched, mom_sched, trace = attach_one_cycle(trainer, optimizer, lr_ms, mom_ms)
    # evaluation runs the plain model on every process (not the DDP wrapper, which would talk to the others)
    eval_model = model if idist.get_world_size() == 1 else compile_model(raw, cfg.compile)
    to_save = {"network": Stamp(width=cfg.width),  # first: loading checks it before the weights
               "model": raw, "optimizer": optimizer, "trainer": trainer, "lr_sched": lr_sched, "mom_sched": mom_sched}
    if trainer.scaler:
        to_save["scaler"] = trainer.scaler
    if cfg.ema_half_life:
        eval_model = to_save["ema_model"] = attach_ema(trainer, raw, cfg.ema_half_life, n_iter)
    return trainer, create_evaluator(eval_model, device, cfg.precision), eval_model, to_save, trace


def resume_from(run_dir, to_save, saver, device, n_iter, history, trace):
    """Load the last checkpoint into to_save and trim the saved history to it; returns (epochs done, its file)."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"--resume {run_dir}: no checkpoint_*.pt there to resume from")
    saved = load_checkpoint(ckpt, device)
    try:
        Checkpoint.load_objects({k: v for k, v in to_save.items() if k != "network" or k in saved}, saved)  # older: no stamp
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{ckpt}: not a checkpoint of this run ({first[:200]})") from None
    done = to_save["trainer"].state.epoch
    metrics = run_dir / "metrics.json"
    old = read_json(metrics, "metrics file", "move it aside to resume without the earlier epochs' rows") \
        if metrics.exists() else {}
    history[:] = [h for h in old.get("epochs", []) if h["epoch"] <= done]  # metrics may be one epoch ahead
    for k in trace:
        trace[k][:] = old.get("per_iteration", {}).get(k, [])[: done * n_iter]
    saver.retire(ckpt)  # removed once the resumed run's next checkpoint is safely on disk
    return done, ckpt


# ---------------------------------------------------------------------------------------------- the run


def settle(cfg, device, rank, world):
    """The data, its loaders on `device`, the resumed run's config.json (None for a new run) and the LRs: the
    resumed run's own, or resolve_lrs' (on rank 0 alone, the others wait)."""
    arrays = data.load_cifar10(cfg.data)
    train_loader, eval_loader = data.make_loaders(arrays, cfg.bs, device, cfg.seed, cfg.subset, cfg.val, cfg.eval_bs,
                                                  rank, world, drop_last=cfg.drop_last, **data.aug_args(cfg))
    saved = read_run_config(Path(cfg.out)) if cfg.resume else None
    if saved:
        lrs = saved["lr_min_used"], saved["lr_max_used"], saved["lr_source"]
    else:
        lrs = distributed.on_rank0(lambda: resolve_lrs(cfg, arrays))
    return arrays, train_loader, eval_loader, saved, lrs


def train(cfg):
    """Run (or resume) one training run in this process (one of several under torchrun); returns its summary dict.
    Raises UserError on bad input."""
    t_start = time.perf_counter()
    logging.getLogger("ignite.engine.engine.Engine").setLevel(logging.CRITICAL)  # run_cli reports ours in one line
    rank, world = idist.get_rank(), idist.get_world_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    device = distributed.process_device(cfg.device)
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))  # config.json: the choice
    if not cfg.out:
        cfg = dataclasses.replace(cfg, out=distributed.on_rank0(lambda: str(fresh_run_dir())))
    run_dir = Path(cfg.out)

    arrays, train_loader, eval_loader, saved, (lr_min, lr_max, lr_source) = settle(cfg, device, rank, world)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)  # only now: bad data or LRs leave no empty run folder behind

    n_iter = len(train_loader)
    trainer, evaluator, eval_model, to_save, trace = build_engines(cfg, device, n_iter, lr_min, lr_max)
    history, write_metrics = report.attach_monitor(trainer, evaluator, eval_model, eval_loader, trace, n_iter, cfg, device)
    saver = SafeDiskSaver(str(run_dir), save_on_rank=0)
    # after the metrics: a kill between the two leaves metrics one epoch ahead, which resume trims
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=cfg.save_every) | Events.COMPLETED,
                              Checkpoint(to_save, saver, n_saved=1, global_step_transform=lambda e, _: e.state.epoch))
    done = 0
    if cfg.resume:
        done, ckpt = resume_from(run_dir, to_save, saver, device, n_iter, history, trace)
        train_loader.epoch = done  # the loader's shuffle/augmentation for epoch done+1, as in an unbroken run
        say(f"resuming {run_dir} from {ckpt.name} (epoch {done} of {cfg.epochs}) on {world} process(es)")
    config = report.write_config(cfg, run_dir, device, world, lr_min, lr_max, lr_source, n_iter, eval_loader.name, saved)
    if not cfg.resume:
        say(report.config_line(config))
    tb = tblog.attach_run(trainer, run_dir, history, trace, n_iter, config, done) \
        if rank == 0 and tblog.wanted(cfg.tensorboard) else None
    if sys.stderr.isatty() and rank == 0:
        ProgressBar(persist=False).attach(trainer)

    t_loop = time.perf_counter()
    try:  # (Ignite would restart a finished run from epoch 1: a complete run only gets its final report again)
        if trainer.state.epoch < cfg.epochs:
            trainer.run(train_loader, max_epochs=cfg.epochs)  # epochs, per-epoch evaluation, metrics, checkpoints
        timing = {"loop_seconds": time.perf_counter() - t_loop, "t_start": t_start}  # what the speed goal counts
        summary = report.final_report(cfg, arrays, eval_model, eval_loader, device, history, trace, n_iter, lr_min,
                                      lr_max, timing, write_metrics)
        if tb:
            tblog.log_final(tb, summary, cfg.epochs * n_iter + 1)  # past the last iteration: a resume purges it
        return summary
    except NonFiniteLoss as e:
        write_metrics()
        if rank == 0:
            report.plot_history(history, trace, n_iter, run_dir)
        raise UserError(str(e)) from None
    finally:
        if tb:
            tb.close()


# ---------------------------------------------------------------------------------------------- command line


CANNOT_RESUME = "this run cannot be resumed; start a new one"


def read_run_config(run_dir, fix=CANNOT_RESUME):
    """The config.json of a run to resume (or to read), or one line saying why it cannot be, and `fix`."""
    config = read_json(run_dir / "config.json", "run configuration", fix)
    missing = [k for k in ("lr_min_used", "lr_max_used", "lr_source", "epochs", "bs") if k not in config]
    if missing:
        raise UserError(f"{run_dir / 'config.json'}: not a train.py run configuration, it lacks {', '.join(missing)}")
    for f in dataclasses.fields(Config):  # a hand-edited value of the wrong kind, said before anything runs
        want = tuple(t for t in typing.get_args(f.type) or (f.type,) if t is not type(None))
        v = config.get(f.name)
        if v is not None and not (isinstance(v, want) and (bool in want or not isinstance(v, bool))
                                  or float in want and isinstance(v, int) and not isinstance(v, bool)):
            raise UserError(f"{run_dir / 'config.json'}: {f.name} must be {' or '.join(t.__name__ for t in want)}, "
                            f"got {v!r}")
    return config


def saved_config(run_dir, fix=CANNOT_RESUME):
    """The Config of a run from its config.json; settings older runs lack take their defaults."""
    saved = read_run_config(run_dir, fix)
    fields = {f.name for f in dataclasses.fields(Config)}
    legacy = {"precision": "bf16" if saved.get("device") == "cuda" else "fp32"}  # what runs before the flag ran
    return Config(**{**legacy, **{k: v for k, v in saved.items() if k in fields}})


def parse_args(argv=None):
    p = Parser(__doc__)
    add_common_args(p, out_default="runs/<timestamp>", out_help="run folder; must not hold an earlier run")
    d = Config()
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs (default: 24)")
    p.add_argument("--peak-epoch", type=int, default=d.peak_epoch, help="epoch whose last iteration runs at LRMAX (default: 5)")
    p.add_argument("--lr-min", type=float, default=None, help="LRMIN, start and end of the cycle (default: from the LR range test)")
    p.add_argument("--lr-max", type=float, default=None, help="LRMAX, the peak (default: from the LR range test)")
    p.add_argument("--lr-json", default=d.lr_json, help="range-test result to take LRMIN/LRMAX from, when made with "
                   f"this run's settings; else the test runs first (default: {d.lr_json})")
    p.add_argument("--resume", default="", metavar="DIR",
                   help="continue the killed run in DIR from its last checkpoint (any number of processes)")
    p.add_argument("--val", type=int, default=0, metavar="N",
                   help="evaluate on the last N training images instead of the test set (for choosing settings)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="cross-entropy label smoothing (default: 0)")
    p.add_argument("--ema-half-life", type=float, default=d.ema_half_life, metavar="EPOCHS",
                   help="evaluate an exponential moving average of the weights whose half-life is EPOCHS epochs, "
                   f"updated every {EMA_EVERY} steps (default: 0 = off)")
    p.add_argument("--momentum", type=float, nargs=2, default=[d.momentum_max, d.momentum_min], metavar=("HI", "LO"),
                   help="momentum at the ends and at the peak of the cycle "
                   f"(default: {d.momentum_max:g} {d.momentum_min:g}; equal = constant, 0.95 0.85 cycles it)")
    add_recipe_args(p, d)
    p.add_argument("--drop-last", action="store_true", help="skip each epoch's partial last batch (default: train on it)")
    p.add_argument("--eval-bs", type=int, default=d.eval_bs, help="evaluation batch size per process (default: 1000)")
    add_compile_arg(p)
    add_tensorboard_arg(p)
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: batch-norm statistics over the global batch (default: each process's own)")
    p.add_argument("--save-every", type=int, default=d.save_every, help="epochs between checkpoints (default: 1)")
    return p.parse_args(argv)


def config_from_args(args):
    check_common_args(args)
    out = args.resume or ("" if args.out == "runs/<timestamp>" else args.out)
    if not args.resume and out and (Path(out) / "config.json").exists():
        raise UserError(f"{out} already holds a run: use --resume {out} to continue it, or another --out")
    if args.resume and not (Path(out) / "config.json").exists():
        raise UserError(f"--resume {out}: no config.json there, so no run to continue")
    check_writable(out or "runs", "folder")
    if args.resume:  # the run's own settings; only the device may change
        return dataclasses.replace(saved_config(Path(out)), resume=out, device=args.device, out=out)
    fields = {f.name for f in dataclasses.fields(Config)} - {"out", "resume"}
    return Config(out=out, momentum_max=args.momentum[0], momentum_min=args.momentum[1],
                  **{k: v for k, v in vars(args).items() if k in fields})


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    cfg = config_from_args(parse_args(argv))
    check_config(cfg, distributed.env_world_size())  # every process refuses the same flags before any of them starts
    logging.getLogger("ignite.distributed.launcher.Parallel").setLevel(logging.WARNING)
    with idist.Parallel(backend=distributed.backend(cfg.device)) as parallel:  # one process without torchrun
        try:
            parallel.run(lambda local_rank, c: train(c), cfg)
        finally:
            distributed.release()
        distributed.leave_together()


if __name__ == "__main__":
    run_cli(main)
