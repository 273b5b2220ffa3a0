"""``ddpm_ref.files``: every file the course writes is the old content or the new one, never torn, never through a
link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ddpm_ref.files import atomic_file, write_atomic


def test_write_atomic_replaces_the_content_with_the_permissions_asked(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "report.csv"
    assert write_atomic(path, "a,b\n") == path and path.read_text() == "a,b\n"
    write_atomic(path, b"\x00\x01", mode=0o600)
    assert path.read_bytes() == b"\x00\x01" and (path.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.csv"]


@pytest.mark.parametrize("durable", [False, True])
def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_file(path, durable=durable) as f:
        f.write(b"half of the new")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_a_link_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "results.json"
    os.symlink(victim, link)
    write_atomic(link, "{}")
    assert victim.read_text() == "keep me"
    assert not link.is_symlink() and link.read_text() == "{}"
