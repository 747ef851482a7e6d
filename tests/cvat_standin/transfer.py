"""Stand-in routes for CVAT's dataset export, task backup and task restore (issue 19).

The protocol is CVAT's background-request one (cvat/apps/redis_handler/background.py
``AbstractRequestManager`` / ``AbstractExporter``, cvat/apps/engine/background.py ``DatasetExporter``,
``BackupExporter``, ``BackupImporter``):

* ``POST /api/{tasks|projects}/{id}/dataset/export?format=F&save_images=B`` and
  ``POST /api/tasks/{id}/backup/export`` answer ``202 {"rq_id"}``; a request for the same rq_id
  that is still queued or started answers ``409 {"rq_id"}`` (``handle_existing_job``);
* ``GET /api/requests/{rq_id}`` reports ``queued``, ``started``, then ``finished`` with
  ``result_url`` (or ``failed`` with ``message``);
* ``GET result_url`` (``/api/{tasks|projects}/{id}/dataset/download?rq_id=..``,
  ``/api/tasks/{id}/backup/download?rq_id=..``) sends the file as an attachment (``sendfile``);
  byte ranges are served as nginx serves them in CVAT's deployment (X-Accel-Redirect);
* ``POST /api/tasks/backup`` takes the backup zip as multipart ``task_file`` or by CVAT's TUS
  protocol (``Upload-Start``, TUS ``POST``/``PATCH``/``HEAD``, ``Upload-Finish`` with
  ``?filename=<file id>``; cvat/apps/engine/mixins.py ``UploadMixin``) and answers ``202 {"rq_id"}``;
  the finished request's ``result_id`` is the new task's id.

The work of a request is done when it finishes (on the poll that reports ``finished``), as a
worker would do it after the request was queued: an export sees the annotations of that moment.

Everything this module keeps lives in the stand-in's own ``State`` (requests in
``state.requests`` with ``"transfer": True``) or in :class:`TransferState`, which is attached to the
server and forgotten whenever the server is reset. ``transfer_state(server)`` gives tests the knobs:
``polls`` (queued / started polls before a request finishes), ``fail_next`` (the next request
fails with that message, as a worker exception would), ``ranges`` (serve ``Range``; off: every
download is a full ``200``), ``disabled_formats``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

from .state import MediaError, now_iso
from .validate import ApiError, bad_request

if TYPE_CHECKING:
    from .server import Request, Response, StandinServer

#: Export formats of a CVAT 2.x server (``GET /api/server/annotation/formats`` ``exporters``; names
#: from cvat/apps/dataset_manager/formats/*.py ``@exporter(name=..., ext=..., version=...)``). The
#: list is the server's business: clients read it, never hard-code it.
EXPORTERS: tuple[tuple[str, str, str], ...] = (
    ("CamVid", "ZIP", "1.0"), ("Cityscapes", "ZIP", "1.0"), ("COCO", "ZIP", "1.0"),
    ("COCO Keypoints", "ZIP", "1.0"), ("CVAT for images", "ZIP", "1.1"),
    ("CVAT for video", "ZIP", "1.1"), ("Datumaro", "ZIP", "1.0"), ("ICDAR Localization", "ZIP", "1.0"),
    ("ImageNet", "ZIP", "1.0"), ("KITTI", "ZIP", "1.0"), ("LabelMe", "ZIP", "3.0"),
    ("LFW", "ZIP", "1.0"), ("Market-1501", "ZIP", "1.0"), ("MOT", "ZIP", "1.1"),
    ("MOTS PNG", "ZIP", "1.0"), ("Open Images V6", "ZIP", "1.0"), ("PASCAL VOC", "ZIP", "1.1"),
    ("Segmentation mask", "ZIP", "1.1"), ("VGGFace2", "ZIP", "1.0"), ("WiderFace", "ZIP", "1.0"),
    ("YOLO", "ZIP", "1.1"), ("Ultralytics YOLO Detection", "ZIP", "1.0"),
    ("Ultralytics YOLO Segmentation", "ZIP", "1.0"), ("Ultralytics YOLO Pose", "ZIP", "1.0"),
)

#: Fixed time stamp of every zip member, so an export of unchanged state is byte-identical.
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)
BACKUP_VERSION = "1.0"  # cvat/apps/engine/backup.py Version.V1


@dataclass
class TransferState:
    """Knobs and TUS uploads of this module, forgotten with every server reset."""

    requests: dict = field(repr=False)  # the State.requests dict this belongs to (reset detection)
    polls: tuple[int, int] = (1, 1)  # polls answered 'queued', then 'started', before the outcome
    fail_next: str | None = None
    ranges: bool = True
    disabled_formats: set[str] = field(default_factory=set)
    uploads: dict[str, dict] = field(default_factory=dict)  # TUS file id -> {name, length, data}
    file_ids: dict[str, bytes] = field(default_factory=dict)  # finished TUS uploads by file id


def transfer_state(srv: "StandinServer") -> TransferState:
    """This module's state on ``srv`` (new after every ``srv.reset()``)."""
    ts = getattr(srv, "_transfer_state", None)
    if ts is None or ts.requests is not srv.state.requests:
        ts = TransferState(requests=srv.state.requests)
        srv._transfer_state = ts  # type: ignore[attr-defined]
    return ts


def _server() -> Any:
    from . import server

    return server


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> "Response":
    return _server().Response(status, body, headers=headers)


def _text(status: int, text: str) -> "Response":
    """Django's ``HttpResponseBadRequest("...")`` / ``HttpResponseNotFound``: a plain text body."""
    return _server().Response(status, text.encode(), content_type="text/html; charset=utf-8")


def _not_found() -> ApiError:
    return ApiError(404, {"detail": "Not found."})


def _task(srv: "StandinServer", tid: int) -> dict:
    t = srv.state.tasks.get(tid)
    if t is None:
        raise _not_found()
    return t


def _project(srv: "StandinServer", pid: int) -> dict:
    p = srv.state.projects.get(pid)
    if p is None:
        raise _not_found()
    return p


def _to_bool(v: Any) -> bool:
    """attrs.converters.to_bool, as CVAT parses ``save_images`` / ``lightweight``."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "t", "yes", "y", "on", "1"):
        return True
    if s in ("false", "f", "no", "n", "off", "0", ""):
        return False
    raise bad_request([f"Cannot convert value to bool: {v!r}"])


# ================================================================================== request ids
def render_rq_id(**parts: Any) -> str:
    """A request id as cvat/apps/engine/rq.py ``RequestId.render`` (CVAT 2.2x/2.3x) writes it:
    ``action=export&target=task&target_id=7&subresource=dataset&user_id=1&format=COCO 1.0``.
    (cvat/apps/redis_handler/rq.py of later versions base64-encodes the same text.) Clients must
    treat it as opaque and quote it in URLs (``&``, ``=``, spaces; ``/`` and ``+`` in base64)."""
    return "&".join(f"{k}={v}" for k, v in parts.items())


# ================================================================================== requests
def _new_request(srv: "StandinServer", rq_id: str, **kw: Any) -> dict:
    """A background request of this module in ``state.requests``. ``task_id`` is None there so the
    old ``/api/tasks/{id}/status`` call (server.py) never sees it; ``target_task`` keeps the id."""
    rq = {"id": rq_id, "transfer": True, "status": "queued", "message": "", "task_id": None,
          "created_date": now_iso(), "started_date": None, "finished_date": None, "polls": 0,
          "result_url": None, "result_id": None, "result": None, "filename": None, **kw}
    srv.state.requests[rq_id] = rq
    return rq


def _advance(srv: "StandinServer", rq: dict) -> None:
    """One poll: queued -> started -> finished / failed (the work is done on finishing)."""
    if rq["status"] in ("finished", "failed"):
        return
    ts = transfer_state(srv)
    rq["polls"] += 1
    q, s = ts.polls
    if rq["polls"] <= q:
        rq["status"] = "queued"
        return
    if rq["polls"] <= q + s:
        rq["status"] = "started"
        rq["started_date"] = rq["started_date"] or now_iso()
        return
    rq["started_date"] = rq["started_date"] or now_iso()
    _finish(srv, rq)


def _finish(srv: "StandinServer", rq: dict) -> None:
    ts = transfer_state(srv)
    try:
        if ts.fail_next is not None:
            msg, ts.fail_next = ts.fail_next, None
            raise _WorkerError(msg)
        rq["work"](srv, rq)
    except _WorkerError as e:
        rq.update(status="failed", message=str(e), finished_date=now_iso())
        return
    rq.update(status="finished", finished_date=now_iso())


class _WorkerError(Exception):
    """An exception in the background job: the request ends 'failed' with this message."""


def request_json(srv: "StandinServer", rq: dict) -> dict:
    """cvat/apps/redis_handler/serializers.py ``RequestSerializer``: operation type
    ``<action>:<subresource or target>``, ``result_url`` for exports, ``result_id`` for imports."""
    _advance(srv, rq)
    return {"id": rq["id"], "status": rq["status"], "message": rq["message"],
            "progress": {"queued": 0.0, "started": 0.5}.get(rq["status"], 1.0),
            "operation": {"type": rq["op_type"], "target": rq["target"],
                          "project_id": rq.get("project_id"), "task_id": rq.get("target_task"),
                          "job_id": None, "org_id": None, "format": rq.get("format"),
                          "function_id": None, "lightweight": rq.get("lightweight")},
            "created_date": rq["created_date"], "started_date": rq["started_date"],
            "finished_date": rq["finished_date"], "expiry_date": None,
            "owner": {"id": 1, "username": srv.state.username},
            "result_url": rq["result_url"] if rq["status"] == "finished" else None,
            "result_id": rq["result_id"] if rq["status"] == "finished" else None}


def _start(srv: "StandinServer", rq_id: str, **kw: Any) -> "Response":
    """``AbstractRequestManager.enqueue_job``: 409 with the id while the same request is queued or
    started; a finished or failed one is replaced."""
    old = srv.state.requests.get(rq_id)
    if old is not None:
        if old["status"] in ("queued", "started"):
            return _json_response(409, {"rq_id": rq_id})
        del srv.state.requests[rq_id]
    _new_request(srv, rq_id, **kw)
    return _json_response(202, {"rq_id": rq_id})


# ================================================================================== formats
def formats_view(srv: "StandinServer", req: "Request") -> "Response":
    """``GET /api/server/annotation/formats`` (cvat/apps/dataset_manager/views.py
    ``get_export_formats``, serializers ``DatasetFormatsSerializer``)."""
    ts = transfer_state(srv)
    exporters = [{"name": f"{n} {v}", "ext": ext, "version": v, "enabled": f"{n} {v}" not in ts.disabled_formats,
                  "dimension": "2d"} for n, ext, v in EXPORTERS]
    importers = [dict(e, enabled=True) for e in exporters if not e["name"].startswith("Ultralytics YOLO Pose")]
    return _json_response(200, {"importers": importers, "exporters": exporters})


def _check_format(srv: "StandinServer", fmt: str) -> None:
    """engine/background.py ``DatasetExporter.validate_request``: an unknown name is a
    ``ValidationError`` (400, a list body); a disabled one ``MethodNotAllowed`` (405)."""
    names = {f"{n} {v}" for n, _, v in EXPORTERS}
    if fmt not in names:
        raise bad_request(["Unknown format specified for the request"])
    if fmt in transfer_state(srv).disabled_formats:
        raise ApiError(405, {"detail": "Format is disabled"})


def _location(req: "Request") -> None:
    """engine/location.py ``get_location_configuration``: only ``local`` exports are downloadable;
    the stand-in has no cloud storage."""
    loc = req.query.get("location")
    if loc not in (None, "", "local"):
        if loc == "cloud_storage":
            raise bad_request(["Cloud storage location was selected as the destination, but cloud"
                               " storage id was not specified"] if not req.query.get("cloud_storage_id")
                              else ["cloud storages are not available in the stand-in"])
        raise bad_request([f"Unexpected location {loc} specified for the request"])


# ================================================================================== dataset export
def dataset_export(srv: "StandinServer", req: "Request", target: str, oid: int) -> "Response":
    """``POST /api/{tasks|projects}/{id}/dataset/export``."""
    obj = _task(srv, oid) if target == "task" else _project(srv, oid)
    fmt = str(req.query.get("format") or "")
    _location(req)
    _check_format(srv, fmt)
    save_images = _to_bool(req.query.get("save_images", False))
    sub = "dataset" if save_images else "annotations"
    rq_id = render_rq_id(action="export", target=target, target_id=oid, subresource=sub, user_id=1,
                         format=fmt)
    url = f"{srv.url}/api/{target}s/{oid}/dataset/download?rq_id={quote(rq_id, safe='')}"
    stamp = re.sub(r"\D", "_", obj["updated_date"][:19])
    ext = ".zip"
    name = (req.query.get("filename") or
            f"{target}_{oid}-{stamp}-{fmt.lower().replace(' ', '_')}-{sub}{ext}")
    return _start(srv, rq_id, op_type=f"export:{sub}", target=target, format=fmt,
                  project_id=oid if target == "project" else obj.get("project_id"),
                  target_task=oid if target == "task" else None, result_url=url, filename=name,
                  work=lambda s, rq: _export_work(s, rq, target, oid, fmt, save_images))


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    return buf.getvalue()


def _task_annotations(srv: "StandinServer", tid: int) -> dict:
    """The task's annotations as its task-level GET returns them (the jobs merged)."""
    server = _server()
    st = srv.state
    jobs = st.task_jobs(tid)
    t = st.tasks[tid]
    if len(jobs) > 1:
        from .merge import merge_jobs

        return merge_jobs([(j["start_frame"], server._copy(server._collect(srv, [j]))) for j in jobs],
                          int(t.get("overlap") or 0))
    return server._copy(server._collect(srv, jobs))


def _task_export_members(srv: "StandinServer", tid: int, fmt: str, images: bool,
                         prefix: str = "") -> list[tuple[str, bytes]]:
    """A deterministic stand-in 'dataset': the task's labels and merged annotations as JSON, and
    with images the frames (uploaded files as sent; video frames as PNG). Its layout is not the
    format's: the client only transfers the file."""
    st = srv.state
    t = st.tasks[tid]
    labels = sorted(st.task_labels(tid), key=lambda lb: lb["id"])
    doc = {"format": fmt, "task": {"id": tid, "name": t["name"], "size": (t.get("data") or {}).get("size", 0)},
           "labels": [{"id": lb["id"], "name": lb["name"], "type": lb["type"]} for lb in labels],
           "annotations": _task_annotations(srv, tid) if t.get("data") else {"tags": [], "shapes": [], "tracks": []}}
    out = [(prefix + "annotations.json", json.dumps(doc, sort_keys=True, indent=1).encode())]
    if images and t.get("data"):
        m = st.media[tid]
        for i in range(len(m.numbers)):
            data, mime = m.frame_bytes(i)
            name = PurePosixPath(m.names[i]).name if m.kind == "images" else f"frame_{i:06d}.png"
            out.append((f"{prefix}images/{name}", data))
    return out


def _export_work(srv: "StandinServer", rq: dict, target: str, oid: int, fmt: str, images: bool) -> None:
    st = srv.state
    if target == "task":
        if oid not in st.tasks:
            raise _WorkerError(f"Task with id {oid} does not exist")
        members = _task_export_members(srv, oid, fmt, images)
    else:
        if oid not in st.projects:
            raise _WorkerError(f"Project with id {oid} does not exist")
        members = []
        for tid in sorted(t["id"] for t in st.tasks.values() if t.get("project_id") == oid):
            members += _task_export_members(srv, tid, fmt, images, prefix=f"task_{tid}/")
        members.insert(0, ("project.json", json.dumps({"id": oid, "name": st.projects[oid]["name"],
                                                       "format": fmt}, sort_keys=True).encode()))
    rq["result"] = _zip(members)


# ================================================================================== download
def download(srv: "StandinServer", req: "Request", target: str, oid: int, sub: str) -> "Response":
    """``GET /api/{target}s/{id}/{dataset|backup}/download?rq_id=`` (redis_handler/background.py
    ``AbstractExporter.get_downloader`` and ``Downloader.download_file``)."""
    _task(srv, oid) if target == "task" else _project(srv, oid)
    rq_id = req.query.get("rq_id")
    if not rq_id:
        raise bad_request(["Missing request id in the query parameters"])
    rq = srv.state.requests.get(rq_id)
    if rq is not None and (not rq.get("transfer") or rq["target"] != target or
                           (rq.get("target_task") if target == "task" else rq.get("project_id")) != oid or
                           (sub == "backup") != (rq["op_type"] == "export:backup")):
        raise bad_request(["Invalid export request id"])
    if rq is None:
        return _text(400, "Unknown export request id")
    if rq["status"] != "finished":
        return _text(400, "The export process is not finished")
    return send_bytes(srv, req, rq["result"], rq["filename"])


def send_bytes(srv: "StandinServer", req: "Request", data: bytes, filename: str) -> "Response":
    """An attachment with an ETag; ``Range: bytes=N-[M]`` (with ``If-Range``) as nginx answers it:
    206 and ``Content-Range``, 416 beyond the end, the whole file when ``If-Range`` differs."""
    etag = '"' + hashlib.sha1(data).hexdigest() + '"'
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "ETag": etag,
               "Accept-Ranges": "bytes" if transfer_state(srv).ranges else "none"}
    rng = req.headers.get("Range")
    if_range = req.headers.get("If-Range")
    Response = _server().Response
    if rng and transfer_state(srv).ranges and (if_range is None or if_range == etag):
        m = re.fullmatch(r"\s*bytes=(\d+)-(\d*)\s*", rng)
        if m:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            if start >= len(data):
                return Response(416, b"", headers={"Content-Range": f"bytes */{len(data)}"},
                                content_type="text/html")
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return Response(206, data[start:end + 1], headers=headers, content_type="application/zip")
    return Response(200, data, headers=headers, content_type="application/zip")


# ================================================================================== backup
def backup_export(srv: "StandinServer", req: "Request", tid: int) -> "Response":
    """``POST /api/tasks/{id}/backup/export`` (engine/background.py ``BackupExporter``): a task
    without data cannot be backed up."""
    t = _task(srv, tid)
    _location(req)
    if not t.get("data"):
        raise bad_request(["Backup of a task without data is not allowed"])
    rq_id = render_rq_id(action="export", target="task", target_id=tid, subresource="backup", user_id=1,
                         lightweight=False)
    url = f"{srv.url}/api/tasks/{tid}/backup/download?rq_id={quote(rq_id, safe='')}"
    stamp = re.sub(r"\D", "_", t["updated_date"][:19])
    name = req.query.get("filename") or f"task_{re.sub(r'[^A-Za-z0-9_-]+', '_', t['name']).lower()}_backup_{stamp}.zip"
    return _start(srv, rq_id, op_type="export:backup", target="task", project_id=t.get("project_id"),
                  target_task=tid, result_url=url, filename=name, lightweight=False,
                  work=lambda s, rq: _backup_work(s, rq, tid))


def _strip_ids(item: dict, label_names: dict[int, str], spec_names: dict[int, str]) -> dict:
    """engine/backup.py ``_prepare_annotations``: ids dropped, ``label_id`` -> ``label`` (name),
    attribute ``spec_id`` -> the spec's name."""
    out = {k: v for k, v in item.items() if k not in ("id", "label_id")}
    if "label_id" in item:
        out["label"] = label_names[item["label_id"]]
    out["attributes"] = [{"spec_id": spec_names[a["spec_id"]], "value": a["value"]}
                         for a in item.get("attributes") or []]
    if "shapes" in item:
        out["shapes"] = [_strip_ids(s, label_names, spec_names) for s in item["shapes"]]
    if item.get("elements"):
        out["elements"] = [_strip_ids(e, label_names, spec_names) for e in item["elements"]]
    return out


def _backup_work(srv: "StandinServer", rq: dict, tid: int) -> None:
    """engine/backup.py ``TaskExporter``: ``task.json`` (task, labels, data parameters, jobs),
    ``annotations.json`` (one entry per job, labels by name), ``data/`` (the uploaded media)."""
    st = srv.state
    t = st.tasks.get(tid)
    if t is None:
        raise _WorkerError(f"Task with id {tid} does not exist")
    d = t["data"]
    m = st.media[tid]
    labels = sorted(st.task_labels(tid), key=lambda lb: lb["id"])
    label_names = {lb["id"]: lb["name"] for lb in labels}
    spec_names = {a["id"]: a["name"] for lb in labels for a in lb["attributes"]}
    jobs = st.task_jobs(tid)
    manifest = {
        "version": BACKUP_VERSION, "name": t["name"], "bug_tracker": t.get("bug_tracker", ""),
        "status": "annotation", "subset": t.get("subset", ""), "mode": t["mode"],
        "segment_size": t["segment_size"], "overlap": t["overlap"],
        "labels": [{"name": lb["name"], "color": lb["color"], "type": lb["type"],
                    "attributes": [{k: a[k] for k in ("name", "mutable", "input_type", "default_value",
                                                        "values")} for a in lb["attributes"]]}
                   for lb in labels],
        "data": {"chunk_size": d["chunk_size"], "image_quality": d["image_quality"],
                 "start_frame": d["start_frame"], "stop_frame": d["stop_frame"],
                 "frame_filter": d["frame_filter"], "chunk_type": d["chunk_type"],
                 "storage_method": "cache", "storage": "local",
                 "sorting_method": "predefined" if m.kind == "images" else d.get("sorting_method"),
                 "upload_file_order": [PurePosixPath(n).name for n in m.names] if m.kind == "images" else []},
        "jobs": [{"start_frame": j["start_frame"], "stop_frame": j["stop_frame"], "type": "annotation",
                  "status": "annotation"} for j in jobs],
    }
    anns = []
    for j in jobs:
        a = st.annotations[j["id"]]
        anns.append({"version": a.version,
                     **{sec: [_strip_ids(x, label_names, spec_names)
                              for x in sorted(getattr(a, sec).values(), key=lambda x: x["id"])]
                        for sec in ("tags", "shapes", "tracks")}})
    members = [("task.json", json.dumps(manifest, indent=1).encode()),
               ("annotations.json", json.dumps(anns, indent=1).encode())]
    if m.kind == "images":
        assert m.images is not None
        for name, data in zip(m.names, m.images):
            members.append((f"data/{PurePosixPath(name).name}", data))
    else:
        members.append((f"data/{PurePosixPath(m.names[0]).name}", Path(m.video).read_bytes()))
    rq["result"] = _zip(members)


# ================================================================================== restore
def backup_import(srv: "StandinServer", req: "Request") -> "Response":
    """``POST /api/tasks/backup`` (engine/views.py ``TaskViewSet.import_backup`` ->
    mixins.py ``UploadMixin`` / ``BackupImporter``): TUS upload steps, or one multipart request
    with ``task_file``; both end in ``202 {"rq_id"}``."""
    h = req.headers
    ts = transfer_state(srv)
    # mixins.py UploadMixin.upload_data: Upload-Finish (alone or with Upload-Start) finishes,
    # Upload-Start alone starts, Upload-Length is TUS, no header is the old one-request upload
    finish = h.get("Upload-Finish") is not None
    if not finish and h.get("Upload-Start") is not None:
        return _json_response(202, None)
    if not finish and h.get("Upload-Length") is not None:
        return _tus_create(srv, req)
    if finish:
        # BackupImporter.validate_request: a TUS file id the server knows (TusFile.validate)
        fid = req.query.get("filename")
        if not fid or fid not in ts.file_ids:
            raise bad_request(["No such file were uploaded"])
        data = ts.file_ids.pop(fid)
    else:
        ctype = (h.get("Content-Type") or "").lower()
        if not ctype.startswith("multipart/"):
            raise bad_request({"task_file": ["No file was submitted."]})
        data = _multipart_file(req, "task_file")
        if data is None:
            raise bad_request({"task_file": ["No file was submitted."]})
    rq_id = render_rq_id(action="import", target="task", id=uuid.uuid4(), subresource="backup")
    return _start(srv, rq_id, op_type="import:backup", target="task", project_id=None,
                  target_task=None, work=lambda s, rq: _restore_work(s, rq, data))


def _multipart_file(req: "Request", field_name: str) -> bytes | None:
    from email import policy
    from email.parser import BytesParser

    ctype = req.headers.get("Content-Type") or ""
    msg = BytesParser(policy=policy.HTTP).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + req.body)
    if not msg.is_multipart():
        return None
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == field_name:
            return part.get_payload(decode=True) or b""
    return None


def _tus_create(srv: "StandinServer", req: "Request") -> "Response":
    """mixins.py ``UploadMixin.init_tus_upload``: ``filename`` metadata required; 201 with the
    ``Location`` of the new upload and, for a backup, ``Upload-Filename`` = the upload's file id
    (what ``Upload-Finish`` names in ``?filename=``)."""
    length = int(req.headers.get("Upload-Length") or 0)
    meta: dict[str, str] = {}
    for item in (req.headers.get("Upload-Metadata") or "").split(","):
        k, _, v = item.strip().partition(" ")
        if k:
            meta[k] = base64.b64decode(v).decode() if v else ""
    if not meta.get("filename"):
        return _text(400, "Metadata is expected to contain 'filename' key")
    fid = str(uuid.uuid4())
    transfer_state(srv).uploads[fid] = {"name": Path(meta["filename"]).name, "length": length,
                                        "data": bytearray()}
    return _server().Response(201, headers={"Location": f"{srv.url}/api/tasks/backup/{fid}",
                                            "Upload-Filename": fid, "Tus-Resumable": "1.0.0"})


def _tus_file(srv: "StandinServer", fid: str) -> dict:
    f = transfer_state(srv).uploads.get(fid)
    if f is None:
        raise _not_found()
    return f


def tus_patch(srv: "StandinServer", req: "Request", fid: str) -> "Response":
    f = _tus_file(srv, fid)
    off = int(req.headers.get("Upload-Offset") or 0)
    # mixins.py UploadMixin.append_tus_chunk: another offset is a bare 409 (the client asks HEAD)
    if off != len(f["data"]):
        return _server().Response(409, headers={"Tus-Resumable": "1.0.0"})
    if len(f["data"]) + len(req.body) > f["length"]:
        return _server().Response(413, headers={"Tus-Resumable": "1.0.0"})
    f["data"] += req.body
    if len(f["data"]) == f["length"]:
        transfer_state(srv).file_ids[fid] = bytes(f["data"])
    return _server().Response(204, headers={"Upload-Offset": str(len(f["data"])), "Tus-Resumable": "1.0.0"})


def tus_head(srv: "StandinServer", req: "Request", fid: str) -> "Response":
    f = _tus_file(srv, fid)
    return _server().Response(200, headers={"Upload-Offset": str(len(f["data"])),
                                            "Upload-Length": str(f["length"]), "Tus-Resumable": "1.0.0"})


def _restore_work(srv: "StandinServer", rq: dict, data: bytes) -> None:
    """engine/backup.py ``TaskImporter``: read and check ``task.json``, create the task with its
    labels, its data from ``data/`` (same parameters, same job split), then each job's annotations
    with labels and attribute specs matched by name. Any problem fails the request."""
    server = _server()
    st = srv.state
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        names = set(z.namelist())
        if "task.json" not in names:
            raise _WorkerError("Invalid backup: task.json is missing from the archive")
        manifest = json.loads(z.read("task.json"))
        anns = json.loads(z.read("annotations.json")) if "annotations.json" in names else []
        files = [(n[len("data/"):], z.read(n)) for n in sorted(names)
                 if n.startswith("data/") and not n.endswith("/") and not n.endswith((".jsonl", "index.json"))]
    except zipfile.BadZipFile:
        raise _WorkerError("Invalid backup: the file is not a zip archive") from None
    except (ValueError, KeyError) as e:
        raise _WorkerError(f"Invalid backup: {e}") from None
    if str(manifest.get("version")) != BACKUP_VERSION:
        raise _WorkerError(f"Unsupported backup version {manifest.get('version')!r}")
    if not files:
        raise _WorkerError("Invalid backup: no media in data/")
    try:
        actions = server._label_specs(srv, manifest.get("labels") or [], task_id=None, project_id=None,
                                      existing=[])
    except ApiError as e:
        raise _WorkerError(f"Invalid backup labels: {json.dumps(e.body)}") from None
    tid = st.next_id("task")
    ts = now_iso()
    t = {"id": tid, "name": str(manifest.get("name") or f"task {tid}"), "project_id": None,
         "created_date": ts, "updated_date": ts, "segment_size": manifest.get("segment_size") or 0,
         "overlap": manifest.get("overlap"), "subset": manifest.get("subset") or "",
         "bug_tracker": manifest.get("bug_tracker") or "", "mode": "", "data": None, "ann_version": 0}
    st.tasks[tid] = t
    server._apply_label_specs(srv, actions, task_id=tid, project_id=None)
    d = manifest.get("data") or {}
    video = manifest.get("mode") == "interpolation"
    # a video keeps its numbering through the data parameters; the stand-in keeps only the kept
    # images of an image task (CVAT keeps every uploaded file), so those are all taken and the
    # task's numbering is set back from task.json afterwards
    keys = (("start_frame", "stop_frame", "frame_filter") if video else ()) + (
        "image_quality", "chunk_size", "sorting_method", "upload_file_order")
    params = {k: d[k] for k in keys if d.get(k) not in (None, "", [])}
    params.setdefault("image_quality", 70)
    try:
        resp = server._create_data(srv, t, params, files)
        create_rq = st.requests.pop((json.loads(resp.body) or {}).get("rq_id"), None)
        if create_rq is not None and create_rq["status"] == "failed":
            raise _WorkerError(f"Invalid backup media: {create_rq['message']}")
        if not video:
            _renumber(st, t, d)
    except (ApiError, MediaError, _WorkerError) as e:
        server._delete_task(srv, tid)
        raise _WorkerError(str(e.body) if isinstance(e, ApiError) else str(e)) from None
    jobs = st.task_jobs(tid)
    if len(anns) not in (0, len(jobs)):
        server._delete_task(srv, tid)
        raise _WorkerError(f"Invalid backup: {len(anns)} job annotation sets for {len(jobs)} jobs")
    labels = {lb["name"]: lb for lb in st.task_labels(tid)}
    for j, a in zip(jobs, anns):
        store = st.annotations[j["id"]]
        for sec in ("tags", "shapes", "tracks"):
            for item in a.get(sec) or []:
                new = server._STORE[sec](st, _with_ids(item, labels))
                getattr(store, sec)[new["id"]] = new
        server._bump(srv, t, {j["id"]})
    rq["result_id"] = tid
    rq["target_task"] = tid


def _renumber(st: Any, t: dict, d: dict) -> None:
    """An image task's start / stop / step from task.json, over the images restored."""
    start = int(d.get("start_frame") or 0)
    ff = str(d.get("frame_filter") or "")
    step = int(ff[5:]) if ff.startswith("step=") else 1
    m = st.media[t["id"]]
    numbers = [start + i * step for i in range(len(m.numbers))]
    if d.get("stop_frame") is not None and numbers[-1] > int(d["stop_frame"]):
        raise _WorkerError(f"Invalid backup: {len(numbers)} images do not fit frames {start}..{d['stop_frame']}"
                           f" step {step}")
    m.numbers = numbers
    t["data"].update(start_frame=start, stop_frame=numbers[-1], frame_filter=ff, step=step)


def _with_ids(item: dict, labels: dict[str, dict]) -> dict:
    """Back from names to this server's ids (the inverse of :func:`_strip_ids`)."""
    lb = labels.get(item.get("label")) if "label" in item else None
    if "label" in item and lb is None:
        raise _WorkerError(f"Invalid backup: label {item.get('label')!r} is not among the task's labels")
    out = {k: v for k, v in item.items() if k != "label"}
    if lb is not None:
        out["label_id"] = lb["id"]
        specs = {a["name"]: a["id"] for a in lb["attributes"]}
        out["attributes"] = [{"spec_id": specs[a["spec_id"]], "value": a["value"]}
                             for a in item.get("attributes") or [] if a["spec_id"] in specs]
    for k, v in (("group", None), ("source", "manual"), ("occluded", False), ("outside", False),
                 ("z_order", 0), ("rotation", 0.0), ("elements", [])):
        out.setdefault(k, v)
    if "shapes" in item:
        out["shapes"] = [dict(_with_ids({**s, "label": item["label"]}, labels), id=None) for s in item["shapes"]]
        for s in out["shapes"]:
            s.pop("label_id", None)
    return out


# ================================================================================== routes
def routes(r: Callable[..., tuple[str, re.Pattern, Callable, bool]]) -> list[tuple[str, re.Pattern, Callable, bool]]:
    """Routes this module serves, built with the server's ``r(method, pattern, fn, public=False)``."""
    return [
        r("GET", r"/api/server/annotation/formats", formats_view),
        r("POST", r"/api/tasks/(\d+)/dataset/export", lambda s, q, i: dataset_export(s, q, "task", i)),
        r("POST", r"/api/projects/(\d+)/dataset/export", lambda s, q, i: dataset_export(s, q, "project", i)),
        r("GET", r"/api/tasks/(\d+)/dataset/download", lambda s, q, i: download(s, q, "task", i, "dataset")),
        r("GET", r"/api/projects/(\d+)/dataset/download",
          lambda s, q, i: download(s, q, "project", i, "dataset")),
        r("POST", r"/api/tasks/(\d+)/backup/export", backup_export),
        r("GET", r"/api/tasks/(\d+)/backup/download", lambda s, q, i: download(s, q, "task", i, "backup")),
        r("POST", r"/api/tasks/backup", backup_import),
        r("PATCH", r"/api/tasks/backup/([0-9a-f-]{36})", tus_patch),
        r("HEAD", r"/api/tasks/backup/([0-9a-f-]{36})", tus_head),
    ]


__all__ = ["BACKUP_VERSION", "EXPORTERS", "TransferState", "render_rq_id", "request_json", "routes",
           "send_bytes", "transfer_state"]
