"""Server-side exports, task backups and restores: CVAT's background-request protocol, done safely.

A dataset export or a task backup is made by the CVAT server, not by dl_utils: the client asks for
it (``POST .../dataset/export`` or ``.../backup/export``, answered ``202 {"rq_id"}``), polls
``GET /api/requests/{rq_id}`` until the request is ``finished`` (or ``failed``, whose message
becomes a one-line :class:`~dl_utils.errors.CvatError`), then downloads ``result_url``. A restore
uploads the backup zip (CVAT's TUS upload: ``Upload-Start``, TUS chunks, ``Upload-Finish``), polls
the same way and reads the new task's id from ``result_id``.

What this module adds to the bare protocol, because exports and backups are large and slow:

* a download never leaves a half file at ``out``: it is streamed to ``.<name>.part`` beside it and
  renamed when complete (size checked against ``Content-Length``);
* a broken download resumes with ``Range`` from where it stopped (``If-Range`` with the server's
  ``ETag``, so a different file is never glued onto an old part), and restarts cleanly when the
  server sends the whole file instead; the ``.part`` of an interrupted run is resumed by the next
  run when the server's file is the same;
* every request goes through the connection's retry policy; uploads are sent in chunks whose
  offset is asked of the server again after a failure;
* formats are checked against the server's own list (``GET /api/server/annotation/formats``)
  before anything is started, and the message lists them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import quote, urlencode, urlsplit

from ..errors import CvatError, InputError, OutputError
from .connection import CvatConnection, _status_error, _Transient, cvat_error

log = logging.getLogger("dl_utils.cvat")

#: Bytes read from the network per write to the ``.part`` file (and per progress update).
DOWNLOAD_CHUNK = 1 << 20
#: Bytes per TUS ``PATCH`` of an upload (cvat-sdk sends 10 MiB; the server accepts any size).
UPLOAD_CHUNK = 10 << 20

#: ``on_progress(done_bytes, total_bytes_or_None)``: called as a download or upload advances.
Progress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class ExportFormat:
    """One export format as the server lists it (``GET /api/server/annotation/formats``)."""

    name: str
    ext: str = "ZIP"
    version: str = ""
    enabled: bool = True
    dimension: str = "2d"


@dataclass(frozen=True)
class TransferOptions:
    """How long and how often to poll, and how to report progress (the same for every transfer).

    ``poll_interval`` seconds between ``GET /api/requests/{id}``; ``timeout`` seconds before a
    request that is still queued or running is given up on (the server keeps working on it: a
    later run picks it up again, CVAT answers 409 with the same id); ``progress`` shows tqdm bars
    on a terminal; ``on_progress`` is called with (bytes done, total) during downloads and uploads.
    """

    poll_interval: float = 2.0
    timeout: float = 6 * 3600.0
    progress: bool = True
    on_progress: Progress | None = None


@dataclass
class BackupReport:
    """What :func:`backup_tasks` did: the zip of every task, and which were there already."""

    written: dict[int, Path] = field(default_factory=dict)
    skipped: dict[int, Path] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"written": {str(k): str(v) for k, v in self.written.items()},
                "skipped": {str(k): str(v) for k, v in self.skipped.items()}}

    def __str__(self) -> str:
        lines = [f"backed up {len(self.written)} task(s), {len(self.skipped)} already backed up"]
        lines += [f"  task {t}: {p}" for t, p in sorted(self.written.items())]
        lines += [f"  task {t}: {p} (already there; --force to back it up again)"
                  for t, p in sorted(self.skipped.items())]
        return "\n".join(lines)


# ====================================================================================== low level
def _url(conn: CvatConnection, path_or_url: str, query: Mapping[str, Any] | None = None) -> str:
    """An absolute URL on ``conn``'s server: ``result_url`` values are absolute already."""
    if "://" in path_or_url:
        url = path_or_url
        host = urlsplit(conn.host)
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != (host.scheme, host.netloc):
            # the server builds result_url from its own idea of its address (behind a proxy it
            # may be http://cvat:8080): the path and query are what matter
            url = conn.host + parts.path + (("?" + parts.query) if parts.query else "")
    else:
        url = conn.host + path_or_url
    if query:
        url += ("&" if "?" in url else "?") + urlencode(query, doseq=True)
    return url


@dataclass
class _Answer:
    status: int
    headers: Mapping[str, str]
    data: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.data) if self.data else None
        except ValueError:
            return None


def _send(conn: CvatConnection, method: str, path: str, *, what: str, query: Mapping[str, Any] | None = None,
          body: bytes | None = None, headers: Mapping[str, str] | None = None,
          ok: Sequence[int] = (200, 201, 202, 204), retry_unknown: bool = True,
          once: bool = False) -> _Answer:
    """One request with the connection's retry policy; statuses in ``ok`` (and 409) are answers,
    other 4xx a :class:`CvatError`. ``retry_unknown=False``: a failure after which the server may
    have applied the request is not repeated (an upload's finish would restore a second task).
    ``once``: no retries here, a retryable failure is raised (the caller's loop retries)."""
    url = _url(conn, path, query)

    def attempt(after_unknown: bool) -> _Answer:
        if after_unknown and not retry_unknown:
            raise cvat_error(f"{what}: the connection failed in a way that may have left the request"
                             " applied on the server; check in CVAT (Requests page) before running"
                             " the command again")
        h = conn.request_headers(method, urlsplit(url).path, None)
        h.pop("Content-Type", None)
        h.update(headers or {})
        r = conn.send(method, url, headers=h, body=body, what=what, ok=tuple(ok) + (409,))
        return _Answer(r.status, r.headers, r.data or b"")

    return attempt(False) if once else conn.retrying(attempt, what)


def _server_message(ans: _Answer) -> str:
    """The server's text of an error answer on one line: DRF bodies are a list, a dict or text."""
    body = ans.json()
    if isinstance(body, list):
        text = "; ".join(str(x) for x in body)
    elif isinstance(body, dict):
        text = str(body.get("detail") or body.get("message") or json.dumps(body))
    else:
        text = ans.data.decode("utf-8", "replace")
    text = " ".join(text.split())
    return text[:400] + ("..." if len(text) > 400 else "")


def _start_request(conn: CvatConnection, path: str, query: Mapping[str, Any], what: str) -> str:
    """POST a background request; its ``rq_id``. A 409 carrying an ``rq_id`` is the same request
    still running (CVAT's ``handle_existing_job``): that one is waited for instead."""
    try:
        ans = _send(conn, "POST", path, query=query, what=what)
    except CvatError as e:
        if re.search(r"answered (404|405)\b", str(e)):  # the object exists (read just before)
            raise cvat_error(f"{what}: {conn.host} has no POST {path.split('?')[0]} endpoint; dl_utils"
                             " needs a CVAT server with the export/requests API (2.2x or later, the"
                             " only export API since 2.32)") from None
        raise
    body = ans.json()
    rq_id = body.get("rq_id") if isinstance(body, dict) else None
    if ans.status == 409 and not rq_id:
        raise cvat_error(f"{what}: the server is still preparing this export ({_server_message(ans)}); run"
                         " the command again in a while")
    if ans.status not in (201, 202) and not (ans.status == 409 and rq_id):
        raise cvat_error(f"{what}: the server answered {ans.status} instead of 202 with a request id; is"
                         " it a CVAT server with the requests API (2.20 or later)?")
    if not rq_id:
        raise cvat_error(f"{what}: the server's answer has no request id (rq_id); is it a CVAT server"
                         " with the requests API (2.20 or later)?")
    return str(rq_id)


def wait_for_request(conn: CvatConnection, rq_id: str, *, what: str,
                     options: TransferOptions = TransferOptions()) -> dict[str, Any]:
    """Poll ``GET /api/requests/{rq_id}`` until it is finished; its JSON.

    ``failed`` is a one-line :class:`CvatError` naming ``what`` and the server's message; a
    request still running after ``options.timeout`` seconds is one too (the server goes on)."""
    path = "/api/requests/" + quote(rq_id, safe="")
    start = time.monotonic()
    last = None
    while True:
        rq = _send(conn, "GET", path, what=f"{what}: reading the server's request").json() or {}
        status = str(rq.get("status") or "")
        if status != last:
            log.info("%s: request %s", what, status or "?")
            last = status
        if status == "finished":
            return rq
        if status == "failed":
            raw = str(rq.get("message") or "no reason given")
            lines = [ln for ln in raw.splitlines() if ln.strip()]
            if len(lines) > 1 and (raw.lstrip().startswith("Traceback") or len(raw) > 300):
                raw = lines[-1]  # a worker's traceback: its last line says what went wrong
            msg = " ".join(raw.split())
            msg = msg if len(msg) <= 300 else msg[:300] + "..."
            raise cvat_error(f"{what} failed on the server: {msg}")
        if status not in ("queued", "started", "deferred", "scheduled"):
            raise cvat_error(f"{what}: the server reports request status {status!r}; expected queued,"
                             " started, finished or failed")
        if time.monotonic() - start > options.timeout:
            raise cvat_error(f"{what}: still {status} after {options.timeout:.0f} s; the server goes on"
                             " working: run the command again later to pick up its result")
        conn.sleep(options.poll_interval)


# ====================================================================================== download
def _target_file(out: Path) -> Path:
    """The regular file a download of ``out`` writes (a symlink to a file is written through; a
    folder, device or dangling link is refused); its folder is created."""
    from ..formats._common import output_file

    return output_file(out, ".zip")


def _part_paths(target: Path) -> tuple[Path, Path]:
    return (target.with_name(f".{target.name}.part"), target.with_name(f".{target.name}.part.json"))


def download_file(conn: CvatConnection, url: str, out: Path, *, what: str,
                  options: TransferOptions = TransferOptions()) -> Path:
    """Stream ``url`` into ``out``: through ``.<name>.part`` beside it, renamed when complete.

    Resumes with ``Range``/``If-Range`` after a broken connection and across runs (a
    ``.part.json`` beside the part keeps the server's ``ETag``/``Last-Modified`` and size); a
    server that answers ``200`` instead of ``206`` makes it start again from byte 0.
    """
    target = _target_file(Path(out))
    part, meta_path = _part_paths(target)
    meta = _read_meta(meta_path, url)
    if meta is None:
        part.unlink(missing_ok=True)
    state: dict[str, Any] = {"meta": meta or {}, "bar": None}
    try:
        conn.retrying(lambda _u: _download_once(conn, url, part, meta_path, state, what, options), what)
        total = state["meta"].get("length")
        size = part.stat().st_size
        if total is not None and size != total:
            raise cvat_error(f"{what}: the download ended at {size} of {total} bytes; run the command"
                             " again to resume")
        _finish_file(part, target)
    finally:
        bar = state.get("bar")
        if bar is not None:
            bar.close()
    meta_path.unlink(missing_ok=True)
    return target


def _read_meta(meta_path: Path, url: str) -> dict | None:
    """The validator of an earlier run's part, when it may be resumed (same path and query)."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    same = urlsplit(str(meta.get("url")))[2:4] == urlsplit(url)[2:4]
    if not same or not (meta.get("etag") or meta.get("last_modified")):
        return None
    return meta


def _download_once(conn: CvatConnection, url: str, part: Path, meta_path: Path, state: dict,
                   what: str, options: TransferOptions) -> None:
    import urllib3

    meta = state["meta"]
    have = part.stat().st_size if part.exists() else 0
    validator = meta.get("etag") or meta.get("last_modified")
    h = conn.request_headers("GET", urlsplit(url).path, None)
    if have and validator:
        h["Range"] = f"bytes={have}-"
        h["If-Range"] = validator
    elif have:
        part.unlink()
        have = 0
    # 416: the part may already be complete; 429/5xx are retried by the caller's loop
    r = conn.send("GET", _url(conn, url), headers=h, what=what, preload=False, ok=(200, 206, 416))
    try:
        if r.status == 416 and have:  # the part is already complete (or longer than the file)
            total = _total_of(r.headers.get("Content-Range"))
            if total == have:
                meta["length"] = total
                return
            part.unlink()
            raise _Transient(f"{what}: the server's file changed; downloading it again", unknown=False)
        if r.status == 416:
            raise _status_error(what, r.status, r.reason, r.read())
        if r.status == 206:
            start = _start_of(r.headers.get("Content-Range"))
            if start != have:
                part.unlink(missing_ok=True)
                raise _Transient(f"{what}: the server resumed at byte {start}, not {have}; starting again",
                                 unknown=False)
            total = _total_of(r.headers.get("Content-Range"))
            mode = "ab"
        else:
            have = 0
            cl = r.headers.get("Content-Length")
            total = int(cl) if cl and cl.isdigit() else None
            mode = "wb"
            meta.update(url=url, etag=r.headers.get("ETag"), last_modified=r.headers.get("Last-Modified"),
                        length=total)
            if meta.get("etag") or meta.get("last_modified"):
                _write_meta(meta_path, meta)
            else:
                meta_path.unlink(missing_ok=True)
        meta["length"] = total
        bar = _bar(state, total, have, what, options)
        try:
            with open(part, mode) as f:
                done = have
                for chunk in r.stream(DOWNLOAD_CHUNK, decode_content=False):
                    f.write(chunk)
                    done += len(chunk)
                    conn.stats.bytes_received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    if options.on_progress is not None:
                        options.on_progress(done, total)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            from ..formats._common import output_error

            raise output_error(part, e) from None
        except (urllib3.exceptions.HTTPError, ConnectionError) as e:
            raise _Transient(f"{what}: the download broke ({type(e).__name__})", unknown=False) from None
        if total is not None and done < total:
            raise _Transient(f"{what}: the download stopped at {done} of {total} bytes", unknown=False)
    finally:
        r.release_conn()


def _bar(state: dict, total: int | None, have: int, what: str, options: TransferOptions) -> Any:
    if not options.progress:
        return None
    bar = state.get("bar")
    if bar is not None:
        bar.reset(total=total)
        bar.update(have)
        return bar
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=what,
               disable=None, leave=False)
    state["bar"] = bar
    return bar


def _start_of(content_range: str | None) -> int | None:
    m = re.match(r"\s*bytes\s+(\d+)-\d+/", content_range or "")
    return int(m.group(1)) if m else None


def _total_of(content_range: str | None) -> int | None:
    m = re.search(r"/(\d+)\s*$", content_range or "")
    return int(m.group(1)) if m else None


def _write_meta(meta_path: Path, meta: dict) -> None:
    try:
        meta_path.write_text(json.dumps(meta))
    except OSError as e:
        from ..formats._common import output_error

        raise output_error(meta_path, e) from None


def _finish_file(part: Path, target: Path) -> None:
    """Rename the complete part over ``target`` (keeping the mode of a file it replaces)."""
    from ..formats._common import current_umask, output_error

    try:
        mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~current_umask()
        os.chmod(part, mode)
        os.replace(part, target)
    except OSError as e:
        raise output_error(target, e) from None


# ====================================================================================== formats
def list_formats(conn: CvatConnection) -> list[ExportFormat]:
    """The server's export formats (``exporters`` of ``GET /api/server/annotation/formats``)."""
    body = _send(conn, "GET", "/api/server/annotation/formats",
                 what="reading the server's export formats").json() or {}
    out = []
    for f in body.get("exporters") or []:
        out.append(ExportFormat(name=str(f.get("name")), ext=str(f.get("ext") or ""),
                                version=str(f.get("version") or ""), enabled=bool(f.get("enabled", True)),
                                dimension=str(f.get("dimension") or "2d")))
    if not out:
        raise cvat_error(f"{conn.host} lists no export formats (GET /api/server/annotation/formats); is it"
                         " a CVAT server?")
    return out


def check_format(conn: CvatConnection, name: str, formats: Sequence[ExportFormat] | None = None) -> ExportFormat:
    """The server's format called ``name`` (exactly, as CVAT matches it); an :class:`InputError`
    listing the server's formats otherwise."""
    formats = list(formats) if formats is not None else list_formats(conn)
    by_name = {f.name: f for f in formats}
    if name in by_name:
        fmt = by_name[name]
        if not fmt.enabled:
            raise InputError(f"export format {name!r} is disabled on {conn.host}; choose another:"
                             f" {', '.join(f.name for f in formats if f.enabled)}")
        return fmt
    close = [f.name for f in formats if f.name.lower() == name.lower() or f.name.lower().startswith(name.lower())]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise InputError(f"unknown export format {name!r}{hint}; {conn.host} offers:"
                     f" {', '.join(repr(f.name) for f in formats if f.enabled)}")


# ====================================================================================== export
def _get(conn: CvatConnection, path: str, what: str) -> dict:
    try:
        return conn.request("GET", path, what=what) or {}
    except CvatError as e:
        if " 404" in str(e):
            raise cvat_error(f"{what} does not exist on {conn.host} (or this user cannot see it):"
                             " check the id and the organisation (--org / CVAT_ORG)") from None
        raise


def export_dataset(conn: CvatConnection, *, project: int | None = None, task: int | None = None,
                   format: str, out: Path, with_images: bool = False,
                   options: TransferOptions = TransferOptions()) -> Path:
    """Have the server export a project or task in ``format`` (one of :func:`list_formats`) and
    download it to ``out``; returns the path written (``out``, or the target of a link at it)."""
    if (project is None) == (task is None):
        raise InputError("give exactly one of project= (--project ID) or task= (--task ID)")
    kind, oid = ("project", int(project)) if project is not None else ("task", int(task))  # type: ignore[arg-type]
    target = _target_file(Path(out))
    check_format(conn, format)
    obj = _get(conn, f"/api/{kind}s/{oid}", f"{kind} {oid}")
    what = f"export of {kind} {oid} ({obj.get('name', '?')!r}) as {format!r}"
    query = {"format": format, "save_images": "true" if with_images else "false", "location": "local"}
    rq_id = _start_request(conn, f"/api/{kind}s/{oid}/dataset/export", query, what)
    rq = wait_for_request(conn, rq_id, what=what, options=options)
    url = rq.get("result_url")
    if not url:
        raise cvat_error(f"{what}: the server finished without a file to download (result_url); the"
                         f" {kind}'s target storage may be a cloud storage")
    return download_file(conn, str(url), target, what=what, options=options)


# ====================================================================================== backup
def backup_name(task_id: int, name: str) -> str:
    """The file name of a task's backup in a folder: ``task_<id>_<name>.zip`` (the id keeps two
    tasks of one name apart; the name keeps the folder readable)."""
    from ..formats._common import safe_name

    return f"task_{int(task_id)}_{safe_name(name)}.zip"


def is_complete_backup(path: Path) -> bool:
    """``path`` is a whole CVAT task backup: a zip that reads back (CRCs checked) with a
    ``task.json``. A file cut short or damaged is not, and is backed up again."""
    try:
        with zipfile.ZipFile(path) as z:
            return "task.json" in z.namelist() and z.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def _backup_target(out: Path, task_id: int, name: str) -> Path:
    out = Path(out)
    if out.is_dir() or str(out).endswith(("/", os.sep)):
        return out / backup_name(task_id, name)
    return out


def backup_task(conn: CvatConnection, task_id: int, out: Path, *,
                options: TransferOptions = TransferOptions()) -> Path:
    """Back up task ``task_id`` (annotations, labels, media, settings) into one zip made by the
    server; ``out`` is the file, or a folder to put ``task_<id>_<name>.zip`` in. Returns the file."""
    task_id = int(task_id)
    t = _get(conn, f"/api/tasks/{task_id}", f"task {task_id}")
    target = _target_file(_backup_target(Path(out), task_id, str(t.get("name") or task_id)))
    what = f"backup of task {task_id} ({t.get('name', '?')!r})"
    rq_id = _start_request(conn, f"/api/tasks/{task_id}/backup/export", {"location": "local"}, what)
    rq = wait_for_request(conn, rq_id, what=what, options=options)
    url = rq.get("result_url")
    if not url:
        raise cvat_error(f"{what}: the server finished without a file to download (result_url); the"
                         " task's target storage may be a cloud storage")
    path = download_file(conn, str(url), target, what=what, options=options)
    if not is_complete_backup(path):
        raise cvat_error(f"{what}: the downloaded file {path} is not a CVAT backup (no task.json in a"
                         " readable zip); check the server")
    return path


def backup_tasks(conn: CvatConnection, task_ids: Iterable[int], out: Path, *, force: bool = False,
                 dry_run: bool = False, options: TransferOptions = TransferOptions()) -> BackupReport:
    """Back up many tasks, one zip each, into folder ``out`` (a file path when there is one task).

    A task whose zip is there and complete (:func:`is_complete_backup`) is skipped unless
    ``force``; each zip is written as it is done, so an interrupted run resumes where it stopped.
    ``dry_run`` only reads the tasks and reports which would be written or skipped.
    """
    ids = list(dict.fromkeys(int(t) for t in task_ids))
    if not ids:
        raise InputError("give at least one task id (--task ID)")
    out = Path(out)
    folder = len(ids) > 1 or out.is_dir() or str(out).endswith(("/", os.sep))
    if folder:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out} is a file; backups of {len(ids)} tasks go into a folder: give a"
                              " folder path for --out")
        if not dry_run:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                from ..formats._common import output_error

                raise output_error(out, e) from None
    rep = BackupReport()
    for tid in ids:
        t = _get(conn, f"/api/tasks/{tid}", f"task {tid}")
        path = out / backup_name(tid, str(t.get("name") or tid)) if folder else out
        if not force and path.exists() and is_complete_backup(path):
            rep.skipped[tid] = path
            continue
        if dry_run:
            rep.written[tid] = path
            continue
        rep.written[tid] = backup_task(conn, tid, path, options=options)
    return rep


# ====================================================================================== restore
def check_backup_file(backup: Path) -> dict[str, Any]:
    """The ``task.json`` of a local backup zip; an :class:`InputError` naming the file when it is
    missing, not a zip, damaged or not a task backup (checked before anything is uploaded)."""
    backup = Path(backup)
    if not backup.is_file():
        raise InputError(f"backup {backup} does not exist or is not a file; check the path")
    try:
        with zipfile.ZipFile(backup) as z:
            names = z.namelist()
            bad = z.testzip() if "task.json" in names else None
            text = z.read("task.json") if "task.json" in names and bad is None else None
    except (zipfile.BadZipFile, EOFError):
        raise InputError(f"{backup} is not a zip file (or is cut short); give a CVAT task backup (.zip)") from None
    except OSError as e:
        raise InputError(f"{backup} cannot be read ({e.strerror or e}); check the file") from None
    if "task.json" not in names:
        raise InputError(f"{backup} is not a CVAT task backup (no task.json inside); give a zip made by"
                         " `dl-utils cvat backup` or CVAT's 'Backup task'")
    if bad is not None:
        raise InputError(f"{backup} is damaged ({bad} fails its CRC check); make the backup again")
    try:
        manifest = json.loads(text or b"")
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{backup}: task.json is not JSON; the backup is damaged") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{backup}: task.json is not a task description; the backup is damaged")
    return manifest


def _upload_backup(conn: CvatConnection, backup: Path, what: str, options: TransferOptions) -> str:
    """CVAT's TUS upload to ``/api/tasks/backup/`` (mixins.py ``UploadMixin``); the ``rq_id``."""
    import base64

    size = backup.stat().st_size
    base = "/api/tasks/backup/"
    _send(conn, "POST", base, headers={"Upload-Start": ""}, what=f"{what}: starting the upload", ok=(202,))
    meta = "filename " + base64.b64encode(backup.name.encode()).decode()
    ans = _send(conn, "POST", base, what=f"{what}: announcing the upload", ok=(201,), retry_unknown=False,
                headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size), "Upload-Metadata": meta})
    location = ans.headers.get("Location")
    file_id = ans.headers.get("Upload-Filename")
    if not location or not file_id:
        raise cvat_error(f"{what}: the server did not answer the upload with Location and"
                         " Upload-Filename; is it a CVAT server?")
    offset = 0
    bar = None
    if options.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"uploading {backup.name}",
                   disable=None, leave=False)
    try:
        with open(backup, "rb") as f:
            while offset < size:
                f.seek(offset)
                chunk = f.read(UPLOAD_CHUNK)
                offset = _patch_chunk(conn, location, offset, chunk, what)
                if bar is not None:
                    bar.n = offset
                    bar.refresh()
                if options.on_progress is not None:
                    options.on_progress(offset, size)
    finally:
        if bar is not None:
            bar.close()
    ans = _send(conn, "POST", base, query={"filename": file_id}, headers={"Upload-Finish": ""},
                what=f"{what}: finishing the upload", ok=(202,), retry_unknown=False)
    body = ans.json()
    rq_id = body.get("rq_id") if isinstance(body, dict) else None
    if not rq_id:
        raise cvat_error(f"{what}: the server's answer has no request id (rq_id)")
    return str(rq_id)


def _patch_chunk(conn: CvatConnection, location: str, offset: int, chunk: bytes, what: str) -> int:
    """Send one TUS chunk at ``offset``; the server's new offset. After a failure the offset is
    asked of the server (``HEAD``) and the chunk is sent again from there."""
    def attempt(after_unknown: bool) -> int:
        start = offset
        if after_unknown:
            head = _send(conn, "HEAD", location, headers={"Tus-Resumable": "1.0.0"},
                         what=f"{what}: asking the upload's offset", once=True)
            start = int(head.headers.get("Upload-Offset") or offset)
        body = chunk[start - offset:]
        if not body:
            return start
        ans = _send(conn, "PATCH", location, body=body, what=f"{what}: uploading",
                    headers={"Tus-Resumable": "1.0.0", "Upload-Offset": str(start),
                             "Content-Type": "application/offset+octet-stream"}, ok=(204, 200), once=True)
        if ans.status == 409:  # the server has another offset: ask it, then send from there
            raise _Transient(f"{what}: the upload offset differs from the server's", unknown=True)
        new = int(ans.headers.get("Upload-Offset") or -1)
        if new < start + len(body):
            raise cvat_error(f"{what}: the server reported upload offset {new}, expected"
                             f" {start + len(body)}")
        return new

    return conn.retrying(attempt, f"{what}: uploading")


def restore_task(conn: CvatConnection, backup: Path, *, project_id: int | None = None,
                 options: TransferOptions = TransferOptions()) -> int:
    """Create a new task from a backup zip (CVAT's task import); its id.

    ``project_id``: move the new task into that project afterwards (``PATCH /api/tasks/{id}
    {"project_id"}``; CVAT matches the task's labels to the project's by name). When that fails
    the new task is deleted again and the message says so.
    """
    backup = Path(backup)
    manifest = check_backup_file(backup)
    if project_id is not None:
        _get(conn, f"/api/projects/{int(project_id)}", f"project {int(project_id)}")
    what = f"restore of {backup.name} (task {manifest.get('name', '?')!r})"
    rq_id = _upload_backup(conn, backup, what, options)
    rq = wait_for_request(conn, rq_id, what=what, options=options)
    try:
        new_id = int(rq.get("result_id"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise cvat_error(f"{what}: the server finished without the new task's id (result_id)") from None
    if project_id is not None:
        _move_to_project(conn, new_id, int(project_id), what)
    return new_id


def _move_to_project(conn: CvatConnection, task_id: int, project_id: int, what: str) -> None:
    try:
        conn.request("PATCH", f"/api/tasks/{task_id}", body={"project_id": project_id},
                     what=f"{what}: moving task {task_id} into project {project_id}")
        t = conn.request("GET", f"/api/tasks/{task_id}", what=f"{what}: reading task {task_id}") or {}
        if t.get("project_id") != project_id:
            raise cvat_error(f"{what}: the server kept task {task_id} in project {t.get('project_id')}"
                             f" instead of moving it into project {project_id}")
    except CvatError as e:
        from .tasks import _discard

        raise cvat_error(f"{e}; {_discard(conn, task_id)}") from None


def restore_tasks(conn: CvatConnection, backups: Sequence[Path], *, project_id: int | None = None,
                  dry_run: bool = False, options: TransferOptions = TransferOptions()) -> dict[str, int | None]:
    """Restore every backup (each checked locally first, all before any upload); {file: new task id}
    (``None`` for each with ``dry_run``)."""
    paths = [Path(b) for b in backups]
    if not paths:
        raise InputError("give at least one backup file to restore")
    for p in paths:
        check_backup_file(p)
    if project_id is not None:
        _get(conn, f"/api/projects/{int(project_id)}", f"project {int(project_id)}")
    out: dict[str, int | None] = {}
    for p in paths:
        out[str(p)] = None if dry_run else restore_task(conn, p, project_id=project_id, options=options)
    return out


__all__ = ["BackupReport", "ExportFormat", "TransferOptions", "backup_name", "backup_task", "backup_tasks",
           "check_backup_file", "check_format", "download_file", "export_dataset", "is_complete_backup",
           "list_formats", "restore_task", "restore_tasks", "wait_for_request"]
