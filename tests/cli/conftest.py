import sys

import pytest


@pytest.fixture(autouse=True)
def _forget_accelerate_state():
    """Some of these tests build an ``accelerate.Accelerator``; its process-wide state must not leak
    into tests that configure Accelerate differently."""
    yield
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
