"""dl_utils.sam2al: bitwise parity with raw SAM2VideoPredictor (tiny config, 256 px, random weights,
CPU), memory trimming, the store as ledger (callback, cancel, resume, corrections), review, errors,
PROMPTS.json validation and the ``dl-utils segment`` driver.

Parity method: the clip is cut from bedroom.mp4 and written as JPEGs once; raw upstream reads the
folder with its own loader (``init_state(video_path=folder)``), our session reads the same folder
through ``open_frames`` (OpenCV decodes JPEG exactly as PIL does here; checked below), so both sides
see the same pixels and the masks are compared with ``np.array_equal``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dl_utils.annotations import CvatOrigin, Instance, MediaInfo, Provenance, Source
from dl_utils.errors import FrameIndexError, InputError, MaskError, StoreError
from dl_utils.store import AnnotationStore
from tests.sam2_fixtures import requires_sam2, tiny_sam2_video  # noqa: F401  (fixture)

pytestmark = [requires_sam2, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

N = 30  # frames in the long clip (> max_obj_ptrs_in_encoder, so trimming really drops outputs)
SHORT = 12
W, H = 960, 540


# ----------------------------------------------------------------------------- clips and raw runs
def _write_clip(src_path: Path, out: Path, n: int) -> Path:
    from PIL import Image

    from dl_utils.video_utils import open_frames

    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(open_frames(src_path, stop=n - 1)):
        Image.fromarray(img).save(out / f"{i:05d}.jpg", quality=90)  # upstream's "<index>.jpg" names
    return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from tests.conftest import shared_file

    return _write_clip(shared_file("bedroom.mp4"), tmp_path_factory.mktemp("clip30"), N)


@pytest.fixture(scope="module")
def short_clip(clip, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip12")
    for i in range(SHORT):
        shutil.copy(clip / f"{i:05d}.jpg", out / f"{i:05d}.jpg")
    return out


def _raw_prompt(model, st, frame, oid, prompt):
    if "mask" in prompt:
        return model.add_new_mask(st, frame, oid, prompt["mask"])
    pts = prompt.get("points")
    return model.add_new_points_or_box(
        st, frame, oid,
        points=None if pts is None else [p[:2] for p in pts],
        labels=None if pts is None else [p[2] for p in pts],
        box=prompt.get("box"),
    )


def _collect(res, gen):
    for f, ids, logits in gen:
        for k, oid in enumerate(ids):
            res.setdefault(f, {})[oid] = (logits[k, 0] > 0).cpu().numpy()
    return res


def raw_run(model, folder, steps):
    """Run raw upstream: steps are ("prompt", frame, oid, prompt) or ("propagate", kwargs)."""
    st = model.init_state(str(folder))
    res: dict[int, dict[int, np.ndarray]] = {}
    for step in steps:
        if step[0] == "prompt":
            _, f, oid, pr = step
            _, ids, logits = _raw_prompt(model, st, f, oid, pr)
            res.setdefault(f, {})[oid] = (logits[list(ids).index(oid), 0] > 0).cpu().numpy()
        else:
            _collect(res, model.propagate_in_video(st, **step[1]))
    return res


def session(folder, store_path, model, **kw):
    from dl_utils.sam2al import VideoSession

    store = AnnotationStore.create(store_path, overwrite=True) if not Path(store_path).exists() else AnnotationStore.open(store_path)
    return VideoSession(folder, store, sam_model=model, **kw)


def assert_same(store, raw, frames, objects):
    checked = 0
    for f in frames:
        got = store.read_frame(f).by_object()
        for oid in objects:
            assert np.array_equal(got[oid].mask, raw[f][oid]), (f, oid)
            checked += int(0 < raw[f][oid].sum() < H * W)
    assert checked >= len(frames) * len(objects) // 2  # not a comparison of empty masks


P1 = {"points": [[400, 300, 1]]}
P2 = {"points": [[700, 200, 1], [100, 100, 0]]}
B3 = {"box": [150, 120, 520, 480]}


@pytest.fixture(scope="module")
def raw_forward(tiny_sam2_video, clip):
    return raw_run(tiny_sam2_video, clip, [("prompt", 0, 1, P1), ("prompt", 0, 2, P2), ("propagate", {})])


# ----------------------------------------------------------------------------- frames on demand
def test_lazy_frames_equal_upstream_loader_and_stay_bounded(clip):
    import cv2
    from PIL import Image
    from sam2.utils.misc import load_video_frames

    from dl_utils.sam2al import LazyFrames
    from dl_utils.video_utils import open_frames

    a = np.array(Image.open(clip / "00007.jpg").convert("RGB"))
    assert np.array_equal(a, cv2.cvtColor(cv2.imread(str(clip / "00007.jpg")), cv2.COLOR_BGR2RGB))
    ref, h, w = load_video_frames(str(clip), 256, offload_video_to_cpu=True, compute_device="cpu")
    assert (h, w) == (H, W)
    lazy = LazyFrames(open_frames(clip), 256, cache_frames=4, chunk=4)
    assert len(lazy) == N and lazy.decoded == 0
    for i in (5, 0, 29, 28, 27, 26, 25, 12):
        t = lazy[i]
        assert t.dtype == ref.dtype and t.is_contiguous() and bool(torch_equal(t, ref[i])), i
    info = lazy.cache_info()
    assert info["cached"] <= 4 and info["decoded"] <= 12  # never the whole clip; backward read in chunks
    with pytest.raises(FrameIndexError, match="outside 0..29"):
        lazy[N]


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


# ----------------------------------------------------------------------------- parity
@pytest.mark.slow
def test_forward_parity_with_trimming_store_and_callback(tiny_sam2_video, clip, raw_forward, tmp_path):
    ses = session(clip, tmp_path / "f.sqlite", tiny_sam2_video, trim_memory=True)
    first = ses.add_points(0, 1, P1["points"], label="bed")
    assert np.array_equal(first.mask, raw_forward[0][1])
    assert first.source == Source.SEMI_AUTO and first.keyframe and first.clicks.points == ((400.0, 300.0, 1),)
    ses.add_points(0, 2, np.array(P2["points"])[:, :2], labels=[1, 0], label="lamp")
    seen, held = [], []

    def cb(frame, insts):
        seen.append((frame, insts.object_ids.tolist()))
        held.append(ses.memory_info()["non_cond_outputs"])

    summary = ses.propagate("forward", callback=cb, progress=False)
    assert summary["status"] == "done" and summary["frames_written"] == N - 1
    assert summary["instances_written"] == 2 * (N - 1) == summary["frames_computed"]
    assert seen == [(f, [1, 2]) for f in range(1, N)]  # in order, as produced
    store = ses.store
    assert_same(store, raw_forward, range(N), (1, 2))
    # trimming: never more than the window memory attention reads (15 frames per object here)
    assert max(held) == ses.peak_memory_frames == 2 * 15
    assert ses.memory_info()["non_cond_outputs"] == 0 and ses.memory_info()["cond_outputs"] == 2
    assert ses.frames.decoded <= N + 1
    # store contents
    f10 = store.read_frame(10).by_object()[1]
    assert f10.source == Source.AUTO and not f10.keyframe and f10.provenance.direction == "forward"
    assert f10.provenance.area == int(f10.mask.sum()) and isinstance(f10.provenance.object_score, float)
    assert f10.provenance.engine == "sam2-video" and f10.clicks is None
    assert isinstance(f10.score, float)  # the predicted IoU of the kept mask
    assert store.read_frame(0).by_object()[2].keyframe
    assert store.progress()[1]["frames_done"] == N
    assert [r["status"] for r in store.runs()] == ["done"]
    assert {o.id: o.label for o in store.objects()} == {1: "bed", 2: "lamp"}
    assert ses.locked_frames() == {1: [0], 2: [0]}
    # a second propagate has nothing left to do
    assert ses.propagate(progress=False)["frames_written"] == 0


@pytest.mark.slow
def test_backward_parity_trimmed_and_untrimmed(tiny_sam2_video, clip, tmp_path):
    raw = raw_run(tiny_sam2_video, clip, [("prompt", N - 1, 3, B3), ("propagate", {"reverse": True})])
    held = {}
    for trim in (True, False):
        ses = session(clip, tmp_path / f"b{trim}.sqlite", tiny_sam2_video, trim_memory=trim)
        inst = ses.add_box(N - 1, 3, B3["box"], label="bed")
        assert inst.clicks.box == (150.0, 120.0, 520.0, 480.0)
        frames = []
        s = ses.propagate("backward", callback=lambda f, i, out=frames: out.append(f), progress=False)
        assert frames == list(range(N - 2, -1, -1)) and s["frames_written"] == N - 1
        assert_same(ses.store, raw, range(N), (3,))
        assert ses.store.read_frame(3).by_object()[3].provenance.direction == "backward"
        held[trim] = ses.peak_memory_frames
    assert held == {True: 15, False: N - 1}


@pytest.mark.slow
def test_objects_added_on_later_frames_and_both(tiny_sam2_video, short_clip, tmp_path):
    # raw: object 1 tracked up to frame 4, object 2 prompted on frame 5, propagation from there
    raw = raw_run(tiny_sam2_video, short_clip, [
        ("prompt", 0, 1, P1), ("propagate", {"max_frame_num_to_track": 4}),
        ("prompt", 5, 2, B3), ("propagate", {"start_frame_idx": 5}),
    ])
    ses = session(short_clip, tmp_path / "late.sqlite", tiny_sam2_video)
    ses.add_points(0, 1, P1["points"], label="bed")
    ses.add_box(5, 2, B3["box"], label="lamp")
    ses.propagate("forward", progress=False)
    assert_same(ses.store, raw, range(SHORT), (1,))
    assert_same(ses.store, raw, range(5, SHORT), (2,))
    # forward cannot reach object 2 before its first prompt: those frames read back empty, no KeyError
    assert [ses.result(f).object_ids.tolist() for f in range(5)] == [[1]] * 5
    s = ses.propagate("both", progress=False)  # the backward pass fills them, nothing else is redone
    assert s["frames_written"] == 5 and s["frames_computed"] == 5
    assert all(ses.result(f).object_ids.tolist() == [1, 2] for f in range(SHORT))
    assert ses.store.read_frame(0).by_object()[2].provenance.direction == "backward"


@pytest.mark.slow
def test_upstream_dtype_crashes_do_not_happen(tiny_sam2_video, short_clip, monkeypatch):
    """sam2 #308 (reverse from a frame after the prompt) and #577 (objects prompted on different
    frames) crash raw upstream on CPU; the engine view runs both and equals raw with the issues' fix."""
    from dl_utils.sam2al import make_engine

    m = tiny_sam2_video
    case_308 = [("prompt", 0, 1, P1), ("propagate", {"start_frame_idx": 6, "reverse": True, "max_frame_num_to_track": 2})]
    case_577 = [("prompt", 0, 1, P1), ("prompt", 4, 2, P2), ("propagate", {"max_frame_num_to_track": 5})]
    for case in (case_308, case_577):
        with pytest.raises(RuntimeError, match="BFloat16 and Float"):
            raw_run(m, short_clip, case)
    ours = [raw_run(make_engine(m), short_clip, c) for c in (case_308, case_577)]
    inner = m.memory_attention.forward

    def fixed(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):  # the fix
        return inner(curr, memory.float(), curr_pos, memory_pos.float(), num_obj_ptr_tokens)

    monkeypatch.setattr(m.memory_attention, "forward", fixed)
    for case, got in zip((case_308, case_577), ours):
        ref = raw_run(m, short_clip, case)
        assert sorted(ref) == sorted(got)
        for f in ref:
            for oid in ref[f]:
                assert np.array_equal(ref[f][oid], got[f][oid])
    monkeypatch.undo()
    assert make_engine(m).memory_attention.inner is m.memory_attention  # the shared model is untouched
    assert type(m.memory_attention).__name__ == "MemoryAttention"


def test_keyerror_frame_ranges_read_back(tiny_sam2_video, short_clip, tmp_path):
    """sam2 #418: after prompting frame k > 0 and propagating, frames before k are missing from raw's
    results (KeyError for the caller). The session answers every frame of the range."""
    raw = raw_run(tiny_sam2_video, short_clip, [("prompt", 8, 1, P1), ("propagate", {})])
    with pytest.raises(KeyError):
        raw[0][1]
    ses = session(short_clip, tmp_path / "k.sqlite", tiny_sam2_video)
    ses.add_points(8, 1, P1["points"], label="bed")
    ses.propagate("both", start=2, stop=10, progress=False)
    assert [len(ses.result(f)) for f in range(SHORT)] == [0, 0] + [1] * 9 + [0]
    assert_same(ses.store, raw, range(8, 11), (1,))


def test_second_click_refines_like_upstream(tiny_sam2_video, short_clip, tmp_path):
    two = {"points": [[400, 300, 1], [600, 400, 0]]}
    raw = raw_run(tiny_sam2_video, short_clip, [("prompt", 0, 1, P1), ("prompt", 0, 1, two),
                                                ("propagate", {"max_frame_num_to_track": 3})])
    ses = session(short_clip, tmp_path / "two.sqlite", tiny_sam2_video)
    first = ses.add_points(0, 1, P1["points"], label="bed")
    second = ses.add_points(0, 1, two["points"])
    assert second.clicks.refined is True and first.clicks.refined is False
    assert not np.array_equal(first.mask, second.mask)
    ses.propagate(stop=3, progress=False)
    assert_same(ses.store, raw, range(4), (1,))


# ----------------------------------------------------------------------------- ledger: cancel, resume, corrections
@pytest.fixture(scope="module")
def raw_short(tiny_sam2_video, short_clip):
    return raw_run(tiny_sam2_video, short_clip, [("prompt", 0, 1, P1), ("propagate", {})])


@pytest.mark.slow
def test_cancel_keeps_frames_and_resume_is_exact(tiny_sam2_video, short_clip, raw_short, tmp_path):
    path = tmp_path / "c.sqlite"
    ses = session(short_clip, path, tiny_sam2_video)
    ses.add_points(0, 1, P1["points"], label="bed")

    def stop_after_three(frame, insts):
        if frame == 3:
            ses.cancel()

    s = ses.propagate(callback=stop_after_three, progress=False)
    assert s["status"] == "cancelled" and s["frames_written"] == 3
    assert ses.store.frames() == [0, 1, 2, 3]

    def interrupt(frame, insts):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ses.propagate(callback=interrupt, progress=False)
    assert ses.store.frames() == [0, 1, 2, 3, 4]  # the frame written before the callback stays
    assert [r["status"] for r in ses.store.runs()] == ["cancelled", "cancelled"]
    ses.store.close()

    # a new session on the same store: the prompt is re-applied, only missing frames are written
    again = session(short_clip, path, tiny_sam2_video)
    assert again.locked_frames() == {1: [0]}
    written = []
    s = again.propagate(callback=lambda f, i: written.append(f), progress=False)
    assert written == list(range(5, SHORT)) and s["frames_computed"] == SHORT - 1  # 1..4 rebuild memory
    assert_same(again.store, raw_short, range(SHORT), (1,))  # exact: the gap is within resume_warmup
    assert again.store.runs()[-1]["status"] == "done"


def test_resume_warmup_bounds_recompute(tiny_sam2_video, short_clip, raw_short, tmp_path):
    path = tmp_path / "w.sqlite"
    ses = session(short_clip, path, tiny_sam2_video)
    ses.add_points(0, 1, P1["points"], label="bed")
    ses.propagate(stop=7, progress=False)
    ses.store.close()
    again = session(short_clip, path, tiny_sam2_video, resume_warmup=2)
    s = again.propagate(progress=False)
    assert s["frames_written"] == 4 and s["frames_computed"] == 6  # 6, 7 recomputed, 8..11 written
    assert_same(again.store, raw_short, range(8), (1,))


@pytest.mark.slow
def test_correction_recomputes_only_up_to_next_locked_frame(tiny_sam2_video, short_clip, tmp_path):
    ses = session(short_clip, tmp_path / "corr.sqlite", tiny_sam2_video)
    ses.add_points(0, 1, P1["points"], label="bed")
    ses.add_points(8, 1, [[420, 280, 1]])
    assert ses.propagate(progress=False)["frames_written"] == 10  # 1..7 and 9..11
    before = {f: ses.store.read_frame(f).by_object()[1].mask for f in range(SHORT)}
    calls = []
    orig = ses.engine._run_single_frame_inference
    ses.engine._run_single_frame_inference = lambda *a, **k: calls.append(k["frame_idx"]) or orig(*a, **k)
    fix = ses.add_points(4, 1, [[400, 300, 1], [600, 400, 0]])
    assert calls == [4] and fix.keyframe and ses.locked_frames(1) == [0, 4, 8]
    assert fix.clicks.refined is True  # the propagated mask of frame 4 was fed back
    assert ses.store.frames_done(1) == [0, 1, 2, 3, 4, 8, 9, 10, 11]  # 5..7 depended on the old frame 4
    calls.clear()
    written = []
    s = ses.propagate(callback=lambda f, i: written.append(f), progress=False)
    assert written == [5, 6, 7] and calls == [5, 6, 7] and s["frames_computed"] == 3
    for f in (1, 2, 3, 9, 10, 11):
        assert np.array_equal(ses.store.read_frame(f).by_object()[1].mask, before[f])
    # backward: a correction drops the backward results between the previous locked frame and itself
    back = session(short_clip, tmp_path / "corr_b.sqlite", tiny_sam2_video)
    back.add_points(SHORT - 1, 1, P1["points"], label="bed")
    back.propagate("backward", progress=False)
    back.add_points(6, 1, [[400, 300, 1], [600, 400, 0]])
    assert back.store.frames_done(1) == list(range(6, SHORT))  # 7..10 came from frame 11: kept
    written = []
    back.propagate("both", callback=lambda f, i: written.append(f), progress=False)
    assert written == [5, 4, 3, 2, 1, 0]


def test_take_corrections_from_the_store_equals_add_mask(tiny_sam2_video, short_clip, tmp_path):
    """A mask written into the store by someone else (a CVAT pull) re-propagates like add_mask."""
    fix = np.zeros((H, W), bool)
    fix[200:400, 300:700] = True
    ref = session(short_clip, tmp_path / "ref.sqlite", tiny_sam2_video)
    ref.add_points(0, 1, P1["points"], label="bed")
    ref.propagate(progress=False)
    ref.add_mask(4, 1, fix)
    ref.propagate(progress=False)
    ses = session(short_clip, tmp_path / "pulled.sqlite", tiny_sam2_video)
    ses.add_points(0, 1, P1["points"], label="bed")
    ses.propagate(progress=False)
    origin = Provenance(engine="cvat", cvat=CvatOrigin("https://cvat.example", 3, (17,)))
    pulled = Instance(1, mask=fix, source=Source.MANUAL, keyframe=True, provenance=origin)
    ses.store.write_frame(4, [pulled])  # what dl_utils.cvat.pull does
    assert ses.take_corrections([(4, 1), (4, 1)]) == 1
    assert ses.locked_frames(1) == [0, 4] and ses.store.frames_done(1) == [0, 1, 2, 3, 4]
    assert ses.store.read_frame(4).by_object()[1].provenance == origin
    ses.propagate(progress=False)
    for f in range(SHORT):
        assert np.array_equal(ses.result(f).by_object()[1].mask, ref.result(f).by_object()[1].mask), f


def test_clear_prompts_undoes_a_keyframe_exactly(tiny_sam2_video, short_clip, raw_short, tmp_path):
    ses = session(short_clip, tmp_path / "clear.sqlite", tiny_sam2_video)
    ses.add_points(0, 1, P1["points"], label="bed")
    ses.add_points(5, 1, [[300, 200, 1]])
    ses.propagate(progress=False)
    ses.clear_prompts(5, 1)
    assert ses.locked_frames(1) == [0] and ses.store.frames_done(1) == [0]
    ses.propagate(progress=False)  # recomputed from frame 0 alone: as if frame 5 was never clicked
    assert_same(ses.store, raw_short, range(SHORT), (1,))
    with pytest.raises(InputError, match="no prompt on frame 3"):
        ses.clear_prompts(3, 1)
    ses.clear_prompts(0, 1)  # the last keyframe: the object leaves SAM2, its results go, the object stays
    assert ses.object_ids == [] and ses.store.frames_done(1) == [] and [o.id for o in ses.store.objects()] == [1]


def test_propagate_only_some_objects(tiny_sam2_video, short_clip, raw_short, tmp_path):
    """``objects=`` restricts a pass; SAM2 tracks objects independently, so masks equal a lone run's."""
    ses = session(short_clip, tmp_path / "only.sqlite", tiny_sam2_video)
    ses.add_points(0, 1, P1["points"], label="bed")
    ses.add_points(0, 2, P2["points"], label="lamp")
    s = ses.propagate(objects=[1], progress=False)
    assert s["instances_written"] == SHORT - 1
    assert ses.store.frames_done(2) == [0] and ses.store.frames_done(1) == list(range(SHORT))
    assert_same(ses.store, raw_short, range(SHORT), (1,))
    with pytest.raises(InputError, match=r"objects \[7\] have no prompts"):
        ses.propagate(objects=[7], progress=False)


def test_remove_object(tiny_sam2_video, short_clip, tmp_path):
    ses = session(short_clip, tmp_path / "rm.sqlite", tiny_sam2_video)
    ses.add_points(0, 1, P1["points"], label="bed")
    ses.add_points(0, 2, P2["points"], label="lamp")
    ses.propagate(stop=2, progress=False)
    ses.remove_object(2)
    assert ses.object_ids == [1] and [o.id for o in ses.store.objects()] == [1]
    assert ses.propagate(stop=3, progress=False)["instances_written"] == 1
    ses.remove_object(1, keep_results=True)
    assert ses.object_ids == [] and ses.store.frames_done(1) == [0, 1, 2, 3]
    with pytest.raises(InputError, match="no prompts yet"):
        ses.propagate(progress=False)


# ----------------------------------------------------------------------------- review
def test_review_frames_reasons(tmp_path):
    from dl_utils.sam2al import review_frames

    store = AnnotationStore.create(tmp_path / "r.sqlite", MediaInfo("v", 40, 30, list(range(6))))
    store.add_object("car", id=1)

    def inst(area_rows, score, obj=0.0):
        m = np.zeros((30, 40), bool)
        m[:area_rows, :10] = True
        return Instance(1, mask=m, score=score if area_rows else None, source=Source.AUTO,
                        provenance=Provenance(direction="forward", area=int(m.sum()), object_score=obj))

    rows = [(10, 0.9), (10, 0.3), (0, None), (10, 0.9), (25, 0.95), (26, 0.9)]
    for f, (r, s) in enumerate(rows):
        store.write_frame(f, [inst(r, s)])
    items = review_frames(store, min_iou=0.5, area_change=0.5)
    got = {i.frame: i.reasons for i in items}
    assert got == {
        1: ["low predicted IoU 0.30 < 0.5"],
        2: ["object lost (visible on frame 1)"],
        3: ["object appeared (not visible on frame 2)"],
        4: ["area changed x2.50 vs frame 3 (100 -> 250 px)"],
    }
    assert items[0].iou == 0.3 and items[0].area == 100 and items[0].object_score == 0.0
    assert [i.frame for i in review_frames(store, start=3, stop=5)] == [4]  # frame 3 has no predecessor in range
    with pytest.raises(InputError, match="min_iou"):
        review_frames(store, min_iou=2)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_names_object_frame_and_fix(tiny_sam2_video, short_clip, tmp_path):
    from dl_utils.sam2al import VideoSession

    ses = session(short_clip, tmp_path / "e.sqlite", tiny_sam2_video)
    with pytest.raises(InputError, match=r"frame 2, object 1: point 0 \(960, 5\) lies outside the 960x540 image"):
        ses.add_points(2, 1, [[W, 5, 1]], label="bed")
    with pytest.raises(InputError, match="frame 2, object 1: empty prompt"):
        ses.add_points(2, 1, [], label="bed")
    with pytest.raises(InputError, match=r"unknown object id 7: .* pass label="):
        ses.add_points(2, 7, [[5, 5, 1]])
    with pytest.raises(FrameIndexError, match="object 1: .*frame 99 is not one of the kept frames"):
        ses.add_points(99, 1, [[5, 5, 1]], label="bed")
    with pytest.raises(InputError, match="2 points with 1 labels"):
        ses.add_points(2, 1, [[5, 5], [6, 6]], labels=[1], label="bed")
    with pytest.raises(InputError, match=r"frame 2, object 1: box .* is empty or inverted"):
        ses.add_box(2, 1, [50, 50, 10, 80], label="bed")
    with pytest.raises(MaskError, match=r"object 1, frame 2: mask has shape \(10, 10\)"):
        ses.add_mask(2, 1, np.zeros((10, 10), bool), label="bed")
    with pytest.raises(InputError, match="no prompts yet"):
        ses.propagate(progress=False)
    ses.add_points(2, 1, [[5, 5, 1]], label="bed")
    with pytest.raises(InputError, match="object 1 is a 'bed'"):
        ses.add_points(3, 1, [[5, 5, 1]], label="car")
    with pytest.raises(InputError, match="direction='sideways'"):
        ses.propagate("sideways")
    with pytest.raises(InputError, match="start=5 is after stop=3"):
        ses.propagate(start=5, stop=3)
    # a stop past the end means "to the end" (as the frame sources and CVAT); a range beyond it fails
    with pytest.raises(FrameIndexError, match="no kept frame .* start=40..stop=50"):
        ses.propagate(start=40, stop=50)
    with pytest.raises(InputError, match="object id -1"):
        ses.add_points(2, -1, [[5, 5, 1]], label="bed")
    with pytest.raises(InputError, match="not a SAM2VideoPredictor"):
        VideoSession(short_clip, tmp_path / "x.sqlite", sam_model=object())
    with pytest.raises(InputError, match="only apply when the network is built here"):
        VideoSession(short_clip, tmp_path / "x.sqlite", sam_model=tiny_sam2_video, device="cpu")
    other = AnnotationStore.create(tmp_path / "o.sqlite", MediaInfo("other", 100, 50, [0, 1]))
    with pytest.raises(StoreError, match="does not match"):
        VideoSession(short_clip, other, sam_model=tiny_sam2_video)


def test_mask_prompt_is_manual_and_locked(tiny_sam2_video, short_clip, tmp_path):
    ses = session(short_clip, tmp_path / "m.sqlite", tiny_sam2_video)
    m = np.zeros((H, W), bool)
    m[100:400, 200:600] = True
    inst = ses.add_mask(3, 4, m, label="box")
    assert inst.source == Source.MANUAL and inst.keyframe and np.array_equal(inst.mask, m)
    assert ses.locked_frames(4) == [3]
    ses.propagate(stop=5, progress=False)
    assert ses.store.frames_done(4) == [3, 4, 5]
    ses.store.close()
    again = session(short_clip, tmp_path / "m.sqlite", tiny_sam2_video)  # manual keyframes are locked frames
    assert again.locked_frames() == {4: [3]}


# ----------------------------------------------------------------------------- PROMPTS.json
def _prompts(tmp_path, data, name="p.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def test_load_prompts_normalises(tmp_path):
    from dl_utils.sam2al import load_prompts

    got = load_prompts(_prompts(tmp_path, [
        {"frame": 3, "object": 1, "label": "car", "points": [[10, 20.5, 1], [1, 2, 0]]},
        {"frame": 3, "object": 2, "label": " person ", "box": [1, 2, 30, 40]},
        {"frame": 9, "object": 1, "label": "car", "points": [[5, 5, 1]], "box": [0, 0, 9, 9]},
    ]))
    assert got == [
        {"frame": 3, "object": 1, "label": "car", "points": [[10.0, 20.5, 1], [1.0, 2.0, 0]], "box": None},
        {"frame": 3, "object": 2, "label": "person", "points": None, "box": [1.0, 2.0, 30.0, 40.0]},
        {"frame": 9, "object": 1, "label": "car", "points": [[5.0, 5.0, 1]], "box": [0.0, 0.0, 9.0, 9.0]},
    ]


OK = {"frame": 0, "object": 1, "label": "car", "points": [[1, 1, 1]]}


@pytest.mark.parametrize("data, pattern", [
    ("[{", "not valid JSON: .* line 1"),
    ({"frame": 0}, "top level must be a list"),
    ([], "holds no prompts"),
    ([5], "entry 0 is a int"),
    ([{**OK, "point": 1}], r"entry 0: unknown field\(s\) \['point'\]"),
    ([{"object": 1, "label": "a", "points": [[1, 1, 1]]}], "entry 0: field 'frame' is missing"),
    ([{**OK, "frame": -1}], "entry 0: field 'frame' is -1"),
    ([{**OK, "frame": 1.5}], "entry 0: field 'frame' is 1.5"),
    ([{**OK, "object": True}], "entry 0: field 'object' is True"),
    ([{**OK, "label": ""}], "entry 0: field 'label' is ''"),
    ([OK, {**OK, "frame": 2, "points": [[1, 2]]}], r"entry 1: field 'points' item 0 is \[1, 2\]"),
    ([{**OK, "points": [[1, 2, 2]]}], "entry 0: field 'points' item 0 has label 2"),
    ([{**OK, "points": [[1, float("nan"), 1]]}], "entry 0: field 'points' item 0"),
    ([{**OK, "points": [[-1, 2, 1]]}], "is negative"),
    ([{**OK, "points": "here"}], "field 'points' must be a list"),
    ([{**OK, "box": [1, 2, 3]}], r"entry 0: field 'box' is \[1, 2, 3\]"),
    ([{**OK, "box": [5, 2, 3, 9]}], "entry 0: field 'box' .* is empty or inverted"),
    ([{"frame": 0, "object": 1, "label": "car"}], "entry 0: empty prompt"),
    ([{**OK, "points": []}], "entry 0: empty prompt"),
    ([OK, OK], "entry 1: object 1 on frame 0 is already prompted by entry 0"),
    ([OK, {**OK, "frame": 4, "label": "bus"}], "entry 1: field 'label' 'bus' differs from 'car'"),
])
def test_load_prompts_rejects_bad_entries(tmp_path, data, pattern):
    from dl_utils.sam2al import load_prompts

    with pytest.raises(InputError, match=pattern):
        load_prompts(_prompts(tmp_path, data))


def test_load_prompts_missing_file(tmp_path):
    from dl_utils.sam2al import load_prompts

    with pytest.raises(InputError, match="does not exist; check the --prompts path"):
        load_prompts(tmp_path / "nope.json")


# ----------------------------------------------------------------------------- dl-utils segment driver
@pytest.mark.slow
def test_run_segment_with_checkpoint_end_to_end_and_resume(tiny_sam2_video, short_clip, tmp_path):
    import torch

    from dl_utils.drivers.segment import run_segment

    ckpt = tmp_path / "tiny.pt"
    torch.save({"model": tiny_sam2_video.state_dict()}, ckpt)
    prompts = _prompts(tmp_path, [
        {"frame": 2, "object": 1, "label": "bed", "points": [[400, 300, 1]]},
        {"frame": 2, "object": 5, "label": "lamp", "box": [150, 120, 520, 480]},
    ])
    out = tmp_path / "seg.sqlite"
    s = run_segment(short_clip, out, prompts, direction="both", stop=6, checkpoint=ckpt,
                    image_size=256, device="cpu", progress=False)
    assert s["status"] == "done" and s["frames_written"] == 6 and s["prompts_applied"] == 2
    assert s["objects"] == [1, 5] and not s["resumed"] and s["seconds"] > 0
    assert (tmp_path / "tiny.pt.sha256").is_file()  # strict load recorded the checksum
    # the same masks as a session on the in-memory network with those weights
    ref = session(short_clip, tmp_path / "ref.sqlite", tiny_sam2_video)
    ref.add_points(2, 1, [[400, 300, 1]], label="bed")
    ref.add_box(2, 5, [150, 120, 520, 480], label="lamp")
    ref.propagate("both", stop=6, progress=False)
    with AnnotationStore.open(out) as st:
        for f in range(7):
            a, b = st.read_frame(f).by_object(), ref.store.read_frame(f).by_object()
            assert sorted(a) == [1, 5] and all(np.array_equal(a[o].mask, b[o].mask) for o in (1, 5))
    again = run_segment(short_clip, out, prompts, direction="both", stop=6, checkpoint=ckpt,
                        image_size=256, device="cpu", progress=False)
    assert again["resumed"] and again["prompts_applied"] == 0 and again["frames_written"] == 0
    bad = _prompts(tmp_path, [{"frame": 50, "object": 1, "label": "bed", "points": [[1, 1, 1]]}], "bad.json")
    with pytest.raises(FrameIndexError, match="entry 0: frame 50 is not in"):
        run_segment(short_clip, out, bad, sam_model=tiny_sam2_video, progress=False)
    bad = _prompts(tmp_path, [{"frame": 1, "object": 1, "label": "bed", "points": [[5000, 1, 1]]}], "bad2.json")
    with pytest.raises(InputError, match=r"entry 0: frame 1, object 1: point 0 .* lies outside"):
        run_segment(short_clip, out, bad, sam_model=tiny_sam2_video, progress=False)
    with pytest.raises(InputError, match="direction="):
        run_segment(short_clip, out, prompts, direction="up")


# ----------------------------------------------------------------------------- issue 13: segment tells what it drops
def test_segment_changed_prompt_reports_dropped_frames_and_dry_run_changes_nothing(
        tiny_sam2_video, short_clip, tmp_path, capsys):
    from dl_utils.cli import main
    from dl_utils.drivers.segment import run_segment

    out = tmp_path / "seg.sqlite"
    first = _prompts(tmp_path, [
        {"frame": 0, "object": 1, "label": "bed", "points": [[400, 300, 1]]},
        {"frame": 6, "object": 1, "label": "bed", "points": [[410, 300, 1]]},
    ])
    s = run_segment(short_clip, out, first, sam_model=tiny_sam2_video, progress=False)
    assert s["status"] == "done" and s["dropped"] == {}
    with AnnotationStore.open(out) as st:
        before = {f: st.read_frame(f).by_object()[1].mask.copy() for f in st.frames_done(1)}
    assert sorted(before) == list(range(SHORT))
    changed = _prompts(tmp_path, [
        {"frame": 0, "object": 1, "label": "bed", "points": [[200, 200, 1]]},  # the correction
        {"frame": 6, "object": 1, "label": "bed", "points": [[410, 300, 1]]},  # unchanged
    ], "changed.json")
    # --dry-run: no model, nothing written, the drops (and where they fall) listed
    assert main(["segment", str(short_clip), "--out", str(out), "--prompts", str(changed), "--start", "9",
                 "--stop", "10", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] and plan["dropped"] == {"1": "1-5"} and plan["dropped_outside_range"] == {"1": "1-5"}
    assert [p["action"] for p in plan["prompts"]] == ["apply", "unchanged"]
    assert plan["to_compute"] == {}  # 9 and 10 are done; 1-5 lie outside the range
    with AnnotationStore.open(out) as st:
        assert sorted(st.frames_done(1)) == list(range(SHORT))
        assert all(np.array_equal(st.read_frame(f).by_object()[1].mask, m) for f, m in before.items())
    # the real run says which frames of which object it drops, and that they lie outside the range
    msgs: list[str] = []
    s = run_segment(short_clip, out, changed, start=9, stop=10, sam_model=tiny_sam2_video, progress=False,
                    report=msgs.append)
    assert s["prompts_applied"] == 1 and s["dropped"] == {"1": "1-5"}
    assert len(msgs) == 1 and "object 1" in msgs[0] and "frames 1-5" in msgs[0]
    assert "outside --start 9 --stop 10" in msgs[0]
    with AnnotationStore.open(out) as st:
        assert sorted(st.frames_done(1)) == [0, *range(6, SHORT)]
    # without a range the dry run says what the next run computes
    assert main(["segment", str(short_clip), "--out", str(out), "--prompts", str(changed), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dropped"] == {} and plan["to_compute"] == {"1": "1-5"}


def test_segment_stop_past_the_end_means_to_the_end(tiny_sam2_video, short_clip, tmp_path):
    from dl_utils.drivers.segment import run_segment

    p = _prompts(tmp_path, [{"frame": 2, "object": 1, "label": "bed", "points": [[400, 300, 1]]}])
    s = run_segment(short_clip, tmp_path / "a.sqlite", p, start=8, stop=600, sam_model=tiny_sam2_video,
                    progress=False)
    assert s["status"] == "done" and s["frames_written"] == SHORT - 8
    with pytest.raises(FrameIndexError, match="no kept frame .* lies in start=500..stop=600"):
        run_segment(short_clip, tmp_path / "b.sqlite", p, start=500, stop=600, sam_model=tiny_sam2_video,
                    progress=False)


def test_segment_box_far_outside_the_image_is_refused_before_any_work(tiny_sam2_video, short_clip, tmp_path):
    from dl_utils.drivers.segment import run_segment

    out = tmp_path / "box.sqlite"
    ok = _prompts(tmp_path, [{"frame": 1, "object": 1, "label": "bed", "box": [-10, 5, 965, 300]}], "ok.json")
    run_segment(short_clip, out, ok, stop=2, sam_model=tiny_sam2_video, progress=False)  # a little past: clipped
    bad = _prompts(tmp_path, [{"frame": 1, "object": 2, "label": "lamp", "box": [100, 100, 9600, 300]}])
    with pytest.raises(InputError, match=r"entry 0: frame 1, object 2: box .* reaches far outside the 960x540 image"):
        run_segment(short_clip, out, bad, sam_model=tiny_sam2_video, progress=False)
    with AnnotationStore.open(out) as st:
        assert [o.id for o in st.objects()] == [1]


def test_segment_mixed_size_image_folder(tiny_sam2_video, tmp_path):
    """Each image at its own size: prompts checked against it, masks stored at it."""
    from dl_utils.cv_utils import save_image
    from dl_utils.drivers.segment import run_segment
    from tests.sam2_fixtures import test_image

    folder = tmp_path / "imgs"
    folder.mkdir()
    sizes = [(160, 120), (96, 200), (240, 90)]  # (w, h)
    for i, (w, h) in enumerate(sizes):
        save_image(folder / f"{i}.png", test_image(h, w, seed=i))
    p = _prompts(tmp_path, [{"frame": 0, "object": 1, "label": "a", "points": [[150, 100, 1]]},
                            {"frame": 1, "object": 2, "label": "b", "box": [10, 150, 90, 199]}])
    out = tmp_path / "m.sqlite"
    s = run_segment(folder, out, p, direction="both", sam_model=tiny_sam2_video, progress=False)
    assert s["status"] == "done"
    with AnnotationStore.open(out) as st:
        assert st.media.mixed_sizes
        for f, (w, h) in enumerate(sizes):
            for inst in st.read_frame(f):
                assert inst.mask.shape == (h, w)
    # a point inside image 0 but outside image 2 is refused against image 2's own size
    bad = _prompts(tmp_path, [{"frame": 2, "object": 1, "label": "a", "points": [[150, 100, 1]]}], "bad.json")
    with pytest.raises(InputError, match=r"frame 2, object 1: point 0 .* outside the 240x90 image"):
        run_segment(folder, out, bad, sam_model=tiny_sam2_video, progress=False)


def test_set_origin_is_carried_by_every_instance_of_the_object(tiny_sam2_video, short_clip, tmp_path):
    """What a tracker tells the session about an object (caption, tracker mode) reaches the keyframe
    and every propagated instance; the session's own facts (engine, model, direction) win."""
    from dl_utils.annotations import Provenance

    ses = session(short_clip, tmp_path / "origin.sqlite", tiny_sam2_video)
    ses.set_origin(1, Provenance(engine="groundingdino", caption="bed. lamp", tracker="t-mode", detector="gd"))
    ses.add_box(0, 1, B3["box"], label="bed")
    ses.add_points(0, 2, P1["points"], label="lamp")  # no origin: the session's facts only
    ses.propagate("forward", stop=3, progress=False)
    for f in range(4):
        got = ses.store.read_frame(f).by_object()
        p1, p2 = got[1].provenance, got[2].provenance
        assert (p1.caption, p1.tracker, p1.detector, p1.engine) == ("bed. lamp", "t-mode", "gd", "sam2-video")
        assert p1.model == p2.model and p2.caption is None and p2.tracker is None
        assert (p1.direction == "forward") == (f > 0)


def test_review_frames_reads_sam3_stores(tmp_path):
    """SAM 3 writes no row where it no longer shows an object: on frames other objects have rows,
    the absence is "object lost", the return "object appeared"; its score is a detection score."""
    from dl_utils.sam2al import review_frames

    store = AnnotationStore.create(tmp_path / "s3.sqlite", MediaInfo("v", 40, 30, list(range(6))))
    store.add_object("person", id=1)
    store.add_object("bed", id=2)

    def inst(oid, score):
        m = np.zeros((30, 40), bool)
        m[:10, :10] = True
        return Instance(oid, mask=m, score=score, source=Source.AUTO,
                        provenance=Provenance(engine="sam3", phrase="x", area=int(m.sum())))

    for f in range(6):  # object 2 on every frame; object 1 from frame 1, gone on 3-4, back on 5
        store.write_frame(f, [inst(2, 0.9)] + ([inst(1, 0.4 if f == 1 else 0.9)] if f in (1, 2, 5) else []))
    got = {(i.frame, i.object_id): i.reasons for i in review_frames(store, min_iou=0.5)}
    assert got == {
        (1, 1): ["low detection score 0.40 < 0.5"],
        (3, 1): ["object lost (visible on frame 2)"],
        (5, 1): ["object appeared (not visible on frame 4)"],
    }
