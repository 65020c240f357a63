"""The learning-rate schedule shapes of common.schedules, which 04's and 08's --ablation recipe compare: each one's
lr over the steps, checked at the points that define it (start, peak, middle of the annealing, end)."""
import math

import pytest
import torch

from common import schedules

PEAK, STEPS = 0.01, 100


def lrs(shape: str) -> list[float]:
    """The lr each of STEPS optimizer steps uses under ``shape``."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5, momentum=0.9)   # lr: replaced by the shape
    sched = schedules.make(opt, shape, PEAK, STEPS)
    out = []
    for _ in range(STEPS):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def test_one_cycle_warms_up_for_30_percent_then_anneals_by_cosine_to_peak_over_1e4():
    lr = lrs("onecycle")
    assert lr[0] == pytest.approx(PEAK / 25) and max(lr) == pytest.approx(PEAK)
    assert lr.index(max(lr)) == round(0.3 * STEPS) - 1        # OneCycleLR's pct_start 0.3: the peak at step 29
    assert lr[-1] == pytest.approx(PEAK / 25 / 1e4)
    mid = (lr.index(max(lr)) + STEPS - 1) // 2                 # half-way down a cosine: half-way between peak and end
    assert lr[mid] == pytest.approx((PEAK + PEAK / 25 / 1e4) / 2, rel=0.05)


def test_the_other_shapes_each_change_one_thing():
    warm = lrs("onecycle_warm0.1")
    assert warm.index(max(warm)) == round(0.1 * STEPS) - 1 and warm[0] == pytest.approx(PEAK / 25)
    linear = lrs("onecycle_linear")
    top = linear.index(max(linear))
    up = [linear[i + 1] - linear[i] for i in range(top)]
    down = [linear[i] - linear[i + 1] for i in range(top, STEPS - 1)]
    assert top == round(0.3 * STEPS) - 1 and linear[-1] == pytest.approx(PEAK / 25 / 1e4)   # one-cycle's ends
    assert max(up) == pytest.approx(min(up), rel=1e-6) and max(down) == pytest.approx(min(down), rel=1e-6)  # lines
    cos = lrs("cosine")
    assert cos[0] == PEAK and all(a >= b for a, b in zip(cos, cos[1:]))   # from the peak, no warm-up
    assert cos[STEPS // 2] == pytest.approx(PEAK * (1 + math.cos(math.pi / 2)) / 2)
    assert lrs("constant") == [PEAK] * STEPS


def test_only_one_cycle_shapes_cycle_the_momentum_and_an_unknown_shape_is_refused():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    schedules.make(opt, "onecycle", PEAK, STEPS)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)    # one-cycle starts at its max momentum
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    schedules.make(opt, "cosine", PEAK, STEPS)
    assert opt.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="unknown schedule shape 'step'"):
        schedules.make(opt, "step", PEAK, STEPS)
