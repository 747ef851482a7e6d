"""PNG mask sequences: one binary sequence per object (for Nuke and other compositing tools) and
one indexed PNG per frame whose pixel values are objects.

Layout under ``out``::

    objects.json                  objects, their pixel values and colours, frames, file patterns
    001_car/mask_0003.png ...     per object: 8-bit single-channel, 0 / 255, one file per media frame
    ids/ids_0003.png ...          per frame: object value (0 = background), palette = object colours

File numbers are source frame numbers (``%04d``, wider when needed). Every object that is visible at
least once gets a file for **every** media frame in the range (black where the object is absent or
not processed), because a Read node expects an unbroken sequence over the plate's frame range; with a
``step`` > 1 the numbers follow the media (3, 5, 7...). ``sequence="visible"`` writes only the frames
where the object is visible.

Index images: objects get values 1..N in id order (``objects.json`` maps value -> id). Where objects
overlap, the one with the higher id wins (drawn last). Up to 255 objects the image is an indexed
("P") PNG whose palette holds the object colours, so it previews in any viewer; above 255 it is a
16-bit grayscale PNG (no palette).
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import cv2
import numpy as np
from PIL import Image

from ..annotations import Instances, MediaInfo, ObjectInfo, color_to_rgb
from ..cv_utils import color_for_index
from ..errors import InputError, OutputError
from ._common import (
    _what_is,
    atomic_folder,
    instance_mask,
    output_error,
    iter_store_frames,
    require_media,
    safe_name,
    select_frames,
    select_objects,
    sub_media,
)

if TYPE_CHECKING:
    from ..store import StoreReader

def _png_bytes(img: np.ndarray, palette: list[int] | None = None) -> bytes:
    """PNG bytes of an 8-bit (L, or P with ``palette``) or 16-bit image.

    Pillow at zlib level 1 encodes a 1080p mask in ~3 ms, OpenCV's PNG writer ~10 ms (its filter
    search dominates); masks and index maps compress to a few KB at any level.
    """
    if img.dtype == np.uint16:
        ok, buf = cv2.imencode(".png", img)  # 16-bit grayscale PNG straight from a uint16 array
        if not ok:
            raise InputError("OpenCV could not encode a 16-bit index PNG")
        return buf.tobytes()
    im = Image.frombytes("P" if palette else "L", (img.shape[1], img.shape[0]), img.tobytes())
    if palette:
        im.putpalette(palette)
    bio = io.BytesIO()
    im.save(bio, "PNG", compress_level=1)
    return bio.getvalue()


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as e:
        raise output_error(path, e) from None


#: What an earlier png-masks export holds: the folder may be replaced by a new export.
_OWN_DIR = re.compile(r"^\d{3,}_[A-Za-z0-9._-]+$")


@dataclass
class _Layout:
    """Everything the files of every frame depend on, fixed before the first frame is written."""

    frames: list[int]
    media: MediaInfo
    objs: list[ObjectInfo]
    shown: list[ObjectInfo]  # visible at least once in the range: these get a mask folder
    visible: dict[int, list[int]]  # object id -> frames where it is visible (any frame of the store)
    wanted: set[int]
    width: int  # digits of the frame number in file names
    folders: dict[int, str]
    values: dict[int, int]  # object id -> its pixel value in the index images
    colors: dict[int, str]
    wide: bool  # over 255 objects: 16-bit index images, no palette
    palette: list[int]
    sequence: str
    index: bool

    def visible_in_range(self, object_id: int) -> list[int]:
        return [f for f in self.visible[object_id] if f in self.wanted]


def export_png_masks(
    store: StoreReader,
    out: str | os.PathLike[str],
    *,
    objects: Iterable[int] | None = None,
    start: int | None = None,
    stop: int | None = None,
    sequence: str = "media",
    index: bool = True,
    shape: object = None,
) -> Path:
    """Write per-object binary mask sequences, per-frame index PNGs and ``objects.json`` into ``out``.

    ``shape`` is accepted for symmetry with the other formats and ignored: a PNG holds pixels, so
    boxes and polygons are rasterised. The folder is built beside ``out`` and swapped in when
    complete (:func:`~dl_utils.formats._common.atomic_folder`): an interrupted export leaves the
    previous one whole, and files of an earlier export that the new one does not write are gone.
    Each frame's PNGs have that frame's size (images of a mixed-size set keep their own).
    """
    if sequence not in ("media", "visible"):
        raise InputError(f"sequence={sequence!r}: use 'media' (every frame) or 'visible'")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(
            f"{out} is {_what_is(out)}; png-masks writes a folder, give a folder path for --out"
        )
    layout = _plan_layout(store, objects, start, stop, sequence, index)
    blacks: dict[tuple[int, int], bytes] = {}  # encoded once per size: absent frames are common

    with atomic_folder(out, marker="objects.json", own={"ids"}, own_dir=_OWN_DIR) as tmp:
        for o in layout.shown:
            (tmp / layout.folders[o.id]).mkdir()
        if index:
            (tmp / "ids").mkdir()
        for f, insts in iter_store_frames(store, layout.frames, layout.shown if not index else layout.objs,
                                          desc="png-masks"):
            _write_frame(tmp, f, insts, layout, blacks)
        _write(tmp / "objects.json", json.dumps(_objects_doc(layout), indent=2).encode())
    return out


def _plan_layout(
    store: StoreReader,
    objects: Iterable[int] | None,
    start: int | None,
    stop: int | None,
    sequence: str,
    index: bool,
) -> _Layout:
    """Frames, objects, folders, pixel values and palette, from a pass that decodes no mask."""
    media_full = require_media(store)
    frames = select_frames(media_full, start, stop)
    media = sub_media(media_full, frames)
    objs = select_objects(store, objects)

    visible = _visible_frames(store, frames, objs)
    wanted = set(frames)
    shown = [o for o in objs if any(f in wanted for f in visible[o.id])]
    colors = {o.id: o.color or color_for_index(o.id) for o in objs}
    palette = [0, 0, 0]
    for o in objs[:255]:
        palette.extend(color_to_rgb(colors[o.id]))
    palette.extend([0, 0, 0] * (256 - len(palette) // 3))
    return _Layout(
        frames=frames,
        media=media,
        objs=objs,
        shown=shown,
        visible=visible,
        wanted=wanted,
        width=max(4, len(str(max(frames)))),
        folders={o.id: f"{o.id:03d}_{safe_name(o.label)}" for o in shown},
        values={o.id: k + 1 for k, o in enumerate(objs)},
        colors=colors,
        wide=len(objs) > 255,
        palette=palette,
        sequence=sequence,
        index=index,
    )


def _visible_frames(
    store: StoreReader, frames: list[int], objs: list[ObjectInfo]
) -> dict[int, list[int]]:
    """Object id -> frames where it is visible; cheap, as it reads instances without their masks."""
    visible: dict[int, list[int]] = {o.id: [] for o in objs}
    for f, insts in store.iter_frames(start=frames[0], stop=frames[-1], objects=[o.id for o in objs],
                                      decode=False):
        for inst in insts:
            if not inst.is_empty:
                visible[inst.object_id].append(f)
    return visible


def _write_frame(
    tmp: Path, f: int, insts: Instances, layout: _Layout, blacks: dict[tuple[int, int], bytes]
) -> None:
    """Frame ``f``'s mask PNG of each shown object and its index PNG."""
    w, h = layout.media.size_of(f)
    ids = np.zeros((h, w), dtype=np.uint16 if layout.wide else np.uint8)
    by_obj = insts.by_object()
    for o in layout.objs:  # id order: a later (higher id) object overwrites overlaps
        mine = by_obj.get(o.id)
        m = None
        if mine is not None and not mine.is_empty:
            m = instance_mask(mine, h, w)
            if layout.index:
                ids[m] = layout.values[o.id]
        if o.id in layout.folders and (m is not None or layout.sequence == "media"):
            if m is None:
                if (w, h) not in blacks:
                    blacks[(w, h)] = _png_bytes(np.zeros((h, w), dtype=np.uint8))
                data = blacks[(w, h)]
            else:
                data = _png_bytes(m.view(np.uint8) * np.uint8(255))
            _write(tmp / layout.folders[o.id] / f"mask_{f:0{layout.width}d}.png", data)
    if layout.index:
        _write(tmp / "ids" / f"ids_{f:0{layout.width}d}.png",
               _png_bytes(ids, None if layout.wide else layout.palette))


def _objects_doc(layout: _Layout) -> dict[str, Any]:
    """``objects.json``: how a reader finds each object's files and maps index values to objects."""
    media = layout.media
    width = layout.width
    media_doc: dict[str, Any] = {"name": media.name, "width": media.width, "height": media.height,
                                 "frames": layout.frames, "start": media.start, "step": media.step}
    if media.frame_sizes:  # images of different sizes: each frame's [width, height]
        media_doc["frame_sizes"] = [list(wh) for wh in media.frame_sizes]
    return {
        "media": media_doc,
        "mask_pattern": f"{{folder}}/mask_%0{width}d.png",
        "sequence": layout.sequence,
        "index": {
            "pattern": f"ids/ids_%0{width}d.png" if layout.index else None,
            "mode": "I;16" if layout.wide else "P",
            "background": 0,
            "overlap": "the object with the higher id wins",
        },
        "objects": [
            {
                "id": o.id,
                "label": o.label,
                "color": layout.colors[o.id],
                "value": layout.values[o.id],
                "folder": layout.folders.get(o.id),
                "first": min(layout.visible_in_range(o.id), default=None),
                "last": max(layout.visible_in_range(o.id), default=None),
                "visible_frames": len(layout.visible_in_range(o.id)),
            }
            for o in layout.objs
        ],
    }
