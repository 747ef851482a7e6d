"""Rename a store's labels to a class table's classes, or map them up to their top superclass.

Stores collect labels as people and detectors spelled them ("automobile", "Car", "cars"); a training
set needs one name per class, and sometimes coarser classes than were annotated (train a "vehicle"
detector from car/truck/bus masks). The class table (:mod:`dl_utils.classes`) already holds names,
synonyms and superclasses, so it is the whole rule:

* a label is the class whose name it is (case, ``-``/``_`` and spaces as the table compares them),
  else the class it is a synonym (or English plural) of (:meth:`ClassTable.resolve`);
* ``to="superclass"`` then maps the class to its top ancestor (``car -> vehicle``; a class without
  superclass stays itself);
* a label the table does not know is an error naming every such label, or (``drop_unknown``) its
  objects are deleted with their instances.

Only labels change: the store's label list becomes the table's classes (colour, id, superclass and
type from the table, CVAT attributes kept), objects get their class's name. Media, masks, boxes,
provenance, runs, sync records and meta stay as they were, byte for byte. An instance's own
``label`` (the phrase a detector proposed, kept as provenance) is not rewritten. The remap is
recorded as a run of kind ``"remap"``.

The store is never half-rewritten: the result is built in a copy beside the target and renamed over
it when complete (``store.staged_store``); without ``out`` that target is the store itself.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..annotations import Label
from ..classes import ClassInfo, ClassTable
from ..errors import InputError, OutputError, StoreError
from ..store import AnnotationStore, settle_store, staged_store

TO = ("name", "superclass")


@dataclass(frozen=True)
class RemapOptions:
    """``to``: ``"name"`` (labels become their class) or ``"superclass"`` (their class's top
    ancestor); ``drop_unknown``: delete objects whose label the table lacks instead of refusing."""

    to: str = "name"
    drop_unknown: bool = False

    def __post_init__(self) -> None:
        if self.to not in TO:
            raise InputError(f"--to {self.to!r}: use 'name' (the class itself) or 'superclass' (its top ancestor)")


@dataclass
class RemapPlan:
    """What a remap changes in one store: old label -> new class name for every label it holds."""

    store: str
    table: str
    to: str
    mapping: dict[str, str]  # every known label -> its new name (unchanged ones too)
    unknown: list[str]  # labels the table lacks (their objects are dropped)
    objects: dict[str, int] = field(default_factory=dict)  # label -> objects carrying it
    dropped_objects: list[int] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)  # the store's new label list

    old_labels: list[Label] = field(default_factory=list)

    @property
    def unchanged(self) -> bool:
        """True when applying the plan would change nothing (every label already its class)."""
        return not self.changes and not self.unknown and self.labels == self.old_labels

    @property
    def changes(self) -> dict[str, str]:
        return {a: b for a, b in self.mapping.items() if a != b}

    def to_json(self) -> dict[str, object]:
        return {
            "store": self.store,
            "table": self.table,
            "to": self.to,
            "mapping": dict(self.mapping),
            "changed": dict(self.changes),
            "unknown_dropped": list(self.unknown),
            "objects": dict(self.objects),
            "dropped_objects": list(self.dropped_objects),
            "labels": [lb.name for lb in self.labels],
        }

    def __str__(self) -> str:
        lines = [f"{self.store}: labels -> classes of {self.table} ({self.to})"]
        width = max([len(a) for a in list(self.mapping) + self.unknown] + [5])
        for a, b in sorted(self.mapping.items()):
            n = self.objects.get(a, 0)
            arrow = "->" if a != b else "=="
            lines.append(f"  {a:<{width}} {arrow} {b}  ({n} object{'s' if n != 1 else ''})")
        for a in self.unknown:
            n = self.objects.get(a, 0)
            lines.append(f"  {a:<{width}} xx dropped, not in the table  ({n} object{'s' if n != 1 else ''} deleted)")
        if not self.changes and not self.unknown:
            lines.append("  nothing to change: every label is already its class's name")
        return "\n".join(lines)


def class_of(table: ClassTable, label: str, to: str = "name") -> ClassInfo | None:
    """The class a store label maps to under the rule above, or ``None`` when the table lacks it."""
    c = table.get(label) or table.resolve(label)
    if c is None:
        return None
    if to == "superclass":
        up = table.ancestors(c.name)
        if up:
            c = table[up[-1]]
    return c


def plan_remap(store: AnnotationStore, table: ClassTable, options: RemapOptions = RemapOptions()) -> RemapPlan:
    """The remap of ``store``'s labels (its label list and its objects' labels). Refuses labels the
    table lacks unless ``options.drop_unknown``: one line naming them, the store and the table."""
    old_labels = store.labels()
    objects = store.objects()
    names: list[str] = []
    for name in [lb.name for lb in old_labels] + [o.label for o in objects]:
        if name not in names:
            names.append(name)
    mapping: dict[str, str] = {}
    classes: dict[str, ClassInfo] = {}
    unknown: list[str] = []
    for name in names:
        c = class_of(table, name, options.to)
        if c is None:
            unknown.append(name)
        else:
            mapping[name] = c.name
            classes[name] = c
    if unknown and not options.drop_unknown:
        shown = ", ".join(repr(u) for u in unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise InputError(
            f"{store.path}: label(s) {shown} are not in the class table {table.source}; add each as a"
            " class or a synonym of one, or pass --drop-unknown to delete their objects"
        )
    counts: dict[str, int] = {}
    for o in objects:
        counts[o.label] = counts.get(o.label, 0) + 1
    attrs = {lb.name: lb for lb in old_labels}
    new_labels: dict[str, Label] = {}
    for name in names:
        if name not in classes:
            continue
        c = classes[name]
        base = c.label()
        src = attrs.get(name)
        prev = new_labels.get(c.name)
        merged = tuple(dict.fromkeys((prev.attributes if prev else ()) + (src.attributes if src else ())))
        typ = base.type
        if typ == "any":
            typ = prev.type if prev is not None and prev.type != "any" else (src.type if src else "any")
        new_labels[c.name] = Label(base.name, base.color, base.id, base.superclass, typ, merged)
    dropped = [o.id for o in objects if o.label in unknown]
    return RemapPlan(str(store.path), str(table.source), options.to, mapping, unknown, counts, dropped,
                     list(new_labels.values()), old_labels)


def apply_plan(store: AnnotationStore, plan: RemapPlan) -> None:
    """Write ``plan`` into ``store`` (a staged copy: see :func:`remap_store`), recorded as a run."""
    run = store.begin_run("remap", {"table": plan.table, "to": plan.to, "changed": plan.changes,
                                     "dropped_labels": plan.unknown, "dropped_objects": plan.dropped_objects})
    store.set_labels(plan.labels)
    dropped = set(plan.dropped_objects)
    for o in store.objects():
        if o.id in dropped:
            store.delete_object(o.id)
        elif plan.mapping.get(o.label, o.label) != o.label:
            store.update_object(o.id, label=plan.mapping[o.label])
    store.finish_run(run)


@dataclass(frozen=True)
class RemapResult:
    plan: RemapPlan
    out: Path | None  # the store written (None for a dry run, or in place with nothing to change)


def remap_store(
    path: str | os.PathLike[str],
    table: ClassTable,
    *,
    out: str | os.PathLike[str] | None = None,
    options: RemapOptions = RemapOptions(),
    dry_run: bool = False,
) -> RemapResult:
    """``dl-utils dataset remap``: plan, then (unless ``dry_run``) write the remapped store to
    ``out`` (a new file; refused when it exists) or over ``path`` itself (a symlink is written
    through to its target). Either way the result is built beside its target and renamed over it."""
    src = Path(path)
    if not src.is_file():
        raise InputError(f"annotation store {src} does not exist (or is not a file); check the path")
    with AnnotationStore.open(src, readonly=True) as store:
        plan = plan_remap(store, table, options)
        busy = store.runs(status="running")  # a live process writing: its later writes would be lost
    if busy and not dry_run and (out is None or _same_file(src, Path(out))):
        r = busy[-1]
        raise InputError(
            f"{src}: a {r['kind']} run (id {r['id']}, pid {(r.get('writer') or {}).get('pid', '?')}) is still"
            " writing into it; let it finish or stop it before rewriting the store, or write a new one with --out"
        )
    if dry_run:
        return RemapResult(plan, None)
    if out is None or _same_file(src, Path(out)):
        if plan.unchanged:
            return RemapResult(plan, None)  # nothing to write: the store stays as it is, untouched
        mode = stat.S_IMODE(Path(os.path.realpath(src)).stat().st_mode)
        with staged_store(src, keep_existing=True) as staged:
            apply_plan(staged, plan)
        os.chmod(os.path.realpath(src), mode)  # the staged copy is made 0600 (mkstemp)
        return RemapResult(plan, src)
    target = Path(out)
    if target.is_symlink() and target.exists():
        target = Path(os.path.realpath(target))
    if target.exists() or target.is_symlink():
        raise OutputError(
            f"--out {out} already exists; give a new path, or leave --out out to rewrite {src} in place"
        )
    _copy_store(src, target, lambda st: apply_plan(st, plan))
    return RemapResult(plan, target)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _copy_store(src: Path, target: Path, change: Callable[[AnnotationStore], None]) -> None:
    """A consistent copy of ``src`` (its ``-wal`` included: SQLite's backup API), changed by
    ``change(store)`` in a temporary file beside ``target``, settled to one file and renamed."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.remap-{os.getpid()}-", suffix=".sqlite", dir=target.parent)
        os.close(fd)
    except OSError as e:
        raise OutputError(f"cannot write {target}: {e.strerror or e}; choose a writable folder") from None
    tmp = Path(name)
    try:
        try:
            source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True)
            try:
                dest = sqlite3.connect(str(tmp))
                try:
                    source.backup(dest)
                finally:
                    dest.close()
            finally:
                source.close()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{src}: cannot copy the store ({e}); check it with dl-utils store info") from None
        with AnnotationStore.open(tmp) as staged:
            staged.path = target  # messages name the store the user asked for
            change(staged)
        settle_store(tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # a new store, like AnnotationStore.create makes (mkstemp: 0600)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        raise OutputError(f"cannot write {target}: {e.strerror or e}; choose a writable folder") from None
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)


__all__ = ["RemapOptions", "RemapPlan", "RemapResult", "TO", "apply_plan", "class_of", "plan_remap", "remap_store"]
