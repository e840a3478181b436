"""Every example in ``examples/`` (except the Lightning/Accelerate ones, tested with their adapters)
runs from the command line with a tiny step count, and actually trains: the loss goes down.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# example -> steps for the training check
CASES = {
    "plain_loop": 40,
    "closure_loop": 8,
    "per_parameter": 40,
    "schedulers": 40,
    "wrap_external": 40,
    "checkpoint": 40,
    "bf16_compensated": 40,
}


@pytest.fixture
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_covered():
    present = {p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith(("_", "lightning_", "accelerate_"))}
    assert present == set(CASES), (
        f"examples without a test: {present - set(CASES)}; tests without an example: {set(CASES) - present}"
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_runs_from_command_line(name, examples_on_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--steps", "3"])
    runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "loss" in out, f"the example printed no progress:\n{out}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_trains(name, examples_on_path):
    steps = CASES[name]
    result = _load(name).train(steps)
    losses = result["loss"] if isinstance(result, dict) else result
    assert len(losses) == steps
    first, last = losses[0], sum(losses[-5:]) / len(losses[-5:])
    assert last < 0.7 * first, (
        f"{name}: the loss went from {first:.4f} to {last:.4f} (mean of the last 5) in {steps} steps"
    )


def test_scheduler_example_cycles_lr_and_momentum(examples_on_path):
    h = _load("schedulers").train(20)
    # OneCycleLR: lr rises then falls, momentum moves the opposite way
    peak = max(range(20), key=h["lr"].__getitem__)
    assert 0 < peak < 19, f"lr should peak inside the run, peaked at step {peak}: {h['lr']}"
    assert h["momentum"][peak] < h["momentum"][0], f"momentum should dip when lr peaks: {h['momentum']}"


def test_checkpoint_example_resumes_exactly(examples_on_path):
    h = _load("checkpoint").train(10)
    # compared bit for bit: a resumed run must not differ from the uninterrupted one at all
    assert h["resumed"] == h["loss"], f"resumed {h['resumed']}\nstraight {h['loss']}"


def test_bf16_compensated_example_keeps_bf16_params_and_fp32_state(examples_on_path, capsys):
    _load("bf16_compensated").train(3)
    out = capsys.readouterr().out
    assert "parameters torch.bfloat16, Adam's moments torch.float32, Kahan buffer torch.bfloat16" in out, out
