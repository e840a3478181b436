"""FSDP2 (``fully_shard``): chains on sharded DTensor parameters equal torch.optim on the unsharded model."""

from pathlib import Path

import pytest

from tests.distributed import torchrun

pytestmark = pytest.mark.distributed


def test_fsdp2_chains_match_unsharded_torch():
    out = torchrun(Path(__file__).with_name("_fsdp_worker.py"), nproc=2, timeout=240)
    for name in ("adam_fused", "adam_foreach", "sgd_nesterov", "adam_bf16_state", "sgd_kahan", "clipnorm_global"):
        assert out.count(f"{name} OK") == 2, out[-3000:]
