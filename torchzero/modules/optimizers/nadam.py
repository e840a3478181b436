"""NAdam: Adam with Nesterov momentum (Dozat, 2016)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.module import Transform
from ...core.schema import ALPHA, BETAS, EPS, Setting, at_least
from ...foreach import ops

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext


class NAdam(Transform):
    r"""The update rule of ``torch.optim.NAdam``, with the learning rate left to :class:`LR`.

    .. math::
        \mu_t = \beta_1\big(1 - \tfrac12\, 0.96^{t\psi}\big), \quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\\
        u \leftarrow \alpha\,\Big(\frac{1-\mu_t}{1-\prod_{i\le t}\mu_i}\, g_t
            + \frac{\mu_{t+1}}{1-\prod_{i\le t+1}\mu_i}\, m_t\Big) \Big/ \Big(\sqrt{v_t/(1-\beta_2^t)} + \epsilon\Big)

    :math:`t` counts each parameter's own steps (a parameter that first gets a gradient later starts at 1, as
    in torch).  The product :math:`\prod \mu_i` is a Python number per param group and step count (kept in
    the checkpoint), so no step reads a tensor back to the host.  torch keeps it as a float32 tensor; ours is
    a double, which can differ in the last digits of float64 runs.

    Args:
        betas: :math:`(\beta_1, \beta_2)`.
        eps: term added to the denominator.
        momentum_decay: :math:`\psi`.
        alpha: step size multiplier (use :class:`LR` for the learning rate; torch's default lr is 2e-3).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.NAdam(), tz.m.LR(2e-3))  # == torch.optim.NAdam()

    Reference: Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop.
    """

    keeps_state = True
    fuses_lr = True
    counts_steps = True
    schema = {"betas": BETAS, "eps": EPS, "momentum_decay": Setting(at_least(0), "Use e.g. 4e-3."), "alpha": ALPHA}

    modifies_update_inplace = False  # reads the update and emits a new one through the sink

    def __init__(
        self,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum_decay: float = 4e-3,
        alpha: float = 1.0,
    ) -> None:
        super().__init__({"betas": betas, "eps": eps, "momentum_decay": momentum_decay, "alpha": alpha})

    def on_load(self) -> None:
        """Read a 0.1.0 checkpoint, which kept one product per ``"group#count"`` key."""
        cohorts = self.global_state.get("mu_product", {})
        for old in [k for k in cohorts if "#" in k]:
            base, count = old.rsplit("#", 1)
            cohorts.setdefault(base, []).append([int(count), float(cohorts.pop(old))])

    def apply(self, ctx: StepContext, seg: Segment) -> None:
        s = seg.settings
        beta1, beta2 = s["betas"]
        psi = s["momentum_decay"]
        t = seg.step
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * psi))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * psi))
        product = seg.scalar("mu_product", lambda previous: previous * mu)  # once per group and step count
        product_next = product * mu_next

        update = seg.update
        exp_avg, exp_avg_sq = seg.state("exp_avg", "exp_avg_sq")
        ops.lerp_(exp_avg, update, 1 - beta1)
        ops.mul_(exp_avg_sq, beta2)
        ops.addcmul_(exp_avg_sq, update, update, 1 - beta2)
        denom = ops.div(exp_avg_sq, 1 - beta2**t)
        ops.sqrt_(denom)
        ops.add_(denom, s["eps"])
        scale = s["alpha"] * seg.scale
        c_grad = scale * (1.0 - mu) / (1.0 - product)
        c_avg = scale * mu_next / (1.0 - product_next)
        seg.emit_div(update, denom, c_grad, (exp_avg, c_avg))
