"""The one annotation model every layer speaks.

Engines produce :class:`Instance` objects, the store (:mod:`dl_utils.store`) persists them, sinks
(:mod:`dl_utils.formats`, CVAT) read them back. Keeping a single small vocabulary here means no layer
needs to know another's internals: a CVAT polygon, a COCO RLE and a SAM2 logit map all become the
same ``Instance`` with a full-frame boolean mask.

Conventions (shared by every module):

* frames are **source frame numbers** (what :func:`dl_utils.video_utils.open_frames` reports for each
  kept frame), never positions in a filtered sequence; CVAT's frame ``i`` is ``start + i * step``;
* boxes are ``(x1, y1, x2, y2)`` in source pixels with exclusive right/bottom edges (a one-pixel mask
  at (x, y) has box ``(x, y, x + 1, y + 1)``), the convention of COCO/supervision;
* masks are ``bool`` arrays of shape ``(height, width)`` of the full frame;
* an instance whose mask is empty means "processed, object not visible": engines write it so the
  store knows the frame is done, sinks turn it into ``outside`` / no shape.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Sequence, overload

import numpy as np

from .errors import InputError, MaskError

Box = tuple[float, float, float, float]


class Source(str, enum.Enum):
    """Who made an instance; the CVAT sink maps these to CVAT's ``source`` field."""

    MANUAL = "manual"  # drawn by a person (or pulled from CVAT)
    AUTO = "auto"  # model output with no human prompt on that frame
    SEMI_AUTO = "semi-auto"  # model output from a human prompt / correction

    @classmethod
    def parse(cls, value: "str | Source") -> "Source":
        try:
            return cls(value)
        except ValueError:
            raise InputError(
                f"unknown instance source {value!r}: use one of "
                + ", ".join(repr(s.value) for s in cls)
            ) from None


class ShapeType(str, enum.Enum):
    """The geometry an instance was made as (kept so sinks can round-trip boxes and polygons)."""

    MASK = "mask"
    POLYGON = "polygon"
    BOX = "box"


_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


def normalize_color(color: "str | Sequence[int] | None") -> str | None:
    """Return ``#rrggbb`` (CVAT's colour format) from a hex string or an RGB triple."""
    if color is None:
        return None
    if isinstance(color, str):
        c = color.strip()
        if not c.startswith("#"):
            c = "#" + c
        if len(c) == 4:  # #abc -> #aabbcc
            c = "#" + "".join(ch * 2 for ch in c[1:])
        if not _HEX.match(c):
            raise InputError(f"colour {color!r} is not '#rrggbb' or an (r, g, b) triple")
        return c.lower()
    vals = list(color)
    if len(vals) != 3 or not all(0 <= int(v) <= 255 for v in vals):
        raise InputError(f"colour {color!r} is not '#rrggbb' or an (r, g, b) triple of 0..255")
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in vals))


def color_to_rgb(color: str) -> tuple[int, int, int]:
    c = normalize_color(color)
    assert c is not None
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


@dataclass(frozen=True)
class Label:
    """A class a task knows: name, colour, CVAT shape type and an optional superclass."""

    name: str
    color: str | None = None
    id: int | None = None
    superclass: str | None = None
    type: str = "any"  # CVAT label type: any, mask, polygon, rectangle, ...
    attributes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise InputError("a label needs a non-empty name")
        object.__setattr__(self, "color", normalize_color(self.color))


@dataclass
class ObjectInfo:
    """One tracked object: a stable id, its label, free attributes and a display colour."""

    id: int
    label: str
    color: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.id) < 0:
            raise InputError(f"object id {self.id} is negative: ids are integers >= 0")
        self.id = int(self.id)
        self.color = normalize_color(self.color)


def box_from_mask(mask: np.ndarray) -> Box | None:
    """Tight box ``(x1, y1, x2, y2)`` (exclusive right/bottom) of a mask, ``None`` if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))  # only the rows that matter
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


@dataclass
class Instance:
    """One object on one frame.

    ``mask`` is the canonical geometry; ``box`` is derived from it when not given (and is the only
    geometry of a :attr:`ShapeType.BOX` instance); ``polygon`` keeps the vertices of an instance made
    as a polygon (a list of flat ``[x0, y0, x1, y1, ...]`` rings) so a CVAT polygon round-trips.
    ``prompts`` is a JSON-able dict of what produced the instance (points, box, text...).
    """

    object_id: int
    mask: np.ndarray | None = None
    box: Box | None = None
    score: float | None = None
    source: Source = Source.AUTO
    prompts: dict[str, Any] | None = None
    polygon: list[list[float]] | None = None
    shape: ShapeType | None = None
    keyframe: bool = False

    def __post_init__(self) -> None:
        self.object_id = int(self.object_id)
        self.source = Source.parse(self.source)
        if self.mask is not None:
            m = np.asarray(self.mask)
            if m.ndim != 2:
                raise MaskError(
                    f"object {self.object_id}: mask has shape {m.shape}, expected (height, width)"
                )
            self.mask = m if m.dtype == np.bool_ else m.astype(bool)
        # remembered so the store can reuse the box instead of scanning the mask again
        self._box_from_mask = self.box is None and self.mask is not None
        if self._box_from_mask and self.mask is not None:  # (the second test is for the type checker)
            self.box = box_from_mask(self.mask)
        if self.box is not None:
            self.box = tuple(float(v) for v in self.box)  # type: ignore[assignment]
        if self.shape is None:
            if self.polygon is not None:
                self.shape = ShapeType.POLYGON
            elif self.mask is not None or self.box is None:
                self.shape = ShapeType.MASK
            else:
                self.shape = ShapeType.BOX
        else:
            self.shape = ShapeType(self.shape)
        if self.score is not None:
            self.score = float(self.score)

    @property
    def is_empty(self) -> bool:
        """True when the object is not visible on this frame (processed, nothing to draw)."""
        if self.mask is not None:
            return self.box is None
        if self.polygon is not None:
            return len(self.polygon) == 0
        return self.box is None

    @property
    def area(self) -> int:
        if self.mask is not None:
            return int(np.count_nonzero(self.mask))
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            return int(round(max(0.0, x2 - x1) * max(0.0, y2 - y1)))
        return 0

    def check_size(self, height: int, width: int, *, frame: int | None = None) -> None:
        """Raise :class:`MaskError` naming the frame when the mask does not fit the frame."""
        if self.mask is not None and self.mask.shape != (height, width):
            where = f"frame {frame}, " if frame is not None else ""
            raise MaskError(
                f"{where}object {self.object_id}: mask is {self.mask.shape[1]}x{self.mask.shape[0]}"
                f" but the frame is {width}x{height}; resize the mask to the frame size"
            )

    def replace(self, **changes: Any) -> "Instance":
        return replace(self, **changes)


class Instances(Sequence[Instance]):
    """All instances of one frame, with vectorised views (like supervision's ``Detections``)."""

    def __init__(self, items: Iterable[Instance] = (), *, frame: int | None = None):
        self._items = list(items)
        self.frame = frame
        seen: set[int] = set()
        for inst in self._items:
            if inst.object_id in seen:
                raise InputError(
                    f"frame {frame}: object {inst.object_id} appears twice; one instance per object"
                    " per frame"
                )
            seen.add(inst.object_id)

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> Instance: ...

    @overload
    def __getitem__(self, i: slice) -> "Instances": ...

    def __getitem__(self, i: int | slice) -> "Instance | Instances":
        if isinstance(i, slice):
            return Instances(self._items[i], frame=self.frame)
        return self._items[i]

    def __iter__(self) -> Iterator[Instance]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"Instances(frame={self.frame}, objects={self.object_ids.tolist()})"

    @property
    def object_ids(self) -> np.ndarray:
        return np.array([i.object_id for i in self._items], dtype=np.int64)

    @property
    def boxes(self) -> np.ndarray:
        """``(N, 4)`` float array; NaN rows for empty instances."""
        out = np.full((len(self._items), 4), np.nan, dtype=np.float64)
        for k, inst in enumerate(self._items):
            if inst.box is not None:
                out[k] = inst.box
        return out

    @property
    def scores(self) -> np.ndarray:
        return np.array(
            [np.nan if i.score is None else i.score for i in self._items], dtype=np.float64
        )

    def masks(self, height: int, width: int) -> np.ndarray:
        """``(N, H, W)`` bool stack; box-only instances are filled as their box."""
        out = np.zeros((len(self._items), height, width), dtype=bool)
        for k, inst in enumerate(self._items):
            if inst.mask is not None:
                inst.check_size(height, width, frame=self.frame)
                out[k] = inst.mask
            elif inst.box is not None:
                x1, y1, x2, y2 = (int(round(v)) for v in inst.box)
                out[k, max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)] = True
        return out

    def visible(self) -> "Instances":
        return Instances([i for i in self._items if not i.is_empty], frame=self.frame)

    def by_object(self) -> dict[int, Instance]:
        return {i.object_id: i for i in self._items}


@dataclass
class MediaInfo:
    """What the store and the sinks need to know about the annotated media.

    ``frames`` lists the source frame numbers that belong to the job (``start, start+step, ...``);
    ``frame_names`` gives each one's file name for image sets (COCO ``file_name``, CVAT ``<image
    name>``) and is ``None`` for a video.

    ``width``/``height`` is the size of every frame of a video and of the first image of an image set.
    Photos in one folder rarely share a size, so an image set whose images differ also carries
    ``frame_sizes``: one ``(width, height)`` per entry of ``frames``. Read a frame's size with
    :meth:`size_of`, never ``width``/``height`` directly, wherever a frame may be an image. Stores
    written before per-frame sizes existed have ``frame_sizes=None`` and open unchanged.
    """

    name: str
    width: int
    height: int
    frames: list[int]
    fps: float | None = None
    start: int = 0
    stop: int | None = None
    step: int = 1
    frame_names: list[str] | None = None
    path: str | None = None
    frame_sizes: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise InputError(f"media {self.name!r}: size {self.width}x{self.height} is not positive")
        if self.frame_names is not None and len(self.frame_names) != len(self.frames):
            raise InputError(
                f"media {self.name!r}: {len(self.frame_names)} frame names for {len(self.frames)} frames"
            )
        if self.frame_sizes is not None:
            sizes = [(int(w), int(h)) for w, h in self.frame_sizes]
            if len(sizes) != len(self.frames):
                raise InputError(
                    f"media {self.name!r}: {len(sizes)} frame sizes for {len(self.frames)} frames"
                )
            for f, (w, h) in zip(self.frames, sizes):
                if w <= 0 or h <= 0:
                    raise InputError(f"media {self.name!r}: frame {f} has size {w}x{h}, not positive")
            # one size for all: keep the compact form (what a video or a uniform set has)
            uniform = all(wh == (self.width, self.height) for wh in sizes)
            self.frame_sizes = None if uniform else sizes

    @property
    def mixed_sizes(self) -> bool:
        """True when the frames do not all have ``width`` x ``height`` (an image set of photos)."""
        return self.frame_sizes is not None

    def size_of(self, frame: int) -> tuple[int, int]:
        """``(width, height)`` of source frame ``frame`` (its own size in a mixed image set)."""
        if self.frame_sizes is None:
            return self.width, self.height
        return self.frame_sizes[self.task_index(frame)]

    def sizes(self) -> list[tuple[int, int]]:
        """``(width, height)`` of every frame, in the order of ``frames``."""
        if self.frame_sizes is None:
            return [(self.width, self.height)] * len(self.frames)
        return list(self.frame_sizes)

    def task_index(self, frame: int) -> int:
        """CVAT's task-relative frame index of a source frame number."""
        try:
            return self._index()[frame]
        except KeyError:
            raise InputError(
                f"frame {frame} is not part of {self.name!r} (start={self.start}, step={self.step},"
                f" {len(self.frames)} frames)"
            ) from None

    def index_map(self) -> dict[int, int]:
        """Source frame number -> CVAT task frame index for every frame (cached: do not modify it);
        one dict lookup per frame where ``task_index`` would raise for a frame not in the media."""
        return self._index()

    def _index(self) -> dict[int, int]:
        cache = self.__dict__.get("_index_cache")
        if cache is None or len(cache) != len(self.frames):
            cache = {f: i for i, f in enumerate(self.frames)}
            self.__dict__["_index_cache"] = cache
        return cache

    def frame_name(self, frame: int) -> str:
        if self.frame_names is not None:
            return self.frame_names[self.task_index(frame)]
        return f"frame_{frame:06d}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "frames": list(self.frames),
            "fps": self.fps,
            "start": self.start,
            "stop": self.stop,
            "step": self.step,
            "frame_names": self.frame_names,
            "path": self.path,
            # written only when the sizes differ, so a uniform store's meta stays what it was
            **({"frame_sizes": [list(wh) for wh in self.frame_sizes]} if self.frame_sizes else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MediaInfo":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})  # type: ignore[arg-type]


__all__ = [
    "Box",
    "Source",
    "ShapeType",
    "Label",
    "ObjectInfo",
    "Instance",
    "Instances",
    "MediaInfo",
    "box_from_mask",
    "normalize_color",
    "color_to_rgb",
]
