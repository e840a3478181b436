"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al., 2024), as ``pytorch_optimizer.SOAP``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...core.module import Transform
from ...core.schema import ALPHA, BETAS, EPS, FLAG, Setting, at_least, in_range, integer, one_of, optional

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext

_LAYOUTS = ("channels_first", "channels_last")


def merged_shape(shape: Any, max_dim: int) -> list[int]:
    """Neighbouring dimensions of ``shape`` multiplied together while the product stays at most ``max_dim``.

    As ``pytorch_optimizer``'s ``merge_small_dims``, except that a shape that merges into one dimension stays
    that dimension (``[numel]``); the reference returns ``[1]`` there, so its reshape fails for any tensor of
    more than one element whose elements number at most ``max_dim``.
    """
    merged: list[int] = []
    product = 1
    for n in shape:
        product *= n
        if product > max_dim:
            merged.append(product // n)
            product = n
    merged.append(product)
    return merged


class SOAP(Transform):
    r"""The update rule of ``pytorch_optimizer.SOAP`` (4.1.0): Adam run in the eigenbasis of Shampoo's preconditioner.

    For a gradient :math:`G` with (merged) dimensions :math:`1..k`, each preconditioned dimension :math:`i` (size at
    most ``max_precondition_dim``) keeps a Kronecker factor :math:`L_i` and an orthogonal basis :math:`Q_i`;
    :math:`P(X)` contracts every dimension :math:`i` of :math:`X` with :math:`Q_i` (:math:`Q_i^\top X` along that
    axis) and :math:`P^{-1}` with :math:`Q_i^\top`.  With :math:`s = t - 1` (the step count less the first step):

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) G, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\, P(G)^{2},\\
        D = P^{-1}\Big(\frac{P(m_t)}{\sqrt{v_t} + \epsilon}\Big), \qquad
        \theta \leftarrow \Big(\theta - \eta \frac{\sqrt{1-\beta_2^{s}}}{1-\beta_1^{s}}\, D\Big)(1 - \eta\lambda),\\
        L_i \leftarrow \beta_s L_i + (1-\beta_s)\, G_{(i)} G_{(i)}^\top

    where :math:`G_{(i)}` is :math:`G` unfolded along dimension :math:`i` and :math:`\beta_s` is ``shampoo_beta``
    (None: :math:`\beta_2`).  :math:`m` lives in the parameter's own basis, :math:`v` in the rotated one.  The
    first step only accumulates :math:`L_i` and sets :math:`Q_i` to the eigenvectors of :math:`L_i` (by
    ``torch.linalg.eigh`` of :math:`L_i + 10^{-30} I`, in decreasing eigenvalue order; the parameters do not
    move).  After every step :math:`s` that is a multiple of ``precondition_frequency``, each :math:`Q_i` is
    refreshed by one power iteration and a QR decomposition (computed in float32, as the reference does, in
    every dtype): the columns of :math:`L_i Q_i` are sorted by the estimated eigenvalues
    :math:`\mathrm{diag}(Q_i^\top L_i Q_i)`, :math:`v` is permuted the same way along dimension :math:`i`, and
    :math:`Q_i` becomes the Q factor.  ``normalize_gradient`` divides :math:`D` by
    :math:`\sqrt{\mathrm{mean}(D^2)} + \epsilon`; ``correct_bias=False`` drops the bias-correction factor.

    Shapes, as in the reference: a parameter of two or more dimensions gets one factor per dimension of size at
    most ``max_precondition_dim`` (larger ones stay in the identity basis); a vector gets one only with
    ``precondition_1d=True`` (else it is Adam with :math:`m` and :math:`v`); a scalar is Adam.  With
    ``merge_dims=True`` neighbouring dimensions are merged while their product stays at most
    ``max_precondition_dim`` (``data_format="channels_last"`` first moves the channels of a 4-D tensor to
    dimension 1); a tensor that merges into one dimension keeps that dimension (see :func:`merged_shape`: the
    reference's reshape raises there).

    The rule reads the learning rate :math:`\mathrm{lr}` of the ``LR`` after it (:math:`\eta = \alpha \cdot
    \mathrm{lr}`, as :class:`Lamb` does), because the reference's decoupled weight decay multiplies the
    parameters *after* the step: it hands on :math:`\alpha\, c\, (1 - \eta\lambda) D + \alpha\lambda\theta`
    (:math:`c` the bias correction), which ``LR`` multiplies by the learning rate.  So
    ``tz.Modular(p, tz.m.SOAP(), tz.m.LR(3e-3))`` equals ``pytorch_optimizer.SOAP(p)`` (whose defaults are
    ``lr=3e-3``, ``weight_decay=1e-2``).  The step count is per parameter (the reference counts per param group:
    the same while every parameter gets a gradient at every step).

    The whole step is a loop over the tensors.  On FSDP2 shards each tensor is gathered whole on one owner rank
    (round-robin over the tensors, :meth:`~torchzero.core.context.StepContext.map_full`), its step runs there
    and the direction's shards are scattered back: all of its state (:math:`m`, :math:`v`, :math:`L_i`,
    :math:`Q_i`) is owner-local, kept whole on that rank only.  The eigendecomposition (first step) and the QR refreshes run
    on the schedule decided on the host from the step count, as in the reference; ``torch.linalg.eigh`` checks
    its convergence on the host (it falls back to float64 when it fails or does not support the dtype, as the
    reference does).  Complex parameters are refused, as in the reference.

    Args:
        betas: :math:`(\beta_1, \beta_2)`.
        shampoo_beta: decay of the Kronecker factors (None: :math:`\beta_2`).
        eps: :math:`\epsilon`.
        weight_decay: :math:`\lambda`, decoupled and applied after the step (0 disables it).
        precondition_frequency: steps between the refreshes of the bases.
        max_precondition_dim: dimensions larger than this are not preconditioned.
        merge_dims: merge small neighbouring dimensions before preconditioning.
        precondition_1d: precondition vectors too.
        correct_bias: Adam's bias correction (with the count :math:`s = t - 1`).
        normalize_gradient: divide the direction by its RMS.
        data_format: ``"channels_first"`` or ``"channels_last"``, the layout of 4-D tensors for ``merge_dims``.
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.SOAP(), tz.m.LR(3e-3))  # == pytorch_optimizer.SOAP(lr=3e-3)

    Reference: Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv:2409.11321, 2024.
    """

    keeps_state = True
    exact_state = frozenset({"GG*", "Q*"})  # kept in the compute dtype whatever state_dtype says
    counts_steps = True
    fuses_lr = True  # fused with the LR after it, the sink writes the step and the decay in one pass
    modifies_update_inplace = False  # emits new tensors through the sink
    full_matrices = True  # each tensor's whole step needs it whole (ctx.map_full under FSDP2), state owner-local
    schema = {
        "betas": BETAS,
        "shampoo_beta": Setting(optional(in_range(0, 1, closed="left")), "Use None (beta2) or e.g. 0.95."),
        "eps": EPS,
        "weight_decay": Setting(at_least(0), "Use e.g. 1e-2 (0 disables it)."),
        "precondition_frequency": Setting(integer(1), "Use e.g. 10 (steps between refreshes of the bases)."),
        "max_precondition_dim": Setting(integer(1), "Use e.g. 10000; larger dimensions are not preconditioned."),
        "merge_dims": FLAG, "precondition_1d": FLAG, "correct_bias": FLAG, "normalize_gradient": FLAG,
        "data_format": Setting(one_of(*_LAYOUTS), "Use 'channels_first' (NCHW) or 'channels_last' (NHWC)."),
        "alpha": ALPHA,
    }  # fmt: skip

    def __init__(
        self,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        precondition_frequency: int = 10,
        max_precondition_dim: int = 10000,
        merge_dims: bool = False,
        precondition_1d: bool = False,
        correct_bias: bool = True,
        normalize_gradient: bool = False,
        data_format: str = "channels_first",
        alpha: float = 1.0,
    ) -> None:
        super().__init__(
            {
                "betas": betas, "shampoo_beta": shampoo_beta, "eps": eps, "weight_decay": weight_decay,
                "precondition_frequency": precondition_frequency, "max_precondition_dim": max_precondition_dim,
                "merge_dims": merge_dims, "precondition_1d": precondition_1d, "correct_bias": correct_bias,
                "normalize_gradient": normalize_gradient, "data_format": data_format, "alpha": alpha,
            }
        )  # fmt: skip

    def step(self, ctx: StepContext) -> None:
        originals = ctx.layout.originals
        if any(originals[i].is_complex() for seg in ctx.segments(self) for i in range(seg.start, seg.stop)):
            raise TypeError("SOAP supports real parameters only (as pytorch_optimizer.SOAP); nothing was changed")
        # seg.scale is the learning rate of the LR after this rule, which the decay needs: fused with that LR the
        # rule applies it too (the sink writes the parameters in one pass), else the LR scales the update afterwards
        segs, fused = ctx.segments_with_lr(self)
        for seg in segs:
            self.apply(ctx, seg, fused)

    # ---------------------------------------------------------------- shapes
    @staticmethod
    def _merge(x: Tensor, s: dict[str, Any]) -> Tensor:
        """``x`` reshaped to its merged dimensions (channels moved to dimension 1 first for channels_last)."""
        if s["data_format"] == "channels_last" and x.ndim == 4:
            x = x.permute(0, 3, 1, 2)
        return x.reshape(merged_shape(x.shape, s["max_precondition_dim"]))

    def _sizes(self, g: Tensor, s: dict[str, Any]) -> list[int | None]:
        """The size of each (merged) dimension's factor, None where the dimension is not preconditioned."""
        limit = s["max_precondition_dim"]
        if g.ndim == 1:
            n = g.shape[0]
            return [n if s["precondition_1d"] and 0 < n <= limit else None]
        shape = list(g.shape)
        if s["merge_dims"]:
            if s["data_format"] == "channels_last" and g.ndim == 4:
                shape = [shape[0], shape[3], shape[1], shape[2]]
            shape = merged_shape(shape, limit)
        return [n if 0 < n <= limit else None for n in shape]

    def _factors(self, ctx: StepContext, index: int, sizes: list[int | None], like: Tensor) -> list[Any]:
        """``[(L_i, Q_i) or None]`` per dimension, the state of parameter ``index`` (created on first use)."""
        out: list[Any] = []
        for d, n in enumerate(sizes):
            if n is None:
                out.append(None)
                continue

            def square(v: Tensor, size: int = n) -> Tensor:  # a plain tensor also for a sharded v (owner-local)
                return torch.zeros((size, size), dtype=v.dtype, device=like.device)

            gg, q = (x[0] for x in ctx.state(self, f"GG{d}", f"Q{d}", init=square, start=index, stop=index + 1))
            out.append((gg, q))
        return out

    def _project(self, x: Tensor, factors: list[Any], s: dict[str, Any], forward: bool) -> Tensor:
        """Rotate ``x`` into the eigenbasis (``forward``) or back: one contraction with a basis per dimension."""
        shape = x.shape
        merge = s["merge_dims"]
        channels_last = merge and s["data_format"] == "channels_last" and x.ndim == 4
        if merge:
            x = self._merge(x, s)
        for f in factors:
            if f is None:
                x = x.permute(*range(1, x.ndim), 0)  # this dimension stays, moved last like a contracted one
            else:
                x = torch.tensordot(x, f[1], dims=([0], [0 if forward else 1]))
        if channels_last:
            return x.reshape(shape[0], shape[3], shape[1], shape[2]).permute(0, 2, 3, 1)
        return x.reshape(shape) if merge else x

    # ---------------------------------------------------------------- the preconditioner
    def _accumulate(self, g: Tensor, factors: list[Any], s: dict[str, Any], weight: float) -> None:
        """``L_i <- lerp(L_i, G_(i) G_(i)^T, 1 - shampoo_beta)`` for every preconditioned dimension."""
        if g.ndim == 1:
            if factors[0] is not None:
                factors[0][0].lerp_(g.unsqueeze(1) @ g.unsqueeze(0), weight=weight)
            return
        x = self._merge(g, s) if s["merge_dims"] else g
        for d, f in enumerate(factors):
            if f is not None:
                others = [j for j in range(x.ndim) if j != d]
                f[0].lerp_(torch.tensordot(x, x, dims=(others, others)), weight=weight)

    @staticmethod
    def _eigenbasis(gg: Tensor) -> Tensor:
        """Eigenvectors of ``gg`` in decreasing eigenvalue order (float64 where eigh fails or lacks the dtype)."""
        n = gg.shape[0]
        try:
            _, q = torch.linalg.eigh(gg + 1e-30 * torch.eye(n, device=gg.device, dtype=gg.dtype))
        except RuntimeError:
            wide = gg.to(torch.float64) + 1e-30 * torch.eye(n, device=gg.device, dtype=torch.float64)
            q = torch.linalg.eigh(wide)[1].to(gg.dtype)
        return torch.flip(q, dims=[1])

    def _refresh(self, factors: list[Any], exp_avg_sq: Tensor, s: dict[str, Any]) -> None:
        """One power iteration and QR per basis; the second moment is permuted like the basis' columns."""
        if all(f is None for f in factors):
            return  # Adam in the parameter's own basis: nothing to refresh
        v = self._merge(exp_avg_sq, s) if s["merge_dims"] else exp_avg_sq
        for d, f in enumerate(factors):
            if f is None:
                continue
            gg, q = f
            product = gg @ q
            estimate = (q * product).sum(dim=0)
            order = torch.argsort(estimate, descending=True)
            v = v.index_select(d, order)
            power = product.index_select(1, order)
            q.copy_(torch.linalg.qr(power.to(torch.float32))[0].to(power.dtype))
        if s["merge_dims"]:
            shape = exp_avg_sq.shape
            if s["data_format"] == "channels_last" and exp_avg_sq.ndim == 4:
                v = v.reshape(shape[0], shape[3], shape[1], shape[2]).permute(0, 2, 3, 1)
            else:
                v = v.reshape(shape)
        exp_avg_sq.copy_(v)

    # ---------------------------------------------------------------- the step
    def apply(self, ctx: StepContext, seg: Segment, fused: bool = False) -> None:
        s = seg.settings
        beta1, beta2 = s["betas"]
        t = seg.step
        k = t - 1
        # whole tensors also for FSDP2 shards: each tensor's whole step runs on one owner rank, which keeps all of
        # its state (moments, factors, bases); the direction's shards are scattered back
        direction = ctx.map_full(self, seg.update, lambda j, g: self._direction(ctx, seg.start + j, g, s, t))
        if t == 1:
            seg.emit(direction, 0.0)  # the first step only starts the preconditioner (the parameters stay)
            return

        alpha, wd = s["alpha"], s["weight_decay"]
        step_size: Any = alpha
        if s["correct_bias"]:
            step_size = alpha * (math.sqrt(1 - beta2**k) / (1 - beta1**k))
        decay: Any = 0.0
        if wd != 0:
            step_size = step_size * (1 - wd * alpha * seg.scale)  # the decay multiplies the stepped parameters
            decay = wd * alpha  # LR multiplies it by the learning rate
        if fused:
            step_size = step_size * seg.scale
            decay = decay * seg.scale if wd != 0 else 0.0
        seg.emit(direction, step_size, decay=decay)

    def _direction(self, ctx: StepContext, index: int, g: Tensor, s: dict[str, Any], t: int) -> Tensor:
        """The whole tensor ``index``'s direction :math:`D` (zeros at the first step), its state updated."""
        beta1, beta2 = s["betas"]
        shampoo = 1.0 - (beta2 if s["shampoo_beta"] is None else s["shampoo_beta"])

        def zeros(v: Tensor) -> Tensor:  # g's shape on g's device, also for a sharded parameter v (owner-local)
            return torch.zeros_like(g, dtype=v.dtype, memory_format=torch.preserve_format)

        exp_avg, exp_avg_sq = (
            x[0] for x in ctx.state(self, "exp_avg", "exp_avg_sq", init=zeros, start=index, stop=index + 1)
        )
        factors = self._factors(ctx, index, self._sizes(g, s), g)

        if t == 1:
            # the first step only starts the preconditioner: L_i from this gradient, Q_i its eigenvectors
            self._accumulate(g, factors, s, shampoo)
            for f in factors:
                if f is not None:
                    f[1].copy_(self._eigenbasis(f[0]))
            return torch.zeros_like(g)

        k = t - 1
        rotated = self._project(g, factors, s, True)
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.lerp_(rotated * rotated, 1 - beta2)
        denom = exp_avg_sq.sqrt().add_(s["eps"])
        ratio = self._project(exp_avg, factors, s, True) / denom
        direction = self._project(ratio, factors, s, False)
        if s["normalize_gradient"]:
            direction = direction / direction.square().mean().sqrt().add(s["eps"])

        # the preconditioner sees this gradient after the step; the bases are refreshed every few steps
        self._accumulate(g, factors, s, shampoo)
        if k % s["precondition_frequency"] == 0:
            self._refresh(factors, exp_avg_sq, s)
        return direction
