"""Ultralytics YOLO datasets: detection and segmentation exports of stores, and the import back.

Layout (what ``ultralytics`` trains from)::

    OUT/data.yaml                     train/val/test folders (relative to it), names {id: name}
    OUT/images/{train,val,test}/S.jpg one picture per exported frame
    OUT/labels/{train,val,test}/S.txt one row per instance, same stem S
    OUT/dl_utils_export.json          what was exported from where (stores, split, counts)

Detect rows are ``class cx cy w h``, segment rows ``class x1 y1 x2 y2 ...``, all normalised to 0..1
by the frame's size. Class ids are the class table's row order (dense from 0, whatever ids the
stores use), else the sorted union of the stores' label names. A mask becomes one ring per instance
(holes and parts bridged, see :mod:`dl_utils.formats.polygons`); stored polygons and boxes are
written as they are.

Frames come from the source: a video is decoded once, front to back, and only exported frames are
encoded; an image of an image set is copied (or hard-linked) when its format is the one asked for,
else re-encoded. Nothing is held across frames, so memory does not grow with the frame count. The
dataset is built in a hidden folder beside ``OUT`` and swapped in complete
(:func:`~dl_utils.formats._common.atomic_folder`): a failed or interrupted export leaves the
previous one as it was.
"""

from __future__ import annotations

import glob
import json
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..annotations import Instance, Label, ShapeType, box_from_mask
from ..errors import FormatError, InputError
from ..splits import check_distinct_stores
from ._common import (
    ObjectKey,
    ParsedShape,
    atomic_folder,
    folder_target,
    instance_mask,
    iter_store_frames,
    merge_labels,
    require_media,
    select_objects,
    write_objects,
)
from ._dataset import (
    IMAGE_FORMATS,
    SIDES,
    Pictures,
    class_ids,
    class_names,
    frames_to_write,
    picture_stem,
    sides_of,
    unique_stem,
)
from .polygons import Ring, mask_ring, polygon_ring

if TYPE_CHECKING:
    from ..classes import ClassTable
    from ..splits import Split
    from ..store import StoreReader, StoreReaderWriter

TASKS = ("detect", "segment")
MARKER = "data.yaml"
SUMMARY = "dl_utils_export.json"
_OWN_DIRS = re.compile(r"^(images|labels)$")


class DegeneratePolygonWarning(UserWarning):
    """An instance whose polygon has fewer than 3 points was left out of a YOLO-seg export."""


@dataclass
class YoloOptions:
    """What a YOLO export writes; the options travel together from the command line to the writer.

    ``task``: ``"detect"`` (boxes) or ``"segment"`` (polygons). ``split``: the sides frames go to
    (``None``: everything trains). ``classes``: the class table giving ids and names (``None``:
    the sorted label names of the stores). ``strict``: a degenerate polygon is an error instead of
    a counted warning. ``link``: hard-link image files instead of copying them (same file system).
    """

    task: str = "detect"
    split: "Split | None" = None
    split_name: str = ""
    classes: "ClassTable | None" = None
    image_format: str = "jpg"
    jpeg_quality: int = 95
    include_empty: bool = False
    strict: bool = False
    link: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"YOLO task {self.task!r}: use 'detect' (boxes) or 'segment' (polygons)")
        if self.image_format not in IMAGE_FORMATS:
            raise InputError(f"--image-format {self.image_format!r}: use jpg or png")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise InputError(f"--jpeg-quality {self.jpeg_quality}: use 1..100")


@dataclass
class YoloExport:
    """The summary of one export (also written to ``dl_utils_export.json`` in the dataset)."""

    out: Path
    task: str
    names: list[str]
    images: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SIDES})
    instances: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SIDES})
    empty_images: int = 0
    degenerate: int = 0
    dropped_parts: int = 0
    copied: int = 0
    encoded: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "out": str(self.out), "task": self.task, "names": list(self.names),
            "images": dict(self.images), "instances": dict(self.instances),
            "empty_images": self.empty_images, "degenerate_skipped": self.degenerate,
            "dropped_parts": self.dropped_parts, "copied_images": self.copied,
            "encoded_images": self.encoded, "notes": list(self.notes),
        }


# ================================================================================ rows
def _fmt(v: float) -> str:
    """A normalised coordinate, clipped to 0..1 (YOLO refuses values outside), 6 decimals."""
    return f"{min(1.0, max(0.0, v)):.6f}"


def box_row(cls: int, box: Sequence[float], w: int, h: int) -> str:
    """``class cx cy w h``. A box reaching out of the frame is clipped to it first; one out by less
    than 0.01 px (a box read back from a YOLO row, whose 6 decimals round) is left as it is, so an
    import exported again gives the same row."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if x1 < -0.01 or x2 > w + 0.01:
        x1, x2 = max(0.0, x1), min(float(w), x2)
    if y1 < -0.01 or y2 > h + 0.01:
        y1, y2 = max(0.0, y1), min(float(h), y2)
    return (f"{cls} {_fmt((x1 + x2) / 2 / w)} {_fmt((y1 + y2) / 2 / h)}"
            f" {_fmt((x2 - x1) / w)} {_fmt((y2 - y1) / h)}")


def ring_row(cls: int, ring: np.ndarray, w: int, h: int) -> str:
    """``class x1 y1 x2 y2 ...``, each clipped to 0..1 (a vertex may lie on the frame's edge)."""
    xy = np.clip(np.asarray(ring, dtype=np.float64).reshape(-1, 2) / (w, h), 0.0, 1.0) + 0.0  # no -0.0
    return f"{cls} " + " ".join(map("{:.6f}".format, xy.reshape(-1).tolist()))


def instance_box(inst: Instance, h: int, w: int) -> tuple[float, float, float, float] | None:
    """The box of any instance: its stored box, else the tight box of its mask or polygon."""
    if inst.box is not None:
        return tuple(float(v) for v in inst.box)  # type: ignore[return-value]
    return box_from_mask(instance_mask(inst, h, w))


def instance_ring(inst: Instance, h: int, w: int) -> Ring:
    """The one ring of a segment row: a stored polygon or box as it is, a mask traced and bridged."""
    if inst.shape is ShapeType.POLYGON and inst.polygon:
        return polygon_ring(inst.polygon)
    if inst.shape is ShapeType.BOX and inst.box is not None:
        x1, y1, x2, y2 = (float(v) for v in inst.box)
        return Ring(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]))
    if inst.mask is not None:
        return mask_ring(inst.mask)
    if inst.polygon:
        return polygon_ring(inst.polygon)
    if inst.box is not None:
        x1, y1, x2, y2 = (float(v) for v in inst.box)
        return Ring(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]))
    return Ring(None)


# ================================================================================ export
def export_yolo(
    stores: Sequence["StoreReader"], out: str | os.PathLike[str], options: YoloOptions | None = None,
) -> YoloExport:
    """Write ``stores`` as one Ultralytics dataset in folder ``out`` (see the module doc).

    Raises :class:`InputError` for a label missing from the class table or a frame group the split
    does not know, before any picture is decoded; :class:`FormatError` for a degenerate polygon
    with ``strict``.
    """
    opts = options or YoloOptions()
    if not stores:
        raise InputError("give at least one store to export")
    check_distinct_stores([s.path for s in stores])
    final = folder_target(out, "a YOLO export writes a dataset folder")
    names = class_names(stores, opts.classes)
    ids = [class_ids(s, names, opts.classes) for s in stores]
    # every unknown label and split group is refused here, before any picture is decoded
    sides = [sides_of(s, opts.split, opts.split_name) for s in stores]
    result = YoloExport(final, opts.task, names)
    if opts.split is None:
        result.notes.append("no --split: every frame is under train (data.yaml's val is train too)")
    used: set[str] = set()
    with atomic_folder(final, marker=MARKER, own={SUMMARY}, own_dir=_OWN_DIRS) as tmp:
        for side in SIDES:
            for kind in ("images", "labels"):
                (tmp / kind / side).mkdir(parents=True, exist_ok=True)
        for store, label_ids, side_of in zip(stores, ids, sides):
            _export_store(store, tmp, label_ids, side_of, opts, used, result)
        if not any(result.images.values()):
            raise InputError(
                f"nothing to export: no frame of {', '.join(str(s.path) for s in stores)} has an instance"
                " (--include-empty writes every frame as a background image)"
            )
        for side in ("val", "test"):  # Ultralytics lists empty folders as "no images": leave them out
            if not result.images[side]:
                for kind in ("images", "labels"):
                    (tmp / kind / side).rmdir()
        _write_yaml(tmp, names, result)
        (tmp / SUMMARY).write_text(json.dumps(dict(
            result.summary(), stores=[str(s.path) for s in stores], split=opts.split_name or None,
            classes=opts.classes.source if opts.classes is not None else None,
        ), indent=1) + "\n", encoding="utf-8")
    if result.degenerate:
        warnings.warn(
            f"{result.degenerate} instance(s) left out: their polygon has fewer than 3 points"
            " (--strict makes this an error)", DegeneratePolygonWarning, stacklevel=2)
    return result


def plan_yolo(stores: Sequence["StoreReader"], options: YoloOptions | None = None) -> YoloExport:
    """What :func:`export_yolo` would write (``--dry-run``): classes, and pictures and instances per
    side, with every check that needs no picture (class table, split groups, media present); reads
    the stores without decoding a mask or a frame and writes nothing. Degenerate polygons show only
    when masks are traced, so ``degenerate`` stays 0 here."""
    opts = options or YoloOptions()
    if not stores:
        raise InputError("give at least one store to export")
    check_distinct_stores([s.path for s in stores])
    from ..datasets.groups import media_path

    names = class_names(stores, opts.classes)
    for s in stores:
        class_ids(s, names, opts.classes)
    sides = [sides_of(s, opts.split, opts.split_name) for s in stores]
    result = YoloExport(Path(), opts.task, names)
    if opts.split is None:
        result.notes.append("no --split: every frame is under train (data.yaml's val is train too)")
    for store, side_of in zip(stores, sides):
        media = require_media(store)
        key = media_path(store) if media.path else ""
        present = bool(key) and (Path(key).exists() or (glob.has_magic(key) and bool(glob.glob(key))))
        if not present:
            result.notes.append(f"{store.path}: its media {media.path or '(no path)'} is not there; the"
                                " export would stop at it")
        counts = {f: sum(not i.is_empty for i in insts) for f, insts in store.iter_frames(decode=False)}
        frames = media.frames if opts.include_empty else sorted(f for f, n in counts.items() if n)
        for f in frames:
            if f not in side_of:
                continue  # a stored frame outside the media: not exportable
            n = counts.get(f, 0)
            result.images[side_of[f]] += 1
            result.instances[side_of[f]] += n
            result.empty_images += not n
    return result


def _export_store(
    store: "StoreReader", tmp: Path, label_ids: dict[str, int], side_of: dict[int, str],
    opts: YoloOptions, used: set[str], result: YoloExport,
) -> None:
    media = require_media(store)
    objs = select_objects(store, None)
    cls_of = {o.id: label_ids[o.label] for o in objs}
    frames = frames_to_write(store, media, opts.include_empty)
    if not frames:
        result.notes.append(f"{store.path}: no annotated frame, nothing exported")
        return
    pics = Pictures(store, frames)
    try:
        for f, insts in iter_store_frames(store, frames, objs, desc=f"yolo {media.name}"):
            w, h = media.size_of(f)
            rows = _rows(store, f, insts, cls_of, w, h, opts, result)
            if not rows and not opts.include_empty:
                continue
            side = side_of[f]
            name = media.frame_name(f) if media.frame_names is not None else None
            stem = unique_stem(picture_stem(media.name, f, name), used)
            _, copied = pics.write(f, tmp / "images" / side, stem, opts.image_format, opts.jpeg_quality,
                                   opts.link)
            result.copied += copied
            result.encoded += not copied
            (tmp / "labels" / side / f"{stem}.txt").write_text(
                "".join(r + "\n" for r in rows), encoding="utf-8")
            result.images[side] += 1
            result.instances[side] += len(rows)
            result.empty_images += not rows
    finally:
        pics.close()


def _rows(store: "StoreReader", frame: int, insts: Any, cls_of: dict[int, int], w: int, h: int,
          opts: YoloOptions, result: YoloExport) -> list[str]:
    rows: list[str] = []
    for inst in insts:
        if inst.is_empty:
            continue
        cls = cls_of[inst.object_id]
        if opts.task == "detect":
            box = instance_box(inst, h, w)
            if box is not None:
                rows.append(box_row(cls, box, w, h))
            continue
        ring = instance_ring(inst, h, w)
        result.dropped_parts += ring.dropped
        if ring.points is None:
            if opts.strict:
                raise FormatError(
                    f"{store.path}: frame {frame}, object {inst.object_id}: its polygon has fewer than"
                    " 3 points (a lone pixel or a line); remove it or export without --strict to skip it"
                )
            result.degenerate += 1
            continue
        rows.append(ring_row(cls, ring.points, w, h))
    return rows


def _write_yaml(tmp: Path, names: list[str], result: YoloExport) -> None:
    import yaml  # type: ignore[import-untyped, unused-ignore]  # PyYAML: no stubs in the env

    # no ``path``: Ultralytics then resolves the sides against data.yaml's own folder, so the dataset
    # still trains after it is copied or moved (rsync to a GPU machine); an absolute path went stale
    # there ("images not found"). The folder written to is recorded in dl_utils_export.json instead.
    doc: dict[str, Any] = {"train": "images/train"}
    doc["val"] = "images/val" if result.images["val"] else "images/train"
    if result.images["test"]:
        doc["test"] = "images/test"
    doc["nc"] = len(names)
    doc["names"] = {i: n for i, n in enumerate(names)}
    (tmp / MARKER).write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")


# ================================================================================ import
def read_data_yaml(folder: Path, path: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """The dataset's ``data.yaml`` (or the YAML file ``path`` given) and its class names in id order
    (``names`` a list or a dict)."""
    import yaml  # type: ignore[import-untyped, unused-ignore]  # PyYAML: no stubs in the env

    path = path or folder / "data.yaml"
    if not path.is_file():
        found = sorted(folder.glob("*.yaml"))
        if len(found) != 1:
            raise FormatError(f"{folder}: no data.yaml (an Ultralytics dataset has one); give the"
                              " dataset folder")
        path = found[0]
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise FormatError(f"{path}: cannot read it as YAML ({e}); fix or re-export the dataset") from None
    if not isinstance(doc, dict) or "names" not in doc:
        raise FormatError(f"{path}: no 'names' (the class names); add names: {{0: name, ...}}")
    raw = doc["names"]
    if isinstance(raw, list):
        names = [str(n) for n in raw]
    elif isinstance(raw, dict):
        try:
            keys = sorted(int(k) for k in raw)
        except (TypeError, ValueError):
            raise FormatError(f"{path}: names keys must be class ids 0..N-1") from None
        if keys != list(range(len(keys))):
            raise FormatError(f"{path}: names ids {keys} are not 0..{len(keys) - 1}; YOLO ids are dense")
        names = [str(raw[k] if k in raw else raw[str(k)]) for k in keys]
    else:
        raise FormatError(f"{path}: names is a {type(raw).__name__}; give a list or {{id: name}}")
    if len(set(names)) != len(names):
        raise FormatError(f"{path}: a class name appears twice in names; names must be unique")
    return doc, names


def _images_dir(folder: Path, doc: dict[str, Any], side: str) -> Path | None:
    """The image folder of ``side``: data.yaml's entry resolved against its ``path`` (when that
    exists) else against the dataset folder (a dataset moved since it was written)."""
    rel = doc.get(side)
    if not isinstance(rel, str):
        return None
    bases = [folder]
    if isinstance(doc.get("path"), str) and Path(doc["path"]).is_dir():
        bases.insert(0, Path(doc["path"]))
    for base in bases:
        # Ultralytics' rule: a side written "../train/images" (Roboflow's data.yaml, which sits beside
        # train/, valid/, test/) that is not there is read without its "../"
        tries = [base / rel] + ([base / rel[3:]] if rel.startswith("../") else [])
        for p in tries:
            if p.is_dir():
                return p
    return None


def _side_pattern(dirs: list[Path], root: Path) -> str:
    """One glob that reopens the images of every side: ``PARENT/*/*`` when the sides are folders of one
    parent (``images/train``, ``images/val``: Ultralytics' layout), ``BASE/*/REST/*`` when they differ
    in one folder name (``train/images``, ``valid/images``: Roboflow's). The fixed parts are escaped
    (a folder may hold ``[`` or ``*``)."""
    resolved = [d.resolve() for d in dirs]
    if len(resolved) == 1:
        return os.path.join(glob.escape(str(resolved[0])), "*")
    parts = [d.parts for d in resolved]
    if len({len(p) for p in parts}) == 1:
        differ = [k for k in range(len(parts[0])) if len({p[k] for p in parts}) > 1]
        if len(differ) == 1:
            k = differ[0]
            fixed = [glob.escape(x) for x in parts[0]]
            fixed[k] = "*"
            return os.path.join(*fixed, "*")
    raise FormatError(f"{root}: the sides' image folders ({', '.join(str(d) for d in dirs)}) differ in more"
                      " than one folder name; import one side at a time with --split")


def parse_label_file(path: Path, names: list[str], width: int, height: int) -> list[tuple[str, ParsedShape]]:
    """The rows of one label file as ``(class name, shape in pixels)``; a row's kind is told by its
    length (5 values: a box, an odd count >= 7: a polygon), so detect and segment rows may mix."""
    shapes: list[tuple[str, ParsedShape]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"cannot read {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path} line {n}"
        try:
            cls = int(parts[0])
            vals = [float(v) for v in parts[1:]]
        except ValueError:
            raise FormatError(f"{where}: not numbers ({line[:40]!r}); a row is 'class x y ...'") from None
        if not 0 <= cls < len(names):
            raise FormatError(f"{where}: class {cls} is not in data.yaml's names (0..{len(names) - 1})")
        if len(vals) == 4:
            cx, cy, bw, bh = vals
            box = ((cx - bw / 2) * width, (cy - bh / 2) * height, (cx + bw / 2) * width, (cy + bh / 2) * height)
            shapes.append((names[cls], ParsedShape("box", box, where=where)))
        elif len(vals) >= 6 and len(vals) % 2 == 0:
            ring = [v * (width if k % 2 == 0 else height) for k, v in enumerate(vals)]
            shapes.append((names[cls], ParsedShape("polygon", [ring], where=where)))
        else:
            raise FormatError(
                f"{where}: {len(vals)} values after the class; a box row has 4, a polygon row an even"
                " number >= 6 (3 points or more)")
    return shapes


def import_yolo(
    folder: str | os.PathLike[str], store: "StoreReaderWriter", *, split: str | None = None,
) -> dict[str, Any]:
    """Read an Ultralytics dataset (its folder, or its data.yaml) into a new store: its images
    become the store's image set (``images/<side>/*``, all sides, or only ``split``), each label row
    an object of the class data.yaml names, boxes as boxes and polygons as polygons."""
    from ..video_utils import open_frames

    root = Path(folder)
    yaml_file = None
    if root.is_file() and root.suffix.lower() in (".yaml", ".yml"):
        # the dataset's YAML itself (what Ultralytics is given: data=ds/data.yaml): its folder is the
        # dataset's, its sides are resolved as data.yaml's are
        yaml_file, root = root, root.parent
    elif not root.is_dir():
        raise FormatError(f"{root} is not a folder or a .yaml file; give the dataset folder (the one"
                          " with data.yaml) or its data.yaml")
    if store.media is not None:
        raise InputError(f"{store.path} already has media; import a YOLO dataset into a new store (--out)")
    doc, names = read_data_yaml(root, yaml_file)
    if split is not None and split not in SIDES:
        raise InputError(f"--split {split!r}: use train, val or test")
    dirs: dict[str, Path] = {}
    for side in SIDES if split is None else (split,):
        d = _images_dir(root, doc, side)
        if d is not None and d.resolve() not in {p.resolve() for p in dirs.values()}:
            dirs[side] = d
        entry = doc.get(side)
        if d is None and isinstance(entry, str) and (root / entry).is_file():
            # Ultralytics also takes a text file listing images (train: train.txt); a store's image set
            # is one folder pattern, so such a side cannot be imported as it stands
            raise FormatError(f"{root}: side {side} is the image list {entry}, not a folder; the import reads"
                              " image folders: move that side's images into a folder (images/<side>/) or"
                              " import the other sides with --split")
    if not dirs:
        raise FormatError(f"{root}: data.yaml names no image folder that exists"
                          f" ({'side ' + split if split else 'train/val/test'}); check its path and sides")
    # the media path is a glob the store reopens its images by (escaped: a folder may hold [ or *)
    pattern = _side_pattern(list(dirs.values()), root)
    src = open_frames(pattern)
    media = src.media_info()
    files = {f: Path(src.file_of(f)) for f in media.frames}  # type: ignore[attr-defined]
    src.close()
    wanted = {d.resolve() for d in dirs.values()}
    other = sorted({str(p.parent) for p in files.values() if p.parent.resolve() not in wanted})
    if other:
        raise FormatError(f"{root}: {other[0]} holds images but is no side data.yaml names; import one"
                          " side at a time with --split")
    store.set_media(media)
    keys: list[ObjectKey] = []
    by_frame: dict[int, dict[tuple[Any, ...], list[ParsedShape]]] = {}
    used: Counter[str] = Counter()
    missing = 0
    for f, img in files.items():
        lbl = _label_path(img)
        if not lbl.is_file():
            missing += 1
            continue
        w, h = media.size_of(f)
        for k, (label, shape) in enumerate(parse_label_file(lbl, names, w, h)):
            key = ObjectKey((f, k), label)
            keys.append(key)
            used[label] += 1
            by_frame.setdefault(f, {})[key.key] = [shape]
    merge_labels(store, [Label(n) for n in names], [])
    summary = write_objects(store, keys, by_frame, media, _no_decoder, desc=f"import {root.name}")
    summary.update(format="yolo", folder=str(root), sides=sorted(dirs), images=len(files),
                   images_without_labels=missing, labels=names, instances_per_label=dict(used))
    return summary


def _label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, suffix .txt."""
    parts = list(image.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _no_decoder(shape: ParsedShape, height: int, width: int) -> np.ndarray:
    raise FormatError(f"{shape.where}: YOLO rows are boxes or polygons, not masks")  # never reached
