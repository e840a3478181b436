"""Shampoo (Gupta, Koren & Singer, 2018): one preconditioner per tensor dimension, as ``pytorch_optimizer.Shampoo``."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.module import Transform
from ...core.schema import ALPHA, Setting, at_least, in_range, integer
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


def inverse_root(matrix: Tensor, root: int) -> Tensor:
    r""":math:`M^{-1/r}` of a symmetric positive semi-definite matrix by its singular value decomposition.

    The decomposition runs in float64 for a float64 matrix and in float32 for every other dtype; the result
    is cast back to the matrix's dtype (``pytorch_optimizer``'s ``compute_power_svd``).
    """
    work = torch.float64 if matrix.dtype == torch.float64 else torch.float32
    u, s, vh = torch.linalg.svd(matrix.to(work), full_matrices=False)
    return ((u * s.pow(-1.0 / root).unsqueeze(-2)) @ vh).to(matrix.dtype)


@functools.cache
def _state_names(order: int) -> tuple[str, ...]:
    """The state of a tensor with ``order`` dimensions: its preconditioner and inverse root per dimension."""
    return tuple(f"{kind}_{i}" for i in range(order) for kind in ("pre_cond", "inv_pre_cond"))


class Shampoo(Transform):
    r"""The update rule of ``pytorch_optimizer.Shampoo`` (4.1.0), with the learning rate left to :class:`LR`.

    For a tensor :math:`G` with :math:`k \ge 1` dimensions :math:`d_1, \dots, d_k`, with :math:`G_{(i)}` its
    mode-:math:`i` unfolding (dimension :math:`i` first, the rest flattened: a :math:`d_i \times \prod_{j \ne
    i} d_j` matrix) and :math:`U_{t-1}` the previous step's direction:

    .. math::
        \tilde G_t = (1-\mu)\, g_t + \mu\, U_{t-1} + \lambda\,\theta_{t-1}, \qquad
        L^{(i)}_t = L^{(i)}_{t-1} + \tilde G_{t(i)} \tilde G_{t(i)}^\top, \quad L^{(i)}_0 = \epsilon I,\\
        U_t = \tilde G_t \times_1 \big(L^{(1)}_t\big)^{-1/2k} \times_2 \cdots \times_k
        \big(L^{(k)}_t\big)^{-1/2k}, \qquad u \leftarrow \alpha\, U_t

    (:math:`\times_i` multiplies dimension :math:`i` by the matrix).  A matrix gets
    :math:`L_t^{-1/4} \tilde G_t R_t^{-1/4}`; a vector of length :math:`n` gets a full :math:`n \times n`
    preconditioner, :math:`U_t = (\epsilon I + \sum_s \tilde g_s \tilde g_s^\top)^{-1/2} \tilde g_t` (full-matrix
    AdaGrad); a tensor of three or more dimensions gets one matrix per dimension and the root
    :math:`-1/2k`.  The dimensions are not merged, and a preconditioner is kept for every dimension however large,
    as in the reference.  A 0-dim tensor (a scalar) has no preconditioner: :math:`U_t = \tilde G_t`.

    The inverse roots :math:`(L^{(i)})^{-1/2k}` are computed from a singular value decomposition (float64 for
    float64 parameters, float32 otherwise) every ``preconditioning_compute_steps`` steps, at the steps
    :math:`t` divisible by it; in between the last roots are reused.  As in the reference they start at zero,
    so with ``preconditioning_compute_steps = c > 1`` the first :math:`c - 1` steps leave the parameters
    unchanged.  The statistics :math:`L^{(i)}` accumulate at every step and are kept in the parameter's dtype.

    The momentum :math:`\mu` mixes the gradient with the previous *preconditioned* direction :math:`U_{t-1}`
    (the reference stores the final direction in its ``momentum_buffer``); at a parameter's first step the
    buffer is the gradient itself, so :math:`\tilde G_1 = g_1`.  ``weight_decay`` :math:`\lambda` is the
    reference's coupled weight decay (``weight_decouple=False``), which is added *after* the momentum mix; with
    ``momentum=0`` it equals :class:`WeightDecay` before the rule.  The reference's decoupled weight decay is
    :class:`WeightDecay` after :class:`LR`: ``WeightDecay(wd, scale_by_lr=True)``, or ``WeightDecay(wd)`` for its
    ``fixed_decay=True``.  So ``tz.Modular(p, tz.m.Shampoo(), tz.m.LR(1e-3))`` equals
    ``pytorch_optimizer.Shampoo(p, lr=1e-3)``.

    No value is read back to the host.  Differences from the reference, all outside its usual use: the step
    count is per parameter (the reference counts per param group, also over steps where a parameter had no
    gradient); with ``maximize=True`` and momentum the first step mixes the negated gradient with itself (the
    reference mixes it with the gradient before negation); the momentum buffer is kept only while
    ``momentum > 0`` (turned on mid-run it starts from zero, where the reference has the last direction).
    A parameter with no elements is handed on unchanged (the reference fails to reshape it).  Complex parameters
    are refused, as in the reference.

    Args:
        momentum: :math:`\mu \in [0, 1)`.
        weight_decay: :math:`\lambda`, coupled weight decay added after the momentum mix.
        preconditioning_compute_steps: recompute the inverse roots every this many steps.
        matrix_eps: :math:`\epsilon`, the initial diagonal of every preconditioner.
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Shampoo(), tz.m.LR(1e-3))

    Reference: Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization", ICML 2018,
    https://arxiv.org/abs/1802.09568
    """

    keeps_state = True
    exact_state = frozenset({"pre_cond_*", "inv_pre_cond_*"})  # kept in the compute dtype whatever state_dtype says
    counts_steps = True
    fuses_lr = True  # fused with the LR after it, the sink writes theta - lr alpha P(u) in one pass
    modifies_update_inplace = False  # emits new tensors through the sink
    full_matrices = True  # the Kronecker factors need whole tensors (ctx.map_full under FSDP2)
    schema = {
        "momentum": Setting(in_range(0, 1, closed="left"), "Use a value such as 0.9 (0 disables momentum)."),
        "weight_decay": Setting(at_least(0), "Use e.g. 1e-4 (0 disables it)."),
        "preconditioning_compute_steps": Setting(integer(low=1), "Use a whole number of steps such as 1 or 10."),
        "matrix_eps": Setting(at_least(0), "Use a small positive value such as 1e-6."),
        "alpha": ALPHA,
    }

    def __init__(
        self,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        preconditioning_compute_steps: int = 1,
        matrix_eps: float = 1e-6,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(
            {
                "momentum": momentum,
                "weight_decay": weight_decay,
                "preconditioning_compute_steps": preconditioning_compute_steps,
                "matrix_eps": matrix_eps,
                "alpha": alpha,
            }
        )

    def step(self, ctx: StepContext) -> None:
        originals = ctx.layout.originals
        if any(originals[i].is_complex() for seg in ctx.segments(self) for i in range(seg.start, seg.stop)):
            raise TypeError("Shampoo supports real parameters only (as pytorch_optimizer.Shampoo); nothing was changed")
        super().step(ctx)

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        momentum, weight_decay, eps = s["momentum"], s["weight_decay"], s["matrix_eps"]
        update = seg.update
        mixed: list[Tensor] = list(update)
        if momentum > 0:
            # the buffer starts as the gradient (the reference's init), so the first mix is the gradient itself
            buffers = ops.clone(update) if seg.step == 1 else seg.state("momentum_buffer")[0]
            mixed = ops.lerp(update, buffers, momentum)
        if weight_decay != 0:
            params = [p.detach() for p in seg.params]
            if momentum > 0:
                ops.add_(mixed, params, alpha=weight_decay)
            else:
                mixed = ops.add(update, params, alpha=weight_decay)

        recompute = seg.step % s["preconditioning_compute_steps"] == 0
        grad_on = torch.is_grad_enabled()
        # whole tensors also for FSDP2 shards: each is preconditioned on one owner rank, which keeps its factors
        direction = ctx.map_full(
            self, mixed, lambda j, g: self._precondition(ctx, seg.start + j, g, eps, recompute, grad_on)
        )

        if momentum > 0:
            ctx.set_state(self, "momentum_buffer", direction, start=seg.start)
        seg.emit(direction, s["alpha"] * seg.scale)

    def _precondition(
        self, ctx: StepContext, index: int, g: Tensor, eps: float, recompute: bool, grad_on: bool
    ) -> Tensor:
        """``g`` times the inverse root of each dimension's preconditioner (updated with ``g`` first)."""
        order = g.ndim
        if order == 0 or g.numel() == 0:  # a scalar has no preconditioner; an empty tensor nothing to precondition
            return g
        shape = g.shape
        names = _state_names(order)
        init: dict[str, Any] = {}
        for i, d in enumerate(shape):
            # plain tensors on g's device, also for a sharded parameter v (its owner rank keeps them)
            init[f"pre_cond_{i}"] = lambda v, d=d: torch.eye(d, dtype=v.dtype, device=g.device).mul_(eps)
            init[f"inv_pre_cond_{i}"] = lambda v, d=d: torch.zeros((d, d), dtype=v.dtype, device=g.device)
        state = [x[0] for x in ctx.state(self, *names, init=init, start=index, stop=index + 1)]

        x = g
        for i, d in enumerate(shape):
            pre, inv = state[2 * i], state[2 * i + 1]
            unfolded = g.movedim(i, 0).reshape(d, -1)
            if grad_on:  # differentiable mode: new tensors, the old ones stay in the graph
                pre = pre.addmm(unfolded, unfolded.t())
                ctx.set_state(self, f"pre_cond_{i}", [pre], start=index)
            else:
                pre.addmm_(unfolded, unfolded.t())
            if recompute and grad_on:
                inv = inverse_root(pre, 2 * order)
                ctx.set_state(self, f"inv_pre_cond_{i}", [inv], start=index)
            elif recompute:
                inv.copy_(inverse_root(pre, 2 * order))  # as the reference: no state bookkeeping per tensor
            # dimension i to the front, multiplied from the left; the last dimension from the right, which puts the
            # others back in their order (the reference's sequence of transposes)
            x = x.transpose(0, i).contiguous()
            moved = x.shape
            flat = x.view(d, -1)
            x = (flat.t() @ inv).view(shape) if i == order - 1 else (inv @ flat).view(moved)
        return x
