"""How much people changed the pushed pre-annotation: the "does pre-annotation pay?" numbers of a pull.

A pull knows, for every object on every frame it reads (a *cell*), whether the store pushed shapes
there (the sync record's units) and what came back. That is the cheapest honest measure of the
pre-annotation's worth: a cell nobody touched cost the annotator nothing, an edited one cost a
correction whose size the IoU tells, a deleted one was a false positive, and a shape drawn by hand
was a miss. Each cell gets one of four kinds:

* ``unchanged`` — only our shapes, none edited (IoU 1 by definition: the content hash is the same);
* ``edited`` — our shapes there and a person changed, replaced or added to them: the IoU between
  what was pushed (the store's instance before the pull replaces it, in the geometry it was pushed
  as) and what came back;
* ``deleted`` — a person deleted our shapes and drew nothing there (IoU 0);
* ``added`` — shapes a person drew where we pushed nothing (no IoU: nothing to compare).

The summary (JSON-able) aggregates per label, per object and overall: counts of the four kinds,
``mean_iou`` over the pushed cells (unchanged 1, edited their IoU, deleted 0) and ``mean_iou_edited``
over the edited cells alone. The model side of the same question is ``dl_utils.finetune.evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from ..annotations import Instance, ShapeType
from ..cv_utils import box_to_mask, mask_iou, polygons_to_mask
from ..formats._common import instance_mask, to_geometry

KINDS = ("unchanged", "edited", "deleted", "added")

#: unit key prefix -> the shape type push sent it as
_PUSHED_AS = {"m": ShapeType.MASK, "p": ShapeType.POLYGON, "b": ShapeType.BOX,
              "tp": ShapeType.POLYGON, "tb": ShapeType.BOX}


@dataclass(frozen=True)
class CellChange:
    """What happened to one object on one frame between push and pull."""

    frame: int  # source frame number
    object_id: int
    label: str
    kind: str  # one of KINDS
    iou: float | None = None  # pushed vs pulled; None for ``added``


@dataclass
class _Tally:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    iou_sum: float = 0.0
    edited_iou_sum: float = 0.0

    def add(self, c: CellChange) -> None:
        self.counts[c.kind] += 1
        if c.kind != "added":
            self.iou_sum += 1.0 if c.kind == "unchanged" else float(c.iou or 0.0)
        if c.kind == "edited":
            self.edited_iou_sum += float(c.iou or 0.0)

    def to_json(self) -> dict[str, Any]:
        pushed = self.counts["unchanged"] + self.counts["edited"] + self.counts["deleted"]
        edited = self.counts["edited"]
        return {**self.counts,
                "mean_iou": round(self.iou_sum / pushed, 6) if pushed else None,
                "mean_iou_edited": round(self.edited_iou_sum / edited, 6) if edited else None}


def pushed_kind(unit_keys: Iterable[str]) -> ShapeType:
    """The shape type our units on a cell were pushed as (mask when unknown)."""
    for k in sorted(unit_keys):
        kind = _PUSHED_AS.get(k.split(":", 1)[0])
        if kind is not None:
            return kind
    return ShapeType.MASK


def pushed_mask(before: Instance | None, kind: ShapeType, h: int, w: int) -> np.ndarray:
    """The store's instance as push sent it, rasterised: a polygon or box push loses the mask's
    detail, and that loss is not a person's change, so both sides are compared as pushed."""
    if before is None or before.is_empty:
        return np.zeros((h, w), dtype=bool)
    g = to_geometry(before, h, w, kind)
    if g is None:
        return np.zeros((h, w), dtype=bool)
    if g.mask is not None:
        return g.mask
    if g.rings is not None:
        return polygons_to_mask(g.rings, h, w)
    return box_to_mask(g.box, h, w)  # type: ignore[arg-type]


def cell_iou(before: Instance | None, after: Instance, unit_keys: Iterable[str], h: int, w: int) -> float:
    """IoU of what was pushed and what came back (geometry-only pulls rasterised)."""
    a = pushed_mask(before, pushed_kind(unit_keys), h, w)
    b = instance_mask(after, h, w)
    if not a.any() and not b.any():
        return 1.0  # both empty: nothing changed
    return mask_iou(a, b)


def summarize(cells: Iterable[CellChange]) -> dict[str, Any]:
    """The pull report's ``changes``: overall, per label, per object (sorted by id)."""
    overall = _Tally()
    by_label: dict[str, _Tally] = {}
    by_object: dict[int, _Tally] = {}
    labels: dict[int, str] = {}
    for c in cells:
        overall.add(c)
        by_label.setdefault(c.label, _Tally()).add(c)
        by_object.setdefault(c.object_id, _Tally()).add(c)
        labels[c.object_id] = c.label
    return {"overall": overall.to_json(),
            "labels": {lb: t.to_json() for lb, t in sorted(by_label.items())},
            "objects": [{"object": oid, "label": labels[oid], **t.to_json()}
                        for oid, t in sorted(by_object.items())]}


def _fmt_iou(v: Any) -> str:
    return "-" if v is None else f"{float(v):.3f}"


def format_changes(changes: Mapping[str, Any]) -> str:
    """The ``changes`` summary as a small table for people (one row per label, then all)."""
    head = f"{'label':<20} {'unchanged':>9} {'edited':>7} {'deleted':>8} {'added':>6} {'IoU':>6} {'IoU edited':>10}"
    rows = [head]
    items = list(changes.get("labels", {}).items()) + [("all", changes.get("overall", {}))]
    for name, t in items:
        rows.append(f"{str(name)[:20]:<20} {t.get('unchanged', 0):>9} {t.get('edited', 0):>7}"
                    f" {t.get('deleted', 0):>8} {t.get('added', 0):>6} {_fmt_iou(t.get('mean_iou')):>6}"
                    f" {_fmt_iou(t.get('mean_iou_edited')):>10}")
    return "\n".join(rows)


__all__ = ["KINDS", "CellChange", "cell_iou", "format_changes", "pushed_kind", "pushed_mask", "summarize"]
