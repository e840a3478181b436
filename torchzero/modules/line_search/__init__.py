"""line_search modules."""

__all__: list[str] = []
