"""A fixture for test folders whose tests may build an ``accelerate.Accelerator`` (the CLI and the docs)."""

import sys

import pytest


@pytest.fixture(autouse=True)
def forget_accelerate_state():
    """Accelerate's process-wide state must not leak into tests that configure Accelerate differently."""
    yield
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
