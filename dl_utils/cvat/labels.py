"""Label sync: the job's class table → a CVAT project or task, matched by name.

Labels of a task that belongs to a project live in the project (CVAT refuses task labels there), so
a sync aimed at such a task goes to its project. Missing labels are created with their colour and
type; a label that exists with another, incompatible type is reported as a conflict and left alone:
changing a label's type on a server can invalidate shapes people already drew.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..annotations import Label
from ..cv_utils.colors import color_for_index
from ..errors import InputError
from .connection import CvatConnection, cvat_error

#: Label types a shape kind may be pushed to ("any" accepts every shape).
SHAPE_LABEL_TYPES = {"mask": ("any", "mask"), "polygon": ("any", "polygon"),
                     "rectangle": ("any", "rectangle")}
CREATABLE_TYPES = ("any", "mask", "polygon", "rectangle", "polyline", "points", "ellipse", "cuboid",
                   "tag")


@dataclass
class ServerLabel:
    id: int
    name: str
    color: str | None
    type: str


@dataclass
class LabelSync:
    """What a sync found and did. ``mapping`` is label name → server label id."""

    target: str
    mapping: dict[str, int] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    color_differs: list[str] = field(default_factory=list)
    dry_run: bool = False

    def check(self) -> "LabelSync":
        """Raise :class:`CvatError` listing the conflicts, if any."""
        if self.conflicts:
            raise cvat_error(
                f"label conflicts with {self.target}: " + "; ".join(self.conflicts)
                + ". Rename the class in the class table, or change the label's type in CVAT"
                " (Actions > Edit labels) to 'any' or the type given"
            )
        return self

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "created": self.created, "existing": self.existing,
                "conflicts": self.conflicts, "color_differs": self.color_differs,
                "dry_run": self.dry_run}


def labels_of(source: Any) -> list[Label]:
    """Labels from a list of :class:`Label`, a ClassTable, or a store (its labels + object labels)."""
    if hasattr(source, "objects") and hasattr(source, "labels") and hasattr(source, "media"):
        from ..formats import export_labels

        return export_labels(source, source.objects())
    if hasattr(source, "labels") and callable(source.labels):  # ClassTable
        return list(source.labels())
    labels = []
    for lb in source:
        labels.append(lb if isinstance(lb, Label) else Label(str(lb)))
    return labels


def _target(conn: CvatConnection, task_id: int | None, project_id: int | None) -> tuple[str, int, str]:
    """(kind, id, description): a task in a project is redirected to its project."""
    if (task_id is None) == (project_id is None):
        raise InputError("give exactly one of task_id (--task) or project_id (--project)")
    if project_id is not None:
        return "project", int(project_id), f"project {project_id}"
    assert task_id is not None  # exactly one of them is given (checked above)
    task = conn.request("GET", f"/api/tasks/{int(task_id)}", what=f"reading task {task_id}") or {}
    pid = task.get("project_id")
    if pid:
        return "project", int(pid), f"project {pid} (task {task_id} belongs to it)"
    return "task", int(task_id), f"task {task_id}"


def server_labels(conn: CvatConnection, kind: str, oid: int) -> list[ServerLabel]:
    """Top-level labels of a task or project (sublabels of skeletons skipped)."""
    rows = conn.get_paginated("/api/labels", {f"{kind}_id": oid}, what=f"reading the labels of {kind} {oid}")
    out = []
    for r in rows:
        if r.get("parent_id") is not None:
            continue
        out.append(ServerLabel(int(r["id"]), str(r["name"]), r.get("color"), str(r.get("type") or "any")))
    return out


def task_labels(conn: CvatConnection, task_id: int) -> list[ServerLabel]:
    """The labels a task's shapes may use (its project's when it has one)."""
    kind, oid, _ = _target(conn, task_id, None)
    return server_labels(conn, kind, oid)


def compatible(label_type: str, shape_type: str) -> bool:
    """Whether a CVAT label of ``label_type`` accepts shapes of ``shape_type``."""
    return label_type in SHAPE_LABEL_TYPES.get(shape_type, ("any", shape_type))


#: CVAT's Label.name is a 64-character field (cvat/apps/engine/models.py).
MAX_LABEL_NAME = 64


def check_label_names(names: Any, where: str) -> None:
    """Refuse, before any request, a label name CVAT cannot store (empty, or over 64 characters)."""
    for n in names:
        if not str(n).strip():
            raise InputError(f"{where}: a label name is empty; give every class a name")
        if len(str(n)) > MAX_LABEL_NAME:
            raise InputError(f"{where}: label name {str(n)[:40]!r}... has {len(str(n))} characters; CVAT"
                             f" keeps at most {MAX_LABEL_NAME}: shorten it in the class table or store")


def sync_labels(
    conn: CvatConnection,
    labels: Any,
    *,
    task_id: int | None = None,
    project_id: int | None = None,
    label_type: str | None = None,
    dry_run: bool = False,
) -> LabelSync:
    """Create the labels the server lacks, map all by name, and report type conflicts.

    ``labels``: Labels, a ClassTable or a store. ``label_type`` overrides each label's own type for
    the labels created (e.g. ``"mask"``). Conflicting labels are neither changed nor created; call
    :meth:`LabelSync.check` to turn them into an error.
    """
    wanted = labels_of(labels)
    check_label_names([lb.name for lb in wanted], "labels")
    if label_type is not None and label_type not in CREATABLE_TYPES:
        raise InputError(f"label type {label_type!r}: use one of {', '.join(CREATABLE_TYPES)}")
    kind, oid, desc = _target(conn, task_id, project_id)
    have = {lb.name: lb for lb in server_labels(conn, kind, oid)}
    res = LabelSync(target=desc, dry_run=dry_run)
    to_create: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, lb in enumerate(wanted):
        if lb.name in seen:
            continue
        seen.add(lb.name)
        ours = label_type or lb.type or "any"
        srv = have.get(lb.name)
        if srv is None:
            color = lb.color or color_for_index(i)
            to_create.append({"name": lb.name, "color": color, "type": ours, "attributes": []})
            res.created.append(lb.name)
            continue
        res.existing.append(lb.name)
        res.mapping[lb.name] = srv.id
        res.types[lb.name] = srv.type
        if ours != "any" and srv.type != "any" and ours != srv.type:
            res.conflicts.append(
                f"label {lb.name!r} is of type {srv.type!r} in CVAT but {ours!r} here"
            )
        if lb.color and srv.color and lb.color.lower() != str(srv.color).lower():
            res.color_differs.append(f"{lb.name}: {lb.color} here, {srv.color} in CVAT (kept)")
    if to_create and not dry_run:
        conn.request("PATCH", f"/api/{kind}s/{oid}", body={"labels": to_create},
                     what=f"adding labels {[c['name'] for c in to_create]} to {desc}")
        after = {lb.name: lb for lb in server_labels(conn, kind, oid)}
        for c in to_create:
            srv = after.get(c["name"])
            if srv is None:
                raise cvat_error(f"{desc}: label {c['name']!r} was sent but the server does not list"
                                 " it; check the labels in CVAT and run again")
            res.mapping[c["name"]] = srv.id
            res.types[c["name"]] = srv.type
    elif dry_run:
        for c in to_create:
            res.types[c["name"]] = c["type"]
    return res


__all__ = ["LabelSync", "ServerLabel", "check_label_names", "compatible", "labels_of", "server_labels", "sync_labels",
           "task_labels"]
