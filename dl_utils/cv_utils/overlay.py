"""Overlays of instances on frames, contact sheets of frames, and image load/save.

All images are **RGB** ``uint8`` ``(height, width, 3)`` arrays (what :mod:`dl_utils.video_utils`
yields); only :func:`save_image` / :func:`load_image` talk to OpenCV's BGR world.

Text is drawn with OpenCV's Hershey font, which has ASCII glyphs only: other characters in a label
are shown as ``?``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np

from ..annotations import Box, Instance, ObjectInfo, normalize_color
from ..errors import InputError, MaskError, MediaError
from .colors import color_for_index
from .geometry import mask_to_box, polygons_to_mask

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _rgb_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """A C-contiguous RGB uint8 copy; grey is expanded, an alpha channel is dropped."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise InputError(f"{what} has dtype {a.dtype}; expected uint8 RGB (convert or scale it first)")
    if a.ndim == 2:
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if a.ndim == 3 and a.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(a, 3, axis=2))
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return np.array(a[:, :, :3], order="C", copy=True)
    raise InputError(f"{what} has shape {a.shape}; expected (height, width, 3) RGB")


def _rgb(color: Any, where: str) -> tuple[int, int, int]:
    try:
        c = normalize_color(color)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    assert c is not None
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def _ascii(text: str) -> str:
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)


def _as_instances(instances: Any) -> list[Instance]:
    """Instances / list of Instance, or a mask stack / list of masks (object id = position)."""
    if isinstance(instances, np.ndarray):
        stack = instances[None] if instances.ndim == 2 else instances
        if stack.ndim != 3:
            raise MaskError(f"mask stack has shape {instances.shape}; expected (N, height, width)")
        return [Instance(i, mask=m) for i, m in enumerate(stack)]
    items = list(instances)
    if all(isinstance(i, Instance) for i in items):
        return items
    if all(isinstance(i, np.ndarray) for i in items):
        return [Instance(i, mask=m) for i, m in enumerate(items)]
    raise InputError(
        "instances must be Instances, a list of Instance, a (N, H, W) mask stack or a list of masks;"
        " got a list mixing " + ", ".join(sorted({type(i).__name__ for i in items}))
    )


def _ints_box(box: Sequence[float], h: int, w: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return max(0, x1), max(0, y1), min(w, x2), min(h, y2)


def _text_scale(h: int, w: int) -> tuple[float, int]:
    """Font scale and stroke growing with the frame so a tag stays readable from 100 px to 4K."""
    scale = float(np.clip(min(h, w) / 900.0, 0.35, 3.0))
    return scale, max(1, int(round(scale * 1.6)))


def _draw_tag(img: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    """A filled tag in the object's colour with black or white text, above (x, y) when it fits."""
    h, w = img.shape[:2]
    scale, stroke = _text_scale(h, w)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, stroke)
    pad = max(2, int(round(th * 0.3)))
    tag_w, tag_h = tw + 2 * pad, th + base + 2 * pad
    tx = int(np.clip(x, 0, max(0, w - tag_w)))
    ty = y - tag_h if y - tag_h >= 0 else y  # above the box, else inside its top edge
    ty = int(np.clip(ty, 0, max(0, h - tag_h)))
    cv2.rectangle(img, (tx, ty), (tx + tag_w - 1, ty + tag_h - 1), color, -1)
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
    cv2.putText(img, text, (tx + pad, ty + pad + th), _FONT, scale, ink, stroke, cv2.LINE_AA)


@dataclass(frozen=True)
class _Style:
    """How :func:`draw_overlay` draws every instance (its keyword arguments, checked once)."""

    alpha: float
    contour: bool
    thickness: int
    boxes: bool
    labels: bool
    scores: bool


#: A tag to draw once every instance is drawn: text, top-left x, y of the box, colour.
_Tag = tuple[str, int, int, tuple[int, int, int]]


def draw_overlay(
    image: np.ndarray,
    instances: Any,
    objects: "Mapping[int, ObjectInfo | str] | Iterable[ObjectInfo] | None" = None,
    *,
    alpha: float = 0.45,
    contour: bool = True,
    thickness: int = 2,
    boxes: bool = False,
    labels: bool = True,
    scores: bool = False,
    colors: "Mapping[int, Any] | Sequence[Any] | None" = None,
) -> np.ndarray:
    """Draw instances on a copy of an RGB frame and return it (the input is not modified).

    ``instances``: :class:`~dl_utils.annotations.Instances`, a list of
    :class:`~dl_utils.annotations.Instance`, or a bool mask stack ``(N, H, W)`` / list of masks (object
    id = position). ``objects`` maps object id to :class:`~dl_utils.annotations.ObjectInfo` (or to a
    label string) for colour and label text; a list of ``ObjectInfo`` works too.

    Colour per object: ``ObjectInfo.color``, else ``colors[object_id]`` (mapping) or
    ``colors[position]`` (list), else :func:`color_for_index` of the object id. Masks and polygons are
    filled with ``out = image * (1 - alpha) + colour * alpha`` (rounded), then outlined in full colour
    (``contour``, ``thickness`` px); box-only instances are drawn as rectangles; ``boxes=True`` adds the
    box of every instance. ``labels`` puts the label (object id when unknown), plus the score when
    ``scores``, on a filled tag at the top-left of the box. Empty instances draw nothing. Instances are
    drawn in order, later ones on top; tags go on top of everything.
    """
    out = _rgb_image(image)
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha={alpha} is outside 0..1")
    items = _as_instances(instances)
    if objects is not None and not isinstance(objects, Mapping):
        objects = {o.id: o for o in objects}
    objects = objects or {}
    style = _Style(alpha, contour, thickness, boxes, labels, scores)

    tags: list[_Tag] = []
    for pos, inst in enumerate(items):
        tag = _draw_instance(out, inst, pos, objects, colors, style)
        if tag is not None:
            tags.append(tag)
    for text, x, y, rgb in tags:
        _draw_tag(out, text, x, y, rgb)
    return out


def _draw_instance(
    out: np.ndarray,
    inst: Instance,
    pos: int,
    objects: "Mapping[int, ObjectInfo | str]",
    colors: "Mapping[int, Any] | Sequence[Any] | None",
    style: _Style,
) -> _Tag | None:
    """Draw one instance on ``out``; its tag is returned, not drawn, so tags end up on top."""
    h, w = out.shape[:2]
    oid = inst.object_id
    if inst.mask is not None and inst.mask.shape != (h, w):
        raise MaskError(
            f"object {oid}: mask is {inst.mask.shape[1]}x{inst.mask.shape[0]} but the image is"
            f" {w}x{h}; resize the mask (cv_utils.resize_mask) or draw on the frame it belongs to"
        )
    if inst.is_empty:
        return None
    label, rgb = _label_and_colour(oid, pos, objects, colors)
    mask, rings, box = _instance_geometry(inst, h, w)
    if box is None:
        return None
    x1, y1, x2, y2 = _ints_box(box, h, w)
    if mask is not None and x2 > x1 and y2 > y1:
        _tint_and_outline(out, mask, rings, (x1, y1, x2, y2), rgb, style)
    if (mask is None or style.boxes) and x2 > x1 and y2 > y1:
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), rgb, max(1, int(style.thickness)), cv2.LINE_8)
    if style.labels or (style.scores and inst.score is not None):
        parts = []
        if style.labels:
            parts.append(label if label is not None else str(oid))
        if style.scores and inst.score is not None:
            parts.append(f"{inst.score:.2f}")
        return (_ascii(" ".join(parts)), x1, y1, rgb)
    return None


def _label_and_colour(
    oid: int,
    pos: int,
    objects: "Mapping[int, ObjectInfo | str]",
    colors: "Mapping[int, Any] | Sequence[Any] | None",
) -> tuple[str | None, tuple[int, int, int]]:
    """The object's label text (None: unknown) and colour, by the precedence the docstring of
    :func:`draw_overlay` gives."""
    info = objects.get(oid)
    label = info.label if isinstance(info, ObjectInfo) else (str(info) if info is not None else None)
    color = None
    if isinstance(info, ObjectInfo) and info.color:
        color = info.color
    elif colors is not None:
        if isinstance(colors, Mapping):
            color = colors.get(oid)
        elif pos < len(colors):
            color = colors[pos]
    return label, _rgb(color if color is not None else color_for_index(oid), f"colour of object {oid}")


def _instance_geometry(
    inst: Instance, h: int, w: int
) -> tuple[np.ndarray | None, list[np.ndarray], Box | None]:
    """Mask (a polygon rasterised), the polygon's rings in pixels (outlined as drawn, not traced
    from the mask) and the box (from the mask when the instance has none)."""
    mask = inst.mask
    rings: list[np.ndarray] = []
    if mask is None and inst.polygon:
        mask = polygons_to_mask(inst.polygon, h, w)
        rings = [
            np.floor(np.asarray(r, dtype=np.float64).reshape(-1, 2) + 0.5).astype(np.int32)
            for r in inst.polygon
        ]
    box = inst.box
    if box is None and mask is not None:
        box = mask_to_box(mask)
    return mask, rings, box


def _tint_and_outline(
    out: np.ndarray,
    mask: np.ndarray,
    rings: list[np.ndarray],
    box: tuple[int, int, int, int],
    rgb: tuple[int, int, int],
    style: _Style,
) -> None:
    """Blend the colour into the mask's pixels and draw its outline; only the box is touched."""
    x1, y1, x2, y2 = box
    region = out[y1:y2, x1:x2]
    m = mask[y1:y2, x1:x2]
    if style.alpha > 0:
        px = region[m].astype(np.float32)
        tint = np.float32(style.alpha) * np.array(rgb, np.float32)
        region[m] = np.rint(px * np.float32(1.0 - style.alpha) + tint).astype(np.uint8)
    if style.contour and style.thickness > 0:
        if rings:
            cv2.polylines(out, rings, True, rgb, int(style.thickness), cv2.LINE_8)
        else:
            cs, _ = cv2.findContours(
                np.ascontiguousarray(m).view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE,
                offset=(x1, y1),
            )
            cv2.drawContours(out, cs, -1, rgb, int(style.thickness), cv2.LINE_8)


def _title_text(title: object) -> str:
    if title is None:
        return ""
    if isinstance(title, (int, np.integer)) and not isinstance(title, bool):
        return f"frame {int(title)}"
    return _ascii(str(title))


def contact_sheet(
    images: Iterable[Any],
    *,
    columns: int = 4,
    width: int = 320,
    titles: "Sequence[Any] | None" = None,
    pad: int = 4,
    background: Sequence[int] = (32, 32, 32),
) -> np.ndarray:
    """A grid of thumbnails (RGB) for a quick look at many frames, e.g. overlays of a video.

    ``images`` items are RGB arrays or ``(title, array)`` pairs; an int title reads ``frame N``.
    ``titles`` gives titles for items that have none. Each thumbnail is ``width`` px wide with its
    aspect ratio kept; cells are as tall as the tallest thumbnail (plus a title strip when any item
    has a title); thumbnails sit top-left in their cell. Sheet size:
    ``cols * width + (cols + 1) * pad`` by ``rows * (cell_h + title_h) + (rows + 1) * pad`` with
    ``cols = min(columns, n)`` and ``rows = ceil(n / columns)``.
    """
    if columns < 1 or width < 1 or pad < 0:
        raise InputError(
            f"contact_sheet needs columns >= 1, width >= 1, pad >= 0 (got {columns}, {width}, {pad})"
        )
    entries: list[tuple[Any, np.ndarray]] = []
    for i, item in enumerate(images):
        if isinstance(item, tuple) and len(item) == 2 and not isinstance(item[0], np.ndarray):
            title, arr = item
        else:
            title, arr = None, item
        if title is None and titles is not None and i < len(titles):
            title = titles[i]
        entries.append((title, _rgb_image(arr, f"image {i}")))
    if not entries:
        raise InputError("contact_sheet got no images")
    thumbs = []
    for i, (_, img) in enumerate(entries):
        ih, iw = img.shape[:2]
        if ih == 0 or iw == 0:
            raise InputError(f"image {i} is empty ({iw}x{ih})")
        th = max(1, int(round(ih * width / iw)))
        interp = cv2.INTER_AREA if width < iw else cv2.INTER_LINEAR
        thumbs.append(cv2.resize(img, (width, th), interpolation=interp))
    texts = [_title_text(t) for t, _ in entries]
    scale = float(np.clip(width / 640.0, 0.35, 1.5))
    stroke = max(1, int(round(scale * 1.5)))
    title_h = 0
    if any(texts):
        (_, t_h), base = cv2.getTextSize("Ag", _FONT, scale, stroke)
        title_h = t_h + base + 6
    cell_h = max(t.shape[0] for t in thumbs)
    n = len(thumbs)
    cols = min(columns, n)
    rows = math.ceil(n / columns)
    sheet_w = cols * width + (cols + 1) * pad
    sheet_h = rows * (cell_h + title_h) + (rows + 1) * pad
    bg = tuple(int(v) for v in background)
    if len(bg) != 3 or not all(0 <= v <= 255 for v in bg):
        raise InputError(f"background {background!r} is not an (r, g, b) triple of 0..255")
    sheet = np.empty((sheet_h, sheet_w, 3), np.uint8)
    sheet[:] = bg
    luma = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    ink = (0, 0, 0) if luma > 140 else (235, 235, 235)
    for k, (thumb, text) in enumerate(zip(thumbs, texts)):
        r, c = divmod(k, columns)
        x = pad + c * (width + pad)
        y = pad + r * (cell_h + title_h + pad)
        if text:
            (tw, t_h), base = cv2.getTextSize(text, _FONT, scale, stroke)
            while tw > width and len(text) > 1:  # cut long titles to the cell
                text = text[:-1]
                (tw, t_h), base = cv2.getTextSize(text, _FONT, scale, stroke)
            cv2.putText(sheet, text, (x, y + t_h + 2), _FONT, scale, ink, stroke, cv2.LINE_AA)
        sheet[y + title_h : y + title_h + thumb.shape[0], x : x + width] = thumb
    return sheet


def save_image(path: "str | os.PathLike[str]", rgb: np.ndarray) -> Path:
    """Write an RGB image; the format follows the extension (.png, .jpg, ...). Creates the folder."""
    p = Path(path)
    img = _rgb_image(rgb)
    ext = p.suffix.lower()
    if not ext:
        raise MediaError(f"cannot save image to {p}: give the file an extension such as .png or .jpg")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    except cv2.error:
        raise MediaError(
            f"cannot save image to {p}: OpenCV cannot write {ext!r} files; use .png or .jpg"
        ) from None
    except OSError as e:
        raise MediaError(f"cannot save image to {p}: {e.strerror or e}") from None
    if not ok:
        raise MediaError(f"cannot save image to {p}: encoding as {ext!r} failed; use .png or .jpg")
    try:
        buf.tofile(str(p))  # imencode + tofile: also works for non-ASCII paths
    except OSError as e:
        raise MediaError(
            f"cannot save image to {p}: {e.strerror or e}; check the folder is writable"
        ) from None
    return p


def load_image(path: "str | os.PathLike[str]") -> np.ndarray:
    """Read an image file as RGB ``uint8`` (EXIF orientation applied, alpha dropped)."""
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"image {p} does not exist (or is not a file); check the path")
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as e:
        raise MediaError(f"cannot read image {p}: {e.strerror or e}") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise MediaError(f"cannot decode image {p}: not an image format OpenCV reads, or the file is damaged")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


__all__ = ["draw_overlay", "contact_sheet", "save_image", "load_image"]
