"""Low precision: the dtype modules keep their state in, and how low-precision parameters are written.

Two settings of the optimizer itself, per param group (like ``maximize``), or for every group at once with
``tz.Modular(..., state_dtype=..., param_update=...)``:

* ``state_dtype``: the dtype every floating state tensor that modules keep per parameter (``seg.state``) is
  stored in; None (the default) stores it in the parameter's dtype.  Modules compute in the wider of the two
  dtypes (the *compute dtype*): state stored narrower (bf16 moments of fp32 parameters) is read into temporaries
  of the compute dtype for the module's segment and written back when the module is done with it; parameters
  narrower than the state (bf16 parameters with fp32 state) get their update in the compute dtype from the start
  of the step, so the whole chain computes in it.
* ``param_update``: how the write sink adds the step to the parameters.  ``"plain"`` rounds to the nearest
  value of the parameter's dtype (as torch.optim); ``"kahan"`` keeps what rounding lost in a buffer per parameter
  (``state[p]["param_update"]["kahan"]``, the parameter's dtype) and adds it back at the next step (Kahan
  summation); ``"stochastic_rounding"`` rounds bf16/fp16 parameters up or down at random with probabilities that
  make the rounding unbiased, from a generator per device seeded with ``tz.Modular(..., rounding_seed=...)`` and
  saved in ``state_dict`` (resume is bit-exact).  For fp32/fp64 parameters stochastic rounding has nothing to
  round (the step is computed in their dtype) and writes them as ``"plain"`` does.

Temporaries in the compute dtype are made for at most :data:`CHUNK` elements at a time.

A step of bf16 parameters smaller than half their spacing (about ``|theta| / 256``) is lost by plain writes:
training stalls.  Kahan summation and stochastic rounding keep it (exactly, or on average).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

PARAM_UPDATES = ("plain", "kahan", "stochastic_rounding")
KEYS: dict[str, Any] = {"state_dtype": None, "param_update": "plain"}
"""the low-precision settings of the optimizer and their defaults (absent from a group: the default applies)"""
STATE_KEY = "param_update"
"""``state[p][STATE_KEY]``: what the sink keeps per parameter (the Kahan buffer)"""
NARROW = (torch.bfloat16, torch.float16)
CHUNK = 1 << 20
"""the most elements that temporaries in the compute dtype cover at once (one state name, or the compensated
write): segments whose state is stored narrower are cut into pieces of about this size (whole tensors; a larger
tensor is a piece of its own), so the memory saved by narrow state is not spent on a full-size upcast copy"""


def pieces(numels: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """``[a, b)`` ranges of consecutive tensors with at most ``limit`` elements in all (a tensor larger than the
    limit alone)."""
    out: list[tuple[int, int]] = []
    begin, total = 0, 0
    for i, n in enumerate(numels):
        if i > begin and total + n > limit:
            out.append((begin, i))
            begin, total = i, 0
        total += n
    if numels:
        out.append((begin, len(numels)))
    return out


class RunPrecision(NamedTuple):
    """How a run of parameters (one param group, one dtype) keeps state and is written."""

    storage: torch.dtype | None
    """the dtype state is stored in, or None for the parameter's dtype"""
    compute: torch.dtype
    """the dtype modules compute in: the wider of the parameter's and the storage dtype"""
    param_update: str

    @property
    def plain(self) -> bool:
        """Nothing to do differently from the default (state in the parameter's dtype, plain writes)."""
        return self.storage is None and self.param_update == "plain"


def of_group(group: Mapping[str, Any], dtype: torch.dtype) -> RunPrecision:
    """The precision of parameters of ``dtype`` in ``group``."""
    storage = _dtype(group.get("state_dtype"))
    if storage == dtype or not dtype.is_floating_point:
        storage = None
    compute = dtype if storage is None else torch.promote_types(dtype, storage)
    return RunPrecision(storage, compute, group.get("param_update", "plain"))


def of_runs(runs: Sequence[Any], groups: Sequence[Mapping[str, Any]]) -> list[RunPrecision]:
    """:func:`of_group` for each run of a layout."""
    return [of_group(groups[r.group], r.dtype) for r in runs]


STATE_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def _dtype(value: Any) -> torch.dtype | None:
    if isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, value, None) if isinstance(value, str) else None
    return dtype if isinstance(dtype, torch.dtype) else None


def is_state_dtype(value: Any) -> bool:
    """None, or one of :data:`STATE_DTYPES` as a dtype or its name (``"bfloat16"``, ``"half"``)."""
    return value is None or _dtype(value) in STATE_DTYPES


def state_dtype_name(value: Any) -> str | None:
    """The stored form of a ``state_dtype``: the dtype's canonical name (``"float16"`` for ``"half"``), or None."""
    dtype = _dtype(value)
    return None if dtype is None else str(dtype).removeprefix("torch.")
