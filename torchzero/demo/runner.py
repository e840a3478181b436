"""Train one demo chain with a chosen trainer: a plain PyTorch loop, Lightning, or Accelerate.

Every trainer trains the same model from the same initial weights on the full training set (one batch,
so closure chains see the same loss on every call), steps the optimizer ``steps`` times with a closure,
and reports the loss after every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import NonFiniteLossError
from .chains import ChainSpec, UnavailableChain, build_chain
from .data import Task
from .integrations import train_with_accelerate, train_with_lightning
from .models import make_model
from .results import OnStep, RunResult, Trained

__all__ = ["TRAINERS", "OnStep", "RunResult", "Trained", "evaluate", "run_chain", "run_side_by_side"]


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, result: RunResult, opt: Any = None) -> None:
    """Fill in the final training loss and the train/test accuracy.

    With ``opt``, the parameters are moved to the optimizer's evaluation point first (``opt.eval()``: schedule-free
    chains evaluate the averaged weights, others do not move) and back with ``opt.train()`` afterwards.
    """
    swap = callable(getattr(opt, "eval", None)) and callable(getattr(opt, "train", None))
    if swap:
        opt.eval()
    try:
        logits = model(task.x_train)
        result.final_loss = float(F.cross_entropy(logits, task.y_train))
        result.train_acc = float((logits.argmax(1) == task.y_train).float().mean())
        result.test_acc = float((model(task.x_test).argmax(1) == task.y_test).float().mean())
    finally:
        if swap:
            opt.train()


# ---------------------------------------------------------------------------------------------- plain
def plain_steps(
    spec: ChainSpec, task: Task, steps: int, seed: int, result: RunResult
) -> Generator[float, None, Trained]:
    """A plain PyTorch loop, ``loss = opt.step(closure)``, one step per ``next()``; returns the model and opt."""
    model = make_model(task.n_features, task.n_classes, seed=seed)
    opt = build_chain(spec, model, steps)
    x, y = task.x_train, task.y_train

    def closure(backward: bool = True) -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for i in range(steps):
        loss = opt.step(closure)
        result.closure_calls += opt.last_info["closure_calls"]
        result.steps = i + 1
        assert loss is not None  # a closure was given
        result.losses.append(float(loss))
        yield result.losses[-1]
    return model, opt


def train_plain(spec: ChainSpec, task: Task, steps: int, seed: int, on_step: OnStep, result: RunResult) -> Trained:
    """A plain PyTorch loop: ``loss = opt.step(closure)``."""
    run = plain_steps(spec, task, steps, seed, result)
    while True:
        try:
            loss = next(run)
        except StopIteration as done:
            return done.value
        on_step(result.steps, loss)


# ---------------------------------------------------------------------------------------------- lightning
def train_lightning(spec: ChainSpec, task: Task, steps: int, seed: int, on_step: OnStep, result: RunResult) -> Trained:
    """Lightning's automatic optimization; the chain is returned from ``configure_optimizers``."""
    return train_with_lightning(spec, task, steps, seed, on_step, result)


# ---------------------------------------------------------------------------------------------- accelerate
def train_accelerate(spec: ChainSpec, task: Task, steps: int, seed: int, on_step: OnStep, result: RunResult) -> Trained:
    """``accelerator.prepare(model, opt)`` and torchzero_accelerate's closure helper."""
    return train_with_accelerate(spec, task, steps, seed, on_step, result)


TRAINERS: dict[str, Callable[..., Trained]] = {
    "plain": train_plain,
    "lightning": train_lightning,
    "accelerate": train_accelerate,
}


def run_chain(
    spec: ChainSpec,
    task: Task,
    *,
    steps: int,
    seed: int = 0,
    trainer: str = "plain",
    on_step: OnStep | None = None,
) -> RunResult:
    """Train ``spec`` on ``task`` and return its :class:`RunResult`; never raises for a bad chain.

    A chain whose module is missing comes back as ``unavailable``; a non-finite loss as ``diverged``;
    any other error as ``failed`` with the error message, so one chain cannot stop the comparison.
    """
    if trainer not in TRAINERS:
        raise ValueError(f"unknown trainer {trainer!r}; choose from: {', '.join(TRAINERS)}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    result = RunResult(spec.name, spec.label)
    missing = spec.missing()
    if missing:
        result.status, result.message = "unavailable", f"needs tz.m.{', tz.m.'.join(missing)}"
        return result
    start = time.perf_counter()
    trained = None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            trained = TRAINERS[trainer](spec, task, steps, seed, on_step or (lambda i, loss: None), result)
    except Exception as e:
        _record_failure(result, e)
    result.wall_time = time.perf_counter() - start
    if trained is not None:
        model, opt = trained
        evaluate(model, task, result, opt)
    return result


def run_side_by_side(
    specs: list[ChainSpec],
    task: Task,
    *,
    steps: int,
    seed: int = 0,
    on_step: Callable[[str, int, float], None] | None = None,
) -> list[RunResult]:
    """Train several chains in plain loops that take turns step by step.

    Each chain gets the same results as :func:`run_chain` would give it (its own model, its own random
    state, seeded alike), but all progress together, and a change in machine load affects all of them
    alike. ``wall_time`` counts only each chain's own steps. ``on_step(chain, step, loss)``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        seeded = torch.get_rng_state()
    results: list[RunResult] = []
    runs: list[list[Any]] = []  # [result, step generator, rng state, (trained model, opt)]
    for spec in specs:
        result = RunResult(spec.name, spec.label)
        results.append(result)
        missing = spec.missing()
        if missing:
            result.status, result.message = "unavailable", f"needs tz.m.{', tz.m.'.join(missing)}"
        else:
            runs.append([result, plain_steps(spec, task, steps, seed, result), seeded.clone(), None])
    active = list(runs)
    while active:
        for run in list(active):
            result, gen, rng = run[0], run[1], run[2]
            loss = None
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng)
                start = time.perf_counter()
                try:
                    loss = next(gen)
                except StopIteration as done:
                    run[3] = done.value
                    active.remove(run)
                except Exception as e:
                    _record_failure(result, e)
                    active.remove(run)
                result.wall_time += time.perf_counter() - start
                run[2] = torch.get_rng_state()
            if loss is not None and on_step is not None:
                on_step(result.chain, result.steps, loss)
    for result, _, _, trained in runs:
        if trained is not None:
            model, opt = trained
            evaluate(model, task, result, opt)
    return results


def _record_failure(result: RunResult, e: Exception) -> None:
    """A missing module: ``unavailable``; a non-finite loss: ``diverged``; anything else: ``failed``."""
    if isinstance(e, UnavailableChain):
        result.status, result.message = "unavailable", str(e)
    elif isinstance(e, NonFiniteLossError):
        result.status, result.message = "diverged", f"non-finite loss at step {result.steps + 1}"
    else:  # one broken chain must not end the comparison
        result.status, result.message = "failed", f"{type(e).__name__}: {e}"
