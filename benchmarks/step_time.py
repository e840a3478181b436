"""Step time of tz.Modular chains against torch.optim, per workload.

Every optimizer gets its own copy of the same parameters and gradients; they take turns step by step in
one process (so drift in machine load hits all of them alike), and we report the median of many steps.
Also reported: bytes allocated by out-of-place ops during one step, in units of the parameters' size
(a proxy for temporaries on CPU; on CUDA the peak extra memory is measured directly).

    python benchmarks/step_time.py                      # all workloads, 1 and 2 threads, CPU
    python benchmarks/step_time.py --quick              # a smoke run
    python benchmarks/step_time.py --device cuda --threads 1
    python benchmarks/step_time.py --upstream /tmp/upstream_site   # also the upstream torchzero release
    python benchmarks/step_time.py --compiled           # also torch.compile(opt.step) rows (Inductor)

For ``--upstream``, install the release into its own folder first (it has the same import name):
``pip install --target /tmp/upstream_site torchzero==0.4.4 scipy numpy``.  It runs in a child process beside
its own torch.optim baseline, so its ratios are comparable with ours.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_UPSTREAM = "--impl=upstream" in sys.argv
if not _UPSTREAM:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torchzero as tz  # noqa: E402

# ----------------------------------------------------------------------------- workloads


def _mixed(n: int = 300, total: int = 1_000_000) -> list[torch.Size]:
    g = torch.Generator().manual_seed(0)
    sizes = torch.rand(n, generator=g) + 0.2
    sizes = (sizes / sizes.sum() * total).long().clamp(min=1)
    shapes = []
    for i, s in enumerate(sizes.tolist()):
        shapes.append(torch.Size([s]) if i % 3 == 0 else torch.Size([max(1, s // 16), 16]))
    return shapes


def _transformer() -> list[torch.Size]:
    layer = torch.nn.TransformerEncoderLayer(d_model=256, nhead=4, dim_feedforward=1024, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, num_layers=6, enable_nested_tensor=False)
    return [p.shape for p in model.parameters()]


WORKLOADS: dict[str, Callable[[], list[torch.Size]]] = {
    "300 mixed (~1M)": _mixed,
    "4 large (~20M)": lambda: [torch.Size([5_000_000])] * 4,
    "transformer 6L": _transformer,
    "300 one-element": lambda: [torch.Size([1])] * 300,
}


def _upstream_chains() -> dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]:
    Opt = getattr(tz, "Modular", None) or tz.Optimizer
    return {
        "torch Adam foreach": lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True),
        "upstream Adam,LR": lambda p: Opt(p, tz.m.Adam(), tz.m.LR(1e-3)),
        "upstream Adam,Cautious,LR,WD": lambda p: Opt(
            p, tz.m.Adam(), tz.m.Cautious(), tz.m.LR(1e-3), tz.m.WeightDecay(1e-4)
        ),
        "upstream HeavyBall,LR": lambda p: Opt(p, tz.m.HeavyBall(0.9), tz.m.LR(1e-3)),
    }


class _Compiled:
    """``torch.compile(opt.step)``, the way torch documents compiling an optimizer step."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt
        self.step = torch.compile(opt.step)


def _compiled_chains() -> dict[str, Callable[[list[torch.Tensor]], Any]]:
    # every optimizer instance compiles the same code objects again; without a higher limit dynamo would give up
    # after 8 and run the later ones eagerly, which would then be timed as "compiled"
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096
    return {
        "torch Adam compiled": lambda p: _Compiled(torch.optim.Adam(p, lr=1e-3, foreach=True)),
        "tz Adam,LR compiled": lambda p: _Compiled(tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-3))),
        "tz Adam,Cautious,LR,WD compiled": lambda p: _Compiled(
            tz.Modular(p, tz.m.Adam(), tz.m.Cautious(), tz.m.LR(1e-3), tz.m.WeightDecay(1e-4))
        ),
    }


def _chains(compiled: bool = False) -> dict[str, Callable[[list[torch.Tensor]], Any]]:
    if _UPSTREAM:
        return _upstream_chains()
    chains: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
        "torch Adam foreach": lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True),
        "torch Adam fused": lambda p: torch.optim.Adam(p, lr=1e-3, fused=True),
        "tz Adam,LR": lambda p: tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-3)),
        "tz Adam,LR (foreach)": lambda p: tz.Modular(p, tz.m.Adam(fused=False), tz.m.LR(1e-3)),
        "torch SGD-m foreach": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, foreach=True),
        "torch SGD-m fused": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, fused=True),
        "tz SGD-m,LR": lambda p: tz.Modular(p, tz.m.SGD(momentum=0.9), tz.m.LR(1e-3)),
    }
    if hasattr(tz.m, "Cautious") and hasattr(tz.m, "WeightDecay"):
        chains["tz Adam,Cautious,LR,WD"] = lambda p: tz.Modular(
            p, tz.m.Adam(), tz.m.Cautious(), tz.m.LR(1e-3), tz.m.WeightDecay(1e-4)
        )
    if hasattr(tz.m, "HeavyBall"):
        chains["tz HeavyBall,LR"] = lambda p: tz.Modular(p, tz.m.HeavyBall(0.9), tz.m.LR(1e-3))
    if compiled:
        chains.update(_compiled_chains())
    return chains


# ----------------------------------------------------------------------------- measurement


class _AllocCounter(TorchDispatchMode):
    """Sums the bytes of tensors returned by out-of-place ops."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        name = func.__name__ if hasattr(func, "__name__") else str(func)
        if not name.split(".")[0].endswith("_") and "copy_" not in name:
            for t in out if isinstance(out, (list, tuple)) else [out]:
                if isinstance(t, torch.Tensor) and t.numel() > 1:
                    self.bytes += t.numel() * t.element_size()
        return out


def _make(shapes: list[torch.Size], device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=g).to(device).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(device) * 1e-2
    return params


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(workload: str, steps: int, device: str, chains: dict) -> list[dict]:
    shapes = WORKLOADS[workload]()
    runs = {}
    for name, make in chains.items():
        try:
            params = _make(shapes, device)
            runs[name] = (make(params), params)
        except (RuntimeError, ValueError) as e:  # e.g. fused not supported here
            print(f"  skip {name}: {e}", file=sys.stderr)
    times: dict[str, list[float]] = {n: [] for n in runs}
    for _ in range(5):  # warm-up: lazy state, layouts, kernels (and compiling: dynamo's first steps specialise)
        for opt, _ in runs.values():
            opt.step()
    for _ in range(steps):
        for name, (opt, _) in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            opt.step()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    rows = []
    param_bytes = sum(s.numel() for s in shapes) * 4
    for name, (opt, _params) in runs.items():
        counter = _AllocCounter()
        if not isinstance(opt, _Compiled):  # a compiled graph's buffers are not seen by a dispatch mode
            with counter:
                opt.step()
        row = {
            "workload": workload,
            "optimizer": name,
            "median_ms": 1e3 * statistics.median(times[name]),
            "alloc_x_params": float("nan") if isinstance(opt, _Compiled) else counter.bytes / param_bytes,
        }
        if device.startswith("cuda"):
            gc.collect()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            opt.step()
            row["peak_extra_x_params"] = (torch.cuda.max_memory_allocated() - base) / param_bytes
        rows.append(row)
    base = {r["workload"]: r["median_ms"] for r in rows if r["optimizer"] == "torch Adam foreach"}
    for r in rows:
        r["vs_adam_foreach"] = r["median_ms"] / base[r["workload"]] if r["workload"] in base else float("nan")
    del runs
    gc.collect()
    return rows


def render(rows: list[dict], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text without rich
        print(title)
        for r in rows:
            print(r)
        return
    table = Table(title=title)
    cols = ["workload", "optimizer", "median_ms", "vs_adam_foreach", "alloc_x_params"]
    if any("peak_extra_x_params" in r for r in rows):
        cols.append("peak_extra_x_params")
    for c in cols:
        table.add_column(c, justify="left" if c in ("workload", "optimizer") else "right")
    for r in rows:
        table.add_row(*[f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols])
    Console(width=160).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per optimizer (median is reported)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    ap.add_argument("--quick", action="store_true", help="few steps, small workloads only (smoke test)")
    ap.add_argument("--json", type=Path, help="also write the rows to this file")
    ap.add_argument("--compiled", action="store_true", help="add torch.compile(opt.step) rows (slow to start)")
    ap.add_argument("--upstream", type=Path, help="folder with the upstream torchzero release installed (--target)")
    ap.add_argument("--impl", choices=["ours", "upstream"], default="ours", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.threads = 5, args.threads[:1]
        args.workloads = ["300 mixed (~1M)", "300 one-element"]
    all_rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows = []
        for w in args.workloads:
            rows += bench(w, args.steps, args.device, _chains(args.compiled))
            if args.upstream is not None:
                rows += _run_upstream(args, w, threads)
        for r in rows:
            r["threads"] = threads
        if args.impl == "upstream":
            all_rows += rows
            continue
        render(rows, f"step time, {args.device}, {threads} thread(s), median of {args.steps} steps")
        all_rows += rows
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=1))
    return 0


def _run_upstream(args: argparse.Namespace, workload: str, threads: int) -> list[dict]:
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, __file__, "--impl=upstream", "--steps", str(args.steps), "--threads", str(threads),
               "--device", args.device, "--workloads", workload, "--json", str(out)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(args.upstream), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            print(f"  upstream run failed: {proc.stderr[-2000:]}", file=sys.stderr)
            return []
        rows = json.loads(out.read_text())
    # keep the upstream rows, with ratios against the torch baseline measured in the same child process
    return [r for r in rows if r["optimizer"].startswith("upstream")]


if __name__ == "__main__":
    raise SystemExit(main())
