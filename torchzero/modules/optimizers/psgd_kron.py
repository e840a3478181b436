"""PSGD Kron (Li, 2015/2018): a Kronecker-factored preconditioner fitted online, as ``kron_torch.Kron`` 0.3.3."""

from __future__ import annotations

import math
import random
import string
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ...core.module import Transform
from ...core.schema import ALPHA, FLAG, Satisfies, Setting, at_least, dtype_name, in_range, integer, one_of, optional
from ...foreach import ops, shard

if TYPE_CHECKING:
    from ...core.context import Segment, StepContext

_LETTERS = string.ascii_lowercase + string.ascii_uppercase
MEMORY_SAVE_MODES = (None, "smart_one_diag", "one_diag", "all_diag")


def kron_update_probability(
    max_prob: float = 1.0, min_prob: float = 0.03, decay: float = 0.001, flat_start: float = 500
) -> Callable[[Tensor], Tensor]:
    r"""The default schedule of the preconditioner update probability (kron_torch's
    ``precond_update_prob_schedule``): :math:`p(n) = \mathrm{clamp}(p_{\max} e^{-d (n - n_0)}, p_{\min}, p_{\max})`,
    evaluated in float32 on the CPU for the 0-based step :math:`n` (a float32 tensor)."""
    hi, lo = torch.tensor(max_prob, dtype=torch.float32), torch.tensor(min_prob, dtype=torch.float32)
    rate, start = torch.tensor(decay, dtype=torch.float32), torch.tensor(flat_start, dtype=torch.float32)

    def schedule(n: Tensor) -> Tensor:
        return (hi * torch.exp(-rate * (n - start))).clamp_(min=lo, max=hi)

    return schedule


_DEFAULT_SCHEDULE = kron_update_probability()


def _merged_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """kron_torch's ``merge_dims``: a tensor of three or more dimensions as the matrix ``(prod(lead), last)`` or
    ``(first, prod(rest))``, whichever has the smaller (signed) ``columns - rows``."""
    rows_first, cols_last = math.prod(shape[:-1]), shape[-1]
    first, rest = shape[0], math.prod(shape[1:])
    return (rows_first, cols_last) if cols_last - rows_first <= rest - first else (first, rest)


def _diagonal_dims(shape: tuple[int, ...], s: dict[str, Any]) -> list[bool]:
    """Which dimensions get a diagonal factor (the others a triangular one)."""
    n, mode = len(shape), s["memory_save_mode"]
    forced = [False] * n
    if n:
        # the largest dimension; among equal sizes the last one (numpy's argsort reversed, as kron_torch)
        largest = max(range(n), key=lambda i: (shape[i], i))
        ordered = sorted(shape)
        if mode == "all_diag":
            forced = [True] * n
        elif mode == "one_diag" or (mode == "smart_one_diag" and n > 1 and ordered[-1] > ordered[-2]):
            forced[largest] = True
    return [
        forced[i] or size == 1 or size > s["max_size_triangular"] or n < s["min_ndim_triangular"]
        for i, size in enumerate(shape)
    ]


def _expressions(diagonal: list[bool]) -> tuple[str, list[str], str]:
    """einsum subscripts of ``Q G`` (A), of the per-factor gradient statistics and of ``Q^T Q G`` (the step).

    Dimension ``i`` is named ``a_i`` (rows of its factor), ``b_i`` (columns) and ``c_i`` (a second column index);
    a diagonal factor is a vector indexed by ``a_i`` in A and by ``b_i`` in the step.  The subscripts are the ones
    kron_torch builds, in the same operand order, so that einsum contracts in the same order.
    """
    n = len(diagonal)
    a = [_LETTERS[i] for i in range(n)]
    b = [_LETTERS[i + 13] for i in range(n)]
    c = [_LETTERS[i + 26] for i in range(n)]
    q_a = [a[i] if d else a[i] + b[i] for i, d in enumerate(diagonal)]
    g_a = "".join(a[i] if d else b[i] for i, d in enumerate(diagonal))
    expr_a = ",".join(q_a) + "," + g_a + "->" + "".join(a)
    expr_g = []
    for i, d in enumerate(diagonal):
        left = "".join(b[i] if j == i else a[j] for j in range(n))
        if d:
            expr_g.append(f"{left},{left}->{b[i]}")
        else:
            right = "".join(c[i] if j == i else a[j] for j in range(n))
            expr_g.append(f"{left},{right}->{b[i]}{c[i]}")
    q1 = [b[i] if d else a[i] + b[i] for i, d in enumerate(diagonal)]
    q2 = [b[i] if d else a[i] + c[i] for i, d in enumerate(diagonal)]
    g_p = "".join(b[i] if d else c[i] for i, d in enumerate(diagonal))
    expr_p = ",".join(q1) + "," + ",".join(q2) + "," + g_p + "->" + "".join(b)
    return expr_a, expr_g, expr_p


def _spectral_lower_bound(m: Tensor, max_abs: Tensor) -> Tensor:
    """A cheap lower bound of ``||m||_2`` (one power iteration from the largest column), ``m`` scaled in place."""
    m /= max_abs
    column = torch.argmax(torch.einsum("ij,ij->j", m, m))
    x = torch.index_select(m, 1, column).flatten().contiguous()
    x = torch.einsum("i,ij->j", x, m)
    x /= x.norm()
    x = torch.einsum("j,kj->k", x, m).norm()
    return x * max_abs


def _right_solve(x: Tensor, q: Tensor) -> Tensor:
    """``x @ inv(q)`` for upper-triangular ``q`` over the last dimension, in float32 (as kron_torch)."""
    flat = x.reshape(-1, x.size(-1)).float()
    solved = torch.linalg.solve_triangular(q.float(), flat, upper=True, left=False, unitriangular=False)
    return solved.to(q.dtype).reshape_as(x)


def _noise(g: Tensor, seed: int | None) -> Tensor:
    """kron_torch's ``randn_like(g)`` from torch's global generator (``seed`` None), or from a generator seeded
    with ``seed`` (a hash of the module's seed, the update step and the tensor's index)."""
    if seed is None:
        return torch.randn_like(g)
    gen = torch.Generator(device=g.device)
    gen.manual_seed(seed)
    return torch.randn(g.shape, generator=gen, dtype=g.dtype, device=g.device)


def _fit(
    qs: list[Tensor], exprs: tuple[str, list[str], str], g: Tensor, lr: Tensor, tiny: Tensor, seed: int | None
) -> None:
    """One step of the preconditioner fit on the pair (v, g + noise), ``g`` perturbed in place."""
    order = g.dim()
    v = _noise(g, seed)
    eps = torch.tensor(torch.finfo(torch.float32).eps, dtype=g.dtype, device=g.device)
    g += eps.sqrt() * g.abs().mean() * v
    conj = v.permute(*range(1, order), 0)
    for i, q in enumerate(qs):
        conj = conj / q if q.dim() < 2 else _right_solve(conj, q)
        if i < order - 1:
            conj = torch.transpose(conj, i, order - 1)
    a = torch.einsum(exprs[0], *qs, g)
    for q, expr in zip(qs, exprs[1], strict=True):
        aa = torch.einsum(expr, a, a)
        bb = torch.einsum(expr, conj, conj)
        delta, total = aa - bb, aa + bb
        delta *= lr
        norm = total.norm(float("inf"))
        if q.dim() < 2:
            delta *= q / norm.clamp_(min=tiny)
        else:
            torch.triu(delta, out=delta)
            delta /= torch.where(norm > 0, _spectral_lower_bound(total, norm), norm).clamp_(min=tiny)
            delta = torch.mm(delta, q)
        q.sub_(delta)


def _balance(qs: list[Tensor]) -> None:
    """Rescale the factors to the geometric mean of their max-abs values (their product is unchanged)."""
    norms = torch.stack([q.norm(float("inf")) for q in qs])
    factors = norms.log().mean().exp() / norms
    torch._foreach_mul_(qs, list(factors))


def _state_init(
    shape: tuple[int, ...],
    diagonal: list[bool],
    scale: float,
    mu_dtype: torch.dtype | None,
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, Callable[[Tensor], Tensor]]:
    """How to create a tensor's momentum (its merged shape) and factors ``Q0``, ``Q1``, ... (``scale`` times the
    identity, or a vector of ``scale`` for a diagonal factor)."""

    def factor(k: int) -> Callable[[Tensor], Tensor]:
        def make(v: Tensor) -> Tensor:
            if diagonal[k]:
                return scale * torch.ones(shape[k], dtype=dtype, device=device)
            return scale * torch.eye(shape[k], dtype=dtype, device=device)

        return make

    inits: dict[str, Callable[[Tensor], Tensor]] = {f"Q{k}": factor(k) for k in range(len(shape))}
    # plain tensors on ``device`` (the whole tensor's), also for a sharded parameter ``v``
    inits["momentum_buffer"] = lambda v: torch.zeros(shape, dtype=mu_dtype or v.dtype, device=device)
    return inits


class PSGDKron(Transform):
    r"""PSGD with a Kronecker-factored preconditioner (``kron_torch.Kron`` 0.3.3), the lr left to :class:`LR`.

    Each parameter (a tensor of 3+ dimensions first merged into a matrix, ``merge_dims``) keeps a momentum
    :math:`m_t = \beta m_{t-1} + (1-\beta) g_t`, its debiased value :math:`\hat m_t = m_t / (1-\beta^t)` and one
    factor :math:`Q_i` per dimension, the preconditioner being :math:`P = Q^T Q` with
    :math:`Q = Q_1 \otimes \dots \otimes Q_k`.  A factor is upper triangular (initialised to
    :math:`s^{1/k} I`) or diagonal (a vector, :math:`s^{1/k}\mathbf 1`): diagonal for dimensions of size 1,
    larger than ``max_size_triangular``, for tensors of fewer than ``min_ndim_triangular`` dimensions (so 1-D
    parameters are diagonal by default) or as ``memory_save_mode`` asks.  On update steps, with
    :math:`v \sim \mathcal N(0, I)` and :math:`h = \hat m_t + \sqrt{\epsilon_{32}}\,\mathrm{mean}|\hat m_t|\, v`
    (:math:`h` replaces :math:`\hat m_t` in the step below; :math:`g_t` replaces both in :math:`h` without
    ``momentum_into_precond_update``),
    :math:`A = Q h` and :math:`B = Q^{-T} v` (per dimension), each factor moves by

    .. math::
        Q_i \leftarrow Q_i - \frac{\eta_p}{\|A A^T_i + B B^T_i\|}\,\mathrm{triu}\big(A A^T_i - B B^T_i\big) Q_i

    (the contraction over every other dimension; the norm is a lower bound of the spectral norm, or the max-abs
    value for a diagonal factor, whose update is elementwise).  The rule then hands on

    .. math::
        u = \alpha\,\big(c\, P \hat m_t + \lambda\, \theta\,[\theta \text{ has 2+ dims}]\big), \qquad
        c = \min\!\big(1,\ 1.1 / (\mathrm{RMS}(P \hat m_t) + 10^{-12})\big),

    so ``tz.Modular(p, tz.m.PSGDKron(), tz.m.LR(3e-4))`` equals ``kron_torch.Kron(p, lr=3e-4)``; kron_torch's
    ``weight_decay`` (added after the clipping, to matrices only) is the ``weight_decay`` of this rule.

    The preconditioner is updated on a step when a counter reaches ``1 / p`` (``p`` the update probability
    of the first param group, a number or a schedule of the 0-based step, by default
    :func:`kron_update_probability`: 1 for 500 steps, then decaying to 0.03); on about 1% of those steps,
    drawn from a ``random.Random(42)`` of the module, the factors of each matrix are balanced.  Both decisions
    are made on the host: a schedule is evaluated on CPU float32 tensors and read back (the only host read, on
    the CPU, never of a device tensor).  The noise :math:`v` is drawn from torch's global generator, one
    ``randn_like`` per tensor and update in parameter order, as kron_torch does (seed torch to reproduce a
    run); with ``seed`` set, each draw has its own generator seeded from ``seed``, the step and the tensor's
    index instead, so a run is reproducible by itself, survives a state_dict round trip and leaves torch's
    generator alone.  The factors are kept in ``precond_dtype`` (float32 by default, also for float64 parameters), the
    triangular solves run in float32 and the momentum in ``mu_dtype`` (the parameter's dtype by default), all as
    kron_torch.  Complex parameters are refused.

    Args:
        beta: the momentum :math:`\beta` (kron_torch's ``b1``).
        weight_decay: :math:`\lambda`, added to the step of parameters of two or more dimensions.
        preconditioner_update_probability: a probability, a callable of the step (a float32 tensor) giving it,
            or None for :func:`kron_update_probability`.
        max_size_triangular: dimensions larger than this get a diagonal factor.
        min_ndim_triangular: tensors with fewer dimensions (after merging) get diagonal factors only.
        memory_save_mode: None, ``"smart_one_diag"`` (the largest dimension diagonal if it is strictly the
            largest), ``"one_diag"`` (the largest dimension diagonal) or ``"all_diag"``.
        momentum_into_precond_update: fit the preconditioner on the debiased momentum (else on the gradient).
        precond_lr: :math:`\eta_p`.
        precond_init_scale: :math:`s`.
        merge_dims: merge tensors of three or more dimensions into matrices.
        mu_dtype: dtype of the momentum (None: the parameter's).
        precond_dtype: dtype of the factors (None: float32).
        seed: None draws the noise from torch's global generator (kron_torch); an integer seeds a generator per
            draw.
        alpha: step size multiplier (use :class:`LR` for the learning rate).

    Example::

        opt = tz.Modular(model.parameters(), tz.m.PSGDKron(), tz.m.LR(3e-4))  # == kron_torch.Kron(lr=3e-4)

    The equality is with kron_torch's helpers run eagerly (it wraps them in ``torch.compile``, whose fused
    kernels round differently and draw from another generator).  A 0-dim parameter, which kron_torch cannot
    step, is a 1-element vector here.

    Reference: Li, "Preconditioned Stochastic Gradient Descent", IEEE TNNLS 2018 (arXiv:1512.04202); Li,
    "Black box Lie group preconditioners for SGD", 2022; https://github.com/evanatyourservice/kron_torch
    """

    keeps_state = True
    counts_steps = True
    fuses_lr = True  # fused with the LR after it, the sink writes the parameters in one pass
    modifies_update_inplace = False  # hands on new tensors
    full_matrices = True  # the Kronecker factors need whole tensors (ctx.map_full under FSDP2)
    schema = {
        "beta": Setting(in_range(0, 1, closed="left"), "Use e.g. 0.9."),
        "weight_decay": Setting(at_least(0), "Use 0 or a small value such as 1e-4."),
        "preconditioner_update_probability": Setting(
            Satisfies(
                lambda v: (
                    v is None or callable(v) or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1)
                ),
                "{name} a probability in (0, 1], a callable of the step, or None",
            ),
            "Use e.g. 0.1, or None for the default schedule.",
        ),
        "max_size_triangular": Setting(integer(0), "Use e.g. 8192."),
        "min_ndim_triangular": Setting(integer(0), "Use e.g. 2."),
        "memory_save_mode": Setting(one_of(*MEMORY_SAVE_MODES)),
        "momentum_into_precond_update": FLAG,
        "precond_lr": Setting(at_least(0), "Use e.g. 0.1."),
        "precond_init_scale": Setting(at_least(0), "Use e.g. 1.0."),
        "merge_dims": FLAG,
        "mu_dtype": Setting(dtype_name()),
        "precond_dtype": Setting(dtype_name()),
        "seed": Setting(optional(integer(0)), "Use None (torch's global generator, as kron_torch) or e.g. 0."),
        "alpha": ALPHA,
    }

    def __init__(
        self,
        beta: float = 0.9,
        weight_decay: float = 0.0,
        preconditioner_update_probability: float | Callable[[Tensor], Tensor] | None = None,
        max_size_triangular: int = 8192,
        min_ndim_triangular: int = 2,
        memory_save_mode: str | None = None,
        momentum_into_precond_update: bool = True,
        precond_lr: float = 0.1,
        precond_init_scale: float = 1.0,
        merge_dims: bool = True,
        mu_dtype: str | torch.dtype | None = None,
        precond_dtype: str | torch.dtype | None = None,
        seed: int | None = None,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(
            {
                "beta": beta,
                "weight_decay": weight_decay,
                "preconditioner_update_probability": preconditioner_update_probability,
                "max_size_triangular": max_size_triangular,
                "min_ndim_triangular": min_ndim_triangular,
                "memory_save_mode": memory_save_mode,
                "momentum_into_precond_update": momentum_into_precond_update,
                "precond_lr": precond_lr,
                "precond_init_scale": precond_init_scale,
                "merge_dims": merge_dims,
                "mu_dtype": mu_dtype,
                "precond_dtype": precond_dtype,
                "seed": seed,
                "alpha": alpha,
            }
        )
        self._rng: random.Random | None = None
        self._rng_draws = 0

    # ---------------------------------------------------------------- the step-wide decisions (on the host)
    def _balance_draw(self, ctx: StepContext) -> float:
        """The next number of the module's ``random.Random(42)``; its position is global state (a count)."""
        draws = int(self.global_state.get("rng_draws", 0))
        if self._rng is None or self._rng_draws != draws:
            self._rng = random.Random(42)
            for _ in range(draws):
                self._rng.random()
        value = self._rng.random()
        self._rng_draws = draws + 1
        ctx.set_global_state_at_end(self, "rng_draws", draws + 1)
        return value

    def _decide(self, ctx: StepContext, settings: dict[str, Any]) -> tuple[bool, bool, int]:
        prob_step = int(self.global_state.get("prob_step", 0))
        counter = int(self.global_state.get("update_counter", 0)) + 1
        prob = settings["preconditioner_update_probability"]
        if prob is None:
            prob = _DEFAULT_SCHEDULE
        if callable(prob):
            p = prob(torch.tensor(float(prob_step), dtype=torch.float32))
            threshold = float((1 / p).item()) if isinstance(p, Tensor) else float(np.float32(1 / p))
        else:
            threshold = float(np.float32(1 / prob))  # kron_torch compares an int32 tensor to 1/p in float32
        do_update = counter >= threshold
        ctx.set_global_state_at_end(self, "update_counter", 0 if do_update else counter)
        ctx.set_global_state_at_end(self, "prob_step", prob_step + 1)
        balance = self._balance_draw(ctx) < 0.01 and do_update
        return do_update, balance, prob_step

    def step(self, ctx: StepContext) -> None:
        segs = ctx.segments(self)
        originals = ctx.layout.originals
        if any(originals[i].is_complex() for seg in segs for i in range(seg.start, seg.stop)):
            raise TypeError("PSGDKron supports real parameters only (as kron_torch.Kron); nothing was changed")
        do_update, balance, step = self._decide(ctx, segs[0].settings if segs else dict(self.defaults))
        drawn = 0  # tensors with elements before this one (the index in the seeded noise)
        for seg in segs:
            drawn = self._apply(ctx, seg, do_update, balance, step, drawn)

    # ---------------------------------------------------------------- per tensor
    def _apply(self, ctx: StepContext, seg: Segment, do_update: bool, balance: bool, step: int, drawn: int) -> int:
        s = seg.settings
        beta, t = s["beta"], seg.step
        mu_dtype = None if s["mu_dtype"] is None else getattr(torch, s["mu_dtype"])
        precond_dtype = torch.float32 if s["precond_dtype"] is None else getattr(torch, s["precond_dtype"])
        # the index of each tensor in the seeded noise: tensors with elements before it, over all segments
        first_draw = []
        for g in seg.update:
            first_draw.append(drawn)
            drawn += g.numel() > 0

        def precondition(i: int, g: Tensor) -> Tensor:
            """One whole tensor (also for an FSDP2 shard: on its owner rank, which keeps its state)."""
            shape = tuple(g.shape)
            if g.dim() > 2 and s["merge_dims"]:
                shape = _merged_shape(shape)
            elif not shape:
                shape = (1,)  # kron_torch fails on 0-dim tensors (a permute); a scalar is a 1-element vector here
            diagonal = _diagonal_dims(shape, s)
            scale = s["precond_init_scale"] ** (1 / len(shape))
            names = ["momentum_buffer"] + [f"Q{k}" for k in range(len(shape))]
            inits = _state_init(shape, diagonal, scale, mu_dtype, precond_dtype, g.device)
            held = ctx.state(self, *names, init=inits, start=seg.start + i, stop=seg.start + i + 1)
            buf, qs = held[0][0], [x[0] for x in held[1:]]
            # torch's load_state_dict casts floating state to the parameter's dtype: cast back (lossless)
            if mu_dtype is not None and buf.dtype != mu_dtype:
                buf = buf.to(mu_dtype)
                ctx.set_state(self, "momentum_buffer", [buf], start=seg.start + i)
            for k, q in enumerate(qs):
                if q.dtype != precond_dtype:
                    qs[k] = q.to(precond_dtype)
                    ctx.set_state(self, f"Q{k}", [qs[k]], start=seg.start + i)
            if g.numel() == 0:
                return torch.zeros_like(g)
            grad = g.reshape(shape)
            buf.mul_(beta).add_(grad, alpha=1 - beta)
            m = (buf / (1 - beta**t)).to(precond_dtype)
            if grad.dim() > 1 and balance:
                _balance(qs)
            exprs = _expressions(diagonal)
            if do_update:
                fit_on = m if s["momentum_into_precond_update"] else grad.to(precond_dtype, copy=True)
                lr = torch.tensor(s["precond_lr"], dtype=precond_dtype, device=g.device)
                tiny = torch.tensor(torch.finfo(precond_dtype).tiny, dtype=precond_dtype, device=g.device)
                seed = None if s["seed"] is None else hash((s["seed"], step, first_draw[i])) & (2**63 - 1)
                _fit(qs, exprs, fit_on, lr, tiny, seed)
            d = torch.einsum(exprs[2], *qs, *qs, m)
            one = torch.tensor(1.0, dtype=d.dtype, device=d.device)
            d.mul_(torch.minimum(one, 1.1 / d.square().mean().sqrt().add(1e-12)))
            d = d.view(g.shape)
            p = seg.params[i]
            if s["weight_decay"] != 0 and p.dim() >= 2 and not shard.is_dtensor(p):
                d.add_(p.detach(), alpha=s["weight_decay"])  # in the preconditioner's dtype, as kron_torch
            return d.to(g.dtype)

        out = ctx.map_full(self, seg.update, precondition)
        if s["weight_decay"] != 0:  # an FSDP2 shard's decay: elementwise, on the shard, in the parameter's dtype
            decayed = [i for i, p in enumerate(seg.params) if p.dim() >= 2 and shard.is_dtensor(p)]
            ops.add_([out[i] for i in decayed], [seg.params[i].detach() for i in decayed], alpha=s["weight_decay"])
        seg.emit(out, s["alpha"] * seg.scale)
        return drawn
