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
``Provenance(engine="cvat", cvat=CvatOrigin(host, task, shapes, tracks))`` so a later push never
sends them back, and
the shapes of ours they absorbed are handed over to people (forgotten by the push record).
Non-key frames of people's tracks (CVAT interpolates them) are not pulled: keyframes are what
people actually placed.

The report's ``changes`` (:mod:`.changes`) says how much people changed what was pushed: per
object and per label, the cells (object on frame) left unchanged, edited (with the IoU of pushed vs
pulled), deleted and drawn by hand, measured against the store before the pull overwrites it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..annotations import CvatOrigin, Instance, Label, MediaInfo, Provenance, Source
from ..cv_utils import decode_cvat_rle
from ..errors import MaskError
from ..formats import (
    WRITE_BATCH,
    ObjectKey,
    ParsedShape,
    assign_object_ids,
    build_instance,
    group_ids,
    merge_labels,
    parse_source,
    progress,
)
from ..store import AnnotationStore
from ._wire import item_hash
from .changes import CellChange, cell_iou, format_changes, summarize
from .connection import CvatConnection, cvat_error
from .labels import ServerLabel, task_labels
from .records import SyncState, UnitKey, UnitRecord
from .tasks import TaskInfo, check_task_media, read_task

#: (task frame, object key) of one instance to write; object key ``("o", id)`` for a store object,
#: else the key of a new object (``("g", group, label)`` or ``(kind, server id)``)
Cell = tuple[int, tuple]


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
    #: how much people changed what was pushed, per object and frame, summed per label, per object
    #: and overall (:func:`dl_utils.cvat.changes.summarize`): does the pre-annotation pay?
    changes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def format_changes(self) -> str:
        """The ``changes`` as a table for people (empty when the pull read nothing)."""
        return format_changes(self.changes) if self.changes.get("objects") else ""

    def __str__(self) -> str:
        verb = "would write" if self.dry_run else "wrote"
        line = (f"task {self.task_id}: read {self.shapes} shapes and {self.tracks} tracks"
                f" ({self.own_unchanged} ours unchanged, {self.edited} edited, {self.deleted} deleted,"
                f" {self.foreign} drawn in CVAT); {verb} {self.instances} instances on {self.frames}"
                f" frames, {len(self.objects_created)} new objects")
        table = self.format_changes()
        return f"{line}\nwhat people changed (objects on frames):\n{table}" if table else line


@dataclass
class ServerShape(ParsedShape):
    """A shape read from a CVAT job (or one keyframe of a track): the importers' :class:`ParsedShape`
    (``keyframe`` = a person made or changed it) plus where it came from on the server."""

    edited: bool = False  # ours, changed by a person
    ref: tuple[str, int] = ("s", 0)  # ("s" | "t", server id)
    base: UnitKey | None = None  # our unit's key without the job of an overlap copy


def _server_shape(kind_cvat: str, points: list, **kw: Any) -> ServerShape | None:
    if kind_cvat == "mask":
        return ServerShape("mask", points, **kw)
    if kind_cvat == "polygon":
        return ServerShape("polygon", [list(map(float, points))], **kw)
    if kind_cvat == "rectangle":
        return ServerShape("box", tuple(float(v) for v in points[:4]), **kw)
    return None  # polylines, points, ellipses, skeletons...: not instances


def _dedup(shapes: list[ServerShape]) -> list[ServerShape]:
    """One object on one frame, as several jobs hold it: drop exact duplicates, and where a person
    edited one job's copy of our shape, drop the unedited copies in the other jobs."""
    edited_bases = {p.base for p in shapes if p.base is not None and p.edited}
    out: list[ServerShape] = []
    seen: set[str] = set()
    for p in shapes:
        if p.base is not None and not p.edited and p.base in edited_bases:
            continue
        sig = repr((p.kind, p.data if p.kind != "mask" else tuple(p.data)))
        if sig in seen:
            continue
        seen.add(sig)
        out.append(p)
    return out


def _decode(p: ParsedShape, h: int, w: int) -> np.ndarray:
    try:
        return decode_cvat_rle(p.data, h, w)
    except MaskError as e:
        raise cvat_error(f"{p.where}: {e}; fix or delete the shape in CVAT") from None


class _JobReader:
    """Fetch and parse phase: reads every job once and sorts its shapes into cells (one object on
    one task frame), telling ours (unchanged or edited) from people's by the sync record."""

    def __init__(self, store: AnnotationStore, task: TaskInfo, n_frames: int,
                 labels: dict[int, ServerLabel], units: dict[str, UnitRecord], include_own: bool,
                 report: PullReport):
        self.task, self.n, self.labels, self.units = task, n_frames, labels, units
        self.include_own, self.rep = include_own, report
        self.own = {(r.kind, r.server_id): k for k, r in units.items() if r.server_id is not None}
        self.objects = {o.id: o for o in store.objects()}
        self.group_to_oid = {g: oid for oid, g in group_ids(list(self.objects.values())).items()}
        self.cells: dict[Cell, list[ServerShape]] = {}
        self.news: set[Cell] = set()  # cells to write
        self.new_keys: dict[tuple, ObjectKey] = {}
        self.touched_units: dict[Cell, set[str]] = {}
        self.seen: set[tuple] = set()
        self.present: set[tuple[str, int]] = set()

    def obj_key(self, item: dict, label: str, kind: str, sid: int) -> tuple:
        """Group -> the store object of that id (push's rule) when its label agrees; else a new
        object per group (and label), or per ungrouped shape."""
        g = int(item.get("group") or 0)
        if g > 0:
            oid = self.group_to_oid.get(g)
            if oid is not None and self.objects[oid].label == label:
                return ("o", oid)
            k: tuple = ("g", g, label)
        else:
            k = (kind, sid)
        if k not in self.new_keys:
            self.new_keys[k] = ObjectKey(k, label, g if g > 0 else None)
        return k

    def read(self, conn: CvatConnection) -> None:
        for job in progress(sorted(j.id for j in self.task.jobs), desc="pull jobs"):
            data = conn.request("GET", f"/api/jobs/{job}/annotations",
                                what=f"reading the annotations of job {job} (task {self.task.id})") or {}
            items = ([("s", s) for s in data.get("shapes") or []]
                     + [("t", t) for t in data.get("tracks") or []])
            for kind, item in items:
                self.item(job, kind, item)

    def item(self, job: int, kind: str, item: dict) -> None:
        """One shape or track of ``job``: counted, classified, and its frames added to cells."""
        rep = self.rep
        sid = int(item.get("id") or 0)
        self.present.add((kind, sid))  # before the dedup: an overlap copy is there, not deleted
        h_item = item_hash(kind, item)
        if (kind, h_item) in self.seen:  # the same shape in two overlapping jobs (push sends both)
            return
        self.seen.add((kind, h_item))
        if kind == "s":
            rep.shapes += 1
        else:
            rep.tracks += 1
        label = self.labels.get(int(item.get("label_id", -1)))
        if label is None:
            return
        ukey = self.own.get((kind, sid))
        if ukey is not None:
            edited = h_item != self.units[ukey].current_hash
            okey: tuple = ("o", UnitKey.parse(ukey).object_id)
            if edited:
                rep.edited += 1
            else:
                rep.own_unchanged += 1
        else:
            edited = False
            okey = self.obj_key(item, label.name, kind, sid)
            rep.foreign += 1
        self.add_frames(job, kind, item, sid, ukey, okey, edited)

    def add_frames(self, job: int, kind: str, item: dict, sid: int, ukey: str | None, okey: tuple,
                   edited: bool) -> None:
        """A shape's frame, or every keyframe a track shows the object on, as server shapes."""
        human = ukey is None or edited
        src = Source.MANUAL if edited else parse_source(item.get("source", "manual"))
        what = "shape" if kind == "s" else "track"
        if kind == "s":
            frames = [(int(item.get("frame", 0)), item)]
        else:
            frames = [(int(s.get("frame", 0)), s) for s in item.get("shapes") or [] if not s.get("outside")]
        score = item.get("score")
        base = UnitKey.parse(ukey).base if ukey is not None else None
        for f, s in frames:
            if not 0 <= f < self.n:
                raise cvat_error(f"job {job} of task {self.task.id}: {what} {sid} is on frame {f},"
                                 f" outside the task's {self.n} frames")
            pc = _server_shape(str(s.get("type")), list(s.get("points") or []), source=src,
                               score=None if score is None else float(score), keyframe=human,
                               edited=edited, ref=(kind, sid), base=base,
                               where=f"task {self.task.id}, job {job}, frame {f}, {what} {sid}")
            if pc is None:
                continue
            cell = (f, okey)
            self.cells.setdefault(cell, []).append(pc)
            if ukey is not None:
                self.touched_units.setdefault(cell, set()).add(ukey)
            if human or self.include_own:
                self.news.add(cell)

    def deleted(self, store: AnnotationStore, media: MediaInfo) -> tuple[set[Cell], set[str]]:
        """Our units no job holds any more (or held as deleted): their cells become empty or what is
        left of the object; units with no cell to show are handed over at once."""
        deleted_cells: set[Cell] = set()
        handed: set[str] = set()
        index = media.index_map()
        for ukey, r in self.units.items():
            if r.server_id is not None and (r.kind, r.server_id) in self.present:
                continue
            if r.server_id is None and not r.held:
                continue
            self.rep.deleted += 1
            k = UnitKey.parse(ukey)
            oid = k.object_id
            hit: list[Cell] = []
            if not k.track:
                if k.frame in index:
                    hit.append((index[k.frame], ("o", oid)))
            else:  # a whole track: every frame of its job where the store shows the object
                jr = next((j for j in self.task.jobs if j.id == r.job), None)
                if jr is not None and oid in self.objects:
                    for fs, inst in store.read_object(oid, decode=False).items():
                        if fs in index and not inst.is_empty and jr.start <= index[fs] <= jr.stop:
                            hit.append((index[fs], ("o", oid)))
            if not hit:
                handed.add(ukey)
            for c in hit:
                deleted_cells.add(c)
                self.touched_units.setdefault(c, set()).add(ukey)
        self.news |= deleted_cells
        return deleted_cells, handed


def _new_objects(store: AnnotationStore, reader: _JobReader, labels: dict[int, ServerLabel],
                 dry_run: bool) -> dict[tuple, int]:
    """Merge phase, objects: ids for the new object keys (group ids kept where free, as the XML
    import does), created in the store with their labels."""
    news_keys = {c[1] for c in reader.news}
    used_keys = [reader.new_keys[k] for k in reader.new_keys if k in news_keys]
    ids = assign_object_ids(used_keys, reader.objects.keys()) if used_keys else {}
    if not dry_run:
        merge_labels(store, [Label(lb.name, lb.color or None) for lb in labels.values()
                             if any(k.label == lb.name for k in used_keys)],
                     [k.label for k in used_keys])
        for k in used_keys:
            store.add_object(k.label, id=ids[k.key])
    return ids


def _instances(reader: _JobReader, deleted_cells: set[Cell], ids: dict[tuple, int], media: MediaInfo,
               host: str, rasterize: bool, handed: set[str]) -> dict[int, list[Instance]]:
    """Merge phase, instances: one per cell, in frame order; people's carry their
    :class:`CvatOrigin` in ``provenance.cvat`` (never pushed back) and hand the units they absorbed over to people (``handed``)."""
    rep = reader.rep
    sizes = media.sizes()  # each frame's own size (photos differ per image): masks are decoded at it
    by_frame: dict[int, list[Instance]] = {}
    for cell in sorted(reader.news, key=lambda c: (c[0], str(c[1]))):
        f, okey = cell
        oid = okey[1] if okey[0] == "o" else ids[okey]
        pieces = reader.cells.get(cell, [])
        human = any(p.keyframe for p in pieces) or cell in deleted_cells
        marker = None
        if human:
            origin = CvatOrigin(host, reader.task.id,
                                tuple(sorted(p.ref[1] for p in pieces if p.ref[0] == "s")),
                                tuple(sorted({p.ref[1] for p in pieces if p.ref[0] == "t"})))
            marker = Provenance(engine="cvat", cvat=origin)
            handed |= reader.touched_units.get(cell, set())
        fw, fh = sizes[f]
        if pieces:
            pieces = _dedup(pieces)
            pieces.sort(key=lambda p: not p.keyframe)  # people's first: their source wins
            source = (Source.MANUAL if any(p.keyframe and p.source is Source.MANUAL for p in pieces)
                      else pieces[0].source)
            inst = build_instance(oid, pieces, fh, fw, _decode, box_mask=rasterize, polygon_mask=rasterize,
                                  source=source, provenance=marker)
        else:
            inst = Instance(object_id=oid, mask=np.zeros((fh, fw), dtype=bool), source=Source.MANUAL,
                            keyframe=True, provenance=marker)
        by_frame.setdefault(media.frames[f], []).append(inst)
        if human:
            rep.corrections.append((media.frames[f], oid))
    rep.corrections.sort()
    return by_frame


def _cell_changes(store: AnnotationStore, reader: _JobReader, deleted_cells: set[Cell],
                  ids: dict[tuple, int], by_frame: dict[int, list[Instance]],
                  media: MediaInfo) -> list[CellChange]:
    """Report phase: each cell as unchanged, edited (with the IoU of pushed vs pulled), deleted or
    added, read from the store *before* the write replaces the pushed instances."""
    sizes = media.sizes()
    before_frames: dict[int, dict[int, Instance]] = {}
    out: list[CellChange] = []
    for cell in sorted(set(reader.cells) | deleted_cells, key=lambda c: (c[0], str(c[1]))):
        f, okey = cell
        oid = okey[1] if okey[0] == "o" else ids.get(okey, -1)
        label = (reader.objects[oid].label if okey[0] == "o" and oid in reader.objects
                 else reader.new_keys[okey].label if okey in reader.new_keys else "?")
        units = reader.touched_units.get(cell, set())
        human = any(p.keyframe for p in reader.cells.get(cell, [])) or cell in deleted_cells
        sf = media.frames[f]
        if not units:
            out.append(CellChange(sf, oid, label, "added"))
            continue
        if not human:
            out.append(CellChange(sf, oid, label, "unchanged", 1.0))
            continue
        after = next((i for i in by_frame.get(sf, []) if i.object_id == oid), None)
        if sf not in before_frames:
            before_frames[sf] = store.read_frame(sf).by_object() if store.media is not None else {}
        fw, fh = sizes[f]
        if after is None or after.is_empty:
            out.append(CellChange(sf, oid, label, "deleted", 0.0))
        else:
            iou = cell_iou(before_frames[sf].get(oid), after, units, fh, fw)
            out.append(CellChange(sf, oid, label, "edited", round(iou, 6)))
    return out


def _write(store: AnnotationStore, by_frame: dict[int, list[Instance]], state: SyncState | None,
           handed: set[str]) -> None:
    """Write phase: instances in batched transactions, then the units handed over to people are
    forgotten by the sync record (so a later push neither overwrites nor deletes them)."""
    batch: list[tuple[int, list[Instance]]] = []
    for f in progress(sorted(by_frame), desc="write store"):
        batch.append((f, by_frame[f]))
        if len(batch) >= WRITE_BATCH:
            store.write_frames(batch)
            batch = []
    if batch:
        store.write_frames(batch)
    if handed and state is not None:
        for k in handed:
            state.units.pop(k, None)
        state.save(store)


def _pull_media(store: AnnotationStore, task: TaskInfo, dry_run: bool) -> MediaInfo:
    """The store's media, checked against the task; a new store takes the task's."""
    media = store.media
    if media is None:
        media = task.media
        if not dry_run:
            store.set_media(media)
    else:
        check_task_media(media, task, str(store.path))
    return media


def pull(
    store: AnnotationStore,
    conn: CvatConnection,
    task_id: int,
    *,
    rasterize: bool = True,
    include_own: bool = False,
    dry_run: bool = False,
) -> PullReport:
    """Bring task ``task_id``'s annotations into ``store`` (see the module doc).

    Phases: fetch and parse every job (:class:`_JobReader`), find our deleted units, merge into
    objects and instances (:func:`_new_objects`, :func:`_instances`), measure what people changed
    against the store before it is overwritten (:func:`_cell_changes`), write (:func:`_write`).
    """
    t0 = time.perf_counter()
    before = conn.stats.copy()
    rep = PullReport(task_id=int(task_id), dry_run=dry_run)
    task = read_task(conn, task_id)
    state = SyncState.load(store, conn.host, task.id)  # a record too new is refused before any write
    media = _pull_media(store, task, dry_run)
    labels = {lb.id: lb for lb in task_labels(conn, task.id)}
    reader = _JobReader(store, task, len(media.frames), labels, dict(state.units) if state else {},
                        include_own, rep)
    reader.read(conn)
    deleted_cells, handed = reader.deleted(store, media)
    ids = _new_objects(store, reader, labels, dry_run)
    rep.objects_created = sorted(ids.values())
    by_frame = _instances(reader, deleted_cells, ids, media, conn.host, rasterize, handed)
    rep.instances = sum(len(v) for v in by_frame.values())
    rep.frames = len(by_frame)
    rep.changes = summarize(_cell_changes(store, reader, deleted_cells, ids, by_frame, media))
    if not dry_run:
        _write(store, by_frame, state, handed)
    d = conn.stats.since(before)
    rep.requests, rep.bytes_received = d["requests"], d["bytes_received"]
    rep.seconds = time.perf_counter() - t0
    return rep


__all__ = ["PullReport", "ServerShape", "pull"]
