"""How a Modular is built: parameter forms, module forms, and the errors for wrong input."""

import pytest
import torch

import torchzero as tz

from .helpers import FromScratch, Scale, make_params


def _model():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


@pytest.mark.parametrize(
    "make",
    [
        lambda m: tz.Modular(m.parameters(), tz.m.Adam(), tz.m.LR(1e-3)),
        lambda m: tz.Modular(m.parameters(), [tz.m.Adam(), tz.m.LR(1e-3)]),
        lambda m: tz.Modular(m.parameters(), [tz.m.Adam(), [Scale(2.0), [tz.m.LR(1e-3)]]]),
        lambda m: tz.Modular(m.parameters(), tz.m.Chain(tz.m.Adam(), tz.m.LR(1e-3))),
        lambda m: tz.Modular(m.named_parameters(), tz.m.Adam(), tz.m.LR(1e-3)),
        lambda m: tz.Modular(
            [{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": 0.1}], tz.m.Adam(), tz.m.LR(1e-3)
        ),
    ],
    ids=["varargs", "list", "nested", "chain", "named", "groups"],
)
def test_construction_forms_all_step(make):
    model = _model()
    opt = make(model)
    assert isinstance(opt, torch.optim.Optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(8, 3)).pow(2).mean().backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_nested_keys_and_flattened_modules():
    adam, scale, lr = tz.m.Adam(), Scale(), tz.m.LR()
    opt = tz.Modular(make_params(), [adam, [scale, lr]])
    assert opt.modules == [adam, scale, lr]
    assert [m.key for m in opt.modules] == ["0", "1.0", "1.1"]


def test_named_params_keep_names():
    model = _model()
    opt = tz.Modular(model.named_parameters(), tz.m.SGD(), tz.m.LR(0.1))
    assert opt.param_groups[0]["param_names"] == [n for n, _ in model.named_parameters()]


def test_no_modules_is_an_error():
    with pytest.raises(ValueError, match="at least one module"):
        tz.Modular(make_params())


def test_class_instead_of_instance_is_an_error():
    with pytest.raises(TypeError, match=r"tz.m.Adam\(\)"):
        tz.Modular(make_params(), tz.m.Adam, tz.m.LR())


def test_same_module_twice_is_an_error():
    lr = tz.m.LR()
    with pytest.raises(ValueError, match="appears twice"):
        tz.Modular(make_params(), tz.m.Adam(), lr, lr)


def test_from_scratch_module_must_be_first():
    with pytest.raises(ValueError, match="must be the first module"):
        tz.Modular(make_params(), tz.m.Adam(), FromScratch(), tz.m.LR())
    tz.Modular(make_params(), FromScratch(), tz.m.Adam(), tz.m.LR())  # first is fine
    tz.Modular(make_params(), [[FromScratch(), tz.m.Adam()], tz.m.LR()])  # first of a nested chain is first


def test_params_as_set_is_torchs_error():
    with pytest.raises(TypeError, match="set"):
        tz.Modular(set(make_params()), tz.m.Adam(), tz.m.LR())


def test_meta_params_error_before_anything_changes():
    p = torch.empty(3, device="meta", requires_grad=True)
    opt = tz.Modular([p], tz.m.Adam(), tz.m.LR())
    p.grad = torch.empty(3, device="meta")
    with pytest.raises(ValueError, match="meta device"):
        opt.step()
    assert len(opt.state) == 0


def test_module_reports_missing_apply():
    class Broken(tz.Transform):
        pass

    opt = tz.Modular(make_params(), Broken(), tz.m.LR())
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    with pytest.raises(NotImplementedError, match="apply"):
        opt.step()


def test_sparse_gradients_are_a_clear_error_before_anything_changes():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = tz.Modular(emb.parameters(), tz.m.Adam(), tz.m.LR(1e-2))
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(emb.weight, before) and len(opt.state) == 0
