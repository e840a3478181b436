"""smoothing modules."""

__all__: list[str] = []
