"""``dl-utils detect``: a text prompt → labelled boxes (and SAM2 masks) into a store.

A thin driver: the options come from :class:`DetectorOptions`, :class:`TrackOptions` and
:class:`SamOptions`, the work from :func:`~dl_utils.drivers.run.run_into_store` (the path annotate and
the widget take too). With ``--backend sam3`` SAM 3 alone gives the masks (``--segment`` is implied)
and, on video, tracks them on every frame. The engine pieces (``detect_frames``, ``store_detections``,
``segment_detections``) stay in :mod:`dl_utils.dinoal`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .options import DetectorOptions, SamOptions, SourceOptions, SourceSpec, TrackOptions

if TYPE_CHECKING:  # pragma: no cover
    from ..classes import ClassTable
    from ..dinoal.detector import Detector
    from ..sam2al.samurai import SamuraiConfig
    from ..samal import ImageSegmenter

_D, _S, _T, _N = DetectorOptions(), SamOptions(), TrackOptions(), SourceOptions()


def add_detect_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dl-utils detect`` options (for the CLI to wire with :func:`run_detect_cli`)."""
    parser.add_argument("source", help="image, image folder, glob, pattern or video")
    parser.add_argument("--text", default=None,
                        help='what to find, e.g. "car. person. traffic light" (--backend onnx: optional, the '
                             "model's classes to keep; default all)")
    parser.add_argument("--out", required=True, help="annotation store (.sqlite); added to when it exists")
    parser.add_argument("--segment", action="store_true",
                        help="turn boxes into SAM2 masks (--backend sam3: always masks, SAM 3's own)")
    SourceOptions.add_arguments(parser, command="detect")
    DetectorOptions.add_arguments(parser, command="detect")
    TrackOptions.add_arguments(parser, command="detect")
    SamOptions.add_arguments(parser, command="detect")
    SamOptions.add_gpu_arguments(parser, command="detect")


def run_detect(
    source: SourceSpec,
    out: str | os.PathLike[str],
    text: str | None = None,
    *,
    every: int | None = _T.every,
    backend: str = _D.backend,
    model: str | os.PathLike[str] | None = _D.model,
    box_threshold: float = _D.box_threshold,
    text_threshold: float = _D.text_threshold,
    segment: bool = False,
    classes: str | os.PathLike[str] | ClassTable | None = _D.classes,
    device: str | None = _D.device,
    text_encoder: str | os.PathLike[str] | None = _D.text_encoder,
    track: bool = _T.track,
    max_gap: int = _T.max_gap,
    max_objects: int | None = _T.max_objects,
    sam_model: str | None = None,
    sam_checkpoint: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    detector: Detector | None = None,
    segmenter: ImageSegmenter | None = None,
    sam_video_model: Any = None,
    progress: bool = True,
    detector_size: int | None = _D.detector_size,
    bpe: str | os.PathLike[str] | None = _D.bpe,
    sam3_model: Any = None,
    sam3_video_model: Any = None,
    frame_numbers: str = _N.frame_numbers,
    first_frame: int = _N.first_frame,
    tracker: str = _S.tracker,
    samurai: SamuraiConfig | dict[str, Any] | None = _S.samurai,
    force: bool = _S.force,
    nms_iou: float = _D.nms_iou,
    precision: str | None = _S.precision,
    compile: bool = _S.compile,
) -> dict[str, Any]:
    """Detect (and optionally segment) into a store; return a summary (:func:`detect`, loose arguments).

    Images (and videos with ``track=False``): every ``every``-th frame on its own, each box a new
    object. Videos with ``track=True`` (the default): objects keep stable ids through the video —
    with ``segment`` SAM2 tracks masks between keyframes (:class:`~dl_utils.dinoal.video.GroundedVideoTracker`),
    without it keyframe boxes are linked (:func:`~dl_utils.dinoal.video.track_boxes`).
    ``detector``/``segmenter``/``sam_video_model`` may be given pre-built (tests, notebooks), and
    with ``backend="sam3"`` ``sam3_model`` / ``sam3_video_model`` (SAM 3 image / video models).
    ``tracker``/``samurai``/``force``: the mode of the SAM2 session that tracks masks between
    keyframes (``--tracker``, ``--samurai``, ``--force``; ``segment`` on tracked video only).
    ``precision``/``compile`` (``--precision``, ``--compile``): SAM2's compute precision and
    compiled mode with ``segment`` (a pre-built ``sam_video_model`` must then be compiled).
    """
    return detect(
        source, out, text, segment=segment,
        detector_options=DetectorOptions(backend=backend, model=model, box_threshold=box_threshold,
                                         text_threshold=text_threshold, text_encoder=text_encoder,
                                         device=device, detector_size=detector_size, classes=classes, bpe=bpe,
                                         nms_iou=nms_iou),
        sam=SamOptions(model=sam_model, checkpoint=sam_checkpoint, image_size=image_size, device=device,
                       tracker=tracker, samurai=samurai, force=force, precision=precision, compile=compile),
        track=TrackOptions(every=every, max_gap=max_gap, max_objects=max_objects, track=track),
        detector=detector, segmenter=segmenter, sam_video_model=sam_video_model, progress=progress,
        sam3_model=sam3_model, sam3_video_model=sam3_video_model,
        numbering=SourceOptions(frame_numbers=frame_numbers, first_frame=first_frame),
    )


def detect(
    source: SourceSpec,
    out: str | os.PathLike[str],
    text: str | None,
    *,
    segment: bool = False,
    detector_options: DetectorOptions | None = None,
    sam: SamOptions | None = None,
    track: TrackOptions | None = None,
    detector: Detector | None = None,
    segmenter: ImageSegmenter | None = None,
    sam_video_model: Any = None,
    progress: bool = True,
    sam3_model: Any = None,
    sam3_video_model: Any = None,
    numbering: SourceOptions | None = None,
) -> dict[str, Any]:
    """:func:`run_detect` with the options objects (``numbering``: ``--frame-numbers``/``--first-frame``). Everything that can fail without the store (counts,
    the caption, the class table, the models, another backend recorded in an existing store) fails
    before the store is created or changed. ``text=None`` with ``backend="onnx"``: every class of the
    model (its caption is what the store records)."""
    from ..dinoal.pipeline import ensure_labels
    from ..dinoal.caption import parse_caption
    from ..store import AnnotationStore
    from .run import check_store_backend, check_store_tracker, run_into_store

    opts = detector_options or DetectorOptions()
    sam = sam or SamOptions()
    track = track or TrackOptions()
    numbering = numbering or SourceOptions()
    numbering.check()
    track.check()
    opts.check_sam3()
    sam.check_backend(opts.backend)  # --tracker samurai is SAM2's: refused with SAM 3
    sam.check_prebuilt(sam_video_model=sam_video_model, segmenter=segmenter)  # --compile: before the store
    sam3 = opts.backend == "sam3"
    segment = segment or sam3  # SAM 3 segments as it detects
    onnx = opts.backend == "onnx"
    # an empty caption fails before any model is loaded (onnx: no text is every class of the model)
    caption = parse_caption(text) if text is not None or not onnx else None
    table = opts.class_table()
    check_store_backend(out, opts)
    if segment and not sam3:  # a SAM2 session will track: another tracker's store is refused before loading
        check_store_tracker(out, sam)
    src = numbering.open(source)
    try:
        tracked = bool(track.track) and src.kind == "video"
        every = 1 if (sam3 and tracked) else track.every_for(tracked)
        media = src.media_info()
        if sam3 and tracked:
            if track.every is not None:
                raise InputError(f"--every {track.every}: SAM 3 detects on every frame of a video; leave "
                                 "--every out with --backend sam3 (or use --no-track for independent keyframes)")
            if sam3_video_model is None:
                sam3_video_model = opts.build_sam3("video")
        elif detector is None:
            detector = opts.build(table) if not (sam3 and sam3_model is not None) else \
                opts.sam3_detector(sam3_model, table)
        if onnx:  # the names of --text checked against the model's classes (or all of them) before the store
            assert detector is not None
            caption = detector.resolve_caption(caption)  # type: ignore[attr-defined]
        assert caption is not None
        if segment and segmenter is None and not tracked and not sam3:
            segmenter = sam.image_segmenter()
        t0 = time.perf_counter()
        store = AnnotationStore.open_or_create(out, media)  # an existing store must be for this media
        try:
            if table is not None:
                ensure_labels(store, [], table)
            run = store.begin_run("detect", {"text": caption.text,
                                             "backend": opts.backend if sam3 else getattr(detector, "name", "?"),
                                             "every": every, "segment": bool(segment), "track": tracked})
            status = "failed"
            try:
                res = run_into_store(src, store, prompt=caption, detector=detector, detector_options=opts, sam=sam,
                                     track=track, table=table, segment=segment, run_id=run,
                                     sam_video_model=sam_video_model, segmenter=segmenter, progress=progress,
                                     sam3_video_model=sam3_video_model)
                status = "done"
            except KeyboardInterrupt:
                status = "cancelled"
                raise
            finally:
                store.finish_run(run, status)
            found = res["text"]
            frames = found["frames"] if (not tracked or "frames" in found) else len(found["keyframes"])
            summary: dict[str, Any] = {
                "store": str(out),
                "frames": frames,
                "detections": found["detections"],
                "objects": len(store.objects()),
                "segmented": bool(segment),
                "tracked": tracked,
                "every": every,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            if "sam2" in res:  # the SAM2 engine that made the masks: model, precision, compile
                summary["sam2"] = res["sam2"]
            if tracked:
                summary["keyframes"] = found.get("keyframes", [])
                summary["ended"] = found.get("ended", [])
        finally:
            store.close()
    finally:
        src.close()
    return summary


def run_detect_cli(args: argparse.Namespace) -> int:
    """Run ``dl-utils detect`` from parsed arguments; prints the summary as JSON."""
    from ..models import cli_warnings

    with cli_warnings(getattr(args, "debug", False)):
        return _run_detect_cli(args)


def _run_detect_cli(args: argparse.Namespace) -> int:
    options, sam = DetectorOptions.from_args(args), SamOptions.from_args(args, command="detect")
    if args.segment and options.backend != "sam3":  # a SAM2 engine will run
        sam.say_slow_modes("detect")  # --compile / fp16 on a CPU: they work, slowly
    # stdout is the JSON summary: what the engines print there (upstream's compile notices) goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        s = detect(args.source, args.out, args.text, segment=args.segment, detector_options=options, sam=sam,
                   track=TrackOptions.from_args(args), numbering=SourceOptions.from_args(args))
    print(json.dumps(s, indent=2))
    return 0


__all__ = ["add_detect_arguments", "detect", "run_detect", "run_detect_cli"]
