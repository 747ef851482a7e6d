"""Exemplar boxes on any frame k of a video (issue 17): Sam3VideoSession against sam3's own API.

The reference is what sam3's demo does with a prompt on a middle frame: ``init_state`` on the clip
folder, ``add_prompt(frame_idx=k, text_str=..., boxes_xywh=..., box_labels=...)``,
``propagate_in_video(start_frame_idx=k)`` forward, then ``propagate_in_video(start_frame_idx=k,
reverse=True)``. Ours: the session (no test patches), and run_into_store on the video path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.sam3_fixtures import tiny_sam3_video_model  # noqa: F401
from tests.test_sam3al_video import (N_FRAMES, SIZE, THRESH, clip, grab, pytestmark, sam3_cpu_run, sam3_reference,  # noqa: F401
                                     stored)

K = 3  # the prompt frame (index = source frame number in the PNG folder)
W, H = SIZE
POS = (10.0, 20.0, 60.0, 60.0)  # x1, y1, x2, y2 in pixels
NEG = (70.0, 5.0, 120.0, 40.0)


def reference(model: Any, folder: Path, phrase: str, boxes: list[tuple[tuple[float, ...], bool]], k: int
              ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    with sam3_reference(model):
        st = model.init_state(resource_path=str(folder), offload_video_to_cpu=True)
        xywh = [[b[0] / W, b[1] / H, (b[2] - b[0]) / W, (b[3] - b[1]) / H] for b, _ in boxes]
        model.add_prompt(st, frame_idx=k, text_str=phrase, boxes_xywh=xywh,
                         box_labels=[1 if pos else 0 for _, pos in boxes])
        out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for rev in (False, True):
            for f, o in model.propagate_in_video(st, start_frame_idx=k, reverse=rev):
                assert int(f) not in out
                out[int(f)] = grab(o)
        return out


def assert_same(store: Any, phrase: str, ref: dict[int, Any]) -> None:
    ours = stored(store, phrase)
    assert sorted(ref) == list(range(N_FRAMES)) == sorted(ours)
    for f, (ids, probs, masks) in ref.items():
        o_ids, o_probs, o_masks = ours[f]
        assert np.array_equal(np.asarray(o_ids, dtype=np.int64), ids), f
        assert np.array_equal(np.asarray(o_probs, dtype=np.float32), probs.astype(np.float32)), f
        assert np.array_equal(o_masks, masks), f


def session(model: Any, folder: Path, db: Path, caption: str, exemplars: list[Any], **opts: Any) -> Any:
    from dl_utils.sam3al.video import Sam3VideoOptions, Sam3VideoSession

    return Sam3VideoSession(model, str(folder), str(db), caption, exemplars=exemplars,
                            options=Sam3VideoOptions(**THRESH, **opts))


# sam3's video add_prompt takes one box on a fresh prompt frame (its _get_visual_prompt), so the
# negative case is the text with one negative box
CASES = {"positive": [(POS, True)], "negative": [(NEG, False)]}


@pytest.fixture(scope="module")
def refs(tiny_sam3_video_model: Any, clip: Path) -> dict[str, Any]:  # noqa: F811
    return {name: reference(tiny_sam3_video_model, clip, "person", boxes, K) for name, boxes in CASES.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exemplars_on_frame_k_same_as_sam3_forward_then_backward(
        tiny_sam3_video_model: Any, clip: Path, refs: dict[str, Any], tmp_path: Path, case: str) -> None:  # noqa: F811
    from dl_utils.sam3al.prompts import Exemplar

    ref = refs[case]
    assert sum(len(r[0]) for r in ref.values()) > 0, "tune THRESH: no output"
    exs = [Exemplar(b, pos, frame=K) for b, pos in CASES[case]]
    s = session(tiny_sam3_video_model, clip, tmp_path / "a.db", "person", exs)
    seen: list[int] = []
    r = s.propagate(callback=lambda f, _: seen.append(f))
    assert r["status"] == "done" and r["frames_written"] == N_FRAMES
    # each frame written as produced: forward from k, then backward from k
    assert seen == list(range(K, N_FRAMES)) + list(range(K - 1, -1, -1))
    assert_same(s.store, "person", ref)
    objs = s.store.objects()
    assert len({o.attributes["sam3"]["id"] for o in objs}) == len(objs)  # one store object per sam3 id
    dirs = {f: {x.provenance.direction for x in s.store.read_frame(f)} for f in range(N_FRAMES)}
    assert all(d <= {"backward"} for f, d in dirs.items() if f < K)
    assert all(d <= {"forward"} for f, d in dirs.items() if f >= K)
    prog = s._progress()
    assert prog["start"] == K and prog["forward_done_through"] == N_FRAMES - 1
    assert prog["backward_done_through"] == 0 and prog["done_through"] == N_FRAMES - 1
    again = s.propagate()
    assert again["frames_written"] == 0
    s.close()


@pytest.mark.parametrize("stop_at", [N_FRAMES - 2, 1])  # cancelled in the forward / the backward pass
def test_exemplars_on_frame_k_cancel_then_resume(
        tiny_sam3_video_model: Any, clip: Path, refs: dict[str, Any], tmp_path: Path, stop_at: int) -> None:  # noqa: F811
    from dl_utils.sam3al.prompts import Exemplar

    exs = [Exemplar(b, pos, frame=K) for b, pos in CASES["positive"]]
    db = tmp_path / "c.db"
    s = session(tiny_sam3_video_model, clip, db, "person", exs)
    r1 = s.propagate(callback=lambda f, _: s.cancel() if f == stop_at else None)
    assert r1["status"] == "cancelled"
    n1 = r1["frames_written"]
    # the same session continues sam3's generators
    r2 = s.propagate()
    assert r2["status"] == "done" and r2["frames_written"] == N_FRAMES - n1
    assert_same(s.store, "person", refs["positive"])
    s.close()
    # a new session on a store cut short replays the same prompt, writing only the missing frames
    db2 = tmp_path / "d.db"
    s2 = session(tiny_sam3_video_model, clip, db2, "person", exs)
    s2.propagate(callback=lambda f, _: s2.cancel() if f == stop_at else None)
    s2.close()
    s3 = session(tiny_sam3_video_model, clip, db2, "person", exs)
    r3 = s3.propagate()
    assert r3["status"] == "done" and r3["frames_written"] == N_FRAMES - n1 and r3["frames_skipped"] == n1
    assert_same(s3.store, "person", refs["positive"])
    s3.close()
    # other boxes on a store started with these: refused, one line
    from dl_utils.errors import InputError

    s2b = session(tiny_sam3_video_model, clip, tmp_path / "e.db", "person", exs)
    s2b.propagate(callback=lambda f, _: s2b.cancel() if f == K else None)
    s2b.close()
    other = [Exemplar(NEG, True, frame=K)]
    with pytest.raises(InputError) as e:
        session(tiny_sam3_video_model, clip, tmp_path / "e.db", "person", other).propagate()
    assert "\n" not in str(e.value) and "same exemplars" in str(e.value)


def test_exemplar_frames_checked(tiny_sam3_video_model: Any, clip: Path, tmp_path: Path) -> None:  # noqa: F811
    from dl_utils.errors import InputError
    from dl_utils.sam3al.prompts import Exemplar

    for exs, words in (([Exemplar(POS, frame=1), Exemplar(NEG, frame=2)], "one frame"),
                       ([Exemplar(POS, frame=N_FRAMES - 1)], "last frame"),
                       ([Exemplar(POS, frame=99)], "no such frame"),
                       ([Exemplar(POS, frame=2), Exemplar(NEG, False, frame=2)], "one box per phrase")):
        with pytest.raises(InputError) as e:
            session(tiny_sam3_video_model, clip, tmp_path / "x.db", "person", exs)
        assert "\n" not in str(e.value) and words in str(e.value)


# ----------------------------------------------------------------------------- run_into_store and the widget
VIDEO_THRESHOLD = 0.2
BOX = (10.0, 10.0, 60.0, 50.0)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 frames of bedroom.mp4 as a video file (the driver's and the widget's video path)."""
    import cv2

    from tests.test_sam3al_video import DATA

    out = tmp_path_factory.mktemp("sam3mp4") / "clip.mp4"
    cap = cv2.VideoCapture(str(DATA))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, SIZE)
    try:
        for _ in range(4):
            ok, f = cap.read()
            assert ok
            cap.read()
            writer.write(cv2.resize(f, SIZE, interpolation=cv2.INTER_AREA))
    finally:
        writer.release()
        cap.release()
    return out


def _direct(model: Any, mp4_path: Path, db: Path, frame: int, box: tuple[float, ...] = BOX) -> dict[int, list[Any]]:
    """The session alone, as run_into_store opens it (score threshold, on_unknown, model label)."""
    from dl_utils.sam3al.prompts import Exemplar
    from dl_utils.sam3al.video import Sam3VideoOptions, Sam3VideoSession
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames

    with open_frames(mp4_path) as src, AnnotationStore.open_or_create(db, src.media_info()) as ref:
        s = Sam3VideoSession(model, src, ref, "bed", on_unknown="error", model_name="sam3",
                             options=Sam3VideoOptions(score_threshold_detection=VIDEO_THRESHOLD),
                             exemplars=[Exemplar(box, frame=frame)])
        try:
            assert s.propagate()["status"] == "done"
        finally:
            s.close()
        return {f: sorted(ref.read_frame(f), key=lambda x: x.object_id) for f in src.media_info().frames}


def _same_store(st: Any, want: dict[int, list[Any]]) -> None:
    n = 0
    for f, w in want.items():
        got = sorted(st.read_frame(f), key=lambda x: x.object_id)
        assert [x.object_id for x in got] == [x.object_id for x in w], f
        for a, b in zip(got, w):
            assert np.array_equal(a.mask, b.mask) and a.score == b.score and a.label == b.label
            assert a.provenance.extra["sam3_id"] == b.provenance.extra["sam3_id"]
            assert a.provenance.direction == b.provenance.direction
            n += 1
    assert n > 0


def test_run_into_store_video_with_exemplars_is_the_session(tiny_sam3_video_model: Any, mp4: Path,  # noqa: F811
                                                             tmp_path: Path) -> None:
    from unittest import mock

    from dl_utils.dinoal.caption import parse_caption
    from dl_utils.drivers.options import DetectorOptions
    from dl_utils.drivers.run import run_into_store
    from dl_utils.sam3al.prompts import Exemplar
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames

    model = tiny_sam3_video_model
    with sam3_cpu_run(), mock.patch.object(model, "new_det_thresh", VIDEO_THRESHOLD):
        want = _direct(model, mp4, tmp_path / "ref.sqlite", 2)
        with open_frames(mp4) as src, AnnotationStore.open_or_create(tmp_path / "s.sqlite", src.media_info()) as st, \
                mock.patch("dl_utils.drivers.run._detect_with_exemplars", side_effect=AssertionError("image path")):
            seen: list[int] = []
            res = run_into_store(src, st, prompt=parse_caption("bed"), ledger=True, progress=False,
                                 detector_options=DetectorOptions(backend="sam3", box_threshold=VIDEO_THRESHOLD),
                                 sam3_video_model=model, exemplars={2: [Exemplar(BOX)]},
                                 callback=lambda f, _: seen.append(f))
            assert res["tracked"] and res["text"]["status"] == "done" and res["text"]["frames"] == 4
            assert seen == [2, 3, 1, 0]  # forward from the exemplar's frame, then backward
            _same_store(st, want)


def test_widget_detect_with_exemplar_on_video_tracks_it(tiny_sam3_video_model: Any, mp4: Path,  # noqa: F811
                                                        tmp_path: Path) -> None:
    """The exemplar drawn on frame 2 of a video goes to SAM 3's video session (no image engine):
    the store is what the session gives directly, on every frame, and the exemplar is consumed."""
    pytest.importorskip("ipycanvas")
    pytest.importorskip("ipyevents")
    from unittest import mock

    from dl_utils.drivers.options import DetectorOptions
    from dl_utils.ipy_utils import Annotator

    model = tiny_sam3_video_model
    with mock.patch.object(model, "new_det_thresh", VIDEO_THRESHOLD):
        want = _direct(model, mp4, tmp_path / "ref.sqlite", 2)
        a = Annotator(mp4, tmp_path / "w.sqlite", sam3_video_model=model,
                      detector_options=DetectorOptions(backend="sam3", box_threshold=VIDEO_THRESHOLD))
        a.show(a.source.frame_numbers[2])
        assert a.exemplar(tuple(int(v) for v in BOX)) is not None  # type: ignore[arg-type]
        with mock.patch("dl_utils.drivers.run._detect_with_exemplars", side_effect=AssertionError("image path")):
            assert a.detect("bed") and a.wait(180) and "detect finished" in a.status, a.messages[-3:]
        assert a.exemplars == {}
        assert a.store.frames() == list(a.source.frame_numbers)
        _same_store(a.store, want)
        # two boxes on a video: one line, before anything runs
        a.exemplar((10, 10, 60, 50))
        a.exemplar((70, 5, 120, 40), False)
        a.detect("bed")
        assert a.messages[-1][0] == "error" and "takes one" in a.status and "\n" not in a.status


def test_finished_run_with_other_exemplars_is_refused(tiny_sam3_video_model: Any, clip: Path,  # noqa: F811
                                                      tmp_path: Path) -> None:
    """A finished caption returns at once; with exemplars it was not run with, that would drop them
    silently, so it is a one-line error (same exemplars: done, nothing written)."""
    from dl_utils.errors import InputError
    from dl_utils.sam3al.prompts import Exemplar

    db = tmp_path / "f.db"
    s = session(tiny_sam3_video_model, clip, db, "person", [])
    assert s.propagate()["status"] == "done"
    s.close()
    for exs in ([Exemplar(POS, frame=K)], [Exemplar(POS)]):
        with pytest.raises(InputError) as e:
            session(tiny_sam3_video_model, clip, db, "person", exs).propagate()
        assert "\n" not in str(e.value) and "without exemplar boxes" in str(e.value)
    db2 = tmp_path / "g.db"
    s2 = session(tiny_sam3_video_model, clip, db2, "person", [Exemplar(POS)])
    assert s2.propagate()["status"] == "done"
    s2.close()
    assert session(tiny_sam3_video_model, clip, db2, "person", [Exemplar(POS)]).propagate()["frames_written"] == 0
    with pytest.raises(InputError) as e:
        session(tiny_sam3_video_model, clip, db2, "person", [Exemplar(NEG, False)]).propagate()
    assert "with other exemplar boxes" in str(e.value)
