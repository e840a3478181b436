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

from . import compiled

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


def _make(name: str, single: Callable[..., Any] | None = None, saves_output: bool = False) -> Callable[..., Any]:
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
lerp_ = _make("lerp_")
sqrt_ = _make("sqrt_")
abs_ = _make("abs_")
neg_ = _make("neg_")
sign_ = _make("sign_")
zero_ = _make("zero_")
copy_ = _make("copy_")
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
lerp = _make("lerp")
sqrt = _make("sqrt", saves_output=True)
abs = _make("abs")  # noqa: A001 - mirrors torch's name
sign = _make("sign")
neg = _make("neg")
maximum = _make("maximum")
minimum = _make("minimum")
pow = _make("pow", saves_output=True)  # noqa: A001 - mirrors torch's name
addcmul = _make("addcmul", lambda x, a, b, value=1: x.addcmul(a, b, value=value))
addcdiv = _make("addcdiv", lambda x, a, b, value=1: x.addcdiv(a, b, value=value))
_norm = _make("norm", lambda x, ord=2, dtype=None: torch.linalg.vector_norm(x, ord, dtype=dtype))


def norm(xs: Sequence[Tensor], ord: float = 2, dtype: torch.dtype | None = None) -> TensorList:
    """Per-tensor norms (``torch._foreach_norm``); a tensor with no elements has norm 0 for every ``ord``
    (the infinity norm of an empty tensor is an error in torch)."""
    if not any(x.numel() == 0 for x in xs):
        return _norm(xs, ord) if dtype is None else _norm(xs, ord, dtype=dtype)
    full = [x for x in xs if x.numel() > 0]
    norms = iter(_norm(full, ord) if dtype is None else _norm(full, ord, dtype=dtype))
    return [next(norms) if x.numel() > 0 else x.new_zeros((), dtype=dtype or x.dtype) for x in xs]


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
