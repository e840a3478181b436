"""second_order modules."""

__all__: list[str] = []
