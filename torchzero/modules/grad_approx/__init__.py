"""grad_approx modules."""

__all__: list[str] = []
