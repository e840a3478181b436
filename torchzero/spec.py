"""A chain written as one line of text, for command lines and sweeps.

``tz.from_spec("adam(betas=(0.9, 0.95)), cautious, lr(3e-4)")`` returns ``[tz.m.Adam(betas=(0.9, 0.95)),
tz.m.Cautious(), tz.m.LR(3e-4)]``, the modules to pass to :class:`~torchzero.Modular`::

    opt = tz.Modular(model.parameters(), *tz.from_spec("adam(betas=(0.9, 0.95)), cautious, lr(3e-4)"))

A spec is a comma-separated list of modules, each a name with optional arguments in parentheses:

* a name is any module of ``tz.m`` (``torchzero modules`` lists them), case-insensitive and with or without
  underscores: ``adam``, ``LBFGS``, ``strongwolfe`` and ``strong_wolfe`` all work;
* arguments, positional and keyword, are Python literals (numbers, strings, tuples, lists, dicts, ``True``,
  ``False``, ``None``, and ``inf`` / ``nan``), each read with :func:`ast.literal_eval`: nothing in a spec is
  ever executed.

Arguments that are modules, functions or classes (``Split``'s branches, ``Wrap``'s optimizer, ``LR``'s
``scheduler_cls``) and nested chains cannot be written in a spec: build those in Python (or in a YAML config).
Mistakes raise :class:`SpecError`, a ``ValueError`` that names the unknown module (with close matches) or
setting (with the module's settings) and points at the place in the spec.

This sits above the module families (it looks names up in ``tz.m``), next to the package's ``__init__``.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import math
import re
from typing import Any

from . import modules as m
from .core.module import Chain, Module, Transform

__all__ = ["SpecError", "from_spec", "module_names"]

_NOT_IN_A_SPEC = (Module, Transform, Chain)
"""base classes in ``tz.m`` that are not modules one puts in a chain by name"""

_LITERALS = "numbers, strings, tuples, lists, dicts, True, False, None, inf, nan"


class SpecError(ValueError):
    """A mistake in a chain spec; ``position`` is the 0-based index in the spec where it was found."""

    def __init__(self, message: str, spec: str, position: int) -> None:
        self.spec = spec
        self.position = position
        self.reason = message
        super().__init__(f"{message} (at position {position} of the spec)\n{_pointer(spec, position)}")


def _pointer(spec: str, position: int) -> str:
    """The line of ``spec`` holding ``position`` and a caret under it."""
    start = spec.rfind("\n", 0, position) + 1
    end = spec.find("\n", position)
    line = spec[start : end if end >= 0 else len(spec)]
    return f"  {line}\n  {' ' * (position - start)}^"


def _key(name: str) -> str:
    return name.replace("_", "").lower()


def module_names() -> dict[str, type[Module]]:
    """The modules a spec can name: ``{class name: class}`` for every module class in ``tz.m``."""
    out: dict[str, type[Module]] = {}
    for name in m.__all__:
        cls = getattr(m, name, None)
        if isinstance(cls, type) and issubclass(cls, Module) and cls not in _NOT_IN_A_SPEC:
            out[name] = cls
    return out


def from_spec(spec: str) -> list[Module]:
    """The modules of ``spec``, in order, newly built: pass them on with ``tz.Modular(params, *modules)``.

    Example::

        tz.from_spec("adam(betas=(0.9, 0.95)), cautious, lr(3e-4)")
        # [Adam(betas=(0.9, 0.95)), Cautious(), LR(lr=0.0003)]

    Raises:
        SpecError: the spec is not a comma-separated list of ``name`` or ``name(arguments)``, names a module that
            ``tz.m`` does not have, gives an argument that is not a literal, or gives a setting the module does not
            take (or a value its schema rejects).
    """
    if not isinstance(spec, str):
        raise TypeError(f"a chain spec is a string such as 'adam, lr(1e-3)', got {type(spec).__name__}")
    if not spec.strip():
        raise SpecError("the spec is empty; write modules separated by commas, e.g. 'adam, lr(1e-3)'", spec, 0)
    # the spec gets its own line between parentheses, so that it may span lines and the positions of its nodes
    # are (line - 2, column) of the spec itself
    try:
        tree = ast.parse(f"(\n{spec}\n)", mode="eval")
    except SyntaxError as e:
        message = re.sub(r" on line \d+", "", e.msg)  # the lines of the parsed text, not of the spec
        raise SpecError(f"this is not a chain spec: {message}", spec, _syntax_position(spec, e)) from None
    except (ValueError, RecursionError, MemoryError) as e:  # a null byte; nesting too deep for the parser
        raise SpecError(f"this is not a chain spec: {e}", spec, 0) from None
    body = tree.body
    items = body.elts if isinstance(body, ast.Tuple) else [body]
    names = module_names()
    return [_build(item, spec, names) for item in items]


def _position(spec: str, node: ast.AST) -> int:
    lines = spec.split("\n")
    line = getattr(node, "lineno", 2) - 2
    if not 0 <= line < len(lines):
        return 0
    column = len(lines[line].encode()[: getattr(node, "col_offset", 0)].decode(errors="ignore"))
    return sum(len(x) + 1 for x in lines[:line]) + column


def _source(spec: str, node: ast.AST) -> str:
    return ast.get_source_segment(f"(\n{spec}\n)", node) or ""


def _syntax_position(spec: str, e: SyntaxError) -> int:
    lines = spec.split("\n")
    line = (e.lineno or 2) - 2
    if line < 0:  # the parenthesis around the spec was left open: one in the spec was not closed
        return len(spec.rstrip())
    if line >= len(lines):  # the parenthesis around the spec was closed early: the spec has an extra ')'
        return _extra_closing(spec)
    return sum(len(x) + 1 for x in lines[:line]) + min(max((e.offset or 1) - 1, 0), len(lines[line]))


def _extra_closing(spec: str) -> int:
    """The position of the first bracket in ``spec`` that closes more than it opened (strings skipped)."""
    depth, quote, i = 0, "", 0
    while i < len(spec):
        c = spec[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return i
        i += 1
    return len(spec)


def _build(node: ast.expr, spec: str, names: dict[str, type[Module]]) -> Module:
    where = _position(spec, node)
    if isinstance(node, ast.Call):
        func, args, keywords = node.func, node.args, node.keywords
    else:
        func, args, keywords = node, [], []
    if not isinstance(func, ast.Name):
        if isinstance(func, (ast.Tuple, ast.List)):
            raise SpecError(
                "nested chains cannot be written in a spec; list the modules one after another, or build the chain "
                "in Python (or a YAML config)",
                spec, where,
            )  # fmt: skip
        raise SpecError(
            f"expected a module name such as 'adam' or 'lr(1e-3)', got {_source(spec, node)!r}",
            spec, where,
        )  # fmt: skip
    cls = _lookup(func.id, spec, where, names)
    values = [_literal(arg, spec, cls, f"positional argument {i + 1}") for i, arg in enumerate(args)]
    settings: dict[str, Any] = {}
    for kw in keywords:
        if kw.arg is None:
            raise SpecError(f"'**' cannot be used in a spec; give {cls.__name__}'s settings one by one", spec, where)
        settings[kw.arg] = _literal(kw.value, spec, cls, f"setting {kw.arg!r}")
    _check_arguments(cls, values, settings, keywords, spec, where)
    try:
        return cls(*values, **settings)
    except (TypeError, ValueError) as e:
        message = str(e) if str(e).startswith(cls.__name__) else f"{cls.__name__}: {e}"
        raise SpecError(message, spec, where) from None


def _lookup(name: str, spec: str, where: int, names: dict[str, type[Module]]) -> type[Module]:
    by_key = {_key(n): cls for n, cls in names.items()}
    cls = by_key.get(_key(name))
    if cls is not None:
        return cls
    close = difflib.get_close_matches(_key(name), list(by_key), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(by_key[k].__name__ for k in close)}?" if close else ""
    raise SpecError(
        f"unknown module {name!r}{hint} (`torchzero modules` lists every module of tz.m)", spec, where
    )  # fmt: skip


def _literal(node: ast.expr, spec: str, cls: type[Module], what: str) -> Any:
    if isinstance(node, ast.Starred):
        raise SpecError(f"'*' cannot be used in a spec; give {cls.__name__}'s arguments one by one", spec,
                        _position(spec, node))  # fmt: skip
    try:
        return ast.literal_eval(_InfNan().visit(node))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    text = _source(spec, node)
    if isinstance(node, (ast.Call, ast.Name)) and _key(_callee(node)) in {_key(n) for n in module_names()}:
        reason = "a module cannot be an argument in a spec (nested chains and branches are out of its reach)"
    else:
        reason = f"arguments in a spec are Python literals ({_LITERALS})"
    raise SpecError(
        f"{what} of {cls.__name__}, {text!r}, is not a literal: {reason}; build this chain in Python "
        "(or a YAML config) to pass modules, functions or classes",
        spec, _position(spec, node),
    )  # fmt: skip


def _callee(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    return node.id if isinstance(node, ast.Name) else ""


class _InfNan(ast.NodeTransformer):
    """``inf`` and ``nan`` as float constants (``-inf`` then works too); every other name stays a name."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in ("inf", "nan"):
            return ast.copy_location(ast.Constant(math.inf if node.id == "inf" else math.nan), node)
        return node


def _check_arguments(
    cls: type[Module], values: list[Any], settings: dict[str, Any], keywords: list[ast.keyword], spec: str, where: int
) -> None:
    signature = inspect.signature(cls)
    params = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    listing = f"{cls.__name__} takes: {', '.join(accepted)}" if accepted else f"{cls.__name__} takes no settings"
    for kw in keywords:
        if kw.arg is not None and kw.arg not in accepted and not takes_any:
            close = difflib.get_close_matches(kw.arg, accepted, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SpecError(f"{cls.__name__} has no setting {kw.arg!r}; {hint}{listing}", spec,
                            _position(spec, kw))  # fmt: skip
    try:
        signature.bind(*values, **settings)
    except TypeError as e:
        raise SpecError(f"wrong arguments for {cls.__name__}: {e}; {listing}", spec, where) from None
