"""State dicts written by torchzero 0.1.0 (before the core redesign) still load and continue the same run.

``tests/fixtures/legacy_checkpoints.pt`` was written by ``tests/fixtures/make_legacy_checkpoints.py`` on the old
main: for each chain, the parameters and the optimizer's state dict after a few steps, and the parameters the old
code reached a few steps later. Today's code loads the state dict into a fresh optimizer and must reach the same
parameters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_legacy_checkpoints as legacy  # noqa: E402

SAVED = torch.load(FIXTURES / "legacy_checkpoints.pt", weights_only=False)


@pytest.mark.parametrize("name", sorted(legacy.chains()))
def test_legacy_state_dict_continues_the_run(name: str) -> None:
    saved = SAVED["runs"][name]
    opt, params, x, y = legacy.build(name)
    with torch.no_grad():
        for p, v in zip(params, saved["params"], strict=True):
            p.copy_(v)
    opt.load_state_dict(saved["state_dict"])
    legacy.run(name, opt, params, x, y, SAVED["steps_after"])
    for p, expected in zip(params, saved["expected"], strict=True):
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)


def test_the_fixture_covers_every_chain() -> None:
    assert sorted(SAVED["runs"]) == sorted(legacy.chains())
    assert SAVED["version"] == "0.1.0"
