"""The griffe extension that renders our docstrings' reST bits as Markdown for the API reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXT = Path(__file__).resolve().parents[2] / "docs" / "_ext" / "rst_docstrings.py"
_spec = importlib.util.spec_from_file_location("rst_docstrings", EXT)
rst = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rst)


def test_roles_become_code_and_inline_math():
    text = "Use :class:`~torchzero.m.LR` and :meth:`Modular.step`; the step :math:`\\alpha\ng` spans lines."
    assert rst.rst_to_markdown(text) == "Use `LR` and `step`; the step \\(\\alpha\ng\\) spans lines."


def test_math_directive_becomes_a_display_block_set_off_by_blank_lines():
    text = "Rule:\n\n.. math::  u = -g\n\n(a note)\n\n.. math::\n    a = b\\\\\n    c = d\nafter"
    out = rst.rst_to_markdown(text).splitlines()
    i = out.index("\\[")
    assert out[i - 1] == "" and out[i + 1] == "u = -g" and out[i + 2] == "\\]" and out[i + 3] == ""
    j = out.index("\\[", i + 1)
    assert out[j + 1 : j + 4] == ["a = b\\\\", "c = d", "\\]"] and out[j + 4] == ""


def test_literal_blocks_become_fenced_python():
    text = "Example::\n\n    opt = tz.Modular(p, tz.m.Adam())\n\n    opt.step()\n\nReference: x."
    out = rst.rst_to_markdown(text)
    assert "**Example**\n\n```python\nopt = tz.Modular(p, tz.m.Adam())\n\nopt.step()\n```\n" in out
    assert out.rstrip().endswith("Reference: x.")
    # a sentence ending in '::' keeps its words
    assert rst.rst_to_markdown("Like this::\n\n    x = 1").startswith("Like this:\n\n```python\nx = 1\n```")
