"""Shared by the data scripts: writing image files, SHA-256 manifests and checking them."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

MANIFEST = "manifest.json"


class ScriptError(Exception):
    """Bad input or a failed check: printed as one line by :func:`run`."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(root: Path, groups: dict[str, list[Path]], info: dict[str, Any]) -> Path:
    """root/manifest.json: info, and per group (a size or a split) the count, image size and file checksums."""
    entries = {}
    for name, files in groups.items():
        sizes = sorted({Image.open(p).size for p in files[:50]}) if files else []
        entries[name] = {
            "count": len(files),
            "image_sizes": [list(s) for s in sizes],
            "files": {str(p.relative_to(root)): sha256(p) for p in sorted(files)},
        }
    manifest = {**info, "groups": entries}
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def check_manifest(root: Path, expect_size: dict[str, int] | None = None) -> dict[str, int]:
    """Verify every file listed in root/manifest.json: present, same checksum, decodable, of the expected size.

    Returns {group: count}; raises ScriptError naming the first problems.
    """
    path = root / MANIFEST
    if not path.is_file():
        raise ScriptError(f"no {MANIFEST} in {root}: prepare the folder first")
    manifest = json.loads(path.read_text())
    problems: list[str] = []
    counts = {}
    for name, entry in manifest["groups"].items():
        files = entry["files"]
        if len(files) != entry["count"]:
            problems.append(f"{name}: manifest lists {len(files)} files but says {entry['count']}")
        for rel, digest in files.items():
            p = root / rel
            if not p.is_file():
                problems.append(f"missing {rel}")
                continue
            if sha256(p) != digest:
                problems.append(f"checksum mismatch {rel}")
                continue
            want = (expect_size or {}).get(name)
            if want is not None:
                with Image.open(p) as im:
                    if im.size != (want, want):
                        problems.append(f"{rel} is {im.size[0]}x{im.size[1]}, expected {want}x{want}")
        counts[name] = len(files)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ScriptError(f"{root} failed its check: {'; '.join(problems[:3])}{more}")
    return counts


def save_png(array_or_image: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    img.save(path)
    return path


def run(main_fn, argv: Iterable[str] | None = None) -> int:
    """Call ``main_fn(argv)``; ScriptError and common input errors become one line on stderr and status 2."""
    try:
        return int(main_fn(argv) or 0)
    except (ScriptError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
