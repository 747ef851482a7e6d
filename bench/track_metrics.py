"""One-pass evaluation (OPE) metrics of single-object tracking, as LaSOT reports them (numpy only).

Why here: users with weights compare ``--tracker sam2`` and ``--tracker samurai`` on their own
footage with the numbers trackers are published with (success AUC, precision at 20 px, normalised
precision AUC), computed from an annotation store and a ground-truth box file
(``bench/track_eval.py``). The protocol was read from the LaSOT evaluation toolkit (MATLAB,
``eval_tracker.m`` / ``calc_seq_err_robust.m``), pysot-toolkit and pytracking's analysis code; the
code here is our own.

Protocol (per frame, boxes as ``(x, y, w, h)`` in pixels, ``x + w`` exclusive):

* **IoU** of the predicted and the ground-truth box (``[x, x + w)`` intervals; the toolkits'
  ``right = x + w - 1`` inclusive-pixel form gives the same number).
* **Success plot**: fraction of frames with IoU **>** t for t in ``0, 0.05, ..., 1`` (21 thresholds,
  the toolkits' grid). **Success AUC** is the mean of the 21 values, so a perfect tracker scores
  20/21 = 0.952 (IoU 1 is not > 1).
* **Precision**: fraction of frames whose centre distance is **<=** t pixels, t in ``0..50``;
  reported at 20 px. Centres are ``x + w/2`` (the toolkits use ``x + (w-1)/2``: the same offset on
  both boxes, so the same distance).
* **Normalised precision** (LaSOT): both centres divided by the ground truth's width/height before
  the distance, t in ``0, 0.01, ..., 0.5`` (51 thresholds); its AUC is the mean.

Frames excluded from every curve (numerator and denominator): ground truth absent (no entry), a box
with width or height <= 0 (LaSOT and OTB write ``0,0,0,0`` there) or not finite (NaN), and frames
flagged in LaSOT's ``full_occlusion.txt`` / ``out_of_view.txt``. The LaSOT toolkit removes
such frames too but still divides by the sequence length, which counts them as failures; pytracking
does the same unless ``exclude_invalid_frames``. We divide by the frames evaluated, so a tracker is
judged where the target can be seen (say this when comparing with published numbers).

A frame with valid ground truth and no prediction (the object absent from the store, or never
processed) has IoU 0 and centre distance infinity: it is a failure at every threshold. The toolkits
replace a missing result by the previous frame's and the first frame's by the ground truth; we do
neither: an annotation tool's empty frame is a real miss, and the first frame is the prompted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

#: IoU thresholds of the success plot (LaSOT/OTB: 0:0.05:1)
IOU_THRESHOLDS = np.round(np.arange(21) * 0.05, 2)
#: centre-distance thresholds in pixels (0:50); precision is reported at 20
PIXEL_THRESHOLDS = np.arange(51, dtype=float)
#: normalised centre-distance thresholds (0:0.01:0.5)
NORM_THRESHOLDS = np.arange(51) / 100.0
PRECISION_AT = 20

XYWH = tuple[float, float, float, float]


def valid_box(box: Sequence[float] | None) -> bool:
    """True when a ground-truth box counts (finite, width and height > 0), as the protocol says."""
    if box is None:
        return False
    b = np.asarray(box, dtype=float)
    return bool(b.shape == (4,) and np.all(np.isfinite(b)) and b[2] > 0 and b[3] > 0)


def iou_xywh(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of N x 4 ``(x, y, w, h)`` boxes row by row (0 where a box has no area)."""
    left = np.maximum(pred[:, 0], gt[:, 0])
    right = np.minimum(pred[:, 0] + pred[:, 2], gt[:, 0] + gt[:, 2])
    top = np.maximum(pred[:, 1], gt[:, 1])
    bottom = np.minimum(pred[:, 1] + pred[:, 3], gt[:, 1] + gt[:, 3])
    inter = np.maximum(0.0, right - left) * np.maximum(0.0, bottom - top)
    union = pred[:, 2] * pred[:, 3] + gt[:, 2] * gt[:, 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return np.clip(iou, 0.0, 1.0)


@dataclass
class FrameErrors:
    """Per evaluated frame: IoU, centre distance (px) and normalised centre distance."""

    frames: list[int]
    iou: np.ndarray
    center: np.ndarray
    norm_center: np.ndarray
    excluded: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


def frame_errors(pred: Mapping[int, XYWH | None], gt: Mapping[int, XYWH | None],
                 excluded: Sequence[int] = ()) -> FrameErrors:
    """Errors on every frame of ``gt`` with a valid box and not in ``excluded`` (absent flags).

    ``pred`` maps frame -> predicted ``(x, y, w, h)``; a frame it lacks, maps to None, or whose box
    has no area is a missing prediction (IoU 0, distance inf).
    """
    skip = set(excluded)
    frames = sorted(f for f, b in gt.items() if f not in skip and valid_box(b))
    kept = set(frames)
    out_excluded = sorted(f for f in gt if f not in kept)
    n = len(frames)
    g = np.array([gt[f] for f in frames], dtype=float).reshape(n, 4)
    p = np.zeros((n, 4))
    have = np.zeros(n, bool)
    for k, f in enumerate(frames):
        b = pred.get(f)
        if b is not None and np.all(np.isfinite(b)) and b[2] > 0 and b[3] > 0:
            p[k] = b
            have[k] = True
    iou = np.where(have, iou_xywh(p, g), 0.0)
    d = (p[:, :2] + p[:, 2:] / 2) - (g[:, :2] + g[:, 2:] / 2)
    center = np.where(have, np.hypot(d[:, 0], d[:, 1]), np.inf)
    norm = np.where(have, np.hypot(d[:, 0] / g[:, 2], d[:, 1] / g[:, 3]), np.inf)
    missing = [f for f, h in zip(frames, have) if not h]
    return FrameErrors(frames, iou, center, norm, out_excluded, missing)


@dataclass
class TrackScores:
    """The three curves and their summary numbers (LaSOT's table columns)."""

    frames: int
    excluded: int
    missing: int
    success: np.ndarray
    precision: np.ndarray
    norm_precision: np.ndarray

    @property
    def success_auc(self) -> float:
        return float(self.success.mean())

    @property
    def precision_20(self) -> float:
        return float(self.precision[PRECISION_AT])

    @property
    def norm_precision_auc(self) -> float:
        return float(self.norm_precision.mean())

    def to_json(self) -> dict[str, object]:
        return {
            "frames": self.frames, "excluded": self.excluded, "missing": self.missing,
            "success_auc": self.success_auc, "precision_20": self.precision_20,
            "norm_precision_auc": self.norm_precision_auc,
            "success_curve": [float(v) for v in self.success],
            "precision_curve": [float(v) for v in self.precision],
            "norm_precision_curve": [float(v) for v in self.norm_precision],
        }


def scores(err: FrameErrors) -> TrackScores:
    """Success / precision / normalised precision curves over the evaluated frames.

    No evaluated frame (every ground-truth box excluded) gives curves of NaN rather than a
    misleading 0 or 1; the CLI refuses that case with a message first.
    """
    n = len(err.frames)

    def curve(values: np.ndarray, thresholds: np.ndarray, above: bool) -> np.ndarray:
        if n == 0:
            return np.full(len(thresholds), np.nan)
        hit = values[:, None] > thresholds[None, :] if above else values[:, None] <= thresholds[None, :]
        return np.asarray(hit.mean(axis=0), dtype=float)

    return TrackScores(
        frames=n, excluded=len(err.excluded), missing=len(err.missing),
        success=curve(err.iou, IOU_THRESHOLDS, True),
        precision=curve(err.center, PIXEL_THRESHOLDS, False),
        norm_precision=curve(err.norm_center, NORM_THRESHOLDS, False),
    )


def corners_to_xywh(box: Sequence[float]) -> XYWH:
    """``(x1, y1, x2, y2)`` (the store's boxes, right/bottom exclusive) as ``(x, y, w, h)``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1, y1, x2 - x1, y2 - y1)
