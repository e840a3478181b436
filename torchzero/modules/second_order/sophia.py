"""Sophia with Hutchinson's estimate of the Hessian diagonal (Liu et al., 2023; ``SophiaH``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ...core.module import Transform
from ...core.probe import raw_loss
from ...core.schema import BETAS, EPS, Setting, at_least, integer, one_of
from ...foreach import ops
from ._graph import graph_params

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class Sophia(Transform):
    r"""Sophia-H: momentum divided by an EMA of the Hessian diagonal, clipped elementwise.

    Every ``update_period`` steps (the first step included) the Hessian diagonal is estimated from the
    closure's loss with Hutchinson's trick, :math:`\hat h = \frac1n\sum_{i\le n} z_i \odot (H z_i)` with
    :math:`z_i` standard normal (``"gaussian"``) or :math:`\pm 1` (``"rademacher"``), and

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        h_t = \beta_2 h_{t-1} + (1-\beta_2) \hat h_t \ \text{(on estimate steps, else } h_t = h_{t-1}),\\
        u \leftarrow \operatorname{clip}\big(m_t / \max(h_t, \epsilon),\, -\rho,\, \rho\big)

    and the ``LR`` after it scales the step.  ``tz.Modular(p, tz.m.Sophia(), tz.m.LR(0.06))`` equals
    ``pytorch_optimizer.SophiaH(p, lr=0.06)`` driven with ``loss.backward(create_graph=True)``: the same
    random vectors when the global torch seed is the same (drawn with ``torch.randn_like`` /
    ``torch.randint_like``, one per parameter, in the order of the param groups, once per sample).  Its
    decoupled weight decay is ``tz.m.WeightDecay(wd, scale_by_lr=True)`` after the ``LR``.

    **The closure.**  The module calls ``closure(False)`` under ``torch.enable_grad()`` (as
    :class:`ExactNewton` does) and differentiates the loss itself, with ``create_graph=True`` on estimate
    steps, so the closure must take the ``backward`` argument and must not detach the loss.  One closure call
    per step; it must be the first module.  The estimate interval counts the optimizer's steps (the
    reference counts those of its first param group).

    Args:
        betas: :math:`(\beta_1, \beta_2)`.
        rho: the clipping threshold :math:`\rho` (``p`` in ``SophiaH``).
        eps: the floor :math:`\epsilon` of the Hessian EMA.
        update_period: steps between Hessian estimates.
        num_samples: :math:`n`, random vectors per estimate.
        distribution: ``"gaussian"`` or ``"rademacher"``.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.Sophia(), tz.m.LR(0.06))
        def closure(backward=True):
            loss = loss_fn(model(inputs), targets)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss
        opt.step(closure)

    Reference: Liu, Li, Hall, Liang, Ma, "Sophia: A Scalable Stochastic Second-order Optimizer for Language
    Model Pre-training", ICLR 2024.
    """

    keeps_state = True
    needs_closure = True
    supports_sharding = False
    sharding_note = (
        "it differentiates the loss itself (torch.autograd.grad), and FSDP2 reduces gradients only in "
        "backward(): autograd.grad with respect to sharded parameters gives zeros"
    )
    creates_update = True
    fuses_lr = True
    schema = {
        "betas": BETAS,
        "rho": Setting(at_least(0), "rho clips the preconditioned step elementwise; use e.g. 1e-2."),
        "eps": EPS,
        "update_period": Setting(integer(1), "update_period is a whole number of steps, at least 1."),
        "num_samples": Setting(integer(1), "num_samples is a whole number, at least 1."),
        "distribution": Setting(one_of("gaussian", "rademacher"), "Use 'gaussian' or 'rademacher'."),
    }

    def __init__(
        self,
        betas: tuple[float, float] = (0.96, 0.99),
        rho: float = 1e-2,
        eps: float = 1e-12,
        update_period: int = 10,
        num_samples: int = 1,
        distribution: str = "gaussian",
    ) -> None:
        super().__init__(
            {"betas": betas, "rho": rho, "eps": eps},
            options={"update_period": update_period, "num_samples": num_samples, "distribution": distribution},
        )
        self.update_period = update_period
        self.num_samples = num_samples
        self.distribution = distribution

    def step(self, ctx: StepContext) -> None:  # type: ignore[override]
        params = graph_params(ctx, "Sophia")
        n = int(self.global_state.get("step", 0)) + 1
        ctx.set_global_state_at_end(self, "step", n)
        estimate = (n - 1) % self.update_period == 0
        loss = raw_loss(ctx, "Sophia", grad=True)
        with torch.enable_grad():
            grads = torch.autograd.grad(loss, params, create_graph=estimate, materialize_grads=True)
        hessian = self._hutchinson(ctx, grads, params) if estimate else None
        g = [t.detach() for t in grads]
        ctx.set_grad(g)
        ctx.update = g
        for seg in ctx.segments(self):
            self._apply(seg, None if hessian is None else hessian[seg.start : seg.stop])

    def _hutchinson(self, ctx: StepContext, grads: tuple[Tensor, ...], params: list[Tensor]) -> list[Tensor]:
        # the random vectors are drawn in the order of the param groups (the reference's order), whatever the
        # layout's order, so the same global seed gives the same vectors
        index = {id(p): i for i, p in enumerate(params)}
        order = [index[id(p)] for group in ctx.opt.param_groups for p in group["params"] if id(p) in index]
        hessian = ops.zeros_like([t.detach() for t in params])
        k = self.num_samples
        for i in range(k):
            zs: list[Tensor] = [params[0]] * len(params)
            for j in order:
                p = params[j]
                if self.distribution == "rademacher":
                    zs[j] = torch.randint_like(p, 0, 2) * 2.0 - 1.0
                else:
                    zs[j] = torch.randn_like(p)
            with torch.enable_grad():
                hz = torch.autograd.grad(grads, params, grad_outputs=zs, retain_graph=i < k - 1, materialize_grads=True)
            for a, b in ctx.layout.buckets:
                ops.addcmul_(hessian[a:b], [t.detach() for t in hz[a:b]], zs[a:b], value=1.0 / k)
        return hessian

    def _apply(self, seg: Segment, hessian: list[Tensor] | None) -> None:
        s = seg.settings
        beta1, beta2 = s["betas"]
        momentum, hessian_moment = seg.state("momentum", "hessian_moment")
        ops.lerp_(momentum, seg.update, 1 - beta1)
        if hessian is not None:
            ops.lerp_(hessian_moment, hessian, 1 - beta2)
        den = seg.scratch()
        ops.copy_(den, hessian_moment)
        ops.clamp_min_(den, s["eps"])
        direction = ops.div(momentum, den)
        ops.clamp_min_(direction, -s["rho"])
        ops.clamp_max_(direction, s["rho"])
        seg.emit(direction, seg.scale)
