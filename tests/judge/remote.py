"""The judge's side: a sandboxed process holding one submission's code, and proxies that make it look local.

:class:`StudentProcess` starts ``runtime.py`` in the sandbox with a copy of ``ddpm_ref`` that lacks the graded
exercise (:mod:`tests.judge.withhold`), loads the notebook's cells there and answers for the student's objects.
:class:`RemoteObject` is how a check sees one of them: calling it sends the arguments (a copy) and copies back
what the call did to them (:func:`apply_state`), so a probe model records its calls and an optimizer steps as if
the student's function had run here. Every comparison stays in this process, which never ran the student's code.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import io
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import torch
from torch import nn

from tests import integrity
from tests.harness import EXERCISES
from tests.judge import protocol, sandbox, scratch, withhold

HERE = Path(__file__).resolve().parent
#: where the submission's folder, the runtime and the withheld ddpm_ref copy appear inside the sandbox
WORK, GRADER = Path("/submission"), Path("/grader")
#: a second place for ddpm_ref inside the sandbox, first on PYTHONPATH (whatever finder the installation uses)
LIB = Path("/course-lib")
#: exception types kept by name when they come back (the rest arrive as RuntimeError naming the original)
_KEPT = {"NotImplementedError", "TypeError", "ValueError", "RuntimeError", "IndexError", "KeyError", "AttributeError",
         "ZeroDivisionError", "AssertionError", "NameError", "MemoryError", "OverflowError", "ArithmeticError",
         "LookupError", "UnboundLocalError", "RecursionError", "ImportError", "ModuleNotFoundError"}


class StudentProcessError(AssertionError):
    """The student's process died, hung or broke the protocol: the check it was serving fails (``finding``: the
    record the class report counts, status crashed or timeout)."""

    def __init__(self, message: str, status: str = "crashed") -> None:
        super().__init__(message)
        self.finding = {"status": status, "reason": "the notebook's process"}


class RemoteError(Exception):
    """Marks an exception that was raised by the student's code in the sandbox (``remote_where``: its place)."""

    remote_where = ""


def _error_type(name: str) -> type[BaseException]:
    """``name`` (one of :data:`_KEPT`) as an exception type that is also a :class:`RemoteError`."""
    return type(name, (getattr(builtins, name), RemoteError), {"__module__": "builtins"})


def _test_modules() -> list[Any]:
    return [m for name, m in list(sys.modules.items()) if name == "tests" or name.startswith("tests.")]


class _Pickler(cloudpickle.Pickler):
    """Pickles the checks' objects by value and the student's objects (proxies) as their handle number."""

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, RemoteObject):
            return ("handle", obj._hid)
        return None


def _dumps(value: Any) -> bytes:
    for module in _test_modules():  # the checks' probe classes travel by value: the sandbox has no tests/
        with contextlib.suppress(ValueError):
            cloudpickle.register_pickle_by_value(module)
    buf = io.BytesIO()
    _Pickler(buf, protocol=5).dump(value)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ write-back


def mutable_objects(value: Any) -> list[Any]:
    """The judge's objects a call may change, in the order the student's side lists their copies."""
    return protocol.mutable_objects(value, lambda x: isinstance(x, RemoteObject))


def _grads(obj: Any) -> Any:
    """The gradients an object carries (pickling drops them; a missing ``zero_grad`` must still show)."""
    if isinstance(obj, torch.Tensor):
        return obj.grad
    if isinstance(obj, nn.Module):
        return {name: p.grad for name, p in obj.named_parameters() if p.grad is not None}
    return None


def _assign(target: torch.Tensor, value: Any) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected a tensor, got {type(value).__name__}")
    with torch.no_grad():
        if target.shape == value.shape and target.dtype == value.dtype:
            target.copy_(value)
        else:
            target.data = value


def apply_state(obj: Any, state: Any) -> None:
    """Copy what the student's call did to the copy of ``obj`` back onto ``obj`` (see ``runtime.Runtime.state``)."""
    if state is None:
        return
    if isinstance(obj, torch.Tensor):
        _assign(obj, state)
    elif isinstance(obj, torch.Generator):
        obj.set_state(state)
    elif isinstance(obj, nn.Module):
        params = dict(obj.named_parameters())
        for name, value in state["params"].items():
            _assign(params[name], value)
        for name, grad in state["grads"].items():
            params[name].grad = grad
        buffers = dict(obj.named_buffers())
        for name, value in state["buffers"].items():
            if name in buffers:
                _assign(buffers[name], value)
        for path, attrs in state["attrs"].items():
            module = obj.get_submodule(path) if path else obj
            for key, value in attrs.items():
                object.__setattr__(module, key, value) if key == "training" else setattr(module, key, value)
    elif isinstance(obj, torch.optim.Optimizer):
        obj.load_state_dict(state)
    else:
        for key, value in state["attrs"][""].items():
            setattr(obj, key, value)


def apply_states(objects: list[Any], states: Any) -> None:
    if type(states) is not list or len(states) != len(objects):
        raise StudentProcessError("the grading process sent back a state that does not match the call's arguments")
    for obj, state in zip(objects, states, strict=True):
        try:
            apply_state(obj, state)
        except Exception as e:
            raise AssertionError(f"your code changed the check's {type(obj).__name__} in a way that cannot be "
                                 f"copied back ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------------ the process


class StudentProcess:
    """One sandboxed ``runtime.py`` with one notebook's cells loaded and ``exercise``'s reference withheld."""

    def __init__(self, exercise: str, cells: list[tuple[str, str, tuple[str, ...]]], folder: Path | None, *,
                 load_budget: float = 60.0, limits: sandbox.Limits = sandbox.DEFAULT_LIMITS) -> None:
        import ddpm_ref

        self.exercise = exercise
        self.load_deadline = time.monotonic() + load_budget  # for running the notebook's cells
        self.deadline = float("inf")  # for answering the checks: set when the exercise's grading begins
        self.tmp = scratch.folder("judge")
        package = Path(ddpm_ref.__file__).resolve().parent
        work = self.tmp / "work"
        if folder is not None:
            shutil.copytree(folder, work, ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints",
                                                                        "__pycache__"))
        work.mkdir(exist_ok=True)
        to_child, self._wfd = os.pipe()
        self._rfd, from_child = os.pipe()
        cmd = sandbox.command(
            [sys.executable, "-u", str(GRADER / "runtime.py"), str(to_child), str(from_child)],
            cwd=WORK, binds=[(withhold.cached(exercise), package), (withhold.cached(exercise), LIB / "ddpm_ref"),
                   *[(HERE / name, GRADER / name) for name in ("protocol.py", "runtime.py")]],
            rw_binds=[(work, WORK)], limits=limits,
            env={"DDPM_FAST": "1", "NBGRADER_EXECUTION": "autograde", "DDPM_JUDGE_THREADS": "1",
                 "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{LIB}:{GRADER}"})
        self.cap = sandbox.ProcessCap(limits.processes)
        self.proc = subprocess.Popen(self.cap.wrap(cmd), pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.cap.watch(self.proc.pid)
        os.close(to_child)
        os.close(from_child)
        self.dead: str | None = None
        self.dead_status = "crashed"  # or "timeout": how the process ended, for the class report
        self.calls: dict[int, list[Any]] = {}
        self._loading = True  # the cells load while the judge does other work; the first request waits for them
        self._loading_reply = False
        self.loaded = False  # the notebook's cells ran (a process that dies later may be started again)
        self._send("load", {"cells": cells, "cwd": str(WORK), "others": [x for x in EXERCISES if x != exercise]})
        self._load_errors: dict[str, str] = {}

    @property
    def load_errors(self) -> dict[str, str]:
        """{name: why the cell that should define it failed} (waits for the cells to have run)."""
        self._finish_loading()
        return self._load_errors

    def _finish_loading(self) -> None:
        if self._loading:
            self._loading, self._loading_reply = False, True
            try:
                errors = self._receive(attempts=False).get("errors")
            finally:
                self._loading_reply = False
            self.loaded = True  # a lesson cell may show the reference at work
            self._load_errors = {str(k): str(v) for k, v in errors.items()} if type(errors) is dict else {}

    # -------------------------------------------------------------------------------------------- transport

    def _fail(self, why: str, status: str = "crashed") -> StudentProcessError:
        self.close()
        self.dead, self.dead_status = why, status
        return StudentProcessError(why, status)

    def _read(self) -> bytes:
        loading = self._loading_reply
        left = min(self.load_deadline if loading else float("inf"), self.deadline) - time.monotonic()
        why = (f"the notebook's cells took longer than their time to load for `{self.exercise}`: is there an "
               "endless loop in a cell?" if loading else
               f"your `{self.exercise}` used up its grading time: is there an endless loop?")
        ready, _, _ = select.select([self._rfd], [], [], max(0.0, left))  # a reply already there still counts
        if not ready:
            raise self._fail(why, "timeout")
        return protocol.read_frame(self._rfd)

    def request(self, op: str, *args: Any) -> Any:
        self._finish_loading()
        self._send(op, *args)
        return self._receive()

    def _send(self, op: str, *args: Any) -> None:
        if self.dead is not None:
            raise StudentProcessError(self.dead, self.dead_status)
        try:
            protocol.write_frame(self._wfd, _dumps((op, *args)))
        except OSError:
            raise self._fail(self._death()) from None

    def _receive(self, attempts: bool = True) -> Any:
        if self.dead is not None:
            raise StudentProcessError(self.dead, self.dead_status)
        try:
            reply = protocol.decode(self._read())
        except StudentProcessError:
            raise
        except (EOFError, OSError):
            raise self._fail(self._death()) from None
        except protocol.ProtocolError as e:
            raise self._fail(f"the grading process of your `{self.exercise}` sent a malformed reply ({e})") from None
        except BaseException:  # a check's time limit (SIGALRM) mid-request: this process's state is unknown
            self._fail(f"your `{self.exercise}` was stopped at a check's time limit", "timeout")
            raise
        if type(reply) is not dict:
            raise self._fail(f"the grading process of your `{self.exercise}` sent a malformed reply")
        tried = reply.get("withheld") if attempts else None
        if type(tried) is list and set(map(str, tried)) & {self.exercise, *withhold.ROUTES.get(self.exercise, ())}:
            raise integrity.reference_used(self.exercise, "calls")
        if "err" in reply:
            raise self._error(reply["err"])
        return reply

    def _death(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        code = self.proc.returncode
        if self.cap.tripped:
            return f"your code started more than {self.cap.limit} processes or threads, so its sandbox was stopped"
        if code is not None and code < 0:
            name = {9: "SIGKILL (out of memory or killed)", 24: "SIGXCPU: out of CPU time",
                    25: "SIGXFSZ: a file grew past the limit"}.get(-code, f"signal {-code}")
            return f"the process running your `{self.exercise}` was stopped by {name}"
        return f"the process running your `{self.exercise}` ended (exit code {code}): does your code call exit()?"

    def _error(self, err: Any) -> BaseException:
        if type(err) is not dict:
            return self._fail("the grading process sent a malformed error")
        name, msg = str(err.get("name", "RuntimeError"))[:80], str(err.get("msg", ""))[:4000]
        withheld = err.get("withheld")
        if withheld is not None and withheld in {self.exercise, *withhold.ROUTES.get(self.exercise, ())}:
            how = "subclasses" if err.get("how") == "subclasses" else "calls"
            return integrity.reference_used(self.exercise, how)
        kind = str(err.get("type", "RuntimeError"))
        text = msg if name == kind and kind in _KEPT else f"{name}: {msg}"
        e = _error_type(kind if kind in _KEPT else "RuntimeError")(text)
        e.remote_where = str(err.get("where", ""))[:200]
        return e

    def close(self) -> None:
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        if getattr(self, "cap", None) is not None:
            self.cap.close()
        for fd in ("_wfd", "_rfd"):
            with contextlib.suppress(OSError, AttributeError):
                os.close(getattr(self, fd))
                setattr(self, fd, -1)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -------------------------------------------------------------------------------------------- values

    def wrap(self, value: Any, call: int | None = None) -> Any:
        """A reply's value with handles turned into proxies and gradient references into a remote backward()."""
        if isinstance(value, protocol.Handle):
            return RemoteObject(self, value)
        if isinstance(value, torch.Tensor):
            ref = getattr(value, "judge_ref", None)
            if ref is not None:
                value.backward = functools.partial(self.backward, ref, call)
            return value
        if isinstance(value, list):
            return [self.wrap(v, call) for v in value]
        if isinstance(value, tuple):
            return tuple(self.wrap(v, call) for v in value)
        if isinstance(value, dict):
            return {k: self.wrap(v, call) for k, v in value.items()}
        return value

    def invoke(self, op: str, target: Any, args: tuple, kwargs: dict) -> Any:
        """Call ``target`` (a handle, or a function sent by value) on a copy of the arguments; the call sees and
        leaves torch's global random state as if it had run here."""
        originals = mutable_objects((args, kwargs))
        reply = self.request(op, target, args, kwargs, torch.get_rng_state(), [_grads(o) for o in originals])
        apply_states(originals, reply.get("wb"))
        rng = reply.get("rng")
        if isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.shape == torch.get_rng_state().shape:
            torch.set_rng_state(rng)
        call = reply.get("call")
        if type(call) is int:
            self.calls[call] = originals
        return self.wrap(reply.get("ok"), call)

    def backward(self, ref: int, call: int | None, gradient: Any = None, *args: Any, **kwargs: Any) -> None:
        """``loss.backward()`` on a result that carries a graph: runs in the student's process, then the gradients
        of the modules that the call which made the result received are copied back here."""
        reply = self.request("backward", ref, call, gradient)
        if call in self.calls:
            apply_states(self.calls[call], reply.get("wb"))

    def apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` (a check's helper, sent by value) on the student's side, on the student's objects."""
        args = tuple(a._resolve() if hasattr(type(a), "_resolve") else a for a in args)
        return self.invoke("apply", fn, args, kwargs)


def owner(*values: Any) -> StudentProcess | None:
    """The student's process holding one of ``values`` (a proxy, or the checks' ``impl.<exercise>``), if any."""
    for value in values:
        if hasattr(type(value), "_resolve"):
            value = value._resolve()
        if isinstance(value, RemoteObject):
            return value._proc
    return None


class RemoteObject:
    """A check's view of one of the student's objects: calls, attributes and iteration go to the student's side."""

    __slots__ = ("_proc", "_hid", "_type", "_callable")

    def __init__(self, proc: StudentProcess, handle: protocol.Handle) -> None:
        object.__setattr__(self, "_proc", proc)
        object.__setattr__(self, "_hid", handle.id)
        object.__setattr__(self, "_type", handle.type)
        object.__setattr__(self, "_callable", handle.callable)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._proc.invoke("call", self._hid, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._proc.wrap(self._proc.request("getattr", self._hid, name)["ok"])

    def __setattr__(self, name: str, value: Any) -> None:
        self._proc.request("setattr", self._hid, name, value)

    def __iter__(self) -> Any:
        it = self._proc.wrap(self._proc.request("iter", self._hid)["ok"])
        while True:
            reply = self._proc.request("next", it._hid)
            if not reply.get("more"):
                return
            yield self._proc.wrap(reply.get("ok"))

    def __len__(self) -> int:
        n = self._proc.request("len", self._hid)["ok"]
        if type(n) is not int:
            raise TypeError("len() of the student's object is not an int")
        return n

    def __getitem__(self, key: Any) -> Any:
        return self._proc.wrap(self._proc.request("getitem", self._hid, key)["ok"])

    def __repr__(self) -> str:
        return f"<your {self._type}>"
