"""Shared pieces for the external-optimizer tests."""

from __future__ import annotations

import io

import torch

SHAPES = ((4, 3), (5,), (2, 2))


def params_and_copy(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in SHAPES]
    return ps, [p.detach().clone().requires_grad_() for p in ps]


def feed(step, *param_lists):
    g = torch.Generator().manual_seed(100 + step)
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) for p in param_lists[0]]
    for ps in param_lists:
        for p, gr in zip(ps, grads, strict=True):
            p.grad = gr.clone()
    return grads


def assert_same(a, b, **kw):
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), **kw)


def roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def rosenbrock(ps):
    x = torch.cat([p.flatten() for p in ps])
    return ((1 - x[:-1]) ** 2 + 10 * (x[1:] - x[:-1] ** 2) ** 2).sum()


def closure_for(params, opt, clip=None):
    """A torch-style closure (always backward) on the Rosenbrock function, optionally clipping grads."""

    def closure():
        opt.zero_grad()
        loss = rosenbrock(params)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        return loss

    return closure
