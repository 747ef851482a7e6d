"""Sam3VideoSession.refine (clicks on one instance) against sam3's own API on the same clip.

Reference: sam3's ``init_state(folder)`` + ``add_prompt(text)`` + ``propagate_in_video``, then
``add_prompt(points=..., point_labels=..., obj_id=...)`` on frame k and its partial propagation
forward from k and backward from k (``propagate_in_video(start_frame_idx=k[, reverse=True])``); each
frame's last yield is what it ends with. Our session runs with its default memory trimming, so the
comparison also checks the cache it rebuilds from the store. Clip, thresholds and the CPU context of
sam3's side come from tests/test_sam3al_video.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.sam3_fixtures import requires_sam3, tiny_sam3_video_model  # noqa: F401
from tests.test_sam3al_video import (DATA, SIZE, THRESH, clip, grab, sam3_cpu_run, sam3_reference,  # noqa: F401
                                     session, stored)

pytestmark = [requires_sam3,
              pytest.mark.skipif(not DATA.exists(), reason=f"{DATA} is absent (see ../shared/data/README)")]

PHRASE = "person"
K = 3


def reference_refine(model: Any, folder: Path, k: int, pick: Any) -> tuple[dict[int, Any], dict[int, Any], Any]:
    """(frames after the text run, frames after the refinement, the prompt used)."""
    with sam3_reference(model):
        st = model.init_state(resource_path=str(folder), offload_video_to_cpu=True)
        model.add_prompt(st, frame_idx=0, text_str=PHRASE)
        first = {int(f): grab(o) for f, o in model.propagate_in_video(st)}
        sam_id, pts, labels = pick(first)
        after = dict(first)
        f, o = model.add_prompt(st, frame_idx=k, points=pts, point_labels=labels, obj_id=sam_id)
        after[int(f)] = grab(o)
        for f, o in model.propagate_in_video(st, start_frame_idx=k):
            after[int(f)] = grab(o)
        for f, o in model.propagate_in_video(st, start_frame_idx=k, reverse=True):
            after[int(f)] = grab(o)
        return first, after, (sam_id, pts, labels)


def shown(store: Any) -> dict[int, Any]:
    """``stored`` without the empty-mask keyframe a refinement leaves where sam3 shows the refined
    object nowhere on the clicked frame (a mark of the clicks, not one of sam3's outputs)."""
    out = {}
    for i, frame in enumerate(store.media.frames):
        insts = [x for x in store.read_frame(frame) if x.provenance and x.provenance.phrase == PHRASE
                 and not (x.keyframe and not np.asarray(x.mask).any())]
        insts.sort(key=lambda x: x.provenance.extra["sam3_id"])
        masks = np.stack([x.mask for x in insts]) if insts else np.zeros((0, SIZE[1], SIZE[0]), bool)
        out[i] = ([int(x.provenance.extra["sam3_id"]) for x in insts], [x.score for x in insts], masks)
    return out


def pick_clicks(frames: dict[int, Any]) -> tuple[int, list[list[float]], list[int]]:
    """A box around the first object on frame K, a negative click in its middle, a positive one
    at a corner of the box (relative coordinates, box corners labelled 2 and 3)."""
    ids, _, masks = frames[K]
    assert len(ids) > 0, "tune THRESH: no object on frame K"
    ys, xs = np.nonzero(masks[0])
    w, h = SIZE
    x1, y1, x2, y2 = xs.min() * 0.5, ys.min() * 0.5, min(xs.max() * 0.8 + 1, w), min(ys.max() * 0.8 + 1, h)
    pts = [[x1 / w, y1 / h], [x2 / w, y2 / h], [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h], [(x1 + 2) / w, (y1 + 2) / h]]
    return int(ids[0]), pts, [2, 3, 0, 1]


def test_refine_same_as_sam3(tiny_sam3_video_model: Any, clip: Path, tmp_path: Path) -> None:  # noqa: F811
    from dl_utils.annotations import Clicks

    first, after, (sam_id, pts, labels) = reference_refine(tiny_sam3_video_model, clip, K, pick_clicks)
    s = session(tiny_sam3_video_model, clip, tmp_path / "r.db", caption=PHRASE)
    s.propagate()
    ours = stored(s.store, PHRASE)
    for f, (ids, _, masks) in first.items():
        assert ours[f][0] == ids.tolist() and np.array_equal(ours[f][2], masks), f
    assert s.memory_info()["cached_frame_outputs"] == 0  # trimmed: refine rebuilds it from the store
    w, h = SIZE
    (bx1, by1), (bx2, by2) = (pts[0][0] * w, pts[0][1] * h), (pts[1][0] * w, pts[1][1] * h)
    clicks = Clicks(points=tuple((x * w, y * h, v) for (x, y), v in zip(pts[2:], labels[2:])), box=(bx1, by1, bx2, by2))
    oid = s.phrases[0].objects[sam_id]
    seen: list[int] = []
    summary = s.refine(K, oid, clicks, callback=lambda f, _: seen.append(f))
    assert summary["status"] == "done" and K in seen and summary["frames_written"] == len(set(seen))
    ours = shown(s.store)
    changed = 0
    for f, (ids, probs, masks) in after.items():
        o_ids, o_probs, o_masks = ours[f]
        assert np.array_equal(np.asarray(o_ids, dtype=np.int64), ids), f
        assert np.array_equal(np.asarray(o_probs, dtype=np.float32), probs.astype(np.float32)), f
        assert np.array_equal(o_masks, masks), f
        changed += int(not np.array_equal(masks, first[f][2]) or not np.array_equal(ids, first[f][0]))
    assert changed > 0, "the clicks changed nothing: pick other clicks"
    # ids stable: same store objects, the clicked frame is the object's keyframe with its clicks
    assert sorted(o.id for o in s.store.objects()) == sorted(s.phrases[0].objects.values())
    # (kept also where sam3 shows it nowhere on frame K: an empty-mask keyframe)
    key = [x for x in s.store.read_frame(K) if x.object_id == oid]
    assert len(key) == 1 and key[0].keyframe and key[0].clicks == clicks
    assert key[0].mask.any() == (sam_id in after[K][0].tolist())
    assert s.memory_info()["cached_frame_outputs"] == 0
    s.close()


def test_refine_errors_are_one_line(tiny_sam3_video_model: Any, clip: Path, tmp_path: Path) -> None:  # noqa: F811
    from dl_utils.annotations import Clicks
    from dl_utils.errors import InputError

    s = session(tiny_sam3_video_model, clip, tmp_path / "e.db", caption=PHRASE)
    good = Clicks(points=((5.0, 5.0, 1),))
    bad = [
        lambda: s.refine(0, 12345, good),  # unknown object
        lambda: s.refine(0, 1, good),  # nothing run yet: no objects
    ]
    for call in bad:
        with pytest.raises(InputError) as e:
            call()
        assert "\n" not in str(e.value)
    s.phrases[0].objects[0] = 77  # as if sam3 had made it
    for call in (lambda: s.refine(99, 77, good), lambda: s.refine(0, 77, Clicks(points=((500.0, 5.0, 1),))),
                 lambda: s.refine(0, 77, Clicks()), lambda: s.refine(0, 77, Clicks(box=(10, 10, 5, 5))),
                 lambda: s.refine(0, 77, good)):  # last: propagate() not run
        with pytest.raises(InputError) as e:
            call()
        assert "\n" not in str(e.value)
    from dl_utils.interactive import PropagatingEngine
    from dl_utils.sam3al.video import Sam3ClickEngine

    eng = Sam3ClickEngine(s)
    assert isinstance(eng, PropagatingEngine) and eng.keyframes() == {}
    for call in (lambda: eng.clear_clicks(0, 77), lambda: eng.remove_object(77),
                 lambda: eng.propagate("backward", lambda f, i: None)):
        with pytest.raises(InputError):
            call()
    s.close()


def test_refine_counts_frames_once_cancels_between_frames_and_keeps_empty_keyframes(
        tiny_sam3_video_model: Any, clip: Path, tmp_path: Path) -> None:  # noqa: F811
    from dl_utils.annotations import Clicks

    from tests.test_sam3al_video import N_FRAMES

    s = session(tiny_sam3_video_model, clip, tmp_path / "k.db", caption=PHRASE)
    s.propagate()
    ids, _, masks = stored(s.store, PHRASE)[K]
    assert ids, "tune THRESH: no object on frame K"
    ys, xs = np.nonzero(masks[0])
    clicks = Clicks(points=((float(xs[0]), float(ys[0]), 1),))
    oid = s.phrases[0].objects[ids[0]]
    seen: list[int] = []
    r = s.refine(K, oid, clicks, callback=lambda f, _: seen.append(f))
    assert r["status"] == "done" and r["frames_written"] == N_FRAMES == len(set(seen))  # K once
    before = {f: [(x.object_id, x.mask.copy()) for x in s.store.read_frame(f)] for f in range(N_FRAMES)}

    # cancel between frames: stops after the first frame of the forward pass past K
    clicks2 = Clicks(points=((float(xs[0]), float(ys[0]), 1), (float(xs[-1]), float(ys[-1]), 0)))
    got: list[int] = []
    r2 = s.refine(K, oid, clicks2, callback=lambda f, _: (got.append(f), s.cancel() if f == K + 1 else None))
    assert r2["status"] == "cancelled" and got[-1] == K + 1 and r2["frames_written"] == len(set(got)) == 2
    assert s.store.runs()[-1]["status"] == "cancelled" and s.refinements[oid][K] == clicks2
    for f in range(N_FRAMES):  # frames not reached: as before; the store stays one row per object
        rows = s.store.read_frame(f)
        assert len({x.object_id for x in rows}) == len(rows)
        if f not in got:
            assert [(x.object_id, x.mask.tolist()) for x in rows] == [(o, m.tolist()) for o, m in before[f]]
    key = [x for x in s.store.read_frame(K) if x.object_id == oid]
    assert key and key[0].keyframe and key[0].clicks == clicks2
    # a later refine completes the video
    r3 = s.refine(K, oid, clicks2)
    assert r3["status"] == "done" and r3["frames_written"] == N_FRAMES

    # sam3 shows the refined object nowhere on the clicked frame: an empty-mask keyframe with the clicks
    ph = s.phrases[0]
    w, h = SIZE
    empty = {"out_obj_ids": np.zeros(0, np.int64), "out_probs": np.zeros(0, np.float32),
             "out_binary_masks": np.zeros((0, h, w), bool)}
    run_id = s.store.begin_run("test", {})
    stats = {"frames_written": 0, "instances_written": 0, "frames_computed": 0}
    s._write_refined(ph, K, empty, "forward", (ids[0], clicks), run_id, stats, None, ids[0], clicks_frame=True)
    s.store.finish_run(run_id, "done")
    key = [x for x in s.store.read_frame(K) if x.object_id == oid]
    assert len(key) == 1 and key[0].keyframe and key[0].clicks == clicks and not key[0].mask.any()
    assert all(x.object_id == oid for x in s.store.read_frame(K))  # the others sam3 no longer shows: gone
    assert ids[0] not in s._load_cached(ph, K)  # an empty keyframe is not an object in sam3's cache
    s.close()


# ----------------------------------------------------------------------------- runs prompted on frame k > 0
EX_K = 3  # the exemplar's frame
EX_BOX = (10.0, 20.0, 60.0, 60.0)  # x1, y1, x2, y2 in pixels (tests/test_sam3al_exemplars.POS)


def reference_bidir_refine(model: Any, folder: Path, c: int, pick: Any) -> tuple[dict[int, Any], dict[int, Any], Any]:
    """sam3's demo on a prompt on a middle frame: text + box on EX_K, forward then backward from it;
    then the clicks on frame ``c`` and sam3's partial propagation forward then backward from ``c``."""
    w, h = SIZE
    x1, y1, x2, y2 = EX_BOX
    with sam3_reference(model):
        st = model.init_state(resource_path=str(folder), offload_video_to_cpu=True)
        model.add_prompt(st, frame_idx=EX_K, text_str=PHRASE,
                         boxes_xywh=[[x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h]], box_labels=[1])
        first: dict[int, Any] = {}
        for rev in (False, True):
            first.update({int(f): grab(o) for f, o in model.propagate_in_video(st, start_frame_idx=EX_K, reverse=rev)})
        sam_id, pts, labels = pick(first, c)
        after = dict(first)
        f, o = model.add_prompt(st, frame_idx=c, points=pts, point_labels=labels, obj_id=sam_id)
        after[int(f)] = grab(o)
        for rev in (False, True):
            for f, o in model.propagate_in_video(st, start_frame_idx=c, reverse=rev):
                after[int(f)] = grab(o)
        return first, after, (sam_id, pts, labels)


def pick_inside(frames: dict[int, Any], c: int) -> tuple[int, list[list[float]], list[int]]:
    """A negative click in the first object's mask on frame ``c`` and a positive one elsewhere in it."""
    ids, _, masks = frames[c]
    assert len(ids) > 0, f"tune THRESH: no object on frame {c}"
    ys, xs = np.nonzero(masks[0])
    w, h = SIZE
    i, j = len(xs) // 2, len(xs) // 5
    return int(ids[0]), [[float(xs[i]) / w, float(ys[i]) / h], [float(xs[j]) / w, float(ys[j]) / h]], [0, 1]


@pytest.mark.parametrize("c,trim", [(1, False), (5, True)])  # clicked before / after the exemplar's frame
def test_refine_run_prompted_on_frame_k_same_as_sam3(tiny_sam3_video_model: Any, clip: Path,  # noqa: F811
                                                     tmp_path: Path, c: int, trim: bool) -> None:
    """Untrimmed (``trim_memory=False``): the refinement is sam3's own, frame for frame. Trimmed: the
    same while the tracker's memory window (17 frames for this model) covers the clip (8 frames), so
    this checks the cache and scores rebuilt from the store over both passes."""
    from dl_utils.annotations import Clicks
    from dl_utils.sam3al.prompts import Exemplar

    from tests.test_sam3al_video import N_FRAMES

    first, after, (sam_id, pts, labels) = reference_bidir_refine(tiny_sam3_video_model, clip, c, pick_inside)
    from tests.test_sam3al_exemplars import session as ex_session

    s = ex_session(tiny_sam3_video_model, clip, tmp_path / "b.db", PHRASE, [Exemplar(EX_BOX, frame=EX_K)],
                   trim_memory=trim)
    s.propagate()
    w, h = SIZE
    clicks = Clicks(points=tuple((x * w, y * h, v) for (x, y), v in zip(pts, labels)))
    oid = s.phrases[0].objects[sam_id]
    seen: list[int] = []
    r = s.refine(c, oid, clicks, callback=lambda f, _: seen.append(f))
    assert r["status"] == "done" and sorted(set(seen)) == list(range(N_FRAMES)) == sorted(after)
    ours = shown(s.store)
    changed = 0
    for f, (ids, probs, masks) in after.items():
        o_ids, o_probs, o_masks = ours[f]
        assert np.array_equal(np.asarray(o_ids, dtype=np.int64), ids), f
        assert np.array_equal(np.asarray(o_probs, dtype=np.float32), probs.astype(np.float32)), f
        assert np.array_equal(o_masks, masks), f
        changed += int(not np.array_equal(masks, first[f][2]) or not np.array_equal(ids, first[f][0]))
    assert changed > 0, "the clicks changed nothing: pick other clicks"
    key = [x for x in s.store.read_frame(c) if x.object_id == oid]
    assert len(key) == 1 and key[0].keyframe and key[0].clicks == clicks
    s.close()
