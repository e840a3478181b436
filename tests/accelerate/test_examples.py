"""``examples/accelerate_*.py``: they train in one process and run under ``torchrun --nproc_per_node 2``."""

from __future__ import annotations

import importlib.util
import re
import runpy
import sys
from pathlib import Path

import pytest

from tests.distributed import torchrun

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _losses(out: str) -> list[float]:
    # not anchored to line starts: under torchrun another rank's stderr may land inside a line
    return [float(v) for v in re.findall(r"step +\d+ +loss ([0-9.]+)", out)]


def test_every_accelerate_example_is_covered():
    assert {p.stem for p in EXAMPLES.glob("accelerate_*.py")} == {
        "accelerate_plain",
        "accelerate_closure",
        "accelerate_metrics",
    }


@pytest.mark.parametrize(
    "name, args",
    [
        ("accelerate_plain", ["--steps", "3"]),
        ("accelerate_plain", ["--steps", "2", "--mixed-precision", "bf16", "--accumulation", "1"]),
        ("accelerate_closure", ["--steps", "3"]),
        ("accelerate_closure", ["--steps", "2", "--chain", "sam", "--mixed-precision", "bf16"]),
        ("accelerate_closure", ["--steps", "2", "--chain", "rfdm"]),
        ("accelerate_metrics", ["--steps", "3"]),
    ],
)
def test_runs_from_command_line(name, args, examples_on_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "1 process(es)" in out
    assert len(_losses(out)) == int(args[1]), out


@pytest.mark.parametrize("name, steps", [("accelerate_plain", 12), ("accelerate_closure", 6)])
def test_trains(name, steps, examples_on_path):
    losses = _load(name).train(steps)
    assert len(losses) == steps
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], f"{name}: the loss went from {losses[0]:.4f} to {losses[-3:]}"


@pytest.mark.distributed
def test_plain_example_under_torchrun():
    out = torchrun(EXAMPLES / "accelerate_plain.py", "--steps", "3", nproc=2, timeout=120)
    assert "2 process(es), MULTI_CPU" in out, out[-3000:]
    assert len(_losses(out)) == 3, out[-3000:]  # printed by the main process only


@pytest.mark.distributed
def test_closure_example_under_torchrun_matches_one_process(examples_on_path):
    """Full batch split over two processes: the averaged loss of every step equals the one-process run's."""
    out = torchrun(EXAMPLES / "accelerate_closure.py", "--steps", "3", nproc=2, timeout=120)
    assert "2 process(es), MULTI_CPU" in out, out[-3000:]
    single = _load("accelerate_closure").train(3)
    assert _losses(out) == pytest.approx(single, rel=1e-4, abs=5e-5)


def test_metrics_example_writes_what_it_logged_to_tensorboard(examples_on_path, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = 4
    logged = _load("accelerate_metrics").train(steps, tmp_path)
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert all(r["tz/all/Modular/closure_calls"] == 1 + r["tz/all/1.StrongWolfe/line_search_evals"] for r in logged)
    assert "tz/all/0.LBFGS/pairs_kept" in logged[1]  # a curvature pair from the second step on
    (events,) = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    reader = EventAccumulator(str(events), size_guidance={"scalars": 0})  # 0: keep every value
    reader.Reload()
    for tag in set().union(*logged):
        want = [(step, r[tag]) for step, r in enumerate(logged) if tag in r]
        got = [(e.step, e.value) for e in reader.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), tag  # float32 in the files
