"""Dense quasi-Newton methods (BFGS, SR1) for small problems: one n-by-n matrix over all parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.module import Module
from ...core.schema import FLAG, Setting, at_least
from ...foreach import shard
from ...foreach.flat import flatten, unflatten

if TYPE_CHECKING:
    from ...core.context import StepContext

TOL_CURVATURE = Setting(at_least(0), "Curvature pairs with <y, s> at or below it are skipped; use e.g. 1e-10.")


class DenseQuasiNewton(Module):
    r"""Base of dense quasi-Newton modules: :math:`u = H g` with an explicit inverse-Hessian estimate :math:`H`.

    :math:`H`, the previous parameters and the previous gradient are flat tensors in the state of the first
    parameter (in its dtype), so they round-trip through ``state_dict`` with ``weights_only=True``.  Every
    update decision is made on the device with ``torch.where`` (no host sync).  Subclasses implement
    :meth:`update_inverse`.
    """

    keeps_state = True
    exact_state = frozenset({"prev_params"})  # kept in the compute dtype whatever state_dtype says
    uniform_settings = True

    def __init__(self, defaults: dict[str, Any]) -> None:
        super().__init__(defaults)

    def update_inverse(
        self, h: Tensor, s: Tensor, y: Tensor, first: bool, settings: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        """The new inverse Hessian and whether the pair was kept (a bool 0-dim tensor: no host sync)."""
        raise NotImplementedError

    def direction(self, h: Tensor, g: Tensor, settings: dict[str, Any]) -> Tensor:
        return h @ g

    def _check_layout(self, ctx: StepContext) -> list[list[int]]:
        """``[group, index]`` of each parameter of this step; raise before any change if the state was made for others."""
        where = {id(p): [gi, i] for gi, g in enumerate(ctx.opt.param_groups) for i, p in enumerate(g["params"])}
        current = [where[id(p)] for p in ctx.layout.originals]
        saved = self.global_state.get("layout")
        if saved is None or saved == current:
            return current
        name = type(self).__name__
        missing = [pos for pos in saved if pos not in current]
        if missing:
            gi, i = missing[0]
            p = ctx.opt.param_groups[gi]["params"][i]
            if p.requires_grad and p.grad is None:
                raise ValueError(
                    f"parameter {i} of group {gi} (shape {tuple(p.shape)}) has no gradient in this step; {name} "
                    "builds one matrix over all parameters and needs the gradient of every parameter it started "
                    "with. Freeze a parameter with requires_grad=False before building the optimizer (or leave it "
                    "out of the optimizer), or make the loss depend on it. Nothing was changed."
                )
        raise ValueError(
            f"{name} holds its inverse Hessian for parameters {saved} ([group, index]), but this step has "
            f"parameters {current}. The parameters changed since the state was made (a new param group, or a "
            "parameter that got its first gradient); build a new optimizer. Nothing was changed."
        )

    def step(self, ctx: StepContext) -> None:
        settings = ctx.settings(self)
        params, grad = ctx.params, ctx.update
        layout = self._check_layout(ctx)
        n = sum(p.numel() for p in params)
        hs, prev_xs, prev_gs = ctx.state(
            self,
            "inverse_hessian",
            "prev_params",
            "prev_grad",
            init={
                # plain tensors, also for sharded parameters (then the same on every rank: see foreach.flat)
                "inverse_hessian": lambda v: torch.eye(n, dtype=v.dtype, device=shard.local_device(v)),
                "prev_params": lambda v: shard.local(v).new_zeros(n),
                "prev_grad": lambda v: shard.local(v).new_zeros(n),
            },
            start=0,
            stop=1,
        )
        h, prev_x, prev_g = hs[0], prev_xs[0], prev_gs[0]  # one flat tensor each, kept with the first parameter
        if h.shape != (n, n):
            raise ValueError(
                f"{type(self).__name__} holds a {tuple(h.shape)} inverse Hessian, but the parameters have {n} "
                "elements in total. The parameters changed since the state was made; build a new optimizer."
            )
        x, g = flatten(params, h), flatten(grad, h)  # in the state's dtype (wider than bf16 params: state_dtype)
        step = self.global_state.get("step", 0) + 1
        if step == 1:  # fresh, or after reset(): the matrix may hold an earlier run's estimate
            h.copy_(torch.eye(n, dtype=h.dtype, device=h.device))
        else:
            new, accept = self.update_inverse(h, x - prev_x, g - prev_g, step == 2, settings)
            h.copy_(new)
            kept = accept.to(h.dtype)
            ctx.report(self, "pairs_kept", kept)
            ctx.report(self, "pairs_skipped", 1 - kept)
        if step == 1 and settings["scale_first"]:
            u = g * torch.clamp(1.0 / g.abs().sum(), max=1.0)
        else:
            u = self.direction(h, g, settings)
        prev_x.copy_(x)
        prev_g.copy_(g)
        ctx.set_global_state_at_end(self, "step", step)  # counted once the whole chain succeeded
        self.global_state["layout"] = layout
        ctx.update = unflatten(u, grad)

    def reset(self) -> None:
        """Start again from the identity on the next step."""
        self.global_state.clear()


class BFGS(DenseQuasiNewton):
    r"""Dense BFGS: the inverse-Hessian update, for problems with up to a few thousand parameters.

    .. math::
        H \leftarrow \Big(I - \rho s y^\top\Big) H \Big(I - \rho y s^\top\Big) + \rho s s^\top,
        \qquad \rho = 1/\langle y, s\rangle, \qquad u = H g

    with :math:`s` the last change of the parameters and :math:`y` the change of the gradient (the
    incoming update).  Before the first update :math:`H` is set to :math:`\frac{\langle s,y\rangle}
    {\langle y,y\rangle} I` (``scale_init``).  A pair with :math:`\langle y,s\rangle \le` ``tol_curvature``
    leaves :math:`H` unchanged.  Follow it with a line search (``StrongWolfe`` keeps :math:`H` positive
    definite) or ``LR``.

    Args:
        tol_curvature: curvature threshold below which a pair is skipped.
        scale_init: rescale the identity before the first update.
        scale_first: first step :math:`\min(1, 1/\lVert g\rVert_1)\, g`, as in ``LBFGS``.

    Example::

        opt = tz.Modular(params, tz.m.BFGS(), tz.m.StrongWolfe())

    Reference: Nocedal & Wright, *Numerical Optimization* (2nd ed.), Section 6.1, eq. (6.17), (6.20).
    """

    schema = {"tol_curvature": TOL_CURVATURE, "scale_init": FLAG, "scale_first": FLAG}

    def __init__(self, tol_curvature: float = 1e-10, scale_init: bool = True, scale_first: bool = True) -> None:
        super().__init__({"tol_curvature": tol_curvature, "scale_init": scale_init, "scale_first": scale_first})

    def update_inverse(
        self, h: Tensor, s: Tensor, y: Tensor, first: bool, settings: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        ys = y @ s
        accept = ys > settings["tol_curvature"]
        if first and settings["scale_init"]:
            h = torch.where(accept, torch.eye(len(s), dtype=h.dtype, device=h.device) * (ys / (y @ y)), h)
        rho = torch.where(accept, 1.0 / ys, torch.zeros_like(ys))
        hy = h @ y
        # (I - rho s y')H(I - rho y s') + rho s s', expanded
        new = h + (rho * rho * (y @ hy) + rho) * torch.outer(s, s) - rho * (torch.outer(hy, s) + torch.outer(s, hy))
        return torch.where(accept, new, h), accept


class SR1(DenseQuasiNewton):
    r"""Dense symmetric rank-one (SR1) inverse-Hessian update, for small problems.

    .. math::
        v = s - H y, \qquad H \leftarrow H + \frac{v v^\top}{\langle v, y\rangle}, \qquad u = H g

    The update is skipped when :math:`|\langle v, y\rangle| < r \lVert v\rVert \lVert y\rVert` (it would be
    unstable).  SR1 may build an indefinite :math:`H`; when :math:`\langle g, Hg\rangle \le 0` the module
    hands on :math:`g` itself, so a following line search always gets a descent direction.

    Args:
        r: skipping threshold :math:`r`.
        scale_first: first step :math:`\min(1, 1/\lVert g\rVert_1)\, g`.

    Example::

        opt = tz.Modular(params, tz.m.SR1(), tz.m.Backtracking())

    Reference: Nocedal & Wright, *Numerical Optimization* (2nd ed.), Section 6.2, eq. (6.25), (6.26).
    """

    schema = {"r": Setting(at_least(0), "r is the skipping threshold, e.g. 1e-8."), "scale_first": FLAG}

    def __init__(self, r: float = 1e-8, scale_first: bool = True) -> None:
        super().__init__({"r": r, "scale_first": scale_first})

    def update_inverse(
        self, h: Tensor, s: Tensor, y: Tensor, first: bool, settings: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        v = s - h @ y
        vy = v @ y
        accept = vy.abs() > settings["r"] * torch.linalg.vector_norm(v) * torch.linalg.vector_norm(y)
        safe = torch.where(accept, vy, torch.ones_like(vy))
        return torch.where(accept, h + torch.outer(v, v) / safe, h), accept

    def direction(self, h: Tensor, g: Tensor, settings: dict[str, Any]) -> Tensor:
        u = h @ g
        return torch.where(g @ u > 0, u, g)
