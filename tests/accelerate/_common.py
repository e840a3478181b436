"""Shared pieces of the Accelerate tests: chains, a tiny model and data, and the reference loops.

The reference is always the same training loop written with plain PyTorch and ``tz.Modular`` (no
Accelerate); the Accelerate loops must reproduce it.  Imported by the pytest files and by the
``torchrun`` worker script.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from accelerate.state import AcceleratorState, GradientState

import torchzero as tz
import torchzero_accelerate as tza

N_IN, N_HIDDEN = 4, 6


def _chains() -> dict[str, tuple[tuple[str, ...], Callable[[], list]]]:
    return {
        "adam": ((), lambda: [tz.m.Adam(), tz.m.LR(1e-2)]),
        "sgd": ((), lambda: [tz.m.SGD(momentum=0.9, nesterov=True), tz.m.LR(5e-2)]),
        "lbfgs": (("LBFGS", "StrongWolfe"), lambda: [tz.m.LBFGS(), tz.m.StrongWolfe()]),
        "rfdm": (("RandomizedFDM",), lambda: [tz.m.RandomizedFDM(), tz.m.Adam(), tz.m.LR(1e-2)]),
        "sam": (("SAM",), lambda: [tz.m.SAM(), tz.m.Adam(), tz.m.LR(1e-2)]),
    }


CHAINS = _chains()
PLAIN = ["adam", "sgd"]
CLOSURE = ["lbfgs", "rfdm", "sam"]


def reset_accelerate(keep_process_group: bool = False) -> None:
    """Forget Accelerate's process-wide singletons so the next ``Accelerator`` can be configured anew."""
    AcceleratorState._reset_state(reset_partial_state=not keep_process_group)
    GradientState._reset_state()


def make_modules(chain: str) -> list:
    return CHAINS[chain][1]()


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(N_IN, N_HIDDEN), torch.nn.Tanh(), torch.nn.Linear(N_HIDDEN, 1))


def make_data(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_IN, generator=g)
    y = (x[:, :1] * 2 - x[:, 1:2]).tanh() + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def needs_closure(opt: torch.optim.Optimizer) -> bool:
    inner = getattr(opt, "optimizer", opt)
    return any(m.needs_closure or m.creates_update for m in inner.modules)


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def reference_run(
    chain: str, batches: list[tuple[torch.Tensor, torch.Tensor]], *, bf16: bool = False, seed: int = 0
) -> tuple[torch.nn.Module, list[torch.Tensor | None]]:
    """The loop without Accelerate: returns the model and the loss ``opt.step`` returned at each step."""
    model = make_model(seed)
    opt = tz.Modular(model.parameters(), *make_modules(chain))
    ac = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    losses: list[torch.Tensor | None] = []
    torch.manual_seed(1234)  # the random modules draw from here
    for x, y in batches:

        def compute(x=x, y=y) -> torch.Tensor:
            with ac:
                out = model(x)
            return F.mse_loss(out.float(), y)

        if needs_closure(opt):

            def closure(backward: bool = True, compute=compute) -> torch.Tensor:
                loss = compute()
                if backward:
                    opt.zero_grad()
                    loss.backward()
                return loss

            losses.append(opt.step(closure))
        else:
            compute().backward()
            opt.step()
            opt.zero_grad()
            losses.append(None)
    return model, losses


def accelerate_run(
    accelerator, chain: str, batches: list[tuple[torch.Tensor, torch.Tensor]], *, seed: int = 0
) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[torch.Tensor | None]]:
    """The same loop through ``accelerator.prepare``; closure chains step with ``tza.step``."""
    model = make_model(seed)
    opt = tz.Modular(model.parameters(), *make_modules(chain))
    model, opt = accelerator.prepare(model, opt)
    losses: list[torch.Tensor | None] = []
    torch.manual_seed(1234)
    for x, y in batches:
        if needs_closure(opt):
            losses.append(tza.step(accelerator, opt, lambda x=x, y=y: F.mse_loss(model(x), y)))
        else:
            with accelerator.accumulate(model):
                accelerator.backward(F.mse_loss(model(x), y))
                opt.step()
                opt.zero_grad()
            losses.append(None)
    return model, opt, losses
