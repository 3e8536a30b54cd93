"""The table of finished runs, the median and minimum at the bottom (scripts/seeds.py writes it
too):

    python scripts/summarize.py runs/seeds/seed*

Given folders named VARIANT-sSEED (runs of several settings, one per seed), also one line per
variant, set against the variant named base, paired by seed (--base NAME sets them against
another, and prints that line even for one seed per variant)."""
import math
import re
import statistics
import sys
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cli import Parser, UserError, run_cli  # noqa: E402
from files import read_json  # noqa: E402


def paired_difference(base, other):
    """Seed by seed, other - base over the seeds both ran ({seed: accuracy} each): (pairs, mean
    difference, its standard error or None below 2 pairs, how many pairs are up), or None when no
    seed is shared. Pairing by seed takes out what the seed alone does (initial weights, batch
    order), which two unpaired means carry as noise."""
    diffs = [other[s] - base[s] for s in sorted(base.keys() & other.keys())]
    if not diffs:
        return None
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return len(diffs), statistics.mean(diffs), se, sum(d > 0 for d in diffs)


def paired_cell(base, other):
    p = paired_difference(base, other)
    if p is None:
        return ""
    n, mean, se, up = p
    return f"{mean:+.2f}" + ("" if se is None else f" ± {se:.2f}") + f", {up} of {n} up"


def summarize(dirs, base_name=None):
    """The table's text. base_name: the variant the others are set against; None: "base" if any."""
    rows, acc, tta = [], [], []
    for d in map(Path, dirs):
        cfg = read_json(d / "config.json", "run configuration", "is this a train.py run folder?")
        metrics = d / "metrics.json"
        final = read_json(metrics, "metrics file", "leave its run out").get("final") \
            if metrics.exists() else None
        if final is None:
            print(f"{d}: unfinished, left out", file=sys.stderr)
            continue
        acc.append(100 * final["accuracy"])
        tta.append(100 * final["tta_accuracy"])
        rows.append((d.name, cfg["seed"], final["eval_set"], f"{acc[-1]:.2f}", f"{tta[-1]:.2f}",
                     f"{final['lr_min']:.4g}", f"{final['lr_max']:.4g}",
                     f"{final['train_seconds']:.1f}", f"{final['wall_seconds']:.1f}",
                     cfg["versions"].get("gpu") or cfg["versions"].get("cpu") or "cpu"))
    if not rows:
        raise UserError("no finished run among the folders given")
    text = [tabulate(rows, headers=["run", "seed", "eval", "acc %", "flip-TTA %", "LRMIN", "LRMAX",
                                    "train s", "wall s", "device"], disable_numparse=True)]
    groups = {}  # runs named VARIANT-sSEED: one line per variant
    for row, a in zip(rows, acc):  # row: (name, seed, ...)
        groups.setdefault(re.sub(r"-s\d+$", "", row[0]), []).append((row[1], a))
    if base_name is not None and base_name not in groups:  # a typo must not pass in silence
        raise UserError(f"--base {base_name}: no such variant among the runs "
                        f"({', '.join(sorted(groups))})")
    if base_name is not None or any(len(v) > 1 for v in groups.values()):  # asked for, or groups
        text.append(variant_table(groups, base_name or "base"))
    text.append(f"\naccuracy over {len(acc)} runs: median {statistics.median(acc):.2f} %, min "
                f"{min(acc):.2f} %; flip-TTA median {statistics.median(tta):.2f} %, min "
                f"{min(tta):.2f} %")
    return "\n".join(text)


def variant_table(groups, base_name):
    base = dict(groups[base_name]) if base_name in groups else None
    base_mean = statistics.mean(base.values()) if base else None
    lines = []
    for k, runs in sorted(groups.items()):
        v = [a for _, a in runs]
        lines.append((k, len(v), f"{statistics.mean(v):.2f}", f"{min(v):.2f}",
                      "" if base is None else f"{statistics.mean(v) - base_mean:+.2f}",
                      "" if base is None or k == base_name else paired_cell(base, dict(runs)),
                      " ".join(f"{a:.2f}" for a in v)))
    return tabulate(lines, headers=["variant", "runs", "mean acc %", "min acc %", "mean - base",
                                    "paired by seed ± s.e.", "each"], disable_numparse=True)


def main(argv=None):
    parser = Parser(__doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="train.py run folders (config.json, metrics.json)")
    parser.add_argument("--base", metavar="NAME",
                        help="the variant the others are set against (default: base)")
    args = parser.parse_args(argv)
    print(summarize(args.runs, args.base))


if __name__ == "__main__":
    run_cli(main)
