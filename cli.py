"""Command-line plumbing every script shares: the common flags, and the error policy (bad input -> one line on
stderr, exit status 2). Imports nothing from this project, so any module may use it."""
import argparse
import math
import os
import sys
from pathlib import Path

import torch

LR_JSON = "runs/lr_range/lr_range.json"  # where lr_range.py writes and train.py / triangle.py look by default
PAD_FILLS = ("zero", "reflect", "mean")  # what the random crop sees beyond the image's border (data.pad)
PAD_FILL = "zero"  # the default
INITS = ("default", "dirac")  # the convolutions' initial weights (model.dirac_init); INIT, the default
INIT = "default"
BN_WEIGHTS = ("learned", "frozen")  # batch-norm weights trained, or held at 1 (model.ResNet9); BN_WEIGHT, the default
BN_WEIGHT = "learned"
FLIPS = ("random", "alternate")  # the horizontal flip (data.Loader); FLIP, the default
FLIP = "random"
CUTOUTS = ("clip", "inside")  # where cutout's square may fall (data.draw_augmentation); CUTOUT_MODE, the default
CUTOUT_MODE = "clip"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # engine.auto_precision says what "auto" picks on each device
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


class UserError(Exception):
    """Bad input from the user (data, flags): the scripts print it as one line and exit non-zero."""


class Parser(argparse.ArgumentParser):
    """argparse with the scripts' docstring as its description, and a bad flag reported the way every other bad
    input is: one line (argparse's own prints the whole usage first), exit status 2."""

    def __init__(self, doc, **kwargs):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(main):
    """Run a script's main; a UserError becomes one line on stderr and exit status 2, and an error of the machine
    (a full disk, a file that vanished) one line and exit status 1. Under torchrun every process raises the same
    error, so only the first process of each machine prints it."""
    if hasattr(sys.stdout, "reconfigure"):  # into a log file (nohup ... > log) too, each line as soon as it is said
        sys.stdout.reconfigure(line_buffering=True)
    try:
        return main()
    except (UserError, OSError) as e:
        if os.environ.get("LOCAL_RANK", "0") == "0":
            said = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else e
            print(f"{Path(sys.argv[0]).name}: error: {said}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UserError) else 1)


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_fallback_note():
    """The line said when --device was left to its default and torch sees no GPU: on a GPU box this usually means a
    driver older than the CUDA build pip installed, and the run would quietly take hours on the CPU."""
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"note: torch {torch.__version__} ({built}) sees no CUDA GPU, so this runs on the CPU, hours for a full "
            "run; if this machine has a GPU, check `nvidia-smi` and that its driver supports that CUDA version, or "
            "pass --device cpu to choose the CPU on purpose")


def add_common_args(p, out_default, out_help="folder for the results"):
    """The flags every script shares, so people and checks drive them alike."""
    p.add_argument("--data", default=os.environ.get("CIFAR10_DIR", "data"),
                   help="CIFAR-10 folder: cifar10_{train,test}.npz or cifar-10-batches-py (default: $CIFAR10_DIR or ./data)")
    p.add_argument("--out", default=out_default, help=f"{out_help} (default: {out_default})")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="where to train (default: cuda when present; under torchrun each process takes its own GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling and augmentation (default: 0)")
    p.add_argument("--bs", type=int, default=512,
                   help="training batch size, global: under torchrun each of N processes trains on bs/N (default: 512)")
    p.add_argument("--subset", type=int, default=0,
                   help="use only the first N train and N test images, for quick CPU runs (default: 0 = all)")
    return p


def add_width_arg(p):
    p.add_argument("--width", type=float, default=1.0, metavar="W",
                   help="channel counts x W (default: 1 = the exercise's 64-128-256-512 network; 0.25 = the CPU "
                   "twin: same depth, data and schedule at 1/16 of the compute)")


def add_recipe_args(p, d):
    """The settings that shape the training step, shared by train.py and lr_range.py (defaults from config d)."""
    add_width_arg(p)
    add_precision_arg(p)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"SGD weight decay (default: {d.weight_decay:g})")
    p.add_argument("--bn-decay", action=argparse.BooleanOptionalAction, default=d.bn_decay,
                   help="weight decay on batch-norm weights and biases and the classifier's bias too "
                   f"(default: {'on' if d.bn_decay else 'off'})")
    p.add_argument("--bn-lr-scale", type=float, default=d.bn_lr_scale, metavar="K",
                   help="train batch-norm weights and biases and the classifier's bias at K x the LR, their weight "
                   f"decay / K (airbench's bias scaler; the decay per step stays the same) (default: {d.bn_lr_scale:g})")
    p.add_argument("--bn-weight", default=d.bn_weight, choices=BN_WEIGHTS,
                   help="batch-norm weights trained, or frozen at 1 (as in airbench, where only the biases train) "
                   f"(default: {d.bn_weight})")
    p.add_argument("--pad-fill", default=d.pad_fill, choices=PAD_FILLS,
                   help=f"the crop's 4-pixel border: black, the mirrored image, or the channel mean (default: {d.pad_fill})")
    p.add_argument("--flip", default=d.flip, choices=FLIPS,
                   help="the horizontal flip: a coin per image per epoch, or alternate (a coin per image in the first "
                   f"epoch, the other side in the next, and so on, as in airbench) (default: {d.flip})")
    p.add_argument("--cutout", default=d.cutout, choices=CUTOUTS,
                   help="cutout's 8x8 square: centred anywhere on the image and clipped at its border (DeVries and "
                   f"Taylor's), or always whole inside it (David Page's) (default: {d.cutout})")
    p.add_argument("--logit-scale", type=float, default=d.logit_scale, metavar="S",
                   help="multiply the classifier's output by S before the softmax (David Page's trick; a larger S "
                   f"lets the last layer learn faster and grow more confident) (default: {d.logit_scale:g})")
    p.add_argument("--ghost-bn", type=int, default=d.ghost_bn, metavar="N",
                   help="batch norm takes its training statistics from groups of N images of the batch (ghost batch "
                   "norm, from David Page's bag of tricks; evaluation unchanged) (default: 0 = the whole batch)")
    p.add_argument("--init", default=d.init, choices=INITS,
                   help="the convolutions' initial weights: PyTorch's Kaiming-uniform, or dirac (the first filters "
                   f"of each conv pass their input channel through, as in airbench) (default: {d.init})")


def add_precision_arg(p):
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="arithmetic of the forward and backward pass (weights stay float32): auto = bf16 autocast on "
                   "GPUs of compute capability >= 8.0 (A100, H100, RTX 30xx/40xx) and on CPUs with AVX512-BF16 or "
                   "AMX; fp16 autocast with a gradient scaler on 7.x GPUs (V100, T4); fp32 elsewhere (default: auto)")


def add_tensorboard_arg(p):
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="write TensorBoard event files into the output folder, for `tensorboard --logdir runs` "
                   "(default: on when the tensorboard package is installed)")


def add_compile_arg(p, what="the model"):
    p.add_argument("--compile", nargs="?", const="default", default="", choices=COMPILE_MODES, metavar="MODE",
                   help=f"torch.compile {what}, optionally with a mode: " + ", ".join(COMPILE_MODES) +
                   " (default: off, eager; bare --compile = default)")


def check_common_args(args, slow=True):
    """The flags add_common_args and add_width_arg declare (whichever a script has). A --device left to its default
    becomes cuda when torch sees a GPU; for a `slow` script, falling back to the CPU is said in one line."""
    for name in ("width", "logit_scale", "bn_lr_scale"):  # multipliers: positive and finite
        value = getattr(args, name, 1.0)
        if not (value > 0 and math.isfinite(value)):
            raise UserError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if not getattr(args, "weight_decay", 0) >= 0:
        raise UserError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if getattr(args, "ghost_bn", 0) < 0:
        raise UserError(f"--ghost-bn must be >= 0 (0 = the whole batch), got {args.ghost_bn}")
    if not hasattr(args, "bs"):
        return
    if args.bs <= 0:
        raise UserError(f"--bs must be positive, got {args.bs}")
    if args.subset < 0:
        raise UserError(f"--subset must be >= 0, got {args.subset}")
    if args.device is None:
        args.device = default_device()
        if args.device == "cpu" and slow and os.environ.get("RANK", "0") == "0":
            print(f"{Path(sys.argv[0]).name}: {cpu_fallback_note()}", file=sys.stderr, flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU")
