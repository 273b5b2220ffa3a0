"""The sandbox every submission runs in: bubblewrap, with limits. One place for the policy.

What a sandboxed process sees: the operating system's programs and libraries and the Python installation,
read-only; the folders the caller binds (read-only unless said otherwise); a private ``/tmp``; no network (only
its own loopback); its own process tree; an environment of a few named variables (none of the instructor's).
Nothing of the course folder is visible unless bound: not ``tests/``, not ``submitted/``, not the gradebook.

Limits (:class:`Limits`): address space, CPU seconds, file size and open files through ``prlimit``; the number
of processes through a ``pids`` cgroup where this machine lets us make one, else by a watchdog that kills the
sandbox when its process tree grows past the limit.

Without ``bwrap`` (Debian/Ubuntu: ``apt-get install bubblewrap``) grading refuses to start
(:class:`SandboxUnavailable`), unless the caller says ``allow_unsandboxed`` (``DDPM_GRADE_UNSANDBOXED=1``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.judge import scratch

#: set to 1 to grade without a sandbox on a machine that has none (never the default)
UNSANDBOXED_ENV = "DDPM_GRADE_UNSANDBOXED"

#: /etc entries a Python process needs (dynamic linker, fonts, locale, users); the rest of /etc stays out
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "fonts", "localtime", "passwd", "group", "nsswitch.conf",
        "alternatives", "mime.types", "matplotlibrc")


#: installed packages that implement this course's exercises (diffusers' schedulers add noise and take DDPM and DDIM
#: steps): hidden in the sandbox, where they would be the reference by another name
HIDDEN_PACKAGES = ("diffusers", "denoising_diffusion_pytorch", "k_diffusion", "improved_diffusion",
                   "guided_diffusion")


class SandboxUnavailable(RuntimeError):
    """No sandbox can be made on this machine."""


@dataclass(frozen=True)
class Limits:
    """What one sandboxed process tree may use."""

    memory_bytes: int = 8 << 30  # address space of each process
    cpu_seconds: int = 900
    file_bytes: int = 256 << 20  # the largest file it may write
    open_files: int = 512
    processes: int = 64  # threads count too (torch starts some)


DEFAULT_LIMITS = Limits()


def unsandboxed_allowed() -> bool:
    return os.environ.get(UNSANDBOXED_ENV, "").strip().lower() in ("1", "true", "yes")


def bwrap() -> str | None:
    """The path of a working ``bwrap``, or None."""
    path = shutil.which("bwrap")
    if path is None:
        return None
    ok = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                        capture_output=True, timeout=30)
    return path if ok.returncode == 0 else None


_BWRAP: list[str | None] = []


def require() -> str | None:
    """The ``bwrap`` to use, or None when grading without a sandbox was explicitly allowed; else raise."""
    if not _BWRAP:
        _BWRAP.append(bwrap())
    if _BWRAP[0] is not None:
        return _BWRAP[0]
    if unsandboxed_allowed():
        return None
    raise SandboxUnavailable(
        "cannot grade: no working bubblewrap sandbox on this machine (install it: apt-get install bubblewrap; or "
        f"grade inside a container, see solutions/README.md); {UNSANDBOXED_ENV}=1 grades without one, unsafely")


def _python_roots() -> list[Path]:
    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    for entry in sys.path:
        p = Path(entry) if entry else None
        if p is not None and p.is_absolute() and p.exists() and ("site-packages" in p.parts
                                                                 or "dist-packages" in p.parts):
            roots.add(p)
    resolved = sorted({r.resolve() for r in roots}, key=lambda p: len(p.parts))
    return [r for r in resolved if not any(r != o and o in r.parents for o in resolved)]


def _hidden_packages() -> list[Path]:
    """The folders of the installed :data:`HIDDEN_PACKAGES` (found without importing them)."""
    import importlib.util

    found = []
    for name in HIDDEN_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            found.append(Path(location).resolve())
    return found


_STAND_IN: list[Path] = []


def _stand_in() -> Path:
    """A package folder whose import fails with a sentence saying why (bound over each hidden package)."""
    if not _STAND_IN:
        folder = scratch.folder("hidden")
        atexit.register(shutil.rmtree, folder, True)
        (folder / "__init__.py").write_text(
            'raise ImportError("this package implements the course\'s exercises, so it is not available while the '
            'course is graded: write the exercise yourself")\n')
        _STAND_IN.append(folder)
    return _STAND_IN[0]


def command(cmd: Sequence[str], *, cwd: Path, binds: Sequence[tuple[Path, Path]] = (),
            rw_binds: Sequence[tuple[Path, Path]] = (), env: dict[str, str] | None = None,
            limits: Limits | None = None, share_net: bool = False) -> list[str]:
    """``cmd`` wrapped in ``prlimit`` and ``bwrap`` (or only ``prlimit`` when unsandboxed grading was allowed)."""
    exe = require()
    limits = limits or DEFAULT_LIMITS
    rl = [shutil.which("prlimit") or "prlimit", f"--as={limits.memory_bytes}", f"--cpu={limits.cpu_seconds}",
          f"--fsize={limits.file_bytes}", f"--nofile={limits.open_files}", "--core=0", "--"]
    if exe is None:
        return [*rl, *cmd]
    args = [exe, "--die-with-parent", "--unshare-all", "--clearenv", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp", "--dir", "/tmp/home"]
    if share_net:
        args.insert(3, "--share-net")
    for top in ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/sbin", "/opt"):
        p = Path(top)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), top]
        elif p.exists():
            args += ["--ro-bind", top, top]
    for name in _ETC:
        if (Path("/etc") / name).exists():
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    for root in _python_roots():
        args += ["--ro-bind", str(root), str(root)]
    for folder in _hidden_packages():
        args += ["--ro-bind", str(_stand_in()), str(folder)]
    for src, dst in binds:
        args += ["--ro-bind", str(src), str(dst)]
    for src, dst in rw_binds:
        args += ["--bind", str(src), str(dst)]
    base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp/home", "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "MPLBACKEND": "Agg",
                "MPLCONFIGDIR": "/tmp/home/.matplotlib", "OMP_WAIT_POLICY": "PASSIVE"}
    for key, value in {**base_env, **(env or {})}.items():
        args += ["--setenv", key, value]
    args += ["--remount-ro", "/", "--chdir", str(cwd), "--"]  # the sandbox's own root too: only binds are writable
    return [*rl, *args, *cmd]


# ------------------------------------------------------------------------------------------------ process limit


class ProcessCap:
    """Keeps a sandbox's process tree (threads included) under ``limit``: a ``pids`` cgroup where this machine lets
    us make one (the command joins it before it starts: :meth:`wrap`), else a watchdog thread that kills the tree's
    root when it grows past the limit (:meth:`watch`; ``tripped`` then says so)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.tripped, self.pid = limit, False, None
        self.cgroup = self._cgroup(limit)
        self._stop = threading.Event()

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` started inside the cgroup (a shell that joins it, then becomes ``cmd``)."""
        if self.cgroup is None:
            return list(cmd)
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.cgroup / "cgroup.procs"), *cmd]

    def watch(self, pid: int) -> None:
        """Start watching the tree under ``pid`` (the process :meth:`wrap`'s command became)."""
        self.pid = pid
        threading.Thread(target=self._watch, daemon=True).start()

    @staticmethod
    def _cgroup(limit: int) -> Path | None:
        """A new, empty ``pids`` cgroup of at most ``limit`` tasks, or None where none can be made."""
        for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
            if not (base / "cgroup.procs").exists() or not os.access(base, os.W_OK):
                continue
            group = base / f"ddpm-grade-{uuid.uuid4().hex[:12]}"
            try:
                group.mkdir()
                (group / "pids.max").write_text(str(limit))
                return group
            except OSError:
                with contextlib.suppress(OSError):
                    group.rmdir()
        return None

    def _count(self) -> int:
        total, todo = 0, [self.pid]
        while todo and total <= self.limit:
            pid = todo.pop()
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
                total += len(tasks)
                for tid in tasks:
                    todo += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except (OSError, ValueError):
                continue
        return total

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            if self.cgroup is not None:
                with contextlib.suppress(OSError, ValueError):
                    if int((self.cgroup / "pids.events").read_text().split()[-1]) > 0:
                        self.tripped = True
            elif self._count() > self.limit:
                self.tripped = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                return

    def close(self) -> None:
        self._stop.set()
        if self.cgroup is not None:
            for _ in range(50):
                try:
                    self.cgroup.rmdir()
                    break
                except OSError:
                    with contextlib.suppress(OSError, ValueError):
                        for pid in (self.cgroup / "cgroup.procs").read_text().split():
                            if int(pid) != os.getpid():
                                os.kill(int(pid), signal.SIGKILL)
                    time.sleep(0.05)


def cgroup_available() -> bool:
    """Whether this machine lets the grader make ``pids`` cgroups (else the watchdog keeps the limit)."""
    group = ProcessCap._cgroup(1)
    if group is None:
        return False
    group.rmdir()
    return True
