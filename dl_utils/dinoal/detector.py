"""Text → labelled boxes: one detector interface over both backends, with labels, NMS and tiling.

:class:`GroundedDetector` is what callers use (the CLI, notebooks, the video driver on keyframes)::

    det = load_detector("groundingdino", classes=ClassTable.load("classes.xlsx"))
    dets = det.detect(rgb, "car. person. traffic light")
    dets.boxes, dets.scores, dets.labels

Order of the steps on one image: backend (boxes above ``box_threshold``) → label per box (the
caption phrase with the highest token probability, mapped to the class table) → clip to the image →
per-class NMS → cross-class NMS → ``max_detections``. With tiling, the full image and overlapping
tiles are detected (tiles of one size share a batched forward pass), boxes cut by an inner tile edge
are dropped, and the union is merged by per-class NMS.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..classes import ClassTable
from ..errors import InputError
from .backends import Backend, GroundingDinoBackend, TransformersBackend, check_image
from .detections import (
    Detections,
    cap,
    clip_boxes,
    drop_cut_boxes,
    nms,
    shift,
    tile_grid,
)
from .caption import Caption, LabelMapper, parse_caption

if TYPE_CHECKING:  # pragma: no cover
    from .onnx_yolo import OnnxYoloDetector

#: the text engines of the drivers' ``--backend``: the first two give boxes (SAM2 makes masks and tracks);
#: ``sam3`` is SAM 3, which detects, segments and tracks alone (built by
#: :meth:`dl_utils.drivers.options.DetectorOptions.build`, not by :func:`load_detector`); ``onnx`` is
#: your own closed-set detector, an Ultralytics YOLO ONNX export
#: (:class:`~dl_utils.dinoal.onnx_yolo.OnnxYoloDetector`; boxes, SAM2 masks as with GroundingDINO)
BACKENDS = ("groundingdino", "transformers", "sam3", "onnx")


@runtime_checkable
class Detector(Protocol):
    """Anything that turns an RGB image and a caption (the text) into :class:`Detections`.

    The parameter keeps its name ``prompt``: callers pass it by position and test doubles name it so."""

    def detect(self, image: np.ndarray, prompt: str | Caption | None = None) -> Detections: ...

    def detect_batch(self, images: Sequence[np.ndarray], prompt: str | Caption | None = None
                     ) -> list[Detections]: ...


def _threshold(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}={value!r} is not a number; use a probability in [0, 1)") from None
    if not 0.0 <= v < 1.0:
        raise InputError(f"{name}={value!r}: use a probability in [0, 1)")
    return v


class GroundedDetector:
    """Labels, thresholds, NMS, cap and tiling around a :class:`Backend` (see the module docstring).

    ``prompt``: the default prompt (else the class table's leaf classes with their synonyms).
    ``nms_iou``: per-class NMS IoU (None: off); ``cross_class_iou``: NMS across labels (None: off).
    ``tile_size``: detect on overlapping ``tile_size`` squares too when a side is longer (None: off).
    ``batch_size``: images (or tiles) per forward pass.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        classes: ClassTable | None = None,
        prompt: str | Sequence[str] | None = None,
        on_unknown: str = "warn",
        superclass: bool = False,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        nms_iou: float | None = 0.7,
        cross_class_iou: float | None = None,
        max_detections: int | None = None,
        clip: bool = True,
        tile_size: int | None = None,
        tile_overlap: float = 0.25,
        batch_size: int = 4,
    ):
        if not isinstance(backend, Backend):
            raise InputError(f"{type(backend).__name__} is not a detector backend (it needs infer())")
        self.backend = backend
        self.mapper = LabelMapper(classes, on_unknown=on_unknown, superclass=superclass)
        self.classes = classes
        self.caption = None if prompt is None else parse_caption(prompt)
        if self.caption is not None:
            self.mapper.map(self.caption)  # unknown phrases are reported now, not at the first image
        self.box_threshold = _threshold(box_threshold, "box_threshold")
        self.text_threshold = _threshold(text_threshold, "text_threshold")
        for name, v in (("nms_iou", nms_iou), ("cross_class_iou", cross_class_iou)):
            if v is not None and not 0.0 < float(v) <= 1.0:
                raise InputError(f"{name}={v!r}: use an IoU in (0, 1] or None to switch it off")
        self.nms_iou = None if nms_iou is None else float(nms_iou)
        self.cross_class_iou = None if cross_class_iou is None else float(cross_class_iou)
        if max_detections is not None and int(max_detections) < 0:
            raise InputError(f"max_detections={max_detections!r}: use a number >= 0 or None")
        self.max_detections = None if max_detections is None else int(max_detections)
        self.clip = bool(clip)
        if tile_size is not None:
            tile_grid(64, 64, int(tile_size), tile_overlap)  # validates both
        self.tile_size = None if tile_size is None else int(tile_size)
        self.tile_overlap = float(tile_overlap)
        if int(batch_size) < 1:
            raise InputError(f"batch_size={batch_size!r}: use a positive number")
        self.batch_size = int(batch_size)

    @property
    def name(self) -> str:
        return self.backend.name

    def resolve_caption(self, caption: str | Sequence[str] | Caption | None = None) -> Caption:
        """The caption to run: the one given, the default one, or the class table's classes."""
        if caption is not None:
            return parse_caption(caption)
        if self.caption is not None:
            return self.caption
        if self.classes is not None:
            return parse_caption(self.classes.prompt(self.classes.leaves(), synonyms=True))
        raise InputError("no prompt: pass one (e.g. \"car. person\") or build the detector with classes=")

    # pre-rename name: the auto-annotation function and notebooks call it
    resolve_prompt = resolve_caption

    # ------------------------------------------------------------------ detection
    def detect(self, image: np.ndarray, prompt: str | Sequence[str] | Caption | None = None) -> Detections:
        """Labelled boxes on one RGB ``HxWx3`` uint8 image."""
        return self.detect_batch([image], prompt)[0]

    def detect_batch(self, images: Sequence[np.ndarray], prompt: str | Sequence[str] | Caption | None = None
                     ) -> list[Detections]:
        """:meth:`detect` on several images; images of one size share forward passes."""
        p = self.resolve_caption(prompt)
        phrase_labels = self.mapper.map(p)  # raises for on_unknown="error" before any inference
        imgs = [check_image(im, f"image {i}") for i, im in enumerate(images)]
        # jobs: (image index, window or None); all windows of a size can share one batch
        jobs: list[tuple[int, tuple[int, int, int, int] | None]] = []
        for i, im in enumerate(imgs):
            jobs.append((i, None))
            h, w = im.shape[:2]
            if self.tile_size is not None and max(h, w) > self.tile_size:
                jobs.extend((i, win) for win in tile_grid(h, w, self.tile_size, self.tile_overlap))
        raw = self._run(imgs, jobs, p)
        parts: list[list[Detections]] = [[] for _ in imgs]
        for (i, win), d in zip(jobs, raw):
            hw = imgs[i].shape[:2]
            d = self._label(d, phrase_labels)
            if win is not None:  # into image coordinates, then drop the fragments a tile cut off
                d = drop_cut_boxes(shift(d, win[0], win[1], hw), win, hw)
            parts[i].append(d)
        return [self._finish(Detections.concat(ps), merged=len(ps) > 1) for ps in parts]

    def _run(self, imgs: list[np.ndarray], jobs: list[tuple[int, Any]], caption: Caption) -> list[Detections]:
        """Backend calls, grouping crops of equal size into batches of ``batch_size``."""
        crops = []
        for i, win in jobs:
            im = imgs[i]
            crops.append(im if win is None else np.ascontiguousarray(im[win[1]:win[3], win[0]:win[2]]))
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, c in enumerate(crops):
            by_shape.setdefault(c.shape, []).append(k)
        out: list[Detections | None] = [None] * len(crops)
        for ks in by_shape.values():
            for s in range(0, len(ks), self.batch_size):
                chunk = ks[s:s + self.batch_size]
                res = self.backend.infer([crops[k] for k in chunk], caption, box_threshold=self.box_threshold,
                                         text_threshold=self.text_threshold)
                for k, d in zip(chunk, res):
                    out[k] = d
        return out  # type: ignore[return-value]

    def _label(self, d: Detections, phrase_labels: list) -> Detections:
        """Label each box with its best phrase's class; drop boxes whose phrase has no label."""
        n, n_phrases = len(d), len(phrase_labels)
        if n == 0:
            return replace(d, labels=[], class_ids=np.zeros(0, np.int64), phrase_ids=np.zeros(0, np.int64))
        if d.phrase_scores is not None and d.phrase_scores.shape[1] == n_phrases:
            pid = d.phrase_scores.argmax(axis=1)
        else:  # a backend without token scores: the first caption phrase found in the decoded text
            pid = np.array([next((k for k, pl in enumerate(phrase_labels) if pl.phrase in " ".join(t.split())), -1)
                            for t in d.phrases], dtype=np.int64)
        labels = [phrase_labels[k].label if k >= 0 else None for k in pid]
        keep = np.array([lb is not None for lb in labels], dtype=bool)
        d = replace(d, labels=[lb or "" for lb in labels],
                    class_ids=np.array([phrase_labels[k].class_id if k >= 0 else -1 for k in pid], dtype=np.int64),
                    phrase_ids=pid.astype(np.int64))
        return d if keep.all() else d[keep]

    def _finish(self, d: Detections, *, merged: bool) -> Detections:
        if self.clip:
            d = clip_boxes(d)
        iou = self.nms_iou if self.nms_iou is not None else (0.5 if merged else None)
        if iou is not None:
            d = nms(d, iou, per_class=True)
        if self.cross_class_iou is not None:
            d = nms(d, self.cross_class_iou, per_class=False)
        return cap(d, self.max_detections)


def load_detector(
    backend: str = "groundingdino",
    model: str | os.PathLike[str] | None = None,
    *,
    text_encoder: str | os.PathLike[str] | None = None,
    device: Any = None,
    download: bool = False,
    image_size: int | None = None,
    **options: Any,
) -> GroundedDetector | OnnxYoloDetector:
    """Build a :class:`GroundedDetector` on the named backend (``onnx``: an
    :class:`~dl_utils.dinoal.onnx_yolo.OnnxYoloDetector`).

    ``model``: for ``groundingdino`` a ``.pth`` file, registry name or URL; for ``transformers`` a
    ``save_pretrained`` folder, registry name or Hugging Face id; for ``onnx`` the ``.onnx`` file.
    ``image_size`` (groundingdino only) is the shorter side the image is resized to (upstream: 800).
    ``options`` go to :class:`GroundedDetector` (classes, thresholds, NMS, tiling...) or, for
    ``onnx``, to :class:`~dl_utils.dinoal.onnx_yolo.OnnxYoloDetector` (classes, box_threshold,
    nms_iou, max_detections, threads, batch_size).
    """
    if backend == "onnx":
        from .onnx_yolo import OnnxYoloDetector

        for name, v in (("text_encoder", text_encoder), ("image_size", image_size)):
            if v is not None:
                raise InputError(f"{name} applies to the groundingdino backend; an ONNX export runs at its own "
                                 "input size, with no text encoder")
        if model is None:
            raise InputError("--backend onnx needs --model FILE.onnx (an Ultralytics YOLO detection export)")
        return OnnxYoloDetector(model, device=device, **options)
    if backend == "groundingdino":
        kw: dict[str, Any] = {} if image_size is None else {"image_size": int(image_size),
                                                             "max_size": max(1333, int(image_size))}
        be: Backend = GroundingDinoBackend(model, text_encoder=text_encoder, device=device, download=download, **kw)
    elif backend == "transformers":
        if text_encoder is not None:
            raise InputError("--text-encoder applies to the groundingdino backend; a transformers folder "
                             "carries its own text encoder")
        if image_size is not None:
            raise InputError("image_size applies to the groundingdino backend; the transformers processor "
                             "resizes as its preprocessor_config.json says")
        be = TransformersBackend(model, device=device, download=download)
    elif backend == "sam3":
        raise InputError("backend 'sam3' is not a GroundingDINO backend: build it with "
                         "dl_utils.drivers.options.DetectorOptions(backend='sam3').build() (or "
                         "dl_utils.sam3al.image.Sam3ImageEngine)")
    else:
        raise InputError(f"backend {backend!r}: use one of {', '.join(BACKENDS)}")
    return GroundedDetector(be, **options)


__all__ = ["BACKENDS", "Detector", "GroundedDetector", "load_detector"]
