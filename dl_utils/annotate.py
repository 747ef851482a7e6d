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
3. **CVAT** (``--cvat-task``): the store is pushed to the task (idempotent: only what changed).

Image folders are not tracked: clicks and detections are segmented image by image. This is a driver:
the work is in :mod:`dl_utils.sam2al`, :mod:`dl_utils.dinoal` and :mod:`dl_utils.cvat`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .errors import InputError

#: store meta key: {step: {"status": ..., ...}} of the annotate runs on this store
STEPS_KEY = "annotate.steps"


def add_annotate_arguments(parser: Any) -> None:
    """The ``dl-utils annotate`` options (torch-free: only the option lists)."""
    from .dinoal.detector import BACKENDS

    parser.add_argument("source", help="video file, image folder, glob or pattern")
    parser.add_argument("--out", required=True, help="annotation store (.sqlite); resumed when it exists")
    parser.add_argument("--text", default=None, help='objects to find, e.g. "car. person. traffic light"')
    parser.add_argument("--points", default=None, help="PROMPTS.json with clicks/boxes (see dl-utils segment)")
    parser.add_argument("--cvat-task", type=int, default=None, dest="cvat_task",
                        help="push the result to this CVAT task (credentials from CVAT_* variables)")
    parser.add_argument("--cvat-shape", default="mask", choices=("mask", "polygon", "box"), dest="cvat_shape",
                        help="shape type pushed to CVAT (default mask: exact)")
    parser.add_argument("--direction", default="both", choices=("forward", "backward", "both"),
                        help="propagation of clicked objects (default both)")
    parser.add_argument("--every", type=int, default=None, help="video: detect every N frames (default 20)")
    parser.add_argument("--backend", default="groundingdino", choices=BACKENDS)
    parser.add_argument("--model", default=None, help="detector weights: file, folder, registry name or hub id")
    parser.add_argument("--box-threshold", type=float, default=0.35, dest="box_threshold")
    parser.add_argument("--text-threshold", type=float, default=0.25, dest="text_threshold")
    parser.add_argument("--classes", default=None, help="class table (.csv/.xlsx) the labels must come from")
    parser.add_argument("--text-encoder", default=None, dest="text_encoder",
                        help="groundingdino backend: local BERT folder")
    parser.add_argument("--max-gap", type=int, default=30, dest="max_gap",
                        help="frames an object may stay unseen and keep its id (default 30)")
    parser.add_argument("--max-objects", type=int, default=None, dest="max_objects",
                        help="most objects tracked at once (default: no cap)")
    parser.add_argument("--sam-model", default=None, dest="sam_model", help="SAM2 model name (default tiny)")
    parser.add_argument("--sam-checkpoint", default=None, dest="sam_checkpoint",
                        help="SAM2 checkpoint file {'model': state_dict}")
    parser.add_argument("--image-size", type=int, default=None, dest="image_size",
                        help="SAM2 input size override (tests and benchmarks)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")


def _steps(store: Any) -> dict[str, Any]:
    return dict(store.get_meta(STEPS_KEY) or {})


def _mark(store: Any, step: str, **info: Any) -> None:
    steps = _steps(store)
    steps[step] = info
    store.set_meta(STEPS_KEY, steps)


def run_annotate(
    source: Any,
    out: Any,
    *,
    text: str | None = None,
    points: Any = None,
    cvat_task: int | None = None,
    cvat_shape: str = "mask",
    direction: str = "both",
    every: int | None = None,
    backend: str = "groundingdino",
    model: Any = None,
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    classes: Any = None,
    text_encoder: Any = None,
    max_gap: int = 30,
    max_objects: int | None = None,
    sam_model: str | None = None,
    sam_checkpoint: Any = None,
    image_size: int | None = None,
    device: Any = None,
    progress: bool = True,
    detector: Any = None,
    sam_video_model: Any = None,
    segmenter: Any = None,
    connection: Any = None,
) -> dict[str, Any]:
    """Run the steps of the module doc; return a summary. Pre-built models and a CVAT connection
    may be passed in (notebooks, tests)."""
    from .classes import ClassTable
    from .dinoal.pipeline import DEFAULT_SAM2, ensure_labels
    from .dinoal.prompts import parse_prompt
    from .sam2al.segment import load_prompts
    from .sam2al.session import DIRECTIONS
    from .store import AnnotationStore
    from .video_utils import open_frames

    if text is None and points is None:
        raise InputError('nothing to annotate: give --text "car. person" and/or --points PROMPTS.json')
    if direction not in DIRECTIONS:
        raise InputError(f"direction={direction!r}: use one of {', '.join(DIRECTIONS)}")
    # everything that can be checked without models is checked before any is loaded
    from .dinoal.pipeline import check_counts

    check_counts(every=every, max_gap=max_gap, max_objects=max_objects)
    prompt = parse_prompt(text) if text is not None else None
    entries = load_prompts(points) if points is not None else []
    table = ClassTable.load(classes) if isinstance(classes, (str, bytes)) or hasattr(classes, "__fspath__") else classes
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"store": str(out)}
    src = open_frames(source)
    try:
        if cvat_task is not None:  # server, credentials, task, frames, labels: before any model or store
            summary["cvat_preflight"] = _cvat_preflight(src, out, prompt, entries, cvat_task, cvat_shape,
                                                        connection)
        store = AnnotationStore.open_or_create(out, src.media_info())
        with store:
            if table is not None:
                ensure_labels(store, [e["label"] for e in entries if e["label"]], table)
            if src.kind == "video":
                summary.update(_video(src, store, prompt, entries, points, direction=direction, every=every,
                                      backend=backend, model=model, box_threshold=box_threshold,
                                      text_threshold=text_threshold, table=table, text_encoder=text_encoder,
                                      max_gap=max_gap, max_objects=max_objects, sam_model=sam_model,
                                      sam_checkpoint=sam_checkpoint, image_size=image_size, device=device,
                                      progress=progress, detector=detector, sam_video_model=sam_video_model))
            else:
                summary.update(_images(src, store, prompt, entries, points, backend=backend, model=model,
                                       box_threshold=box_threshold, text_threshold=text_threshold, table=table,
                                       text_encoder=text_encoder, sam_model=sam_model or DEFAULT_SAM2,
                                       sam_checkpoint=sam_checkpoint, image_size=image_size, device=device,
                                       progress=progress, detector=detector, segmenter=segmenter))
            if cvat_task is not None:
                summary["cvat"] = _push(store, cvat_task, cvat_shape, connection)
            summary["objects"] = len(store.objects())
            summary["frames_with_results"] = len(store.frames())
    finally:
        src.close()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def _video(src: Any, store: Any, prompt: Any, entries: list, points: Any, *, direction: str, every: int | None,
           backend: str, model: Any, box_threshold: float, text_threshold: float, table: Any,
           text_encoder: Any, max_gap: int, max_objects: int | None, sam_model: str | None,
           sam_checkpoint: Any, image_size: int | None, device: Any, progress: bool, detector: Any,
           sam_video_model: Any) -> dict[str, Any]:
    from .dinoal.pipeline import DEFAULT_SAM2
    from .sam2al import VideoSession, apply_prompts

    out: dict[str, Any] = {}
    if sam_video_model is not None:
        session = VideoSession(src, store, sam_model=sam_video_model)
    else:
        session = VideoSession(src, store, model=sam_model or DEFAULT_SAM2, checkpoint=sam_checkpoint,
                               image_size=image_size, device=device)
    out["resumed"] = bool(session.object_ids)
    try:
        if entries:
            applied = apply_prompts(session, entries, points)
            clicked = sorted({e["object"] for e in entries})
            r = session.propagate(direction, objects=clicked, progress=progress)
            if r["status"] != "done":
                raise InputError(f"propagation of the clicked objects stopped ({r['status']}); run again to resume")
            _mark(store, "points", status="done", objects=clicked)
            out["points"] = {"applied": applied, "objects": clicked, "frames_written": r["frames_written"]}
        if prompt is not None:
            done = _steps(store).get("text") or {}
            if done.get("status") == "done" and done.get("prompt") == prompt.caption:
                out["text"] = {"status": "already done", **{k: v for k, v in done.items() if k != "status"}}
            else:
                if done.get("prompt") not in (None, prompt.caption):
                    raise InputError(
                        f"{store.path} was annotated with the text {done['prompt']!r}; use a new --out for "
                        f"{prompt.caption!r} (or export and merge)"
                    )
                from .dinoal.detector import load_detector
                from .dinoal.video import GroundedVideoTracker

                _mark(store, "text", status="running", prompt=prompt.caption)
                det = detector or load_detector(backend, model, text_encoder=text_encoder, device=device,
                                                classes=table, box_threshold=box_threshold,
                                                text_threshold=text_threshold)
                res = GroundedVideoTracker(session, det, prompt, every=every or 20, max_gap=max_gap,
                                           max_objects=max_objects).run(progress=progress)
                if res["status"] not in ("done", "no objects found"):
                    raise InputError(f"the text step stopped ({res['status']}); run again to resume")
                _mark(store, "text", status="done", prompt=prompt.caption, objects=res["objects"],
                      keyframes=len(res["keyframes"]))
                out["text"] = {"status": res["status"], "objects": res["objects"], "ended": res["ended"],
                               "keyframes": len(res["keyframes"]), "detections": res["detections"]}
    finally:
        session.close()
    return out


def _images(src: Any, store: Any, prompt: Any, entries: list, points: Any, *, backend: str, model: Any,
            box_threshold: float, text_threshold: float, table: Any, text_encoder: Any, sam_model: str,
            sam_checkpoint: Any, image_size: int | None, device: Any, progress: bool, detector: Any,
            segmenter: Any) -> dict[str, Any]:
    """Image folders: every click entry and every image's detections are segmented on their own."""
    from tqdm.auto import tqdm

    from .annotations import Source

    out: dict[str, Any] = {}
    if segmenter is None:
        from .samal import ImageSegmenter

        segmenter = ImageSegmenter(sam_model, sam_checkpoint, image_size=image_size, device=device)
    if entries:
        by_frame: dict[int, list[dict[str, Any]]] = {}
        for i, e in enumerate(entries):
            try:
                src.index_of(e["frame"])
            except Exception:  # noqa: BLE001  re-raised with the file and entry named
                raise InputError(f"{points}: entry {i}: frame {e['frame']} is not one of the images of "
                                 f"{src.name} (0..{len(src) - 1}); fix the entry's 'frame'") from None
            by_frame.setdefault(e["frame"], []).append(e)
        known = {o.id for o in store.objects()}
        done = 0
        for frame, group in tqdm(sorted(by_frame.items()), desc="clicks", unit="image",
                                 disable=None if progress else True):
            have = store.read_frame(frame).by_object()
            todo = [e for e in group if not (e["object"] in have and have[e["object"]].keyframe)]
            if not todo:
                continue
            segmenter.set_image(src[src.index_of(frame)], frame=frame)
            for e in todo:
                if e["object"] not in known:
                    if not e["label"]:
                        raise InputError(f"{points}: object {e['object']} has no 'label'; add one to its first entry")
                    store.add_object(e["label"], id=e["object"])
                    known.add(e["object"])
            insts = segmenter.predict_objects({e["object"]: {"points": e["points"], "box": e["box"]}
                                               for e in todo})
            for inst in insts:
                inst.keyframe = True
                inst.source = Source.SEMI_AUTO
            store.write_frame(frame, list(insts))
            done += len(todo)
        out["points"] = {"applied": done}
    if prompt is not None:
        from .dinoal.detector import load_detector
        from .dinoal.pipeline import store_detections

        steps = _steps(store)
        text = steps.get("text") or {}
        # positions among the source's images (consecutive, so the runs stay short)
        finished = _from_ranges(text.get("images", [])) if text.get("prompt") == prompt.caption else set()
        det = detector or load_detector(backend, model, text_encoder=text_encoder, device=device, classes=table,
                                        box_threshold=box_threshold, text_threshold=text_threshold)
        run = store.begin_run("annotate", {"text": prompt.caption})
        n = 0
        status = "failed"
        try:
            todo = [(i, f) for i, f in enumerate(src.frame_numbers) if i not in finished]
            for i, frame in tqdm(todo, desc="detect", unit="image", disable=None if progress else True):
                image = src[i]
                dets = det.detect(image, prompt)
                store_detections(store, frame, image, dets, segmenter=segmenter, classes=table, run_id=run,
                                 model=getattr(det, "name", None))
                finished.add(i)
                _mark(store, "text", status="running", prompt=prompt.caption, images=_to_ranges(finished))
                n += len(dets)
            status = "done"
        finally:
            store.finish_run(run, status)
        _mark(store, "text", status="done", prompt=prompt.caption, images=_to_ranges(finished))
        out["text"] = {"status": "done", "detections": n, "images": len(finished)}
    return out


def _to_ranges(frames: set[int]) -> list[list[int]]:
    """Sorted numbers as ``[[first, last], ...]`` runs: the record written after every image
    stays a few numbers long (images are done in order), not one that grows with the folder."""
    out: list[list[int]] = []
    for f in sorted(frames):
        if out and f == out[-1][1] + 1:
            out[-1][1] = f
        else:
            out.append([f, f])
    return out


def _from_ranges(ranges: list[list[int]]) -> set[int]:
    return {f for a, b in ranges for f in range(int(a), int(b) + 1)}


def _cvat_preflight(src: Any, out: Any, prompt: Any, entries: list, task: int, shape: str,
                    connection: Any) -> dict[str, Any]:
    """Everything the final push would refuse, checked first (dl_utils.cvat.preflight)."""
    from pathlib import Path

    from .cvat import preflight
    from .store import AnnotationStore

    media, labels = src.media_info(), [e["label"] for e in entries if e["label"]]
    labels += list(prompt.phrases) if prompt is not None else []
    if Path(out).exists():  # a resumed run: its store's numbering and objects are what gets pushed
        with AnnotationStore.open(out) as st:
            media, labels = st.media or media, labels + [o.label for o in st.objects()]
    return preflight(task, media=media, labels=labels, shape=shape, connection=connection,
                     media_name=str(out))


def _push(store: Any, task: int, shape: str, connection: Any) -> dict[str, Any]:
    from .cvat import connect, push

    conn = connection or connect()
    try:
        rep = push(store, conn, task, shape=shape)
    finally:
        if connection is None:
            conn.close()
    return rep.summary()


def run_annotate_cli(args: Any) -> int:
    """Run ``dl-utils annotate`` from parsed arguments; prints the summary as JSON."""
    from .models import cli_warnings

    with cli_warnings(getattr(args, "debug", False)):
        return _run_annotate_cli(args)


def _run_annotate_cli(args: Any) -> int:
    s = run_annotate(args.source, args.out, text=args.text, points=args.points, cvat_task=args.cvat_task,
                     cvat_shape=args.cvat_shape, direction=args.direction, every=args.every,
                     backend=args.backend, model=args.model, box_threshold=args.box_threshold,
                     text_threshold=args.text_threshold, classes=args.classes, text_encoder=args.text_encoder,
                     max_gap=args.max_gap, max_objects=args.max_objects, sam_model=args.sam_model,
                     sam_checkpoint=args.sam_checkpoint, image_size=args.image_size, device=args.device)
    print(json.dumps(s, indent=2, default=str))
    return 0


__all__ = ["STEPS_KEY", "add_annotate_arguments", "run_annotate", "run_annotate_cli"]
