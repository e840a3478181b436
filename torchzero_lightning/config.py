"""``ChainOptimizer``: a ``tz.Modular`` whose modules are a keyword argument, for LightningCLI configs.

``tz.Modular(params, *modules)`` takes its modules as positional arguments, which a LightningCLI config cannot
give: jsonargparse fills ``init_args`` by keyword and has no way to pass ``*args`` (jsonargparse issue #514).
``ChainOptimizer(params, modules=[...])`` is the same optimizer with the modules as one keyword, so a config
can write the chain module by module::

    optimizer:
      class_path: torchzero_lightning.ChainOptimizer
      init_args:
        modules:
          - class_path: torchzero.modules.Adam
            init_args: {betas: [0.9, 0.95]}
          - torchzero.modules.Cautious
          - class_path: torchzero.modules.LR
            init_args: {lr: 3.0e-4}

or as one spec string (see :func:`torchzero.from_spec`)::

    optimizer:
      class_path: torchzero_lightning.ChainOptimizer
      init_args:
        spec: "adam(betas=(0.9, 0.95)), cautious, lr(3e-4)"

LightningCLI registers the optimizer with ``instantiate=False`` and builds it in ``configure_optimizers`` with
``instantiate_class(model.parameters(), config)``, so the modules arrive as their ``class_path`` /
``init_args`` entries, not as objects; ``ChainOptimizer`` builds them (a class path must name a
``tz.Module`` subclass: ``torchzero.modules.Adam``, or ``torchzero.m.Adam``).  Module objects are accepted too.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torchzero as tz


class ChainOptimizer(tz.Modular):
    """``tz.Modular`` with the chain as a keyword: ``ChainOptimizer(params, modules=[...])`` or ``spec="..."``.

    Args:
        params: as for :class:`torchzero.Modular`.
        modules: the modules in order: ``tz.Module`` objects, or ``{"class_path": ..., "init_args": {...}}``
            entries (or just the class path) as a LightningCLI config gives them.
        spec: the chain as text instead, e.g. ``"adam(betas=(0.9, 0.95)), cautious, lr(3e-4)"``
            (:func:`torchzero.from_spec`).
        fuse, reuse_evaluation, grad_as_scratch, differentiable, update_rms: as for :class:`torchzero.Modular`
            (``update_rms: true`` in a config makes the update rules report their RMS to ``OptimizerMonitor``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        modules: Sequence[tz.Module] | None = None,
        spec: str | None = None,
        fuse: bool = True,
        reuse_evaluation: bool = False,
        grad_as_scratch: bool = False,
        differentiable: bool = False,
        update_rms: bool = False,
    ) -> None:
        if (modules is None) == (spec is None):
            raise ValueError(
                "ChainOptimizer takes the chain either as modules=[...] or as spec='adam, lr(1e-3)', "
                f"exactly one of them; got {'both' if spec is not None else 'neither'}"
            )
        chain = tz.from_spec(spec) if spec is not None else [build_module(x, i) for i, x in enumerate(modules or ())]
        super().__init__(
            params, *chain, fuse=fuse, reuse_evaluation=reuse_evaluation, grad_as_scratch=grad_as_scratch,
            differentiable=differentiable, update_rms=update_rms,
        )  # fmt: skip


def build_module(entry: Any, index: int = 0) -> tz.Module:
    """A ``tz.Module`` from a module object, a class path, or a ``{"class_path", "init_args"}`` entry."""
    if isinstance(entry, tz.Module):
        return entry
    if hasattr(entry, "as_dict"):  # a jsonargparse Namespace
        entry = entry.as_dict()
    if isinstance(entry, str):
        entry = {"class_path": entry}
    if not isinstance(entry, Mapping) or "class_path" not in entry:
        raise TypeError(
            f"module {index} of the chain must be a tz.Module or a mapping with a 'class_path' (and 'init_args'), "
            f"e.g. {{'class_path': 'torchzero.modules.Adam', 'init_args': {{'betas': [0.9, 0.95]}}}}; got {entry!r}"
        )
    unknown = set(entry) - {"class_path", "init_args", "dict_kwargs"}
    if unknown:
        raise ValueError(f"module {index} of the chain: unknown keys {sorted(unknown)}; use class_path and init_args")
    cls = _import(str(entry["class_path"]), index)
    init_args = dict(entry.get("init_args") or {})
    init_args.update(entry.get("dict_kwargs") or {})
    params = inspect.signature(cls).parameters
    for key, value in init_args.items():  # YAML has no tuples: a list given where the default is a tuple
        if isinstance(value, list) and key in params and isinstance(params[key].default, tuple):
            init_args[key] = tuple(value)
    try:
        return cls(**init_args)
    except TypeError as e:
        accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise TypeError(f"module {index} of the chain, {cls.__name__}: {e}; it takes: {', '.join(accepted)}") from None


def _import(path: str, index: int) -> type[tz.Module]:
    module_path, _, name = path.rpartition(".")
    if module_path in ("torchzero.m", "tz.m"):  # tz.m is an attribute of torchzero, not an importable module
        module_path = "torchzero.modules"
    try:
        cls = getattr(importlib.import_module(module_path or "torchzero.modules"), name)
    except (ImportError, AttributeError):
        raise ValueError(
            f"module {index} of the chain: cannot import {path!r}; write the class path of a tz.m module, "
            "e.g. torchzero.modules.Adam"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, tz.Module)):
        raise TypeError(f"module {index} of the chain: {path!r} is not a tz.Module subclass")
    return cls
