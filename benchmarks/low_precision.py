"""Low precision: state bytes per parameter and step time of ``state_dtype`` / ``param_update`` vs fp32 state.

Every configuration gets its own copy of the same parameters and gradients; they take turns step by step in one
process (drift in machine load hits them alike), and the median step time over many steps is reported, with the
bytes of optimizer state (``opt.state`` tensors, Kahan buffers included) per parameter element.

The baseline is Adam with fp32 state, which takes torch's fused kernel where it can; state kept in another dtype
and compensated writes take the foreach path (the fused kernel would bypass them), so the unfused fp32 row is the
like-for-like reference.  They also allocate temporaries per step (the upcast state of one segment, one buffer in
the wide dtype for the compensated write): free with CUDA's caching allocator, page faults on CPU.

    python benchmarks/low_precision.py                   # CPU, the default sizes
    python benchmarks/low_precision.py --quick           # a smoke run
    python benchmarks/low_precision.py --device cuda --numel 50000000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torchzero as tz  # noqa: E402

# (label, parameter dtype, chain, tz.Modular options)
CONFIGS: list[tuple[str, torch.dtype, Callable[[], list[Any]], dict[str, Any]]] = [
    ("fp32 params, fp32 state (baseline)", torch.float32, lambda: [tz.m.Adam(), tz.m.LR(1e-3)], {}),
    (
        "fp32 params, fp32 state, foreach (unfused)",
        torch.float32,
        lambda: [tz.m.Adam(fused=False), tz.m.LR(1e-3)],
        {},
    ),
    ("fp32 params, bf16 state", torch.float32, lambda: [tz.m.Adam(), tz.m.LR(1e-3)], {"state_dtype": "bfloat16"}),
    ("bf16 params, bf16 state, plain", torch.bfloat16, lambda: [tz.m.Adam(), tz.m.LR(1e-3)], {}),
    ("bf16 params, fp32 state", torch.bfloat16, lambda: [tz.m.Adam(), tz.m.LR(1e-3)], {"state_dtype": "float32"}),
    ("bf16 params, bf16 state, kahan", torch.bfloat16, lambda: [tz.m.Adam(), tz.m.LR(1e-3)], {"param_update": "kahan"}),
    (
        "bf16 params, bf16 state, stochastic",
        torch.bfloat16,
        lambda: [tz.m.Adam(), tz.m.LR(1e-3)],
        {"param_update": "stochastic_rounding"},
    ),
    (
        "fp32 params, bf16 state, SGD momentum",
        torch.float32,
        lambda: [tz.m.SGD(momentum=0.9), tz.m.LR(1e-3)],
        {"state_dtype": "bfloat16"},
    ),
    ("fp32 params, fp32 state, SGD momentum", torch.float32, lambda: [tz.m.SGD(momentum=0.9), tz.m.LR(1e-3)], {}),
]


def _shapes(numel: int, tensors: int) -> list[torch.Size]:
    per = max(1, numel // tensors)
    return [torch.Size([per // 64, 64]) if i % 2 else torch.Size([per]) for i in range(tensors)]


def state_bytes(opt: torch.optim.Optimizer) -> int:
    total = 0

    def walk(v: Any) -> None:
        nonlocal total
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    for st in opt.state.values():
        walk(st)
    return total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--numel", type=int, default=4_000_000, help="parameter elements in all")
    parser.add_argument("--tensors", type=int, default=40)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.numel, args.tensors, args.steps, args.warmup = 100_000, 8, 3, 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = _shapes(args.numel, args.tensors)
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) * 1e-2 for s in shapes] for _ in range(4)]
    runs = []
    for label, dtype, chain, options in CONFIGS:
        params = [b.to(device, dtype, copy=True).requires_grad_() for b in base]
        gs = [[g.to(device, dtype) for g in step] for step in grads]
        runs.append((label, params, gs, tz.Modular(params, *chain(), **options), []))
    numel = sum(p.numel() for p in runs[0][1])
    for t in range(args.warmup + args.steps):
        for _, params, gs, opt, times in runs:
            for p, g in zip(params, gs[t % len(gs)], strict=True):
                p.grad = g
            _sync(device)
            start = time.perf_counter()
            opt.step()
            _sync(device)
            if t >= args.warmup:
                times.append(time.perf_counter() - start)
    baseline = statistics.median(runs[0][4])
    print(
        f"{numel:,} parameter elements in {len(shapes)} tensors on {device}, {args.threads} thread(s), torch {torch.__version__}"
    )
    print(f"median of {args.steps} steps, configurations interleaved step by step")
    print(f"{'configuration':40s} {'state B/param':>14s} {'step ms':>9s} {'vs baseline':>12s}")
    for label, _, _, opt, times in runs:
        med = statistics.median(times)
        print(f"{label:40s} {state_bytes(opt) / numel:14.2f} {med * 1e3:9.2f} {med / baseline:11.2f}x")


if __name__ == "__main__":
    main()
