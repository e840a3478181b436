"""The ``torchzero`` command (placeholder until the demo lands)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    print("torchzero: the demo is not built yet")
    return 0
