"""The annotation store: one SQLite file per job, written frame by frame, safe to kill.

Why SQLite: it is in the standard library, a single file a user can copy, and its write-ahead log
gives exactly the guarantees long propagation needs: each :meth:`AnnotationStore.write_frame` is one
transaction, so a process killed (even with SIGKILL) in the middle leaves a store that opens with
every committed frame and no partial one; a reader (the widget) reads while a writer (propagation)
writes, without blocking it.

Masks are kept as CVAT-style run lengths over the mask's box (uint32, zlib-compressed), never raw:
a 1080p mask of a typical object takes a few hundred bytes and encodes in ~0.1 ms.

Resuming: every processed (frame, object) pair has a row, an *empty* instance when the object is
not visible, so :meth:`AnnotationStore.frames_done` tells exactly what is left to compute.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sqlite3
import tempfile
import threading
import time
import urllib.parse
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, cast, runtime_checkable

import numpy as np

from .annotations import (
    Clicks,
    Instance,
    Instances,
    Label,
    MediaInfo,
    ObjectInfo,
    Provenance,
    ShapeType,
    Source,
    split_legacy_prompts,
)
from .cv_utils.rle import decode_cvat_rle_array, encode_cvat_rle_array
from .errors import InputError, MaskError, StoreError, StoreVersionError, mount_point

#: Version of the whole file (``PRAGMA user_version``): tables, columns and the JSON kept in them,
#: the CVAT sync records in ``meta`` included. 1: free ``instances.prompts`` dict and list-format
#: sync records; 2: typed ``clicks``/``provenance``/``label`` columns, version-2 sync records.
SCHEMA_VERSION = 2

_INSTANCES_TABLE = """
CREATE TABLE IF NOT EXISTS instances (
    frame      INTEGER NOT NULL,
    object_id  INTEGER NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
    shape      TEXT NOT NULL,
    x1 REAL, y1 REAL, x2 REAL, y2 REAL,
    mask_h     INTEGER,
    mask_w     INTEGER,
    rle        BLOB,
    rle_box    TEXT,
    polygon    TEXT,
    area       INTEGER NOT NULL DEFAULT 0,
    score      REAL,
    source     TEXT NOT NULL,
    clicks     TEXT,
    provenance TEXT,
    label      TEXT,
    keyframe   INTEGER NOT NULL DEFAULT 0,
    run_id     INTEGER,
    updated    REAL NOT NULL,
    PRIMARY KEY (frame, object_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instances_by_object ON instances (object_id, frame);
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    position   INTEGER NOT NULL,
    name       TEXT PRIMARY KEY,
    color      TEXT,
    class_id   INTEGER,
    superclass TEXT,
    type       TEXT NOT NULL DEFAULT 'any',
    attributes TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS objects (
    id         INTEGER PRIMARY KEY,
    label      TEXT NOT NULL,
    color      TEXT,
    attributes TEXT NOT NULL DEFAULT '{}',
    created    REAL NOT NULL
);
""" + _INSTANCES_TABLE + """
CREATE TABLE IF NOT EXISTS runs (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    kind     TEXT NOT NULL,
    params   TEXT NOT NULL DEFAULT '{}',
    status   TEXT NOT NULL DEFAULT 'running',
    started  REAL NOT NULL,
    finished REAL
);
"""

_INSTANCE_COLS = (
    "frame, object_id, shape, x1, y1, x2, y2, mask_h, mask_w, rle, rle_box, polygon, area, score,"
    " source, clicks, provenance, label, keyframe"
)
#: What a schema-1 store is read with (read-only, not migrated): the old ``prompts`` column in the
#: place of ``clicks``, split by :func:`~dl_utils.annotations.split_legacy_prompts` on decoding.
_INSTANCE_COLS_V1 = _INSTANCE_COLS.replace("clicks, provenance, label", "prompts, NULL, NULL")

#: Meta keys of the CVAT sync records (``cvat.push:<host>:task:<id>``, see dl_utils.cvat.records).
SYNC_RECORD_PREFIX = "cvat.push:"
#: Version of the sync-record JSON a store of :data:`SCHEMA_VERSION` holds (1 was the list format).
SYNC_RECORD_VERSION = 2
_UNIT_FIELDS = ("kind", "job", "server_id", "sent_hash", "server_hash", "held")


def upgrade_sync_unit(record: Sequence[Any]) -> dict[str, Any]:
    """A version-1 unit record ``[kind, job, server id, sent hash, server hash, held]`` as the
    version-2 JSON object.

    It lives here, below the CVAT sink, because the store's migration rewrites the records of an
    old file without importing the sink; :mod:`dl_utils.cvat.records` uses it for a record that
    reaches it in the old format (one set by hand after opening), so the conversion exists once.
    """
    if isinstance(record, (str, bytes)) or len(record) != len(_UNIT_FIELDS):
        raise ValueError(f"unit record {record!r} is not [kind, job, server id, sent hash,"
                         " server hash, held]")
    kind, job, sid, sent, server, held = record
    return {"kind": str(kind), "job": int(job), "server_id": None if sid is None else int(sid),
            "sent_hash": str(sent), "server_hash": server, "held": bool(held)}


def upgrade_sync_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A sync record of any version up to :data:`SYNC_RECORD_VERSION` in that version's JSON
    (a current one is returned as a copy). Raises ``ValueError`` for a unit that is not a list of
    six; the caller says which file and task it is."""
    d = dict(record)
    version = d.get("version", 1)
    if not isinstance(version, int) or version >= SYNC_RECORD_VERSION:
        return d  # current, or newer / garbage: the reader refuses those with its own message
    units = d.get("units") or {}
    d["units"] = {k: upgrade_sync_unit(r) for k, r in units.items()}
    d["version"] = SYNC_RECORD_VERSION
    return d


def _json_or_none(value: Clicks | Provenance | None) -> str | None:
    return None if value is None else _dumps(value.to_json())


def _migrate_1_to_2(conn: sqlite3.Connection, path: Path) -> None:
    """Schema 1 -> 2: the free ``prompts`` dict of each instance becomes the typed ``clicks``,
    ``provenance`` and ``label`` columns (split once, by the one function that knows the old keys),
    and the CVAT sync records become version-2 JSON, so one version number describes the file."""
    # rebuilt rather than altered, so a migrated file's schema is exactly a new store's
    conn.execute("ALTER TABLE instances RENAME TO instances_v1")
    conn.execute("DROP INDEX IF EXISTS instances_by_object")
    _run_script(conn, _INSTANCES_TABLE)
    conn.execute(
        f"INSERT INTO instances ({_INSTANCE_COLS}, run_id, updated) SELECT"
        f" {_INSTANCE_COLS.replace('clicks, provenance, label', 'NULL, NULL, NULL')}, run_id, updated"
        " FROM instances_v1"
    )
    rows = conn.execute(
        "SELECT frame, object_id, prompts FROM instances_v1 WHERE prompts IS NOT NULL"
    ).fetchall()
    updates = []
    for frame, oid, text in rows:
        try:
            old = json.loads(text)
        except ValueError as e:
            raise StoreError(
                f"{path}: frame {frame}, object {oid}: the stored prompts are not JSON ({e}); the"
                " store was edited by another program; restore it from a backup"
            ) from None
        label, clicks, prov = split_legacy_prompts(old if isinstance(old, dict) else None)
        updates.append((_json_or_none(clicks), _json_or_none(prov), label, frame, oid))
    conn.executemany(
        "UPDATE instances SET clicks = ?, provenance = ?, label = ? WHERE frame = ? AND object_id = ?",
        updates,
    )
    conn.execute("DROP TABLE instances_v1")
    metas = conn.execute(
        "SELECT key, value FROM meta WHERE key LIKE ?", (SYNC_RECORD_PREFIX + "%",)
    ).fetchall()
    for key, text in metas:
        try:
            rec = json.loads(text)
            if not isinstance(rec, dict) or not isinstance(rec.get("units", {}), dict):
                continue  # not a record dl-utils wrote: left for the CVAT sink to refuse with its message
            new = upgrade_sync_record(rec)
        except ValueError as e:
            raise StoreError(
                f"{path}: the CVAT sync record {key!r} cannot be upgraded ({e}); it was edited by"
                " hand or written by another program; delete that meta entry (the next push then"
                " re-creates the task's shapes) or restore the store from a backup"
            ) from None
        if new != rec:
            conn.execute("UPDATE meta SET value = ? WHERE key = ?", (_dumps(new), key))


#: Schema migrations: ``version -> step`` turning a store of ``version - 1`` into ``version``;
#: opening an older store writable runs the missing steps in order, in one transaction.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection, Path], None]] = {2: _migrate_1_to_2}


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the surrounding transaction; run statements one by one instead
    for stmt in script.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _size_text(media: MediaInfo | None) -> str | None:
    """``"1920x1080"``, or for images of different sizes ``"mixed sizes: 3 sizes from 30x50 to
    2250x1500 (first image 800x534)"``: what ``store info`` shows."""
    if media is None:
        return None
    if not media.mixed_sizes:
        return f"{media.width}x{media.height}"
    sizes = sorted(set(media.sizes()), key=lambda wh: (wh[0] * wh[1], wh))
    lo, hi = sizes[0], sizes[-1]
    return (f"mixed sizes: {len(sizes)} sizes from {lo[0]}x{lo[1]} to {hi[0]}x{hi[1]}"
            f" (first image {media.width}x{media.height})")


def _readonly_failure(e: sqlite3.DatabaseError) -> bool:
    """SQLite's ways of saying the file or its folder cannot be written."""
    low = str(e).lower()
    code = getattr(e, "sqlite_errorcode", None)
    return (
        "readonly" in low or "read-only" in low or "unable to open database file" in low
        or (code is not None and code & 0xFF in (8, 14))  # SQLITE_READONLY, SQLITE_CANTOPEN
    )


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


@runtime_checkable
class StoreReader(Protocol):
    """What reads a store: sinks and exports (formats, the CVAT push), review, resuming.

    :class:`AnnotationStore` is one; a function that only reads takes a ``StoreReader`` so that a
    stand-in (a test double, a store view) can be passed the same way.
    """

    @property
    def path(self) -> Path: ...

    @property
    def media(self) -> MediaInfo | None: ...

    def get_meta(self, key: str, default: Any = None) -> Any: ...

    def labels(self) -> list[Label]: ...

    def objects(self) -> list[ObjectInfo]: ...

    def get_object(self, id: int) -> ObjectInfo: ...

    def read_frame(self, frame: int, *, decode: bool = True) -> Instances: ...

    def read_object(self, object_id: int, *, decode: bool = True) -> dict[int, Instance]: ...

    def iter_frames(
        self,
        *,
        start: int | None = None,
        stop: int | None = None,
        objects: Iterable[int] | None = None,
        decode: bool = True,
    ) -> Iterator[tuple[int, Instances]]: ...

    def frames(self, *, start: int | None = None, stop: int | None = None) -> list[int]: ...

    def frames_done(self, object_id: int) -> list[int]: ...


@runtime_checkable
class StoreWriter(Protocol):
    """What writes a store: imports (formats, the CVAT pull) and engines writing frame by frame."""

    @property
    def path(self) -> Path: ...

    def set_meta(self, key: str, value: Any) -> None: ...

    def set_media(self, media: MediaInfo) -> None: ...

    def set_labels(self, labels: Iterable[Label]) -> None: ...

    def add_object(
        self,
        label: str,
        *,
        color: str | None = None,
        attributes: dict[str, Any] | None = None,
        id: int | None = None,
    ) -> ObjectInfo: ...

    def write_frame(
        self,
        frame: int,
        instances: Iterable[Instance],
        *,
        replace: bool = False,
        run_id: int | None = None,
    ) -> None: ...

    def write_frames(
        self,
        frames: Iterable[tuple[int, Iterable[Instance]]],
        *,
        replace: bool = False,
        run_id: int | None = None,
    ) -> None: ...

    def delete_instances(
        self,
        *,
        object_id: int | None = None,
        frames: Iterable[int] | None = None,
        start: int | None = None,
        stop: int | None = None,
    ) -> int: ...

    def begin_run(self, kind: str, params: dict[str, Any] | None = None) -> int: ...

    def finish_run(self, run_id: int, status: str = "done") -> None: ...


@runtime_checkable
class StoreReaderWriter(StoreReader, StoreWriter, Protocol):
    """Both: what an import needs (it checks the store's media, labels and objects, then writes)."""


class AnnotationStore:
    """A job's annotations in one SQLite file. Use :meth:`create` or :meth:`open`.

    Thread-safe (one connection guarded by a lock), so widget callbacks arriving on another thread can
    read and write; several processes may read while one writes.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False, _create: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        if not _create and not self.path.is_file():
            raise StoreError(
                f"annotation store {self.path} does not exist; create it with"
                " AnnotationStore.create(path) or `dl-utils import FILE --out STORE`"
            )
        self.immutable = False
        try:
            if readonly:
                self._conn = self._connect_readonly()
            else:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise self._os_error(e) from None
                self._conn = sqlite3.connect(
                    str(self.path), check_same_thread=False, timeout=30, isolation_level=None
                )
            self._conn.execute("PRAGMA busy_timeout = 30000")
            if not readonly:
                self._conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL in WAL mode: a committed frame survives a killed process (not a power cut)
                self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._setup_schema(_create)
        except sqlite3.DatabaseError as e:
            conn = getattr(self, "_conn", None)
            if conn is not None:
                conn.close()
            raise self._db_error(e, opening=True) from None

    def _connect_readonly(self) -> sqlite3.Connection:
        """A read-only connection that also works where nothing can be written.

        ``mode=ro`` reads a WAL-mode store while a writer writes, but it needs the ``-shm`` file
        (and creates it when missing): on a read-only file system or folder that fails. Then, when
        no ``-wal`` file holds unmerged commits, the file is opened ``immutable=1`` (nothing can
        write to it there either, so SQLite may skip locking).
        """
        resolved = self.path.resolve()
        quoted = urllib.parse.quote(str(resolved))
        conn = None
        try:
            conn = sqlite3.connect(f"file:{quoted}?mode=ro", uri=True, check_same_thread=False, timeout=30)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as e:
            if conn is not None:
                conn.close()
            if not _readonly_failure(e):
                raise
        wal = Path(str(resolved) + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreError(
                f"{self.path} cannot be read where it is: its {wal.name} holds commits not yet merged"
                " and the folder is read-only; copy the store together with its -wal file to a"
                " writable place and open it there"
            )
        self.immutable = True
        return sqlite3.connect(
            f"file:{quoted}?mode=ro&immutable=1", uri=True, check_same_thread=False, timeout=30
        )

    @classmethod
    def _os_error_for(cls, path: Path, e: OSError) -> StoreError:
        tmp = cls.__new__(cls)
        tmp.path = Path(path)
        return tmp._os_error(e)

    @classmethod
    def _db_error_for(cls, path: Path, e: sqlite3.DatabaseError) -> StoreError:
        tmp = cls.__new__(cls)
        tmp.path = Path(path)
        return tmp._db_error(e)

    def _os_error(self, e: OSError) -> StoreError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreError(
                f"cannot write {self.path}: no space left on the device; free space on"
                f" {mount_point(self.path)} and run again (what was committed is kept)"
            )
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StoreError(
                f"{self.path} is read-only ({e.strerror}); copy it to a writable place to change it"
            )
        return StoreError(f"cannot write {self.path}: {e.strerror or e}")

    def _db_error(self, e: sqlite3.DatabaseError, *, opening: bool = False) -> StoreError:
        """One line for an SQLite failure: which file, what happened, what to do."""
        text = str(e)
        low = text.lower()
        if "disk is full" in low or getattr(e, "sqlite_errorcode", None) == 13:  # SQLITE_FULL
            return StoreError(
                f"cannot write {self.path}: no space left on the device ({text}); free space on"
                f" {mount_point(self.path)} and run again (what was committed is kept)"
            )
        if _readonly_failure(e):
            return StoreError(
                f"{self.path} is read-only ({text}); copy it to a writable place to change it, or"
                " open it read-only to read it"
            )
        if "malformed" in low or "not a database" in low or "file is encrypted" in low:
            return StoreError(
                f"{self.path} is damaged ({text}): it is not a readable annotation store; check the"
                " path, or restore it from a backup"
            )
        if "locked" in low or "busy" in low:
            return StoreError(
                f"{self.path} is locked by another process ({text}); wait for it to finish or stop it"
            )
        if opening:
            return StoreError(
                f"{self.path} is not a readable annotation store ({text}); check the path, or"
                " restore it from a backup"
            )
        return StoreError(f"{self.path}: SQLite error ({text})")

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls, path: str | os.PathLike[str], media: MediaInfo | None = None, *, overwrite: bool = False
    ) -> "AnnotationStore":
        """Create a new store file (refuses to clobber an existing one unless ``overwrite``)."""
        p = Path(path)
        if p.exists():
            if not overwrite:
                raise StoreError(
                    f"{p} already exists; open it with AnnotationStore.open() to add to it, or pass"
                    " overwrite=True to start over"
                )
            for suffix in ("", "-wal", "-shm"):
                Path(str(p) + suffix).unlink(missing_ok=True)
        store = cls(p, _create=True)
        if media is not None:
            store.set_media(media)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, readonly: bool = False) -> "AnnotationStore":
        return cls(path, readonly=readonly)

    @classmethod
    def open_or_create(
        cls, path: str | os.PathLike[str], media: MediaInfo | None = None
    ) -> "AnnotationStore":
        """Open ``path`` if it exists (checking its media matches), else create it."""
        p = Path(path)
        if not p.exists():
            return cls.create(p, media)
        store = cls(p)
        if media is not None:
            if store.media is None:
                store.set_media(media)
            else:
                store.check_media(media)
        return store

    @classmethod
    def for_media(cls, store: "AnnotationStore | str | os.PathLike[str]", media: MediaInfo) -> "AnnotationStore":
        """The store an engine session writes into: an open store given its media (or checked against
        it), a path opened or created for it; anything else an :class:`InputError` naming the type."""
        if isinstance(store, AnnotationStore):
            if store.media is None:
                store.set_media(media)
            else:
                store.check_media(media)
            return store
        if isinstance(store, (str, os.PathLike)):
            return cls.open_or_create(store, media)
        raise InputError(f"store must be an AnnotationStore or a path, got {type(store).__name__}")

    def _setup_schema(self, create: bool) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {
            r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{self.path} has schema version {version}, newer than this dl-utils understands"
                f" ({SCHEMA_VERSION}); upgrade dl-utils (pip install -U dl-utils) to open it"
            )
        if version == 0:
            if tables - {"sqlite_sequence"} and "instances" not in tables:
                raise StoreError(
                    f"{self.path} is an SQLite file but not an annotation store; choose another path"
                )
            if self.readonly:
                raise StoreError(f"{self.path} is empty or not initialised; open it writable first")
            with self._write():
                _run_script(self._conn, _SCHEMA)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('created', ?)", (_dumps(time.time()),)
                )
            return
        if version < SCHEMA_VERSION:
            if self.readonly:
                # never refused, never written: rows are converted as they are read
                self._instance_cols = _INSTANCE_COLS_V1
                return
            with self._write():
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    _MIGRATIONS[v](self._conn, self.path)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "AnnotationStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AnnotationStore({str(self.path)!r})"

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: all or nothing, even if the process dies inside it."""
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only; open it without readonly to write")
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as e:
                raise self._db_error(e) from None
            try:
                yield self._conn
            except BaseException as exc:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.DatabaseError:
                    pass  # SQLite already rolled back (e.g. after SQLITE_FULL)
                if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError):
                    raise self._db_error(exc) from None
                raise
            else:
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.DatabaseError as e:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.DatabaseError:
                        pass
                    raise self._db_error(e) from None

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:
                raise self._db_error(e) from None

    # ------------------------------------------------------------------ meta & media
    def set_meta(self, key: str, value: Any) -> None:
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, _dumps(value)))
        if key == "media":
            self._media_loaded = False

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    @property
    def schema_version(self) -> int:
        return int(self._query("PRAGMA user_version")[0][0])

    @property
    def media(self) -> MediaInfo | None:
        d = self.get_meta("media")
        return MediaInfo.from_dict(d) if d else None

    def set_media(self, media: MediaInfo) -> None:
        self.set_meta("media", media.to_dict())

    def check_media(self, media: MediaInfo) -> None:
        """Raise :class:`StoreError` if ``media`` is not what this store was made for."""
        mine = self.media
        if mine is None:
            return
        if (mine.numbering, mine.first_frame) != (media.numbering, media.first_frame):
            # the same pictures under other numbers: every stored frame number would name another picture
            raise StoreError(
                f"{self.path} numbers the frames of {mine.name!r} with {mine.numbering_text()} but"
                f" {media.name!r} is opened with {media.numbering_text()}; give the store's numbering"
                " again, or write to a new --out store"
            )
        problems = []
        if (mine.width, mine.height) != (media.width, media.height):
            problems.append(
                f"size {mine.width}x{mine.height} vs {media.width}x{media.height}"
            )
        elif list(mine.frames) == list(media.frames) and mine.sizes() != media.sizes():
            diff = next(f for f, a, b in zip(mine.frames, mine.sizes(), media.sizes()) if a != b)
            a, b = mine.size_of(diff), media.size_of(diff)
            problems.append(f"frame {diff} is {a[0]}x{a[1]} in the store but {b[0]}x{b[1]} now")
        if list(mine.frames) != list(media.frames):
            problems.append(
                f"frames {len(mine.frames)} (start={mine.start}, step={mine.step}) vs"
                f" {len(media.frames)} (start={media.start}, step={media.step})"
            )
        if problems:
            raise StoreError(
                f"{self.path} was made for {mine.name!r} and does not match {media.name!r}: "
                + "; ".join(problems)
                + "; use another --out store or the same frame range"
            )

    # ------------------------------------------------------------------ labels
    def set_labels(self, labels: Iterable[Label]) -> None:
        """Replace the label list (the class table the job uses)."""
        labels = list(labels)
        with self._write() as c:
            c.execute("DELETE FROM labels")
            for pos, lb in enumerate(labels):
                try:
                    c.execute(
                        "INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (pos, lb.name, lb.color, lb.id, lb.superclass, lb.type,
                         _dumps(list(lb.attributes))),
                    )
                except sqlite3.IntegrityError:
                    raise InputError(f"label {lb.name!r} is listed twice; label names must be unique") from None

    def labels(self) -> list[Label]:
        rows = self._query(
            "SELECT name, color, class_id, superclass, type, attributes FROM labels ORDER BY position"
        )
        return [
            Label(name=n, color=col, id=cid, superclass=sup, type=t, attributes=tuple(json.loads(a)))
            for n, col, cid, sup, t, a in rows
        ]

    # ------------------------------------------------------------------ objects
    def add_object(
        self,
        label: str,
        *,
        color: str | None = None,
        attributes: dict[str, Any] | None = None,
        id: int | None = None,
    ) -> ObjectInfo:
        """Add an object; ids are stable and never reused while the store lives."""
        if not label or not str(label).strip():
            raise InputError("an object needs a label; give the class name, e.g. label='car'")
        with self._write() as c:
            if id is None:
                row = c.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM objects").fetchone()
                id = int(row[0])
            obj = ObjectInfo(id=id, label=str(label), color=color, attributes=dict(attributes or {}))
            try:
                c.execute(
                    "INSERT INTO objects VALUES (?, ?, ?, ?, ?)",
                    (obj.id, obj.label, obj.color, _dumps(obj.attributes), time.time()),
                )
            except sqlite3.IntegrityError:
                raise InputError(
                    f"object id {id} already exists in {self.path}; pass another id or none"
                ) from None
        return obj

    def ensure_object(self, obj: ObjectInfo) -> ObjectInfo:
        """Insert ``obj`` with its id, or update the stored one to match it."""
        with self._write() as c:
            c.execute(
                "INSERT INTO objects VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                " label = excluded.label, color = excluded.color, attributes = excluded.attributes",
                (obj.id, obj.label, obj.color, _dumps(obj.attributes), time.time()),
            )
        return obj

    def update_object(self, id: int, **fields: Any) -> ObjectInfo:
        obj = self.get_object(id)
        unknown = set(fields) - {"label", "color", "attributes"}
        if unknown:
            raise InputError(f"cannot update object field(s) {sorted(unknown)}; use label, color, attributes")
        new = ObjectInfo(
            id=obj.id,
            label=fields.get("label", obj.label),
            color=fields.get("color", obj.color),
            attributes=fields.get("attributes", obj.attributes),
        )
        return self.ensure_object(new)

    def delete_object(self, id: int) -> None:
        """Delete an object and all its instances."""
        with self._write() as c:
            c.execute("DELETE FROM instances WHERE object_id = ?", (id,))
            c.execute("DELETE FROM objects WHERE id = ?", (id,))

    def objects(self) -> list[ObjectInfo]:
        rows = self._query("SELECT id, label, color, attributes FROM objects ORDER BY id")
        return [ObjectInfo(id=i, label=lb, color=c, attributes=json.loads(a)) for i, lb, c, a in rows]

    def get_object(self, id: int) -> ObjectInfo:
        rows = self._query("SELECT id, label, color, attributes FROM objects WHERE id = ?", (id,))
        if not rows:
            raise InputError(f"object {id} is not in {self.path}; known ids: {self._object_ids()}")
        i, lb, c, a = rows[0]
        return ObjectInfo(id=i, label=lb, color=c, attributes=json.loads(a))

    def _object_ids(self) -> list[int]:
        return [r[0] for r in self._query("SELECT id FROM objects ORDER BY id")]

    # ------------------------------------------------------------------ instances
    def _encode(self, frame: int, inst: Instance, run_id: int | None, now: float) -> tuple[Any, ...]:
        media = self._media_cache
        mask_h = mask_w = rle = rle_box = None
        area = inst.area if inst.mask is None else 0
        if inst.mask is not None:
            if media is not None:
                w, h = media.size_of(frame) if media.frame_sizes else (media.width, media.height)
                inst.check_size(h, w, frame=frame)
            mask_h, mask_w = inst.mask.shape
            hint = inst.box if getattr(inst, "_box_from_mask", False) else None
            runs, box = encode_cvat_rle_array(inst.mask, box=hint)
            area = int(runs[1::2].sum())
            rle = zlib.compress(runs.astype("<u4", copy=False).tobytes(), 1)
            rle_box = "%d,%d,%d,%d" % box
        x1 = y1 = x2 = y2 = None
        if inst.box is not None:
            x1, y1, x2, y2 = inst.box
        polygon = _dumps(inst.polygon) if inst.polygon is not None else None
        shape = cast(ShapeType, inst.shape)  # Instance.__post_init__ always sets it
        return (
            int(frame), inst.object_id, shape.value, x1, y1, x2, y2, mask_h, mask_w, rle,
            rle_box, polygon, area, inst.score, inst.source.value, _json_or_none(inst.clicks),
            _json_or_none(inst.provenance), inst.label, int(inst.keyframe), run_id, now,
        )

    def write_frame(
        self,
        frame: int,
        instances: Iterable[Instance],
        *,
        replace: bool = False,
        run_id: int | None = None,
    ) -> None:
        """Write one frame's instances atomically (insert or replace per object).

        ``replace=True`` also deletes the frame's instances of objects not given. Write empty
        instances (``mask`` all False) for objects processed but not visible, so resuming knows the
        frame is done for them.
        """
        self.write_frames([(frame, instances)], replace=replace, run_id=run_id)

    def write_frames(
        self,
        frames: Iterable[tuple[int, Iterable[Instance]]],
        *,
        replace: bool = False,
        run_id: int | None = None,
    ) -> None:
        """Write several frames in one transaction (imports use it; engines write per frame)."""
        if not self._media_loaded:
            # parsed once per connection, not per write: the media record holds every frame
            # number, so re-reading it would make each write cost grow with video length
            self._media_cache = self.media
            self._media_loaded = True
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        frames_seen: list[tuple[int, list[int]]] = []
        for frame, insts in frames:
            batch = Instances(insts, frame=int(frame))
            rows.extend(self._encode(int(frame), i, run_id, now) for i in batch)
            frames_seen.append((int(frame), batch.object_ids.tolist()))
        with self._write() as c:
            if replace:
                for frame, ids in frames_seen:
                    marks = ",".join("?" * len(ids))
                    c.execute(
                        f"DELETE FROM instances WHERE frame = ? AND object_id NOT IN ({marks})",
                        (frame, *ids),
                    )
            try:
                c.executemany(
                    f"INSERT OR REPLACE INTO instances ({_INSTANCE_COLS}, run_id, updated)"
                    f" VALUES ({','.join('?' * 21)})",
                    rows,
                )
            except sqlite3.IntegrityError:
                known = set(self._object_ids())
                missing = sorted({r[1] for r in rows} - known)
                raise InputError(
                    f"instances name unknown object id(s) {missing}; add them with add_object() first"
                ) from None

    def _decode_row(self, row: tuple[Any, ...], decode: bool) -> Instance:
        (frame, oid, shape, x1, y1, x2, y2, mh, mw, rle, rle_box, polygon, _area, score, source,
         clicks_text, prov_text, label, keyframe) = row
        mask = None
        if rle is not None and decode:
            try:
                runs = np.frombuffer(zlib.decompress(rle), dtype="<u4")
                box = tuple(int(v) for v in rle_box.split(","))
                mask = decode_cvat_rle_array(runs, box, mh, mw)  # type: ignore[arg-type]
            except (MaskError, zlib.error, ValueError, TypeError, AttributeError) as e:
                raise StoreError(
                    f"{self.path}: frame {frame}, object {oid}: stored mask is damaged ({e})"
                ) from None
        try:
            if self._instance_cols is _INSTANCE_COLS_V1:  # a schema-1 store read in place: prompts
                old = json.loads(clicks_text) if clicks_text else None
                label, clicks, prov = split_legacy_prompts(old if isinstance(old, dict) else None)
            else:
                clicks = Clicks.from_json(json.loads(clicks_text)) if clicks_text else None
                prov = Provenance.from_json(json.loads(prov_text)) if prov_text else None
        except (ValueError, TypeError, KeyError, InputError) as e:
            raise StoreError(
                f"{self.path}: frame {frame}, object {oid}: the stored clicks or provenance cannot be"
                f" read ({e}); the store was edited by another program; restore it from a backup"
            ) from None
        return Instance(
            object_id=oid,
            mask=mask,
            box=None if x1 is None else (x1, y1, x2, y2),
            score=score,
            source=Source(source),
            polygon=json.loads(polygon) if polygon else None,
            shape=ShapeType(shape),
            keyframe=bool(keyframe),
            clicks=clicks,
            provenance=prov,
            label=label,
        )

    def read_frame(self, frame: int, *, decode: bool = True) -> Instances:
        """All instances of a frame (empty ``Instances`` if none). ``decode=False`` skips masks."""
        rows = self._query(
            f"SELECT {self._instance_cols} FROM instances WHERE frame = ? ORDER BY object_id", (frame,)
        )
        return Instances([self._decode_row(r, decode) for r in rows], frame=frame)

    def read_object(self, object_id: int, *, decode: bool = True) -> dict[int, Instance]:
        rows = self._query(
            f"SELECT {self._instance_cols} FROM instances WHERE object_id = ? ORDER BY frame", (object_id,)
        )
        return {r[0]: self._decode_row(r, decode) for r in rows}

    def iter_frames(
        self,
        *,
        start: int | None = None,
        stop: int | None = None,
        objects: Iterable[int] | None = None,
        decode: bool = True,
    ) -> Iterator[tuple[int, Instances]]:
        """Frames with instances in ascending order (``stop`` inclusive), one frame in memory at a time."""
        lo = -(2**62) if start is None else int(start)
        hi = 2**62 if stop is None else int(stop)
        wanted = None if objects is None else {int(o) for o in objects}
        for frame in self.frames(start=lo, stop=hi):
            insts = self.read_frame(frame, decode=decode)
            if wanted is not None:
                insts = Instances([i for i in insts if i.object_id in wanted], frame=frame)
            yield frame, insts

    def frames(self, *, start: int | None = None, stop: int | None = None) -> list[int]:
        """Frames holding any instance (empty ones included), ascending; ``stop`` inclusive."""
        lo = -(2**62) if start is None else int(start)
        hi = 2**62 if stop is None else int(stop)
        rows = self._query(
            "SELECT DISTINCT frame FROM instances WHERE frame BETWEEN ? AND ? ORDER BY frame", (lo, hi)
        )
        return [r[0] for r in rows]

    def frames_done(self, object_id: int) -> list[int]:
        """Frames already processed for an object (visible or not): what a resumed run can skip."""
        rows = self._query(
            "SELECT frame FROM instances WHERE object_id = ? ORDER BY frame", (object_id,)
        )
        return [r[0] for r in rows]

    def progress(self) -> dict[int, dict[str, Any]]:
        """Per object: frames processed, frames visible, first and last processed frame."""
        rows = self._query(
            "SELECT o.id, COUNT(i.frame), SUM(CASE WHEN i.area > 0 OR (i.rle IS NULL AND i.x1 IS NOT NULL)"
            " THEN 1 ELSE 0 END), MIN(i.frame), MAX(i.frame) FROM objects o LEFT JOIN instances i"
            " ON i.object_id = o.id GROUP BY o.id ORDER BY o.id"
        )
        return {
            oid: {"frames_done": n, "frames_visible": int(v or 0), "first": lo, "last": hi}
            for oid, n, v, lo, hi in rows
        }

    def delete_instances(
        self,
        *,
        object_id: int | None = None,
        frames: Iterable[int] | None = None,
        start: int | None = None,
        stop: int | None = None,
    ) -> int:
        """Delete instances matching all given filters (``stop`` inclusive); returns how many."""
        where, args = [], []
        if object_id is not None:
            where.append("object_id = ?")
            args.append(int(object_id))
        if start is not None:
            where.append("frame >= ?")
            args.append(int(start))
        if stop is not None:
            where.append("frame <= ?")
            args.append(int(stop))
        with self._write() as c:
            if frames is not None:
                n = 0
                for f in frames:
                    cur = c.execute(
                        "DELETE FROM instances WHERE " + " AND ".join(where + ["frame = ?"]),
                        (*args, int(f)),
                    )
                    n += cur.rowcount
                return n
            sql = "DELETE FROM instances" + (" WHERE " + " AND ".join(where) if where else "")
            return c.execute(sql, args).rowcount

    def count_instances(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM instances")[0][0])

    # ------------------------------------------------------------------ runs
    def begin_run(self, kind: str, params: dict[str, Any] | None = None) -> int:
        """Record the start of a long job (propagation, import); its id tags what it writes.

        The writing process (pid, host, its start time and the machine's boot id) is kept with the
        run, so :meth:`runs` can tell a run that is still going from one whose process was killed.
        """
        stored = dict(params or {})
        stored[_WRITER_KEY] = _this_writer()
        with self._write() as c:
            cur = c.execute(
                "INSERT INTO runs (kind, params, status, started) VALUES (?, ?, 'running', ?)",
                (kind, _dumps(stored), time.time()),
            )
            return int(cur.lastrowid)  # type: ignore[arg-type]

    def finish_run(self, run_id: int, status: str = "done") -> None:
        if status not in {"done", "cancelled", "failed"}:
            raise InputError(f"run status {status!r}: use 'done', 'cancelled' or 'failed'")
        with self._write() as c:
            c.execute("UPDATE runs SET status = ?, finished = ? WHERE id = ?", (status, time.time(), run_id))

    def runs(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """Runs, oldest first, as ``{id, kind, params, status, started, finished, writer}``.

        A run still marked ``running`` whose process is gone (killed, crashed, the machine
        rebooted) is reported as ``interrupted``: the work to resume. This is judged on the host
        that wrote it; elsewhere such a run stays ``running``. The stored status is not changed.
        ``status="running"`` / ``"interrupted"`` select by that reported status.
        """
        sql = "SELECT id, kind, params, status, started, finished FROM runs"
        args: tuple[Any, ...] = ()
        if status is not None:
            sql += " WHERE status = ?"
            args = ("running" if status == "interrupted" else status,)
        rows = self._query(sql + " ORDER BY id", args)
        out = []
        for i, k, p, s, st, fi in rows:
            params = json.loads(p)
            writer = params.pop(_WRITER_KEY, None) if isinstance(params, dict) else None
            if s == "running" and writer is not None and _writer_gone(writer):
                s = "interrupted"
            if status is not None and s != status:
                continue
            out.append({"id": i, "kind": k, "params": params, "status": s, "started": st,
                        "finished": fi, "writer": writer})
        return out

    # ------------------------------------------------------------------ maintenance
    def check(self) -> None:
        """Run SQLite's integrity check; raise :class:`StoreError` if the file is damaged."""
        res = self._query("PRAGMA integrity_check")
        if res != [("ok",)]:
            raise StoreError(f"{self.path} failed its integrity check: {res[:3]}; restore a backup")

    def summary(self) -> dict[str, Any]:
        """Counts for ``dl-utils`` and notebooks: objects, frames, instances, runs."""
        media = self.media
        return {
            "path": str(self.path),
            "schema_version": self.schema_version,
            "media": media.name if media else None,
            "size": _size_text(media),
            "objects": len(self._object_ids()),
            "frames": len(self.frames()),
            "instances": self.count_instances(),
            "labels": [lb.name for lb in self.labels()],
            "runs": len(self.runs()),
        }

    _media_cache: MediaInfo | None = None
    _media_loaded: bool = False
    #: columns instances are read with: the schema-1 set for an old store opened read-only
    _instance_cols: str = _INSTANCE_COLS


_WRITER_KEY = "_writer"


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _proc_start(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks since boot, state letter) of a process, from /proc (Linux)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3
    try:
        return int(fields[19]), fields[0]
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> int | None:
    """Inode of this process's pid namespace: containers sharing a host name may not share pids."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _this_writer() -> dict[str, Any]:
    pid = os.getpid()
    ps = _proc_start(pid)
    return {"pid": pid, "host": socket.gethostname(), "proc_start": ps[0] if ps else None,
            "boot_id": _boot_id(), "pid_ns": _pid_namespace()}


def _writer_gone(w: dict[str, Any]) -> bool:
    """True when the process that began a run certainly no longer runs (on this host)."""
    if not isinstance(w, dict) or w.get("host") != socket.gethostname():
        return False  # another machine's run: cannot tell from here
    pid = w.get("pid")
    if not isinstance(pid, int):
        return False
    boot = _boot_id()
    if w.get("boot_id") and boot and w["boot_id"] != boot:
        return True  # the machine rebooted since
    ns = _pid_namespace()
    if w.get("pid_ns") and ns and w["pid_ns"] != ns:
        return False  # another container's pids: cannot tell from here
    if not _pid_alive(pid):
        return True
    ps = _proc_start(pid)
    if ps is None:
        return False  # no /proc: the pid is alive, assume it is the writer
    start, state = ps
    if state in ("Z", "X"):
        return True  # killed, not yet reaped by its parent
    return w.get("proc_start") is not None and start != w["proc_start"]  # pid reused


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _unlink_store_files(path: str | os.PathLike[str]) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def settle_store(path: str | os.PathLike[str]) -> None:
    """Merge ``path``'s WAL into the file and leave it in rollback mode: one self-contained file
    (what may be renamed or copied elsewhere), no ``-wal`` that could be replayed onto another
    database. Imports use it before their rename, batch workers before publishing a store."""
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")
    finally:
        conn.close()


_STAGE_RE = re.compile(r"^\.(?P<name>.+)\.import-(?P<pid>\d+)-\w+\.sqlite(?:-wal|-shm|-journal)?$")


@contextmanager
def staged_store(
    path: str | os.PathLike[str], *, keep_existing: bool = False, media: MediaInfo | None = None
) -> Iterator[AnnotationStore]:
    """A store built in a temporary file beside ``path`` and renamed over it only when complete.

    ``keep_existing=True`` starts from a copy of the existing store (``--append``), else from an
    empty one (a new store, or ``--overwrite``). When the ``with`` block raises (a malformed file,
    a full disk, Ctrl-C), the temporary file is removed and ``path`` is untouched: an import never
    damages or deletes the store it was asked to replace. On success the old store's ``-wal`` is
    merged before the rename and its ``-wal``/``-shm`` are removed after it, so no side file of
    the old store can be applied to the new one. Temporary files of a killed import
    (``.NAME.import-PID-*.sqlite``) are removed by the next one.
    """
    target = Path(path)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    if target.is_dir():
        raise StoreError(f"{path} is a folder; give a file path for the store (e.g. {Path(path) / 'job.sqlite'})")
    if keep_existing and not target.is_file():
        raise StoreError(f"annotation store {path} does not exist; leave out --append to create it")
    tmp = _stage_file(target)
    store: AnnotationStore | None = None
    try:
        store = _open_staged(tmp, target, keep_existing=keep_existing, media=media)
        yield store
        store.close()
        _replace_with_staged(tmp, target)
    except BaseException:
        if store is not None:
            try:
                store.close()
            except sqlite3.Error:
                pass
        _unlink_store_files(tmp)
        raise


def _stage_file(target: Path) -> Path:
    """An empty temporary file beside ``target`` (same file system: the rename is atomic), after
    removing what killed imports of the same store left there."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for e in parent.iterdir():
            m = _STAGE_RE.match(e.name)
            if m and m.group("name") == target.name and not _pid_alive(int(m.group("pid"))):
                e.unlink(missing_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.import-{os.getpid()}-", suffix=".sqlite", dir=parent
        )
        os.close(fd)
    except OSError as e:
        raise AnnotationStore._os_error_for(target, e) from None
    return Path(tmp_name)


def _open_staged(tmp: Path, target: Path, *, keep_existing: bool, media: MediaInfo | None) -> AnnotationStore:
    """The store to build in ``tmp``: a consistent copy of ``target`` (``-wal`` content included)
    or a new one; its messages name ``target``, the store the user gave."""
    if keep_existing:
        src_store = AnnotationStore(target, readonly=True)  # checks it is a store
        try:
            dst = sqlite3.connect(str(tmp))
            try:
                src_store._conn.backup(dst)
            finally:
                dst.close()
        except sqlite3.DatabaseError as e:
            raise AnnotationStore._db_error_for(tmp, e) from None
        finally:
            src_store.close()
        store = AnnotationStore(tmp)
        if media is not None:
            store.check_media(media)
    else:
        store = AnnotationStore(tmp, _create=True)
        if media is not None:
            store.set_media(media)
    store.path = target
    return store


def _replace_with_staged(tmp: Path, target: Path) -> None:
    """Flush ``tmp`` to disk and rename it over ``target``; the old store's side files go so none
    can be applied to the new one."""
    try:
        settle_store(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if target.exists() and Path(str(target) + "-wal").exists():
            try:
                settle_store(target)  # the old store's commits go into its file, not a stray -wal
            except sqlite3.DatabaseError:
                pass  # not a store, or damaged: its side files mean nothing for the new one
            for suffix in ("-wal", "-shm"):
                Path(str(target) + suffix).unlink(missing_ok=True)
        os.replace(tmp, target)
        for suffix in ("-wal", "-shm", "-journal"):
            Path(str(target) + suffix).unlink(missing_ok=True)
    except OSError as e:
        raise AnnotationStore._os_error_for(target, e) from None
    except sqlite3.DatabaseError as e:
        raise AnnotationStore._db_error_for(target, e) from None


__all__ = ["AnnotationStore", "SCHEMA_VERSION", "SYNC_RECORD_PREFIX", "SYNC_RECORD_VERSION", "settle_store", "staged_store",
           "upgrade_sync_record", "upgrade_sync_unit"]
