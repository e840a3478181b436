"""``examples/lightning_*.py`` run from the command line with a tiny step count, and actually train."""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CASES = {"lightning_sam": 30, "lightning_metrics": 8}  # example -> steps for the training check


@pytest.fixture
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_lightning_example_is_covered():
    assert {p.stem for p in EXAMPLES.glob("lightning_*.py")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_runs_from_command_line(name, examples_on_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--steps", "3"])
    runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("loss") >= 2, f"the example printed no progress:\n{out}"


def test_sam_example_trains_and_schedules(examples_on_path):
    steps = CASES["lightning_sam"]
    h = _load("lightning_sam").train(steps)
    assert len(h["loss"]) == steps
    first, last = h["loss"][0], sum(h["loss"][-5:]) / 5
    assert last < 0.7 * first, f"the loss went from {first:.4f} to {last:.4f} (mean of the last 5) in {steps} steps"
    # OneCycleLR on the Modular: lr rises then falls, beta1 moves the opposite way
    peak = max(range(steps), key=h["lr"].__getitem__)
    assert 0 < peak < steps - 1, f"lr should peak inside the run: {h['lr']}"
    assert h["beta1"][peak] < h["beta1"][0]


def test_metrics_example_logs_the_gradient_norm_and_the_update_rms(examples_on_path, tmp_path):
    import torch

    steps = CASES["lightning_metrics"]
    example = _load("lightning_metrics")
    rows = example.train(steps, tmp_path, every=1)
    logged = {s: r for s, r in rows.items() if "tz/all/0.ClipNorm/norm" in r}
    assert sorted(logged) == list(range(1, steps + 1))  # after each optimizer step, at the steps taken
    # the reference: the same model, data and first batch in a plain loop, its gradient norm computed by torch
    from _data import Net, make_loader

    torch.manual_seed(0)
    net = Net()
    x, y = next(iter(make_loader(batch_size=64)))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert logged[1]["tz/all/0.ClipNorm/norm"] == pytest.approx(float(norm), rel=1e-5)
    assert all(r["tz/0/1.Adam/update_rms"] > 0 and r["tz/all/Modular/closure_calls"] == 1 for r in logged.values())
    losses = [rows[s]["train_loss"] for s in range(steps)]
    assert losses[-1] < losses[0]
