"""The widget's click path (issue 20.2): the mask is drawn before its store row is written, and the
split changes nothing else.

Checked here, with the tiny random-weight SAM 2.1 (tests/sam2_fixtures.py) and the widget driven
through ``handle_event`` (no browser): the overlay goes out before the write and the store holds each
click's mask when the click returns; two quick clicks end with the second's mask, equal to upstream-
parity ``VideoSession.add_points``; a failing write is reported, the clicks go back and the overlay
sent last is exactly the store's; the display-size overlay follows the stated sampling rule and
equals the store-read one byte for byte; every timing stage is recorded. Speed is never asserted.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.sam2_fixtures import requires_sam2, tiny_sam2_video  # noqa: F401  (fixture)

pytest.importorskip("ipycanvas")
pytest.importorskip("ipyevents")


def _ev(kind, x, y, button=0):
    return {"type": kind, "relativeX": x, "relativeY": y, "button": button, "shiftKey": False,
            "ctrlKey": False, "altKey": False, "metaKey": False}


def _click(a, x, y, button=0):
    for kind in ("mousedown", "mousemove", "mouseup"):
        a.handle_event(_ev(kind, x, y, button))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from PIL import Image

    from dl_utils.video_utils import open_frames
    from tests.conftest import shared_file

    out = tmp_path_factory.mktemp("clickclip")
    for i, img in enumerate(open_frames(shared_file("bedroom.mp4"), stop=3)):
        Image.fromarray(img).save(out / f"{i:05d}.jpg", quality=90)
    return out


def _annotator(clip, path, model, sent):
    """A widget at half size (960x540 frames on a 480x270 canvas) whose layer-1 sends are recorded."""
    from dl_utils.ipy_utils import Annotator
    from dl_utils.sam2al import VideoSession

    a = Annotator(VideoSession(clip, path, sam_model=model), max_size=(480, 270))
    put = a.ui.put

    def recording_put(layer, data, fallback, at=(0, 0)):
        if layer == 1:
            sent.append((data, tuple(at), a.store.read_frame(a.frame).by_object().get(a.selected)))
        return put(layer, data, fallback, at)

    a.ui.put = recording_put
    return a


def _store_overlay_png(a) -> bytes:
    """The overlay a full redraw from the store sends (the reference for what the screen shows)."""
    from dl_utils.ipy_utils.render import encode_indexed_png, overlay_indexed

    idx, pal, _ = overlay_indexed(a.instances(), a.view, colors=a.controller.colors(), alpha=a.ui.alpha,
                                  contour_only=a.ui.contour_only, selected=a.selected)
    return encode_indexed_png(idx, pal)


@requires_sam2
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_overlay_before_write_store_after_each_click(clip, tmp_path, tiny_sam2_video):
    from dl_utils.ipy_utils import to_source
    from dl_utils.ipy_utils.controller import CLICK_STAGES
    from dl_utils.sam2al import VideoSession

    sent: list = []
    a = _annotator(clip, tmp_path / "a.sqlite", tiny_sam2_video, sent)
    a.new_object("chair")
    sent.clear()
    _click(a, 201.4, 150.9)
    first = a.store.read_frame(0).by_object()[1]
    # the overlay went out while the store had no row yet; when the click returned, the row is there
    assert len(sent) == 1 and sent[0][2] is None
    assert first.keyframe and first.mask.any()
    assert sent[-1][0] == _store_overlay_png(a)  # what was drawn is what the store holds

    # two quick clicks: each overlay is sent before its row, and the store ends with the second's mask
    _click(a, 120, 60, button=2)
    _click(a, 300, 200)
    assert [s[2] is not None for s in sent[1:]] == [True, True]
    assert np.array_equal(sent[1][2].mask, first.mask)  # the 2nd click's draw saw the 1st click's row
    pts = [[*to_source(a.view, 201.4, 150.9), 1], [*to_source(a.view, 120, 60), 0],
           [*to_source(a.view, 300, 200), 1]]
    ref = VideoSession(clip, tmp_path / "ref.sqlite", sam_model=tiny_sam2_video)
    for n in (1, 2, 3):  # the widget sends all of a frame's clicks each time: so does the reference
        want = ref.add_points(0, 1, pts[:n], label="chair")
    got = a.store.read_frame(0).by_object()[1]
    assert np.array_equal(got.mask, want.mask) and got.score == pytest.approx(want.score)
    assert got.clicks == want.clicks and a.session.locked_frames(1) == [0]
    assert sent[-1][0] == _store_overlay_png(a)

    # every stage is timed, in seconds; the mask was handed to the comm before the write began
    t = a.last_click_timings
    assert tuple(t) == CLICK_STAGES and all(v >= 0 for v in t.values())
    assert t["predict"] > 0 and t["total"] >= t["shown"] >= t["predict"] and t["store_write"] > 0

    # undo and redo take the same path and keep the store and the screen together
    a.undo()
    assert a.clicks.get(1, 0).points == tuple((float(x), float(y), int(v)) for x, y, v in pts[:2])
    assert sent[-1][0] == _store_overlay_png(a)
    a.redo()  # refines from the undone state's mask, as before the split: the clicks and the screen
    assert a.store.read_frame(0).by_object()[1].clicks.points == a.clicks.get(1, 0).points == want.clicks.points
    assert sent[-1][0] == _store_overlay_png(a)


@requires_sam2
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_failing_write_is_reported_and_the_screen_shows_the_store(clip, tmp_path, tiny_sam2_video):
    from dl_utils.errors import StoreError

    sent: list = []
    a = _annotator(clip, tmp_path / "a.sqlite", tiny_sam2_video, sent)
    a.new_object("chair")
    _click(a, 200, 150)
    kept = a.store.read_frame(0).by_object()[1]
    clicks_before = a.clicks.get(1, 0)

    def broken(*_a, **_k):
        raise StoreError(f"{a.store.path}: disk full; free some space and click again")

    write = a.store.write_frame
    a.store.write_frame = broken
    n = len(sent)
    _click(a, 100, 60)
    a.store.write_frame = write
    level, text = a.messages[-1]
    assert level == "error" and "disk full" in text
    assert np.array_equal(a.store.read_frame(0).by_object()[1].mask, kept.mask)  # the row is untouched
    assert a.clicks.get(1, 0) == clicks_before
    # two sends: the new mask, then (after the failed write) the store's state again
    assert len(sent) == n + 2 and sent[-2][0] != sent[-1][0] and sent[-1][0] == _store_overlay_png(a)

    # the failed click left no undo step: undo removes the first click
    a.undo()
    assert a.clicks.frames(1) == [] and a.store.read_frame(0).by_object() == {}
    assert sent[-1][0] == _store_overlay_png(a)

    # the widget goes on: the next click is written
    _click(a, 100, 60)
    assert a.messages[-1][0] == "info" and a.store.read_frame(0).by_object()[1].clicks.points[-1][2] == 1
    assert a.session.locked_frames(1) == [0] and sent[-1][0] == _store_overlay_png(a)


def test_display_overlay_rule_and_the_kept_masks_path():
    """Rule: a display pixel is filled iff the source pixel under its centre is in the mask
    (``floor((i + 0.5) / k + origin)``, :func:`~dl_utils.ipy_utils.sample_indices`); contours are
    drawn on that display mask. The masks the widget keeps per object give the same palette image
    as mapping every instance from the store."""
    from dl_utils.annotations import Instance
    from dl_utils.ipy_utils import View, zoom_at
    from dl_utils.ipy_utils.render import display_mask, overlay_indexed, overlay_indexed_masks

    g = np.random.default_rng(0)
    h, w = 540, 960
    yy, xx = np.mgrid[:h, :w]
    masks = {1: (xx - 300) ** 2 + (yy - 200) ** 2 < 120 ** 2,
             2: (g.random((h, w)) < 0.5) & (xx > 500),  # noise: hundreds of contours
             3: np.zeros((h, w), bool)}
    insts = [Instance(o, mask=m) for o, m in masks.items()]
    for view in (View(w, h, 0.5), View(w, h, 1 / 3), zoom_at(View(w, h, 0.5), 2.0, 100, 80), View(w, h, 1.0)):
        ref = overlay_indexed(insts, view, selected=1)
        kept = overlay_indexed_masks([(o, display_mask(m, view)) for o, m in masks.items()], view.canvas_size,
                                     selected=1)
        assert np.array_equal(ref[0], kept[0]) and ref[1:] == kept[1:]
        idx, pal, (x, y) = kept
        cw, ch = view.canvas_size
        full = np.zeros((ch, cw), np.uint8)
        full[y:y + idx.shape[0], x:x + idx.shape[1]] = idx
        ys = np.floor((np.arange(ch) + 0.5) / view.k + view.y0).astype(int)
        xs = np.floor((np.arange(cw) + 0.5) / view.k + view.x0).astype(int)
        for k, oid in enumerate(o for o in (2, 1) if masks[o][ys][:, xs].any()):  # selected drawn last
            want = masks[oid][ys][:, xs]
            fill = full == 2 * k + 1
            assert not (fill & ~want).any()  # a fill pixel is a sampled mask pixel
            # a sampled mask pixel is filled unless a contour (its own or a later object's) covers it
            later = full >= 2 * k + 2
            assert not (want & ~fill & ~later).any()


def test_palette_png_reads_back_exactly():
    """The zlib-written palette PNG (Z_RLE) decodes, with Pillow as with a browser, to the exact indices,
    colours and per-entry alpha; on a ragged mask and on the one-pixel empty overlay."""
    import io

    from PIL import Image

    from dl_utils.errors import InputError
    from dl_utils.ipy_utils.render import encode_indexed_png

    g = np.random.default_rng(1)
    pal = [(0, 0, 0, 0)] + [(int(r), int(gg), int(b), int(a)) for r, gg, b, a in g.integers(0, 256, (9, 4))]
    for idx in (g.integers(0, 10, (37, 53)).astype(np.uint8), np.zeros((1, 1), np.uint8),
                np.repeat(g.integers(0, 10, (9, 1)), 700, axis=1).astype(np.uint8)):
        im = Image.open(io.BytesIO(encode_indexed_png(idx, pal)))
        assert im.mode == "P" and np.array_equal(np.asarray(im), idx)
        got = np.asarray(im.convert("RGBA"))
        assert np.array_equal(got, np.asarray(pal, np.uint8)[idx])
    with pytest.raises(InputError, match="2-D"):
        encode_indexed_png(np.zeros((2, 2, 2), np.uint8), pal)


def test_contour_pixels_are_what_opencv_traces():
    """contour_pixels (one erosion) draws exactly what findContours + drawContours(thickness 1) drew."""
    import cv2

    from dl_utils.ipy_utils.render import contour_pixels

    g = np.random.default_rng(2)
    masks = [np.zeros((5, 7), bool), np.ones((6, 9), bool)]
    for _ in range(12):
        masks.append(g.random((40, 60)) < g.uniform(0.1, 0.9))  # noise: diagonal-only neighbours, holes
        small = (g.random((12, 12)) < 0.5).astype(np.uint8)
        masks.append(cv2.resize(small, (150, 90), interpolation=cv2.INTER_LINEAR).astype(bool))
    masks.append(masks[-1][7:70, 11:140])  # a strided view, as the overlay's region crop passes
    for m in masks:
        ref = np.zeros(m.shape, np.uint8)
        cs, _ = cv2.findContours(np.ascontiguousarray(m).view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(ref, cs, -1, 1, 1, cv2.LINE_8)
        assert np.array_equal(contour_pixels(m), ref)
