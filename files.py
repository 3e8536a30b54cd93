"""Everything the scripts write and read back, so that a kill at any moment loses nothing already on
disk and a damaged or foreign file costs one line, never a traceback: JSON and figures through a
temporary file and a rename, checkpoints whose predecessor goes only after they are complete (and
that load only tensors and numbers), fresh run folders that never reuse an old one, and output paths
checked before any work starts."""
import json
import math
import os
import re
import time
from pathlib import Path

from ignite.handlers import DiskSaver

from cli import UserError


def check_writable(path, kind="file"):
    """Refuse, before any work starts, an output `path` ("file" or "folder") that could not be
    written: a folder where a file should be or the reverse, a parent that is a file, a read-only
    folder. One line, nothing made."""
    p = Path(path)
    if p.is_dir() and kind == "file":
        raise UserError(f"{p}: is a folder; give a file name")
    if p.exists() and not p.is_dir() and kind == "folder":
        raise UserError(f"{p}: is a file, not a folder; give another --out")
    here = p if p.is_dir() else p.parent
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise UserError(f"{p}: cannot be made, {here} is a file; give another --out")
    if not os.access(here, os.W_OK | os.X_OK):
        raise UserError(f"{p}: cannot be written, {here} is read-only for this user; give another "
                        "--out")


def check_figure_path(path):
    """A figure's file name must end in a format matplotlib writes (png, pdf, svg, ...), and be
    writable."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    fmt = Path(path).suffix.lstrip(".").lower()
    if fmt not in formats:
        raise UserError(f"{path}: cannot write a figure as '{fmt or 'no extension'}'; end the name "
                        "in one of "
                        + ", ".join(sorted(formats)))
    check_writable(path, "file")


def read_json(path, what, fix):
    """The JSON object in `path`, or one line saying that the file (a `what`) is missing, unreadable
    or damaged, and `fix`: what the user can do about it."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"not valid JSON: {e}"
        raise UserError(f"{path}: unreadable {what} ({reason}); {fix}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a {what} (a JSON {type(obj).__name__}, not an object); {fix}")
    return obj


def read_lr_result(path, keys=()):
    """LRMIN and LRMAX from a range-test result (lr_range.json): the whole dict, or one line saying
    why the file is not one (damaged, lacking `keys`, LRs that are not 0 <= LRMIN < LRMAX)."""
    fix = "run lr_range.py again, or give the LRs yourself"
    result = read_json(path, "LR range-test result", fix)
    missing = [k for k in ("lr_min", "lr_max", *keys) if k not in result]
    if missing:
        raise UserError(f"{path}: not an LR range-test result, it lacks {', '.join(missing)}; "
                        f"{fix}")
    lo, hi = result["lr_min"], result["lr_max"]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  for v in (lo, hi))
    if not numbers \
            or not 0 <= lo < hi:
        raise UserError(f"{path}: LRs must be numbers with 0 <= lr_min < lr_max, got {lo!r} and "
                        f"{hi!r}; {fix}")
    return result


def atomic_write(path, write):
    """Call write(tmp_path), then rename tmp onto path: a kill never leaves a half-written file
    behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:  # a failed write (a full disk) leaves neither a half file nor its temporary behind
        tmp.unlink(missing_ok=True)


def save_figure(fig, path):
    fmt = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format=fmt))


def write_json(path, obj):
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1)))


def fresh_run_dir(root="runs"):
    """runs/YYYYmmdd-HHMMSS, with -1, -2, ... appended when that folder exists already."""
    base = Path(root) / time.strftime("%Y%m%d-%H%M%S")
    out, i = base, 1
    while out.exists():
        out, i = Path(f"{base}-{i}"), i + 1
    return out


def latest_checkpoint(run_dir):
    found = sorted(Path(run_dir).glob("checkpoint_*.pt"), key=lambda p: int(p.stem.split("_")[-1]))
    return found[-1] if found else None


def load_checkpoint(path, device="cpu"):
    """A checkpoint's dict, loaded with weights_only=True: tensors, numbers, strings and containers
    only, so a run folder received from someone else cannot run code when resumed. One line if the
    file is damaged or holds anything else (train.py's checkpoints never do)."""
    import pickle
    import zipfile

    import torch

    others = [p.name for p in sorted(Path(path).parent.glob("checkpoint_*.pt")) if p != Path(path)]
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        reason = f"it names {found.group(1)}" if found else type(e).__name__
        raise UserError(f"{path}: refused, it holds more than tensors and numbers ({reason}), and "
                        "loading it could run "
                        "code; resume only from checkpoints train.py wrote") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        earlier = (f"; {', '.join(others)} is there too: delete {Path(path).name} to resume from it"
                   if others else "")
        # torch's messages run to several sentences
        first = re.split(r"(?<=\.) |\n", str(e).strip())[0]
        raise UserError(f"{path}: damaged or truncated checkpoint ({type(e).__name__}: "
                        f"{first}){earlier}") from None


class SafeDiskSaver(DiskSaver):
    """Ignite's atomic DiskSaver, except that a checkpoint it is told to remove goes only after the
    NEXT one is completely written. Ignite's Checkpoint removes the old file before it saves the new
    one, so a kill during a save (tens of MB, every epoch) would leave no checkpoint at all.
    `retire(path)` queues a file from an earlier process (the checkpoint a resumed run started from)
    for the same fate."""

    def __init__(self, dirname, **kwargs):
        super().__init__(dirname, require_empty=False, atomic=True, **kwargs)
        self.pending = []

    def remove(self, filename):
        self.pending.append(filename)

    def retire(self, path):
        self.pending.append(Path(path).name)

    def __call__(self, checkpoint, filename, metadata=None):
        # written and renamed into place (on the saving rank)
        super().__call__(checkpoint, filename, metadata)
        for old in self.pending:
            # the same name saved twice (last epoch and COMPLETED) keeps the new file; a save that
            # died left none
            if old != filename and (Path(self.dirname) / old).exists():
                super().remove(old)
        self.pending.clear()
