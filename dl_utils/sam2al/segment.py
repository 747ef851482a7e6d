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


def apply_prompts(session: VideoSession, prompts: list[dict[str, Any]], where: Any = "prompts") -> int:
    """Apply :func:`load_prompts` entries to a session; entries already in its store are skipped.

    Returns how many were applied (0 on a resumed run). Errors name ``where`` and the entry.
    """
    src, store = session.source, session.store
    applied = 0
    for i, e in enumerate(prompts):
        try:
            src.index_of(e["frame"])
        except DlUtilsError:
            raise FrameIndexError(
                f"{where}: entry {i}: frame {e['frame']} is not in {src.name} (kept frames "
                f"{src.start}..{src.stop}, step {src.step}); fix the entry's 'frame'"
            ) from None
        if _same_prompt(store.read_frame(e["frame"]).by_object().get(e["object"]), e):
            continue
        try:
            if e["box"] is not None:
                session.add_box(e["frame"], e["object"], e["box"], points=e["points"], label=e["label"])
            else:
                session.add_points(e["frame"], e["object"], e["points"], label=e["label"])
        except InputError as err:
            raise type(err)(f"{where}: entry {i}: {err}") from None
        applied += 1
    return applied


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
) -> dict[str, Any]:
    """``dl-utils segment``: prompts from PROMPTS.json, propagation into the store, a summary dict.

    A store that already holds results resumes: its keyframes are re-applied, prompts identical to
    the stored ones are not run again, and only missing frames are computed.
    """
    from ..video_utils import FrameSource, open_frames

    if direction not in DIRECTIONS:
        raise InputError(f"direction={direction!r}: use one of {', '.join(DIRECTIONS)}")
    prompts = load_prompts(prompts_path)
    t0 = time.perf_counter()
    src = source if isinstance(source, FrameSource) else open_frames(source)
    store = AnnotationStore.open_or_create(store_path, src.media_info())
    try:
        session = VideoSession(src, store, model=model, checkpoint=checkpoint, image_size=image_size,
                               device=device, sam_model=sam_model)
        resumed = bool(session.object_ids)
        applied = apply_prompts(session, prompts, prompts_path)
        summary = session.propagate(direction, start, stop, progress=progress)
        summary.update(prompts_applied=applied, resumed=resumed, store=str(store.path),
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


def run_segment_cli(args: Any) -> int:
    """Run ``dl-utils segment`` from parsed arguments; prints the summary as JSON."""
    s = run_segment(args.source, args.out, args.prompts, direction=args.direction, start=args.start,
                    stop=args.stop, model=args.model, checkpoint=args.checkpoint,
                    image_size=args.image_size, device=args.device)
    print(json.dumps(s, indent=2))
    return 0
