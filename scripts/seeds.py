"""The accuracy claim in one command that carries on where it stopped: one LR range test, then
24-epoch train.py runs for several seeds with the LRs it found, and OUT/summary.txt: test accuracy,
flip-TTA, LRs and seconds per seed, the median and the minimum.

    python scripts/seeds.py --out runs/seeds @presets/gpu.txt --data DIR    # a GPU box: seeds 0..4
    python scripts/seeds.py --out runs/cpu-twin --seeds 0 1 2 @presets/cpu-twin.txt --data DIR
    python scripts/seeds.py --out runs/cpu-w1 --seeds 0 1 2 --device cpu --data DIR  # hours each

Every other flag is train.py's (presets included) and goes to each run, and those of the range test
to lr_range.py too. Run the same command again after a stop: a finished seed is kept, a killed one
resumed (train.py --resume), a missing range test run. On a box with several GPUs the seeds run side
by side, one per GPU (--gpus N). Logs: OUT/lr_range.log, OUT/seedS.log.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import config  # noqa: E402
import train  # noqa: E402
from cli import Parser, UserError, run_cli  # noqa: E402
from files import read_json  # noqa: E402
from scripts.summarize import summarize  # noqa: E402


def finished(run):
    metrics = run / "metrics.json"
    return metrics.exists() and "final" in read_json(metrics, "metrics file", "move it aside")


def step(script, args, log, env=None):
    """Start `python ROOT/script args...` here (paths as the user typed them) into the log `log`."""
    with open(log, "a") as f:
        return subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], stdout=f,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def wait_all(procs, out):
    if any([p.wait() != 0 for p in procs]):  # a list: wait for every one
        raise UserError(f"a run failed, see {out}/seed*.log")


def range_test(cfg, out):
    """OUT/lr_range/lr_range.json for the runs' step, made once (with seed 0 and the range
    flags)."""
    result = out / "lr_range" / "lr_range.json"
    if not result.exists():
        print(f"range test -> {result} (log {out / 'lr_range.log'})", flush=True)
        flags = config.to_args(cfg, config.COMMON, config.STEP, config.RANGE)
        flags = [a for a in flags if a not in ("--out", cfg.out, "--seed", str(cfg.seed))]
        log = out / "lr_range.log"
        if step("lr_range.py", [*flags, "--seed", "0", "--out", result.parent], log).wait() != 0:
            last = log.read_text().strip().splitlines()[-1:] or ["?"]
            raise UserError(f"the range test failed ({last[0]}); see {log}")
    return result


def main(argv=None):
    p = Parser(__doc__)
    config.add_args(p, "out", out=("runs/seeds", "folder for the range test, a run per seed and "
                                   "summary.txt"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="seeds to run (default: 0 1 2 3 4)")
    p.add_argument("--gpus", type=int, default=None,
                   help="seeds side by side, one per GPU (default: the GPUs torch sees, or 1)")
    args, flags = p.parse_known_args(argv)  # the rest: train.py's flags, presets (@FILE) included
    args.out = Path(args.out)
    cfg = train.config_from_args(train.parse_args([*flags, "--out", str(args.out / "_")]))
    train.check_config(cfg)
    if args.gpus is not None and args.gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {args.gpus}")
    gpus = args.gpus if args.gpus is not None else torch_gpus() if cfg.device == "cuda" else 1
    args.out.mkdir(parents=True, exist_ok=True)
    lr_json = range_test(cfg, args.out)
    procs = []
    for i, seed in enumerate(args.seeds):
        run = args.out / f"seed{seed}"
        if finished(run):
            continue
        resume = (run / "config.json").exists()
        cmd = ["--resume", run, "--device", cfg.device] if resume \
            else [*flags, "--seed", seed, "--lr-json", lr_json, "--out", run]
        print(f"seed {seed}: {'resuming' if resume else 'training'} (log {run}.log)", flush=True)
        gpu = {"CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus > 1 else None
        procs.append(step("train.py", cmd, f"{run}.log", gpu))
        if len(procs) == gpus:  # every GPU busy: wait for this round
            wait_all(procs, args.out)
            procs = []
    wait_all(procs, args.out)
    text = summarize([args.out / f"seed{s}" for s in args.seeds])
    (args.out / "summary.txt").write_text(text + "\n")
    print(text)


def torch_gpus():
    import torch

    return max(torch.cuda.device_count(), 1)


if __name__ == "__main__":
    run_cli(main)
