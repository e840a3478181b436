import pytest

from ._common import reset_accelerate


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps its state in process-wide singletons; start every test from scratch."""
    reset_accelerate()
    yield
    reset_accelerate()
