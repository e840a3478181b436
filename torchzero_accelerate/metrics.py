"""``log_metrics``: what the modules of a ``tz.Modular`` reported about the last step, through ``accelerator.log``."""

from __future__ import annotations

from typing import Any

import torchzero as tz


def unwrap(optimizer: Any) -> tz.Modular:
    """The ``tz.Modular`` inside an ``AcceleratedOptimizer`` (or the Modular itself)."""
    inner = optimizer
    for _ in range(4):
        if isinstance(inner, tz.Modular):
            return inner
        inner = getattr(inner, "optimizer", None)
    raise TypeError(f"expected a tz.Modular or an AcceleratedOptimizer around one, got {type(optimizer).__name__}")


def log_metrics(accelerator: Any, optimizer: Any, step: int | None = None, prefix: str = "tz") -> dict[str, float]:
    """Log ``opt.metrics()`` of the last step with ``accelerator.log(values, step=step)`` and return them.

    ``optimizer`` is the prepared ``AcceleratedOptimizer`` or the ``tz.Modular``; the names are
    ``"<prefix>/<group>/<module>/<name>"``, e.g. ``"tz/all/1.StrongWolfe/step_size"`` (see ``Modular.metrics``).
    Reading the values syncs with the device once per value; call it every few steps where that matters.
    ``accelerator.log`` writes on the main process only, through the trackers given to ``Accelerator(log_with=...)``
    and started with ``accelerator.init_trackers``.
    """
    values = {f"{prefix}/{k}": v for k, v in unwrap(optimizer).metrics().items()}
    accelerator.log(values, step=step)
    return values
