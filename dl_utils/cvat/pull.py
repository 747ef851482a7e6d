"""Pull a task's annotations (all jobs) into a store, so people's corrections become SAM2 prompts.

Every shape and every keyframe of every track in the task's annotation jobs is read (frames in
jobs' overlaps once). What becomes of it:

* a shape this store pushed and nobody changed is already in the store and is skipped (unless
  ``include_own=True``);
* a shape of ours that a person **edited**, and every shape a person **drew**, becomes an instance
  with source ``manual`` (or the source CVAT gives a shape it did not get from us) and
  ``keyframe=True``; all server shapes of that object on that frame are combined into it;
* a shape of ours that a person **deleted** becomes an empty instance (the object is not there);
* masks are decoded exactly (a push then a pull gives back the same masks, bit for bit); polygons
  and boxes are rasterised into masks when ``rasterize=True`` (they keep their vertices / box too).

Object identity comes from ``group`` (our push writes ``group`` = object id, like the XML export);
shapes with no group become new objects. Instances pulled from a task carry
``prompts["cvat"] = {"host", "task", "shapes", "tracks"}`` so a later push never sends them back, and
the shapes of ours they absorbed are handed over to people (forgotten by the push record).
Non-key frames of people's tracks (CVAT interpolates them) are not pulled: keyframes are what
people actually placed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..annotations import Instance, Label, ShapeType, Source
from ..cv_utils import box_to_mask, decode_cvat_rle, polygons_to_mask
from ..errors import MaskError
from ..formats._common import (
    WRITE_BATCH,
    ObjectKey,
    assign_object_ids,
    merge_labels,
    parse_source,
    progress,
)
from ..formats.cvat_xml import _group_ids
from ._wire import item_hash
from .connection import CvatConnection, cvat_error
from .labels import task_labels
from .push import base_key, state_key
from .tasks import check_task_media, read_task


@dataclass
class PullReport:
    task_id: int
    shapes: int = 0
    tracks: int = 0
    own_unchanged: int = 0
    edited: int = 0
    deleted: int = 0
    foreign: int = 0
    instances: int = 0
    frames: int = 0
    objects_created: list[int] = field(default_factory=list)
    #: (frame, object id) of every instance people changed (edited, drawn or deleted): the corrections
    #: to hand to the SAM2 session (``VideoSession.take_corrections``) before propagating again
    corrections: list[tuple[int, int]] = field(default_factory=list)
    requests: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        verb = "would write" if self.dry_run else "wrote"
        return (f"task {self.task_id}: read {self.shapes} shapes and {self.tracks} tracks"
                f" ({self.own_unchanged} ours unchanged, {self.edited} edited, {self.deleted} deleted,"
                f" {self.foreign} drawn in CVAT); {verb} {self.instances} instances on {self.frames}"
                f" frames, {len(self.objects_created)} new objects")


@dataclass
class _Piece:
    kind: str  # mask | polygon | box
    data: Any
    source: Source
    score: float | None
    human: bool
    edited: bool
    ref: tuple[str, int]  # ("s" | "t", server id)
    where: str
    base: str | None = None  # our unit's key without the job of an overlap copy


def _dedup_pieces(pieces: list[_Piece]) -> list[_Piece]:
    """One object on one frame, as several jobs hold it: drop exact duplicates, and where a person
    edited one job's copy of our shape, drop the unedited copies in the other jobs."""
    edited_bases = {p.base for p in pieces if p.base is not None and p.edited}
    out: list[_Piece] = []
    seen: set[str] = set()
    for p in pieces:
        if p.base is not None and not p.edited and p.base in edited_bases:
            continue
        sig = repr((p.kind, p.data if p.kind != "mask" else tuple(p.data)))
        if sig in seen:
            continue
        seen.add(sig)
        out.append(p)
    return out


def _oid_of_key(ukey: str) -> int:
    parts = ukey.split(":")
    return int(parts[2] if ukey[0] in "mpb" else parts[1])


def _frame_of_key(ukey: str) -> int | None:
    return int(ukey.split(":")[1]) if ukey[0] in "mpb" else None


def _piece(kind_cvat: str, points: list, **kw: Any) -> _Piece | None:
    if kind_cvat == "mask":
        return _Piece("mask", points, **kw)
    if kind_cvat == "polygon":
        return _Piece("polygon", [list(map(float, points))], **kw)
    if kind_cvat == "rectangle":
        return _Piece("box", tuple(float(v) for v in points[:4]), **kw)
    return None  # polylines, points, ellipses, skeletons...: not instances


def _instance(oid: int, pieces: list[_Piece], h: int, w: int, rasterize: bool, marker: dict | None
              ) -> Instance:
    human = [p for p in pieces if p.human]
    source = (Source.MANUAL if any(p.human and p.source is Source.MANUAL for p in pieces)
              else (human or pieces)[0].source)
    scores = [float(p.score) for p in pieces if p.score is not None]
    common = dict(object_id=oid, source=source, keyframe=bool(human), prompts=marker,
                  score=max(scores) if scores else None)

    def decode(p: _Piece) -> np.ndarray:
        try:
            return decode_cvat_rle(p.data, h, w)
        except MaskError as e:
            raise cvat_error(f"{p.where}: {e}; fix or delete the shape in CVAT") from None

    if len(pieces) == 1 and pieces[0].kind == "box":
        box = pieces[0].data
        return Instance(box=box, mask=box_to_mask(box, h, w) if rasterize else None,
                        shape=ShapeType.BOX, **common)
    if all(p.kind == "polygon" for p in pieces):
        rings = [r for p in pieces for r in p.data]
        return Instance(polygon=rings, mask=polygons_to_mask(rings, h, w) if rasterize else None,
                        shape=ShapeType.POLYGON, **common)
    mask = np.zeros((h, w), dtype=bool)
    for p in pieces:
        if p.kind == "mask":
            mask |= decode(p)
        elif p.kind == "polygon":
            mask |= polygons_to_mask(p.data, h, w)
        else:
            mask |= box_to_mask(p.data, h, w)
    return Instance(mask=mask, shape=ShapeType.MASK, **common)


def pull(
    store: Any,
    conn: CvatConnection,
    task_id: int,
    *,
    rasterize: bool = True,
    include_own: bool = False,
    dry_run: bool = False,
) -> PullReport:
    """Bring task ``task_id``'s annotations into ``store`` (see the module doc)."""
    t0 = time.perf_counter()
    before = conn.stats.copy()
    rep = PullReport(task_id=int(task_id), dry_run=dry_run)
    task = read_task(conn, task_id)
    media = store.media
    if media is None:
        media = task.media
        if not dry_run:
            store.set_media(media)
    else:
        check_task_media(media, task, str(store.path))
    n = len(media.frames)
    # each frame's own size (image tasks of photos differ per image): masks are decoded at it
    sizes = media.sizes() if hasattr(media, "sizes") else [(media.width, media.height)] * n
    labels = {lb.id: lb for lb in task_labels(conn, task.id)}
    key = state_key(conn.host, task.id)
    state = store.get_meta(key) or {}
    recs: dict[str, list] = dict(state.get("units") or {})
    own = {(r[0], r[2]): k for k, r in recs.items() if r[2] is not None}
    objects = {o.id: o for o in store.objects()}
    group_to_oid = {g: oid for oid, g in _group_ids(list(objects.values())).items()}

    # (task frame, object key) -> pieces; object key: ("o", oid) existing, else new-object keys
    cells: dict[tuple[int, tuple], list[_Piece]] = {}
    news: set[tuple[int, tuple]] = set()
    new_keys: dict[tuple, ObjectKey] = {}
    touched_units: dict[tuple[int, tuple], set[str]] = {}
    seen: set[tuple] = set()
    present: set[tuple[str, int]] = set()

    def obj_key(item: dict, label: str, kind: str, sid: int) -> tuple:
        g = int(item.get("group") or 0)
        if g > 0:
            oid = group_to_oid.get(g)
            if oid is not None and objects[oid].label == label:
                return ("o", oid)
            k = ("g", g, label)
        else:
            k = (kind, sid)
        if k not in new_keys:
            new_keys[k] = ObjectKey(k, label, g if g > 0 else None)
        return k

    for job in progress(sorted(j.id for j in task.jobs), desc="pull jobs"):
        data = conn.request("GET", f"/api/jobs/{job}/annotations",
                            what=f"reading the annotations of job {job} (task {task.id})") or {}
        items = [("s", s) for s in data.get("shapes") or []] + [("t", t) for t in data.get("tracks") or []]
        for kind, item in items:
            sid = int(item.get("id") or 0)
            present.add((kind, sid))  # before the dedup: an overlap copy is there, not deleted
            h_item = item_hash(kind, item)
            dedup = (kind, h_item)
            if dedup in seen:  # the same shape in two overlapping jobs (our push sends it to both)
                continue
            seen.add(dedup)
            if kind == "s":
                rep.shapes += 1
            else:
                rep.tracks += 1
            label = labels.get(int(item.get("label_id", -1)))
            if label is None:
                continue
            ukey = own.get((kind, sid))
            if ukey is not None:
                r = recs[ukey]
                edited = h_item != (r[4] or r[3])
                okey: tuple = ("o", _oid_of_key(ukey))
                if edited:
                    rep.edited += 1
                else:
                    rep.own_unchanged += 1
            else:
                edited = False
                okey = obj_key(item, label.name, kind, sid)
                rep.foreign += 1
            human = ukey is None or edited
            src = Source.MANUAL if edited else parse_source(item.get("source", "manual"))
            if kind == "s":
                frames = [(int(item.get("frame", 0)), item)]
            else:
                frames = [(int(s.get("frame", 0)), s) for s in item.get("shapes") or []
                          if not s.get("outside")]
            for f, s in frames:
                if not 0 <= f < n:
                    raise cvat_error(f"job {job} of task {task.id}: {'shape' if kind == 's' else 'track'}"
                                     f" {sid} is on frame {f}, outside the task's {n} frames")
                where = f"task {task.id}, job {job}, frame {f}, {'shape' if kind == 's' else 'track'} {sid}"
                pc = _piece(str(s.get("type")), list(s.get("points") or []), source=src,
                            score=item.get("score"), human=human, edited=edited, ref=(kind, sid),
                            where=where, base=base_key(ukey) if ukey is not None else None)
                if pc is None:
                    continue
                cell = (f, okey)
                cells.setdefault(cell, []).append(pc)
                if ukey is not None:
                    touched_units.setdefault(cell, set()).add(ukey)
                if human or include_own:
                    news.add(cell)

    # our shapes people deleted: the object is not on that frame (or only what is left of it)
    deleted_cells: set[tuple[int, tuple]] = set()
    handed: set[str] = set()
    index = media._index()
    for ukey, r in recs.items():
        if r[2] is not None and (r[0], r[2]) in present:
            continue
        if r[2] is None and not r[5]:
            continue
        rep.deleted += 1
        oid = _oid_of_key(ukey)
        f_src = _frame_of_key(ukey)
        hit: list[tuple[int, tuple]] = []
        if f_src is not None:
            if f_src in index:
                hit.append((index[f_src], ("o", oid)))
        else:  # a whole track: every frame of its job where the store shows the object
            jr = next((j for j in task.jobs if j.id == r[1]), None)
            if jr is not None and oid in objects:
                for fs, inst in store.read_object(oid, decode=False).items():
                    if fs in index and not inst.is_empty and jr.start <= index[fs] <= jr.stop:
                        hit.append((index[fs], ("o", oid)))
        if not hit:
            handed.add(ukey)
        for c in hit:
            deleted_cells.add(c)
            touched_units.setdefault(c, set()).add(ukey)
    news |= deleted_cells

    # ---- objects for the new keys (group ids kept where free, as the XML import does)
    news_keys = {c[1] for c in news}
    used_keys = [new_keys[k] for k in new_keys if k in news_keys]
    ids = assign_object_ids(used_keys, objects.keys()) if used_keys else {}
    if not dry_run:
        merge_labels(store, [Label(lb.name, lb.color or None) for lb in labels.values()
                             if any(k.label == lb.name for k in used_keys)],
                     [k.label for k in used_keys])
        for k in used_keys:
            store.add_object(k.label, id=ids[k.key])
    rep.objects_created = sorted(ids.values())

    def oid_of(okey: tuple) -> int:
        return okey[1] if okey[0] == "o" else ids[okey]

    # ---- instances, in frame order, written in batches
    by_frame: dict[int, list[Instance]] = {}
    for cell in sorted(news, key=lambda c: (c[0], str(c[1]))):
        f, okey = cell
        oid = oid_of(okey)
        pieces = cells.get(cell, [])
        human = any(p.human for p in pieces) or cell in deleted_cells
        marker = None
        if human:
            marker = {"cvat": {"host": conn.host, "task": task.id,
                               "shapes": sorted(p.ref[1] for p in pieces if p.ref[0] == "s"),
                               "tracks": sorted({p.ref[1] for p in pieces if p.ref[0] == "t"})}}
            handed |= touched_units.get(cell, set())
        fw, fh = sizes[f]
        if pieces:
            pieces = _dedup_pieces(pieces)
            pieces.sort(key=lambda p: not p.human)
            inst = _instance(oid, pieces, fh, fw, rasterize, marker)
        else:
            inst = Instance(object_id=oid, mask=np.zeros((fh, fw), dtype=bool), source=Source.MANUAL,
                            keyframe=True, prompts=marker)
        by_frame.setdefault(media.frames[f], []).append(inst)
        if human:
            rep.corrections.append((media.frames[f], oid))
    rep.corrections.sort()
    rep.instances = sum(len(v) for v in by_frame.values())
    rep.frames = len(by_frame)
    if not dry_run:
        batch: list[tuple[int, list[Instance]]] = []
        for f in progress(sorted(by_frame), desc="write store"):
            batch.append((f, by_frame[f]))
            if len(batch) >= WRITE_BATCH:
                store.write_frames(batch)
                batch = []
        if batch:
            store.write_frames(batch)
        if handed and state and not dry_run:
            for k in handed:
                recs.pop(k, None)
            state["units"] = recs
            store.set_meta(key, state)
    d = conn.stats.since(before)
    rep.requests, rep.bytes_received = d["requests"], d["bytes_received"]
    rep.seconds = time.perf_counter() - t0
    return rep


__all__ = ["PullReport", "pull"]
