"""A chain written in a LightningCLI config: ``torchzero_lightning.ChainOptimizer`` with ``modules: [...]``.

LightningCLI registers the optimizer with ``instantiate=False`` and builds it with
``lightning.pytorch.cli.instantiate_class(model.parameters(), config)``, so the modules reach the optimizer as
``class_path`` / ``init_args`` entries.  These tests build the optimizer of ``examples/lightning_cli.yaml`` that
way and compare it with the chain built in Python; the last one runs LightningCLI itself when jsonargparse
(``lightning[pytorch-extra]``) is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch.cli import instantiate_class

import torchzero as tz
import torchzero_lightning as tzl

from ._common import Model, batches, fit, loss_fn, make_net, params

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_cli.yaml"
STEPS = 4


def python_chain(p: Any) -> tz.Modular:
    return tz.Modular(p, tz.m.Adam(betas=(0.9, 0.95)), tz.m.Cautious(), tz.m.LR(3e-4))


def example_config() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())["optimizer"]


def _modules(opt: tz.Modular) -> list[str]:
    return [repr(x) for x in opt.modules]


def _steps(opt_for: Any, n: int = STEPS) -> list[torch.Tensor]:
    net = make_net()
    opt = opt_for(net.parameters())
    for batch in batches(n):
        opt.zero_grad()
        loss_fn(net, batch).backward()
        opt.step()
    return params(net)


def test_the_example_config_builds_the_python_chain():
    opt = instantiate_class(make_net().parameters(), example_config())
    assert isinstance(opt, tzl.ChainOptimizer) and isinstance(opt, tz.Modular)
    assert _modules(opt) == _modules(python_chain(make_net().parameters()))
    got = _steps(lambda p: instantiate_class(p, example_config()))
    want = _steps(python_chain)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_a_spec_string_in_a_config():
    config = {"class_path": "torchzero_lightning.ChainOptimizer",
              "init_args": {"spec": "adam(betas=(0.9, 0.95)), cautious, lr(3e-4)"}}  # fmt: skip
    opt = instantiate_class(make_net().parameters(), config)
    assert _modules(opt) == _modules(python_chain(make_net().parameters()))


def test_update_rms_from_a_config():
    config = {"class_path": "torchzero_lightning.ChainOptimizer",
              "init_args": {"spec": "adam, lr(1e-2)", "update_rms": True}}  # fmt: skip
    net = make_net()
    opt = instantiate_class(net.parameters(), config)
    twin = make_net()
    ref = tz.Modular(twin.parameters(), tz.m.Adam(), tz.m.LR(1e-2), update_rms=True)
    for o, n in ((opt, net), (ref, twin)):
        loss_fn(n, next(iter(batches(1)))).backward()
        o.step()
    assert opt.metrics() == ref.metrics() and "0/0.Adam/update_rms" in opt.metrics()


def test_modules_given_as_class_paths_objects_and_tz_m_paths():
    opt = tzl.ChainOptimizer(
        make_net().parameters(),
        modules=["torchzero.m.Adam", tz.m.Cautious(), {"class_path": "torchzero.modules.LR", "init_args": {"lr": 1.0}}],
    )
    assert [type(x).__name__ for x in opt.modules] == ["Adam", "Cautious", "LR"]
    opt = tzl.ChainOptimizer(make_net().parameters(), modules=[{"class_path": "torchzero.modules.Rprop",
                                                               "init_args": {"etas": [0.4, 1.3]}}])  # fmt: skip
    assert opt.modules[0].defaults["etas"] == (0.4, 1.3), "a YAML list becomes the tuple the module expects"


def test_the_config_trains_in_lightning_like_the_python_chain(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(EXAMPLE.read_text())
    config = yaml.safe_load(path.read_text())["optimizer"]
    model = Model(lambda p: instantiate_class(p, config))  # what LightningCLI's configure_optimizers does
    fit(model, STEPS)
    assert isinstance(model.optimizers().optimizer, tzl.ChainOptimizer)
    for a, b in zip(params(model.net), _steps(python_chain), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, "exactly one of them; got neither"),
        ({"modules": [tz.m.Adam()], "spec": "adam"}, ValueError, "got both"),
        ({"modules": [{"class_path": "torchzero.modules.Adma"}]}, ValueError, "cannot import 'torchzero.modules.Adma'"),
        ({"modules": [{"class_path": "torch.nn.Linear"}]}, TypeError, "is not a tz.Module subclass"),
        ({"modules": [{"class_path": "torchzero.modules.Adam", "init_args": {"beta": 0.9}}]}, TypeError,
         "module 0 of the chain, Adam: .*beta.*it takes: betas, eps"),
        ({"modules": [tz.m.Adam(), {"init_args": {"lr": 1.0}}]}, TypeError, "module 1 of the chain must be"),
        ({"spec": "adma"}, tz.SpecError, "unknown module 'adma'"),
    ],
)  # fmt: skip
def test_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        tzl.ChainOptimizer(make_net().parameters(), **kwargs)


class CLIModel(Model):
    def __init__(self) -> None:
        super().__init__(lambda p: None)

    def train_dataloader(self) -> Any:
        from ._common import loader

        return loader()


def test_lightning_cli_reads_the_example(tmp_path):
    # a dev install has jsonargparse (the lightning extra pins it): missing, this is a failed set-up, not a skip
    import jsonargparse  # noqa: F401
    from lightning.pytorch.cli import LightningCLI

    path = tmp_path / "config.yaml"
    path.write_text(EXAMPLE.read_text())
    cli = LightningCLI(
        CLIModel, run=False,
        args=["--config", str(path), "--trainer.max_steps", str(STEPS), "--trainer.logger", "false",
              "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
              "--trainer.accelerator", "cpu"],
    )  # fmt: skip
    opt = cli.model.configure_optimizers()
    opt = opt[0] if isinstance(opt, (list, tuple)) else opt
    assert isinstance(opt, tzl.ChainOptimizer)
    assert _modules(opt) == _modules(python_chain(make_net().parameters()))
