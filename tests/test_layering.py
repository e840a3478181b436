"""The package layout is a map of floors: foreach (ground) <- core <- module families <- adapters.

Each floor imports only the floors below it, and a module family (``torchzero/modules/<family>/``)
imports only core and foreach, never another family.  Imports are read with ``ast`` (local and
``TYPE_CHECKING`` imports included), so nothing is imported to check them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "torchzero"
MODULES = PACKAGE / "modules"

# Known exceptions, listed so that they stay visible (none left: LR is a core concept, presets sit above the
# families in torchzero/modules/presets.py).
FAMILIES_MAY_IMPORT: tuple[str, ...] = ()
# (importing file, imported name)
FAMILY_EXCEPTIONS: set[tuple[str, str]] = set()
CORE_EXCEPTIONS: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of everything ``path`` imports, relative imports resolved.

    ``from a.b import c`` yields ``a.b.c``: ``c`` may be a submodule (``from .. import lr``).
    """
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return out


def _ours(name: str) -> bool:
    """True for names in torchzero and its adapter packages (torchzero_lightning, ...)."""
    return name.split(".")[0].startswith("torchzero")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


FAMILIES = sorted(p.name for p in MODULES.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def test_resolves_relative_imports():
    path = MODULES / "line_search" / "base.py"
    names = {name for _, name in _imports(path)}
    assert "torchzero.core.module.Module" in names
    assert "torchzero.modules.line_search.base" not in names
    assert "torchzero.core.module.Chain" in {name for _, name in _imports(MODULES / "__init__.py")}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_module_family_imports_only_core_and_foreach(family):
    allowed = ("torchzero.core", "torchzero.foreach", f"torchzero.modules.{family}", *FAMILIES_MAY_IMPORT)
    bad = [
        f"{path.relative_to(ROOT).as_posix()}:{line}: {name}"
        for path in _files(MODULES / family)
        for line, name in _imports(path)
        if _ours(name)
        and not any(_within(name, a) for a in allowed)
        and (path.relative_to(ROOT).as_posix(), name) not in FAMILY_EXCEPTIONS
    ]
    assert not bad, "a module family may import only torchzero.core and torchzero.foreach:\n" + "\n".join(bad)


def test_foreach_imports_nothing_above_it():
    bad = [
        f"{path.relative_to(ROOT).as_posix()}:{line}: {name}"
        for path in _files(PACKAGE / "foreach")
        for line, name in _imports(path)
        if _ours(name) and not _within(name, "torchzero.foreach")
    ]
    assert not bad, "torchzero.foreach is the ground floor and imports only itself:\n" + "\n".join(bad)


def test_core_imports_only_core_and_foreach():
    bad = []
    for path in _files(PACKAGE / "core"):
        rel = path.relative_to(ROOT).as_posix()
        for line, name in _imports(path):
            if not _ours(name) or _within(name, "torchzero.core") or _within(name, "torchzero.foreach"):
                continue
            if any(rel == f and _within(name, m) for f, m in CORE_EXCEPTIONS):
                continue
            bad.append(f"{rel}:{line}: {name}")
    assert not bad, "torchzero.core may import only itself and torchzero.foreach:\n" + "\n".join(bad)
