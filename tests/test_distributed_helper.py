"""The torchrun helper turns a desynchronised run into a prompt failure instead of a hang, shows where each
rank was stuck, and fails a script that destroys the process group while a DDP model is alive."""

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

# argv[1] == "free": the model goes before the process group, as it should
DDP_AT_EXIT = """
import sys, torch, torch.distributed as dist
from tests.distributed import end_process_group
dist.init_process_group("gloo")
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
model(torch.ones(3, 2)).sum().backward()
if sys.argv[1] == "free":
    del model
end_process_group()
print("EXITED CLEANLY", flush=True)
"""


def test_desync_fails_within_the_timeout_with_the_stacks(tmp_path: Path):
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="torchrun hung") as failure:
        torchrun(script, timeout=8)
    assert time.monotonic() - start < 30
    # faulthandler's stacks: rank 0 waits in the barrier (line 5), rank 1 sleeps (line 6)
    assert 'hang.py", line 5' in str(failure.value), str(failure.value)[-3000:]
    assert 'hang.py", line 6' in str(failure.value), str(failure.value)[-3000:]


def test_a_ddp_model_alive_at_destroy_process_group_fails(tmp_path: Path):
    script = tmp_path / "ddp_at_exit.py"
    script.write_text(DDP_AT_EXIT)
    with pytest.raises(pytest.fail.Exception, match=r"process group are alive \(DistributedDataParallel\)"):
        torchrun(script, "keep", timeout=120)
    assert "EXITED CLEANLY" in torchrun(script, "free", timeout=120)
