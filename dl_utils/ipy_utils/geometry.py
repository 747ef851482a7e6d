"""Display <-> source pixel mapping for the annotator canvas, with zoom and pan.

Pure functions on an immutable :class:`View`, so the mapping is tested without a browser.

The model: source pixel ``(i, j)`` (column, row) covers the display rectangle
``[(i - x0) * k, (i + 1 - x0) * k) x [(j - y0) * k, (j + 1 - y0) * k)`` where ``k = scale * zoom`` and
``(x0, y0)`` is the source point at the canvas's top-left corner. A display point (continuous CSS
pixels, what the browser reports as ``relativeX``/``relativeY``) maps to the source pixel whose
footprint contains it; a display pixel ``d`` shows the source pixel that contains its centre
``d + 0.5``, so what is drawn and what is clicked agree everywhere on the canvas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import InputError

MAX_ZOOM = 32.0


@dataclass(frozen=True)
class View:
    """Source size, base display scale, zoom and pan (``x0, y0``: source point at the top-left)."""

    width: int
    height: int
    scale: float = 1.0
    zoom: float = 1.0
    x0: float = 0.0
    y0: float = 0.0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise InputError(f"view of a {self.width}x{self.height} frame: the size must be positive")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise InputError(f"display scale {self.scale!r} must be a positive number")
        if not (1.0 <= self.zoom <= MAX_ZOOM):
            raise InputError(f"zoom {self.zoom!r} must lie in 1..{MAX_ZOOM:g}")

    @property
    def k(self) -> float:
        """Display pixels per source pixel."""
        return self.scale * self.zoom

    @property
    def canvas_size(self) -> tuple[int, int]:
        """(width, height) of the canvas: the whole frame at ``scale`` (constant while zooming)."""
        return max(1, round(self.width * self.scale)), max(1, round(self.height * self.scale))


def fit_scale(width: int, height: int, max_width: int | None = None, max_height: int | None = None,
              *, upscale: bool = False) -> float:
    """The largest scale at which a ``width x height`` frame fits ``max_width x max_height``."""
    s = math.inf
    if max_width:
        s = min(s, max_width / width)
    if max_height:
        s = min(s, max_height / height)
    if s == math.inf:
        return 1.0
    return s if upscale else min(1.0, s)


def _pixel(v: float, k: float, origin: float) -> int:
    """``floor(v / k + origin)``, corrected so the result's footprint really contains ``v``."""
    i = math.floor(v / k + origin)
    # float rounding can put v on the wrong side of a footprint edge: fix with the edge formula itself
    while (i - origin) * k > v:
        i -= 1
    while (i + 1 - origin) * k <= v:
        i += 1
    return i


def to_source(view: View, x: float, y: float, *, clamp: bool = False) -> tuple[int, int] | None:
    """Source pixel ``(column, row)`` under display point ``(x, y)``; ``None`` outside the frame.

    ``clamp`` returns the nearest pixel of the frame instead of ``None`` (for the end of a drag).
    """
    i = _pixel(float(x), view.k, view.x0)
    j = _pixel(float(y), view.k, view.y0)
    if clamp:
        return min(max(i, 0), view.width - 1), min(max(j, 0), view.height - 1)
    if 0 <= i < view.width and 0 <= j < view.height:
        return i, j
    return None


def footprint(view: View, i: int, j: int) -> tuple[float, float, float, float]:
    """Display rectangle ``(x1, y1, x2, y2)`` (right/bottom exclusive) covered by source pixel (i, j)."""
    k = view.k
    return (i - view.x0) * k, (j - view.y0) * k, (i + 1 - view.x0) * k, (j + 1 - view.y0) * k


def to_display(view: View, x: float, y: float) -> tuple[float, float]:
    """Display position of a continuous source point (pixel ``i``'s centre is ``i + 0.5``)."""
    return (x - view.x0) * view.k, (y - view.y0) * view.k


def _axis(n_display: int, k: float, origin: float, n_source: int) -> np.ndarray:
    c = np.arange(n_display, dtype=np.float64) + 0.5
    i = np.floor(c / k + origin).astype(np.int64)
    # the same edge correction as _pixel, vectorised
    i -= ((i - origin) * k > c).astype(np.int64)
    i += ((i + 1 - origin) * k <= c).astype(np.int64)
    i[(i < 0) | (i >= n_source)] = -1
    return i


def sample_indices(view: View) -> tuple[np.ndarray, np.ndarray]:
    """Source row per canvas row and source column per canvas column (``-1``: outside the frame)."""
    cw, ch = view.canvas_size
    return _axis(ch, view.k, view.y0, view.height), _axis(cw, view.k, view.x0, view.width)


def clamp_view(view: View) -> View:
    """Keep the visible window inside the frame (no empty margins when zoomed in)."""
    cw, ch = view.canvas_size
    vis_w, vis_h = cw / view.k, ch / view.k
    x0 = min(max(view.x0, 0.0), max(0.0, view.width - vis_w))
    y0 = min(max(view.y0, 0.0), max(0.0, view.height - vis_h))
    return replace(view, x0=x0, y0=y0)


def zoom_at(view: View, factor: float, x: float, y: float) -> View:
    """Zoom by ``factor`` keeping the source point under display ``(x, y)`` in place (then clamp)."""
    z = min(MAX_ZOOM, max(1.0, view.zoom * float(factor)))
    sx, sy = x / view.k + view.x0, y / view.k + view.y0
    k = view.scale * z
    return clamp_view(replace(view, zoom=z, x0=sx - x / k, y0=sy - y / k))


def pan(view: View, dx: float, dy: float) -> View:
    """Move the image by ``(dx, dy)`` display pixels (a drag to the right shows what is left)."""
    return clamp_view(replace(view, x0=view.x0 - dx / view.k, y0=view.y0 - dy / view.k))


def reset(view: View) -> View:
    return replace(view, zoom=1.0, x0=0.0, y0=0.0)


def drag_box(view: View, start: tuple[float, float], end: tuple[float, float]) -> tuple[int, int, int, int]:
    """Source box ``(x1, y1, x2, y2)`` (exclusive right/bottom) of every pixel a drag rectangle touches."""
    a = to_source(view, *start, clamp=True)
    b = to_source(view, *end, clamp=True)
    assert a is not None and b is not None
    return min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]) + 1, max(a[1], b[1]) + 1


__all__ = [
    "MAX_ZOOM",
    "View",
    "clamp_view",
    "drag_box",
    "fit_scale",
    "footprint",
    "pan",
    "reset",
    "sample_indices",
    "to_display",
    "to_source",
    "zoom_at",
]
