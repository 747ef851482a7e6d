"""Clicks sampled in a mask the way people give them, to train and to evaluate SAM2.

People click the middle of an object first, add a negative click just outside where the mask
spilled over, and sometimes draw a rough box. :func:`sample_clicks` imitates that: positive points
drawn with a weight that grows with the distance to the mask's border (never on the edge, where a
click is ambiguous), negative points in a band around the object (a click far away teaches nothing),
and, with probability ``box``, the mask's box with each side moved by up to ``box_jitter`` of the
box's size. Everything comes from the given ``numpy`` generator, so a seeded generator (whose state a
training checkpoint saves) replays the same clicks.

:func:`fixed_clicks` gives every sample its own generator, seeded from the seed and the sample's
identity, so the evaluation of two models, or of a subset, uses the same clicks for the same mask.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..annotations import Clicks
from ..errors import InputError, MaskError
from .data import MaskSample


@dataclass(frozen=True)
class ClickSampling:
    """How many clicks of which kind to sample per mask (see the module docstring)."""

    points: tuple[int, int] = (1, 3)  # min/max positive points
    negatives: int = 1  # max negative points (0..negatives, uniformly)
    box: float = 0.5  # probability of adding a box
    box_jitter: float = 0.1  # max shift of each box side, as a fraction of the box's size

    def __post_init__(self) -> None:
        lo, hi = (int(v) for v in self.points)
        object.__setattr__(self, "points", (lo, hi))
        if lo < 0 or hi < lo or hi < 1:
            raise InputError(
                f"click sampling: points={self.points}; give (min, max) positive points with"
                " 0 <= min <= max and max >= 1, e.g. (1, 3)"
            )
        if self.negatives < 0:
            raise InputError(f"click sampling: negatives={self.negatives}; give 0 or more")
        if not 0.0 <= self.box <= 1.0:
            raise InputError(f"click sampling: box={self.box}; give a probability between 0 and 1")
        if not 0.0 <= self.box_jitter < 1.0:
            raise InputError(f"click sampling: box_jitter={self.box_jitter}; give a fraction in [0, 1)")

    def to_json(self) -> dict[str, object]:
        return {"points": list(self.points), "negatives": self.negatives, "box": self.box,
                "box_jitter": self.box_jitter}


def _border_distance(mask: np.ndarray) -> np.ndarray:
    """Distance of each mask pixel to the nearest background pixel (the image edge counts as
    background: an object cut by the frame is clicked away from the cut too)."""
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]


def _positives(mask: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    dist = _border_distance(mask)
    ys, xs = np.nonzero(mask)
    w = dist[ys, xs].astype(np.float64) ** 2
    p = w / w.sum() if w.sum() > 0 else None
    idx = rng.choice(len(ys), size=n, replace=len(ys) < n, p=p)
    return [(int(xs[i]), int(ys[i]), 1) for i in idx]


def _negatives(mask: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    import cv2

    if n == 0:
        return []
    area = int(mask.sum())
    r = max(3, int(round(0.15 * np.sqrt(area))))
    ring = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2))
    ys, xs = np.nonzero(ring.astype(bool) & ~mask)
    if len(ys) == 0:  # the mask fills the frame: there is no "outside" to click
        return []
    idx = rng.choice(len(ys), size=n, replace=len(ys) < n)
    return [(int(xs[i]), int(ys[i]), 0) for i in idx]


def _box(mask: np.ndarray, jitter: float, rng: np.random.Generator) -> tuple[float, float, float, float]:
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    bw, bh = x2 - x1, y2 - y1
    d = rng.uniform(-jitter, jitter, size=4) * np.array([bw, bh, bw, bh])
    x1, y1, x2, y2 = x1 + d[0], y1 + d[1], x2 + d[2], y2 + d[3]
    x1, x2 = float(np.clip(x1, 0, w - 1)), float(np.clip(x2, 1, w))
    y1, y2 = float(np.clip(y1, 0, h - 1)), float(np.clip(y2, 1, h))
    if x2 <= x1:
        x2 = min(float(w), x1 + 1)
    if y2 <= y1:
        y2 = min(float(h), y1 + 1)
    return (round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2))


def sample_clicks(
    mask: np.ndarray, rng: np.random.Generator, sampling: ClickSampling = ClickSampling()
) -> Clicks:
    """Clicks a person might give for ``mask`` (bool H x W): points ``(x, y, 1|0)`` in source pixels
    and maybe a jittered box. Deterministic for a given generator state; raises ``MaskError`` for an
    empty mask (there is nothing to click)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise MaskError(f"sample_clicks: mask of shape {mask.shape} has no object pixel; skip empty masks")
    lo, hi = sampling.points
    n_pos = int(rng.integers(lo, hi + 1))
    n_neg = int(rng.integers(0, sampling.negatives + 1))
    with_box = bool(rng.random() < sampling.box)
    if n_pos == 0 and not with_box:  # a prompt needs something positive
        n_pos = 1
    points = _positives(mask, n_pos, rng) if n_pos else []
    points += _negatives(mask, n_neg, rng)
    box = _box(mask, sampling.box_jitter, rng) if with_box else None
    return Clicks(points=tuple((float(x), float(y), v) for x, y, v in points), box=box)


def sample_seed(sample: MaskSample, seed: int) -> int:
    """A generator seed of one sample's identity (media file name, frame, object): the same whatever
    other samples are evaluated with it, in what order, and wherever the data lies (a copied or
    moved data set is scored with the same clicks)."""
    ref = sample.ref
    key = f"{seed}\0{Path(ref.media).name}\0{ref.name}\0{ref.frame}\0{sample.object_id}"
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")


def fixed_clicks(
    samples: Sequence[MaskSample], seed: int, sampling: ClickSampling = ClickSampling()
) -> list[Clicks]:
    """The same sampled clicks for every model evaluated on ``samples`` (one per sample, in order)."""
    return [sample_clicks(s.mask, np.random.default_rng(sample_seed(s, seed)), sampling) for s in samples]


__all__ = ["ClickSampling", "fixed_clicks", "sample_clicks", "sample_seed"]
