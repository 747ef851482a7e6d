"""PROMPTS.json: validation (:func:`load_prompts`) and applying the entries to a video session
(:func:`apply_prompts`). The ``dl-utils segment`` command that runs them lives in the drivers layer
(:mod:`dl_utils.drivers.segment`)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..annotations import Clicks, Instance
from ..errors import DlUtilsError, FrameIndexError, InputError
from .session import VideoSession

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
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read prompts file {p} ({err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{p} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
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


def same_prompt(stored: Instance | None, entry: dict[str, Any]) -> bool:
    """True when ``stored`` is a keyframe made from exactly ``entry``'s clicks (a re-run skips it)."""
    if stored is None or not stored.keyframe:
        return False
    c = stored.clicks or Clicks()
    want = Clicks(points=tuple(tuple(pt) for pt in entry["points"] or ()), box=entry["box"])
    return c.points == want.points and c.box == want.box


def frame_ranges(frames: list[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1-3, 7, 9-10"`` (consecutive source frames; a video's step is 1)."""
    runs: list[list[int]] = []
    for f in sorted(frames):
        if runs and f == runs[-1][1] + 1:
            runs[-1][1] = f
        else:
            runs.append([f, f])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def check_entry(src: Any, e: dict[str, Any], i: int, where: Any) -> None:
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
        check_entry(src, e, i, where)
    applied = 0
    for i, e in enumerate(prompts):
        if same_prompt(store.read_frame(e["frame"]).by_object().get(e["object"]), e):
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


__all__ = ["apply_prompts", "check_entry", "frame_ranges", "load_prompts", "same_prompt"]
