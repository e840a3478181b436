"""``ctx.report`` and ``opt.metrics()``: what the modules report, checked against values computed here."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz


def _quadratic(x: torch.Tensor) -> torch.Tensor:
    scales = torch.arange(1, x.numel() + 1, dtype=x.dtype)
    return 0.5 * (scales * x * x).sum()


def _closure(opt: tz.Modular, x: torch.Tensor, f, calls: list[int]):
    def closure(backward: bool = True) -> torch.Tensor:
        calls[0] += 1
        loss = f(x)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    return closure


def test_metrics_empty_before_the_first_step() -> None:
    x = torch.ones(3, requires_grad=True)
    opt = tz.Modular([x], tz.m.Adam(), tz.m.LR(1e-2))
    assert opt.metrics() == {} and opt.metrics(sync=False) == {}


@pytest.mark.parametrize("search", [tz.m.StrongWolfe, tz.m.Backtracking])
def test_line_search_reports_the_accepted_step_size(search) -> None:
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], search())
    calls = [0]
    for _ in range(3):
        x0 = x.detach().clone()
        g = torch.func.grad(_quadratic)(x0)
        calls[0] = 0
        opt.step(_closure(opt, x, _quadratic, calls))
        m = opt.metrics()
        label = f"all/0.{search.__name__}"
        # the direction is the gradient: the parameters moved by step_size * g
        mask = g != 0
        moved = (x0 - x.detach())[mask] / g[mask]
        torch.testing.assert_close(moved, torch.full_like(moved, m[f"{label}/step_size"]))
        assert m[f"{label}/accepted"] == 1.0
        assert m["all/Modular/closure_calls"] == calls[0]
        assert m[f"{label}/line_search_evals"] == calls[0] - 1  # the first call is the loss at the start
        assert opt.last_info["step_size"] == m[f"{label}/step_size"]  # last_info shows the same reports


def _pair_metrics(make, f, steps: int = 3) -> list[tuple[dict[str, float], float]]:
    """Each step's metrics and the curvature <s, y> of the pair that step formed, computed here."""
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], make(), tz.m.LR(0.1))
    out = []
    prev: tuple[torch.Tensor, torch.Tensor] | None = None
    for _ in range(steps):
        opt.zero_grad()
        f(x).backward()
        assert x.grad is not None
        now = (x.detach().clone(), x.grad.clone())
        ys = float(((now[0] - prev[0]) * (now[1] - prev[1])).sum()) if prev is not None else float("nan")
        opt.step()
        out.append((opt.metrics(), ys))
        prev = now
    return out


@pytest.mark.parametrize("make", [tz.m.LBFGS, tz.m.BFGS])
def test_quasi_newton_reports_kept_and_skipped_pairs(make) -> None:
    label = f"all/0.{make.__name__}"
    first, *rest = _pair_metrics(make, _quadratic)
    assert f"{label}/pairs_kept" not in first[0]  # no pair at the first step
    for m, ys in rest:
        assert ys > 0 and m[f"{label}/pairs_kept"] == 1.0 and m[f"{label}/pairs_skipped"] == 0.0
    # a linear function: the gradient never changes, <s, y> = 0, every pair is skipped
    c = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    for m, ys in _pair_metrics(make, lambda x: (c * x).sum())[1:]:
        assert ys == 0.0 and m[f"{label}/pairs_kept"] == 0.0 and m[f"{label}/pairs_skipped"] == 1.0


def test_sr1_reports_pairs() -> None:
    label = "all/0.SR1"
    for m, _ in _pair_metrics(tz.m.SR1, _quadratic)[1:]:
        assert m[f"{label}/pairs_kept"] + m[f"{label}/pairs_skipped"] == 1.0
    c = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    for m, _ in _pair_metrics(tz.m.SR1, lambda x: (c * x).sum())[1:]:
        assert m[f"{label}/pairs_skipped"] == 1.0  # y = 0


def test_clip_norm_reports_the_norm_before_clipping() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(4, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    opt = tz.Modular([{"params": [a]}, {"params": [b], "lr": 0.5}], tz.m.ClipNorm(0.1), tz.m.Adam(), tz.m.LR(1e-2))
    for _ in range(2):
        opt.zero_grad()
        ((a * 3).sum() + (b**2).sum()).backward()
        assert a.grad is not None and b.grad is not None
        want = torch.linalg.vector_norm(torch.cat([a.grad.flatten(), b.grad.flatten()]))
        opt.step()
        got = opt.metrics(sync=False)["all/0.ClipNorm/norm"]
        assert isinstance(got, torch.Tensor) and got.ndim == 0  # kept as a tensor until read
        torch.testing.assert_close(got, want)
        assert opt.metrics()["all/0.ClipNorm/norm"] == pytest.approx(float(want), rel=1e-6)
    assert opt.metrics()["all/Modular/closure_calls"] == 0


def test_nested_chain_keys() -> None:
    x = torch.ones(3, requires_grad=True)
    opt = tz.Modular([x], [tz.m.ClipNorm(1.0), tz.m.Adam()], tz.m.LR(1e-2))
    x.sum().backward()
    opt.step()
    assert "all/0.0.ClipNorm/norm" in opt.metrics()


def test_schedule_free_reports_its_lr_with_warmup_per_group() -> None:
    a, b = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    lrs, warmup = (0.1, 0.02), 3
    opt = tz.Modular(
        [{"params": [a], "lr": lrs[0]}, {"params": [b], "lr": lrs[1]}],
        tz.m.ScheduleFreeSGD(warmup_steps=warmup),
        tz.m.LR(1.0),
    )
    for t in range(1, 6):
        opt.zero_grad()
        (a.sum() + (b**2).sum()).backward()
        opt.step()
        m = opt.metrics()
        for group, lr in enumerate(lrs):
            assert m[f"{group}/0.ScheduleFreeSGD/lr"] == pytest.approx(lr * min(1.0, t / warmup))


@pytest.mark.parametrize("make", [tz.m.Prodigy, tz.m.DAdaptAdam])
def test_d_adaptation_reports_d_times_lr(make) -> None:
    x = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    d0, lr = 1e-3, 0.5
    opt = tz.Modular([x], make(lr=lr, d0=d0))
    seen = []
    for _ in range(4):
        opt.zero_grad()
        _quadratic(x).backward()
        opt.step()
        m = opt.metrics()
        label = f"all/0.{make.__name__}"
        assert m[f"{label}/d_lr"] == pytest.approx(m[f"{label}/d"] * lr, rel=1e-6)
        seen.append(m[f"{label}/d"])
    assert seen[0] == pytest.approx(d0)  # the first step uses d0
    assert seen[-1] > d0  # and the estimate grew


def test_a_failed_step_keeps_the_previous_reports() -> None:
    x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], tz.m.StrongWolfe())
    calls = [0]
    opt.step(_closure(opt, x, _quadratic, calls))
    before = opt.metrics()

    def bad(backward: bool = True) -> torch.Tensor:
        raise RuntimeError("data loader failed")

    with pytest.raises(RuntimeError, match="data loader"):
        opt.step(bad)
    assert opt.metrics() == before
