"""Detections → SAM2 masks → annotation store, and the ``dl-utils detect`` driver.

The video path is kept as a separate step, :func:`detect_frames` (frames in, ``(frame,
Detections)`` out), so a tracker can consume keyframe detections instead of :func:`run_detect`
writing one object per box and frame.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..annotations import Instances, Label, ObjectInfo
from ..cv_utils.colors import palette
from ..errors import InputError
from .detections import Detections
from ..models import DEFAULT_MODEL as DEFAULT_SAM2
from .detector import BACKENDS, Detector

if TYPE_CHECKING:  # pragma: no cover
    from ..classes import ClassTable
    from ..samal import ImageSegmenter
    from ..store import AnnotationStore


# ----------------------------------------------------------------------------- segmentation
def segment_detections(
    segmenter: ImageSegmenter,
    image: np.ndarray,
    dets: Detections,
    object_ids: Iterable[int] | None = None,
    *,
    frame: int | None = None,
    batch_size: int | None = 64,
) -> Instances:
    """SAM2 masks for every box in one batched decoder call (``ImageSegmenter.predict_boxes``).

    ``Instance.score`` is SAM's predicted mask IoU (the samal convention); ``prompts`` keep the
    detector's score, phrase, label and prompt. Source is ``auto``. Boxes are clipped to the image
    by samal; a box wholly outside it raises :class:`InputError` (the detector clips by default).
    """
    ids = list(range(1, len(dets) + 1)) if object_ids is None else [int(i) for i in object_ids]
    if len(ids) != len(dets):
        raise InputError(f"{len(dets)} detections but {len(ids)} object ids; give one id per detection")
    segmenter.set_image(image, frame=frame)
    if not len(dets):
        return Instances([], frame=frame)
    got = segmenter.predict_boxes(dets.boxes, ids, dets.scores, batch_size=batch_size)
    out = []
    for k, inst in enumerate(got):
        rec = dict(inst.prompts or {})
        rec.update({key: v for key, v in dets.record(k).items() if key != "box"})
        out.append(inst.replace(prompts=rec))
    return Instances(out, frame=frame)


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
) -> Instances:
    """Write one frame's detections: new objects, then box-only or (with ``segmenter``) masked
    instances in one transaction. Returns what was written."""
    objs = add_detection_objects(store, dets, classes)
    ids = [o.id for o in objs]
    if segmenter is not None:
        if image is None:
            raise InputError("segmenting detections needs the image; pass image=")
        insts = segment_detections(segmenter, image, dets, ids, frame=frame)
    else:
        insts = dets.to_instances(ids, frame=frame, model=model)
    store.write_frame(frame, list(insts), run_id=run_id)
    return insts


# ----------------------------------------------------------------------------- frames
def detect_frames(
    source: Any,
    detector: Detector,
    every: int = 1,
    *,
    prompt: Any = None,
    start: int = 0,
    stop: int | None = None,
    batch_size: int = 1,
    with_images: bool = False,
    progress: bool = True,
) -> Iterator[tuple[int, Detections]] | Iterator[tuple[int, np.ndarray, Detections]]:
    """Detect on every ``every``-th frame of a video or image set; yield ``(frame, Detections)``.

    ``source``: a path/pattern/list for :func:`dl_utils.video_utils.open_frames`, or an open
    ``FrameSource``. Frames are source frame numbers. ``batch_size`` frames share a forward pass.
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


def check_counts(*, every: Any = None, max_gap: Any = None, max_objects: Any = None) -> None:
    """Refuse impossible counts before anything is opened or loaded (also for image sets, where
    the tracking options do nothing: a negative value is a mistake either way)."""
    for name, v, least, hint in (("every", every, 1, "1 (every frame) or more"),
                                 ("max_gap", max_gap, 0, "0 or more frames"),
                                 ("max_objects", max_objects, 1, "1 or more, or leave it out (no cap)")):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
            raise InputError(f"--{name.replace('_', '-')} {v}: use {hint}")


# ----------------------------------------------------------------------------- CLI
def add_detect_arguments(parser: Any) -> None:
    """The ``dl-utils detect`` options (for the CLI to wire with :func:`run_detect_cli`)."""
    parser.add_argument("source", help="image, image folder, glob, pattern or video")
    parser.add_argument("--text", required=True, help='what to find, e.g. "car. person. traffic light"')
    parser.add_argument("--out", required=True, help="annotation store (.sqlite); added to when it exists")
    parser.add_argument("--every", type=int, default=None,
                        help="detect on every N-th frame (default: 1 for images, 20 for tracked video; "
                             "tracking also re-detects early when SAM2's quality drops)")
    parser.add_argument("--backend", choices=BACKENDS, default="groundingdino")
    parser.add_argument("--model", default=None,
                        help="groundingdino: .pth file, registry name or URL; transformers: save_pretrained "
                             "folder, registry name or Hugging Face id")
    parser.add_argument("--box-threshold", type=float, default=0.35, dest="box_threshold")
    parser.add_argument("--text-threshold", type=float, default=0.25, dest="text_threshold")
    parser.add_argument("--segment", action="store_true", help="turn boxes into SAM2 masks")
    parser.add_argument("--classes", default=None, help="class table (.csv/.xlsx) the labels must come from")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--text-encoder", default=None, dest="text_encoder",
                        help="groundingdino backend: local BERT folder (default: bert-base-uncased in the "
                             "models folder)")
    parser.add_argument("--no-track", action="store_false", dest="track",
                        help="video: independent detections per keyframe instead of tracked objects with "
                             "stable ids (with --segment: SAM2 propagation between keyframes)")
    parser.add_argument("--max-gap", type=int, default=30, dest="max_gap",
                        help="tracked video: frames an object may stay unseen and keep its id (default 30)")
    parser.add_argument("--max-objects", type=int, default=None, dest="max_objects",
                        help="tracked video: most objects tracked at once (bounds memory and time; "
                             "default: no cap)")
    parser.add_argument("--sam-model", default=None, dest="sam_model",
                        help="--segment: SAM2 model name (default sam2.1_hiera_tiny)")
    parser.add_argument("--sam-checkpoint", default=None, dest="sam_checkpoint",
                        help="--segment: SAM2 checkpoint file {'model': state_dict}")
    parser.add_argument("--image-size", type=int, default=None, dest="image_size",
                        help="--segment: SAM2 input size override (tests and benchmarks)")
    parser.add_argument("--detector-size", type=int, default=None, dest="detector_size",
                        help="groundingdino backend: shorter side images are resized to (default 800, "
                             "upstream's; smaller is faster and coarser)")


def run_detect(
    source: Any,
    out: Any,
    text: str,
    *,
    every: int | None = None,
    backend: str = "groundingdino",
    model: Any = None,
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    segment: bool = False,
    classes: Any = None,
    device: Any = None,
    text_encoder: Any = None,
    track: bool = True,
    max_gap: int = 30,
    max_objects: int | None = None,
    sam_model: str | None = None,
    sam_checkpoint: Any = None,
    image_size: int | None = None,
    detector: Detector | None = None,
    segmenter: ImageSegmenter | None = None,
    sam_video_model: Any = None,
    progress: bool = True,
    detector_size: int | None = None,
) -> dict[str, Any]:
    """Detect (and optionally segment) into a store; return a summary.

    Images (and videos with ``track=False``): every ``every``-th frame on its own, each box a new
    object. Videos with ``track=True`` (the default): objects keep stable ids through the video —
    with ``segment`` SAM2 tracks masks between keyframes (:class:`~dl_utils.dinoal.video.GroundedVideoTracker`),
    without it keyframe boxes are linked (:func:`~dl_utils.dinoal.video.track_boxes`).
    ``detector``/``segmenter``/``sam_video_model`` may be given pre-built (tests, notebooks).
    """
    from ..classes import ClassTable
    from ..store import AnnotationStore
    from ..video_utils import open_frames
    from .detector import load_detector
    from .prompts import parse_prompt

    check_counts(every=every, max_gap=max_gap, max_objects=max_objects)
    prompt = parse_prompt(text)  # an empty prompt fails before any model is loaded
    table = ClassTable.load(classes) if isinstance(classes, (str, bytes)) or hasattr(classes, "__fspath__") else classes
    src = open_frames(source)
    tracked = bool(track) and src.kind == "video"
    every = int(every) if every is not None else (20 if tracked else 1)
    if every < 1:
        src.close()
        raise InputError(f"every={every!r}: use 1 (every frame) or more")
    media = src.media_info()
    if detector is None:
        detector = load_detector(backend, model, text_encoder=text_encoder, device=device, classes=table,
                                 box_threshold=box_threshold, text_threshold=text_threshold,
                                 image_size=detector_size)
    if segment and segmenter is None and not tracked:
        from ..samal import ImageSegmenter

        segmenter = ImageSegmenter(model=sam_model or DEFAULT_SAM2, checkpoint=sam_checkpoint,
                                   image_size=image_size, device=device)
    t0 = time.perf_counter()
    store = AnnotationStore.open_or_create(out, media)  # an existing store must be for this media
    n_frames = n_dets = 0
    extra: dict[str, Any] = {}
    try:
        if table is not None:
            ensure_labels(store, [], table)
        run = store.begin_run("detect", {"text": prompt.caption, "backend": getattr(detector, "name", "?"),
                                         "every": every, "segment": bool(segment), "track": tracked})
        status = "failed"
        try:
            if tracked and segment:
                from ..sam2al import VideoSession
                from .video import GroundedVideoTracker

                if sam_video_model is not None:
                    session = VideoSession(src, store, sam_model=sam_video_model)
                else:
                    session = VideoSession(src, store, model=sam_model or DEFAULT_SAM2,
                                           checkpoint=sam_checkpoint, image_size=image_size, device=device)
                extra = GroundedVideoTracker(session, detector, prompt, every=every, max_gap=max_gap,
                                             max_objects=max_objects).run(
                    progress=progress)
                n_frames, n_dets = len(extra["keyframes"]), extra["detections"]
            elif tracked:
                from .video import track_boxes

                extra = track_boxes(src, store, detector, prompt, every=every, progress=progress,
                                    run_id=run, max_gap=max_gap, max_objects=max_objects)
                n_frames, n_dets = len(extra["keyframes"]), extra["detections"]
            else:
                for frame, image, dets in detect_frames(src, detector, every, prompt=prompt,
                                                        with_images=True, progress=progress):
                    store_detections(store, frame, image, dets, segmenter=segmenter, classes=table,
                                     run_id=run, model=getattr(detector, "name", None))
                    n_frames += 1
                    n_dets += len(dets)
            status = "done"
        except KeyboardInterrupt:
            status = "cancelled"
            raise
        finally:
            store.finish_run(run, status)
        summary = {
            "store": str(out),
            "frames": n_frames,
            "detections": n_dets,
            "objects": len(store.objects()),
            "segmented": bool(segment),
            "tracked": tracked,
            "every": every,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if tracked:
            summary["keyframes"] = extra.get("keyframes", [])
            summary["ended"] = extra.get("ended", [])
    finally:
        store.close()
        src.close()
    return summary


def run_detect_cli(args: Any) -> int:
    """Run ``dl-utils detect`` from parsed arguments; prints the summary as JSON."""
    from ..models import cli_warnings

    with cli_warnings(getattr(args, "debug", False)):
        return _run_detect_cli(args)


def _run_detect_cli(args: Any) -> int:
    s = run_detect(args.source, args.out, args.text, every=args.every, backend=args.backend, model=args.model,
                   box_threshold=args.box_threshold, text_threshold=args.text_threshold, segment=args.segment,
                   classes=args.classes, device=args.device, text_encoder=args.text_encoder,
                   track=args.track, max_gap=args.max_gap,
                   max_objects=getattr(args, "max_objects", None), sam_model=args.sam_model,
                   sam_checkpoint=args.sam_checkpoint, image_size=args.image_size,
                   detector_size=getattr(args, "detector_size", None))
    print(json.dumps(s, indent=2))
    return 0


__all__ = [
    "add_detect_arguments",
    "add_detection_objects",
    "check_counts",
    "detect_frames",
    "ensure_labels",
    "run_detect",
    "run_detect_cli",
    "segment_detections",
    "store_detections",
]
