"""Limited-memory BFGS as a module: the direction only, the step size is left to a line search or LR."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ...core.module import Module
from ...core.schema import FLAG, Setting, integer
from ...foreach import ops, shard
from ...foreach.ops import add_scaled_, scaled
from ...foreach.reduce import dot_tensor, l1_tensor
from .dense import TOL_CURVATURE

if TYPE_CHECKING:
    from ...core.context import StepContext


class LBFGS(Module):
    r"""L-BFGS direction: the two-loop recursion applied to the incoming update.

    With curvature pairs :math:`s_i = x_{i+1} - x_i`, :math:`y_i = g_{i+1} - g_i`,
    :math:`\rho_i = 1 / \langle y_i, s_i\rangle`, the update becomes :math:`u = H_k g_k`, where
    :math:`H_k` is the L-BFGS inverse-Hessian approximation built from the last ``history_size`` pairs
    on top of :math:`H^0 = \gamma I`, :math:`\gamma = \langle s, y\rangle / \langle y, y\rangle` of the
    newest accepted pair ("initial scaling").  A pair with :math:`\langle y, s\rangle \le`
    ``tol_curvature`` is skipped (kept with weight :math:`\rho = 0`, so the decision needs no host
    sync).  On the first step :math:`u = \min(1, 1/\lVert g\rVert_1)\, g`.

    :math:`s` is measured from the parameters themselves, so any step-size module can follow: a line
    search (``StrongWolfe``, ``Backtracking``) or a plain ``LR``.  The "gradient" is the incoming
    update, so ``LBFGS`` also works on a gradient estimate (``FDM``, ``RandomizedFDM``) or a clipped
    gradient.  Histories are per-parameter state tensors of shape ``(history_size, *param.shape)``;
    ``rho`` and :math:`\gamma` live in the state of the first parameter, like ``torch.optim.LBFGS``
    keeps its scalars, so everything round-trips through ``state_dict`` with ``weights_only=True``.

    A parameter that joins later (``add_param_group``, or its first gradient) or comes back after steps
    without a gradient takes part in that step's pair with :math:`s = y = 0`; while absent it is left alone.
    ``Modular(differentiable=True)`` is supported (the history is then replaced, never written in place).

    Full batch: for a fixed objective pass ``reuse_evaluation=True`` to :class:`~torchzero.Modular` to save
    about one closure call per step (with ``StrongWolfe``, as few calls as ``torch.optim.LBFGS``); never with a
    closure that reads changing data, such as the next minibatch.

    Each step starts by evaluating the closure at the current parameters, where the previous step's line
    search has usually just evaluated it: ``torch.optim.LBFGS`` reuses that evaluation between the iterations
    of one ``step()``, and :class:`~torchzero.Modular` does between steps when asked with ``reuse_evaluation``.
    It is off by default because one closure object that reads the next batch from a variable looks the same
    as a fixed objective, and the step would then silently use the previous batch's loss and gradient.

    Args:
        history_size: number of curvature pairs kept.
        tol_curvature: pairs with :math:`\langle y, s\rangle` at or below this are skipped.
        scale_init: use :math:`H^0 = \gamma I` (otherwise :math:`H^0 = I`).
        scale_first: scale the first step by :math:`\min(1, 1/\lVert g\rVert_1)`, as torch.optim.LBFGS does.

    Example::

        opt = tz.Modular(model.parameters(), tz.m.LBFGS(), tz.m.StrongWolfe())
        for _ in range(100):
            opt.step(closure)

    Reference: Nocedal, "Updating quasi-Newton matrices with limited storage", Math. Comp. 35 (1980);
    Liu & Nocedal, "On the limited memory BFGS method for large scale optimization" (1989).
    """

    keeps_state = True
    exact_state = frozenset({"prev_params"})  # kept in the compute dtype whatever state_dtype says
    uniform_settings = True

    schema = {
        "history_size": Setting(integer(1), "It is the number of curvature pairs kept: a positive integer such as 10."),
        "tol_curvature": TOL_CURVATURE,
        "scale_init": FLAG,
        "scale_first": FLAG,
    }

    def __init__(
        self, history_size: int = 10, tol_curvature: float = 1e-10, scale_init: bool = True, scale_first: bool = True
    ) -> None:
        super().__init__(
            {
                "history_size": history_size,
                "tol_curvature": tol_curvature,
                "scale_init": scale_init,
                "scale_first": scale_first,
            }
        )

    def step(self, ctx: StepContext) -> None:
        s = ctx.settings(self)
        m = s["history_size"]
        buckets = ctx.layout.buckets
        grad = ctx.update
        params = ctx.params

        # a parameter without state yet (first step, or it joined later) starts at "no change": s = y = 0 in
        # this step, so its first curvature pair does not depend on where the parameter happens to sit
        index = {id(v): i for i, v in enumerate(params)}
        s_hist, y_hist, prev_x, prev_g = ctx.state(
            self,
            "s_history",
            "y_history",
            "prev_params",
            "prev_grad",
            init={
                "s_history": lambda v: shard.stacked_zeros(v, m),  # sharded like v under FSDP2
                "y_history": lambda v: shard.stacked_zeros(v, m),
                "prev_params": lambda v: v.detach().clone(),
                "prev_grad": lambda v: grad[index[id(v)]].detach().clone(),
            },
        )
        if s_hist[0].shape[0] != m:
            raise ValueError(
                f"LBFGS history_size is {m}, but its saved history holds {s_hist[0].shape[0]} pairs. Build the "
                f"module with history_size={s_hist[0].shape[0]} to continue from this state, or start a new optimizer."
            )
        # scalars in the first parameter's state and dtype (torch casts state to the param dtype on load)
        rho, gamma = ctx.state(
            self,
            "rho",
            "gamma",
            # plain tensors, the same on every rank, also for a sharded v
            init={"rho": lambda v: shard.local(v).new_zeros(m), "gamma": lambda v: shard.local(v).new_ones(())},
            start=0,
            stop=1,
        )
        rho_t, gamma_t = rho[0], gamma[0]

        # differentiable=True: autograd keeps the history slices and scalars that earlier steps read, so they
        # are never written in place; each step writes into copies and puts those in the state
        functional = torch.is_grad_enabled()
        if functional:
            s_hist, y_hist, rho_t, gamma_t = ops.clone(s_hist), ops.clone(y_hist), rho_t.clone(), gamma_t.clone()

        step = self.global_state.get("step", 0) + 1
        order: list[int] = list(self.global_state.get("order", []))  # history slots, oldest first
        if step == 1:  # fresh, or after reset(): the scalars may hold an earlier run's values
            rho_t.zero_()
            gamma_t.fill_(1.0)
        absent = self._absent_parameters(ctx, s_hist, y_hist, prev_x, prev_g)
        if step > 1:
            sk = ops.sub(params, prev_x) if params else []
            yk = ops.sub(grad, prev_g) if params else []
            ys = dot_tensor(buckets, sk, yk)
            yy = dot_tensor(buckets, yk, yk)
            accept = ys > s["tol_curvature"]
            slot = len(order) if len(order) < m else order.pop(0)
            order.append(slot)
            for slots in absent.values():
                slots.append(slot)
            ops.copy_([h[slot] for h in s_hist], sk)
            ops.copy_([h[slot] for h in y_hist], yk)
            rho_t[slot] = torch.where(accept, 1.0 / ys, torch.zeros_like(ys))
            kept = accept.to(ys.dtype)
            ctx.report(self, "pairs_kept", kept)
            ctx.report(self, "pairs_skipped", 1 - kept)
            if s["scale_init"]:
                gamma_t.copy_(torch.where(accept, ys / yy, gamma_t.to(ys.dtype)))
        if functional:
            self._store(ctx, {"s_history": s_hist, "y_history": y_hist})
            self._store(ctx, {"rho": [rho_t], "gamma": [gamma_t]})

        if not order:
            direction = ops.clone(grad)
            if step == 1 and s["scale_first"]:
                factor = torch.clamp(1.0 / l1_tensor(buckets, grad), max=1.0)
                direction = scaled(buckets, direction, factor)
            elif s["scale_init"]:
                direction = scaled(buckets, direction, gamma_t)
        else:
            q = ops.clone(grad)
            alphas: dict[int, Tensor] = {}
            for slot in reversed(order):
                si, yi = [h[slot] for h in s_hist], [h[slot] for h in y_hist]
                alphas[slot] = rho_t[slot] * dot_tensor(buckets, si, q)
                q = _add_scaled(buckets, q, yi, -alphas[slot], functional)
            direction = scaled(buckets, q, gamma_t)
            for slot in order:
                si, yi = [h[slot] for h in s_hist], [h[slot] for h in y_hist]
                beta = rho_t[slot] * dot_tensor(buckets, yi, direction)
                direction = _add_scaled(buckets, direction, si, alphas[slot] - beta, functional)

        if functional:
            self._store(ctx, {"prev_params": ops.clone(params), "prev_grad": ops.clone(grad)})
        else:
            for a, b in buckets:
                ops.copy_(prev_x[a:b], params[a:b])
                ops.copy_(prev_g[a:b], grad[a:b])
        ctx.set_global_state_at_end(self, "step", step)  # counted once the whole chain succeeded
        self.global_state["order"] = order
        ctx.update = direction

    def _absent_parameters(
        self, ctx: StepContext, s_hist: list[Tensor], y_hist: list[Tensor], prev_x: list[Tensor], prev_g: list[Tensor]
    ) -> dict[str, list[int]]:
        """Bookkeeping for parameters with history that skip steps (their ``.grad`` is None).

        Such a parameter's state is left alone while it is absent; the history slots written meanwhile are
        remembered (``global_state["absent"]``, keyed ``"group,index"``).  When it comes back, its part of
        those slots is zeroed (so every stored pair agrees with the ``rho`` computed when it was written) and
        its previous point is set to the current one, so its part of this step's pair is ``s = y = 0``.
        Returns the (mutable) slot lists of the parameters absent in this step.
        """
        opt, key = ctx.opt, self.key
        known: dict[str, list[int]] = self.global_state.get("absent", {})
        total = sum(len(g["params"]) for g in opt.param_groups)
        if not known and len(ctx.params) == total:
            return {}  # the usual case: every parameter takes part, nothing to look up
        present = {id(p): i for i, p in enumerate(ctx.layout.originals)}
        absent: dict[str, list[int]] = {}
        for gi, group in enumerate(opt.param_groups):
            for pi, p in enumerate(group["params"]):
                name = f"{gi},{pi}"
                i = present.get(id(p))
                if i is None:
                    if name in known or key in opt.state.get(p, {}):
                        absent[name] = list(known.get(name, []))
                elif name in known:  # back after skipping steps
                    for slot in sorted(set(known[name])):
                        s_hist[i][slot].zero_()
                        y_hist[i][slot].zero_()
                    prev_x[i].copy_(ctx.params[i])
                    prev_g[i].copy_(ctx.update[i])
        if absent:
            self.global_state["absent"] = absent
        else:
            self.global_state.pop("absent", None)
        return absent

    def _store(self, ctx: StepContext, values: dict[str, list[Tensor]]) -> None:
        """Put new state tensors in place of the old ones (for the first ``len`` parameters of the step)."""
        for name, tensors in values.items():
            ctx.set_state(self, name, tensors)

    def reset(self) -> None:
        """Forget the history (the next step is a scaled gradient step)."""
        self.global_state.clear()


def _add_scaled(
    buckets: list[tuple[int, int]], xs: list[Tensor], ys: list[Tensor], alpha: Tensor, functional: bool
) -> list[Tensor]:
    """``x + alpha * y``: in place, or as new tensors when autograd may have kept ``x`` (it was read by a dot)."""
    if not functional:
        add_scaled_(buckets, xs, ys, alpha)
        return xs
    return ops.add(xs, scaled(buckets, ys, alpha))
