"""State across Accelerate: prepare's state_dict round trip, save_state/load_state, swapped params, schedulers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.func import functional_call

import torchzero as tz
import torchzero_accelerate as tza

from ._common import flat_params, make_data, make_model, make_modules, needs_closure, reset_accelerate


def _batches(n_steps: int, size: int = 8):
    x, y = make_data(n_steps * size)
    return list(zip(x.split(size), y.split(size), strict=True))


def _train_step(acc, model, opt, x, y, sched=None) -> None:
    """One step of the loop; ``acc=None`` is the loop without Accelerate."""
    if needs_closure(opt):
        if acc is None:

            def closure(backward=True):
                loss = F.mse_loss(model(x), y)
                if backward:
                    opt.zero_grad()
                    loss.backward()
                return loss

            opt.step(closure)
        else:
            tza.step(acc, opt, lambda: F.mse_loss(model(x), y))
    else:
        loss = F.mse_loss(model(x), y)
        loss.backward() if acc is None else acc.backward(loss)
        opt.step()
        opt.zero_grad()
    if sched is not None:
        sched.step()


def _plain_run(batches, modules) -> torch.nn.Module:
    """The reference: the same chain in a plain PyTorch loop, without Accelerate."""
    ref = make_model()
    ref_opt = tz.Modular(ref.parameters(), *modules)
    for x, y in batches:
        _train_step(None, ref, ref_opt, x, y)
    return ref


def _one_cycle(opt, total: int):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=total, pct_start=0.4)


@pytest.mark.parametrize("chain", ["adam", "lbfgs"])
def test_prepare_state_dict_round_trip_keeps_a_trained_optimizer(chain):
    """prepare() runs state_dict -> load_state_dict; training on afterwards equals never preparing."""
    batches = _batches(4)
    ref = _plain_run(batches, make_modules(chain))

    model = make_model()
    opt = tz.Modular(model.parameters(), *make_modules(chain))
    for x, y in batches[:2]:
        _train_step(None, model, opt, x, y)
    counters = {m.key: dict(m.global_state) for m in opt.modules}
    acc = Accelerator(cpu=True)
    model, opt = acc.prepare(model, opt)
    for m in opt.optimizer.modules:  # integer counters stay integers
        assert m.global_state == counters[m.key]
        assert all(type(v) is type(counters[m.key][k]) for k, v in m.global_state.items())
    for x, y in batches[2:]:
        _train_step(acc, model, opt, x, y)
    torch.testing.assert_close(flat_params(model), flat_params(ref), rtol=0, atol=0)


@pytest.mark.parametrize("chain", ["adam", "lbfgs", "rfdm", "sam"])
def test_save_state_load_state_resume_equals_uninterrupted_run(chain, tmp_path):
    batches, total, cut = _batches(6), 6, 3
    with_sched = "lr" in tz.Modular(make_model().parameters(), *make_modules(chain)).defaults

    def build(seed):
        acc = Accelerator(cpu=True)
        model = make_model(seed)
        opt = tz.Modular(model.parameters(), *make_modules(chain))
        if with_sched:
            model, opt, sched = acc.prepare(model, opt, _one_cycle(opt, total))
        else:
            (model, opt), sched = acc.prepare(model, opt), None
        return acc, model, opt, sched

    acc, model, opt, sched = build(0)
    for i, (x, y) in enumerate(batches):
        _train_step(acc, model, opt, x, y, sched)
        if i + 1 == cut:
            acc.save_state(tmp_path)
    uninterrupted = flat_params(model)

    # the optimizer file holds only what weights_only loading accepts
    saved = torch.load(tmp_path / "optimizer.bin", weights_only=True)
    assert "torchzero" in saved

    reset_accelerate()
    acc, model, opt, sched = build(seed=7)  # different initial weights: everything must come from the checkpoint
    acc.load_state(tmp_path, load_kwargs={"weights_only": True})
    for x, y in batches[cut:]:
        _train_step(acc, model, opt, x, y, sched)
    assert not torch.equal(uninterrupted, flat_params(make_model(0)))
    torch.testing.assert_close(flat_params(model), uninterrupted, rtol=0, atol=0)


def _swap(opt) -> dict[torch.Tensor, torch.Tensor]:
    """What Accelerate's FSDP path does: new tensors replace the old ones inside param_groups."""
    mapping = {p: torch.nn.Parameter(p.detach().clone()) for g in opt.param_groups for p in g["params"]}
    opt._switch_parameters(mapping)
    return mapping


@pytest.mark.parametrize("chain", ["adam", "lbfgs"])
def test_params_swapped_before_the_first_step_are_the_ones_trained(chain):
    batches = _batches(3)
    ref = _plain_run(batches, make_modules(chain))

    acc = Accelerator(cpu=True)
    model = make_model()
    opt = tz.Modular(model.parameters(), *make_modules(chain))
    model, opt = acc.prepare(model, opt)
    names = [n for n, _ in model.named_parameters()]
    old = [p.detach().clone() for p in model.parameters()]
    mapping = _swap(opt)
    new = dict(zip(names, mapping.values(), strict=True))
    forward = lambda x: functional_call(model, new, (x,))  # noqa: E731
    for x, y in batches:
        _train_step(acc, _Fn(forward, new), opt, x, y)
    for p, o in zip(model.parameters(), old, strict=True):  # the replaced tensors are left alone
        torch.testing.assert_close(p.detach(), o, rtol=0, atol=0)
    got = torch.cat([t.detach().reshape(-1) for t in new.values()])
    torch.testing.assert_close(got, flat_params(ref), rtol=0, atol=0)


def test_params_swapped_mid_run_are_picked_up_by_the_next_step():
    batches = _batches(4)
    ref = _plain_run(batches, [tz.m.SGD(), tz.m.LR(0.1)])

    acc = Accelerator(cpu=True)
    model = make_model()
    opt = tz.Modular(model.parameters(), tz.m.SGD(), tz.m.LR(0.1))
    model, opt = acc.prepare(model, opt)
    for x, y in batches[:2]:
        _train_step(acc, model, opt, x, y)
    names = [n for n, _ in model.named_parameters()]
    new = dict(zip(names, _swap(opt).values(), strict=True))
    frozen = flat_params(model)
    for x, y in batches[2:]:
        _train_step(acc, _Fn(lambda x: functional_call(model, new, (x,)), new), opt, x, y)
    torch.testing.assert_close(flat_params(model), frozen, rtol=0, atol=0)
    got = torch.cat([t.detach().reshape(-1) for t in new.values()])
    torch.testing.assert_close(got, flat_params(ref), rtol=0, atol=0)


def test_stateful_chain_swapped_mid_run_behaves_like_torch_adam():
    """After a swap the new tensors start with fresh state, as with a torch optimizer under the same swap."""
    batches = _batches(4)
    results = []
    for make in (lambda ps: tz.Modular(ps, tz.m.Adam(), tz.m.LR(0.05)), lambda ps: torch.optim.Adam(ps, lr=0.05)):
        acc = Accelerator(cpu=True)
        model = make_model()
        model, opt = acc.prepare(model, make(model.parameters()))
        for x, y in batches[:2]:
            loss = F.mse_loss(model(x), y)
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
        names = [n for n, _ in model.named_parameters()]
        new = dict(zip(names, _swap(opt).values(), strict=True))
        start = torch.cat([t.detach().reshape(-1) for t in new.values()])
        for x, y in batches[2:]:
            F.mse_loss(functional_call(model, new, (x,)), y).backward()
            opt.step()
            opt.zero_grad()
        results.append(torch.cat([t.detach().reshape(-1) for t in new.values()]))
        assert not torch.equal(results[-1], start), "the swapped-in tensors were not trained"
    torch.testing.assert_close(results[0], results[1])


class _Fn:
    """A callable 'model' over swapped tensors (what _train_step needs: call and parameters)."""

    def __init__(self, fn, params):
        self.fn, self.params = fn, params

    def __call__(self, x):
        return self.fn(x)

    def parameters(self):
        return iter(self.params.values())


@pytest.mark.parametrize("accumulation", [1, 2])
def test_prepared_one_cycle_steps_once_per_optimizer_step_and_cycles_adam_betas(accumulation):
    """Reference: torch.optim.Adam + OneCycleLR(cycle_momentum=True) without Accelerate."""
    n_windows, size = 6, 8
    x, y = make_data(n_windows * size)

    ref = make_model()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    ref_sched = _one_cycle(ref_opt, n_windows)
    ref_lrs = []
    for xb, yb in zip(x.split(size), y.split(size), strict=True):
        F.mse_loss(ref(xb), yb).backward()
        ref_opt.step()
        ref_opt.zero_grad()
        ref_sched.step()
        ref_lrs.append((ref_opt.param_groups[0]["lr"], *ref_opt.param_groups[0]["betas"]))

    acc = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    model = make_model()
    opt = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    sched = _one_cycle(opt, n_windows)
    model, opt, sched = acc.prepare(model, opt, sched)
    lrs = []
    for i, (xb, yb) in enumerate(zip(x.split(size // accumulation), y.split(size // accumulation), strict=True)):
        with acc.accumulate(model):
            acc.backward(F.mse_loss(model(xb), yb))
            opt.step()
            sched.step()
            opt.zero_grad()
        if (i + 1) % accumulation == 0:
            lrs.append((opt.param_groups[0]["lr"], *opt.param_groups[0]["betas"]))

    assert sched.scheduler.last_epoch == n_windows
    key = opt.optimizer.modules[0].key
    assert {s[key]["step"] for s in opt.optimizer.state.values()} == {n_windows}
    torch.testing.assert_close(torch.tensor(lrs, dtype=torch.float64), torch.tensor(ref_lrs, dtype=torch.float64))
    assert len({beta1 for _, beta1, _ in lrs}) == n_windows, "OneCycleLR did not cycle beta1"
    torch.testing.assert_close(flat_params(model), flat_params(ref), rtol=1e-5, atol=1e-6)


def test_without_cycled_momentum_the_reference_differs():
    """The parity above can fail: Adam with a fixed beta1 ends elsewhere than with the cycled one."""
    x, y = make_data(48)
    ends = []
    for cycle in (True, False):
        model = make_model()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.05, total_steps=6, pct_start=0.4, cycle_momentum=cycle
        )
        for xb, yb in zip(x.split(8), y.split(8), strict=True):
            F.mse_loss(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()
            sched.step()
        ends.append(flat_params(model))
    assert not torch.allclose(ends[0], ends[1], rtol=1e-5, atol=1e-6)
