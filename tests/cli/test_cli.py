"""The ``torchzero`` command: demo, modules, bench, and its errors."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import torchzero as tz
from torchzero import cli
from torchzero.demo import (
    CHAINS,
    ChainSpec,
    load_digits_task,
    load_task,
    make_model,
    make_task,
    resolve_chains,
    run_chain,
    run_side_by_side,
)
from torchzero.demo.chains import DEFAULT_CHAINS, MODERN_CHAINS
from torchzero.demo.runner import RunResult, evaluate


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table headers in narrow terminals


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_bad(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    assert info.value.code == 2, f"bad flags should exit with argparse's code 2, got {info.value.code}"
    return capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- demo
def test_demo_prints_a_row_per_chain(capsys):
    code, out, _ = run(capsys, "demo", "--steps", "3", "--samples", "64", "--chains", "adam,sgd-onecycle")
    assert code == 0
    for header in ("final loss", "test acc", "closure", "wall time"):
        assert header in out, f"missing column {header!r} in:\n{out}"
    assert "adam" in out and "sgd-onecycle" in out


def test_demo_default_chains(capsys):
    code, out, _ = run(capsys, "demo", "--steps", "2", "--samples", "32")
    assert code == 0
    for name in DEFAULT_CHAINS:
        assert name in out
    for name in set(CHAINS) - set(DEFAULT_CHAINS):
        assert f"\n{name}" not in out and f"│ {name} " not in out, f"{name} is not a default chain"


def test_every_chain_trains():
    task = make_task(64, 32)
    for name, spec in CHAINS.items():
        result = run_chain(spec, task, steps=3)
        assert result.status == "ok", f"{name}: {result.status} {result.message}"
        assert result.steps == 3 and result.closure_calls >= 3, (name, result.steps, result.closure_calls)
        # schedule-free is evaluated at its average x, which lags the training point y in the first steps
        last = result.losses[-1] if name == "sf-adamw" else result.final_loss
        if name != "fdm-adam":  # a random-direction estimate need not descend within 3 steps
            assert last < result.losses[0], f"{name}: loss went from {result.losses[0]} to {last}"
        assert math.isfinite(result.final_loss), name


def test_demo_modern_suite(capsys):
    code, out, _ = run(capsys, "demo", "--suite", "modern", "--steps", "3", "--samples", "32")
    assert code == 0
    assert "suite modern" in out
    for name in MODERN_CHAINS:
        assert f"│ {name} " in out, f"no row for {name} in:\n{out}"
    for name in set(DEFAULT_CHAINS) - set(MODERN_CHAINS):
        assert f"│ {name} " not in out, f"{name} is not in the modern suite"


def test_modern_suite_trains_and_repeats_with_the_same_seed():
    task = make_task(64, 32, seed=0)
    specs = resolve_chains(None, "modern")
    assert [s.name for s in specs] == list(MODERN_CHAINS)
    a, b, c = (run_side_by_side(specs, task, steps=4, seed=s) for s in (0, 0, 1))
    for ra, rb, rc in zip(a, b, c, strict=True):
        assert ra.status == rb.status == rc.status == "ok", (ra.chain, ra.message, rc.message)
        assert ra.steps == 4 and ra.closure_calls == 4 and math.isfinite(ra.final_loss), ra
        assert ra.losses == rb.losses and (ra.final_loss, ra.test_acc) == (rb.final_loss, rb.test_acc), ra.chain
        assert ra.losses != rc.losses, f"{ra.chain}: another seed should give another run"


def test_schedule_free_chain_is_evaluated_at_its_averaged_weights():
    task = make_task(64, 32, seed=0)
    model = make_model(seed=0)
    opt = CHAINS["sf-adamw"].build(model, 10)
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(model(task.x_train), task.y_train).backward()
        opt.step()
    y = [p.detach().clone() for p in model.parameters()]
    result = RunResult("sf-adamw", "")
    evaluate(model, task, result, opt)
    for p, before in zip(model.parameters(), y, strict=True):
        torch.testing.assert_close(p.detach(), before)  # opt.train() put y back (up to rounding)
    opt.eval()
    with torch.no_grad():
        at_x = float(F.cross_entropy(model(task.x_train), task.y_train))
    opt.train()
    with torch.no_grad():
        at_y = float(F.cross_entropy(model(task.x_train), task.y_train))
    assert result.final_loss == at_x != at_y


def test_fdm_chain_trains_without_any_backward_pass(monkeypatch):
    calls = {"backward": 0}
    real = torch.autograd.backward

    def counting(*a, **k):
        calls["backward"] += 1
        return real(*a, **k)

    monkeypatch.setattr(torch.autograd, "backward", counting)  # Tensor.backward goes through it
    task = make_task(64, 32, seed=0)
    assert run_chain(CHAINS["adam"], task, steps=2).status == "ok" and calls["backward"] > 0  # the spy works
    calls["backward"] = 0
    result = run_chain(CHAINS["fdm-adam"], task, steps=3)
    assert result.status == "ok", result.message
    assert calls["backward"] == 0


def test_sgd_onecycle_chain_cycles_momentum_against_lr():
    model = make_model()
    opt = CHAINS["sgd-onecycle"].build(model, 20)
    lrs, momenta = [], []
    for _ in range(20):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
        momenta.append(opt.param_groups[0]["momentum"])
    peak = max(range(20), key=lrs.__getitem__)
    assert 0 < peak < 19 and momenta[peak] < momenta[0] and momenta[-1] > momenta[peak], (lrs, momenta)


def test_demo_reports_a_broken_chain_and_goes_on(capsys, monkeypatch):
    def broken(model, steps):
        raise KeyError("group 0 sets ['lr'] [red]")  # brackets must be printed, not read as markup

    monkeypatch.setitem(CHAINS, "adam", ChainSpec("adam", "Adam [broken]", ("Adam",), broken))
    code, out, _ = run(capsys, "demo", "--steps", "2", "--samples", "32", "--chains", "adam,cautious")
    assert code == 0, "one chain still trained"
    assert "adam failed: KeyError: \"group 0 sets ['lr'] [red]\"" in out
    assert "Adam [broken]" in out

    monkeypatch.setitem(CHAINS, "cautious", ChainSpec("cautious", "C", ("Adam",), broken))
    code, out, _ = run(capsys, "demo", "--steps", "2", "--samples", "32", "--chains", "adam,cautious")
    assert code == 1, "no chain trained: the demo must not report success"


def test_demo_plot_writes_a_png(capsys, tmp_path):
    path = tmp_path / "losses.png"
    code, out, _ = run(capsys, "demo", "--steps", "3", "--samples", "32", "--chains", "adam", "--plot", str(path))
    assert code == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "the plot is not a PNG file"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--steps", "0"], "must be at least 1"),
        (["demo", "--steps", "ten"], "expected a whole number"),
        (["demo", "--chains", "adam,nope"], "unknown chain(s) 'nope'; choose from: adam"),
        (["demo", "--chains", ","], "give at least one chain name"),
        (["demo", "--trainer", "keras"], "invalid choice: 'keras'"),
        (["demo", "--plot", "losses.txt"], ".png, .pdf or .svg"),
        (["demo", "--plot", "/no/such/folder/x.png"], "does not exist"),
        (["demoo"], "invalid choice: 'demoo'"),
        (["demo", "--suite", "newest"], "invalid choice: 'newest'"),
        (["demo", "--suite", "modern", "--chains", "adam"], "not allowed with argument"),
    ],
)
def test_bad_flags_say_what_is_wrong(capsys, argv, message):
    err = run_bad(capsys, *argv)
    assert message in err, f"expected {message!r} in the error, got:\n{err}"


def test_demo_adam_equals_a_torch_optim_loop():
    task = make_task(64, 32, seed=3)
    result = run_chain(CHAINS["adam"], task, steps=10, seed=3)
    assert result.status == "ok", result.message

    model = make_model(seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(model(task.x_train), task.y_train)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = F.cross_entropy(model(task.x_train), task.y_train).item()
    torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(losses))
    torch.testing.assert_close(torch.tensor(result.final_loss), torch.tensor(final))
    assert result.steps == 10
    assert result.closure_calls == 10, "a chain without line search evaluates the closure once per step"


def test_side_by_side_equals_one_after_the_other():
    # the demo interleaves the chains step by step; each must get exactly what it gets alone
    task = make_task(64, 32, seed=2)
    names = ["sgd-onecycle", "lbfgs", "fdm-adam", "muon"]
    missing = ChainSpec("x", "X", ("NoSuchModule",), lambda model, steps: None)
    diverging = ChainSpec(
        "z", "Z", ("SGD", "LR"), lambda model, steps: tz.Modular(model.parameters(), tz.m.LR(float("inf")))
    )
    seen = []
    together = run_side_by_side(
        [CHAINS[n] for n in names] + [missing, diverging], task, steps=5, seed=2, on_step=lambda *a: seen.append(a[:2])
    )
    assert seen[: len(names) + 1] == [(n, 1) for n in names] + [("z", 1)], "the chains should take turns"
    for name, result in zip(names, together[: len(names)], strict=True):
        alone = run_chain(CHAINS[name], task, steps=5, seed=2)
        assert result.status == alone.status == "ok", (name, result.message)
        torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(alone.losses), rtol=0, atol=0)
        assert (result.closure_calls, result.final_loss, result.test_acc) == (
            alone.closure_calls,
            alone.final_loss,
            alone.test_acc,
        )
        assert result.wall_time > 0
    assert together[-2].status == "unavailable"
    assert together[-1].status == "diverged" and together[-1].steps == 1


def test_unavailable_and_failing_chains_are_reported_not_raised():
    task = make_task(32, 32)
    missing = ChainSpec("x", "X", ("NoSuchModule",), lambda model, steps: None)
    r = run_chain(missing, task, steps=2)
    assert r.status == "unavailable" and "NoSuchModule" in r.message

    def broken(model, steps):
        raise ValueError("bad setting")

    r = run_chain(ChainSpec("y", "Y", ("Adam",), broken), task, steps=2)
    assert r.status == "failed" and "ValueError: bad setting" in r.message

    def diverging(model, steps):
        return tz.Modular(model.parameters(), tz.m.SGD(), tz.m.LR(float("inf")))

    r = run_chain(ChainSpec("z", "Z", ("SGD", "LR"), diverging), task, steps=5)
    assert r.status == "diverged", (r.status, r.message)


def test_run_chain_rejects_bad_arguments():
    task = make_task(32, 32)
    with pytest.raises(ValueError, match="unknown trainer 'keras'"):
        run_chain(CHAINS["adam"], task, steps=2, trainer="keras")
    with pytest.raises(ValueError, match="at least 1"):
        run_chain(CHAINS["adam"], task, steps=0)


# ---------------------------------------------------------------------------------------------- modules
def test_modules_lists_every_module_with_its_defaults(capsys):
    rows = {r["name"]: r for r in cli.module_catalog()}
    expected = {
        n for n in tz.m.__all__
        if isinstance(getattr(tz.m, n), type) and issubclass(getattr(tz.m, n), tz.Module)
        and getattr(tz.m, n) not in (tz.Module, tz.Transform, tz.Chain)
    }  # fmt: skip
    assert set(rows) == expected
    for name, row in rows.items():
        cls = getattr(tz.m, name)
        assert row["needs_closure"] in (cls.needs_closure, True)
        assert row["creates_update"] in (cls.creates_update, True)
        if any(not k.startswith("**") for k in row["required"]) or "cannot be built" in row["summary"]:
            continue
        instance = cls()
        if isinstance(instance, tz.Chain):  # a preset: its settings are its constructor's arguments
            assert row["settings"].keys() == set(inspect.signature(cls).parameters)
        else:
            assert row["settings"] == instance.defaults
    assert rows["Adam"]["needs_closure"] is False and rows["Adam"]["creates_update"] is False
    assert rows["StrongWolfe"]["needs_closure"] is True and rows["RandomizedFDM"]["creates_update"] is True
    assert rows["Adam"]["settings"]["betas"] == (0.9, 0.999)
    assert rows["LR"]["settings"] == {"lr": 1e-3}
    assert rows["Wrap"]["required"] == ["opt_cls", "**kwargs"]

    code, out, _ = run(capsys, "modules")
    assert code == 0
    assert "Adam" in out and "betas" in out


def test_modules_family_filter(capsys):
    code, out, _ = run(capsys, "modules", "--family", "optimizers")
    assert code == 0 and "Adam" in out
    code, out, _ = run(capsys, "modules", "--family", "nope")
    assert code == 2 and "no modules in family 'nope'" in out


def test_modules_rows_tell_full_batch_users_about_reuse_evaluation(capsys):
    rows = {r["name"]: r for r in cli.module_catalog()}
    for name in ("LBFGS", "LineSearch", "StrongWolfe"):
        notes = rows[name]["notes"]
        assert notes.startswith("Full batch:"), (name, notes)
        assert "reuse_evaluation=True" in notes and "closure call per step" in notes, (name, notes)
        assert "never with a closure that reads changing data" in notes, (name, notes)
        assert "``" not in notes and ":class:" not in notes, "docstring markup should be plain text"
    # loss-only trials: the option saves nothing, and the row says so instead of promising a saving
    assert "saves nothing" in rows["Backtracking"]["notes"]
    assert "changing data" in rows["Backtracking"]["notes"]
    assert rows["Adam"]["notes"] == ""
    assert "Full batch" not in rows["StrongWolfe"]["summary"], "the summary stays the docstring's first line"

    code, out, _ = run(capsys, "modules", "--family", "line_search")
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())  # rich wraps the description column
    assert "pass reuse_evaluation=True to torchzero.Modular to save about one closure call per step" in flat


# ---------------------------------------------------------------------------------------------- bench
def test_bench_without_the_script_says_where_it_looked(capsys, monkeypatch):
    monkeypatch.setattr(cli, "find_benchmark", lambda script: None)
    code, _, err = run(capsys, "bench")
    assert code == 2
    assert "benchmarks/step_time.py was not found" in err


def test_bench_runs_the_script_and_passes_arguments(capfd, monkeypatch, tmp_path):
    script = tmp_path / "benchmarks" / "step_time.py"
    script.parent.mkdir()
    script.write_text("import sys\nprint('| chain | ms |', sys.argv[1:])\nsys.exit(3)\n")
    monkeypatch.chdir(tmp_path)
    assert cli.find_benchmark() == script
    # the script's output goes straight to the terminal and its exit status comes back
    code = cli.main(["bench", "--", "--quick"])
    assert code == 3
    assert "| chain | ms | ['--quick']" in capfd.readouterr().out

    other = script.parent / "closure_modules.py"
    other.write_text("import sys\nprint('closure calls', sys.argv[1:])\n")
    assert cli.main(["bench", "closure", "--quick"]) == 0
    assert "closure calls ['--quick']" in capfd.readouterr().out


@pytest.mark.parametrize("which", [[], ["closure"]], ids=["step_time", "closure_modules"])
def test_bench_runs_the_real_benchmark_quickly(capfd, which):
    assert cli.main(["bench", *which, "--", "--quick"]) == 0
    out = capfd.readouterr().out
    assert ("torch Adam foreach" in out) if not which else ("LBFGS" in out), out[-2000:]


def _step_time_module():
    import importlib.util

    path = cli.find_benchmark()
    assert path is not None
    spec = importlib.util.spec_from_file_location("_step_time_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_modern_rows():
    # the --modern rows on the smallest workload, two timed steps: each module beside its reference
    step_time = _step_time_module()
    rows = step_time.bench_modern("300 one-element", 2, "cpu")
    modules = {r["module"] for r in rows}
    assert {"ASGD", "Adafactor"} <= modules, modules  # references in torch itself
    expected = set(step_time._modern_pairs())
    assert modules == expected, f"missing rows: {expected - modules}"
    for r in rows:
        assert math.isfinite(r["tz_over_ref"]) and r["tz_over_ref"] > 0, r
        assert r["tz_state_B_per_param"] > 0 and r["ref_state_B_per_param"] > 0, r
    params = step_time._make([torch.Size([3, 4])], "cpu")
    opt = torch.optim.Adam(params, lr=1e-3, foreach=True)
    opt.step()  # exp_avg, exp_avg_sq (4 bytes per element each) and a 0-dim float32 step
    assert step_time.state_bytes(opt) == 2 * 12 * 4 + 4


def test_bench_more_rows():
    # the --more rows (matrix modules, Sophia, Lookahead) on the smallest workload: each beside its reference, with
    # the state of every tensor the reference keeps (pytorch_optimizer's Lookahead: its slow weights and Adam's)
    step_time = _step_time_module()
    rows = step_time.bench_more("300 one-element", 2, "cpu", matrix_steps=2)
    modules = {r["module"] for r in rows}
    expected = set(step_time._more_pairs())
    assert {"Shampoo", "SOAP", "PSGDKron", "Sophia", "Lookahead(Adam)"} <= expected
    assert modules == expected, f"missing rows: {expected - modules}"
    for r in rows:
        assert math.isfinite(r["tz_over_ref"]) and r["tz_over_ref"] > 0, r
        assert r["tz_state_B_per_param"] > 0 and r["ref_state_B_per_param"] > 0, r
    lookahead = next(r for r in rows if r["module"] == "Lookahead(Adam)")
    assert lookahead["ref_state_B_per_param"] >= 12, lookahead  # slow weights + exp_avg + exp_avg_sq
    # a matrix module is left out where a dimension is too large for a d x d preconditioner
    matrix = {k: v for k, v in step_time._more_pairs().items() if v[3]}
    assert set(matrix) == {"Shampoo", "SOAP", "PSGDKron"}
    step_time._more_pairs, step_time.MATRIX_MAX_DIM = (lambda: matrix), 0
    assert step_time.bench_more("300 one-element", 1, "cpu", matrix_steps=1) == []


@pytest.mark.slow
def test_bench_modern_quick_through_the_cli(capfd):
    assert cli.main(["bench", "--", "--modern", "--quick"]) == 0
    out = capfd.readouterr().out
    assert "newer modules against their references" in out and "DAdaptAdam" in out, out[-2000:]


def test_python_dash_m_torchzero():
    result = subprocess.run(
        [sys.executable, "-m", "torchzero", "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"torchzero {tz.__version__}"


# ---------------------------------------------------------------------------------------------- trainers
@pytest.mark.parametrize("trainer", ["lightning", "accelerate"])
def test_integrations_train_like_the_plain_loop(trainer):
    pytest.importorskip(trainer)
    pytest.importorskip(f"torchzero_{trainer}")
    task = make_task(64, 32, seed=1)
    for name in ("sgd-onecycle", "lbfgs"):  # a scheduler inside LR, and a closure chain
        plain = run_chain(CHAINS[name], task, steps=4, seed=1)
        other = run_chain(CHAINS[name], task, steps=4, seed=1, trainer=trainer)
        assert other.status == "ok", f"{trainer}/{name}: {other.message}"
        torch.testing.assert_close(torch.tensor(other.losses), torch.tensor(plain.losses))
        torch.testing.assert_close(torch.tensor(other.final_loss), torch.tensor(plain.final_loss))
        assert (other.steps, other.closure_calls) == (plain.steps, plain.closure_calls)


@pytest.mark.parametrize("trainer", ["lightning", "accelerate"])
def test_demo_through_an_integration_prints_the_table(capsys, trainer):
    code, out, _ = run(capsys, "demo", "--steps", "2", "--samples", "32", "--chains", "adam", "--trainer", trainer)
    assert code == 0 and f"trainer {trainer}" in out and "adam" in out


def test_seed_changes_the_run_and_repeats_it():
    task = make_task(64, 32, seed=0)
    a, b, c = (run_chain(CHAINS["adam"], task, steps=3, seed=s).losses for s in (0, 0, 1))
    assert a == b and a != c


# ---------------------------------------------------------------------------------------------- real data
def test_digits_task_is_scikit_learns_digits_split_by_the_seed():
    from sklearn.datasets import load_digits

    task = load_digits_task(seed=0)
    ref = load_digits()
    assert task.name == "digits" and task.n_features == 64 and task.n_classes == 10
    assert len(task.y_train) + len(task.y_test) == len(ref.target) == 1797
    assert len(task.y_test) == round(0.25 * 1797)
    both = torch.cat([task.x_train, task.x_test])
    assert float(both.min()) == 0.0 and float(both.max()) == 1.0  # pixels 0..16 scaled to [0, 1]
    # every image appears once, with its own label: the split is a permutation of the data set
    x = torch.as_tensor(ref.data, dtype=torch.float32) / 16
    rows = {tuple(r.tolist()): int(t) for r, t in zip(x, ref.target, strict=True)}
    seen = [(tuple(r.tolist()), int(t)) for r, t in zip(both, torch.cat([task.y_train, task.y_test]), strict=True)]
    assert all(rows[r] == t for r, t in seen)
    assert load_digits_task(seed=0).y_test.tolist() == task.y_test.tolist()
    assert load_digits_task(seed=1).y_test.tolist() != task.y_test.tolist()


def test_adam_on_digits_equals_torch_optim_and_learns():
    task = load_task("digits", seed=2)
    result = run_chain(CHAINS["adam"], task, steps=10, seed=2)
    assert result.status == "ok", result.message
    model = make_model(task.n_features, task.n_classes, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(model(task.x_train), task.y_train).backward()
        opt.step()
    with torch.no_grad():
        test_acc = float((model(task.x_test).argmax(1) == task.y_test).float().mean())
    # the same arithmetic as torch's Adam (a fused or foreach kernel): equal up to float32 rounding
    assert result.test_acc == pytest.approx(test_acc, abs=1 / len(task.y_test))
    assert result.test_acc > 0.5  # ten classes: chance is 10%


def test_demo_shows_both_tasks_by_default_and_one_when_asked(capsys):
    code, out, _ = run(capsys, "demo", "--steps", "2", "--samples", "32", "--chains", "adam")
    assert code == 0 and "spirals: 2 steps" in out and "digits: 2 steps" in out and "MLP 64-32-32-10" in out
    code, out, _ = run(capsys, "demo", "--steps", "2", "--chains", "adam", "--task", "digits")
    assert code == 0 and "digits: 2 steps" in out and "spirals" not in out


def test_digits_without_scikit_learn_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if scikit-learn were missing
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'torchzero\[demo\]'"):
        load_digits_task()
    code, out, _ = run(capsys, "demo", "--steps", "2", "--chains", "adam", "--task", "digits")
    assert code == 2 and "torchzero[demo]" in out and "--task spirals" in out


def test_only_the_digits_loader_imports_scikit_learn_and_only_when_called():
    import ast
    from pathlib import Path

    root = Path(tz.__file__).parent
    places = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inside = {id(i) for f in functions for i in ast.walk(f)}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n.split(".")[0] == "sklearn" for n in names):
                places.append((str(path.relative_to(root)), id(node) in inside))
    assert places == [("demo/data.py", True)]  # inside load_digits_task: importing torchzero never needs it


def test_demo_integrations_do_not_import_the_runner():
    import ast

    import torchzero.demo.integrations as integrations

    tree = ast.parse(inspect.getsource(integrations))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "runner" not in imported and not any(m and m.endswith(".runner") for m in imported), imported
