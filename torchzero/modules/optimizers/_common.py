"""Small helpers shared by the update rules of this package (not part of the public API)."""

from __future__ import annotations

from typing import Any


def check(cond: bool, cls: str, what: str, got: Any, fix: str) -> None:
    """Raise ``ValueError`` naming the module, the expectation, the value given and the fix."""
    if not cond:
        raise ValueError(f"{cls}: expected {what}, got {got!r}. {fix}")


def check_betas(cls: str, betas: Any, names: str = "betas") -> tuple[float, float]:
    betas = tuple(betas)
    check(len(betas) == 2, cls, f"{names} to be a pair (beta1, beta2)", betas, "Pass two numbers, e.g. (0.9, 0.999).")
    for i, b in enumerate(betas):
        check(0.0 <= b < 1.0, cls, f"{names}[{i}] in [0, 1)", b, "Use a value such as 0.9 or 0.999.")
    return betas  # type: ignore[return-value]
