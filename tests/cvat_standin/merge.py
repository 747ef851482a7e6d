"""Task-level annotations as CVAT builds them: the jobs' annotations merged across job overlaps.

CVAT keeps annotations per job; ``GET /api/tasks/{id}/annotations`` (and every task export) merges
the jobs in order of their start frames (cvat/apps/dataset_manager/task.py ``TaskAnnotation`` →
``AnnotationManager.merge``, rules in cvat/apps/dataset_manager/annotation.py ``ObjectManager``).
This module re-implements those rules for the stand-in:

* objects of the next job starting at or after ``start + overlap`` are added as they are;
* the others (starting inside the overlap) are matched against the objects already merged, frame
  by frame (tracks: all at once), by cost ``1 - similarity`` and an optimal assignment; a match
  under the threshold (shapes and tags 0.25, tracks 0.5) unites the two, the rest are added;
* shape similarity is the IoU for rectangles and polygons of one label and type, and **0 for every
  other type** (masks included: CVAT does not merge masks, they stay twice);
* track similarity compares both tracks' interpolated shapes on every overlap frame (``outside``
  differing or one side missing counts as a full error);
* an already merged track that found no partner gets an ``outside`` shape at ``start + overlap``
  when its last shape is not outside -- the "fragments" a push that does not repeat tracks in
  every job produces.
"""

from __future__ import annotations

import copy
from typing import Any

SHAPE_THRESHOLD = 0.25
TRACK_THRESHOLD = 0.5


# ------------------------------------------------------------------------------------------ geometry
def _poly_iou(a: list[float], b: list[float]) -> float:
    try:
        from shapely import geometry
    except ImportError:  # no shapely: compare the bounding boxes
        return _box_iou(_bbox(a), _bbox(b))
    p0 = geometry.Polygon(list(zip(a[0::2], a[1::2])))
    p1 = geometry.Polygon(list(zip(b[0::2], b[1::2])))
    if not (p0.is_valid and p1.is_valid) or p0.area == 0 or p1.area == 0:
        return 0.0
    inter = p0.intersection(p1).area
    return inter / (p0.area + p1.area - inter)


def _bbox(p: list[float]) -> list[float]:
    xs, ys = p[0::2], p[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def _box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def shape_similarity(s0: dict, s1: dict) -> float:
    if s0.get("type") != s1.get("type") or s0.get("label_id") != s1.get("label_id"):
        return 0.0
    if s0["type"] == "rectangle":
        return _box_iou(list(s0["points"]), list(s1["points"]))
    if s0["type"] == "polygon":
        return _poly_iou(list(s0["points"]), list(s1["points"]))
    return 0.0  # masks, points, polylines, ellipses...: CVAT has no similarity for them


def _interpolated(track: dict, start: int, stop: int) -> dict[int, dict]:
    """The track's visible shapes on frames ``start <= f < stop`` (keyframes and in-betweens)."""
    keys = sorted(track.get("shapes") or [], key=lambda s: s["frame"])
    out: dict[int, dict] = {}
    for f in range(start, stop):
        prev = [s for s in keys if s["frame"] <= f]
        if not prev:
            continue
        s0 = prev[-1]
        if s0.get("outside"):
            continue
        nxt = [s for s in keys if s["frame"] > f]
        pts = list(s0["points"])
        if (s0["frame"] != f and nxt and not nxt[0].get("outside")
                and len(nxt[0]["points"]) == len(pts) and s0["type"] == "rectangle"):
            k = (f - s0["frame"]) / (nxt[0]["frame"] - s0["frame"])
            pts = [a + (b - a) * k for a, b in zip(pts, nxt[0]["points"])]
        out[f] = {**s0, "frame": f, "points": pts, "label_id": track["label_id"]}
    return out


def track_similarity(t0: dict, t1: dict, start: int, overlap: int) -> float:
    if t0.get("label_id") != t1.get("label_id"):
        return 0.0
    stop = start + overlap
    a, b = _interpolated(t0, start, stop), _interpolated(t1, start, stop)
    if not a or not b:
        return 0.0
    count = error = 0
    for f in range(start, stop):
        s0, s1 = a.get(f), b.get(f)
        if s0 is not None and s1 is not None:
            error += 1 - shape_similarity(s0, s1)
            count += 1
        elif s0 is not None or s1 is not None:
            error += 1
            count += 1
    return 1 - error / (count or 1)


# ------------------------------------------------------------------------------------------ merge
def _assign(cost: list[list[float]]) -> list[tuple[int, int]]:
    try:
        import numpy as np
        from scipy.optimize import linear_sum_assignment

        r, c = linear_sum_assignment(np.asarray(cost, dtype=float))
        return list(zip(r.tolist(), c.tolist()))
    except ImportError:  # greedy: cheapest pairs first
        pairs = sorted((cost[i][j], i, j) for i in range(len(cost)) for j in range(len(cost[i])))
        used_i, used_j, out = set(), set(), []
        for _c, i, j in pairs:
            if i not in used_i and j not in used_j:
                used_i.add(i)
                used_j.add(j)
                out.append((i, j))
        return out


def _unite_tracks(t0: dict, t1: dict) -> dict:
    first = t0 if t0["frame"] < t1["frame"] else t1
    shapes = {s["frame"]: s for s in t0["shapes"]}
    for s in t1["shapes"]:
        if s["frame"] not in shapes or shapes[s["frame"]].get("outside"):
            shapes[s["frame"]] = s
    first = dict(first, frame=min(t0["frame"], t1["frame"]),
                 shapes=sorted(shapes.values(), key=lambda s: s["frame"]))
    return first


def _close_track(t: dict, end_frame: int) -> None:
    last = t["shapes"][-1] if t["shapes"] else None
    if last is not None and not last.get("outside"):
        s = copy.deepcopy(last)
        s.update(frame=end_frame, outside=True)
        s.pop("id", None)
        t["shapes"].append(s)


def _merge_section(merged: list[dict], objects: list[dict], start: int, overlap: int, kind: str) -> None:
    new = [o for o in objects if o["frame"] >= start + overlap]
    inner = [o for o in objects if o["frame"] < start + overlap]
    if kind == "tracks":
        old_by = {0: [o for o in merged if o["shapes"] and (o["shapes"][-1]["frame"] >= start
                                                           or not o["shapes"][-1].get("outside"))]}
        int_by = {0: inner} if inner else {}
        old_by = old_by if old_by[0] else {}
    else:
        old_by, int_by = {}, {}
        for o in merged:
            if o["frame"] >= start:
                old_by.setdefault(o["frame"], []).append(o)
        for o in inner:
            if o["frame"] >= start:
                int_by.setdefault(o["frame"], []).append(o)
        inner_before = [o for o in inner if o["frame"] < start]  # cannot happen for a job's own data
        merged.extend(inner_before)
    merged.extend(new)
    if not old_by or not int_by:
        if kind == "tracks":
            for o in old_by.get(0, []):
                _close_track(o, start + overlap)
        merged.extend(o for lst in int_by.values() for o in lst)
        return
    threshold = TRACK_THRESHOLD if kind == "tracks" else SHAPE_THRESHOLD
    for frame, ints in int_by.items():
        olds = old_by.get(frame)
        if not olds:
            merged.extend(ints)
            continue
        if kind == "tracks":
            cost = [[1 - track_similarity(i, o, start, overlap) for o in olds] for i in ints]
        elif kind == "shapes":
            cost = [[1 - shape_similarity(i, o) for o in olds] for i in ints]
        else:
            cost = [[0.0 if i.get("label_id") == o.get("label_id") else 1.0 for o in olds] for i in ints]
        used_i, used_o = set(), set()
        for i, j in _assign(cost):
            if cost[i][j] <= threshold:
                used_i.add(i)
                used_o.add(j)
                if kind == "tracks":
                    united = _unite_tracks(ints[i], olds[j])
                    pos = next(k for k, m in enumerate(merged) if m is olds[j])
                    merged[pos] = united
                    olds[j] = united
                # shapes and tags: the earlier object stays (CVAT keeps the one of lower frame)
        merged.extend(o for k, o in enumerate(ints) if k not in used_i)
        if kind == "tracks":
            for k, o in enumerate(olds):
                if k not in used_o:
                    _close_track(o, start + overlap)


def merge_jobs(jobs: list[tuple[int, dict[str, list]]], overlap: int) -> dict[str, list]:
    """``jobs``: (start frame, {"tags", "shapes", "tracks"}) in order; returns the task's view."""
    out: dict[str, list] = {"tags": [], "shapes": [], "tracks": []}
    for start, data in sorted(jobs, key=lambda x: x[0]):
        for kind in ("tags", "shapes", "tracks"):
            _merge_section(out[kind], copy.deepcopy(data.get(kind) or []), start, overlap, kind)
    return out


__all__ = ["merge_jobs", "shape_similarity", "track_similarity"]
