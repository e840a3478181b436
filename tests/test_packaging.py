"""Packaging, README and CI wiring: what a fresh machine and CI rely on."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "the README opens with a bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_one_distribution_three_packages_core_needs_only_torch():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert [re.split(r"[<>=!~ ]", d)[0] for d in project["dependencies"]] == ["torch"]
    extras = project["optional-dependencies"]
    assert {"lightning", "accelerate", "dev"} <= set(extras)
    assert any(d.startswith("lightning") for d in extras["lightning"])
    assert any(d.startswith("accelerate") for d in extras["accelerate"])
    for package in ("torchzero", "torchzero_lightning", "torchzero_accelerate"):
        assert (ROOT / package / "__init__.py").is_file()
    assert meta["tool"]["pytest"]["ini_options"]["timeout"] > 0  # a hanging test fails instead of blocking CI


def test_readme_opens_with_the_demo_and_test_commands_and_ci_runs_the_test_one():
    demo, test = _readme_commands()[:2]
    assert (demo, test) == ("bash scripts/demo.sh", "bash scripts/test.sh")
    assert "exec bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert "torchzero demo" in (ROOT / "scripts" / "demo.sh").read_text()
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "torch==2.13.0" in setup and ".venv" in setup
    # pytest exits 5 when it collects no tests; the script passes that status on (set -e, exec)
    assert "exec .venv/bin/python -m pytest tests" in (ROOT / "scripts" / "test.sh").read_text()


def test_license_is_an_spdx_expression_and_the_build_backend_reads_it():
    # a license table ({ text = "MIT" }) is deprecated by setuptools, and stops building after 2027-02-18
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    (setuptools,) = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools == "setuptools>=77"  # the first release with SPDX license strings
