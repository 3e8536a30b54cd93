"""Command-line plumbing every script shares: the parser, the device default, and the error policy
(bad input -> one line on stderr, exit status 2). Imports nothing from this project, so any module
may use it."""
import argparse
import math
import os
import sys
from pathlib import Path


class UserError(Exception):
    """Bad input from the user (data, flags): the scripts print it as one line and exit non-zero."""


class Parser(argparse.ArgumentParser):
    """argparse with the script's docstring as its description, presets read from files (`@FILE`:
    one flag or value per line, as in presets/), and a bad flag reported the way every other bad
    input is: one line (argparse's own prints the whole usage first), exit status 2."""

    def __init__(self, doc, **kwargs):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                         fromfile_prefix_chars="@", **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def convert_arg_line_to_args(self, line):
        """A preset file's line: '--flag value' or one word; '#' starts a comment."""
        return line.split("#", 1)[0].split()


def run_cli(main):
    """Run a script's main; a UserError becomes one line on stderr and exit status 2, and an error
    of the machine (a full disk, a file that vanished) one line and exit status 1. Under torchrun
    every process raises the same error, so only the first process of each machine prints it."""
    if hasattr(sys.stdout, "reconfigure"):  # a log file (nohup ... > log) gets each line at once
        sys.stdout.reconfigure(line_buffering=True)
    try:
        return main()
    except (UserError, OSError) as e:
        if os.environ.get("LOCAL_RANK", "0") == "0":
            named = isinstance(e, OSError) and e.filename and e.strerror
            said = f"{e.filename}: {e.strerror}" if named else e
            print(f"{Path(sys.argv[0]).name}: error: {said}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UserError) else 1)


def check_positive(flag, value):
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"{flag} must be a positive number, got {value}")


def pick_device(device, slow=True):
    """`device` as given, or cuda when torch sees a GPU; for a `slow` script, falling back to the
    CPU is said in one line. --device cuda without a GPU is refused."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu" and slow and os.environ.get("RANK", "0") == "0":
            print(f"{Path(sys.argv[0]).name}: {cpu_fallback_note()}", file=sys.stderr, flush=True)
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA GPU")
    return device


def cpu_fallback_note():
    """The line said when --device was left to its default and torch sees no GPU: on a GPU box this
    usually means a driver older than the CUDA build pip installed, and the run would quietly take
    hours."""
    import torch

    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"note: torch {torch.__version__} ({built}) sees no CUDA GPU, so this runs on the CPU, "
            "hours for a full run; if this machine has a GPU, check `nvidia-smi` and that its "
            "driver supports that CUDA version, or pass --device cpu to choose the CPU on purpose")
