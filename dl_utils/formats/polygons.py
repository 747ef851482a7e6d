"""One polygon per instance, as YOLO-seg label rows need it: masks with holes and several parts.

A YOLO-seg row holds exactly one ring, and Ultralytics rasterises it with ``cv2.fillPoly``, whose
scan-line fill is even-odd. A mask made of several parts, or with holes, therefore becomes one ring
by *zero-width bridges*: the rings are joined one after the other at their closest pair of vertices,
walking out along the bridge, once round the joined ring and back along the same bridge. A bridge
walked there and back encloses no area, so even-odd filling keeps a hole empty and each part filled;
only the bridge's own 1-pixel line is drawn. Ultralytics does the same for COCO polygons of several
parts (``ultralytics.data.converter.merge_multi_segment``); here the holes are joined too, since a
mask (unlike a COCO polygon) has them.

Vertices are pixel centres, as OpenCV's contours give them (the convention of
:func:`dl_utils.cv_utils.mask_to_polygons`): re-rasterised with ``cv2.fillPoly`` the ring gives the
mask back, boundary pixels included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from ..annotations import box_from_mask


@dataclass
class Ring:
    """The joined ring of one instance (``points``: an ``(N, 2)`` float array, ``None`` when every
    part degenerated) and how many parts or holes were dropped for having fewer than 3 vertices."""

    points: np.ndarray | None
    dropped: int = 0


def _contours(mask: np.ndarray) -> tuple[list[np.ndarray], list[int], int]:
    """The contours of ``mask`` (``cv2.RETR_CCOMP``: outer outlines and their holes, every corner of
    the 8-connected outline kept), each an ``(N, 2)`` int array, with each one's parent (-1 for an
    outer outline, else the index of the outline it is a hole of); and how many had < 3 vertices (a
    lone pixel or a 1-pixel line: nothing a polygon row can hold), which are left out."""
    box = box_from_mask(mask)
    if box is None:
        return [], [], 0
    x1, y1, x2, y2 = (int(v) for v in box)
    crop = np.ascontiguousarray(mask[y1:y2, x1:x2]).astype(np.uint8)
    # cropped to the box so findContours scans only the object, not the frame
    found, hier = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE, offset=(x1, y1))
    keep = [k for k, c in enumerate(found) if len(c) >= 3]
    new = {k: n for n, k in enumerate(keep)}
    rings = [found[k].reshape(-1, 2) for k in keep]
    parents = [new.get(int(hier[0][k][3]), -2) if hier[0][k][3] >= 0 else -1 for k in keep]
    # a hole whose outline was dropped cannot be (its outline has >= 3 points when it has a hole)
    parents = [-1 if p == -2 else p for p in parents]
    return rings, parents, len(found) - len(keep)


def mask_rings(mask: np.ndarray) -> tuple[list[np.ndarray], int]:
    """The outlines and holes of ``mask`` (see :func:`_contours`) and how many were dropped."""
    rings, _, dropped = _contours(mask)
    return rings, dropped


def _closest(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Indices ``(i, j)`` of the closest pair ``a[i]``, ``b[j]`` (chunked: long contours would need
    a distance matrix of millions of entries at once)."""
    best, bi, bj = np.inf, 0, 0
    bf = b.astype(np.float64)
    for s in range(0, len(a), 512):
        chunk = a[s:s + 512].astype(np.float64)
        d = ((chunk[:, None, :] - bf[None, :, :]) ** 2).sum(-1)
        k = int(np.argmin(d))
        i, j = divmod(k, d.shape[1])
        if d[i, j] < best:
            best, bi, bj = float(d[i, j]), s + i, j
    return bi, bj


def _bridge(base: np.ndarray, inserts: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, list[int]]:
    """``base`` with each ``(i, loop)`` walked in at ``base[i]`` (``loop`` starts and ends at its own
    bridge vertex): ``... base[i], loop..., base[i], base[i+1] ...``. Returns the ring and the offset
    each original index ``k`` of ``base`` moved by (to find it in the result)."""
    pieces: list[np.ndarray] = []
    shift = np.zeros(len(base) + 1, dtype=np.int64)
    prev = 0
    for i, loop in sorted(inserts, key=lambda t: t[0]):
        pieces.append(base[prev:i + 1])
        pieces.append(loop)
        shift[i + 1:] += len(loop) + 1
        prev = i
    pieces.append(base[prev:])
    return np.concatenate(pieces), shift[:-1].tolist()


def _loop_from(ring: np.ndarray, j: int) -> np.ndarray:
    """``ring`` walked once round from its vertex ``j`` back to it."""
    return np.concatenate([ring[j:], ring[: j + 1]])


#: above this many parts the bridges follow the parts' order (a chain) instead of the shortest tree
TREE_PARTS = 64


def _tree(outers: Sequence[np.ndarray]) -> list[tuple[int, int, int, int]]:
    """Which part is bridged to which: ``(parent, child, i, j)`` with ``i`` the parent's vertex and
    ``j`` the child's. Each bridge is drawn as a 1-pixel line, so the parts are joined by the
    shortest tree of bridges (Prim's, from the part with the most vertices); past
    :data:`TREE_PARTS` parts, each part to the next in order (a chain, as Ultralytics does)."""
    n = len(outers)
    if n > TREE_PARTS:
        return [(k, k + 1, *_closest(outers[k], outers[k + 1])) for k in range(n - 1)]
    pair: dict[tuple[int, int], tuple[float, int, int]] = {}
    for a in range(n):
        for b in range(a + 1, n):
            i, j = _closest(outers[a], outers[b])
            d = float(((outers[a][i] - outers[b][j]) ** 2).sum())
            pair[a, b] = (d, i, j)
            pair[b, a] = (d, j, i)
    root = max(range(n), key=lambda k: len(outers[k]))
    inside, edges = {root}, []
    while len(inside) < n:
        _, a, b = min((pair[a, b][0], a, b) for a in inside for b in range(n) if b not in inside)
        edges.append((a, b, pair[a, b][1], pair[a, b][2]))
        inside.add(b)
    return edges


def join_parts(outers: Sequence[np.ndarray], holes: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """One ring from outlines and their holes by zero-width bridges (see the module doc).

    Each hole is bridged to its own outline at their closest pair of vertices; the parts are joined
    by the shortest tree of bridges between their closest vertices (:func:`_tree`). Distances are
    taken between the original outlines only, so the work grows with the size of neighbours, not
    of the whole joined ring."""
    outs = [np.asarray(o, dtype=np.float64).reshape(-1, 2) for o in outers]
    pieces: list[np.ndarray] = []
    hole_shift: list[list[int]] = []
    for o, hs in zip(outs, holes):
        inserts = []
        for h in hs:
            hh = np.asarray(h, dtype=np.float64).reshape(-1, 2)
            i, j = _closest(o, hh)
            inserts.append((i, _loop_from(hh, j)))
        piece, shift = _bridge(o, inserts)
        pieces.append(piece)
        hole_shift.append(shift)
    if len(outs) == 1:
        return pieces[0]
    edges = _tree(outs)
    children: dict[int, list[tuple[int, int, int]]] = {}
    for a, b, i, j in edges:
        children.setdefault(a, []).append((b, i, j))
    root = edges[0][0]

    def build(k: int) -> tuple[np.ndarray, list[int]]:
        """Part ``k`` with its holes and its subtree walked in; and where each original vertex of
        its outline is in that ring."""
        hs = hole_shift[k]
        inserts = []
        for c, i, j in children.get(k, []):
            ring_c, pos_c = build(c)
            inserts.append((i + hs[i], _loop_from(ring_c, pos_c[j])))
        ring, shift = _bridge(pieces[k], inserts)
        return ring, [m + hs[m] + shift[m + hs[m]] for m in range(len(outs[k]))]

    return build(root)[0]


def join_rings(rings: Sequence[np.ndarray]) -> np.ndarray:
    """One ring from several rings (parts, no holes) by zero-width bridges."""
    return join_parts(rings, [[] for _ in rings])


def mask_ring(mask: np.ndarray) -> Ring:
    """The single ring a YOLO-seg row writes for a mask (parts and holes bridged)."""
    rings, parents, dropped = _contours(mask)
    outers = [k for k, p in enumerate(parents) if p == -1]
    if not outers:
        return Ring(None, dropped)
    holes = [[rings[h] for h, p in enumerate(parents) if p == k] for k in outers]
    return Ring(join_parts([rings[k] for k in outers], holes), dropped)


def polygon_ring(rings: Sequence[Sequence[float]]) -> Ring:
    """The single ring for a stored polygon (flat ``[x0, y0, ...]`` rings, used as they are;
    several rings are bridged, rings of < 3 points dropped)."""
    keep: list[np.ndarray] = []
    dropped = 0
    for r in rings:
        a = np.asarray(r, dtype=np.float64).reshape(-1, 2)
        if len(a) < 3:
            dropped += 1
            continue
        keep.append(a)
    if not keep:
        return Ring(None, dropped)
    return Ring(join_rings(keep), dropped)
