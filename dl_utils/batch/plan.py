"""Which sources a batch annotates, and where each one's store goes.

Two ways in, one result (a list of :class:`BatchSource`):

* :func:`plan_from_inputs`: videos, image folders, folders of them and globs, with shared ``--text``
  and a ``--points-dir``;
* :func:`plan_from_manifest`: a CSV or JSONL file, one row per source with its own settings.

**Names.** A source's ``name`` is its path relative to the common root of the inputs (a folder given
as input is its own root; a file or a glob counts from its folder), so ``a/clip.mp4`` and
``b/clip.mp4`` stay apart. Its store is ``name + ".sqlite"`` (``a/clip.mp4.sqlite``): the full name,
suffix included, so ``clip.mp4`` and ``clip.avi`` never share a store either.

**Points.** ``--points-dir P`` gives source ``a/clip.mp4`` the file ``P/a/clip.mp4.json`` or, when that
is absent, ``P/a/clip.json`` (the PROMPTS.json format of ``dl-utils segment``); sources without one
get text only.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..video_utils import IMAGE_EXTENSIONS

#: file suffixes taken as videos when a folder is searched (a file named directly is taken as it is)
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv"})
#: the manifest's columns (``source`` is required)
MANIFEST_COLUMNS = ("source", "text", "points", "out", "cvat_task")


@dataclass(frozen=True)
class BatchSource:
    """One video or image folder of a batch: what to annotate, with which prompts, into which store
    (``store_name``, relative to the batch's ``--out`` folder)."""

    source: Path
    name: str
    store_name: str
    text: str | None = None
    points: Path | None = None
    cvat_task: int | None = None


def _is_video(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS


def _has_images(d: Path) -> bool:
    return any(c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS for c in d.iterdir())


def _walk(folder: Path) -> list[Path]:
    """The sources under ``folder``: every video, and every folder that holds images (one source each)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        d = Path(dirpath)
        if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in filenames):
            found.append(d)
        found += [d / f for f in sorted(filenames) if Path(f).suffix.lower() in VIDEO_EXTENSIONS]
    return sorted(found, key=lambda p: p.relative_to(folder).parts)  # by relative name, folders mixed in


def _expand(item: str) -> tuple[list[Path], Path]:
    """One input's sources and the folder its names count from."""
    p = Path(item)
    if any(ch in item for ch in "*?["):
        hits = [Path(h) for h in sorted(glob.glob(item, recursive=True))]
        prefix = re.split(r"[*?\[]", item, maxsplit=1)[0]
        base = Path(prefix) if prefix.endswith(("/", os.sep)) else Path(prefix or ".").parent
        srcs = [h for h in hits if _is_video(h) or (h.is_dir() and _has_images(h))]
        if not srcs:
            raise InputError(f"{item}: the pattern matches no video or image folder; check it (quote it in the shell)")
        return srcs, base if base.is_dir() else Path(".")
    if p.is_file():
        return [p], p.parent
    if p.is_dir():
        if _has_images(p) and not any(_is_video(c) for c in p.iterdir()):
            return [p], p.parent
        srcs = _walk(p)
        if not srcs:
            raise InputError(f"{item}: no video ({', '.join(sorted(VIDEO_EXTENSIONS))}) or image folder inside")
        return srcs, p
    raise InputError(f"{item}: no such file or folder; check the path")


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()


def find_points(points_dir: Path, name: str) -> Path | None:
    """``points_dir/<name>.json``, else ``points_dir/<name without suffix>.json``, else ``None``."""
    for cand in (points_dir / f"{name}.json", (points_dir / name).with_suffix(".json")):
        if cand.is_file():
            return cand
    return None


def plan_from_inputs(inputs: Sequence[str], *, text: str | None = None,
                     points_dir: str | os.PathLike[str] | None = None) -> list[BatchSource]:
    """The sources of ``inputs`` (videos, image folders, folders of them, globs), named relative to
    their common root (see the module doc); ``text`` for all, points from ``points_dir``."""
    if not inputs:
        raise InputError("no inputs: give videos, image folders, folders or globs, or --manifest FILE")
    found: list[Path] = []
    roots: list[Path] = []
    for item in inputs:
        srcs, root = _expand(str(item))
        found += srcs
        roots.append(root.resolve())
    root = Path(os.path.commonpath([str(r) for r in roots]))
    pdir = Path(points_dir) if points_dir is not None else None
    if pdir is not None and not pdir.is_dir():
        raise InputError(f"--points-dir {pdir}: not a folder; give the folder of PROMPTS.json files")
    out: list[BatchSource] = []
    seen: set[Path] = set()
    for s in found:
        if s.resolve() in seen:
            continue
        seen.add(s.resolve())
        name = _rel(s, root)
        out.append(BatchSource(source=s, name=name, store_name=name + ".sqlite", text=text,
                               points=find_points(pdir, name) if pdir is not None else None))
    check_unique(out)
    return out


def check_unique(sources: Iterable[BatchSource], where: str = "") -> None:
    """Refuse two sources writing the same store (compared case-insensitively: macOS and Windows)."""
    owner: dict[str, str] = {}
    for s in sources:
        key = s.store_name.lower()
        if key in owner:
            raise InputError(f"{where}{s.source} and {owner[key]} would both write the store {s.store_name}; "
                             "give one of them another 'out'")
        owner[key] = str(s.source)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The manifest's rows as dicts (CSV with a header, or JSON Lines)."""
    if not path.is_file():
        raise InputError(f"manifest {path}: no such file")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"manifest {path} line {i}: not JSON ({e.msg}); one object per line") from None
            if not isinstance(row, dict):
                raise InputError(f"manifest {path} line {i}: expected an object like {{\"source\": ...}}")
            rows.append(row)
        return rows
    if path.suffix.lower() != ".csv":
        raise InputError(f"manifest {path}: use a .csv (with a header) or .jsonl file")
    return [dict(r) for r in csv.DictReader(text.splitlines())]


def _opt(v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and not v.strip()) else str(v)


def plan_from_manifest(path: str | os.PathLike[str]) -> list[BatchSource]:
    """The sources of a manifest (CSV or JSONL; columns :data:`MANIFEST_COLUMNS`). Relative paths count
    from the manifest's folder; ``out`` (the store's name under ``--out``) defaults to the source's
    name relative to that folder plus ``.sqlite``."""
    mpath = Path(path)
    base = mpath.parent
    out: list[BatchSource] = []
    for i, row in enumerate(_read_rows(mpath), 1):
        where = f"manifest {mpath} row {i}: "
        unknown = sorted(set(row) - set(MANIFEST_COLUMNS))
        if unknown:
            raise InputError(f"{where}unknown column {', '.join(map(str, unknown))}; "
                             f"use {', '.join(MANIFEST_COLUMNS)}")
        src = _opt(row.get("source"))
        if src is None:
            raise InputError(f"{where}no source; every row names a video or image folder")
        sp = Path(src) if Path(src).is_absolute() else base / src
        if not sp.exists():
            raise InputError(f"{where}source {sp}: no such file or folder")
        pts = _opt(row.get("points"))
        pp = None if pts is None else (Path(pts) if Path(pts).is_absolute() else base / pts)
        if pp is not None and not pp.is_file():
            raise InputError(f"{where}points {pp}: no such file")
        task = _opt(row.get("cvat_task"))
        try:
            task_id = None if task is None else int(task)
        except ValueError:
            raise InputError(f"{where}cvat_task {task!r}: give a task number") from None
        name = _rel(sp, base) if not os.path.isabs(src) else sp.name
        store = _opt(row.get("out")) or name + ".sqlite"
        if Path(store).is_absolute() or ".." in Path(store).parts:
            raise InputError(f"{where}out {store}: give a name inside --out (relative, no '..')")
        s = BatchSource(source=sp, name=name, store_name=Path(store).as_posix(), text=_opt(row.get("text")),
                        points=pp, cvat_task=task_id)
        check_unique([*out, s], where)
        out.append(s)
    if not out:
        raise InputError(f"manifest {mpath}: no rows")
    return out


__all__ = ["MANIFEST_COLUMNS", "VIDEO_EXTENSIONS", "BatchSource", "check_unique", "find_points",
           "plan_from_inputs", "plan_from_manifest"]
