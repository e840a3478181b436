"""Small shared pieces for the core tests."""

from __future__ import annotations

import io

import torch

import torchzero as tz


def make_params(dtypes=(torch.float32,), shapes=((4, 3), (5,)), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for dtype in dtypes:
        for shape in shapes:
            if dtype.is_complex:
                t = torch.randn(*shape, dtype=dtype, generator=g)
            else:
                t = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
            out.append(t.requires_grad_())
    return out


def clone_params(params):
    return [p.detach().clone().requires_grad_() for p in params]


def set_grads(seed, *param_lists):
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(p.shape, dtype=p.dtype, generator=g) for p in param_lists[0]]
    for params in param_lists:
        for p, gr in zip(params, grads, strict=True):
            p.grad = gr.clone()


def roundtrip(opt_state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(opt_state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


class Scale(tz.Transform):
    """Multiply the update by ``alpha`` (a minimal transform for engine tests)."""

    def __init__(self, alpha: float = 1.0, eps: float = 0.0):
        super().__init__({"alpha": alpha, "eps": eps})

    def apply(self, ctx, seg):
        tz.foreach.ops.mul_(seg.update, seg.settings["alpha"])


class Recorder(tz.Module):
    """Records the settings it resolves for each segment, changes nothing."""

    def __init__(self, eps: float = 0.5, alpha: float = 1.0):
        super().__init__({"eps": eps, "alpha": alpha})
        self.seen: list[dict] = []

    def step(self, ctx):
        self.seen = [dict(s.settings, n=len(s)) for s in ctx.segments(self)]


class FromScratch(tz.Module):
    """Builds the update from the loss alone (a stand-in for finite differences)."""

    creates_update = True
    needs_closure = True

    def step(self, ctx):
        ctx.evaluate(False)
        ctx.update = [torch.zeros_like(p) for p in ctx.params]
