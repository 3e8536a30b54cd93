"""Every setting of the toolkit, once: its default, its unit and why. train.py's and lr_range.py's
flags, their --help, config.json and the range test's reuse key are all read from `Config` below, so
a new setting is one line here (in the group of the scripts that take it) plus the code using it.

Groups: COMMON (every script), STEP (what shapes the training step: train.py and lr_range.py; each
is in the range test's reuse key unless key=False), TRAIN (train.py alone), RANGE (lr_range.py, and
train.py when it runs the test itself). Presets are files of flags, read with @ (argparse's
fromfile): `python train.py @presets/cpu-twin.txt`."""
import argparse
import dataclasses
import os
import typing

from cli import UserError, check_positive

COMMON, STEP, TRAIN, RANGE = "common", "step", "train", "range"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # engine.auto_precision: what "auto" picks where
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LR_JSON = "runs/lr_range/lr_range.json"  # where lr_range.py writes and train.py, triangle.py look
BOOL = argparse.BooleanOptionalAction


def setting(default, group, help, **flag):
    """A Config field: its default, the scripts that take it, its --help line, argparse's
    options."""
    return dataclasses.field(default=default, metadata={"group": group, "help": help, **flag})


@dataclasses.dataclass
class Config:
    # -- every script
    data: str = setting(
        "data", COMMON, "CIFAR-10 folder: cifar10_{train,test}.npz or cifar-10-batches-py "
        "(default: $CIFAR10_DIR, else ./data)", metavar="DIR", env="CIFAR10_DIR")
    out: str = setting("", COMMON, "output folder", metavar="DIR")  # each script names its own
    device: str | None = setting(
        None, COMMON, "cpu or cuda (default: cuda when torch sees a GPU; under torchrun each "
        "process takes the GPU of its local rank)", choices=("cpu", "cuda"))
    seed: int = setting(0, COMMON, "seed of the initial weights, the shuffle and the augmentation")
    bs: int = setting(
        512, COMMON, "images per training step over all processes (the exercise's batch); under "
        "torchrun each of N processes takes bs/N of every batch")
    subset: int = setting(
        0, COMMON, "only the first N training and N test images, for quick runs (0 = all)",
        metavar="N")
    # -- the training step: train.py and lr_range.py (the range test runs the step that trains)
    width: float = setting(
        1.0, STEP, "channel counts x W: 1 = the exercise's 64-128-256-512 network, 0.25 = the "
        "CPU twin (same depth and data, 1/16 of the arithmetic)", metavar="W")
    precision: str = setting(
        "auto", STEP, "arithmetic of the forward and backward pass, the weights staying float32. "
        "auto = bf16 autocast on GPUs of compute capability 8.0 and up (A100, H100, RTX 30xx) "
        "and on CPUs with AVX512-BF16 or AMX; fp16 autocast with a gradient scaler on 7.x GPUs "
        "(V100, T4); fp32 elsewhere", choices=PRECISIONS)
    weight_decay: float = setting(5e-4, STEP, "SGD weight decay on every parameter (Page's 5e-4)")
    val: int = setting(
        0, STEP, "hold out the last N training images and evaluate on them instead of the test "
        "set, to choose settings; the range test leaves them out too (0 = the test set)",
        metavar="N")
    sync_bn: bool = setting(
        True, STEP, "under torchrun: batch-norm statistics over the global batch, so that N "
        "processes train the one-process recipe; --no-sync-bn: each process's own bs/N images "
        "(less communication, another recipe)", action=BOOL, key=False)  # in bn_batch
    tensorboard: bool | None = setting(
        None, STEP, "TensorBoard event files in the output folder (default: on when the "
        "tensorboard package is installed)", action=BOOL, key=False)
    # -- the run: train.py
    epochs: int = setting(24, TRAIN, "training epochs")
    peak_epoch: int = setting(5, TRAIN, "the epoch whose last iteration runs at LRMAX")
    lr_min: float | None = setting(
        None, TRAIN, "LRMIN, the cycle's start and end (default: found by the LR range test)")
    lr_max: float | None = setting(
        None, TRAIN, "LRMAX, the peak (default: found by the LR range test)")
    lr_json: str = setting(
        LR_JSON, TRAIN, "range-test result to take LRMIN/LRMAX from when it was made for this "
        "run's step; else the range test runs first, into the run folder", metavar="FILE")
    momentum: tuple = setting(
        (0.9, 0.9), TRAIN, "momentum at the cycle's ends and at its peak; equal = constant "
        "(Page's 0.9); 0.95 0.85 cycles it inversely to the LR", nargs=2, type=float,
        metavar=("HI", "LO"))
    label_smoothing: float = setting(0.0, TRAIN, "cross-entropy label smoothing")
    ema_half_life: float = setting(
        0.0, TRAIN, "evaluate an exponential moving average of the weights with this "
        "half-life, updated every 5 steps (0 = off)", metavar="EPOCHS")
    compile: str = setting(
        "", TRAIN, "torch.compile the model, optionally with a mode (bare --compile = default; "
        "one process only) (default: off, eager)", nargs="?", const="default",
        choices=COMPILE_MODES, metavar="MODE")
    eval_bs: int = setting(1000, TRAIN, "evaluation batch size per process")
    save_every: int = setting(1, TRAIN, "epochs between checkpoints")
    resume: str = setting(
        "", TRAIN, "continue the killed run in DIR from its last checkpoint (from the start if it "
        "saved none), on any number of processes (default: a new run)", metavar="DIR")
    # -- the LR range test: lr_range.py, and train.py when no saved result fits its step
    num_iter: int = setting(
        750, RANGE, "iterations of each sweep: 150 per factor of 10 in LR, near the pace of the "
        "one-cycle's warm-up", metavar="N")
    sweeps: int = setting(
        1, RANGE, "average the loss curves of K sweeps (seeds seed..seed+K-1) before the rule "
        "reads it", metavar="K")
    start_lr: float | None = setting(
        None, RANGE, "first LR of a sweep (default: end-lr / 10^clamp(num_iter/150, 4, 5): 1e-4 "
        "for 750 iterations, 1e-3 for 600 or fewer)")
    end_lr: float = setting(10.0, RANGE, "last LR of a sweep")


# Settings that earlier versions had, each with the one value that is today's step: a saved run or
# range-test result made with another value is refused rather than trained on with today's step.
# What each of them measured: docs/cpu_twin.md.
REMOVED = {"pad_fill": "zero", "bn_decay": True, "drop_last": False, "init": "default",
           "flip": "random", "cutout": "clip", "logit_scale": 0.125, "ghost_bn": 0,
           "bn_lr_scale": 1.0, "bn_weight": "learned"}


def fields(*wanted):
    """The Config fields of the named groups, or named themselves."""
    return [f for f in dataclasses.fields(Config)
            if f.metadata["group"] in wanted or f.name in wanted]


def flag(name):
    return "--" + name.replace("_", "-")


def add_args(p, *wanted, out=("", "output folder"), texts=None, **defaults):
    """The flags of `wanted` (groups or field names) on parser p, each with its --help line and
    default; `out` = (default, help[, metavar: FILE for a script that writes one file]) of the
    script's --out; `texts` replace help lines where a script uses a setting its own way;
    `defaults` replace defaults (tools)."""
    for f in fields(*wanted):
        meta = dict(f.metadata)
        meta.pop("group"), meta.pop("key", None)
        text, env = meta.pop("help"), meta.pop("env", None)
        text = (texts or {}).get(f.name, text)
        default = os.environ.get(env, f.default) if env else defaults.get(f.name, f.default)
        if f.name == "out":
            default, text, meta["metavar"] = (*out, "DIR")[:3]
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        shown = "" if "(default" in text else f" (default: {shown})"
        kind = next((t for t in typing.get_args(f.type) or (f.type,) if t is not type(None)), str)
        if kind in (int, float) and "action" not in meta:
            meta.setdefault("type", kind)
        p.add_argument(flag(f.name), dest=f.name, default=default, help=text + shown, **meta)
    return p


def from_args(args, **extra):
    """A Config of the parsed flags (those the script has), the rest at their defaults, checked."""
    names = {f.name for f in dataclasses.fields(Config)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if "momentum" in values:
        values["momentum"] = tuple(values["momentum"])
    return check(Config(**{**values, **extra}))


def check(cfg):
    """The limits every script shares; the scripts check their own flags on top."""
    for name in ("bs", "eval_bs", "save_every", "epochs", "num_iter", "sweeps"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"{flag(name)} must be positive, got {getattr(cfg, name)}")
    check_positive("--width", cfg.width)
    for name in ("subset", "val", "weight_decay", "label_smoothing", "ema_half_life"):
        if not getattr(cfg, name) >= 0:
            raise UserError(f"{flag(name)} must be >= 0, got {getattr(cfg, name)}")
    return cfg


def to_args(cfg, *wanted):
    """The flags that give `cfg`'s values of `wanted` (groups or names) where they differ from the
    defaults: what one script passes on to another."""
    argv = []
    for f in fields(*wanted):
        v = getattr(cfg, f.name)
        if v == f.default:
            continue
        if f.metadata.get("action") is BOOL:
            argv.append(flag(f.name) if v else "--no-" + f.name.replace("_", "-"))
        elif v is not None:
            argv += [flag(f.name), *map(str, v if isinstance(v, tuple) else [v])]
    return argv
