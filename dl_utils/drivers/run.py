"""The one driver: clicks and a text prompt into an annotation store, on the video or the image path.

:func:`run_into_store` is what ``dl-utils annotate``, ``dl-utils detect`` and the widget's Detect
button run (and what the coming ``batch``/``finetune`` commands are to run): given an open frame source
and store, it picks the path and runs the steps.

* **video** (``track.track`` and a video source): clicks are applied to a SAM2
  :class:`~dl_utils.sam2al.VideoSession` and propagated; the text prompt runs GroundingDINO on keyframes
  with SAM2 between them (:class:`~dl_utils.dinoal.video.GroundedVideoTracker`), or, with
  ``segment=False``, links keyframe boxes (:func:`~dl_utils.dinoal.video.track_boxes`);
* **images** (image sets, and video with ``track=False``): every click entry is segmented on its image
  (:class:`~dl_utils.samal.ImageSegmenter`), and every ``every``-th image's (or the ``frames`` given)
  detections become new objects (:func:`~dl_utils.dinoal.pipeline.store_detections`), masks when a
  segmenter is given or ``segment`` is set.

``backend="sam3"`` (:class:`DetectorOptions`): SAM 3 alone detects, segments and tracks. On images its
detections carry their masks (written as they are; no SAM2 model is built for the text step); on the
video path the text runs as a :class:`~dl_utils.sam3al.video.Sam3VideoSession` (every frame, SAM 3's
own tracker) instead of the keyframe tracker, and no SAM2 session is opened. Clicks on video with
``backend="sam3"`` refine SAM 3's own objects (:func:`clicks_into_video_sam3`: each entry's
``object`` is a store object SAM 3 made), after the text step when there is one; on a store with no
SAM 3 run they are refused. Clicks on images still go to SAM2.

The text step's backend and model are recorded in the store (meta :data:`BACKEND_KEY`, at the first
text run, with or without the ledger): a later text run with another backend is refused,
since one store would then mix two engines' objects, ids and scores.

``span`` (``segment``) runs the clicks the way ``dl-utils segment`` does: on the video path whatever
the source (an image folder is a sequence to SAM2's video model), every object of the store
propagated within ``start..stop`` (not only the clicked ones), changed prompts' drops reported, and a
propagation that stops (cancelled) returned in the summary instead of raised.

``ledger=True`` (``annotate``) records each step in the store meta :data:`STEPS_KEY` and skips what a
previous run finished (a finished text step, the images already detected); without it (``detect``,
the widget) the engines' own resume applies (the tracker continues from its keyframes).

Models are built from the options objects only when a step needs them, unless given pre-built
(tests, notebooks, the widget, a caller that loads them before it creates the store).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from .options import DetectorOptions, SamOptions, TrackOptions, sam2_summary

if TYPE_CHECKING:  # pragma: no cover
    from ..annotations import Instances
    from ..classes import ClassTable
    from ..dinoal.detector import Detector
    from ..dinoal.caption import Prompt
    from ..samal import ImageSegmenter
    from ..sam2al import VideoSession
    from ..sam3al.image import Exemplar
    from ..sam3al.video import Sam3VideoSession
    from ..store import AnnotationStore, StoreReader
    from ..video_utils import FrameSource

#: store meta key: {step: {"status": ..., ...}} of the annotate runs on this store
STEPS_KEY = "annotate.steps"
#: store meta key: {"backend": ..., "model": ...} of the first text run into this store
BACKEND_KEY = "text.backend"

#: a click entry of a PROMPTS.json (:func:`dl_utils.sam2al.load_prompts`)
Click = dict[str, Any]


@dataclass(frozen=True)
class ClickSpan:
    """How ``dl-utils segment`` propagates clicks, where annotate propagates only what it clicked.

    A segment run resumes a whole store (objects clicked by earlier runs included) over a frame
    range, and tells the user which stored masks a changed prompt drops; annotate's text step does
    its own tracking, so there the clicked objects alone are propagated over the whole source.
    """

    start: int | None = None  # first source frame (inclusive)
    stop: int | None = None  # last source frame (inclusive)
    report: Callable[[str], None] | None = None  # told before a changed prompt drops stored masks


# ----------------------------------------------------------------------------- the ledger
def steps(store: AnnotationStore) -> dict[str, Any]:
    """The annotate steps recorded in ``store`` ({step: {"status": ..., ...}})."""
    return dict(store.get_meta(STEPS_KEY) or {})


def mark(store: AnnotationStore, step: str, **info: Any) -> None:
    """Record one step's state in the store meta :data:`STEPS_KEY`."""
    s = steps(store)
    s[step] = info
    store.set_meta(STEPS_KEY, s)


def exemplar_record(src: FrameSource, prompt: Prompt, exemplars: Mapping[int, Sequence[Exemplar]] | None
                    ) -> list[list[Any]]:
    """SAM 3 exemplar boxes as the ledger keeps them: sorted ``[frame, x1, y1, x2, y2, positive,
    phrase]`` rows (a box without a phrase on a one-phrase caption names that phrase), so the same
    boxes compare equal however they were given."""
    phrases = list(prompt.phrases)
    rows = []
    for f, es in (exemplars or {}).items():
        for e in es:
            ph = e.phrase if e.phrase is not None else (phrases[0] if len(phrases) == 1 else None)
            rows.append([int(f), *(float(v) for v in e.box), bool(e.positive), ph])
    return sorted(rows, key=lambda r: (r[0], r[1:5], r[5], str(r[6])))


def check_same_exemplars(store: AnnotationStore, prompt: Prompt, done: Sequence[Any], wanted: Sequence[Any],
                         frame: int | None = None) -> None:
    """The ledger's answer to a finished text step asked again: with the boxes it was run with (or
    none given) it is "already done"; with other boxes a one-line InputError, because skipping would
    drop the new boxes silently and re-running would add every instance a second time."""
    if not wanted or [list(r) for r in done] == [list(r) for r in wanted]:
        return
    what = f"image {frame}" if frame is not None else "the video"
    raise InputError(
        f"{store.path}: {what} is already annotated with {prompt.text!r} "
        f"{'with other exemplar boxes' if done else 'without exemplar boxes'}; use a new --out (store) for "
        "these boxes, or another caption"
    )


def to_ranges(frames: set[int]) -> list[list[int]]:
    """Sorted numbers as ``[[first, last], ...]`` runs: the record written after every image
    stays a few numbers long (images are done in order), not one that grows with the folder."""
    out: list[list[int]] = []
    for f in sorted(frames):
        if out and f == out[-1][1] + 1:
            out[-1][1] = f
        else:
            out.append([f, f])
    return out


def from_ranges(ranges: list[list[int]]) -> set[int]:
    return {f for a, b in ranges for f in range(int(a), int(b) + 1)}


# ----------------------------------------------------------------------------- the backend record
def recorded_backend(store: StoreReader) -> dict[str, Any] | None:
    """The text backend recorded in ``store`` (``{"backend", "model"}``), None before any text run."""
    got = store.get_meta(BACKEND_KEY)
    return dict(got) if isinstance(got, dict) and got.get("backend") else None


def check_backend(store: StoreReader, options: DetectorOptions) -> None:
    """Refuse a text run whose backend differs from the one recorded in ``store``.

    Why: each backend numbers, scores and tracks its objects its own way (SAM 3 its own ids on every
    frame, the keyframe tracker SAM2's), and the annotate ledger and SAM 3's resume read the store as
    their own; mixing two in one store would corrupt both. Stores from before the record are accepted."""
    rec = recorded_backend(store)
    if rec is not None and rec["backend"] != options.backend:
        raise InputError(f"{store.path} was annotated with backend {rec['backend']}; use a new --out for "
                         f"backend {options.backend}")


def check_store_backend(path: str | os.PathLike[str], options: DetectorOptions) -> None:
    """:func:`check_backend` on the store at ``path`` when it exists, read-only: the drivers call it
    before loading a model (a 3.4 GB SAM 3 load should not precede the refusal)."""
    from pathlib import Path

    from ..store import AnnotationStore

    if not Path(path).is_file():
        return
    with AnnotationStore.open(path, readonly=True) as st:
        check_backend(st, options)


def record_backend(store: AnnotationStore, options: DetectorOptions) -> None:
    """Check, then record at the first text run, the backend and model of the text step."""
    check_backend(store, options)
    if recorded_backend(store) is None:
        store.set_meta(BACKEND_KEY, {"backend": options.backend, "model": options.model_label})


# ----------------------------------------------------------------------------- models
def open_session(src: FrameSource, store: AnnotationStore, sam: SamOptions,
                 sam_video_model: Any = None) -> VideoSession:
    """A SAM2 video session on ``src`` writing into ``store`` (``sam_video_model``: a pre-built model),
    in ``sam``'s tracker mode (``--tracker``/``--samurai``/``--force``: a store whose results the
    other tracker made is refused by the session, naming ``--out`` and ``--force``), precision
    (``--precision``) and ``--compile`` (a pre-built model must then be compiled already)."""
    from ..sam2al import VideoSession

    if sam_video_model is not None:  # with sam.compile it must be built compiled (the session refuses otherwise)
        return VideoSession(src, store, sam_model=sam_video_model, **sam.session_kwargs())
    return VideoSession(src, store, model=sam.model_name, checkpoint=sam.checkpoint, image_size=sam.image_size,
                        device=sam.device, **sam.session_kwargs())


def stored_tracker(store: AnnotationStore) -> str | None:
    """The tracker whose propagated results ``store`` holds (``"sam2"``/``"samurai"``), None when it
    holds none: the rule :class:`~dl_utils.sam2al.VideoSession` refuses a switch by (its meta
    ``sam2al.tracker``; a store with a propagation run and no record was made by SAM2)."""
    from ..sam2al.session import stored_tracker as rule

    return rule(store)


def check_store_tracker(path: str | os.PathLike[str], sam: SamOptions) -> None:
    """Refuse, read-only and before any model loads, a run whose tracker differs from the one that
    made the propagated results of the store at ``path`` (unless ``sam.force``); the session refuses
    the same later, this only saves the detector's and SAM2's loading time."""
    from ..store import AnnotationStore

    if sam.force or not os.path.isfile(path):
        return
    with AnnotationStore.open(path, readonly=True) as st:
        have = stored_tracker(st)
        if have is not None and have != sam.tracker:
            raise InputError(f"{st.path} holds results tracked with --tracker {have}, not {sam.tracker}; write to "
                             "a new store (--out) or pass --force to recompute them")


# ----------------------------------------------------------------------------- the driver
def run_into_store(
    src: FrameSource,
    store: AnnotationStore,
    *,
    prompt: Prompt | None = None,
    clicks: Sequence[Click] = (),
    clicks_file: str | os.PathLike[str] | None = None,
    detector: Detector | None = None,
    detector_options: DetectorOptions | None = None,
    sam: SamOptions | None = None,
    track: TrackOptions | None = None,
    table: ClassTable | None = None,
    segment: bool = True,
    ledger: bool = False,
    run_id: int | None = None,
    frames: Sequence[int] | None = None,
    images: Mapping[int, np.ndarray] | None = None,
    session: VideoSession | None = None,
    sam_video_model: Any = None,
    segmenter: ImageSegmenter | None = None,
    progress: bool = True,
    callback: Callable[[int, Instances], Any] | None = None,
    span: ClickSpan | None = None,
    sam3_model: Any = None,
    sam3_video_model: Any = None,
    exemplars: Mapping[int, Sequence[Exemplar]] | None = None,
) -> dict[str, Any]:
    """Run ``clicks`` (PROMPTS.json entries) and ``prompt`` into ``store``; see the module doc.

    ``clicks_file`` names the clicks in errors. ``table``: the loaded class table (labels of new
    objects). ``run_id``: the store run the detections are recorded under (the ``detect`` command's);
    ``ledger`` runs open their own. ``frames``: the image path's frames (source frame numbers; the
    widget's current frame), else every ``track.every``-th; ``images``: those already decoded, by
    frame number (the widget's current image). ``session``: an open video session (the
    widget's; left open), else one is opened from ``sam`` and closed. ``callback(frame, instances)`` is
    called for every frame the tracker writes. ``span``: segment's propagation (see the module doc).
    ``sam3_model`` / ``sam3_video_model``: pre-built SAM 3 image / video models for ``backend="sam3"``
    (else the released one is built from ``detector_options`` when a step needs it).
    ``exemplars``: SAM 3's box exemplars ("more like this one"), by frame number. On the image path
    an image with exemplars is segmented with its caption and those boxes
    (``Sam3ImageEngine.segment(image, caption, exemplars)``); they are pixels of that one image. On
    the video path they go to SAM 3's video session with the text (one frame, one box per phrase;
    on a frame after the first the session tracks forward then backward from it: see
    :class:`~dl_utils.sam3al.video.Sam3VideoSession`), so every instance is tracked through the video.

    Returns ``{"tracked", "every", "resumed" (video), "points": {...}, "text": {...}}``: ``points``
    has ``applied`` (and, on video, ``objects``, ``frames_written``); ``text`` the tracker's summary
    (``status``, ``objects``, ``ended``, ``keyframes``, ``detections``; SAM 3's session adds ``frames``,
    the frames written, and has no keyframes: it detects on every frame) or, on images, ``status``,
    ``detections``, ``frames`` (detected now) and ``images`` (all finished ones, with ``ledger``).
    With ``span``, ``points`` also has ``dropped`` ({object: [frames]}) and ``propagation`` (the
    session's propagation summary). With ``backend="sam3"`` on video the clicks refine SAM 3's
    objects after the text step (:func:`clicks_into_video_sam3`), the same ``points`` keys.
    ``sam2`` (when a SAM2 engine ran): its ``model``, resolved ``precision`` and ``compile``
    (:func:`~dl_utils.drivers.options.sam2_summary`), so a summary says how its masks were computed.
    """
    detector_options = detector_options or DetectorOptions()
    sam = sam or SamOptions()
    track = track or TrackOptions()
    sam.check_backend(detector_options.backend)
    sam.check_prebuilt(sam_video_model=sam_video_model, segmenter=segmenter)  # --compile with eager networks
    # a session given by the caller (the widget on a frame folder) means the video path too
    tracked = span is not None or (bool(track.track) and (src.kind == "video" or session is not None))
    out: dict[str, Any] = {"tracked": tracked, "every": track.every_for(tracked)}
    where = clicks_file if clicks_file is not None else "prompts"
    if exemplars and (detector_options.backend != "sam3" or prompt is None or span is not None):
        raise InputError("exemplar boxes go with a text prompt and --backend sam3 (not with segment's span)")
    if tracked:
        out.update(_video(src, store, prompt, list(clicks), where, detector=detector, options=detector_options,
                          sam=sam, track=track, table=table, segment=segment, ledger=ledger, run_id=run_id,
                          session=session, sam_video_model=sam_video_model, progress=progress,
                          callback=callback, span=span, sam3_video_model=sam3_video_model, exemplars=exemplars))
    else:
        out.update(_images(src, store, prompt, list(clicks), where, detector=detector, options=detector_options,
                           sam=sam, every=out["every"], table=table, segment=segment, ledger=ledger,
                           run_id=run_id, frames=frames, images=images, segmenter=segmenter,
                           progress=progress, sam3_model=sam3_model, exemplars=exemplars))
    return out


def _video(src: FrameSource, store: AnnotationStore, prompt: Prompt | None, clicks: list[Click], where: Any, *,
           detector: Detector | None, options: DetectorOptions, sam: SamOptions, track: TrackOptions,
           table: ClassTable | None, segment: bool, ledger: bool, run_id: int | None,
           session: VideoSession | None, sam_video_model: Any, progress: bool,
           callback: Callable[[int, Instances], Any] | None, span: ClickSpan | None = None,
           sam3_video_model: Any = None, exemplars: Mapping[int, Sequence[Exemplar]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    every = track.every_for(True)
    sam3 = prompt is not None and options.backend == "sam3"
    if options.backend == "sam3" and (sam3 or clicks):
        options.check_sam3()
        if span is not None:
            raise InputError(f"{where}: segment's span does not apply to --backend sam3 on video (SAM 3 refines "
                             "one object through the whole video); leave --start/--stop out")
        if track.every is not None and sam3:
            raise InputError(f"--every {track.every}: SAM 3 detects on every frame of a video; leave --every "
                             "out with --backend sam3 (or use --no-track for independent keyframes)")
        if clicks and not sam3 and not sam3_captions(store):
            raise InputError(f"{where}: clicks with --backend sam3 on video refine SAM 3's objects, and "
                             f"{store.path} has no SAM 3 run; run the text step first (--text ... --backend sam3)")
        if not sam3:  # clicks alone: refine what an earlier text run made
            out["points"] = clicks_into_video_sam3(src, store, clicks, where, options, table=table,
                                                   model=sam3_video_model, progress=progress, callback=callback)
            if ledger:
                mark(store, "points", status="done", objects=out["points"]["objects"])
            return out
    own = session is None and not sam3 and (bool(clicks) or span is not None or (prompt is not None and segment))
    if own and prompt is not None and segment and sam.force and ledger \
            and (steps(store).get("text") or {}).get("status") == "done":
        prior = stored_tracker(store)
        if prior is not None and prior != sam.tracker:  # --force drops the text step's tracked masks too,
            # and a finished text run is not run again: the store would keep holes
            raise InputError(f"{store.path} holds text-step results tracked with --tracker {prior}; --force "
                             f"recomputes click propagation only: write the --text run with --tracker "
                             f"{sam.tracker} to a new store (--out)")
    if own:
        session = open_session(src, store, sam, sam_video_model)
    try:
        if session is not None:
            out["resumed"] = bool(session.object_ids)
            out["sam2"] = sam2_summary(session)  # model, precision, compile: the summaries name them
        if (clicks or span is not None) and not sam3:
            assert session is not None
            out["points"] = clicks_into_video(session, clicks, where, direction=sam.direction, progress=progress,
                                              span=span)
            if ledger:
                mark(store, "points", status="done", objects=out["points"]["objects"])
        if prompt is not None:
            check_backend(store, options)  # before "already done": another backend's finished run is not ours
            done = steps(store).get("text") or {} if ledger else {}
            wanted = exemplar_record(src, prompt, exemplars) if sam3 else []
            if done.get("status") == "done" and done.get("prompt") == prompt.caption:
                check_same_exemplars(store, prompt, done.get("exemplars") or [], wanted)
                out["text"] = {"status": "already done", **{k: v for k, v in done.items() if k != "status"}}
                if sam3 and clicks:
                    out["points"] = clicks_into_video_sam3(src, store, clicks, where, options, table=table,
                                                           model=sam3_video_model, progress=progress,
                                                           callback=callback)
                    mark(store, "points", status="done", objects=out["points"]["objects"])
                return out
            if done.get("prompt") not in (None, prompt.caption):
                raise InputError(
                    f"{store.path} was annotated with the text {done['prompt']!r}; use a new --out for "
                    f"{prompt.caption!r} (or export and merge)"
                )
            record_backend(store, options)
            if sam3 and clicks:  # what can be told before SAM 3's whole pass (objects it makes are not there yet)
                check_sam3_entries(src, store, clicks, where)
            if ledger:
                mark(store, "text", status="running", prompt=prompt.caption)
            if sam3:
                s3 = open_sam3_session(src, store, prompt, options, table=table, model=sam3_video_model,
                                       exemplars=exemplars)
                try:
                    res = text_into_video_sam3(src, store, prompt, options, progress=progress, callback=callback,
                                               session=s3)
                    if ledger or clicks:
                        if res["status"] != "done":
                            raise InputError(f"the text step stopped ({res['status']}); run again to resume")
                    if ledger:
                        mark(store, "text", status="done", prompt=prompt.caption, objects=res["objects"],
                             keyframes=0, frames=res["frames"], **({"exemplars": wanted} if wanted else {}))
                    out["text"] = res
                    if clicks:  # on the text run's own session: its state is the finished run, no replay
                        out["points"] = clicks_into_video_sam3(src, store, clicks, where, options, table=table,
                                                               progress=progress, callback=callback,
                                                               sessions={prompt.caption: s3})
                        if ledger:
                            mark(store, "points", status="done", objects=out["points"]["objects"])
                finally:
                    s3.close()
                return out
            det = detector or options.build(table)
            if segment:
                from ..dinoal.video import GroundedVideoTracker

                assert session is not None
                res = GroundedVideoTracker(session, det, prompt, every=every,
                                           config=track.tracker_config()).run(progress=progress, callback=callback)
            else:
                from ..dinoal.video import track_boxes

                res = track_boxes(src, store, det, prompt, every=every, progress=progress, run_id=run_id,
                                  config=track.tracker_config())
            if ledger:
                if res["status"] not in ("done", "no objects found"):
                    raise InputError(f"the text step stopped ({res['status']}); run again to resume")
                mark(store, "text", status="done", prompt=prompt.caption, objects=res["objects"],
                     keyframes=len(res["keyframes"]))
            out["text"] = res
    finally:
        if own and session is not None:
            session.close()
    return out


def open_sam3_session(src: FrameSource, store: AnnotationStore, caption: Prompt | str, options: DetectorOptions, *,
                      table: ClassTable | None = None, model: Any = None,
                      exemplars: Mapping[int, Sequence[Exemplar]] | None = None) -> Sam3VideoSession:
    """A :class:`~dl_utils.sam3al.video.Sam3VideoSession` for ``caption`` on ``src`` into ``store``
    (``model``: a pre-built SAM 3 video model, else the released one from ``options``), with the
    driver's settings: phrases naming no class of ``table`` are an error (SAM 3 would spend a whole
    pass on a concept then dropped), the score threshold and model label of ``options``.
    ``exemplars``: box exemplars by frame number, handed to the session with their frame."""
    import dataclasses

    from ..sam3al.prompts import Exemplar as _Exemplar
    from ..sam3al.video import Sam3VideoOptions, Sam3VideoSession

    options.check_sam3()
    if model is None:
        model = options.build_sam3("video")
    exs = [dataclasses.replace(e, frame=int(f)) if isinstance(e, _Exemplar) else e
           for f, es in (exemplars or {}).items() for e in es]
    return Sam3VideoSession(model, src, store, caption, classes=table, on_unknown="error",
                            options=Sam3VideoOptions(score_threshold_detection=options.sam3_score_threshold()),
                            model_name=options.model_label, exemplars=exs)


def text_into_video_sam3(src: FrameSource, store: AnnotationStore, prompt: Prompt, options: DetectorOptions, *,
                         table: ClassTable | None = None, model: Any = None, progress: bool = True,
                         callback: Callable[[int, Instances], Any] | None = None,
                         session: Sam3VideoSession | None = None) -> dict[str, Any]:
    """The text step on video with SAM 3: a :class:`~dl_utils.sam3al.video.Sam3VideoSession` over
    the whole source (``model``: a pre-built SAM 3 video model, else the released one from
    ``options``), written frame by frame; a re-run resumes from the store (the session's replay).
    ``session``: one from :func:`open_sam3_session`, used and left open (the clicks that follow
    refine on its finished state); else one is opened and closed here.

    Returns the keyframe tracker's summary keys (``status``, ``objects``, ``ended`` (empty: SAM 3
    keeps no ended list), ``keyframes`` (empty: it detects on every frame), ``detections``: the
    instances written) plus ``frames`` (frames written) and ``engine``. Phrases that map to no class
    of ``table`` are an error (SAM 3 would spend a whole pass on a concept then dropped)."""
    from tqdm.auto import tqdm

    own = session is None
    if session is None:
        session = open_sam3_session(src, store, prompt, options, table=table, model=model)
    bar = tqdm(total=len(src), desc="sam3", unit="frame", disable=None if progress else True)

    def each(frame: int, instances: Instances) -> Any:
        bar.update(1)
        return callback(frame, instances) if callback is not None else None

    try:
        with bar:
            r = session.propagate(each)
    finally:
        if own:
            session.close()  # the states and the decoded frames; the source reopens when read again
    return {"status": r["status"], "objects": list(r.get("objects", [])), "ended": [], "keyframes": [],
            "detections": int(r.get("instances_written", 0)), "frames": int(r.get("frames_written", 0)),
            "frames_skipped": int(r.get("frames_skipped", 0)), "engine": "sam3", "seconds": r.get("seconds")}


def sam3_captions(store: StoreReader) -> list[str]:
    """The captions of the SAM 3 text runs in ``store`` (finished or not), in the order first run."""
    from ..sam3al.video import PROGRESS_KEY

    got = store.get_meta(PROGRESS_KEY, {}) or {}
    return [str(c) for c in got] if isinstance(got, dict) else []


def sam3_caption_of(store: StoreReader, object_id: int) -> str | None:
    """The caption of the SAM 3 run that made store object ``object_id``; None for any other object
    (clicked with SAM2, detected by GroundingDINO, or absent)."""
    try:
        obj = store.get_object(int(object_id))
    except InputError:  # an unknown id: the caller says which entry and what to use
        return None
    a = obj.attributes.get("sam3") if isinstance(obj.attributes, dict) else None
    return str(a["caption"]) if isinstance(a, dict) and a.get("caption") is not None else None


def check_sam3_entries(src: FrameSource, store: StoreReader, clicks: list[Click], where: Any) -> None:
    """Before the text step: each entry's frame is in ``src`` and its object, when the store
    already has it, is one SAM 3 made (a SAM2 or GroundingDINO object would fail only after the pass)."""
    from ..sam2al.segment import check_entry

    ids = {o.id for o in store.objects()}
    for i, e in enumerate(clicks):
        check_entry(src, e, i, where)
        if e["object"] in ids and sam3_caption_of(store, e["object"]) is None:
            raise InputError(_not_sam3(where, i, e, store))


def _not_sam3(where: Any, i: int, e: Click, store: StoreReader) -> str:
    return (f"{where}: entry {i}: object {e['object']} is not an object SAM 3 made in {store.path}; with "
            "--backend sam3 clicks refine SAM 3's objects: use an object id from the store (listed by "
            "`dl-utils store info` or the widget)")


def clicks_into_video_sam3(src: FrameSource, store: AnnotationStore, clicks: list[Click], where: Any,
                           options: DetectorOptions, *, table: ClassTable | None = None, model: Any = None,
                           progress: bool = True, callback: Callable[[int, Instances], Any] | None = None,
                           sessions: Mapping[str, Sam3VideoSession] | None = None) -> dict[str, Any]:
    """Click entries refining SAM 3's own objects (:meth:`Sam3VideoSession.refine`): each entry's
    ``object`` must be a store object a SAM 3 text run made; its clicks go to sam3's refinement of
    that instance on the entry's frame, carried through the whole video, ids kept.
    ``{"applied", "objects", "frames_written"}`` as the SAM2 path.

    ``sessions``: open sessions by caption (the text run just finished on one: no replay); a caption
    without one gets a new session, which replays its finished text run first (writing nothing), as
    refine requires. Resume: when every entry is already applied (a keyframe with the same clicks
    in the store, or a finished ``sam3-refine`` run of the store with the same object, frame and
    clicks: refined masks may leave the clicked frame without the object, so no keyframe), nothing
    runs. Why re-run all of them when only some are: sam3's refinements build on each
    other in its state, which a new session does not have (it replays the text run only), so the
    earlier entries are refined again (same result, deterministic) before the new ones; ``applied``
    counts the new ones. Every entry is checked before any model work."""
    from tqdm.auto import tqdm

    from ..annotations import Clicks
    from ..sam2al.segment import check_entry, same_prompt

    captions: list[str | None] = []
    for i, e in enumerate(clicks):
        check_entry(src, e, i, where)
        cap = sam3_caption_of(store, e["object"])
        if cap is None:
            raise InputError(_not_sam3(where, i, e, store))
        captions.append(cap)
    def entry_clicks(e: Click) -> Clicks:
        return Clicks(points=tuple(tuple(pt) for pt in e["points"] or ()), box=e["box"])

    def key(caption: Any, oid: Any, frame: Any, c: Any) -> str:
        return json.dumps([caption, int(oid), int(frame), c], sort_keys=True)

    done = {key(r["params"].get("caption"), r["params"].get("object"), r["params"].get("frame"),
                r["params"].get("clicks"))
            for r in store.runs(status="done") if r["kind"] == "sam3-refine" and isinstance(r.get("params"), dict)}
    new = [i for i, e in enumerate(clicks)
           if not same_prompt(store.read_frame(e["frame"]).by_object().get(e["object"]), e)
           and key(captions[i], e["object"], e["frame"], entry_clicks(e).to_json()) not in done]
    objects = sorted({int(e["object"]) for e in clicks})
    if not new:
        return {"applied": 0, "objects": objects, "frames_written": 0}
    opened: dict[str, Sam3VideoSession] = {}
    frames = 0
    try:
        for i, e in enumerate(tqdm(clicks, desc="sam3 refine", unit="entry", disable=None if progress else True)):
            cap = captions[i]
            assert cap is not None
            s = (sessions or {}).get(cap) or opened.get(cap)
            if s is None:
                s = opened[cap] = open_sam3_session(src, store, cap, options, table=table, model=model)
            try:
                r = s.refine(e["frame"], int(e["object"]), entry_clicks(e), callback=callback)
            except InputError as err:
                raise type(err)(f"{where}: entry {i}: {err}") from None
            frames += int(r["frames_written"])
    finally:
        for s in opened.values():
            s.close()
    return {"applied": len(new), "objects": objects, "frames_written": frames}


def clicks_into_video(session: VideoSession, clicks: list[Click], where: Any, *, direction: str,
                      progress: bool = True, span: ClickSpan | None = None) -> dict[str, Any]:
    """Apply click entries to ``session`` (entries already in its store are skipped) and propagate
    the clicked objects ``direction``; ``{"applied", "objects", "frames_written"}``.

    With ``span`` (segment): every object of the store over ``span.start..span.stop``, a range with
    no kept frame refused before a prompt changes the store, the drops of changed prompts reported
    and returned (``dropped``), and the propagation summary returned (``propagation``) whatever its
    status: the caller reports a cancelled run instead of failing it.
    """
    from ..sam2al import apply_prompts

    if span is None:
        applied = apply_prompts(session, clicks, where)
        clicked = sorted({e["object"] for e in clicks})
        r = session.propagate(direction, objects=clicked, progress=progress)
        if r["status"] != "done":
            raise InputError(f"propagation of the clicked objects stopped ({r['status']}); run again to resume")
        return {"applied": applied, "objects": clicked, "frames_written": r["frames_written"]}
    session._range(span.start, span.stop)  # a range with no kept frame fails before the prompts change anything
    dropped: dict[int, list[int]] = {}
    applied = apply_prompts(session, clicks, where, start=span.start, stop=span.stop, report=span.report,
                            dropped=dropped)
    r = session.propagate(direction, span.start, span.stop, progress=progress)
    return {"applied": applied, "objects": r["objects"], "frames_written": r["frames_written"],
            "dropped": dropped, "propagation": r}


def _images(src: FrameSource, store: AnnotationStore, prompt: Prompt | None, clicks: list[Click], where: Any, *,
            detector: Detector | None, options: DetectorOptions, sam: SamOptions, every: int,
            table: ClassTable | None, segment: bool, ledger: bool, run_id: int | None,
            frames: Sequence[int] | None, images: Mapping[int, np.ndarray] | None,
            segmenter: ImageSegmenter | None, progress: bool, sam3_model: Any = None,
            exemplars: Mapping[int, Sequence[Exemplar]] | None = None) -> dict[str, Any]:
    """Image sets (and untracked video): every click entry and every image's detections on their own.

    With ``backend="sam3"`` the detections carry SAM 3's masks: a SAM2 segmenter is built only for
    clicks, and the text step does not use it."""
    out: dict[str, Any] = {}
    sam3 = prompt is not None and options.backend == "sam3"
    if sam3:
        options.check_sam3()
    if segmenter is None and (clicks or (prompt is not None and segment and not sam3)):
        segmenter = sam.image_segmenter()
    if segmenter is not None and (clicks or (prompt is not None and not sam3)):
        out["sam2"] = sam2_summary(segmenter)  # model, precision, compile: the summaries name them
    if clicks:
        assert segmenter is not None
        out["points"] = clicks_into_images(src, store, segmenter, clicks, where, progress=progress)
    if prompt is not None:
        record_backend(store, options)
        if detector is not None:
            det = detector
        elif sam3 and sam3_model is not None:
            det = options.sam3_detector(sam3_model, table)
        else:
            det = options.build(table)
        out["text"] = text_into_images(src, store, det, prompt, segmenter=None if sam3 else segmenter,
                                       table=table, every=every, frames=frames, images=images, ledger=ledger,
                                       run_id=run_id, progress=progress, exemplars=exemplars)
    return out


def clicks_into_images(src: FrameSource, store: AnnotationStore, segmenter: ImageSegmenter, clicks: list[Click],
                       where: Any, *, progress: bool = True) -> dict[str, Any]:
    """Segment every click entry on its own image; entries already on their keyframe are skipped."""
    from tqdm.auto import tqdm

    from ..annotations import Source

    by_frame: dict[int, list[Click]] = {}
    for i, e in enumerate(clicks):
        try:
            src.index_of(e["frame"])
        except Exception:  # noqa: BLE001  re-raised with the file and entry named
            raise InputError(f"{where}: entry {i}: frame {e['frame']} is not one of the images of "
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
                    raise InputError(f"{where}: object {e['object']} has no 'label'; add one to its first entry")
                store.add_object(e["label"], id=e["object"])
                known.add(e["object"])
        insts = segmenter.predict_objects({e["object"]: {"points": e["points"], "box": e["box"]} for e in todo})
        for inst in insts:
            inst.keyframe = True
            inst.source = Source.SEMI_AUTO
        store.write_frame(frame, list(insts))
        done += len(todo)
    return {"applied": done}


def text_into_images(src: FrameSource, store: AnnotationStore, detector: Detector, prompt: Prompt, *,
                     segmenter: ImageSegmenter | None = None, table: ClassTable | None = None, every: int = 1,
                     frames: Sequence[int] | None = None, images: Mapping[int, np.ndarray] | None = None,
                     ledger: bool = False, run_id: int | None = None, progress: bool = True,
                     exemplars: Mapping[int, Sequence[Exemplar]] | None = None) -> dict[str, Any]:
    """Detect on every ``every``-th image (or on ``frames``); each box a new object, a mask with
    ``segmenter`` (or the detector's own mask: SAM 3). With ``ledger`` the finished images are
    recorded (positions among the source's images) and skipped on the next run, under a store run of
    their own. ``exemplars``: SAM 3 box exemplars by frame number (see :func:`run_into_store`)."""
    from tqdm.auto import tqdm

    from ..dinoal.pipeline import store_detections

    text = steps(store).get("text") or {} if ledger else {}
    finished = from_ranges(text.get("images", [])) if text.get("prompt") == prompt.caption else set()
    # exemplar boxes each finished image was detected with ({frame: record}); a finished image asked
    # again with other boxes is refused, not skipped (skipping would drop the boxes silently)
    done_exs: dict[str, Any] = dict(text.get("exemplars") or {}) if text.get("prompt") == prompt.caption else {}
    for f in sorted({*map(int, exemplars or {}), *map(int, done_exs)}):
        try:
            i = src.index_of(f)
        except Exception:  # noqa: BLE001  a frame not in the source: the detect loop names it
            continue
        if i in finished:
            check_same_exemplars(store, prompt, done_exs.get(str(f)) or [],
                                 exemplar_record(src, prompt, {f: (exemplars or {}).get(f) or ()}), frame=f)
    if frames is not None:
        wanted = [src.index_of(f) for f in frames]
    else:
        wanted = list(range(0, len(src), int(every)))
    todo = [i for i in wanted if i not in finished]
    run: int | None = run_id
    if ledger and run_id is None:
        run = store.begin_run("annotate", {"text": prompt.caption})
    n = n_frames = 0
    status = "failed"
    try:
        for i, image in tqdm(_images_at(src, todo, images or {}), total=len(todo), desc="detect", unit="image",
                             disable=None if progress else True):
            frame = src.frame_numbers[i]
            exs = (exemplars or {}).get(frame)
            dets = _detect_with_exemplars(detector, image, prompt, exs) if exs else detector.detect(image, prompt)
            store_detections(store, frame, image, dets, segmenter=segmenter, classes=table, run_id=run,
                             model=getattr(detector, "name", None), engine=getattr(detector, "engine_name", None))
            n += len(dets)
            n_frames += 1
            if ledger:
                finished.add(i)
                if exs:
                    done_exs[str(frame)] = exemplar_record(src, prompt, {frame: exs})
                mark(store, "text", status="running", prompt=prompt.caption, images=to_ranges(finished),
                     **({"exemplars": done_exs} if done_exs else {}))
        status = "done"
    finally:
        if run is not None and run_id is None:
            store.finish_run(run, status)
    res: dict[str, Any] = {"status": "done", "detections": n, "frames": n_frames}
    if ledger:
        mark(store, "text", status="done", prompt=prompt.caption, images=to_ranges(finished),
             **({"exemplars": done_exs} if done_exs else {}))
        res["images"] = len(finished)
    return res


def _detect_with_exemplars(detector: Detector, image: np.ndarray, prompt: Prompt,
                           exemplars: Sequence[Exemplar]) -> Any:
    """One image's detections with SAM 3 box exemplars. Why not ``detector.detect``: the Detector
    protocol takes (image, caption) only; exemplars are pixels of one image, so they go straight to
    the :class:`~dl_utils.drivers.options.Sam3Detector`'s engine with the caption it would run."""
    engine = getattr(detector, "engine", None)
    resolve = getattr(detector, "resolve_caption", None)
    if engine is None or resolve is None or not hasattr(engine, "segment"):
        raise InputError(f"exemplar boxes need SAM 3's image engine; the detector {type(detector).__name__} "
                         "takes text only")
    return engine.segment(image, resolve(prompt), exemplars)


def _images_at(src: FrameSource, positions: list[int], known: Mapping[int, np.ndarray]
               ) -> Iterator[tuple[int, np.ndarray]]:
    """``(position, image)`` for the given positions (``known``: images already decoded, by frame
    number); a video is read in one pass (no seek per frame)."""
    numbers = src.frame_numbers
    if src.kind != "video" or all(numbers[i] in known for i in positions):
        for i in positions:
            yield i, known[numbers[i]] if numbers[i] in known else src[i]
        return
    want = set(positions)
    for k, (_, image) in enumerate(src.iter_numbered()):
        if k in want:
            yield k, image
            want.discard(k)
            if not want:
                return


__all__ = [
    "BACKEND_KEY",
    "STEPS_KEY",
    "ClickSpan",
    "check_backend",
    "check_store_backend",
    "record_backend",
    "recorded_backend",
    "text_into_video_sam3",
    "open_sam3_session",
    "clicks_into_video_sam3",
    "sam3_captions",
    "sam3_caption_of",
    "clicks_into_images",
    "clicks_into_video",
    "from_ranges",
    "mark",
    "open_session",
    "check_store_tracker",
    "stored_tracker",
    "run_into_store",
    "steps",
    "text_into_images",
    "to_ranges",
]
