"""``torch.compile(opt.step)``: the opt-in compiled path.

The compiled step must equal the eager one step by step (the eager chains are checked against torch.optim
elsewhere), compile a bounded number of times while the step count, the learning rate and the momentum
change, and leave param groups as torch's plain dicts.  Most cases use a counting backend (dynamo traces
the chain, no C++ compile); one runs Inductor end to end, where the elementwise modules fuse into kernels.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import torchzero as tz

SHAPES = [(16, 16), (16,), (8, 4)]

CHAINS: dict[str, Callable[[], list[tz.m.Module]]] = {
    "adam_long": lambda: [tz.m.Adam(), tz.m.Cautious(), tz.m.LR(1e-2), tz.m.WeightDecay(1e-2)],
    "adam_amsgrad_clip": lambda: [tz.m.ClipNorm(1.0), tz.m.Adam(amsgrad=True), tz.m.LR(1e-2)],
    "sgd_nesterov": lambda: [tz.m.SGD(momentum=0.9, nesterov=True), tz.m.LR(1e-2)],
    "lion": lambda: [tz.m.Lion(), tz.m.LR(1e-3)],
    "rmsprop_centered": lambda: [tz.m.RMSprop(centered=True, momentum=0.9), tz.m.LR(1e-3)],
    "muon": lambda: [tz.m.Muon(), tz.m.LR(1e-2)],
    "radam": lambda: [tz.m.RAdam(), tz.m.LR(1e-2)],
    "nadam": lambda: [tz.m.NAdam(), tz.m.LR(1e-2)],
    "ema_sign_normalize": lambda: [tz.m.EMA(0.9), tz.m.Sign(), tz.m.Normalize(), tz.m.Centralize(), tz.m.LR(1e-2)],
    # the wrapped optimizer runs eagerly; ClipNorm before it and WeightDecay after it compile
    "wrap": lambda: [tz.m.ClipNorm(1.0), tz.m.Wrap(torch.optim.Adam, lr=1.0), tz.m.LR(1e-2), tz.m.WeightDecay(1e-2)],
}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _pair(chain: Callable[[], list[tz.m.Module]], dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    params = [torch.randn(s, dtype=dtype, requires_grad=True) for s in SHAPES]
    twins = [p.detach().clone().requires_grad_() for p in params]
    return params, tz.Modular(params, chain()), twins, tz.Modular(twins, chain())


def _steps(step, eager, params, twins, n: int, schedulers=()) -> None:
    """``n`` compiled and eager steps on the same gradients; then the parameters must agree."""
    for _ in range(n):
        for p, q in zip(params, twins, strict=True):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        step()
        eager.step()
        for s in schedulers:
            s.step()
    for p, q in zip(params, twins, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(CHAINS))
def test_compiled_step_equals_eager(name):
    params, opt, twins, eager = _pair(CHAINS[name])
    counter = CompileCounter()
    _steps(torch.compile(opt.step, backend=counter), eager, params, twins, 12)
    # dynamo specialises the first steps, then treats the step count as dynamic: no recompile per step (Wrap's
    # graph break splits the step into frames that each compile a few times; 7 after 12 steps and after 40)
    most = 7 if name == "wrap" else 4
    assert 1 <= counter.frame_count <= most, f"{name}: compiled {counter.frame_count} times in 12 steps"
    assert all(type(g) is dict for g in opt.param_groups)


def test_scheduler_changes_lr_and_momentum_without_recompiling_every_step():
    params, opt, twins, eager = _pair(CHAINS["adam_long"])
    scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=40) for o in (opt, eager)]
    counter = CompileCounter()
    _steps(torch.compile(opt.step, backend=counter), eager, params, twins, 20, scheds)
    assert opt.param_groups[0]["betas"] == eager.param_groups[0]["betas"] != (0.9, 0.999)
    assert counter.frame_count <= 4, f"compiled {counter.frame_count} times in 20 steps"


def test_fullgraph_inductor_equals_eager():
    """The real compiler: one graph for the whole step (``fullgraph=True`` fails on any graph break)."""
    params, opt, twins, eager = _pair(CHAINS["adam_long"])
    step = torch.compile(opt.step, fullgraph=True)  # Inductor, C++ kernels on the CPU
    _steps(step, eager, params, twins, 5)
    # the state is the eager path's too: a compiled run saves and an eager one resumes from it
    eager.load_state_dict(copy.deepcopy(opt.state_dict()))  # a copy: torch's load keeps the same tensors
    _steps(step, eager, params, twins, 1)


def test_chain_without_lr_runs_its_step_eagerly():
    """A line-search chain has no LR module; its param groups are not plain dicts, so the step runs eagerly."""
    torch.manual_seed(0)
    X, y = torch.randn(32, 5), torch.randn(32)
    results = []
    for compiled in (True, False):
        w = torch.zeros(5, requires_grad=True)
        opt = tz.Modular([w], tz.m.LBFGS(), tz.m.StrongWolfe())

        def closure(backward=True, w=w, opt=opt):
            loss = ((X @ w - y) ** 2).mean()
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

        counter = CompileCounter()
        step = torch.compile(opt.step, backend=counter) if compiled else opt.step
        for _ in range(4):
            step(closure)
        if compiled:
            assert counter.frame_count == 0
        results.append(w.detach().clone())
    torch.testing.assert_close(results[0], results[1])
    with pytest.raises(Exception, match="Skip calling|disable"):  # fullgraph refuses the eager fallback loudly
        torch._dynamo.reset()
        w = torch.zeros(5, requires_grad=True)
        opt = tz.Modular([w], tz.m.LBFGS(), tz.m.StrongWolfe())
        torch.compile(opt.step, fullgraph=True, backend="eager")(lambda backward=True: (w**2).sum())


def test_state_becomes_static_addresses_like_torch_optimizers():
    """Dynamo marks the state of torch's optimizers as static addresses (CUDA graphs then copy nothing); the
    ``_init_group`` hook gets ours the same treatment once the state exists."""
    params, opt, twins, eager = _pair(CHAINS["adam_long"])
    _steps(torch.compile(opt.step, backend=CompileCounter()), eager, params, twins, 3)

    def tensors(o):
        return [t for s in o.state.values() for ms in s.values() for t in ms.values() if isinstance(t, torch.Tensor)]

    assert len(tensors(opt)) == len(tensors(eager)) == 2 * len(params)  # exp_avg, exp_avg_sq
    assert all(getattr(t, "_dynamo_static_input_type", None) == "guarded" for t in tensors(opt))
    assert not any(hasattr(t, "_dynamo_static_input_type") for t in tensors(eager))


def test_a_compiled_step_reports_its_metrics_as_the_eager_step() -> None:
    # opt.metrics() reads what the step kept on the optimizer: a compiled step must keep it too
    def run(compiled: bool) -> dict[str, float]:
        torch._dynamo.reset()
        torch.manual_seed(0)
        ps = [torch.randn(4, 3, requires_grad=True), torch.randn(3, dtype=torch.float64, requires_grad=True)]
        opt = tz.Modular(ps, tz.m.ClipNorm(1.0), tz.m.Adam(), tz.m.LR(1e-2), update_rms=True)
        step = torch.compile(opt.step, backend=CompileCounter()) if compiled else opt.step
        for _ in range(2):
            for p in ps:
                p.grad = torch.randn_like(p)
            step()
        return opt.metrics()

    eager, compiled = run(False), run(True)
    torch._dynamo.reset()
    assert set(eager) == {
        "all/0.ClipNorm/norm",
        "0/1.Adam.float32/update_rms",
        "0/1.Adam.float64/update_rms",
        "all/Modular/closure_calls",
    }
    assert compiled == pytest.approx(eager, rel=1e-6)
