"""Cautious builds its mask in the gradient's tensors when nothing later reads the gradient."""

import torch

import torchzero as tz


class _ReadsGrad(tz.Module):
    """Reads the raw gradient (so Cautious must leave it alone) and changes nothing."""

    needs_raw_grad = True

    def step(self, ctx):
        self.seen = [g.clone() for g in ctx.get_grad()]


def _run(extra):
    torch.manual_seed(0)
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(5, dtype=torch.float64, requires_grad=True)]
    opt = tz.Modular(params, tz.m.Adam(), tz.m.Cautious(), *extra, tz.m.LR(1e-2), grad_as_scratch=True)
    grads = []
    for i in range(5):
        g = torch.Generator().manual_seed(i)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        grads.append([p.grad.clone() for p in params])
        opt.step()
    return params, grads, opt


def test_mask_in_gradient_equals_allocated_mask():
    scratch, _, _ = _run([])
    reader = _ReadsGrad()
    kept, grads, _ = _run([reader])
    for p, q in zip(scratch, kept, strict=True):
        torch.testing.assert_close(p, q)
    # with a later reader, the gradient it sees is the raw one
    for g, seen in zip(grads[-1], reader.seen, strict=True):
        torch.testing.assert_close(g, seen)


def test_mask_reuses_the_gradient_tensors():
    params, grads, _ = _run([])
    # nothing after Cautious reads the gradient: .grad now holds the 0/1 mask instead of a copy being made
    for p in params:
        assert set(p.grad.unique().tolist()) <= {0.0, 1.0}
