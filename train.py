"""Train the ResNet-9 on CIFAR-10 with a one-cycle learning rate whose bounds come from the LR range
test.

    python train.py --epochs 24 --bs 512        # the exercise's run: 2.7-3 h on 2 CPU cores, bf16
    python train.py @presets/cpu-twin.txt       # the twin: width 1/4, 16-18 min on them
    python train.py --data tests/data --subset 256 --bs 64 --epochs 2 --peak-epoch 1 --width 0.25 \\
        --lr-min 0.004 --lr-max 0.4 --device cpu         # seconds
    torchrun --standalone --nproc_per_node 8 train.py @presets/gpu.txt   # 8 GPUs, the same recipe

The recipe (README.md): SGD with Nesterov momentum 0.9 and weight decay 5e-4; the one-cycle of
schedule.py (LRMIN -> LRMAX at the end of epoch 5 -> LRMIN at the end, no annihilation); logits x
0.125 (model.py); crop, flip and cutout batched on the device (data.py); the precision
engine.auto_precision picks for the device. LRMIN and LRMAX come from lr_range.json (lr_range.py),
run first when none was made for this run's step. Every setting, its default and why: config.py.
Under torchrun --bs is the global batch and only rank 0 prints and writes (distributed.py). A run
writes into --out (default: runs/YYYYmmdd-HHMMSS): config.json, metrics.json, figures,
checkpoint_<epoch>.pt, TensorBoard events and, when it ran the range test itself, lr_range/;
`--resume DIR` continues a killed run exactly.
"""
import dataclasses
import logging
import math
import sys
import time
import typing
from pathlib import Path

import ignite.distributed as idist
import torch.nn as nn
from ignite.engine import Events
from ignite.handlers import Checkpoint, ProgressBar

import config
import data
import distributed
import engine
import lr_range
import lr_rule
import report
import tblog
from cli import Parser, UserError, pick_device, run_cli
from config import COMMON, RANGE, REMOVED, STEP, TRAIN, Config
from files import (SafeDiskSaver, check_writable, fresh_run_dir, latest_checkpoint, load_checkpoint,
                   read_json)
from schedule import attach_one_cycle, one_cycle_milestones


def check_config(cfg, world=1):
    """The run's settings, refused in one line before anything starts (on every process alike)."""
    config.check(cfg)
    if not 0 < cfg.peak_epoch < cfg.epochs:
        raise UserError(f"--peak-epoch must be between 1 and epochs-1 = {cfg.epochs - 1}, "
                        f"got {cfg.peak_epoch}")
    for name in ("lr_min", "lr_max"):
        v = getattr(cfg, name)
        if v is not None and (v < 0 or not math.isfinite(v)):
            raise UserError(f"{config.flag(name)} must be a finite number >= 0, got {v}")
    if cfg.lr_max is not None and cfg.lr_max == 0:
        raise UserError("--lr-max must be > 0")
    if cfg.lr_min is not None and cfg.lr_max is not None and cfg.lr_min >= cfg.lr_max:
        raise UserError(f"--lr-min ({cfg.lr_min}) must be below --lr-max ({cfg.lr_max})")
    if not all(0 < m < 1 for m in cfg.momentum):
        raise UserError(f"--momentum values must be in (0, 1) for Nesterov SGD, got {cfg.momentum}")
    if not cfg.ema_half_life < cfg.epochs:
        raise UserError(f"--ema-half-life must be in [0, epochs = {cfg.epochs}) epochs, "
                        f"got {cfg.ema_half_life}")
    if not cfg.label_smoothing < 1:
        raise UserError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.compile and world > 1:  # DDP and SyncBatchNorm under inductor: not run anywhere yet
        raise UserError("--compile runs on one process only; under torchrun leave it out")
    distributed.check_batch(cfg.bs, world)
    lr_range.check(cfg)
    tblog.wanted(cfg.tensorboard)
    return cfg


def resolve_lrs(cfg, arrays):
    """(lr_min, lr_max, source, the version of the rule that read them or None): flags win; else
    lr_range.json if it was made for this run's step (and, unless named with --lr-json, with the
    sweep this run would make: a file named on purpose is taken as chosen, the differences said);
    else the range test runs now, on every process, into the run folder. Each refusal is said in
    one line."""
    if cfg.lr_min is not None and cfg.lr_max is not None:
        return cfg.lr_min, cfg.lr_max, "flags", None
    say = print if idist.get_rank() == 0 else (lambda *a, **k: None)
    wanted = lr_range.reuse_key(cfg, idist.get_world_size())
    found, path, named = None, Path(cfg.lr_json), cfg.lr_json != config.LR_JSON
    if path.exists() or named:  # a file named on purpose must be there
        saved = lr_range.read_result(path)
        stale = lr_range.mismatch(saved, wanted, lr_range.RUN_KEYS, removed=True)
        sweep = lr_range.mismatch(saved, wanted, lr_range.SWEEP_KEYS)
        if stale or (sweep and not named):
            say(f"{path} not reused, it was made with other settings: {stale or sweep}; "
                "running the range test now")
        else:
            found, source = saved, str(path)
            if sweep:
                say(f"{path}: using the LRs of this file as named, from a sweep with {sweep}")
    if found is None:
        out = Path(cfg.out) / "lr_range"
        found, source = lr_range.run_range_test(cfg, out, arrays), str(out / "lr_range.json")
    lr_min = cfg.lr_min if cfg.lr_min is not None else found["lr_min"]
    lr_max = cfg.lr_max if cfg.lr_max is not None else found["lr_max"]
    if not 0 <= lr_min < lr_max:
        raise UserError(f"LR bounds must satisfy 0 <= LRMIN < LRMAX, got {lr_min:.4g} and "
                        f"{lr_max:.4g} from {source}")
    return lr_min, lr_max, source, found.get("rule_version", lr_rule.LEGACY_RULE_VERSION)


def build_engines(run):
    """The model, optimizer, trainer with its schedules (and EMA), the evaluator, and what a
    checkpoint holds. Sets run.trace and run.eval_model."""
    cfg, device = run.cfg, run.device
    raw = engine.build_model(cfg.seed, device, cfg.width)
    model = engine.compile_model(distributed.wrap_model(raw, device, cfg.sync_bn), cfg.compile)
    lr_min, lr_max = run.lrs[:2]
    optimizer = engine.make_optimizer(raw, lr_min, cfg.momentum[0], cfg.weight_decay)
    loss = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    trainer = engine.create_trainer(model, optimizer, loss, device, cfg.precision)
    milestones = one_cycle_milestones(run.n_iter, cfg.epochs, cfg.peak_epoch, lr_min, lr_max,
                                      *cfg.momentum)
    lr_sched, mom_sched, run.trace = attach_one_cycle(trainer, optimizer, *milestones)
    # evaluation runs the plain model on every process (not DDP, which would talk to the others)
    run.eval_model = model if idist.get_world_size() == 1 else raw
    # the stamp first: loading checks the network before the weights
    to_save = {"network": engine.Stamp(width=cfg.width),
               "model": raw, "optimizer": optimizer, "trainer": trainer, "lr_sched": lr_sched,
               "mom_sched": mom_sched}
    if trainer.scaler:
        to_save["scaler"] = trainer.scaler
    if cfg.ema_half_life:
        run.eval_model = engine.attach_ema(trainer, raw, cfg.ema_half_life, run.n_iter)
        to_save["ema_model"] = run.eval_model
    return trainer, engine.create_evaluator(run.eval_model, device, cfg.precision), to_save


def resume_from(run, to_save, saver):
    """Load the last checkpoint into to_save and trim the saved history to it; returns the epochs
    done."""
    ckpt = latest_checkpoint(run.dir)
    metrics = run.dir / "metrics.json"
    fix = "move it aside to resume without the earlier epochs' rows"
    old = read_json(metrics, "metrics file", fix) if metrics.exists() else {}
    if ckpt is None and "final" in old:  # a finished run whose checkpoints were removed
        raise UserError(f"--resume {run.dir}: no checkpoint_*.pt there to resume from")
    if ckpt is not None:
        saved = load_checkpoint(ckpt, run.device)
        try:  # a checkpoint older than the stamp has none
            wanted = {k: v for k, v in to_save.items() if k != "network" or k in saved}
            Checkpoint.load_objects(wanted, saved)
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{ckpt}: not a checkpoint of this run ({first[:200]})") from None
        saver.retire(ckpt)  # removed once the resumed run's next checkpoint is safely on disk
    # no checkpoint yet: stopped before its first save, so it starts again with its own config
    done = to_save["trainer"].state.epoch
    run.history[:] = [h for h in old.get("epochs", []) if h["epoch"] <= done]  # they may be ahead
    # the earlier processes' time; a run from before rows had it counts this process only
    run.wall_before = run.history[-1].get("wall_seconds", 0.0) if run.history else 0.0
    for k in run.trace:
        run.trace[k][:] = old.get("per_iteration", {}).get(k, [])[: done * run.n_iter]
    if idist.get_rank() == 0:
        start = f"from {ckpt.name}" if ckpt else "from the start (stopped before its first save)"
        print(f"resuming {run.dir} {start} (epoch {done} of {run.cfg.epochs}) on "
              f"{idist.get_world_size()} process(es)")
    return done


def train(cfg):
    """Run (or resume) one training run in this process (one of several under torchrun); returns its
    summary dict. Raises UserError on bad input."""
    started = time.perf_counter()
    logging.getLogger("ignite.engine.engine.Engine").setLevel(logging.CRITICAL)  # run_cli says ours
    rank, world = idist.get_rank(), idist.get_world_size()
    device = distributed.process_device(cfg.device)
    cfg = dataclasses.replace(cfg, precision=engine.resolve_precision(cfg.precision, device))
    if not cfg.out:
        cfg = dataclasses.replace(cfg, out=distributed.on_rank0(lambda: str(fresh_run_dir())))
    arrays = data.load_cifar10(cfg.data)
    train_loader, eval_loader = data.make_loaders(arrays, cfg, device, rank, world)
    saved = read_run_config(Path(cfg.out)) if cfg.resume else None
    lrs = (saved["lr_min_used"], saved["lr_max_used"], saved["lr_source"],
           saved.get("lr_rule_version")) if saved \
        else resolve_lrs(cfg, arrays)
    if rank == 0:
        # only now: bad data or LRs leave no folder
        Path(cfg.out).mkdir(parents=True, exist_ok=True)

    run = report.Run(cfg, device, len(train_loader), lrs, eval_loader, started=started)
    trainer, evaluator, to_save = build_engines(run)
    report.attach_monitor(trainer, evaluator, run)
    saver = SafeDiskSaver(str(run.dir), save_on_rank=0)
    # after the metrics: a kill between the two leaves metrics one epoch ahead, which resume trims
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=cfg.save_every) | Events.COMPLETED,
                              Checkpoint(to_save, saver, n_saved=1,
                                         global_step_transform=lambda e, _: e.state.epoch))
    done = resume_from(run, to_save, saver) if cfg.resume else 0
    train_loader.epoch = done  # the shuffle and augmentation of epoch done+1, as in an unbroken run
    written = report.write_config(run, world, saved)
    if rank == 0 and not cfg.resume:
        print(report.config_line(written))
    tb = None
    if rank == 0 and tblog.wanted(cfg.tensorboard):
        tb = tblog.attach_run(trainer, run, written, done)
    if sys.stderr.isatty() and rank == 0:
        ProgressBar(persist=False).attach(trainer)
    return run_loop(run, trainer, train_loader, arrays, tb)


def run_loop(run, trainer, train_loader, arrays, tb):
    """The epochs (a finished run only gets its final report again: Ignite would restart it), then
    the final evaluation, figures and summary."""
    t_loop = time.perf_counter()
    try:
        if trainer.state.epoch < run.cfg.epochs:
            trainer.run(train_loader, max_epochs=run.cfg.epochs)
        summary = report.final_report(run, arrays, loop_seconds=time.perf_counter() - t_loop)
        if tb:
            tblog.log_final(tb, summary, run.cfg.epochs * run.n_iter + 1)  # past the last iteration
        return summary
    except engine.NonFiniteLoss as e:
        run.write_metrics()
        if idist.get_rank() == 0:
            report.plot_history(run)
        raise UserError(str(e)) from None
    finally:
        if tb:
            tb.close()


CANNOT_RESUME = "this run cannot be resumed; start a new one"


def read_run_config(run_dir, fix=CANNOT_RESUME):
    """The config.json of a run to resume (or to read), or one line saying why it cannot be, and
    `fix`."""
    saved = read_json(run_dir / "config.json", "run configuration", fix)
    needed = ("lr_min_used", "lr_max_used", "lr_source", "epochs", "bs")
    missing = [k for k in needed if k not in saved]
    if missing:
        raise UserError(f"{run_dir / 'config.json'}: not a train.py run configuration, it lacks "
                        f"{', '.join(missing)}")
    # a hand-edited value of the wrong kind, said before any work
    for f in dataclasses.fields(Config):
        want = tuple(t for t in typing.get_args(f.type) or (f.type,) if t is not type(None))
        want = (list, tuple) if tuple in want else want
        v = saved.get(f.name)
        number = float in want and isinstance(v, int)
        if v is not None and (isinstance(v, bool) and bool not in want or not isinstance(v, want)
                              and not number):
            raise UserError(f"{run_dir / 'config.json'}: {f.name} must be "
                            f"{' or '.join(t.__name__ for t in want)}, got {v!r}")
    return saved


def saved_config(run_dir, fix=CANNOT_RESUME):
    """The Config of a run from its config.json. Settings older runs lack take the values those runs
    had; a run made with a setting this version no longer has is refused."""
    saved = read_run_config(run_dir, fix)
    removed = [f"{k} {saved[k]}" for k, v in REMOVED.items() if k in saved and saved[k] != v]
    if removed:
        raise UserError(f"{run_dir}: made with {', '.join(removed)}, which this version no longer "
                        "has; "
                        "resume it with the commit in its config.json")
    legacy = {"precision": "bf16" if saved.get("device") == "cuda" else "fp32", "sync_bn": False,
              "momentum": (saved.get("momentum_max", 0.9), saved.get("momentum_min", 0.9))}
    names = {f.name for f in dataclasses.fields(Config)}
    values = {**legacy, **{k: v for k, v in saved.items() if k in names}}
    return Config(**{**values, "momentum": tuple(values["momentum"])})


def parse_args(argv=None):
    p = Parser(__doc__)
    config.add_args(p, COMMON, STEP, TRAIN, RANGE,
                    out=("", "run folder, which must not hold a run (default: runs/<timestamp>)"))
    return p.parse_args(argv)


def config_from_args(args):
    """The run's Config: the flags for a new run; for --resume, the run's own (only --device may
    change)."""
    out = args.resume or args.out
    if not args.resume and out and (Path(out) / "config.json").exists():
        raise UserError(f"{out} already holds a run: use --resume {out} to continue it, or another "
                        "--out")
    if args.resume and not (Path(out) / "config.json").exists():
        raise UserError(f"--resume {out}: no config.json there, so no run to continue")
    check_writable(out or "runs", "folder")
    device = pick_device(args.device)
    if args.resume:
        return dataclasses.replace(saved_config(Path(out)), resume=out, device=device, out=out)
    return config.from_args(args, device=device)


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    cfg = config_from_args(parse_args(argv))
    check_config(cfg, distributed.env_world_size())  # every process refuses the same flags, at once
    distributed.launch(train, cfg)


if __name__ == "__main__":
    run_cli(main)
