"""``tz.from_spec``: a chain written as one line of text, its parse cases and its errors."""

from __future__ import annotations

import math

import pytest
import torch

import torchzero as tz
from torchzero.spec import module_names


def _reprs(modules):
    return [repr(x) for x in modules]


@pytest.mark.parametrize(
    ("spec", "python"),
    [
        ("adam(betas=(0.9,0.95)),cautious,lr(3e-4)", lambda: [tz.m.Adam(betas=(0.9, 0.95)), tz.m.Cautious(),
                                                              tz.m.LR(3e-4)]),
        ("Adam, LR(1e-3)", lambda: [tz.m.Adam(), tz.m.LR(1e-3)]),
        ("lbfgs, strongwolfe", lambda: [tz.m.LBFGS(), tz.m.StrongWolfe()]),
        ("LBFGS(5), strong_wolfe(c2=0.5)", lambda: [tz.m.LBFGS(5), tz.m.StrongWolfe(c2=0.5)]),
        ("sgd(momentum=0.9, nesterov=True), lr(0.1)", lambda: [tz.m.SGD(momentum=0.9, nesterov=True), tz.m.LR(0.1)]),
        ("  adam,\n  clip_norm(1.0),\n  lr(1e-2),\n", lambda: [tz.m.Adam(), tz.m.ClipNorm(1.0), tz.m.LR(1e-2)]),
        ("dadaptadam(growth_rate=inf), lr(1.0)", lambda: [tz.m.DAdaptAdam(growth_rate=math.inf), tz.m.LR(1.0)]),
        ("muon(ns_dtype=None, adjust_lr_fn='original'), lr(1e-2)",
         lambda: [tz.m.Muon(ns_dtype=None, adjust_lr_fn="original"), tz.m.LR(1e-2)]),
        ("adamw(lr=1e-3, weight_decay=0.1)", lambda: [tz.m.AdamW(lr=1e-3, weight_decay=0.1)]),
        ("(adam, lr(1e-3))", lambda: [tz.m.Adam(), tz.m.LR(1e-3)]),
        ("adafactor(eps=(None, 1e-3))", lambda: [tz.m.Adafactor(eps=(None, 1e-3))]),
    ],
    ids=["issue", "case", "names", "snake", "bool", "lines", "inf", "strings", "preset", "parens", "tuple-none"],
)  # fmt: skip
def test_parses_like_python(spec, python):
    built = tz.from_spec(spec)
    assert all(isinstance(x, tz.Module) for x in built)
    assert _reprs(built) == _reprs(python())


def test_modules_are_new_on_every_call():
    a, b = tz.from_spec("adam, lr(1e-3)"), tz.from_spec("adam, lr(1e-3)")
    assert all(x is not y for x, y in zip(a, b, strict=True))


def test_every_module_name_is_reachable():
    names = module_names()
    assert "Adam" in names and "StrongWolfe" in names and "AdamW" in names
    assert not {"Module", "Transform", "Chain"} & set(names), "base classes are not put in a chain by name"
    keys = [n.replace("_", "").lower() for n in names]
    assert len(keys) == len(set(keys)), "two modules would answer to the same spec name"


def test_a_spec_chain_steps_exactly_like_the_python_chain():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    twin = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    twin.load_state_dict(model.state_dict())
    from_text = tz.Modular(
        model.parameters(), *tz.from_spec("adam(betas=(0.9, 0.95)), cautious, clipnorm(1.0), lr(3e-2)")
    )
    by_hand = tz.Modular(
        twin.parameters(), tz.m.Adam(betas=(0.9, 0.95)), tz.m.Cautious(), tz.m.ClipNorm(1.0), tz.m.LR(3e-2)
    )
    assert repr(from_text) == repr(by_hand)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(5):
        for net, opt in ((model, from_text), (twin, by_hand)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_closure_chain_from_a_spec():
    w = torch.tensor([1.5, -2.0], requires_grad=True)
    opt = tz.Modular([w], *tz.from_spec("lbfgs, strong_wolfe"))

    def closure(backward=True):
        loss = (w**2).sum()
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    assert float((w.detach() ** 2).sum()) < 1e-8


def _error(spec: str) -> tz.SpecError:
    with pytest.raises(tz.SpecError) as info:
        tz.from_spec(spec)
    assert isinstance(info.value, ValueError)
    return info.value


def test_unknown_module_names_close_matches_and_position():
    e = _error("adam, cautious, lbgfs(history_size=5)")
    assert "unknown module 'lbgfs'" in str(e) and "LBFGS" in str(e)
    assert e.position == 16
    assert str(e).endswith("  adam, cautious, lbgfs(history_size=5)\n" + " " * 18 + "^")


def test_unknown_setting_lists_the_accepted_ones():
    e = _error("adam(beta=(0.9, 0.95)), lr(1e-3)")
    assert "Adam has no setting 'beta'" in str(e)
    assert "did you mean 'betas'?" in str(e)
    assert "Adam takes: betas, eps, amsgrad, alpha, fused" in str(e)
    assert e.position == 5


@pytest.mark.parametrize(
    ("spec", "message", "position"),
    [
        ("", "the spec is empty", 0),
        ("adam, lr(1e-3", "'(' was never closed", 13),
        ("adam lr", "not a chain spec", 0),
        ("lr(1e-3), adam)", "unmatched ')'", 14),
        ("lr('a)'), adam)", "unmatched ')'", 14),
        ("adam]", "closing parenthesis ']' does not match opening parenthesis '('", 4),
        ("adam, lr(x)", "positional argument 1 of LR, 'x', is not a literal", 9),
        ("adam, lr(scheduler_cls=lambda o: o)", "setting 'scheduler_cls' of LR, 'lambda o: o', is not a literal", 23),
        ("split(adam)", "a module cannot be an argument in a spec", 6),
        ("lookahead(adam())", "a module cannot be an argument", 10),
        ("[adam, lr], sgd", "nested chains cannot be written in a spec", 0),
        ("adam, lr(-1e-3)", "LR: lr=-0.001 is invalid", 6),
        ("adam, lr(1, 2, 3)", "wrong arguments for LR: too many positional arguments; LR takes: lr, scheduler_cls", 6),
        ("adam, clipnorm", "missing a required argument: 'max_norm'", 6),
        ("adam(betas=2)", "Adam: betas=2 is invalid", 0),
        ("adam, lr(**{'lr': 1})", "'**' cannot be used in a spec", 6),
        ("adam, lr(*[1])", "'*' cannot be used in a spec", 9),
        ("adam.foo", "expected a module name", 0),
        ("adam, __import__('os').system('true')", "expected a module name", 6),
    ],
)
def test_errors(spec, message, position):
    e = _error(spec)
    assert message in str(e), str(e)
    assert e.position == position, str(e)
    assert f"(at position {position} of the spec)" in str(e)


def test_arguments_are_never_evaluated(monkeypatch):
    called = []
    monkeypatch.setattr("builtins.print", lambda *a: called.append(a))
    _error("lr(print('x'))")
    _error("lr(lr=print('x'))")
    assert not called


def test_not_a_string():
    with pytest.raises(TypeError, match="a chain spec is a string"):
        tz.from_spec(["adam"])  # type: ignore[arg-type]
