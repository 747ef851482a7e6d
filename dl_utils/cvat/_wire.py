"""CVAT's annotation wire format: building shape/track payloads, content hashes, reading answers.

A *unit* is one thing this toolkit owns on the server: a shape (one mask, one polygon ring or one
box on one frame) or a track (one polygon ring or box of one object through one job). Its content
hash covers exactly the fields the server stores and returns unchanged (type, frame, label, group,
source, flags, attributes, points rounded to 1e-3), so the hash of what we send equals the hash of
what a later GET returns, and a difference means someone edited the shape. ``score`` is left out:
servers differ in whether they keep it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

#: CVAT shape type per store geometry.
CVAT_TYPE = {"mask": "mask", "polygon": "polygon", "box": "rectangle"}


def _points_bytes(points: Iterable[float]) -> bytes:
    arr = np.asarray(list(points) if not isinstance(points, (list, np.ndarray)) else points,
                     dtype=np.float64)
    # rounded so 12 and 12.0000001 (a float32 round trip on the server) hash the same
    return np.round(arr, 3).tobytes()


def _attrs(attrs: Any) -> list:
    out = []
    for a in attrs or []:
        out.append([int(a.get("spec_id", 0)), str(a.get("value", ""))])
    return sorted(out)


def _shape_head(s: dict[str, Any]) -> list:
    return [
        str(s.get("type")), int(s.get("frame", 0)), bool(s.get("outside", False)),
        bool(s.get("occluded", False)), int(s.get("z_order", 0) or 0),
        round(float(s.get("rotation", 0.0) or 0.0), 3), _attrs(s.get("attributes")),
    ]


def shape_hash(s: dict[str, Any]) -> str:
    """Content hash of a (labeled) shape as sent or as returned by the server."""
    h = hashlib.blake2b(digest_size=10)
    head = ["S", int(s.get("label_id", 0)), int(s.get("group") or 0), str(s.get("source") or "manual"),
            *_shape_head(s)]
    h.update(json.dumps(head, separators=(",", ":")).encode())
    h.update(_points_bytes(s.get("points") or []))
    return h.hexdigest()


def track_hash(t: dict[str, Any]) -> str:
    """Content hash of a track (its shapes in frame order)."""
    h = hashlib.blake2b(digest_size=10)
    head = ["T", int(t.get("label_id", 0)), int(t.get("group") or 0), str(t.get("source") or "manual"),
            int(t.get("frame", 0)), _attrs(t.get("attributes"))]
    h.update(json.dumps(head, separators=(",", ":")).encode())
    for s in sorted(t.get("shapes") or [], key=lambda x: int(x.get("frame", 0))):
        h.update(json.dumps(_shape_head(s), separators=(",", ":")).encode())
        h.update(_points_bytes(s.get("points") or []))
    return h.hexdigest()


def item_hash(kind: str, item: dict[str, Any]) -> str:
    return shape_hash(item) if kind == "s" else track_hash(item)


def shape_payload(
    cvat_type: str, frame: int, label_id: int, group: int, source: str, points: list,
    score: float | None = None,
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": cvat_type, "frame": int(frame), "label_id": int(label_id), "group": int(group),
        "source": source, "occluded": False, "outside": False, "z_order": 0, "rotation": 0.0,
        "points": points, "attributes": [],
    }
    if score is not None:
        d["score"] = min(1.0, max(0.0, round(float(score), 6)))  # CVAT accepts 0..1
    return d


def track_shape(cvat_type: str, frame: int, points: list, outside: bool = False) -> dict[str, Any]:
    return {"type": cvat_type, "frame": int(frame), "points": points, "outside": bool(outside),
            "occluded": False, "z_order": 0, "rotation": 0.0, "attributes": []}


def track_payload(frame: int, label_id: int, group: int, source: str,
                  shapes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"frame": int(frame), "label_id": int(label_id), "group": int(group), "source": source,
            "attributes": [], "shapes": shapes}


@dataclass
class Unit:
    """One shape or track we mean to have on the server. ``body`` is its JSON without an id."""

    key: str
    kind: str  # "s" shape, "t" track
    job: int
    body: str
    hash: str
    frames: tuple[int, int] = (0, 0)  # task frame range it covers (for messages)

    def with_id(self, server_id: int) -> str:
        return '{"id":%d,%s' % (int(server_id), self.body[1:])


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def body_of(shapes: list[str], tracks: list[str]) -> bytes:
    """A LabeledData request body from already serialised shapes and tracks."""
    return ('{"version":0,"tags":[],"shapes":[' + ",".join(shapes) + '],"tracks":['
            + ",".join(tracks) + "]}").encode()


BODY_OVERHEAD = len(body_of([], []))


__all__ = ["CVAT_TYPE", "Unit", "body_of", "dumps", "item_hash", "shape_hash", "shape_payload",
           "track_hash", "track_payload", "track_shape"]
