"""Closure chains on two processes stay in lockstep when the closure returns an all-reduced loss."""

import re
from pathlib import Path

import pytest

from tests.distributed import torchrun
from tests.modules.closure._ddp_worker import CHAINS

pytestmark = pytest.mark.distributed


def test_closure_chains_stay_in_lockstep_and_match_one_process():
    out = torchrun(Path(__file__).with_name("_ddp_worker.py"), nproc=2, timeout=150)
    assert len(CHAINS) == 5
    for name in CHAINS:
        # the ranks' lines may interleave; "fdm_..." must not match inside "rfdm_..."
        assert len(re.findall(rf"(?<![a-z_]){name} OK", out)) == 2, out[-3000:]
