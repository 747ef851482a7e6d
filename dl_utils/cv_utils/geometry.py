"""Mask geometry: polygons <-> masks, boxes, areas, IoU, resizing.

Conventions (those of :mod:`dl_utils.annotations`):

* masks are ``bool`` ``(height, width)`` arrays of the full frame;
* boxes are ``(x1, y1, x2, y2)`` with exclusive right/bottom edges;
* polygons are lists of flat rings ``[x0, y0, x1, y1, ...]`` (``Instance.polygon``) whose vertices
  are **pixel centres** as OpenCV's ``findContours`` reports them: a vertex ``(x, y)`` is the centre of
  pixel column ``x``, row ``y``.

**Holes are filled.** CVAT polygons have no holes, so :func:`mask_to_polygons` returns one ring per
outer contour (``cv2.RETR_EXTERNAL``) and whatever lies inside a ring, holes included, is part of the
shape. A mask with holes does not survive mask -> polygons -> mask; export it as a mask instead.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import cv2
import numpy as np
from pycocotools import mask as _coco

from ..annotations import Box, box_from_mask
from ..errors import MaskError
from .rle import encode_coco_rle

# Half-width of the tiny quadrilateral drawn around a contour that has fewer than 3 vertices
# (a one-pixel component, or a straight one-pixel-wide line). Below 0.5 so every vertex rounds back
# to the pixel centre it came from and the ring rasterises to exactly the component's pixels.
_DEGENERATE_HALF = 0.25


def _as_mask(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise MaskError(f"{what} has shape {m.shape}; expected a 2-D (height, width) array")
    return m if m.dtype == np.bool_ else m != 0


def _degenerate_ring(pts: np.ndarray) -> np.ndarray:
    """A >= 3-vertex ring for a 1- or 2-vertex contour (a pixel, or a straight thin line).

    CVAT needs at least 3 points per polygon; we emit a thin quadrilateral around the segment whose
    vertices lie within 0.25 px of the original pixel centres, so it has a positive area, is visible
    in CVAT and rasterises back to exactly the original pixels.
    """
    p: np.ndarray = pts[0].astype(np.float64)
    q: np.ndarray = pts[-1].astype(np.float64)
    d = q - p
    n = np.hypot(*d)
    if n == 0:
        h = _DEGENERATE_HALF
        ring: np.ndarray = p + np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
        return ring
    u = d / n * _DEGENERATE_HALF
    v = np.array([-u[1], u[0]])  # normal, same length
    return np.array([p - u - v, q + u - v, q + u + v, p - u + v])


def mask_to_polygons(
    mask: np.ndarray, *, tolerance: float = 0.0, min_area: float = 0.0
) -> list[list[float]]:
    """One flat ring ``[x0, y0, x1, y1, ...]`` per connected outer contour of ``mask``.

    * Holes are filled (outer contours only, ``cv2.RETR_EXTERNAL``): CVAT polygons cannot have holes.
    * ``tolerance`` > 0 simplifies each ring with ``cv2.approxPolyDP`` (epsilon in pixels); 0 keeps
      every corner of the 8-connected contour (``CHAIN_APPROX_SIMPLE``), which makes
      ``polygons_to_mask(mask_to_polygons(m), h, w)`` equal the hole-filled ``m`` exactly.
    * A contour with fewer than 3 vertices (a single pixel, a straight 1-px line) becomes a thin
      quadrilateral around it (vertices within 0.25 px of the pixel centres), so every component
      yields a valid ring of >= 3 points that rasterises back to the same pixels.
    * ``min_area`` drops rings whose polygon area (shoelace, px^2, through pixel centres, so smaller
      than the pixel count: a 1-pixel component measures 0.25) is below it.

    Coordinates are pixel centres, as OpenCV gives them. Rings are ordered as OpenCV returns them.
    """
    m = _as_mask(mask)
    box = box_from_mask(m)
    if box is None:
        return []
    x1, y1, x2, y2 = (int(v) for v in box)
    crop = np.ascontiguousarray(m[y1:y2, x1:x2]).view(np.uint8)
    # cropping to the box makes findContours scan only the object, not the whole frame
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x1, y1))
    rings: list[list[float]] = []
    for c in contours:
        if tolerance > 0:
            c = cv2.approxPolyDP(c, float(tolerance), True)
        pts = c.reshape(-1, 2)
        if len(pts) < 3:
            pts = _degenerate_ring(pts)
        pts = pts.astype(np.float64)
        if min_area > 0 and cv2.contourArea(pts.astype(np.float32)) < min_area:
            continue
        rings.append(pts.ravel().tolist())
    return rings


def _rings(
    polygons: "Sequence[Sequence[float]] | Sequence[np.ndarray] | np.ndarray",
) -> list[np.ndarray]:
    """Normalise the accepted polygon inputs to a list of (N, 2) float arrays."""
    rings: list[Any]
    if isinstance(polygons, np.ndarray):
        if polygons.ndim == 2 and polygons.shape[1] == 2:
            return [polygons.astype(np.float64)]
        if polygons.ndim == 1:
            rings = [polygons]
        else:
            raise MaskError(
                f"polygon array has shape {polygons.shape}; expected (N, 2) or a flat ring"
            )
    else:
        rings = list(polygons)
    if rings and np.isscalar(rings[0]):
        rings = [rings]  # one flat ring
    out = []
    for i, ring in enumerate(rings):
        try:
            a = np.asarray(ring, dtype=np.float64)
        except (TypeError, ValueError):
            raise MaskError(f"polygon ring {i} holds non-numeric values") from None
        if a.ndim == 1:
            if a.size % 2:
                raise MaskError(
                    f"polygon ring {i} has {a.size} values; a flat ring is x0, y0, x1, y1, ... (even)"
                )
            a = a.reshape(-1, 2)
        elif a.ndim != 2 or a.shape[1] != 2:
            raise MaskError(f"polygon ring {i} has shape {a.shape}; expected (N, 2) or a flat ring")
        if len(a) < 3:
            raise MaskError(f"polygon ring {i} has {len(a)} points; a polygon needs at least 3")
        if not np.all(np.isfinite(a)):
            raise MaskError(f"polygon ring {i} holds NaN or infinite coordinates")
        out.append(a)
    return out


def polygons_to_mask(
    polygons: "Sequence[Sequence[float]] | Sequence[np.ndarray] | np.ndarray", height: int, width: int
) -> np.ndarray:
    """Rasterise rings (flat ``[x0, y0, ...]`` lists or ``(N, 2)`` arrays) into a bool mask.

    The result is the **union** of the filled rings (each ring is filled on its own, so overlapping
    or nested rings never cut holes). Vertices are pixel centres, rounded half up
    (``floor(v + 0.5)``) before ``cv2.fillPoly``; parts outside the frame are clipped. A single
    flat ring or a single ``(N, 2)`` array is accepted too.
    """
    if height <= 0 or width <= 0:
        raise MaskError(f"mask size {width}x{height} is not positive")
    out = np.zeros((int(height), int(width)), dtype=np.uint8)
    lim = 4 * max(height, width) + 16  # keeps int32 fixed-point maths inside fillPoly safe
    for a in _rings(polygons):
        pts = np.clip(np.floor(a + 0.5), -lim, lim).astype(np.int32)
        cv2.fillPoly(out, [pts], 1)
    return out.view(np.bool_)


def box_to_mask(box: "Sequence[float]", height: int, width: int) -> np.ndarray:
    """Bool mask of a box ``(x1, y1, x2, y2)`` (exclusive right/bottom, rounded, clipped to the frame)."""
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise MaskError(f"box {box!r} is not four numbers (x1, y1, x2, y2)") from None
    if not all(np.isfinite(v) for v in (x1, y1, x2, y2)):
        raise MaskError(f"box {box!r} holds NaN or infinite values")
    out = np.zeros((int(height), int(width)), dtype=bool)

    def c(v: float, hi: int) -> int:
        return min(max(int(round(v)), 0), hi)

    out[c(y1, height) : c(y2, height), c(x1, width) : c(x2, width)] = True
    return out


def mask_to_box(mask: np.ndarray) -> Box | None:
    """Tight box ``(x1, y1, x2, y2)`` (exclusive right/bottom) or ``None`` for an empty mask."""
    return box_from_mask(_as_mask(mask))


def mask_area(mask: np.ndarray) -> int:
    """Number of foreground pixels."""
    return int(np.count_nonzero(_as_mask(mask)))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks; **0.0 when both are empty** (nothing to match)."""
    a, b = _as_mask(a, "first mask"), _as_mask(b, "second mask")
    if a.shape != b.shape:
        raise MaskError(f"masks differ in size: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}")
    inter = np.count_nonzero(a & b)
    union = np.count_nonzero(a | b)
    return float(inter / union) if union else 0.0


def _stack(masks: "np.ndarray | Iterable[np.ndarray]", what: str) -> np.ndarray:
    s = np.asarray(masks)
    if s.ndim == 2:
        s = s[None]
    if s.ndim != 3:
        raise MaskError(f"{what} has shape {s.shape}; expected a (N, height, width) stack")
    return s if s.dtype == np.bool_ else s != 0


def masks_iou(
    a: "np.ndarray | Iterable[np.ndarray]", b: "np.ndarray | Iterable[np.ndarray]"
) -> np.ndarray:
    """``(N, M)`` IoU matrix of mask stacks ``(N, H, W)`` and ``(M, H, W)``; 0 where both are empty.

    Masks are COCO-RLE encoded (:func:`~dl_utils.cv_utils.rle.encode_coco_rle`, which scans only each
    mask's box) and compared with ``pycocotools.mask.iou``, whose cost grows with the number of runs,
    not pixels: ~2.5 ms for 10 x 10 SAM-like 1080p masks where a matrix product of the flattened
    masks takes ~35 ms. Masks with very many runs (noise) use that matrix product instead.
    """
    A, B = _stack(a, "first mask stack"), _stack(b, "second mask stack")
    if A.shape[1:] != B.shape[1:]:
        raise MaskError(
            f"mask stacks differ in frame size: {A.shape[2]}x{A.shape[1]} vs {B.shape[2]}x{B.shape[1]}"
        )
    n, m = len(A), len(B)
    h, w = A.shape[1:]
    if n == 0 or m == 0 or h == 0 or w == 0:
        return np.zeros((n, m), dtype=np.float64)
    ra = [encode_coco_rle(x) for x in A]
    rb = [encode_coco_rle(x) for x in B]
    chars = sum(len(r["counts"]) for r in ra) + sum(len(r["counts"]) for r in rb)
    if chars <= (n + m) * (h * w) // 40:
        iou = np.asarray(_coco.iou(ra, rb, [0] * m), dtype=np.float64).reshape(n, m)
        area_a = np.array([_coco.area(r) for r in ra], dtype=np.int64)[:, None]
        area_b = np.array([_coco.area(r) for r in rb], dtype=np.int64)[None, :]
        return np.where((area_a + area_b) > 0, iou, 0.0)
    # many runs: one matrix product of the flattened masks (float32 is exact below 2**24 pixels)
    dt: type[np.floating[Any]] = np.float32 if h * w < 2**24 else np.float64
    Af, Bf = A.reshape(n, -1), B.reshape(m, -1)
    inter = Af.astype(dt) @ Bf.astype(dt).T
    area_a = Af.sum(axis=1, dtype=np.int64)[:, None]
    area_b = Bf.sum(axis=1, dtype=np.int64)[None, :]
    union = area_a + area_b - inter.astype(np.int64)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float64)


def box_iou(
    a: "Sequence[Sequence[float]] | np.ndarray", b: "Sequence[Sequence[float]] | np.ndarray"
) -> np.ndarray:
    """``(N, M)`` IoU of boxes ``(x1, y1, x2, y2)`` (exclusive edges, so area = (x2-x1)*(y2-y1)).

    Degenerate boxes have area 0; a pair with union 0 gets IoU 0.
    """
    A = np.asarray(a, dtype=np.float64).reshape(-1, 4) if len(a) else np.zeros((0, 4))
    B = np.asarray(b, dtype=np.float64).reshape(-1, 4) if len(b) else np.zeros((0, 4))

    def area(X: np.ndarray) -> np.ndarray:
        ar: np.ndarray = np.clip(X[:, 2] - X[:, 0], 0, None) * np.clip(X[:, 3] - X[:, 1], 0, None)
        return ar

    lt = np.maximum(A[:, None, :2], B[None, :, :2])
    rb = np.minimum(A[:, None, 2:], B[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area(A)[:, None] + area(B)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou: np.ndarray = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return iou


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize to ``size = (width, height)``; stays bool.

    Uses ``cv2.INTER_NEAREST_EXACT`` (pixel-centre sampling, the same as Pillow's NEAREST) rather than
    ``INTER_NEAREST``, which is shifted by up to a pixel.
    """
    m = _as_mask(mask)
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise MaskError(f"size {size!r} is not (width, height)") from None
    if w <= 0 or h <= 0:
        raise MaskError(f"target size {w}x{h} is not positive")
    if (h, w) == m.shape:
        return m.copy()
    out = cv2.resize(np.ascontiguousarray(m).view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return out.reshape(h, w).view(np.bool_)


__all__ = [
    "mask_to_polygons",
    "polygons_to_mask",
    "box_to_mask",
    "mask_to_box",
    "mask_area",
    "mask_iou",
    "masks_iou",
    "box_iou",
    "resize_mask",
]
