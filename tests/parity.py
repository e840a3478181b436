"""Parity harness: a torchzero chain and a reference optimizer on identical parameters and gradients.

The reference is a torch.optim optimizer, or a :class:`ReferenceOptimizer` running a written-out
per-tensor formula.  Both start from the same seeded parameters (two param groups with different
settings), get the same gradient at every step and are compared after every step with
``torch.testing.assert_close``.  In the middle of the run the torchzero optimizer is saved with
``torch.save``, loaded with ``torch.load(weights_only=True)`` into a freshly built optimizer, and the
run goes on with the fresh one, so a state_dict that loses anything shows up as a mismatch.

Usage from another test module::

    from tests.parity import Case, run_parity

    case = Case("adam", lambda: [tz.m.Adam(), tz.m.LR(1e-3)], lambda groups: torch.optim.Adam(groups, lr=1e-3))
    run_parity(case, torch.float32)
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

import torchzero as tz

Shapes = tuple[tuple[tuple[int, ...], ...], ...]
SHAPES: Shapes = (((4, 3), (5,)), ((3, 6), (2, 2, 3)))
"""tensor shapes of the two param groups"""

DTYPES: dict[str, torch.dtype] = {"f32": torch.float32, "f64": torch.float64, "c64": torch.complex64}


@dataclasses.dataclass(frozen=True)
class Case:
    """One registry entry (in the spirit of torch's ``OptimizerInfo``).

    Attributes:
        name: test id.
        modules: builds fresh torchzero modules for the chain.
        reference: builds the reference optimizer from a list of param-group dicts.
        groups: per-group settings of the torchzero optimizer (one dict per group of ``shapes``).
        ref_groups: per-group settings of the reference (default: the same as ``groups``).
        dtypes: keys of :data:`DTYPES` the case runs with.
        shapes: tensor shapes per group.
        steps: number of steps.
        coupling: the gradient is ``noise + coupling * param``, so the trajectory feeds back into the
            gradients and any drift between the two optimizers grows instead of staying hidden.
        tol: ``{dtype key: dict(atol=..., rtol=...)}`` where the default tolerance is too tight for a
            documented reason.
    """

    name: str
    modules: Callable[[], list[Any]]
    reference: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
    groups: Sequence[dict[str, Any]] = ({}, {})
    ref_groups: Sequence[dict[str, Any]] | None = None
    dtypes: tuple[str, ...] = ("f32", "f64", "c64")
    shapes: Shapes = SHAPES
    steps: int = 20
    coupling: float = 0.5
    tol: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


class ReferenceOptimizer(torch.optim.Optimizer):
    """A per-tensor reference: ``rule(param, grad, state, group, original)`` updates ``param`` in place.

    Complex parameters are handed to ``rule`` as real views (a trailing dimension of 2), the way
    torch.optim treats them; ``original`` is the parameter itself (to read its shape or dtype).
    """

    def __init__(self, params: Any, rule: Callable[..., None], **defaults: Any) -> None:
        super().__init__(params, defaults)
        self.rule = rule

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                view = torch.view_as_real(p) if p.is_complex() else p
                grad = torch.view_as_real(p.grad) if p.is_complex() else p.grad
                self.rule(view, grad, self.state[p], group, p)


class NoHostSync(TorchDispatchMode):
    """Inside this block, any read of a tensor's value into Python raises.

    ``.item()``, ``float(t)``, ``bool(t)``, and a tensor passed where torch wants a Python number
    (``alpha=t``) all go through ``aten._local_scalar_dense``, which blocks on a GPU until the device
    catches up.  The mode sees the C++ conversions too, so it works on CPU-only machines.
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError(
                "host sync on the step path: a tensor value was read back to Python (.item(), float(t), "
                "bool(t), or a tensor given where a Python number is expected)"
            )
        return func(*args, **(kwargs or {}))


def make_params(dtype: torch.dtype, shapes: Shapes = SHAPES, seed: int = 0) -> list[list[Tensor]]:
    """Seeded parameters, one list per group."""
    gen = torch.Generator().manual_seed(seed)
    real = torch.float32 if dtype == torch.complex64 else dtype
    out = []
    for group in shapes:
        ps = []
        for shape in group:
            t = torch.randn(shape, generator=gen, dtype=torch.float64)
            if dtype.is_complex:
                t = torch.complex(t, torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
            else:
                t = t.to(real)
            ps.append(t.requires_grad_())
        out.append(ps)
    return out


def clone_params(groups: list[list[Tensor]]) -> list[list[Tensor]]:
    return [[p.detach().clone().requires_grad_() for p in ps] for ps in groups]


def set_grads(step: int, coupling: float, *param_lists: list[Tensor]) -> None:
    """The same gradient for every list: seeded noise (per step) plus ``coupling * param`` of that list."""
    gen = torch.Generator().manual_seed(1000 + step)
    noise = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in param_lists[0]]
    for params in param_lists:
        for p, n in zip(params, noise, strict=True):
            p.grad = n + coupling * p.detach() if coupling else n.clone()


def save_load(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` after ``torch.save`` and ``torch.load(weights_only=True)``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def assert_resume_is_bit_exact(
    build: Callable[[list[list[Tensor]]], tz.Modular],
    dtype: torch.dtype = torch.float32,
    steps: int = 10,
    at: int = 4,
    shapes: Shapes = SHAPES,
) -> tuple[tz.Modular, tz.Modular]:
    """Two runs of ``build(groups)`` on the same gradients, the second saved, reloaded into a fresh optimizer and
    continued after step ``at``: the parameters must be bit-identical (``torch.equal``) at the end.  Returns the
    two final optimizers (for checks of module-specific state)."""
    groups = make_params(dtype, shapes)
    twin_groups = clone_params(groups)
    flat, twin = [p for ps in groups for p in ps], [p for ps in twin_groups for p in ps]
    o1, o2 = build(groups), build(twin_groups)
    for t in range(steps):
        set_grads(t, 0.5, flat, twin)
        o1.step()
        o2.step()
        if t == at:
            fresh = build(twin_groups)
            fresh.load_state_dict(save_load(o2.state_dict()))
            o2 = fresh
    for p, q in zip(flat, twin, strict=True):
        assert torch.equal(p, q), "the reloaded run left the uninterrupted one"
    return o1, o2


def build_tz(case: Case, groups: list[list[Tensor]], fuse: bool = True) -> tz.Modular:
    return tz.Modular(
        [{"params": ps, **s} for ps, s in zip(groups, case.groups, strict=True)], *case.modules(), fuse=fuse
    )


def build_reference(case: Case, groups: list[list[Tensor]]) -> torch.optim.Optimizer:
    settings = case.groups if case.ref_groups is None else case.ref_groups
    return case.reference([{"params": ps, **s} for ps, s in zip(groups, settings, strict=True)])


def _tolerance(case: Case, dtype: torch.dtype) -> dict[str, float]:
    key = next((k for k, v in DTYPES.items() if v == dtype), "")
    return case.tol.get(key, {})


def run_tz(
    case: Case, dtype: torch.dtype, *, reference_mode: bool = False, fuse: bool = True, save_at: int | None = None
) -> list[list[Tensor]]:
    """Run only the torchzero side and return its parameters (to compare two paths of the engine)."""
    groups = make_params(dtype, case.shapes)
    flat = [p for ps in groups for p in ps]
    opt = build_tz(case, groups, fuse)
    with tz.foreach.reference_mode(reference_mode):
        for t in range(case.steps):
            set_grads(t, case.coupling, flat)
            opt.step()
            if t == save_at:
                opt = _reload(case, groups, opt, fuse)
    return groups


def _reload(case: Case, groups: list[list[Tensor]], opt: tz.Modular, fuse: bool) -> tz.Modular:
    fresh = build_tz(case, groups, fuse)
    fresh.load_state_dict(save_load(opt.state_dict()))
    return fresh


def run_parity(
    case: Case,
    dtype: torch.dtype,
    *,
    reference_mode: bool = False,
    fuse: bool = True,
    save_at: int | None = -1,
) -> None:
    """Step the torchzero chain and the reference side by side and compare after every step.

    ``save_at``: the step after which the torchzero optimizer goes through a save/load round trip into
    a fresh optimizer (-1: the middle of the run; None: never).
    """
    if save_at == -1:
        save_at = case.steps // 2
    groups = make_params(dtype, case.shapes)
    ref_groups = clone_params(groups)
    flat, ref_flat = [p for ps in groups for p in ps], [p for ps in ref_groups for p in ps]
    opt = build_tz(case, groups, fuse)
    ref = build_reference(case, ref_groups)
    tol = _tolerance(case, dtype)
    with tz.foreach.reference_mode(reference_mode):
        for t in range(case.steps):
            set_grads(t, case.coupling, flat, ref_flat)
            opt.step()
            ref.step()
            for i, (p, q) in enumerate(zip(flat, ref_flat, strict=True)):
                torch.testing.assert_close(
                    p, q, **tol, msg=lambda m, t=t, i=i: f"{case.name}: step {t + 1}, parameter {i}: {m}"
                )
            if t == save_at:
                opt = _reload(case, groups, opt, fuse)
