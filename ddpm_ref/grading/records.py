"""What an autograded notebook records about its checks, read back as data.

While grading, every check cell's outputs end with one ``display_data`` output of MIME type :data:`FINDINGS_MIME`
(written by the judge, outside the student's process)::

    {"exercise": "q_sample", "hidden": false,
     "checks": {"q_sample_values": {"status": "failed", "mistake": "you used α_t (alphas) where ᾱ_t …"},
                "q_sample_shapes": {"status": "passed"}, …}}

``status`` is one of :data:`STATUSES`; a ``failed`` check has ``mistake`` (the hint that names the mistake, empty
when the check named none), a ``crashed`` or ``cheat`` one has ``reason``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

__all__ = ["FINDINGS_MIME", "STATUSES", "CheckCellRecord", "read_records", "records_of"]

FINDINGS_MIME = "application/vnd.ddpm-course.findings+json"
STATUSES = ("passed", "skipped", "failed", "missing", "timeout", "crashed", "cheat")


@dataclass
class CheckCellRecord:
    """One check cell of one autograded notebook: its grade_id, the exercise it checks, and per check a finding."""

    grade_id: str
    exercise: str
    checks: dict[str, dict[str, str]] = field(default_factory=dict)
    hidden: bool = False


def records_of(nb: Any) -> Iterator[CheckCellRecord]:
    """The check cells' records of an autograded notebook (cells without one, e.g. never judged, are left out)."""
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader") or {}
        if cell.get("cell_type") != "code" or not meta.get("grade"):
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {}) if out.get("output_type") == "display_data" else {}
            record = data.get(FINDINGS_MIME)
            if isinstance(record, dict) and isinstance(record.get("checks"), dict):
                grade_id = str(meta.get("grade_id", ""))
                yield CheckCellRecord(grade_id, str(record.get("exercise", "")),
                                      {str(k): dict(v) for k, v in record["checks"].items() if isinstance(v, dict)},
                                      hidden=bool(record.get("hidden", False)))


def read_records(path: Path) -> list[CheckCellRecord]:
    """:func:`records_of` the notebook at ``path``."""
    return list(records_of(nbformat.read(path, as_version=4)))
