"""A closure that raises mid-step (in the line search) leaves quasi-Newton modules as if the step never began."""

import pytest
import torch

import torchzero as tz


def _rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def _run(chain, fail_at):
    x = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
    opt = tz.Modular([x], *chain())
    calls = 0

    def closure(backward=True):
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise KeyboardInterrupt  # Ctrl-C in a notebook, an OOM, a data error...
        loss = _rosenbrock(x)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    done = 0
    while done < 3:
        try:
            opt.step(closure)
            done += 1
        except KeyboardInterrupt:
            pass
    return x.detach()


@pytest.mark.parametrize(
    "chain",
    [
        lambda: [tz.m.LBFGS(), tz.m.StrongWolfe()],
        lambda: [tz.m.LBFGS(), tz.m.Backtracking()],
        lambda: [tz.m.BFGS(), tz.m.StrongWolfe()],
        lambda: [tz.m.SR1(), tz.m.StrongWolfe()],
    ],
    ids=["lbfgs-wolfe", "lbfgs-backtracking", "bfgs", "sr1"],
)
@pytest.mark.parametrize("fail_at", [2, 4, 6])
def test_retry_after_an_interrupted_step_equals_an_uninterrupted_run(chain, fail_at):
    assert torch.equal(_run(chain, fail_at), _run(chain, fail_at=-1))
