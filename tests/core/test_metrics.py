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


def test_a_rejected_line_search_reports_it() -> None:
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    x0 = x.detach().clone()
    calls = [0]
    # Neg turns the gradient into an ascent direction: the search sees a non-negative slope and tries nothing
    opt = tz.Modular([x], tz.m.Neg(), tz.m.Backtracking(max_evals=5))
    opt.step(_closure(opt, x, _quadratic, calls))
    m = opt.metrics()
    assert m["all/1.Backtracking/accepted"] == 0.0 and m["all/1.Backtracking/step_size"] == 0.0
    assert m["all/1.Backtracking/line_search_evals"] == 0 and calls[0] == 1 == m["all/Modular/closure_calls"]
    # a descent direction that no trial within max_evals makes short enough: the trials are counted, none accepted
    calls[0] = 0
    opt = tz.Modular([x], tz.m.Mul(1e6), tz.m.Backtracking(max_evals=3))
    opt.step(_closure(opt, x, _quadratic, calls))
    m = opt.metrics()
    assert m["all/1.Backtracking/accepted"] == 0.0 and m["all/1.Backtracking/step_size"] == 0.0
    assert m["all/1.Backtracking/line_search_evals"] == 3 == calls[0] - 1
    assert torch.equal(x.detach(), x0)  # a rejected search leaves the parameters where they were


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


# ---------------------------------------------------------------- a group seen as several segments
def test_each_segment_of_a_group_keeps_its_own_report() -> None:
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(3, dtype=torch.float64, requires_grad=True)
    c = torch.ones(2, requires_grad=True)
    warmup = 4
    opt = tz.Modular(
        [{"params": [a, b], "lr": 0.1}, {"params": [c], "lr": 0.3}],
        tz.m.ScheduleFreeSGD(warmup_steps=warmup),
        tz.m.LR(1.0),
    )
    for _ in range(2):
        opt.zero_grad()
        (a.sum() + b.sum() + c.sum()).backward()
        opt.step()
    m = opt.metrics()
    # group 0 holds a float32 and a float64 segment: one key each, named by the dtype; group 1 keeps the plain key
    assert m["0/0.ScheduleFreeSGD.float32/lr"] == pytest.approx(0.1 * 2 / warmup)
    assert m["0/0.ScheduleFreeSGD.float64/lr"] == pytest.approx(0.1 * 2 / warmup)
    assert m["1/0.ScheduleFreeSGD/lr"] == pytest.approx(0.3 * 2 / warmup)
    assert "0/0.ScheduleFreeSGD/lr" not in m and len(m) == 4  # and closure_calls


def test_a_parameter_that_joined_later_reports_under_its_step_count() -> None:
    a, b = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = tz.Modular([a, b], tz.m.ScheduleFreeSGD(warmup_steps=10), tz.m.LR(1.0))
    a.grad = torch.ones(2)
    opt.step()
    assert opt.metrics()["0/0.ScheduleFreeSGD/lr"] == pytest.approx(0.1)
    a.grad, b.grad = torch.ones(2), torch.ones(3)
    opt.step()
    m = opt.metrics()
    assert m["0/0.ScheduleFreeSGD.step2/lr"] == pytest.approx(0.2)  # a's second step
    assert m["0/0.ScheduleFreeSGD.step1/lr"] == pytest.approx(0.1)  # b's first


# ---------------------------------------------------------------- per-tensor norms
@pytest.mark.parametrize("make", [lambda: tz.m.ClipNorm(0.1, per_tensor=True), lambda: tz.m.Normalize(per_tensor=True)])
def test_per_tensor_norm_reports_the_largest_tensor_norm_of_each_group(make) -> None:
    torch.manual_seed(0)
    a, b, c = (
        torch.randn(4, requires_grad=True),
        torch.randn(2, 3, requires_grad=True),
        torch.randn(5, requires_grad=True),
    )
    opt = tz.Modular([{"params": [a, b]}, {"params": [c]}], make(), tz.m.LR(1e-2))
    for _ in range(2):
        opt.zero_grad()
        ((a * 3).sum() + (b**2).sum() + (c**3).sum()).backward()
        want = [max(float(a.grad.norm()), float(b.grad.norm())), float(c.grad.norm())]  # type: ignore[union-attr]
        opt.step()
        m = opt.metrics()
        label = type(opt._leaves[0]).__name__
        assert m[f"0/0.{label}/largest_tensor_norm"] == pytest.approx(want[0], rel=1e-6)
        assert m[f"1/0.{label}/largest_tensor_norm"] == pytest.approx(want[1], rel=1e-6)


# ---------------------------------------------------------------- update RMS, when asked
def _rms_against_the_step(chain, shapes, lrs=(0.1, 0.1), steps: int = 3, rel: float = 1e-9, **kw) -> None:
    """The reported update_rms of each group equals the RMS of (params before - params after) / lr."""
    torch.manual_seed(0)
    params = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    half = len(params) // 2
    groups = [{"params": params[:half], "lr": lrs[0]}, {"params": params[half:], "lr": lrs[1]}]
    opt = tz.Modular(groups, *chain(), update_rms=True, **kw)
    for _ in range(steps):
        opt.zero_grad()
        sum((p**2).sum() * (i + 1) for i, p in enumerate(params)).backward()
        before = [p.detach().clone() for p in params]
        opt.step()
        raw = opt.metrics(sync=False)
        keys = [k for k in raw if k.endswith("/update_rms")]
        assert len(keys) == 2 and all(isinstance(raw[k], torch.Tensor) and raw[k].ndim == 0 for k in keys)
        m = opt.metrics()
        for g, (lo, hi) in enumerate([(0, half), (half, len(params))]):
            moved = (
                torch.cat([(x0 - p.detach()).flatten() for x0, p in zip(before[lo:hi], params[lo:hi], strict=True)])
                / lrs[g]
            )
            want = float(moved.square().mean().sqrt())
            (key,) = [k for k in keys if k.startswith(f"{g}/")]
            # float64 parameters: the step read back from them is exact to ~1e-15 relative to the parameters,
            # ~1e-13 relative to a step of lr * u
            assert m[key] == pytest.approx(want, rel=rel), key


@pytest.mark.parametrize(
    "chain",
    [
        pytest.param(lambda: [tz.m.Adam(fused=False), tz.m.LR(1.0)], id="adam-foreach"),
        pytest.param(lambda: [tz.m.Adam(), tz.m.LR(1.0)], id="adam-fused-kernel"),
        pytest.param(lambda: [tz.m.NAdam(), tz.m.LR(1.0)], id="nadam-two-terms"),
        pytest.param(lambda: [tz.m.Lion(), tz.m.LR(1.0)], id="lion"),
        pytest.param(lambda: [tz.m.SGD(momentum=0.9), tz.m.LR(1.0)], id="sgd"),
    ],
)
def test_update_rms_is_the_rms_of_the_step_over_lr(chain) -> None:
    # the lr lives in the param groups: the LR module's own 1.0 is overridden per group
    _rms_against_the_step(chain, [(4, 3), (5,), (3, 2), (2,)], lrs=(0.1, 0.05))


def test_update_rms_of_groups_that_share_a_segment() -> None:
    # equal settings: both groups run as one segment, and each still gets the RMS of its own parameters
    _rms_against_the_step(lambda: [tz.m.Adam(), tz.m.LR(1.0)], [(4, 3), (5,), (3, 2), (2,)], lrs=(0.1, 0.1))


def test_update_rms_of_a_per_tensor_rule() -> None:
    # Muon orthogonalizes in bfloat16: its direction's norm is taken in float32 (rel. error ~1e-7 per tensor)
    _rms_against_the_step(lambda: [tz.m.Muon(), tz.m.LR(1.0)], [(4, 3), (3, 5)], lrs=(0.02, 0.01), rel=1e-6)


def test_update_rms_does_not_depend_on_fusing_the_lr() -> None:
    def run(fuse: bool) -> dict[str, float]:
        torch.manual_seed(0)
        x = torch.randn(6, requires_grad=True)
        opt = tz.Modular([x], tz.m.Adam(), tz.m.LR(1e-2), update_rms=True, fuse=fuse)
        for _ in range(3):
            opt.zero_grad()
            (x**2).sum().backward()
            opt.step()
        return opt.metrics()

    fused, unfused = run(True), run(False)
    assert fused["0/0.Adam/update_rms"] == pytest.approx(unfused["0/0.Adam/update_rms"], rel=1e-6)
    assert not any(k.endswith("update_rms") and "LR" in k for k in unfused)  # the LR scales in place: no report


def test_update_rms_is_reported_only_when_asked() -> None:
    x = torch.ones(3, requires_grad=True)
    opt = tz.Modular([x], tz.m.Adam(), tz.m.LR(1e-2))
    x.sum().backward()
    opt.step()
    assert not any(k.endswith("update_rms") for k in opt.metrics())
    with pytest.raises(TypeError, match="update_rms"):
        tz.Modular([x], tz.m.Adam(), update_rms="yes")  # type: ignore[arg-type]
