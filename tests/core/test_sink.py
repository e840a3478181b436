"""The write sink: the chain never writes into ``.grad``, and only the core writes the parameters."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz

from .helpers import make_params, set_grads

m = tz.m

CHAINS = {
    "wd_sgd_lr": lambda: [m.WeightDecay(0.1), m.SGD(momentum=0.9), m.LR(0.1)],
    "wd_adam_lr": lambda: [m.WeightDecay(0.1), m.Adam(), m.LR(0.1)],
    "sgd_nesterov_unfused": lambda: [m.SGD(momentum=0.9, nesterov=True), m.Mul(1.0), m.LR(0.1)],
    "lr_first": lambda: [m.LR(0.1), m.Adam()],
    "cautious_first": lambda: [m.Cautious(), m.LR(0.1)],
    "adam_cautious_lr": lambda: [m.Adam(), m.Cautious(), m.LR(0.1)],
    "muon_nesterov": lambda: [m.Muon(), m.LR(0.02)],
    "nadam_unfused": lambda: [m.NAdam(), m.Mul(2.0), m.LR(0.1)],
    "rprop_unfused": lambda: [m.Rprop(), m.Mul(2.0), m.LR(0.1)],
    "sign_clip_normalize": lambda: [m.Sign(), m.ClipValue(0.5), m.Normalize(), m.LR(0.1)],
    "tensor_lr": lambda: [m.WeightDecay(0.1), m.LR(torch.tensor(0.1))],
    "schedule_free_sgd_moves": lambda: [m.ScheduleFreeSGD(), m.LR(0.1)],
    "schedule_free_adamw_then_mul": lambda: [m.ScheduleFreeAdamW(weight_decay=0.1), m.LR(0.1), m.Mul(1.0)],
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_step_leaves_grad_as_backward_left_it(name):
    """torch.optim never writes ``.grad``; neither may a chain (hooks, SWA and gradient logging read it)."""
    params = make_params(dtypes=(torch.float32, torch.float64))
    opt = tz.Modular(params, *CHAINS[name]())
    for step in range(3):
        set_grads(step, params)
        before = [p.grad.clone() for p in params]
        opt.step()
        for p, g in zip(params, before, strict=True):
            assert torch.equal(p.grad, g), f"{name}: step {step} wrote into .grad"


def test_grad_as_scratch_is_opt_in():
    params = make_params()
    opt = tz.Modular(params, m.Adam(), m.Cautious(), m.LR(0.1), grad_as_scratch=True)
    set_grads(0, params)
    opt.step()
    assert all(set(p.grad.unique().tolist()) <= {0.0, 1.0} for p in params)  # the mask was built in .grad


def test_no_module_file_mentions_the_last_stage():
    """Modules hand their result to the sink; whether a stage is the last one is the core's business."""
    from pathlib import Path

    root = Path(tz.__file__).parent / "modules"
    words = ("is_last", "mark_params_written", "params_written", "wants_final_evaluation")
    offenders = [
        f"{p.relative_to(root)}: {w}" for p in root.rglob("*.py") for w in words if w in p.read_text(encoding="utf-8")
    ]
    assert not offenders


class _Shrink(tz.Transform):
    """Lands the parameters on ``0.9 theta - 0.1 u`` with ``seg.emit_move`` (``move=True``) or emits the same step as
    the direction ``0.1 u + 0.1 theta`` (``move=False``)."""

    modifies_update_inplace = False

    def __init__(self, move: bool = True):
        super().__init__({})
        self.move = move

    def apply(self, ctx, seg):
        update = seg.update
        if not self.move:
            seg.emit(update, 0.1, decay=0.1)
            return

        def move(x):
            torch._foreach_mul_(x, 0.9)
            torch._foreach_add_(x, update, alpha=-0.1)

        seg.emit_move(move)


TAILS = {"last": lambda: [], "mul": lambda: [m.Mul(1.0)], "adam": lambda: [m.Mul(2.0), m.Adam(), m.LR(0.1)]}


@pytest.mark.parametrize("tail", sorted(TAILS))
def test_emit_move_lands_where_the_equivalent_direction_does(tail):
    """``emit_move`` as the last stage writes the parameters in place; elsewhere it hands on ``theta - move(theta)``,
    which the rest of the chain sees as it sees the equivalent direction.  float64, 4 steps: the two differ only in
    rounding (``0.9 theta - 0.1 u`` against ``theta - (0.1 u + 0.1 theta)``), so rtol 1e-13."""
    a, b = make_params(dtypes=(torch.float64,)), make_params(dtypes=(torch.float64,))
    opt_a = tz.Modular(a, _Shrink(move=True), *TAILS[tail]())
    opt_b = tz.Modular(b, _Shrink(move=False), *TAILS[tail]())
    for step in range(4):
        set_grads(step, a)
        set_grads(step, b)
        before = [p.grad.clone() for p in a]
        opt_a.step()
        opt_b.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(a, before, strict=True))
        for p, q in zip(a, b, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)
    if tail == "last":  # the last stage moved the parameters themselves: exactly 0.9 theta - 0.1 g after one step
        c = make_params(dtypes=(torch.float64,))
        start = [p.detach().clone() for p in c]
        opt_c = tz.Modular(c, _Shrink(move=True))
        set_grads(0, c)
        opt_c.step()
        for p, x in zip(c, start, strict=True):
            assert torch.equal(p.detach(), x.mul_(0.9).add_(p.grad, alpha=-0.1))  # the same kernels, in place
