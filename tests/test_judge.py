"""The judge's parts, one by one: the data-only channel, the withheld reference, the sandbox, one exercise judged.

The end-to-end proofs (every mistake, variant and cheat through real nbgrader, and a class with an attacker)
are in tests/test_course_nbgrader.py and tests/test_grading_isolation.py.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

import ddpm_ref
from tests._course import SOLUTIONS, exercise_lessons
from tests.judge import check_cells, grade_exercise, protocol, sandbox, scratch, withhold
from tests.mistakes import ALTERNATIVES, riding_variants

needs_sandbox = pytest.mark.skipif(sandbox.bwrap() is None, reason="no working bubblewrap on this machine")


# ------------------------------------------------------------------------------------------------ the channel


def test_replies_round_trip_as_data() -> None:
    value = {"t": torch.arange(6, dtype=torch.float64).reshape(2, 3), "n": [1, 2.5, None, True, "s"],
             "tuple": (torch.tensor(True), torch.Size([2, 3]), torch.float16), "inf": float("inf")}
    back = protocol.decode(protocol.encode(value, handle_of=lambda obj: protocol.Handle(1, "x", False)))
    assert torch.equal(back["t"], value["t"]) and back["t"].dtype == torch.float64
    assert back["n"] == value["n"] and back["tuple"][1:] == value["tuple"][1:] and back["inf"] == float("inf")


def test_an_expanded_one_element_tensor_round_trips() -> None:
    """An int t expanded to a batch of one has stride 0: it must cross as data like any other tensor (a correct
    answer that returns one failed before)."""
    for x in (torch.tensor(5).expand(1), torch.tensor(2.5).expand(1, 1), torch.arange(6).reshape(2, 3).t()):
        back = protocol.decode(protocol.encode(x, handle_of=lambda obj: protocol.Handle(1, "x", False)))
        assert torch.equal(back, x) and back.shape == x.shape


def test_objects_that_are_not_data_come_back_as_handles() -> None:
    class Secret:
        pass

    back = protocol.decode(protocol.encode([Secret()], handle_of=lambda obj: protocol.Handle(7, "Secret", False)))
    assert isinstance(back[0], protocol.Handle) and back[0].id == 7


@pytest.mark.parametrize("payload", [
    pickle.dumps({"a": 1}),  # a pickle is never unpickled
    b"\x00\x00\x00\x05\x00\x00\x00\x00{}",  # lengths that run past the end
    struct.pack(">II", 2, 0) + b"{}",  # an empty entry
    struct.pack(">II", 38, 1) + b'{"tensor": 0, "dtype": "float32", "shape": [4]}'[:38] + struct.pack(">Q", 3) + b"abc",
    struct.pack(">II", 20, 0) + b'{"py": "os.system"} ',
])
def test_malformed_replies_are_refused(payload: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(payload)


def test_a_tensor_whose_bytes_do_not_match_its_shape_is_refused() -> None:
    tree = json.dumps({"tensor": 0, "dtype": "float32", "shape": [1000000]}).encode()
    payload = struct.pack(">II", len(tree), 1) + tree + struct.pack(">Q", 8) + bytes(8)
    with pytest.raises(protocol.ProtocolError, match="do not match"):
        protocol.decode(payload)


# ------------------------------------------------------------------------------------------------ withholding


def test_the_withheld_copy_has_no_trace_of_the_exercise(tmp_path: Path) -> None:
    """While `sample` is graded: its reference, its alias and the later exercises are stubs, earlier ones stay."""
    package = Path(ddpm_ref.__file__).resolve().parent
    stubbed = withhold.build("sample", package, tmp_path / "ddpm_ref")
    assert {"sample", "p_sample_loop", "ddim_sample", "reconstruct", "cfg_sample"} <= set(stubbed)
    assert "p_sample" not in stubbed and "q_sample" not in stubbed
    text = (tmp_path / "ddpm_ref" / "samplers.py").read_text()
    assert "def sample(" not in text and "def p_sample_loop(" not in text and "def p_sample(" in text


# ------------------------------------------------------------------------------------------------ the sandbox


def _in_sandbox(code: str, tmp_path: Path, **kw) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    limits = kw.pop("limits", sandbox.DEFAULT_LIMITS)
    cmd = sandbox.command([sys.executable, "-c", code], cwd=Path("/submission"), rw_binds=[(work, Path("/submission"))],
                          limits=limits, **kw)
    cap = sandbox.ProcessCap(limits.processes)
    proc = subprocess.Popen(cap.wrap(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cap.watch(proc.pid)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        cap.close()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@needs_sandbox
def test_the_sandbox_hides_the_course_and_the_network(tmp_path: Path) -> None:
    course = Path(__file__).resolve().parent.parent
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        out = _in_sandbox(f"""
import os, socket
print("course visible:", os.path.exists({str(course / "tests")!r}))
print("home visible:", os.path.exists({os.path.expanduser("~")!r} + "/.bashrc"))
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("network: connected")
except OSError as e:
    print("network: refused", type(e).__name__)
try:
    open({str(Path(sys.prefix) / "sandbox-probe")!r}, "w")
    print("python: writable")
except OSError as e:
    print("python: read-only", e.errno)
open("mine.txt", "w").write("scratch is writable")
print("secret env:", os.environ.get("DDPM_SECRET_PROBE"))
""", tmp_path)
        with pytest.raises(TimeoutError):
            server.accept()  # nothing reached the host's listener
    assert out.returncode == 0, out.stderr
    lines = out.stdout
    assert "course visible: False" in lines and "home visible: False" in lines
    assert "network: refused" in lines and "python: read-only" in lines and "secret env: None" in lines
    assert (tmp_path / "work" / "mine.txt").read_text() == "scratch is writable"


@needs_sandbox
def test_the_sandbox_limits_memory_and_processes(tmp_path: Path) -> None:
    out = _in_sandbox("""
import os, time
try:
    blocks = [bytearray(1 << 26) for _ in range(64)]
    print("memory: all of it")
except MemoryError:
    print("memory: refused")
children = 0
try:
    for _ in range(400):
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        children += 1
    print("fork:", children)
except OSError:
    print("fork: refused after", children)
""", tmp_path, limits=sandbox.Limits(memory_bytes=1 << 30, processes=32))
    assert "memory: refused" in out.stdout, (out.stdout, out.stderr)
    if sandbox.cgroup_available():  # else the watchdog ends the whole sandbox instead
        assert "fork: refused" in out.stdout, out.stdout


def test_grading_refuses_without_a_sandbox_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_BWRAP", [None])
    monkeypatch.delenv(sandbox.UNSANDBOXED_ENV, raising=False)
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap"):
        sandbox.require()
    monkeypatch.setenv(sandbox.UNSANDBOXED_ENV, "1")
    assert sandbox.require() is None


# ------------------------------------------------------------------------------------------------ one exercise


def _lesson(lesson: str) -> nbformat.NotebookNode:
    return nbformat.read(SOLUTIONS / lesson / f"{lesson}.ipynb", as_version=4)


def _with(nb: nbformat.NotebookNode, exercise: str, extra: str) -> nbformat.NotebookNode:
    nb = copy.deepcopy(nb)
    (cell,) = [c for c in nb.cells if (c.metadata.get("nbgrader") or {}).get("grade_id") == exercise]
    cell.source += "\n\n" + extra
    return nb


@needs_sandbox
def test_the_check_cells_name_their_exercise() -> None:
    cells = check_cells(_lesson("02_forward_diffusion"))
    assert [(c.exercise, c.hidden) for c in cells] == [("q_sample", False), ("q_sample", True), ("predict_x0", False),
                                                       ("q_posterior", False), ("q_posterior", True)]


@needs_sandbox
def test_a_solution_passes_and_the_reference_is_out_of_reach() -> None:
    nb = _lesson("02_forward_diffusion")
    ok = grade_exercise(nb, SOLUTIONS / "02_forward_diffusion", "q_sample")
    assert all(v.passed for v in ok.values()), {k: v.text for k, v in ok.items()}
    cheat = _with(nb, "q_sample", "import ddpm_ref\nq_sample = lambda *a: getattr(ddpm_ref, 'q_sample')(*a)")
    refused = grade_exercise(cheat, SOLUTIONS / "02_forward_diffusion", "q_sample", hidden=(False,))[False]
    assert not refused.passed and "calls the reference" in refused.text, refused.text


@needs_sandbox
def test_the_students_process_cannot_touch_the_verdict() -> None:
    """Patching torch's comparisons, then ending the process: the judge compares in its own process."""
    nb = _with(_lesson("02_forward_diffusion"), "predict_x0", (
        "torch.allclose = lambda *a, **k: True\n"
        "def predict_x0(x_t, t, eps, schedule):\n    return x_t\n"))
    verdict = grade_exercise(nb, SOLUTIONS / "02_forward_diffusion", "predict_x0", hidden=(False,))[False]
    assert not verdict.passed and "expected" in verdict.text, verdict.text
    dies = _with(_lesson("02_forward_diffusion"), "predict_x0",
                 "import os\ndef predict_x0(x_t, t, eps, schedule):\n    os._exit(3)\n")
    verdict = grade_exercise(dies, SOLUTIONS / "02_forward_diffusion", "predict_x0", hidden=(False,))[False]
    assert not verdict.passed and "exit code 3" in verdict.text, verdict.text


# ------------------------------------------------------------------------------------------------ correct variants


#: the variants this module grades: those that do not ride in the nbgrader proof's mistake submissions
#: (tests/test_course_nbgrader.py grades those through real nbgrader, the same judge)
JUDGED_HERE = [a for a in ALTERNATIVES if a.name not in riding_variants(exercise_lessons())]


@pytest.mark.slow
@needs_sandbox
@pytest.mark.parametrize("variant", JUDGED_HERE, ids=lambda a: a.name)
def test_a_correct_variant_keeps_full_marks_through_the_judge(variant) -> None:
    """Every correct variant of tests/mistakes.py, written differently from ddpm_ref, passes every check of its
    exercise when the judge grades it (its proxies, copies and withheld reference change no verdict); the ones that
    ride in the nbgrader proof are graded there."""
    lesson = exercise_lessons()[variant.exercise]
    verdicts = grade_exercise(_with(_lesson(lesson), variant.exercise, variant.source), SOLUTIONS / lesson,
                              variant.exercise)
    assert all(v.passed for v in verdicts.values()), {k: v.text for k, v in verdicts.items() if not v.passed}


def test_a_killed_graders_folders_are_reclaimed_by_the_next_grader(tmp_path: Path) -> None:
    """A grader killed mid-run (a Dask worker at the end of a class run) leaves its folders, with a student's copied
    files in them; the next grader's first folder removes them, and keeps those of graders still running."""
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    make = "from tests.judge import scratch; f = scratch.folder('{kind}'); (f / 'a.ipynb').write_text('x'); print(f)"
    live = subprocess.Popen([sys.executable, "-c", make.format(kind="withheld-psnr") + "; input()"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        alive = Path(live.stdout.readline().strip())
        suicide = "; import os; os.kill(os.getpid(), 9)"
        killed = subprocess.run([sys.executable, "-c", make.format(kind="kernel") + suicide], env=env,
                                capture_output=True, text=True)
        assert killed.returncode == -9
        dead = Path(killed.stdout.strip())
        other = tmp_path / "ddpm-notes"  # not a grader's folder
        other.mkdir()
        assert dead.is_dir() and alive.is_dir()
        mine = subprocess.run([sys.executable, "-c", make.format(kind="judge")], env=env, capture_output=True,
                              text=True, check=True)
        assert not dead.exists(), "a killed grader's folder survived the next grader"
        assert (alive / "a.ipynb").is_file(), "a running grader's folder was removed"
        assert other.is_dir() and Path(mine.stdout.strip()).is_dir()
    finally:
        live.communicate("\n", timeout=30)
    assert alive in scratch.sweep(tmp_path) and not alive.exists()  # its process has ended now
