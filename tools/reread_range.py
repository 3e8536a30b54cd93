"""Saved range-test results read again by today's rule (lr_rule.py): the curve a result holds is the
measurement, the LRs are the rule's reading of it, so a result made by an older rule can be compared
with a new one without sweeping again.

    python tools/reread_range.py runs/lr_range/lr_range.json ...            # a table
    python tools/reread_range.py --out figs A/lr_range.json B/lr_range.json  # and a figure each

One row per file: its width, iterations and seed, the LRs it was saved with (and that rule's
version), and today's LRMIN and LRMAX. With --out, OUT/<the result's folder name>.png is the curve
with today's LRMIN and LRMAX marked. Nothing is written next to the results.
"""
import sys
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import config  # noqa: E402
import lr_range  # noqa: E402
import lr_rule  # noqa: E402
from cli import Parser, UserError, run_cli  # noqa: E402
from files import read_json, save_figure  # noqa: E402


def reread(path, result):
    """The saved result (read from path) with lr_min, lr_max and smoothed replaced by today's
    rule's."""
    if not {"lrs", "losses"} <= result.keys():
        raise UserError(f"{path}: holds no loss curve (lrs, losses); give lr_range.json files")
    picked = lr_rule.pick_lrs(result["lrs"], result["losses"])
    return {**result, **{k: picked[k] for k in ("lr_min", "lr_max", "smoothed")},
            "rule_version": lr_rule.RULE_VERSION}


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = Parser(__doc__)
    p.add_argument("results", nargs="+", type=Path, help="lr_range.json files")
    config.add_args(p, "out", out=("", "folder for one figure per result (default: none)"))
    args = p.parse_args(argv)
    args.out = Path(args.out) if args.out else None
    rows = []
    for path in args.results:
        saved = read_json(path, "LR range-test result", "give lr_range.json files")
        now = reread(path, saved)
        rows.append([str(path), saved.get("width", 1.0), len(now["losses"]), saved.get("seed"),
                     saved.get("rule_version", lr_rule.LEGACY_RULE_VERSION),
                     f"{saved['lr_min']:.3g} / {saved['lr_max']:.3g}",
                     f"{now['lr_min']:.3g} / {now['lr_max']:.3g}"])
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            fig = lr_range.plot(now)
            save_figure(fig, args.out / f"{path.parent.name}.png")
            plt.close(fig)
    print(tabulate(rows, headers=["result", "width", "iterations", "seed", "saved by rule",
                                  "saved LRMIN / LRMAX",
                                  f"rule {lr_rule.RULE_VERSION}: LRMIN / LRMAX"]))


if __name__ == "__main__":
    run_cli(main)
