"""Finished runs evaluated from their last checkpoint three ways: as trained, and with every
batch-norm layer's statistics recomputed after training (recompute_bn_stats) from the run's
own training images, `clean` (not augmented) or `augmented` (one more augmented pass). Each run is
evaluated on its own evaluation split (the validation split of a --val run, else the test set), so
this chooses nothing on the test set unless given test runs.

    python tools/bn_recal.py --data DIR --out recal.json RUN...

Prints one row per run and the paired line per variant (mean difference from "as trained" ± its
standard error, seeds up), and writes the numbers to --out.
"""
import statistics
import sys
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import data  # noqa: E402
import engine  # noqa: E402
import config  # noqa: E402
from cli import Parser, UserError, pick_device, run_cli  # noqa: E402
from files import latest_checkpoint, load_checkpoint, write_json  # noqa: E402
from scripts.summarize import paired_difference  # noqa: E402
from train import saved_config  # noqa: E402

VARIANTS = ("clean", "augmented")  # where the recomputed statistics come from


@torch.no_grad()
def recompute_bn_stats(model, batches, device, precision="fp32"):
    """Every batch-norm layer's running mean and variance replaced by the plain average of its batch
    statistics over `batches` (weights untouched): the statistics of what those batches hold, not a
    momentum-0.1 trail of the augmented batches seen while the weights were still moving."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average over the batches
    was_training = model.training
    model.train()
    try:
        for x, _ in batches:
            with engine.autocast(device, precision):
                model(x)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)


def plain_batches(arrays, cfg, train_loader):
    """The run's training images as they are (no augmentation, in order, normalised like the rest),
    in the training loader's batches."""
    tx, ty = data.split_data(arrays, cfg.subset, cfg.val)[:2]
    stats = (train_loader.mean, train_loader.std)
    return data.Loader(tx, ty, cfg.bs, stats, train_loader.device, train=False)


def evaluate_run(run_dir, arrays, device="cpu"):
    """{"as trained": accuracy, "clean": ..., "augmented": ...} of one finished run on its
    evaluation split."""
    cfg = saved_config(run_dir, "is it a finished train.py run folder?")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or int(ckpt.stem.split("_")[-1]) != cfg.epochs:
        raise UserError(f"{run_dir}: no checkpoint of its last epoch ({cfg.epochs})")
    weights = load_checkpoint(ckpt, device)["model"]
    train_loader, eval_loader = data.make_loaders(arrays, cfg, device)
    train_loader.epoch = cfg.epochs  # the augmented pass is the draw of one epoch more
    model = engine.build_model(cfg.seed, device, cfg.width)
    out = {}
    for variant in ("as trained",) + VARIANTS:
        model.load_state_dict(weights)
        if variant != "as trained":
            batches = train_loader if variant == "augmented" \
                else plain_batches(arrays, cfg, train_loader)
            recompute_bn_stats(model, batches, device, cfg.precision)
        evaluator = engine.create_evaluator(model, device, cfg.precision)
        evaluator.run(eval_loader)
        out[variant] = evaluator.state.metrics["accuracy"]
    return {"run": str(run_dir), "seed": cfg.seed, "eval_set": eval_loader.name, **out}


def main(argv=None):
    p = Parser(__doc__)
    p.add_argument("runs", nargs="+", type=Path,
                   help="finished train.py run folders (config.json, checkpoint)")
    config.add_args(p, "data", "out", "device",
                    out=("recal.json", "JSON file for the numbers", "FILE"))
    args = p.parse_args(argv)
    args.device = pick_device(args.device, slow=False)
    arrays = data.load_cifar10(args.data, download=False)
    rows = [evaluate_run(run, arrays, args.device) for run in args.runs]
    names = ("as trained",) + VARIANTS
    print(tabulate([[r["run"], r["seed"], r["eval_set"]] + [f"{100 * r[v]:.2f}" for v in names]
                    for r in rows], headers=["run", "seed", "eval"] + [f"{v} %" for v in names]))
    lines = {}
    base = {r["seed"]: 100 * r["as trained"] for r in rows}
    for v in VARIANTS:
        n, mean, se, up = paired_difference(base, {r["seed"]: 100 * r[v] for r in rows})
        lines[v] = {"pairs": n, "mean_difference": mean, "standard_error": se, "up": up,
                    "median": statistics.median(100 * r[v] for r in rows),
                    "min": min(100 * r[v] for r in rows)}
        se = se if se is not None else float("nan")
        print(f"{v}: {mean:+.2f} ± {se:.2f} against as trained, {up} of {n} up; median "
              f"{lines[v]['median']:.2f}, min {lines[v]['min']:.2f}")
    write_json(args.out, {"runs": rows, "paired": lines, "versions": engine.versions(args.device)})


if __name__ == "__main__":
    run_cli(main)
