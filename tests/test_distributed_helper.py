"""The torchrun helper turns a desynchronised run into a prompt failure instead of a hang."""

import time
from pathlib import Path

import pytest

from tests.distributed import torchrun

pytestmark = pytest.mark.distributed

HANG = """
import time, torch.distributed as dist
dist.init_process_group("gloo")
if dist.get_rank() == 0:
    dist.barrier()  # rank 1 never joins: a desync
time.sleep(600)
"""


def test_desync_fails_within_the_timeout(tmp_path: Path):
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="timed out"):
        torchrun(script, timeout=8)
    assert time.monotonic() - start < 30
