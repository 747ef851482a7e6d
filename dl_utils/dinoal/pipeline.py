"""Detections → SAM2 masks → annotation store: the engine steps the drivers put together.

:func:`detect_frames` (frames in, ``(frame, Detections)`` out) is kept a separate step, so a tracker
can consume keyframe detections instead of one object per box and frame being written. The
``dl-utils detect`` driver is :mod:`dl_utils.drivers.detect`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..annotations import Instance, Instances, Label, ObjectInfo, Provenance
from ..cv_utils.colors import palette
from ..errors import InputError
from .detections import Detections
from .detector import Detector

if TYPE_CHECKING:  # pragma: no cover
    from ..classes import ClassTable
    from .caption import Caption
    from ..samal import ImageSegmenter
    from ..store import AnnotationStore


# ----------------------------------------------------------------------------- segmentation
def with_detection(inst: Instance, dets: Detections, k: int, *, detector: str | None = None) -> Instance:
    """``inst`` (SAM2's mask for detection ``k``'s box) with the detector's facts added.

    The mask's ``clicks`` (the box SAM2 was given) and SAM2's provenance (engine, model, precision,
    ...) stay; the detector adds the ``label`` and ``detector``, ``caption``, ``phrase`` and
    ``detector_score``, so a reviewer sees both halves of the grounded mask. This is the one place
    the two are merged.
    """
    det = dets.provenance(k, model=detector)
    base = inst.provenance if inst.provenance is not None else Provenance()
    prov = replace(base, detector=det.detector, caption=det.caption, phrase=det.phrase,
                   detector_score=det.detector_score)
    return inst.replace(label=dets.labels[k], provenance=prov)


def segment_detections(
    segmenter: ImageSegmenter,
    image: np.ndarray,
    dets: Detections,
    object_ids: Iterable[int] | None = None,
    *,
    frame: int | None = None,
    batch_size: int | None = 64,
    detector: str | None = None,
) -> Instances:
    """SAM2 masks for every box in one batched decoder call (``ImageSegmenter.predict_boxes``).

    ``Instance.score`` is SAM's predicted mask IoU (the samal convention); :func:`with_detection`
    adds the detector's label, caption, phrase and score (``detector``: its model name) to SAM2's
    clicks and provenance. Source is ``auto``. Boxes are clipped to the image by samal; a box
    wholly outside it raises :class:`InputError` (the detector clips by default).
    """
    ids = list(range(1, len(dets) + 1)) if object_ids is None else [int(i) for i in object_ids]
    if len(ids) != len(dets):
        raise InputError(f"{len(dets)} detections but {len(ids)} object ids; give one id per detection")
    segmenter.set_image(image, frame=frame)
    if not len(dets):
        return Instances([], frame=frame)
    got = segmenter.predict_boxes(dets.boxes, ids, dets.scores, batch_size=batch_size)
    return Instances([with_detection(inst, dets, k, detector=detector) for k, inst in enumerate(got)],
                     frame=frame)


# ----------------------------------------------------------------------------- store
def ensure_labels(store: AnnotationStore, names: Iterable[str], classes: ClassTable | None = None) -> None:
    """Make sure the store's label list has every name (from the class table when it has one)."""
    have = store.labels()
    known = {lb.name for lb in have}
    wanted = [n for n in dict.fromkeys(names) if n and n not in known]
    if not wanted and have:
        return
    new: list[Label] = []
    if not have and classes is not None:
        new = [lb for lb in classes.labels()]
        known |= {lb.name for lb in new}
        wanted = [n for n in wanted if n not in known]
    taken = {lb.color for lb in [*have, *new] if lb.color}
    colors = palette(len(wanted), avoid=taken)
    for n, c in zip(wanted, colors):
        info = classes.get(n) if classes is not None else None
        new.append(info.label() if info is not None else Label(name=n, color=c))
    if new:
        store.set_labels([*have, *new])


def add_detection_objects(store: AnnotationStore, dets: Detections,
                          classes: ClassTable | None = None) -> list[ObjectInfo]:
    """One new store object per detection, labelled with its class (and the class colour)."""
    ensure_labels(store, dets.labels, classes)
    colors = {lb.name: lb.color for lb in store.labels()}
    return [store.add_object(lb, color=colors.get(lb)) for lb in dets.labels]


def store_detections(
    store: AnnotationStore,
    frame: int,
    image: np.ndarray | None,
    dets: Detections,
    *,
    segmenter: ImageSegmenter | None = None,
    classes: ClassTable | None = None,
    run_id: int | None = None,
    model: str | None = None,
    engine: str | None = None,
) -> Instances:
    """Write one frame's detections: new objects, then box-only or (with ``segmenter``) masked
    instances in one transaction. Returns what was written.

    Detections that carry their own ``masks`` (SAM 3 segments as it detects) are written with those
    masks as they are and ``segmenter`` is not called: a second segmenter would replace the engine's
    masks with another model's. ``engine`` names that engine in the provenance (default: the
    detections' own, GroundingDINO's)."""
    objs = add_detection_objects(store, dets, classes)
    ids = [o.id for o in objs]
    if dets.masks is not None:
        insts = masked_instances(dets, ids, frame=frame, model=model, engine=engine)
    elif segmenter is not None:
        if image is None:
            raise InputError("segmenting detections needs the image; pass image=")
        insts = segment_detections(segmenter, image, dets, ids, frame=frame, detector=model)
    else:
        insts = dets.to_instances(ids, frame=frame, model=model)
    store.write_frame(frame, list(insts), run_id=run_id)
    return insts


def masked_instances(dets: Detections, object_ids: Sequence[int], *, frame: int | None = None,
                     model: str | None = None, engine: str | None = None) -> Instances:
    """Instances of detections that carry masks (an engine that segments, SAM 3): each mask as the
    engine gave it, its box derived from the mask (what the store keeps for every mask), the
    detector's score, label and provenance (``engine`` replacing GroundingDINO's name there)."""
    from ..annotations import Source

    if dets.masks is None:
        raise InputError("these detections carry no masks; segment their boxes (segment_detections)")
    ids = [int(i) for i in object_ids]
    if len(ids) != len(dets):
        raise InputError(f"{len(dets)} detections but {len(ids)} object ids; give one id per detection")
    out = []
    for k, oid in enumerate(ids):
        prov = dets.provenance(k, model=model)
        if engine is not None:
            prov = replace(prov, engine=engine)
        out.append(Instance(oid, mask=dets.masks[k], score=float(dets.scores[k]), source=Source.AUTO,
                            label=dets.labels[k], provenance=prov))
    return Instances(out, frame=frame)


# ----------------------------------------------------------------------------- frames
def detect_frames(
    source: Any,
    detector: Detector,
    every: int = 1,
    *,
    prompt: str | Sequence[str] | Caption | None = None,
    start: int = 0,
    stop: int | None = None,
    batch_size: int = 1,
    with_images: bool = False,
    progress: bool = True,
) -> Iterator[tuple[int, Detections]] | Iterator[tuple[int, np.ndarray, Detections]]:
    """Detect on every ``every``-th frame of a video or image set; yield ``(frame, Detections)``.

    ``source``: a path/pattern/list for :func:`dl_utils.video_utils.open_frames`, or an open
    ``FrameSource``. ``prompt`` is the caption (the keyword kept from before the rename). Frames are
    source frame numbers. ``batch_size`` frames share a forward pass.
    ``with_images=True`` yields ``(frame, image, Detections)`` (for SAM2 or a tracker).
    """
    from tqdm.auto import tqdm

    from ..video_utils import FrameSource, open_frames

    if int(every) < 1:
        raise InputError(f"every={every!r}: use 1 (every frame) or more")
    if int(batch_size) < 1:
        raise InputError(f"batch_size={batch_size!r}: use a positive number")
    own = not isinstance(source, FrameSource)
    src = open_frames(source, start=start, stop=stop, step=int(every)) if own else source
    try:
        frames = src.iter_numbered() if own else (
            (n, img) for k, (n, img) in enumerate(src.iter_numbered(start, stop)) if k % int(every) == 0
        )
        total = len(src) if own else None
        bar = tqdm(total=total, unit="frame", desc="detect", disable=None if progress else True)
        batch: list[tuple[int, np.ndarray]] = []

        def flush():
            res = detector.detect_batch([im for _, im in batch], prompt)
            for (n, im), d in zip(batch, res):
                yield (n, im, d) if with_images else (n, d)
            bar.update(len(batch))
            batch.clear()

        with bar:
            for n, img in frames:
                batch.append((n, img))
                if len(batch) >= int(batch_size):
                    yield from flush()
            if batch:
                yield from flush()
    finally:
        if own:
            src.close()


__all__ = [
    "add_detection_objects",
    "detect_frames",
    "ensure_labels",
    "masked_instances",
    "segment_detections",
    "store_detections",
    "with_detection",
]
