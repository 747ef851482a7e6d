"""Per-frame quality signals from the store: frames worth a human look."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..annotations import Instance, Provenance, Source
from ..errors import InputError
from ..store import AnnotationStore


@dataclass
class ReviewItem:
    """A frame worth a human look for one object, and why."""

    frame: int
    object_id: int
    reasons: list[str]
    iou: float | None = None
    object_score: float | None = None
    area: int | None = None


def review_frames(
    store: AnnotationStore,
    *,
    min_iou: float = 0.5,
    area_change: float = 0.5,
    objects: Iterable[int] | None = None,
    start: int | None = None,
    stop: int | None = None,
) -> list[ReviewItem]:
    """Frames where a mask is doubtful: low predicted IoU, object lost/appeared, area jump.

    Works from the store alone (scores and the ``object_score``/``area`` an engine records in
    ``provenance``), so it also reviews a run made by an earlier process. The area jump compares each
    frame with the previous processed frame of the same object: flagged when the larger area is more
    than ``1 + area_change`` times the smaller.

    SAM 3 stores (``provenance.engine == "sam3"``) differ in two ways the reasons follow: SAM 3 writes
    no row where it shows an object no longer, so a frame of the store where other objects have rows
    and this one has none (after a row of it) is "object lost", and its return "object appeared";
    and its score is the detection probability, reported as such ("low detection score").
    """
    if not 0 <= float(min_iou) <= 1 or float(area_change) <= 0:
        raise InputError(f"min_iou={min_iou!r}, area_change={area_change!r}: use 0 <= min_iou <= 1 and area_change > 0")
    ids = [o.id for o in store.objects()] if objects is None else [int(o) for o in objects]
    written = store.frames(start=start, stop=stop)  # frames where any object has a row
    out: list[ReviewItem] = []
    for oid in ids:
        prev: tuple[int, int] | None = None  # (frame, area)
        rows: dict[int, Instance | None] = {
            f: i for f, i in store.read_object(oid, decode=False).items()
            if not ((start is not None and f < start) or (stop is not None and f > stop))}
        sam3 = any(i is not None and (i.provenance or Provenance()).engine == "sam3" for i in rows.values())
        if sam3:  # absent rows are "not shown" on frames SAM 3 wrote for the others
            first = min(rows, default=None)
            for f in written:
                if first is not None and f > first and f not in rows:
                    rows[f] = None
        for frame in sorted(rows):
            inst = rows[frame]
            if inst is None:
                reasons = [f"object lost (visible on frame {prev[0]})"] if prev is not None and prev[1] > 0 else []
                if reasons:
                    out.append(ReviewItem(frame, oid, reasons, None, None, 0))
                prev = (frame, 0)
                continue
            prov = inst.provenance or Provenance()
            area = prov.area
            if area is None:
                area = 0 if inst.is_empty else store.read_frame(frame).by_object()[oid].area
            area = int(area)
            reasons = []
            if area > 0 and inst.score is not None and inst.source != Source.MANUAL and inst.score < min_iou:
                what = "detection score" if prov.engine == "sam3" else "predicted IoU"
                reasons.append(f"low {what} {inst.score:.2f} < {min_iou:g}")
            if prev is not None:
                pf, pa = prev
                if pa > 0 and area == 0:
                    reasons.append(f"object lost (visible on frame {pf})")
                elif pa == 0 and area > 0:
                    reasons.append(f"object appeared (not visible on frame {pf})")
                elif pa > 0 and area > 0:
                    ratio = max(pa, area) / min(pa, area)
                    if ratio > 1 + area_change:
                        reasons.append(f"area changed x{ratio:.2f} vs frame {pf} ({pa} -> {area} px)")
            if reasons:
                out.append(ReviewItem(frame, oid, reasons, inst.score, prov.object_score, area))
            prev = (frame, area)
    out.sort(key=lambda r: (r.frame, r.object_id))
    return out
