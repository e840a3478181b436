"""Thin wrappers over ``torch._foreach_*`` with a per-tensor reference path.

Modules call these instead of ``torch._foreach_*`` directly.  In normal use each call is a single
``torch._foreach_*`` dispatch over a list of tensors that share a device and dtype (the layout hands
modules such lists).  Inside :func:`reference_mode` every call runs the same op tensor by tensor
instead; the test-suite uses it as the ground truth for the multi-tensor path, the way torch's tests
compare ``_multi_tensor_adam`` against ``_single_tensor_adam``.

With autograd enabled (``tz.Modular(..., differentiable=True)``) the per-tensor path runs too, since
every single-tensor op has a derivative and not every foreach kernel does.

Reductions over a list (dot products, global norms) are in :mod:`.reduce`; :func:`scaled` and
:func:`add_scaled_` work on all the (device, dtype) buckets of a layout at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from . import compiled, shard

TensorList = list[Tensor]

_local = threading.local()


def is_reference_mode() -> bool:
    """True inside :func:`reference_mode`."""
    return getattr(_local, "reference", False)


@contextlib.contextmanager
def reference_mode(enabled: bool = True) -> Iterator[None]:
    """Run every foreach op tensor by tensor (the reference path) inside this block."""
    previous = is_reference_mode()
    _local.reference = enabled
    try:
        yield
    finally:
        _local.reference = previous


def is_sharded_mode() -> bool:
    """True inside :func:`sharded_mode`: the step's parameters include FSDP2 shards (DTensors)."""
    return getattr(_local, "sharded", False)


@contextlib.contextmanager
def sharded_mode(enabled: bool = True) -> Iterator[None]:
    """Inside this block elementwise ops look for DTensors and run on their local shards (see :mod:`.shard`).

    The optimizer enters it for steps whose layout holds DTensors, so unsharded steps never pay for the look.
    """
    previous = is_sharded_mode()
    _local.sharded = enabled
    try:
        yield
    finally:
        _local.sharded = previous


def _is_list(x: Any) -> bool:
    return isinstance(x, (list, tuple))


def _loop(method: Callable[..., Any], xs: Sequence[Tensor], args: tuple, kwargs: dict) -> list[Any]:
    out = []
    for i, x in enumerate(xs):
        a = [arg[i] if _is_list(arg) else arg for arg in args]
        k = {key: (v[i] if _is_list(v) else v) for key, v in kwargs.items()}
        out.append(method(x, *a, **k))
    return out


def _safe(t: Tensor) -> Tensor:
    """``t`` itself, or a copy when autograd may save it and ``t`` is about to be modified in place."""
    return t.clone() if torch.is_grad_enabled() else t


def _any_requires_grad(xs: Sequence[Tensor], args: tuple) -> bool:
    return any(t.requires_grad for t in xs) or any(
        _is_list(a) and any(isinstance(t, Tensor) and t.requires_grad for t in a) for a in args
    )


def _detach_safe(arg: Any) -> Any:
    """A copy of a tensor-list argument: autograd may keep it, and modules keep writing their state in place."""
    if _is_list(arg) and arg and isinstance(arg[0], Tensor):
        return [t.clone() for t in arg]
    return arg


def _on_local_shards(xs: Sequence[Tensor], args: tuple) -> bool:
    """True when some of ``xs`` are DTensors and every tensor argument fits its ``x``: laid out like it, or a plain
    0-dim tensor (the same on every rank, such as a norm :func:`norm` reduced over the mesh); plain with plain."""
    if not (is_sharded_mode() and shard.any_dtensor(xs)):
        return False
    for a in args:
        if _is_list(a):
            if a and isinstance(a[0], Tensor) and not all(map(_fits, xs, a)):
                return False
        elif shard.is_dtensor(a):
            return False
    return True


def _fits(x: Tensor, a: Tensor) -> bool:
    if not shard.is_dtensor(x):
        return not shard.is_dtensor(a)
    return shard.same_layout(x, a) or (not shard.is_dtensor(a) and a.ndim == 0)


def _localize(arg: Any) -> Any:
    return [shard.local(t) for t in arg] if _is_list(arg) and arg and isinstance(arg[0], Tensor) else arg


def _make(
    name: str, single: Callable[..., Any] | None = None, saves_output: bool = False, elementwise: bool = True
) -> Callable[..., Any]:
    multi = getattr(torch, f"_foreach_{name}")
    if single is None:
        single = getattr(torch.Tensor, name)
    inplace = name.endswith("_")

    def op(xs: Sequence[Tensor], *args: Any, **kwargs: Any) -> Any:
        if not xs:
            return None if inplace else []
        differentiable = torch.is_grad_enabled()
        if differentiable and _any_requires_grad(xs, args):
            # differentiable mode: autograd may keep argument tensors for the backward pass, and modules keep
            # modifying their state in place, so give the op copies of arguments that carry a graph; and run the
            # per-tensor ops, which all have derivatives (not every foreach kernel does)
            args = tuple(_detach_safe(a) for a in args)
        if differentiable or is_reference_mode():
            out = _loop(single, xs, args, kwargs)
        elif elementwise and _on_local_shards(xs, args):
            # FSDP2 shards: the same kernel on the local shards, no DTensor dispatch (ops such as _foreach_copy_
            # have no sharding rule) and no communication; results are DTensors laid out like xs
            out = multi([shard.local(x) for x in xs], *[_localize(a) for a in args], **kwargs)
            if inplace:
                return None
            out = [shard.wrap_local(o, x) if shard.is_dtensor(x) else o for o, x in zip(out, xs, strict=True)]
        elif torch.compiler.is_compiling() and _has_symbolic(args, kwargs) and compiled.realizes(xs[0]):
            out = _with_realized_scalars(name, multi, single, xs, args, kwargs)
        else:
            out = multi(xs, *args, **kwargs)
        if inplace:
            return None
        if saves_output and torch.is_grad_enabled() and out[0].requires_grad:
            # differentiable mode: autograd keeps this output for the backward pass, so hand out a copy that
            # modules may keep modifying in place
            out = [t.clone() for t in out]
        return out

    op.__name__ = name
    op.__doc__ = f"``torch._foreach_{name}`` with a per-tensor reference path."
    return op


def _has_symbolic(args: tuple, kwargs: dict) -> bool:
    return any(map(compiled.is_symbolic, args)) or any(map(compiled.is_symbolic, kwargs.values()))


_TENSOR_SCALAR = frozenset({"mul", "mul_", "div", "div_"})
"""foreach ops with an overload that takes the scalar as a 0-dim tensor (``_foreach_add_.Tensor`` also has one,
but dynamo outside ``fullgraph`` reads its scalar on the host: a graph break)"""
_LIST_SCALAR = dict.fromkeys(("add", "add_", "sub", "sub_"), 0)
"""foreach ops given a realized scalar as a list of the same 0-dim tensor (their ``List`` overload broadcasts
it), by the position of that scalar among the arguments after the target list.  Only those Inductor lowers
with a broadcast operand: ``_foreach_lerp.List`` with 0-dim weights, for one, runs as an eager kernel outside
the fused loop (an extra pass over the state), so lerp, clamp, pow and maximum take one op per tensor, which
Inductor fuses."""


def _with_realized_scalars(
    name: str, multi: Callable[..., Any], single: Callable[..., Any], xs: Sequence[Tensor], args: tuple, kwargs: dict
) -> Any:
    """``multi(xs, *args, **kwargs)`` under torch.compile, with each symbolic scalar realized once
    (:func:`.compiled.realize`) and read by the elementwise kernel instead of being recomputed per element.

    A scale that torch takes as a Python number only (``alpha``, ``value``) multiplies the other operand
    first (``x + alpha * y``, ``x + value * (a / b)``): the same arithmetic, which Inductor fuses into the
    same kernel.
    """
    like = xs[0]
    args = tuple(compiled.realize(a, like) if compiled.is_symbolic(a) else a for a in args)
    kwargs = {k: compiled.realize(v, like) if compiled.is_symbolic(v) else v for k, v in kwargs.items()}
    base, inplace = name.rstrip("_"), name.endswith("_")
    if base in ("addcmul", "addcdiv") and len(args) + len(kwargs) > 2:
        a, b = args[0], args[1]
        value = args[2] if len(args) > 2 else kwargs["value"]
        q = list(torch._foreach_mul(a, b) if base == "addcmul" else torch._foreach_div(a, b))
        torch._foreach_mul_(q, value)
        return torch._foreach_add_(list(xs), q) if inplace else torch._foreach_add(list(xs), q)
    if base in ("add", "sub") and isinstance(kwargs.get("alpha"), Tensor):
        scaled = torch._foreach_mul(args[0], kwargs.pop("alpha"))
        args = (scaled, *args[1:])
    at = _LIST_SCALAR.get(name)
    if at is not None and len(args) > at and isinstance(args[at], Tensor):
        return multi(xs, *args[:at], [args[at]] * len(xs), *args[at + 1 :], **kwargs)
    if name in _TENSOR_SCALAR or not any(isinstance(a, Tensor) for a in (*args, *kwargs.values())):
        return multi(xs, *args, **kwargs)
    return _loop(single, xs, args, kwargs)  # an op without a tensor-scalar overload: one op per tensor, fused anyway


# in place
add_ = _make("add_")
sub_ = _make("sub_")
mul_ = _make("mul_")
div_ = _make("div_")
addcmul_ = _make("addcmul_", lambda x, a, b, value=1: x.addcmul_(a, b, value=value))
addcdiv_ = _make("addcdiv_", lambda x, a, b, value=1: x.addcdiv_(a, b, value=value))
_lerp_ = _make("lerp_")
sqrt_ = _make("sqrt_")
abs_ = _make("abs_")
neg_ = _make("neg_")
sign_ = _make("sign_")
zero_ = _make("zero_")
_copy_ = _make("copy_")
maximum_ = _make("maximum_", lambda x, y: x.copy_(torch.maximum(_safe(x), y)))
minimum_ = _make("minimum_", lambda x, y: x.copy_(torch.minimum(_safe(x), y)))
clamp_min_ = _make("clamp_min_")
clamp_max_ = _make("clamp_max_")
reciprocal_ = _make("reciprocal_")
pow_ = _make("pow_")
exp_ = _make("exp_")

# out of place
add = _make("add")
sub = _make("sub")
mul = _make("mul")
div = _make("div")
_lerp = _make("lerp")
sqrt = _make("sqrt", saves_output=True)
abs = _make("abs")  # noqa: A001 - mirrors torch's name
sign = _make("sign")
neg = _make("neg")
maximum = _make("maximum")
minimum = _make("minimum")
pow = _make("pow", saves_output=True)  # noqa: A001 - mirrors torch's name
addcmul = _make("addcmul", lambda x, a, b, value=1: x.addcmul(a, b, value=value))
addcdiv = _make("addcdiv", lambda x, a, b, value=1: x.addcdiv(a, b, value=value))


def copy_(xs: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    """``torch._foreach_copy_`` (dtypes may differ).  DTensors (FSDP2 shards) have no sharding rule for the foreach
    copy: inside a sharded step whose sources are laid out alike it runs on the local shards (:func:`_make`),
    elsewhere tensor by tensor."""
    if xs and shard.is_dtensor(xs[0]) and not _on_local_shards(xs, (src,)):
        for x, y in zip(xs, src, strict=True):
            x.copy_(y)
        return
    _copy_(xs, src)


def lerp_(xs: Sequence[Tensor], ends: Sequence[Tensor], weight: Any) -> None:
    """``torch._foreach_lerp_``, also where ``ends`` has another dtype than ``xs`` (state kept in another dtype
    than the parameters, see ``state_dtype``): ``ends`` is cast to the dtype of ``xs``, as the other in-place ops
    promote their arguments (torch's lerp refuses mixed dtypes)."""
    _lerp_(xs, _as_dtype(ends, xs), weight)


def lerp(xs: Sequence[Tensor], ends: Sequence[Tensor], weight: Any) -> TensorList:
    """``torch._foreach_lerp``; with mixed dtypes both sides are cast to the wider one, as the other ops promote."""
    if xs and ends and xs[0].dtype != ends[0].dtype:
        wide = torch.promote_types(xs[0].dtype, ends[0].dtype)
        return _lerp([x.to(wide) for x in xs], [e.to(wide) for e in ends], weight)
    return _lerp(xs, ends, weight)


def _as_dtype(ys: Sequence[Tensor], like: Sequence[Tensor]) -> Sequence[Tensor]:
    if ys and like and ys[0].dtype != like[0].dtype:
        return [y.to(like[0].dtype) for y in ys]
    return ys


clamp_min = _make("clamp_min")
_norm = _make("norm", lambda x, ord=2, dtype=None: torch.linalg.vector_norm(x, ord, dtype=dtype), elementwise=False)


def norm(xs: Sequence[Tensor], ord: float = 2, dtype: torch.dtype | None = None) -> TensorList:
    """Per-tensor norms (``torch._foreach_norm``); a tensor with no elements has norm 0 for every ``ord``
    (the infinity norm of an empty tensor is an error in torch).

    For FSDP2 shards (DTensors) the norms of the local shards are combined over the mesh with one all-reduce
    per process group, so each norm is the whole tensor's, a plain 0-dim tensor equal on every rank.
    """
    if shard.any_dtensor(xs):  # per call, not per element: cheap next to the norms themselves
        return _sharded_norms(xs, ord, dtype)
    if not any(x.numel() == 0 for x in xs):
        return _norm(xs, ord) if dtype is None else _norm(xs, ord, dtype=dtype)
    full = [x for x in xs if x.numel() > 0]
    norms = iter(_norm(full, ord) if dtype is None else _norm(full, ord, dtype=dtype))
    return [next(norms) if x.numel() > 0 else x.new_zeros((), dtype=dtype or x.dtype) for x in xs]


def _sharded_norms(xs: Sequence[Tensor], ord: float, dtype: torch.dtype | None) -> TensorList:
    by_groups: dict[shard.ProcessGroups, list[int]] = {}
    for i, x in enumerate(xs):
        by_groups.setdefault(shard.reduce_groups(x), []).append(i)
    out: list[Tensor | None] = [None] * len(xs)
    inf = ord == float("inf")
    for groups, idx in by_groups.items():
        local_norms = norm([shard.local(xs[i]) for i in idx], ord, dtype)
        if not groups:
            for i, n in zip(idx, local_norms, strict=True):
                out[i] = n
            continue
        # one collective for the group: the shards' p-th powers (or maxima), then the root
        stacked = torch.stack([n.to(local_norms[0].dtype) for n in local_norms])
        stacked = stacked if inf else stacked.pow(ord)
        shard.all_reduce_(stacked, groups, "max" if inf else "sum")
        total = stacked if inf else stacked.pow(1.0 / ord)
        for k, i in enumerate(idx):
            out[i] = total[k].to(local_norms[k].dtype)
    return out  # type: ignore[return-value]


def into(
    out: Sequence[Tensor] | Callable[[], Sequence[Tensor]] | None,
    name: str,
    xs: Sequence[Tensor],
    *args: Any,
    **kwargs: Any,
) -> TensorList:
    """The out-of-place op ``name`` (``"sub"``, ``"mul"``, ``"sqrt"``...) of this module, written into ``out``
    where that is cheaper than new tensors; returns the list holding the result.

    ``out`` are buffers shaped like ``xs`` whose contents are not needed, or a function that returns them
    (``Segment.scratch``, called only where the buffers are used: it keeps them between steps).  On CPU a new
    parameter-sized tensor costs its page faults (a fresh allocation is about four times a pass over it), so the op
    writes into the buffers tensor by tensor (``torch.<name>(..., out=b)``, one pass each).  On other devices (a
    caching allocator makes new tensors cheap), for sharded (DTensor) tensors, with autograd on and in reference
    mode, it is the foreach op.
    """
    if (
        out is None
        or not xs
        or xs[0].device.type != "cpu"
        or shard.is_dtensor(xs[0])
        or torch.is_grad_enabled()
        or is_reference_mode()
    ):
        return globals()[name](xs, *args, **kwargs)
    if callable(out):
        out = out()
    fn = getattr(torch, name)
    for i, (x, b) in enumerate(zip(xs, out, strict=True)):
        fn(x, *[arg[i] if _is_list(arg) else arg for arg in args], out=b, **kwargs)
    return list(out)


def clone(xs: Sequence[Tensor]) -> TensorList:
    """Copies of ``xs`` (one allocation per tensor, no foreach kernel needed)."""
    return [x.clone() for x in xs]


def zeros_like(xs: Sequence[Tensor]) -> TensorList:
    return [torch.zeros_like(x) for x in xs]


# ---------------------------------------------------------------------- over all buckets of a layout
def scaled(buckets: Sequence[tuple[int, int]], xs: Sequence[Tensor], alpha: Tensor) -> TensorList:
    """``alpha * x`` for a 0-dim tensor ``alpha`` (cast per bucket; no host sync)."""
    out: TensorList = []
    for a, b in buckets:
        part = list(xs[a:b])
        out.extend(mul(part, alpha.to(part[0].device, part[0].dtype)))
    return out


def add_scaled_(buckets: Sequence[tuple[int, int]], xs: TensorList, ys: Sequence[Tensor], alpha: Tensor) -> None:
    """``x += alpha * y`` in place for a 0-dim tensor ``alpha`` (no host sync)."""
    for a, b in buckets:
        part = list(ys[a:b])
        add_(xs[a:b], mul(part, alpha.to(part[0].device, part[0].dtype)))


# reductions moved to .reduce; these names stay importable from ops, as in 0.1.0
_MOVED_TO_REDUCE = {"dot": "bucket_dot", "global_norm": "global_norm"}


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_REDUCE:
        from . import reduce  # not at the top: reduce imports this module

        return getattr(reduce, _MOVED_TO_REDUCE[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
