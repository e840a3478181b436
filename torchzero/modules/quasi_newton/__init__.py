"""quasi_newton modules."""

__all__: list[str] = []
