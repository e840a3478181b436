"""``torch.compile(opt.step)``: the opt-in compiled path.

The compiled step must equal the eager one step by step (the eager chains are checked against torch.optim
elsewhere), compile a bounded number of times while the step count, the learning rate and the momentum
change, and leave param groups as torch's plain dicts.  Most cases use a counting backend (dynamo traces
the chain, no C++ compile); one runs Inductor end to end, where the elementwise modules fuse into kernels.
"""

from __future__ import annotations

import contextlib
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


# ---------------------------------------------------------------------------- tz.Modular(..., compile=True)


def _compiled_pair(chain: Callable[[], list[tz.m.Module]], dtype: torch.dtype = torch.float32, **compile_options):
    torch.manual_seed(0)
    params = [torch.randn(s, dtype=dtype, requires_grad=True) for s in SHAPES]
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = tz.Modular(params, chain(), compile=compile_options or True)
    return params, opt, twins, tz.Modular(twins, chain())


def _grads_into(*param_lists):
    for ps in zip(*param_lists, strict=True):
        g = torch.randn(ps[0].shape).to(torch.bfloat16)  # representable in every dtype of the test
        for p in ps:
            p.grad = g.to(p.dtype)


def test_compile_true_equals_eager_with_inductor():
    """The opt-in compiled step (one Inductor graph) against the eager step on the same gradients, fp32: the
    eager tolerance of this file (both compute each element in fp32; Inductor may contract a multiply-add)."""
    params, opt, twins, eager = _compiled_pair(CHAINS["adam_long"])
    assert opt.compiled and not eager.compiled
    for _ in range(4):
        _grads_into(params, twins)
        opt.step()
        eager.step()
    for p, q in zip(params, twins, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_compile_true_bf16_is_as_close_to_fp32_as_the_eager_step():
    """bf16: Inductor computes the chain in fp32 and rounds once, where the eager foreach path rounds after every
    op, so the two do not agree bit for bit.  Both are compared with the same chain run in fp32 from the same
    start on the same gradients: the compiled parameters must be no further from it than the eager bf16 ones, and
    within rtol 1.6e-2 (``assert_close``'s bf16 rtol, about two roundings of the parameter) plus an atol of
    4 steps x lr x 2**-5: both runs keep Adam's moments in bf16, whose roundings (2**-8 each, a few per step)
    move a step's direction by up to about 2**-5 of the step (lr = 1e-2), which shows near zero.
    """
    chain = CHAINS["adam_long"]
    torch.manual_seed(0)
    start = [torch.randn(s).to(torch.bfloat16) for s in SHAPES]
    compiled, eager, ref = ([t.clone().to(dtype).requires_grad_() for t in start] for dtype in
                            (torch.bfloat16, torch.bfloat16, torch.float32))  # fmt: skip
    opts = [tz.Modular(compiled, chain(), compile=True), tz.Modular(eager, chain()), tz.Modular(ref, chain())]
    for _ in range(4):
        _grads_into(compiled, eager, ref)
        for o in opts:
            o.step()

    def error(ps):
        return max((p.float() - r).abs().max().item() for p, r in zip(ps, ref, strict=True))

    for p, r in zip(compiled, ref, strict=True):
        torch.testing.assert_close(p.float(), r, rtol=1.6e-2, atol=4 * 1e-2 * 2**-5)
    assert error(compiled) <= error(eager)


def test_compiled_kernels_compute_step_dependent_scalars_once():
    """The bias corrections change every step; Inductor must not recompute ``beta ** t`` per element, and no
    foreach op may stay outside its fused kernels.

    Each scalar a foreach op gets is realized once per step (``torchzero.foreach.compiled``): no kernel that
    loops over the elements calls ``pow``.  Without the mechanism every loop holds two (and the step is 2-3x
    slower than torch's fused Adam on the CPU).
    """
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    params = [torch.randn(64, requires_grad=True) for _ in range(2)]
    opt = tz.Modular(params, *CHAINS["adam_long"](), compile=True)
    codes = []
    for _ in range(4):  # dynamo specialises the first step counts, then compiles one graph for all
        for p in params:
            p.grad = torch.randn_like(p)
        codes += run_and_get_code(opt.step)[1]
    assert codes
    loops = [k for code in codes for k in code.split('extern "C"')[1:] if "for(int64_t x0" in k]
    assert loops
    assert not [k for k in loops if "pow(" in k], "a kernel over the elements recomputes a step-dependent scalar"
    # every foreach op is lowered into Inductor's kernels: one left to an eager ATen kernel is a pass of its own
    assert not [c for c in codes if "aten._foreach" in c]


@pytest.mark.parametrize(
    "name, key",
    [("adam_long", "betas"), ("sgd_nesterov", "momentum")],
)
def test_compile_true_does_not_recompile_over_1000_scheduled_steps(name, key):
    """OneCycleLR changes the lr and the momentum (``betas`` or ``momentum``) at every step."""
    counter = CompileCounter()
    params, opt, twins, eager = _compiled_pair(CHAINS[name], backend=counter)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=1000)
    seen = []
    for i in range(1000):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0][key])
        if i == 9:
            after_warmup = counter.frame_count
    assert len(set(map(str, seen))) > 900  # the scheduler did change it
    assert 1 <= after_warmup <= 4
    assert counter.frame_count == after_warmup, f"recompiled {counter.frame_count - after_warmup} times"


def test_compile_true_refuses_what_it_cannot_compile():
    w = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="Wrap"):
        tz.Modular([w], tz.m.Wrap(torch.optim.Adam, lr=1.0), tz.m.LR(1e-2), compile=True)
    with pytest.raises(ValueError, match="differentiable"):
        tz.Modular([w], tz.m.Adam(), tz.m.LR(1e-2), compile=True, differentiable=True)
    with pytest.raises(TypeError, match="dict of torch.compile options"):
        tz.Modular([w], tz.m.Adam(), tz.m.LR(1e-2), compile="yes")


def test_compile_true_closure_chain_steps_eagerly_with_a_note():
    torch.manual_seed(0)
    X, y = torch.randn(32, 5), torch.randn(32)
    results = []
    for compiled in (True, False):
        w = torch.zeros(5, requires_grad=True)
        with pytest.warns(UserWarning, match="steps eagerly") if compiled else contextlib.nullcontext():
            opt = tz.Modular([w], tz.m.LBFGS(), tz.m.StrongWolfe(), compile=compiled)
        assert not opt.compiled

        def closure(backward=True, w=w, opt=opt):
            loss = ((X @ w - y) ** 2).mean()
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
        results.append(w.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_compile_true_step_with_closure_evaluates_it_then_runs_the_compiled_step():
    """Lightning passes a closure to every step: the closure runs eagerly (forward and backward), then the
    compiled step; loss, gradients and parameters as in an eager step with the same closure."""
    counter = CompileCounter()
    params, opt, twins, eager = _compiled_pair(CHAINS["adam_long"], backend=counter)
    x = torch.randn(8)

    def closure_for(ps, o):
        def closure():
            o.zero_grad()
            loss = sum((p.sum() * x[: p.dim() + 1].sum()) ** 2 for p in ps)
            loss.backward()
            return loss

        return closure

    for _ in range(3):
        got = opt.step(closure_for(params, opt))
        expected = eager.step(closure_for(twins, eager))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert counter.frame_count >= 1
    assert opt.metrics()["all/Modular/closure_calls"] == 1.0
    for p, q in zip(params, twins, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_compile_true_deepcopy_compiles_its_own_step():
    params, opt, twins, eager = _compiled_pair(CHAINS["adam_long"], backend=CompileCounter())
    twin = copy.deepcopy(opt)
    copies = twin.param_groups[0]["params"]
    for p in copies:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in copies]
    twin.step()
    assert twin.compiled
    assert all(not torch.equal(a, b) for a, b in zip(before, copies, strict=True))


@pytest.mark.parametrize("how", ["compile=True", "torch.compile(opt.step)"])
def test_compiled_step_keeps_the_metrics_of_the_step(how):
    """Reports written inside a compiled step reach ``opt.metrics()`` (dynamo drops attribute writes on an
    optimizer, so the reports live in a dict the step changes)."""
    chain = CHAINS["adam_amsgrad_clip"]
    if how == "compile=True":
        params, opt, twins, eager = _compiled_pair(chain, backend=CompileCounter())
        step = opt.step
    else:
        params, opt, twins, eager = _pair(chain)
        step = torch.compile(opt.step, backend=CompileCounter())
    _steps(step, eager, params, twins, 2)
    got, expected = opt.metrics(), eager.metrics()
    assert set(got) == set(expected) and "all/0.ClipNorm/norm" in got
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", [n for n in CHAINS if n != "wrap"])
def test_compile_true_traces_every_chain_as_one_graph(name):
    """``compile=True`` is ``fullgraph=True``: each chain of this file (but ``Wrap``, which it refuses) traces
    without a graph break and equals the eager step (dynamo's tracing with the counting backend)."""
    counter = CompileCounter()
    params, opt, twins, eager = _compiled_pair(CHAINS[name], backend=counter)
    _steps(opt.step, eager, params, twins, 6)
    assert 1 <= counter.frame_count <= 3
