"""Progress bars that stay readable in logs: the one progress policy of the trainer, samplers, CLI, demo and Kaggle.

On a terminal or in an interactive notebook a bar updates live (``tqdm.auto``). Where nobody watches — output
redirected to a file, CI, a committed (batch) Kaggle run, a notebook run headless (nbgrader, nbclient, the site
build: :func:`ddpm_ref.frontend.widget_frontend`) — each update is one more chunk of text in the log, so there a
bar is plain text and writes at most once every :data:`LOG_INTERVAL_S` seconds. The lessons import
:func:`progress_bar` as their ``tqdm``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm as text_tqdm
from tqdm.auto import tqdm as auto_tqdm

__all__ = ["LOG_INTERVAL_S", "interactive", "progress_bar"]

#: seconds between two updates of a bar written to a log
LOG_INTERVAL_S = 30.0


def interactive() -> bool:
    """Whether someone watches the output live: a terminal, or a notebook that is not a committed Kaggle run.

    ``DDPM_PROGRESS=live`` or ``=log`` decides it outright (e.g. in CI)."""
    choice = os.environ.get("DDPM_PROGRESS", "").lower()
    if choice in ("live", "log"):
        return choice == "live"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE", "").lower() == "batch":  # "Save & Run All" / kaggle kernels push
        return False
    if "ipykernel" in sys.modules:  # a notebook: live (a widget) only where a frontend can show it
        from .frontend import widget_frontend

        return widget_frontend()
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(iterable: Any = None, **kwargs: Any) -> Any:
    """``tqdm(iterable, **kwargs)`` live where someone watches, else text at most every :data:`LOG_INTERVAL_S` s."""
    if interactive():
        return auto_tqdm(iterable, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.pop("dynamic_ncols", None)
    kwargs.setdefault("ncols", 100)
    return text_tqdm(iterable, **kwargs)
