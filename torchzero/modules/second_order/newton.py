"""Newton's method with an autograd Hessian (dense) or Hessian-vector products (Newton-CG)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.module import Module
from ...core.probe import raw_loss
from ...core.schema import Setting, at_least, greater_than, integer
from ...foreach import ops
from ...foreach.flat import unflatten
from ...foreach.reduce import dot
from ._graph import graph_params

if TYPE_CHECKING:
    from ...core.context import StepContext

DAMPING = Setting(at_least(0), "damping is added to the Hessian's diagonal: 0, or a small value such as 1e-3.")


def _hessian(grads: tuple[Tensor, ...], params: list[Tensor], flat_g: Tensor) -> Tensor:
    n = flat_g.numel()
    eye = torch.eye(n, dtype=flat_g.dtype, device=flat_g.device)
    try:  # all rows at once (vmap over the backward pass)
        rows = torch.autograd.grad(
            flat_g, params, grad_outputs=eye, is_grads_batched=True, retain_graph=True, materialize_grads=True
        )
        return torch.cat([r.reshape(n, -1) for r in rows], dim=1)
    except RuntimeError:  # an op without a batching rule: one row at a time
        out = []
        for i in range(n):
            row = torch.autograd.grad(flat_g[i], params, retain_graph=True, materialize_grads=True)
            out.append(torch.cat([r.reshape(-1) for r in row]))
        return torch.stack(out)


class ExactNewton(Module):
    r"""Newton's method with the exact Hessian from autograd, for small problems.

    .. math::  u = (H + \lambda I)^{-1} g

    solved by Cholesky.  If :math:`H + \lambda I` is not positive definite, the solve uses its
    eigendecomposition with eigenvalues replaced by their absolute values (at least ``max(λ, tiny)``), so
    :math:`u` is always a descent direction (the saddle-free Newton step).  Follow it with a line search
    or ``LR``.

    **How the graph is obtained.**  The module calls your closure as ``closure(False)`` under
    ``torch.enable_grad()`` and differentiates the returned loss twice with ``torch.autograd.grad(...,
    create_graph=True)``; it never calls ``backward``.  So the closure must take the ``backward`` argument
    and must not detach the loss or disable grad when ``backward`` is False.  One closure call per step.
    It must be first in the chain; ``ctx.get_grad()`` is the gradient at the current point for later
    modules.  :math:`n` backward passes (batched with vmap when possible) build the :math:`n \times n`
    Hessian.

    Args:
        damping: :math:`\lambda`, added to the diagonal of the Hessian.

    Example::

        opt = tz.Modular(params, tz.m.ExactNewton(damping=1e-4), tz.m.Backtracking())
        def closure(backward=True):
            loss = loss_fn(model(x), y)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

    References: Nocedal & Wright, *Numerical Optimization* (2nd ed.), Section 3.4 (Newton with Hessian
    modification); Dauphin et al., "Identifying and attacking the saddle point problem in high-dimensional
    non-convex optimization", NeurIPS 2014 (absolute eigenvalues).
    """

    needs_closure = True
    supports_sharding = False
    sharding_note = (
        "it differentiates the loss itself (torch.autograd.grad), and FSDP2 reduces gradients only in "
        "backward(): autograd.grad with respect to sharded parameters gives zeros"
    )
    creates_update = True
    uniform_settings = True

    schema = {"damping": DAMPING}

    def __init__(self, damping: float = 0.0) -> None:
        super().__init__({"damping": damping})

    def step(self, ctx: StepContext) -> None:
        settings = ctx.settings(self)
        params = graph_params(ctx, "ExactNewton")
        loss = raw_loss(ctx, "ExactNewton", grad=True)
        with torch.enable_grad():
            grads = torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)
            flat_g = torch.cat([g.reshape(-1) for g in grads])
            hess = _hessian(grads, params, flat_g)
        g = flat_g.detach()
        hess = (hess.detach() + hess.detach().mT) / 2
        ctx.set_grad(unflatten(g, params))
        # bf16/fp16 have no Cholesky or eigh kernels (and too few bits for a solve): solve in at least fp32,
        # unflatten casts the direction back to each parameter's dtype
        solve_dtype = torch.promote_types(hess.dtype, torch.float32)
        hess, g = hess.to(solve_dtype), g.to(solve_dtype)
        n = g.numel()
        damping = settings["damping"]
        eye = torch.eye(n, dtype=hess.dtype, device=hess.device)
        chol, info = torch.linalg.cholesky_ex(hess + damping * eye)
        if int(info) == 0:
            u = torch.cholesky_solve(g.unsqueeze(1), chol).squeeze(1)
        else:
            eigvals, eigvecs = torch.linalg.eigh(hess)
            floor = max(damping, torch.finfo(hess.dtype).tiny)
            u = eigvecs @ ((eigvecs.mT @ g) / eigvals.abs().clamp_min(floor))
        ctx.update = unflatten(u, params)


class NewtonCG(Module):
    r"""Truncated Newton: solve :math:`(H + \lambda I) u = g` by conjugate gradients with Hessian-vector products.

    No dense Hessian is formed: each CG iteration costs one Hessian-vector product,
    :math:`Hv = \nabla\langle \nabla f, v\rangle`, by double backward through the graph of one closure call.
    CG stops when :math:`\lVert r\rVert \le \text{tol}\,\lVert g\rVert`, after ``max_iters`` iterations, or at
    negative curvature (:math:`p^\top H p \le 0`), returning the iterate so far (or :math:`g` on the first
    iteration), which is always a descent direction.  Follow it with a line search or ``LR``.

    The graph is obtained as in :class:`ExactNewton`: ``closure(False)`` under ``torch.enable_grad()``,
    differentiated with ``torch.autograd.grad(..., create_graph=True)``; the closure must take the
    ``backward`` argument and return the loss with its graph.  One closure call per step.  The CG
    decisions use dot products of gradients computed on this process; in data-parallel runs make the
    closure's loss the global mean so they agree.

    Args:
        max_iters: most CG iterations (Hessian-vector products) per step.
        tol: relative residual tolerance.
        damping: :math:`\lambda`.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.NewtonCG(max_iters=10), tz.m.StrongWolfe())

    Reference: Nocedal & Wright, *Numerical Optimization* (2nd ed.), Algorithm 7.1.
    """

    needs_closure = True
    supports_sharding = False
    sharding_note = (
        "it differentiates the loss itself (torch.autograd.grad), and FSDP2 reduces gradients only in "
        "backward(): autograd.grad with respect to sharded parameters gives zeros"
    )
    creates_update = True
    uniform_settings = True

    schema = {
        "max_iters": Setting(integer(1), "It is the most Hessian-vector products per step: a positive integer."),
        "tol": Setting(greater_than(0), "tol is the relative residual tolerance, e.g. 1e-4."),
        "damping": DAMPING,
    }

    def __init__(self, max_iters: int = 20, tol: float = 1e-4, damping: float = 0.0) -> None:
        super().__init__({"max_iters": max_iters, "tol": tol, "damping": damping})

    def step(self, ctx: StepContext) -> None:
        s: dict[str, Any] = ctx.settings(self)
        params = graph_params(ctx, "NewtonCG")
        buckets = ctx.layout.buckets
        loss = raw_loss(ctx, "NewtonCG", grad=True)
        with torch.enable_grad():
            grads = torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True)
        g = [t.detach() for t in grads]

        def hvp(v: list[Tensor]) -> list[Tensor]:
            with torch.enable_grad():
                hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True, materialize_grads=True)
            out = [t.detach() for t in hv]
            if s["damping"]:
                for a, b in buckets:
                    ops.add_(out[a:b], v[a:b], alpha=s["damping"])
            return out

        u = ops.zeros_like(g)
        r = ops.clone(g)
        p = ops.clone(g)
        rr = dot(buckets, r, r)
        stop = s["tol"] ** 2 * rr
        iters = 0
        for i in range(s["max_iters"]):
            hp = hvp(p)
            php = dot(buckets, p, hp)
            iters = i + 1
            if php <= 0:  # negative curvature: keep what we have (a descent direction)
                if i == 0:
                    u = ops.clone(g)
                break
            alpha = rr / php
            for a, b in buckets:
                ops.add_(u[a:b], p[a:b], alpha=alpha)
                ops.add_(r[a:b], hp[a:b], alpha=-alpha)
            rr_next = dot(buckets, r, r)
            if rr_next <= stop:
                break
            for a, b in buckets:
                ops.mul_(p[a:b], rr_next / rr)
                ops.add_(p[a:b], r[a:b])
            rr = rr_next
        ctx.report(self, "cg_iters", iters)
        ctx.set_grad(g)
        ctx.update = u
