"""Run every torchrun script the project ships or tests N times and count hangs (not part of the test suite).

Each run is ``torchrun --nproc_per_node 2`` on CPU (gloo) with a free port and a hard timeout, while one
extra process keeps a core busy (a loaded machine is where exit-time deadlocks show up).  On a timeout the
ranks get SIGABRT first, so Python's faulthandler writes every thread's stack, then the whole process tree
is killed.  The output of every run that hung or failed is kept in ``--log-dir``.

    python scripts/stress_torchrun.py                      # 20 runs of every script
    python scripts/stress_torchrun.py -n 5 accelerate_plain lightning_ddp
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.distributed import dump_stacks_and_kill, free_port  # noqa: E402 - the test helper's process handling

# name -> (script, arguments); "{tmp}" is replaced by a fresh directory for each run
SCRIPTS: dict[str, tuple[str, list[str]]] = {
    "accelerate_plain": ("examples/accelerate_plain.py", ["--steps", "3"]),
    "accelerate_closure": ("examples/accelerate_closure.py", ["--steps", "3"]),
    "accelerate_dist_worker": ("tests/accelerate/_dist_worker.py", ["{tmp}"]),
    "closure_ddp_worker": ("tests/modules/closure/_ddp_worker.py", []),
    "lightning_ddp": ("tests/lightning/_ddp_worker.py", ["{tmp}"]),
    "fsdp_worker": ("tests/core/_fsdp_worker.py", []),
}


def run_once(script: str, args: list[str], timeout: float) -> tuple[str, str, float]:
    """One torchrun run: returns ("passed" | "hang" | "failure", combined output, seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "torch.distributed.run",
            "--nproc_per_node=2", "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
            str(ROOT / script), *(a.replace("{tmp}", tmp) for a in args),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
            result = "passed" if proc.returncode == 0 else "failure"
        except subprocess.TimeoutExpired:
            dump_stacks_and_kill(proc.pid)  # each rank prints its threads' stacks, then all go
            out, _ = proc.communicate()
            result = "hang"
        return result, out, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"scripts to run (default: all of {', '.join(SCRIPTS)})")
    parser.add_argument("-n", "--runs", type=int, default=20, help="runs per script (default 20)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before a run counts as hung")
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()) / "stress_torchrun")
    parser.add_argument("--no-load", action="store_true", help="do not keep a core busy")
    opts = parser.parse_args()
    if unknown := set(opts.names) - set(SCRIPTS):
        parser.error(f"unknown scripts: {', '.join(sorted(unknown))}")
    opts.log_dir.mkdir(parents=True, exist_ok=True)

    busy = None if opts.no_load else subprocess.Popen([sys.executable, "-c", "while True: pass"])
    rows = []
    try:
        for name in opts.names or SCRIPTS:
            script, args = SCRIPTS[name]
            counts = {"passed": 0, "hang": 0, "failure": 0}
            for i in range(opts.runs):
                result, out, seconds = run_once(script, args, opts.timeout)
                counts[result] += 1
                if result != "passed":
                    (opts.log_dir / f"{name}_{i}_{result}.log").write_text(out)
                print(f"{name} run {i + 1}/{opts.runs}: {result} ({seconds:.0f} s)", flush=True)
            rows.append((name, opts.runs, counts["passed"], counts["hang"], counts["failure"]))
    finally:
        if busy is not None:
            busy.kill()

    print(f"\n{'script':<24} {'runs':>5} {'passed':>7} {'hangs':>6} {'failures':>9}")
    for name, runs, passed, hangs, failures in rows:
        print(f"{name:<24} {runs:>5} {passed:>7} {hangs:>6} {failures:>9}")
    print(f"logs of hung or failed runs: {opts.log_dir}")
    sys.exit(0 if all(r[2] == r[1] for r in rows) else 1)


if __name__ == "__main__":
    main()
