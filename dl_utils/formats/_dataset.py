"""What the training-data exports (YOLO, COCO per split) share: class ids from a class table,
train/val/test sides from a split, unique picture names, and the pictures themselves, read from the
source once and in order.

Kept apart from the per-format writers so the YOLO and COCO datasets of the same stores, split and
table name the same pictures, put them on the same sides and number the classes the same way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import cv2
import numpy as np

from ..errors import FormatError, InputError, OutputError
from ._common import export_labels, output_error, safe_name

if TYPE_CHECKING:
    from ..annotations import MediaInfo
    from ..classes import ClassTable
    from ..splits import Split
    from ..store import StoreReader

SIDES = ("train", "val", "test")
IMAGE_FORMATS = ("jpg", "png")
#: the suffixes an image set's file may have to be copied as it is, for each picture format
SAME_FORMAT = {"jpg": (".jpg", ".jpeg"), "png": (".png",)}


# ================================================================================ classes
def class_names(stores: Sequence["StoreReader"], table: "ClassTable | None") -> list[str]:
    """The exported class names in id order: the table's rows, else the sorted union of the
    stores' label names (so the same stores give the same ids whatever order they come in)."""
    if table is not None:
        return [c.name for c in table]
    names: set[str] = set()
    for s in stores:
        names.update(lb.name for lb in export_labels(s, s.objects()))
    return sorted(names)


def class_ids(store: "StoreReader", names: list[str], table: "ClassTable | None") -> dict[str, int]:
    """Store label name -> index into ``names``, for every label an object of the store has.

    With a table, labels are matched by name or synonym (``ClassTable.resolve``); a label the
    table lacks is refused in one line naming the label, the store and the table."""
    index = {n: i for i, n in enumerate(names)}
    out: dict[str, int] = {}
    for o in store.objects():
        if o.label in out:
            continue
        if table is None:
            out[o.label] = index[o.label]
            continue
        info = table.resolve(o.label)
        if info is None:
            raise InputError(
                f"label {o.label!r} of {store.path} is not in the class table {table.source}; add it"
                " (or a synonym of a class) to the table, or rename it (dl-utils dataset remap)"
            )
        out[o.label] = index[info.name]
    return out


# ================================================================================ sides
def dataset_media(store: "StoreReader") -> "MediaInfo":
    """The store's media record, or a one-line error a command-line user can act on (the shared
    ``require_media`` speaks to a Python caller: ``store.set_media(...)``)."""
    media = store.media
    if media is None:
        raise InputError(
            f"{store.path}: the store has no media record (frame sizes and numbers), so it has no frames"
            " to export; it was not written by dl-utils (annotate, import or pull into it first)"
        )
    return media


def sides_of(store: "StoreReader", split: "Split | None", split_name: str = "") -> dict[int, str]:
    """Frame -> ``"train"|"val"|"test"`` for the store's media frames (all ``"train"`` without a
    split). The groups are :func:`dl_utils.datasets.groups.frame_groups`' (the rule ``dataset
    split`` made the file by); a group the split does not know is refused in one line."""
    media = dataset_media(store)
    if split is None:
        return {f: "train" for f in media.frames}
    from ..datasets.groups import frame_groups

    out: dict[int, str] = {}
    # by="group" whatever the split's ``by``: an image's group is the same either way, and a video
    # has only whole-video groups (by="item" is refused for it)
    for f, g in frame_groups(store).items():
        side = split.side(g)
        if side is None:
            raise InputError(
                f"{store.path}: frame group {g!r} is not in the split {split_name or '(given)'}; make"
                " the split again including this store (dl-utils dataset split)"
            )
        out[f] = side
    return out


# ================================================================================ pictures
def frames_to_write(store: "StoreReader", media: "MediaInfo", include_empty: bool) -> list[int]:
    """The frames a dataset export writes a picture for: every frame of the media with
    ``include_empty`` (background pictures), else the annotated ones, in media order."""
    if include_empty:
        return list(media.frames)
    return sorted(set(store.frames()) & set(media.frames))


def picture_stem(media_name: str, frame: int, frame_name: str | None) -> str:
    """A picture's file stem: an image keeps its own, a video frame is ``<video stem>_<frame:06d>``."""
    if frame_name is not None:
        return safe_name(Path(frame_name).stem)
    return f"{safe_name(Path(media_name).stem)}_{frame:06d}"


def unique_stem(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem_2``, ``stem_3`` ... when taken. Stores are taken in the order given and
    frames in increasing order, so the same inputs always give the same names."""
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


class Pictures:
    """The pictures of one store's media, handed out in increasing frame order.

    A video is decoded once, front to back (frames asked for are returned, the rest passed over:
    one decoder, no seeking, nothing kept); an image of an image set is read, or copied as it is,
    on its own. The media is found where :func:`dl_utils.datasets.groups.media_path` finds it (as
    recorded, else beside the store)."""

    def __init__(self, store: "StoreReader", frames: list[int]) -> None:
        from ..datasets.groups import media_path
        from ..video_utils import open_media

        media = dataset_media(store)
        self.media: MediaInfo = media
        if not media.path:
            raise InputError(
                f"{store.path}: its media record has no path, so the pictures cannot be read; export"
                " from a store made from the video or image folder (annotate, or import with the media)"
            )
        self.src = open_media(media, media_path(store))
        self.is_images = hasattr(self.src, "file_of")
        self._it: Iterator[tuple[int, np.ndarray]] | None = None
        if not self.is_images and frames:
            self._it = self.src.iter_numbered(frames[0], frames[-1])

    def file(self, frame: int) -> Path | None:
        """The image file of ``frame`` (an image set), ``None`` for a video."""
        return Path(self.src.file_of(frame)) if self.is_images else None  # type: ignore[attr-defined]

    def image(self, frame: int) -> np.ndarray:
        """RGB picture of ``frame``; a video's frames must be asked for in increasing order."""
        if self.is_images:
            return self.src.get_frame(frame)
        assert self._it is not None
        for f, img in self._it:
            if f == frame:
                return img
            if f > frame:
                break
        raise FormatError(f"{self.media.name}: frame {frame} could not be decoded (the video ends"
                          " earlier than its store says); re-create the store from this video")

    def close(self) -> None:
        self.src.close()

    def write(self, frame: int, folder: Path, stem: str, image_format: str = "jpg",
              jpeg_quality: int = 95, link: bool = False) -> tuple[str, bool]:
        """Put ``frame``'s picture in ``folder`` as ``stem.<ext>``: an image file already in
        ``image_format`` is copied (or hard-linked) unchanged, anything else encoded. Returns the
        file name and whether it was copied."""
        src = self.file(frame)
        if src is not None and src.suffix.lower() in SAME_FORMAT[image_format]:
            dst = folder / f"{stem}{src.suffix.lower()}"
            place_file(src, dst, link)
            return dst.name, True
        img = self.image(frame)
        w, h = self.media.size_of(frame)
        if (img.shape[1], img.shape[0]) != (w, h):
            raise FormatError(
                f"{self.media.name}: frame {frame} is {img.shape[1]}x{img.shape[0]} but the store says"
                f" {w}x{h}; the media changed since it was annotated: re-create the store"
            )
        dst = folder / f"{stem}.{image_format}"
        write_image(dst, img, image_format, jpeg_quality)
        return dst.name, False


def write_image(path: Path, rgb: np.ndarray, image_format: str, jpeg_quality: int = 95) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if image_format == "jpg" else []
    ok, buf = cv2.imencode("." + image_format, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OutputError(f"cannot encode {path.name} as {image_format}")
    try:
        buf.tofile(str(path))
    except OSError as e:
        raise output_error(path, e) from None


def place_file(src: Path, dst: Path, link: bool) -> None:
    """Copy ``src`` to ``dst``; with ``link`` a hard link where the file system allows one."""
    try:
        if link:
            try:
                os.link(src, dst)
                return
            except OSError:
                pass  # another file system, or links not allowed: copy
        shutil.copyfile(src, dst)
    except OSError as e:
        raise output_error(dst, e) from None
