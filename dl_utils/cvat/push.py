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

from ..annotations import ShapeType, Source
from ..cv_utils import encode_cvat_rle
from ..errors import InputError
from ..formats._common import iter_store_frames, progress, require_media, select_objects, source_of, to_geometry
from ..formats.cvat_xml import _group_ids
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
from .connection import CvatConnection, cvat_error, log
from .labels import compatible, sync_labels, task_labels
from .tasks import TaskInfo, check_task_media, read_task

#: Default upper bound of one request body (CVAT behind nginx accepts far more; proxies often 10 MB).
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
STATE_VERSION = 1


def state_key(host: str, task_id: int) -> str:
    return f"cvat.push:{host}:task:{int(task_id)}"


# record of a unit: [kind, job, server id | None, hash sent, server hash | None, held]
def _rec(kind: str, job: int, sid: int | None, h: str, sh: str | None = None, held: int = 0) -> list:
    return [kind, int(job), sid, h, sh, held]


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
def _add_shape(units: dict[str, Unit], key: str, jobs: list[int], body: str, h: str, i: int) -> None:
    """One unit per job holding task frame ``i``: the first job's keeps ``key`` (as pushes before
    overlap support recorded it), the others' get ``key:j<job id>``."""
    for n, job in enumerate(jobs):
        k = key if n == 0 else f"{key}:j{job}"
        units[k] = Unit(k, "s", job, body, h, (i, i))


def base_key(ukey: str) -> str:
    """The unit key without the job suffix of an overlap copy (tracks: without the job)."""
    parts = ukey.split(":")
    if parts[-1].startswith("j") and ukey[0] in "mpb":
        return ":".join(parts[:-1])
    if ukey[0] == "t":
        return ":".join(parts[:3])
    return ukey


def _from_this_task(inst: Any, host: str, task_id: int) -> bool:
    """Instances pulled from this task are people's shapes already on the server: never re-sent."""
    p = inst.prompts or {}
    c = p.get("cvat") if isinstance(p, dict) else None
    return isinstance(c, dict) and c.get("task") == task_id and c.get("host") in (None, host)


def plan_units(
    store: Any,
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
    all_objs = store.objects()
    groups = _group_ids(all_objs)  # same group ids as the XML export, whatever subset is pushed
    label_of = {o.id: o.label for o in objs}
    use_tracks = (task.is_video if tracks is None else bool(tracks)) and shape != "mask"
    jobs_of = task.jobs_of()
    job_stop = {j.id: min(j.stop, len(media.frames) - 1) for j in task.jobs}
    n = len(media.frames)
    ctype = CVAT_TYPE[shape]
    units: dict[str, Unit] = {}
    skipped = 0
    seq: dict[tuple[int, int, int], dict[int, tuple[list, str]]] = {}  # (oid, ring, job) -> i -> pts
    for f, insts in iter_store_frames(store, list(media.frames), objs, desc="plan push"):
        i = media.task_index(f)
        jobs = jobs_of[i]
        w, h = media.size_of(f) if hasattr(media, "size_of") else (media.width, media.height)
        for inst in insts:
            if _from_this_task(inst, host, task.id):
                skipped += 1
                continue
            g = to_geometry(inst, h, w, ShapeType(shape))
            if g is None:
                continue
            if not jobs:
                raise cvat_error(f"frame {f} (task frame {i}) of task {task.id} is in no annotation"
                                 " job; check the task's jobs in CVAT")
            oid = inst.object_id
            label_id = label_ids[label_of[oid]]
            src = inst.source.value
            # a frame in the overlap of two jobs goes to both: each job's annotator sees it, and
            # CVAT's task-level merge joins tracks by comparing them on the overlap frames
            if g.kind is ShapeType.MASK:
                pts = encode_cvat_rle(g.mask)
                d = shape_payload("mask", i, label_id, groups[oid], src, pts, inst.score)
                _add_shape(units, f"m:{f}:{oid}", jobs, dumps(d), shape_hash(d), i)
            elif g.kind is ShapeType.POLYGON:
                for k, ring in enumerate(g.rings or []):
                    pts = [round(float(v), 3) for v in ring]
                    if use_tracks:
                        for job in jobs:
                            seq.setdefault((oid, k, job), {})[i] = (pts, src)
                        continue
                    d = shape_payload("polygon", i, label_id, groups[oid], src, pts, inst.score)
                    _add_shape(units, f"p:{f}:{oid}:{k}", jobs, dumps(d), shape_hash(d), i)
            else:
                pts = [round(float(v), 3) for v in g.box]  # type: ignore[union-attr]
                if use_tracks:
                    for job in jobs:
                        seq.setdefault((oid, 0, job), {})[i] = (pts, src)
                    continue
                d = shape_payload("rectangle", i, label_id, groups[oid], src, pts, inst.score)
                _add_shape(units, f"b:{f}:{oid}", jobs, dumps(d), shape_hash(d), i)
    for (oid, k, job), frames in seq.items():
        idx = sorted(frames)
        shapes = []
        for pos, i in enumerate(idx):
            pts, _src = frames[i]
            shapes.append(track_shape(ctype, i, pts))
            last_of_run = pos + 1 == len(idx) or idx[pos + 1] != i + 1
            if last_of_run and i + 1 < n and i + 1 <= job_stop[job]:  # gone on the next frame
                shapes.append(track_shape(ctype, i + 1, pts, outside=True))
        src = source_of(Source(frames[i][1]) for i in idx)
        d = track_payload(idx[0], label_ids[label_of[oid]], groups[oid], src.value, shapes)
        key = f"t{shape[0]}:{oid}:{k}:{job}"
        units[key] = Unit(key, "t", job, dumps(d), track_hash(d), (idx[0], idx[-1]))
    return units, skipped


# ------------------------------------------------------------------------------------------ push
class _Pusher:
    def __init__(self, store: Any, conn: CvatConnection, task: TaskInfo, key: str, max_bytes: int):
        self.store = store
        self.conn = conn
        self.task = task
        self.key = key
        self.max_bytes = max_bytes
        st = store.get_meta(key) or {}
        self.state: dict[str, Any] = {
            "version": STATE_VERSION, "host": conn.host, "task": task.id,
            "dirty": bool(st.get("dirty", False)), "units": dict(st.get("units") or {}),
        }
        self.server: dict[int, dict[str, dict[int, dict]]] = {}  # job -> kind -> id -> item

    def save(self) -> None:
        self.store.set_meta(self.key, self.state)

    @property
    def recs(self) -> dict[str, list]:
        return self.state["units"]

    def fetch_job(self, job: int) -> dict[str, dict[int, dict]]:
        data = self.conn.request("GET", f"/api/jobs/{job}/annotations",
                                 what=f"reading the annotations of job {job} (task {self.task.id})") or {}
        got = {"s": {}, "t": {}}
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
        owned = {(r[0], r[2]) for r in self.recs.values() if r[2] is not None}
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
                self.recs[key] = _rec(u.kind, job, ids.pop(0), u.hash)
                n += 1
        return n

    def batches(self, items: list[tuple[str, str, str]]) -> list[list[tuple[str, str, str]]]:
        """Split (key, kind, json) items into bodies of at most ``max_bytes`` (one item minimum)."""
        out: list[list[tuple[str, str, str]]] = []
        cur: list[tuple[str, str, str]] = []
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
        return None if r is None else r[2]

    @staticmethod
    def body(batch: list[tuple[str, str, str]]) -> bytes:
        return body_of([j for _, k, j in batch if k == "s"], [j for _, k, j in batch if k == "t"])

    def send(self, job: int, action: str, batch: list[tuple[str, str, str]],
             units: dict[str, Unit]) -> Any:
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

    def record_created(self, job: int, batch: list[tuple[str, str, str]], answer: Any,
                       units: dict[str, Unit]) -> None:
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
                    self.recs[key] = _rec(kind, job, int(got.pop(0)["id"]), units[key].hash)
                else:
                    unmatched.append(key)
            if unmatched:
                rest = [it for lst in pool.values() for it in lst]
                if len(rest) == len(unmatched):  # the server normalised the content: match by order
                    order = {id(it): n for n, it in enumerate(items)}
                    rest.sort(key=lambda it: order[id(it)])
                    for key, it in zip(unmatched, rest):
                        self.recs[key] = _rec(kind, job, int(it["id"]), units[key].hash,
                                              item_hash(kind, it))
                else:  # no usable answer: read the job and adopt by content
                    self.fetch_job(job)
                    self.adopt(job, {k: units[k] for k in unmatched})
                    still = [k for k in unmatched if k not in self.recs]
                    if still:
                        raise cvat_error(
                            f"job {job} of task {self.task.id}: the server did not return ids for"
                            f" {len(still)} created annotation(s) and they cannot be found; run the"
                            " push again (it reconciles) or check the task in CVAT"
                        )


def _label_ids(conn: CvatConnection, store: Any, task: TaskInfo, objs: list, shape: str,
               create_labels: bool, dry_run: bool, report: PushReport) -> dict[str, int]:
    needed = sorted({o.label for o in objs})
    have = {lb.name: lb for lb in task_labels(conn, task.id)}
    ids = {n: have[n].id for n in needed if n in have}
    types = {n: have[n].type for n in needed if n in have}
    missing = [n for n in needed if n not in have]
    if missing:
        if not create_labels:
            raise cvat_error(f"task {task.id} has no label(s) {missing}; run `dl-utils cvat labels`"
                             " (sync_labels) first, or allow creating them")
        from ..formats._common import export_labels

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
    store: Any,
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
    """
    if max_request_bytes < 1024:
        raise InputError(f"max_request_bytes={max_request_bytes}: use at least 1024")
    t0 = time.perf_counter()
    before = conn.stats.copy()
    report = PushReport(task_id=int(task_id), shape=shape, dry_run=dry_run)
    task = read_task(conn, task_id)
    media = require_media(store)
    check_task_media(media, task, str(store.path))
    objs = select_objects(store, objects)
    label_ids = _label_ids(conn, store, task, objs, shape, create_labels, dry_run, report)
    units, report.skipped_from_cvat = plan_units(store, task, label_ids, host=conn.host, shape=shape,
                                                 tracks=tracks, objects=objects)
    key = state_key(conn.host, task.id)
    p = _Pusher(store, conn, task, key, int(max_request_bytes))
    recs = p.recs
    in_scope_objs = {o.id for o in objs}

    def in_scope(ukey: str) -> bool:
        return int(ukey.split(":")[2 if ukey[0] in "mpb" else 1]) in in_scope_objs

    jobs_ids = {j.id for j in task.jobs}
    # forget records of jobs that no longer exist (the task was re-made)
    for k in [k for k, r in recs.items() if r[1] not in jobs_ids]:
        del recs[k]

    # ---- look at the server: human edits, and what an interrupted push left behind
    if verify or p.state["dirty"]:
        jobs_to_read = sorted({r[1] for r in recs.values()} | ({u.job for u in units.values()}
                                                              if p.state["dirty"] else set()))
        for job in progress(jobs_to_read, desc="read task"):
            p.fetch_job(job)
        for k, r in list(recs.items()):
            kind, job, sid, h, sh, held = r
            if held or sid is None:
                continue
            item = p.server[job][kind].get(sid)
            if item is None:
                if k in units:  # a person deleted our shape: do not bring it back
                    r[2], r[5] = None, 1
                else:
                    del recs[k]
            else:
                cur = item_hash(kind, item)
                if cur == (sh or h):
                    continue
                if k in units and cur == units[k].hash:  # an update whose answer was lost
                    r[3], r[4] = cur, None
                    continue
                r[5] = 1
        if p.state["dirty"]:
            for job in {u.job for u in units.values()}:
                report.adopted += p.adopt(job, {k: u for k, u in units.items() if u.job == job})

    # every unit still held, found now or by an earlier push (until a pull hands it over)
    report.held = sorted(k for k, r in recs.items() if r[5] and in_scope(k))

    # ---- what to send
    creates: dict[int, list] = {}
    updates: dict[int, list] = {}
    deletes: dict[int, list] = {}
    for k, u in units.items():
        r = recs.get(k)
        if r is None:
            creates.setdefault(u.job, []).append((k, u.kind, u.body))
        elif r[5]:
            continue  # held: a person's now
        elif r[3] != u.hash or r[1] != u.job:
            if r[1] != u.job:  # moved to another job: delete there, create here
                deletes.setdefault(r[1], []).append((k, r[0], r[2]))
                creates.setdefault(u.job, []).append((k, u.kind, u.body))
            else:
                updates.setdefault(u.job, []).append((k, u.kind, u.with_id(r[2])))
        else:
            report.unchanged += 1
    for k, r in recs.items():
        if k not in units and not r[5] and r[2] is not None and in_scope(k):
            deletes.setdefault(r[1], []).append((k, r[0], r[2]))
    # delete bodies carry the server's own content (the server validates the payload)
    del_items: dict[int, list[tuple[str, str, str]]] = {}
    for job, lst in deletes.items():
        got = p.server.get(job) or p.fetch_job(job)
        items = []
        for k, kind, sid in lst:
            item = got[kind].get(sid)
            if item is None:  # already gone
                continue
            items.append((k, kind, dumps(item)))
        del_items[job] = items

    report.created = sum(len(v) for v in creates.values())
    report.updated = sum(len(v) for v in updates.values())
    report.deleted = sum(len(v) for v in del_items.values())
    if dry_run:
        report.planned_bytes = sum(
            len(p.body(b)) for d in (del_items, updates, creates) for lst in d.values()
            for b in p.batches(lst)
        )
        _finish(report, conn, before, t0)
        return report

    # ---- send: per job deletes, updates, creates; record each success at once
    if creates or updates or del_items or p.state["dirty"]:
        p.state["dirty"] = True
        p.save()
    n_req = sum(len(p.batches(lst)) for d in (del_items, updates, creates) for lst in d.values())
    bar = progress(range(n_req), total=n_req, desc=f"push task {task.id}")
    bar_it = iter(bar)
    for job in sorted(set(del_items) | set(updates) | set(creates)):
        for batch in p.batches(del_items.get(job, [])):
            p.send(job, "delete", batch, units)
            for k, _, _ in batch:
                recs.pop(k, None)
            p.save()
            next(bar_it, None)
        for batch in p.batches(updates.get(job, [])):
            p.send(job, "update", batch, units)
            for k, _, _ in batch:
                r = recs[k]
                r[3], r[4] = units[k].hash, None
            p.save()
            next(bar_it, None)
        for batch in p.batches(creates.get(job, [])):
            left, answer = p.send(job, "create", batch, units)
            if left:
                p.record_created(job, left, answer, units)
            p.save()
            next(bar_it, None)
    p.state["dirty"] = False
    p.save()
    _finish(report, conn, before, t0)
    log.info("%s", report)
    return report


def _finish(report: PushReport, conn: CvatConnection, before: Any, t0: float) -> None:
    d = conn.stats.since(before)
    report.requests = d["requests"]
    report.retries = d["retries"]
    report.bytes_sent = d["bytes_sent"]
    report.bytes_received = d["bytes_received"]
    report.seconds = time.perf_counter() - t0


def push_state(store: Any, host: str, task_id: int) -> dict[str, Any] | None:
    """The push record a store keeps for a task (ids, hashes), or None before the first push."""
    return store.get_meta(state_key(host, task_id))


__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "PushReport", "base_key", "plan_units", "push", "push_state",
           "state_key"]
