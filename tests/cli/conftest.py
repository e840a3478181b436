from tests._accelerate_state import forget_accelerate_state  # noqa: F401  (an autouse fixture)
