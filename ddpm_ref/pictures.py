"""Pictures for the lesson notebooks: image grids, strips of frames, animations and a slider over t.

Every helper takes images [B, C, H, W] (or [C, H, W], [H, W]) in [−1, 1] and draws them with matplotlib
(grids laid out as ``torchvision.utils.make_grid`` does); ``animate`` returns HTML (``FuncAnimation.to_jshtml``)
that plays in Jupyter, Colab and exported pages alike; ``t_slider`` is an ipywidgets slider, or a static strip
where no frontend can show widgets (nbgrader, nbclient, papermill, the site build). ``ddpm_ref.course``
re-exports them for the lessons.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .frontend import HEADLESS_ENV, env_flag, widget_frontend  # noqa: F401 (HEADLESS_ENV: here for the tests)

__all__ = ["to_numpy_image", "show_images", "show_strip", "animate", "t_slider"]


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
    """Images [B, C, H, W] tiled ``nrow`` per row, ``padding`` white pixels around each, as one imshow array.

    The layout of ``torchvision.utils.make_grid``, written out here: importing torchvision (which loads
    ``torch._dynamo``) would cost every lesson kernel over two seconds of CPU, and every graded notebook with it.
    """
    x = _as_batch(x).clamp(-1, 1)
    b, c, h, w = x.shape
    cols = min(nrow, b)
    rows = -(-b // cols)
    grid = x.new_ones(c, rows * (h + padding) + padding, cols * (w + padding) + padding)  # 1 is white in [−1, 1]
    for i in range(b):
        top, left = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    return to_numpy_image(grid)


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


def t_slider(
    fn: Callable[[int], Tensor | None],
    T: int,
    *,
    step: int = 1,
    value: int = 0,
    labels: Sequence[str] | None = None,
    nrow: int = 8,
    size: float = 1.8,
    static_steps: int = 8,
    use_widgets: bool | None = None,
) -> None:
    """A slider over t ∈ {0, …, T−1} that shows ``fn(t)`` (images [B, C, H, W] in [−1, 1], or draw and return None).

    The images are drawn ``size`` inches each, ``nrow`` per row, under the title "t = …"; ``labels`` (one per
    image) puts a label over each. The slider is wide enough to pick single steps (600 px, or the output's
    width where that is less). Where no frontend can show widgets (:func:`widget_frontend`: nbgrader, nbclient,
    papermill, the site build), or with ``use_widgets=False``, it shows a static strip of ``static_steps`` evenly
    spaced t instead, and creates no widget.
    """
    import matplotlib.pyplot as plt

    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive int (number of diffusion steps), got {T!r}")

    def show(t: int) -> None:
        out = fn(t)
        if out is not None:
            show_images(out, titles=labels, nrow=nrow, title=f"t = {t}", size=size)
        else:
            plt.show()

    if use_widgets is None:  # headless runs have no frontend: the static strip is what their pages can show
        use_widgets = widget_frontend()
    if use_widgets:
        import ipywidgets as widgets

        fn(value)  # an error (an unfinished exercise) surfaces in the cell itself, not inside the widget's output

        slider = widgets.IntSlider(value=value, min=0, max=T - 1, step=step, description="t",
                                   continuous_update=False,
                                   layout=widgets.Layout(width="600px", max_width="100%"))
        widgets.interact(show, t=slider)
        return
    ts = torch.linspace(0, T - 1, static_steps).round().long().unique().tolist()
    outs = {t: fn(t) for t in ts}
    if all(o is not None for o in outs.values()):
        show_strip(outs, title=f"t from 0 to {T - 1}")
