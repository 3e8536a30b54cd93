"""Everything the scripts write, written so that a kill at any moment loses nothing already on disk: JSON and
figures through a temporary file and a rename, checkpoints whose predecessor goes only after they are complete,
and fresh run folders that never reuse an old one."""
import json
import os
import time
from pathlib import Path

from ignite.handlers import DiskSaver


def atomic_write(path, write):
    """Call write(tmp_path), then rename tmp onto path: a kill never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


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


class SafeDiskSaver(DiskSaver):
    """Ignite's atomic DiskSaver, except that a checkpoint it is told to remove goes only after the NEXT one is
    completely written. Ignite's Checkpoint removes the old file before it saves the new one, so a kill during a
    save (tens of MB, every epoch) would leave no checkpoint at all. `retire(path)` queues a file from an earlier
    process (the checkpoint a resumed run started from) for the same fate."""

    def __init__(self, dirname, **kwargs):
        super().__init__(dirname, require_empty=False, atomic=True, **kwargs)
        self.pending = []

    def remove(self, filename):
        self.pending.append(filename)

    def retire(self, path):
        self.pending.append(Path(path).name)

    def __call__(self, checkpoint, filename, metadata=None):
        super().__call__(checkpoint, filename, metadata)  # written and renamed into place (on the saving rank)
        for old in self.pending:
            # the same name saved twice (last epoch and COMPLETED) keeps the new file; a save that died left none
            if old != filename and (Path(self.dirname) / old).exists():
                super().remove(old)
        self.pending.clear()
