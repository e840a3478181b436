"""Griffe extension: render the reStructuredText bits of our docstrings as Markdown.

The docstrings use Google-style sections (``Args:``) with a few reST constructs that also read well in
``help()``: ``:class:`X```, ``:math:`x```, ``.. math::`` blocks and ``Example::`` literal blocks.  This
turns them into what mkdocs-material renders: inline code, MathJax ``\\( \\)`` / ``\\[ \\]``, and
fenced Python code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|obj|data|exc|ref|py:\w+):`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_MATH = re.compile(r":math:`([^`]*)`")


def _block(lines: list[str], start: int) -> tuple[list[str], int]:
    """The indented block after line ``start - 1`` (blank lines inside kept), and where it ends."""
    i, body = start, []
    while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
        body.append(lines[i])
        i += 1
    while body and not body[0].strip():
        body.pop(0)
    while body and not body[-1].strip():
        body.pop()
        i -= 1
    indent = min((len(x) - len(x.lstrip()) for x in body if x.strip()), default=0)
    return [x[indent:] for x in body], i


def rst_to_markdown(text: str) -> str:
    # inline roles first, on the whole text: they may span a line break
    text = _MATH.sub(lambda m: "\\(" + m.group(1) + "\\)", text)
    text = _ROLE.sub(lambda m: "`" + m.group(1).split(".")[-1] + "`", text)
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        lead = line[: len(line) - len(line.lstrip())]
        if stripped.startswith(".. math::"):
            first = stripped[len(".. math::") :].strip()
            body, i = _block(lines, i + 1)
            math = [first] if first else []
            math += [x for x in body if x.strip()]
            out += ["", f"{lead}\\[", *(lead + x for x in math), f"{lead}\\]", ""]
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            head = stripped[:-2].rstrip()
            body, j = _block(lines, i + 1)
            if body:
                if head in ("Example", "Examples", "Usage"):  # not a Google section: the code follows unindented
                    out.append(f"{lead}**{head}**")
                elif head:
                    out.append(f"{lead}{head}:")
                out += ["", f"{lead}```python", *(lead + x if x else "" for x in body), f"{lead}```", ""]
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class RstDocstrings(griffe.Extension):
    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
