"""The sync record: what a store remembers of the shapes and tracks it put into a CVAT task.

One record per server and task, in the store's meta under ``cvat.push:<host>:task:<id>``
(:func:`state_key`), as versioned JSON (:data:`RECORD_VERSION`)::

    {"version": 2, "host": "https://cvat.example.com", "task": 42, "dirty": false,
     "units": {"m:3:1": {"kind": "s", "job": 7, "server_id": 1201, "sent_hash": "15e1...",
                         "server_hash": null, "held": false}, ...}}

Each unit (one mask, polygon ring or box on one frame, or one track of one job) is named by a
:class:`UnitKey` (written as a string, the JSON key) and described by a :class:`UnitRecord`.
Push writes it, pull reads it (to tell our shapes from people's) and hands units over to people.

Versions: 1 (dl-utils before the records were dataclasses) kept each unit as a list
``[kind, job, server id, sent hash, server hash, held]``. The record version belongs to the store's
schema: opening a schema-1 store writable rewrites its records as version 2 in the same migration
(:func:`dl_utils.store.upgrade_sync_record`, the one conversion, kept in the store because the store
may not import this sink). :meth:`SyncState.from_json` still reads version 1 with that function (a
record set by hand, or one of an old store opened read-only), so an old store is never refused. A
version newer than this dl-utils knows is refused with a :class:`~dl_utils.errors.CvatError` that
says to upgrade: guessing at fields an unknown writer added could re-send or delete shapes on the
server.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..store import SYNC_RECORD_VERSION, upgrade_sync_unit
from .connection import cvat_error

if TYPE_CHECKING:
    from ..store import AnnotationStore

#: Version of the JSON written by :meth:`SyncState.to_json`; 1 was the list format.
RECORD_VERSION = SYNC_RECORD_VERSION
#: One-letter code of each store geometry in a unit key.
_CODE = {"mask": "m", "polygon": "p", "box": "b"}
_SHAPE = {v: k for k, v in _CODE.items()}


def state_key(host: str, task_id: int) -> str:
    """The store meta key of the sync record of ``task_id`` on ``host``."""
    return f"cvat.push:{host}:task:{int(task_id)}"


@dataclass(frozen=True)
class UnitKey:
    """The name of one unit, stable across pushes (it is how a re-push finds what it sent before).

    Shapes (``track=False``): ``m:<frame>:<object>`` (mask), ``p:<frame>:<object>:<ring>`` (one
    polygon ring), ``b:<frame>:<object>`` (box); ``frame`` is the store's (source) frame number. A
    frame in the overlap of several jobs has one unit per job: the first job's copy has no suffix
    (as keys were written before overlaps were supported), the others end in ``:j<job id>``
    (``job``). Tracks (``track=True``): ``t<p|b>:<object>:<ring>:<job id>``, one per job.
    """

    shape: str  # "mask" | "polygon" | "box"
    object_id: int
    frame: int | None = None  # shapes: source frame number; tracks: None
    ring: int = 0  # polygon ring (0 for masks and boxes)
    job: int | None = None  # tracks: their job; shapes: the job of an overlap copy, None for the first
    track: bool = False

    @classmethod
    def shape_unit(cls, shape: str, frame: int, object_id: int, ring: int = 0) -> "UnitKey":
        return cls(shape, int(object_id), int(frame), int(ring))

    @classmethod
    def track_unit(cls, shape: str, object_id: int, ring: int, job: int) -> "UnitKey":
        return cls(shape, int(object_id), None, int(ring), int(job), track=True)

    def copy_in(self, job: int) -> "UnitKey":
        """The key of this shape's copy in another job holding its frame (an overlap)."""
        return replace(self, job=int(job))

    @property
    def base(self) -> "UnitKey":
        """Without the job of an overlap copy (tracks: without their job): one key per object's
        shape, whichever job holds it."""
        return replace(self, job=None)

    def __str__(self) -> str:
        c = _CODE[self.shape]
        if self.track:
            return f"t{c}:{self.object_id}:{self.ring}" + ("" if self.job is None else f":{self.job}")
        s = f"{c}:{self.frame}:{self.object_id}" + (f":{self.ring}" if self.shape == "polygon" else "")
        return s if self.job is None else f"{s}:j{self.job}"

    @classmethod
    def parse(cls, text: str) -> "UnitKey":
        """The key written as ``text`` (a JSON key of the record); ``str(UnitKey.parse(s)) == s``."""
        parts = text.split(":")
        try:
            if parts[0] in ("tp", "tb", "tm"):
                job = int(parts[3]) if len(parts) > 3 else None
                return cls(_SHAPE[parts[0][1]], int(parts[1]), None, int(parts[2]), job, track=True)
            shape = _SHAPE[parts[0]]
            rest = parts[3:]
            ring = int(rest.pop(0)) if shape == "polygon" else 0
            job = int(rest.pop(0)[1:]) if rest and rest[0].startswith("j") else None
            if rest:
                raise ValueError(text)
            return cls(shape, int(parts[2]), int(parts[1]), ring, job)
        except (KeyError, IndexError, ValueError):
            raise cvat_error(f"unit key {text!r} of a CVAT sync record is not one dl-utils writes;"
                             " the record was edited by hand or written by another program") from None


@dataclass
class UnitRecord:
    """What the store knows of one unit on the server.

    ``kind``: ``"s"`` shape or ``"t"`` track; ``job``: the job holding it; ``server_id``: its id on
    the server (None once a person deleted it); ``sent_hash``: content hash of what we sent;
    ``server_hash``: the hash of the server's copy when the server normalised what we sent (None:
    equal to ``sent_hash``); ``held``: a person edited or deleted it in CVAT, so push leaves it
    alone until a pull hands it over.
    """

    kind: str
    job: int
    server_id: int | None
    sent_hash: str
    server_hash: str | None = None
    held: bool = False

    @property
    def current_hash(self) -> str:
        """The hash the server's copy has while nobody edits it."""
        return self.server_hash or self.sent_hash

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "job": self.job, "server_id": self.server_id,
                "sent_hash": self.sent_hash, "server_hash": self.server_hash, "held": self.held}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "UnitRecord":
        sid = d.get("server_id")
        return cls(str(d["kind"]), int(d["job"]), None if sid is None else int(sid), str(d["sent_hash"]),
                   d.get("server_hash"), bool(d.get("held", False)))

    @classmethod
    def from_v1(cls, r: list) -> "UnitRecord":
        """A version-1 record: ``[kind, job, server id, sent hash, server hash, held]``."""
        return cls.from_json(upgrade_sync_unit(r))


@dataclass
class SyncState:
    """The whole record of one task: ``units`` by key string, and ``dirty`` while a push may have
    left requests with unknown outcomes (the next push reads the task and adopts what they made)."""

    host: str
    task: int
    dirty: bool = False
    units: dict[str, UnitRecord] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Any, host: str, task_id: int, where: str = "") -> "SyncState":
        """Read any version this dl-utils knows (older ones migrated); refuse newer ones."""
        if not isinstance(d, dict) or not isinstance(d.get("units", {}), dict):
            raise cvat_error(f"{where}: the CVAT sync record of task {task_id} is not a JSON object with"
                             " 'units'; it was edited by hand or written by another program")
        version = d.get("version", 1)
        if not isinstance(version, int) or version > RECORD_VERSION:
            raise cvat_error(
                f"{where}: the CVAT sync record of task {task_id} on {host} has version {version!r},"
                f" newer than this dl-utils reads ({RECORD_VERSION}); upgrade dl-utils"
                " (pip install -U dl-utils) to push or pull this task with this store"
            )
        raw = d.get("units") or {}
        try:
            units = ({k: UnitRecord.from_v1(r) for k, r in raw.items()} if version < 2
                     else {k: UnitRecord.from_json(r) for k, r in raw.items()})
        except (ValueError, TypeError, KeyError) as e:
            raise cvat_error(f"{where}: the CVAT sync record of task {task_id} on {host} has a unit dl-utils"
                             f" cannot read ({e}); it was edited by hand or written by another"
                             " program") from None
        return cls(host, int(task_id), bool(d.get("dirty", False)), units)

    def to_json(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "host": self.host, "task": self.task, "dirty": self.dirty,
                "units": {k: r.to_json() for k, r in self.units.items()}}

    @classmethod
    def load(cls, store: "AnnotationStore", host: str, task_id: int) -> "SyncState | None":
        """The record of ``task_id`` in ``store`` (migrated to this version), None before the first push."""
        d = store.get_meta(state_key(host, task_id))
        if d is None:
            return None
        return cls.from_json(d, host, task_id, str(getattr(store, "path", "store")))

    def save(self, store: "AnnotationStore") -> None:
        store.set_meta(state_key(self.host, self.task), self.to_json())


__all__ = ["RECORD_VERSION", "SyncState", "UnitKey", "UnitRecord", "state_key"]
