"""``python tests/_exit_guard.py SCRIPT ARGS...``: run a torchrun worker script, failing it if it destroys the
process group while a ``DistributedDataParallel`` or FSDP model is alive.

DDP's C++ ``Reducer`` holds the process group.  A model freed after ``destroy_process_group`` drops the
group's last reference, and gloo's destructor then joins its worker threads with the GIL held, while a worker
may be waiting for the GIL to free the last collective's tensors: a deadlock at exit in some runs (torch
2.13, about one run in six on a busy machine).  An FSDP model holds the group too; left in a reference
cycle it is freed at interpreter exit, where a gloo thread that needs the GIL is killed and the process
aborts (*terminate called without an active exception*).  The guard turns these races into a failure of
every run.
"""

import gc
import os
import runpy
import sys
import traceback
from pathlib import Path

import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from torch.nn.parallel import DistributedDataParallel

HOLDERS = (DistributedDataParallel, FSDPModule, FullyShardedDataParallel)  # models that hold a process group

_destroy = c10d.destroy_process_group


def _checked_destroy(*args, **kwargs):
    # no gc.collect() here: a model left in a reference cycle would be freed by a later collection, too late
    alive = sorted({type(o).__name__ for o in gc.get_objects() if issubclass(type(o), HOLDERS)})
    if alive:
        traceback.print_stack()
        print(
            f"destroy_process_group() while models that hold the process group are alive ({', '.join(alive)}): "
            "free them first (del model; gc.collect()), see docs/guides/distributed.md",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)  # not an exception: exiting with the model alive is what may deadlock
    return _destroy(*args, **kwargs)


if __name__ == "__main__":
    dist.destroy_process_group = c10d.destroy_process_group = _checked_destroy
    script = Path(sys.argv[1]).resolve()
    sys.argv = sys.argv[1:]
    sys.path[0] = str(script.parent)  # as if the script were run directly
    runpy.run_path(str(script), run_name="__main__")
