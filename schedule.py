"""The one source of truth for every LR schedule: triangle.py draws these milestones, train.py runs
them, the tests check them. Milestones are (event index, value) pairs for Ignite's PiecewiseLinear,
counted in iterations and stepped at every iteration's start, so event index i is the value
iteration i+1 runs with."""
from ignite.engine import Events
from ignite.handlers import PiecewiseLinear

def one_cycle_milestones(iters_per_epoch, epochs, peak_epoch, lr_min, lr_max, momentum_max=0.9,
                         momentum_min=0.9):
    """(lr, momentum) milestones of the one-cycle: LRMIN on the first iteration, LRMAX on the LAST
    iteration of epoch `peak_epoch` (so the table's row for that epoch shows LRMAX), back to exactly
    LRMIN on the last iteration of the run; never below LRMIN (no annihilation). Momentum moves
    inversely (not at all when the two are equal)."""
    peak, last = peak_epoch * iters_per_epoch - 1, epochs * iters_per_epoch - 1
    return ([(0, lr_min), (peak, lr_max), (last, lr_min)],
            [(0, momentum_max), (peak, momentum_min), (last, momentum_max)])


def triangular_milestones(base_lr, max_lr, stepsize, cycles):
    """Smith's triangular cyclic LR (2015): base -> max over `stepsize` iterations, back over the
    next, repeated."""
    return [(i * stepsize, max_lr if i % 2 else base_lr) for i in range(2 * cycles + 1)]


def simulate(milestones, num_events):
    """The values the trainer's PiecewiseLinear would apply at event indices 0..num_events-1,
    without an optimizer."""
    values = PiecewiseLinear.simulate_values(num_events, param_name="lr",
                                             milestones_values=milestones)
    return [v for _, v in values]


def attach_one_cycle(trainer, optimizer, lr_milestones, momentum_milestones):
    """The two PiecewiseLinear schedulers, stepped at every iteration's start, and the read-back of
    the LR and momentum the optimizer then runs with. Returns (lr_sched, mom_sched, trace)."""
    lr_sched = PiecewiseLinear(optimizer, "lr", lr_milestones)
    mom_sched = PiecewiseLinear(optimizer, "momentum", momentum_milestones)
    trainer.add_event_handler(Events.ITERATION_STARTED, lr_sched)
    trainer.add_event_handler(Events.ITERATION_STARTED, mom_sched)
    trace = {"lr": [], "momentum": []}  # read back from the optimizer: what was applied

    @trainer.on(Events.ITERATION_STARTED)
    def record_schedule(engine):
        trace["lr"].append(optimizer.param_groups[0]["lr"])
        trace["momentum"].append(optimizer.param_groups[0]["momentum"])

    return lr_sched, mom_sched, trace
