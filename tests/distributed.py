"""Run a script under ``torchrun --nproc_per_node N`` on CPU (gloo) with a free port and a hard timeout.

A desynchronised run (one rank waiting in an all-reduce the others never reach) or a rank stuck at exit
fails the test with the output of every rank, and the Python stack of every thread of every rank, instead
of hanging the suite.  Each script runs under ``tests/_exit_guard.py``, which fails it if it destroys the
process group while a DDP model is alive (a deadlock at exit in some runs, see ``end_process_group``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXIT_GUARD = ROOT / "tests" / "_exit_guard.py"


def dump_stacks_and_kill(pid: int) -> None:
    """End a hung torchrun (``pid``, started in its own session): every rank prints its threads' stacks, then all go.

    torchrun is paused first (SIGSTOP), so it cannot tear the other ranks down when the first one aborts; the
    ranks then get SIGABRT one after another (faulthandler prints each one's stacks whole, not interleaved with
    another's on the shared output), and finally the whole tree gets SIGKILL.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    _signal_tree(pid, signal.SIGABRT, root=False, stagger=0.3)
    time.sleep(2)
    _signal_tree(pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _signal_tree(pid: int, sig: int, *, root: bool = True, stagger: float = 0.0) -> None:
    """Send ``sig`` to every descendant of ``pid`` (torchrun's ranks), and to ``pid`` itself if ``root``.

    ``stagger`` seconds pass between two processes, so that what each prints on the signal (faulthandler's stacks
    on SIGABRT) is not interleaved with the others' on the shared output.
    """
    import psutil  # installed with accelerate

    procs = []
    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(pid)
        procs = parent.children(recursive=True) + ([parent] if root else [])
    for i, p in enumerate(procs):
        if i and stagger:
            time.sleep(stagger)
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)


def torchrun(
    script: str | Path,
    *args: str,
    nproc: int = 2,
    timeout: float = 180,
    env: dict | None = None,
    expect_failure: bool = False,
) -> str:
    """Run ``script`` on ``nproc`` processes; return the combined output, fail the test on error or timeout.

    A port taken by another process between choosing and binding it is retried with a new port.  With
    ``expect_failure`` a run that exits with an error (within ``timeout``) is the expected outcome: its output is
    returned, and a run that succeeds fails the test.
    """
    for _attempt in range(3):
        returncode, out = _run(script, args, nproc, timeout, env)
        if "ADDRINUSE" in out or "Address already in use" in out:
            continue
        if (returncode == 0) != expect_failure:
            return out
        break
    if expect_failure:
        pytest.fail(f"torchrun was expected to fail but exited with 0\n{out[-6000:]}")
    pytest.fail(f"torchrun exited with {returncode}\n{out[-6000:]}")


def _run(script: str | Path, args: tuple[str, ...], nproc: int, timeout: float, env: dict | None) -> tuple[int, str]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={nproc}", "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        str(EXIT_GUARD), str(script), *args,
    ]  # fmt: skip
    # PYTHONFAULTHANDLER: a rank that gets SIGABRT (below) or crashes prints the stack of each of its threads
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **(env or {})}
    # the ranks import this checkout's packages and `tests` (as pytest's `pythonpath` does for the tests)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        dump_stacks_and_kill(proc.pid)
        out, _ = proc.communicate()
        pytest.fail(
            f"torchrun hung: killed after {timeout}s. Either the ranks fell out of lockstep (one waits in a "
            "collective the others never reach) or a rank is stuck at exit (see end_process_group). The "
            f"Python stacks of the ranks' threads, printed on SIGABRT, are at the end of the output:\n{out[-12000:]}"
        )
    return proc.returncode, out


def torchrun_nodes(script: str | Path, *args: str, nnodes: int = 2, nproc: int = 1, timeout: float = 180) -> str:
    """Run ``script`` as ``nnodes`` "nodes" on this machine: one torchrun launch per node (``--node_rank``) meeting
    at a c10d rendezvous on localhost, ``nproc`` processes each.  Returns the nodes' outputs, one after another;
    fails the test when a node fails or the run does not end within ``timeout`` (every node is then ended, its
    ranks' stacks printed)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    procs = []
    for node in range(nnodes):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={nproc}",
            f"--node_rank={node}", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
            f"--rdzv_id=tz{port}", str(EXIT_GUARD), str(script), *args,
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                      start_new_session=True))  # fmt: skip
    deadline = time.monotonic() + timeout
    outs, hung = [], False
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            hung = True
            for p in procs:
                if p.poll() is None:
                    dump_stacks_and_kill(p.pid)
            out, _ = proc.communicate()
        outs.append(out)
    text = "\n".join(f"----- node {i}\n{o}" for i, o in enumerate(outs))
    if hung:
        pytest.fail(f"the {nnodes}-node run hung: killed after {timeout}s\n{text[-12000:]}")
    if any(p.returncode != 0 for p in procs):
        pytest.fail(f"a node exited with {[p.returncode for p in procs]}\n{text[-6000:]}")
    return text


def end_process_group() -> None:
    """End a torchrun worker: free the garbage models, wait for every rank, destroy the process group.

    Delete the worker's own references to its DDP and FSDP models first (``del model``, or let the function
    that trained them return; the collection frees those in reference cycles).  DDP's C++ ``Reducer`` holds
    the process group: freed after ``destroy_process_group`` it drops the group's last reference, and gloo's
    destructor joins its worker threads with the GIL held while a worker may need the GIL to free the last
    collective's tensors: a deadlock at exit in some runs (torch 2.13; docs/guides/distributed.md).
    """
    import torch.distributed as dist

    gc.collect()  # models in reference cycles (FSDP's are) go now, while the process group is alive
    dist.barrier()
    dist.destroy_process_group()
