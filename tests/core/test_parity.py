"""Modular(Adam, LR) and Modular(SGD, LR) against torch.optim, on every path of the engine."""

import pytest
import torch

import torchzero as tz

from .helpers import clone_params, make_params, set_grads

DTYPES = {
    "fp32": (torch.float32,),
    "fp64": (torch.float64,),
    "complex64": (torch.complex64,),
    "mixed": (torch.float32, torch.float64, torch.complex64, torch.bfloat16),
}
PATHS = ["fused", "foreach", "reference", "not_last"]


def _groups(params, **second):
    half = len(params) // 2
    return [{"params": params[:half], "lr": 1e-2, "eps": 1e-5}, {"params": params[half:], **second}]


def _run(opt, ref, params, ref_params, steps, path):
    ctx = tz.foreach.reference_mode() if path == "reference" else torch.no_grad()
    with ctx:
        for i in range(steps):
            set_grads(i, params, ref_params)
            opt.step()
            ref.step()
    for p, q in zip(params, ref_params, strict=True):
        tol = {"atol": 1e-2, "rtol": 1e-2} if p.dtype == torch.bfloat16 else {}
        torch.testing.assert_close(p, q, **tol)


class _Identity(tz.Transform):
    def apply(self, ctx, seg):
        pass


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtypes", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_lr_equals_torch_adam(dtypes, path, amsgrad):
    params = make_params(dtypes)
    ref_params = clone_params(params)
    chain = [tz.m.Adam(amsgrad=amsgrad, fused=False if path != "fused" else None), tz.m.LR(1e-3)]
    if path == "not_last":
        chain.append(_Identity())
    opt = tz.Modular(_groups(params), *chain)
    ref = torch.optim.Adam(_groups(ref_params), lr=1e-3, amsgrad=amsgrad, foreach=True)
    _run(opt, ref, params, ref_params, 20, path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtypes", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize(
    ("momentum", "dampening", "nesterov"), [(0.0, 0.0, False), (0.9, 0.1, False), (0.9, 0.0, True)]
)
def test_sgd_lr_equals_torch_sgd(dtypes, path, momentum, dampening, nesterov):
    params = make_params(dtypes)
    ref_params = clone_params(params)
    chain = [tz.m.SGD(momentum=momentum, dampening=dampening, nesterov=nesterov), tz.m.LR(1e-2)]
    if path == "not_last":
        chain.append(_Identity())
    groups = [{"params": params[:2], "lr": 0.1}, {"params": params[2:]}]
    ref_groups = [{"params": ref_params[:2], "lr": 0.1}, {"params": ref_params[2:]}]
    opt = tz.Modular(groups, *chain)
    ref = torch.optim.SGD(ref_groups, lr=1e-2, momentum=momentum, dampening=dampening, nesterov=nesterov, foreach=True)
    _run(opt, ref, params, ref_params, 20, path)


def test_unfused_equals_fused_bit_for_bit_up_to_tolerance():
    a = make_params((torch.float32, torch.float64))
    b = clone_params(a)
    fused = tz.Modular(a, tz.m.Adam(fused=False), tz.m.LR(1e-2))
    unfused = tz.Modular(b, tz.m.Adam(), tz.m.LR(1e-2), fuse=False)
    for i in range(10):
        set_grads(i, a, b)
        fused.step()
        unfused.step()
        if i == 4:
            fused.param_groups[0]["lr"] = unfused.param_groups[0]["lr"] = 3e-3  # no one-step lag
        for p, q in zip(a, b, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_complex_view_as_real_workaround_also_works():
    z = torch.randn(4, dtype=torch.complex64)
    direct = z.clone().requires_grad_()
    as_real = torch.view_as_real(z.clone()).requires_grad_()
    o1 = tz.Modular([direct], tz.m.Adam(), tz.m.LR(1e-2))
    o2 = tz.Modular([as_real], tz.m.Adam(), tz.m.LR(1e-2))
    for i in range(5):
        g = torch.randn(4, dtype=torch.complex64, generator=torch.Generator().manual_seed(i))
        direct.grad = g.clone()
        as_real.grad = torch.view_as_real(g).clone()
        o1.step()
        o2.step()
    torch.testing.assert_close(torch.view_as_real(direct.detach()), as_real.detach())


def test_params_without_grad_are_skipped_like_torch():
    a = make_params()
    b = clone_params(a)
    opt = tz.Modular(a, tz.m.Adam(), tz.m.LR(1e-2))
    ref = torch.optim.Adam(b, lr=1e-2)
    for i in range(4):
        set_grads(i, a, b)
        a[0].grad = b[0].grad = None  # first parameter never gets a gradient
        opt.step()
        ref.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q)
    assert len(opt.state) == len(a) - 1


@pytest.mark.parametrize("fused", [None, False])
def test_parameter_that_joins_later_starts_at_step_one_like_torch(fused):
    a = make_params((torch.float32, torch.float64))
    b = clone_params(a)
    opt = tz.Modular(a, tz.m.Adam(fused=fused), tz.m.LR(1e-2))
    ref = torch.optim.Adam(b, lr=1e-2)
    for i in range(8):
        set_grads(i, a, b)
        if i < 3:
            a[1].grad = b[1].grad = None  # gets its first gradient at step 4
        opt.step()
        ref.step()
        for p, q in zip(a, b, strict=True):
            torch.testing.assert_close(p, q)
    assert opt.state[a[1]]["0"]["step"] == 5 and opt.state[a[0]]["0"]["step"] == 8
