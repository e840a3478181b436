"""The code snippets of the spec's FAQ (``shared/spec/FAQ.rst``) run as written against torchzero.

Each section's snippets run in order in one namespace that provides what the FAQ takes for granted:
``model`` (with ``encoder`` and ``decoder``), ``dataloader``, ``loss_fn``, ``TheModelClass``, ``args``,
``kwargs``, ``PATH``, and for the checkpoint section an ``optimizer`` that has taken a step and the
``modules`` it was built from.  The only edit: a line that is just ``...`` (the FAQ's "and so on" inside
a dict literal) is dropped, since Python cannot run it.
"""

from __future__ import annotations

import ast

import os

import pytest
import torch
from torch import nn

import torchzero as tz

from .faq_snippets import FAQ, sections

SECTIONS = {
    "construct": "How to construct",
    "optimization": "How to perform optimization",
    "per-parameter": "per-parameter options",
    "learning-rates": "How do we handle learning rates",
    "save": "How to save",
    "schedulers": "learning rate schedulers",
}


class TheModelClass(nn.Module):
    def __init__(self, features: int = 10, hidden: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(features, hidden), nn.Tanh())
        self.decoder = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _snippets(key: str) -> list[str]:
    if not FAQ.is_file():
        if os.environ.get("CI"):  # CI checks out shared/ beside the repository: the spec must be there
            pytest.fail(f"the FAQ spec is not at {FAQ}")
        pytest.skip(f"the FAQ spec is not at {FAQ}")
    found = {t: s for t, s in sections(FAQ.read_text()).items() if SECTIONS[key].lower() in t.lower()}
    assert len(found) == 1, f"expected one FAQ section matching {SECTIONS[key]!r}, found {list(found)}"
    ((title, snippets),) = found.items()
    assert snippets, f"the FAQ section {title!r} has no code snippet"
    return ["\n".join(line for line in s.splitlines() if line.strip() not in ("...", "...,")) for s in snippets]


def _namespace(tmp_path) -> dict:
    torch.manual_seed(0)
    model = TheModelClass()
    x, y = torch.randn(32, 10), torch.randint(0, 2, (32,))
    return {
        "torch": torch, "nn": nn, "tz": tz, "model": model, "loss_fn": nn.CrossEntropyLoss(),
        "dataloader": torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8),
        "TheModelClass": TheModelClass, "args": (), "kwargs": {}, "PATH": str(tmp_path / "checkpoint.pt"),
    }  # fmt: skip


def _run(snippets: list[str], ns: dict, key: str) -> dict:
    for i, code in enumerate(snippets):
        exec(compile(code, f"<FAQ {SECTIONS[key]!r} snippet {i}>", "exec"), ns)
    return ns


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _run_last(code: str, ns: dict, key: str):
    """Run ``code``; if it ends with a bare expression (the FAQ shows some chains that way), return its value."""
    tree = ast.parse(code)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, f"<FAQ {SECTIONS[key]!r}>", "exec"), ns)
    return None if last is None else eval(compile(ast.Expression(last.value), f"<FAQ {SECTIONS[key]!r}>", "eval"), ns)


@pytest.mark.parametrize(
    ("key", "chain"),
    [("construct", ["Adam", "Cautious", "LR", "WeightDecay"]), ("learning-rates", ["Adam", "LR", "WeightDecay"])],
)
def test_construct(key, chain, tmp_path):
    ns = _namespace(tmp_path)
    (code,) = _snippets(key)
    opt = _run_last(code, ns, key)
    opt = ns.get("opt") if opt is None else opt
    assert isinstance(opt, tz.Modular)
    assert [type(m).__name__ for m in opt.modules] == chain
    # a step with a gradient changes the parameters
    model = ns["model"]
    start = _params(model)
    ns["loss_fn"](model(torch.randn(4, 10)), torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(start, model.parameters(), strict=True))


def test_optimization_loops_train(tmp_path):
    snippets = _snippets("optimization")
    assert len(snippets) == 2, "the FAQ shows a plain loop and a closure loop"
    for code in snippets:
        ns = _namespace(tmp_path)
        start = _params(ns["model"])
        _run([code], ns, "optimization")
        assert any(not torch.equal(a, b) for a, b in zip(start, ns["model"].parameters(), strict=True)), (
            "the loop did not train"
        )
    assert isinstance(ns["loss"], torch.Tensor) and ns["loss"].ndim == 0, "opt.step(closure) returns the loss"


def test_schedulers(tmp_path):
    ns = _run(_snippets("schedulers")[:1], _namespace(tmp_path), "schedulers")
    opt = ns["opt"]
    lrs, betas = [], []
    for x, y in ns["dataloader"]:
        ns["loss_fn"](ns["model"](x), y).backward()
        opt.step()
        opt.zero_grad()
        lrs.append(opt.param_groups[0]["lr"])
        betas.append(opt.param_groups[0]["betas"][0])
    # OneCycleLR, stepped by LR after every opt.step(): lr rises from max_lr/25, beta1 falls from 0.95
    assert lrs[0] > 1e-1 / 25 and lrs == sorted(lrs), lrs
    assert betas[0] < 0.95 and betas == sorted(betas, reverse=True), betas

    ns = _run(_snippets("schedulers"), _namespace(tmp_path), "schedulers")
    sched, opt = ns["scheduler"], ns["opt"]
    start = opt.param_groups[0]["lr"]
    x, y = next(iter(ns["dataloader"]))
    ns["loss_fn"](ns["model"](x), y).backward()
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] != start, "a scheduler on get_lr_module() drives the optimizer's lr"


def test_per_parameter_options(tmp_path):
    snippets = _snippets("per-parameter")
    ns = _run(snippets[:1], _namespace(tmp_path), "per-parameter")
    opt = ns["optimizer"]
    assert opt.param_groups[0]["lr"] == 1e-2 and opt.param_groups[0]["eps"] == 1e-5
    assert opt.param_groups[1]["lr"] == 1e-3
    ns = _run(snippets[1:], _namespace(tmp_path), "per-parameter")
    assert isinstance(ns["optimizer"], tz.Modular)
    # what the FAQ promises: encoder steps with lr 1e-2, decoder with 1e-3. Adam's first step is about
    # lr * sign(g) per entry (weight decay 1e-4 after LR adds at most ~1e-4 * |theta|).
    model, opt = ns["model"], ns["optimizer"]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ns["loss_fn"](model(torch.randn(16, 10)), torch.randint(0, 2, (16,))).backward()
    opt.step()
    for name, p in model.named_parameters():
        step = (p.detach() - start[name]).abs().median().item()
        expected = 1e-2 if name.startswith("encoder") else 1e-3
        assert abs(step - expected) < 0.1 * expected, f"{name}: median step {step:.2e}, expected about {expected:.0e}"


def test_save_and_load(tmp_path):
    ns = _namespace(tmp_path)
    model = ns["model"]
    ns["modules"] = [tz.m.Adam(), tz.m.LR(1e-3), tz.m.WeightDecay()]
    ns["optimizer"] = saved = tz.Modular(model.parameters(), tz.m.Adam(), tz.m.LR(1e-3), tz.m.WeightDecay())
    for x, y in ns["dataloader"]:
        ns["loss_fn"](model(x), y).backward()
        saved.step()
        saved.zero_grad()
    _run(_snippets("save"), ns, "save")
    loaded, new_model = ns["optimizer"], ns["model"]
    assert loaded is not saved and new_model is not model
    for p, q in zip(model.parameters(), new_model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
        torch.testing.assert_close(
            saved.state[p][saved.modules[0].key]["exp_avg"], loaded.state[q][loaded.modules[0].key]["exp_avg"]
        )
    assert loaded.modules[0].global_state == saved.modules[0].global_state
