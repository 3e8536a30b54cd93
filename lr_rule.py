"""The rule that reads an LR range test's loss curve: both bounds of the one-cycle, LRMIN and LRMAX.
Pure functions of (LRs, losses), so the tests hold the rule to known curves (lr_range.py runs the
sweeps).

  1. smooth the raw loss with a centred moving average over log-LR (no lag, unlike an EMA, so the
     minimum does not drift to higher LRs);
  2. the valley: the lowest point reached before the loss first climbs back by TURN_FRACTION of the
     drop made so far, taken as the (geometric) centre of its floor: the first to the last LR, up to
     that turn, whose loss is within VALLEY_TOLERANCE of the drop of that point (all of them, so a
     noisy bump inside a flat floor does not cut it in two). Not the global minimum: with batch norm
     the loss can spike at LR ~1 and fall again at ~5, where a run would not train. LRMAX is the
     valley itself: read off lr_range.py's slow sweep it lands where the 24-epoch one-cycle trains
     best at width 1 and at width 1/4 (docs/lr_range.md); a fast sweep needed a factor;
  3. LRMIN = where the loss starts to fall: the LR from which on the smoothed loss stays at least
     FALL_FRACTION of its drop (from the median of the first window down to the valley) below the
     start.
"""
import numpy as np

from cli import UserError

SMOOTH_FRACTION = 0.1  # moving-average window, as a fraction of the points recorded
TURN_FRACTION = 0.25  # the loss has turned up once it climbs back by 25 % of the drop so far
VALLEY_TOLERANCE = 0.05  # the valley's floor: within 5 % of the drop of its lowest point
# 1: LRMAX = the valley; 2: a quarter, floor cut at a bump; 3: half, whole floor (fast sweep);
# 4: the valley's whole floor, read off the slow sweep
RULE_VERSION = 4
LEGACY_RULE_VERSION = 1  # the rule of results saved before the version was recorded
FALL_FRACTION = 0.1  # LRMIN: where the smoothed loss has made 10 % of its drop to the valley
MIN_DROP = 0.1  # a curve whose smoothed loss never falls 10 % below its start has no answer
RULE = (f"smooth the loss with a centred moving average ({SMOOTH_FRACTION:.0%} of the points); "
        f"valley = lowest smoothed loss before it first climbs back by {TURN_FRACTION:.0%} of the "
        "drop so far, taken as the centre of its whole floor up to that turn (within "
        f"{VALLEY_TOLERANCE:.0%} of the drop); LRMAX = the valley's LR; LRMIN = LR "
        f"from which on the smoothed loss stays {FALL_FRACTION:.0%} of its drop (start to valley) "
        "below the start")


def smooth(values, window):
    """Centred moving average; the window shrinks symmetrically near the ends so no point borrows
    from one side."""
    v = np.asarray(values, dtype=np.float64)
    half = max(int(window) // 2, 0)
    c = np.concatenate([[0.0], np.cumsum(v)])
    out = np.empty_like(v)
    for i in range(len(v)):
        h = min(half, i, len(v) - 1 - i)
        out[i] = (c[i + h + 1] - c[i - h]) / (2 * h + 1)
    return out


def find_valley(s, start, turn_fraction=TURN_FRACTION, min_drop=MIN_DROP):
    """Index of the lowest smoothed loss before the curve first turns up (climbs back by
    turn_fraction of the drop made so far, once that drop is at least min_drop of the start); the
    global minimum if it never does. Returns (index, turn): turn is the first index past the
    valley's side, len(s) if the loss never turned up."""
    best = 0
    for i, v in enumerate(s):
        if v < s[best]:
            best = i
        drop = start - s[best]
        if drop > min_drop * abs(start) and v - s[best] > turn_fraction * drop:
            return best, i
    return int(np.argmin(s)), len(s)


def pick_lrs(lrs, losses, turn_fraction=TURN_FRACTION, valley_tolerance=VALLEY_TOLERANCE,
             fall_fraction=FALL_FRACTION, smooth_fraction=SMOOTH_FRACTION):
    """The rule (module docstring). Returns a dict with lr_min, lr_max (the valley), smoothed, and a
    warning or None. Raises UserError when the curve gives no answer."""
    lrs, losses = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(losses)
    if len(losses) == 0 or not finite[0]:
        raise UserError("the loss was NaN/inf from the first step: check the data and the model, "
                        "or lower --start-lr")
    n = int(np.argmin(finite)) if not finite.all() else len(losses)  # up to the first NaN/inf
    if n < 10:
        raise UserError(f"only {n} finite losses before divergence: lower --start-lr or raise "
                        "--num-iter")
    lrs, losses = lrs[:n], losses[:n]
    window = max(3, round(smooth_fraction * n))
    s = smooth(losses, window)
    start = float(np.median(losses[:window]))  # the starting level, robust to one noisy first batch
    i_valley, i_turn = find_valley(s, start, turn_fraction)
    drop = start - s[i_valley]
    if drop < MIN_DROP * abs(start) or i_valley < 3:
        later = f", or a later start, --start-lr {100 * lrs[0]:.2g}" if lrs[0] <= 1e-4 else ""
        raise UserError(f"the loss never fell (from {start:.3f} at LR {lrs[0]:.2g} to at best "
                        f"{s[i_valley]:.3f} at {lrs[i_valley]:.2g}, {n} iterations): try "
                        f"--num-iter {2 * n}{later}, or check model and data")
    # from here on the loss stays below the threshold: an early noisy dip does not count as the
    # start of the fall
    above = np.nonzero(s[:i_valley + 1] > start - fall_fraction * drop)[0]
    i_fall = int(above[-1]) + 1 if len(above) else 0
    # the floor of a flat valley is several LR steps wide and noise picks its lowest point: take its
    # centre, over every point of the floor up to where the loss turns up (a bump inside the floor
    # would halve it otherwise)
    floor = np.nonzero(s[:i_turn] <= s[i_valley] + valley_tolerance * drop)[0]
    a, b = int(floor[0]), int(floor[-1])
    lr_max, lr_min = float(np.sqrt(lrs[a] * lrs[b])), float(lrs[i_fall])
    if lr_min >= lr_max:
        raise UserError(f"the loss only started to fall (LR {lr_min:.3g}) above the rule's LRMAX "
                        f"{lr_max:.3g}: lower --start-lr or raise --num-iter so the sweep "
                        "resolves the falling part")
    warning = None
    if i_turn == n and finite.all():  # never turned up
        warning = (f"the loss never turned up before the end of the sweep (LR {lrs[-1]:.3g}): "
                   "LRMAX may be underestimated; raise --end-lr")
    return {"lr_min": lr_min, "lr_max": lr_max, "smoothed": s.tolist(),
            "n_used": n, "warning": warning}


def mean_curve(curves):
    """[(lrs, losses), ...] of sweeps with the same exponential schedule -> (lrs, losses averaged LR
    by LR), up to the shortest sweep (one that diverged early ends the mean there)."""
    n = min(len(losses) for _, losses in curves)
    return list(curves[0][0][:n]), np.mean([losses[:n] for _, losses in curves], axis=0).tolist()


