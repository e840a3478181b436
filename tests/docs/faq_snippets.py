"""Extract the ``.. code::`` snippets of ``shared/spec/FAQ.rst`` by section."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

FAQ = Path(__file__).resolve().parents[3] / "shared" / "spec" / "FAQ.rst"
"""the user-facing API spec, next to the repository (``/work/shared/spec/FAQ.rst``)"""


def sections(text: str) -> dict[str, list[str]]:
    """``{section title: [code snippet, ...]}`` for every section with ``=`` underlines."""
    lines = text.splitlines()
    out: dict[str, list[str]] = {}
    title = None
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"=+", nxt.strip()) and len(nxt.strip()) >= len(line.strip()) - 2:
            title = line.strip()
            out[title] = []
            i += 2
            continue
        if title is not None and re.match(r"\.\.\s+code::", line.strip()):
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            out[title].append(textwrap.dedent("\n".join(block)).strip("\n") + "\n")
            continue
        i += 1
    return out
