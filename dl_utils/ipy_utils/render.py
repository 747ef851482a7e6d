"""Frame + mask overlays -> the RGB array the canvas shows (numpy/OpenCV, no widgets).

Masks are mapped to the display with the exact pixel mapping of :mod:`.geometry` (nearest source
pixel per display pixel centre) and blended there with :func:`dl_utils.cv_utils.draw_overlay`, so a
display pixel is tinted exactly when the source pixel it shows is in the mask (and the blend is
``rint(pixel * (1 - alpha) + colour * alpha)``, the overlay helper's formula).

The frame itself is shrunk with ``cv2.INTER_AREA`` when the whole frame is shown below 1:1 (nearest
sampling aliases badly on 4K frames); zoomed views and scales >= 1 use the same nearest mapping as
the masks, so every displayed pixel is a source pixel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import cv2
import numpy as np

from ..annotations import Instance
from ..cv_utils import color_for_index, draw_overlay
from .geometry import View, sample_indices


def display_frame(image: np.ndarray, view: View, *, smooth: bool = True) -> np.ndarray:
    """The frame as the canvas shows it (no overlays), ``(canvas_h, canvas_w, 3)`` uint8."""
    cw, ch = view.canvas_size
    if smooth and view.zoom == 1.0 and view.k < 1.0 and view.x0 == 0 and view.y0 == 0:
        return cv2.resize(image, (cw, ch), interpolation=cv2.INTER_AREA)
    ys, xs = sample_indices(view)
    out = image[np.clip(ys, 0, None)[:, None], np.clip(xs, 0, None)[None, :]]
    out[ys < 0] = 0
    out[:, xs < 0] = 0
    return np.ascontiguousarray(out)


def display_mask(mask: np.ndarray, view: View) -> np.ndarray:
    """A source-size bool mask mapped to the canvas (a display pixel is set iff its source pixel is)."""
    ys, xs = sample_indices(view)
    out = mask[np.clip(ys, 0, None)[:, None], np.clip(xs, 0, None)[None, :]]
    out &= (ys >= 0)[:, None]
    out &= (xs >= 0)[None, :]
    return out


def render(
    image: np.ndarray,
    instances: Iterable[Instance],
    view: View,
    *,
    colors: Mapping[int, str] | None = None,
    labels: Mapping[int, str] | None = None,
    alpha: float = 0.45,
    contour_only: bool = False,
    selected: int | None = None,
    show_labels: bool = False,
    smooth: bool = True,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """Frame plus overlays at display size. ``base``: :func:`display_frame`'s output, when cached.

    Unselected objects get a 1 px contour, the selected one a 3 px contour and is drawn last (on
    top); ``contour_only`` draws outlines without fill.
    """
    out = display_frame(image, view, smooth=smooth) if base is None else base.copy()
    colors = colors or {}
    shown = []
    for inst in instances:
        if inst.is_empty:
            continue
        if inst.mask is not None:
            m = display_mask(inst.mask, view)
            if not m.any():
                continue
            shown.append(Instance(inst.object_id, mask=m))
        elif inst.box is not None:  # box-only instance: map its corners
            x1, y1, x2, y2 = inst.box
            k = view.k
            shown.append(Instance(inst.object_id, box=((x1 - view.x0) * k, (y1 - view.y0) * k,
                                                       (x2 - view.x0) * k, (y2 - view.y0) * k)))
    shown.sort(key=lambda i: i.object_id == selected)  # selected last, on top
    a = 0.0 if contour_only else float(alpha)
    for inst in shown:
        oid = inst.object_id
        sel = oid == selected
        col = colors.get(oid) or color_for_index(oid)
        names = {oid: labels[oid]} if labels and oid in labels else None
        out = draw_overlay(out, [inst], names, alpha=a, contour=True, thickness=3 if sel else 1,
                           labels=show_labels, colors={oid: col})
    return out


__all__ = ["display_frame", "display_mask", "render"]


def overlay_rgba(
    instances: Iterable[Instance],
    view: View,
    *,
    colors: Mapping[int, str] | None = None,
    alpha: float = 0.45,
    contour_only: bool = False,
    selected: int | None = None,
) -> np.ndarray:
    """The overlays alone as an RGBA layer (what the browser composites over the frame layer).

    Fill pixels carry the object colour with alpha ``round(alpha * 255)``, contours alpha 255. Where
    objects overlap the later one wins (``render`` blends twice there); elsewhere the browser's
    composite equals :func:`render` within one grey level.
    """
    cw, ch = view.canvas_size
    out = np.zeros((ch, cw, 4), np.uint8)
    colors = colors or {}
    a = round(float(alpha) * 255)
    items = [i for i in instances if not i.is_empty and i.mask is not None]
    items.sort(key=lambda i: i.object_id == selected)
    for inst in items:
        m = display_mask(inst.mask, view)
        if not m.any():
            continue
        r, g, b = (int((colors.get(inst.object_id) or color_for_index(inst.object_id))[k:k + 2], 16)
                   for k in (1, 3, 5))
        if not contour_only and a > 0:
            out[m] = (r, g, b, a)
        cs, _ = cv2.findContours(m.view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, cs, -1, (r, g, b, 255), 3 if inst.object_id == selected else 1, cv2.LINE_8)
    return out


def encode_png(rgba: np.ndarray, level: int = 1) -> bytes:
    """Fast lossless PNG (zlib level 1: ~10x faster than PIL's default on a 1280x720 layer)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), [cv2.IMWRITE_PNG_COMPRESSION, level])
    assert ok
    return buf.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


__all__ += ["encode_jpeg", "encode_png", "overlay_rgba"]
