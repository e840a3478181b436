"""Schedule-free SGD and AdamW (Defazio et al., 2024): two sequences, the parameters hold their interpolation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ...core.module import Module, Transform
from ...core.schema import BETAS, EPS, Setting, at_least, in_range, integer

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext
    from ...core.modular import Modular

from ...core.context import StepContext as _StepContext
from ...foreach import ops

_R = Setting(at_least(0), "r is the power of the step count in the averaging weights; the paper uses 0.")
_POWER = Setting(at_least(0), "weight_lr_power is the power of the largest lr in the weights; the default is 2.")
_WARMUP = Setting(integer(0), "warmup_steps is a whole number of steps, 0 for none.")
_DECAY = Setting(at_least(0), "Use 0 for no decay, or a value such as 1e-2.")


class _ScheduleFree(Transform):
    """What both forms share: the weights, the ``z`` state, the move to ``y_new``, the eval/train swap."""

    keeps_state = True
    exact_state = frozenset({"z"})  # kept in the compute dtype whatever state_dtype says
    fuses_lr = True
    counts_steps = True
    modifies_update_inplace = False

    def __init__(self, defaults: dict[str, Any]) -> None:
        super().__init__(defaults)
        self._opt: Modular | None = None
        self._lr: Module | None = None
        self.global_state["train_mode"] = True

    # ------------------------------------------------------------------ binding
    def bind(self, opt: Modular) -> None:
        leaves = opt.modules
        lr = opt.plan.lr_after(self)
        i = leaves.index(self)
        if lr is not None and (i + 1 >= len(leaves) or leaves[i + 1] is not lr):
            raise ValueError(
                f"{type(self).__name__} uses the learning rate inside its averaging weights, so the chain's "
                "tz.m.LR must come right after it (tz.Modular(params, ..., "
                f"tz.m.{type(self).__name__}(), tz.m.LR(lr))); without any LR the lr is 1."
            )
        self._opt = opt
        self._lr = lr

    def _momentum(self, settings: dict[str, Any]) -> float:
        raise NotImplementedError

    def _direction(self, seg: Segment, update: list[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
        """The direction before weight decay, and whether it is a new list of tensors the rule may change."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the step
    def step(self, ctx: StepContext) -> None:  # type: ignore[override]
        if not self.global_state.get("train_mode", True):
            raise RuntimeError(
                f"{type(self).__name__}: step() was called in eval mode (the parameters hold x); call opt.train() "
                "before training steps and opt.eval() before evaluation."
            )
        fused = self._lr is None or ctx.fused is self._lr
        # unfused (tz.Modular(fuse=False)), the LR after it still multiplies by lr: the rule reads that lr itself
        # and hands on (y_old - y_new) / lr, one rounding away from the fused result
        for seg in ctx.segments(self, None if fused else self._lr):
            self.apply(ctx, seg, unfused=not fused)

    def apply(self, ctx: StepContext, seg: Segment, unfused: bool = False) -> None:
        s = seg.settings
        t = seg.step
        warmup = s["warmup_steps"]
        # the weights take a running max and a ratio of Python numbers: a tensor lr is read on the host here
        base = float(seg.scale) if isinstance(seg.scale, torch.Tensor) else seg.scale
        lr = base * (t / warmup if t - 1 < warmup else 1.0)
        seg.report("lr", lr)  # with warmup
        lr_max = seg.scalar("lr_max", lambda previous: max(lr, previous), -1.0)
        weight = (t ** s["r"]) * lr_max ** s["weight_lr_power"]
        weight_sum = seg.scalar("weight_sum", lambda previous: previous + weight, 0.0)
        ckp1 = weight / weight_sum if weight_sum != 0 else 0.0

        y = seg.params
        (z,) = seg.state("z", init=lambda p: p.detach().clone(memory_format=torch.preserve_format))
        direction, owned = self._direction(seg, seg.update)
        if s["weight_decay"] != 0:
            if owned:
                ops.add_(direction, y, alpha=s["weight_decay"])
            else:
                direction = ops.add(direction, y, alpha=s["weight_decay"])
        coef = lr * (self._momentum(s) * (1 - ckp1) - 1)
        if unfused:
            # the LR after the rule multiplies by lr: hand on (y - y_new) / lr, y_new built as the reference builds
            # it (the difference is exact whenever y_new is within a factor 2 of y: Sterbenz)
            y_new = ops.lerp(y, z, ckp1)
            ops.add_(y_new, direction, alpha=coef)
            ops.sub_(y_new, y)
            seg.emit(y_new, -1.0 / base if base != 0 else 0.0)  # lr = 0 moves nothing: y_new = y
        else:

            def move(x: list[torch.Tensor]) -> None:  # y_new = lerp(y, z, c) + coef d, the reference's two passes
                ops.lerp_(x, z, ckp1)
                ops.add_(x, direction, alpha=coef)

            seg.emit_move(move)  # the last stage lands the parameters on y_new in place
        ops.sub_(z, direction, alpha=lr)

    # ------------------------------------------------------------------ eval / train
    def set_train_mode(self, mode: bool) -> None:
        """Move the parameters to ``y`` (``mode=True``, training) or to ``x`` (``False``, evaluation)."""
        if bool(self.global_state.get("train_mode", True)) == mode:
            return
        opt = self._opt
        if opt is None:
            raise RuntimeError(f"{type(self).__name__} is not part of a tz.Modular yet")
        key = self.key
        layout = opt.plan.layout(opt.param_groups, lambda p: "z" in opt.state.get(p, {}).get(key, {}))
        if layout is not None:
            ctx = _StepContext(opt, layout, None, None)
            with torch.no_grad():
                for seg in ctx.segments(self):
                    beta = self._momentum(seg.settings)
                    (z,) = seg.state("z")
                    # x = lerp(y, z, 1 - 1/beta) and y = lerp(x, z, 1 - beta)
                    ops.lerp_(seg.params, z, 1 - beta if mode else 1 - 1 / beta)
        self.global_state["train_mode"] = mode


class ScheduleFreeSGD(_ScheduleFree):
    r"""Schedule-free SGD: ``schedulefree.SGDScheduleFree`` as a chain module (put ``LR`` right after it).

    The optimizer keeps the base sequence :math:`z` and the average :math:`x`; the parameters hold their
    interpolation :math:`y` during training, where the gradient is taken:

    .. math::
        \gamma_t = \eta\,\min(1, t / T_{warm}),\quad
        c_t = \frac{t^r \,(\max_{i\le t}\gamma_i)^{p}}{\sum_{i\le t} i^r (\max_{j\le i}\gamma_j)^{p}},\quad
        d_t = g(y_t) + \lambda y_t,\\
        y_{t+1} = (1-c_t)\, y_t + c_t z_t + \gamma_t\big(\beta (1-c_t) - 1\big) d_t, \qquad
        z_{t+1} = z_t - \gamma_t d_t,

    with :math:`x = y + (1 - 1/\beta)(z - y)` and :math:`y = x + (1-\beta)(z-x)`.  As the chain's last
    stage (with its ``LR``, where it belongs) the module moves the parameters to :math:`y_{t+1}` in place, with
    the reference's two passes; anywhere else it hands on :math:`y_t - y_{t+1}`.  The learning rate :math:`\eta` is the lr of the ``tz.m.LR`` right after it (1 without
    one, the reference's default), because the averaging weights use it; weight decay is part of the rule
    (evaluated at :math:`y`, as in the reference).  :math:`t` counts each parameter's steps; the sums are
    kept per param group, as in the reference, when every parameter steps every time.

    The lr should be a Python number: the weights keep a running max and a sum of Python numbers, so a tensor
    lr is read on the host.  With ``tz.Modular(fuse=False)`` the rule hands on :math:`(y_t - y_{t+1})/\eta`
    for the LR to multiply back (one rounding away from the fused result).

    Evaluate the model at :math:`x`: ``opt.eval()`` before validation and ``opt.train()`` after (the mode is
    saved in the checkpoint; ``step()`` in eval mode raises).

    Args:
        momentum: :math:`\beta` in (0, 1).
        weight_decay: :math:`\lambda`.
        warmup_steps: linear warmup of the lr over this many steps.
        r: power :math:`r` of the step count in the weights.
        weight_lr_power: power :math:`p` of the largest lr in the weights.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.ScheduleFreeSGD(momentum=0.9), tz.m.LR(1.0))
        opt.eval()   # parameters hold x: validate, save for deployment
        opt.train()  # back to y before the next step

    Reference: Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky, "The Road Less Scheduled", NeurIPS 2024.
    """

    schema = {
        "momentum": Setting(in_range(0, 1, closed="neither"), "momentum is a number strictly between 0 and 1."),
        "weight_decay": _DECAY, "warmup_steps": _WARMUP, "r": _R, "weight_lr_power": _POWER,
    }  # fmt: skip

    def __init__(
        self,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
    ) -> None:
        super().__init__({
            "momentum": momentum, "weight_decay": weight_decay, "warmup_steps": warmup_steps, "r": r,
            "weight_lr_power": weight_lr_power,
        })  # fmt: skip

    def _momentum(self, settings: dict[str, Any]) -> float:
        return settings["momentum"]

    def _direction(self, seg: Segment, update: list[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
        return update, False


class ScheduleFreeAdamW(_ScheduleFree):
    r"""Schedule-free AdamW: ``schedulefree.AdamWScheduleFree`` as a chain module (put ``LR`` right after it).

    As :class:`ScheduleFreeSGD`, with the gradient normalised by Adam's second moment first (no first moment:
    the interpolation is the momentum):

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
        d_t = \frac{g_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon} + \lambda y_t,\\
        y_{t+1} = (1-c_t)\, y_t + c_t z_t + \gamma_t\big(\beta_1 (1-c_t) - 1\big) d_t, \qquad
        z_{t+1} = z_t - \gamma_t d_t,

    with :math:`\gamma_t` and :math:`c_t` as in :class:`ScheduleFreeSGD` (the lr comes from the ``tz.m.LR``
    right after it; the reference's default is 0.0025).  ``opt.eval()`` / ``opt.train()`` swap the
    parameters between :math:`x` and :math:`y`.

    Args:
        betas: :math:`(\beta_1, \beta_2)`; :math:`\beta_1` is the interpolation momentum.
        eps: term added to the denominator.
        weight_decay: :math:`\lambda`, evaluated at :math:`y`.
        warmup_steps: linear warmup of the lr over this many steps.
        r: power of the step count in the averaging weights.
        weight_lr_power: power of the largest lr in the averaging weights.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.ScheduleFreeAdamW(warmup_steps=100), tz.m.LR(2.5e-3))

    Reference: Defazio et al., "The Road Less Scheduled", NeurIPS 2024.
    """

    schema = {
        "betas": BETAS, "eps": EPS, "weight_decay": _DECAY, "warmup_steps": _WARMUP, "r": _R,
        "weight_lr_power": _POWER,
    }  # fmt: skip

    def __init__(
        self,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
    ) -> None:
        super().__init__({
            "betas": betas, "eps": eps, "weight_decay": weight_decay, "warmup_steps": warmup_steps, "r": r,
            "weight_lr_power": weight_lr_power,
        })  # fmt: skip

    def _momentum(self, settings: dict[str, Any]) -> float:
        return settings["betas"][0]

    def _direction(self, seg: Segment, update: list[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
        s = seg.settings
        beta2 = s["betas"][1]
        (exp_avg_sq,) = seg.state("exp_avg_sq")
        ops.mul_(exp_avg_sq, beta2)
        ops.addcmul_(exp_avg_sq, update, update, value=1 - beta2)
        denom = ops.div(exp_avg_sq, 1 - beta2**seg.step)
        ops.sqrt_(denom)
        ops.add_(denom, s["eps"])
        return ops.into(denom, "div", update, denom), True  # on CPU over the denominator: no new tensors
