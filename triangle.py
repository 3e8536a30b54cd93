"""Draw Leslie Smith's triangular cyclic learning rate ("Cyclical Learning Rates for Training Neural
Networks").

    python triangle.py --out tri.png                  # three cycles between base_lr and max_lr
    python triangle.py --one-cycle --out onecycle.png # train.py's schedule: 24 epochs, peak at 5

The LR climbs linearly from base_lr to max_lr over `stepsize` iterations, falls back over the next
`stepsize`, and repeats; one cycle is 2 x stepsize. The curve is not drawn from hand-placed points:
it is what Ignite's PiecewiseLinear applies at every iteration, simulated from the milestones in
schedule.py, the same code the trainer runs (for --one-cycle, with the LRs of lr_range.json when
there is one). Needs neither the model nor the data.
"""
from pathlib import Path

import config
from cli import Parser, UserError, run_cli
from files import check_figure_path, read_lr_result, save_figure
from schedule import one_cycle_milestones, simulate, triangular_milestones


def triangle_values(base_lr, max_lr, stepsize, cycles):
    """The LR at iterations 0 .. 2*stepsize*cycles (inclusive), from the trainer's scheduler
    code."""
    check(base_lr, max_lr, stepsize, cycles)
    milestones = triangular_milestones(base_lr, max_lr, stepsize, cycles)
    return simulate(milestones, 2 * stepsize * cycles + 1)


def check(base_lr, max_lr, stepsize, cycles):
    if base_lr < 0:
        raise UserError(f"--base-lr must be >= 0, got {base_lr}")
    if max_lr <= base_lr:
        raise UserError(f"--max-lr ({max_lr}) must be above --base-lr ({base_lr})")
    if stepsize <= 0:
        raise UserError(f"--stepsize must be a positive number of iterations, got {stepsize}")
    if cycles <= 0:
        raise UserError(f"--cycles must be positive, got {cycles}")


def draw_triangle(values, base_lr, max_lr, stepsize, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(range(len(values)), values, color="C0", lw=2)
    span = max_lr - base_lr
    for y, name in ((base_lr, f"base_lr = LRMIN = {base_lr:g}"), (max_lr, "max_lr = LRMAX = "
                                                                  f"{max_lr:g}")):
        ax.axhline(y, color="0.4", ls="--", lw=1)
        ax.text(len(values) - 1, y + 0.02 * span, name, ha="right", va="bottom", fontsize=9)
    # one stepsize (bottom band) and one cycle (top band, the second cycle when there is one); no
    # arrows
    c0 = 2 * stepsize if len(values) > 4 * stepsize else 0
    ax.axvspan(0, stepsize, ymax=0.07, color="C1", alpha=0.5)
    ax.text(stepsize / 2, base_lr - 0.12 * span, f"stepsize = {stepsize}", ha="center", va="center",
            fontsize=9)
    ax.axvspan(c0, c0 + 2 * stepsize, ymin=0.93, color="C2", alpha=0.4)
    ax.text(c0 + stepsize, max_lr + 0.12 * span, f"one cycle = 2 x stepsize = {2 * stepsize}",
            ha="center",
            va="center", fontsize=9)
    ax.set_ylim(base_lr - 0.22 * span, max_lr + 0.22 * span)
    ax.set_xlim(0, len(values) - 1)
    ax.set(xlabel="iteration", ylabel="learning rate", title="Triangular cyclical learning rate "
           "(Smith)")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)


def draw_one_cycle(lr_ms, mom_ms, iters_per_epoch, epochs, peak_epoch, path):
    import matplotlib.pyplot as plt

    n = epochs * iters_per_epoch
    lrs, moms = simulate(lr_ms, n), simulate(mom_ms, n)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot([i / iters_per_epoch for i in range(n)], lrs, color="C0", lw=2)
    ax.set(xlabel="epoch", ylabel="learning rate",
           title=f"One cycle: LRMIN {lr_ms[0][1]:.3g} -> LRMAX {lr_ms[1][1]:.3g} at the end of "
           f"epoch {peak_epoch} -> "
                 f"LRMIN at epoch {epochs}")
    ax.yaxis.label.set_color("C0")
    m = ax.twinx()
    m.plot([i / iters_per_epoch for i in range(n)], moms, color="C1", lw=1.5)
    m.set_ylabel("momentum", color="C1")
    ax.set_xticks(range(0, epochs + 1, 2 if epochs <= 30 else 5))
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None):
    import matplotlib

    matplotlib.use("Agg")
    p = Parser(__doc__)
    p.add_argument("--base-lr", type=float, default=0.01, help="lower bound, LRMIN (default: 0.01)")
    p.add_argument("--max-lr", type=float, default=0.1, help="upper bound, LRMAX (default: 0.1)")
    p.add_argument("--stepsize", type=int, default=500,
                   help="iterations of one half-cycle (default: 500)")
    p.add_argument("--cycles", type=int, default=3, help="full cycles to draw (default: 3)")
    p.add_argument("--one-cycle", action="store_true",
                   help="draw train.py's one-cycle (LR and momentum) instead, with train.py's "
                   "flags below; its LRs from --lr-json when that file exists, else --base-lr and "
                   "--max-lr")
    p.add_argument("--iters-per-epoch", type=int, default=98,
                   help="with --one-cycle (default: 98 = 50,000/512)")
    config.add_args(p, "out", "epochs", "peak_epoch", "lr_json", "momentum",
                    out=("tri.png", "figure file to write", "FILE"),
                    texts={"lr_json": "with --one-cycle: the range-test result (lr_range.py) to "
                           "take LRMIN/LRMAX from, when the file exists; else --base-lr and "
                           "--max-lr"})
    args = p.parse_args(argv)
    check_figure_path(args.out)
    if args.one_cycle:
        return one_cycle(args)
    values = triangle_values(args.base_lr, args.max_lr, args.stepsize, args.cycles)
    draw_triangle(values, args.base_lr, args.max_lr, args.stepsize, args.out)
    print(f"wrote {args.out}: {args.cycles} cycles of {2 * args.stepsize} iterations, "
          f"{args.base_lr:g} <-> {args.max_lr:g}")


def one_cycle(args):
    lo, hi, source = args.base_lr, args.max_lr, "--base-lr/--max-lr"
    if Path(args.lr_json).exists() or args.lr_json != config.LR_JSON:  # one named must be there
        found = read_lr_result(args.lr_json)
        lo, hi, source = found["lr_min"], found["lr_max"], args.lr_json
    check(lo, hi, args.iters_per_epoch, 1)
    if not 0 < args.peak_epoch < args.epochs:
        raise UserError(f"--peak-epoch must be between 1 and {args.epochs - 1}, got "
                        f"{args.peak_epoch}")
    lr_ms, mom_ms = one_cycle_milestones(args.iters_per_epoch, args.epochs, args.peak_epoch, lo, hi,
                                         *args.momentum)
    draw_one_cycle(lr_ms, mom_ms, args.iters_per_epoch, args.epochs, args.peak_epoch, args.out)
    print(f"wrote {args.out}: one cycle {lo:.3g} -> {hi:.3g} -> {lo:.3g} (LRs from {source})")


if __name__ == "__main__":
    run_cli(main)
