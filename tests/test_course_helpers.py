"""``ddpm_ref.course``: the FAST switch, finding the checks, the notebook check runner and the picture helpers."""

from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import ddpm_ref  # noqa: E402
from ddpm_ref import course  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _close_figures():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-interactive.*")  # plt.show() on Agg
        yield
    plt.close("all")


@pytest.mark.parametrize(("env", "fast"), [
    ({}, False),
    ({"NBGRADER_EXECUTION": "autograde"}, True),
    ({"DDPM_FAST": "1"}, True),
    ({"DDPM_FAST": "0"}, False),
    ({"DDPM_FAST": "false"}, False),
])
def test_fast_follows_the_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fast: bool) -> None:
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.delenv("DDPM_FAST", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        assert importlib.reload(course).FAST is fast
    finally:
        monkeypatch.undo()
        importlib.reload(course)


def test_course_root_is_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert course.course_root() == ROOT  # next to the editable install
    monkeypatch.setattr(course, "__file__", str(tmp_path / "site" / "ddpm_ref" / "course.py"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DDPM_COURSE_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match="DDPM_COURSE_ROOT"):
        course.course_root()
    monkeypatch.setenv("DDPM_COURSE_ROOT", str(ROOT))
    assert course.course_root() == ROOT
    monkeypatch.delenv("DDPM_COURSE_ROOT")
    monkeypatch.chdir(ROOT / "lessons")
    assert course.course_root() == ROOT  # a parent of the working directory


def test_run_checks_prints_and_raises_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert course.run_checks("q_sample", ddpm_ref) is None
    assert "✓ q_sample_values" in capsys.readouterr().out
    with pytest.raises(AssertionError) as info:
        course.run_checks("q_sample", {})
    out = capsys.readouterr().out
    assert "✗ q_sample_values: define `q_sample` first" in out
    assert str(info.value) == "q_sample: 2 check(s) failed: q_sample_values, q_sample_t0_is_almost_x0"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(KeyError, match="no checks registered for exercise 'no_such_exercise'"):
        course.run_checks("no_such_exercise", ddpm_ref)


def _images(n: int, c: int = 1, hw: int = 8) -> torch.Tensor:
    return torch.linspace(-1, 1, n * c * hw * hw).reshape(n, c, hw, hw)


def test_show_images_grid_and_titles() -> None:
    course.show_images(_images(10), nrow=4, title="ten")
    fig = plt.gcf()
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "ten"
    h, w = fig.axes[0].images[0].get_array().shape[:2]
    assert (h, w) == (3 * 8 + 4, 4 * 8 + 5)  # make_grid: 3 rows of 4, 1-pixel padding
    course.show_images(_images(3, c=3), titles=["a", "b", "c"], nrow=2)
    fig = plt.gcf()
    assert [a.get_title() for a in fig.axes if a.images] == ["a", "b", "c"]
    assert fig.axes[0].images[0].get_array().shape == (8, 8, 3)
    with pytest.raises(ValueError, match="one title per image"):
        course.show_images(_images(3), titles=["a"])
    with pytest.raises(ValueError, match=r"expected images \[B, C, H, W\]"):
        course.show_images(torch.zeros(1, 1, 1, 8, 8))


def test_images_map_from_minus_one_one() -> None:
    img = course.to_numpy_image(torch.tensor([[[-1.0, 0.0], [1.0, 3.0]]]))
    assert img.tolist() == [[0.0, 0.5], [1.0, 1.0]]


def test_show_strip_columns_and_titles() -> None:
    course.show_strip({0: _images(1)[0], 100: _images(3), "x0": _images(3)}, title="strip")
    axes = plt.gcf().axes
    assert [a.get_title() for a in axes] == ["t = 0", "t = 100", "x0"]
    assert axes[1].images[0].get_array().shape[0] == 3 * 8 + 4  # a batch is one column


def test_animate_returns_playable_html() -> None:
    html = course.animate({t: _images(2) * (1 - t / 10) for t in range(5)}, nrow=2)
    assert "<script" in html.data and "anim" in html.data.lower()
    assert not plt.get_fignums()  # the figure is closed, not shown a second time


def test_t_slider_static_strip_without_widgets() -> None:
    seen: list[int] = []

    def frame(t: int) -> torch.Tensor:
        seen.append(t)
        return _images(2)

    course.t_slider(frame, 400, use_widgets=False, static_steps=8)
    assert seen == [0, 57, 114, 171, 228, 285, 342, 399]
    assert len(plt.gcf().axes) == 8
    with pytest.raises(ValueError, match="positive int"):
        course.t_slider(frame, 0)


def test_the_students_guide_shows_what_the_alpha_mistake_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """lessons/README.md's example failure is what a q_sample written with α_t instead of ᾱ_t really prints."""
    from tests.mistakes import MISTAKES

    guide = (ROOT / "lessons" / "README.md").read_text(encoding="utf-8")
    block = guide.split("ᾱ_t prints (the values shown are those around the largest difference):\n   ```\n")[1]
    shown = [line.removeprefix("   ") for line in block.split("\n   ```")[0].splitlines()]
    mistake = next(m for m in MISTAKES if m.name == "q_sample_alpha_instead_of_alpha_bar")
    namespace = dict(vars(ddpm_ref))
    exec(mistake.source, namespace)
    with pytest.raises(AssertionError, match="q_sample: 1 check"):
        course.run_checks("q_sample", namespace)
    printed = capsys.readouterr().out.splitlines()

    def timeless(line: str) -> str:
        return re.sub(r"\(\d+\.\d s\)", "(… s)", line)

    assert [timeless(x) for x in printed] == [timeless(x) for x in shown]


def test_a_failed_value_check_previews_the_largest_difference() -> None:
    from tests._asserts import expect_close

    expected = torch.arange(100.0)
    actual = expected.clone()
    actual[57] = -1.0
    with pytest.raises(AssertionError) as info:
        expect_close(actual, expected, "x")
    message = str(info.value)
    assert "expected […, 55, 56, 57, 58, …], got […, 55, 56, -1, 58, …]" in message, message
    assert "largest difference 58 at index [57]" in message
    with pytest.raises(AssertionError, match=r"expected \[0, 1, 2, 3, …\], got \[-1, 1, 2, 3, …\]"):
        expect_close(torch.cat([torch.tensor([-1.0]), expected[1:]]), expected, "x")
    with pytest.raises(AssertionError, match=r"expected \[…, 96, 97, 98, 99\], got \[…, 96, 97, 98, -1\]"):
        expect_close(torch.cat([expected[:-1], torch.tensor([-1.0])]), expected, "x")
    with pytest.raises(AssertionError, match=r"x: expected 2, got 1 \(largest difference 1\)"):
        expect_close(1.0, 2.0, "x")


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch):
    """An IPython shell (what a Jupyter kernel runs) after a lesson's ``setup()``; torch's threads restored after."""
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    threads = torch.get_num_threads()
    ip = InteractiveShell.instance()
    try:
        assert ip.run_cell("import matplotlib.pyplot as plt\nfrom ddpm_ref.course import animate, run_checks, setup\n"
                           "setup()").success
        yield ip
    finally:
        InteractiveShell.clear_instance()
        torch.set_num_threads(threads)


def test_setup_seeds_and_sets_the_cpu_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = torch.get_num_threads()
    try:
        course.setup(3, threads=1)
        assert torch.get_num_threads() == 1
        first = torch.rand(2)
        course.setup(3, threads=1)
        assert torch.equal(torch.rand(2), first)
        monkeypatch.setattr("ddpm_ref.perf.cpu_threads", lambda: 2)
        assert course.setup() is None  # nothing to print (torch.manual_seed returns a Generator)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


STUB = "def p_sample(model, x_t, t, schedule):\n    # YOUR CODE HERE\n    raise NotImplementedError()"


def test_a_cell_that_needs_an_unfinished_exercise_says_so_in_one_line(shell, capsys) -> None:
    assert shell.run_cell(STUB).success
    capsys.readouterr()
    result = shell.run_cell("fig, ax = plt.subplots()\nframes = p_sample(None, None, 0, None)\nax.plot(frames)")
    assert result.success and result.result is None
    assert capsys.readouterr().out == ("finish the exercise `p_sample` first: this cell runs your `p_sample`, "
                                       "which still raises NotImplementedError\n")
    assert not plt.get_fignums()  # nothing drawn
    result = shell.run_cell("animate(frames)")  # a name the skipped cell could not define
    assert result.success and result.result is None
    assert capsys.readouterr().out.startswith("finish the exercise `p_sample` first: this cell uses `frames`")
    assert shell.run_cell("def p_sample(model, x_t, t, schedule):\n    return 2 * x_t").success
    result = shell.run_cell("frames = p_sample(None, 1, 0, None)\nframes + 1")
    assert result.success and result.result == 3  # the last expression is still the cell's value


def test_other_errors_stay_errors(shell) -> None:
    result = shell.run_cell("x = 1\n1 / 0")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    result = shell.run_cell("def helper():\n    raise NotImplementedError('a message')\nhelper()")
    assert isinstance(result.error_in_exec, NotImplementedError)  # not a stub: a stub raises it bare
    result = shell.run_cell("not_defined_anywhere")
    assert isinstance(result.error_in_exec, NameError)
    assert shell.run_cell("from __future__ import annotations\nx: int = 2").success


def test_a_failed_check_lets_run_all_go_on_but_stays_an_error_for_nbgrader(shell, monkeypatch, capsys) -> None:
    shell.run_cell(STUB)
    result = shell.run_cell('run_checks("p_sample", globals())')
    assert result.error_in_exec is None  # Jupyter's Run All goes on to the next cells
    assert "✗ p_sample" in capsys.readouterr().out
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    result = shell.run_cell('run_checks("p_sample", globals())')
    assert isinstance(result.error_in_exec, AssertionError)  # nbgrader scores the cell 0
    monkeypatch.delenv("NBGRADER_EXECUTION")
    result = shell.run_cell("p_sample(None, None, 0, None)\nassert False")  # not a check cell: skipped at the stub
    assert result.success


def test_t_slider_widget_is_wide_and_labelled(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipywidgets

    made = {}
    monkeypatch.setattr(ipywidgets, "interact", lambda f, t: made.update(f=f, slider=t))
    course.t_slider(lambda t: _images(8), 400, use_widgets=True, nrow=4, labels=[f"x{i}" for i in range(8)])
    slider = made["slider"]
    assert (slider.min, slider.max, slider.layout.width) == (0, 399, "600px")
    made["f"](100)
    fig = plt.gcf()
    assert fig._suptitle.get_text() == "t = 100"
    assert [a.get_title() for a in fig.axes if a.images] == [f"x{i}" for i in range(8)]
    assert fig.get_size_inches()[0] >= 4 * 1.8


def test_t_slider_raises_in_the_cell_not_inside_the_widget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slider whose pictures need an unfinished exercise fails in the cell (one line), before any widget shows."""
    import ipywidgets

    made = {}
    monkeypatch.setattr(ipywidgets, "interact", lambda f, t: made.update(f=f))
    with pytest.raises(NameError):
        course.t_slider(lambda t: frames_never_made[t], 10, use_widgets=True)  # noqa: F821
    assert not made, "the widget was built although its first picture fails"
