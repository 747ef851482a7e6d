"""The ``dl-utils segment`` driver: PROMPTS.json validation and a resumable run into a store."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..annotations import Instance
from ..errors import DlUtilsError, FrameIndexError, InputError
from ..models import DEFAULT_MODEL
from ..store import AnnotationStore
from .session import DIRECTIONS, VideoSession

_ENTRY_KEYS = {"frame", "object", "label", "points", "box"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_prompts(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read and validate a PROMPTS.json file (the ``dl-utils segment --prompts`` contract).

    A JSON list of ``{"frame": K, "object": ID, "label": NAME, "points": [[x, y, 1|0], ...],
    "box": [x1, y1, x2, y2]}``: source frame numbers and source pixels, points and/or box. Returns the
    entries normalised (``points``/``box`` ``None`` when absent). Every problem raises
    :class:`InputError` naming the entry index and field.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"prompts file {p} does not exist; check the --prompts path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read prompts file {p} ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{p} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(data, list):
        raise InputError(f"{p}: the top level must be a list of prompt entries, got {type(data).__name__}")
    if not data:
        raise InputError(f"{p} holds no prompts; add entries like "
                         '{"frame": 0, "object": 1, "label": "car", "points": [[x, y, 1]]}')
    out: list[dict[str, Any]] = []
    seen: dict[tuple[int, int], int] = {}
    labels: dict[int, tuple[str, int]] = {}
    for i, e in enumerate(data):
        where = f"{p}: entry {i}"
        if not isinstance(e, dict):
            raise InputError(f"{where} is a {type(e).__name__}, not an object with frame/object/label/points/box")
        bad = sorted(set(e) - _ENTRY_KEYS)
        if bad:
            raise InputError(f"{where}: unknown field(s) {bad}; use {sorted(_ENTRY_KEYS)}")
        for k in ("frame", "object", "label"):
            if k not in e:
                raise InputError(f"{where}: field {k!r} is missing")
        if not _is_int(e["frame"]) or e["frame"] < 0:
            raise InputError(f"{where}: field 'frame' is {e['frame']!r}; give a source frame number (integer >= 0)")
        if not _is_int(e["object"]) or e["object"] < 0:
            raise InputError(f"{where}: field 'object' is {e['object']!r}; give an object id (integer >= 0)")
        if not isinstance(e["label"], str) or not e["label"].strip():
            raise InputError(f"{where}: field 'label' is {e['label']!r}; give the class name as a non-empty string")
        points = e.get("points")
        if points is not None:
            if not isinstance(points, list):
                raise InputError(f"{where}: field 'points' must be a list of [x, y, 1|0]")
            for j, pt in enumerate(points):
                if not (isinstance(pt, list) and len(pt) == 3 and _is_num(pt[0]) and _is_num(pt[1])):
                    raise InputError(f"{where}: field 'points' item {j} is {pt!r}; give [x, y, 1|0] in source pixels")
                if pt[2] not in (0, 1) or isinstance(pt[2], bool) or not _is_int(pt[2]):
                    raise InputError(f"{where}: field 'points' item {j} has label {pt[2]!r}; use 1 (object) or 0 (background)")
                if pt[0] < 0 or pt[1] < 0:
                    raise InputError(f"{where}: field 'points' item {j} ({pt[0]}, {pt[1]}) is negative; give source pixels")
            points = [[float(x), float(y), int(v)] for x, y, v in points] or None
        box = e.get("box")
        if box is not None:
            if not (isinstance(box, list) and len(box) == 4 and all(_is_num(v) for v in box)):
                raise InputError(f"{where}: field 'box' is {box!r}; give [x1, y1, x2, y2] in source pixels")
            if box[2] <= box[0] or box[3] <= box[1]:
                raise InputError(f"{where}: field 'box' {box} is empty or inverted; give x2 > x1 and y2 > y1")
            box = [float(v) for v in box]
        if points is None and box is None:
            raise InputError(f"{where}: empty prompt; give 'points' and/or 'box'")
        key = (e["frame"], e["object"])
        if key in seen:
            raise InputError(f"{where}: object {key[1]} on frame {key[0]} is already prompted by entry "
                             f"{seen[key]}; merge the two entries")
        seen[key] = i
        lab = e["label"].strip()
        if e["object"] in labels and labels[e["object"]][0] != lab:
            first_lab, j = labels[e["object"]]
            raise InputError(f"{where}: field 'label' {lab!r} differs from {first_lab!r} given for object "
                             f"{e['object']} in entry {j}; one object has one label")
        labels.setdefault(e["object"], (lab, i))
        out.append({"frame": e["frame"], "object": e["object"], "label": lab, "points": points, "box": box})
    return out


def _same_prompt(stored: Instance | None, entry: dict[str, Any]) -> bool:
    if stored is None or not stored.keyframe:
        return False
    p = stored.prompts or {}
    return p.get("points") == entry["points"] and p.get("box") == entry["box"]


def frame_ranges(frames: list[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1-3, 7, 9-10"`` (consecutive source frames; a video's step is 1)."""
    out: list[str] = []
    for f in sorted(frames):
        if out and f == _last[1] + 1:
            _last[1] = f
            out[-1] = f"{_last[0]}-{f}"
        else:
            _last = [f, f]
            out.append(str(f))
    return ", ".join(out)


def _check_entry(src: Any, e: dict[str, Any], i: int, where: Any) -> None:
    """Frame in the source, box not far outside that frame (before any model work)."""
    from ..samal import USER_BOX_SLACK, parse_box

    try:
        src.index_of(e["frame"])
    except DlUtilsError:
        raise FrameIndexError(
            f"{where}: entry {i}: frame {e['frame']} is not in {src.name} (kept frames "
            f"{src.start}..{src.stop}, step {src.step}); fix the entry's 'frame'"
        ) from None
    if e["box"] is not None:
        w, h = src.frame_size(e["frame"])
        try:
            parse_box(e["box"], e["object"], (h, w), slack=USER_BOX_SLACK)
        except InputError as err:
            raise InputError(f"{where}: entry {i}: frame {e['frame']}, {err}") from None


def _drop_message(oid: int, frame: int, dropped: list[int], start: Any, stop: Any) -> str:
    msg = (f"object {oid}: the prompt on frame {frame} changed; its propagated masks on frames "
           f"{frame_ranges(dropped)} depended on it and are dropped")
    outside = [f for f in dropped if (start is not None and f < start) or (stop is not None and f > stop)]
    if outside:
        msg += (f"; frames {frame_ranges(outside)} lie outside --start {start} --stop {stop} and stay empty "
                "until segment runs over them (run it again without --start/--stop)")
    else:
        msg += " and recomputed by this run"
    return msg


def apply_prompts(session: VideoSession, prompts: list[dict[str, Any]], where: Any = "prompts", *,
                  start: Any = None, stop: Any = None, report: Any = None,
                  dropped: dict[int, list[int]] | None = None) -> int:
    """Apply :func:`load_prompts` entries to a session; entries already in its store are skipped.

    Returns how many were applied (0 on a resumed run). Errors name ``where`` and the entry. A
    changed prompt drops the object's results that depended on the old one (see
    :func:`~dl_utils.sam2al.session.dependent_frames`): ``report(message)`` is called before each
    drop (the CLI prints it) and ``dropped`` collects ``{object: [frames]}``.
    """
    src, store = session.source, session.store
    for i, e in enumerate(prompts):  # every entry is checked before the first one changes the store
        _check_entry(src, e, i, where)
    applied = 0
    for i, e in enumerate(prompts):
        if _same_prompt(store.read_frame(e["frame"]).by_object().get(e["object"]), e):
            continue
        oid = e["object"]
        stale = session._dependents(src.index_of(e["frame"]), oid) if oid in session.object_ids else []
        if stale:
            if report is not None:
                report(_drop_message(oid, e["frame"], stale, start, stop))
            if dropped is not None:
                dropped.setdefault(oid, []).extend(stale)
        try:
            if e["box"] is not None:
                session.add_box(e["frame"], e["object"], e["box"], points=e["points"], label=e["label"])
            else:
                session.add_points(e["frame"], e["object"], e["points"], label=e["label"])
        except InputError as err:
            raise type(err)(f"{where}: entry {i}: {err}") from None
        applied += 1
    return applied


def plan_segment(source: Any, store_path: str | os.PathLike[str], prompts_path: str | os.PathLike[str], *,
                 direction: str = "forward", start: int | None = None, stop: int | None = None) -> dict[str, Any]:
    """What ``dl-utils segment`` would do, without a model and without changing anything (``--dry-run``).

    Returns ``{"dry_run": True, "prompts": [{"entry", "frame", "object", "action": "apply"|"unchanged"}],
    "dropped": {object: "frames"}, "to_compute": {object: "frames"}, "dropped_outside_range": {...}}``:
    the stored propagated masks the changed prompts would drop (the rule a correction follows) and the
    frames the propagation would then compute within ``start..stop``.
    """
    from ..video_utils import FrameSource, open_frames
    from .session import dependent_frames

    if direction not in DIRECTIONS:
        raise InputError(f"direction={direction!r}: use one of {', '.join(DIRECTIONS)}")
    prompts = load_prompts(prompts_path)
    src = source if isinstance(source, FrameSource) else open_frames(source)
    nums = list(src.frame_numbers)
    kept = set(nums)
    lo = nums[0] if start is None else max(int(start), nums[0])
    hi = nums[-1] if stop is None else min(int(stop), nums[-1])
    if lo > hi:
        raise FrameIndexError(f"no kept frame of {src.name} lies in start={start}..stop={stop} (kept frames "
                              f"{nums[0]}..{nums[-1]}); give a range that overlaps them")
    for i, e in enumerate(prompts):
        _check_entry(src, e, i, prompts_path)
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
        actions, dropped = [], {}
        for i, e in enumerate(prompts):
            oid, frame = e["object"], e["frame"]
            stored = store.read_frame(frame).by_object().get(oid) if store is not None else None
            if _same_prompt(stored, e):
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
    source: Any,
    store_path: str | os.PathLike[str],
    prompts_path: str | os.PathLike[str],
    *,
    direction: str = "forward",
    start: int | None = None,
    stop: int | None = None,
    model: str = DEFAULT_MODEL,
    checkpoint: Any = None,
    image_size: int | None = None,
    device: Any = None,
    progress: bool = True,
    sam_model: Any = None,
    report: Any = None,
) -> dict[str, Any]:
    """``dl-utils segment``: prompts from PROMPTS.json, propagation into the store, a summary dict.

    A store that already holds results resumes: its keyframes are re-applied, prompts identical to
    the stored ones are not run again, and only missing frames are computed. A changed prompt drops
    the results that depended on it: ``report(message)`` says which (the CLI prints it on stderr) and
    the summary's ``dropped`` lists them per object.
    """
    from ..video_utils import FrameSource, open_frames

    if direction not in DIRECTIONS:
        raise InputError(f"direction={direction!r}: use one of {', '.join(DIRECTIONS)}")
    prompts = load_prompts(prompts_path)
    t0 = time.perf_counter()
    src = source if isinstance(source, FrameSource) else open_frames(source)
    for i, e in enumerate(prompts):  # bad entries fail before the store is touched or a model loads
        _check_entry(src, e, i, prompts_path)
    store = AnnotationStore.open_or_create(store_path, src.media_info())
    try:
        session = VideoSession(src, store, model=model, checkpoint=checkpoint, image_size=image_size,
                               device=device, sam_model=sam_model)
        session._range(start, stop)  # a range with no kept frame fails before the prompts change anything
        resumed = bool(session.object_ids)
        dropped: dict[int, list[int]] = {}
        applied = apply_prompts(session, prompts, prompts_path, start=start, stop=stop, report=report,
                                dropped=dropped)
        summary = session.propagate(direction, start, stop, progress=progress)
        summary.update(prompts_applied=applied, resumed=resumed, store=str(store.path),
                       dropped={str(o): frame_ranges(fs) for o, fs in dropped.items()},
                       seconds_total=round(time.perf_counter() - t0, 3))
        return summary
    finally:
        store.close()


def add_segment_arguments(parser: Any) -> None:
    """The ``dl-utils segment`` options (for the CLI to wire with ``run_segment_cli``)."""
    parser.add_argument("source", help="video file, image folder, glob or pattern")
    parser.add_argument("--out", required=True, help="annotation store (.sqlite); resumed when it exists")
    parser.add_argument("--prompts", required=True, help="PROMPTS.json")
    parser.add_argument("--direction", choices=DIRECTIONS, default="forward")
    parser.add_argument("--start", type=int, default=None, help="first source frame (inclusive)")
    parser.add_argument("--stop", type=int, default=None, help="last source frame (inclusive)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--checkpoint", default=None, help="official-format checkpoint {'model': state_dict}")
    parser.add_argument("--image-size", type=int, default=None, dest="image_size")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dry-run", action="store_true", dest="dry_run",
                        help="list the prompts that would be applied, the stored masks they would drop and "
                             "the frames that would be computed; change nothing, load no model")


def run_segment_cli(args: Any) -> int:
    """Run ``dl-utils segment`` from parsed arguments; prints the summary as JSON.

    Masks a changed prompt drops are announced on stderr as they are dropped; ``--dry-run`` lists
    them (and what would be computed) without changing anything.
    """
    from ..models import cli_warnings

    with cli_warnings(getattr(args, "debug", False)):
        return _run_segment_cli(args)


def _run_segment_cli(args: Any) -> int:
    import sys

    if getattr(args, "dry_run", False):
        s = plan_segment(args.source, args.out, args.prompts, direction=args.direction, start=args.start,
                         stop=args.stop)
        print(json.dumps(s, indent=2))
        return 0

    def report(msg: str) -> None:
        print(f"dl-utils segment: {msg}", file=sys.stderr, flush=True)

    s = run_segment(args.source, args.out, args.prompts, direction=args.direction, start=args.start,
                    stop=args.stop, model=args.model, checkpoint=args.checkpoint,
                    image_size=args.image_size, device=args.device, report=report)
    print(json.dumps(s, indent=2))
    return 0
