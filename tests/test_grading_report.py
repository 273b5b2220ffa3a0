"""The class report and the similarity flag, on small synthetic autograded notebooks (no nbgrader run, no kernel).

Six students of lesson 05 are planted with known findings; every count of the report is checked against the plan by
hand. The similarity flag is checked on tests/mistakes.py: the reference pasted with its names changed is flagged,
the correct variants written independently are not, a one-line answer never is, and neither is the code a lesson
hands out around an exercise.
"""

from __future__ import annotations

import ast
import base64
import csv
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat import v4

from ddpm_ref.grading import similarity
from ddpm_ref.grading.records import FINDINGS_MIME
from ddpm_ref.grading.report import SECTIONS, class_report, main_report, write_report
from ddpm_ref.grading.similarity import MIN_TOKENS, flags, normalized, reference_sources
from tests._course import ROOT
from tests.mistakes import ALTERNATIVES, MISTAKES

LESSON = "05_sampling"
XSS = "<script>alert(1)"  # a folder name: no slash
M1 = "you added noise at t = 0: the last step returns the mean"
M2 = ("clips x̂0 <b>twice</b>, once before and once after the posterior mean, so that the mean is computed from a "
      "value that no longer matches ε̂ and the chain drifts towards the edges of [−1, 1] over the last steps")

P, S, MISS, TIME = {"status": "passed"}, {"status": "skipped"}, {"status": "missing"}, {"status": "timeout"}
CRASH = {"status": "crashed", "reason": "RuntimeError"}


def failed(mistake: str = "") -> dict[str, str]:
    return {"status": "failed", "mistake": mistake}


def cheat(reason: str) -> dict[str, str]:
    return {"status": "cheat", "reason": reason}


#: student → the findings of the four check cells: p_sample, p_sample hidden, sample, sample hidden
PLAN: dict[str, tuple[dict[str, dict[str, str]], ...]] = {
    "alice": ({"p_sample_shapes": P, "p_sample_values": P}, {"p_sample_noise_at_t0": P},
              {"sample_shapes": P, "sample_direction": P}, {"sample_steps": P}),
    "bob": ({"p_sample_shapes": P, "p_sample_values": failed(M1)}, {"p_sample_noise_at_t0": failed(M1)},
            {"sample_shapes": P, "sample_direction": failed()}, {"sample_steps": S}),
    "carol": ({"p_sample_shapes": MISS, "p_sample_values": MISS}, {"p_sample_noise_at_t0": MISS},
              {"sample_shapes": CRASH, "sample_direction": TIME}, {"sample_steps": CRASH}),
    "dave": ({"p_sample_shapes": P, "p_sample_values": cheat("grader replaced")}, {"p_sample_noise_at_t0": P},
             {"sample_shapes": cheat("reference is"), "sample_direction": cheat("reference is")},
             {"sample_steps": cheat("reference is")}),
    "eve": ({"p_sample_shapes": P, "p_sample_values": failed(M1)}, {"p_sample_noise_at_t0": failed(M2)},
            {"sample_shapes": P, "sample_direction": failed()}, {"sample_steps": failed()}),
    XSS: ({"p_sample_shapes": cheat("reference calls"), "p_sample_values": cheat("reference calls")},
          {"p_sample_noise_at_t0": cheat("reference calls")}, {"sample_shapes": P, "sample_direction": P},
          {"sample_steps": P}),
}
#: the check cells: (exercise, hidden, points)
CELLS = (("p_sample", False, 2), ("p_sample", True, 1), ("sample", False, 2), ("sample", True, 1))
#: by hand from PLAN: a cell scores its points unless one of its checks neither passed nor was skipped
SCORES = {"alice": 6.0, "bob": 1.0, "carol": 0.0, "dave": 1.0, "eve": 0.0, XSS: 3.0}

_STUB = "def {name}(*args, **kwargs):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
#: everyone's sample: the same short answer, never flagged
_SAMPLE = "def sample(model, schedule, shape, **kwargs):\n    return p_sample_loop(model, schedule, shape, **kwargs)\n"


# ------------------------------------------------------------------------------------------------ a pasted copy


def _independent(a: ast.stmt, b: ast.stmt) -> bool:
    """Two assignments of one plain target each, neither touching the other's target."""
    def target(s: ast.stmt) -> str | None:
        one = isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], (ast.Name, ast.Attribute))
        return ast.unparse(s.targets[0]) if one else None

    def used(s: ast.stmt) -> set[str]:
        return {ast.unparse(n) for n in ast.walk(s) if isinstance(n, (ast.Name, ast.Attribute))}

    ta, tb = target(a), target(b)
    return ta is not None and tb is not None and ta not in used(b) and tb not in used(a)


def _swap_first_independent_pair(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        for i in range(len(body) - 1 if isinstance(body, list) else 0):
            if _independent(body[i], body[i + 1]):
                body[i], body[i + 1] = body[i + 1], body[i]
                return


class _NoHints(ast.NodeTransformer):
    """Drops docstrings and type hints (``x: T = v`` becomes ``x = v``)."""

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        return ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno)

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.returns = None
        node.body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        return self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.body = node.body[1:] if ast.get_docstring(node) is not None else node.body
        return self.generic_visit(node)


def _commute_first_product(tree: ast.AST) -> None:
    product = next(n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult))
    product.left, product.right = product.right, product.left


def pasted(source: str, name: str) -> str:
    """``source`` as a student pastes it: every argument and variable renamed, docstrings, comments and type hints
    gone, reformatted, one product's operands swapped and (where it has them) two independent assignments swapped."""
    tree = _NoHints().visit(ast.parse(source))
    bound = {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    bound |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    new = {old: f"v{i}_{old[:1]}" for i, old in enumerate(sorted(bound - {name}))}
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            node.arg = new[node.arg]
        elif isinstance(node, ast.Name) and node.id in new:
            node.id = new[node.id]
    if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult) for n in ast.walk(tree)):
        _commute_first_product(tree)
    _swap_first_independent_pair(tree)
    return ast.unparse(tree)


def _exercises_with_entries() -> list[str]:
    return sorted({e.exercise for e in [*MISTAKES, *ALTERNATIVES]})


# ------------------------------------------------------------------------------------------------ a synthetic course


def _check_cell(exercise: str, hidden: bool, points: int, checks: dict[str, dict[str, str]]) -> nbformat.NotebookNode:
    grade_id = f"check_{exercise}" + ("_hidden" if hidden else "")
    cell = v4.new_code_cell(f'run_checks("{exercise}", globals(), hidden={hidden})')
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True, "grade_id": grade_id,
                                 "points": points, "schema_version": 3}
    record = {"exercise": exercise, "hidden": hidden, "checks": checks}
    outputs = [v4.new_output("display_data", data={FINDINGS_MIME: record, "text/plain": "findings"})]
    if any(f["status"] not in ("passed", "skipped") for f in checks.values()):
        outputs.insert(0, v4.new_output("error", ename="CheckFailed", evalue="a check failed", traceback=[]))
    cell.outputs = outputs
    return cell


def _answer_cell(exercise: str, source: str) -> nbformat.NotebookNode:
    cell = v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade": False, "solution": True, "locked": False, "grade_id": exercise,
                                 "schema_version": 3}
    return cell


def _answers(student: str, refs: dict[str, str]) -> dict[str, str]:
    """alice and XSS paste the reference's p_sample, the others leave it as the stub; sample is a one-liner."""
    copy = pasted(refs["p_sample"], "p_sample")
    return {"p_sample": copy if student in ("alice", XSS) else _STUB.format(name="p_sample"), "sample": _SAMPLE}


def _write_notebook(root: Path, student: str, lesson: str, cells: list[nbformat.NotebookNode]) -> None:
    folder = root / "autograded" / student / lesson
    folder.mkdir(parents=True)
    nbformat.write(v4.new_notebook(cells=[v4.new_markdown_cell(f"# {lesson}"), *cells]), folder / f"{lesson}.ipynb")


def _write_course(root: Path) -> Path:
    refs = reference_sources(["p_sample"])
    for student, findings in PLAN.items():
        answers = _answers(student, refs)
        cells = []
        for (exercise, hidden, points), checks in zip(CELLS, findings, strict=True):
            cells += [] if hidden else [_answer_cell(exercise, answers[exercise])]
            cells.append(_check_cell(exercise, hidden, points, checks))
        _write_notebook(root, student, LESSON, cells)
    return root


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_course(tmp_path_factory.mktemp("course"))


@pytest.fixture(scope="module")
def report(course: Path):
    return class_report(course, LESSON)


# ------------------------------------------------------------------------------------------------ the counts


def test_students_scores_and_exercises(report) -> None:
    assert report.students == sorted(PLAN)
    assert {s: score for s, (score, _) in report.scores.items()} == SCORES
    assert {m for _, m in report.scores.values()} == {6.0}
    assert report.mean_score == pytest.approx((11 / 6, 6.0))
    assert report.exercises == ["p_sample", "sample"]


def test_passes_per_check(report) -> None:
    passed = {(ex, check, hidden): (sum(who.values()), len(who)) for (ex, check, hidden), who in report.checks.items()}
    assert passed == {
        ("p_sample", "p_sample_shapes", False): (4, 6), ("p_sample", "p_sample_values", False): (1, 6),
        ("p_sample", "p_sample_noise_at_t0", True): (2, 6), ("sample", "sample_shapes", False): (4, 6),
        ("sample", "sample_direction", False): (2, 6), ("sample", "sample_steps", True): (3, 6),  # skipped passes
    }


def test_mistakes_once_per_student_and_other_failures(report) -> None:
    assert dict(report.mistakes) == {("p_sample", M1): {"bob", "eve"}, ("p_sample", M2): {"eve"}}
    assert {k: v for k, v in report.unnamed.items() if v} == {"sample": {"bob", "eve"}}
    assert {k: v for k, v in report.missing.items() if v} == {"p_sample": {"carol"}}
    assert dict(report.crashed) == {("sample", "RuntimeError"): {"carol"}}
    assert {k: v for k, v in report.timeout.items() if v} == {"sample": {"carol"}}


def test_cheats_by_reason(report) -> None:
    assert dict(report.cheats) == {"grader replaced": {"dave"}, "reference is": {"dave"}, "reference calls": {XSS}}
    assert report.cheaters == sorted(["dave", XSS])


def test_similarity_flags_in_the_report(report) -> None:
    found = {(f.student, f.exercise, f.other) for f in report.flags}
    assert found == {("alice", "p_sample", "reference"), (XSS, "p_sample", "reference"), (XSS, "p_sample", "alice")}


def test_csv_rows(report, tmp_path: Path) -> None:
    paths = write_report(report, tmp_path)
    with open(paths["csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["section", "exercise", "item", "students", "of"]
    table = {(r["section"], r["exercise"], r["item"]): (int(r["students"]), int(r["of"])) for r in rows}
    assert table[("check", "p_sample", "p_sample_noise_at_t0 (hidden)")] == (2, 6)
    assert table[("check", "sample", "sample_direction")] == (2, 6)
    assert table[("mistake", "p_sample", M1)] == (2, 6)
    assert table[("mistake", "p_sample", M2)] == (1, 6)
    assert table[("unnamed", "sample", "(failed, no mistake named)")] == (2, 6)
    assert table[("missing", "p_sample", "(not attempted)")] == (1, 6)
    assert table[("crashed", "sample", "RuntimeError")] == (1, 6)
    assert table[("timeout", "sample", "(timed out)")] == (1, 6)
    assert table[("cheat", "", "reference calls")] == (1, 6)
    assert table[("cheat", "", "(any reason)")] == (2, 6)
    assert {r["section"] for r in rows} == set(SECTIONS)
    assert sum(r["section"] == "similarity" for r in rows) == 3


def test_html_page(report, tmp_path: Path) -> None:
    paths = write_report(report, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv", "report.html"]  # no temporary file left
    page = paths["html"].read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == len(report.exercises) == 2
    png = page.split('<img src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(png).startswith(b"\x89PNG")
    assert "<script" not in page and "&lt;script&gt;alert(1)" in page
    assert "<b>twice" not in page and "&lt;b&gt;twice" in page
    assert "6 submissions" in page and "mean score 1.83 of 6.00" in page
    assert "never a score" in page and 'href="report.csv"' in page
    assert "http://" not in page and "https://" not in page


def test_main_report(course: Path, tmp_path: Path) -> None:
    page = main_report(course, LESSON, None)
    assert page == course / "reports" / LESSON / "report.html" and page.is_file()
    with pytest.raises(ValueError, match=r"no autograded submissions of 01_noise_schedule in .*grade them first"):
        main_report(tmp_path, "01_noise_schedule", None)


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")  # raised inside nbgrader's add_submission
def test_scores_from_the_gradebook(tmp_path: Path) -> None:
    from nbgrader.api import Gradebook

    course = _write_course(tmp_path)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        gb.add_assignment(LESSON)
        gb.add_notebook(LESSON, LESSON)
        gb.add_grade_cell("check_p_sample", LESSON, LESSON, max_score=4, cell_type="code")
        gb.add_student("bob")
        gb.add_submission(LESSON, "bob")
        gb.find_grade("check_p_sample", LESSON, LESSON, "bob").manual_score = 2.5
        gb.db.commit()
    scores = class_report(course, LESSON).scores
    assert scores["bob"] == (2.5, 4.0)  # the gradebook's
    assert scores["alice"] == (6.0, 6.0)  # not in the gradebook: the notebook's


def test_a_check_passes_only_if_every_record_of_it_passes(tmp_path: Path) -> None:
    folder = tmp_path / "autograded" / "bob" / LESSON
    folder.mkdir(parents=True)
    for name, finding in (("a", P), ("b", failed(M1))):
        cells = [_check_cell("p_sample", False, 1, {"p_sample_values": finding})]
        nbformat.write(v4.new_notebook(cells=cells), folder / f"{name}.ipynb")
    report = class_report(tmp_path, LESSON)
    assert report.checks == {("p_sample", "p_sample_values", False): {"bob": False}}
    assert report.scores == {"bob": (1.0, 2.0)}  # both notebooks count


# ------------------------------------------------------------------------------------------------ similarity


def test_normalized_ignores_names_comments_docstrings_and_hints() -> None:
    a = normalized('def f(x: int) -> int:\n    """Doc."""\n    y = torch.sin(x)  # note\n    return y * 2\n', "f")
    b = normalized("def g(a):\n    b = torch.sin(a)\n    return 2 * b\n", "g")
    assert a == b
    assert "torch" in a and "sin" in a and "x" not in a and "y" not in a
    assert normalized("def f(x):\n    return x +\n") is None
    two = "def helper(x):\n    return x\n\n\ndef f(x):\n    return helper(x)\n"
    assert "helper" in normalized(two, "f") and normalized(two, "f") != normalized(two)
    stub_then_answer = "def f(x):\n    raise NotImplementedError()\n\n\ndef f(x):\n    return torch.cos(x)\n"
    assert "cos" in normalized(stub_then_answer, "f")  # the definition that counts is the last
    assert "NotImplementedError" not in normalized(stub_then_answer, "f")


def test_pasted_reference_is_flagged() -> None:
    refs = reference_sources(_exercises_with_entries())
    long = [x for x in refs if len(normalized(refs[x], x)) >= MIN_TOKENS]
    assert len(long) >= 15
    for exercise in long:
        copy = pasted(refs[exercise], exercise)
        assert copy != refs[exercise]
        assert [(f.student, f.other) for f in flags({"s": {exercise: copy}}, refs)] == [("s", "reference")], exercise


def test_alternatives_are_not_flagged() -> None:
    refs = reference_sources(_exercises_with_entries())
    for alt in ALTERNATIVES:
        assert flags({alt.name: {alt.exercise: alt.source}}, refs) == [], alt.name


def test_two_students_with_one_pasted_copy_are_a_pair() -> None:
    refs = reference_sources(["ddim_step"])
    copy = pasted(refs["ddim_step"], "ddim_step")
    found = flags({"zoe": {"ddim_step": copy}, "adam": {"ddim_step": copy}}, {})
    assert [(f.student, f.exercise, f.other, f.similarity) for f in found] == [("adam", "ddim_step", "zoe", 1.0)]


def test_code_as_handed_out_is_not_compared(tmp_path: Path) -> None:
    """Lesson 1's NoiseSchedule comes with most of the class given: two students who left it as released share
    hundreds of tokens, which count only when the course has no source notebooks to tell what was given."""
    lesson = "01_noise_schedule"
    release = nbformat.read(ROOT / "lessons" / lesson / f"{lesson}.ipynb", as_version=4)
    (stub,) = [c.source for c in release.cells if c.get("metadata", {}).get("nbgrader", {}).get("solution")
               and c.metadata.nbgrader.get("grade_id") == "NoiseSchedule"]
    copy = pasted(reference_sources(["NoiseSchedule"])["NoiseSchedule"], "NoiseSchedule")
    for student, answer in (("ann", stub), ("ben", stub), ("pam", copy)):
        checks = {"NoiseSchedule_tables": MISS if answer is stub else P}
        _write_notebook(tmp_path, student, lesson, [_answer_cell("NoiseSchedule", answer),
                                                    _check_cell("NoiseSchedule", False, 2, checks)])
    flagged = {(f.student, f.other) for f in class_report(tmp_path, lesson).flags}
    assert flagged == {("ann", "ben"), ("pam", "reference")}
    shutil.copytree(ROOT / "solutions" / lesson, tmp_path / "solutions" / lesson)
    assert [(f.student, f.other) for f in class_report(tmp_path, lesson).flags] == [("pam", "reference")]


def test_a_one_liner_is_never_flagged() -> None:
    one = ("def linear_beta_schedule(T, beta_start=1e-4, beta_end=2e-2):\n"
           "    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)\n")
    tokens = normalized(one, "linear_beta_schedule")
    assert similarity.similarity(tokens, tokens) == 1.0 and len(tokens) < MIN_TOKENS
    code = {"a": {"linear_beta_schedule": one}, "b": {"linear_beta_schedule": one}}
    assert flags(code, {"linear_beta_schedule": one}) == []
