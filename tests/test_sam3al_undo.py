"""Sam3VideoSession.undo_refine / Sam3ClickEngine.undo (issue 17): a refinement reverted.

The proofs are store equalities: refine A, refine B, undo B leaves the store A alone leaves; a
refinement C after that equals C on a fresh session that never saw B (so the rebuilt sam3 state is
the one without B's clicks); undoing everything gives the text run's store back; a cancelled
refinement's undo gives back exactly the rows it replaced. Clip, thresholds and helpers come from
tests/test_sam3al_video.py (the 8-frame PNG clip of bedroom.mp4, tiny random-weight SAM 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.sam3_fixtures import tiny_sam3_video_model  # noqa: F401
from tests.test_sam3al_video import N_FRAMES, clip, pytestmark, session, stored  # noqa: F401

PHRASE = "person"


def rows(store: Any) -> dict[int, list[tuple[Any, ...]]]:
    """Every row of every frame, all that a person sees of it (mask, score, source, keyframe, clicks,
    provenance, label), in object order."""
    out = {}
    for f in store.media.frames:
        out[f] = [(x.object_id, np.packbits(x.mask).tobytes() if x.mask is not None else None,
                   None if x.mask is None else x.mask.shape, x.score, x.source.value, x.keyframe,
                   x.clicks.to_json() if x.clicks else None, x.provenance.to_json() if x.provenance else None,
                   x.label)
                  for x in store.read_frame(f)]
    return out


def visible(store: Any) -> dict[int, list[tuple[Any, ...]]]:
    """What two stores made by different sessions share: ids, masks, scores, keyframes, clicks."""
    return {f: [r[:4] + r[5:7] for r in v] for f, v in rows(store).items()}


def pixel(s: Any, frame: int, object_id: int, nth: int = 0) -> tuple[float, float]:
    """The nth (scrambled) pixel of the object's stored mask on ``frame``."""
    m = next(x.mask for x in s.store.read_frame(frame) if x.object_id == object_id)
    ys, xs = np.nonzero(m)
    i = (nth * 7919) % len(xs)
    return float(xs[i]), float(ys[i])


def objects_on(s: Any, frame: int) -> list[int]:
    return [x.object_id for x in s.store.read_frame(frame) if np.asarray(x.mask).any()]


@pytest.fixture
def started(tiny_sam3_video_model: Any, clip: Path, tmp_path: Path) -> Any:  # noqa: F811
    def make(name: str, exemplar_frame: int | None = None, **opts: Any) -> Any:
        if exemplar_frame is None:
            s = session(tiny_sam3_video_model, clip, tmp_path / f"{name}.db", caption=PHRASE, **opts)
        else:  # a run prompted on a middle frame: sam3's forward then backward pass
            from dl_utils.sam3al.prompts import Exemplar

            from tests.test_sam3al_exemplars import session as ex_session

            s = ex_session(tiny_sam3_video_model, clip, tmp_path / f"{name}.db", PHRASE,
                           [Exemplar((10.0, 20.0, 60.0, 60.0), frame=exemplar_frame)], **opts)
        assert s.propagate()["status"] == "done"
        assert objects_on(s, 3), "tune THRESH: no object on frame 3"
        return s
    return make


# a run from frame 0 trimmed (each re-applied refinement reads the cache rebuilt from the store as it
# was before it), and one prompted on frame 3 untrimmed (the rebuild replays both of its passes)
@pytest.mark.parametrize("exemplar_frame,trim", [(None, True), (3, False)])
def test_undo_gives_the_store_and_state_of_never_having_refined(started: Any, exemplar_frame: int | None,
                                                                trim: bool) -> None:
    from dl_utils.annotations import Clicks
    from dl_utils.errors import InputError
    from dl_utils.sam3al.video import Sam3ClickEngine

    s = started("a", exemplar_frame, trim_memory=trim)
    text_run = rows(s.store)
    o = objects_on(s, 3)[0]
    fb = next(f for f in (5, 6, 4, 7) if o in objects_on(s, f))
    fc = next(f for f in (1, 2, 0) if o in objects_on(s, f))
    A = (3, o, Clicks(points=(pixel(s, 3, o) + (1,),)))
    B = (fb, o, Clicks(points=(pixel(s, fb, o, nth=3) + (0,), pixel(s, fb, o, nth=11) + (1,))))
    C = (fc, o, Clicks(points=(pixel(s, fc, o, nth=1) + (1,), pixel(s, fc, o, nth=2) + (0,))))
    assert not s.can_undo
    assert s.refine(*A)["status"] == "done"
    after_a = rows(s.store)
    rb = s.refine(*B)
    assert rb["status"] == "done" and rows(s.store) != after_a, "B changed nothing: pick other clicks"
    eng = Sam3ClickEngine(s)
    assert eng.can_undo
    u = eng.undo()
    assert u["status"] == "undone" and u["object"] == o and u["frame"] == fb and u["run_id"] == rb["run_id"]
    assert 0 < u["frames_restored"] <= N_FRAMES
    assert rows(s.store) == after_a  # every row as A left it (clicks, provenance and all)
    assert s.refinements == {o: {3: A[2]}} and eng.keyframes() == {o: [3]}
    runs = s.store.runs()
    assert runs[-1]["kind"] == "sam3-undo" and runs[-1]["status"] == "done"
    assert s.propagate()["frames_written"] == 0  # the text run is finished: nothing to do
    assert s.refine(*C)["status"] == "done"  # on sam3's state rebuilt without B
    after_c = visible(s.store)

    fresh = started("b", exemplar_frame, trim_memory=trim)  # never saw B
    fresh.refine(*A)
    fresh.refine(*C)
    assert visible(fresh.store) == after_c
    fresh.close()

    # a stack: newest first, down to the text run's store; then nothing left, one line
    assert s.undo_refine()["frame"] == fc and s.undo_refine()["frame"] == 3
    assert rows(s.store) == text_run and s.refinements == {} and not s.can_undo
    with pytest.raises(InputError) as e:
        s.undo_refine()
    assert "\n" not in str(e.value) and "no refinement" in str(e.value)
    s.close()


def test_undo_of_a_cancelled_refinement_restores_the_store(started: Any) -> None:
    from dl_utils.annotations import Clicks

    s = started("c")
    o = objects_on(s, 3)[0]
    s.refine(3, o, Clicks(points=(pixel(s, 3, o) + (1,),)))
    before = rows(s.store)
    clicks = Clicks(points=(pixel(s, 4, o, nth=2) + (0,), pixel(s, 4, o, nth=9) + (1,)))
    r = s.refine(4, o, clicks, callback=lambda f, _: s.cancel() if f == 5 else None)
    assert r["status"] == "cancelled" and rows(s.store) != before and s.refinements[o][4] == clicks
    u = s.undo_refine()
    assert u["frame"] == 4 and u["run_id"] == r["run_id"]
    assert rows(s.store) == before and 4 not in s.refinements[o]
    assert s.propagate()["frames_written"] == 0
    # the refinement before it is still undoable, and a new refinement runs on the rebuilt state
    assert s.can_undo
    assert s.refine(4, o, clicks)["status"] == "done"
    s.close()


def test_a_cancel_does_not_cut_the_replay_a_refine_needs(started: Any, tiny_sam3_video_model: Any,  # noqa: F811
                                                         clip: Path, tmp_path: Path) -> None:  # noqa: F811
    """A new session on a finished store replays the text run inside its first refine; a cancel()
    left over from before (or pressed during that replay) must not leave sam3's state half-run:
    the refine equals one on a session that was never cancelled."""
    import shutil

    from dl_utils.annotations import Clicks

    s = started("r", trim_memory=False)
    o = objects_on(s, 3)[0]
    clicks = Clicks(points=(pixel(s, 3, o) + (1,),))
    s.close()
    s.store.close()  # all of it in the file (WAL) before the copy
    shutil.copy(tmp_path / "r.db", tmp_path / "r2.db")
    plain = session(tiny_sam3_video_model, clip, tmp_path / "r.db", caption=PHRASE, trim_memory=False)
    assert plain.refine(3, o, clicks)["status"] == "done"
    cut = session(tiny_sam3_video_model, clip, tmp_path / "r2.db", caption=PHRASE, trim_memory=False)
    cut.cancel()  # before the refine: its replay runs whole all the same
    assert cut.refine(3, o, clicks)["status"] == "done"
    assert visible(cut.store) == visible(plain.store)
    plain.close()
    cut.close()
