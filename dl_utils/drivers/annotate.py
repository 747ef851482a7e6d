"""``dl-utils annotate``: the notebooks' steps in one headless, resumable command.

    dl-utils annotate drive.mp4 --text "car. person" [--points clicks.json] --out drive.sqlite [--cvat-task 42]

Steps, each driven by the library and each safe to run again (the store is the ledger):

1. **clicks** (``--points``, the PROMPTS.json of ``dl-utils segment``): prompts go to SAM2 and the
   clicked objects are propagated (``--direction``, both ways by default). Entries already in the
   store are not applied again; frames already computed are not recomputed.
2. **text** (``--text``): GroundingDINO on keyframes, SAM2 between them, new objects picked up as they
   enter (:class:`~dl_utils.dinoal.video.GroundedVideoTracker`). Clicked objects are taken over by
   the tracker, so the detector does not start them a second time. An interrupted run resumes on the
   same keyframe grid; a finished one is not run again.
   With ``--backend sam3`` SAM 3 alone finds, segments and tracks the objects (every frame, its own
   tracker; clicks on video then refine SAM 3's objects). A store keeps the backend of its first text run:
   another one is refused (use a new ``--out``).
3. **CVAT** (``--cvat-task``): the store is pushed to the task (idempotent: only what changed).

Image folders are not tracked: clicks and detections are segmented image by image. Steps 1 and 2 are
:func:`~dl_utils.drivers.run.run_into_store` with the store ledger on; the work is in
:mod:`dl_utils.sam2al`, :mod:`dl_utils.dinoal` and :mod:`dl_utils.cvat`. The public module is still
:mod:`dl_utils.annotate` (it re-exports this one).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .options import DetectorOptions, SamOptions, SourceOptions, SourceSpec, TrackOptions
from .run import STEPS_KEY, steps

if TYPE_CHECKING:  # pragma: no cover
    from ..classes import ClassTable
    from ..cvat import CvatConnection
    from ..dinoal.detector import Detector
    from ..dinoal.caption import Caption
    from ..sam2al.samurai import SamuraiConfig
    from ..samal import ImageSegmenter
    from ..store import AnnotationStore
    from ..video_utils import FrameSource

_D, _S, _T, _N = DetectorOptions(), SamOptions(), TrackOptions(), SourceOptions()


def add_annotate_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dl-utils annotate`` options (torch-free: only the option lists)."""
    parser.add_argument("source", help="video file, image folder, glob or pattern")
    parser.add_argument("--out", required=True, help="annotation store (.sqlite); resumed when it exists")
    parser.add_argument("--text", default=None, help='objects to find, e.g. "car. person. traffic light" '
                                                     "(--backend onnx: the model's classes to keep; default all)")
    parser.add_argument("--points", default=None, help="PROMPTS.json with clicks/boxes (see dl-utils segment)")
    parser.add_argument("--cvat-task", type=int, default=None, dest="cvat_task",
                        help="push the result to this CVAT task (credentials from CVAT_* variables)")
    parser.add_argument("--cvat-shape", default="mask", choices=("mask", "polygon", "box"), dest="cvat_shape",
                        help="shape type pushed to CVAT (default mask: exact)")
    SourceOptions.add_arguments(parser, command="annotate")
    SamOptions.add_arguments(parser, command="annotate")
    SamOptions.add_gpu_arguments(parser, command="annotate")
    TrackOptions.add_arguments(parser, command="annotate")
    DetectorOptions.add_arguments(parser, command="annotate")


def run_annotate(
    source: SourceSpec,
    out: str | os.PathLike[str],
    *,
    text: str | None = None,
    points: str | os.PathLike[str] | None = None,
    cvat_task: int | None = None,
    cvat_shape: str = "mask",
    direction: str = _S.direction,
    every: int | None = _T.every,
    backend: str = _D.backend,
    model: str | os.PathLike[str] | None = _D.model,
    box_threshold: float = _D.box_threshold,
    text_threshold: float = _D.text_threshold,
    classes: str | os.PathLike[str] | ClassTable | None = _D.classes,
    text_encoder: str | os.PathLike[str] | None = _D.text_encoder,
    max_gap: int = _T.max_gap,
    max_objects: int | None = _T.max_objects,
    sam_model: str | None = _S.model,
    sam_checkpoint: str | os.PathLike[str] | None = _S.checkpoint,
    image_size: int | None = _S.image_size,
    device: str | None = _D.device,
    progress: bool = True,
    detector: Detector | None = None,
    sam_video_model: Any = None,
    segmenter: ImageSegmenter | None = None,
    connection: CvatConnection | None = None,
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
    """Run the steps of the module doc; return a summary (:func:`annotate`, loose arguments).
    Pre-built models (SAM 3's too: ``sam3_model``, ``sam3_video_model``) and a CVAT connection may
    be passed in (notebooks, tests). ``tracker``/``samurai``/``force``: SAM2's propagation mode
    (``--tracker``, ``--samurai``, ``--force``; see :class:`~dl_utils.drivers.options.SamOptions`).
    ``precision``/``compile``: SAM2's compute precision and compiled mode (``--precision``,
    ``--compile``; a pre-built ``sam_video_model`` must then be compiled)."""
    return annotate(
        source, out, text=text, points=points, cvat_task=cvat_task, cvat_shape=cvat_shape,
        detector_options=DetectorOptions(backend=backend, model=model, box_threshold=box_threshold,
                                         text_threshold=text_threshold, text_encoder=text_encoder,
                                         device=device, classes=classes, bpe=bpe, nms_iou=nms_iou),
        sam=SamOptions(model=sam_model, checkpoint=sam_checkpoint, image_size=image_size, device=device,
                       direction=direction, tracker=tracker, samurai=samurai, force=force, precision=precision,
                       compile=compile),
        track=TrackOptions(every=every, max_gap=max_gap, max_objects=max_objects),
        progress=progress, detector=detector, sam_video_model=sam_video_model, segmenter=segmenter,
        connection=connection, sam3_model=sam3_model, sam3_video_model=sam3_video_model,
        numbering=SourceOptions(frame_numbers=frame_numbers, first_frame=first_frame),
    )


def annotate(
    source: SourceSpec,
    out: str | os.PathLike[str],
    *,
    text: str | None = None,
    points: str | os.PathLike[str] | None = None,
    cvat_task: int | None = None,
    cvat_shape: str = "mask",
    detector_options: DetectorOptions | None = None,
    sam: SamOptions | None = None,
    track: TrackOptions | None = None,
    progress: bool = True,
    detector: Detector | None = None,
    sam_video_model: Any = None,
    segmenter: ImageSegmenter | None = None,
    connection: CvatConnection | None = None,
    sam3_model: Any = None,
    sam3_video_model: Any = None,
    numbering: SourceOptions | None = None,
) -> dict[str, Any]:
    """:func:`run_annotate` with the options objects. Input is checked before any model is loaded
    (another backend recorded in an existing store included). ``numbering`` numbers the source's
    frames (``--frame-numbers``/``--first-frame``): PROMPTS.json frames are in those numbers."""
    from ..dinoal.pipeline import ensure_labels
    from ..dinoal.caption import parse_caption
    from ..sam2al import load_prompts
    from ..store import AnnotationStore
    from .run import check_store_backend, check_store_tracker, run_into_store

    opts = detector_options or DetectorOptions()
    sam = sam or SamOptions()
    track = track or TrackOptions()
    numbering = numbering or SourceOptions()
    numbering.check()
    onnx = opts.backend == "onnx"
    if text is None and points is None and not onnx:
        raise InputError('nothing to annotate: give --text "car. person" and/or --points PROMPTS.json')
    sam.check_direction()
    # everything that can be checked without models is checked before any is loaded
    track.check()
    opts.check_sam3()
    sam.check_backend(opts.backend)  # --tracker samurai is SAM2's: refused with SAM 3
    sam.check_prebuilt(sam_video_model=sam_video_model, segmenter=segmenter)  # --compile: before the store
    caption = parse_caption(text) if text is not None else None
    entries = load_prompts(points) if points is not None else []
    table = opts.class_table()
    text_labels: list[str] | None = None
    if onnx:  # your own detector: no --text is every class; names are checked before the store is touched
        if detector is None:
            detector = opts.build(table)
        caption = detector.resolve_caption(caption)  # type: ignore[union-attr]
        # the labels its boxes will carry (model or table names as written), not the lower-cased phrases
        text_labels = detector.labels_for(caption)  # type: ignore[union-attr]
    if caption is not None:
        check_store_backend(out, opts)
    check_store_tracker(out, sam)  # another tracker's results: refused before any model loads
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"store": str(out)}
    src = numbering.open(source)
    try:
        if cvat_task is not None:  # server, credentials, task, frames, labels: before any model or store
            summary["cvat_preflight"] = _cvat_preflight(src, out, caption, entries, cvat_task, cvat_shape,
                                                        connection, text_labels=text_labels)
        store = AnnotationStore.open_or_create(out, src.media_info())
        with store:
            if table is not None:
                ensure_labels(store, [e["label"] for e in entries if e["label"]], table)
            if src.kind != "video":  # image folders: every image is detected (--every is for keyframes)
                track = dataclasses.replace(track, every=None)
            res = run_into_store(src, store, prompt=caption, clicks=entries, clicks_file=points,
                                 detector=detector, detector_options=opts, sam=sam, track=track, table=table,
                                 ledger=True, sam_video_model=sam_video_model, segmenter=segmenter,
                                 progress=progress, sam3_model=sam3_model, sam3_video_model=sam3_video_model)
            summary.update(_step_summaries(res))
            if cvat_task is not None:
                summary["cvat"] = _push(store, cvat_task, cvat_shape, connection)
            summary["objects"] = len(store.objects())
            summary["frames_with_results"] = len(store.frames())
    finally:
        src.close()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def _step_summaries(res: dict[str, Any]) -> dict[str, Any]:
    """The driver's result as annotate has always reported it."""
    out: dict[str, Any] = {}
    if "resumed" in res:
        out["resumed"] = res["resumed"]
    if "sam2" in res:  # the SAM2 engine that ran: model, precision, compile
        out["sam2"] = res["sam2"]
    if "points" in res:
        out["points"] = res["points"]
    text = res.get("text")
    if text is not None:
        if not res["tracked"]:
            out["text"] = {"status": text["status"], "detections": text["detections"], "images": text["images"]}
        elif text["status"] == "already done":
            out["text"] = text
        else:
            out["text"] = {"status": text["status"], "objects": text["objects"], "ended": text["ended"],
                           "keyframes": len(text["keyframes"]), "detections": text["detections"]}
            if "frames" in text:  # SAM 3: every frame detected, no keyframes
                out["text"]["frames"] = text["frames"]
    return out


def _cvat_preflight(src: FrameSource, out: str | os.PathLike[str], caption: Caption | None,
                    entries: list[dict[str, Any]], task: int, shape: str,
                    connection: CvatConnection | None, *, text_labels: list[str] | None = None) -> dict[str, Any]:
    """Everything the final push would refuse, checked first (dl_utils.cvat.preflight). ``text_labels``:
    the labels the text step gives its objects when they are not the caption's phrases (onnx)."""
    from pathlib import Path

    from ..cvat import preflight
    from ..store import AnnotationStore

    media, labels = src.media_info(), [e["label"] for e in entries if e["label"]]
    labels += text_labels if text_labels is not None else list(caption.phrases) if caption is not None else []
    if Path(out).exists():  # a resumed run: its store's numbering and objects are what gets pushed
        with AnnotationStore.open(out) as st:
            media, labels = st.media or media, labels + [o.label for o in st.objects()]
    return preflight(task, media=media, labels=labels, shape=shape, connection=connection,
                     media_name=str(out))


def _push(store: AnnotationStore, task: int, shape: str, connection: CvatConnection | None) -> dict[str, Any]:
    from ..cvat import connect, push

    conn = connection or connect()
    try:
        rep = push(store, conn, task, shape=shape)
    finally:
        if connection is None:
            conn.close()
    return rep.summary()


def run_annotate_cli(args: argparse.Namespace) -> int:
    """Run ``dl-utils annotate`` from parsed arguments; prints the summary as JSON."""
    from ..models import cli_warnings

    with cli_warnings(getattr(args, "debug", False)):
        return _run_annotate_cli(args)


def _run_annotate_cli(args: argparse.Namespace) -> int:
    sam, options = SamOptions.from_args(args, command="annotate"), DetectorOptions.from_args(args)
    if options.backend != "sam3" or args.points is not None:  # a SAM2 engine will run
        sam.say_slow_modes("annotate")  # --compile / fp16 on a CPU: they work, slowly
    # stdout is the JSON summary: what the engines print there (upstream's compile notices) goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        s = annotate(args.source, args.out, text=args.text, points=args.points, cvat_task=args.cvat_task,
                     cvat_shape=args.cvat_shape, detector_options=options, sam=sam,
                     track=TrackOptions.from_args(args), numbering=SourceOptions.from_args(args))
    print(json.dumps(s, indent=2, default=str))
    return 0


__all__ = ["STEPS_KEY", "add_annotate_arguments", "annotate", "run_annotate", "run_annotate_cli", "steps"]
