"""The stand-in CVAT server: stdlib ``ThreadingHTTPServer`` on 127.0.0.1 speaking CVAT's REST API.

Only what ``dl_utils.cvat`` and cvat-sdk (task creation, auto-annotation driver) use is served;
see docs/cvat_standin.md for the list and for what only a real server checks. Every request is
logged (:class:`~tests.cvat_standin.state.LogEntry`) before faults and handling, in arrival order.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import threading
import time
import uuid
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from .faults import Faults
from .state import JobAnnotations, LogEntry, MediaError, State, build_media, now_iso
from .validate import (LABEL_TYPES, ApiError, bad_request, check_against_task, parse_labeled_data)

UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
DEFAULT_CHUNK_SIZE = 36
DEFAULT_PAGE_SIZE = 10
#: CVAT lists jobs newest first (cvat/apps/engine/views.py JobViewSet ``ordering = "-id"``), as it
#: does projects and tasks. dl_utils.cvat.tasks.read_task keeps the jobs in list order and tests
#: index ``TaskInfo.jobs[0]`` as the first job, so until read_task sorts its jobs by start frame the
#: stand-in lists jobs oldest first (the one place it is more lenient than CVAT; see
#: docs/cvat_standin.md).
JOBS_NEWEST_FIRST = True
MAX_PAGE_SIZE = 1000
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


class Response:
    def __init__(self, status: int = 200, body: Any = None, *, headers: dict[str, str] | None = None,
                 content_type: str = "application/json"):
        self.status = status
        self.headers = dict(headers or {})
        if isinstance(body, (bytes, bytearray)):
            self.body = bytes(body)
            self.content_type = content_type
        elif body is None:
            self.body = b""
            self.content_type = content_type
        else:
            self.body = json.dumps(body, separators=(",", ":")).encode()
            self.content_type = "application/json"


class Request:
    def __init__(self, server: "StandinServer", method: str, raw_path: str, headers: Any, body: bytes):
        self.server = server
        self.method = method
        parts = urlsplit(raw_path)
        self.path = unquote(parts.path)
        self.qs = parse_qs(parts.query, keep_blank_values=True)
        self.query = {k: (v[0] if len(v) == 1 else v) for k, v in self.qs.items()}
        self.headers = headers
        self.body = body
        self.user: dict | None = None
        self.accepted = RENDERERS[0][0]
        self.version = DEFAULT_VERSION

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise bad_request({"detail": f"JSON parse error - {e}"}) from None

    def q_int(self, name: str, default: int | None = None) -> int | None:
        v = self.query.get(name)
        if v in (None, ""):
            return default
        try:
            return int(v)
        except (TypeError, ValueError):
            raise bad_request({name: ["A valid integer is required."]}) from None


# ------------------------------------------------------------------------ content negotiation
#: CVAT's REST_FRAMEWORK settings (cvat/settings/base.py): DEFAULT_RENDERER_CLASSES =
#: [CVATAPIRenderer ('application/vnd.cvat+json', format 'json'), BrowsableAPIRenderer
#: ('text/html', format 'api')]; DEFAULT_VERSIONING_CLASS = AcceptHeaderVersioning,
#: ALLOWED_VERSIONS = ('2.0') -- a string, not a tuple, so DRF's ``version in allowed_versions`` is a
#: substring test --, DEFAULT_VERSION = '2.0', VERSION_PARAM = 'version'; URL_FORMAT_OVERRIDE = 'scheme'.
RENDERERS = (("application/vnd.cvat+json", "json"), ("text/html", "api"))
ALLOWED_VERSIONS = "2.0"
DEFAULT_VERSION = "2.0"
NOT_ACCEPTABLE = "Could not satisfy the request Accept header."
INVALID_VERSION = 'Invalid version in "Accept" header.'


class _MediaType:
    """rest_framework.utils.mediatypes._MediaType."""

    def __init__(self, text: str):
        main, *params = [p.strip() for p in text.split(";")]
        self.full_type = main
        self.main_type, _, self.sub_type = main.partition("/")
        self.params: dict[str, str] = {}
        for p in params:
            k, _, v = p.partition("=")
            if k:
                self.params[k.strip()] = v.strip().strip('"')

    def match(self, other: "_MediaType") -> bool:
        for key in self.params:
            if key != "q" and other.params.get(key) != self.params.get(key):
                return False
        if self.sub_type != "*" and other.sub_type != "*" and other.sub_type != self.sub_type:
            return False
        if self.main_type != "*" and other.main_type != "*" and other.main_type != self.main_type:
            return False
        return True

    @property
    def precedence(self) -> int:
        if self.main_type == "*":
            return 0
        if self.sub_type == "*":
            return 1
        if not self.params or list(self.params) == ["q"]:
            return 2
        return 3


def negotiate(accept: str | None, query: dict[str, Any]) -> tuple[str, str]:
    """(accepted media type, API version) as DRF's DefaultContentNegotiation and
    AcceptHeaderVersioning decide them with CVAT's settings; 406 otherwise."""
    renderers = list(RENDERERS)
    fmt = query.get("scheme")  # URL_FORMAT_OVERRIDE
    if isinstance(fmt, str) and fmt:
        renderers = [r for r in renderers if r[1] == fmt]
        if not renderers:
            raise _not_found()
    header = accept if accept and accept.strip() else "*/*"
    accepts = [t.strip() for t in header.split(",") if t.strip()]
    chosen: str | None = None
    for level in (3, 2, 1, 0):  # order_by_precedence
        group = [t for t in accepts if _MediaType(t).precedence == level]
        for rtype, _fmt in renderers:
            for t in group:
                if _MediaType(rtype).match(_MediaType(t)):
                    wrapper = _MediaType(t)
                    if _MediaType(rtype).precedence > wrapper.precedence:
                        chosen = ";".join([rtype] + [f"{k}={v}" for k, v in wrapper.params.items()])
                    else:
                        chosen = t
                    break
            if chosen:
                break
        if chosen:
            break
    if chosen is None:
        raise ApiError(406, {"detail": NOT_ACCEPTABLE})
    version = _MediaType(chosen).params.get("version", DEFAULT_VERSION)
    if not ((version is not None and version == DEFAULT_VERSION) or version in ALLOWED_VERSIONS):
        raise ApiError(406, {"detail": INVALID_VERSION})
    return chosen, version


def _not_found(what: str = "Not found.") -> ApiError:
    return ApiError(404, {"detail": what})


# ============================================================================================ server
class StandinServer:
    """A running stand-in. ``url``, ``token``, ``state``, ``log``, ``faults``; ``reset()`` between tests."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None,
                 version: str = "2.24.0", share_root: str | Path | None = None):
        self.token = token or "tok-standin-" + secrets.token_hex(12)
        self.state = State(version=version, share_root=share_root)
        self.faults = Faults(lambda: len(self.state.log))
        self._log_lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"standin": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._thread: threading.Thread | None = None
        self.routes = _routes()

    @property
    def log(self) -> list[LogEntry]:
        return self.state.log

    def start(self) -> "StandinServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self.httpd.serve_forever, name="cvat-standin",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self.httpd.server_close()
        self.state.close()

    def __enter__(self) -> "StandinServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Clear state, log and faults (the token, version and port stay)."""
        self.faults.clear()
        self.state.reset()

    # ------------------------------------------------------------------ request handling
    def new_entry(self, method: str, raw_path: str, nbytes: int) -> tuple[int, LogEntry]:
        parts = urlsplit(raw_path)
        qs = parse_qs(parts.query, keep_blank_values=True)
        entry = LogEntry(method, unquote(parts.path), {k: (v[0] if len(v) == 1 else v) for k, v in qs.items()},
                         nbytes)
        with self._log_lock:
            self.state.log.append(entry)
            return len(self.state.log) - 1, entry

    def dispatch(self, req: Request) -> Response:
        try:
            path = req.path
            if path != "/" and path.endswith("/"):
                path = path.rstrip("/")
            allowed, hit = [], None
            for method, rx, fn, public in self.routes:
                m = rx.fullmatch(path)
                if not m:
                    continue
                allowed.append(method)
                if method == req.method or (hit is None and req.method == "HEAD" and method == "GET"):
                    hit = (method, fn, public, m)
                    if method == req.method:
                        break
            if hit is not None:
                _, fn, public, m = hit
                # DRF's APIView.initial(): content negotiation and versioning come before
                # authentication, so a bad Accept header is a 406 even without credentials
                req.accepted, req.version = negotiate(req.headers.get("Accept"), req.query)
                if not public:
                    req.user = self.authenticate(req)
                with self.state.lock:
                    return fn(self, req, *[int(g) if g.isdigit() else g for g in m.groups()])
            if allowed:
                raise ApiError(405, {"detail": f'Method "{req.method}" not allowed.'})
            raise _not_found()
        except ApiError as e:
            return Response(e.status, e.body)

    # ------------------------------------------------------------------ auth
    def authenticate(self, req: Request) -> dict:
        st = self.state
        auth = req.headers.get("Authorization") or ""
        user = {"id": 1, "username": st.username}
        if auth:
            kind, _, cred = auth.partition(" ")
            kind = kind.lower()
            if kind == "bearer" and cred == self.token:
                return user
            if kind == "token" and (cred in st.login_keys or cred == self.token):
                return user
            if kind == "basic":
                try:
                    u, _, p = base64.b64decode(cred).decode().partition(":")
                except Exception:
                    u, p = "", ""
                if (u, p) == (st.username, st.password):
                    return user
                raise ApiError(401, {"detail": "Invalid username/password."})
            raise ApiError(401, {"detail": "Invalid token."})
        cookies = _cookies(req.headers.get("Cookie"))
        sid = cookies.get("sessionid")
        if sid and sid in st.sessions:
            sess = st.sessions[sid]
            if req.method in UNSAFE and req.headers.get("X-CSRFToken") != sess["csrf"]:
                raise ApiError(403, {"detail": "CSRF Failed: CSRF token missing or incorrect."})
            return user
        raise ApiError(401, {"detail": "Authentication credentials were not provided."})


def _cookies(header: str | None) -> dict[str, str]:
    out = {}
    for part in (header or "").split(";"):
        k, _, v = part.strip().partition("=")
        if k:
            out[k] = v
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin: StandinServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the log list is the record
        pass

    def _read_body(self) -> bytes:
        n = self.headers.get("Content-Length")
        if n is not None:
            return self.rfile.read(int(n)) if int(n) > 0 else b""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _handle(self) -> None:
        srv = self.standin
        body = self._read_body()
        index, entry = srv.new_entry(self.command, self.path, len(body))
        fault = srv.faults.take(index, self.command, entry.path)
        delay = srv.faults.delay
        req = Request(srv, self.command, self.path, self.headers, body)
        if fault is not None and not fault.applied:
            if fault.kind == "drop":
                return self._drop(entry, delay)
            headers = {"Retry-After": _fmt(fault.retry_after)} if fault.kind == "rate" else {}
            detail = "Request was throttled." if fault.kind == "rate" else "injected server error"
            resp = Response(fault.status, {"detail": detail}, headers=headers)
        else:
            try:
                resp = srv.dispatch(req)
            except Exception as e:  # a bug in the stand-in: answer 500 like Django would, and say why
                import traceback

                traceback.print_exc()
                resp = Response(500, {"detail": f"stand-in error: {type(e).__name__}: {e}"})
            if fault is not None:
                if fault.kind == "drop":
                    return self._drop(entry, delay)
                resp = Response(fault.status, {"detail": "injected server error (request applied)"})
        if delay:
            time.sleep(delay)
        self._send(resp, entry)

    def _drop(self, entry: LogEntry, delay: float) -> None:
        if delay:
            time.sleep(delay)
        entry.status = None
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, resp: Response, entry: LogEntry) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        for k, v in resp.headers.items():
            if k.lower() == "set-cookie":
                for c in v.split("\n"):
                    self.send_header("Set-Cookie", c)
            else:
                self.send_header(k, v)
        body = resp.body if self.command != "HEAD" else b""
        self.send_header("Content-Length", str(len(resp.body)))
        entry.bytes_out = len(body)  # before writing: the client may look at the log at once
        entry.status = resp.status
        self.end_headers()
        if body:
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


def _fmt(v: float | None) -> str:
    v = 1 if v is None else v
    return str(int(v)) if float(v).is_integer() else str(v)


# ============================================================================================ JSON
def _base(srv: StandinServer) -> str:
    return srv.url


def _owner(srv: StandinServer) -> dict:
    return {"url": f"{_base(srv)}/api/users/1", "id": 1, "username": srv.state.username,
            "first_name": "", "last_name": ""}


def label_json(lb: dict) -> dict:
    return {"id": lb["id"], "name": lb["name"], "color": lb["color"], "attributes": lb["attributes"],
            "type": lb["type"], "svg": "", "sublabels": [], "project_id": lb.get("project_id"),
            "task_id": lb.get("task_id"), "parent_id": None, "has_parent": False}


def project_json(srv: StandinServer, p: dict) -> dict:
    n = sum(1 for t in srv.state.tasks.values() if t.get("project_id") == p["id"])
    return {"url": f"{_base(srv)}/api/projects/{p['id']}", "id": p["id"], "name": p["name"],
            "owner": _owner(srv), "assignee": None, "guide_id": None, "bug_tracker": "",
            "task_subsets": [], "created_date": p["created_date"], "updated_date": p["updated_date"],
            "status": "annotation", "dimension": "2d" if n else None, "organization": None,
            "organization_id": None, "target_storage": None, "source_storage": None,
            "assignee_updated_date": None,
            "labels": {"url": f"{_base(srv)}/api/labels?project_id={p['id']}"},
            "tasks": {"count": n, "url": f"{_base(srv)}/api/tasks?project_id={p['id']}"}}


def task_json(srv: StandinServer, t: dict) -> dict:
    jobs = srv.state.task_jobs(t["id"])
    d = t.get("data") or {}
    return {
        "url": f"{_base(srv)}/api/tasks/{t['id']}", "id": t["id"], "name": t["name"],
        "project_id": t.get("project_id"), "owner": _owner(srv), "assignee": None, "guide_id": None,
        "bug_tracker": t.get("bug_tracker", ""), "created_date": t["created_date"],
        "updated_date": t["updated_date"], "overlap": t.get("overlap"),
        "segment_size": t.get("segment_size") or 0, "status": "annotation",
        "data_chunk_size": d.get("chunk_size"), "data_compressed_chunk_type": d.get("chunk_type"),
        "data_original_chunk_type": d.get("chunk_type"), "data_cloud_storage_id": None,
        "size": d.get("size", 0), "image_quality": d.get("image_quality", 70),
        "data": d.get("id"), "dimension": "2d", "mode": t.get("mode", ""),
        "media_type": d.get("media_type", ""), "subset": t.get("subset", ""), "organization": None,
        "organization_id": None, "target_storage": None, "source_storage": None,
        "assignee_updated_date": None, "validation_mode": None,
        "labels": {"url": f"{_base(srv)}/api/labels?task_id={t['id']}"},
        # cvat/apps/engine/models.py TaskQuerySet.with_job_summary: completed = jobs in state
        # 'completed' AND stage 'acceptance'; validation = jobs in stage 'validation'
        "jobs": {"count": len(jobs),
                 "completed": sum(1 for j in jobs if _job_state(j) == "completed"
                                  and _job_stage(j) == "acceptance"),
                 "validation": sum(1 for j in jobs if _job_stage(j) == "validation"),
                 "url": f"{_base(srv)}/api/jobs?task_id={t['id']}"},
    }


def job_json(srv: StandinServer, j: dict) -> dict:
    t = srv.state.tasks[j["task_id"]]
    d = t.get("data") or {}
    return {
        "url": f"{_base(srv)}/api/jobs/{j['id']}", "id": j["id"], "task_id": t["id"],
        "project_id": t.get("project_id"), "assignee": None, "guide_id": None, "dimension": "2d",
        "bug_tracker": None, "status": _job_status(j), "stage": _job_stage(j), "state": _job_state(j),
        "mode": t.get("mode", ""), "frame_count": j["stop_frame"] - j["start_frame"] + 1,
        "start_frame": j["start_frame"], "stop_frame": j["stop_frame"],
        "data_chunk_size": d.get("chunk_size"), "data_compressed_chunk_type": d.get("chunk_type"),
        "data_original_chunk_type": d.get("chunk_type"), "created_date": j["created_date"],
        "updated_date": j["updated_date"], "type": "annotation", "organization": None,
        "target_storage": None, "source_storage": None, "assignee_updated_date": None,
        "parent_job_id": None, "media_type": d.get("media_type", ""),
        "issues": {"url": f"{_base(srv)}/api/issues?job_id={j['id']}", "count": 0},
        "labels": {"url": f"{_base(srv)}/api/labels?job_id={j['id']}"},
    }


#: cvat/apps/engine/models.py StageChoice and StateChoice
JOB_STAGES = ("annotation", "validation", "acceptance")
JOB_STATES = ("new", "in progress", "completed", "rejected")


def _job_stage(j: dict) -> str:
    return j.get("stage") or "annotation"


def _job_state(j: dict) -> str:
    return j.get("state") or "new"


def _job_status(j: dict) -> str:
    """The old ``status`` (cvat/apps/engine/models.py StatusChoice): the stage, 'completed' once an
    acceptance job is completed."""
    stage = _job_stage(j)
    if stage == "acceptance" and _job_state(j) == "completed":
        return "completed"
    return "validation" if stage == "validation" else ("completed" if stage == "acceptance" else "annotation")


def paginate(srv: StandinServer, req: Request, items: list) -> dict:
    page = req.q_int("page", 1) or 1
    size = min(max(req.q_int("page_size", DEFAULT_PAGE_SIZE) or DEFAULT_PAGE_SIZE, 1), MAX_PAGE_SIZE)
    n = len(items)
    if page < 1 or (page > 1 and (page - 1) * size >= n):
        raise _not_found("Invalid page.")

    def link(p: int) -> str:
        q = {k: v for k, v in req.query.items()}
        q["page"] = p
        return f"{_base(srv)}{req.path}?{urlencode(q, doseq=True)}"

    return {"count": n, "next": link(page + 1) if page * size < n else None,
            "previous": link(page - 1) if page > 1 else None,
            "results": items[(page - 1) * size: page * size]}


# ============================================================================================ views
def about(srv: StandinServer, req: Request) -> Response:
    return Response(200, {"name": "Computer Vision Annotation Tool", "description": "CVAT stand-in"
                          " for dl_utils tests", "version": srv.state.version, "logo_url": "",
                          "subtitle": "stand-in"})


def login(srv: StandinServer, req: Request) -> Response:
    body = req.json()
    st = srv.state
    user = body.get("username") or body.get("email")
    if (user, body.get("password")) != (st.username, st.password):
        raise ApiError(400, {"non_field_errors": ["Unable to log in with provided credentials."]})
    key = secrets.token_hex(20)
    sid, csrf = secrets.token_hex(16), secrets.token_hex(16)
    st.login_keys[key] = user
    st.sessions[sid] = {"csrf": csrf, "user": user}
    cookies = f"csrftoken={csrf}; Path=/; SameSite=Lax\nsessionid={sid}; HttpOnly; Path=/; SameSite=Lax"
    return Response(200, {"key": key}, headers={"Set-Cookie": cookies})


def logout(srv: StandinServer, req: Request) -> Response:
    sid = _cookies(req.headers.get("Cookie")).get("sessionid")
    srv.state.sessions.pop(sid or "", None)
    return Response(200, {"detail": "Successfully logged out."})


def users_self(srv: StandinServer, req: Request) -> Response:
    st = srv.state
    return Response(200, {"url": f"{_base(srv)}/api/users/1", "id": 1, "username": st.username,
                          "first_name": "", "last_name": "", "email": f"{st.username}@localhost",
                          "groups": ["admin"], "is_staff": True, "is_superuser": True,
                          "is_active": True, "last_login": None, "date_joined": "2024-01-01T00:00:00Z",
                          "has_analytics_access": False})


# ------------------------------------------------------------------------------------------ labels
def _label_specs(srv: StandinServer, specs: Any, *, task_id: int | None, project_id: int | None,
                 existing: list[dict]) -> list[dict]:
    """Validate label write specs; returns the actions (new labels, updates, deletions)."""
    if not isinstance(specs, list):
        raise bad_request({"labels": ['Expected a list of items but got type "%s".' % type(specs).__name__]})
    names = {lb["name"]: lb for lb in existing}
    by_id = {lb["id"]: lb for lb in existing}
    out, seen = [], set()
    for i, s in enumerate(specs):
        if not isinstance(s, dict):
            raise bad_request({"labels": {str(i): {"non_field_errors": ["Expected a dictionary."]}}})
        if "id" in s and s["id"] is not None:
            lb = by_id.get(s["id"])
            if lb is None:
                raise bad_request({"labels": {str(i): {"id": [f"label {s['id']} does not belong to"
                                                             " this task/project"]}}})
            out.append(("delete" if s.get("deleted") else "update", lb, s))
            continue
        name = s.get("name")
        if not isinstance(name, str) or not name.strip():
            raise bad_request({"labels": {str(i): {"name": ["This field is required."]}}})
        if len(name) > 64:  # cvat/apps/engine/models.py Label.name max_length=64
            raise bad_request({"labels": {str(i): {"name": [
                "Ensure this field has no more than 64 characters."]}}})
        for a in s.get("attributes") or []:  # AttributeSpec: name <= 64, input_type choices
            if not isinstance(a, dict) or not str(a.get("name") or "").strip() or len(str(a.get("name"))) > 64:
                raise bad_request({"labels": {str(i): {"attributes": ["attribute name: 1..64 characters"]}}})
            if a.get("input_type", "text") not in ("checkbox", "radio", "number", "text", "select"):
                raise bad_request({"labels": {str(i): {"attributes": [
                    f'"{a.get("input_type")}" is not a valid choice.']}}})
        if name in names or name in seen:
            raise bad_request({"labels": {str(i): {"name": [f"label name {name!r} is already used;"
                                                          " all label names must be unique"]}}})
        seen.add(name)
        ltype = s.get("type", "any") or "any"
        if ltype not in LABEL_TYPES:
            raise bad_request({"labels": {str(i): {"type": [f'"{ltype}" is not a valid choice.']}}})
        color = s.get("color") or ""
        if color and not _COLOR.match(color):
            raise bad_request({"labels": {str(i): {"color": [f"color {color!r} is not #rrggbb"]}}})
        out.append(("create", None, s))
    return out


def _apply_label_specs(srv: StandinServer, actions: list, *, task_id: int | None, project_id: int | None) -> None:
    st = srv.state
    from dl_utils.cv_utils.colors import color_for_index

    for kind, lb, s in actions:
        if kind == "delete":
            st.labels.pop(lb["id"], None)
        elif kind == "update":
            for k in ("name", "color", "type"):
                if k in s:
                    lb[k] = s[k]
        else:
            lid = st.next_id("label")
            attrs = []
            for a in s.get("attributes") or []:
                attrs.append({"id": st.next_id("attribute"),
                              "name": str(a.get("name", "")), "mutable": bool(a.get("mutable", False)),
                              "input_type": a.get("input_type", "text"),
                              "default_value": str(a.get("default_value", "")),
                              "values": [str(v) for v in a.get("values") or []]})
            st.labels[lid] = {"id": lid, "name": s["name"], "color": s.get("color") or color_for_index(lid),
                              "type": s.get("type") or "any", "attributes": attrs,
                              "task_id": task_id, "project_id": project_id}


def labels_list(srv: StandinServer, req: Request) -> Response:
    st = srv.state
    tid, pid, jid = req.q_int("task_id"), req.q_int("project_id"), req.q_int("job_id")
    if jid is not None:
        if jid not in st.jobs:
            raise _not_found()
        tid = st.jobs[jid]["task_id"]
    if tid is not None:
        if tid not in st.tasks:
            raise _not_found()
        items = st.task_labels(tid)
    elif pid is not None:
        if pid not in st.projects:
            raise _not_found()
        items = [lb for lb in st.labels.values() if lb.get("project_id") == pid]
    else:
        items = list(st.labels.values())
    if "name" in req.query:
        items = [lb for lb in items if lb["name"] == req.query["name"]]
    items = sorted(items, key=lambda lb: lb["id"])
    return Response(200, paginate(srv, req, [label_json(lb) for lb in items]))


def label_get(srv: StandinServer, req: Request, lid: int) -> Response:
    lb = srv.state.labels.get(lid)
    if lb is None:
        raise _not_found()
    return Response(200, label_json(lb))


def label_patch(srv: StandinServer, req: Request, lid: int) -> Response:
    lb = srv.state.labels.get(lid)
    if lb is None:
        raise _not_found()
    body = req.json()
    if "type" in body and body["type"] not in LABEL_TYPES:
        raise bad_request({"type": [f'"{body["type"]}" is not a valid choice.']})
    if "color" in body and not _COLOR.match(str(body["color"])):
        raise bad_request({"color": [f"color {body['color']!r} is not #rrggbb"]})
    if "name" in body:
        owner = [x for x in srv.state.labels.values() if x["id"] != lid and
                 x.get("task_id") == lb.get("task_id") and x.get("project_id") == lb.get("project_id")]
        if any(x["name"] == body["name"] for x in owner):
            raise bad_request({"name": ["all label names must be unique"]})
    for k in ("name", "color", "type"):
        if k in body:
            lb[k] = body[k]
    return Response(200, label_json(lb))


def label_delete(srv: StandinServer, req: Request, lid: int) -> Response:
    if srv.state.labels.pop(lid, None) is None:
        raise _not_found()
    return Response(204)


# ------------------------------------------------------------------------------------------ projects
def projects_list(srv: StandinServer, req: Request) -> Response:
    # cvat/apps/engine/views.py ProjectViewSet: ordering = "-id"; ``name`` is a simple filter
    items = sorted(srv.state.projects.values(), key=lambda p: -p["id"])
    if "name" in req.query:
        items = [p for p in items if p["name"] == req.query["name"]]
    return Response(200, paginate(srv, req, [project_json(srv, p) for p in items]))


def project_create(srv: StandinServer, req: Request) -> Response:
    body = req.json()
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad_request({"name": ["This field is required."]})
    actions = _label_specs(srv, body.get("labels", []), task_id=None, project_id=None, existing=[])
    pid = srv.state.next_id("project")
    ts = now_iso()
    srv.state.projects[pid] = {"id": pid, "name": name, "created_date": ts, "updated_date": ts}
    _apply_label_specs(srv, actions, task_id=None, project_id=pid)
    return Response(201, project_json(srv, srv.state.projects[pid]))


def project_get(srv: StandinServer, req: Request, pid: int) -> Response:
    p = srv.state.projects.get(pid)
    if p is None:
        raise _not_found()
    return Response(200, project_json(srv, p))


def project_patch(srv: StandinServer, req: Request, pid: int) -> Response:
    p = srv.state.projects.get(pid)
    if p is None:
        raise _not_found()
    body = req.json()
    if "labels" in body:
        existing = [lb for lb in srv.state.labels.values() if lb.get("project_id") == pid]
        actions = _label_specs(srv, body["labels"], task_id=None, project_id=pid, existing=existing)
        _apply_label_specs(srv, actions, task_id=None, project_id=pid)
    if "name" in body:
        p["name"] = str(body["name"])
    p["updated_date"] = now_iso()
    return Response(200, project_json(srv, p))


def project_delete(srv: StandinServer, req: Request, pid: int) -> Response:
    st = srv.state
    if st.projects.pop(pid, None) is None:
        raise _not_found()
    for tid in [t["id"] for t in st.tasks.values() if t.get("project_id") == pid]:
        _delete_task(srv, tid)
    for lid in [lb["id"] for lb in st.labels.values() if lb.get("project_id") == pid]:
        del st.labels[lid]
    return Response(204)


# ------------------------------------------------------------------------------------------ tasks
def tasks_list(srv: StandinServer, req: Request) -> Response:
    # cvat/apps/engine/views.py TaskViewSet: ordering = "-id"; simple_filters name, project_id...
    items = sorted(srv.state.tasks.values(), key=lambda t: -t["id"])
    pid = req.q_int("project_id")
    if pid is not None:
        items = [t for t in items if t.get("project_id") == pid]
    if "name" in req.query:
        items = [t for t in items if t["name"] == req.query["name"]]
    return Response(200, paginate(srv, req, [task_json(srv, t) for t in items]))


def task_create(srv: StandinServer, req: Request) -> Response:
    st = srv.state
    body = req.json()
    if not isinstance(body, dict):
        raise bad_request({"non_field_errors": ["Invalid data. Expected a dictionary."]})
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad_request({"name": ["This field is required."]})
    pid = body.get("project_id")
    if pid is not None and pid not in st.projects:
        raise bad_request({"project_id": [f'Invalid pk "{pid}" - object does not exist.']})
    labels = body.get("labels") or []
    if pid is not None and labels:
        raise bad_request({"non_field_errors": ["Project must have only one of Label set or project_id"]})
    if pid is None and not labels:
        raise bad_request({"non_field_errors": ["Label set or project_id must be present"]})
    for fld in ("segment_size", "overlap"):
        v = body.get(fld)
        if v is not None and (not isinstance(v, int) or v < 0):
            raise bad_request({fld: ["Ensure this value is greater than or equal to 0."]})
    actions = _label_specs(srv, labels, task_id=None, project_id=None, existing=[])
    tid = st.next_id("task")
    ts = now_iso()
    st.tasks[tid] = {"id": tid, "name": name, "project_id": pid, "created_date": ts, "updated_date": ts,
                     "segment_size": body.get("segment_size") or 0, "overlap": body.get("overlap"),
                     "subset": body.get("subset") or "", "bug_tracker": body.get("bug_tracker") or "",
                     "mode": "", "data": None, "ann_version": 0}
    _apply_label_specs(srv, actions, task_id=tid, project_id=None)
    return Response(201, task_json(srv, st.tasks[tid]))


def _task(srv: StandinServer, tid: int) -> dict:
    t = srv.state.tasks.get(tid)
    if t is None:
        raise _not_found()
    return t


def task_get(srv: StandinServer, req: Request, tid: int) -> Response:
    return Response(200, task_json(srv, _task(srv, tid)))


def task_patch(srv: StandinServer, req: Request, tid: int) -> Response:
    t = _task(srv, tid)
    body = req.json()
    if "project_id" in body:
        _move_task(srv, t, body["project_id"])
    if "labels" in body:
        if t.get("project_id"):
            raise bad_request({"labels": ["The task belongs to a project: change the project's labels"]})
        existing = [lb for lb in srv.state.labels.values() if lb.get("task_id") == tid]
        actions = _label_specs(srv, body["labels"], task_id=tid, project_id=None, existing=existing)
        _apply_label_specs(srv, actions, task_id=tid, project_id=None)
    for k in ("name", "subset", "bug_tracker"):
        if k in body:
            t[k] = body[k]
    t["updated_date"] = now_iso()
    return Response(200, task_json(srv, t))


def _move_task(srv: StandinServer, t: dict, pid: Any) -> None:
    """PATCH /api/tasks/{id} {"project_id": X}: move a task into (another) project.

    cvat/apps/engine/serializers.py TaskWriteSerializer.validate and .update:
    * the project must exist (``Cannot find project with ID X``);
    * every label of the task's current label set -- its own labels, or ALL the labels of the
      project it is in, used or not -- must have a label of the same name in the target project
      (``All task or project label names must be mapped to the target project``);
    * every attribute of such a label must exist on the target's label with the same name, values
      and input type (``Target project does not have "L" label with "A" attribute``);
    * the task's shapes, tracks and tags are moved onto the target's labels (matched by name),
      attribute values onto the target's specs; a task's own labels are deleted;
    * the dimension must match the project's other tasks (always 2d here).
    ``project_id: null`` does not take a task out of a project in CVAT (``validate`` looks the
    project up and fails); the stand-in answers 400 (*stricter*). Nothing changes on any error.
    """
    st = srv.state
    if pid is None or isinstance(pid, bool) or not isinstance(pid, int):
        raise bad_request({"project_id": ["A valid integer is required (a task cannot be taken out of"
                                          " a project)."]})
    if pid not in st.projects:
        raise bad_request({"non_field_errors": [f"Cannot find project with ID {pid}"]})
    if t.get("project_id") == pid:
        return
    old = st.task_labels(t["id"])
    target = {lb["name"]: lb for lb in st.labels.values() if lb.get("project_id") == pid}
    if not {lb["name"] for lb in old} <= set(target):
        raise bad_request({"non_field_errors": [
            "All task or project label names must be mapped to the target project"]})
    label_map: dict[int, int] = {}
    spec_map: dict[int, int] = {}
    for lb in old:
        new = target[lb["name"]]
        label_map[lb["id"]] = new["id"]
        for a in lb.get("attributes") or []:
            match = next((b for b in new.get("attributes") or [] if b["name"] == a["name"]
                          and b.get("values") == a.get("values")
                          and b.get("input_type") == a.get("input_type")), None)
            if match is None:
                raise bad_request({"non_field_errors": [
                    f'Target project does not have "{lb["name"]}" label with "{a["name"]}" attribute']})
            spec_map[a["id"]] = match["id"]

    def remap(obj: dict) -> None:
        if "label_id" in obj:
            obj["label_id"] = label_map.get(obj["label_id"], obj["label_id"])
        for a in obj.get("attributes") or []:
            a["spec_id"] = spec_map.get(a.get("spec_id"), a.get("spec_id"))
        for sub in (obj.get("shapes") or []) + (obj.get("elements") or []):
            remap(sub)

    for j in st.task_jobs(t["id"]):
        ann = st.annotations[j["id"]]
        for section in (ann.shapes, ann.tracks, ann.tags):
            for obj in section.values():
                remap(obj)
    if not t.get("project_id"):
        for lid in [lb["id"] for lb in old]:
            del st.labels[lid]
    t["project_id"] = pid
    t["ann_version"] = t.get("ann_version", 0) + 1


def _delete_task(srv: StandinServer, tid: int) -> None:
    st = srv.state
    st.tasks.pop(tid, None)
    for j in [j for j in st.jobs.values() if j["task_id"] == tid]:
        del st.jobs[j["id"]]
        st.annotations.pop(j["id"], None)
    for lid in [lb["id"] for lb in st.labels.values() if lb.get("task_id") == tid]:
        del st.labels[lid]
    m = st.media.pop(tid, None)
    if m is not None:
        m.close()
    st.uploads.pop(tid, None)


def task_delete(srv: StandinServer, req: Request, tid: int) -> Response:
    _task(srv, tid)
    _delete_task(srv, tid)
    return Response(204)


# ------------------------------------------------------------------------------------------ task data
_FINISH_FIELDS = ("image_quality", "start_frame", "stop_frame", "frame_filter", "sorting_method",
                  "chunk_size", "use_cache", "use_zip_chunks", "copy_data", "upload_file_order",
                  "server_files", "remote_files", "cloud_storage_id", "job_file_mapping",
                  "filename_pattern", "server_files_exclude", "validation_params")


def _multipart(req: Request) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    ctype = req.headers.get("Content-Type") or ""
    msg = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + req.body)
    fields: dict[str, Any] = {}
    files: list[tuple[str, bytes]] = []
    if not msg.is_multipart():
        raise bad_request({"detail": "Multipart form parse error - Invalid boundary in multipart"})
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition") or ""
        filename = part.get_filename()
        payload = part.get_payload(decode=True) or b""
        if filename is not None or name.startswith("client_files"):
            files.append((Path(filename or name).name, payload))  # Django keeps the base name
        else:
            val = payload.decode("utf-8", "replace")
            if name in fields:
                prev = fields[name]
                fields[name] = (prev if isinstance(prev, list) else [prev]) + [val]
            else:
                fields[name] = val
    return fields, files


def _coerce(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    for k in ("image_quality", "start_frame", "stop_frame", "chunk_size", "cloud_storage_id"):
        if isinstance(out.get(k), str):
            try:
                out[k] = int(out[k])
            except ValueError:
                raise bad_request({k: ["A valid integer is required."]}) from None
    for k in ("use_cache", "use_zip_chunks", "copy_data"):
        if isinstance(out.get(k), str):
            out[k] = out[k].lower() in ("true", "1")
    for k in ("upload_file_order", "server_files", "remote_files"):
        if isinstance(out.get(k), str):
            out[k] = [out[k]]
    return out


def task_data_post(srv: StandinServer, req: Request, tid: int) -> Response:
    st = srv.state
    t = _task(srv, tid)
    if t.get("data"):
        raise bad_request({"detail": "Adding more data is not supported"})
    up = st.uploads.setdefault(tid, {"files": [], "tus": {}})
    h = req.headers
    if h.get("Tus-Resumable") is not None and h.get("Upload-Length") is not None:
        return tus_create(srv, req, tid)
    if h.get("Upload-Start") is not None:
        up["files"] = []
        return Response(202)
    ctype = (h.get("Content-Type") or "").lower()
    if h.get("Upload-Multiple") is not None:
        _, files = _multipart(req)
        up["files"].extend(files)
        return Response(200, {"detail": f"{len(files)} file(s) received"})
    if ctype.startswith("multipart/"):
        fields, files = _multipart(req)
        up["files"].extend(files)
        params = _coerce(fields)
    else:
        params = _coerce(req.json() or {})
    unknown = sorted(set(params) - set(_FINISH_FIELDS))
    if unknown:
        params = {k: v for k, v in params.items() if k not in unknown}
    return _create_data(srv, t, params, up["files"])


def _create_data(srv: StandinServer, t: dict, params: dict[str, Any], files: list[tuple[str, bytes]]) -> Response:
    st = srv.state
    tid = t["id"]
    if params.get("cloud_storage_id") is not None:
        raise bad_request({"cloud_storage_id": ["cloud storages are not available in the stand-in"]})
    # cvat/apps/engine/serializers.py DataSerializer: image_quality is required (0..100),
    # frame_filter must read 'step=N' (N >= 1), chunk_size must be positive
    if params.get("image_quality") is None:
        raise bad_request({"image_quality": ["This field is required."]})
    ff = params.get("frame_filter")
    if ff not in (None, "") and not re.search(r"step\s*=\s*([1-9]\d*)", str(ff)):
        raise bad_request({"frame_filter": ["Invalid frame filter expression"]})
    if params.get("chunk_size") is not None and not int(params["chunk_size"]) > 0:
        raise bad_request({"chunk_size": ["Chunk size must be a positive integer"]})
    for k in ("start_frame", "stop_frame", "image_quality"):
        v = params.get(k)
        if v is not None and (not isinstance(v, int) or v < 0):
            raise bad_request({k: ["Ensure this value is greater than or equal to 0."]})
    iq = params["image_quality"]
    if not 0 <= int(iq) <= 100:
        raise bad_request({"image_quality": ["Ensure this value is less than or equal to 100."]})
    if params.get("stop_frame") is not None and params["stop_frame"] < params.get("start_frame", 0):
        raise bad_request({"stop_frame": ["Stop frame must be more or equal start frame"]})
    files = list(files)
    for p in params.get("server_files") or []:
        if st.share_root is None:
            raise bad_request({"server_files": ["the stand-in has no share (start it with share_root)"]})
        path = (st.share_root / str(p).lstrip("/")).resolve()
        if st.share_root.resolve() not in path.parents:
            raise bad_request({"server_files": [f"{p} is not on the share"]})
        if path.is_dir():
            # cvat/apps/engine/task.py _copy_data_from_share_point: a directory is copied whole
            # (copytree), its files named by their path on the share
            inner = sorted(f for f in path.rglob("*") if f.is_file())
            if not inner:
                raise bad_request({"server_files": [f"{p} is an empty directory on the share"]})
            files += [(str(f.relative_to(st.share_root.resolve())), f.read_bytes()) for f in inner]
            continue
        if not path.is_file():
            raise bad_request({"server_files": [f"{p} is not a file on the share"]})
        files.append((p, path.read_bytes()))
    for u in params.get("remote_files") or []:
        if not str(u).startswith("file://"):
            raise bad_request({"remote_files": [f"{u}: the stand-in reads only file:// URLs"]})
        path = Path(unquote(urlsplit(u).path))
        if not path.is_file():
            raise bad_request({"remote_files": [f"{u} does not exist"]})
        files.append((path.name, path.read_bytes()))
    rq_id = f"create:task-{tid}-{uuid.uuid4().hex[:8]}"
    ts = now_iso()
    rq = {"id": rq_id, "status": "started", "message": "", "task_id": tid, "created_date": ts,
          "polls": 0, "finished_date": None}
    st.requests[rq_id] = rq
    try:
        media = build_media(files, params, st.workdir(tid))
    except MediaError as e:
        rq.update(status="failed", message=str(e), finished_date=now_iso())
        return Response(202, {"rq_id": rq_id})
    st.media[tid] = media
    size = len(media.numbers)
    video = media.kind == "video"
    step = 1
    ff = str(params.get("frame_filter") or "")
    if ff.startswith("step="):
        step = int(ff[5:])
    did = st.next_id("data")
    t["data"] = {"id": did, "size": size, "chunk_size": int(params.get("chunk_size") or DEFAULT_CHUNK_SIZE),
                 "chunk_type": "video" if video else "imageset", "image_quality": int(iq),
                 "start_frame": media.numbers[0], "stop_frame": media.numbers[-1],
                 "frame_filter": ff, "step": step, "media_type": "video" if video else "image",
                 "chunks_updated_date": ts, "sorting_method": params.get("sorting_method", "lexicographical")}
    t["mode"] = "interpolation" if video else "annotation"
    # cvat/apps/engine/task.py _generate_segment_params: segment_size 0 or larger than the data
    # means one segment; overlap defaults to 5 frames in interpolation (video) mode and 0 for
    # images, at most segment_size // 2; segments start every segment_size - overlap frames
    seg = t.get("segment_size") or 0
    if seg == 0 or seg > size:
        seg = size
    default_overlap = 5 if video else 0
    overlap = min(t["overlap"] if t.get("overlap") is not None else default_overlap, seg // 2)
    t["segment_size"] = seg
    t["overlap"] = overlap
    for start in range(0, size - overlap, seg - overlap):
        stop = min(start + seg - 1, size - 1)
        jid = st.next_id("job")
        st.jobs[jid] = {"id": jid, "task_id": tid, "start_frame": start, "stop_frame": stop,
                        "created_date": ts, "updated_date": ts}
        st.annotations[jid] = JobAnnotations()
    t["updated_date"] = now_iso()
    st.uploads.pop(tid, None)
    if st.rq_polls_before_finish <= 0:
        rq.update(status="finished", finished_date=now_iso())
    return Response(202, {"rq_id": rq_id})


def tus_create(srv: StandinServer, req: Request, tid: int) -> Response:
    _task(srv, tid)
    up = srv.state.uploads.setdefault(tid, {"files": [], "tus": {}})
    length = int(req.headers.get("Upload-Length") or 0)
    meta = {}
    for item in (req.headers.get("Upload-Metadata") or "").split(","):
        k, _, v = item.strip().partition(" ")
        if k:
            meta[k] = base64.b64decode(v).decode() if v else ""
    name = Path(meta.get("filename") or "upload").name
    fid = uuid.uuid4().hex
    up["tus"][fid] = {"name": name, "length": length, "data": bytearray()}
    return Response(201, headers={"Location": f"{_base(srv)}/api/tasks/{tid}/data/{fid}",
                                  "Upload-Filename": name, "Tus-Resumable": "1.0.0"})


def _tus(srv: StandinServer, tid: int, fid: str) -> tuple[dict, dict]:
    up = srv.state.uploads.get(tid) or {}
    f = (up.get("tus") or {}).get(fid)
    if f is None:
        raise _not_found()
    return up, f


def tus_patch(srv: StandinServer, req: Request, tid: int, fid: str) -> Response:
    up, f = _tus(srv, tid, fid)
    off = int(req.headers.get("Upload-Offset") or 0)
    if off != len(f["data"]):
        return Response(409, headers={"Upload-Offset": str(len(f["data"]))})
    f["data"] += req.body
    if len(f["data"]) >= f["length"]:
        up["files"].append((f["name"], bytes(f["data"])))
    return Response(204, headers={"Upload-Offset": str(len(f["data"])), "Tus-Resumable": "1.0.0"})


def tus_head(srv: StandinServer, req: Request, tid: int, fid: str) -> Response:
    _, f = _tus(srv, tid, fid)
    return Response(200, headers={"Upload-Offset": str(len(f["data"])), "Upload-Length": str(f["length"]),
                                  "Tus-Resumable": "1.0.0"})


def request_get(srv: StandinServer, req: Request, rq_id: str) -> Response:
    rq = srv.state.requests.get(rq_id)
    if rq is None:
        raise _not_found()
    return Response(200, _request_json(srv, rq))


def _request_json(srv: StandinServer, rq: dict) -> dict:
    if rq.get("transfer"):  # dataset export, backup export/import: tests/cvat_standin/transfer.py
        from .transfer import request_json

        return request_json(srv, rq)
    if rq["status"] == "started":
        rq["polls"] += 1
        if rq["polls"] > srv.state.rq_polls_before_finish:
            rq.update(status="finished", finished_date=now_iso())
    t = srv.state.tasks.get(rq["task_id"]) or {}
    return {"id": rq["id"], "status": rq["status"], "message": rq["message"],
            "progress": 1.0 if rq["status"] == "finished" else 0.5,
            "operation": {"type": "create:task", "target": "task", "project_id": t.get("project_id"),
                          "task_id": rq["task_id"], "job_id": None, "org_id": None, "format": None,
                          "function_id": None},
            "created_date": rq["created_date"], "started_date": rq["created_date"],
            "finished_date": rq["finished_date"], "expiry_date": None,
            "owner": {"id": 1, "username": srv.state.username}, "result_url": None, "result_id": None}


def requests_list(srv: StandinServer, req: Request) -> Response:
    items = [_request_json(srv, rq) for rq in srv.state.requests.values()]
    return Response(200, paginate(srv, req, items))


def task_status(srv: StandinServer, req: Request, tid: int) -> Response:
    t = _task(srv, tid)
    rqs = [rq for rq in srv.state.requests.values() if rq["task_id"] == tid]
    if not rqs:
        return Response(200, {"state": "Unknown", "message": ""})
    rq = rqs[-1]
    return Response(200, {"state": {"started": "Started", "finished": "Finished", "failed": "Failed"}[rq["status"]],
                          "message": rq["message"], "progress": 1.0 if t.get("data") else 0.0})


def data_meta(srv: StandinServer, req: Request, tid: int) -> Response:
    t = _task(srv, tid)
    d = t.get("data")
    if not d:
        return Response(200, {"chunk_size": None, "size": 0, "image_quality": 70, "start_frame": 0,
                              "stop_frame": 0, "frame_filter": "", "frames": [], "deleted_frames": [],
                              "included_frames": None, "chunks_updated_date": t["created_date"],
                              "storage": "local", "cloud_storage_id": None})
    m = srv.state.media[tid]
    if m.kind == "video":
        frames = [{"width": m.sizes[0][0], "height": m.sizes[0][1], "name": m.names[0],
                   "related_files": 0, "has_related_context": False}]
    else:
        frames = [{"width": w, "height": h, "name": n, "related_files": 0, "has_related_context": False}
                  for n, (w, h) in zip(m.names, m.sizes)]
    return Response(200, {"chunk_size": d["chunk_size"], "size": d["size"], "image_quality": d["image_quality"],
                          "start_frame": d["start_frame"], "stop_frame": d["stop_frame"],
                          "frame_filter": d["frame_filter"], "frames": frames, "deleted_frames": [],
                          "included_frames": None, "chunks_updated_date": d["chunks_updated_date"],
                          "storage": "local", "cloud_storage_id": None})


def data_get(srv: StandinServer, req: Request, tid: int) -> Response:
    t = _task(srv, tid)
    if not t.get("data"):
        raise bad_request({"detail": "the task has no data yet"})
    m = srv.state.media[tid]
    kind = req.query.get("type")
    number = req.q_int("number", req.q_int("index", 0))
    size = t["data"]["size"]
    if kind in ("frame", "preview"):
        i = 0 if kind == "preview" else number
        if i is None or not 0 <= i < size:
            raise bad_request({"detail": f"The frame number {i} doesn't belong to the task (0..{size - 1})"})
        body, mime = m.frame_bytes(i)
        return Response(200, body, content_type=mime)
    if kind == "chunk":
        cs = t["data"]["chunk_size"]
        if number is None or not 0 <= number * cs < size:
            raise bad_request({"detail": f"The chunk number {number} doesn't belong to the task"})
        if m.kind != "images":
            raise bad_request({"detail": "the stand-in serves chunks of image tasks only"})
        return Response(200, m.chunk_zip(number, cs), content_type="application/zip")
    raise bad_request({"type": [f'"{kind}" is not a valid choice.']})


# ------------------------------------------------------------------------------------------ jobs
def jobs_list(srv: StandinServer, req: Request) -> Response:
    st = srv.state
    tid = req.q_int("task_id")
    # cvat/apps/engine/views.py JobViewSet: simple filters task_id, project_id, stage, state, type;
    # ordering = "-id" there, but see JOBS_NEWEST_FIRST
    items = sorted(st.jobs.values(), key=lambda j: -j["id"] if JOBS_NEWEST_FIRST else j["id"])
    if tid is not None:
        items = [j for j in items if j["task_id"] == tid]
    pid = req.q_int("project_id")
    if pid is not None:
        items = [j for j in items if st.tasks[j["task_id"]].get("project_id") == pid]
    for key, get in (("stage", _job_stage), ("state", _job_state)):
        if key in req.query:
            items = [j for j in items if get(j) == req.query[key]]
    if req.query.get("type") not in (None, "", "annotation"):
        items = []
    return Response(200, paginate(srv, req, [job_json(srv, j) for j in items]))


def job_get(srv: StandinServer, req: Request, jid: int) -> Response:
    j = srv.state.jobs.get(jid)
    if j is None:
        raise _not_found()
    return Response(200, job_json(srv, j))


# ------------------------------------------------------------------------------------------ annotations
def _stored_shape(st: State, s: dict, sid: int | None = None) -> dict:
    out = {"id": sid if sid is not None else st.next_id("shape"), "label_id": s["label_id"],
           "type": s["type"], "frame": s["frame"], "group": s["group"], "source": s["source"],
           "occluded": s["occluded"], "outside": s["outside"], "z_order": s["z_order"],
           "rotation": s["rotation"], "points": s["points"], "attributes": s["attributes"],
           "elements": [_stored_shape(st, e) for e in s.get("elements") or []]}
    out["score"] = s.get("score", 1.0)
    return out


def _stored_track(st: State, t: dict, tid: int | None = None, old: dict | None = None) -> dict:
    old_ids = {s["id"] for s in (old or {}).get("shapes", [])}
    shapes = []
    src = sorted(t["shapes"], key=lambda s: s["frame"])
    # cvat/apps/dataset_manager/task.py _correct_frame_of_tracked_shapes: a track starting before
    # its first shape gets an outside copy of that shape on its frame; one starting after it is
    # moved back to the first shape's frame
    if src and t["frame"] < src[0]["frame"] and src[0]["type"] != "skeleton":
        src.insert(0, {**src[0], "id": None, "frame": t["frame"], "outside": True})
    elif src and src[0]["frame"] < t["frame"]:
        t = {**t, "frame": src[0]["frame"]}
    for s in src:
        sid = s["id"] if s.get("id") in old_ids else st.next_id("tracked_shape")
        shapes.append({"id": sid, "type": s["type"], "frame": s["frame"], "occluded": s["occluded"],
                       "outside": s["outside"], "z_order": s["z_order"], "rotation": s["rotation"],
                       "points": s["points"], "attributes": s["attributes"]})
    return {"id": tid if tid is not None else st.next_id("track"), "label_id": t["label_id"],
            "frame": t["frame"], "group": t["group"], "source": t["source"], "shapes": shapes,
            "attributes": t["attributes"], "elements": [_stored_track(st, e) for e in t.get("elements") or []]}


def _stored_tag(st: State, t: dict, tid: int | None = None) -> dict:
    return {"id": tid if tid is not None else st.next_id("tag"), "label_id": t["label_id"],
            "frame": t["frame"], "group": t["group"], "source": t["source"], "attributes": t["attributes"]}


_STORE = {"shapes": _stored_shape, "tracks": _stored_track, "tags": _stored_tag}


def _copy(x: Any) -> Any:
    return json.loads(json.dumps(x))


def _scope(srv: StandinServer, kind: str, oid: int) -> tuple[dict, list[dict], str]:
    """(task, jobs in scope, description) for a task or job annotation endpoint."""
    st = srv.state
    if kind == "job":
        j = st.jobs.get(oid)
        if j is None:
            raise _not_found()
        return st.tasks[j["task_id"]], [j], f"job {oid}"
    t = _task(srv, oid)
    return t, st.task_jobs(oid), f"task {oid}"


def _collect(srv: StandinServer, jobs: list[dict]) -> dict[str, list]:
    out: dict[str, list] = {"tags": [], "shapes": [], "tracks": []}
    for j in jobs:
        ann = srv.state.annotations[j["id"]]
        out["tags"] += ann.tags.values()
        out["shapes"] += ann.shapes.values()
        out["tracks"] += ann.tracks.values()
    for k in out:
        out[k] = sorted(out[k], key=lambda x: x["id"])
    return out


def _version(t: dict, jobs: list[dict], srv: StandinServer, kind: str) -> int:
    if kind == "job":
        return srv.state.annotations[jobs[0]["id"]].version
    return t.get("ann_version", 0)


def _bump(srv: StandinServer, t: dict, job_ids: set[int]) -> None:
    ts = now_iso()
    for jid in job_ids:
        srv.state.annotations[jid].version += 1
        srv.state.jobs[jid]["updated_date"] = ts
    t["ann_version"] = t.get("ann_version", 0) + 1
    t["updated_date"] = ts


def annotations_get(srv: StandinServer, req: Request, kind: str, oid: int) -> Response:
    t, jobs, _ = _scope(srv, kind, oid)
    if kind == "task" and len(jobs) > 1:
        from .merge import merge_jobs

        data = merge_jobs([(j["start_frame"], _copy(_collect(srv, [j]))) for j in jobs],
                          int(t.get("overlap") or 0))
        return Response(200, {"version": _version(t, jobs, srv, kind), **data})
    data = _collect(srv, jobs)
    return Response(200, {"version": _version(t, jobs, srv, kind), **_copy(data)})


def annotations_delete(srv: StandinServer, req: Request, kind: str, oid: int) -> Response:
    t, jobs, _ = _scope(srv, kind, oid)
    for j in jobs:
        a = srv.state.annotations[j["id"]]
        a.shapes.clear()
        a.tracks.clear()
        a.tags.clear()
    _bump(srv, t, {j["id"] for j in jobs})
    return Response(204)


def _split_for_jobs(section: str, item: dict, jobs: list[dict]) -> list[tuple[dict, dict]]:
    """(job, the part of ``item`` in it) for every job the item reaches."""
    if len(jobs) == 1:
        return [(jobs[0], item)]
    if section != "tracks":
        return [(j, item) for j in jobs if j["start_frame"] <= item["frame"] <= j["stop_frame"]]
    from .merge import _interpolated

    out = []
    shapes = sorted(item["shapes"], key=lambda s: s["frame"])
    for j in jobs:
        a, b = j["start_frame"], j["stop_frame"]
        inside = [s for s in shapes if a <= s["frame"] <= b]
        while inside and inside[0].get("outside"):  # leading outside shapes are not needed
            inside.pop(0)
        seen = _interpolated({**item, "shapes": shapes}, a, b + 1)
        if a in seen and (not inside or inside[0]["frame"] > a):  # visible from an earlier keyframe
            first = dict(seen[a])
            first.pop("label_id", None)
            first.pop("id", None)
            inside.insert(0, first)
        if not inside:
            continue
        later = [s for s in shapes if s["frame"] > b]
        if later and b in seen and inside[-1]["frame"] < b and not inside[-1].get("outside"):
            last = dict(seen[b])
            last.pop("label_id", None)
            last.pop("id", None)
            inside.append(last)
        out.append((j, {**item, "frame": inside[0]["frame"], "shapes": inside}))
    return out


def _job_for_frame(jobs: list[dict], frame: int) -> dict:
    for j in jobs:
        if j["start_frame"] <= frame <= j["stop_frame"]:
            return j
    return jobs[0]


def annotations_write(srv: StandinServer, req: Request, kind: str, oid: int) -> Response:
    st = srv.state
    t, jobs, where = _scope(srv, kind, oid)
    if not t.get("data"):
        raise bad_request({"detail": f"{where} has no data: upload its images or video first"})
    action = req.query.get("action") if req.method == "PATCH" else "put"
    if action not in ("create", "update", "delete", "put"):
        raise bad_request({"action": ["Please specify a correct 'action' for the request"]})
    data = parse_labeled_data(req.json())
    media = st.media[t["id"]]
    lo, hi = jobs[0]["start_frame"], max(j["stop_frame"] for j in jobs)
    task_labels = {lb["id"]: lb for lb in st.task_labels(t["id"])}
    label_ids = set(task_labels)
    check_against_task(data, frame_range=(lo, hi), where=where, label_ids=label_ids,
                       size_of=lambda f: media.size_of(f) if 0 <= f < len(media.numbers) else None,
                       labels=task_labels if action != "delete" else None)
    touched: set[int] = set()
    result: dict[str, list] = {"tags": [], "shapes": [], "tracks": []}
    if action in ("update", "delete"):
        # every id must exist in scope before anything changes (the server runs one transaction)
        from .validate import Errors

        errs = Errors()
        found: dict[tuple[str, int], int] = {}
        for section in ("tags", "shapes", "tracks"):
            for i, item in enumerate(data[section]):
                iid = item.get("id")
                if iid is None:
                    errs.add(section, i, "id", f"an {action} needs the id of the object")
                    continue
                jid = next((j["id"] for j in jobs if iid in getattr(st.annotations[j["id"]], section)), None)
                if jid is None:
                    errs.add(section, i, "id", f"there is no {section[:-1]} with id {iid} in {where}")
                    continue
                found[(section, iid)] = jid
        errs.raise_if_any()
        for section in ("tags", "shapes", "tracks"):
            for item in data[section]:
                jid = found[(section, item["id"])]
                store = getattr(st.annotations[jid], section)
                if action == "delete":
                    result[section].append(store.pop(item["id"]))
                else:
                    if section == "tracks":
                        new = _stored_track(st, item, item["id"], store[item["id"]])
                    else:
                        new = _STORE[section](st, item, item["id"])
                    store[item["id"]] = new
                    result[section].append(new)
                touched.add(jid)
    else:
        if action == "put":
            for j in jobs:
                a = st.annotations[j["id"]]
                a.shapes.clear()
                a.tracks.clear()
                a.tags.clear()
                touched.add(j["id"])
        for section in ("tags", "shapes", "tracks"):
            for item in data[section]:
                # cvat/apps/dataset_manager/task.py TaskAnnotation._patch_data: the data is sliced
                # per job (AnnotationIR.slice): an object on a frame in a job overlap goes to every
                # job holding that frame; a track is cut to each job's frames
                for j, part in _split_for_jobs(section, item, jobs):
                    new = _STORE[section](st, part)
                    getattr(st.annotations[j["id"]], section)[new["id"]] = new
                    result[section].append(new)
                    touched.add(j["id"])
    if touched:
        _bump(srv, t, touched)
    if action == "put":
        result = _collect(srv, jobs)
    return Response(200, {"version": _version(t, jobs, srv, kind), **_copy(result)})


# ============================================================================================ routes
def _routes() -> list[tuple[str, re.Pattern, Callable, bool]]:
    def r(method: str, pattern: str, fn: Callable, public: bool = False) -> tuple:
        return method, re.compile(pattern), fn, public

    def ann(fn: Callable, kind: str) -> Callable:
        return lambda srv, req, oid: fn(srv, req, kind, oid)

    out = [
        r("GET", r"/api/server/about", about, True),
        r("POST", r"/api/auth/login", login, True),
        r("POST", r"/api/auth/logout", logout),
        r("GET", r"/api/users/self", users_self),
        r("GET", r"/api/projects", projects_list), r("POST", r"/api/projects", project_create),
        r("GET", r"/api/projects/(\d+)", project_get), r("PATCH", r"/api/projects/(\d+)", project_patch),
        r("DELETE", r"/api/projects/(\d+)", project_delete),
        r("GET", r"/api/labels", labels_list), r("GET", r"/api/labels/(\d+)", label_get),
        r("PATCH", r"/api/labels/(\d+)", label_patch), r("DELETE", r"/api/labels/(\d+)", label_delete),
        r("GET", r"/api/tasks", tasks_list), r("POST", r"/api/tasks", task_create),
        r("GET", r"/api/tasks/(\d+)", task_get), r("PATCH", r"/api/tasks/(\d+)", task_patch),
        r("DELETE", r"/api/tasks/(\d+)", task_delete),
        r("POST", r"/api/tasks/(\d+)/data", task_data_post), r("GET", r"/api/tasks/(\d+)/data", data_get),
        r("PATCH", r"/api/tasks/(\d+)/data/([0-9a-f]{32})", tus_patch),
        r("HEAD", r"/api/tasks/(\d+)/data/([0-9a-f]{32})", tus_head),
        r("GET", r"/api/tasks/(\d+)/data/meta", data_meta),
        r("GET", r"/api/tasks/(\d+)/status", task_status),
        r("GET", r"/api/requests", requests_list), r("GET", r"/api/requests/([^/]+)", request_get),
        r("GET", r"/api/jobs", jobs_list), r("GET", r"/api/jobs/(\d+)", job_get),
    ]
    for kind, base in (("task", r"/api/tasks/(\d+)/annotations"), ("job", r"/api/jobs/(\d+)/annotations")):
        out += [r("GET", base, ann(annotations_get, kind)), r("PUT", base, ann(annotations_write, kind)),
                r("PATCH", base, ann(annotations_write, kind)),
                r("DELETE", base, ann(annotations_delete, kind))]
    from .transfer import routes as transfer_routes  # dataset export, task backup/restore

    out += transfer_routes(r)
    return out


__all__ = ["Request", "Response", "StandinServer"]
