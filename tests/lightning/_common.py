"""Shared pieces of the Lightning tests: a tiny regression problem, a LightningModule that counts what
Lightning runs, a Trainer factory, and the plain-PyTorch reference loop every test compares against."""

from __future__ import annotations

import itertools
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

import torchzero_lightning as tzl

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
warnings.filterwarnings("ignore", message=".*litlogger.*")

N, D, BATCH = 32, 5, 8


def data(n: int = N, dtype: torch.dtype = torch.float32, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=dtype)
    y = (x[:, :1] * 1.5 - x[:, 1:2] ** 2 + 0.1 * torch.randn(n, 1, generator=g, dtype=dtype)).to(dtype)
    return TensorDataset(x, y)


def loader(ds: TensorDataset | None = None, batch_size: int = BATCH) -> DataLoader:
    return DataLoader(ds if ds is not None else data(), batch_size=batch_size, shuffle=False)


def make_net(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(dtype)


def loss_fn(net: torch.nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.mse_loss(net(x), y)


class Model(L.LightningModule):
    """Counts training_step calls (with and without grad), backward hooks, clipping and
    on_before_optimizer_step calls, and records every logged loss."""

    def __init__(
        self, make_opt: Callable[[Any], Any], dtype: torch.dtype = torch.float32, manual: bool = False
    ) -> None:
        super().__init__()
        self.net = make_net(dtype)
        self.make_opt = make_opt
        self.automatic_optimization = not manual
        self.counts: Counter[str] = Counter()
        self.logged: list[float] = []
        self.step_losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.counts["training_step_grad" if torch.is_grad_enabled() else "training_step_nograd"] += 1
        loss = loss_fn(self.net, batch)
        self.log("train_loss", loss)
        if not self.automatic_optimization:
            return self.manual_step(batch, loss)
        return loss

    def manual_step(self, batch: Any, loss: torch.Tensor) -> Any:
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        return None

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        super().log(name, value, *args, **kwargs)
        self.logged.append(float(value.detach()) if isinstance(value, torch.Tensor) else float(value))

    def on_before_backward(self, loss: torch.Tensor) -> None:
        self.counts["on_before_backward"] += 1

    def on_after_backward(self) -> None:
        self.counts["on_after_backward"] += 1

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.counts["on_before_optimizer_step"] += 1

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        self.counts["clip"] += 1
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if outputs is not None and "loss" in outputs:
            self.step_losses.append(float(outputs["loss"]))

    def configure_optimizers(self) -> Any:
        return self.make_opt(self.net.parameters())


class TzModel(tzl.TorchzeroMixin, Model):
    """The same model with the one line a closure chain needs."""


class ManualClosureModel(TzModel):
    """Manual optimization with a closure(backward) passed to opt.step."""

    def manual_step(self, batch, loss):
        opt = self.optimizers()

        def closure(backward=True):
            value = loss_fn(self.net, batch)
            if backward:
                opt.zero_grad()
                self.manual_backward(value)
            return value

        return {"loss": opt.step(closure)}


def trainer(max_steps: int, **kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_steps=max_steps, num_sanity_val_steps=0,
    )  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def fit(
    model: L.LightningModule, max_steps: int, dl: DataLoader | None = None, ckpt_path: str | None = None, **kwargs: Any
) -> L.Trainer:
    t = trainer(max_steps, **kwargs)
    # Lightning 2.6 loads with torch.load's default (weights_only=True on torch >= 2.6); say it explicitly
    t.fit(model, dl if dl is not None else loader(), ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    return t


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def batches(n: int, dl: DataLoader | None = None) -> list[Any]:
    """The first ``n`` batches of ``dl`` (cycled over epochs, no shuffling)."""
    return list(itertools.islice(itertools.cycle(list(dl if dl is not None else loader())), n))


def assert_params_close(got: list[torch.Tensor], want: Any, **tol: Any) -> None:
    for p, q in zip(got, list(want), strict=True):
        torch.testing.assert_close(p, q.detach(), **tol)


def _closure(
    net: torch.nn.Module, opt: Any, batch: Any, counts: Counter[str], autocast: torch.dtype | None, clip: float | None
) -> Callable[[bool], torch.Tensor]:
    def closure(backward: bool = True) -> torch.Tensor:
        counts["backward" if backward else "loss_only"] += 1
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            loss = loss_fn(net, batch)
        if backward:
            opt.zero_grad()
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        return loss

    return closure


def reference_closure_run(
    make_opt: Callable[[Any], Any],
    steps: int,
    dl: DataLoader | None = None,
    dtype: torch.dtype = torch.float32,
    autocast: torch.dtype | None = None,
    clip: float | None = None,
) -> tuple[list[torch.Tensor], dict[str, int], list[float]]:
    """Plain PyTorch: the same chain stepped with a closure(backward) over the same batches."""
    net = make_net(dtype)
    opt = make_opt(net.parameters())
    counts: Counter[str] = Counter()
    losses: list[float] = []
    for batch in batches(steps, dl):
        loss = opt.step(_closure(net, opt, batch, counts, autocast, clip))
        losses.append(float(loss))
        counts["closure_calls"] += opt.last_info["closure_calls"]
    return params(net), dict(counts), losses
