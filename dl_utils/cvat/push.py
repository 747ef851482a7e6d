"""Push a store to a CVAT task: exact masks, polygon or box tracks; batched, idempotent, resumable.

What lands on the server
    * ``mask``: one CVAT mask shape per object and frame (CVAT's RLE, exact; CVAT has no mask
      tracks), ``group`` = object id, as in our CVAT XML export;
    * ``polygon`` / ``box``: one track per object (per polygon ring) and job, a keyframe on every
      frame the object is visible and an ``outside`` shape where it leaves; on image tasks, shapes;
    * ``source``: the instance's (``auto`` for model output, ``semi-auto`` for prompted or
      corrected), ``score`` where the instance has one.

Idempotency
    The store remembers, per server and task (meta key ``cvat.push:<host>:task:<id>``), every shape
    and track it created: server id, the hash of what was sent and the job. A re-push compares the
    store with that record and sends only PATCH ``create`` for new units, ``update`` for changed ones
    and ``delete`` for vanished ones, by id; nothing else on the server is touched. Each request's
    result is recorded as soon as it succeeds, and a request whose outcome is unknown (a 5xx or a
    broken connection after sending) is followed by reading the job's annotations and adopting the
    shapes it did create (matched by content hash) before anything is sent again. A push stopped at
    any point and run again therefore ends identical to one clean push.

Human edits
    With ``verify=True`` (default) the task's annotations are read first; a shape of ours that a
    person edited or deleted in CVAT is *held*: left as it is and never updated or deleted again
    (:func:`~dl_utils.cvat.pull.pull` brings the edit into the store and hands the shape over).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..annotations import Instance, MediaInfo, ObjectInfo, ShapeType, Source
from ..cv_utils import encode_cvat_rle
from ..errors import InputError
from ..formats import (
    group_ids,
    iter_store_frames,
    progress,
    require_media,
    select_objects,
    source_of,
    to_geometry,
)
from ..store import AnnotationStore
from ._wire import (
    BODY_OVERHEAD,
    CVAT_TYPE,
    Unit,
    body_of,
    dumps,
    item_hash,
    shape_hash,
    shape_payload,
    track_hash,
    track_payload,
    track_shape,
)
from .connection import CvatConnection, Stats, cvat_error, log
from .labels import compatible, sync_labels, task_labels
from .records import SyncState, UnitKey, UnitRecord, state_key
from .tasks import TaskInfo, check_task_media, read_task

#: Default upper bound of one request body (CVAT behind nginx accepts far more; proxies often 10 MB).
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024

#: (unit key, "s" | "t", serialised JSON or, for deletes before their bodies are read, the server id)
Item = tuple[str, str, Any]


@dataclass
class PushReport:
    """What a push did (or, with ``dry_run``, would do)."""

    task_id: int
    shape: str
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    held: list[str] = field(default_factory=list)
    adopted: int = 0
    skipped_from_cvat: int = 0
    labels_created: list[str] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    planned_bytes: int = 0

    def summary(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["held"] = len(self.held)
        return d

    def __str__(self) -> str:
        verb = "would send" if self.dry_run else "sent"
        return (f"task {self.task_id} ({self.shape}): {self.created} created, {self.updated} updated,"
                f" {self.deleted} deleted, {self.unchanged} unchanged, {len(self.held)} held (edited"
                f" in CVAT); {verb} {self.planned_bytes if self.dry_run else self.bytes_sent} bytes"
                f" in {self.requests} requests")


# ------------------------------------------------------------------------------------------ plan
def _add_shape(units: dict[str, Unit], key: UnitKey, jobs: list[int], body: str, h: str, i: int) -> None:
    """One unit per job holding task frame ``i``: the first job's keeps ``key`` (as pushes before
    overlap support recorded it), the others get ``key:j<job id>``."""
    for n, job in enumerate(jobs):
        k = str(key if n == 0 else key.copy_in(job))
        units[k] = Unit(k, "s", job, body, h, (i, i))


def base_key(ukey: str) -> str:
    """The unit key without the job suffix of an overlap copy (tracks: without the job)."""
    return str(UnitKey.parse(ukey).base)


def _from_this_task(inst: Instance, host: str, task_id: int) -> bool:
    """Instances pulled from this task are people's shapes already on the server: never re-sent."""
    c = inst.provenance.cvat if inst.provenance is not None else None
    return c is not None and c.task == task_id and c.host == host


@dataclass
class _Plan:
    """What plan_units needs per instance: the task's jobs, label ids, groups and the shape type;
    track points are gathered in ``seq`` (object, ring, job) -> task frame -> (points, source)."""

    task: TaskInfo
    media: MediaInfo
    label_of: dict[int, str]  # object id -> label
    label_ids: dict[str, int]  # label -> task label id
    groups: dict[int, int]
    shape: str
    use_tracks: bool
    units: dict[str, Unit] = field(default_factory=dict)
    seq: dict[tuple[int, int, int], dict[int, tuple[list, str]]] = field(default_factory=dict)

    def add(self, inst: Instance, f: int, i: int, jobs: list[int]) -> None:
        """The units of one instance on source frame ``f`` (task frame ``i``), in every job holding
        it: a frame in the overlap of two jobs goes to both, so each job's annotator sees it and
        CVAT's task-level merge joins tracks by comparing them on the overlap frames."""
        w, h = self.media.size_of(f)
        g = to_geometry(inst, h, w, ShapeType(self.shape))
        if g is None:
            return
        if not jobs:
            raise cvat_error(f"frame {f} (task frame {i}) of task {self.task.id} is in no annotation"
                             " job; check the task's jobs in CVAT")
        oid = inst.object_id
        head = (i, self.label_ids[self.label_of[oid]], self.groups[oid], inst.source.value)
        if g.kind is ShapeType.MASK:
            assert g.mask is not None  # a mask geometry has its mask
            d = shape_payload("mask", *head, encode_cvat_rle(g.mask), inst.score)
            _add_shape(self.units, UnitKey.shape_unit("mask", f, oid), jobs, dumps(d), shape_hash(d), i)
        elif g.kind is ShapeType.POLYGON:
            for k, ring in enumerate(g.rings or []):
                pts = [round(float(v), 3) for v in ring]
                if self.use_tracks:
                    for job in jobs:
                        self.seq.setdefault((oid, k, job), {})[i] = (pts, inst.source.value)
                    continue
                d = shape_payload("polygon", *head, pts, inst.score)
                _add_shape(self.units, UnitKey.shape_unit("polygon", f, oid, k), jobs, dumps(d),
                           shape_hash(d), i)
        else:
            pts = [round(float(v), 3) for v in g.box]  # type: ignore[union-attr]
            if self.use_tracks:
                for job in jobs:
                    self.seq.setdefault((oid, 0, job), {})[i] = (pts, inst.source.value)
                return
            d = shape_payload("rectangle", *head, pts, inst.score)
            _add_shape(self.units, UnitKey.shape_unit("box", f, oid), jobs, dumps(d), shape_hash(d), i)

    def add_tracks(self) -> None:
        """One track per (object, ring, job): a keyframe on every frame gathered, an ``outside``
        shape after each run of frames that ends inside the job."""
        n = len(self.media.frames)
        job_stop = {j.id: min(j.stop, n - 1) for j in self.task.jobs}
        ctype = CVAT_TYPE[self.shape]
        for (oid, k, job), frames in self.seq.items():
            idx = sorted(frames)
            shapes = []
            for pos, i in enumerate(idx):
                pts, _src = frames[i]
                shapes.append(track_shape(ctype, i, pts))
                last_of_run = pos + 1 == len(idx) or idx[pos + 1] != i + 1
                if last_of_run and i + 1 < n and i + 1 <= job_stop[job]:  # gone on the next frame
                    shapes.append(track_shape(ctype, i + 1, pts, outside=True))
            src = source_of(Source(frames[i][1]) for i in idx)
            d = track_payload(idx[0], self.label_ids[self.label_of[oid]], self.groups[oid], src.value, shapes)
            key = str(UnitKey.track_unit(self.shape, oid, k, job))
            self.units[key] = Unit(key, "t", job, dumps(d), track_hash(d), (idx[0], idx[-1]))


def plan_units(
    store: AnnotationStore,
    task: TaskInfo,
    label_ids: dict[str, int],
    *,
    host: str,
    shape: str = "mask",
    tracks: bool | None = None,
    objects: Iterable[int] | None = None,
) -> tuple[dict[str, Unit], int]:
    """The units the store should have on the server, keyed; and how many pulled ones were skipped."""
    if shape not in CVAT_TYPE:
        raise InputError(f"shape {shape!r}: use mask, polygon or box")
    media = require_media(store)
    objs = select_objects(store, objects)
    groups = group_ids(store.objects())  # same group ids as the XML export, whatever subset is pushed
    use_tracks = (task.is_video if tracks is None else bool(tracks)) and shape != "mask"
    plan = _Plan(task, media, {o.id: o.label for o in objs}, label_ids, groups, shape, use_tracks)
    jobs_of = task.jobs_of()
    skipped = 0
    for f, insts in iter_store_frames(store, list(media.frames), objs, desc="plan push"):
        i = media.task_index(f)
        for inst in insts:
            if _from_this_task(inst, host, task.id):
                skipped += 1
                continue
            plan.add(inst, f, i, jobs_of[i])
    plan.add_tracks()
    return plan.units, skipped


# ------------------------------------------------------------------------------------------ push
class _Pusher:
    """One push's connection to the server and the task's sync record (:class:`SyncState`): reads
    jobs, adopts what an interrupted push created, sends batches and records each success."""

    def __init__(self, store: AnnotationStore, conn: CvatConnection, task: TaskInfo, max_bytes: int):
        self.store = store
        self.conn = conn
        self.task = task
        self.max_bytes = max_bytes
        old = SyncState.load(store, conn.host, task.id)  # migrated when old; refused when too new
        self.state = SyncState(conn.host, task.id, old.dirty if old else False,
                               dict(old.units) if old else {})
        self.server: dict[int, dict[str, dict[int, dict]]] = {}  # job -> kind -> id -> item

    def save(self) -> None:
        self.state.save(self.store)

    @property
    def recs(self) -> dict[str, UnitRecord]:
        return self.state.units

    def fetch_job(self, job: int) -> dict[str, dict[int, dict]]:
        data = self.conn.request("GET", f"/api/jobs/{job}/annotations",
                                 what=f"reading the annotations of job {job} (task {self.task.id})") or {}
        got: dict[str, dict[int, dict]] = {"s": {}, "t": {}}
        for s in data.get("shapes") or []:
            if s.get("id") is not None:
                got["s"][int(s["id"])] = s
        for t in data.get("tracks") or []:
            if t.get("id") is not None:
                got["t"][int(t["id"])] = t
        self.server[job] = got
        return got

    def adopt(self, job: int, wanted: dict[str, Unit]) -> int:
        """Record server items of ``job`` nobody owns whose content equals a unit we still lack."""
        got = self.server.get(job) or self.fetch_job(job)
        owned = {(r.kind, r.server_id) for r in self.recs.values() if r.server_id is not None}
        by_hash: dict[tuple[str, str], list[int]] = {}
        for kind in ("s", "t"):
            for sid, item in got[kind].items():
                if (kind, sid) not in owned:
                    by_hash.setdefault((kind, item_hash(kind, item)), []).append(sid)
        n = 0
        for key, u in wanted.items():
            if key in self.recs:
                continue
            ids = by_hash.get((u.kind, u.hash))
            if ids:
                self.recs[key] = UnitRecord(u.kind, int(job), ids.pop(0), u.hash)
                n += 1
        return n

    def batches(self, items: list[Item]) -> list[list[Item]]:
        """Split (key, kind, json) items into bodies of at most ``max_bytes`` (one item minimum)."""
        out: list[list[Item]] = []
        cur: list[Item] = []
        size = BODY_OVERHEAD
        for it in items:
            n = len(it[2]) + 1
            if cur and size + n > self.max_bytes:
                out.append(cur)
                cur, size = [], BODY_OVERHEAD
            cur.append(it)
            size += n
        if cur:
            out.append(cur)
        return out

    def _sid(self, key: str) -> int | None:
        r = self.recs.get(key)
        return None if r is None else r.server_id

    @staticmethod
    def body(batch: list[Item]) -> bytes:
        return body_of([j for _, k, j in batch if k == "s"], [j for _, k, j in batch if k == "t"])

    def send(self, job: int, action: str, batch: list[Item], units: dict[str, Unit]) -> Any:
        """One PATCH; when its outcome is unknown, what is re-sent is only what did not happen
        (updates by id are safe to repeat, deletes re-send what is still there, creates adopt)."""
        what = (f"PATCH {action} of {len(batch)} annotation(s) in job {job} of task {self.task.id}")
        state = {"batch": batch}

        def after_unknown() -> Any:
            if action == "update":
                return self.body(state["batch"])  # an update by id is safe to repeat
            self.fetch_job(job)
            if action == "delete":  # send again only what is still there
                got = self.server[job]
                rest = [it for it in state["batch"] if self._sid(it[0]) in got[it[1]]]
                state["batch"] = rest
                return self.body(rest) if rest else None
            self.adopt(job, {k: units[k] for k, _, _ in state["batch"]})
            self.save()
            rest = [it for it in state["batch"] if it[0] not in self.recs]
            state["batch"] = rest
            return self.body(rest) if rest else None

        answer = self.conn.request("PATCH", f"/api/jobs/{job}/annotations", query={"action": action},
                                   body=self.body(batch), what=what, body_after_unknown=after_unknown)
        return state["batch"], answer

    def record_created(self, job: int, batch: list[Item], answer: Any, units: dict[str, Unit]) -> None:
        """Record the ids the server gave a create: matched by content hash, else by order when the
        server normalised the content, else by reading the job and adopting."""
        ret = {"s": list((answer or {}).get("shapes") or []), "t": list((answer or {}).get("tracks") or [])}
        for kind in ("s", "t"):
            sent = [k for k, kk, _ in batch if kk == kind]
            items = [it for it in ret[kind] if it.get("id") is not None]
            pool: dict[str, list[dict]] = {}
            for it in items:
                pool.setdefault(item_hash(kind, it), []).append(it)
            unmatched = []
            for key in sent:
                got = pool.get(units[key].hash)
                if got:
                    self.recs[key] = UnitRecord(kind, int(job), int(got.pop(0)["id"]), units[key].hash)
                else:
                    unmatched.append(key)
            if unmatched:
                self._record_unmatched(job, kind, unmatched, items, pool, units)

    def _record_unmatched(self, job: int, kind: str, unmatched: list[str], items: list[dict],
                          pool: dict[str, list[dict]], units: dict[str, Unit]) -> None:
        rest = [it for lst in pool.values() for it in lst]
        if len(rest) == len(unmatched):  # the server normalised the content: match by order
            order = {id(it): n for n, it in enumerate(items)}
            rest.sort(key=lambda it: order[id(it)])
            for key, it in zip(unmatched, rest):
                self.recs[key] = UnitRecord(kind, int(job), int(it["id"]), units[key].hash,
                                            item_hash(kind, it))
            return
        # no usable answer: read the job and adopt by content
        self.fetch_job(job)
        self.adopt(job, {k: units[k] for k in unmatched})
        still = [k for k in unmatched if k not in self.recs]
        if still:
            raise cvat_error(
                f"job {job} of task {self.task.id}: the server did not return ids for"
                f" {len(still)} created annotation(s) and they cannot be found; run the"
                " push again (it reconciles) or check the task in CVAT"
            )

    # ---- phases of push()
    def reconcile(self, units: dict[str, Unit], verify: bool) -> int:
        """Look at the server before sending: with ``verify``, our shapes a person edited or deleted
        become held (never overwritten or brought back); after an interrupted push (``dirty``), what
        it created is adopted so nothing is created twice. Returns how many were adopted."""
        recs = self.recs
        jobs_ids = {j.id for j in self.task.jobs}
        for k in [k for k, r in recs.items() if r.job not in jobs_ids]:
            del recs[k]  # records of jobs that no longer exist (the task was re-made)
        if not (verify or self.state.dirty):
            return 0
        jobs_to_read = sorted({r.job for r in recs.values()} | ({u.job for u in units.values()}
                                                                if self.state.dirty else set()))
        for job in progress(jobs_to_read, desc="read task"):
            self.fetch_job(job)
        for k, r in list(recs.items()):
            if r.held or r.server_id is None:
                continue
            item = self.server[r.job][r.kind].get(r.server_id)
            if item is None:
                if k in units:  # a person deleted our shape: do not bring it back
                    r.server_id, r.held = None, True
                else:
                    del recs[k]
                continue
            cur = item_hash(r.kind, item)
            if cur == r.current_hash:
                continue
            if k in units and cur == units[k].hash:  # an update whose answer was lost
                r.sent_hash, r.server_hash = cur, None
                continue
            r.held = True
        adopted = 0
        if self.state.dirty:
            for job in {u.job for u in units.values()}:
                adopted += self.adopt(job, {k: u for k, u in units.items() if u.job == job})
        return adopted

    def diff(self, units: dict[str, Unit], in_scope: set[int], report: PushReport) -> "_Changes":
        """What to send: creates for new units, updates (by id) for changed ones, deletes for units
        gone from the store (or moved to another job); held units and other objects' are left."""
        ch = _Changes()
        recs = self.recs
        for k, u in units.items():
            r = recs.get(k)
            if r is None:
                ch.creates.setdefault(u.job, []).append((k, u.kind, u.body))
            elif r.held:
                continue  # held: a person's now
            elif r.sent_hash != u.hash or r.job != u.job:
                if r.job != u.job:  # moved to another job: delete there, create here
                    ch.deletes.setdefault(r.job, []).append((k, r.kind, r.server_id))
                    ch.creates.setdefault(u.job, []).append((k, u.kind, u.body))
                else:
                    assert r.server_id is not None  # only held records lose their server id
                    body = u.with_id(r.server_id)
                    ch.updates.setdefault(u.job, []).append((k, u.kind, body))
            else:
                report.unchanged += 1
        for k, r in recs.items():
            if (k not in units and not r.held and r.server_id is not None
                    and UnitKey.parse(k).object_id in in_scope):
                ch.deletes.setdefault(r.job, []).append((k, r.kind, r.server_id))
        # delete bodies carry the server's own content (the server validates the payload)
        for job, lst in list(ch.deletes.items()):
            got = self.server.get(job) or self.fetch_job(job)
            ch.deletes[job] = [(k, kind, dumps(got[kind][sid])) for k, kind, sid in lst
                               if got[kind].get(sid) is not None]  # else: already gone
        return ch

    def send_all(self, ch: "_Changes", units: dict[str, Unit]) -> None:
        """Per job deletes, updates, creates, in bodies of at most ``max_bytes``; each success is
        recorded at once, and the record is ``dirty`` until the last one is."""
        recs = self.recs
        if ch.creates or ch.updates or ch.deletes or self.state.dirty:
            self.state.dirty = True
            self.save()
        n_req = sum(len(self.batches(lst)) for lst in ch.all_lists())
        bar_it = iter(progress(range(n_req), total=n_req, desc=f"push task {self.task.id}"))
        for job in sorted(set(ch.deletes) | set(ch.updates) | set(ch.creates)):
            for batch in self.batches(ch.deletes.get(job, [])):
                self.send(job, "delete", batch, units)
                for k, _, _ in batch:
                    recs.pop(k, None)
                self.save()
                next(bar_it, None)
            for batch in self.batches(ch.updates.get(job, [])):
                self.send(job, "update", batch, units)
                for k, _, _ in batch:
                    recs[k].sent_hash, recs[k].server_hash = units[k].hash, None
                self.save()
                next(bar_it, None)
            for batch in self.batches(ch.creates.get(job, [])):
                left, answer = self.send(job, "create", batch, units)
                if left:
                    self.record_created(job, left, answer, units)
                self.save()
                next(bar_it, None)
        self.state.dirty = False
        self.save()


@dataclass
class _Changes:
    """The requests a push makes, per job: lists of (unit key, kind, JSON body item)."""

    creates: dict[int, list[Item]] = field(default_factory=dict)
    updates: dict[int, list[Item]] = field(default_factory=dict)
    deletes: dict[int, list[Item]] = field(default_factory=dict)

    def all_lists(self) -> list[list[Item]]:
        return [lst for d in (self.deletes, self.updates, self.creates) for lst in d.values()]


def _label_ids(conn: CvatConnection, store: AnnotationStore, task: TaskInfo, objs: list[ObjectInfo],
               shape: str,
               create_labels: bool, dry_run: bool, report: PushReport) -> dict[str, int]:
    """Task label id per label the pushed objects use; missing ones created (``create_labels``),
    types checked against the shape type before anything is sent."""
    needed = sorted({o.label for o in objs})
    have = {lb.name: lb for lb in task_labels(conn, task.id)}
    ids = {n: have[n].id for n in needed if n in have}
    types = {n: have[n].type for n in needed if n in have}
    missing = [n for n in needed if n not in have]
    if missing:
        if not create_labels:
            raise cvat_error(f"task {task.id} has no label(s) {missing}; run `dl-utils cvat labels`"
                             " (sync_labels) first, or allow creating them")
        from ..formats import export_labels

        wanted = [lb for lb in export_labels(store, objs) if lb.name in missing]
        res = sync_labels(conn, wanted, task_id=task.id, dry_run=dry_run)
        report.labels_created = res.created
        for n in missing:
            ids[n] = res.mapping.get(n, -1)  # -1: a dry run did not create it
            types[n] = res.types.get(n, "any")
    ctype = CVAT_TYPE[shape]
    bad = [f"{n!r} (type {types[n]})" for n in needed if not compatible(types[n], ctype)]
    if bad:
        raise cvat_error(
            f"task {task.id}: label(s) {', '.join(bad)} do not accept {ctype} shapes; push another"
            f" --shape, or change the label type in CVAT to 'any' or '{ctype}'"
        )
    return ids


def push(
    store: AnnotationStore,
    conn: CvatConnection,
    task_id: int,
    *,
    shape: str = "mask",
    tracks: bool | None = None,
    objects: Iterable[int] | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    verify: bool = True,
    create_labels: bool = True,
    dry_run: bool = False,
) -> PushReport:
    """Make task ``task_id`` hold exactly the store's instances (see the module doc).

    ``shape``: ``mask`` (exact), ``polygon`` or ``box``; ``tracks``: polygons/boxes as tracks
    (default: on video tasks). ``objects``: push only these object ids (others' shapes are left as
    they are). ``verify``: read the task first so shapes people edited are held, not overwritten.

    Phases: plan (:func:`plan_units`), reconcile with the server (:meth:`_Pusher.reconcile`), diff
    against the sync record (:meth:`_Pusher.diff`), send and record (:meth:`_Pusher.send_all`).
    """
    if max_request_bytes < 1024:
        raise InputError(f"max_request_bytes={max_request_bytes}: use at least 1024")
    t0 = time.perf_counter()
    before = conn.stats.copy()
    report = PushReport(task_id=int(task_id), shape=shape, dry_run=dry_run)
    task = read_task(conn, task_id)
    media = require_media(store)
    check_task_media(media, task, str(store.path))
    p = _Pusher(store, conn, task, int(max_request_bytes))  # a record too new is refused here
    objs = select_objects(store, objects)
    label_ids = _label_ids(conn, store, task, objs, shape, create_labels, dry_run, report)
    units, report.skipped_from_cvat = plan_units(store, task, label_ids, host=conn.host, shape=shape,
                                                 tracks=tracks, objects=objects)
    report.adopted = p.reconcile(units, verify)
    in_scope = {o.id for o in objs}
    # every unit still held, found now or by an earlier push (until a pull hands it over)
    report.held = sorted(k for k, r in p.recs.items() if r.held and UnitKey.parse(k).object_id in in_scope)
    ch = p.diff(units, in_scope, report)
    report.created = sum(len(v) for v in ch.creates.values())
    report.updated = sum(len(v) for v in ch.updates.values())
    report.deleted = sum(len(v) for v in ch.deletes.values())
    if dry_run:
        report.planned_bytes = sum(len(p.body(b)) for lst in ch.all_lists() for b in p.batches(lst))
    else:
        p.send_all(ch, units)
    _finish(report, conn, before, t0)
    if not dry_run:
        log.info("%s", report)
    return report


def _finish(report: PushReport, conn: CvatConnection, before: Stats, t0: float) -> None:
    d = conn.stats.since(before)
    report.requests = d["requests"]
    report.retries = d["retries"]
    report.bytes_sent = d["bytes_sent"]
    report.bytes_received = d["bytes_received"]
    report.seconds = time.perf_counter() - t0


def push_state(store: AnnotationStore, host: str, task_id: int) -> SyncState | None:
    """The sync record a store keeps for a task (units: server ids, hashes, held), migrated to the
    current version when older; None before the first push."""
    return SyncState.load(store, host, task_id)


__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "PushReport", "base_key", "plan_units", "push", "push_state",
           "state_key"]
