"""shared_image_backbone and quiet_sam3_progress (dl_utils.sam3al.backbone) on the tiny random SAM 3.

The exactness claim is tested the strong way: a 2-phrase session with sharing writes the same store
as one without (masks array_equal, same scores and sam3 ids), the trunk runs once per frame instead
of twice, and every tensor the cache handed out is still bit-equal, after the whole run, to a clone
taken when it was computed (so no sam3 caller changed a shared tensor in place).
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.sam3_fixtures import build_tiny_video, requires_sam3
from tests.test_sam3al_video import DATA, N_FRAMES, PHRASES, clip, session, stored  # noqa: F401

HOT_FRAMES = 5  # at least 5: the burst (frames 2..4) must outgrow keep=2

pytestmark = [requires_sam3,
              pytest.mark.skipif(not DATA.exists(), reason=f"{DATA} is absent (see ../shared/data/README)")]


def _tree_clone(x: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: _tree_clone(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_tree_clone(v) for v in x]
    return x


def _tree_equal(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_tree_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_tree_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)


@contextlib.contextmanager
def counted(model: Any) -> Iterator[list[tuple[Any, Any]]]:
    """Every real ``forward_image`` call on the model's backbone: (outputs, a clone taken then).
    Installed as an instance attribute before sharing starts, so sharing wraps it (and must put it
    back)."""
    bb = model.detector.backbone
    original = bb.forward_image
    calls: list[tuple[Any, Any]] = []

    def forward_image(samples: Any) -> Any:
        out = original(samples)
        calls.append((out, _tree_clone(out)))
        return out

    bb.forward_image = forward_image
    try:
        yield calls
    finally:
        del bb.__dict__["forward_image"]


def _run(model: Any, folder: Path, db: Path, wrap: Callable[[], Any]) -> dict[str, Any]:
    from dl_utils.sam3al.backbone import quiet_sam3_progress

    err = io.StringIO()
    with counted(model) as calls, contextlib.redirect_stderr(err), wrap() as stats, \
            (quiet_sam3_progress() if stats is not None else contextlib.nullcontext()):
        # the session's own sharing off: these runs compare sharing wrapped around it with none
        s = session(model, folder, db, share_backbone=False)
        summary = s.propagate()
    res = {"calls": calls, "stats": stats, "stderr": err.getvalue(), "summary": summary,
           "store": {p: stored(s.store, p) for p in PHRASES}}
    s.close()
    return res


@pytest.fixture(scope="module")
def runs(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    """The same 2-phrase caption over the clip: without sharing, with sharing (and sam3's bars
    quieted), on a model without sam3's hot-start delay (phrases in lockstep from frame 0); and on
    the default model (hot-start delay 15) with the default ``keep`` and with ``keep`` covering it."""
    from dl_utils.sam3al.backbone import shared_image_backbone

    d = tmp_path_factory.mktemp("sam3share")
    short = d / "short"  # the hot-start runs: 5 frames show the burst
    short.mkdir()
    for i in range(HOT_FRAMES):
        shutil.copy(clip / f"{i}.png", short / f"{i}.png")
    flat = build_tiny_video(apply_temporal_disambiguation=False)
    hot = build_tiny_video()
    assert flat.hotstart_delay == 0 and hot.hotstart_delay == 15
    return {
        "plain": _run(flat, clip, d / "plain.db", lambda: contextlib.nullcontext()),
        "shared": _run(flat, clip, d / "shared.db", lambda: shared_image_backbone(flat)),
        "hot_plain": _run(hot, short, d / "hot_plain.db", lambda: contextlib.nullcontext()),
        "hot_keep2": _run(hot, short, d / "hot_keep2.db", lambda: shared_image_backbone(hot)),
        "hot_keep17": _run(hot, short, d / "hot_keep17.db",
                           lambda: shared_image_backbone(hot, keep=hot.hotstart_delay + 2)),
    }


def _same_store(a: dict[str, Any], b: dict[str, Any], n: int = N_FRAMES) -> None:
    for p in PHRASES:
        assert sorted(a[p]) == sorted(b[p]) == list(range(n))
        for f in a[p]:
            (ids_a, sc_a, m_a), (ids_b, sc_b, m_b) = a[p][f], b[p][f]
            assert ids_a == ids_b and sc_a == sc_b, (p, f)
            assert m_a.dtype == m_b.dtype and np.array_equal(m_a, m_b), (p, f)


def test_one_trunk_pass_per_frame_for_two_phrases(runs: dict[str, Any]) -> None:
    plain, shared = runs["plain"], runs["shared"]
    assert plain["summary"]["status"] == shared["summary"]["status"] == "done"
    assert len(plain["calls"]) == len(PHRASES) * N_FRAMES
    assert len(shared["calls"]) == N_FRAMES
    st = shared["stats"]
    assert (st.misses, st.hits, st.bypassed) == (N_FRAMES, (len(PHRASES) - 1) * N_FRAMES, 0)


def test_sharing_writes_the_same_store(runs: dict[str, Any]) -> None:
    assert sum(len(r[0]) for ph in runs["plain"]["store"].values() for r in ph.values()) > 0, "no output"
    _same_store(runs["shared"]["store"], runs["plain"]["store"])
    _same_store(runs["hot_keep2"]["store"], runs["hot_plain"]["store"], HOT_FRAMES)
    _same_store(runs["hot_keep17"]["store"], runs["hot_plain"]["store"], HOT_FRAMES)


def test_no_caller_changes_a_shared_tensor(runs: dict[str, Any]) -> None:
    for name in ("shared", "hot_keep2", "hot_keep17"):
        for out, clone in runs[name]["calls"]:
            assert _tree_equal(out, clone), name


def test_hot_start_burst_is_shared_only_with_a_keep_that_covers_it(runs: dict[str, Any]) -> None:
    # each phrase's add_prompt runs frame 0 (and builds frame 1 ahead), phrase after phrase: shared
    # with keep=2; then a phrase's first propagation step runs the rest of its hot-start window
    # (frames 2..4 here) before the next phrase starts, and keep=2 holds only the last two computed
    # (the ones the first phrase computed for those frames are pushed out by the time the second asks)
    assert len(runs["hot_plain"]["calls"]) == 2 * HOT_FRAMES
    assert len(runs["hot_keep2"]["calls"]) == 2 * HOT_FRAMES - 2
    assert len(runs["hot_keep17"]["calls"]) == HOT_FRAMES


def test_quiet_sam3_progress_in_a_session(runs: dict[str, Any]) -> None:
    # the session quiets sam3's bar itself (Sam3VideoSession._model_settings); that sam3 prints it
    # outside is test_quiet_sam3_progress_leaves_other_bars'
    assert "propagate_in_video" not in runs["plain"]["stderr"]
    assert "propagate_in_video" not in runs["shared"]["stderr"]


def test_the_session_shares_by_default(clip: Path, tmp_path: Path) -> None:  # noqa: F811
    """Sam3VideoOptions(share_backbone=True), the default: one trunk pass per frame, the store of
    a session that does not share."""
    flat = build_tiny_video(apply_temporal_disambiguation=False)
    with counted(flat) as calls:
        s = session(flat, clip, tmp_path / "default.db")
        assert s.propagate()["status"] == "done"
        got = {p: stored(s.store, p) for p in PHRASES}
        s.close()
    assert len(calls) == N_FRAMES
    with counted(flat) as calls:
        s = session(flat, clip, tmp_path / "off.db", share_backbone=False)
        s.propagate()
        want = {p: stored(s.store, p) for p in PHRASES}
        s.close()
    assert len(calls) == len(PHRASES) * N_FRAMES
    _same_store(got, want)


# ---- the cache's key and the context's bookkeeping (the backbone alone: fast) ----------------

@pytest.fixture
def model() -> Any:
    return build_tiny_video(apply_temporal_disambiguation=False)


def _frame(seed: int) -> Any:
    import torch

    return torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def test_key_is_content_not_address(model: Any) -> None:
    import torch

    from dl_utils.sam3al.backbone import shared_image_backbone

    bb = model.detector.backbone
    with torch.inference_mode(), counted(model) as calls, shared_image_backbone(model) as st:
        x = _frame(1)
        a = bb.forward_image(x)
        b = bb.forward_image(x.clone())  # other storage, same pixels: shared
        assert len(calls) == 1 and b["backbone_fpn"][0] is a["backbone_fpn"][0]
        # fresh containers: a caller replacing an entry (as sam3's tracker does) changes no other's
        assert b is not a and b["backbone_fpn"] is not a["backbone_fpn"]
        assert b["sam2_backbone_out"] is not a["sam2_backbone_out"]
        b["sam2_backbone_out"]["backbone_fpn"][0] = None
        assert a["sam2_backbone_out"]["backbone_fpn"][0] is not None
        x.add_(1.0)  # same tensor, same address, new pixels: computed again, and right
        c = bb.forward_image(x)
        assert len(calls) == 2
        assert _tree_equal(c, _tree_clone(model.detector.backbone.__class__.forward_image(bb, x)))
        bb.forward_image(_frame(2))  # a third frame pushes the first out (keep=2)
        bb.forward_image(_frame(1))
        assert len(calls) == 4 and (st.hits, st.misses) == (1, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # other autocast state: not the same result
            bb.forward_image(_frame(1))
        assert len(calls) == 5
    with torch.no_grad():
        with shared_image_backbone(model) as st2:
            pass
    assert st2.calls == 0


def test_grad_mode_and_weight_changes_are_not_shared(model: Any) -> None:
    import torch

    from dl_utils.sam3al.backbone import shared_image_backbone

    bb = model.detector.backbone
    p = next(bb.parameters())
    with counted(model) as calls, shared_image_backbone(model) as st:
        x = _frame(3)
        bb.forward_image(x)
        bb.forward_image(x)  # autograd on: never shared
        assert len(calls) == 2 and st.bypassed == 2
        with torch.no_grad():
            bb.forward_image(x)
            bb.forward_image(x)
            assert len(calls) == 3
            p.add_(0.0)  # a weight written in place (a load, a step): not the same network
            try:
                bb.forward_image(x)
            finally:
                p.sub_(0.0)
            assert len(calls) == 4


def test_context_restores_the_method_on_exit_error_and_nesting(model: Any) -> None:
    from dl_utils.errors import InputError
    from dl_utils.sam3al.backbone import shared_image_backbone

    bb = model.detector.backbone
    assert "forward_image" not in bb.__dict__
    with shared_image_backbone(model) as outer:
        wrapped = bb.__dict__["forward_image"]
        with shared_image_backbone(model, keep=5) as inner:  # re-entrant: the same cache
            assert inner is outer and bb.__dict__["forward_image"] is wrapped and wrapped.keep == 5
        assert bb.__dict__["forward_image"] is wrapped
    assert "forward_image" not in bb.__dict__
    assert bb.forward_image.__func__ is type(bb).forward_image

    with pytest.raises(RuntimeError, match="boom"):
        with shared_image_backbone(model):
            raise RuntimeError("boom")
    assert "forward_image" not in bb.__dict__

    with counted(model):  # someone else's patch is put back as it was
        theirs = bb.__dict__["forward_image"]
        with pytest.raises(KeyError):
            with shared_image_backbone(model):
                raise KeyError("x")
        assert bb.__dict__["forward_image"] is theirs

    with pytest.raises(InputError):
        with shared_image_backbone(object()):
            pass
    with pytest.raises(InputError):
        with shared_image_backbone(model, keep=0):
            pass


def test_quiet_sam3_progress_leaves_other_bars(capsys: pytest.CaptureFixture[str]) -> None:
    import sam3.model.sam3_video_inference as vi
    from tqdm.auto import tqdm

    from dl_utils.sam3al.backbone import quiet_sam3_progress

    original = vi.tqdm
    with quiet_sam3_progress():
        with quiet_sam3_progress():
            assert list(vi.tqdm(range(3), desc="propagate_in_video", disable=False)) == [0, 1, 2]
        for _ in tqdm(range(3), desc="our-bar", disable=False):
            pass
    err = capsys.readouterr().err
    assert "propagate_in_video" not in err and "our-bar" in err
    assert vi.tqdm is original
    for _ in vi.tqdm(range(2), desc="propagate_in_video"):
        pass
    assert "propagate_in_video" in capsys.readouterr().err
    with pytest.raises(ValueError):
        with quiet_sam3_progress():
            raise ValueError("x")
    assert vi.tqdm is original


def test_threads_calling_at_once_get_exact_results(model: Any) -> None:
    """Several threads on the same frames inside one block (inference mode is per thread, so each
    enters it): every result is the unshared one, bit for bit, and every call is counted once."""
    import threading

    import torch

    from dl_utils.sam3al.backbone import shared_image_backbone

    bb = model.detector.backbone
    frames = [_frame(10 + i) for i in range(3)]
    with torch.inference_mode():
        want = [_tree_clone(type(bb).forward_image(bb, f)) for f in frames]
    got: list[tuple[int, Any]] = []
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            with torch.inference_mode():
                for i in (range(3) if k % 2 == 0 else range(2, -1, -1)):
                    got.append((i, bb.forward_image(frames[i])))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    with shared_image_backbone(model, keep=3) as st:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(got) == 12
    assert all(_tree_equal(out, want[i]) for i, out in got)
    assert st.calls == 12 and st.bypassed == 0 and 3 <= st.misses <= 12 and st.hits == 12 - st.misses
    assert "forward_image" not in bb.__dict__
