"""The documentation: every Python block in ``docs/`` and ``README.md`` runs, the site builds with
``mkdocs build --strict``, every module has generated reference docs, and the FAQ page answers every
question of the spec's FAQ.

Code blocks of one page run in order in one namespace that starts from ``docs/snippets/setup.py``
(``model``, ``dataloader``, ``loss_fn``, ``inputs``, ``targets``, ``Net``), the setup shown on the
Getting started page. A block right after ``<!-- test: requires PACKAGE -->`` is skipped when the
package is missing; ``<!-- test: skip REASON -->`` skips it always.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchzero as tz

from .faq_snippets import FAQ, sections

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SETUP = DOCS / "snippets" / "setup.py"
PAGES = [p for p in sorted(DOCS.rglob("*.md")) if "snippets" not in p.parts] + [ROOT / "README.md"]

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
MARK = re.compile(r"<!--\s*test:\s*(?P<kind>skip|requires)\s*(?P<arg>.*?)\s*-->\s*$")
SNIPPET = re.compile(r"""^\s*--8<--\s+["'](?P<name>[^"']+)["']\s*$""", re.M)


def python_blocks(path: Path) -> list[tuple[int, str, tuple[str, str] | None]]:
    """``(line, code, marker)`` for every Python block of a Markdown page, snippet includes expanded."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        if m.group("lang") not in ("python", "py"):
            continue
        before = text[: m.start()].rstrip().splitlines()
        mark = MARK.search(before[-1]) if before else None
        indent = len(m.group("indent"))
        code = "\n".join(line[indent:] for line in m.group("body").splitlines())
        code = SNIPPET.sub(lambda s: (DOCS / "snippets" / s.group("name")).read_text(), code)
        line = text.count("\n", 0, m.start()) + 2
        out.append((line, code, (mark.group("kind"), mark.group("arg")) if mark else None))
    return out


PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p)]


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_id)
def test_code_blocks_run(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ns: dict = {"__name__": "__docs__"}
    exec(compile(SETUP.read_text(), str(SETUP), "exec"), ns)
    skipped = []
    try:
        for line, code, mark in python_blocks(page):
            if mark is not None and mark[0] == "skip":
                skipped.append(f"line {line}: {mark[1]}")
                continue
            if mark is not None and mark[0] == "requires" and importlib.util.find_spec(mark[1]) is None:
                skipped.append(f"line {line}: needs {mark[1]}")
                continue
            try:
                exec(compile(code, f"{_id(page)}:{line}", "exec"), ns)
            except ModuleNotFoundError as e:
                if e.name in ("lightning", "accelerate", "torchzero_lightning", "torchzero_accelerate", "matplotlib"):
                    pytest.skip(f"{_id(page)}:{line} needs the optional package {e.name}")
                raise
    finally:
        torch.set_num_threads(threads)
    if skipped:
        print("skipped blocks:", "; ".join(skipped))


def test_every_python_block_is_found():
    # guard against the extractor silently finding nothing (e.g. after a fence-style change)
    blocks = sum(len(python_blocks(p)) for p in PAGES)
    fences = sum(len(re.findall(r"^\s*```(?:python|py)\s*$", p.read_text(), re.M)) for p in PAGES)
    assert blocks == fences > 20, f"found {blocks} Python blocks but {fences} Python fences"


# ---------------------------------------------------------------------------------------------- site
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for package in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(package.split(".")[0]) is None:
            pytest.skip(f"the docs tools are not installed ({package}); pip install 'torchzero[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return out


def test_site_builds_strict(site):
    assert (site / "index.html").is_file()
    pages = [
        "getting-started", "faq", "performance", "api/core",
        *(f"concepts/{c}" for c in ("architecture", "chain", "settings", "learning-rates", "closures", "state")),
        *(f"guides/{g}" for g in ("lightning", "accelerate", "distributed")),
    ]  # fmt: skip
    # a page per module family: one per subpackage of torchzero/modules
    families = sorted(p.name for p in (ROOT / "torchzero" / "modules").iterdir() if (p / "__init__.py").is_file())
    pages += [f"modules/{f.replace('_', '-')}" for f in families]
    for page in pages:
        assert (site / page / "index.html").is_file(), f"page {page} missing from the built site"
    performance = (site / "performance" / "index.html").read_text()
    assert "<table>" in performance and "torch Adam foreach" in performance, "the benchmark table is missing"


def test_every_module_has_reference_docs(site):
    anchors = set()
    for page in site.rglob("*.html"):
        anchors.update(html.unescape(a) for a in re.findall(r'id="(torchzero[\w.]*)"', page.read_text()))
    names = {a.rsplit(".", 1)[-1] for a in anchors}
    missing = [
        n for n in tz.m.__all__
        if isinstance(getattr(tz.m, n), type) and issubclass(getattr(tz.m, n), tz.Module) and n not in names
    ]  # fmt: skip
    assert not missing, (
        f"modules without generated reference docs: {missing}; add their family's ::: block in docs/modules/"
    )
    for name in ("Modular", "Module", "Transform", "StepContext", "TorchzeroMixin", "AcceleratedClosure"):
        assert name in names, f"{name} has no reference docs"


# ---------------------------------------------------------------------------------------------- FAQ
FAQ_ANSWERS = {
    "How to construct modular optimizers?": "How do I build a modular optimizer?",
    "How to perform optimization?": "How do I train with it?",
    "How to use learning rate schedulers?": "How do I use a learning-rate scheduler?",
    "How to specify per-parameter options?": "How do I set options per parameter or per layer?",
    "How do we handle learning rates?": "Why is the learning rate a separate module?",
    "How to use external PyTorch optimizers as chainable modules?": "Can I use an existing PyTorch optimizer as a module?",
    "How to save/serialize a modular optimizer?": "How do I save and load the optimizer?",
    "How much overhead does a torchzero modular optimizer have compared to a normal optimizer?": "Is a modular optimizer slower than a torch optimizer?",
    "Is there support for complex-valued parameters?": "Can parameters be complex-valued?",
    "Is there support for optimized parameters being on different devices?": "Can the parameters be on different devices?",
    "Is there support for FSDP (FullyShardedDataParallel)?": "Does it work with FSDP?",
    "Is there support for differentiable optimizers?": "Can I differentiate through the optimizer step?",
}


def test_faq_page_answers_every_spec_question():
    if not FAQ.is_file():
        pytest.skip(f"the FAQ spec is not at {FAQ}")
    questions = list(sections(FAQ.read_text()))
    unmapped = [q for q in questions if q not in FAQ_ANSWERS]
    assert not unmapped, f"FAQ questions without an answer in docs/faq.md: {unmapped}"
    headings = re.findall(r"^## (.+)$", (DOCS / "faq.md").read_text(), re.M)
    missing = [FAQ_ANSWERS[q] for q in questions if FAQ_ANSWERS[q] not in headings]
    assert not missing, f"docs/faq.md lacks the sections {missing}"
