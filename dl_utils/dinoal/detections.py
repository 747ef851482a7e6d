"""The detector's result type and the box post-processing (clip, NMS, cap, tile merging).

:class:`Detections` is deliberately close to ``supervision.Detections``: parallel arrays indexed by
detection, sliceable with an index array or a boolean mask. NMS is torchvision's (``nms`` /
``batched_nms``), the reference implementation the detection libraries use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, cast

import numpy as np
from numpy.typing import ArrayLike

from ..annotations import Box, Instance, Instances, Provenance, ShapeType, Source
from ..errors import InputError


def _f32(a: Any, shape_tail: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float32)
    if arr.size == 0:
        return np.zeros((0, *shape_tail), dtype=np.float32)
    return arr


@dataclass(init=False)
class Detections:
    """Boxes found on one image, with scores, the caption they answer and the class they mean.

    * ``boxes``: ``(N, 4)`` float32 ``(x1, y1, x2, y2)`` in source pixels;
    * ``scores``: ``(N,)`` the box's highest token probability (upstream's confidence);
    * ``phrases``: the caption text above ``text_threshold`` for each box, as upstream decodes it;
    * ``labels``: the class name (from the class table, else the caption phrase) — what CVAT gets;
    * ``class_ids``: the class id in the table, -1 without one;
    * ``phrase_ids``: index of the caption phrase the label came from (-1 unknown);
    * ``phrase_scores``: ``(N, P)`` highest token probability per caption phrase (None when absent);
    * ``caption``: the text the model read (``"car. person."``);
    * ``masks``: ``(N, H, W)`` bool full-image masks from an engine that segments (SAM 3), else None.

    It is also what :class:`dl_utils.tracking.TrackManager` takes on a keyframe, as it is (it has
    the ``boxes``/``scores``/``labels`` of :class:`dl_utils.tracking.DetectionsLike`).
    """

    boxes: np.ndarray
    scores: np.ndarray
    phrases: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    phrase_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    phrase_scores: np.ndarray | None = None
    caption: str = ""
    image_size: tuple[int, int] | None = None  # (height, width)
    masks: np.ndarray | None = None
    #: the engine the store's provenance names for these boxes; a detector of another kind returns a
    #: subclass that sets it (``OnnxDetections``), so every copy and subset keeps it
    engine: ClassVar[str] = "groundingdino"

    # written out (dataclass(init=False)) only to take ``prompt=``, the field's pre-rename name that
    # backends and tests outside this package still pass; everything else is the dataclass's own
    def __init__(
        self,
        boxes: ArrayLike,
        scores: ArrayLike,
        phrases: Sequence[str] = (),
        labels: Sequence[str] = (),
        class_ids: ArrayLike = (),
        phrase_ids: ArrayLike = (),
        phrase_scores: ArrayLike | None = None,
        caption: str = "",
        image_size: tuple[int, int] | None = None,
        *,
        prompt: str | None = None,
        masks: ArrayLike | None = None,
    ) -> None:
        self.boxes, self.scores = np.asarray(boxes), np.asarray(scores)
        self.phrases, self.labels = list(phrases), list(labels)
        self.class_ids, self.phrase_ids = np.asarray(class_ids), np.asarray(phrase_ids)
        self.phrase_scores = None if phrase_scores is None else np.asarray(phrase_scores)
        self.caption = caption if prompt is None else prompt
        self.image_size = image_size
        self.masks = None if masks is None else np.asarray(masks, dtype=bool)
        self.__post_init__()

    def __post_init__(self) -> None:
        self.boxes = _f32(self.boxes, (4,)).reshape(-1, 4)
        n = len(self.boxes)
        self.scores = _f32(self.scores, ()).reshape(-1)
        self.phrases = list(self.phrases) if self.phrases else [""] * n
        self.labels = list(self.labels) if self.labels else list(self.phrases)
        self.class_ids = (np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
                          if len(self.class_ids) else np.full(n, -1, dtype=np.int64))
        self.phrase_ids = (np.asarray(self.phrase_ids, dtype=np.int64).reshape(-1)
                           if len(self.phrase_ids) else np.full(n, -1, dtype=np.int64))
        if self.phrase_scores is not None:
            ps = np.asarray(self.phrase_scores, dtype=np.float32)
            self.phrase_scores = ps.reshape(n, ps.shape[-1] if ps.ndim == 2 else -1)
        for name, v in (("scores", self.scores), ("phrases", self.phrases), ("labels", self.labels),
                        ("class_ids", self.class_ids), ("phrase_ids", self.phrase_ids)):
            if len(v) != n:
                raise InputError(f"Detections: {n} boxes but {len(v)} {name}; give one per box")
        if self.masks is not None and (self.masks.ndim != 3 or len(self.masks) != n):
            raise InputError(f"Detections: {n} boxes but masks of shape {self.masks.shape}; give (N, H, W)")

    # ------------------------------------------------------------------ container
    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: Any) -> Detections:
        """A subset: an index array, a slice or a boolean mask (always a Detections)."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        idx = np.arange(len(self))[index]
        return replace(
            self,
            boxes=self.boxes[idx],
            scores=self.scores[idx],
            phrases=[self.phrases[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            class_ids=self.class_ids[idx],
            phrase_ids=self.phrase_ids[idx],
            phrase_scores=None if self.phrase_scores is None else self.phrase_scores[idx],
            masks=None if self.masks is None else self.masks[idx],
        )

    def __repr__(self) -> str:
        return f"Detections({len(self)} boxes, labels={sorted(set(self.labels))}, caption={self.caption!r})"

    @property
    def prompt(self) -> str:
        """``caption`` under its pre-rename name (read-only; notebooks read ``dets.prompt``;
        ``Detections(..., prompt=...)`` still builds one)."""
        return self.caption

    @classmethod
    def empty(cls, caption: str = "", image_size: tuple[int, int] | None = None) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), caption=caption, image_size=image_size)

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        """All detections of ``parts`` (same image and caption) in order."""
        if not parts:
            return cls.empty()
        ps = [p.phrase_scores for p in parts]
        scores_ok = all(p is not None for p in ps) and len({p.shape[1] for p in ps}) == 1  # type: ignore[union-attr]
        return cls(
            boxes=np.concatenate([p.boxes for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            phrases=[s for p in parts for s in p.phrases],
            labels=[s for p in parts for s in p.labels],
            class_ids=np.concatenate([p.class_ids for p in parts]),
            phrase_ids=np.concatenate([p.phrase_ids for p in parts]),
            phrase_scores=np.concatenate(ps) if scores_ok else None,  # type: ignore[arg-type]
            caption=parts[0].caption,
            image_size=parts[0].image_size,
            masks=(np.concatenate([p.masks for p in parts])
                   if all(p.masks is not None for p in parts) else None),
        )

    @property
    def areas(self) -> np.ndarray:
        w = np.clip(self.boxes[:, 2] - self.boxes[:, 0], 0, None)
        h = np.clip(self.boxes[:, 3] - self.boxes[:, 1], 0, None)
        return w * h

    # ------------------------------------------------------------------ conversion
    def to_instances(
        self,
        object_ids: Iterable[int] | None = None,
        *,
        start_id: int = 1,
        frame: int | None = None,
        model: str | None = None,
    ) -> Instances:
        """Box-only :class:`Instance` objects (``source`` auto, ``score`` the detector's) for the store.

        Each carries its ``label`` and :meth:`provenance` so a reviewer sees why the box exists; the
        box is the geometry (no ``clicks``: nobody prompted anything). ``model`` names the detector.
        Boxes are clipped to ``image_size`` when it is known.
        """
        ids = list(range(start_id, start_id + len(self))) if object_ids is None else [int(i) for i in object_ids]
        if len(ids) != len(self):
            raise InputError(f"{len(self)} detections but {len(ids)} object ids; give one id per detection")
        boxes = self.boxes.astype(np.float64)
        if self.image_size is not None:
            h, w = self.image_size
            boxes = np.stack([boxes[:, 0].clip(0, w), boxes[:, 1].clip(0, h),
                              boxes[:, 2].clip(0, w), boxes[:, 3].clip(0, h)], axis=1)
        out = []
        for k, oid in enumerate(ids):
            out.append(
                Instance(
                    oid,
                    box=cast(Box, tuple(float(v) for v in boxes[k])),
                    score=float(self.scores[k]),
                    source=Source.AUTO,
                    shape=ShapeType.BOX,
                    label=self.labels[k],
                    provenance=self.provenance(k, model=model),
                )
            )
        return Instances(out, frame=frame)

    def provenance(self, k: int, *, model: str | None = None) -> Provenance:
        """Where detection ``k`` came from: GroundingDINO (``model``: which weights), the caption,
        the decoded phrase and the detector's score; the same fields whether the box is stored as it
        is or turned into a SAM2 mask (:func:`dl_utils.dinoal.pipeline.with_detection`)."""
        return Provenance(engine=self.engine, detector=model or None, caption=self.caption,
                          phrase=self.phrases[k], detector_score=float(self.scores[k]))


# ----------------------------------------------------------------------------- post-processing
def clip_boxes(dets: Detections, min_size: float = 1.0) -> Detections:
    """Clip boxes to the image and drop those narrower or lower than ``min_size`` pixels."""
    if dets.image_size is None or not len(dets):
        return dets
    h, w = dets.image_size
    b = dets.boxes.copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    keep = ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)
    out = replace(dets, boxes=b)
    return out[keep] if not keep.all() else out


def _group_keys(dets: Detections) -> np.ndarray:
    """An integer per distinct label (class ids alone cannot tell apart labels kept without a class)."""
    index: dict[str, int] = {}
    return np.array([index.setdefault(lb, len(index)) for lb in dets.labels], dtype=np.int64)


def nms(dets: Detections, iou: float, *, per_class: bool = True) -> Detections:
    """Non-maximum suppression (torchvision); result ordered by descending score.

    ``per_class=True`` suppresses only boxes with the same label (``batched_nms``); ``False``
    suppresses across labels (one box per place, the higher score wins).
    """
    if not 0.0 < float(iou) <= 1.0:
        raise InputError(f"NMS IoU threshold {iou!r}: use a number in (0, 1]")
    if len(dets) < 2:
        return dets
    import torch
    from torchvision.ops import batched_nms
    from torchvision.ops import nms as tv_nms

    boxes = torch.from_numpy(dets.boxes.astype(np.float32))
    scores = torch.from_numpy(dets.scores.astype(np.float32))
    if per_class:
        keep = batched_nms(boxes, scores, torch.from_numpy(_group_keys(dets)), float(iou))
    else:
        keep = tv_nms(boxes, scores, float(iou))
    return dets[keep.numpy()]


def cap(dets: Detections, max_detections: int | None) -> Detections:
    """The ``max_detections`` highest-scoring boxes (stable for ties), in descending score order."""
    if max_detections is None:
        return dets
    if int(max_detections) < 0:
        raise InputError(f"max_detections={max_detections!r}: use a number >= 0 or None")
    order = np.argsort(-dets.scores, kind="stable")[: int(max_detections)]
    return dets[order]


# ----------------------------------------------------------------------------- tiling
def tile_grid(height: int, width: int, tile: int, overlap: float = 0.25) -> list[tuple[int, int, int, int]]:
    """Overlapping ``tile x tile`` windows ``(x0, y0, x1, y1)`` covering the image, all the same size.

    Neighbours overlap by at least ``overlap * tile`` pixels; the last window of a row/column is
    flush with the border rather than padded, so every window is a real crop of equal size (they can
    share one batched forward pass).
    """
    if int(tile) < 32:
        raise InputError(f"tile size {tile!r}: use at least 32 pixels")
    if not 0.0 <= float(overlap) < 1.0:
        raise InputError(f"tile overlap {overlap!r}: use a fraction in [0, 1)")

    def starts(length: int) -> list[int]:
        t = min(int(tile), length)
        if length <= t:
            return [0]
        step = t * (1.0 - float(overlap))
        n = int(np.ceil((length - t) / step)) + 1
        return [round(i * (length - t) / (n - 1)) for i in range(n)]

    tw, th = min(int(tile), width), min(int(tile), height)
    return [(x, y, x + tw, y + th) for y in starts(height) for x in starts(width)]


def drop_cut_boxes(dets: Detections, window: tuple[int, int, int, int], image_hw: tuple[int, int],
                   margin: float = 2.0) -> Detections:
    """Drop boxes of a tile that touch one of its *inner* edges (the object continues outside it).

    Such a box is a fragment; the object is left to the neighbouring tile (overlap) or to the
    full-image pass. Edges that are the image border do not count.
    """
    if not len(dets):
        return dets
    x0, y0, x1, y1 = window
    h, w = image_hw
    b = dets.boxes
    cut = np.zeros(len(dets), dtype=bool)
    if x0 > 0:
        cut |= b[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= b[:, 1] <= y0 + margin
    if x1 < w:
        cut |= b[:, 2] >= x1 - margin
    if y1 < h:
        cut |= b[:, 3] >= y1 - margin
    return dets[~cut]


def shift(dets: Detections, dx: float, dy: float, image_size: tuple[int, int]) -> Detections:
    """Move a tile's boxes into image coordinates."""
    return replace(dets, boxes=dets.boxes + np.array([dx, dy, dx, dy], dtype=np.float32),
                   image_size=image_size)


__all__ = [
    "Detections",
    "cap",
    "clip_boxes",
    "drop_cut_boxes",
    "nms",
    "shift",
    "tile_grid",
]
