"""Who watches a notebook's output: a person at a frontend that shows Jupyter widgets (JupyterLab, Notebook,
VS Code, Colab), or a program that runs it headless (nbgrader, nbclient, papermill, the site build). The pictures
(:mod:`ddpm_ref.pictures`) and the progress bars (:mod:`ddpm_ref.progress`) ask here, and create no widget where
nobody could use it."""

from __future__ import annotations

import importlib.util
import os

__all__ = ["HEADLESS_ENV", "env_flag", "widget_frontend"]


def env_flag(name: str) -> bool:
    """Whether the environment switch ``name`` is on (set, and not "", "0", "false", "no" or "off")."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


#: set by the project's headless runners (``ddpm_ref.headless``) in the kernels they start: no frontend there
HEADLESS_ENV = "DDPM_HEADLESS"


def widget_frontend() -> bool:
    """Whether a frontend that can show Jupyter widgets runs this code (JupyterLab, Notebook, VS Code, Colab).

    Not where nbgrader grades (``NBGRADER_EXECUTION``) or a runner of the project's executes (``DDPM_HEADLESS``),
    and not under any other headless runner: nbclient, and so nbconvert, papermill, nbgrader and myst-nb, sends
    every cell with ``allow_stdin`` false (it cannot answer ``input()``), while a frontend a person works in sends
    true. A widget made there would only leave a dead view in the output, and can block the run (nbclient#312).
    """
    if env_flag("NBGRADER_EXECUTION") or env_flag(HEADLESS_ENV):
        return False
    if importlib.util.find_spec("ipywidgets") is None:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:  # plain IPython, or a script
        return False
    try:
        request = kernel.get_parent("shell")
    except Exception:  # an ipykernel older than 6, or an unusual kernel: trust it
        return True
    return bool((request or {}).get("content", {}).get("allow_stdin", True))
