"""COCO instances JSON: export from and import into an annotation store, and COCO per split.

Per split (:func:`export_coco_splits`, ``dl-utils export STORE... --format coco --split SPLIT.json
--out DIR``): one ``annotations/instances_{train,val,test}.json`` per side and the frames as
pictures in ``images/{side}/`` (the layout of COCO 2017 and of detectron2/mmdetection configs),
several stores in one dataset; sides, picture names and class order as in the YOLO export.

Export: one ``image`` per media frame (``id`` from 1, ``file_name`` = the frame's name, plus
``"frame"``: its source frame number), one ``category`` per label, one ``annotation`` per visible
instance. Masks are compressed RLE (``counts`` as str, exactly what ``pycocotools.mask.encode``
gives), polygons are lists of rings, boxes have ``segmentation: []`` and only a ``bbox``.
``iscrowd`` is 0 everywhere: these are single objects, and pycocotools (``annToMask``), datumaro and
detectron2 read an RLE segmentation whatever ``iscrowd`` says, while ``iscrowd: 1`` would make
training and evaluation code ignore the object. ``attributes.track_id`` keeps the object id, and
``info.dl_utils.media`` the media description, so an import rebuilds the same store.

Shot frame numbers (``--frame-numbers names`` / ``--first-frame N``): ``"frame"`` and
``info.dl_utils.media`` (with its ``numbering``/``first_frame``) keep the store's numbers, so our
import restores them. CVAT matches COCO images to task frames by ``file_name``: an image set's are
its file names already; a video's are ``frame_%06d`` of the *task* frame
(``MediaInfo.task_frames()``, what CVAT names the frames of a task made from the store), not of the
shot number, so the file imports into that task.
"""

from __future__ import annotations

import json
import os
import re
import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence, cast

import numpy as np

from ..annotations import Box, Instance, Label, MediaInfo, ShapeType, box_from_mask
from ..cv_utils import coco_rle_area, decode_coco_rle, encode_coco_rle, polygons_to_mask
from ..errors import FormatError, InputError, MaskError
from ..splits import check_distinct_stores
from ._common import (
    Geometry,
    atomic_folder,
    folder_target,
    require_media,
    select_objects,
    select_export,
    Decoder,
    ObjectKey,
    ParsedShape,
    check_geometry,
    check_store_media,
    iter_store_frames,
    media_from_frames,
    merge_labels,
    parse_source,
    to_geometry,
    write_atomic,
    write_objects,
)
from ._dataset import (SIDES, Pictures, class_ids, class_names, frames_to_write, picture_stem, sides_of,
                       unique_stem)

if TYPE_CHECKING:
    from ..classes import ClassTable
    from ..splits import Split
    from ..store import StoreReader, StoreReaderWriter


# ================================================================================ export
def _category_ids(labels: list[Label]) -> dict[str, int]:
    """Label ids when they are all set, positive and unique (a class table's ids), else 1..N."""
    ids = [lb.id for lb in labels]
    if all(i is not None and i > 0 for i in ids) and len(set(ids)) == len(ids):
        return {lb.name: int(lb.id) for lb in labels}  # type: ignore[arg-type]
    return {lb.name: k + 1 for k, lb in enumerate(labels)}


def export_coco(
    store: StoreReader,
    out: str | os.PathLike[str],
    *,
    shape: "ShapeType | str | None" = None,
    objects: Iterable[int] | None = None,
    start: int | None = None,
    stop: int | None = None,
    include_empty: bool = True,
) -> Path:
    """Write the store as a COCO instances JSON file (see the module doc for the mapping)."""
    out = Path(out)
    sel = select_export(store, objects, start, stop)
    frames, media, objs, labels = sel.frames, sel.media, sel.objects, sel.labels
    full = sel.media_full
    if not full.plain_numbering:  # the slice keeps the numbering, so an import restores it
        media = dataclasses.replace(media, numbering=full.numbering, first_frame=full.first_frame)
    # a shot-numbered video's frames are named by CVAT's task frame number (see the module doc)
    task_names = full.frame_names is None and not full.plain_numbering
    task_of = dict(zip(full.frames, full.task_frames()))
    cat = _category_ids(labels)
    label_of = {o.id: o.label for o in objs}

    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for f, insts in iter_store_frames(store, frames, objs, desc="coco"):
        w, h = media.size_of(f)  # each image at its own size in a mixed-size set
        geoms = [(i, g) for i in insts if (g := to_geometry(i, h, w, shape)) is not None]
        if not geoms and not include_empty:
            continue
        image_id = len(images) + 1
        fname = f"frame_{task_of[f]:06d}" if task_names else media.frame_name(f)
        images.append({"id": image_id, "file_name": fname, "width": w, "height": h, "frame": f})
        for inst, g in geoms:
            anns.append(_annotation(inst, g, h, w, shape, cat[label_of[inst.object_id]],
                                    len(anns) + 1, image_id))

    doc = OrderedDict(
        info={
            "description": f"{media.name} (dl_utils export)",
            "version": "1.0",
            "date_created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "dl_utils": {"media": media.to_dict()},
        },
        licenses=[],
        categories=[{"id": cat[lb.name], "name": lb.name, "supercategory": lb.superclass or "",
                     "color": lb.color}  # not COCO; tools ignore it, our import keeps the colour
                    for lb in labels],
        images=images,
        annotations=anns,
    )
    write_atomic(out, json.dumps(doc, separators=(",", ":")))
    return out


def _annotation(
    inst: Instance, g: Geometry, h: int, w: int, shape: "ShapeType | str | None", category_id: int,
    ann_id: int, image_id: int,
) -> dict[str, Any]:
    """One COCO annotation of an instance's geometry (the one rule for both COCO exports)."""
    box: Box | None
    if g.kind is ShapeType.MASK:
        gmask = cast(np.ndarray, g.mask)  # the geometry's kind says which field is set
        seg: Any = encode_coco_rle(gmask)
        area: float = int(np.count_nonzero(gmask))
        box = box_from_mask(gmask)
    elif g.kind is ShapeType.POLYGON:
        rings = cast("list[list[float]]", g.rings)
        seg = [[round(float(v), 2) for v in r] for r in rings]
        own = inst.polygon and inst.mask is not None and shape in (None, ShapeType.POLYGON, "polygon")
        m = cast(np.ndarray, inst.mask) if own else polygons_to_mask(rings, h, w)
        area = int(np.count_nonzero(m))
        xs = [v for r in seg for v in r[0::2]]
        ys = [v for r in seg for v in r[1::2]]
        box = (min(xs), min(ys), max(xs), max(ys))
    else:
        seg = []
        box = cast(Box, g.box)
        area = float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))
    x1, y1, x2, y2 = (float(v) for v in cast(Box, box))  # a non-empty geometry has a box
    ann: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": seg,
        "area": area,
        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
        "iscrowd": 0,
        "attributes": {"track_id": inst.object_id, "source": inst.source.value,
                       "occluded": False, "keyframe": bool(inst.keyframe)},
    }
    if inst.score is not None:
        ann["score"] = float(inst.score)
    return ann


# ================================================================================ per split
_SPLIT_OWN_DIRS = re.compile(r"^(images|annotations)$")
SPLIT_MARKER = "dl_utils_export.json"


@dataclass
class CocoSplitExport:
    """The summary of a per-split COCO dataset (also written to its ``dl_utils_export.json``)."""

    out: Path
    names: list[str]
    images: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SIDES})
    instances: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SIDES})
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"out": str(self.out), "format": "coco", "names": list(self.names),
                "images": dict(self.images), "instances": dict(self.instances),
                "files": dict(self.files), "notes": list(self.notes)}


def export_coco_splits(
    stores: Sequence[StoreReader],
    out: str | os.PathLike[str],
    *,
    split: "Split | None",
    split_name: str = "",
    classes: "ClassTable | None" = None,
    include_empty: bool = False,
    link: bool = False,
    jpeg_quality: int = 95,
) -> CocoSplitExport:
    """Write ``stores`` as one COCO dataset per split side in folder ``out``:
    ``annotations/instances_{side}.json`` and ``images/{side}/`` (``file_name`` relative to it).

    Sides, picture names and classes follow the same rules as the YOLO export
    (:mod:`dl_utils.formats._dataset`); category ids are the class order from 1 (COCO tools treat
    0 as background). Each instance keeps its own geometry (mask: RLE, polygon, box), written by
    the same code as :func:`export_coco`. The folder appears complete or not at all."""
    if not stores:
        raise InputError("give at least one store to export")
    check_distinct_stores([s.path for s in stores])
    final = folder_target(out, "a per-split COCO export writes a dataset folder")
    names = class_names(stores, classes)
    ids = [class_ids(s, names, classes) for s in stores]
    sides = [sides_of(s, split, split_name) for s in stores]
    result = CocoSplitExport(final, names)
    if split is None:
        result.notes.append("no --split: every frame is under train")
    docs: dict[str, dict[str, list[dict[str, Any]]]] = {
        side: {"images": [], "annotations": []} for side in SIDES}
    used: set[str] = set()
    with atomic_folder(final, marker=SPLIT_MARKER, own=set(), own_dir=_SPLIT_OWN_DIRS) as tmp:
        for side in SIDES:
            (tmp / "images" / side).mkdir(parents=True)
        (tmp / "annotations").mkdir()
        for store, label_ids, side_of in zip(stores, ids, sides):
            media = require_media(store)
            objs = select_objects(store, None)
            cat_of = {o.id: label_ids[o.label] + 1 for o in objs}
            frames = frames_to_write(store, media, include_empty)
            if not frames:
                result.notes.append(f"{store.path}: no annotated frame, nothing exported")
                continue
            pics = Pictures(store, frames)
            try:
                for f, insts in iter_store_frames(store, frames, objs, desc=f"coco {media.name}"):
                    w, h = media.size_of(f)
                    geoms = [(i, g) for i in insts if (g := to_geometry(i, h, w, None)) is not None]
                    if not geoms and not include_empty:
                        continue
                    side = side_of[f]
                    doc = docs[side]
                    name = media.frame_name(f) if media.frame_names is not None else None
                    stem = unique_stem(picture_stem(media.name, f, name), used)
                    fname, _ = pics.write(f, tmp / "images" / side, stem, "jpg", jpeg_quality, link)
                    image_id = len(doc["images"]) + 1
                    doc["images"].append({"id": image_id, "file_name": fname, "width": w, "height": h,
                                          "frame": f, "store": str(store.path)})
                    for inst, g in geoms:
                        doc["annotations"].append(_annotation(
                            inst, g, h, w, None, cat_of[inst.object_id], len(doc["annotations"]) + 1,
                            image_id))
            finally:
                pics.close()
        if not any(doc["images"] for doc in docs.values()):
            raise InputError(
                f"nothing to export: no frame of {', '.join(str(s.path) for s in stores)} has an instance"
                " (--include-empty writes every frame as an image without annotations)"
            )
        categories = [{"id": k + 1, "name": n, "supercategory": _superclass(classes, n)}
                      for k, n in enumerate(names)]
        for side in SIDES:
            doc = docs[side]
            if not doc["images"]:
                (tmp / "images" / side).rmdir()
                continue
            result.images[side] = len(doc["images"])
            result.instances[side] = len(doc["annotations"])
            rel = f"annotations/instances_{side}.json"
            result.files[side] = rel
            full = OrderedDict(
                info={"description": f"{side} split (dl_utils export)", "version": "1.0",
                      "date_created": time.strftime("%Y-%m-%dT%H:%M:%S")},
                licenses=[], categories=categories, images=doc["images"], annotations=doc["annotations"])
            (tmp / rel).write_text(json.dumps(full, separators=(",", ":")), encoding="utf-8")
            docs[side] = {"images": [], "annotations": []}  # freed before the next side is dumped
        (tmp / SPLIT_MARKER).write_text(json.dumps(dict(
            result.summary(), stores=[str(s.path) for s in stores], split=split_name or None,
            classes=classes.source if classes is not None else None), indent=1) + "\n", encoding="utf-8")
    return result


def _superclass(classes: "ClassTable | None", name: str) -> str:
    if classes is None:
        return ""
    info = classes.get(name)
    return (info.superclass or "") if info is not None else ""


# ================================================================================ import
def _load_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise FormatError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise FormatError(
            f"{path.name} line {e.lineno}, column {e.colno}: JSON syntax error ({e.msg}); the file is"
            " truncated or not JSON: fix it or re-export it"
        ) from None
    except UnicodeDecodeError:
        raise FormatError(f"{path.name} is not UTF-8 text; a COCO file is JSON") from None


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


@dataclass(frozen=True)
class _Image:
    """One entry of ``images`` as the import needs it: the frame it becomes, its size and name."""

    frame: int
    width: int
    height: int
    file_name: str


@dataclass
class _Shapes:
    """Annotations grouped the way :func:`write_objects` takes them.

    Objects keep the order they are first seen in, so object ids come out in file order.
    """

    keys: "OrderedDict[tuple[Any, ...], ObjectKey]" = field(default_factory=OrderedDict)
    by_frame: dict[int, dict[tuple[Any, ...], list[ParsedShape]]] = field(default_factory=dict)

    def add(self, obj: ObjectKey, frame: int, shape: ParsedShape) -> None:
        if obj.key not in self.keys:
            self.keys[obj.key] = obj
        self.by_frame.setdefault(frame, {}).setdefault(obj.key, []).append(shape)


def import_coco(path: str | os.PathLike[str], store: StoreReaderWriter) -> dict[str, Any]:
    """Read a COCO instances JSON into ``store``.

    RLE (compressed or uncompressed), polygon and bbox-only annotations; objects by
    ``attributes.track_id`` when present (one object per annotation otherwise); frames by the
    images' ``frame`` field, else in image-id order from 0.
    """
    path = Path(path)
    name = path.name
    doc = _check_top_level(_load_json(path), name)
    cats, file_labels = _read_categories(doc["categories"], name)
    imgs = _read_images(doc["images"], name)
    media = _media_of(doc, path, imgs)
    shapes = _read_annotations(doc["annotations"], name, imgs, cats)

    media = check_store_media(store, media, name)
    merge_labels(store, file_labels, OrderedDict.fromkeys(k.label for k in shapes.keys.values()))
    summary = write_objects(store, list(shapes.keys.values()), shapes.by_frame, media,
                            _rle_decoder(name), desc=f"import {name}")
    summary.update(format="coco", file=str(path), media=media.name,
                   labels=[lb.name for lb in store.labels()], skipped={})
    return summary


def _check_top_level(doc: Any, name: str) -> dict[str, Any]:
    """The document as a dict holding the three lists every later step indexes without checking."""
    if not isinstance(doc, dict):
        raise FormatError(f"{name}: the top level is a {type(doc).__name__}, not a COCO object")
    for key in ("images", "annotations", "categories"):
        if key not in doc:
            raise FormatError(
                f"{name}: missing key {key!r}; a COCO instances file has 'images', 'annotations'"
                " and 'categories'"
            )
        if not isinstance(doc[key], list):
            raise FormatError(f"{name}: {key!r} is a {type(doc[key]).__name__}, not a list")
    return doc


def _read_categories(categories: list[Any], name: str) -> tuple[dict[Any, str], list[Label]]:
    """Category id -> name (what annotations refer to), and the categories as store labels."""
    cats: dict[Any, str] = {}
    file_labels: list[Label] = []
    for k, c in enumerate(categories):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise FormatError(f"{name}: categories[{k}] needs 'id' and 'name'")
        if c["name"] in {lb.name for lb in file_labels}:
            raise FormatError(f"{name}: category name {c['name']!r} appears twice; names must be unique")
        cats[c["id"]] = str(c["name"])
        cid = c["id"] if isinstance(c["id"], int) else None
        try:
            color = c.get("color") if isinstance(c.get("color"), str) else None
            file_labels.append(Label(str(c["name"]), color, id=cid,
                                     superclass=c.get("supercategory") or None))
        except InputError as e:
            raise FormatError(f"{name}: categories[{k}]: {e}") from None
    return cats, file_labels


def _read_images(images: list[Any], name: str) -> dict[Any, _Image]:
    """Image id -> frame. Frames are the images' ``frame`` fields when every image has one and no two
    share one (a file this package wrote of one store), else positions in image-id order, so an
    import is stable across tools. A side of ``export --format coco --split`` holds frames of several
    stores (two videos' frame 0): its ``frame`` fields name where each picture came from (with
    ``store``), not a numbering of this file, so it is numbered by position too."""
    imgs: dict[Any, _Image] = {}
    has_frame = all(isinstance(im, dict) and isinstance(im.get("frame"), int) for im in images)
    has_frame = has_frame and len({im["frame"] for im in images}) == len(images)
    ordered = sorted(
        enumerate(images),
        key=lambda t: (t[1].get("id") if isinstance(t[1], dict) and isinstance(t[1].get("id"), int) else 0, t[0]),
    )
    for pos, (k, im) in enumerate(ordered):
        if not isinstance(im, dict):
            raise FormatError(f"{name}: images[{k}] is not an object")
        for key in ("id", "width", "height"):
            if key not in im:
                raise FormatError(f"{name}: images[{k}] has no {key!r}; add it or re-export the file")
        if not (isinstance(im["width"], int) and isinstance(im["height"], int)) or im["width"] <= 0 or im["height"] <= 0:
            raise FormatError(f"{name}: images[{k}] width/height {im['width']!r}x{im['height']!r} are not positive integers")
        if im["id"] in imgs:
            raise FormatError(f"{name}: image id {im['id']!r} appears twice")
        frame = im["frame"] if has_frame else pos
        imgs[im["id"]] = _Image(frame, im["width"], im["height"],
                                str(im.get("file_name") or f"frame_{frame:06d}"))
    return imgs


def _media_of(doc: dict[str, Any], path: Path, imgs: dict[Any, _Image]) -> MediaInfo:
    """The media description saved in ``info.dl_utils.media`` when it still fits the images (the
    file may have been edited since), else one built from the images themselves."""
    name = path.name
    frame_size = {im.frame: (im.width, im.height) for im in imgs.values()}
    frames = [im.frame for im in imgs.values()]
    media: MediaInfo | None = None
    meta = doc.get("info", {}).get("dl_utils", {}).get("media") if isinstance(doc.get("info"), dict) else None
    if isinstance(meta, dict):
        try:
            media = MediaInfo.from_dict(meta)
        except (TypeError, ValueError) as e:
            raise FormatError(f"{name}: info.dl_utils.media is not a valid media description ({e})") from None
        bad = sorted(set(frames) - set(media.frames))
        if bad or any(media.size_of(f) != wh for f, wh in frame_size.items()):
            media = None  # edited file: trust the images instead
    if media is None:
        if not imgs:
            raise FormatError(f"{name}: no images, so the frame size is unknown; nothing to import")
        first = min(frame_size)
        w, h = frame_size[first]
        names = {im.frame: im.file_name for im in imgs.values()}
        stem = str(doc["info"].get("description") or path.stem) if isinstance(doc.get("info"), dict) else path.stem
        media = media_from_frames(stem, w, h, frames, names, frame_size)
    return media


def _read_annotations(
    annotations: list[Any], name: str, imgs: dict[Any, _Image], cats: dict[Any, str]
) -> _Shapes:
    """Every annotation checked and parsed (not decoded) into a shape of its object and frame."""
    shapes = _Shapes()
    for k, a in enumerate(annotations):
        where = _check_annotation(k, a, name, imgs, cats)
        image = imgs[a["image_id"]]
        label = cats[a["category_id"]]
        raw_attrs = a.get("attributes")
        attrs: dict[str, Any] = raw_attrs if isinstance(raw_attrs, dict) else {}
        where = f"{where} on image {a['image_id']}"
        shape = _parse_geometry(a, where, image.width, image.height, name)
        check_geometry(shape, image.width, image.height, name)
        shape.source = parse_source(attrs.get("source", "manual"))
        shape.keyframe = bool(attrs.get("keyframe", False))
        if _num(a.get("score")):
            shape.score = float(a["score"])
        shapes.add(_object_of(attrs, k, label), image.frame, shape)
    return shapes


def _check_annotation(
    k: int, a: Any, name: str, imgs: dict[Any, _Image], cats: dict[Any, str]
) -> str:
    """Check that annotation ``k`` names a known image and category; returns how messages name it."""
    where = f"annotation #{k}" + (f" (id {a.get('id')})" if isinstance(a, dict) and "id" in a else "")
    if not isinstance(a, dict):
        raise FormatError(f"{name}: {where} is not an object")
    for key in ("image_id", "category_id"):
        if key not in a:
            raise FormatError(f"{name}: {where} has no {key!r}; add it or re-export the file")
    if a["image_id"] not in imgs:
        raise FormatError(f"{name}: {where} names image_id {a['image_id']!r}, which is not in 'images'")
    if a["category_id"] not in cats:
        raise FormatError(
            f"{name}: {where} names category_id {a['category_id']!r}, which is not in 'categories'"
            f" (ids {sorted(cats)}); add the category or fix the id"
        )
    return where


def _parse_geometry(a: dict[str, Any], where: str, iw: int, ih: int, name: str) -> ParsedShape:
    """The annotation's geometry, best first: an RLE dict, polygon rings, else the bbox alone."""
    seg = a.get("segmentation")
    if isinstance(seg, dict):
        return _rle_shape(seg, where, iw, ih, name)
    if isinstance(seg, list) and seg and seg != [[]]:
        return _polygon_shape(seg, where, name)
    return _box_shape(a.get("bbox"), where, name)


def _rle_shape(seg: dict[str, Any], where: str, iw: int, ih: int, name: str) -> ParsedShape:
    """An RLE segmentation, validated now (decoded only when its frame is written)."""
    try:
        if isinstance(seg.get("size"), list) and [int(v) for v in seg["size"]] != [ih, iw]:
            raise MaskError(f"its RLE size {seg['size']} differs from the image's [{ih}, {iw}]")
        coco_rle_area(seg if "size" in seg else {**seg, "size": [ih, iw]})  # validates the RLE
    except (MaskError, TypeError, ValueError) as e:
        raise FormatError(f"{name}: {where}: {e}") from None
    return ParsedShape("coco_rle", seg if "size" in seg else {**seg, "size": [ih, iw]}, where=where)


def _polygon_shape(seg: list[Any], where: str, name: str) -> ParsedShape:
    """Polygon rings; a flat list of numbers is one ring (some tools write it so)."""
    rings = seg if all(isinstance(r, list) for r in seg) else [seg]
    for r in rings:
        if len(r) < 6 or len(r) % 2 or not all(_num(v) for v in r):
            raise FormatError(
                f"{name}: {where}: a polygon ring has {len(r)} values; it needs an even"
                " number (x, y pairs), at least 6, all numbers"
            )
    return ParsedShape("polygon", [[float(v) for v in r] for r in rings], where=where)


def _box_shape(bbox: Any, where: str, name: str) -> ParsedShape:
    """A COCO ``[x, y, w, h]`` bbox as the ``(x1, y1, x2, y2)`` box shapes hold."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_num(v) for v in bbox)):
        raise FormatError(
            f"{name}: {where} has no segmentation and no valid 'bbox' [x, y, w, h]"
        )
    x, y, bw, bh = (float(v) for v in bbox)
    if bw < 0 or bh < 0:
        raise FormatError(
            f"{name}: {where}: bbox {bbox} has a negative {'width' if bw < 0 else 'height'};"
            " a COCO bbox is [x, y, width, height]: fix it or re-export the file"
        )
    return ParsedShape("box", (x, y, x + bw, y + bh), where=where)


def _object_of(attrs: dict[str, Any], k: int, label: str) -> ObjectKey:
    """Annotations sharing an integer ``attributes.track_id`` (and label) are one object; any other
    annotation is an object of its own."""
    tid = attrs.get("track_id")
    if isinstance(tid, int) and not isinstance(tid, bool):
        return ObjectKey(("t", tid, label), label, tid)
    return ObjectKey(("a", k), label, None)


def _rle_decoder(name: str) -> Decoder:
    """The decoder :func:`write_objects` calls per frame; a bad RLE names the file and annotation."""

    def decode(s: ParsedShape, height: int, width: int) -> np.ndarray:
        try:
            return decode_coco_rle(s.data, height, width)
        except MaskError as e:
            raise FormatError(f"{name}: {s.where}: {e}") from None

    return decode
