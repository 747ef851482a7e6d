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
from typing import Any, Iterable, Iterator, Mapping, Sequence, overload

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


JSONValue = Any  # what json.dumps accepts; engine-specific facts kept in Provenance.extra


def _tuple_box(value: Any) -> Box | None:
    if value is None:
        return None
    v = tuple(float(x) for x in value)
    if len(v) != 4:
        raise InputError(f"box {value!r} is not (x1, y1, x2, y2)")
    return v  # narrowed to Box by the length test


@dataclass(frozen=True)
class Clicks:
    """What a person (or a detector box standing in for one) gave the segmenter on one frame.

    Kept on keyframes so the widget can show and edit the clicks again after a reload and a
    re-propagation can replay them. ``points`` are ``(x, y, 1)`` positive / ``(x, y, 0)`` negative
    clicks in source pixels; ``box`` is the box prompt; ``mask`` says a whole mask was given
    (``"given"``) or which kind of mask prompt was used; ``refined`` that the clicks refined the
    frame's previous mask; ``multimask`` the segmenter's multimask choice (image path).
    """

    points: tuple[tuple[float, float, int], ...] = ()
    box: Box | None = None
    mask: str | None = None
    refined: bool = False
    multimask: bool | None = None

    def __post_init__(self) -> None:
        pts = tuple((float(x), float(y), int(v)) for x, y, v in self.points)
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "box", _tuple_box(self.box))

    @property
    def is_empty(self) -> bool:
        return not self.points and self.box is None and self.mask is None

    def to_json(self) -> dict[str, JSONValue]:
        d: dict[str, JSONValue] = {}
        if self.points:
            d["points"] = [list(p) for p in self.points]
        if self.box is not None:
            d["box"] = list(self.box)
        if self.mask is not None:
            d["mask"] = self.mask
        if self.refined:
            d["refined"] = True
        if self.multimask is not None:
            d["multimask"] = self.multimask
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, JSONValue]) -> "Clicks":
        return cls(points=tuple(tuple(p) for p in d.get("points") or ()), box=d.get("box"),
                   mask=d.get("mask"), refined=bool(d.get("refined", False)),
                   multimask=d.get("multimask"))


@dataclass(frozen=True)
class CvatOrigin:
    """The CVAT shapes/tracks a pulled instance was made from: a later push never sends it back."""

    host: str
    task: int
    shapes: tuple[int, ...] = ()
    tracks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", int(self.task))
        object.__setattr__(self, "shapes", tuple(int(v) for v in self.shapes))
        object.__setattr__(self, "tracks", tuple(int(v) for v in self.tracks))

    def to_json(self) -> dict[str, JSONValue]:
        return {"host": self.host, "task": self.task, "shapes": list(self.shapes), "tracks": list(self.tracks)}

    @classmethod
    def from_json(cls, d: Mapping[str, JSONValue]) -> "CvatOrigin":
        return cls(str(d["host"]), int(d["task"]), tuple(d.get("shapes") or ()), tuple(d.get("tracks") or ()))


@dataclass(frozen=True)
class Provenance:
    """Where an instance came from: which engine, model and weights, with which settings.

    Sinks and the fine-tuning data selection read it (a CVAT-pulled or imported instance is a
    person's work; an unreviewed propagation is not), so each fact is a typed field rather than a
    key in a free dict. ``engine`` names the producer: ``"sam2-image"``, ``"sam2-video"``,
    ``"groundingdino"`` (boxes), ``"cvat"`` (pulled from a server), ``"import"`` (read from a file),
    ``"person"`` (drawn in the widget). ``caption`` is the detector's text, ``phrase`` the part of
    it that matched. ``extra`` holds facts only one engine has (the automatic mask generator's grid
    point, stability score and crop box, ...).
    """

    engine: str | None = None
    model: str | None = None
    checkpoint: str | None = None  # sha256 of the weights file, when known
    detector: str | None = None
    caption: str | None = None
    phrase: str | None = None
    detector_score: float | None = None
    direction: str | None = None  # propagation direction of a sam2-video instance
    tracker: str | None = None  # tracker mode (text-prompt tracking)
    precision: str | None = None  # "float32", "bfloat16", ...
    object_score: float | None = None  # SAM2's object-presence logit
    area: int | None = None  # mask area when it was made (cheap quality signal)
    cvat: CvatOrigin | None = None
    extra: Mapping[str, JSONValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.detector_score is not None:
            object.__setattr__(self, "detector_score", float(self.detector_score))
        if self.object_score is not None:
            object.__setattr__(self, "object_score", float(self.object_score))
        if self.area is not None:
            object.__setattr__(self, "area", int(self.area))
        object.__setattr__(self, "extra", dict(self.extra))

    @property
    def from_person(self) -> bool:
        """True for an instance a person drew, corrected in CVAT or brought in from a file."""
        return self.cvat is not None or self.engine in ("cvat", "import", "person")

    def to_json(self) -> dict[str, JSONValue]:
        d: dict[str, JSONValue] = {}
        for name in _PROVENANCE_SCALARS:
            v = getattr(self, name)
            if v is not None:
                d[name] = v
        if self.cvat is not None:
            d["cvat"] = self.cvat.to_json()
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, JSONValue]) -> "Provenance":
        unknown = set(d) - set(_PROVENANCE_SCALARS) - {"cvat", "extra"}
        extra = dict(d.get("extra") or {})
        extra.update({k: d[k] for k in unknown})  # a newer writer's fields survive a round trip
        cvat = d.get("cvat")
        return cls(**{k: d[k] for k in _PROVENANCE_SCALARS if k in d},
                   cvat=CvatOrigin.from_json(cvat) if cvat else None, extra=extra)


_PROVENANCE_SCALARS = ("engine", "model", "checkpoint", "detector", "caption", "phrase", "detector_score",
                       "direction", "tracker", "precision", "object_score", "area")


@dataclass
class Instance:
    """One object on one frame.

    ``mask`` is the canonical geometry; ``box`` is derived from it when not given (and is the only
    geometry of a :attr:`ShapeType.BOX` instance); ``polygon`` keeps the vertices of an instance made
    as a polygon (a list of flat ``[x0, y0, x1, y1, ...]`` rings) so a CVAT polygon round-trips.
    ``label`` is the class a detector proposed it as (the store's object label wins once the
    object exists; trackers match candidates by it); ``clicks`` what a person gave the segmenter on
    this frame; ``provenance`` where it came from (:class:`Provenance`).
    """

    object_id: int
    mask: np.ndarray | None = None
    box: Box | None = None
    score: float | None = None
    source: Source = Source.AUTO
    polygon: list[list[float]] | None = None
    shape: ShapeType | None = None
    keyframe: bool = False
    clicks: Clicks | None = None
    provenance: Provenance | None = None
    label: str | None = None

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

    @property
    def prompts(self) -> dict[str, JSONValue] | None:
        """The free dict older dl-utils kept instead of ``clicks``/``provenance``/``label``
        (read-only, for code written against it; new code reads the typed fields)."""
        return legacy_prompts(self.label, self.clicks, self.provenance)


#: Old ``prompts`` keys -> Provenance field (the rest: clicks, label, cvat, or ``extra``).
_LEGACY_FIELDS = {"model": "model", "detector": "detector", "prompt": "caption",
                  "detector_score": "detector_score", "direction": "direction",
                  "object_score": "object_score", "area": "area", "engine": "engine",
                  "checkpoint": "checkpoint", "tracker": "tracker", "precision": "precision"}
_CLICK_KEYS = ("points", "box", "mask", "refined", "multimask")


def split_legacy_prompts(
    prompts: Mapping[str, JSONValue] | None,
) -> tuple[str | None, Clicks | None, Provenance | None]:
    """``(label, clicks, provenance)`` of a ``prompts`` dict written by dl-utils before the typed
    fields existed (store schema 1): the one place that knows the old keys.

    ``text`` was the matched phrase where the caption was also kept (``prompt``), and the caption
    itself where it was not (text-prompt tracking wrote ``{"text": caption, "label": ...}``).
    """
    if not prompts:
        return None, None, None
    d = dict(prompts)
    label = d.pop("label", None)
    clicks_d = {k: d.pop(k) for k in _CLICK_KEYS if k in d}
    fields: dict[str, Any] = {}
    for old, new in _LEGACY_FIELDS.items():
        if old in d:
            fields[new] = d.pop(old)
    if "text" in d:
        fields["phrase" if "caption" in fields else "caption"] = d.pop("text")
    cvat = d.pop("cvat", None)
    if isinstance(cvat, Mapping):
        fields["cvat"] = CvatOrigin.from_json(cvat)
        fields.setdefault("engine", "cvat")
    if "direction" in fields:
        fields.setdefault("engine", "sam2-video")
    if d.get("mode") == "segment_everything":
        fields.setdefault("engine", "sam2-image")
    clicks = Clicks.from_json(clicks_d) if clicks_d else None
    if clicks is not None and clicks.is_empty and not clicks.refined and clicks.multimask is None:
        clicks = None
    prov = Provenance(**fields, extra=d) if (fields or d) else None
    return (None if label is None else str(label)), clicks, prov


def legacy_prompts(label: str | None, clicks: Clicks | None,
                   provenance: Provenance | None) -> dict[str, JSONValue] | None:
    """The old ``prompts`` dict of the typed fields (inverse of :func:`split_legacy_prompts`)."""
    d: dict[str, JSONValue] = {}
    if clicks is not None:
        d.update(clicks.to_json())
    if provenance is not None:
        back = {new: old for old, new in _LEGACY_FIELDS.items()}
        for name in _PROVENANCE_SCALARS:
            v = getattr(provenance, name)
            if v is None:
                continue
            if name == "phrase":
                d["text"] = v
            elif name == "caption" and provenance.phrase is None:
                d["text"] = v  # as text-prompt tracking wrote it: "prompt" too would read back as a phrase
            else:
                d[back.get(name, name)] = v
        if provenance.cvat is not None:
            d["cvat"] = provenance.cvat.to_json()
        d.update(provenance.extra)
    if label is not None:
        d["label"] = label
    return d or None


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


#: how a source's frames are numbered (:func:`dl_utils.video_utils.open_frames` ``frame_numbers``):
#: by position from a first frame, or by the numbers in the image file names
FRAME_NUMBERINGS = ("index", "names")


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

    ``numbering`` and ``first_frame`` say how the source's pictures were numbered, so that the
    store is reopened with the same numbers and a CVAT task is made from the right files:
    ``"index"`` counts positions from ``first_frame`` (0: the numbering of every store made before
    the option existed, and of CVAT), ``"names"`` reads each image's number from its file name (gaps
    kept). Only a non-default numbering is written to the record, so old records stay byte-equal.
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
    numbering: str = "index"
    first_frame: int = 0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise InputError(f"media {self.name!r}: size {self.width}x{self.height} is not positive")
        if self.numbering not in FRAME_NUMBERINGS:
            raise InputError(f"media {self.name!r}: numbering {self.numbering!r} is not known; use 'index'"
                             " or 'names'")
        if isinstance(self.first_frame, bool) or not isinstance(self.first_frame, int) or self.first_frame < 0:
            raise InputError(f"media {self.name!r}: first frame {self.first_frame!r} must be an integer >= 0")
        if self.numbering == "names" and self.first_frame:
            raise InputError(f"media {self.name!r}: numbering 'names' takes the numbers from the file"
                             f" names; first_frame={self.first_frame} must be 0 with it")
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
    def plain_numbering(self) -> bool:
        """True when frame numbers are positions in the source (CVAT's own numbering of a task made
        from every file of the source); False for ``first_frame`` > 0 or names numbering."""
        return self.numbering == "index" and self.first_frame == 0

    def numbering_text(self) -> str:
        """How the frames are numbered, in the words of the command-line options."""
        if self.numbering == "names":
            return "--frame-numbers names"
        return f"--first-frame {self.first_frame}" if self.first_frame else "--frame-numbers index"

    def task_frames(self) -> list[int]:
        """The CVAT frame number (``start_frame + i * step`` of a task's data meta) of each frame,
        for a task made from this media by :func:`dl_utils.cvat.create_task`.

        Plain numbering: the frame numbers themselves. ``first_frame`` N: the numbers less N (the
        task holds the whole video or image set, counted from 0). Names: 0, 1, 2 ... (the task holds
        just the kept files, in order: a gapped sequence is a frame list, not start + i * step).
        Either way task frame i is the i-th entry of ``frames`` (:meth:`task_index`).
        """
        if self.numbering == "names":
            return list(range(len(self.frames)))
        return [f - self.first_frame for f in self.frames]

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
            # likewise only a non-default numbering: a store made without the options is unchanged
            **({"numbering": self.numbering} if self.numbering != "index" else {}),
            **({"first_frame": self.first_frame} if self.first_frame else {}),
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
    "Clicks",
    "CvatOrigin",
    "Provenance",
    "split_legacy_prompts",
    "legacy_prompts",
    "FRAME_NUMBERINGS",
    "MediaInfo",
    "box_from_mask",
    "normalize_color",
    "color_to_rgb",
]
