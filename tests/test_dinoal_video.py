"""Text prompt → tracked objects on video: keyframe detection, matching, new/ended/revived objects.

The orchestration is tested against a *perfect* tracker stand-in (it follows the ground-truth object a
prompt box lands on, and can be made to lose objects like SAM2 does), so ids and frame ranges can be
asserted exactly; one test runs the real SAM2 session (tiny, random weights) end to end for plumbing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from dl_utils.annotations import Instance, Instances, MediaInfo, Source
from dl_utils.cv_utils import box_iou, box_to_mask
from dl_utils.dinoal import Detections
from dl_utils.dinoal.video import TRACKER_BOXES, GroundedVideoTracker, track_boxes
from dl_utils.store import AnnotationStore
from tests.dino_fixtures import hf_model_dir  # noqa: F401  (fixture)
from tests.sam2_fixtures import requires_sam2, tiny_sam2_video  # noqa: F401  (fixture)

H, W = 48, 64


class Truth:
    """Ground truth: {name: (label, {frame: box})}."""

    def __init__(self, objects: dict[str, tuple[str, dict[int, tuple]]]):
        self.objects = objects

    def on(self, frame: int) -> list[tuple[str, str, tuple]]:
        return [(n, lab, boxes[frame]) for n, (lab, boxes) in self.objects.items() if frame in boxes]


def moving(x0: int, frames, dx: float = 0.2, y: int = 10, size: int = 12) -> dict[int, tuple]:
    return {f: (x0 + dx * f, y, x0 + dx * f + size, y + size) for f in frames}


class FakeSource:
    def __init__(self, n: int):
        self.frame_numbers = list(range(n))
        self.reads: list[int] = []

    def index_of(self, frame: int) -> int:
        return int(frame)

    def __getitem__(self, i: int) -> np.ndarray:
        self.reads.append(i)
        return np.zeros((H, W, 3), np.uint8)

    def media_info(self) -> MediaInfo:
        return MediaInfo(name="fake.mp4", width=W, height=H, frames=self.frame_numbers)


class FakeDetector:
    def __init__(self, truth: Truth, source: FakeSource):
        self.truth, self.source, self.calls = truth, source, []

    def detect(self, image, prompt=None) -> Detections:
        f = self.source.reads[-1]
        self.calls.append(f)
        rows = self.truth.on(f)
        return Detections(boxes=[b for _, _, b in rows] or np.zeros((0, 4)), scores=[0.9] * len(rows),
                          phrases=[lab for _, lab, _ in rows], labels=[lab for _, lab, _ in rows],
                          caption=str(prompt or ""))


class PerfectSession:
    """The VideoSession surface the tracker uses, following ground truth instead of running SAM2.

    A prompt box binds the object id to the truth object it overlaps most. ``lose`` makes the tracker
    drop a truth object for good once it disappears (as SAM2 does after a long occlusion) until the
    object is prompted again.
    """

    def __init__(self, source: FakeSource, store: AnnotationStore, truth: Truth, lose: bool = False):
        self.source, self.store, self.truth, self.lose = source, store, truth, lose
        self.bound: dict[int, str] = {}
        self.locked: dict[int, set[int]] = {}
        self.lost: set[int] = set()
        self._cancel = threading.Event()
        self.calls: list[tuple] = []
        self.origins: dict[int, object] = {}

    @property
    def object_ids(self) -> list[int]:
        return sorted(self.locked)

    def set_origin(self, object_id: int, origin: object) -> None:
        self.origins[object_id] = origin

    def locked_frames(self, object_id: int) -> list[int]:
        return sorted(self.locked.get(object_id, ()))

    def _mask(self, oid: int, f: int) -> np.ndarray:
        name = self.bound[oid]
        boxes = self.truth.objects[name][1]
        if f not in boxes:
            if self.lose:
                self.lost.add(oid)
            return np.zeros((H, W), bool)
        if oid in self.lost:
            return np.zeros((H, W), bool)
        return box_to_mask(tuple(round(v) for v in boxes[f]), H, W)

    def add_box(self, frame, object_id, box, *, label=None):
        if object_id not in {o.id for o in self.store.objects()}:
            self.store.add_object(label, id=object_id)
        best = max(self.truth.on(frame), key=lambda r: box_iou(r[2], box))
        self.bound[object_id] = best[0]
        self.lost.discard(object_id)
        self.locked.setdefault(object_id, set()).add(frame)
        self.calls.append(("box", frame, object_id))
        inst = Instance(object_id, mask=self._mask(object_id, frame), source=Source.SEMI_AUTO, keyframe=True)
        self.store.write_frame(frame, [inst])
        return inst

    def remove_object(self, object_id, *, keep_results=False):
        self.locked.pop(object_id)
        self.calls.append(("remove", object_id))

    def result(self, frame):
        return self.store.read_frame(frame)

    def cancel(self):
        self._cancel.set()

    def propagate(self, direction="forward", start=None, stop=None, callback=None, progress=True, objects=None):
        self._cancel.clear()
        self.calls.append((direction, start, stop))
        if direction == "both":
            self.propagate("forward", start, stop, callback, progress, objects)
            return self.propagate("backward", start, stop, callback, progress, objects)
        nums = self.source.frame_numbers
        lo = nums[0] if start is None else start
        hi = nums[-1] if stop is None else stop
        order = range(lo, hi + 1) if direction == "forward" else range(hi, lo - 1, -1)
        for f in order:
            if self._cancel.is_set():
                return {"status": "cancelled"}
            insts = []
            for oid, locked in self.locked.items():
                if objects is not None and oid not in objects:
                    continue
                ok = f > min(locked) if direction == "forward" else f < max(locked)
                if ok and f not in self.store.frames_done(oid):
                    insts.append(Instance(oid, mask=self._mask(oid, f), source=Source.AUTO, score=0.9))
            if insts:
                self.store.write_frame(f, insts)
                if callback:
                    callback(f, Instances(insts, frame=f))
        return {"status": "done"}


def run(tmp_path, truth: Truth, n=100, every=10, lose=False, **opts):
    src = FakeSource(n)
    store = AnnotationStore.create(tmp_path / "t.sqlite", src.media_info())
    sess = PerfectSession(src, store, truth, lose=lose)
    det = FakeDetector(truth, src)
    tracker = GroundedVideoTracker(sess, det, "car. person.", every=every, **opts)
    summary = tracker.run(progress=False)
    return store, sess, det, summary


def visible_frames(store, oid):
    return sorted(f for f, i in store.read_object(oid).items() if i.mask is not None and i.mask.any())


def test_object_entering_mid_video_gets_a_new_id_and_is_tracked_back(tmp_path):
    truth = Truth({"a": ("car", moving(2, range(100))), "b": ("person", moving(40, range(43, 100), dx=0.1, y=30))})
    store, sess, det, s = run(tmp_path, truth)
    assert s["status"] == "done" and s["objects"] == [1, 2] and s["ended"] == []
    assert s["keyframes"][:6] == [0, 10, 20, 30, 40, 50]
    labels = {o.id: o.label for o in store.objects()}
    assert labels == {1: "car", 2: "person"}
    assert visible_frames(store, 1) == list(range(100))
    # found at keyframe 50, propagated forward and backward down to keyframe 40
    assert visible_frames(store, 2) == list(range(43, 100))
    assert min(store.read_object(2)) == 40
    assert ("box", 50, 2) in sess.calls and ("backward", 40, 50) in sess.calls
    # the session is told where each new object came from (it writes the masks, with these facts)
    from dl_utils.dinoal.video import TRACKER_SAM2
    assert sorted(sess.origins) == [1, 2]
    assert all(o.tracker == TRACKER_SAM2 and o.caption for o in sess.origins.values())
    # the pass was only interrupted where a prompt was needed
    assert [c for c in sess.calls if c[0] == "forward"] == [("forward", 0, 99), ("forward", 50, 99)]


def test_object_leaving_ends_after_its_last_frame(tmp_path):
    truth = Truth({"a": ("car", moving(2, range(100))), "b": ("car", moving(40, range(0, 61), dx=0.1, y=30))})
    store, sess, det, s = run(tmp_path, truth, max_gap=15)
    assert s["ended"] == [2] and ("remove", 2) in sess.calls
    assert max(store.read_object(2)) == 60  # nothing after the last visible frame: CVAT's outside follows
    assert visible_frames(store, 1) == list(range(100))


@pytest.mark.parametrize("max_gap, same_id", [(15, True), (5, False)])
def test_occluded_object_keeps_its_id_within_the_gap(tmp_path, max_gap, same_id):
    frames = [f for f in range(100) if not 25 <= f < 35]  # hidden for 10 frames
    truth = Truth({"a": ("car", moving(2, frames)), "b": ("person", moving(40, range(100), dx=0.1, y=30))})
    store, sess, det, s = run(tmp_path, truth, lose=True, max_gap=max_gap)
    if same_id:
        assert s["objects"] == [1, 2] and s["ended"] == []
        assert visible_frames(store, 1) == frames  # the gap re-tracked, id kept
    else:
        assert 3 in s["objects"] and 1 in s["ended"]
        assert visible_frames(store, 1) == list(range(25))
        assert visible_frames(store, 3)[0] == 35


def test_nothing_found_at_first_then_objects_appear(tmp_path):
    truth = Truth({"a": ("car", moving(2, range(23, 60)))})
    store, sess, det, s = run(tmp_path, truth, n=60)
    assert det.calls[:3] == [0, 10, 20] and s["objects"] == [1]
    assert visible_frames(store, 1) == list(range(23, 60)) and min(store.read_object(1)) == 20


def test_no_objects_at_all(tmp_path):
    store, sess, det, s = run(tmp_path, Truth({}), n=30)
    assert s["status"] == "no objects found" and s["objects"] == [] and det.calls == [0, 10, 20]


def test_clicked_objects_are_taken_over_not_duplicated(tmp_path):
    """An object clicked before the text run keeps its id; the detector's matches go to it."""
    truth = Truth({"a": ("car", moving(2, range(60))), "b": ("person", moving(40, range(25, 60), dx=0.1, y=30))})
    src = FakeSource(60)
    store = AnnotationStore.create(tmp_path / "c.sqlite", src.media_info())
    sess = PerfectSession(src, store, truth)
    sess.add_box(0, 7, truth.objects["a"][1][0], label="car")  # the user's click
    s = GroundedVideoTracker(sess, FakeDetector(truth, src), "car. person.", every=10).run(progress=False)
    assert s["objects"] == [7, 8] and s["ended"] == []
    assert {o.id: o.label for o in store.objects()} == {7: "car", 8: "person"}
    assert visible_frames(store, 7) == list(range(60))
    assert visible_frames(store, 8) == list(range(25, 60))


def test_object_clicked_mid_video_and_propagated_first_is_not_detected_twice(tmp_path):
    """annotate's order: the click on frame 30 is propagated both ways, then the text run adopts it."""
    truth = Truth({"a": ("car", moving(2, range(60))), "b": ("person", moving(40, range(25, 60), dx=0.1, y=30))})
    src = FakeSource(60)
    store = AnnotationStore.create(tmp_path / "m.sqlite", src.media_info())
    sess = PerfectSession(src, store, truth)
    sess.add_box(30, 7, truth.objects["a"][1][30], label="car")
    sess.propagate("both", objects=[7])
    assert visible_frames(store, 7) == list(range(60))
    det = FakeDetector(truth, src)
    s = GroundedVideoTracker(sess, det, "car. person.", every=10).run(progress=False)
    assert s["objects"] == [7, 8] and s["keyframes"][:6] == [0, 10, 20, 30, 40, 50]
    assert {o.id: o.label for o in store.objects()} == {7: "car", 8: "person"}
    assert visible_frames(store, 8) == list(range(25, 60)) and min(store.read_object(8)) == 20


class Stop(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    """Ctrl-C at frame 45, then a new session on the same store: ids, ends and frames as one clean run."""
    truth = Truth({"a": ("car", moving(2, range(100))), "b": ("car", moving(40, range(0, 31), dx=0.1, y=30)),
                   "c": ("person", moving(20, range(55, 100), dx=0.1, y=34))})
    (tmp_path / "clean").mkdir()
    clean, *_ = run(tmp_path / "clean", truth, max_gap=5)
    src = FakeSource(100)
    store = AnnotationStore.create(tmp_path / "r.sqlite", src.media_info())
    sess = PerfectSession(src, store, truth)

    def stop_at(f, insts):
        if f == 45:
            raise Stop

    with pytest.raises(Stop):
        GroundedVideoTracker(sess, FakeDetector(truth, src), "car. person.", every=10,
                             max_gap=5).run(callback=stop_at, progress=False)
    assert max(store.frames()) == 45 and store.get_meta("dinoal.ended") == {"2": 30}
    # what a new VideoSession does on an existing store: re-apply each object's keyframes
    sess2 = PerfectSession(src, store, truth)
    for oid in sorted({o.id for o in store.objects()}):
        for f, inst in sorted(store.read_object(oid).items()):
            if inst.keyframe:
                sess2.add_box(f, oid, truth.objects[{1: "a", 2: "b"}[oid]][1][f])
    assert sess2.object_ids == [1, 2]
    s = GroundedVideoTracker(sess2, FakeDetector(truth, src), "car. person.", every=10,
                             max_gap=5).run(progress=False)
    assert ("remove", 2) in sess2.calls  # ended before the interruption: not brought back
    assert s["objects"] == [1, 3]
    for oid in (1, 2, 3):
        assert visible_frames(store, oid) == visible_frames(clean, oid), oid
        assert sorted(store.read_object(oid)) == sorted(clean.read_object(oid)), oid


def test_boxes_only_tracking_links_ids_across_keyframes(tmp_path):
    truth = Truth({"a": ("car", moving(2, range(60))), "b": ("person", moving(40, range(25, 60), dx=0.1, y=30))})
    src = FakeSource(60)
    store = AnnotationStore.create(tmp_path / "b.sqlite", src.media_info())
    s = track_boxes(src, store, FakeDetector(truth, src), "car. person.", every=10, progress=False)
    assert s["keyframes"] == [0, 10, 20, 30, 40, 50] and s["objects"] == [1, 2]
    assert sorted(store.read_object(1)) == [0, 10, 20, 30, 40, 50]
    assert sorted(store.read_object(2)) == [30, 40, 50]
    inst = store.read_frame(30).by_object()[2]
    assert inst.mask is None and inst.box is not None and inst.source is Source.AUTO
    # the typed fields: the detector's class, the caption and the tracker mode (no clicks: boxes are geometry)
    assert inst.label == "person" and inst.clicks is None
    p = inst.provenance
    assert (p.engine, p.caption, p.tracker) == ("groundingdino", "car. person.", TRACKER_BOXES)


@requires_sam2
def test_real_sam2_session_end_to_end(tiny_sam2_video, bedroom_mp4, tmp_path):  # noqa: F811
    """Plumbing with the real session: keyframes, prompts and propagation land in the store."""
    from dl_utils.sam2al import VideoSession
    from dl_utils.video_utils import open_frames, write_video

    clip = write_video(tmp_path / "c.mp4", open_frames(bedroom_mp4, stop=7, resize=(160, 90)), fps=30,
                       preset="ultrafast")
    src = open_frames(clip)
    store = AnnotationStore.create(tmp_path / "r.sqlite", src.media_info())
    sess = VideoSession(src, store, sam_model=tiny_sam2_video)

    class Fixed:
        def detect(self, image, prompt=None):
            return Detections(boxes=[[20, 10, 80, 70]], scores=[0.8], phrases=["bed"], labels=["bed"])

    s = GroundedVideoTracker(sess, Fixed(), "bed.", every=4).run(progress=False)
    assert s["status"] == "done" and s["objects"] and 0 in s["keyframes"] and 4 in s["keyframes"]
    assert store.frames() == list(range(8))
    assert {o.label for o in store.objects()} == {"bed"}
    assert all(1 in store.read_frame(f).by_object() for f in range(8))
    Path(clip).unlink()


@requires_sam2
def test_detect_command_tracks_a_video(hf_model_dir, tiny_sam2_video, bedroom_mp4, tmp_path):  # noqa: F811
    """``dl-utils detect VIDEO --segment``: transformers port + SAM2 from files, tracked into a store."""
    import json
    import subprocess
    import sys

    import torch

    from dl_utils.video_utils import open_frames, write_video

    clip = write_video(tmp_path / "c.mp4", open_frames(bedroom_mp4, stop=5, resize=(224, 160)), fps=30,
                       preset="ultrafast")
    ckpt = tmp_path / "sam.pt"
    torch.save({"model": tiny_sam2_video.state_dict()}, ckpt)
    out = tmp_path / "det.sqlite"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "dl_utils", "detect", str(clip), "--text", "sedan. pedestrian", "--out", str(out),
         "--backend", "transformers", "--model", str(hf_model_dir), "--box-threshold", "0.75",
         "--segment", "--sam-checkpoint", str(ckpt), "--image-size", "256", "--every", "3", "--device", "cpu"],
        capture_output=True, text=True, cwd=root, timeout=600,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    # at this threshold the random-weight detector finds nothing on frame 0 and two boxes on frame 3
    assert s["tracked"] and s["segmented"] and s["every"] == 3 and s["keyframes"][:2] == [0, 3]
    with AnnotationStore.open(out, readonly=True) as st:
        objs = st.objects()
        assert len(objs) == s["objects"] >= 1
        assert {o.label for o in objs} <= {"sedan", "pedestrian"}
        first = min(objs, key=lambda o: o.id).id
        # found on keyframe 3, tracked forward to 5 and backward to the previous keyframe, 0
        assert sorted(st.read_object(first)) == list(range(6))
        assert all(i.mask is not None and i.mask.shape == (160, 224) for i in st.read_object(first).values())


@requires_sam2
def test_real_session_stop_past_the_end_means_to_the_end(tiny_sam2_video, tmp_path):  # noqa: F811
    """As the frame sources and CVAT: stop=600 on an 8-frame video runs to the end (was a FrameIndexError)."""
    from dl_utils.sam2al import VideoSession
    from dl_utils.video_utils import open_frames, write_video
    from tests.conftest import synthetic_frame

    clip = write_video(tmp_path / "c.mp4", (synthetic_frame(i) for i in range(8)), fps=10, preset="ultrafast")
    src = open_frames(clip)
    store = AnnotationStore.create(tmp_path / "r.sqlite", src.media_info())
    sess = VideoSession(src, store, sam_model=tiny_sam2_video)

    class Fixed:
        def detect(self, image, prompt=None):
            return Detections(boxes=[[20, 10, 80, 70]], scores=[0.8], phrases=["bed"], labels=["bed"])

    s = GroundedVideoTracker(sess, Fixed(), "bed.", every=4).run(stop=600, progress=False)
    assert s["status"] == "done" and store.frames() == list(range(8))
    store.close()


def test_clicked_object_never_visible_ends_without_crashing(tmp_path):
    """A clicked object whose mask is empty where it joins the manager and for longer than max_gap
    ends with no last visible frame (Ended.last_frame None): the tracker keeps its empty frames
    instead of failing on ``None + 1``."""
    truth = Truth({"a": ("car", moving(2, range(60))), "g": ("person", moving(40, range(30, 33), dx=0.1, y=30))})
    src = FakeSource(60)
    store = AnnotationStore.create(tmp_path / "g.sqlite", src.media_info())
    sess = PerfectSession(src, store, truth, lose=True)
    sess.add_box(30, 7, truth.objects["g"][1][30], label="person")  # seen on 30..32 only
    sess.propagate("both", objects=[7])
    assert min(store.read_object(7)) == 0 and visible_frames(store, 7) == [30, 31, 32]
    s = GroundedVideoTracker(sess, FakeDetector(Truth({"a": truth.objects["a"]}), src), "car.", every=10,
                             max_gap=15).run(progress=False)
    assert 7 in s["ended"]
    assert min(store.read_object(7)) == 0  # its empty frames are kept: nothing visible to cut
