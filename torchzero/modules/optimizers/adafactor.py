"""Adafactor (Shazeer & Stern, 2018), as ``torch.optim.Adafactor``: a factored second moment for matrices."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.module import Transform
from ...core.schema import ALPHA, Number, Setting, at_least, optional, pair_of
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


def _safe(t: Tensor) -> Tensor:
    """``t``, or a copy of it when autograd may keep it (differentiable mode) and it is state changed in place."""
    return t.clone() if torch.is_grad_enabled() else t


class Adafactor(Transform):
    r"""The update rule of ``torch.optim.Adafactor``, with the learning rate read from the :class:`LR` after it.

    With :math:`\eta = \alpha \cdot \mathrm{lr}` (``alpha`` times the learning rate of the ``LR`` after it),
    :math:`t` the parameter's step count and :math:`\hat\beta_{2,t} = 1 - t^{\tau}`:

    .. math::
        \rho_t = \min\big(\eta, 1/\sqrt t\big), \qquad
        a_t = \max\big(\epsilon_2, \mathrm{RMS}(\theta)\big)\, \rho_t,\\
        R_t = \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\, \mathrm{mean}_{\text{cols}}(g^2), \quad
        C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\, \mathrm{mean}_{\text{rows}}(g^2), \quad
        \hat V_t = \frac{R_t C_t}{\max(\mathrm{mean}(R_t), \epsilon_1)},\\
        U_t = \frac{g}{\sqrt{\max(\hat V_t, \epsilon_1^2)}}, \qquad
        \theta \leftarrow \theta - \frac{a_t}{\max(1, \mathrm{RMS}(U_t)/d)}\, U_t

    For a parameter with two or more dimensions the second moment is factored over its last two (a row and a
    column vector per leading index, torch's ``row_var`` and ``col_var``); vectors and scalars keep the full
    :math:`\hat V_t = \hat\beta_{2,t} \hat V_{t-1} + (1-\hat\beta_{2,t}) g^2` (``variance``).

    The rule hands on :math:`(a_t / \eta)\, \alpha\, U_t / \max(1, \mathrm{RMS}(U_t)/d)`, and ``LR`` multiplies it
    by the learning rate, so ``tz.Modular(p, tz.m.Adafactor(), tz.m.LR(1e-2))`` equals
    ``torch.optim.Adafactor(p, lr=1e-2)``: the relative step :math:`\rho_t` needs the learning rate itself, so the
    rule reads the lr of the ``LR`` that follows it (per param group; with no ``LR`` after it,
    :math:`\eta = \alpha`, and ``alpha=1`` then gives the paper's pure relative step :math:`1/\sqrt t` capped at 1).
    torch's ``weight_decay`` is decoupled and scaled by the lr (:math:`\theta \leftarrow \theta (1 - \eta
    \lambda)`), which is :class:`WeightDecay` between the rule and ``LR``:
    ``tz.Modular(p, tz.m.Adafactor(), tz.m.WeightDecay(1e-2), tz.m.LR(1e-2))`` equals
    ``torch.optim.Adafactor(p, lr=1e-2, weight_decay=1e-2)``.  torch's ``maximize`` is the param group's
    ``maximize``, as for every rule.

    The per-tensor RMS values and step sizes stay 0-dim tensors on the device (torch reads them back with
    ``.item()``).  Complex parameters are refused, as in torch.

    Args:
        beta2_decay: :math:`\tau \le 0`, the decay rate of :math:`\hat\beta_{2,t}`.
        eps: :math:`(\epsilon_1, \epsilon_2)`; :math:`\epsilon_1` None is the machine epsilon of the dtype.
        d: the clipping threshold :math:`d \ge 1` of the update's RMS.
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Adafactor(), tz.m.LR(1e-2))  # == torch.optim.Adafactor(lr=1e-2)

    Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018.
    """

    keeps_state = True
    counts_steps = True
    fuses_lr = True  # fused with the LR after it, the rule applies the lr and writes each parameter in one pass
    modifies_update_inplace = False  # emits new tensors through the sink
    full_matrices = True  # row and column statistics need whole matrices (ctx.map_full under FSDP2)
    schema = {
        "beta2_decay": Setting(Number(high=0.0), "Use a non-positive decay rate such as -0.8."),
        "eps": Setting(
            pair_of(optional(at_least(0)), at_least(0), names="(eps1, eps2)"),
            "Use e.g. (None, 1e-3): eps1 None is the dtype's machine epsilon.",
        ),
        "d": Setting(at_least(1), "The clipping threshold is at least 1, e.g. 1.0."),
        "alpha": ALPHA,
    }

    def __init__(
        self,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        alpha: float = 1.0,
    ) -> None:
        super().__init__({"beta2_decay": beta2_decay, "eps": eps, "d": d, "alpha": alpha})

    def step(self, ctx: StepContext) -> None:
        originals = ctx.layout.originals
        if any(originals[i].is_complex() for seg in ctx.segments(self) for i in range(seg.start, seg.stop)):
            raise TypeError("Adafactor supports real parameters only (as torch.optim.Adafactor); nothing was changed")
        # seg.scale is the learning rate of the LR after this rule, which the relative step needs: fused with that
        # LR the rule applies it too (one pass over the parameters), else the LR scales the update afterwards
        segs, fused = ctx.segments_with_lr(self)
        for seg in segs:
            self.apply(ctx, seg, fused)

    def apply(self, ctx: StepContext, seg: Segment, fused: bool = False) -> None:
        s = seg.settings
        t = seg.step
        eps1, eps2 = s["eps"]
        if eps1 is None:
            eps1 = torch.finfo(seg.dtype).eps
        weight = float(t) ** s["beta2_decay"]  # 1 - beta2_t
        update, params = seg.update, seg.params
        direction: list[Any] = [None] * len(update)

        vectors = [i for i, g in enumerate(update) if g.ndim < 2]
        if vectors:
            grads = [update[i] for i in vectors]
            variance = [ctx.state(self, "variance", start=seg.start + i, stop=seg.start + i + 1)[0][0] for i in vectors]

            # temporaries in a reused buffer on CPU (ops.into): a new tensor per step costs its page faults
            def buf() -> list[Tensor]:
                buffers = seg.scratch()
                return [buffers[i] for i in vectors]

            ops.lerp_(variance, ops.into(buf, "mul", grads, grads), weight)
            inv = ops.into(buf, "clamp_min", variance, eps1 * eps1)
            ops.sqrt_(inv)
            ops.reciprocal_(inv)
            ops.mul_(inv, grads)
            for i, u in zip(vectors, inv, strict=True):
                direction[i] = u

        def factored(j: int, g: Tensor) -> Tensor:
            """One whole matrix (also for an FSDP2 shard: on its owner rank, which keeps its row and column
            statistics): rows and columns of a sharded matrix live on several ranks."""
            i = matrices[j]
            row_var, col_var = (
                x[0]
                for x in ctx.state(
                    self,
                    "row_var",
                    "col_var",
                    init={"row_var": lambda v: torch.zeros((*g.shape[:-1], 1), dtype=v.dtype, device=g.device),
                          "col_var": lambda v: torch.zeros((*g.shape[:-2], 1, g.shape[-1]), dtype=v.dtype,
                                                           device=g.device)},
                    start=seg.start + i,
                    stop=seg.start + i + 1,
                )
            )  # fmt: skip
            row_mean = torch.norm(g, dim=-1, keepdim=True).square_().div_(g.size(-1))
            row_var.lerp_(row_mean, weight)
            col_mean = torch.norm(g, dim=-2, keepdim=True).square_().div_(g.size(-2))
            col_var.lerp_(col_mean, weight)
            estimate = _safe(row_var) @ _safe(col_var)
            estimate.div_(_safe(row_var).mean(dim=-2, keepdim=True).clamp_(min=eps1))
            return estimate.clamp_(min=eps1 * eps1).rsqrt_().mul_(g)

        matrices = [i for i, g in enumerate(update) if g.ndim >= 2]
        for i, d in zip(matrices, ctx.map_full(self, [update[i] for i in matrices], factored), strict=True):
            direction[i] = d

        # per-tensor step sizes, as 0-dim tensors (no host sync): alpha * max(eps2, RMS(theta)) * rho_t / eta
        # / max(1, RMS(U) / d)
        eta = s["alpha"] * seg.scale
        root_t = math.sqrt(t)
        relative: Any
        if isinstance(eta, Tensor):
            relative = (eta * root_t).reciprocal().clamp(max=1.0)
        else:
            relative = 1.0 if eta * root_t <= 1 else 1.0 / (eta * root_t)
        sizes = torch.tensor([math.sqrt(max(p.numel(), 1)) for p in params], dtype=seg.dtype, device=seg.device)
        param_rms = torch.stack(ops.norm([p.detach() for p in params])) / sizes
        update_rms = torch.stack(ops.norm([u.detach() for u in direction])) / (sizes * s["d"])
        scales = param_rms.clamp(min=eps2) * (s["alpha"] * relative) / update_rms.clamp(min=1.0)
        if fused:
            scales = scales * seg.scale
        seg.emit_per_tensor(direction, list(scales.unbind()))
