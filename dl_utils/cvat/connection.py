"""Connecting to a CVAT server: credentials, server version, retries, and secrets kept out of sight.

The connection wraps :class:`cvat_sdk.Client` (login, organisation header, task data upload with
request polling all come from cvat-sdk) and adds what a long push over a flaky network needs:

* **one retry policy** for every request, ours: exponential backoff on 5xx, connection errors and
  429 (honouring ``Retry-After``; cvat-sdk's urllib3 policy retries neither 429 nor any PATCH), so
  urllib3's own retries are switched off to keep a single, predictable count;
* **raw JSON** for annotation payloads (:meth:`CvatConnection.request`): building cvat-sdk models
  for thousands of mask shapes validates every run-length value in Python and takes longer than
  the upload itself, so annotation bodies are serialised once with :mod:`json` and sent through
  the same urllib3 pool and the same auth headers the SDK uses;
* **secrets never shown**: the token and password live only in the SDK's configuration; reprs,
  log records and every :class:`~dl_utils.errors.CvatError` message pass through :func:`redact`.
"""

from __future__ import annotations

import email.utils
import getpass
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

from ..errors import CvatError, InputError

log = logging.getLogger("dl_utils.cvat")

#: Oldest server accepted: mask shapes with CVAT RLE points and ``score`` on shapes (CVAT 2.5).
MIN_SERVER_VERSION = (2, 5, 0)
#: First major version refused: its API is unknown to this client.
MAX_SERVER_MAJOR = 3

#: What cvat-sdk sends and CVAT's CVATAPIRenderer renders (cvat/apps/engine/renderers.py).
ACCEPT = "application/vnd.cvat+json"

ENV_HOST = "CVAT_HOST"
ENV_TOKEN = "CVAT_ACCESS_TOKEN"
ENV_USER = "CVAT_USERNAME"
ENV_PASSWORD = "CVAT_PASSWORD"
ENV_ORG = "CVAT_ORG"
ENV_TOKEN_FILE = "CVAT_ACCESS_TOKEN_FILE"  # a file holding the token (docker/k8s secrets)
ENV_PASSWORD_FILE = "CVAT_PASSWORD_FILE"

# every secret this process has been given, so any text can be scrubbed before it is shown
_SECRETS: set[str] = set()


def _remember_secret(value: str | None) -> None:
    if not value:
        return
    for v in {value, value.strip()}:
        if len(v) >= 4:  # very short strings would redact ordinary words
            _SECRETS.add(v)
            # the forms a secret takes inside exception texts: bytes reprs (b'Bearer tok\\r'),
            # escaped strings ('tok\\n'), and the header value itself
            for form in (repr(v)[1:-1], repr(v.encode("utf-8", "replace"))[2:-1],
                         v.encode("unicode_escape").decode("ascii", "replace")):
                if len(form) >= 4:
                    _SECRETS.add(form)


def clean_secret(value: str | None) -> str | None:
    """A token or password as typed or read from a file: surrounding whitespace (``\\r\\n`` of a
    CRLF ``.env`` file, a trailing newline) removed; ``None`` when nothing is left."""
    if value is None:
        return None
    _remember_secret(value)
    v = value.strip()
    return v or None


def redact(text: Any) -> str:
    """``text`` with every token / password this process knows replaced by ``***``."""
    s = str(text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in s:
            s = s.replace(secret, "***")
    return s


class _RedactFilter(logging.Filter):
    """Scrubs secrets from records of the dl_utils.cvat and cvat_sdk loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            msg = record.getMessage()
            clean = redact(msg)
            if clean != msg:
                record.msg, record.args = clean, None
        return True


_FILTER = _RedactFilter()
for _name in ("dl_utils.cvat", "cvat_sdk"):
    logging.getLogger(_name).addFilter(_FILTER)


def cvat_error(message: str) -> CvatError:
    """A :class:`CvatError` whose message cannot carry a secret."""
    return CvatError(redact(message))


def _redact_arg(a: Any) -> Any:
    if isinstance(a, bytes):
        a = a.decode("utf-8", "replace")
    if isinstance(a, str):
        return redact(a)
    text = str(a)
    clean = redact(text)
    return a if clean == text else clean


def scrub_exception(exc: BaseException) -> BaseException:
    """Redact the secrets from ``exc``'s message and from every exception chained to it, in place.

    Whatever reaches the user (the CLI's one line, a traceback with ``--debug``, a notebook) is
    built from these arguments, so no token or password can show.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if _SECRETS:
            try:
                e.args = tuple(_redact_arg(a) for a in e.args)
            except Exception:  # an exception class with read-only args: leave it
                pass
            for attr in ("body", "reason", "msg", "strerror"):
                v = getattr(e, attr, None)
                if isinstance(v, (str, bytes)):
                    try:
                        setattr(e, attr, redact(v.decode("utf-8", "replace") if isinstance(v, bytes) else v))
                    except Exception:
                        pass
        e = e.__cause__ or e.__context__
    return exc


# ------------------------------------------------------------------------------------ credentials
@dataclass(frozen=True)
class Credentials:
    """Where to connect and how to log in. Secrets are hidden from ``repr``."""

    host: str
    token: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    org: str | None = None

    def __post_init__(self) -> None:
        _remember_secret(self.token)
        _remember_secret(self.password)
        for what, v in (("token", self.token), ("password", self.password)):
            if v is not None and v != v.strip():
                object.__setattr__(self, what, v.strip() or None)

    @property
    def auth(self) -> str:
        return "token" if self.token else "password"


def _interactive() -> bool:
    if "ipykernel" in sys.modules:  # a notebook: getpass shows a masked input box
        return True
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


_HOSTNAME = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*\.?$")


def _bad_host(host: Any, why: str) -> InputError:
    return InputError(f"CVAT host {redact(host)!r} is not a server address ({why}); give it as"
                      " https://cvat.example.com (or http://HOST:PORT) with --host or CVAT_HOST")


def normalize_host(host: str) -> str:
    """``scheme://host[:port]`` without user info, path or trailing slash (``http`` by default).

    Refuses at once (:class:`InputError`, no request made) what cannot be a server address:
    another scheme, spaces or characters a host name cannot hold, a bad port.
    """
    if not isinstance(host, str):
        raise _bad_host(host, "not a text")
    h = host.strip()
    if not h:
        raise _bad_host(host, "empty")
    if any(c.isspace() or ord(c) < 32 for c in h):
        raise _bad_host(host, "it holds spaces or control characters")
    if "://" not in h:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:(?!\d)", h):  # 'ftp:x', 'mailto:x' but not 'host:8080'
            raise _bad_host(host, "only http and https are supported")
        h = "http://" + h
    parts = urlsplit(h)
    if parts.scheme not in ("http", "https"):
        raise _bad_host(host, "only http and https are supported")
    try:
        port = parts.port
    except ValueError:
        raise _bad_host(host, "the port is not a number from 0 to 65535") from None
    hostname = parts.hostname or ""
    if not hostname:
        raise _bad_host(host, "no host name")
    is_ip6 = ":" in hostname
    if is_ip6:
        import ipaddress

        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            raise _bad_host(host, f"{hostname!r} is not an IPv6 address") from None
    elif not _HOSTNAME.match(hostname):
        raise _bad_host(host, f"{hostname!r} is not a host name")
    if parts.query or parts.fragment:
        raise _bad_host(host, "it holds a query or fragment")
    if parts.username or parts.password:
        _remember_secret(parts.password)
        raise InputError(
            "put no user name or password in the CVAT host address; use CVAT_ACCESS_TOKEN (or"
            " CVAT_USERNAME / CVAT_PASSWORD) instead"
        )
    netloc = (f"[{hostname}]" if is_ip6 else hostname) + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def resolve_credentials(
    host: str | None = None,
    *,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    org: str | None = None,
    env: Mapping[str, str] | None = None,
    prompt: bool | None = None,
    getpass_fn: Callable[[str], str] = getpass.getpass,
) -> Credentials:
    """Credentials from the arguments, else the ``CVAT_*`` environment, else a hidden prompt.

    ``prompt=None`` prompts only where someone can answer (a terminal or a notebook). A token wins
    over a user name and password when both are available.
    """
    env = os.environ if env is None else env
    host = host or env.get(ENV_HOST)
    if not host:
        raise CvatError(
            f"no CVAT server given: pass --host URL (or host=) or set {ENV_HOST}, e.g."
            f" {ENV_HOST}=https://app.cvat.ai"
        )
    host = normalize_host(host)
    org = org if org is not None else ((env.get(ENV_ORG) or "").strip() or None)
    token, password = clean_secret(token), clean_secret(password)
    user = user.strip() or None if isinstance(user, str) else user
    if token is None and user is None:
        token = clean_secret(env.get(ENV_TOKEN)) or _secret_file(env, ENV_TOKEN_FILE)
    if token is None:
        user = user or (env.get(ENV_USER) or "").strip() or None
        if user is not None and password is None:
            password = clean_secret(env.get(ENV_PASSWORD)) or _secret_file(env, ENV_PASSWORD_FILE)
    can_prompt = _interactive() if prompt is None else prompt
    if token is None and (user is None or password is None):
        if not can_prompt:
            raise CvatError(
                f"no CVAT credentials for {host}: set {ENV_TOKEN} (a personal access token from"
                f" CVAT > Profile > Security), or {ENV_USER} and {ENV_PASSWORD}"
            )
        if user is None:
            token = clean_secret(getpass_fn(f"CVAT access token for {host} (input hidden): "))
            if token is None:
                raise CvatError(f"no access token entered for {host}; set {ENV_TOKEN} instead")
        else:
            password = clean_secret(getpass_fn(f"CVAT password for {user} at {host} (input hidden): "))
            if password is None:
                raise CvatError(f"no password entered for {user} at {host}; set {ENV_PASSWORD} instead")
    creds = Credentials(host=host, token=token, user=None if token else user,
                        password=None if token else password, org=org)
    _check_secret_chars(creds)
    return creds


def _secret_file(env: Mapping[str, str], var: str) -> str | None:
    """The secret in the file named by ``var`` (whitespace and line ends stripped), or None."""
    path = (env.get(var) or "").strip()
    if not path:
        return None
    try:
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except OSError as e:
        raise CvatError(f"{var}={path!r} cannot be read ({e.strerror or type(e).__name__}); point it to"
                        " the file that holds the secret") from None
    except UnicodeDecodeError:
        raise CvatError(f"{var}={path!r} is not a text file; put the secret in it as one line") from None
    secret = clean_secret(text)
    if secret is None:
        raise CvatError(f"{var}={path!r} is empty; put the secret in it as one line")
    return secret


def _check_secret_chars(creds: "Credentials") -> None:
    """A token or password that cannot travel in an HTTP header is refused here, by name only.

    (urllib3/http.client would raise ``ValueError: Invalid header value b'Bearer <token>'``, which
    carries the secret.)
    """
    for what, value, var in (("access token", creds.token, ENV_TOKEN),
                             ("password", creds.password, ENV_PASSWORD)):
        if value is None:
            continue
        bad = [i for i, c in enumerate(value) if ord(c) < 32 or ord(c) == 127 or ord(c) > 255]
        if bad:
            raise CvatError(
                f"the CVAT {what} holds a character that cannot be sent in an HTTP header (a control"
                f" character or non-Latin-1 letter at position {bad[0] + 1} of {len(value)}); copy it"
                f" again into {var} without line breaks or other invisible characters"
            )


# ------------------------------------------------------------------------------------ retries
@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before repeating a failed request.

    Delays grow as ``base_delay * 2**attempt`` up to ``max_delay``; a ``Retry-After`` header (429
    or 503) is honoured up to ``max_retry_after`` seconds.
    """

    retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 300.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return min(self.base_delay * (2 ** attempt), self.max_delay)


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class Stats:
    """Requests made through a connection (retries included), for reports and benchmarks."""

    requests: int = 0
    retries: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def copy(self) -> "Stats":
        return Stats(self.requests, self.retries, self.bytes_sent, self.bytes_received)

    def since(self, before: "Stats") -> dict[str, int]:
        return {
            "requests": self.requests - before.requests,
            "retries": self.retries - before.retries,
            "bytes_sent": self.bytes_sent - before.bytes_sent,
            "bytes_received": self.bytes_received - before.bytes_received,
        }


class _Transient(Exception):
    """A failure worth retrying. ``unknown``: the server may have applied the request."""

    def __init__(self, message: str, *, unknown: bool, retry_after: float | None = None):
        super().__init__(message)
        self.unknown = unknown
        self.retry_after = retry_after


_ADVICE = {
    400: "the server refused the data",
    401: f"the credentials were refused: check {ENV_TOKEN} (or the user name and password)",
    403: f"this user may not do that: check the task's owner/assignee, or the organisation ({ENV_ORG})",
    404: "not found: check the id, and the organisation the object belongs to (--org / CVAT_ORG)",
    405: "the server does not support this request: is it a CVAT server of a supported version?",
    409: "the server reports a conflict: run the command again",
    413: "the request is larger than the server accepts: lower max_request_bytes (--max-request-mb)",
}


def _status_error(what: str, status: int, reason: str, body: Any) -> CvatError:
    detail = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body or "")
    detail = " ".join(detail.split())
    if len(detail) > 400:
        detail = detail[:400] + "..."
    advice = _ADVICE.get(status, "see the server's message")
    return cvat_error(
        f"{what}: the CVAT server answered {status} {reason or ''}".rstrip()
        + (f" ({detail})" if detail else "")
        + f"; {advice}"
    )


class CvatConnection:
    """A logged-in cvat-sdk client plus retries, raw JSON requests and request statistics.

    Make one with :func:`connect`. ``client`` is the :class:`cvat_sdk.Client` for anything this
    module does not wrap.
    """

    def __init__(
        self,
        client: Any,
        credentials: Credentials,
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 600.0,
    ):
        self.client = client
        self.host = credentials.host
        self.user = credentials.user
        self.org = credentials.org
        self.auth = credentials.auth
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.timeout = timeout
        self.stats = Stats()
        self.server_version: tuple[int, ...] | None = None
        self.server_version_text: str | None = None
        self._reached = False  # an answer came back once (a later name lookup failure is a blip)

    def __repr__(self) -> str:
        ver = self.server_version_text or "?"
        return (f"CvatConnection(host={self.host!r}, user={self.user!r}, org={self.org!r},"
                f" auth={self.auth!r} (hidden), server={ver!r})")

    def __enter__(self) -> "CvatConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing must not hide the error that ended the block
            pass

    # ------------------------------------------------------------------ low level
    def request_headers(self, method: str, path: str, body: Any) -> dict[str, str]:
        api = self.client.api_client
        headers = dict(api.get_common_headers())
        # CVAT renders only its own media type (and the browsable HTML view): DRF answers 406 to
        # 'Accept: application/json'. No version parameter: the server's default (2.0) applies.
        headers["Accept"] = ACCEPT
        if body is not None:
            headers["Content-Type"] = "application/json"
        api.update_params_for_auth(headers, [], None, path, method, body,
                                   request_host=api.configuration.host)
        return headers

    def send(self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None = None,
             what: str, preload: bool = True, ok: Sequence[int] | None = None) -> Any:
        """Put one request on the wire (no retries here) and return urllib3's response.

        The one place every raw request of the package goes through, so each failure means the same
        everywhere: a connection that was never made is retryable and was not applied; one that
        broke after sending is retryable but the server may have applied it (``unknown``, except for
        GET and HEAD, which change nothing); 429 and 5xx are retryable (``Retry-After`` honoured);
        a status outside ``ok`` (default: any 4xx is refused) is a :class:`CvatError` with the
        server's words. ``preload=False`` streams the body (downloads): the caller reads it and
        calls ``release_conn()``. The count of requests and bytes goes into :attr:`stats`.
        """
        import urllib3

        safe = method.upper() in ("GET", "HEAD")
        self.stats.requests += 1
        self.stats.bytes_sent += len(body or b"")
        try:
            r = self.client.api_client.rest_client.pool_manager.request(
                method, url, body=body, headers=dict(headers), retries=False, preload_content=preload,
                timeout=urllib3.Timeout(connect=30.0, read=self.timeout),
            )
        except urllib3.exceptions.NameResolutionError:
            if not self._reached:  # never reached: a wrong host name, not a network blip
                raise cvat_error(
                    f"{what}: the host name of {self.host} cannot be resolved; check --host /"
                    f" {ENV_HOST} (e.g. https://cvat.example.com)") from None
            raise _Transient(f"{what}: cannot resolve the host name of {self.host}", unknown=False) from None
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as e:
            raise _Transient(f"{what}: cannot connect to {self.host} ({type(e).__name__})",
                             unknown=False) from None
        except urllib3.exceptions.HTTPError as e:
            # sent, but the answer was lost: the server may or may not have applied it
            raise _Transient(f"{what}: the connection to {self.host} broke ({type(e).__name__})",
                             unknown=not safe) from None
        except (ValueError, TypeError, UnicodeError) as e:  # e.g. a header value http.client refuses
            raise cvat_error(f"{what}: the request could not be sent ({type(e).__name__}: {e}); check"
                             f" the host address and {ENV_TOKEN}") from None
        self._reached = True
        if preload:
            self.stats.bytes_received += len(r.data or b"")
        if r.status == 429 or r.status >= 500:
            ra = _parse_retry_after(r.headers.get("Retry-After")) if r.status in (429, 503) else None
            if not preload:
                r.release_conn()
            if r.status == 429:
                raise _Transient(f"{what}: the server is rate limiting (429)", unknown=False, retry_after=ra)
            raise _Transient(f"{what}: server error {r.status}", unknown=not safe, retry_after=ra)
        if r.status >= 400 if ok is None else r.status not in ok:
            data = r.data if preload else r.read()
            if not preload:
                r.release_conn()
            raise _status_error(what, r.status, r.reason, data)
        return r

    def _once(self, method: str, path: str, query: Mapping[str, Any] | None, body: bytes | None,
              what: str) -> tuple[int, bytes]:
        url = self.host + path + (("?" + urlencode(query, doseq=True)) if query else "")
        r = self.send(method, url, headers=self.request_headers(method, path, body), body=body, what=what)
        return r.status, r.data or b""

    def retrying(self, attempt_fn: Callable[[bool], Any], what: str) -> Any:
        """Run ``attempt_fn(after_unknown)`` until it succeeds or the retries are spent."""
        after_unknown = False
        for attempt in range(self.retry.retries + 1):
            try:
                return attempt_fn(after_unknown)
            except _Transient as e:
                if attempt >= self.retry.retries:
                    raise cvat_error(
                        f"{e} (gave up after {attempt + 1} attempts); the work done so far is"
                        " recorded: run the same command again to finish"
                    ) from None
                after_unknown = after_unknown or e.unknown
                wait = self.retry.delay(attempt, e.retry_after)
                self.stats.retries += 1
                log.warning("%s; retrying in %.1f s (attempt %d of %d)", e, wait, attempt + 2,
                            self.retry.retries + 1)
                self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        what: str | None = None,
        body_after_unknown: Callable[[], Any] | None = None,
    ) -> Any:
        """Send one JSON request with retries and return the parsed JSON answer (``None`` if empty).

        ``body`` is JSON-able data or already encoded ``bytes``. ``body_after_unknown`` is called
        before a retry that follows a failure of unknown outcome (the server may have applied the
        request); it returns the body to send instead, or ``None`` when nothing is left to send.
        """
        what = what or f"{method} {path}"

        def encode(b: Any) -> bytes | None:
            if b is None or isinstance(b, bytes):
                return b
            if isinstance(b, bytearray):
                return bytes(b)
            return json.dumps(b, separators=(",", ":")).encode()

        state: dict[str, Any] = {"body": encode(body), "skip": False}

        def attempt(after_unknown: bool) -> Any:
            if after_unknown and body_after_unknown is not None and not state.get("reconciled"):
                new = body_after_unknown()
                state["reconciled"] = True
                if new is None:
                    state["skip"] = True
                else:
                    state["body"] = encode(new)
            if state["skip"]:
                return None
            try:
                _status, data = self._once(method, path, query, state["body"], what)
            except _Transient as e:
                if e.unknown:
                    state["reconciled"] = False  # the next retry must look again
                raise
            if not data:
                return None
            try:
                return json.loads(data)
            except ValueError:
                raise cvat_error(f"{what}: the server's answer is not JSON; is {self.host} a CVAT"
                                 " server?") from None

        return self.retrying(attempt, what)

    def call(self, fn: Callable[..., Any], *args: Any, what: str, idempotent: bool = True,
             **kwargs: Any) -> Any:
        """Call a cvat-sdk function with the retry policy and errors turned into CvatError.

        ``idempotent=False`` (creating a task, uploading data): a failure the server may have
        applied is not retried, since a second attempt could make a second task.
        """
        import urllib3
        from cvat_sdk.api_client import exceptions as api_exc

        def attempt(after_unknown: bool) -> Any:
            if after_unknown and not idempotent:
                raise cvat_error(
                    f"{what}: the server failed in a way that may have left the change applied;"
                    " check in CVAT before running the command again"
                )
            self.stats.requests += 1
            try:
                return fn(*args, **kwargs)
            except api_exc.ApiException as e:
                status = int(getattr(e, "status", 0) or 0)
                headers = getattr(e, "headers", None) or {}
                if status == 429:
                    raise _Transient(f"{what}: the server is rate limiting (429)", unknown=False,
                                     retry_after=_parse_retry_after(headers.get("Retry-After")))
                if status >= 500 or status == 0:
                    raise _Transient(f"{what}: server error {status}", unknown=True)
                raise _status_error(what, status, getattr(e, "reason", ""), getattr(e, "body", "")) from None
            except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError):
                raise _Transient(f"{what}: cannot connect to {self.host}", unknown=False) from None
            except urllib3.exceptions.HTTPError as e:
                raise _Transient(f"{what}: the connection to {self.host} broke ({type(e).__name__})",
                                 unknown=True) from None
            except (api_exc.ApiTypeError, api_exc.ApiValueError, api_exc.ApiAttributeError) as e:
                raise cvat_error(f"{what}: the server's data does not fit the cvat-sdk model ({e});"
                                 " check the server version") from None
            except (ValueError, TypeError, UnicodeError) as e:
                if type(e).__module__.startswith("dl_utils"):
                    raise
                raise cvat_error(f"{what}: {type(e).__name__}: {e}") from None

        return self.retrying(attempt, what)

    def get_paginated(self, path: str, query: Mapping[str, Any] | None = None, *, what: str) -> list[dict]:
        """All results of a paginated list endpoint (``/api/labels``, ``/api/jobs``...)."""
        out: list[dict] = []
        page = 1
        while True:
            q = dict(query or {})
            q.update(page=page, page_size=500)
            data = self.request("GET", path, query=q, what=what) or {}
            if isinstance(data, list):  # an unpaginated answer
                return out + data
            out.extend(data.get("results") or [])
            if not data.get("next"):
                return out
            page += 1

    # ------------------------------------------------------------------ server
    def check_server(self, *, allow_unsupported: bool = False) -> tuple[int, ...]:
        """Read ``/api/server/about`` and refuse a server this client was not written for."""
        about = self.request("GET", "/api/server/about", what="reading the server version") or {}
        text = str(about.get("version") or "")
        self.server_version_text = text or None
        m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text)
        nums = [int(g) for g in m.groups() if g is not None] if m else []
        if len(nums) < 2:
            raise cvat_error(
                f"{self.host} reports server version {text!r}, which is not a CVAT version; check"
                " the host address"
            )
        ver = tuple(nums)
        self.server_version = ver
        if not allow_unsupported and (ver < MIN_SERVER_VERSION or ver[0] >= MAX_SERVER_MAJOR):
            lo = ".".join(map(str, MIN_SERVER_VERSION))
            raise cvat_error(
                f"{self.host} runs CVAT {text}, which dl_utils does not support (it needs"
                f" {lo} <= version < {MAX_SERVER_MAJOR}.0: mask shapes with RLE points and shape"
                " scores); upgrade the server, or pass allow_unsupported=True at your own risk"
            )
        return ver


def connect(
    host: str | None = None,
    *,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    org: str | None = None,
    credentials: Credentials | None = None,
    retry: RetryPolicy | None = None,
    prompt: bool | None = None,
    allow_unsupported: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    verify_ssl: bool | None = None,
) -> CvatConnection:
    """Log in to a CVAT server and check its version (see :func:`resolve_credentials`)."""
    from cvat_sdk.core.client import AccessTokenCredentials, Client, Config, PasswordCredentials

    creds = credentials or resolve_credentials(host, token=token, user=user, password=password,
                                               org=org, prompt=prompt)
    if credentials is not None:
        normalize_host(creds.host)
        _check_secret_chars(creds)
    try:
        client = Client(creds.host, config=Config(verify_ssl=verify_ssl), check_server_version=False,
                        logger=logging.getLogger("cvat_sdk"))
    except Exception as e:
        raise cvat_error(f"cannot set up a CVAT client for {creds.host}: {e}") from None
    # one retry policy (ours, see the module doc): switch urllib3's off for pools made from now on
    client.api_client.rest_client.pool_manager.connection_pool_kw["retries"] = False
    conn = CvatConnection(client, creds, retry=retry, sleep=sleep)
    try:
        conn.check_server(allow_unsupported=allow_unsupported)
        if creds.token:
            client.login(AccessTokenCredentials(creds.token))
        else:
            conn.call(client.login, PasswordCredentials(creds.user or "", creds.password or ""),
                      what=f"logging in to {creds.host} as {creds.user}")
        if creds.org:
            client.organization_slug = creds.org
        # one cheap authenticated request, so bad credentials fail here with a clear message
        conn.request("GET", "/api/users/self", what=f"checking the credentials for {creds.host}")
    except BaseException as e:
        conn.close()
        scrub_exception(e)
        raise
    return conn


__all__ = [
    "Credentials",
    "CvatConnection",
    "RetryPolicy",
    "Stats",
    "connect",
    "cvat_error",
    "normalize_host",
    "clean_secret",
    "redact",
    "resolve_credentials",
    "scrub_exception",
    "ENV_HOST",
    "ENV_TOKEN",
    "ENV_USER",
    "ENV_PASSWORD",
    "ENV_ORG",
    "ENV_TOKEN_FILE",
    "ENV_PASSWORD_FILE",
    "MIN_SERVER_VERSION",
]
