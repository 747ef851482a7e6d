"""The widget's Detect with SAM 3 (issue 17), driven headless through the facade and ipyevents dicts.

With the tiny random-weight SAM 3 models of tests/sam3_fixtures.py injected, Detect writes exactly
what the engines give when called directly: Sam3ImageEngine on the shown image (also with the
exemplar boxes dragged on the canvas), Sam3VideoSession over a clip; cancel stops after the current
frame and keeps what was written. Exemplars without SAM 3 are a one-line message. SAM 3's refine (a
click on a SAM 3 object): Esc stops it between frames, exactly as the session's own cancel does, and
a second click completes it; one undo step reverts a whole refine (the store is the text run's
again, bit for bit), redo repeats it (the store is the refined one again).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from tests.sam3_fixtures import requires_sam3, tiny_sam3_image_model, tiny_sam3_video_model  # noqa: F401
from tests.test_sam3_driver import (  # noqa: F401  (fixtures)
    IMAGE_THRESHOLD,
    N_FRAMES,
    VIDEO_CAPTION,
    VIDEO_THRESHOLD,
    clip,
    images,
    instances,
    opts,
    video_on_cpu,
)
from tests.test_sam3_refine_driver import _clicks, _snapshot, reference  # noqa: F401  (a fixture)

pytest.importorskip("ipycanvas")
pytest.importorskip("ipyevents")

SAM3_TIP = "SAM 3: find, segment, track"
GDINO_TIP = "GroundingDINO boxes -> SAM2 masks"
# with the exemplars below random weights score around 0.21-0.25: this keeps some
EXEMPLAR_THRESHOLD = 0.2


def _ev(kind: str, x: float, y: float, button: int = 0, **kw: Any) -> dict[str, Any]:
    return {"type": kind, "relativeX": x, "relativeY": y, "button": button, **kw}


def _drag(a: Any, start: tuple[float, float], end: tuple[float, float], button: int = 0, **mods: Any) -> None:
    a.handle_event(_ev("mousedown", *start, button, **mods))
    a.handle_event(_ev("mousemove", *end, button, **mods))
    a.handle_event(_ev("mouseup", *end, button, **mods))


def _same(got: list[Any], want: Any) -> None:
    """The store's instances of a frame are the engine's detections, in order, masks bit for bit."""
    assert len(got) == len(want) > 0
    for k, inst in enumerate(got):
        assert np.array_equal(inst.mask, want.masks[k])
        assert inst.score == pytest.approx(float(want.scores[k]))
        assert inst.label == want.labels[k] and inst.provenance.engine == "sam3"


def _strokes() -> tuple[list[tuple[str, tuple[float, ...]]], Any]:
    """A stand-in for Canvas.stroke_rect that records each rectangle with its colour."""
    calls: list[tuple[str, tuple[float, ...]]] = []

    def stroke_rect(canvas: Any, x: float, y: float, w: float, h: float) -> None:
        calls.append((str(canvas.stroke_style), (x, y, w, h)))

    return calls, stroke_rect


# ----------------------------------------------------------------------------- no model needed
def test_exemplar_without_sam3_is_a_message(images: Path, tmp_path: Path) -> None:  # noqa: F811
    from dl_utils.ipy_utils import Annotator

    class Gdino:  # a GroundingDINO-like detector: text only
        name = "stub"

        def detect(self, image: Any, prompt: Any = None) -> Any:
            raise AssertionError("not called")

    a = Annotator(images, tmp_path / "g.sqlite", detector=Gdino())
    assert a.text_backend == "groundingdino" and a.w_detect.tooltip == GDINO_TIP
    a.handle_event({"type": "keydown", "key": "e"})
    assert a.exemplar_mode and a.w_exemplar.value and "need SAM 3" in a.status
    _drag(a, (10, 10), (40, 30))
    level, text = a.messages[-1]
    assert level == "error" and "exemplar boxes need SAM 3" in text and "\n" not in text
    assert a.exemplars == {} and a.clicks.objects() == []  # neither an exemplar nor a SAM2 box prompt
    a.exemplar_mode = False
    assert not a.w_exemplar.value and not a.exemplar_mode


# ----------------------------------------------------------------------------- images
@requires_sam3
def test_image_detect_with_sam3_writes_what_the_engine_gives(tiny_sam3_image_model: Any,  # noqa: F811
                                                             images: Path, tmp_path: Path) -> None:
    from dl_utils.ipy_utils import Annotator
    from dl_utils.sam3al.image import Sam3ImageEngine

    det = opts(box_threshold=IMAGE_THRESHOLD).sam3_detector(tiny_sam3_image_model)
    a = Annotator(images, tmp_path / "i.sqlite", detector=det)
    assert a.text_backend == "sam3" and a.w_detect.tooltip == SAM3_TIP and a.engine is None  # no SAM2
    engine = Sam3ImageEngine(tiny_sam3_image_model, score_threshold=IMAGE_THRESHOLD)
    caption = "bed. lamp"
    with mock.patch("dl_utils.drivers.options.SamOptions.image_segmenter",
                    side_effect=AssertionError("no SAM2 with SAM 3")):
        for frame in (a.source.frame_numbers[0], a.source.frame_numbers[2]):  # two sizes
            a.show(frame)
            a.w_text.value = caption
            a.w_detect.click()
            assert a.wait(120) and "detect finished" in a.status, a.messages[-3:]
            _same(instances(a.store, frame), engine.segment(a.source[a.source.index_of(frame)], caption))
            assert a.w_progress.value == a.w_progress.max == 1
    assert a.store.frames() == [a.source.frame_numbers[0], a.source.frame_numbers[2]]
    assert a.store.get_meta("text.backend")["backend"] == "sam3"


@requires_sam3
def test_exemplar_drag_then_detect_passes_the_exemplars(tiny_sam3_image_model: Any,  # noqa: F811
                                                        images: Path, tmp_path: Path) -> None:
    from ipycanvas import Canvas

    from dl_utils.ipy_utils import drag_box
    from dl_utils.ipy_utils import Annotator
    from dl_utils.sam3al.image import Exemplar, Sam3ImageEngine

    det = opts(box_threshold=EXEMPLAR_THRESHOLD).sam3_detector(tiny_sam3_image_model)
    a = Annotator(images, tmp_path / "x.sqlite", detector=det)
    frame, image = a.frame, a.source[0]
    a.handle_event({"type": "keydown", "key": "e"})  # exemplar mode
    assert a.exemplar_mode and a.w_exemplar.value
    strokes, stroke_rect = _strokes()
    with mock.patch.object(Canvas, "stroke_rect", stroke_rect):
        _drag(a, (20, 15), (70, 60))  # "more like this one"
        _drag(a, (90, 20), (120, 50), ctrlKey=True)  # "not like this"
    view = a.view
    want_ex = [Exemplar(tuple(float(v) for v in drag_box(view, (20, 15), (70, 60))), True),
               Exemplar(tuple(float(v) for v in drag_box(view, (90, 20), (120, 50))), False)]
    assert a.exemplars == {frame: want_ex} and a.clicks.objects() == []  # exemplars, not SAM2 box prompts
    assert "exemplar 2 on frame" in a.status and "not like" in a.status
    drawn = {c for c, _ in strokes}
    assert {"#00e000", "#ff2020"} <= drawn  # dashed green and red on the clicks layer
    # Esc clears them; Shift+drag and a right-button drag are negative too
    _drag(a, (5, 5), (30, 30), shiftKey=True)
    _drag(a, (5, 5), (30, 30), button=2)
    assert [e.positive for e in a.exemplars[frame]] == [True, False, False, False]
    a.handle_event({"type": "keydown", "key": "Escape"})
    assert a.exemplars == {} and "4 exemplar boxes cleared" in a.status
    for start, end, mods in (((20, 15), (70, 60), {}), ((90, 20), (120, 50), {"ctrlKey": True})):
        _drag(a, start, end, **mods)
    # Detect: the caption with the shown frame's exemplars, exactly Sam3ImageEngine.segment(image, caption, exs)
    a.w_text.value = "bed"
    a.w_detect.click()
    assert "2 exemplar boxes" in a.status
    assert a.wait(120) and "detect finished" in a.status, a.messages[-3:]
    engine = Sam3ImageEngine(tiny_sam3_image_model, score_threshold=EXEMPLAR_THRESHOLD)
    want = engine.segment(image, "bed", want_ex)
    _same(instances(a.store, frame), want)
    text_only = engine.segment(image, "bed")
    assert len(text_only) != len(want) or not np.array_equal(text_only.scores, want.scores)  # they mattered
    assert a.exemplars == {}  # consumed
    # more than one phrase with exemplars: a one-line refusal before anything runs
    _drag(a, (20, 15), (70, 60))
    a.detect("bed. lamp")
    assert "one phrase" in a.status and a.messages[-1][0] == "error" and not a.worker.busy
    assert len(a.exemplars[frame]) == 1
    a.clear_exemplars()
    assert a.exemplars == {}


# ----------------------------------------------------------------------------- video
def _reference(model: Any, clip_path: Path, path: Path) -> dict[int, list[Any]]:
    from dl_utils.sam3al.video import Sam3VideoOptions, Sam3VideoSession
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames

    with open_frames(clip_path) as src, AnnotationStore.open_or_create(path, src.media_info()) as ref:
        sess = Sam3VideoSession(model, src, ref, VIDEO_CAPTION, on_unknown="error", model_name="sam3",
                                options=Sam3VideoOptions(score_threshold_detection=VIDEO_THRESHOLD))
        try:
            assert sess.propagate()["status"] == "done"
        finally:
            sess.close()
        return {f: instances(ref, f) for f in src.media_info().frames}


@pytest.fixture(scope="module")
def video_reference(tiny_sam3_video_model: Any, clip: Path,  # noqa: F811
                    tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[Any]]:
    with mock.patch.object(tiny_sam3_video_model, "new_det_thresh", VIDEO_THRESHOLD):
        return _reference(tiny_sam3_video_model, clip, tmp_path_factory.mktemp("ref") / "ref.sqlite")


def _video_annotator(model: Any, clip_path: Path, store: Path) -> Any:
    from dl_utils.ipy_utils import Annotator

    return Annotator(clip_path, store, sam3_video_model=model, detector_options=opts(box_threshold=VIDEO_THRESHOLD))


@requires_sam3
def test_video_detect_with_sam3_writes_what_the_session_gives(tiny_sam3_video_model: Any,  # noqa: F811
                                                              clip: Path, tmp_path: Path,  # noqa: F811
                                                              video_reference: dict[int, list[Any]]) -> None:
    model = tiny_sam3_video_model
    a = _video_annotator(model, clip, tmp_path / "v.sqlite")
    assert a.text_backend == "sam3" and a.w_detect.tooltip == SAM3_TIP and a.session is None  # no SAM2
    with mock.patch.object(model, "new_det_thresh", VIDEO_THRESHOLD), \
            mock.patch("dl_utils.drivers.run.open_session", side_effect=AssertionError("no SAM2 session")):
        assert a.detect(VIDEO_CAPTION)
        assert a.w_progress.max == N_FRAMES
        assert a.wait(180) and "detect finished: 4 frames written" in a.status, a.messages[-3:]
    assert a.w_progress.value == N_FRAMES and a.w_progress.bar_style == "success"
    n = 0
    for f, want in video_reference.items():
        got = instances(a.store, f)
        assert [x.object_id for x in got] == [x.object_id for x in want]
        for g, w in zip(got, want):
            assert np.array_equal(g.mask, w.mask) and g.score == w.score and g.label == w.label
            n += 1
    assert n > 0
    assert a.job_summary["engine"] == "sam3" and a.job_summary["frames"] == N_FRAMES


@requires_sam3
def test_video_detect_cancel_keeps_what_was_written(tiny_sam3_video_model: Any, clip: Path,  # noqa: F811
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_sam3_video_model
    a = _video_annotator(model, clip, tmp_path / "c.sqlite")
    reached, go = threading.Event(), threading.Event()
    real = a.store.write_frame

    def gated(frame: int, insts: Any, **kw: Any) -> Any:
        out = real(frame, insts, **kw)
        reached.set()
        go.wait(30)  # hold the job after its first frame until the test pressed Esc
        return out

    monkeypatch.setattr(a.store, "write_frame", gated)
    with mock.patch.object(model, "new_det_thresh", VIDEO_THRESHOLD):
        assert a.detect(VIDEO_CAPTION)
        assert reached.wait(120)
        a.handle_event({"type": "keydown", "key": "Escape"})  # the stop key, as the cancel button
        go.set()
        assert a.wait(120)
        assert "detect cancelled; 1 frames written so far are kept" in a.status, a.messages[-3:]
        assert a.w_progress.bar_style == "warning"
        first = a.source.frame_numbers[0]
        assert a.store.frames() == [first] and a.store.runs()[-1]["status"] == "cancelled"
        # a later Detect resumes and fills the rest
        monkeypatch.setattr(a.store, "write_frame", real)
        assert a.detect(VIDEO_CAPTION) and a.wait(180) and "detect finished" in a.status, a.messages[-3:]
    assert a.store.frames() == list(a.source.frame_numbers)


@requires_sam3
def test_video_with_exemplars_runs_the_shown_frame(tiny_sam3_image_model: Any,  # noqa: F811
                                                   tiny_sam3_video_model: Any, clip: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    """On a video without SAM 3's video model, exemplars are pixels of the shown frame: Detect runs
    SAM 3's image engine on that frame with them, and refuses with one line without the image model.
    (With the video model they are tracked: tests/test_sam3al_exemplars.py.)"""
    from dl_utils.ipy_utils import Annotator
    from dl_utils.sam3al.image import Sam3ImageEngine

    a = Annotator(clip, tmp_path / "e.sqlite", detector_options=opts(box_threshold=VIDEO_THRESHOLD))
    a.show(a.source.frame_numbers[1])
    assert a.exemplar((10, 10, 60, 50)) is not None
    a.detect("bed")
    assert a.messages[-1][0] == "error" and "image model" in a.status and "\n" not in a.status
    assert not a.worker.busy and a.store.frames() == []
    a.detector = opts(box_threshold=0.1).sam3_detector(tiny_sam3_image_model)
    assert a.w_detect.tooltip == SAM3_TIP
    exs = list(a.exemplars[a.frame])
    with mock.patch("dl_utils.drivers.run.text_into_video_sam3", side_effect=AssertionError("not the session")):
        assert a.detect("bed") and a.wait(120) and "detect finished" in a.status, a.messages[-3:]
    image = a.source[1]
    want = Sam3ImageEngine(tiny_sam3_image_model, score_threshold=0.1).segment(image, "bed", exs)
    _same(instances(a.store, a.frame), want)
    assert a.store.frames() == [a.frame] and a.exemplars == {}


# ----------------------------------------------------------------------------- video: SAM 3's refine, Esc and undo
def _refine_reference(model: Any, clip_path: Path, path: Path, e: dict[str, Any],
                      second: Any) -> tuple[dict[int, Any], dict[int, Any], dict[str, Any]]:
    """The session called directly, as the widget drives it: the text run, a refine cancelled while
    its forward pass writes its first frame, then a refine with ``second`` clicks. (store after the cancel, after the second
    refine, the cancelled refine's summary)."""
    from dl_utils.sam3al.video import Sam3VideoOptions, Sam3VideoSession
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames

    with open_frames(clip_path) as src, AnnotationStore.open_or_create(path, src.media_info()) as st:
        s = Sam3VideoSession(model, src, st, VIDEO_CAPTION, on_unknown="error", model_name="sam3",
                             options=Sam3VideoOptions(score_threshold_detection=VIDEO_THRESHOLD))
        try:
            assert s.propagate()["status"] == "done"
            seen: list[int] = []

            def second_frame(f: int, insts: Any) -> None:  # Esc while the forward pass writes
                seen.append(f)
                if len(seen) == 2:
                    s.cancel()

            cut = s.refine(e["frame"], e["object"], _clicks(e), callback=second_frame)
            mid = _snapshot(st)
            assert s.refine(e["frame"], e["object"], second)["status"] == "done"
        finally:
            s.close()
        return mid, _snapshot(st), cut


def _detected(model: Any, clip_path: Path, store: Path) -> Any:
    """The widget after a SAM 3 Detect on the clip (SAM2 never loaded)."""
    a = _video_annotator(model, clip_path, store)
    assert a.detect(VIDEO_CAPTION) and a.wait(180) and "detect finished" in a.status, a.messages[-3:]
    return a


def _refine_click(a: Any, e: dict[str, Any]) -> None:
    """The driver entry's box (already in the click book) plus its point, clicked: SAM 3's refine starts."""
    a.show(e["frame"])
    a.controller.clicks.set(e["object"], e["frame"], _clicks({**e, "points": []}))
    x, y, _ = e["points"][0]
    assert a.click(int(x), int(y), True, object_id=e["object"]) is None and a.job == "refine", a.messages[-3:]


@requires_sam3
def test_video_refine_esc_keeps_whole_frames_and_a_second_refine_completes(
        tiny_sam3_video_model: Any, clip: Path, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, reference: Any) -> None:  # noqa: F811
    """Esc during SAM 3's refine stops it after the frame being written (the session's cancel):
    that frame is whole and holds the refined object, the others keep the text run's rows, the
    cancelled refine is an undo step; a second click refines through the whole video again. Both
    equal the session called directly with the same cancel and clicks; two undos, newest first,
    give back the store after the cancel, then the text run's."""
    from dl_utils.annotations import Clicks
    from dl_utils.ipy_utils.history import SAM3_REFINE

    e, text, _ = reference
    model = tiny_sam3_video_model
    x, y, _ = e["points"][0]
    second = Clicks(points=(*_clicks(e).points, (int(x), int(y), 1)), box=_clicks(e).box)
    with video_on_cpu(model), mock.patch("dl_utils.drivers.run.open_session", side_effect=AssertionError("no SAM2")):
        mid, final, cut = _refine_reference(model, clip, tmp_path / "ref.sqlite", e, second)
        assert cut["status"] == "cancelled" and cut["frames_written"] == 1
        a = _detected(model, clip, tmp_path / "r.sqlite")
        _same_store(_snapshot(a.store), text)
        reached, go = threading.Event(), threading.Event()
        real = a.store.write_frame

        writes: list[int] = []

        def gated(frame: int, insts: Any, **kw: Any) -> Any:
            writes.append(frame)
            out = real(frame, insts, **kw)
            if len(writes) == 2:  # the forward pass's first frame (the clicked one, written whole again)
                reached.set()
                go.wait(30)  # held there until Esc was pressed
            return out

        monkeypatch.setattr(a.store, "write_frame", gated)
        _refine_click(a, e)
        assert "Esc stops it" in a.status
        assert reached.wait(120)
        assert a.worker.wait_for(lambda: a.w_progress.value == 1)  # the first frame's progress message
        a.handle_event({"type": "keydown", "key": "Escape"})  # the session's cancel, at once
        assert "cancelling refine" in a.status, a.messages[-3:]
        go.set()
        assert a.wait(180)
        monkeypatch.setattr(a.store, "write_frame", real)
        assert a.messages[-1] == ("warn", "refine cancelled; 1 frames written are kept; refine again (or undo) "
                                          "to complete"), a.messages[-3:]
        assert a.w_progress.bar_style == "warning" and a.job_summary["status"] == "cancelled"
        assert a.job_summary["frames_written"] == 1 < N_FRAMES
        assert a.store.runs()[-1]["kind"] == "sam3-refine" and a.store.runs()[-1]["status"] == "cancelled"
        got = _snapshot(a.store)
        _same_store(got, mid)  # exactly what the session keeps after the same cancel
        clicked = {x[0]: x for x in got[e["frame"]]}[e["object"]]
        assert clicked[3] and clicked[4] == _clicks(e)  # the written frame holds the refined object, whole
        assert [f for f in got if f != e["frame"]] and all(
            _rows_equal(got[f], text[f]) for f in got if f != e["frame"])  # not reached: the text run's rows
        assert a.controller.clicks.get(e["object"], e["frame"]) == _clicks(e)
        assert [act.kind for act in a.controller.history.actions()] == [SAM3_REFINE]  # undoable
        # a second click (the same point again) refines through the whole video: every frame is written
        a.click(int(x), int(y), True, object_id=e["object"])
        assert a.wait(180) and "refine finished" in a.status, a.messages[-3:]
        assert a.job_summary["status"] == "done" and a.job_summary["frames_written"] == N_FRAMES
        _same_store(_snapshot(a.store), final)
        assert a.controller.clicks.get(e["object"], e["frame"]) == second
        assert len(a.controller.history.actions(SAM3_REFINE)) == 2
        # two undo steps, newest first: the second refine, then the cancelled one
        assert a.undo() and a.wait(180) and a.status.startswith("undid SAM 3 refine"), a.messages[-3:]
        _same_store(_snapshot(a.store), mid)
        assert a.controller.clicks.get(e["object"], e["frame"]) == _clicks(e)
        assert a.undo() and a.wait(180) and a.status.startswith("undid SAM 3 refine"), a.messages[-3:]
    _same_store(_snapshot(a.store), text)
    assert a.controller.clicks.get(e["object"], e["frame"]) == _clicks({**e, "points": []})


def _rows_equal(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(x[0] == y[0] and x[1] == y[1] and np.array_equal(x[2], y[2]) and x[3] == y[3]
                                    and x[4] == y[4] for x, y in zip(a, b))


def _same_store(got: dict[int, list[Any]], want: dict[int, list[Any]]) -> None:
    assert got.keys() == want.keys()
    for f in got:
        assert _rows_equal(got[f], want[f]), f


@requires_sam3
def test_video_refine_undo_redo_through_the_history(tiny_sam3_video_model: Any, clip: Path,  # noqa: F811
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    reference: Any) -> None:  # noqa: F811
    """A SAM 3 refine is one undo step: undo (z) puts back every frame it changed and the clicked
    frame's clicks, in the background; redo (y) refines again with the same clicks. Undo while a job
    runs, with nothing to undo, or with a session that has no refine left, is a message; a new Detect
    drops SAM 3's steps from the history and says so."""
    from dl_utils.ipy_utils.history import SAM3_REFINE

    e, text, after = reference
    model = tiny_sam3_video_model
    box_only = _clicks({**e, "points": []})
    with video_on_cpu(model), mock.patch("dl_utils.drivers.run.open_session", side_effect=AssertionError("no SAM2")):
        a = _detected(model, clip, tmp_path / "u.sqlite")
        assert not a.undo() and a.messages[-1] == ("warn", "nothing to undo")
        _refine_click(a, e)
        assert a.wait(180) and "refine finished" in a.status, a.messages[-3:]
        _same_store(_snapshot(a.store), after)
        assert a.controller.clicks.get(e["object"], e["frame"]) == _clicks(e)
        a.show(a.source.frame_numbers[0])
        # undo: a background job (Esc does not stop it half-way); the store is the text run's again
        a.handle_event({"type": "keydown", "key": "z"})
        assert a.job == "undo refine" and a.frame == e["frame"], a.messages[-3:]
        assert not a.cancel() and "cannot be stopped" in a.status
        assert a.wait(180) and a.status.startswith("undid SAM 3 refine of object"), a.messages[-3:]
        assert "frames restored" in a.status and a.w_progress.bar_style == "success"
        _same_store(_snapshot(a.store), text)
        assert a.controller.clicks.get(e["object"], e["frame"]) == box_only
        assert a.controller.history.actions() == [] and a.controller.history.can_redo
        # redo: the same clicks refined again, in the background
        a.handle_event({"type": "keydown", "key": "y", "ctrlKey": True})
        assert a.job == "refine", a.messages[-3:]
        assert not a.undo()  # refused while it runs, as a message
        assert a.messages[-1][0] == "error" and "cannot undo while refine runs: wait, or press Esc" in a.status
        assert a.wait(180) and "redid SAM 3 refine" in a.status, a.messages[-3:]
        _same_store(_snapshot(a.store), after)
        assert a.controller.clicks.get(e["object"], e["frame"]) == _clicks(e)
        assert [x.kind for x in a.controller.history.actions()] == [SAM3_REFINE] and not a.controller.history.can_redo
        # the session has no refine left to undo (undone behind the widget's back): a message, the step stays
        (engine,) = a.controller.sam3_engines.values()  # one caption, one refiner
        engine.undo()
        assert not engine.session.can_undo
        assert not a.undo() and a.messages[-1][0] == "error" and "has no refine left to undo" in a.status
        assert "\n" not in a.status and not a.worker.busy
        assert len(a.controller.history.actions(SAM3_REFINE)) == 1
        # a new Detect closes the SAM 3 sessions: their steps leave the history, with a word
        assert a.detect(VIDEO_CAPTION)
        assert "1 SAM 3 refine left the undo history" in a.status, a.messages[-3:]
        assert a.wait(180)
        assert a.controller.history.actions(SAM3_REFINE) == [] and not a.controller.history.can_redo
        assert not a.undo() and a.messages[-1] == ("warn", "nothing to undo")


@requires_sam3
def test_video_refine_that_fails_midway_stays_undoable(tiny_sam3_video_model: Any, clip: Path,  # noqa: F811
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      reference: Any) -> None:  # noqa: F811
    """A refine that fails after writing a frame: the session keeps it undoable, so the history gets
    its step too (else the next undo would revert it in place of an older step); undo puts the
    written frame back."""
    from dl_utils.ipy_utils.history import SAM3_REFINE

    e, text, _ = reference
    model = tiny_sam3_video_model
    with video_on_cpu(model), mock.patch("dl_utils.drivers.run.open_session", side_effect=AssertionError("no SAM2")):
        a = _detected(model, clip, tmp_path / "f.sqlite")
        real, writes = a.store.write_frame, []

        def broken(frame: int, insts: Any, **kw: Any) -> Any:
            writes.append(frame)
            if len(writes) > 1:
                raise OSError(f"disk full writing frame {frame}")
            return real(frame, insts, **kw)

        monkeypatch.setattr(a.store, "write_frame", broken)
        _refine_click(a, e)
        assert a.wait(180)
        monkeypatch.setattr(a.store, "write_frame", real)
        level, msg = a.messages[-1]
        assert level == "error" and msg.startswith("refine failed: OSError: disk full"), a.messages[-3:]
        assert msg.endswith("results written so far are kept (undo reverts them)")
        assert a.store.runs()[-1]["status"] == "failed" and a.w_progress.bar_style == "danger"
        assert not _rows_equal(_snapshot(a.store)[e["frame"]], text[e["frame"]])  # the first frame was written
        assert [x.kind for x in a.controller.history.actions()] == [SAM3_REFINE]
        assert a.undo() and a.wait(180) and a.status.startswith("undid SAM 3 refine"), a.messages[-3:]
    _same_store(_snapshot(a.store), text)
    assert not a.controller.history.actions() and a.controller.history.can_redo


@requires_sam3
def test_video_refine_esc_before_its_first_frame_stops_it_there(tiny_sam3_video_model: Any, clip: Path,  # noqa: F811
                                                                tmp_path: Path, reference: Any) -> None:  # noqa: F811
    """Esc while the refiner opens (its first refine then replays the text run): the cancel waits for
    the refine's first frame, so the replay is whole: one frame is written, and the next refine of
    the same session runs through the whole video."""
    import dl_utils.drivers.run as run

    e, _, _ = reference
    model = tiny_sam3_video_model
    opening, go = threading.Event(), threading.Event()
    real = run.open_sam3_session

    def held(*args: Any, **kw: Any) -> Any:
        opening.set()
        go.wait(30)  # held until Esc was pressed
        return real(*args, **kw)

    with video_on_cpu(model), mock.patch("dl_utils.drivers.run.open_session", side_effect=AssertionError("no SAM2")):
        a = _detected(model, clip, tmp_path / "o.sqlite")
        with mock.patch.object(run, "open_sam3_session", held):
            _refine_click(a, e)
            assert opening.wait(60)
            a.handle_event({"type": "keydown", "key": "Escape"})
            assert "cancelling refine" in a.status
            go.set()
            assert a.wait(180)
        assert a.job_summary["status"] == "cancelled" and a.job_summary["frames_written"] == 1, a.messages[-3:]
        assert a.status.startswith("refine cancelled; 1 frames written are kept")
        x, y, _ = e["points"][0]
        a.click(int(x), int(y), True, object_id=e["object"])
        assert a.wait(180) and "refine finished" in a.status, a.messages[-3:]
        assert a.job_summary["status"] == "done" and a.job_summary["frames_written"] == N_FRAMES
