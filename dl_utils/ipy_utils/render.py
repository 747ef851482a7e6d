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

import struct
import zlib
from collections.abc import Iterable, Mapping

import cv2
import numpy as np

from ..annotations import Instance
from ..cv_utils import color_for_index, draw_overlay
from ..errors import InputError
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


def is_identity(view: View) -> bool:
    """True when canvas pixel (x, y) is source pixel (x, y) (1:1, no zoom, no pan)."""
    return view.k == 1.0 and view.x0 == 0 and view.y0 == 0 and view.canvas_size == (view.width, view.height)


def display_mask(mask: np.ndarray, view: View) -> np.ndarray:
    """A source-size bool mask mapped to the canvas (a display pixel is set iff its source pixel is)."""
    if is_identity(view):  # the common 1:1 case: no gather (a view, not a copy; callers only read it)
        return mask
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
    region, (x, y) = overlay_region(instances, view, colors=colors, alpha=alpha, contour_only=contour_only,
                                    selected=selected)
    out = np.zeros((ch, cw, 4), np.uint8)
    out[y:y + region.shape[0], x:x + region.shape[1]] = region
    return out


def overlay_region(
    instances: Iterable[Instance],
    view: View,
    *,
    colors: Mapping[int, str] | None = None,
    alpha: float = 0.45,
    contour_only: bool = False,
    selected: int | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`overlay_rgba` cropped to where something is drawn: ``(rgba, (x, y))`` of its top-left.

    Everything outside the region is transparent, so the widget sends just this part. An empty
    overlay is a 1x1 transparent region.
    """
    idx, palette, at = overlay_indexed(instances, view, colors=colors, alpha=alpha, contour_only=contour_only,
                                       selected=selected)
    return np.asarray(palette, np.uint8).reshape(-1, 4)[idx], at


#: the selected object's contour: its 1 px contour dilated by this (3 px wide; drawContours' own
#: thickness 3 draws a round-capped line per segment, 20x slower on the thousands of contours of a
#: ragged mask)
SELECTED_KERNEL = np.ones((3, 3), np.uint8)
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def contour_pixels(mask: np.ndarray) -> np.ndarray:
    """The mask's 1 px outline as uint8 0/1: mask pixels with a 4-neighbour outside the mask (the
    array's edge counts as outside).

    These are exactly the pixels ``cv2.drawContours(cv2.findContours(mask, RETR_LIST,
    CHAIN_APPROX_SIMPLE), thickness=1, LINE_8)`` draws (tests/test_click_path.py checks it on ragged
    and noise masks), at a tenth of the time: one erosion instead of tracing thousands of borders.
    """
    u = mask.view(np.uint8)
    inner = np.asarray(cv2.erode(u, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0), np.uint8)
    return np.asarray(u & ~inner, np.uint8)

#: most objects :func:`overlay_indexed` draws on one frame (two palette entries each, 0 = clear)
MAX_INDEXED_OBJECTS = 127


def overlay_indexed(
    instances: Iterable[Instance],
    view: View,
    *,
    colors: Mapping[int, str] | None = None,
    alpha: float = 0.45,
    contour_only: bool = False,
    selected: int | None = None,
) -> tuple[np.ndarray, list[tuple[int, int, int, int]], tuple[int, int]]:
    """The overlay as a palette image: ``(indices uint8, palette RGBA, (x, y))``, cropped as
    :func:`overlay_region`.

    Index 0 is transparent, ``2k + 1`` / ``2k + 2`` the fill / contour of the k-th object drawn. One
    byte per pixel makes filling, contouring and PNG-encoding about four times cheaper than RGBA,
    which is most of what a click costs besides SAM2 (docs/benchmarks.md).
    """
    masks = [(i.object_id, display_mask(i.mask, view)) for i in instances
             if not i.is_empty and i.mask is not None]
    return overlay_indexed_masks(masks, view.canvas_size, colors=colors, alpha=alpha, contour_only=contour_only,
                                 selected=selected)


def overlay_indexed_masks(
    masks: Iterable[tuple[int, np.ndarray]],
    canvas_size: tuple[int, int],
    *,
    colors: Mapping[int, str] | None = None,
    alpha: float = 0.45,
    contour_only: bool = False,
    selected: int | None = None,
) -> tuple[np.ndarray, list[tuple[int, int, int, int]], tuple[int, int]]:
    """:func:`overlay_indexed` from masks already at display size: ``(object id, bool (canvas_h,
    canvas_w))`` pairs, e.g. :func:`display_mask` of each instance.

    Why apart: a click changes one object, so the widget keeps the other objects' display masks of the
    shown frame and maps only the clicked object's new mask (no store read, no RLE decode, no gather of
    the unchanged ones); the result is the same as :func:`overlay_indexed` on the same instances.
    """
    cw, ch = canvas_size
    colors = colors or {}
    a = round(float(alpha) * 255)
    items = sorted(masks, key=lambda om: om[0] == selected)  # stable: selected last, on top
    shown = []
    x1, y1, x2, y2 = cw, ch, 0, 0
    for oid, m in items:
        rows = np.flatnonzero(m.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(m.any(axis=0))
        pad = 3 if oid == selected else 1  # contours are drawn centred on the edge
        x1, y1 = min(x1, max(0, int(cols[0]) - pad)), min(y1, max(0, int(rows[0]) - pad))
        x2, y2 = max(x2, min(cw, int(cols[-1]) + 1 + pad)), max(y2, min(ch, int(rows[-1]) + 1 + pad))
        shown.append((oid, m))
    palette: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)]
    if not shown:
        return np.zeros((1, 1), np.uint8), palette, (0, 0)
    if len(shown) > MAX_INDEXED_OBJECTS:
        raise InputError(f"{len(shown)} objects on one frame; the overlay draws at most {MAX_INDEXED_OBJECTS}")
    out = np.zeros((y2 - y1, x2 - x1), np.uint8)
    for k, (oid, m) in enumerate(shown):
        sub = m[y1:y2, x1:x2]
        r, g, b = (int((colors.get(oid) or color_for_index(oid))[j:j + 2], 16) for j in (1, 3, 5))
        palette += [(r, g, b, a), (r, g, b, 255)]
        if not contour_only and a > 0:
            out[sub] = 2 * k + 1
        line = contour_pixels(sub)
        if oid == selected:  # the 1 px contour widened by a 3x3 square: a 3 px band centred on it
            line = cv2.dilate(line, SELECTED_KERNEL)
        np.copyto(out, np.uint8(2 * k + 2), where=line.view(bool))
    return out, palette, (x1, y1)


def encode_indexed_png(indices: np.ndarray, palette: Iterable[tuple[int, int, int, int]], level: int = 1) -> bytes:
    """A palette PNG with per-entry alpha (tRNS): 8-bit indices, no row filter, zlib's run-length
    strategy (``Z_RLE``) at ``level``.

    Written with :mod:`zlib` rather than Pillow: a mask layer is long runs of few values, which
    ``Z_RLE`` compresses about as small as the default strategy at a fraction of the time (on a
    ragged 1280x720 mask, ~3 ms against Pillow's ~20 ms for the same bytes within 5%; Pillow reads
    these files back exactly, tests/test_ipy_utils.py), and the encode sits between SAM2 and the mask
    on screen.
    """
    idx = np.ascontiguousarray(indices, np.uint8)
    if idx.ndim != 2:
        raise InputError(f"overlay indices have shape {idx.shape}; give a 2-D uint8 array")
    pal = [tuple(int(v) for v in c) for c in palette]
    if not 1 <= len(pal) <= 256:
        raise InputError(f"a palette PNG holds 1 to 256 colours, not {len(pal)}")
    h, w = idx.shape
    rows = np.zeros((h, w + 1), np.uint8)  # each row starts with its filter type: 0 (none)
    rows[:, 1:] = idx
    z = zlib.compressobj(int(level), zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = z.compress(rows.data) + z.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"".join((b"\x89PNG\r\n\x1a\n",
                     chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)),  # 8-bit, palette
                     chunk(b"PLTE", bytes(v for c in pal for v in c[:3])),
                     chunk(b"tRNS", bytes(c[3] for c in pal)),
                     chunk(b"IDAT", data), chunk(b"IEND", b"")))


def encode_png(rgba: np.ndarray, level: int = 1) -> bytes:
    """Fast lossless PNG (zlib level 1: ~10x faster than PIL's default on a 1280x720 layer)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), [cv2.IMWRITE_PNG_COMPRESSION, level])
    assert ok
    return buf.tobytes()


def encode_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


__all__ += ["MAX_INDEXED_OBJECTS", "SELECTED_KERNEL", "contour_pixels", "encode_indexed_png", "encode_jpeg", "encode_png", "is_identity",
            "overlay_indexed", "overlay_indexed_masks", "overlay_region", "overlay_rgba"]
