"""Which masks teach SAM2: the people's corrections, read from stores or a folder of PNG masks.

Fine-tuning on the engine's own unreviewed output would teach the model its own mistakes, so
:func:`from_stores` selects by default only what a person made or checked (``select="reviewed"``):

* **keyframes** — frames a person clicked or locked (``Instance.keyframe``);
* instances whose ``provenance.from_person`` is true — pulled from CVAT, imported from a file, drawn;
* instances whose ``source`` is ``manual``.

``select="all"`` adds the engine's unreviewed output (propagated frames, detector masks); it has to be
asked for. Empty instances (object not visible) teach nothing and are skipped; polygon and box
instances are rasterised (``Instances.masks``).

:func:`from_folder_pair` reads ``root/images/<stem>.<ext>`` with ``root/masks/<stem>.png`` (one object)
or ``root/masks/<stem>_<k>.png`` (object ``k`` of that image, ``k`` an integer; an exact stem match
wins, so an image ``a_1.jpg`` owns ``a_1.png``). A mask is binary: any non-zero pixel is the object.

Frames are decoded on demand through :mod:`dl_utils.video_utils` (one open source per media), so a
dataset holds masks, never pixels. Every sample carries a :class:`FrameRef` whose ``group`` is the
split unit: the video file for a video, the image file for an image set.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..annotations import Instance, Instances, MediaInfo, Source
from ..errors import DlUtilsError, InputError, MaskError, MediaError
from ..splits import GroupSet, check_distinct_stores, group_key, media_group
from ..store import AnnotationStore
from ..video_utils import IMAGE_EXTENSIONS, FrameSource, open_frames

SELECT = ("reviewed", "all")
ORIGINS = ("keyframe", "cvat", "import", "person", "engine", "folder")


@dataclass(frozen=True)
class FrameRef:
    """One frame of one media file: where to decode it and which split unit it belongs to."""

    media: str  # path of the video file, image folder or image file
    frame: int  # source frame number (what open_frames reports)
    group: str  # split unit: the video, or the image file of an image set
    name: str  # for messages: "clip.mp4 frame 12" or "img_003.jpg"
    # how the store numbered the media's frames (dl_utils.video_utils.open_frames): a shot numbered
    # from its file names, or a video from --first-frame N, must be reopened the same way, else
    # frame 1001 would name another picture (or none)
    numbering: str = "index"
    first_frame: int = 0


@dataclass
class MaskSample:
    """One object's mask on one frame, with where it came from (``origin``, one of ``ORIGINS``)."""

    ref: FrameRef
    object_id: int
    label: str
    mask: np.ndarray  # bool (H, W), full frame
    origin: str


@dataclass
class MaskDataset:
    """Masks to train or evaluate on; frames decoded lazily (see the module docstring).

    ``sources`` are the stores or folders read (recorded in a fine-tuned checkpoint's sidecar),
    ``select`` the selection rule, ``by`` what a group is: ``"group"`` when any sample comes from a
    video (whole videos go to one side of a split), ``"item"`` when all come from images.
    """

    samples: list[MaskSample]
    sources: tuple[str, ...] = ()
    select: str = "reviewed"
    by: str = "item"
    _open: dict[tuple[str, str, int], FrameSource] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[MaskSample]:
        return iter(self.samples)

    def frames(self) -> list[FrameRef]:
        """The distinct frames, in the order their first sample appears."""
        return list(dict.fromkeys(s.ref for s in self.samples))

    def labels(self) -> list[str]:
        return sorted({s.label for s in self.samples})

    def groups(self) -> list[str]:
        return sorted({s.ref.group for s in self.samples})

    def subset(self, groups: Iterable[str]) -> "MaskDataset":
        """The samples of ``groups`` (e.g. one side of a :class:`~dl_utils.splits.Split`)."""
        keep = GroupSet(groups)  # a split by the old group rule matches too (Split.side)
        return MaskDataset(
            [s for s in self.samples if s.ref.group in keep], self.sources, self.select, self.by, self._open
        )

    def fingerprint(self) -> str:
        """sha256 over every sample (frame, object, label, mask bits): a resumed training run checks
        it so a checkpoint is never continued on other data."""
        h = hashlib.sha256()
        for s in self.samples:
            h.update(f"{s.ref.media}\0{s.ref.frame}\0{s.ref.group}\0{s.object_id}\0{s.label}\0".encode())
            h.update(np.packbits(s.mask).tobytes())
            h.update(repr(s.mask.shape).encode())
        return h.hexdigest()

    def image(self, ref: FrameRef) -> np.ndarray:
        """The frame's pixels, RGB uint8 (H, W, 3); ``MediaError`` naming media and frame otherwise."""
        try:
            key = (ref.media, ref.numbering, ref.first_frame)
            src = self._open.get(key)
            if src is None:
                src = self._open[key] = open_frames(ref.media, frame_numbers=ref.numbering,
                                                    first_frame=ref.first_frame)
            img = src.get_frame(ref.frame)
        except DlUtilsError as e:
            raise MediaError(
                f"{ref.name}: cannot read frame {ref.frame} of {ref.media} ({e}); the media changed or"
                " moved since it was annotated: put the original file back, or leave this store out"
            ) from None
        return np.ascontiguousarray(img)

    def close(self) -> None:
        for src in self._open.values():
            src.close()
        self._open.clear()


def merge(datasets: Sequence[MaskDataset]) -> MaskDataset:
    """One dataset of several (their samples in order)."""
    return MaskDataset(
        [s for d in datasets for s in d.samples],
        tuple(p for d in datasets for p in d.sources),
        datasets[0].select if datasets else "reviewed",
        "group" if any(d.by == "group" for d in datasets) else "item",
    )


# ----------------------------------------------------------------------------- stores
def origin_of(inst: Instance) -> str:
    """Where an instance's mask came from, most trustworthy reason first."""
    prov = inst.provenance
    if prov is not None and (prov.cvat is not None or prov.engine == "cvat"):
        return "cvat"
    if prov is not None and prov.engine == "import":
        return "import"
    if prov is not None and prov.engine == "person":
        return "person"
    if inst.keyframe:
        return "keyframe"
    if inst.source == Source.MANUAL:
        return "person"
    return "engine"


def is_reviewed(inst: Instance) -> bool:
    """A person made or checked it: a keyframe, an instance from a person, or a manual one."""
    return origin_of(inst) != "engine"


def _media_path(store: AnnotationStore, media: MediaInfo) -> str:
    """The media's path as the store recorded it, found as given or beside the store."""
    if not media.path:
        raise MediaError(
            f"{store.path}: the store records no media path, so its frames cannot be read; annotate"
            " from the video or image folder (dl-utils annotate/segment), or pull into such a store"
        )
    given = Path(media.path)
    for p in (given, store.path.parent / given):
        # a glob pattern (an imported YOLO dataset's images/*/*) is there when it matches a file
        if p.exists() or (glob.has_magic(str(p)) and glob.glob(str(p))):
            return str(p)
    raise MediaError(
        f"{store.path}: its media {media.path} does not exist (looked as given and beside the store);"
        " put the video or image folder back where it was annotated"
    )


def _frame_ref(media: MediaInfo, path: str, frame: int, named: str) -> FrameRef:
    """``path``: where the media is read from; ``named``: what its groups are named by
    (:func:`dl_utils.splits.media_group`, the same from every working folder, as the dataset tools
    name them: :func:`dl_utils.datasets.groups.frame_groups`)."""
    if media.frame_names is not None:  # image set: each image is its own split unit
        try:
            fname = media.frame_names[media.task_index(frame)]
        except InputError:
            fname = f"frame {frame}"
        # an image set recorded as one file has nothing to join a name to; a folder or a glob pattern
        # (an imported YOLO dataset's images/*/*) has: each image its own group, as frame_groups says
        group = group_key(named, None if Path(path).is_file() else fname)
        return FrameRef(media=path, frame=frame, group=group, name=fname, numbering=media.numbering,
                        first_frame=media.first_frame)
    return FrameRef(media=path, frame=frame, group=group_key(named), name=f"{Path(path).name} frame {frame}",
                    numbering=media.numbering, first_frame=media.first_frame)


def _store_samples(path: Path, select: str) -> tuple[list[MaskSample], bool]:
    """The selected samples of one store, and whether its media is a video."""
    with AnnotationStore.open(path, readonly=True) as store:
        media = store.media
        if media is None:
            raise InputError(f"{path}: the store has no media record; it was not written by dl-utils")
        mpath = _media_path(store, media)
        named = media_group(media.path, store.path)
        names = {o.id: o.label for o in store.objects()}
        out: list[MaskSample] = []
        for frame, insts in store.iter_frames():
            for inst in insts:
                if inst.is_empty or (select == "reviewed" and not is_reviewed(inst)):
                    continue
                try:
                    w, h = media.size_of(frame)
                except InputError:
                    w, h = media.width, media.height
                if inst.mask is not None and inst.mask.shape != (h, w):
                    raise MaskError(
                        f"{path}: frame {frame}, object {inst.object_id}: mask is {inst.mask.shape[1]}x"
                        f"{inst.mask.shape[0]} but the frame is {w}x{h}; re-import or re-pull this"
                        " object's masks at the frame size"
                    )
                mask = inst.mask if inst.mask is not None else Instances([inst], frame=frame).masks(h, w)[0]
                if not mask.any():
                    continue
                label = names.get(inst.object_id) or inst.label or "object"
                out.append(MaskSample(_frame_ref(media, mpath, frame, named), inst.object_id, label, mask,
                                      origin_of(inst)))
        return out, media.frame_names is None


def from_stores(paths: Sequence[str | os.PathLike[str]], *, select: str = "reviewed") -> MaskDataset:
    """The masks of annotation stores: what people made or corrected (``select="reviewed"``), or
    also the engine's unreviewed output (``select="all"``). See the module docstring."""
    if select not in SELECT:
        raise InputError(f"select={select!r}: use 'reviewed' (people's masks, the default) or 'all'")
    if not paths:
        raise InputError("no annotation stores given: pass one or more .sqlite stores")
    check_distinct_stores(paths)  # one store twice would train (and validate) on its masks twice
    samples: list[MaskSample] = []
    video = False
    for p in paths:
        found, is_video = _store_samples(Path(p), select)
        samples += found
        video = video or is_video
    if not samples:
        names = ", ".join(str(p) for p in paths)
        hint = (
            "no keyframe, CVAT-pulled, imported or drawn mask; correct some frames first (clicks in the"
            " widget, or `dl-utils cvat pull` after reviewing in CVAT), or train on the engine's output"
            " too with --select all (select='all')"
            if select == "reviewed"
            else "every instance is empty; annotate some frames first"
        )
        raise InputError(f"select={select!r} found no masks in {names}: {hint}")
    return MaskDataset(samples, tuple(str(p) for p in paths), select, "group" if video else "item")


# ----------------------------------------------------------------------------- folder pair
_OBJECT_SUFFIX = re.compile(r"^(?P<stem>.+)_(?P<k>\d+)$")


def _read_mask(path: Path) -> np.ndarray:
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    m = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if m is None:
        raise MaskError(f"{path} is not a readable mask image; save masks as binary PNGs (0 = background)")
    return (m != 0).any(axis=2) if m.ndim == 3 else m != 0


def _pair_masks(images: dict[str, Path], masks_dir: Path) -> dict[str, list[tuple[int, Path]]]:
    """Image stem -> [(object id, mask file)], exact stems first, then ``<stem>_<k>``."""
    owned: dict[str, list[tuple[int, Path]]] = {stem: [] for stem in images}
    for mp in sorted(masks_dir.iterdir()):
        if mp.name.startswith(".") or not mp.is_file():
            continue
        if mp.stem in images:
            owned[mp.stem].append((1, mp))
            continue
        m = _OBJECT_SUFFIX.match(mp.stem)
        if m and m["stem"] in images:
            owned[m["stem"]].append((int(m["k"]), mp))
            continue
        raise InputError(
            f"{mp}: no image in {masks_dir.parent / 'images'} has the stem {mp.stem!r}"
            f"{' or ' + repr(m['stem']) if m else ''}; name a mask <image stem>.png or <image stem>_<k>.png,"
            " or remove it"
        )
    return owned


def from_folder_pair(root: str | os.PathLike[str], *, label: str | None = None) -> MaskDataset:
    """``root/images/*`` with binary masks ``root/masks/<stem>.png`` / ``<stem>_<k>.png`` (see the
    module docstring); ``label`` defaults to the folder's name ("object" when it has none)."""
    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise InputError(f"{d} is not a folder: a folder pair is ROOT/images/* and ROOT/masks/*.png")
    images = {p.stem: p for p in sorted(img_dir.iterdir())
              if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}
    if not images:
        raise InputError(f"{img_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    owned = _pair_masks(images, mask_dir)
    name = label or root.resolve().name or "object"
    samples: list[MaskSample] = []
    for stem, img_path in images.items():
        if not owned[stem]:
            raise InputError(
                f"{img_path}: no mask {mask_dir / (stem + '.png')} (or {stem}_<k>.png); add its mask or"
                " move the image out of the folder"
            )
        from ..video_utils.sources import image_size

        w, h = image_size(img_path)
        ref = FrameRef(media=str(img_path), frame=0, group=group_key(img_path), name=img_path.name)
        for k, mp in sorted(owned[stem]):
            mask = _read_mask(mp)
            if mask.shape != (h, w):
                raise MaskError(
                    f"{mp}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {img_path.name} is"
                    f" {w}x{h}; save the mask at the image's size"
                )
            if mask.any():
                samples.append(MaskSample(ref, k, name, mask, "folder"))
    if not samples:
        raise InputError(f"{mask_dir}: every mask is empty (all zero); nothing to train on")
    return MaskDataset(samples, (str(root),), "reviewed", "item")


__all__ = [
    "ORIGINS",
    "SELECT",
    "FrameRef",
    "MaskDataset",
    "MaskSample",
    "from_folder_pair",
    "from_stores",
    "is_reviewed",
    "merge",
    "origin_of",
]
