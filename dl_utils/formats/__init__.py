"""Offline exports and imports: CVAT XML (video, images 1.1), COCO instances JSON, PNG masks, mattes,
and training datasets (Ultralytics YOLO detect/segment, COCO per split) of several stores.

Formats are sinks: they read and write the annotation store only (never an engine), so they work on
a machine without torch or a GPU. Entry points (used by ``dl-utils export`` / ``dl-utils import``):

* :func:`export_store` ``(store, fmt, out, **opts) -> Path``
* :func:`export_mattes` ``(store, out, pattern=..., **opts) -> MatteExport`` (``--json`` needs its summary)
* :func:`import_file` ``(path, store, format="auto") -> dict``
* :func:`detect_format` ``(path) -> "cvat" | "coco"``
* :func:`export_yolo` ``(stores, out, YoloOptions(...)) -> YoloExport`` and :func:`import_yolo`
  ``(folder, store, split=None) -> dict`` (docs/formats_yolo.md)
* :func:`export_coco_splits` ``(stores, out, split=..., classes=...) -> CocoSplitExport``
"""

from __future__ import annotations

import os
import xml.parsers.expat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FormatError, InputError
from ._common import (
    WRITE_BATCH,
    ObjectKey,
    ParsedShape,
    assign_object_ids,
    build_instance,
    export_labels,
    iter_store_frames,
    merge_labels,
    output_file,
    parse_source,
    progress,
    require_media,
    select_objects,
    source_of,
    to_geometry,
)
from .coco import CocoSplitExport, export_coco, export_coco_splits, import_coco
from .cvat_xml import export_cvat, group_ids, import_cvat
from .mattes import MatteExport, MattePattern, export_mattes
from .png_masks import export_png_masks
from .yolo import DegeneratePolygonWarning, YoloExport, YoloOptions, export_yolo, import_yolo, plan_yolo

if TYPE_CHECKING:
    from ..store import StoreReader, StoreReaderWriter

EXPORT_FORMATS = ("cvat-video", "cvat-images", "coco", "png-masks", "mattes")
IMPORT_FORMATS = ("auto", "cvat", "coco")


def export_store(store: StoreReader, fmt: str, out: str | os.PathLike[str], **opts: Any) -> Path:
    """Write ``store`` as ``fmt`` to ``out`` (a file, or a folder for ``png-masks`` and ``mattes``);
    returns the path.

    Options: ``shape=None|"mask"|"polygon"|"box"`` (geometry to write; None = each instance's own;
    ignored by png-masks), ``objects=[ids]``, ``start=``/``stop=`` (source frames, stop inclusive),
    ``include_empty=True`` (COCO images / CVAT ``<image>`` for frames without shapes), and for
    png-masks ``sequence="media"|"visible"``, ``index=True``; for mattes the options of
    :func:`~dl_utils.formats.mattes.export_mattes` (``pattern``, ``combine``, ``bit_depth``, ``dilate``,
    ``feather``, ``exr``, ``skip_empty``, ``force``). Parent folders are created.
    """
    if fmt in ("yolo-detect", "yolo-seg"):
        raise InputError(f"{fmt} is a dataset of one or more stores: use export_yolo(stores, out,"
                         " YoloOptions(task='detect'|'segment', ...))")
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    shape = opts.get("shape")
    if shape is not None and shape not in ("mask", "polygon", "box"):
        raise InputError(f"shape={shape!r}: use None (each instance's own), 'mask', 'polygon' or 'box'")
    allowed = {"shape", "objects", "start", "stop", "include_empty"}
    if fmt == "png-masks":
        allowed = {"shape", "objects", "start", "stop", "sequence", "index"}
    if fmt == "mattes":
        allowed = {"objects", "start", "stop", "pattern", "combine", "bit_depth", "dilate", "feather",
                   "exr", "skip_empty", "force"}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise InputError(f"export option(s) {unknown} do not apply to {fmt}; use {sorted(allowed)}")
    if fmt not in ("png-masks", "mattes"):
        # a folder, device or dangling link is refused before any work
        output_file(out, ".json" if fmt == "coco" else ".xml")
    if fmt == "cvat-video":
        return export_cvat(store, out, video=True, **opts)
    if fmt == "cvat-images":
        return export_cvat(store, out, video=False, **opts)
    if fmt == "coco":
        return export_coco(store, out, **opts)
    if fmt == "mattes":
        return export_mattes(store, out, **opts).out
    return export_png_masks(store, out, **opts)


class _Root(Exception):
    pass


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"cvat"`` for XML whose root is ``<annotations>``, ``"coco"`` for a JSON object.

    Decided by content, not by file name: the first non-blank character tells XML from JSON, and for
    XML only the root element is parsed.
    """
    p = Path(path)
    if p.is_dir():
        raise FormatError(f"{p} is a folder; import reads one CVAT XML or COCO JSON file")
    try:
        with open(p, "rb") as f:
            head = f.read(1 << 16)
    except OSError as e:
        raise FormatError(f"cannot read {p}: {e.strerror or e}") from None
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<"):
        parser = xml.parsers.expat.ParserCreate()
        root: list[str] = []

        def start(tag: str, attrs: dict[str, str]) -> None:
            root.append(tag)
            raise _Root

        parser.StartElementHandler = start
        try:
            parser.Parse(head, False)
        except _Root:
            pass
        except xml.parsers.expat.ExpatError as e:
            raise FormatError(
                f"{p.name} line {e.lineno}, column {e.offset + 1}: XML syntax error"
                f" ({xml.parsers.expat.ErrorString(e.code)}); re-export the file"
            ) from None
        if root and root[0] == "annotations":
            return "cvat"
        raise FormatError(
            f"{p.name} is XML but its root element is <{root[0] if root else '?'}>, not <annotations>;"
            " only CVAT 1.1 XML (for video or for images) can be imported"
        )
    if text.startswith(b"{"):
        return "coco"
    if text.startswith(b"["):
        raise FormatError(f"{p.name} is a JSON list; a COCO file is an object with 'images' and 'annotations'")
    raise FormatError(
        f"cannot tell the format of {p.name}: it is neither XML (CVAT, root <annotations>) nor"
        " JSON (COCO); give a CVAT XML or a COCO instances JSON file"
    )


def import_file(
    path: str | os.PathLike[str], store: StoreReaderWriter, format: str = "auto"
) -> dict[str, Any]:
    """Read a CVAT XML or COCO JSON file into ``store``; returns a summary dict.

    A new store (no media) takes the file's media description and labels; a store that has media
    must match the file's frame size, and the file's frames must be part of it.
    """
    if format not in IMPORT_FORMATS:
        raise InputError(f"unknown import format {format!r}; use one of {', '.join(IMPORT_FORMATS)}")
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p} does not exist or is not a file; check the path")
    fmt = detect_format(p) if format == "auto" else format
    if fmt == "cvat":
        return import_cvat(p, store)
    return import_coco(p, store)


__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "export_store",
    "import_file",
    "detect_format",
    "export_cvat",
    "import_cvat",
    "export_coco",
    "import_coco",
    "export_png_masks",
    "export_mattes",
    "export_yolo",
    "plan_yolo",
    "import_yolo",
    "YoloOptions",
    "YoloExport",
    "DegeneratePolygonWarning",
    "export_coco_splits",
    "CocoSplitExport",
    "MatteExport",
    "MattePattern",
    # shared with the CVAT sink (dl_utils.cvat), which exports to and imports from a server the
    # way these modules do files: public here so it needs no private module of this package
    "WRITE_BATCH",
    "ObjectKey",
    "ParsedShape",
    "assign_object_ids",
    "build_instance",
    "export_labels",
    "group_ids",
    "iter_store_frames",
    "merge_labels",
    "parse_source",
    "progress",
    "require_media",
    "select_objects",
    "source_of",
    "to_geometry",
]
