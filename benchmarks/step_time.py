"""Step time of tz.Modular chains against torch.optim, per workload.

Every optimizer gets its own copy of the same parameters and gradients; they take turns step by step in
one process (so drift in machine load hits all of them alike), and we report the median of many steps.
Also reported: bytes allocated by out-of-place ops during one step, in units of the parameters' size
(a proxy for temporaries on CPU; on CUDA the peak extra memory is measured directly).

    python benchmarks/step_time.py                      # all workloads, 1 and 2 threads, CPU
    python benchmarks/step_time.py --quick              # a smoke run
    python benchmarks/step_time.py --device cuda --threads 1
    python benchmarks/step_time.py --upstream /tmp/upstream_site   # also the upstream torchzero release
    python benchmarks/step_time.py --compiled --threads 1 --workloads "4 x 2M" "transformer 6L" "300 mixed (~1M)"
                                                        # compiled rows (Inductor) beside a measured bytes floor
    python benchmarks/step_time.py --modern --threads 1  # the newer modules beside their reference optimizers
    python benchmarks/step_time.py --more --threads 1    # Shampoo, SOAP, PSGDKron, Sophia, Lookahead likewise
    python benchmarks/step_time.py --catalogue --threads 1 --workloads "4 x 2M"  # compiled elementwise chains, GB/s

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
    "4 x 2M": lambda: [torch.Size([2_000_000])] * 4,
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


class _Floor:
    """The memory floor: ``x += a * y`` over tensors of the workload's sizes (one read of x and y, one write of
    x: 12 bytes per fp32 element), one foreach kernel per step.  A step that moves ``B`` bytes per parameter
    cannot run faster than this row's time times ``B / 12``."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.x = [p.detach() for p in params]
        self.y = [p.grad for p in params]
        self.state: dict = {}

    def step(self) -> None:
        torch._foreach_add_(self.x, self.y, alpha=1e-3)


BYTES_PER_PARAM = {"floor": 12, "Adam": 28, "Adam,LR": 28, "Adam,Cautious,LR,WD": 28}
"""bytes an fp32 step must move per parameter, by the chain a row's name ends with: Adam reads the parameter,
gradient and both moments and writes back all but the gradient (7 x 4 bytes); Cautious and decoupled weight
decay need nothing more (the gradient and the parameter are already read)"""


def _tz_compiled(params: list[torch.Tensor], *modules: Any) -> Any:
    """``tz.Modular(..., compile=True)``; a version without it compiles ``opt.step`` (the "before" rows)."""
    try:
        return tz.Modular(params, *modules, compile=True)
    except TypeError:
        return _Compiled(tz.Modular(params, *modules))


def _compiled_chains() -> dict[str, Callable[[list[torch.Tensor]], Any]]:
    # every optimizer instance compiles the same code objects again; without a higher limit dynamo would give up
    # after 8 and run the later ones eagerly, which would then be timed as "compiled"
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096
    return {
        "floor": _Floor,
        "torch Adam compiled": lambda p: _Compiled(torch.optim.Adam(p, lr=1e-3, foreach=True)),
        "tz compiled Adam,LR": lambda p: _tz_compiled(p, tz.m.Adam(), tz.m.LR(1e-3)),
        "tz compiled Adam,Cautious,LR,WD": lambda p: _tz_compiled(
            p, tz.m.Adam(), tz.m.Cautious(), tz.m.LR(1e-3), tz.m.WeightDecay(1e-4)
        ),
    }


def _catalogue_chains() -> dict[str, Callable[[list[torch.Tensor]], Any]]:
    """Elementwise modules of the catalogue, each compiled with ``LR`` (``compile=True``), beside the floor."""
    _compiled_chains()  # the recompile limits
    m = tz.m
    rules = {
        "SGD(momentum)": lambda: [m.SGD(momentum=0.9)],
        "SGD(nesterov)": lambda: [m.SGD(momentum=0.9, nesterov=True)],
        "HeavyBall": lambda: [m.HeavyBall(0.9)],
        "Adam": lambda: [m.Adam()],
        "Adam,Cautious,WD": lambda: [m.Adam(), m.Cautious(), m.WeightDecay(1e-4)],
        "Adamax": lambda: [m.Adamax()],
        "NAdam": lambda: [m.NAdam()],
        "RAdam": lambda: [m.RAdam()],
        "Lion": lambda: [m.Lion()],
        "RMSprop": lambda: [m.RMSprop()],
        "Adagrad": lambda: [m.Adagrad()],
        "Adadelta": lambda: [m.Adadelta()],
        "EMA,Sign": lambda: [m.EMA(0.9), m.Sign()],
        "ClipValue,Adam": lambda: [m.ClipValue(1.0), m.Adam()],
    }
    chains: dict[str, Callable[[list[torch.Tensor]], Any]] = {"floor": _Floor}
    for name, make in rules.items():
        chains[f"tz compiled {name},LR"] = lambda p, make=make: _tz_compiled(p, *make(), tz.m.LR(1e-3))
    return chains


def _own_bytes(row: dict) -> float:
    """Bytes per parameter a step must move at least: read the parameter and the gradient, write the parameter
    (12 for fp32), and read and write every state tensor once (twice the state's bytes per parameter)."""
    return 12 + 2 * row["state_bytes_per_param"]


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
    if compiled:  # the compiled rows beside the eager references they are measured against
        keep = ("torch Adam foreach", "torch Adam fused", "tz Adam,LR", "tz Adam,Cautious,LR,WD")
        chains = {k: v for k, v in chains.items() if k in keep}
        chains.update(_compiled_chains())
    return chains


def _modern_pairs() -> dict[str, tuple[str, Callable[[list[torch.Tensor]], Any], Callable[[list[torch.Tensor]], Any]]]:
    """``module: (reference name, make reference, make tz chain)``, set up as the parity tests set them up.

    The reference packages are optional: a pair whose package is missing is left out with a note.
    """
    pairs: dict[str, tuple[str, Callable[[list[torch.Tensor]], Any], Callable[[list[torch.Tensor]], Any]]] = {
        "ASGD": ("torch.optim.ASGD", lambda p: torch.optim.ASGD(p, lr=1e-2),
                 lambda p: tz.Modular(p, tz.m.ASGD(), tz.m.LR(1e-2))),
        "Adafactor": ("torch.optim.Adafactor", lambda p: torch.optim.Adafactor(p, lr=1e-2),
                      lambda p: tz.Modular(p, tz.m.Adafactor(), tz.m.LR(1e-2))),
    }  # fmt: skip
    try:
        import pytorch_optimizer as po
    except ImportError:
        print("  skip Lamb, LARS, ADOPT, AdEMAMix, MARS: pytorch_optimizer is not installed", file=sys.stderr)
    else:
        pairs.update({
            "Lamb": ("pytorch_optimizer.Lamb", lambda p: po.Lamb(p, lr=1e-2),
                     lambda p: tz.Modular(p, tz.m.Lamb(), tz.m.LR(1e-2))),
            "LARS": ("pytorch_optimizer.LARS", lambda p: po.LARS(p, lr=0.1),
                     lambda p: tz.Modular(p, tz.m.LARS(), tz.m.LR(0.1))),
            "ADOPT": ("pytorch_optimizer.ADOPT", lambda p: po.ADOPT(p, lr=1e-2),
                      lambda p: tz.Modular(p, tz.m.ADOPT(), tz.m.LR(1e-2))),
            "AdEMAMix": ("pytorch_optimizer.AdEMAMix", lambda p: po.AdEMAMix(p, lr=1e-2),
                         lambda p: tz.Modular(p, tz.m.AdEMAMix(), tz.m.LR(1e-2))),
            "MARS": ("pytorch_optimizer.MARS", lambda p: po.MARS(p, lr=1e-2, optimize_1d=True),
                     lambda p: tz.Modular(p, tz.m.MARS(), tz.m.LR(1e-2))),
        })  # fmt: skip
    try:
        import schedulefree
    except ImportError:
        print("  skip ScheduleFreeAdamW: schedulefree is not installed", file=sys.stderr)
    else:
        # the reference refuses to step until it is put in training mode
        pairs["ScheduleFreeAdamW"] = (
            "schedulefree.AdamWScheduleFree", lambda p: _train_mode(schedulefree.AdamWScheduleFree(p, lr=2.5e-3)),
            lambda p: tz.Modular(p, tz.m.ScheduleFreeAdamW(), tz.m.LR(2.5e-3)),
        )  # fmt: skip
    try:
        import prodigyopt
    except ImportError:
        print("  skip Prodigy: prodigyopt is not installed", file=sys.stderr)
    else:
        pairs["Prodigy"] = ("prodigyopt.Prodigy", prodigyopt.Prodigy, lambda p: tz.Modular(p, tz.m.Prodigy()))
    try:
        import dadaptation
    except ImportError:
        print("  skip DAdaptAdam: dadaptation is not installed", file=sys.stderr)
    else:
        pairs["DAdaptAdam"] = (
            "dadaptation.DAdaptAdam",
            dadaptation.DAdaptAdam,
            lambda p: tz.Modular(p, tz.m.DAdaptAdam()),
        )
    return pairs


def _more_workloads() -> dict[str, Callable[[], list[torch.Size]]]:
    """Workloads of ``--more``: matrix modules keep a preconditioner per dimension (a ``d x d`` matrix for each
    dimension ``d`` of each tensor), so they run on layer-shaped tensors only."""

    def small_transformer() -> list[torch.Size]:
        layer = torch.nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=512, batch_first=True)
        model = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        return [p.shape for p in model.parameters()]

    return {"transformer 2L (d=128)": small_transformer}


MORE_WORKLOADS = ("transformer 2L (d=128)", "300 one-element", "4 large (~20M)")
"""the default workloads of ``--more`` (matrix modules skip the ones with large dimensions)"""
MATRIX_MAX_DIM = 1024
"""``--more`` runs a matrix module only on workloads whose tensors have no dimension larger than this"""


class _WithLoss:
    """Steps ``opt`` on a fixed elementwise loss of its parameters, for rules that need second derivatives.

    ``sum_i 0.5 |p_i|^2 + 0.1 sum_i cos(p_i)`` (a Hessian that changes with the parameters).  tz's chain gets a
    closure (its ``Sophia`` differentiates the loss itself); a reference that reads Hessian-vector products from
    ``p.grad`` (pytorch_optimizer's ``SophiaH``) gets ``loss.backward(create_graph=True)`` before its ``step()``.
    Both timings include the loss and its backward pass.
    """

    def __init__(self, opt: Any, params: list[torch.Tensor], closure: bool) -> None:
        self.opt, self.params, self.closure = opt, params, closure
        self.state = opt.state

    def loss(self) -> torch.Tensor:
        return sum((0.5 * (p * p).sum() + 0.1 * torch.cos(p).sum() for p in self.params), torch.zeros(()))

    def step(self) -> None:
        if self.closure:

            def closure(backward: bool = True) -> torch.Tensor:
                loss = self.loss()
                if backward:
                    self.opt.zero_grad()
                    loss.backward()
                return loss

            self.opt.step(closure)
            return
        self.opt.zero_grad()
        self.loss().backward(create_graph=True)
        self.opt.step()
        for p in self.params:
            p.grad = None  # drops the graph that create_graph kept


class _Wrapped:
    """A wrapping optimizer (pytorch_optimizer's ``Lookahead``) whose state counts the inner optimizer's too."""

    def __init__(self, opt: Any) -> None:
        self.opt = opt
        self.state = {"outer": opt.state, "inner": opt.optimizer.state}

    def step(self) -> None:
        self.opt.step()


class _Quiet:
    """Runs ``opt.step()`` with stdout silenced (kron_torch prints its memory use on the first step)."""

    def __init__(self, opt: Any) -> None:
        self.opt, self.state = opt, opt.state

    def step(self) -> None:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            self.opt.step()


def _more_pairs() -> dict[
    str, tuple[str, Callable[[list[torch.Tensor]], Any], Callable[[list[torch.Tensor]], Any], bool]
]:
    """``module: (reference name, make reference, make tz chain, is a matrix module)`` for the matrix modules,
    Sophia and Lookahead, each with its reference's defaults (the settings the parity tests start from)."""
    pairs: dict[str, tuple[str, Callable[[list[torch.Tensor]], Any], Callable[[list[torch.Tensor]], Any], bool]] = {}
    try:
        import pytorch_optimizer as po
    except ImportError:
        print("  skip Shampoo, SOAP, Sophia, Lookahead: pytorch_optimizer is not installed", file=sys.stderr)
    else:
        pairs.update({
            "Shampoo": ("pytorch_optimizer.Shampoo", lambda p: po.Shampoo(p, lr=1e-2),
                        lambda p: tz.Modular(p, tz.m.Shampoo(), tz.m.LR(1e-2)), True),
            "SOAP": ("pytorch_optimizer.SOAP", lambda p: po.SOAP(p, lr=1e-2),
                     lambda p: tz.Modular(p, tz.m.SOAP(), tz.m.LR(1e-2)), True),
            "Sophia": ("pytorch_optimizer.SophiaH", lambda p: _WithLoss(po.SophiaH(p, lr=0.05), p, closure=False),
                       lambda p: _WithLoss(tz.Modular(p, tz.m.Sophia(), tz.m.LR(0.05)), p, closure=True), False),
            # pytorch_optimizer's Lookahead around torch's foreach Adam, against the same rule in one chain
            "Lookahead(Adam)": ("pytorch_optimizer.Lookahead(Adam)",
                                lambda p: _Wrapped(po.Lookahead(torch.optim.Adam(p, lr=1e-3, foreach=True), k=5, alpha=0.5)),
                                lambda p: tz.Modular(p, tz.m.Adam(), tz.m.LR(1e-3), tz.m.Lookahead(k=5, alpha=0.5)),
                                False),
        })  # fmt: skip
    try:
        import kron_torch
    except ImportError:
        print("  skip PSGDKron: kron_torch is not installed", file=sys.stderr)
    else:
        pairs["PSGDKron"] = (
            "kron_torch.Kron", lambda p: _Quiet(kron_torch.Kron(p, lr=1e-3)),
            lambda p: tz.Modular(p, tz.m.PSGDKron(), tz.m.LR(1e-3)), True,
        )  # fmt: skip
    return pairs


def bench_more(workload: str, steps: int, device: str, matrix_steps: int | None = None) -> list[dict]:
    """:func:`bench_modern` for :func:`_more_pairs`: a matrix module only where every dimension is at most
    :data:`MATRIX_MAX_DIM`; a matrix module's median is over ``matrix_steps`` steps (by default ``steps // 4``, at
    least 8), since each of its steps costs a preconditioner update."""
    shapes = _shapes(workload)
    largest = max((max(s, default=1) for s in shapes), default=1)
    rows = []
    for module, (ref_name, make_ref, make_tz, matrix) in _more_pairs().items():
        if matrix and largest > MATRIX_MAX_DIM:
            print(f"  skip {module} on {workload}: a dimension of {largest} > {MATRIX_MAX_DIM}", file=sys.stderr)
            continue
        n = (max(8, steps // 4) if matrix_steps is None else matrix_steps) if matrix else steps
        got = {r["optimizer"]: r for r in bench(workload, n, device, {"ref": make_ref, "tz": make_tz})}
        if set(got) != {"ref", "tz"}:
            continue
        ref, ours = got["ref"], got["tz"]
        rows.append({
            "workload": workload, "module": module, "reference": ref_name,
            "ref_ms": ref["median_ms"], "tz_ms": ours["median_ms"], "tz_over_ref": ours["median_ms"] / ref["median_ms"],
            "ref_state_B_per_param": ref["state_bytes_per_param"], "tz_state_B_per_param": ours["state_bytes_per_param"],
            "ref_alloc_x_params": ref["alloc_x_params"], "tz_alloc_x_params": ours["alloc_x_params"],
        })  # fmt: skip
    return rows


def _train_mode(opt: Any) -> Any:
    opt.train()
    return opt


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


def state_bytes(opt: Any) -> int:
    """Bytes of the tensors in ``opt.state`` (nested dicts and lists included), each storage counted once, and of
    the scratch buffers a ``tz.Modular`` keeps between steps (``Segment.scratch``: memory it holds, if not state)."""
    opt = opt.opt if isinstance(opt, _Compiled) else opt
    seen: dict[int, int] = {}

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            seen[storage.data_ptr() or id(storage)] = storage.nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)

    for v in opt.state.values():
        visit(v)
    plan = getattr(opt, "plan", None)
    if plan is not None and hasattr(plan, "kept_scratch"):
        visit(plan.kept_scratch())
    return sum(seen.values())


def _shapes(workload: str) -> list[torch.Size]:
    return (WORKLOADS.get(workload) or _more_workloads()[workload])()


def bench(workload: str, steps: int, device: str, chains: dict) -> list[dict]:
    shapes = _shapes(workload)
    runs = {}
    for name, make in chains.items():
        try:
            params = _make(shapes, device)
            runs[name] = (make(params), params)
        except (RuntimeError, ValueError) as e:  # e.g. fused not supported here
            print(f"  skip {name}: {e}", file=sys.stderr)
    times: dict[str, list[float]] = {n: [] for n in runs}
    warmup = dict.fromkeys(runs, 0.0)
    for _ in range(5):  # warm-up: lazy state, layouts, kernels (and compiling: dynamo's first steps specialise)
        for name, (opt, _) in list(runs.items()):
            t0 = time.perf_counter()
            try:
                opt.step()
            except (RuntimeError, ValueError) as e:  # e.g. prodigyopt overflows on one-element tensors
                print(f"  skip {name}: {e}", file=sys.stderr)
                del runs[name]
                continue
            _sync(device)
            warmup[name] += time.perf_counter() - t0
    times = {n: times[n] for n in runs}
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
        # a compiled graph's buffers are not seen by a dispatch mode
        if not isinstance(opt, (_Compiled, _Floor)) and not getattr(opt, "compiled", False):
            with counter:
                opt.step()
        row = {
            "workload": workload,
            "optimizer": name,
            "median_ms": 1e3 * statistics.median(times[name]),
            "alloc_x_params": counter.bytes / param_bytes if counter.bytes else float("nan"),
            "state_bytes_per_param": state_bytes(opt) / (param_bytes // 4),
            "warmup_s": warmup[name],
        }
        if device.startswith("cuda"):
            gc.collect()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            opt.step()
            row["peak_extra_x_params"] = (torch.cuda.max_memory_allocated() - base) / param_bytes
        rows.append(row)
    base = {r["workload"]: r["median_ms"] for r in rows if r["optimizer"] == "torch Adam foreach"}
    fused = {r["workload"]: r["median_ms"] for r in rows if r["optimizer"] == "torch Adam fused"}
    floor = {r["workload"]: r["median_ms"] for r in rows if r["optimizer"] == "floor"}
    n_params = param_bytes // 4
    for r in rows:
        r["vs_adam_foreach"] = r["median_ms"] / base[r["workload"]] if r["workload"] in base else float("nan")
        r["vs_fused"] = r["median_ms"] / fused[r["workload"]] if r["workload"] in fused else float("nan")
        moved = next((b for k, b in BYTES_PER_PARAM.items() if r["optimizer"].endswith(k)), None)
        if r["optimizer"].startswith("torch Adam"):
            moved = BYTES_PER_PARAM["Adam"]
        r["GB_s"] = moved * n_params / r["median_ms"] / 1e6 if moved else float("nan")
        own_floor = floor[r["workload"]] * moved / BYTES_PER_PARAM["floor"] if moved and r["workload"] in floor else 0
        r["vs_floor"] = r["median_ms"] / own_floor if own_floor else float("nan")
    del runs
    gc.collect()
    return rows


def bench_modern(workload: str, steps: int, device: str) -> list[dict]:
    """Each newer module's chain beside its reference optimizer: the two take turns step by step (:func:`bench`),
    one pair at a time so that only two copies of the workload live at once."""
    rows = []
    for module, (ref_name, make_ref, make_tz) in _modern_pairs().items():
        got = {r["optimizer"]: r for r in bench(workload, steps, device, {"ref": make_ref, "tz": make_tz})}
        if set(got) != {"ref", "tz"}:
            continue  # bench said why on stderr
        ref, ours = got["ref"], got["tz"]
        rows.append({
            "workload": workload, "module": module, "reference": ref_name,
            "ref_ms": ref["median_ms"], "tz_ms": ours["median_ms"], "tz_over_ref": ours["median_ms"] / ref["median_ms"],
            "ref_state_B_per_param": ref["state_bytes_per_param"], "tz_state_B_per_param": ours["state_bytes_per_param"],
            "ref_alloc_x_params": ref["alloc_x_params"], "tz_alloc_x_params": ours["alloc_x_params"],
        })  # fmt: skip
    return rows


MODERN_COLUMNS = {
    "workload": "workload", "module": "module", "reference": "reference", "ref_ms": "ref ms", "tz_ms": "tz ms",
    "tz_over_ref": "tz/ref", "ref_state_B_per_param": "ref state B/param", "tz_state_B_per_param": "tz state B/param",
    "ref_alloc_x_params": "ref alloc", "tz_alloc_x_params": "tz alloc",
}  # fmt: skip
"""the modern table's columns (row keys) and their headers"""
DEFAULT_COLUMNS = {
    c: c for c in ("workload", "optimizer", "median_ms", "vs_adam_foreach", "alloc_x_params", "state_bytes_per_param")
}
COMPILED_COLUMNS = {c: c for c in ("workload", "optimizer", "median_ms", "vs_fused", "vs_floor", "GB_s", "warmup_s")}
"""``--compiled``: time against torch's fused Adam and against the row's own bytes floor (the measured axpy scaled
by the bytes the step must move), effective GB/s, and the warm-up steps' time (compiling included)"""


def render(rows: list[dict], title: str, columns: dict[str, str] = DEFAULT_COLUMNS) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text without rich
        print(title)
        for r in rows:
            print(r)
        return
    table = Table(title=title)
    headers = dict(columns)
    if any("peak_extra_x_params" in r for r in rows):
        headers["peak_extra_x_params"] = "peak_extra_x_params"
    cols = list(headers)
    for c in cols:
        table.add_column(
            headers[c], justify="left" if c in ("workload", "optimizer", "module", "reference") else "right"
        )
    for r in rows:
        table.add_row(*[f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols])
    Console(width=160).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per optimizer (median is reported)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workloads", nargs="+", choices=[*WORKLOADS, *_more_workloads()], default=None)
    ap.add_argument("--quick", action="store_true", help="few steps, small workloads only (smoke test)")
    ap.add_argument("--json", type=Path, help="also write the rows to this file")
    ap.add_argument("--compiled", action="store_true", help="add torch.compile(opt.step) rows (slow to start)")
    ap.add_argument(
        "--modern",
        action="store_true",
        help="time the newer modules (ASGD, Adafactor, Lamb, LARS, ADOPT, AdEMAMix, MARS, ScheduleFreeAdamW, Prodigy, "
        "DAdaptAdam) beside their reference optimizers instead of the default chains",
    )
    ap.add_argument(
        "--more",
        action="store_true",
        help="time Shampoo, SOAP, PSGDKron (on layer-shaped tensors), Sophia and Lookahead beside their reference "
        "optimizers instead of the default chains",
    )
    ap.add_argument(
        "--catalogue",
        action="store_true",
        help="time compiled elementwise chains of the catalogue against the floor (GB/s effective per chain)",
    )
    ap.add_argument("--upstream", type=Path, help="folder with the upstream torchzero release installed (--target)")
    ap.add_argument("--impl", choices=["ours", "upstream"], default="ours", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.workloads is None:
        args.workloads = list(MORE_WORKLOADS if args.more else WORKLOADS)
    if args.quick:
        args.steps, args.threads = 5, args.threads[:1]
        args.workloads = (
            ["transformer 2L (d=128)", "300 one-element"] if args.more else ["300 mixed (~1M)", "300 one-element"]
        )
    all_rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows = []
        if args.more or args.modern:  # the newer modules beside their reference optimizers
            bench_refs, what = (
                (bench_more, "matrix modules, Sophia and Lookahead") if args.more else (bench_modern, "newer modules")
            )
            for w in args.workloads:
                rows += bench_refs(w, args.steps, args.device)
            for r in rows:
                r["threads"] = threads
            detail = (
                f"({max(8, args.steps // 4)} for matrix modules)"
                if args.more
                else "(state: opt.state and kept scratch, bytes per parameter)"
            )
            render(
                rows,
                f"{what} against their references, {args.device}, {threads} thread(s), median of {args.steps} steps "
                f"{detail}",
                MODERN_COLUMNS,
            )
            all_rows += rows
            continue
        if args.catalogue:
            for w in args.workloads:
                rows += bench(w, args.steps, args.device, _catalogue_chains())
            floor = {r["workload"]: r["median_ms"] for r in rows if r["optimizer"] == "floor"}
            for r in rows:
                moved = _own_bytes(r)
                n_params = sum(s.numel() for s in WORKLOADS[r["workload"]]())
                r["GB_s"] = moved * n_params / r["median_ms"] / 1e6
                r["vs_floor"] = r["median_ms"] / (floor[r["workload"]] * moved / BYTES_PER_PARAM["floor"])
                r["threads"] = threads
            render(rows, f"compiled chains against their own bytes floor, {args.device}, {threads} thread(s)",
                   {c: c for c in ("workload", "optimizer", "median_ms", "vs_floor", "GB_s", "warmup_s")})  # fmt: skip
            all_rows += rows
            continue
        for w in args.workloads:
            rows += bench(w, args.steps, args.device, _chains(args.compiled))
            if args.upstream is not None:
                rows += _run_upstream(args, w, threads)
        for r in rows:
            r["threads"] = threads
        if args.impl == "upstream":
            all_rows += rows
            continue
        render(
            rows, f"step time, {args.device}, {threads} thread(s), median of {args.steps} steps",
            COMPILED_COLUMNS if args.compiled else DEFAULT_COLUMNS,
        )  # fmt: skip
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
