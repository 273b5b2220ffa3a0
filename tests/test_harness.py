"""Tests of the check machinery: ``run_checks`` output and failures, time limits, crash reports, isolation,
the registry's coverage of the exercises, and loading notebooks for ``pytest --impl``."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import nbformat
import pytest

import ddpm_ref
from tests.harness import (
    _REGISTERS,
    EXERCISES,
    REGISTRY,
    CheckSkipped,
    Impl,
    MissingDefinition,
    check,
    check_name,
    load_all_checks,
    run_checks,
)
from tests.notebook_impl import load_impl

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def scratch_registry():
    """Checks registered inside a test (exercise names starting with "_") are removed afterwards."""
    yield
    for name in [k for k in REGISTRY if k.startswith("_")]:
        del REGISTRY[name]


def test_run_checks_prints_and_raises(scratch_registry, capsys) -> None:
    @check("_demo")
    def test_demo_passes(impl) -> None:
        assert impl.value == 1

    @check("_demo")
    def test_demo_fails(impl) -> None:
        if impl.value != 2:
            raise AssertionError(f"value should be 2, got {impl.value}. Hint: add one")

    with pytest.raises(AssertionError, match="1 check\\(s\\) failed: demo_fails"):
        run_checks("_demo", {"value": 1})
    out = capsys.readouterr().out
    assert "✓ demo_passes" in out
    assert "✗ demo_fails: value should be 2, got 1. Hint: add one" in out
    assert "_demo: 1 passed, 1 failed" in out
    results = run_checks("_demo", {"value": 1}, raise_on_failure=False)
    assert results == {"demo_passes": None, "demo_fails": "value should be 2, got 1. Hint: add one"}
    with pytest.raises(KeyError, match="no hidden checks"):
        run_checks("_demo", {"value": 1}, hidden=True)


def test_endless_loop_is_stopped_and_fails_only_itself(scratch_registry) -> None:
    @check("_loop")
    def test_loops_forever(impl) -> None:
        impl.spin()

    @check("_loop")
    def test_after_the_loop(impl) -> None:
        assert impl.value == 3

    def spin() -> None:
        while True:
            pass

    results = run_checks("_loop", {"spin": spin, "value": 3}, timeout=0.5, raise_on_failure=False)
    assert "longer than 0.5 s" in results["loops_forever"] and "endless loop" in results["loops_forever"]
    assert results["after_the_loop"] is None


def test_a_crash_reports_the_exception_type_and_line(scratch_registry) -> None:
    @check("_crash")
    def test_crash(impl) -> None:
        impl.q_sample(1.0)

    ns: dict = {}
    exec(compile("def q_sample(x):\n    y = x * 2\n    return y / 0\n", "<cell 4>", "exec"), ns)
    results = run_checks("_crash", ns, raise_on_failure=False)
    assert results["crash"].startswith("raised ZeroDivisionError: float division by zero (line 3 of q_sample)")


def test_missing_definition_not_implemented_and_skips(scratch_registry, capsys) -> None:
    @check("_special")
    def test_uses_q_sample(impl) -> None:
        impl.q_sample()

    @check("_special")
    def test_cannot_apply(impl) -> None:
        raise CheckSkipped("parameter names differ")

    results = run_checks("_special", {}, raise_on_failure=False)
    assert results["uses_q_sample"] == (
        "define `q_sample` first (run the cell that defines it), then run the check again")
    assert results["cannot_apply"] is None
    assert "– cannot_apply: skipped (parameter names differ)" in capsys.readouterr().out

    def q_sample() -> None:
        raise NotImplementedError()

    results = run_checks("_special", {"q_sample": q_sample}, raise_on_failure=False)
    assert "replace `raise NotImplementedError()` with your code" in results["uses_q_sample"]
    with pytest.raises(MissingDefinition):
        Impl().anything  # noqa: B018
    assert not hasattr(Impl(), "anything")


def test_a_wrong_earlier_exercise_does_not_fail_a_later_one(capsys) -> None:
    """``sample`` calls the student's ``p_sample``; while sample's checks run, p_sample is the reference's."""
    ns = dict(vars(ddpm_ref))
    exec(textwrap.dedent("""
        import torch

        def p_sample(model, x_t, t, schedule, **kwargs):
            return x_t * 0 + 7.0          # badly wrong

        def sample(model, schedule, shape, *, generator=None, device=None, progress=True, x_T=None, **kwargs):
            x = torch.randn(tuple(shape), generator=generator) if x_T is None else x_T
            for t in range(schedule.T - 1, -1, -1):
                x = p_sample(model, x, t, schedule, generator=generator, **kwargs)
            return x
    """), ns)
    wrong = ns["p_sample"]
    assert all(v is None for v in run_checks("sample", ns, raise_on_failure=False).values())
    assert ns["p_sample"] is wrong  # restored afterwards
    assert any(v is not None for v in run_checks("p_sample", ns, raise_on_failure=False).values())


def test_every_exercise_has_checks_and_names_are_unique() -> None:
    load_all_checks()
    assert set(REGISTRY) == set(EXERCISES), set(REGISTRY) ^ set(EXERCISES)
    for exercise, fns in REGISTRY.items():
        assert any(not f.hidden for f in fns), f"{exercise} has no visible check"
        names = [check_name(f) for f in fns]
        assert len(names) == len(set(names)), exercise
        for f in fns:
            assert f.__name__.startswith("test_") and f.__doc__, f"{f.__name__}: pytest must collect it, with a doc"


def _module_imports(path: Path) -> set[str]:
    """Top-level package names a module imports when it is loaded (imports inside functions excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_checks_need_neither_pytest_nor_diffusers() -> None:
    """run_checks loads only the modules that register checks, and those import neither pytest, nor diffusers,
    nor nbformat at load time (a student's environment may lack them)."""
    tests = ROOT / "tests"
    loaded = [p for p in tests.glob("test_*.py") if _REGISTERS.search(p.read_text(encoding="utf-8"))]
    names = {p.name for p in loaded}
    assert names >= {"test_schedule.py", "test_forward.py", "test_unet.py", "test_loss.py", "test_sampling.py",
                     "test_ddim.py", "test_reconstruction.py"}, names
    assert not names & {"test_harness.py", "test_mistakes.py", "test_crosscheck_diffusers.py"}, names
    for path in [*loaded, tests / "_asserts.py", tests / "harness.py"]:
        assert not _module_imports(path) & {"pytest", "diffusers", "nbformat"}, path.name


# ---------------------------------------------------------------------------------------- notebooks


GOOD_Q_SAMPLE = """\
def q_sample(x0, t, noise, schedule):
    return schedule.gather(schedule.sqrt_alpha_bars, t, x0) * x0 + \\
        schedule.gather(schedule.sqrt_one_minus_alpha_bars, t, x0) * noise
"""
WRONG_PREDICT_X0 = """\
def predict_x0(x_t, t, eps, schedule):
    ab = schedule.gather(schedule.alpha_bars, t, x_t)
    return (x_t - (1 - ab).sqrt() * eps) * ab.sqrt()
"""


def _code(source: str, *, tags: list[str] | None = None, nbgrader: dict | None = None) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = tags
    if nbgrader:
        cell.metadata["nbgrader"] = nbgrader
    return cell


def _write(path: Path, cells: list) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _lesson(folder: Path) -> Path:
    (folder / "data.txt").parent.mkdir(parents=True, exist_ok=True)
    (folder / "data.txt").write_text("read from the notebook's folder")
    solution = {"solution": True, "grade": False, "locked": False, "schema_version": 3}
    return _write(folder / "02_forward_diffusion.ipynb", [
        nbformat.v4.new_markdown_cell("# Forward diffusion"),
        _code("%matplotlib inline\nimport math\nimport torch\nfrom ddpm_ref import NoiseSchedule, q_posterior\n"
              "import matplotlib.pyplot as plt\nfrom tests.harness import run_checks", tags=["setup"]),
        _code(GOOD_Q_SAMPLE, nbgrader=solution | {"grade_id": "q_sample"}),
        _code('run_checks("q_sample", globals())',
              nbgrader={"grade": True, "solution": False, "locked": True, "grade_id": "check_q_sample", "points": 1}),
        _code(WRONG_PREDICT_X0, nbgrader=solution | {"grade_id": "predict_x0"}),
        _code('raise RuntimeError("a heavy cell ran")', tags=["heavy"]),
        _code("total = undefined_name + 1\n"),
        _code('DATA = open("data.txt").read()\nplt.plot([0, 1]); plt.show()\n!echo hello'),
        _code("assert False, 'an autograder cell ran'", nbgrader={"grade": True, "solution": False, "points": 1}),
    ])


def test_load_impl_runs_the_right_cells(tmp_path: Path, capsys) -> None:
    impl = load_impl(_lesson(tmp_path / "lesson"))
    assert impl._origin == "notebook 02_forward_diffusion.ipynb"
    assert callable(impl.q_sample) and impl.q_sample is not ddpm_ref.q_sample
    assert impl.DATA == "read from the notebook's folder"  # cwd was the notebook's folder
    with pytest.raises(MissingDefinition):
        impl.q_posterior  # noqa: B018  (imported from ddpm_ref, not defined by the notebook)
    with pytest.raises(MissingDefinition):
        impl.total  # noqa: B018  (its cell raised)
    assert [str(e) for e in impl._errors] == [
        "02_forward_diffusion.ipynb cell 6 raised NameError: name 'undefined_name' is not defined (line 1)"]
    assert impl._why_missing == {"total": str(impl._errors[0])}
    assert "cell 6 raised NameError" in capsys.readouterr().err
    assert all(v is None for v in run_checks("q_sample", impl, raise_on_failure=False).values())
    results = run_checks("predict_x0", impl, raise_on_failure=False)
    assert "the formula is inverted" in results["predict_x0_values"]


def test_load_impl_from_a_folder_keeps_definitions_over_imports(tmp_path: Path) -> None:
    _lesson(tmp_path / "course" / "02")
    _write(tmp_path / "course" / "03" / "later.ipynb", [
        _code("from ddpm_ref import q_sample, predict_x0 as reference_predict_x0"),
        _code("def predict_x0(x_t, t, eps, schedule):\n    return reference_predict_x0(x_t, t, eps, schedule)"),
    ])
    impl = load_impl(tmp_path / "course")
    assert impl._origin.startswith("the notebooks under")
    assert impl.q_sample is not ddpm_ref.q_sample  # the lesson's own definition, not the later import
    results = run_checks("predict_x0", impl, raise_on_failure=False)  # the later definition wraps the reference
    assert all("calls the reference `ddpm_ref.predict_x0`" in (v or "") for v in results.values()), results
    with pytest.raises(FileNotFoundError, match="not a notebook"):
        load_impl(tmp_path / "course" / "02" / "data.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .ipynb notebooks"):
        load_impl(tmp_path / "empty")


def test_pytest_impl_grades_a_notebook(tmp_path: Path, pytester: pytest.Pytester) -> None:
    """``pytest --impl NB``: checks pass or fail on the notebook's code; missing definitions are skipped, named."""
    nb = _lesson(tmp_path / "lesson")
    result = pytester.runpytest_inprocess(str(ROOT / "tests" / "test_forward.py"), "--impl", str(nb), "-rs",
                                          "-p", "no:cacheprovider", "--rootdir", str(ROOT))
    # q_sample: 3 checks pass; predict_x0 (inverted): both fail; q_posterior (imported, not defined): 3 skipped
    result.assert_outcomes(passed=3, failed=2, skipped=3, deselected=1)  # the plain reference test is not a grade
    text = result.stdout.str()
    assert "test_predict_x0_values" in text and "the formula is inverted" in text, text
    assert "notebook 02_forward_diffusion.ipynb does not define `q_posterior`" in text, text


# ------------------------------------------------------------------------------------------------ integrity


def _student(source: str) -> dict:
    import torch

    ns = {"__name__": "__main__", "torch": torch, "ddpm_ref": ddpm_ref}
    exec(compile(textwrap.dedent(source), "<student cell>", "exec"), ns)
    return ns


def test_the_reference_is_a_tripwire_only_while_the_student_calls_it() -> None:
    import functools

    from tests import integrity

    code = ddpm_ref.q_sample.__code__
    results = run_checks("q_sample", _student("""
        def q_sample(x0, t, noise, schedule):
            try:
                return ddpm_ref.q_sample(x0, t, noise, schedule)
            except AssertionError:  # swallowing the refusal does not help
                return x0
    """), raise_on_failure=False)
    assert all("calls the reference `ddpm_ref.q_sample`" in m for m in results.values()), results
    assert ddpm_ref.q_sample.__code__ is code  # put back after the checks
    refs = integrity.reference_objects("q_sample")
    assert integrity.is_reference(functools.partial(ddpm_ref.diffusion.q_sample), refs) == "wraps"
    assert integrity.is_reference(ddpm_ref.q_sample, refs) == "is"
    assert integrity.is_reference(ddpm_ref.predict_x0, refs) is None
    # earlier pieces stay allowed, and the reference itself (pytest's default impl) is checked as usual
    ok = run_checks("sample", _student("""
        def sample(model, schedule, shape, *, generator=None, device=None, return_intermediates=False,
                   progress=True, clip_x0=True, variance="posterior", x_T=None):
            x = torch.randn(shape, generator=generator) if x_T is None else x_T
            for t in reversed(range(schedule.T)):
                x = ddpm_ref.p_sample(model, x, torch.full((shape[0],), t), schedule, generator=generator,
                                      clip_x0=clip_x0, variance=variance)
            return x
    """), raise_on_failure=False)
    assert all(m is None for m in ok.values()), ok
    assert all(m is None for m in run_checks("q_sample", ddpm_ref, raise_on_failure=False).values())


def test_a_replaced_grader_function_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests._asserts
    from tests import integrity

    assert integrity.tampering() == []
    ns = _student("fake = lambda *args, **kwargs: None")
    monkeypatch.setattr(tests._asserts, "expect_close", ns["fake"])
    assert integrity.tampering() == ["tests._asserts.expect_close"]
    results = run_checks("q_sample", {"q_sample": ddpm_ref.q_sample}, raise_on_failure=False)
    assert all("replaced part of the grader" in m for m in results.values()), results


def test_a_failed_check_cell_shows_one_line() -> None:
    from ddpm_ref import course

    with pytest.raises(course.CheckFailed) as info:
        course.run_checks("q_sample", {})
    assert info.value._render_traceback_() == [
        "\x1b[0;31mCheckFailed\x1b[0m: q_sample: 2 check(s) failed: q_sample_values, q_sample_t0_is_almost_x0"]


def test_run_checks_records_what_became_of_each_check() -> None:
    """``findings`` holds one record per check: passed, the named mistake of a failure (the hint as data), a missing
    definition, a crash with its exception type, a refused reference."""
    import math

    import torch

    from tests.mistakes import MISTAKES

    def findings_of(source: str) -> dict[str, dict[str, str]]:
        ns: dict = {"torch": torch, "math": math}
        exec(source, ns)
        found: dict[str, dict[str, str]] = {}
        run_checks("linear_beta_schedule", ns, raise_on_failure=False, findings=found)
        return found

    mistake = next(m for m in MISTAKES if m.name == "linear_schedule_divides_by_T")
    (wrong,) = findings_of(mistake.source).values()
    assert wrong["status"] == "failed" and mistake.feedback in wrong["mistake"], wrong
    right = "def linear_beta_schedule(T, beta_start=1e-4, beta_end=2e-2):\n" \
            "    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)\n"
    assert findings_of(right) == {"linear_beta_schedule_values": {"status": "passed"}}
    assert findings_of("x = 1\n") == {"linear_beta_schedule_values": {"status": "missing"}}
    crash = findings_of("def linear_beta_schedule(T, beta_start=1e-4, beta_end=2e-2):\n    return {}[T]\n")
    assert crash == {"linear_beta_schedule_values": {"status": "crashed", "reason": "KeyError"}}
    cheat = findings_of("from ddpm_ref import linear_beta_schedule\n")
    assert cheat == {"linear_beta_schedule_values": {"status": "cheat", "reason": "reference is"}}


def test_inputs_kept_takes_an_expanded_one_element_tensor() -> None:
    """An int t expanded to a batch of one (stride 0) is compared as any tensor: a call that leaves it alone passes,
    one that writes into its input fails."""
    from types import SimpleNamespace

    import torch

    from tests.harness import Failure, _inputs_kept

    t = torch.tensor(3).expand(1)
    impl = SimpleNamespace(keep=lambda x: x + 1, spoil=lambda x: x.add_(1))
    with _inputs_kept(impl, "keep", impl.keep):
        assert int(impl.keep(t)) == 4
    x = torch.zeros(1)
    with _inputs_kept(impl, "spoil", impl.spoil), pytest.raises(Failure, match="changed its input in place"):
        impl.spoil(x)
    assert float(x) == 0.0
