"""``log_metrics``: ``opt.metrics()`` through ``accelerator.log`` into a tracker that writes real files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker

import torchzero as tz
import torchzero_accelerate as tza

from ._common import make_data, make_model


class JsonLinesTracker(GeneralTracker):
    """One JSON line per ``accelerator.log`` call."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: Path) -> None:
        super().__init__()
        self.path = Path(logging_dir) / f"{run_name}.jsonl"

    @property
    def tracker(self) -> Any:
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        pass

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")


def _run(tmp_path: Path, chain: list, closure: bool, steps: int = 4) -> tuple[list[dict], list[dict], list[float]]:
    acc = Accelerator(cpu=True, log_with=JsonLinesTracker("run", tmp_path))
    acc.init_trackers("run")
    model = make_model()
    model, opt = acc.prepare(model, tz.Modular(model.parameters(), *chain))
    x, y = make_data(16)
    seen, norms = [], []
    for step in range(steps):
        if closure:
            tza.step(acc, opt, lambda: F.mse_loss(model(x), y))
        else:
            opt.zero_grad()
            acc.backward(F.mse_loss(model(x), y))
            grads = [p.grad.flatten() for p in model.parameters()]
            norms.append(float(torch.linalg.vector_norm(torch.cat(grads))))
            opt.step()
        seen.append(tza.log_metrics(acc, opt, step=step))
    acc.end_training()
    lines = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    return lines, seen, norms


def test_clip_norm_metric_through_accelerator_log(tmp_path: Path) -> None:
    lines, seen, norms = _run(tmp_path, [tz.m.ClipNorm(0.05), tz.m.Adam(), tz.m.LR(1e-2)], closure=False)
    assert [line.pop("step") for line in lines] == list(range(4))
    assert lines == seen  # the file holds what log_metrics logged
    for line, norm in zip(lines, norms, strict=True):
        assert line["tz/all/0.ClipNorm/norm"] == pytest.approx(norm, rel=1e-5)
        assert line["tz/all/Modular/closure_calls"] == 0


def test_line_search_metrics_through_accelerator_log(tmp_path: Path) -> None:
    lines, seen, _ = _run(tmp_path, [tz.m.LBFGS(), tz.m.StrongWolfe()], closure=True)
    # the first step's direction is g / max(1, |g|_1): the parameters moved by step_size times it
    model, (x, y) = make_model(), make_data(16)
    g = torch.cat([t.flatten() for t in torch.autograd.grad(F.mse_loss(model(x), y), list(model.parameters()))])
    moved = g / max(1.0, float(g.abs().sum())) * lines[0]["tz/all/1.StrongWolfe/step_size"]
    after = torch.cat([p.detach().flatten() for p in _first_step_params(tmp_path / "again")])
    before = torch.cat([p.detach().flatten() for p in make_model().parameters()])
    torch.testing.assert_close(before - after, moved)
    for line, want in zip(lines, seen, strict=True):
        line.pop("step")
        assert line == want
        assert line["tz/all/1.StrongWolfe/accepted"] == 1.0
        assert line["tz/all/Modular/closure_calls"] == 1 + line["tz/all/1.StrongWolfe/line_search_evals"]


def _first_step_params(tmp_path: Path) -> list[torch.Tensor]:
    tmp_path.mkdir()
    acc = Accelerator(cpu=True)
    model = make_model()
    model, opt = acc.prepare(model, tz.Modular(model.parameters(), tz.m.LBFGS(), tz.m.StrongWolfe()))
    x, y = make_data(16)
    tza.step(acc, opt, lambda: F.mse_loss(model(x), y))
    return list(model.parameters())


def test_unwrap_rejects_other_optimizers() -> None:
    with pytest.raises(TypeError, match="tz.Modular"):
        tza.unwrap(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))


def test_tensorboard_tracker_writes_the_metrics(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # accelerate's own TensorBoard tracker: event files written by accelerator.log, read back with tensorboard
    acc = Accelerator(cpu=True, log_with="tensorboard", project_dir=tmp_path)
    acc.init_trackers("run")
    model = make_model()
    model, opt = acc.prepare(model, tz.Modular(model.parameters(), tz.m.ClipNorm(0.05), tz.m.Adam(), tz.m.LR(1e-2)))
    x, y = make_data(16)
    seen, norms = [], []
    for step in range(3):
        opt.zero_grad()
        acc.backward(F.mse_loss(model(x), y))
        norms.append(float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))))
        opt.step()
        seen.append(tza.log_metrics(acc, opt, step=step))
    acc.end_training()
    (events,) = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    reader = EventAccumulator(str(events), size_guidance={"scalars": 0})  # 0: keep every value
    reader.Reload()
    assert set(reader.Tags()["scalars"]) == set(seen[0]) == {"tz/all/0.ClipNorm/norm", "tz/all/Modular/closure_calls"}
    for tag in seen[0]:
        events_of_tag = reader.Scalars(tag)
        assert [e.step for e in events_of_tag] == [0, 1, 2]
        for event, want in zip(events_of_tag, seen, strict=True):
            assert event.value == pytest.approx(want[tag], rel=1e-6)  # event files store float32
    for event, norm in zip(reader.Scalars("tz/all/0.ClipNorm/norm"), norms, strict=True):
        assert event.value == pytest.approx(norm, rel=1e-5)
