"""Run a script under ``torchrun --nproc_per_node N`` on CPU (gloo) with a free port and a hard timeout.

A desynchronised run (one rank waiting in an all-reduce the others never reach) fails the test with the
output of every rank instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(pid: int) -> None:
    try:
        import psutil  # installed with accelerate

        procs = psutil.Process(pid).children(recursive=True) + [psutil.Process(pid)]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    except ImportError:
        os.killpg(pid, 9)


def torchrun(script: str | Path, *args: str, nproc: int = 2, timeout: float = 180, env: dict | None = None) -> str:
    """Run ``script`` on ``nproc`` processes; return the combined output, fail the test on error or timeout.

    A port taken by another process between choosing and binding it is retried with a new port.
    """
    for _attempt in range(3):
        returncode, out = _run(script, args, nproc, timeout, env)
        if returncode == 0:
            return out
        if "ADDRINUSE" not in out and "Address already in use" not in out:
            break
    pytest.fail(f"torchrun exited with {returncode}\n{out[-6000:]}")


def _run(script: str | Path, args: tuple[str, ...], nproc: int, timeout: float, env: dict | None) -> tuple[int, str]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={nproc}", "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        str(script), *args,
    ]  # fmt: skip
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)  # torchrun starts each rank in its own session: kill every descendant
        out, _ = proc.communicate()
        pytest.fail(f"torchrun timed out after {timeout}s (ranks out of lockstep?)\n{out[-6000:]}")
    return proc.returncode, out
