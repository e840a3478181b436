"""The write sink: the one place where parameters are written and updates are handed on.

Modules compute directions and give them to the sink through their segment (:meth:`Segment.emit`,
:meth:`Segment.emit_div`, :meth:`Segment.emit_mul`, :meth:`Segment.emit_kernel`, :meth:`Segment.emit_move`) or,
for whole-vector
modules, through the context (:meth:`StepContext.keep_trial_point`, :meth:`StepContext.external_step`).
Whether the running stage is the last one of the chain is the core's business, not the module's:

* the **last** stage's emission is subtracted from the parameters in the same pass (the fused ``LR`` included),
  with the arithmetic of torch's own optimizers (``addcdiv_``, ``add_(alpha=-lr)``, ``mul_(1 - lr * wd)``);
* any **other** stage's emission becomes the update handed to the next module.

The sink never writes into the gradient: while the update still *is* ``.grad`` (the chain starts with it, to
save a copy), it is copied before anything is written into it (copy on write, also for modules that change the
update in place, see :meth:`StepContext.own_update`).  It writes into the incoming update only for a module
that declares ``modifies_update_inplace`` (``LR``, ``WeightDecay``: a scaling in place saves an allocation);
for the others it hands on new tensors, so their incoming update stays as it was.  After a step ``.grad`` holds what backward left, as with
torch.optim.

An emission is a sum of *terms*, each subtracted from the parameters (last stage) or added into the update:
``("add", x, s)`` is ``s * x``, ``("div", n, d, s)`` is ``s * n / d`` and ``("mul", a, b, s)`` is ``s * a * b``;
``decay`` adds ``decay * theta`` (as ``theta <- theta (1 - decay)`` when the parameters are written).  A scale or
decay may be a 0-dim tensor (a tensor lr): it never leaves the device.

Parameters of a group with ``param_update="kahan"`` or ``"stochastic_rounding"`` (see :mod:`torchzero.core.precision`)
are written by :func:`compensated_sub` instead: the step is built first (the same terms), then subtracted with Kahan
summation or stochastic rounding (:mod:`torchzero.foreach.rounding`).  Every write path goes through it: a fused
kernel writes its step into a zero buffer first, a line search that would keep its last trial point hands on its
step instead (:meth:`StepContext.keep_trial_point`), and the core's final write takes it per run; a wrapped torch
optimizer, which writes the parameters itself, is refused (``Module.writes_params``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..foreach import ops, rounding
from . import precision

if TYPE_CHECKING:
    from .context import Segment, StepContext

Term = tuple[Any, ...]


def is_one(x: Any) -> bool:
    """True for the number 1 (a tensor is never compared on the host: that would sync with the device)."""
    return not isinstance(x, Tensor) and x == 1


def same_tensors(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    """True when two lists hold the same tensor objects."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def write(seg: Segment, terms: Sequence[Term], decay: Any = 0.0, scratch: Sequence[Tensor] | None = None) -> None:
    """Emit ``sum(terms) + decay * theta`` for ``seg``: into the parameters (last stage) or as the update.

    ``scratch`` is a list of fresh tensors the module no longer needs (the denominator of a single "div" term),
    which the update may be built in instead of a new allocation.
    """
    ctx = seg.ctx
    if ctx.opt.update_rms and not seg.module.modifies_update_inplace:
        report_rms(seg, _term_norms(terms))  # before the terms' tensors are reused as the update
    if not ctx.is_last:
        seg.update = _as_update(seg, terms, decay, scratch)
        return
    if seg.precision.param_update != "plain":
        compensated_sub(ctx, seg.start, seg.stop, _as_update(seg, terms, decay, scratch), seg.precision.param_update)
        ctx.params_written = True
        return
    params = seg.params
    if any(isinstance(t[-1], Tensor) for t in terms):
        # foreach addcdiv/addcmul/add take Python numbers as their scale: build the update, then subtract
        ops.sub_(params, _as_update(seg, terms, decay, scratch))
    else:
        if isinstance(decay, Tensor):  # a 0-dim tensor factor stays on the device (foreach mul_ takes one)
            ops.mul_(params, 1 - decay.to(params[0].device, params[0].dtype))
        elif decay != 0:
            ops.mul_(params, 1 - decay)
        for term in terms:
            kind, s = term[0], term[-1]
            if kind == "add":
                ops.add_(params, list(term[1]), alpha=-s)
            elif kind == "div":
                ops.addcdiv_(params, list(term[1]), _den_read(term[2]), -s)
            else:
                ops.addcmul_(params, list(term[1]), list(term[2]), -s)
    ctx.params_written = True


def _norm_dtype(xs: Sequence[Tensor]) -> torch.dtype | None:
    """float32 norms of half-precision tensors (a bf16 norm keeps ~3 digits), else the tensors' own dtype."""
    return torch.float32 if xs and xs[0].dtype in (torch.float16, torch.bfloat16) else None


def _term_norms(terms: Sequence[Term]) -> list[Tensor]:
    """Per-tensor Euclidean norms of ``sum(terms)`` (made in new tensors: the module's own are left as they are)."""
    if len(terms) == 1 and terms[0][0] == "add":
        x = list(terms[0][1])
        norms = ops.norm(x, 2, dtype=_norm_dtype(x))
        s = terms[0][-1]
        if not is_one(s):
            norms = ops.mul(norms, s.abs() if isinstance(s, Tensor) else abs(s))
        return norms
    total: list[Tensor] | None = None
    for term in terms:
        kind, s = term[0], term[-1]
        x = ops.clone(list(term[1])) if kind == "add" else _BINARY[kind][1](list(term[1]), list(term[2]))
        if not is_one(s):
            ops.mul_(x, s)
        if total is None:
            total = x
        else:
            ops.add_(total, x)
    assert total is not None
    return ops.norm(total, 2, dtype=_norm_dtype(total))


def report_rms(seg: Segment, norms: Sequence[Tensor]) -> None:
    """Report ``update_rms`` per param group of ``seg``: the root mean square of what the module emitted, without
    the learning rate of a fused ``LR`` (``tz.Modular(..., update_rms=True)``; 0-dim tensors, no host sync)."""
    params = seg.params
    scale = seg.scale
    for group, a, b in seg.group_slices():
        numel = sum(p.numel() for p in params[a:b])
        if numel == 0:
            continue
        rms = torch.stack(list(norms[a:b])).square().sum().div(numel).sqrt()
        if isinstance(scale, Tensor):
            rms = rms / scale.abs().to(rms.device)
        elif scale == 0:  # lr = 0 scaled the direction away: it is not known
            rms = torch.full_like(rms, float("nan"))
        elif scale != 1:
            rms = rms / abs(scale)
        seg.ctx.report_segment(seg, group, "update_rms", rms)


def _den_read(den: Sequence[Tensor]) -> list[Tensor]:
    # differentiable mode: autograd keeps the divisor of div/addcdiv for the backward pass, and ``den`` may be
    # state that the next step changes in place (Adamax's exp_inf)
    return ops.clone(den) if torch.is_grad_enabled() else list(den)


def _as_update(seg: Segment, terms: Sequence[Term], decay: Any, scratch: Sequence[Tensor] | None) -> list[Tensor]:
    """The update ``sum(terms) + decay * theta``, built in the incoming update when the chain owns it."""
    update = seg.update
    # the update is written in place only when the module declares that it changes it and the chain owns it
    owned = seg.module.modifies_update_inplace and seg.ctx.owns(update, seg.start)
    first, rest = terms[0], terms[1:]
    kind, s = first[0], first[-1]
    decays = isinstance(decay, Tensor) or decay != 0
    if kind == "add":
        x = list(first[1])
        if same_tensors(x, update) and (owned or (is_one(s) and not rest and not decays)):
            out = update  # handed on as it is, or scaled in place when the chain owns it
        elif owned:
            ops.copy_(update, x)
            out = update
        else:
            out = ops.clone(x)
        if not is_one(s):
            ops.mul_(out, s)
    elif kind == "div":
        num, den = list(first[1]), _den_read(first[2])
        if scratch is not None and not rest:
            out = list(scratch)  # s * num / den built in the (fresh) denominator's buffers
            ops.reciprocal_(out)
            ops.mul_(out, num)
            ops.mul_(out, s)
        elif same_tensors(num, update) or isinstance(s, Tensor):
            out = _binary(update, owned, "div", num, den)
            if not is_one(s):
                ops.mul_(out, s)
        else:
            if owned:
                out = update
                ops.zero_(out)
            else:
                out = ops.zeros_like(num)
            ops.addcdiv_(out, num, den, s)
    else:  # "mul"
        out = _binary(update, owned, "mul", list(first[1]), list(first[2]))
        if not is_one(s):
            ops.mul_(out, s)
    for term in rest:
        kind, s = term[0], term[-1]
        if kind == "add":
            _add(out, list(term[1]), s)
            continue
        a, b = list(term[1]), (_den_read(term[2]) if kind == "div" else list(term[2]))
        if isinstance(s, Tensor):  # foreach addcdiv/addcmul take Python numbers only
            q = _BINARY[kind][1](a, b)
            ops.mul_(q, s)
            ops.add_(out, q)
        else:
            _BINARY[kind][2](out, a, b, s)
    if decays:
        _add(out, seg.params, decay)
    return out


_BINARY = {"div": (ops.div_, ops.div, ops.addcdiv_), "mul": (ops.mul_, ops.mul, ops.addcmul_)}
"""per binary term kind: the in-place op, the out-of-place op and the fused multiply-add"""


def _binary(update: list[Tensor], owned: bool, kind: str, a: list[Tensor], b: list[Tensor]) -> list[Tensor]:
    """``a (op) b``, in the update's tensors when the chain owns them, else in new ones."""
    inplace, outofplace, _ = _BINARY[kind]
    if not owned:
        return outofplace(a, b)
    if not same_tensors(a, update):
        ops.copy_(update, a)
    inplace(update, b)
    return update


def _add(out: list[Tensor], x: list[Tensor], s: Any) -> None:
    if isinstance(s, Tensor):
        ops.add_(out, ops.mul(x, s))
    else:
        ops.add_(out, x, alpha=s)


def write_per_tensor(seg: Segment, direction: Sequence[Tensor], scales: Sequence[Any], decay: Any = 0.0) -> None:
    """Emit ``scales[i] * direction[i] + decay * theta_i`` tensor by tensor (per-tensor step sizes, as Muon's
    adjusted lr or Adafactor's relative step); a 0-dim tensor scale stays on the device."""
    ctx = seg.ctx
    decays = isinstance(decay, Tensor) or decay != 0
    if ctx.opt.update_rms and not seg.module.modifies_update_inplace:
        norms = ops.norm(list(direction), 2, dtype=_norm_dtype(direction))
        report_rms(
            seg, [n * (s.abs() if isinstance(s, Tensor) else abs(s)) for n, s in zip(norms, scales, strict=True)]
        )
    if ctx.is_last and seg.precision.param_update != "plain":
        steps = [d * s if not is_one(s) else d for d, s in zip(direction, scales, strict=True)]
        if decays:
            steps = [st + p * decay for st, p in zip(steps, seg.params, strict=True)]
        compensated_sub(ctx, seg.start, seg.stop, steps, seg.precision.param_update)
        ctx.params_written = True
        return
    if ctx.is_last:
        params = seg.params
        if decays:
            ops.mul_(params, 1 - (decay.to(params[0].device, params[0].dtype) if isinstance(decay, Tensor) else decay))
        for p, d, s in zip(params, direction, scales, strict=True):
            if isinstance(s, Tensor):
                p.addcmul_(d.to(p.dtype), s.to(p.device, p.dtype), value=-1)  # one pass, no product tensor
            else:
                p.add_(d, alpha=-s)
        ctx.params_written = True
        return
    update = seg.update
    owned = seg.module.modifies_update_inplace and ctx.owns(update, seg.start)
    out: list[Tensor] = []
    for u, d, s in zip(update, direction, scales, strict=True):
        if not owned and not is_one(s) and d.dtype == u.dtype and d.shape == u.shape:
            t = d * s  # one pass into a new tensor
        else:
            t = u if owned else torch.empty_like(u)
            if t is not d:
                t.copy_(d)  # also casts a direction computed in another dtype
            if not is_one(s):
                t.mul_(s)
        out.append(t)
    if decays:
        _add(out, seg.params, decay)
    seg.update = out


def write_kernel(seg: Segment, scale: Any, kernel: Callable[[list[Tensor], Any], None]) -> None:
    """Run a fused kernel ``kernel(target, lr)`` that does ``target -= lr * direction`` in one pass.

    The last stage gives it the parameters and ``scale``; any other stage a zero buffer and ``-scale``, which
    leaves exactly ``scale * direction`` in the buffer, handed on as the update.
    """
    ctx = seg.ctx
    rms = ctx.opt.update_rms and not seg.module.modifies_update_inplace
    compensated = seg.precision.param_update != "plain"
    if ctx.is_last and not rms and not compensated:
        kernel(seg.params, scale)
        ctx.params_written = True
        return
    target = ops.zeros_like(seg.update)
    kernel(target, -scale)
    if rms:  # the kernel's step is measured in a buffer first, then subtracted
        report_rms(seg, ops.norm(target, 2, dtype=_norm_dtype(target)))
    if ctx.is_last:  # the kernel's step, written with compensation where the group asks for it
        if compensated:
            compensated_sub(ctx, seg.start, seg.stop, target, seg.precision.param_update)
        else:
            ops.sub_(seg.params, target)
        ctx.params_written = True
        return
    seg.update = target


def write_move(seg: Segment, move: Callable[[list[Tensor]], None]) -> None:
    """Emit the step that lands the parameters where ``move(x)`` takes ``x``, a list holding their current values.

    The last stage hands ``move`` the parameters themselves, which it changes in place: no direction is built and
    no second pass subtracts it (a rule that computes its new point, as schedule-free's interpolation, writes it
    directly).  Any other stage hands it a copy of the parameters, and ``theta - move(theta)`` becomes the update
    handed on; so does the last stage of a group with low-precision settings (``state_dtype`` wider than the
    parameters: the copy is in the compute dtype; ``param_update``: the step is written with compensation).
    """
    ctx = seg.ctx
    params = seg.params
    prec = seg.precision
    if ctx.is_last and prec.plain:
        move(params)
        ctx.params_written = True
        return
    # a copy: in the compute dtype where state is wider than the parameters (the move then reads it unrounded)
    landed = ops.clone(params) if prec.compute == seg.dtype else [p.to(prec.compute) for p in params]
    move(landed)
    step = (
        ops.sub(params, landed)
        if prec.compute == seg.dtype
        else [p.to(prec.compute) - q for p, q in zip(params, landed, strict=True)]
    )
    if ctx.is_last:  # written with compensation where the group asks for it
        if prec.param_update != "plain":
            compensated_sub(ctx, seg.start, seg.stop, step, prec.param_update)
        else:
            ops.sub_(params, step)
        ctx.params_written = True
        return
    seg.update = step


def final_write(ctx: StepContext) -> None:
    """Subtract the chain's update from the parameters when no stage wrote them (one pass per bucket)."""
    params, update = ctx.params, ctx.update
    if len(update) != len(params):
        raise RuntimeError(f"the chain produced {len(update)} update tensors for {len(params)} parameters")
    if ctx.low_precision and any(p.param_update != "plain" for p in ctx.precisions):
        for run, prec in zip(ctx.layout.runs, ctx.precisions, strict=True):
            a, b = run.start, run.stop
            if prec.param_update == "plain":
                ops.sub_(params[a:b], update[a:b])
            else:
                compensated_sub(ctx, a, b, update[a:b], prec.param_update)
        return
    for a, b in ctx.layout.buckets:
        ops.sub_(params[a:b], update[a:b])


# ---------------------------------------------------------------- compensated writes (core/precision.py)
def compensated_sub(ctx: StepContext, start: int, stop: int, step: Sequence[Tensor], mode: str) -> None:
    """``theta -= step`` for the parameters ``[start:stop]`` (one device and dtype) with ``param_update`` ``mode``:
    Kahan summation with a buffer per parameter kept in ``opt.state``, or stochastic rounding."""
    params = ctx.params[start:stop]
    if not params:
        return
    step = list(step)
    comp = kahan_buffers(ctx, start, stop) if mode == "kahan" else []
    generator = ctx.opt.rounding_generator(params[0].device) if mode != "kahan" else None
    for a, b in precision.pieces([p.numel() for p in params], precision.CHUNK):  # bounded temporaries
        if generator is None:
            rounding.kahan_sub_(params[a:b], comp[a:b], step[a:b])
        else:
            rounding.stochastic_sub_(params[a:b], step[a:b], generator)


def kahan_buffers(ctx: StepContext, start: int, stop: int) -> list[Tensor]:
    """The Kahan buffers of the parameters ``[start:stop]`` (``state[p]["param_update"]["kahan"]``, the parameter's
    dtype, zeros at first)."""
    state = ctx.opt.state
    out = []
    for p, v in zip(ctx.layout.originals[start:stop], ctx.params[start:stop], strict=True):
        ms = state[p].get(precision.STATE_KEY)
        if ms is None:
            ms = state[p][precision.STATE_KEY] = {}
        buf = ms.get("kahan")
        if buf is None or buf.dtype != v.dtype:
            buf = ms["kahan"] = torch.zeros_like(v) if buf is None else buf.to(v.dtype)
        out.append(buf)
    return out
