"""The foreach layer: grouping by (device, dtype), caching, param swaps, reference path, no host syncs."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import torchzero as tz
from tests.parity import NoHostSync
from torchzero.foreach import Layout, ops, reduce

from .helpers import clone_params, make_params, set_grads


class _Dispatched(TorchDispatchMode):
    """Records the names of the aten ops that run inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))

    @property
    def foreach(self) -> bool:
        return any(n.startswith("_foreach") for n in self.names)


def test_layout_groups_by_device_dtype_then_group():
    f32, f64, c64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.complex64)
    f32b = torch.zeros(3)
    layout = Layout([[f32, f64], [c64, f32b]])
    # complex64 is handled as a float32 view and lands in the float32 bucket
    assert layout.originals == [f32, c64, f32b, f64] or [id(t) for t in layout.originals] == [
        id(f32),
        id(c64),
        id(f32b),
        id(f64),
    ]
    assert layout.buckets == [(0, 3), (3, 4)]
    assert [(r.group, r.dtype) for r in layout.runs] == [(0, torch.float32), (1, torch.float32), (0, torch.float64)]
    assert layout.views[1].shape == (2, 2)


def test_mixed_dtypes_in_one_optimizer_match_separate_torch_optimizers():
    params = make_params((torch.float32, torch.float64, torch.bfloat16))
    ref = clone_params(params)
    opt = tz.Modular(params, tz.m.Adam(), tz.m.LR(1e-2))
    refs = [torch.optim.Adam([q], lr=1e-2) for q in ref]
    for i in range(10):
        set_grads(i, params, ref)
        opt.step()
        for r in refs:
            r.step()
    for p, q in zip(params, ref, strict=True):
        torch.testing.assert_close(p, q)


def test_param_swap_in_groups_is_picked_up():
    params = make_params()
    opt = tz.Modular(params, tz.m.SGD(momentum=0.9), tz.m.LR(0.1))
    set_grads(0, params)
    opt.step()
    new = params[0].detach().clone().requires_grad_()
    opt.param_groups[0]["params"][0] = new  # what Accelerate/FSDP do
    opt.state[new] = opt.state.pop(params[0])
    before = new.detach().clone()
    new.grad = torch.ones_like(new)
    params[1].grad = torch.ones_like(params[1])
    opt.step()
    assert not torch.equal(new, before)


def test_dtype_change_rebuilds_layout():
    p = torch.randn(4, requires_grad=True)
    opt = tz.Modular([p], tz.m.SGD(), tz.m.LR(0.1))
    p.grad = torch.ones(4)
    opt.step()
    p.data = p.data.double()
    p.grad = torch.ones(4, dtype=torch.float64)
    opt.step()
    assert opt._layout(lambda t: True).buckets == [(0, 1)] and opt.plan._layout_meta[0][1] == torch.float64


@pytest.mark.parametrize("name", ["add_", "mul_", "lerp_", "addcmul_", "addcdiv_", "maximum_", "sqrt"])
def test_reference_mode_equals_foreach(name):
    xs = [torch.rand(3) + 0.5, torch.rand(2, 2) + 0.5]
    ys = [torch.rand(3) + 0.5, torch.rand(2, 2) + 0.5]
    args = {
        "add_": (ys,), "mul_": (2.0,), "lerp_": (ys, 0.3), "addcmul_": (ys, ys, 0.5),
        "addcdiv_": (ys, ys, 0.5), "maximum_": (ys,), "sqrt": (),
    }[name]  # fmt: skip
    a, b = [x.clone() for x in xs], [x.clone() for x in xs]
    with torch.no_grad():  # as on the step path (with grad enabled ops take the per-tensor loop, for autograd)
        with _Dispatched() as fast:
            out_a = getattr(ops, name)(a, *args)
        with ops.reference_mode(), _Dispatched() as slow:
            out_b = getattr(ops, name)(b, *args)
    assert fast.foreach and not slow.foreach, (fast.names, slow.names)
    torch.testing.assert_close(a, b)
    if out_a is not None:
        torch.testing.assert_close(out_a, out_b)


def test_global_norm_is_a_tensor():
    xs = [torch.ones(3), torch.ones(4, dtype=torch.float64)]
    with torch.no_grad(), _Dispatched() as seen:
        n = reduce.global_norm(xs)
    assert seen.foreach, seen.names
    assert isinstance(n, torch.Tensor)
    torch.testing.assert_close(n.double(), torch.tensor(7.0, dtype=torch.float64).sqrt())


def test_reductions_keep_their_0_1_0_names_in_ops():
    assert ops.global_norm is reduce.global_norm
    assert ops.dot is reduce.bucket_dot
    with pytest.raises(AttributeError):
        ops.no_such_op  # noqa: B018


def test_dot_over_buckets_adds_the_parts_in_the_widest_dtype():
    xs = [torch.tensor([1.0, 2.0]), torch.tensor([3.0], dtype=torch.float64)]
    buckets = [(0, 1), (1, 2)]
    with torch.no_grad(), _Dispatched() as seen:
        total = reduce.dot_tensor(buckets, xs, xs)
    assert seen.foreach, seen.names
    assert total.dtype == torch.float64 and total.item() == 14.0
    assert reduce.dot(buckets, xs, xs) == 14.0 and reduce.norm(buckets, xs) == 14.0**0.5
    assert reduce.l1_tensor(buckets, [-x for x in xs]).item() == 6.0
    assert reduce.max_abs(buckets, [torch.zeros(0), -xs[1]]) == 3.0  # a tensor without elements is left out


@pytest.mark.parametrize(
    "chain",
    [
        lambda: [tz.m.Adam(), tz.m.LR(1e-3)],
        lambda: [tz.m.Adam(fused=False), tz.m.LR(1e-3)],
        lambda: [tz.m.Adam(amsgrad=True), tz.m.LR(1e-3), tz.m.SGD()],
        lambda: [tz.m.SGD(momentum=0.9, nesterov=True), tz.m.LR(1e-3)],
    ],
)
def test_no_host_sync_on_step(chain):
    params = make_params((torch.float32, torch.complex64))
    groups = [{"params": params[:2], "lr": 0.1}, {"params": params[2:]}]
    opt = tz.Modular(groups, *chain())
    set_grads(0, params)
    with NoHostSync():  # sees C++ reads of a value too (a tensor where a number is expected)
        opt.step()
        opt.step()


@pytest.mark.parametrize("ord", [1, 2, float("inf")])
def test_norm_of_a_tensor_without_elements_is_zero(ord):
    xs = [torch.zeros(0), torch.tensor([3.0, -4.0])]
    with torch.no_grad(), _Dispatched() as seen:
        norms = ops.norm(xs, ord)
    assert seen.foreach, seen.names
    assert norms[0].item() == 0.0
    torch.testing.assert_close(norms[1], torch.linalg.vector_norm(xs[1], ord))
    torch.testing.assert_close(reduce.global_norm(xs, ord), torch.linalg.vector_norm(xs[1], ord))


def _ops_of_one_step(opt, params) -> list[str]:
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()  # state is made on the first step
    for p in params:
        p.grad = torch.ones_like(p)
    with _Dispatched() as seen:
        opt.step()
    return seen.names


def test_adam_and_lr_really_fuse():
    """Fusion is observable: Adam followed by LR makes fewer kernel calls than the same chain unfused."""
    counts = {}
    for fuse in (True, False):
        params = [torch.randn(4, requires_grad=True), torch.randn(3, requires_grad=True)]
        names = _ops_of_one_step(tz.Modular(params, tz.m.Adam(fused=False), tz.m.LR(1e-3), fuse=fuse), params)
        counts[fuse] = sum(n.startswith("_foreach") for n in names)
    assert tz.m.Adam.fuses_lr
    assert counts[True] < counts[False], counts


def test_gradient_is_not_copied_when_no_module_needs_it_intact():
    params = [torch.randn(4, requires_grad=True), torch.randn(3, requires_grad=True)]
    names = _ops_of_one_step(tz.Modular(params, tz.m.SGD(momentum=0.9), tz.m.LR(1e-3)), params)
    assert not any("clone" in n or n.startswith("copy") or "_copy" in n for n in names), names


@pytest.mark.parametrize("n", [3, 300])
def test_settings_are_resolved_per_group_not_per_tensor(n, monkeypatch):
    """With uniform groups, a step resolves each module's settings once per group, however many tensors."""
    from torchzero.core import settings as S

    calls = []
    real = S.resolve
    monkeypatch.setattr(S, "resolve", lambda *a, **k: calls.append(1) or real(*a, **k))
    params = [torch.randn(2, requires_grad=True) for _ in range(n)]
    opt = tz.Modular(
        [{"params": params[: n // 3]}, {"params": params[n // 3 :], "lr": 0.5}],
        tz.m.Adam(), tz.m.Cautious(), tz.m.LR(1e-3), tz.m.WeightDecay(1e-2),
    )  # fmt: skip
    names_before = _ops_of_one_step(opt, params)  # two steps; count the second one only
    assert names_before
    calls.clear()
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert 0 < len(calls) <= 2 * 5, len(calls)  # two groups, a handful of modules (LR fused into Adam)


def test_layout_is_reused_between_steps_and_rebuilt_after_add_param_group():
    params = [torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)]
    opt = tz.Modular(params, tz.m.SGD(), tz.m.LR(0.1))
    _ops_of_one_step(opt, params)
    first = opt._layout(lambda t: t.grad is not None)
    _ops_of_one_step(opt, params)
    assert opt._layout(lambda t: t.grad is not None) is first
    extra = torch.randn(4, requires_grad=True)
    opt.add_param_group({"params": [extra]})
    _ops_of_one_step(opt, [*params, extra])
    assert opt._layout(lambda t: t.grad is not None) is not first


@pytest.mark.parametrize("name", ["sub", "mul", "div", "sqrt"])
def test_into_equals_the_foreach_op_and_writes_cpu_buffers(name):
    """``ops.into`` is the out-of-place op, bit for bit (the same kernel, one tensor at a time); on CPU the result
    lives in the given buffers (no new parameter-sized tensors), and without buffers it is the foreach op."""
    xs = [t.abs() + 0.5 for t in make_params(shapes=((4, 3), (5,), (1,)))]
    ys = [t.abs() + 0.5 for t in make_params(shapes=((4, 3), (5,), (1,)), seed=1)]
    args = {"sub": (ys,), "mul": (torch.tensor(1.5),), "div": (ys,), "sqrt": ()}[name]
    expected = getattr(ops, name)(xs, *args)
    buffers = [torch.empty_like(x) for x in xs]
    with torch.no_grad():  # as in a step (with autograd on, the op is the foreach one: out= has no derivative)
        got = ops.into(buffers, name, xs, *args)
    assert all(g is b for g, b in zip(got, buffers, strict=True))
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    with torch.no_grad():  # buffers from a function (Segment.scratch), asked for only where they are written
        called = []
        got = ops.into(lambda: called.append(1) or buffers, name, xs, *args)
    assert called == [1] and all(g is b for g, b in zip(got, buffers, strict=True))
    assert ops.into(lambda: called.append(2) or buffers, name, xs, *args) is not buffers and called == [1]
    assert all(torch.equal(g, e) for g, e in zip(ops.into(None, name, xs, *args), expected, strict=True))
    with ops.reference_mode():  # the per-tensor reference path never writes into the buffers
        ref = ops.into([torch.full_like(x, 7.0) for x in xs], name, xs, *args)
    assert all(torch.equal(g, e) for g, e in zip(ref, expected, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l1_norms_with_a_buffer_equal_the_foreach_norm(dtype):
    """On CPU with a buffer, ``|x|`` is summed in it instead of torch's l1-norm kernel: the same value up to the order
    of the additions (rtol 1e-6 in float32 over at most 5,000 elements, 1e-13 in float64)."""
    xs = [torch.randn(s, generator=torch.Generator().manual_seed(i), dtype=dtype) for i, s in enumerate([5000, 7, 1])]
    buffers = [torch.empty_like(x) for x in xs]
    tol = {"rtol": 1e-6, "atol": 0} if dtype == torch.float32 else {"rtol": 1e-13, "atol": 0}
    with torch.no_grad():
        summed = reduce.l1_norms(xs, buffers)
    assert buffers[0].equal(xs[0].abs())  # computed in the buffer
    for a, b in zip(summed, ops.norm(xs, 1), strict=True):
        torch.testing.assert_close(a, b, **tol)
    assert all(torch.equal(a, b) for a, b in zip(reduce.l1_norms(xs), ops.norm(xs, 1), strict=True))


_SCALAR_OPS = {
    # name: (call, number of list arguments after the target)
    "add_": (lambda xs, ys, s: ops.add_(xs, s), 0),
    "add_alpha": (lambda xs, ys, s: ops.add_(xs, ys, alpha=s), 1),
    "sub_alpha": (lambda xs, ys, s: ops.sub_(xs, ys, alpha=s), 1),
    "sub_": (lambda xs, ys, s: ops.sub_(xs, s), 0),
    "mul_": (lambda xs, ys, s: ops.mul_(xs, s), 0),
    "div_": (lambda xs, ys, s: ops.div_(xs, s), 0),
    "lerp_": (lambda xs, ys, s: ops.lerp_(xs, ys, s), 1),
    "addcmul_": (lambda xs, ys, s: ops.addcmul_(xs, ys, ys, s), 1),
    "addcdiv_value": (lambda xs, ys, s: ops.addcdiv_(xs, ys, [y.abs() + 1 for y in ys], value=s), 1),
    "clamp_min_": (lambda xs, ys, s: ops.clamp_min_(xs, s), 0),
    "maximum_": (lambda xs, ys, s: ops.maximum_(xs, s), 0),
    "pow_": (lambda xs, ys, s: (ops.abs_(xs), ops.pow_(xs, s)), 0),
    "add": (lambda xs, ys, s: xs.__setitem__(slice(None), ops.add(xs, ys, alpha=s)), 1),
    "mul": (lambda xs, ys, s: xs.__setitem__(slice(None), ops.mul(xs, s)), 0),
}


@pytest.mark.parametrize("name", list(_SCALAR_OPS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scalars_realized_under_compile_give_the_eager_result(name, dtype):
    """Under torch.compile each float scalar of a foreach op becomes a 0-dim tensor computed once per step
    (``torchzero.foreach.compiled``); the op must compute what it computes with the Python number.

    Traced with the eager backend (no Inductor), so the same kernels run: equal up to the rounding of a
    multiply-add that the eager foreach kernel may fuse (rtol 1e-6 for fp32, 1e-13 for fp64).
    """
    from torch._dynamo.testing import CompileCounter

    call, _ = _SCALAR_OPS[name]
    torch.manual_seed(0)
    xs = [torch.randn(7, dtype=dtype), torch.randn(3, 2, dtype=dtype)]
    ys = [torch.randn_like(x) for x in xs]
    expected = [x.clone() for x in xs]

    def run(target, t):
        with torch.no_grad():  # as in a step: with autograd on, ops take the per-tensor path
            call(target, ys, 0.9**t)  # a float that changes with t: symbolic once dynamo sees it change
        return target

    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(run, backend=counter, fullgraph=True)
    got = [x.clone() for x in xs]
    for t in range(1, 5):
        got = compiled(got, t)
        expected = run(expected, t)
    torch._dynamo.reset()
    assert counter.frame_count <= 2  # the scalar is symbolic from the second step on, not a new graph per step
    tol = {"rtol": 1e-6, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-13, "atol": 1e-15}
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, **tol)
