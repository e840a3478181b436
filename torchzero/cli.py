"""The ``torchzero`` command (also ``python -m torchzero``).

* ``torchzero demo``: train a small task with several chains side by side and compare them.
* ``torchzero modules``: every module in ``tz.m`` with its settings and defaults.
* ``torchzero bench``: run ``benchmarks/step_time.py`` and print its table (``bench closure``:
  ``benchmarks/closure_modules.py``).

The output uses ``rich`` (``pip install torchzero[demo]``); the plot uses ``matplotlib``.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__

DEFAULT_STEPS = 300


# ---------------------------------------------------------------------------------------------- argument types
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _chain_list(text: str) -> list[str]:
    from .demo.chains import CHAINS

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"give at least one chain name; choose from: {', '.join(CHAINS)}")
    unknown = [n for n in names if n not in CHAINS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown chain(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(CHAINS)} "
            "(comma-separated, e.g. --chains adam,lbfgs)"
        )
    return list(dict.fromkeys(names))


def _chain_spec(text: str) -> str:
    from .demo.chains import spec_chain

    try:
        spec_chain(text)
    except ValueError as e:  # SpecError, or the chain's own check (a module that must come first, ...)
        raise argparse.ArgumentTypeError(f"{e}") from None
    return text


def _plot_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise argparse.ArgumentTypeError(
            f"the plot is saved as .png, .pdf or .svg; got {text!r} (e.g. --plot losses.png)"
        )
    if not path.parent.resolve().is_dir():
        raise argparse.ArgumentTypeError(
            f"the folder {str(path.parent)!r} does not exist; create it or pick another path"
        )
    return path


def build_parser() -> argparse.ArgumentParser:
    from .demo.chains import CHAINS, DEFAULT_CHAINS, SUITES
    from .demo.data import TASKS
    from .demo.runner import TRAINERS

    parser = argparse.ArgumentParser(
        prog="torchzero", description="Modular optimizers for PyTorch: demo, module list and benchmark."
    )
    parser.add_argument("--version", action="version", version=f"torchzero {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,modules,bench}")

    demo = sub.add_parser(
        "demo",
        help="train a small task with several chains side by side",
        description="Train an MLP with several optimizer chains on two tasks, two interleaved spirals (made on the "
        "fly) and scikit-learn's handwritten digits (real data bundled with scikit-learn, nothing is downloaded), "
        "then compare final loss, train and test accuracy, steps, closure evaluations and wall time.",
        epilog="chains (* = run by default): "
        + "; ".join(f"{s.name}{'*' if s.name in DEFAULT_CHAINS else ''} = {s.label}" for s in CHAINS.values())
        + ". suites: "
        + "; ".join(f"{name} = {','.join(chains)}" for name, chains in SUITES.items()),
    )
    demo.add_argument(
        "--steps",
        type=_positive_int,
        default=DEFAULT_STEPS,
        help=f"optimizer steps per chain (default {DEFAULT_STEPS})",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the initial weights (default 0)")
    pick = demo.add_mutually_exclusive_group()
    pick.add_argument(
        "--chains",
        type=_chain_list,
        default=None,
        help="comma-separated chain names (default: the suite's chains)",
    )
    pick.add_argument(
        "--suite",
        choices=list(SUITES),
        default="default",
        help="a named set of chains: default ("
        + ",".join(DEFAULT_CHAINS)
        + ") or modern ("
        + ",".join(SUITES["modern"])
        + ")",
    )
    demo.add_argument(
        "--chain",
        type=_chain_spec,
        action="append",
        default=None,
        metavar="SPEC",
        help="your own chain as a spec, e.g. --chain 'adam(betas=(0.9, 0.95)), cautious, lr(1e-2)' (repeatable); "
        "it runs instead of the default chains, or beside those named with --chains",
    )
    demo.add_argument(
        "--trainer", choices=list(TRAINERS), default="plain", help="training loop to run the chains in (default plain)"
    )
    demo.add_argument(
        "--plot", type=_plot_path, default=None, metavar="PATH", help="save the loss curves (e.g. losses.png)"
    )
    demo.add_argument(
        "--task",
        choices=[*TASKS, "both"],
        default="both",
        help="spirals (synthetic), digits (scikit-learn's handwritten digits) or both, one after the other (default)",
    )
    demo.add_argument(
        "--samples", type=_positive_int, default=512, help="spirals: training (and test) points (default 512)"
    )

    modules = sub.add_parser("modules", help="list every module with its settings and defaults")
    modules.add_argument("--family", default=None, help="only this family (optimizers, transforms, line_search, ...)")

    bench = sub.add_parser(
        "bench",
        help="run benchmarks/step_time.py and print its table",
        description="`torchzero bench` runs benchmarks/step_time.py (step time against torch.optim); "
        "`torchzero bench closure` runs benchmarks/closure_modules.py (closure calls and wall time of line "
        "searches, quasi-Newton and gradient-free modules). Further arguments go to the script, e.g. --quick.",
    )
    bench.add_argument("args", nargs=argparse.REMAINDER, help="[step|closure] and arguments for the script")
    return parser


def _console() -> Any:
    try:
        from rich.console import Console
    except ImportError:
        raise SystemExit(
            "torchzero: this command prints with `rich`; install it with `pip install torchzero[demo]`"
        ) from None
    return Console()


# ---------------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .demo import resolve_chains, spec_chain

    console = _console()
    texts = args.chain or []
    # user chains replace the default chains; with --chains they run beside the named ones
    specs = [] if texts and args.chains is None else resolve_chains(args.chains, args.suite)
    taken = {s.name for s in specs}
    for i, text in enumerate(texts, 1):
        name = "custom" if len(texts) == 1 else f"custom-{i}"
        while name in taken:
            name += "'"
        taken.add(name)
        specs.append(spec_chain(text, name))
    # the model is tiny: one thread is fastest, and steadier when other work shares the cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _demo(args, console, specs)
    finally:
        torch.set_num_threads(threads)


def _demo(args: argparse.Namespace, console: Any, specs: list[Any]) -> int:
    from .demo import TASKS, load_task

    names = TASKS if args.task == "both" else (args.task,)
    try:
        tasks = [load_task(name, args.samples, seed=args.seed) for name in names]
    except ModuleNotFoundError as e:  # scikit-learn for the digits: say how to install it, no traceback
        from rich.markup import escape

        console.print(f"[red]torchzero demo:[/red] {escape(str(e))}")
        return 2
    by_task = [(task, _demo_task(args, console, specs, task)) for task in tasks]
    if args.plot is not None:
        save_plot(by_task, args.plot, args.steps)
        console.print(f"loss curves saved to [bold]{args.plot}[/bold]")
    return 0 if all(any(r.status == "ok" for r in results) for _, results in by_task) else 1


def _demo_task(args: argparse.Namespace, console: Any, specs: list[Any], task: Any) -> list[Any]:
    """Train every chain on ``task``: a panel, a progress bar per chain, then the table of results."""
    from rich.markup import escape
    from rich.panel import Panel
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .demo import run_chain, run_side_by_side

    legend = "\n".join(f"  [bold]{s.name:<13}[/bold] {escape(s.label)}  [dim]({escape(s.note)})[/dim]" for s in specs)
    console.print(
        Panel.fit(
            f"{task.description}; an MLP {task.n_features}-32-32-{task.n_classes} "
            f"from the same initial weights for every chain.\n{args.steps} optimizer steps per chain on the full "
            f"batch, trainer: [bold]{args.trainer}[/bold], seed {args.seed}.\n\n{legend}",
            title=f"torchzero demo: {task.name}",
        )
    )
    warm_up(task, args.trainer)
    columns = (
        TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console) as progress:
        tasks = {s.name: progress.add_task(s.name, total=args.steps, loss="-") for s in specs}

        def on_step(chain: str, i: int, loss: float) -> None:
            progress.update(tasks[chain], completed=i, loss=f"{loss:.4f}")

        results: list[Any]
        if args.trainer == "plain":  # the chains take turns step by step: all bars move together
            results = run_side_by_side(specs, task, steps=args.steps, seed=args.seed, on_step=on_step)
        else:  # Lightning and Accelerate run one training loop after the other
            results = []
            for spec in specs:
                results.append(
                    run_chain(
                        spec, task, steps=args.steps, seed=args.seed, trainer=args.trainer,
                        on_step=lambda i, loss, name=spec.name: on_step(name, i, loss),  # type: ignore[misc]
                    )
                )  # fmt: skip
        for r in results:
            if r.status != "ok":
                progress.update(tasks[r.chain], loss=f"[yellow]{r.status}[/yellow]")

    suite = "" if args.chains is not None or args.suite == "default" else f", suite {args.suite}"
    table = Table(title=f"{task.name}: {args.steps} steps per chain, trainer {args.trainer}{suite}")
    for name, justify in (
        ("chain", "left"), ("final loss", "right"), ("train acc", "right"),
        ("test acc", "right"), ("steps", "right"), ("closure evals", "right"), ("wall time", "right"),
    ):  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=name == "chain")  # type: ignore[arg-type]
    ok = [r for r in results if r.status == "ok" and math.isfinite(r.final_loss)]
    best = min(ok, key=lambda r: r.final_loss).chain if ok else None
    for r in results:
        if r.status == "unavailable":
            table.add_row(r.chain, f"[dim]unavailable: {escape(r.message)}[/dim]", "", "", "", "", "")
            continue
        name = f"[bold green]{r.chain}[/bold green]" if r.chain == best else r.chain
        loss = f"{r.final_loss:.4f}" if r.status == "ok" else f"[red]{r.status}[/red]"
        table.add_row(
            name, loss, _pct(r.train_acc), _pct(r.test_acc), str(r.steps), str(r.closure_calls), _seconds(r.wall_time)
        )
    console.print(table)
    for r in results:
        if r.status in ("failed", "diverged"):
            console.print(f"[red]{r.chain}[/red] {r.status}: {escape(r.message)}")
    console.print(
        "[dim]train/test acc: share of training and held-out points classified right; closure evals: loss "
        "evaluations over the run (opt.last_info['closure_calls']); a plain chain makes one per step, line searches "
        "and finite differences more.[/dim]"
    )
    return results


def warm_up(task: Any, trainer: str) -> None:
    """Run the one-time initialisation (imports, first backward, kernels) outside the timed runs."""
    from .demo import CHAINS, run_chain

    run_chain(CHAINS["adam"], task, steps=2, trainer=trainer)


def _seconds(t: float) -> str:
    return f"{1000 * t:.1f} ms" if t < 1 else f"{t:.2f} s"


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def save_plot(by_task: Sequence[tuple[Any, Sequence[Any]]], path: Path, steps: int) -> None:
    """Save the training loss of every chain against the step (log scale), one panel per task; the legend gives
    each chain's test accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(by_task), figsize=(7 * len(by_task), 4.5), squeeze=False)
    for ax, (task, results) in zip(axes[0], by_task, strict=True):
        for r in results:
            if r.losses:
                acc = f", test acc {_pct(r.test_acc)}" if r.status == "ok" else f" ({r.status})"
                ax.plot(range(1, len(r.losses) + 1), r.losses, label=f"{r.chain}{acc}")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (cross-entropy)")
        ax.set_title(f"{task.name}, {steps} steps")
        ax.legend(fontsize=8)
    fig.suptitle("torchzero demo")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- modules
def module_catalog() -> list[dict[str, Any]]:
    """One row per module class in ``tz.m``: name, family, settings with defaults, capabilities, and notes (the
    docstring's paragraphs that start with one of :data:`NOTE_PREFIXES`, such as the advice on
    ``reuse_evaluation`` for full-batch objectives)."""
    from . import m
    from .core.module import Chain, Module, Transform

    rows = []
    for name in sorted(m.__all__, key=str.lower):
        cls = getattr(m, name, None)
        if not (isinstance(cls, type) and issubclass(cls, Module)) or cls in (Module, Transform, Chain):
            continue
        parts = cls.__module__.split(".")
        family = parts[2] if len(parts) > 3 else parts[-1]
        settings, required = _signature_defaults(cls)
        needs_closure, creates_update, note = bool(cls.needs_closure), bool(cls.creates_update), ""
        if all(k.startswith("**") for k in required):  # buildable with default arguments
            try:
                instance = cls()
            except Exception as e:  # a preset whose parts are missing, or a bad default: show, don't crash
                note = f" [cannot be built with defaults: {e}]"
            else:
                leaves = list(instance.walk())
                needs_closure = instance.requires_closure
                creates_update = any(x.creates_update for x in leaves[:2])
                if not isinstance(instance, Chain):  # a preset's settings are its arguments; a module's, its defaults
                    settings = dict(instance.defaults)
        docstring = inspect.getdoc(cls) or ""
        doc = docstring.strip().splitlines()
        rows.append(
            {
                "name": name, "family": family, "settings": settings, "required": required,
                "needs_closure": needs_closure, "creates_update": creates_update,
                "summary": (_plain(doc[0]) if doc else "") + note, "notes": _notes(docstring),
            }
        )  # fmt: skip
    return rows


NOTE_PREFIXES = ("Full batch:",)
"""A module docstring's paragraph that starts with one of these is shown in its ``torchzero modules`` row"""


def _notes(docstring: str) -> str:
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", docstring))
    return " ".join(_plain(p) for p in paragraphs if p.startswith(NOTE_PREFIXES))


def _plain(text: str) -> str:
    """Docstring markup to plain text: ``:class:`LR``` -> ``LR``, double backticks -> nothing."""
    text = re.sub(r":\w+:`~?([^`]*)`", r"\1", text)
    return text.replace("``", "")


def _signature_defaults(cls: type) -> tuple[dict[str, Any], list[str]]:
    settings: dict[str, Any] = {}
    required: list[str] = []
    for p in inspect.signature(cls.__init__).parameters.values():  # type: ignore[misc]
        if p.kind is p.VAR_KEYWORD:  # Wrap(opt_cls, **kwargs): the wrapped optimizer's settings
            required.append(f"**{p.name}")
            continue
        if p.name == "self" or p.kind is p.VAR_POSITIONAL:
            continue
        if p.default is p.empty:
            required.append(p.name)
        else:
            settings[p.name] = p.default
    return settings, required


def cmd_modules(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    rows = module_catalog()
    if args.family is not None:
        families = sorted({r["family"] for r in rows})
        rows = [r for r in rows if r["family"] == args.family]
        if not rows:
            console.print(f"[red]no modules in family {args.family!r}[/red]; families: {', '.join(families)}")
            return 2
    table = Table(title=f"tz.m: {len(rows)} modules")
    table.add_column("module", style="bold")
    table.add_column("family")
    table.add_column("settings (defaults)")
    table.add_column("closure", justify="center")
    table.add_column("first", justify="center")
    table.add_column("what it does")
    for r in rows:
        settings = ", ".join(f"{k}={v!r}" for k, v in r["settings"].items())
        if r["required"]:
            named = [f"{k} (required)" for k in r["required"] if not k.startswith("**")]
            settings = ", ".join([*named, settings, *(k for k in r["required"] if k.startswith("**"))])
            settings = settings.replace(", , ", ", ").strip(", ")
        table.add_row(
            r["name"], r["family"], escape(settings or "-"), "yes" if r["needs_closure"] else "",
            "yes" if r["creates_update"] else "", escape(" ".join(filter(None, (r["summary"], r["notes"])))),
        )  # fmt: skip
    console.print(table)
    console.print(
        "[dim]closure: step() needs a closure. first: builds the update from scratch, so it must come first.[/dim]"
    )
    return 0


# ---------------------------------------------------------------------------------------------- bench
BENCHMARKS = {"step": "step_time.py", "closure": "closure_modules.py"}
"""``torchzero bench [step|closure]``: which script of ``benchmarks/`` to run"""


def find_benchmark(script: str = "step_time.py") -> Path | None:
    """``benchmarks/<script>`` in the current folder or in the source tree this package runs from."""
    here = Path(__file__).resolve().parent.parent
    for root in (Path.cwd(), here):
        path = root / "benchmarks" / script
        if path.is_file():
            return path
    return None


def cmd_bench(args: argparse.Namespace) -> int:
    extra = [a for a in args.args if a != "--"]
    which = "step"
    if extra and extra[0] in BENCHMARKS:
        which, extra = extra[0], extra[1:]
    script = BENCHMARKS[which]
    path = find_benchmark(script)
    if path is None:
        print(
            f"torchzero bench: benchmarks/{script} was not found (looked in the current folder and next to the "
            "torchzero package). The benchmarks ship with the source repository, not with the installed package: "
            "run `torchzero bench` from a checkout of the repository.",
            file=sys.stderr,
        )
        return 2
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.call([sys.executable, str(path), *extra], env=env)


# ---------------------------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "bench":
        args.args = [*args.args, *extra]
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        return cmd_demo(args)
    if args.command == "modules":
        return cmd_modules(args)
    return cmd_bench(args)


if __name__ == "__main__":
    sys.exit(main())
