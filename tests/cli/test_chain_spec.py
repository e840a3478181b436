"""``torchzero demo --chain SPEC``: a chain written as a spec runs in the demo."""

from __future__ import annotations

import pytest
import torch

import torchzero as tz
from torchzero import cli
from torchzero.demo import ChainSpec, make_task, run_chain, spec_chain


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


def test_a_user_chain_runs_instead_of_the_defaults(capsys):
    code = cli.main(["demo", "--steps", "3", "--samples", "32", "--chain", "adam(betas=(0.9, 0.95)), lr(1e-2)"])
    out = capsys.readouterr().out
    assert code == 0
    assert "│ custom " in out and "adam(betas=(0.9, 0.95)), lr(1e-2)" in out
    assert "lbfgs" not in out and "muon" not in out, "a user chain replaces the default chains"


def test_user_chains_beside_named_chains(capsys):
    code = cli.main(
        ["demo", "--steps", "2", "--samples", "32", "--chains", "adam",
         "--chain", "sgd(momentum=0.9), lr(0.1)", "--chain", "lbfgs, strong_wolfe"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    for name in ("│ adam ", "│ custom-1 ", "│ custom-2 "):
        assert name in out, out


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("adma, lr(1e-2)", "unknown module 'adma'; did you mean"),
        ("adam(beta=0.9)", "Adam has no setting 'beta'"),
        ("adam, lr(x)", "is not a literal"),
    ],
)
def test_a_bad_spec_is_an_argparse_error(capsys, spec, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--chain", spec])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --chain:" in err and message in err and "at position" in err


def test_spec_chain_trains_like_the_python_chain():
    task = make_task(32, 16)
    spec = spec_chain("adam, cautious, lr(1e-2)")
    by_hand = ChainSpec(
        "hand", "", ("Adam",), lambda model, steps: tz.Modular(model.parameters(), tz.m.Adam(), tz.m.Cautious(),
                                                               tz.m.LR(1e-2))
    )  # fmt: skip
    a, b = run_chain(spec, task, steps=4), run_chain(by_hand, task, steps=4)
    assert a.status == "ok" and a.losses == b.losses
    assert spec.modules == ("Adam", "Cautious", "LR")
    assert isinstance(spec.build(torch.nn.Linear(2, 2), 1), tz.Modular)
