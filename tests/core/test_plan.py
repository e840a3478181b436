"""The step plan: per-group scalar state (Segment.scalar) and group facts kept in one place."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

from .helpers import make_params, set_grads


class Counter(tz.Transform):
    """Counts steps per param group with ``seg.scalar`` and records what each segment saw."""

    counts_steps = True

    def __init__(self):
        super().__init__({})
        self.seen: list[tuple[int, float]] = []

    def apply(self, ctx, seg):
        value = seg.scalar("n", lambda previous: previous + 1.0, init=0.0)
        self.seen.append((seg.step, value))


class Fails(tz.Module):
    def step(self, ctx):
        raise RuntimeError("later stage failed")


def test_a_group_spanning_several_segments_advances_once_per_step():
    params = make_params(dtypes=(torch.float32, torch.float64))  # one group, two segments (two dtypes)
    counter = Counter()
    opt = tz.Modular(params, counter, tz.m.LR(0.1))
    for step in range(1, 4):
        counter.seen.clear()
        set_grads(step, params)
        opt.step()
        assert counter.seen == [(step, float(step))] * 2  # both segments see the same, advanced once
    assert counter.global_state["n"] == {"0": [[3, 3.0]]}


def test_a_parameter_that_joins_later_has_its_own_history():
    a, b = make_params(), make_params(seed=1)
    counter = Counter()
    opt = tz.Modular(a, counter, tz.m.LR(0.1))
    set_grads(0, a)
    opt.step()
    opt.add_param_group({"params": b})
    set_grads(1, a)
    set_grads(2, b)
    counter.seen.clear()
    opt.step()
    assert sorted(counter.seen) == [(1, 1.0), (2, 2.0)]


def test_scalar_state_is_written_only_when_the_whole_step_succeeded():
    params = make_params()
    counter = Counter()
    opt = tz.Modular(params, counter, Fails())
    set_grads(0, params)
    with pytest.raises(RuntimeError, match="later stage failed"):
        opt.step()
    assert counter.global_state.get("n", {}) == {}
