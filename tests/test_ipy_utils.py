"""dl_utils.ipy_utils: exact display <-> source mapping, event -> prompt translation, SAM2 parity of a
click, rendered pixels, undo/redo, background propagation with cancel, and the bad-input messages.

The annotator is driven through ``handle_event`` with the dicts ipyevents sends, so no browser is
needed; the background job's messages are drained on the test thread (``Annotator.wait``), exactly
as the kernel's event loop would drain them.
"""

from __future__ import annotations

import sys
import threading
import types
from fractions import Fraction

import numpy as np
import pytest

from dl_utils.errors import CvatError
from dl_utils.ipy_utils import (
    ClickBook,
    History,
    PromptBook,
    View,
    drag_box,
    pan,
    sample_indices,
    to_source,
    zoom_at,
)
from dl_utils.ipy_utils.history import OBJECT, Action
from tests.sam2_fixtures import requires_sam2, tiny_sam2, tiny_sam2_video  # noqa: F401  (fixtures)

pytest.importorskip("ipycanvas")
pytest.importorskip("ipyevents")

SCALES = [0.25, 0.5, 1.0, 1.5, 2.0]


# ----------------------------------------------------------------------------- geometry
def _exact_pixel(v: float, k: Fraction, origin: Fraction) -> int:
    """floor(v / k + origin) in exact rational arithmetic: the footprint definition itself."""
    q = Fraction(v) / k + origin
    return q.numerator // q.denominator


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("zoom,x0,y0", [(1.0, 0.0, 0.0), (2.0, 10.0, 3.5), (3.0, 0.25, 17.0)])
def test_to_source_matches_exact_footprints(scale, zoom, x0, y0, rng):
    w, h = 97, 61
    view = View(w, h, scale, zoom, x0, y0)
    k = Fraction(scale) * Fraction(zoom)
    cw, ch = view.canvas_size
    # random points, every footprint edge, and points just inside/outside the edges
    xs = list(rng.uniform(0, cw, 300)) + [float((i - Fraction(x0)) * k) for i in range(w)]
    ys = list(rng.uniform(0, ch, 300)) + [float((j - Fraction(y0)) * k) for j in range(h)]
    for x, y in zip(xs, ys):
        i, j = _exact_pixel(x, k, Fraction(x0)), _exact_pixel(y, k, Fraction(y0))
        got = to_source(view, x, y)
        if 0 <= i < w and 0 <= j < h:
            assert got == (i, j), (x, y)
            # the display point really lies in the footprint of the pixel it maps to
            assert (i - Fraction(x0)) * k <= Fraction(x) < (i + 1 - Fraction(x0)) * k
        else:
            assert got is None
    # rendering samples each canvas pixel's centre with the same mapping
    rows, cols = sample_indices(view)
    for d in range(0, cw, 7):
        p = to_source(view, d + 0.5, 0.5)
        assert cols[d] == (p[0] if p is not None else -1)
    for d in range(0, ch, 5):
        p = to_source(view, 0.5, d + 0.5)
        assert rows[d] == (p[1] if p is not None else -1)


def test_canvas_size_and_examples():
    v = View(960, 540, 0.5)
    assert v.canvas_size == (480, 270)
    assert to_source(v, 0, 0) == (0, 0)
    assert to_source(v, 0.49, 0.49) == (0, 0)
    assert to_source(v, 0.5, 0.5) == (1, 1)  # scale 0.5: each display px holds two source px
    assert to_source(View(10, 10, 2.0), 3.99, 2.0) == (1, 1)
    assert to_source(View(10, 10, 1.5), 3.0, 1.49) == (2, 0)  # 3.0 is the left edge of pixel 2
    assert to_source(v, 480, 10) is None


def test_zoom_keeps_point_under_pointer_and_clamps():
    v = View(200, 100, 1.0)
    z = zoom_at(v, 2.0, 50, 40)
    assert z.zoom == 2.0
    assert to_source(z, 50, 40) == to_source(v, 50, 40)
    far = pan(zoom_at(v, 4.0, 100, 50), -1000, -1000)  # the window may not leave the frame
    assert far.x0 == 200 - 200 / 4 and far.y0 == 100 - 100 / 4
    assert pan(far, 5000, 5000).x0 == 0
    assert zoom_at(z, 0.1, 10, 10).zoom == 1.0 and zoom_at(z, 0.1, 10, 10).x0 == 0


def test_drag_box_covers_touched_pixels():
    v = View(100, 100, 0.5)
    assert drag_box(v, (10.2, 20.7), (4.0, 30.0)) == (8, 41, 21, 61)


# ----------------------------------------------------------------------------- history
def test_overlay_region_is_the_drawn_part_of_the_layer(rng):
    """The widget sends only the drawn region; placed on a clear layer it is the whole overlay."""
    import cv2

    from dl_utils.annotations import Instance
    from dl_utils.ipy_utils.render import display_mask, overlay_region, overlay_rgba
    from dl_utils.ipy_utils.geometry import View, sample_indices

    h, w = 90, 160
    a = np.zeros((h, w), bool)
    a[20:40, 30:70] = True
    b = np.zeros((h, w), bool)
    b[50:60, 100:150] = True
    insts = [Instance(1, mask=a), Instance(2, mask=b)]
    colors = {1: "#ff0000", 2: "#00ff00"}
    for view in (View(w, h), View(w, h, scale=0.5), View(w, h, zoom=2.0, x0=10, y0=5)):
        full = overlay_rgba(insts, view, colors=colors, selected=2)
        region, (x, y) = overlay_region(insts, view, colors=colors, selected=2)
        assert full[y:y + region.shape[0], x:x + region.shape[1]].tolist() == region.tolist()
        outside = full.copy()
        outside[y:y + region.shape[0], x:x + region.shape[1]] = 0
        assert not outside.any()
        # reference: every object filled and outlined on the whole layer
        ref = np.zeros_like(full)
        for oid in (1, 2):
            ys, xs = sample_indices(view)
            m = (a if oid == 1 else b)[np.clip(ys, 0, None)[:, None], np.clip(xs, 0, None)[None, :]]
            m &= (ys >= 0)[:, None] & (xs >= 0)[None, :]
            assert np.array_equal(display_mask(a if oid == 1 else b, view), m)  # the 1:1 fast path too
            col = (255, 0, 0) if oid == 1 else (0, 255, 0)
            ref[m] = (*col, round(0.45 * 255))
            cs, _ = cv2.findContours(m.view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            line = np.zeros((*m.shape, 4), np.uint8)
            cv2.drawContours(line, cs, -1, (*col, 255), 1, cv2.LINE_8)
            if oid == 2:  # the selected one: the 1 px contour widened by a 3x3 square
                line = cv2.dilate(line, np.ones((3, 3), np.uint8))
            ref[line[..., 3] > 0] = line[line[..., 3] > 0]
        assert np.array_equal(full, ref)
    region, at = overlay_region([Instance(1, mask=np.zeros((h, w), bool))], View(w, h))
    assert region.shape == (1, 1, 4) and not region.any() and at == (0, 0)
    # what the widget sends: a palette PNG that decodes (as a browser does) to the same RGBA
    import io

    from PIL import Image

    from dl_utils.ipy_utils.render import encode_indexed_png, overlay_indexed

    idx, palette, at = overlay_indexed(insts, View(w, h), colors=colors, selected=2)
    rgba, at2 = overlay_region(insts, View(w, h), colors=colors, selected=2)
    decoded = np.asarray(Image.open(io.BytesIO(encode_indexed_png(idx, palette))).convert("RGBA"))
    assert at == at2 and np.array_equal(decoded, rgba)


def test_history_undo_redo_and_branch():
    h = History(limit=3)
    acts = [Action(OBJECT, i, i - 1, i, f"a{i}") for i in range(4)]
    for a in acts:
        h.push(a)
    assert len(h) == 3  # limit drops the oldest
    assert h.undo() is acts[3] and h.undo() is acts[2]
    assert h.can_redo and h.redo() is acts[2]
    h.push(Action(OBJECT, 9, 0, 1))  # a new edit drops the redo branch
    assert not h.can_redo and h.redo() is None
    assert h.undo().target == 9 and h.undo() is acts[2] and h.undo() is acts[1] and h.undo() is None


def test_click_book():
    from dl_utils.annotations import Clicks

    assert PromptBook is ClickBook  # the earlier name still imports
    b = ClickBook()
    c = b.with_point(1, 5, 10, 20, True)
    assert b.get(1, 5) == Clicks()  # not stored until applied
    b.set(1, 5, c)
    c2 = b.with_box(1, 5, (1, 2, 3, 4))
    assert c2 == Clicks(points=((10, 20, 1),), box=(1, 2, 3, 4))
    b.set(1, 5, c2)
    assert b.frames(1) == [5] and b.objects() == [1]
    assert b.drop_object(1) == {5: c2} and b.objects() == []


# ----------------------------------------------------------------------------- events (no model)
class _Recorder:
    """Stands in for the SAM2 engine (an InteractiveEngine): records clicks, returns a box-shaped mask."""

    can_propagate = False

    def __init__(self, store, h, w):
        self.store, self.h, self.w, self.calls = store, h, w, []

    def add_clicks(self, frame, oid, clicks):
        from dl_utils.annotations import Instance

        p = {"points": [[int(v) for v in q] for q in clicks.points],
             "box": None if clicks.box is None else [int(v) for v in clicks.box]}
        self.calls.append((frame, oid, p))
        m = np.zeros((self.h, self.w), bool)
        x, y = p["points"][-1][:2] if p["points"] else p["box"][:2]
        m[max(0, y - 5):y + 6, max(0, x - 5):x + 6] = True
        inst = Instance(oid, mask=m, keyframe=True, source="semi-auto")
        self.store.write_frame(frame, [inst])
        return inst

    def clear_clicks(self, frame, oid):
        self.calls.append((frame, oid, None))
        self.store.delete_instances(object_id=oid, frames=[frame])

    def remove_object(self, oid):
        pass


def _ev(kind, x, y, button=0, shift=False, **kw):
    return {"type": kind, "relativeX": x, "relativeY": y, "button": button, "shiftKey": shift, **kw}


def _click(a, x, y, button=0, shift=False, end=None):
    a.handle_event(_ev("mousedown", x, y, button, shift))
    ex, ey = end if end is not None else (x, y)
    a.handle_event(_ev("mousemove", ex, ey, button, shift))
    a.handle_event(_ev("mouseup", ex, ey, button, shift))


@pytest.fixture
def plain(bedroom_mp4, tmp_path):
    from dl_utils.ipy_utils import Annotator
    from dl_utils.video_utils import open_frames

    a = Annotator(open_frames(bedroom_mp4, stop=3), tmp_path / "s.sqlite", max_size=(480, 270))
    a.engine = _Recorder(a.store, 540, 960)
    return a


def test_events_to_prompts(plain):
    a = plain
    assert a.view.scale == 0.5 and a.view.canvas_size == (480, 270)
    _click(a, 100.3, 50.7)  # left click: positive point at the source pixel under it
    f, oid, p = a.engine.calls[-1]
    assert (f, p["points"]) == (0, [[200, 101, 1]]) and oid == a.selected == 1
    _click(a, 10, 10, button=2)  # right click: negative
    assert a.engine.calls[-1][2]["points"][-1] == [20, 20, 0]
    _click(a, 11, 10, shift=True)  # shift-click: negative
    assert a.engine.calls[-1][2]["points"][-1] == [22, 20, 0]
    _click(a, 40, 40, end=(42, 43))  # a tiny drag (< 4 px) is a click at the press point
    p = a.engine.calls[-1][2]
    assert p["points"][-1] == [80, 80, 1] and p["box"] is None
    _click(a, 40, 40, end=(60.2, 30))  # a drag is a box over every touched pixel; clicks are kept
    p = a.engine.calls[-1][2]
    assert p["box"] == [80, 60, 121, 81] and len(p["points"]) == 4
    a.handle_event({"type": "contextmenu", "relativeX": 1, "relativeY": 1})
    assert len(a.engine.calls) == 5
    # a CSS-scaled canvas: positions are rescaled to canvas pixels
    a.handle_event(_ev("mousedown", 50, 25, boundingRectWidth=240, boundingRectHeight=135))
    a.handle_event(_ev("mouseup", 50, 25, boundingRectWidth=240, boundingRectHeight=135))
    assert a.engine.calls[-1][2]["points"][-1] == [200, 100, 1]


def test_keys_objects_and_undo(plain):
    a = plain
    a.handle_event({"type": "keydown", "key": "n"})
    a.handle_event({"type": "keydown", "key": "n"})
    assert [o.id for o in a.objects()] == [1, 2] and a.selected == 2
    assert a.objects()[0].color != a.objects()[1].color
    a.handle_event({"type": "keydown", "key": "1"})
    assert a.selected == 1
    a.rename(1, "left lamp")
    a.set_label(1, "lamp")
    assert a.store.get_object(1).attributes == {"name": "left lamp"} and a.store.get_object(1).label == "lamp"
    assert a.w_objects.options[0] == ("1: left lamp [lamp]", 1)
    a.handle_event({"type": "keydown", "key": "z"})  # undo the relabel
    assert a.store.get_object(1).label == "object"
    a.handle_event({"type": "keydown", "key": "z", "ctrlKey": True, "shiftKey": True})  # redo
    assert a.store.get_object(1).label == "lamp"
    _click(a, 100, 50)
    assert 1 in a.instances(0).by_object()
    a.handle_event({"type": "keydown", "key": "Delete"})
    assert 1 not in {o.id for o in a.objects()} and a.instances(0).by_object() == {}
    a.undo()  # the object, its mask and its prompt come back
    assert a.store.get_object(1).label == "lamp" and 1 in a.instances(0).by_object()
    assert a.prompts.get(1, 0)["points"] == [[200, 100, 1]]
    a.handle_event({"type": "keydown", "key": "ArrowRight"})
    assert a.frame == 1 and a.w_slider.value == 1
    a.handle_event({"type": "keydown", "key": "h"})
    assert a.w_help_box.selected_index == 0
    a.handle_event({"type": "keydown", "key": "7"})  # no 7th object: a message, nothing raised
    assert "no object 7" in a.status


# ----------------------------------------------------------------------------- bad input
def test_bad_video_and_click_before_model(tmp_path, bedroom_mp4):
    from dl_utils.ipy_utils import Annotator

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    a = Annotator(bad, tmp_path / "s.sqlite")
    assert a.messages[-1][0] == "error" and "broken.mp4" in a.status
    assert a.source is None
    _click(a, 5, 5)  # nothing open: no exception, a message
    a.open(bedroom_mp4, tmp_path / "s2.sqlite")  # the widget stays usable
    assert a.source is not None and "opened bedroom.mp4" in a.status
    _click(a, 5, 5)
    assert a.messages[-1][0] == "error" and "no SAM2 model loaded" in a.status
    assert a.store.count_instances() == 0
    a.propagate("forward")
    assert "no SAM2 model" in a.status


def test_push_dry_run_confirm_and_unreachable(plain, monkeypatch):
    a = plain
    a.push()
    assert "no CVAT task" in a.status
    calls = []

    def fake_push(store, conn, task_id, dry_run=False):
        calls.append(dry_run)
        if conn == "down":
            raise CvatError("cannot reach http://127.0.0.1:1: connection refused; check the host")
        return f"task {task_id}: 3 created (dry_run={dry_run})"

    monkeypatch.setitem(sys.modules, "dl_utils.cvat", types.SimpleNamespace(push=fake_push))
    a.cvat = ("conn", 7)
    a.confirm_push()
    assert "press 'push to CVAT' first" in a.status and calls == []
    a.push()
    a.wait()
    assert calls == [True] and "dry run" in a.status and a.w_confirm.layout.display is None
    a.confirm_push()
    a.wait()
    assert calls == [True, False] and "pushed to CVAT" in a.status
    a.cvat = ("down", 7)
    _click(a, 100, 50)
    a.push()
    a.wait()
    assert a.messages[-1][0] == "error" and "connection refused" in a.status
    assert len(a.instances(0)) == 1  # results kept
    _click(a, 120, 50)  # still usable
    assert a.messages[-1][0] == "info"


# ----------------------------------------------------------------------------- SAM2
@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from PIL import Image

    from dl_utils.video_utils import open_frames
    from tests.conftest import shared_file

    out = tmp_path_factory.mktemp("ipyclip")
    for i, img in enumerate(open_frames(shared_file("bedroom.mp4"), stop=7)):
        Image.fromarray(img).save(out / f"{i:05d}.jpg", quality=90)
    return out


def _session(clip, path, model):
    from dl_utils.sam2al import VideoSession

    return VideoSession(clip, path, sam_model=model)


@requires_sam2
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_click_parity_render_undo(clip, tmp_path, tiny_sam2_video):
    from dl_utils.ipy_utils import Annotator

    a = Annotator(_session(clip, tmp_path / "a.sqlite", tiny_sam2_video), max_size=(480, 270))
    assert a.view.scale == 0.5
    a.new_object("chair")
    _click(a, 201.4, 150.9)
    x, y = to_source(a.view, 201.4, 150.9)
    assert a.prompts.get(1, 0)["points"] == [[x, y, 1]]
    got = a.store.read_frame(0).by_object()[1]

    ref = _session(clip, tmp_path / "b.sqlite", tiny_sam2_video)
    want = ref.add_points(0, 1, [[x, y, 1]], label="chair")
    assert np.array_equal(got.mask, want.mask) and got.mask.any()
    assert np.array_equal(ref.store.read_frame(0).by_object()[1].mask, got.mask)

    # rendered pixels inside the mask (away from the contour) take the blend of the object colour
    import cv2

    rgb = a.rendered()
    base = a._base_frame()
    dm = np.ascontiguousarray(a.instances()[0].mask[sample_indices(a.view)[0]][:, sample_indices(a.view)[1]])
    # 3 px away from the contour (the frame edge counts as outside: contours run along it)
    inner = cv2.erode(dm.astype(np.uint8), np.ones((7, 7), np.uint8), borderType=cv2.BORDER_CONSTANT,
                      borderValue=0).astype(bool)
    assert inner.any()
    col = np.array([int(a.store.get_object(1).color[i:i + 2], 16) for i in (1, 3, 5)], np.float32)
    blend = np.rint(base[inner].astype(np.float32) * np.float32(1 - a.alpha) + np.float32(a.alpha) * col)
    assert np.array_equal(rgb[inner], blend.astype(np.uint8))
    far = ~cv2.dilate(dm.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert far.any() and np.array_equal(rgb[far], base[far])  # away from the object: the frame

    # a second click refines; undo restores the first result exactly, redo the second
    _click(a, 120, 60, button=2)
    second = a.store.read_frame(0).by_object()[1].mask.copy()
    a.undo()
    assert a.prompts.get(1, 0)["points"] == [[x, y, 1]]
    a.undo()  # the first click: no prompt, no mask
    assert a.store.read_frame(0).by_object() == {} and 1 not in a.session.object_ids
    a.redo()
    assert np.array_equal(a.store.read_frame(0).by_object()[1].mask, want.mask)
    a.redo()
    assert a.prompts.get(1, 0)["points"] == [[x, y, 1], [240, 120, 0]]
    assert a.store.read_frame(0).by_object()[1].mask.shape == second.shape


@requires_sam2
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_propagate_background_cancel_keeps_frames(clip, tmp_path, tiny_sam2_video, monkeypatch):
    from dl_utils.ipy_utils import Annotator

    s = _session(clip, tmp_path / "p.sqlite", tiny_sam2_video)
    a = Annotator(s)
    a.click(300, 200)
    reached, go = threading.Event(), threading.Event()
    real = s.propagate
    handler_threads = set()
    real_on = a._on_worker

    def on_worker(*args):
        handler_threads.add(threading.current_thread())
        return real_on(*args)

    a.worker.handler = on_worker

    def gated(direction, callback=None, progress=True, **kw):
        n = [0]

        def cb(f, insts):
            callback(f, insts)
            n[0] += 1
            if n[0] == 2:
                reached.set()
                go.wait(30)  # hold the job here until the test pressed Esc
        return real(direction, callback=cb, progress=progress, **kw)

    monkeypatch.setattr(s, "propagate", gated)
    a.handle_event({"type": "keydown", "key": "f"})
    assert a.worker.busy and "running in the background" in a.status
    assert reached.wait(60)
    _click(a, 10, 10)  # a click while the job runs is refused with a message
    assert "cannot add a prompt while propagate forward runs" in a.status
    a.handle_event({"type": "keydown", "key": "Escape"})
    go.set()
    assert a.wait(60)
    assert "cancelled" in a.status and "2 frames written so far are kept" in a.status
    assert a.store.frames() == [0, 1, 2]  # the prompt frame and the two written frames
    assert a.store.runs()[-1]["status"] == "cancelled"
    assert handler_threads == {threading.current_thread()}  # widgets only touched on the drain thread
    # resume: the rest is filled, live updates reach the shown frame
    monkeypatch.setattr(s, "propagate", real)
    a.show(5)
    a.propagate("forward")
    assert a.wait(120)
    assert a.store.frames() == list(range(8)) and "finished" in a.status
    assert 1 in a.instances(5).by_object()


@requires_sam2
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_image_folder_click_parity_and_detect(tmp_path, tiny_sam2):
    """Image folders go through samal's ImageSegmenter; Detect runs the dinoal pipeline in the background."""
    from PIL import Image

    from dl_utils.dinoal.detections import Detections
    from dl_utils.ipy_utils import Annotator
    from dl_utils.samal import ImageSegmenter
    from tests.sam2_fixtures import test_image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(test_image(120, 160, seed=i)).save(folder / f"img{i}.png")

    class StubDetector:
        name = "stub"

        def detect(self, image, prompt):
            return Detections(boxes=[[10, 20, 70, 90]], scores=[0.9], phrases=["car"])

    a = Annotator(folder, tmp_path / "i.sqlite", sam_model=tiny_sam2, detector=StubDetector())
    assert a.view.scale == 1.0 and a.engine is not None and not a.engine.can_propagate
    _click(a, 40.5, 30.2)
    got = a.store.read_frame(0).by_object()[1]
    ref = ImageSegmenter(tiny_sam2)
    ref.set_image(test_image(120, 160, seed=0))
    want = ref.predict([[40, 30, 1]], object_id=1, refine=False)
    assert np.array_equal(got.mask, want.mask) and got.keyframe
    a.propagate("forward")
    assert "propagation needs a video" in a.status
    a.w_text.value = "car"
    a.w_detect.click()
    assert a.wait(60) and "detect finished" in a.status
    objs = a.objects()
    assert [o.label for o in objs] == ["object", "car"]
    det = a.store.read_frame(0).by_object()[objs[1].id]
    assert det.mask is not None and det.mask.shape == (120, 160)


def test_worker_drains_on_the_kernel_thread():
    """In a real ipykernel, job messages are applied on the kernel's main thread, with no cell running."""
    pytest.importorskip("ipykernel")
    jc = pytest.importorskip("jupyter_client.manager")
    import time

    km, kc = jc.start_new_kernel(kernel_name="python3")

    def run(code):
        msg_id = kc.execute(code)
        out = []
        while True:
            m = kc.get_iopub_msg(timeout=60)
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            if m["msg_type"] == "stream":
                out.append(m["content"]["text"])
            if m["msg_type"] == "error":
                out.append("\n".join(m["content"]["traceback"]))
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                return "".join(out)

    try:
        out = run(
            "import sys, threading, time\n"
            f"sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent.parent)!r})\n"
            "from dl_utils.ipy_utils.worker import Worker, kernel_scheduler\n"
            "got = []\n"
            "w = Worker(lambda n, k, p: got.append((k, p, threading.current_thread() is threading.main_thread())),"
            " kernel_scheduler())\n"
            "print(w.schedule is not None)\n"
            "def job(emit, cancelled):\n"
            "    for i in range(3):\n"
            "        time.sleep(0.02); emit('frame', i)\n"
            "    return 'ok'\n"
            "w.start('t', job)\n"
        )
        assert out.strip() == "True"
        time.sleep(1.0)  # the kernel is idle: only its event loop can apply the messages
        out = run("print(got)")
        assert out.strip() == ("[('frame', 0, True), ('frame', 1, True), ('frame', 2, True),"
                               " ('done', 'ok', True)]")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@requires_sam2
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_correction_repropagates_what_it_affects(clip, tmp_path, tiny_sam2_video):
    from dl_utils.ipy_utils import Annotator

    a = Annotator(_session(clip, tmp_path / "c.sqlite", tiny_sam2_video))
    a.click(300, 200)
    a.propagate("forward")
    assert a.wait(120) and a.store.frames() == list(range(8))
    before = {f: a.store.read_frame(f).by_object()[1].mask for f in range(8)}
    a.w_auto.value = True
    a.show(4)
    a.click(100, 100, positive=False)  # a correction on frame 4: frames 5..7 depended on frame 0 only
    assert a.wait(120) and a.store.frames() == list(range(8))
    run = a.store.runs()[-1]
    assert run["status"] == "done" and run["params"]["direction"] == "both"
    assert all(np.array_equal(a.store.read_frame(f).by_object()[1].mask, before[f]) for f in range(4))
    # exactly the stale frames after the correction (5, 6, 7) were recomputed by that run
    assert "propagate both finished: 3 frames written" in a.status


@requires_sam2
def test_image_folder_of_mixed_sizes_each_image_at_its_own_geometry(tmp_path, tiny_sam2):
    """Each image gets its own display geometry (fit scale, canvas size); clicks map to its pixels and
    masks are stored at its size."""
    from PIL import Image

    from dl_utils.ipy_utils import Annotator
    from tests.sam2_fixtures import test_image

    folder = tmp_path / "imgs"
    folder.mkdir()
    sizes = [(160, 120), (96, 200)]  # (w, h)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(test_image(h, w, seed=i)).save(folder / f"img{i}.png")
    a = Annotator(folder, tmp_path / "m.sqlite", sam_model=tiny_sam2, max_size=(160, 100))
    assert (a.view.width, a.view.height) == (160, 120) and a.view.canvas_size == (133, 100)
    a.show(1)
    assert (a.view.width, a.view.height) == (96, 200) and a.view.scale == 0.5
    assert a.view.canvas_size == (48, 100) and (a.canvas.width, a.canvas.height) == (48, 100)
    assert a.rendered().shape == (100, 48, 3)
    _click(a, 20.2, 75.3)  # display (20, 75) at scale 0.5 -> source pixel (40, 150) of image 1
    got = a.store.read_frame(1).by_object()[1]
    assert got.prompts["points"] == [[40.0, 150.0, 1]] and got.mask.shape == (200, 96)
    assert a.rendered().shape == (100, 48, 3)
    a.show(0)
    assert a.view.canvas_size == (133, 100) and a.rendered().shape == (100, 133, 3)
    a.zoom(2.0)
    a.show(1)  # a new image starts at its whole-frame view
    assert a.view.zoom == 1.0 and (a.view.width, a.view.height) == (96, 200)


# ----------------------------------------------------------------------------- the split
def test_controller_runs_headless(bedroom_mp4, tmp_path):
    """The controller (state, clicks, undo) works with no view at all, and it, the job runner and the
    engine adapters import no widget library."""
    import ast
    from pathlib import Path

    from dl_utils.annotations import Clicks
    from dl_utils.interactive import ImageClickEngine, InteractiveEngine, PropagatingEngine, VideoClickEngine
    from dl_utils.ipy_utils.controller import AnnotatorController
    from dl_utils.video_utils import open_frames

    root = Path(__file__).resolve().parents[1] / "dl_utils"
    for f in ("ipy_utils/controller.py", "ipy_utils/jobs.py", "ipy_utils/history.py", "interactive.py"):
        names = {a.name.split(".")[0] for n in ast.walk(ast.parse((root / f).read_text()))
                 if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        mods = {n.module.split(".")[0] for n in ast.walk(ast.parse((root / f).read_text()))
                if isinstance(n, ast.ImportFrom) and n.module}
        assert not {"ipywidgets", "ipycanvas", "ipyevents"} & (names | mods), f

    assert isinstance(VideoClickEngine(types.SimpleNamespace()), PropagatingEngine)
    img = ImageClickEngine(types.SimpleNamespace(), types.SimpleNamespace(), types.SimpleNamespace())
    assert isinstance(img, InteractiveEngine) and not isinstance(img, PropagatingEngine)

    c = AnnotatorController()
    assert c.open(open_frames(bedroom_mp4, stop=3), tmp_path / "h.sqlite")
    c.engine = _Recorder(c.store, 540, 960)
    c.add_point(200, 100, True, None, None)
    c.add_point(20, 20, False, None, None)
    assert c.clicks.get(1, 0) == Clicks(points=((200, 100, 1), (20, 20, 0)))
    assert c.undo_redo(True) and c.clicks.get(1, 0).points == ((200, 100, 1),)
    c.delete_object(1)
    assert c.objects() == [] and c.undo_redo(True) and c.clicks.frames(1) == [0]
    assert c.instances(0).by_object()[1].keyframe
    # a reopened store shows its keyframes' clicks again (read from the typed inst.clicks)
    c.store.write_frame(2, [c.store.read_frame(0).by_object()[1].replace(clicks=Clicks(points=((5, 6, 1),)))])
    c2 = AnnotatorController()
    c2.open(open_frames(bedroom_mp4, stop=3), c.store)
    assert c2.clicks.get(1, 2).points == ((5, 6, 1),)


@requires_sam2
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_video_detect_runs_the_driver_on_the_widget_session(bedroom_mp4, tmp_path, tiny_sam2_video):
    """Detect on a video: the drivers' run_into_store with the widget's own session (tracker path)."""
    from dl_utils.dinoal.detections import Detections
    from dl_utils.ipy_utils import Annotator
    from dl_utils.video_utils import open_frames

    class StubDetector:
        name = "stub"

        def detect(self, image, prompt):
            return Detections(boxes=[[100, 80, 300, 260]], scores=[0.9], phrases=["chair"])

    s = _session(open_frames(bedroom_mp4, stop=8), tmp_path / "d.sqlite", tiny_sam2_video)
    a = Annotator(s, detector=StubDetector())
    assert a.detect("chair") and a.wait(180)
    assert "detect finished" in a.status, a.messages[-3:]
    assert [o.label for o in a.objects()] == ["chair"]
    assert a.store.frames() == list(s.source.frame_numbers) and a.session is s
