"""external modules."""

__all__: list[str] = []
