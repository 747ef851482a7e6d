"""CVAT for video 1.1 and CVAT for images 1.1 XML: export from and import into an annotation store.

The layout follows what the CVAT server writes (``cvat/apps/dataset_manager/formats/cvat.py``):

* frame numbers in ``<image id>`` and in track shapes' ``frame`` are **source frame numbers**
  (``start_frame + i * step``: the server converts its task-relative indices with ``abs_frame_id``
  on export and back with ``rel_frame_id`` on import);
* coordinates are written with two decimals; ``<mask rle="r0, r1, ..." left top width height>`` holds
  the run lengths over the mask's inclusive box (CVAT's API points without the 4 box values), with
  ``width = right - left + 1``;
* CVAT imports only the first shape of a ``<mask>`` track, so masks are written the way the server
  exports single shapes: one track per (object, frame), a keyframe shape plus an ``outside`` shape on
  the next frame;
* every shape we write has ``keyframe="1"``: CVAT drops non-key shapes of a track on import and
  interpolates, which would replace per-frame model output by interpolation.

Shot frame numbers (a store made with ``--frame-numbers names`` or ``--first-frame N``, see
``MediaInfo.numbering``): the file is written in the numbering of the task
:func:`dl_utils.cvat.create_task` makes from the store (``MediaInfo.task_frames()``: the numbers less
N, or 0..n-1 for a names-numbered set, whose task holds just the kept files), so it imports into that
task. CVAT's XML has no field for the shot numbers, so we record them in an XML comment
(``<!-- dl_utils frame numbering: {...} -->``, JSON: numbering, first_frame and, for names, the
frames) that CVAT skips and :func:`import_cvat` reads to restore the store's numbering. A file
without it (a CVAT server export of such a task) imports with the task's plain numbering.

Object identity survives through ``group_id`` = object id (CVAT keeps groups on import; tracks and
shapes of one object share it). Files are read with the standard library's expat parser, streamed,
so big exports parse in bounded memory and every error can name its line; Python's bundled expat
refuses entity-expansion attacks and never fetches external entities.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import warnings
import xml.parsers.expat
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, cast
from xml.sax.saxutils import XMLGenerator
from xml.sax.xmlreader import AttributesImpl

import numpy as np

from ..annotations import Label, MediaInfo, ObjectInfo, ShapeType, Source
from ..cv_utils import decode_cvat_rle, encode_cvat_rle
from ..errors import FormatError, InputError, MaskError
from ._common import (
    atomic_file,
    select_export,
    Geometry,
    ObjectKey,
    ParsedShape,
    check_geometry,
    check_store_media,
    iter_store_frames,
    merge_labels,
    media_from_frames,
    parse_source,
    source_of,
    to_geometry,
    write_objects,
)

SUPPORTED = ("box", "polygon", "mask")
_OTHER_SHAPES = ("polyline", "points", "ellipse", "cuboid", "skeleton", "tag")

if TYPE_CHECKING:
    from ..store import StoreReader, StoreReaderWriter

#: a shape's tag and XML attributes, as :func:`_geometry_attrs` makes them
_Attrs = tuple[str, "OrderedDict[str, str]"]


def _attrs(d: Mapping[str, str]) -> AttributesImpl:
    """``d`` as XMLGenerator's attributes argument (typed ``AttributesImpl``; it reads only
    ``.items()``, so a mapping is passed as it is)."""
    return cast(AttributesImpl, d)


# ================================================================================ export
class _Writer:
    """Indented XML in the server's style (XMLGenerator escapes text and attribute values)."""

    def __init__(self, stream: io.TextIOBase):
        self.gen = XMLGenerator(stream, "utf-8", short_empty_elements=True)
        self.level = 0

    def _nl(self) -> None:
        self.gen.ignorableWhitespace("\n" + "  " * self.level)

    def open(self, tag: str, attrs: dict[str, str] | None = None) -> None:
        self._nl()
        self.gen.startElement(tag, _attrs(attrs or {}))
        self.level += 1

    def close(self, tag: str) -> None:
        self.level -= 1
        self._nl()
        self.gen.endElement(tag)

    def leaf(self, tag: str, text: str = "", attrs: dict[str, str] | None = None) -> None:
        self._nl()
        self.gen.startElement(tag, _attrs(attrs or {}))
        self.gen.characters(text)
        self.gen.endElement(tag)

    def comment(self, text: str) -> None:
        """An XML comment (XMLGenerator has none; ``ignorableWhitespace`` writes its text raw, after
        closing any pending start tag). ``text`` must not contain ``--``."""
        self._nl()
        self.gen.ignorableWhitespace(f"<!-- {text} -->")

    def empty(self, tag: str, attrs: dict[str, str]) -> None:
        self._nl()
        self.gen.startElement(tag, _attrs(attrs))
        self.gen.endElement(tag)

    def tree(self, tag: str, value: Any) -> None:
        if isinstance(value, dict):
            self.open(tag)
            for k, v in value.items():
                self.tree(k, v)
            self.close(tag)
        elif isinstance(value, list):  # list of (tag, value): repeated children
            self.open(tag)
            for k, v in value:
                self.tree(k, v)
            self.close(tag)
        else:
            self.leaf(tag, str(value))


def _f(v: float) -> str:
    return "{:.2f}".format(v)


def _points(ring: Iterable[float]) -> str:
    it = iter(ring)
    return ";".join(f"{_f(x)},{_f(y)}" for x, y in zip(it, it))


def _geometry_attrs(g: Geometry) -> tuple[str, "OrderedDict[str, str]"]:
    """Element name and geometry attributes of one shape (one ring for polygons)."""
    if g.kind is ShapeType.BOX:
        x1, y1, x2, y2 = g.box  # type: ignore[misc]
        return "box", OrderedDict(xtl=_f(x1), ytl=_f(y1), xbr=_f(x2), ybr=_f(y2))
    if g.kind is ShapeType.POLYGON:
        return "polygon", OrderedDict(points=_points(g.rings[0]))  # type: ignore[index]
    pts = encode_cvat_rle(g.mask)  # type: ignore[arg-type]
    *runs, x1, y1, x2, y2 = pts
    return "mask", OrderedDict(
        rle=", ".join(str(int(r)) for r in runs), left=str(x1), top=str(y1),
        width=str(x2 - x1 + 1), height=str(y2 - y1 + 1),
    )


def _meta(media: MediaInfo, labels: list[Label], mode: str,
          task_of: Mapping[int, int]) -> "OrderedDict[str, Any]":
    """The ``<meta>`` block; frame range and step in task numbering (``task_of``)."""
    now = time.strftime("%Y-%m-%d %H:%M:%S%z")
    tframes = [task_of[f] for f in media.frames]
    diffs = {b - a for a, b in zip(tframes, tframes[1:])}
    step = diffs.pop() if len(diffs) == 1 else media.step
    task: OrderedDict[str, Any] = OrderedDict()
    task["name"] = media.name
    task["size"] = str(len(media.frames))
    task["mode"] = mode
    task["overlap"] = "0"
    task["bugtracker"] = ""
    task["created"] = now
    task["updated"] = now
    task["subset"] = "default"
    task["start_frame"] = str(tframes[0])
    task["stop_frame"] = str(tframes[-1])
    task["frame_filter"] = f"step={step}" if step > 1 else ""
    task["segments"] = [("segment", OrderedDict(id="0", start="0", stop=str(len(media.frames) - 1), url=""))]
    task["owner"] = ""
    task["assignee"] = ""
    task["labels"] = [
        ("label", OrderedDict(
            name=lb.name, color=lb.color or "", type=lb.type or "any",
            attributes=[
                ("attribute", OrderedDict(name=a, mutable="False", input_type="text",
                                          default_value="", values=""))
                for a in lb.attributes
            ],
        ))
        for lb in labels
    ]
    # The server writes these for videos only; the size is harmless for image sets and lets a
    # cvat-video export of an image set (no <image> elements) be read back.
    task["original_size"] = OrderedDict(width=str(media.width), height=str(media.height))
    if media.frame_names is None:
        task["source"] = media.name
    return OrderedDict(task=task, dumped=now)


def group_ids(objects: list[ObjectInfo]) -> dict[int, int]:
    """CVAT group per object: its id (groups start at 1, so an object 0 gets max id + 1).

    Public: the CVAT sink pushes ``group`` by the same rule and pull maps groups back with it, so a
    task's groups and an XML export's agree whatever subset of objects is written.
    """
    top = max((o.id for o in objects), default=0)
    return {o.id: (o.id if o.id > 0 else top + 1) for o in objects}


#: the comment that carries a shot-numbered store's numbering (see the module doc)
_NUMBERING_TAG = "dl_utils frame numbering:"


def task_frame_map(media: MediaInfo) -> dict[int, int]:
    """Source frame number -> the frame number CVAT gives it in a task made from ``media`` by
    :func:`dl_utils.cvat.create_task` (``MediaInfo.task_frames()``; the identity for plain
    numbering). Exporters write these numbers so the file imports into that task."""
    return dict(zip(media.frames, media.task_frames()))


def _numbering_note(media_full: MediaInfo, frames: list[int]) -> str | None:
    """The comment text recording a shot numbering, or None for plain numbering."""
    if media_full.plain_numbering:
        return None
    note: dict[str, Any] = {"numbering": media_full.numbering, "first_frame": media_full.first_frame}
    if media_full.numbering == "names":  # task frames are positions: the numbers must be listed
        note["frames"] = list(frames)
    return f"{_NUMBERING_TAG} {json.dumps(note, separators=(',', ':'))}"


def export_cvat(
    store: StoreReader,
    out: str | os.PathLike[str],
    *,
    video: bool = True,
    shape: "ShapeType | str | None" = None,
    objects: Iterable[int] | None = None,
    start: int | None = None,
    stop: int | None = None,
    include_empty: bool = True,
) -> Path:
    """Write the store as CVAT for video 1.1 (``video=True``) or CVAT for images 1.1 XML."""
    out = Path(out)
    sel = select_export(store, objects, start, stop)
    media_full, frames, media, objs, labels = (
        sel.media_full, sel.frames, sel.media, sel.objects, sel.labels
    )
    if video and media.mixed_sizes:
        n = len(set(media.sizes()))
        raise InputError(
            f"{media.name!r} holds images of {n} different sizes; CVAT for video XML has one frame"
            " size for all frames: export it as cvat-images or coco instead"
        )
    label_of = {o.id: o.label for o in objs}
    groups = group_ids(objs)
    h, w = media.height, media.width
    mode = "interpolation" if media_full.frame_names is None else "annotation"
    task_of = task_frame_map(media_full)
    note = _numbering_note(media_full, frames)

    with atomic_file(out, "w") as stream:  # renamed over out when complete: no half file
        wr = _Writer(stream)
        wr.gen.startDocument()
        wr.gen.startElement("annotations", _attrs({}))
        wr.level = 1
        wr.leaf("version", "1.1")
        if note is not None:
            wr.comment(note)
        wr.tree("meta", _meta(media, labels, mode, task_of))
        if video:
            _write_tracks(wr, store, media, frames, objs, label_of, groups, shape, h, w, task_of)
        else:
            _write_images(wr, store, media, frames, objs, label_of, groups, shape, h, w,
                          include_empty, task_of)
        wr.level = 0
        wr._nl()
        wr.gen.endElement("annotations")
        stream.write("\n")
        wr.gen.endDocument()
    return out


def _write_images(
    wr: _Writer, store: StoreReader, media: MediaInfo, frames: list[int], objs: Sequence[ObjectInfo],
    label_of: dict[int, str], groups: dict[int, int], shape: "ShapeType | str | None", h: int, w: int,
    include_empty: bool, task_of: Mapping[int, int],
) -> None:
    for f, insts in iter_store_frames(store, frames, objs, desc="cvat-images"):
        w, h = media.size_of(f)  # CVAT image tasks keep each image's own size
        shapes = []
        for inst in insts:
            g = to_geometry(inst, h, w, shape)
            if g is not None:
                shapes.append((inst, g))
        if not shapes and not include_empty:
            continue
        # a video's frames are named by the task frame, as CVAT names them (frame_%06d)
        name = media.frame_name(f) if media.frame_names is not None else f"frame_{task_of[f]:06d}"
        wr.open("image", OrderedDict(id=str(task_of[f]), name=name, width=str(w), height=str(h)))
        for inst, g in shapes:
            parts = [g] if g.kind is not ShapeType.POLYGON else [
                Geometry(ShapeType.POLYGON, rings=[r])  # one <polygon> per ring
                for r in cast("list[list[float]]", g.rings)
            ]
            for part in parts:
                tag, geo = _geometry_attrs(part)
                attrs = OrderedDict(label=label_of[inst.object_id], source=inst.source.value,
                                    occluded="0")
                attrs.update(geo)
                attrs["z_order"] = "0"
                attrs["group_id"] = str(groups[inst.object_id])
                wr.empty(tag, attrs)
        wr.close("image")


def _write_tracks(
    wr: _Writer, store: StoreReader, media: MediaInfo, frames: list[int], objs: Sequence[ObjectInfo],
    label_of: dict[int, str], groups: dict[int, int], shape: "ShapeType | str | None", h: int, w: int,
    task_of: Mapping[int, int],
) -> None:
    index = {f: i for i, f in enumerate(frames)}
    n = len(frames)
    # per object: track key -> {task index: (geometry attrs, source, ...)}; masks get one track each
    per_obj: dict[int, dict[tuple[str, int], dict[int, tuple[_Attrs, Source]]]] = {o.id: {} for o in objs}
    for f, insts in iter_store_frames(store, frames, objs, desc="cvat-video"):
        i = index[f]
        w, h = media.size_of(f)
        for inst in insts:
            g = to_geometry(inst, h, w, shape)
            if g is None:
                continue
            tracks = per_obj[inst.object_id]
            if g.kind is ShapeType.POLYGON:
                # ring k of every frame -> the object's k-th track
                for k, ring in enumerate(cast("list[list[float]]", g.rings)):
                    part = Geometry(ShapeType.POLYGON, rings=[ring])
                    tracks.setdefault(("polygon", k), {})[i] = (_geometry_attrs(part), inst.source)
            elif g.kind is ShapeType.BOX:
                tracks.setdefault(("box", 0), {})[i] = (_geometry_attrs(g), inst.source)
            else:
                tracks[("mask", i)] = {i: (_geometry_attrs(g), inst.source)}

    track_id = 0
    for o in objs:
        tracks = per_obj[o.id]
        order = sorted(tracks, key=lambda k: ({"box": 0, "polygon": 1, "mask": 2}[k[0]], k[1]))
        for key in order:
            shapes = tracks[key]
            src = source_of(s for _, s in shapes.values())
            wr.open("track", OrderedDict(id=str(track_id), label=o.label, source=src.value,
                                         group_id=str(groups[o.id])))
            track_id += 1
            idx = sorted(shapes)
            for pos, i in enumerate(idx):
                (tag, geo), _ = shapes[i]
                _track_shape(wr, tag, geo, task_of[frames[i]], outside=False)
                last_of_run = pos + 1 == len(idx) or idx[pos + 1] != i + 1
                if last_of_run and i + 1 < n:  # gone on the next frame: CVAT's outside marker
                    _track_shape(wr, tag, geo, task_of[frames[i + 1]], outside=True)
            wr.close("track")


def _track_shape(wr: _Writer, tag: str, geo: Mapping[str, str], frame: int, *, outside: bool) -> None:
    attrs = OrderedDict(frame=str(frame), keyframe="1", outside=str(int(outside)), occluded="0")
    attrs.update(geo)
    attrs["z_order"] = "0"
    wr.empty(tag, attrs)


# ================================================================================ import
class _Parser:
    """Streaming expat parser collecting meta, images and shapes, with line numbers for errors."""

    def __init__(self, path: Path):
        self.path = path
        self.name = path.name
        self.p = xml.parsers.expat.ParserCreate()
        self.p.StartElementHandler = self._start
        self.p.EndElementHandler = self._end
        self.p.CharacterDataHandler = self._data
        self.p.CommentHandler = self._comment
        self.numbering: tuple[str, int] | None = None  # (our numbering comment's text, its line)
        self.stack: list[str] = []
        self.text: list[str] = []
        self.meta: dict[str, str] = {}
        self.labels: list[dict[str, Any]] = []
        self.images: dict[int, tuple[str | None, int | None, int | None, int]] = {}
        self.track: dict[str, Any] | None = None
        self.image: dict[str, Any] | None = None
        self.n_tracks = 0
        self.n_loose = 0
        # (frame, object key tuple, label, ParsedShape, line)
        self.shapes: list[tuple[int, tuple[Any, ...], str, ParsedShape, int]] = []
        self.keys: "OrderedDict[tuple[Any, ...], ObjectKey]" = OrderedDict()
        self.skipped: dict[str, int] = {}
        self.outside = 0

    # -- helpers
    @property
    def line(self) -> int:
        return self.p.CurrentLineNumber

    def fail(self, msg: str, line: int | None = None) -> FormatError:
        return FormatError(f"{self.name} line {line or self.line}: {msg}")

    def _int(self, attrs: dict[str, str], key: str, tag: str) -> int:
        try:
            return int(attrs[key])
        except KeyError:
            raise self.fail(f"<{tag}> has no '{key}' attribute; add it or re-export the file") from None
        except ValueError:
            raise self.fail(f"<{tag}> {key}={attrs[key]!r} is not an integer") from None

    def _float(self, attrs: dict[str, str], key: str, tag: str) -> float:
        try:
            v = float(attrs[key])
        except KeyError:
            raise self.fail(f"<{tag}> has no '{key}' attribute; add it or re-export the file") from None
        except ValueError:
            raise self.fail(f"<{tag}> {key}={attrs[key]!r} is not a number") from None
        if not np.isfinite(v):
            raise self.fail(f"<{tag}> {key}={attrs[key]!r} is not a finite number")
        return v

    # -- expat callbacks
    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        depth = len(self.stack)
        if depth == 0 and tag != "annotations":
            raise self.fail(
                f"root element is <{tag}>, not <annotations>: this is not a CVAT 1.1 XML file"
            )
        parent = self.stack[-1] if self.stack else None
        self.stack.append(tag)
        self.text = []
        path = self.stack
        if len(path) >= 3 and path[1] == "meta" and path[2] == "project":
            raise self.fail(
                "this is a CVAT project export (<meta><project>); export the task or job instead"
            )
        if len(path) >= 4 and path[1] == "meta" and path[2] in ("task", "job"):
            if tag == "label" and path[-2] == "labels":
                self.labels.append({"name": None, "color": None, "type": "any", "attributes": [],
                                    "line": self.line})
            return
        if depth == 1 and tag == "image":
            frame = self._int(attrs, "id", "image")
            w = attrs.get("width")
            hh = attrs.get("height")
            try:
                wi = int(w) if w is not None else None
                hi = int(hh) if hh is not None else None
            except ValueError:
                raise self.fail(f"<image id={frame}> width/height {w!r}x{hh!r} are not integers") from None
            self.images[frame] = (attrs.get("name"), wi, hi, self.line)
            self.image = {"frame": frame}
        elif depth == 1 and tag == "track":
            label = attrs.get("label")
            if not label:
                raise self.fail("<track> has no 'label' attribute; add the label name")
            tid = attrs.get("id", str(self.n_tracks))
            group = self._int(attrs, "group_id", "track") if "group_id" in attrs else 0
            key = ("g", group, label) if group > 0 else ("t", self.n_tracks)
            self.n_tracks += 1
            self.track = {"id": tid, "label": label, "key": key,
                          "source": parse_source(attrs.get("source", "manual"))}
            if key not in self.keys:
                self.keys[key] = ObjectKey(key, label, group if group > 0 else None)
        elif depth == 2 and parent in ("image", "track") and tag in SUPPORTED:
            self._shape(tag, attrs, parent)
        elif depth == 2 and parent in ("image", "track") and tag in _OTHER_SHAPES:
            self.skipped[tag] = self.skipped.get(tag, 0) + 1

    def _shape(self, tag: str, attrs: dict[str, str], parent: str) -> None:
        if parent == "track":
            tr = self.track
            assert tr is not None
            frame = self._int(attrs, "frame", tag)
            where = f"<{tag}> in track {tr['id']} frame {frame}"
            if attrs.get("outside", "0") == "1":
                self.outside += 1
                return
            label, key, source = tr["label"], tr["key"], tr["source"]
            keyframe = attrs.get("keyframe", "1") == "1"
        else:
            assert self.image is not None
            frame = self.image["frame"]
            where = f"<{tag}> in image {frame}"
            label = attrs.get("label")
            if not label:
                raise self.fail(f"{where} has no 'label' attribute; add the label name")
            group = self._int(attrs, "group_id", tag) if "group_id" in attrs else 0
            if group > 0:
                key = ("g", group, label)
            else:
                key = ("s", self.n_loose)
                self.n_loose += 1
            if key not in self.keys:
                self.keys[key] = ObjectKey(key, label, group if group > 0 else None)
            source = parse_source(attrs.get("source", "manual"))
            keyframe = True
        if tag == "box":
            if float(attrs.get("rotation", "0") or 0) != 0:
                self.skipped["rotated box"] = self.skipped.get("rotated box", 0) + 1
                return
            box = tuple(self._float(attrs, k, tag) for k in ("xtl", "ytl", "xbr", "ybr"))
            shape = ParsedShape("box", box, source, keyframe, where=where)
        elif tag == "polygon":
            raw = attrs.get("points")
            if raw is None:
                raise self.fail(f"{where} has no 'points' attribute")
            try:
                ring = [float(v) for pair in raw.split(";") for v in pair.split(",")]
            except ValueError:
                raise self.fail(f"{where} points {raw[:40]!r} are not 'x,y;x,y;...' numbers") from None
            if len(ring) % 2 or len(ring) < 6:
                raise self.fail(f"{where} has {len(ring) / 2:g} points; a polygon needs at least 3 x,y pairs")
            shape = ParsedShape("polygon", [ring], source, keyframe, where=where)
        else:
            left, top = self._int(attrs, "left", tag), self._int(attrs, "top", tag)
            width, height = self._int(attrs, "width", tag), self._int(attrs, "height", tag)
            raw = attrs.get("rle")
            if raw is None:
                raise self.fail(f"{where} has no 'rle' attribute")
            try:
                runs = [int(v) for v in raw.split(",")]
            except ValueError:
                raise self.fail(f"{where} rle is not a comma-separated list of integers") from None
            total = sum(runs)
            if width <= 0 or height <= 0 or total != width * height:
                raise self.fail(
                    f"{where} has rle covering {total} pixels but width*height is"
                    f" {width}*{height} = {width * height}; the rle does not belong to this box,"
                    " re-export the file"
                )
            points = runs + [left, top, left + width - 1, top + height - 1]
            shape = ParsedShape("mask", points, source, keyframe, where=where)
        self.shapes.append((frame, key, label, shape, self.line))

    def _comment(self, text: str) -> None:
        text = text.strip()
        if text.startswith(_NUMBERING_TAG) and self.numbering is None:
            self.numbering = (text[len(_NUMBERING_TAG):].strip(), self.line)

    def _data(self, text: str) -> None:
        self.text.append(text)

    def _end(self, tag: str) -> None:
        path = self.stack
        text = "".join(self.text).strip()
        self.text = []
        if len(path) >= 4 and path[1] == "meta" and path[2] in ("task", "job"):
            rel = path[3:]
            if len(rel) == 1:
                self.meta[rel[0]] = text
            elif rel[0] == "original_size" and len(rel) == 2:
                self.meta["original_" + rel[1]] = text
            elif rel[0] == "labels" and len(rel) == 3 and self.labels:
                if rel[2] in ("name", "color", "type"):
                    self.labels[-1][rel[2]] = text
            elif rel[0] == "labels" and rel[-1] == "name" and rel[-2] == "attribute" and self.labels:
                self.labels[-1]["attributes"].append(text)
        elif len(path) == 3 and path[1] == "meta" and tag == "source":
            self.meta.setdefault("source", text)  # older servers put <source> under <meta>
        if len(path) == 2 and tag == "track":
            self.track = None
        elif len(path) == 2 and tag == "image":
            self.image = None
        self.stack.pop()

    def parse(self) -> None:
        try:
            with open(self.path, "rb") as f:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    self.p.Parse(chunk, False)
                self.p.Parse(b"", True)
        except xml.parsers.expat.ExpatError as e:
            what = xml.parsers.expat.ErrorString(e.code)
            raise FormatError(
                f"{self.name} line {e.lineno}, column {e.offset + 1}: XML syntax error ({what});"
                " the file is truncated or not well-formed XML: re-export it from CVAT"
            ) from None
        except OSError as e:
            raise FormatError(f"cannot read {self.path}: {e.strerror or e}") from None


def _media(p: _Parser, fallback_name: str) -> MediaInfo:
    m = p.meta
    name = m.get("source") or m.get("name") or fallback_name
    own = {f: (w, h) for f, (_, w, h, _) in p.images.items() if w is not None and h is not None}
    for f, (w, h) in own.items():
        if w <= 0 or h <= 0:
            raise FormatError(
                f"{p.name} line {p.images[f][3]}: <image id={f}> size {w}x{h} is not positive"
            )
    sizes = set(own.values())

    def require_sizes(frames: list[int], advice: str) -> None:
        """Images of mixed sizes: every frame needs its own <image width height>."""
        missing = [f for f in frames if f not in own]
        if missing:
            raise FormatError(
                f"{p.name}: the images have different sizes but frame(s) {missing[:5]} have no"
                f" <image width height>; {advice}"
            )

    width = height = None
    if m.get("original_width") and m.get("original_height"):
        try:
            width, height = int(m["original_width"]), int(m["original_height"])
        except ValueError:
            raise FormatError(f"{p.name}: <original_size> is not two integers") from None
    if len(sizes) == 1:
        sw, sh = next(iter(sizes))
        if width is not None and (sw, sh) != (width, height):
            raise FormatError(
                f"{p.name}: <image> size {sw}x{sh} differs from <original_size> {width}x{height}"
            )
        width, height = sw, sh
    elif sizes:  # an image task of photos: every image keeps its own size
        width, height = own[min(own)]
    if width is None or height is None:
        raise FormatError(
            f"{p.name}: the frame size is unknown (no <meta><task><original_size> and no <image"
            " width height>); re-export the file from CVAT with its meta block"
        )
    names = {f: n for f, (n, _, _, _) in p.images.items() if n}
    if m.get("size") and m.get("start_frame"):
        try:
            size, start = int(m["size"]), int(m["start_frame"])
            step = 1
            ff = m.get("frame_filter", "")
            if ff:
                mm = re.fullmatch(r"\s*step\s*=\s*(\d+)\s*", ff)
                if not mm:
                    raise FormatError(f"{p.name}: frame_filter {ff!r} is not 'step=N'")
                step = int(mm.group(1))
        except ValueError:
            raise FormatError(f"{p.name}: <size>/<start_frame> in <meta> are not integers") from None
        frames = [start + i * step for i in range(size)]
        stop = int(m["stop_frame"]) if m.get("stop_frame", "").lstrip("-").isdigit() else frames[-1]
        frame_names = None
        if names and any(names.get(f, f"frame_{f:06d}") != f"frame_{f:06d}" for f in frames):
            frame_names = [names.get(f, f"frame_{f:06d}") for f in frames]
        frame_sizes = None
        if len(sizes) > 1:
            require_sizes(frames, "re-export the task from CVAT with every image")
            frame_sizes = [own[f] for f in frames]
        return MediaInfo(name=name, width=width, height=height, frames=frames, start=start,
                         stop=stop, step=step, frame_names=frame_names, frame_sizes=frame_sizes)
    frames = sorted(set(p.images) | {s[0] for s in p.shapes})
    if not frames:
        raise FormatError(f"{p.name}: no <meta> frame range and no <image>: nothing to import")
    if len(sizes) > 1:
        require_sizes(frames, "add them or re-export the task from CVAT")
    return media_from_frames(name, width, height, frames, names, own if len(sizes) > 1 else None)


def _restore_numbering(p: _Parser, media: MediaInfo) -> MediaInfo:
    """The store's shot numbering from our numbering comment: the media renumbered and every parsed
    image and shape moved from its task frame to its source frame. Without the comment ``media`` is
    returned as it is (task numbering); with a comment that does not fit the file (edited since) a
    warning says so and the numbering stays the task's, as CVAT's own export of the task would give.
    """
    if p.numbering is None:
        return media
    text, line = p.numbering

    def plain(why: str) -> MediaInfo:
        warnings.warn(f"{p.name} line {line}: the dl_utils frame numbering comment {why}; the"
                      " frames keep the task's numbering (0..n-1 / less the first frame)",
                      stacklevel=3)
        return media

    try:
        note = json.loads(text)
    except ValueError:
        return plain("is not JSON")
    if not isinstance(note, dict):
        return plain("is not a JSON object")
    numbering, first = note.get("numbering"), note.get("first_frame", 0)
    if isinstance(first, bool) or not isinstance(first, int) or first < 0:
        return plain(f"has first_frame {first!r}, not an integer >= 0")
    if numbering == "index":
        src = [t + first for t in media.frames]
    elif numbering == "names":
        listed = note.get("frames")
        if (not isinstance(listed, list) or len(listed) != len(media.frames)
                or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in listed)
                or any(b <= a for a, b in zip(listed, listed[1:]))):
            return plain(f"does not list {len(media.frames)} increasing frame numbers (one per task frame)")
        src, first = list(listed), 0
    else:
        return plain(f"has numbering {numbering!r}, not 'index' or 'names'")
    to_src = dict(zip(media.frames, src))
    bad = sorted({fr for fr, *_ in p.shapes if fr not in to_src} | (set(p.images) - set(to_src)))
    if bad:  # reported by the import's own frame check, in task numbering
        return media
    p.images = {to_src[f]: v for f, v in p.images.items()}
    p.shapes = [(to_src[fr], key, label, shape, ln) for fr, key, label, shape, ln in p.shapes]
    diffs = {b - a for a, b in zip(src, src[1:])}
    step = diffs.pop() if len(diffs) == 1 else 1
    return MediaInfo(name=media.name, width=media.width, height=media.height, frames=src,
                     fps=media.fps, start=src[0], stop=src[-1], step=step,
                     frame_names=media.frame_names, path=media.path, frame_sizes=media.frame_sizes,
                     numbering=numbering, first_frame=first)


def import_cvat(path: str | os.PathLike[str], store: StoreReaderWriter) -> dict[str, Any]:
    """Read CVAT for video / for images 1.1 XML into ``store`` (see the module doc for the mapping).

    A file this package wrote from a shot-numbered store gets that numbering back (its comment);
    any other file keeps the numbers it has (task numbering for a CVAT export)."""
    path = Path(path)
    p = _Parser(path)
    p.parse()
    media = _restore_numbering(p, _media(p, path.stem))

    file_labels: list[Label] = []
    for lb in p.labels:
        if not lb["name"]:
            raise FormatError(f"{p.name} line {lb['line']}: a <label> in <meta> has no <name>")
        try:
            file_labels.append(Label(lb["name"], lb["color"] or None,
                                     type=lb["type"] or "any", attributes=tuple(lb["attributes"])))
        except Exception as e:  # bad colour text
            raise FormatError(f"{p.name} line {lb['line']}: label {lb['name']!r}: {e}") from None
    known = {lb.name for lb in file_labels}
    frames_ok = set(media.frames)
    for frame, _key, label, shape, line in p.shapes:
        if known and label not in known:
            raise FormatError(
                f"{p.name} line {line}: {shape.where} has label {label!r}, which is not among the"
                f" <meta> labels {sorted(known)}; add it to <labels> or fix the name"
            )
        if frame not in frames_ok:
            raise FormatError(
                f"{p.name} line {line}: {shape.where}: frame {frame} is not part of the task"
                f" (start={media.start}, step={media.step}, {len(media.frames)} frames)"
            )
        fw, fh = media.size_of(frame)
        if shape.kind == "mask":
            x1, y1, x2, y2 = shape.data[-4:]
            if not (0 <= x1 <= x2 < fw and 0 <= y1 <= y2 < fh):
                raise FormatError(
                    f"{p.name} line {line}: {shape.where}: mask box left={x1} top={y1}"
                    f" width={x2 - x1 + 1} height={y2 - y1 + 1} lies outside the"
                    f" {fw}x{fh} frame"
                )
        else:
            check_geometry(shape, fw, fh, f"{p.name} line {line}")

    media = check_store_media(store, media, p.name)
    used = list(OrderedDict.fromkeys(k.label for k in p.keys.values()))
    merge_labels(store, file_labels, used)

    by_frame: dict[int, dict[tuple[Any, ...], list[ParsedShape]]] = {}
    for frame, key, _label, shape, _line in p.shapes:
        by_frame.setdefault(frame, {}).setdefault(key, []).append(shape)
    with_shapes = {s[1] for s in p.shapes}
    keys = [k for k in p.keys.values() if k.key in with_shapes]

    def decode(s: ParsedShape, height: int, width: int) -> np.ndarray:
        try:
            return decode_cvat_rle(s.data, height, width)
        except MaskError as e:
            raise FormatError(f"{p.name}: {s.where}: {e}") from None

    summary = write_objects(store, keys, by_frame, media, decode, desc=f"import {p.name}")
    summary.update(format="cvat", file=str(path), media=media.name,
                   mode=p.meta.get("mode") or ("interpolation" if p.n_tracks else "annotation"),
                   labels=[lb.name for lb in store.labels()], skipped=p.skipped)
    return summary
