"""``dl-utils segment``: PROMPTS.json clicks propagated through a video into a store (resumable).

The driver of the SAM2 video engine (:mod:`dl_utils.sam2al`): :func:`plan_segment` (``--dry-run``),
:func:`run_segment`, and the argparse pieces. The engine keeps the PROMPTS.json contract
(:func:`~dl_utils.sam2al.load_prompts`, :func:`~dl_utils.sam2al.apply_prompts`).

:func:`run_segment` runs through the one driver, :func:`~dl_utils.drivers.run.run_into_store`, with a
:class:`~dl_utils.drivers.run.ClickSpan` (its frame range, every object, drops reported). It opens the
SAM2 session itself and hands it over: the session takes segment's model arguments as they are given
(a pre-built ``sam_model`` together with ``checkpoint=`` is refused), and the resume state is read
from it. :func:`plan_segment` loads no model and changes nothing, so it runs no driver; it shares the
checks done before anything opens (:func:`_checked_prompts`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import FrameIndexError
from ..models import DEFAULT_MODEL
from ..sam2al.samurai import SamuraiConfig
from ..sam2al.segment import check_entry, frame_ranges, load_prompts, same_prompt
from ..sam2al.session import VideoSession
from ..store import AnnotationStore
from ..video_utils import FrameSource
from .options import SamOptions, SourceOptions
from .run import Click, ClickSpan


def _checked_prompts(source: FrameSource | str | os.PathLike[str], prompts_path: str | os.PathLike[str],
                     direction: str, numbering: SourceOptions | None = None) -> tuple[list[Click], FrameSource]:
    """The prompts and the open source, every entry checked against it: a bad direction, file or
    entry fails before a store is opened or a model loads (the plan and the run refuse the same).

    A path is opened with ``numbering`` (PROMPTS.json frames are those numbers); an open
    :class:`FrameSource` keeps the numbering it was opened with."""
    SamOptions(direction=direction).check_direction()
    numbering = numbering or SourceOptions()
    numbering.check()
    prompts = load_prompts(prompts_path)
    src = source if isinstance(source, FrameSource) else numbering.open(source)
    try:
        for i, e in enumerate(prompts):
            check_entry(src, e, i, prompts_path)
    except BaseException:
        if src is not source:
            src.close()
        raise
    return prompts, src


def plan_segment(source: FrameSource | str | os.PathLike[str], store_path: str | os.PathLike[str], prompts_path: str | os.PathLike[str], *,
                 direction: str = "forward", start: int | None = None, stop: int | None = None,
                 numbering: SourceOptions | None = None) -> dict[str, Any]:
    """What ``dl-utils segment`` would do, without a model and without changing anything (``--dry-run``).

    Returns ``{"dry_run": True, "prompts": [{"entry", "frame", "object", "action": "apply"|"unchanged"}],
    "dropped": {object: "frames"}, "to_compute": {object: "frames"}, "dropped_outside_range": {...}}``:
    the stored propagated masks the changed prompts would drop (the rule a correction follows) and the
    frames the propagation would then compute within ``start..stop``. ``numbering``: how a source
    path's frames are numbered (``--frame-numbers``/``--first-frame``; default: by position from 0).
    """
    from ..sam2al.session import dependent_frames

    prompts, src = _checked_prompts(source, prompts_path, direction, numbering)
    nums = list(src.frame_numbers)
    kept = set(nums)
    lo = nums[0] if start is None else max(int(start), nums[0])
    hi = nums[-1] if stop is None else min(int(stop), nums[-1])
    if lo > hi:
        raise FrameIndexError(f"no kept frame of {src.name} lies in start={start}..stop={stop} (kept frames "
                              f"{nums[0]}..{nums[-1]}); give a range that overlaps them")
    path = Path(store_path)
    store = AnnotationStore.open(path, readonly=True) if path.exists() else None
    try:
        if store is not None and store.media is not None:
            store.check_media(src.media_info())
        locked: dict[int, set[int]] = {}
        done: dict[int, set[int]] = {}
        if store is not None:
            for obj in store.objects():
                insts = store.read_object(obj.id, decode=False)
                done[obj.id] = set(insts)
                for f, inst in insts.items():
                    if inst.keyframe and f in kept:
                        locked.setdefault(obj.id, set()).add(src.index_of(f))
        actions: list[dict[str, Any]] = []
        dropped: dict[int, set[int]] = {}
        for i, e in enumerate(prompts):
            oid, frame = e["object"], e["frame"]
            stored = store.read_frame(frame).by_object().get(oid) if store is not None else None
            if same_prompt(stored, e):
                actions.append({"entry": i, "frame": frame, "object": oid, "action": "unchanged"})
                continue
            idx = src.index_of(frame)
            stale = dependent_frames(store, src, oid, idx, locked.get(oid, set())) if oid in locked else []
            stale = [f for f in stale if f in done.get(oid, set())]
            for f in stale:
                done[oid].discard(f)
            dropped.setdefault(oid, set()).update(stale)
            locked.setdefault(oid, set()).add(idx)
            done.setdefault(oid, set()).add(frame)
            actions.append({"entry": i, "frame": frame, "object": oid, "action": "apply",
                            "drops": frame_ranges(stale)})
        to_compute = {}
        for oid, idxs in locked.items():
            first, last = nums[min(idxs)], nums[max(idxs)]
            want = [f for f in nums if lo <= f <= hi and f not in done.get(oid, set())
                    and ((direction == "forward" and f > first) or (direction == "backward" and f < last)
                         or direction == "both")]
            if want:
                to_compute[str(oid)] = frame_ranges(want)
        outside = {str(o): frame_ranges([f for f in fs if f < lo or f > hi]) for o, fs in dropped.items()
                   if any(f < lo or f > hi for f in fs)}
        return {"dry_run": True, "store": str(path), "direction": direction, "start": lo, "stop": hi,
                "prompts": actions,
                "dropped": {str(o): frame_ranges(sorted(fs)) for o, fs in dropped.items() if fs},
                "dropped_outside_range": outside, "to_compute": to_compute}
    finally:
        if store is not None:
            store.close()
        if src is not source:
            src.close()


def run_segment(
    source: FrameSource | str | os.PathLike[str],
    store_path: str | os.PathLike[str],
    prompts_path: str | os.PathLike[str],
    *,
    direction: str = "forward",
    start: int | None = None,
    stop: int | None = None,
    model: str = DEFAULT_MODEL,
    checkpoint: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    device: str | None = None,
    progress: bool = True,
    sam_model: Any = None,
    report: Callable[[str], None] | None = None,
    numbering: SourceOptions | None = None,
    tracker: str = "sam2",
    samurai: SamuraiConfig | dict[str, Any] | None = None,
    force: bool = False,
    precision: str | None = None,
    compile: bool = False,
) -> dict[str, Any]:
    """``dl-utils segment``: prompts from PROMPTS.json, propagation into the store, a summary dict.

    A store that already holds results resumes: its keyframes are re-applied, prompts identical to
    the stored ones are not run again, and only missing frames are computed. A changed prompt drops
    the results that depended on it: ``report(message)`` says which (the CLI prints it on stderr) and
    the summary's ``dropped`` lists them per object. ``numbering`` (``--frame-numbers names`` or
    ``--first-frame N``) numbers a source path's frames: ``start``/``stop`` and the prompts' frames
    are in those numbers, and the store records it (a store made with another numbering is refused).
    ``tracker``/``samurai``/``force`` (``--tracker``, ``--samurai``, ``--force``): the propagation
    mode (:class:`~dl_utils.drivers.options.SamOptions`); a store whose results the other tracker
    made is refused unless ``force`` (then they are dropped and recomputed). ``precision``
    (``--precision``: ``"fp32"``, ``"bf16"``, ``"fp16"``; None: bf16 on CUDA, fp32 elsewhere) and
    ``compile`` (``--compile``: upstream's ``vos_optimized`` predictor) are the session's; with a
    pre-built ``sam_model``, ``compile`` needs it built compiled. The summary's ``sam2`` names the
    model, the precision and whether it ran compiled.
    """
    from .options import sam2_summary
    from .run import run_into_store

    t0 = time.perf_counter()
    sam = SamOptions(direction=direction, tracker=tracker, samurai=samurai, force=force,  # checked before any file
                     precision=precision, compile=compile)
    prompts, src = _checked_prompts(source, prompts_path, direction, numbering)
    store = AnnotationStore.open_or_create(store_path, src.media_info())
    try:
        session = VideoSession(src, store, model=model, checkpoint=checkpoint, image_size=image_size,
                               device=device, sam_model=sam_model, **sam.session_kwargs())
        out = run_into_store(src, store, clicks=prompts, clicks_file=prompts_path,
                             sam=sam, session=session, progress=progress,
                             span=ClickSpan(start=start, stop=stop, report=report))
        points = out["points"]
        summary = dict(points["propagation"])
        summary["tracker"] = session.tracker  # which mode made these masks (the store records it too)
        summary["sam2"] = sam2_summary(session)
        summary.update(prompts_applied=points["applied"], resumed=out["resumed"], store=str(store.path),
                       dropped={str(o): frame_ranges(fs) for o, fs in points["dropped"].items()},
                       seconds_total=round(time.perf_counter() - t0, 3))
        return summary
    finally:
        store.close()


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dl-utils segment`` options (for the CLI to wire with :func:`run_segment_cli`)."""
    parser.add_argument("source", help="video file, image folder, glob or pattern")
    parser.add_argument("--out", required=True, help="annotation store (.sqlite); resumed when it exists")
    parser.add_argument("--prompts", required=True, help="PROMPTS.json")
    parser.add_argument("--start", type=int, default=None,
                        help="first source frame (inclusive; in --frame-numbers/--first-frame numbers)")
    parser.add_argument("--stop", type=int, default=None,
                        help="last source frame (inclusive; in --frame-numbers/--first-frame numbers)")
    SourceOptions.add_arguments(parser, command="segment")
    SamOptions.add_arguments(parser, command="segment")
    SamOptions.add_gpu_arguments(parser, command="segment")
    parser.add_argument("--dry-run", action="store_true", dest="dry_run",
                        help="list the prompts that would be applied, the stored masks they would drop and "
                             "the frames that would be computed; change nothing, load no model")


def run_segment_cli(args: argparse.Namespace) -> int:
    """Run ``dl-utils segment`` from parsed arguments; prints the summary as JSON.

    Masks a changed prompt drops are announced on stderr as they are dropped; ``--dry-run`` lists
    them (and what would be computed) without changing anything.
    """
    from ..models import cli_warnings

    with cli_warnings(getattr(args, "debug", False)):
        return _run_segment_cli(args)


def _run_segment_cli(args: argparse.Namespace) -> int:
    sam = SamOptions.from_args(args, command="segment")
    numbering = SourceOptions.from_args(args)
    if getattr(args, "dry_run", False):
        from .run import check_store_tracker

        check_store_tracker(args.out, sam)  # the run would refuse another tracker's store: so does its plan
        s = plan_segment(args.source, args.out, args.prompts, direction=sam.direction, start=args.start,
                         stop=args.stop, numbering=numbering)
        print(json.dumps(s, indent=2))
        return 0

    def report(msg: str) -> None:
        print(f"dl-utils segment: {msg}", file=sys.stderr, flush=True)

    sam.say_slow_modes("segment")  # --compile / fp16 on a CPU: they work, slowly
    # stdout is the JSON summary: what the engines print there (upstream's compile notices) goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        s = run_segment(args.source, args.out, args.prompts, direction=sam.direction, start=args.start,
                        stop=args.stop, model=sam.model_name, checkpoint=sam.checkpoint,
                        image_size=sam.image_size, device=sam.device, report=report, numbering=numbering,
                        tracker=sam.tracker, samurai=sam.samurai, force=sam.force, precision=sam.precision,
                        compile=sam.compile)
    print(json.dumps(s, indent=2))
    return 0


__all__ = ["add_segment_arguments", "plan_segment", "run_segment", "run_segment_cli"]
