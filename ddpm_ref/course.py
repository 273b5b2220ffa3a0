"""What the lesson notebooks share: the check runner, the ``FAST`` switch and a few picture helpers.

``run_checks(name, globals())`` runs the checks registered for an exercise in the repository's ``tests/``
folder (found next to the installed package for an editable install, or under ``$DDPM_COURSE_ROOT``, or
in a parent of the working directory). ``FAST`` is true while nbgrader grades (``NBGRADER_EXECUTION``) or
when ``DDPM_FAST`` is set: heavy cells shrink. Pictures take [B, C, H, W] (or [C, H, W]) tensors in [−1, 1].
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "FAST",
    "course_root",
    "run_checks",
    "to_numpy_image",
    "show_images",
    "show_strip",
    "animate",
    "t_slider",
]


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


#: True while nbgrader executes a notebook (it sets NBGRADER_EXECUTION) or when DDPM_FAST=1: heavy cells shrink.
FAST: bool = _flag("NBGRADER_EXECUTION") or _flag("DDPM_FAST")


def course_root() -> Path:
    """The repository folder that holds ``tests/harness.py``.

    Looked for, in order: next to the installed ``ddpm_ref`` package (editable install), in
    ``$DDPM_COURSE_ROOT``, then in the working directory and its parents.
    """
    candidates = [Path(__file__).resolve().parent.parent]
    if os.environ.get("DDPM_COURSE_ROOT"):
        candidates.append(Path(os.environ["DDPM_COURSE_ROOT"]).expanduser().resolve())
    cwd = Path.cwd().resolve()
    candidates += [cwd, *cwd.parents]
    for root in candidates:
        if (root / "tests" / "harness.py").is_file():
            return root
    raise FileNotFoundError(
        "cannot find the course's tests/ folder: run `pip install -e .` in the repository, "
        "or set DDPM_COURSE_ROOT to the repository folder"
    )


class CheckFailed(AssertionError):
    """A check cell's failure: IPython shows this one line, not a traceback through the grader."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


@contextlib.contextmanager
def _fresh_harness() -> Iterator[tuple[Any, list[str]]]:
    """``tests.harness`` imported afresh from disk with every check, and the grader names the notebook replaced.

    Every ``tests`` module is taken out of ``sys.modules`` and imported again, so attributes a notebook cell
    assigned on the old ones (``tests.harness.run_checks = ...``, an assertion helper) are not used. Afterwards
    the old modules come back, unless they had been changed: then the fresh ones stay.
    """
    root = str(course_root())
    if root not in sys.path:
        sys.path.insert(0, root)

    def take() -> dict[str, ModuleType]:
        return {k: sys.modules.pop(k) for k in list(sys.modules) if k == "tests" or k.startswith("tests.")}

    old, changed = take(), []
    try:
        harness = importlib.import_module("tests.harness")
        harness.load_all_checks()
        changed = harness.integrity.tampering(modules=old)
        yield harness, changed
    finally:
        fresh = take()
        sys.modules.update(old if old and not changed else fresh)


def run_checks(name: str, namespace: Mapping[str, Any] | Any, hidden: bool = False) -> None:
    """Run the checks of exercise ``name`` on the definitions in ``namespace`` (a notebook's ``globals()``).

    Prints one line per check; raises :class:`CheckFailed` (an AssertionError) when one fails, so that
    nbgrader scores the cell 0. ``hidden=True`` runs only the hidden checks (nbgrader's hidden test cells).
    The checks are imported afresh for every call and ``ddpm_ref``'s own objects are restored first: a
    notebook that replaced part of the grader scores this cell 0 with a message saying so, and the real
    checks run from the next cell on.
    """
    changed = _GRADER.restore()
    try:
        with _fresh_harness() as (harness, replaced):
            harness.run_checks(name, namespace, hidden=hidden, tampered=sorted({*changed, *replaced}))
    except AssertionError as e:  # one short line instead of a traceback through the harness
        raise CheckFailed(str(e)) from None


class _Grader:
    """What the notebooks must not be able to change: this module's own functions and ``ddpm_ref``'s objects.

    A snapshot taken when this module is first imported (a lesson's setup cell, before any student code):
    the functions and classes bound in every loaded ``ddpm_ref`` module, the methods of ``ddpm_ref``'s classes
    and the code of its functions. :meth:`restore` puts back whatever differs and returns its names.
    """

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self.modules: dict[str, tuple[ModuleType, dict[str, Any]]] = {}
        self.classes: dict[type, dict[str, Any]] = {}
        self.code: dict[Any, tuple[Any, Any, Any]] = {}
        for name, module in list(sys.modules.items()):
            if isinstance(module, ModuleType) and (name == "ddpm_ref" or name.startswith("ddpm_ref.")):
                owned = {k: v for k, v in vars(module).items() if callable(v) and not isinstance(v, ModuleType)}
                self.modules[name] = (module, owned)
                for value in owned.values():
                    self._remember(value)

    def _remember(self, value: Any) -> None:
        if inspect.isclass(value) and value.__module__.startswith("ddpm_ref") and value not in self.classes:
            self.classes[value] = dict(vars(value))
            for member in vars(value).values():
                self._remember(getattr(member, "__func__", member))
        elif isinstance(value, FunctionType) and value.__module__ and value.__module__.startswith("ddpm_ref"):
            self.code[value] = (value.__code__, value.__defaults__, value.__kwdefaults__)

    def restore(self) -> list[str]:
        changed = self.attempts[:]
        self.attempts.clear()
        for name, (module, owned) in self.modules.items():
            current = vars(module)
            for key, value in owned.items():
                if current.get(key) is not value:
                    changed.append(f"{name}.{key}")
                    current[key] = value
        for cls, members in self.classes.items():
            for key, value in members.items():
                if vars(cls).get(key) is not value:
                    changed.append(f"{cls.__module__}.{cls.__qualname__}.{key}")
                    type.__setattr__(cls, key, value)
        for fn, (code, defaults, kwdefaults) in self.code.items():
            if fn.__code__ is not code or fn.__defaults__ is not defaults or fn.__kwdefaults__ is not kwdefaults:
                changed.append(f"{fn.__module__}.{fn.__qualname__}")
                fn.__code__, fn.__defaults__, fn.__kwdefaults__ = code, defaults, kwdefaults
        return sorted(set(changed))


class _LockedModule(ModuleType):
    """This module, with its public functions read-only: assigning one (by attribute or through ``vars()``) is
    recorded and has no effect on what ``from ddpm_ref.course import run_checks`` gets."""

    def __getattribute__(self, name: str) -> Any:
        value = ModuleType.__getattribute__(self, name)
        if name in __all__ or name in _PRIVATE_RUNNER:
            pristine = _GRADER.modules[__name__][1].get(name, value)
            if value is not pristine:
                _GRADER.attempts.append(f"{__name__}.{name}")
                return pristine
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name in __all__ or name in _PRIVATE_RUNNER:
            _GRADER.attempts.append(f"{__name__}.{name}")
            return
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in __all__ or name in _PRIVATE_RUNNER:
            _GRADER.attempts.append(f"{__name__}.{name}")
            return
        super().__delattr__(name)


_PRIVATE_RUNNER = ("_fresh_harness", "_Grader", "_GRADER", "CheckFailed", "course_root")


# ------------------------------------------------------------------------------------------------ pictures


def _as_batch(x: Tensor) -> Tensor:
    x = torch.as_tensor(x).detach().float().cpu()
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], [C, H, W] or [H, W], got shape {tuple(x.shape)}")
    return x


def to_numpy_image(x: Tensor) -> Any:
    """One image [C, H, W] (or [H, W]) in [−1, 1] as a numpy array [H, W] or [H, W, 3] in [0, 1] for imshow."""
    x = _as_batch(x)[0]
    img = ((x.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    return img[..., 0] if img.shape[-1] == 1 else img


def _grid(x: Tensor, nrow: int, padding: int = 1) -> Any:
    from torchvision.utils import make_grid

    return to_numpy_image(make_grid(_as_batch(x).clamp(-1, 1), nrow=nrow, padding=padding, pad_value=1.0))


def _imshow(ax: Any, img: Any, title: str | None = None) -> None:
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize=9)


def show_images(
    x: Tensor,
    titles: Sequence[str] | None = None,
    nrow: int = 8,
    *,
    title: str | None = None,
    size: float = 1.2,
    ax: Any = None,
) -> None:
    """Show images [B, C, H, W] in [−1, 1]: one grid of ``nrow`` per row, or one panel per image with ``titles``.

    With ``ax`` the grid is drawn into that matplotlib axis (and not shown yet).
    """
    import matplotlib.pyplot as plt

    x = _as_batch(x)
    if ax is not None:
        _imshow(ax, _grid(x, nrow), title)
        return
    if titles is None:
        rows = -(-x.shape[0] // nrow)
        cols = min(nrow, x.shape[0])
        fig, ax = plt.subplots(figsize=(size * cols, size * rows + (0.3 if title else 0)))
        _imshow(ax, _grid(x, nrow), title)
    else:
        if len(titles) != x.shape[0]:
            raise ValueError(f"got {len(titles)} titles for {x.shape[0]} images: give one title per image")
        rows = -(-x.shape[0] // nrow)
        cols = min(nrow, x.shape[0])
        fig, axes = plt.subplots(rows, cols, figsize=(size * cols, (size + 0.3) * rows), squeeze=False)
        for i, a in enumerate(axes.flat):
            if i < x.shape[0]:
                _imshow(a, to_numpy_image(x[i]), titles[i])
            else:
                a.set_axis_off()
        if title:
            fig.suptitle(title)
    fig.tight_layout()
    plt.show()


def _frames(frames: Mapping[Any, Tensor] | Sequence[Tensor], label: str) -> tuple[list[Tensor], list[str | None]]:
    if isinstance(frames, Mapping):
        heads = [str(k) if isinstance(k, str) or not label else f"{label} = {k}" for k in frames]
        return [_as_batch(v) for v in frames.values()], heads
    return [_as_batch(v) for v in frames], [None] * len(frames)


def show_strip(
    frames: Mapping[Any, Tensor] | Sequence[Tensor],
    *,
    title: str | None = None,
    label: str = "t",
    size: float = 1.2,
) -> None:
    """A strip of frames left to right; each frame is [C, H, W] or a batch [B, C, H, W] shown as a column.

    ``frames`` is a list, or a dict {t: images} whose keys become the column titles ("t = 100"; a str key
    is used as it is).
    """
    import matplotlib.pyplot as plt

    imgs, heads = _frames(frames, label)
    if not imgs:
        raise ValueError("show_strip needs at least one frame")
    rows = max(f.shape[0] for f in imgs)
    fig, axes = plt.subplots(1, len(imgs), figsize=(size * len(imgs), size * rows + 0.4), squeeze=False)
    for a, f, head in zip(axes[0], imgs, heads, strict=True):
        _imshow(a, _grid(f, nrow=1), head)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.show()


def animate(
    frames: Mapping[int, Tensor] | Sequence[Tensor],
    *,
    nrow: int = 8,
    interval: int = 120,
    label: str = "t",
    size: float = 2.5,
) -> Any:
    """The frames (each [B, C, H, W] shown as a grid of ``nrow``) as a looping animation; returns HTML to display.

    ``frames`` is a list or a dict {t: images} (the key is shown in the title). Uses matplotlib's
    ``FuncAnimation(...).to_jshtml()``, so it plays in Jupyter, Colab and the exported HTML alike.
    """
    import matplotlib.pyplot as plt
    from IPython.display import HTML
    from matplotlib.animation import FuncAnimation

    imgs, heads = _frames(frames, label)
    if not imgs:
        raise ValueError("animate needs at least one frame")
    grids = [_grid(f, nrow) for f in imgs]
    fig, ax = plt.subplots(figsize=(size * grids[0].shape[1] / grids[0].shape[0], size))
    _imshow(ax, grids[0], heads[0])
    image = ax.images[0]

    def update(i: int) -> list[Any]:
        image.set_data(grids[i])
        if heads[i] is not None:
            ax.set_title(heads[i], fontsize=9)
        return [image]

    anim = FuncAnimation(fig, update, frames=len(grids), interval=interval, blit=False)
    html = HTML(anim.to_jshtml(default_mode="once"))
    plt.close(fig)
    return html


def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def t_slider(
    fn: Callable[[int], Tensor | None],
    T: int,
    *,
    step: int = 1,
    value: int = 0,
    static_steps: int = 8,
    use_widgets: bool | None = None,
) -> None:
    """A slider over t ∈ {0, …, T−1} that shows ``fn(t)`` (images [B, C, H, W] in [−1, 1], or draw and return None).

    Where Jupyter widgets are unavailable, while nbgrader grades, or with ``use_widgets=False``, it shows a
    static strip of ``static_steps`` evenly spaced t instead.
    """
    import matplotlib.pyplot as plt

    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive int (number of diffusion steps), got {T!r}")

    def show(t: int) -> None:
        out = fn(t)
        if out is not None:
            show_images(out, title=f"t = {t}")
        else:
            plt.show()

    if use_widgets is None:  # nbgrader runs without a frontend: the static strip is what its feedback can show
        use_widgets = _widgets_available() and not _flag("NBGRADER_EXECUTION")
    if use_widgets:
        import ipywidgets as widgets

        slider = widgets.IntSlider(value=value, min=0, max=T - 1, step=step, description="t",
                                   continuous_update=False)
        widgets.interact(show, t=slider)
        return
    ts = torch.linspace(0, T - 1, static_steps).round().long().unique().tolist()
    outs = {t: fn(t) for t in ts}
    if all(o is not None for o in outs.values()):
        show_strip(outs, title=f"t from 0 to {T - 1} (install ipywidgets for a slider)")


_GRADER = _Grader()
sys.modules[__name__].__class__ = _LockedModule
