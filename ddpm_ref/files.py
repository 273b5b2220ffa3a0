"""Writing files so that nothing is lost: the one policy for every file the course writes (checkpoints, exported
models, grading reports, collected submissions, Gradescope's results, the site's cached executions).

The data goes to a temporary file in the target's folder, which is renamed over the target once complete
(``os.replace`` is atomic within a filesystem): a reader sees the old file or the new one, never a torn one, and a
crash or ^C leaves no half-written file behind. A link at the target is replaced, never followed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_file", "write_atomic"]


@contextlib.contextmanager
def atomic_file(path: str | Path, *, mode: int = 0o644, durable: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; on a normal exit it replaces ``path`` (created with
    permissions ``mode``), on an exception it is removed and ``path`` is left as it was. ``durable``: fsync the file
    and its folder, so the new content survives a power cut (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        with contextlib.suppress(OSError):  # make the rename itself durable
            dirfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)


def write_atomic(path: str | Path, data: bytes | str, *, mode: int = 0o644, durable: bool = False) -> Path:
    """Replace ``path`` by ``data`` (``str`` is written as UTF-8) through :func:`atomic_file`; returns ``path``."""
    with atomic_file(path, mode=mode, durable=durable) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)
