"""Clicks refining SAM 3's objects on video (issue 17) through the driver and the widget.

``run_into_store`` with ``--backend sam3``, a text prompt and PROMPTS.json click entries writes
exactly what :class:`~dl_utils.sam3al.video.Sam3VideoSession` gives when its ``propagate`` and then
``refine`` are called directly (same tiny random-weight model, same clip: ids, scores, masks bit for
bit); a re-run skips the entries already applied; clicks alone refine an earlier text run (by
replay); an object SAM 3 did not make, or a store with no SAM 3 run, is a one-line error. The
widget: a click on a SAM 3 object after Detect runs the same refine in the background.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from tests.sam3_fixtures import requires_sam3, tiny_sam3_video_model  # noqa: F401
from tests.test_sam3_driver import (  # noqa: F401  (fixtures)
    VIDEO_CAPTION,
    VIDEO_THRESHOLD,
    clip,
    instances,
    opts,
    video_on_cpu,
)

K = 2  # the clicked frame index: forward and backward passes both run


def _snapshot(store: Any) -> dict[int, list[tuple[int, Any, np.ndarray, bool, Any]]]:
    return {f: [(x.object_id, x.score, np.asarray(x.mask), bool(x.keyframe), x.clicks) for x in instances(store, f)]
            for f in store.media.frames}


def _same(a: dict[int, list[Any]], b: dict[int, list[Any]]) -> None:
    assert a.keys() == b.keys()
    for f in a:
        assert [x[0] for x in a[f]] == [x[0] for x in b[f]], f
        for x, y in zip(a[f], b[f]):
            assert x[1] == y[1] and np.array_equal(x[2], y[2]) and x[3] == y[3] and x[4] == y[4], (f, x[0])


def _entry(store: Any, frame: int) -> dict[str, Any]:
    """A PROMPTS.json entry on the first object of ``frame``: a box around its left half and a
    positive click inside it (enough to change what the random model shows)."""
    first = instances(store, frame)[0]
    ys, xs = np.nonzero(first.mask)
    x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    x2 = float(max(x1 + 4, int((x1 + x2) / 2)))  # whole pixels: the widget's boxes are
    return {"frame": frame, "object": first.object_id, "label": first.label,
            "points": [[float(int((x1 + x2) / 2)), float(int((y1 + y2) / 2)), 1]], "box": [x1, y1, x2, y2]}


def _clicks(e: dict[str, Any]) -> Any:
    from dl_utils.annotations import Clicks

    return Clicks(points=tuple(tuple(p) for p in e["points"]), box=e["box"])


@pytest.fixture(scope="module")
def reference(tiny_sam3_video_model: Any, clip: Path,  # noqa: F811
              tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[int, Any], dict[int, Any]]:
    """(the click entry, the store after the text run, after the refine): the session called directly."""
    from dl_utils.sam3al.video import Sam3VideoOptions, Sam3VideoSession
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames

    model = tiny_sam3_video_model
    path = tmp_path_factory.mktemp("refine_ref") / "ref.sqlite"
    with open_frames(clip) as src, video_on_cpu(model), AnnotationStore.open_or_create(path, src.media_info()) as st:
        s = Sam3VideoSession(model, src, st, VIDEO_CAPTION, on_unknown="error", model_name="sam3",
                             options=Sam3VideoOptions(score_threshold_detection=VIDEO_THRESHOLD))
        try:
            assert s.propagate()["status"] == "done"
            text = _snapshot(st)
            e = _entry(st, src.frame_numbers[K])
            assert s.refine(e["frame"], e["object"], _clicks(e))["status"] == "done"
        finally:
            s.close()
        after = _snapshot(st)
    changed = sum(not (len(text[f]) == len(after[f])
                       and all(np.array_equal(x[2], y[2]) for x, y in zip(text[f], after[f]))) for f in text)
    assert changed > 0, "the clicks changed nothing: pick other clicks"
    return e, text, after


@requires_sam3
def test_text_and_clicks_equal_propagate_then_refine(tiny_sam3_video_model: Any, clip: Path,  # noqa: F811
                                                     tmp_path: Path, reference: Any) -> None:
    from dl_utils.dinoal.caption import parse_caption
    from dl_utils.drivers.run import run_into_store
    from dl_utils.errors import InputError
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames

    e, _, after = reference
    model = tiny_sam3_video_model
    with open_frames(clip) as src, video_on_cpu(model), \
            AnnotationStore.open_or_create(tmp_path / "s.sqlite", src.media_info()) as st, \
            mock.patch("dl_utils.drivers.run.open_session", side_effect=AssertionError("no SAM2 session")):
        def run(**kw: Any) -> dict[str, Any]:
            return run_into_store(src, st, detector_options=opts(box_threshold=VIDEO_THRESHOLD),
                                  sam3_video_model=model, progress=False, clicks_file="P.json", **kw)

        res = run(prompt=parse_caption(VIDEO_CAPTION), clicks=[e], ledger=True)
        assert res["text"]["status"] == "done" and res["points"]["applied"] == 1
        # every frame refined (the clicked one is written twice: the click, then the forward pass)
        assert res["points"]["objects"] == [e["object"]] and res["points"]["frames_written"] >= len(src)
        _same(_snapshot(st), after)
        runs = len(st.runs())
        # a re-run: the text step is done, the entry is already the object's keyframe: nothing runs
        again = run(prompt=parse_caption(VIDEO_CAPTION), clicks=[e], ledger=True)
        assert again["text"]["status"] == "already done" and again["points"]["applied"] == 0
        assert len(st.runs()) == runs
        _same(_snapshot(st), after)
        # an object SAM 3 did not make: one line naming the entry and where ids come from
        st.add_object("bed")
        bad = {**e, "object": max(o.id for o in st.objects())}
        for entry in (bad, {**e, "object": 999}):
            with pytest.raises(InputError) as err:
                run(clicks=[e, entry])
            msg = str(err.value)
            assert "\n" not in msg and msg.startswith("P.json: entry 1: object") and "store info" in msg
        assert len(st.runs()) == runs


@requires_sam3
def test_clicks_alone_refine_an_earlier_text_run(tiny_sam3_video_model: Any, clip: Path,  # noqa: F811
                                                 tmp_path: Path, reference: Any) -> None:
    from dl_utils.dinoal.caption import parse_caption
    from dl_utils.drivers.run import run_into_store
    from dl_utils.errors import InputError
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames

    e, text, after = reference
    model = tiny_sam3_video_model
    with open_frames(clip) as src, video_on_cpu(model), \
            AnnotationStore.open_or_create(tmp_path / "s.sqlite", src.media_info()) as st:
        o = opts(box_threshold=VIDEO_THRESHOLD)
        # no SAM 3 run in the store yet: refused before any model work
        with pytest.raises(InputError) as err:
            run_into_store(src, st, clicks=[e], detector_options=o, sam3_video_model=None, progress=False)
        assert "\n" not in str(err.value) and "run the text step first" in str(err.value)
        run_into_store(src, st, prompt=parse_caption(VIDEO_CAPTION), detector_options=o, sam3_video_model=model,
                       progress=False)
        _same(_snapshot(st), text)
        res = run_into_store(src, st, clicks=[e], detector_options=o, sam3_video_model=model, progress=False)
        assert res["points"]["applied"] == 1 and "text" not in res
        _same(_snapshot(st), after)


# ----------------------------------------------------------------------------- the widget
@requires_sam3
def test_widget_click_on_a_sam3_object_refines_it(tiny_sam3_video_model: Any, clip: Path,  # noqa: F811
                                                  tmp_path: Path, reference: Any) -> None:
    pytest.importorskip("ipycanvas")
    pytest.importorskip("ipyevents")
    from dl_utils.ipy_utils import Annotator

    e, _, after = reference
    model = tiny_sam3_video_model
    a = Annotator(clip, tmp_path / "w.sqlite", sam3_video_model=model,
                  detector_options=opts(box_threshold=VIDEO_THRESHOLD))
    assert a.session is None  # no SAM2 model
    with video_on_cpu(model), mock.patch("dl_utils.drivers.run.open_session", side_effect=AssertionError("no SAM2")):
        assert a.detect(VIDEO_CAPTION) and a.wait(180) and "detect finished" in a.status, a.messages[-3:]
        a.show(e["frame"])
        x, y, _ = e["points"][0]
        assert a.controller.refine_target(e["object"]) is not None
        # the box and the click as one prompt, as the driver's entry (the widget's clicks accumulate)
        a.controller.clicks.set(e["object"], e["frame"], _clicks({**e, "points": []}))
        assert a.click(int(x), int(y), True, object_id=e["object"]) is None  # a background job
        assert "refine" in a.status, a.messages[-3:]  # Esc on a refine: tests/test_ipy_utils_sam3.py
        assert a.wait(180) and "refine finished" in a.status, a.messages[-3:]
    _same(_snapshot(a.store), after)
    assert a.controller.clicks.get(e["object"], e["frame"]) == _clicks(e)
    # an object SAM 3 did not make goes to SAM2 as before (none loaded here: the usual message)
    other = a.new_object("bed")
    assert other is not None and a.controller.refine_target(other.id) is None
    a.click(5, 5, True, object_id=other.id)
    level, text = a.messages[-1]
    assert level == "error" and "no SAM2 model loaded" in text
    assert a.store.read_object(other.id) == {}
