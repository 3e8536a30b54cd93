"""Finished runs evaluated from their last checkpoint three ways: as trained, and with every batch-norm layer's
statistics recomputed after training (engine.recompute_bn_stats) from the run's own training images, `clean`
(not augmented) or `augmented` (one more augmented pass). Each run is evaluated on its own evaluation split (the
validation split of a --val run, else the test set), so this chooses nothing on the test set unless given test runs.

    python scripts/bn_recal.py --data DIR --out recal.json RUN...

Prints one row per run and the paired line per variant (mean difference from "as trained" ± its standard error,
seeds up), and writes the numbers to --out.
"""
import statistics
import sys
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import data  # noqa: E402
import engine  # noqa: E402
from cli import Parser, UserError, run_cli  # noqa: E402
from files import latest_checkpoint, load_checkpoint, write_json  # noqa: E402
from summarize import paired_difference  # noqa: E402
from train import saved_config  # noqa: E402

VARIANTS = ("clean", "augmented")  # where the recomputed statistics come from


def evaluate_run(run_dir, arrays, device="cpu"):
    """{"as trained": accuracy, "clean": ..., "augmented": ...} of one finished run on its evaluation split."""
    cfg = saved_config(run_dir, "is it a finished train.py run folder?")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or int(ckpt.stem.split("_")[-1]) != cfg.epochs:
        raise UserError(f"{run_dir}: no checkpoint of its last epoch ({cfg.epochs})")
    weights = load_checkpoint(ckpt, device)["model"]
    train_loader, eval_loader = data.make_loaders(arrays, cfg.bs, device, cfg.seed, cfg.subset, cfg.val,
                                                  **data.aug_args(cfg))
    train_loader.epoch = cfg.epochs  # the augmented pass is the draw of one epoch more
    model = engine.build_model(cfg.seed, device, **engine.net_args(cfg))
    out = {}
    for variant in ("as trained",) + VARIANTS:
        model.load_state_dict(weights)
        if variant != "as trained":
            batches = train_loader if variant == "augmented" else data.plain_train_loader(arrays, train_loader,
                                                                                          cfg.subset, cfg.val)
            engine.recompute_bn_stats(model, batches, device, cfg.precision)
        evaluator = engine.create_evaluator(model, device, cfg.precision)
        evaluator.run(eval_loader)
        out[variant] = evaluator.state.metrics["accuracy"]
    return {"run": str(run_dir), "seed": cfg.seed, "eval_set": eval_loader.name, **out}


def main(argv=None):
    p = Parser(__doc__)
    p.add_argument("runs", nargs="+", type=Path, help="finished train.py run folders (config.json, checkpoint)")
    p.add_argument("--data", required=True, help="the CIFAR-10 folder the runs trained on")
    p.add_argument("--out", type=Path, required=True, help="JSON file for the numbers")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    arrays = data.load_cifar10(args.data, download=False)
    rows = [evaluate_run(run, arrays, args.device) for run in args.runs]
    print(tabulate([[r["run"], r["seed"], r["eval_set"]] + [f"{100 * r[v]:.2f}" for v in ("as trained",) + VARIANTS]
                    for r in rows], headers=["run", "seed", "eval", "as trained %"] + [f"{v} %" for v in VARIANTS]))
    lines = {}
    base = {r["seed"]: 100 * r["as trained"] for r in rows}
    for v in VARIANTS:
        n, mean, se, up = paired_difference(base, {r["seed"]: 100 * r[v] for r in rows})
        lines[v] = {"pairs": n, "mean_difference": mean, "standard_error": se, "up": up,
                    "median": statistics.median(100 * r[v] for r in rows), "min": min(100 * r[v] for r in rows)}
        print(f"{v}: {mean:+.2f} ± {se if se is not None else float('nan'):.2f} against as trained, {up} of {n} up; "
              f"median {lines[v]['median']:.2f}, min {lines[v]['min']:.2f}")
    write_json(args.out, {"runs": rows, "paired": lines, "versions": engine.versions(args.device)})


if __name__ == "__main__":
    run_cli(main)
