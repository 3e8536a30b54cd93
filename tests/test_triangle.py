import numpy as np
import pytest

import schedule
import triangle
from conftest import run_script
from data import UserError


@pytest.mark.parametrize("base, top, step, cycles", [(0.01, 0.1, 500, 3), (0.0, 1.0, 7, 2),
                                                     (0.2, 0.3, 1, 1)])
def test_triangle_values(base, top, step, cycles):
    v = np.array(triangle.triangle_values(base, top, step, cycles))
    assert len(v) == 2 * step * cycles + 1
    for c in range(cycles):
        assert v[2 * c * step] == pytest.approx(base)  # back to base at every cycle boundary
        assert v[(2 * c + 1) * step] == pytest.approx(top)  # peak exactly at each stepsize
    assert v[-1] == pytest.approx(base)
    slope = (top - base) / step
    d = np.diff(v)
    for k in range(2 * cycles):  # linear in between: constant slope, up then down
        np.testing.assert_allclose(d[k * step:(k + 1) * step], slope if k % 2 == 0 else -slope,
                                   rtol=1e-6)
    assert v.min() >= base - 1e-12 and v.max() <= top + 1e-12


def test_one_cycle_schedule_no_annihilation():
    ipe, epochs, peak, lo, hi = 98, 24, 5, 0.004, 0.4
    lr_ms, mom_ms = schedule.one_cycle_milestones(ipe, epochs, peak, lo, hi, 0.95, 0.85)
    n = ipe * epochs
    lr, mom = np.array(schedule.simulate(lr_ms, n)), np.array(schedule.simulate(mom_ms, n))
    # the last iteration of the peak epoch runs at LRMAX: that epoch's table row shows it
    top = peak * ipe - 1
    assert (lr[0], lr[top], lr[-1]) == pytest.approx((lo, hi, lo))
    assert lr.min() >= lo - 1e-12  # never below LRMIN
    assert np.all(np.diff(lr[: top + 1]) > 0) and np.all(np.diff(lr[top:]) < 0)
    assert (mom[0], mom[top], mom[-1]) == pytest.approx((0.95, 0.85, 0.95))
    # momentum moves exactly opposite to the LR
    np.testing.assert_allclose((lr - lo) / (hi - lo), (0.95 - mom) / 0.10, atol=1e-9)


@pytest.mark.parametrize("args", [(0.1, 0.1, 10, 1), (0.2, 0.1, 10, 1), (0.01, 0.1, 0, 1),
                                  (0.01, 0.1, 10, 0), (-0.1, 0.1, 10, 1)])
def test_impossible_arguments_raise(args):
    with pytest.raises(UserError):
        triangle.triangle_values(*args)


@pytest.mark.slow
def test_cli_writes_png_and_refuses_bad_flags(tmp_path):
    out = tmp_path / "tri.png"
    r = run_script("triangle.py", "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    one = tmp_path / "one.png"
    (tmp_path / "lr.json").write_text('{"lr_min": 0.002, "lr_max": 0.3}')
    r = run_script("triangle.py", "--one-cycle", "--out", one, "--lr-json", tmp_path / "lr.json")
    assert r.returncode == 0 and one.exists() and "0.002 -> 0.3 -> 0.002" in r.stdout, r.stderr
    # one bad flag as a user's shell sees it; tests/test_bad_input.py's table holds the rest,
    # in-process
    r = run_script("triangle.py", "--out", tmp_path / "bad.png", "--cycles", "-1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "error:" in r.stderr, r.stderr
    assert not (tmp_path / "bad.png").exists()
