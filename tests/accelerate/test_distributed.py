"""Two processes (torchrun, gloo, CPU): every chain keeps the ranks identical, agrees with one process
on the concatenated batch, and never hangs (hard timeout).  The checks themselves are in
``_dist_worker.py``; one launch runs them all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distributed import torchrun

from ._common import CHAINS

WORKER = Path(__file__).with_name("_dist_worker.py")


@pytest.mark.distributed
def test_two_processes_stay_identical_and_match_one_process(tmp_path):
    out = torchrun(WORKER, str(tmp_path), nproc=2, timeout=150)
    expected = [f"{c}/{precision}" for precision in ("no", "bf16") for c in CHAINS]
    expected += ["accumulation", "closure accumulation", "schedulers", "rfdm seeds control"]
    for rank in (0, 1):
        result = tmp_path / f"rank{rank}.json"
        assert result.exists(), f"rank {rank} did not finish:\n{out[-4000:]}"
        assert sorted(json.loads(result.read_text())) == sorted(expected)
