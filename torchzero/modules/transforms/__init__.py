"""transforms modules."""

__all__: list[str] = []
