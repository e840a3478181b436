import pytest
from accelerate.state import AcceleratorState, GradientState


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps its state in process-wide singletons; start every test from scratch."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
