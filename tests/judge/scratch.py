"""The grader's scratch folders: one place that makes them, and that reclaims those a killed grader left behind.

Every folder the grader makes (a kernel's sockets and copied submission folder, a student process's working
folder, a withheld copy of ``ddpm_ref``) is ``$TMPDIR/ddpm-KIND-PID-XXXXXXXX``, owned by the grading process
``PID`` and private to its user (``mkdtemp`` makes it 0700). A grader that ends normally removes its folders; one
that is killed (a Dask worker at the end of a class run, a timeout, ^C twice) cannot. The first folder a process
makes therefore sweeps the folders of graders that are no longer running, so that neither disk space nor a
student's copied files outlive a run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

#: $TMPDIR/ddpm-KIND-PID-RANDOM, KIND in lowercase letters (with dashes) and an optional exercise name
_NAME = re.compile(r"^ddpm-[a-z]+(?:-[A-Za-z0-9_]+)?-(\d+)-[A-Za-z0-9_]{8}$")
_swept = False
_lock = threading.Lock()


def folder(kind: str) -> Path:
    """A new private folder ``ddpm-KIND-PID-XXXXXXXX`` in the temporary directory (the caller removes it)."""
    global _swept
    with _lock:
        if not _swept:
            _swept = True
            sweep()
    return Path(tempfile.mkdtemp(prefix=f"ddpm-{kind}-{os.getpid()}-"))


def running(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(where: Path | None = None) -> list[Path]:
    """Remove this user's grader folders whose grading process has ended; returns them."""
    where = Path(where or tempfile.gettempdir())
    removed = []
    uid = os.getuid()
    with contextlib.suppress(OSError):
        for entry in os.scandir(where):
            match = _NAME.match(entry.name)
            if match is None or int(match.group(1)) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if not entry.is_dir(follow_symlinks=False) or info.st_uid != uid or running(int(match.group(1))):
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed
