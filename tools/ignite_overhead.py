"""Host cost of Ignite's per-iteration machinery with train.py's handlers, the step itself a no-op.

    python tools/ignite_overhead.py   # 24 epochs x 98 iterations: bare engine, train.py's handlers

Keeping Ignite as the engine is only free if its events and our per-iteration handlers (two
PiecewiseLinear schedulers, the LR/momentum read-back, the on-device epoch totals) cost little next
to a GPU step. This times them alone on the CPU, best of --repeats, and prints microseconds per
iteration and seconds per 24-epoch run.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402
from ignite.engine import Engine  # noqa: E402

import config  # noqa: E402
from cli import Parser  # noqa: E402
from engine import EpochTotals  # noqa: E402
import schedule  # noqa: E402


def engine(with_handlers, iters_per_epoch, epochs):
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    out = {"loss": torch.zeros(()), "correct": torch.zeros((), dtype=torch.long), "n": 512}
    e = Engine(lambda engine, batch: out)
    if with_handlers:  # the same per-iteration handlers train.train attaches
        peak = min(5, epochs - 1)
        milestones = schedule.one_cycle_milestones(iters_per_epoch, epochs, peak, 0.004, 0.4)
        schedule.attach_one_cycle(e, optimizer, *milestones)
        EpochTotals().attach(e)
    return e


def main():
    p = Parser(__doc__)
    config.add_args(p, "epochs")
    p.add_argument("--iters", type=int, default=98,
                   help="iterations per epoch (default: 98 = 50,000 / 512)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    n = args.epochs * args.iters
    for with_handlers in (False, True):
        best = min(timed(engine(with_handlers, args.iters, args.epochs), args.iters, args.epochs)
                   for _ in range(args.repeats))
        name = "train.py handlers" if with_handlers else "bare engine"
        print(f"{name:>17}: {1e6 * best / n:6.1f} us/iteration, {best:.3f} s per "
              f"{args.epochs}-epoch run ({n} iterations)")


def timed(e, iters, epochs):
    t0 = time.perf_counter()
    e.run([None] * iters, max_epochs=epochs)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
