"""Keyframe matching of detections to tracked masks, with object ids that stay stable.

A video tracker (SAM2, :mod:`dl_utils.sam2al`) carries masks from frame to frame but never finds new
objects; a detector (GroundingDINO) finds objects but knows nothing of identity. On keyframes the two
are reconciled here: which detection continues which track, which starts a new object, which track
has drifted and should be re-prompted, which disappeared for good. Pure numpy/scipy, no model, so the
policy can be tested on synthetic tracks and reused with any tracker or detector.

The weak spots of Grounded-SAM-2's video loop are the bar: a fixed IoU threshold with a greedy
first-come match, ids that change when an object is occluded, a re-detection only every N frames.
Here matching is an optimal assignment (``scipy.optimize.linear_sum_assignment``), occluded objects
keep their id for ``max_gap`` frames (and get it back when the detector sees them again near where
they were heading), ids come from a counter that never reuses a value, and :class:`KeyframePolicy`
asks for a detection early when the tracker's own quality signals drop.

Conventions: frames are source frame numbers (those of :mod:`dl_utils.annotations`); every gap and
interval is a difference of frame numbers; masks are full-frame ``bool`` ``(H, W)`` arrays; boxes are
``(x1, y1, x2, y2)`` with exclusive right/bottom edges. See ``docs/tracking.md``.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
from scipy.optimize import linear_sum_assignment

from .annotations import Box, Instance, box_from_mask
from .cv_utils.geometry import box_iou, masks_iou
from .errors import InputError, MaskError

# ============================================================================ detections


def _box(row: Sequence[float] | np.ndarray) -> Box:
    """A detection row as a ``Box`` of Python floats."""
    x1, y1, x2, y2 = (float(v) for v in row)
    return (x1, y1, x2, y2)


def _norm_label(label: object) -> str | None:
    if label is None:
        return None
    s = str(label).strip()
    return s or None


@runtime_checkable
class DetectionsLike(Protocol):
    """A detector's result for one frame as the matcher reads it (``dl_utils.dinoal.Detections``
    has these): ``(N, 4)`` boxes, ``(N,)`` scores, one label per box."""

    @property
    def boxes(self) -> np.ndarray: ...

    @property
    def scores(self) -> np.ndarray: ...

    @property
    def labels(self) -> Sequence[str | None]: ...


@dataclass
class Candidates:
    """What a detector found on one frame, as the matcher sees it: boxes, scores, labels, masks.

    The tracker's one candidate type. A detector's own result (``dl_utils.dinoal.Detections``, or
    anything with the :class:`DetectionsLike` attributes) becomes one in exactly one place,
    :meth:`of`, which :meth:`TrackManager.update` calls; this class adds only the optional masks a
    detector does not have and the validation the matcher relies on.

    ``masks`` is ``None`` (boxes only) or one entry per detection, each a full-frame bool mask or
    ``None`` for a detection without one; a detection without a mask is matched by box IoU.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str | None]
    masks: list[np.ndarray | None] | None = None

    def __post_init__(self) -> None:
        try:
            b = np.asarray(self.boxes, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("detections: boxes are not numbers; give an (N, 4) array of x1, y1, x2, y2") from None
        if b.size == 0:
            b = b.reshape(0, 4)
        if b.ndim != 2 or b.shape[1] != 4:
            raise InputError(f"detections: boxes have shape {b.shape}; expected (N, 4) rows of x1, y1, x2, y2")
        if not np.all(np.isfinite(b)):
            raise InputError("detections: a box holds NaN or infinite values; drop or fix that detection")
        n = len(b)
        self.boxes = b
        s = np.ones(n) if self.scores is None else np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(s) != n:
            raise InputError(f"detections: {len(s)} scores for {n} boxes; give one score per box")
        self.scores = s
        labels = [None] * n if self.labels is None else [_norm_label(x) for x in self.labels]
        if len(labels) != n:
            raise InputError(f"detections: {len(labels)} labels for {n} boxes; give one label per box")
        self.labels = labels
        self.masks = self._checked_masks(self.masks, n)

    @staticmethod
    def _checked_masks(masks: Sequence[np.ndarray | None] | np.ndarray | None, n: int
                       ) -> list[np.ndarray | None] | None:
        """One bool ``(H, W)`` mask or None per detection; ``None`` when no detection has one."""
        if masks is None:
            return None
        items: list[np.ndarray | None] = list(masks)
        if len(items) != n:
            raise InputError(f"detections: {len(items)} masks for {n} boxes; give one mask (or None) per box")
        out: list[np.ndarray | None] = []
        for i, m in enumerate(items):
            if m is None:
                out.append(None)
                continue
            a = np.asarray(m)
            if a.ndim != 2:
                raise MaskError(f"detection {i}: mask has shape {a.shape}; expected a full-frame (H, W) array")
            out.append(a if a.dtype == np.bool_ else a != 0)
        return out if any(m is not None for m in out) else None

    def __len__(self) -> int:
        return len(self.boxes)

    def mask(self, i: int) -> np.ndarray | None:
        return None if self.masks is None else self.masks[i]

    @classmethod
    def empty(cls) -> Candidates:
        """The detector ran and found nothing (a keyframe with no detections)."""
        return cls(np.zeros((0, 4)), np.zeros(0), [])

    @classmethod
    def of(cls, detections: DetectionsLike,
           masks: Sequence[np.ndarray | None] | np.ndarray | None = None) -> Candidates:
        """The one conversion from a detector's result: its boxes, scores and labels, plus
        ``masks`` when the caller has them (e.g. SAM2 masks of the boxes)."""
        return cls(detections.boxes, detections.scores, list(detections.labels),
                   None if masks is None else list(masks))

    @classmethod
    def coerce(cls, obj: Candidates | DetectionsLike) -> Candidates:
        """``obj`` as it is when it is a :class:`Candidates`, else :meth:`of` it."""
        if isinstance(obj, Candidates):
            return obj
        if isinstance(obj, DetectionsLike):
            return cls.of(obj)
        raise InputError(
            f"detections of type {type(obj).__name__} are not understood; give a "
            "tracking.Candidates(boxes, scores, labels, masks=None), Candidates.empty() for a keyframe "
            "without detections, or a detector result with boxes/scores/labels (dinoal.Detections)"
        )


# ============================================================================ track state


class TrackStatus(str, enum.Enum):
    """``active``: supported now; ``occluded``: not visible, id kept; ``ended``: gone for good."""

    ACTIVE = "active"
    OCCLUDED = "occluded"
    ENDED = "ended"


@dataclass
class Track:
    """Everything the manager remembers of one object."""

    id: int
    label: str | None
    first_frame: int
    last_seen: int | None = None  # last frame the object was visible (tracker mask or detection)
    mask: np.ndarray | None = field(default=None, repr=False)  # last visible mask (None: box only)
    box: Box | None = None  # last visible box
    score: float | None = None  # score of the last matching detection
    status: TrackStatus = TrackStatus.ACTIVE
    missed: int = 0  # consecutive keyframes on which the tracker showed it but no detection matched
    missing_since: int | None = None  # first frame of the current run of frames with no support
    last_detected: int | None = None
    end_frame: int | None = None  # last frame of the object once ended (outside after it)
    end_reason: str | None = None
    reanchored: list[int] = field(default_factory=list)  # keyframes where the tracker was re-prompted
    revived: list[int] = field(default_factory=list)  # keyframes where it came back after a gap
    area_history: deque[tuple[int, int]] = field(  # (frame, area)
        default_factory=lambda: deque(maxlen=64), repr=False
    )
    _centers: deque[tuple[int, float, float]] = field(  # (frame, centre x, centre y)
        default_factory=lambda: deque(maxlen=16), repr=False
    )
    _confirmed_until: int | None = field(default=None, repr=False)

    def velocity(self, window: int) -> tuple[float, float]:
        """Centre velocity in px/frame over the visible frames of the last ``window`` frames."""
        if len(self._centers) < 2:
            return 0.0, 0.0
        f1, x1, y1 = self._centers[-1]
        first = None
        for f0, x0, y0 in self._centers:
            if f1 - f0 <= window and f0 < f1:
                first = (f0, x0, y0)
                break
        if first is None:
            return 0.0, 0.0
        f0, x0, y0 = first
        return (x1 - x0) / (f1 - f0), (y1 - y0) / (f1 - f0)

    def predicted_box(self, frame: int, window: int) -> Box | None:
        """The last box moved at the recent velocity to ``frame`` (constant-velocity guess)."""
        if self.box is None or self.last_seen is None:
            return None
        vx, vy = self.velocity(window)
        dt = frame - self.last_seen
        x1, y1, x2, y2 = self.box
        return (x1 + vx * dt, y1 + vy * dt, x2 + vx * dt, y2 + vy * dt)

    def _see(self, frame: int, mask: np.ndarray | None, box: Box | None) -> None:
        if box is None:
            return
        self.last_seen = frame
        self.mask = mask
        self.box = box
        if mask is not None:
            area = int(np.count_nonzero(mask))
        else:
            area = round(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))
        self.area_history.append((frame, area))
        self._centers.append((frame, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2))


# ============================================================================ decision


@dataclass
class Match:
    """Detection ``det`` continues track ``object_id``; ``iou`` with the tracked mask."""

    object_id: int
    det: int
    iou: float


@dataclass
class ReAnchor:
    """A matched track that drifted: re-prompt the tracker with ``box`` on this frame, propagate on."""

    object_id: int
    det: int
    iou: float
    box: Box
    reasons: list[str]


@dataclass
class Revival:
    """A track the tracker lost comes back: prompt its old id with ``box`` here, propagate both ways.

    ``back_to`` is the first frame it was missing (``last_seen + 1``): backward propagation from this
    frame need not go further. ``gap`` counts the frames it had no support.
    """

    object_id: int
    det: int
    iou: float
    box: Box
    gap: int
    back_to: int | None


@dataclass
class NewObject:
    """An unmatched detection that starts an object with a fresh id.

    Prompt the tracker with ``box`` (and the detection's mask when it has one) on this frame and
    propagate both ways: forward, and backward down to ``back_to`` (the previous keyframe, where the
    detector did not report it; ``None`` when this is the first keyframe: back to the clip start).
    """

    object_id: int
    det: int
    label: str | None
    score: float
    box: Box
    back_to: int | None


@dataclass
class Ended:
    """Track ``object_id`` is over: it is ``outside`` from ``last_frame + 1`` on.

    ``last_frame`` is ``None`` when it was never visible. The caller stops propagating it and drops
    any tracker output after ``last_frame``.
    """

    object_id: int
    last_frame: int | None
    reason: str


@dataclass
class Skipped:
    """A detection that neither matched nor started an object, and why."""

    det: int
    reason: str


@dataclass
class Decision:
    """What one :meth:`TrackManager.update` decided for ``frame``.

    Every detection index appears exactly once in ``matches``, ``revived``, ``new`` or ``skipped``;
    ``reanchors`` is a subset of ``matches`` (same det, same id). ``occluded`` and ``unconfirmed``
    list object ids whose state the caller may want to show; they need no action.
    """

    frame: int
    keyframe: bool
    matches: list[Match] = field(default_factory=list)
    reanchors: list[ReAnchor] = field(default_factory=list)
    revived: list[Revival] = field(default_factory=list)
    new: list[NewObject] = field(default_factory=list)
    ended: list[Ended] = field(default_factory=list)
    occluded: list[int] = field(default_factory=list)
    unconfirmed: list[int] = field(default_factory=list)  # tracker shows it, no detection matched
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def assignments(self) -> dict[int, int]:
        """Detection index -> object id, for every detection that has one."""
        out = {m.det: m.object_id for m in self.matches}
        out.update({r.det: r.object_id for r in self.revived})
        out.update({n.det: n.object_id for n in self.new})
        return dict(sorted(out.items()))

    @property
    def changed(self) -> bool:
        """True when the tracker needs new prompts or an object ended."""
        return bool(self.reanchors or self.revived or self.new or self.ended)


# ============================================================================ keyframe policy


_QUALITY_KEYS = ("iou", "object_score", "area")


def _quality_of(value: object) -> dict[str, float | None]:
    if value is None:
        return {"iou": None, "object_score": None, "area": 0}
    if isinstance(value, Instance):
        prov = value.provenance
        area = None if prov is None else prov.area
        return {
            "iou": value.score,
            "object_score": None if prov is None else prov.object_score,
            "area": value.area if area is None else area,
        }
    if isinstance(value, Mapping):
        unknown = set(value) - set(_QUALITY_KEYS) - {"score"}
        if unknown:
            raise InputError(
                f"quality signal keys {sorted(unknown)} are unknown; use {list(_QUALITY_KEYS)}"
            )
        iou = value.get("iou", value.get("score"))
        return {"iou": iou, "object_score": value.get("object_score"), "area": value.get("area")}
    raise InputError(
        f"a quality signal is a {type(value).__name__}; give a dict with iou/object_score/area, an"
        " Instance, or None for 'not visible'"
    )


class KeyframePolicy:
    """When to run the detector: every ``every`` frames, and sooner when tracking quality drops.

    Quality per frame is ``{object_id: {"iou": float, "object_score": float, "area": int}}`` (any
    key may be missing or ``None``; an :class:`Instance` from :mod:`dl_utils.sam2al` works too: its
    ``score`` is SAM2's predicted IoU and its ``provenance`` holds ``object_score`` and ``area``;
    ``None`` means the object is not visible). Signals:

    * ``iou < min_iou`` on a visible object (SAM2's predicted IoU of the kept mask);
    * ``object_score < min_object_score`` (SAM2's object-presence logit: < 0 means "not there");
    * area ratio to the object's previous visible frame ``> 1 + area_change``;
    * an object visible on its previous frame and not on this one (``on_lost``).

    A quality trigger is honoured at least ``min_interval`` frames after the last keyframe; one that
    fires sooner is kept pending and honoured then, so a flickering signal cannot make every frame a
    keyframe and a short loss is not forgotten.
    """

    def __init__(
        self,
        every: int | None = 20,
        *,
        min_iou: float | None = 0.5,
        min_object_score: float | None = 0.0,
        area_change: float | None = 0.5,
        on_lost: bool = True,
        min_interval: int = 5,
    ) -> None:
        if every is not None and int(every) < 1:
            raise InputError(f"every={every!r}: re-detect every N >= 1 frames, or None for quality triggers only")
        if min_iou is not None and not 0 <= float(min_iou) <= 1:
            raise InputError(f"min_iou={min_iou!r}: use a value in [0, 1] or None")
        if area_change is not None and float(area_change) <= 0:
            raise InputError(f"area_change={area_change!r}: use a ratio > 0 (0.5 = 1.5x) or None")
        if int(min_interval) < 1:
            raise InputError(f"min_interval={min_interval!r}: use >= 1 frame")
        self.every = None if every is None else int(every)
        self.min_iou = None if min_iou is None else float(min_iou)
        self.min_object_score = None if min_object_score is None else float(min_object_score)
        self.area_change = None if area_change is None else float(area_change)
        self.on_lost = bool(on_lost)
        self.min_interval = int(min_interval)
        self.last_keyframe: int | None = None
        self.keyframes: list[int] = []
        self._prev_area: dict[int, int] = {}
        self._pending: list[str] = []
        self.last_reasons: list[str] = []

    def mark(self, frame: int) -> None:
        """Record that the detector ran on ``frame`` (done by :meth:`should_redetect` when it says yes)."""
        frame = int(frame)
        if self.last_keyframe is None or frame > self.last_keyframe:
            self.last_keyframe = frame
        if not self.keyframes or self.keyframes[-1] != frame:
            self.keyframes.append(frame)
        self._pending.clear()

    def _signals(self, quality: Mapping[int, Any] | None) -> list[str]:
        """Quality triggers on this frame, against the areas remembered from the previous one."""
        found: list[str] = []
        for oid, raw in sorted((quality or {}).items()):
            q = _quality_of(raw)
            area = q["area"]
            visible = area is None or area > 0
            iou, os_ = q["iou"], q["object_score"]
            if visible and iou is not None and self.min_iou is not None and iou < self.min_iou:
                found.append(f"object {oid}: predicted IoU {iou:.2f} < {self.min_iou:g}")
            if visible and os_ is not None and self.min_object_score is not None and os_ < self.min_object_score:
                found.append(f"object {oid}: object score {os_:.2f} < {self.min_object_score:g}")
            prev = self._prev_area.get(int(oid))
            if area is not None and prev is not None and prev > 0:
                if area == 0:
                    if self.on_lost:
                        found.append(f"object {oid}: lost")
                elif self.area_change is not None:
                    ratio = max(prev, area) / min(prev, area)
                    if ratio > 1 + self.area_change:
                        found.append(f"object {oid}: area changed x{ratio:.2f}")
        return found

    def _decide(self, frame: int, quality: Mapping[int, Any] | None) -> tuple[list[str], list[str]]:
        """(reasons to detect now, quality triggers held back by min_interval)."""
        found = self._signals(quality)
        last = self.last_keyframe
        reasons: list[str] = []
        if last is None:
            reasons.append("first keyframe")
        elif self.every is not None and frame - last >= self.every:
            reasons.append(f"{frame - last} frames since keyframe {last}")
        if last is None or frame - last >= self.min_interval:
            return reasons + self._pending + found, []
        return reasons, found

    def reasons(self, frame: int, quality: Mapping[int, Any] | None = None) -> list[str]:
        """Why ``frame`` should be a keyframe (empty: it need not be). Changes no state."""
        return self._decide(int(frame), quality)[0]

    def should_redetect(self, frame: int, quality: Mapping[int, Any] | None = None) -> bool:
        """Feed every processed frame in order; True means: run the detector on this frame.

        A True answer marks ``frame`` as a keyframe (:attr:`last_reasons` says why); quality triggers
        that arrive within ``min_interval`` of a keyframe are kept and honoured once it has passed.
        """
        frame = int(frame)
        reasons, held = self._decide(frame, quality)
        # keep at most a screenful: one pending trigger is enough to fire
        self._pending = (self._pending + held)[:20]
        for oid, raw in (quality or {}).items():
            area = _quality_of(raw)["area"]
            if area is not None:
                self._prev_area[int(oid)] = int(area)
        self.last_reasons = reasons
        if reasons:
            self.mark(frame)
            return True
        return False


# ============================================================================ the manager


@dataclass(frozen=True)
class TrackerConfig:
    """The matcher's knobs in one value (docs/tracking.md explains how to tune them).

    One object rather than nineteen parameters, so a driver (``dl_utils.drivers.options.TrackOptions``)
    builds it once and hands it on, and :class:`TrackManager` validates it in one place. Values are
    checked and normalised (ints, floats) on construction; an impossible one raises
    :class:`~dl_utils.errors.InputError` naming the knob.

    * ``iou_threshold``: lowest IoU (mask IoU, box IoU for a detection without a mask) at which a
      detection can continue a visible track; ties at the threshold match.
    * ``max_gap``: frames an object may go without support (not visible to the tracker, no
      detection) and still keep its id; more and it ends, ``outside`` after its last visible frame.
    * ``label_strict``: a detection only continues a track of the same label (or one
      ``compatible(track_label, det_label)`` accepts); when False, other labels may match with their
      IoU weighted by ``mismatch_weight``.
    * ``new_object_min_score``: a detection needs this score to start an object (continuing one
      needs only the detector's own threshold).
    * ``re_anchor_below``: a match with IoU below this re-anchors the track (re-prompt the tracker
      with the detection box); ``area_change``: so does a tracked area more than ``1 + area_change``
      times (or less than ``1 / (1 + area_change)``) the median of its last ``area_window`` visible
      frames.
    * ``max_missed``: a track the tracker still shows but that no detection has matched for more
      than this many consecutive keyframes ends (guards against tracker hallucinations); ``None``
      trusts the tracker.
    * ``revive_iou`` / ``revive_distance``: a detection brings back a lost track when it overlaps the
      track's last or motion-predicted box by ``revive_iou``, or, when the two are each other's only
      candidate, its centre lies within ``revive_distance`` box diagonals of the predicted centre.
    * ``duplicate_iou``: an unmatched detection overlapping a visible track (any label) or a stronger
      new detection by this much is a duplicate, not a new object.
    * ``motion_window``: frames of history used for the constant-velocity prediction (0: none).
    * ``max_objects``: most tracks alive at once (``None``: no cap). It bounds the tracker's memory
      and time (SAM2's cost grows with every object); past it, the weakest new detections are skipped
      until a track ends.
    * ``first_id``: the first id handed out; ids are never reused.
    """

    iou_threshold: float = 0.3
    max_gap: int = 30
    label_strict: bool = True
    new_object_min_score: float = 0.0
    re_anchor_below: float | None = 0.6
    area_change: float | None = 0.5
    area_window: int = 5
    max_missed: int | None = None
    revive_iou: float = 0.1
    revive_distance: float = 1.0
    duplicate_iou: float = 0.5
    mismatch_weight: float = 0.5
    compatible: Callable[[str, str], bool] | None = None
    motion_window: int = 10
    max_objects: int | None = None
    first_id: int = 1

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        def unit(name: str, v: float | None, allow_none: bool = False) -> float | None:
            if v is None and allow_none:
                return None
            if v is None or not 0 <= float(v) <= 1:
                raise InputError(f"{name}={v!r}: use a value in [0, 1]")
            return float(v)

        for name in ("iou_threshold", "revive_iou", "duplicate_iou", "mismatch_weight"):
            put(name, unit(name, getattr(self, name)))
        put("re_anchor_below", unit("re_anchor_below", self.re_anchor_below, True))
        if self.iou_threshold == 0:
            raise InputError("iou_threshold=0 would match detections that do not touch a track; use > 0")
        if int(self.max_gap) < 0:
            raise InputError(f"max_gap={self.max_gap!r}: use >= 0 frames")
        if self.area_change is not None and float(self.area_change) <= 0:
            raise InputError(f"area_change={self.area_change!r}: use a ratio > 0 (0.5 = 1.5x) or None")
        if int(self.area_window) < 1:
            raise InputError(f"area_window={self.area_window!r}: use >= 1 frame")
        if self.max_missed is not None and int(self.max_missed) < 0:
            raise InputError(f"max_missed={self.max_missed!r}: use >= 0 keyframes or None")
        if float(self.revive_distance) < 0:
            raise InputError(f"revive_distance={self.revive_distance!r}: use >= 0 box diagonals")
        if int(self.motion_window) < 0:
            raise InputError(f"motion_window={self.motion_window!r}: use >= 0 frames")
        if self.max_objects is not None and int(self.max_objects) < 1:
            raise InputError(f"max_objects={self.max_objects!r}: use >= 1 tracks or None (no cap)")
        if int(self.first_id) < 0:
            raise InputError(f"first_id={self.first_id!r}: object ids are integers >= 0")
        put("max_gap", int(self.max_gap))
        put("label_strict", bool(self.label_strict))
        put("new_object_min_score", float(self.new_object_min_score))
        put("area_change", None if self.area_change is None else float(self.area_change))
        put("area_window", int(self.area_window))
        put("max_missed", None if self.max_missed is None else int(self.max_missed))
        put("revive_distance", float(self.revive_distance))
        put("motion_window", int(self.motion_window))
        put("max_objects", None if self.max_objects is None else int(self.max_objects))
        put("first_id", int(self.first_id))


class TrackManager:
    """Decides, keyframe by keyframe, which detections continue which tracks (see module docs).

    Feed it every processed frame in increasing frame order with :meth:`update`: on keyframes pass the
    detections, on other frames only the tracker's masks (``detections=None``), which is cheap and
    gives exact last-visible frames. Frames that are never fed count as unknown.

    Its knobs are a :class:`TrackerConfig`: ``TrackManager(config)``, or the knobs as keywords
    (``TrackManager(max_gap=10, every=5)``), or both (keywords override the config's values).
    ``policy`` is the :class:`KeyframePolicy` behind :meth:`should_redetect` (``every`` builds one).
    """

    def __init__(
        self,
        config: TrackerConfig | None = None,
        *,
        every: int | None = 20,
        policy: KeyframePolicy | None = None,
        **knobs: Any,  # TrackerConfig fields (names checked below, values by TrackerConfig)
    ) -> None:
        base = config if config is not None else TrackerConfig()
        if knobs:
            unknown = sorted(set(knobs) - {f.name for f in fields(TrackerConfig)})
            if unknown:
                raise TypeError(
                    f"TrackManager got unknown knob(s) {unknown}; the knobs are TrackerConfig's fields: "
                    + ", ".join(f.name for f in fields(TrackerConfig))
                )
            base = replace(base, **knobs)
        self.config = base
        self._next_id = base.first_id
        self.policy = policy if policy is not None else KeyframePolicy(every)
        self._tracks: dict[int, Track] = {}
        self._frame: int | None = None
        self._last_keyframe: int | None = None
        self.decisions: list[Decision] = []  # keyframes and frames where a track ended

    # ------------------------------------------------------------------ state
    @property
    def next_id(self) -> int:
        return self._next_id

    @property
    def frame(self) -> int | None:
        """The last frame fed to :meth:`update` (``None`` before the first)."""
        return self._frame

    @property
    def tracks(self) -> list[Track]:
        """Every track, ended ones included, by id."""
        return [self._tracks[k] for k in sorted(self._tracks)]

    def live(self) -> list[Track]:
        """Tracks that are not ended, by id."""
        return [t for t in self.tracks if t.status != TrackStatus.ENDED]

    def track(self, object_id: int) -> Track:
        try:
            return self._tracks[int(object_id)]
        except KeyError:
            raise InputError(f"object {object_id} is not tracked; known ids: {sorted(self._tracks)}") from None

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._tracks

    def add_track(
        self,
        label: str | None,
        frame: int,
        *,
        object_id: int | None = None,
        mask: np.ndarray | None = None,
        box: Sequence[float] | None = None,
        score: float | None = None,
    ) -> Track:
        """Register an object started outside the manager (a manual prompt, a store object).

        ``object_id=None`` takes the next free id. The counter moves past any id given, so it is
        never handed out again.
        """
        oid = self._next_id if object_id is None else int(object_id)
        if oid < 0:
            raise InputError(f"object id {oid} is negative: ids are integers >= 0")
        if oid in self._tracks:
            raise InputError(f"object {oid} is already tracked; ids are never reused, pick another")
        t = Track(oid, _norm_label(label), int(frame), score=score)
        m, b = self._geometry(mask, box, f"object {oid}")
        if b is not None:
            t._see(int(frame), m, b)
        self._tracks[oid] = t
        self._next_id = max(self._next_id, oid + 1)
        return t

    @staticmethod
    def _geometry(mask: Any, box: Any, what: str) -> tuple[np.ndarray | None, Box | None]:
        m = None
        if mask is not None:
            m = np.asarray(mask)
            if m.ndim != 2:
                raise MaskError(f"{what}: mask has shape {m.shape}; expected a full-frame (H, W) array")
            m = m if m.dtype == np.bool_ else m != 0
        if m is not None:
            b = box_from_mask(m)
            return (m, b) if b is not None else (None, None)
        if box is not None:
            try:
                values = tuple(float(v) for v in box)
            except (TypeError, ValueError):
                raise InputError(f"{what}: box {box!r} is not four numbers") from None
            if len(values) != 4:
                raise InputError(f"{what}: box {box!r} is not four numbers (x1, y1, x2, y2)")
            x1, y1, x2, y2 = values
            return None, (x1, y1, x2, y2)
        return None, None

    def resume_after(self, keyframe: int | None) -> None:
        """Continue an earlier run whose last keyframe was ``keyframe``: the keyframe grid goes on
        from there and new objects are tracked back to it, as in one uninterrupted run."""
        if keyframe is None:
            return
        self.policy.mark(int(keyframe))
        self._last_keyframe = int(keyframe)

    # ------------------------------------------------------------------ policy
    def should_redetect(self, frame: int, quality: Mapping[int, Any] | None = None) -> bool:
        """Ask :attr:`policy` whether ``frame`` is a keyframe (see :class:`KeyframePolicy`)."""
        return self.policy.should_redetect(frame, quality)

    # ------------------------------------------------------------------ matching helpers
    def _label_ok(self, track_label: str | None, det_label: str | None) -> tuple[bool, bool]:
        """(allowed, same) for a track / detection label pair; a missing label fits anything."""
        if track_label is None or det_label is None:
            return True, True
        same = track_label.casefold() == det_label.casefold()
        if same:
            return True, True
        if self.config.compatible is not None and self.config.compatible(track_label, det_label):
            return True, True
        return (not self.config.label_strict), False

    @staticmethod
    def _iou_matrix(
        masks: list[np.ndarray | None], boxes: list[Box], dets: Candidates, cols: list[int]
    ) -> np.ndarray:
        """IoU of each (mask or box) geometry against detections ``cols``: mask IoU where both sides
        have a mask, box IoU otherwise."""
        n, m = len(boxes), len(cols)
        out = np.zeros((n, m))
        if n == 0 or m == 0:
            return out
        out[:] = box_iou(np.asarray(boxes), dets.boxes[cols])
        rows_m = [i for i in range(n) if masks[i] is not None]
        cols_m = [k for k, j in enumerate(cols) if dets.mask(j) is not None]
        if rows_m and cols_m:
            # rows_m / cols_m hold only the indices whose mask is not None
            mi = masks_iou(np.stack([cast(np.ndarray, masks[i]) for i in rows_m]),
                           np.stack([cast(np.ndarray, dets.mask(cols[k])) for k in cols_m]))
            out[np.ix_(rows_m, cols_m)] = mi
        return out

    @staticmethod
    def _assign(weight: np.ndarray, feasible: np.ndarray) -> list[tuple[int, int]]:
        """Feasible pairs with the largest total weight (weights > 0), via linear_sum_assignment."""
        if weight.size == 0 or not feasible.any():
            return []
        # infeasible pairs weigh 0, so choosing one never beats leaving both sides unmatched;
        # they are dropped from the solver's full assignment afterwards
        cost = np.where(feasible, -weight, 0.0)
        rows, cols = linear_sum_assignment(cost)
        return [(int(r), int(c)) for r, c in zip(rows, cols) if feasible[r, c]]

    def _area_reasons(self, t: Track, area: int) -> list[str]:
        if self.config.area_change is None:
            return []
        hist = [a for _, a in list(t.area_history)[-self.config.area_window :] if a > 0]
        if not hist or area <= 0:
            return []
        ref = float(np.median(hist))
        ratio = max(ref, area) / min(ref, area)
        if ratio > 1 + self.config.area_change:
            return [f"area {area} px is x{ratio:.2f} the recent median {ref:g} px"]
        return []

    # ------------------------------------------------------------------ update
    def _coerce_tracked(self, tracked: Mapping[int, Any] | None, frame: int) -> dict[int, np.ndarray | None]:
        out: dict[int, np.ndarray | None] = {}
        for k, v in (tracked or {}).items():
            try:
                oid = int(k)
            except (TypeError, ValueError):
                raise InputError(f"frame {frame}: tracked key {k!r} is not an object id") from None
            if oid not in self._tracks:
                raise InputError(
                    f"frame {frame}: tracked object {oid} is unknown to the TrackManager; register "
                    "objects started outside it with add_track(label, frame, object_id=...)"
                )
            if isinstance(v, Instance):
                v = None if v.is_empty else v.mask
            if v is None:
                out[oid] = None
                continue
            m = np.asarray(v)
            if m.ndim != 2:
                raise MaskError(f"frame {frame}: tracked mask of object {oid} has shape {m.shape}; expected (H, W)")
            out[oid] = m if m.dtype == np.bool_ else m != 0
        return out

    def update(
        self,
        frame: int,
        tracked: Mapping[int, Any] | None = None,
        detections: Candidates | DetectionsLike | None = None,
    ) -> Decision:
        """Take the tracker's masks on ``frame`` and, on a keyframe, the detections; decide.

        ``tracked`` maps each live object id to its mask on this frame (an ``Instance`` works too);
        ``None``, an empty mask or a missing id mean "not visible". Masks of ended ids are ignored.
        ``detections`` is a :class:`Candidates` or a detector's result (:class:`DetectionsLike`, e.g.
        ``dinoal.Detections``; converted by :meth:`Candidates.of`), or ``None`` on a frame where the
        detector did not run (``Candidates.empty()``: it ran and found nothing).
        """
        frame = int(frame)
        if self._frame is not None and frame <= self._frame:
            raise InputError(
                f"frame {frame} comes after frame {self._frame}; feed frames in increasing order"
                " (backward-propagated frames of new objects need not be fed)"
            )
        tracked_m = self._coerce_tracked(tracked, frame)
        dets = None if detections is None else Candidates.coerce(detections)
        self._check_sizes(frame, tracked_m, dets)
        dec = Decision(frame, dets is not None)
        live = self.live()
        visible: dict[int, tuple[np.ndarray, Box]] = {}
        for t in live:
            m = tracked_m.get(t.id)
            b = None if m is None else box_from_mask(m)
            if m is not None and b is not None:
                visible[t.id] = (m, b)
        matched: dict[int, int] = {}  # object id -> det index
        if dets is not None:
            self.policy.mark(frame)
            matched = self._match(frame, dets, live, visible, dec)
        for t in live:
            self._step_track(t, frame, visible.get(t.id), matched.get(t.id), dets, dec)
        # new objects after the state update, so their own frame is not "missing"
        for n in dec.new:
            assert dets is not None  # only a keyframe starts objects
            dm = dets.mask(n.det)
            t = Track(n.object_id, n.label, frame, score=n.score, last_detected=frame)
            t._see(frame, dm if dm is not None and dm.any() else None, n.box)
            self._tracks[n.object_id] = t
        if dets is not None:
            self._last_keyframe = frame
        self._frame = frame
        if dets is not None or dec.ended:
            self.decisions.append(dec)
        return dec

    @staticmethod
    def _check_sizes(frame: int, tracked: dict[int, np.ndarray | None], dets: Candidates | None) -> None:
        """All masks of a frame, tracked and detected, must have one (full-frame) size."""
        shape: tuple[int, ...] | None = None
        for oid, m in tracked.items():
            if m is None:
                continue
            if shape is None:
                shape = m.shape
            elif m.shape != shape:
                raise MaskError(
                    f"frame {frame}: tracked mask of object {oid} is {m.shape[1]}x{m.shape[0]}, others"
                    f" are {shape[1]}x{shape[0]}; all masks must be full-frame"
                )
        for jd, dm in enumerate(dets.masks if dets is not None and dets.masks is not None else []):
            if dm is None:
                continue
            if shape is None:
                shape = dm.shape
            elif dm.shape != shape:
                raise MaskError(
                    f"frame {frame}: detection {jd} mask is {dm.shape[1]}x{dm.shape[0]} but the other"
                    f" masks are {shape[1]}x{shape[0]}; resize detection masks to the frame"
                )

    def _step_track(self, t: Track, frame: int, seen: tuple[np.ndarray, Box] | None, j: int | None,
                    dets: Candidates | None, dec: Decision) -> None:
        """One live track on ``frame``: what it looks like now (tracker mask ``seen``, or matched
        detection ``j``), whether it is supported, occluded or ended."""
        keyframe = dets is not None
        prev_seen = t.last_seen
        if seen is not None:
            t._see(frame, seen[0], seen[1])
        elif j is not None and dets is not None:
            dm = dets.mask(j)
            t._see(frame, dm if dm is not None and dm.any() else None, cast(Box, tuple(float(v) for v in dets.boxes[j])))
        if j is not None and dets is not None:
            t.last_detected = frame
            t.score = float(dets.scores[j])
            t.missed = 0
            t._confirmed_until = None
        elif keyframe and seen is not None:
            if t.missed == 0:
                t._confirmed_until = prev_seen
            t.missed += 1
            dec.unconfirmed.append(t.id)
        supported = j is not None or seen is not None
        if supported:
            t.missing_since = None
            t.status = TrackStatus.ACTIVE
        else:
            if t.missing_since is None:
                t.missing_since = frame
            t.status = TrackStatus.OCCLUDED
        cfg = self.config
        gap = 0 if t.missing_since is None else frame - t.missing_since + 1  # None: supported
        if not supported and gap > cfg.max_gap:
            self._end(t, t.last_seen, f"no support for {gap} frames > max_gap={cfg.max_gap}", dec)
        elif cfg.max_missed is not None and keyframe and j is None and seen is not None and t.missed > cfg.max_missed:
            why = f"no detection on {t.missed} keyframes > max_missed={cfg.max_missed}"
            self._end(t, t._confirmed_until, why, dec)
        elif t.status == TrackStatus.OCCLUDED:
            dec.occluded.append(t.id)

    def observe(self, frame: int, tracked: Mapping[int, Any] | None) -> Decision:
        """Same as ``update(frame, tracked)``: a frame where the detector did not run."""
        return self.update(frame, tracked, None)

    def _end(self, t: Track, last: int | None, reason: str, dec: Decision) -> None:
        t.status = TrackStatus.ENDED
        t.end_frame = last
        t.end_reason = reason
        dec.ended.append(Ended(t.id, last, reason))

    def _match(
        self,
        frame: int,
        dets: Candidates,
        live: list[Track],
        visible: dict[int, tuple[np.ndarray, Box]],
        dec: Decision,
    ) -> dict[int, int]:
        """The keyframe's matching (docs/tracking.md, "How matching works"): visible tracks first,
        then lost ones, then new objects from what is left. Returns object id -> detection index."""
        matched: dict[int, int] = {}
        vis = [t for t in live if t.id in visible]
        iou1 = self._iou_matrix([visible[t.id][0] for t in vis], [visible[t.id][1] for t in vis], dets,
                                list(range(len(dets))))
        self._match_visible(frame, dets, vis, visible, iou1, matched, dec)
        self._match_lost(frame, dets, live, visible, matched, dec)
        used = set(matched.values())
        self._start_new(dets, live, vis, iou1, [j for j in range(len(dets)) if j not in used], dec)
        dec.skipped.sort(key=lambda s: s.det)
        return matched

    def _match_visible(self, frame: int, dets: Candidates, vis: list[Track],
                       visible: dict[int, tuple[np.ndarray, Box]], iou1: np.ndarray,
                       matched: dict[int, int], dec: Decision) -> None:
        """Stage 1: visible tracks vs all detections on mask IoU; drifting matches re-anchor."""
        cfg = self.config
        if not vis or not len(dets):
            return
        lab = np.array([[self._label_ok(t.label, dets.labels[j]) for j in range(len(dets))] for t in vis],
                       dtype=bool)
        allowed, same = lab[..., 0], lab[..., 1]
        feasible = allowed & (iou1 >= cfg.iou_threshold)
        weight = np.where(same, iou1, iou1 * cfg.mismatch_weight)
        for r, c in self._assign(weight, feasible):
            t = vis[r]
            iou = float(iou1[r, c])
            matched[t.id] = c
            dec.matches.append(Match(t.id, c, iou))
            reasons = []
            if cfg.re_anchor_below is not None and iou < cfg.re_anchor_below:
                reasons.append(f"IoU {iou:.2f} < re_anchor_below={cfg.re_anchor_below:g}")
            reasons += self._area_reasons(t, int(np.count_nonzero(visible[t.id][0])))
            if reasons:
                dec.reanchors.append(ReAnchor(t.id, c, iou, _box(dets.boxes[c]), reasons))
                t.reanchored.append(frame)

    def _match_lost(self, frame: int, dets: Candidates, live: list[Track],
                    visible: dict[int, tuple[np.ndarray, Box]], matched: dict[int, int], dec: Decision) -> None:
        """Stage 2: tracks the tracker lost (within max_gap) vs the detections left: revivals."""
        lost = [
            t for t in live
            if t.id not in visible and t.box is not None
            and (t.missing_since is None or frame - t.missing_since <= self.config.max_gap)
        ]
        used = set(matched.values())
        rest = [j for j in range(len(dets)) if j not in used]
        if not lost or not rest:
            return
        for r, k, iou in self._revive(frame, dets, lost, rest):
            t, j = lost[r], rest[k]
            gap = 0 if t.missing_since is None else frame - t.missing_since
            back = None if t.last_seen is None else t.last_seen + 1
            dec.revived.append(Revival(t.id, j, iou, _box(dets.boxes[j]), gap, back))
            matched[t.id] = j
            t.revived.append(frame)

    def _start_new(self, dets: Candidates, live: list[Track], vis: list[Track], iou1: np.ndarray,
                   rest: list[int], dec: Decision) -> None:
        """Stage 3: the detections left start objects, unless weak, duplicates or over max_objects."""
        cfg = self.config
        cand: list[int] = []
        for j in rest:
            if dets.scores[j] < cfg.new_object_min_score:
                why = f"score {dets.scores[j]:.2f} < new_object_min_score={cfg.new_object_min_score:g}"
                dec.skipped.append(Skipped(j, why))
                continue
            if vis:
                k = int(np.argmax(iou1[:, j]))
                if iou1[k, j] >= cfg.duplicate_iou:
                    dec.skipped.append(Skipped(j, f"duplicate of object {vis[k].id} (IoU {iou1[k, j]:.2f})"))
                    continue
            cand.append(j)
        cand = self._drop_new_duplicates(dets, cand, dec)
        if cfg.max_objects is not None:
            room = max(0, cfg.max_objects - len(live))
            cand.sort(key=lambda j: (-dets.scores[j], j))
            for j in cand[room:]:
                dec.skipped.append(Skipped(j, f"max_objects={cfg.max_objects} tracks are alive"))
            cand = sorted(cand[:room])
        for j in cand:
            oid = self._next_id
            self._next_id += 1
            dec.new.append(NewObject(oid, j, dets.labels[j], float(dets.scores[j]), _box(dets.boxes[j]),
                                     self._last_keyframe))

    def _drop_new_duplicates(self, dets: Candidates, cand: list[int], dec: Decision) -> list[int]:
        """Among would-be new objects, a weaker detection overlapping a stronger one is the same object."""
        if len(cand) < 2:
            return cand
        pair = self._iou_matrix([dets.mask(j) for j in cand], [_box(dets.boxes[j]) for j in cand], dets, cand)
        order = sorted(range(len(cand)), key=lambda i: (-dets.scores[cand[i]], cand[i]))
        kept: list[int] = []
        drop: dict[int, str] = {}
        for i in order:
            hit = next((k for k in kept if pair[i, k] >= self.config.duplicate_iou), None)
            if hit is None:
                kept.append(i)
            else:
                drop[cand[i]] = f"duplicate of detection {cand[hit]} (IoU {pair[i, hit]:.2f})"
        for j, why in sorted(drop.items()):
            dec.skipped.append(Skipped(j, why))
        return [j for j in cand if j not in drop]

    def _revive(
        self, frame: int, dets: Candidates, lost: list[Track], cols: list[int]
    ) -> list[tuple[int, int, float]]:
        """Optimal pairing of lost tracks with leftover detections: overlap first, then proximity."""
        last = self._iou_matrix([t.mask for t in lost], [t.box for t in lost], dets, cols)  # type: ignore[misc]
        pred = [t.predicted_box(frame, self.config.motion_window) if self.config.motion_window else t.box for t in lost]
        overlap = np.maximum(last, box_iou(np.asarray(pred), dets.boxes[cols]))
        allowed = np.array([[self._label_ok(t.label, dets.labels[j])[0] for j in cols] for t in lost], dtype=bool)
        pc = np.array([((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in pred])  # type: ignore[index]
        db = dets.boxes[cols]
        dc = np.stack([(db[:, 0] + db[:, 2]) / 2, (db[:, 1] + db[:, 3]) / 2], -1)
        diag = np.array([max(math.hypot(b[2] - b[0], b[3] - b[1]), 1.0) for b in pred])  # type: ignore[index]
        dist = np.linalg.norm(pc[:, None, :] - dc[None, :, :], axis=-1) / diag[:, None]
        by_overlap = allowed & (overlap >= self.config.revive_iou)
        near = allowed & (dist <= self.config.revive_distance)
        cand = by_overlap | near
        # proximity alone is ambiguous unless the track and the detection are each other's only option
        unique = (cand.sum(axis=1, keepdims=True) == 1) & (cand.sum(axis=0, keepdims=True) == 1)
        feasible = by_overlap | (near & unique)
        # any overlap outranks proximity: weights in (1, 2] vs (0, 1]
        weight = np.where(by_overlap, 1.0 + overlap, 1.0 - 0.999 * dist / max(self.config.revive_distance, 1e-9))
        return [(r, c, float(overlap[r, c])) for r, c in self._assign(weight, feasible)]


__all__ = [
    "Candidates",
    "Decision",
    "DetectionsLike",
    "Ended",
    "KeyframePolicy",
    "Match",
    "NewObject",
    "ReAnchor",
    "Revival",
    "Skipped",
    "Track",
    "TrackManager",
    "TrackStatus",
    "TrackerConfig",
]
