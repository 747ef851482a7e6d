"""Shot frame numbers (issue 18, part 3): ``--frame-numbers names`` and ``--first-frame N``.

A compositor's shot is ``shot.1001.png`` ... with gaps; "frame 1003" must name that file everywhere:
the source, ranges, PROMPTS.json, the store (which records the numbering and refuses another), and
CVAT, where a gapped sequence is a frame list (task frame i = the i-th kept frame), not start + i*step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from dl_utils.annotations import Instance, Label, MediaInfo
from dl_utils.drivers.options import SourceOptions
from dl_utils.errors import FrameIndexError, InputError, StoreError
from dl_utils.store import AnnotationStore
from dl_utils.video_utils import open_frames, read_image, write_video
from tests.cvat_standin.fixtures import cvat_server  # noqa: F401  (fixture)
from tests.sam2_fixtures import requires_sam2, test_image, tiny_sam2_video  # noqa: F401  (fixture)

H, W = 48, 64
SHOT = (1001, 1002, 1004, 1005, 1006, 1009)  # 1003, 1007 and 1008 missing: a shot with gaps


def picture(n: int, h: int = H, w: int = W) -> np.ndarray:
    """A picture that says its own number (every pixel differs between two numbers)."""
    img = test_image(h, w, seed=n % 997)
    img[0, 0] = (n % 256, n // 256 % 256, 7)
    return img


def write_shot(folder: Path, numbers=SHOT, fmt: str = "shot.{:04d}.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        cv2.imwrite(str(folder / fmt.format(n)), cv2.cvtColor(picture(n), cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture
def shot(tmp_path) -> Path:
    return write_shot(tmp_path / "shot")


@pytest.fixture
def video(tmp_path) -> Path:
    """A 12-frame video written here (PyAV), frame k showing picture(k)."""
    out = tmp_path / "clip.mp4"
    write_video(out, (picture(k) for k in range(12)), fps=25, crf=30, preset="ultrafast")
    return out


# ============================================================================= sources
def test_names_keep_the_file_numbers_and_the_gaps(shot):
    src = open_frames(shot, frame_numbers="names")
    assert src.frame_numbers == list(SHOT) and len(src) == len(SHOT)
    assert (src.start, src.stop, src.step, src.numbering, src.first_frame) == (1001, 1009, 1, "names", 0)
    for n in SHOT:
        assert np.array_equal(src.get_frame(n), read_image(shot / f"shot.{n}.png"))
        assert src.file_of(n) == shot / f"shot.{n}.png"
    assert np.array_equal(src[2], read_image(shot / "shot.1004.png"))
    assert src.frame_number(-1) == 1009 and src.index_of(1005) == 3
    with pytest.raises(FrameIndexError, match="frame 1003 is not one of the kept frames"):
        src.get_frame(1003)
    # a resume range bounded by missing numbers takes the files inside it
    got = [(n, img) for n, img in src.iter_numbered(start=1003, stop=1008)]
    assert [n for n, _ in got] == [1004, 1005, 1006]
    assert all(np.array_equal(img, read_image(shot / f"shot.{n}.png")) for n, img in got)
    m = src.media_info()
    assert m.frames == list(SHOT) and m.numbering == "names" and m.first_frame == 0
    assert m.frame_names == [f"shot.{n}.png" for n in SHOT]
    # the default stays position numbering
    assert open_frames(shot).frame_numbers == list(range(len(SHOT)))


@pytest.mark.parametrize("name, number", [
    ("shot.1001.png", 1001), ("sh010_v2.1001.exr.png", 1001), ("img_000042.jpg", 42), ("0007.png", 7),
    ("frame12b.png", 12), ("cover.png", None), ("v2/plate.png", None),
])
def test_the_number_of_a_name_is_the_last_run_of_digits_of_its_stem(name, number):
    from dl_utils.video_utils import number_in_name

    assert number_in_name(Path(name)) == number


def test_names_select_with_start_stop_and_step_over_files(shot):
    # start in a gap begins at the next file; stop is inclusive; step counts files (CVAT's frame filter)
    assert open_frames(shot, frame_numbers="names", start=1003).frame_numbers == [1004, 1005, 1006, 1009]
    assert open_frames(shot, frame_numbers="names", start=1002, stop=1006).frame_numbers == [1002, 1004, 1005, 1006]
    assert open_frames(shot, frame_numbers="names", step=2).frame_numbers == [1001, 1004, 1006]
    sub = open_frames(shot, frame_numbers="names", start=1002, step=2)
    assert sub.frame_numbers == [1002, 1005, 1009] and sub.step == 2
    assert np.array_equal(sub.get_frame(1005), read_image(shot / "shot.1005.png"))
    with pytest.raises(InputError, match=r"start=1000 is outside the source; its file names number frames 1001\.\.1009"):
        open_frames(shot, frame_numbers="names", start=1000)
    with pytest.raises(InputError, match="stop=1002 is before start=1004"):
        open_frames(shot, frame_numbers="names", start=1004, stop=1002)


def test_printf_pattern_numbers_by_its_field(tmp_path):
    # "_v2" after the frame field: the stems' last digits are all 2, the pattern's field is the number
    folder = write_shot(tmp_path / "p", fmt="sh010_{:04d}_v2.png")
    src = open_frames(str(folder / "sh010_%04d_v2.png"), frame_numbers="names", start=1004)
    assert src.frame_numbers == [1004, 1005, 1006, 1009]
    assert np.array_equal(src.get_frame(1009), read_image(folder / "sh010_1009_v2.png"))
    with pytest.raises(InputError, match="both carry frame number 2"):
        open_frames(folder, frame_numbers="names")  # a folder reads the last digits of the stems
    # a plain %04d shot as compositors name them
    write_shot(tmp_path / "q")
    assert open_frames(str(tmp_path / "q" / "shot.%04d.png"), frame_numbers="names").frame_numbers == list(SHOT)


def test_names_order_files_by_number_not_by_name(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, n in (("b_10.png", 10), ("a_30.png", 30), ("c_20.png", 20)):
        cv2.imwrite(str(folder / name), cv2.cvtColor(picture(n), cv2.COLOR_RGB2BGR))
    src = open_frames(folder, frame_numbers="names")
    assert src.frame_numbers == [10, 20, 30] and src.frame_names == ["b_10.png", "c_20.png", "a_30.png"]
    assert np.array_equal(src.get_frame(30), read_image(folder / "a_30.png"))
    lst = open_frames([folder / "a_30.png", folder / "b_10.png"], frame_numbers="names")
    assert lst.frame_numbers == [10, 30]


def test_first_frame_numbers_a_video_from_n(video):
    plain = open_frames(video)
    src = open_frames(video, first_frame=1001)
    assert src.frame_numbers == list(range(1001, 1013)) and src.first_frame == 1001
    for k in (0, 3, 11):
        assert np.array_equal(src.get_frame(1001 + k), plain.get_frame(k))
    sub = open_frames(video, first_frame=1001, start=1003, stop=1010, step=3)
    assert sub.frame_numbers == [1003, 1006, 1009]
    got = list(sub.iter_numbered(start=1004))
    assert [n for n, _ in got] == [1006, 1009]
    assert all(np.array_equal(img, plain.get_frame(n - 1001)) for n, img in got)
    m = sub.media_info()
    assert (m.frames, m.first_frame, m.numbering, m.start, m.stop, m.step) == ([1003, 1006, 1009], 1001, "index",
                                                                            1003, 1009, 3)
    assert m.task_frames() == [2, 5, 8]
    with pytest.raises(InputError, match=r"start=0 is outside the source; valid frame numbers are 1001\.\.1012"):
        open_frames(video, first_frame=1001, start=0)


def test_first_frame_on_an_image_sequence_numbers_by_position(shot):
    src = open_frames(shot, first_frame=101)
    assert src.frame_numbers == list(range(101, 101 + len(SHOT)))
    assert np.array_equal(src.get_frame(103), read_image(shot / "shot.1004.png"))  # the third file
    assert src.media_info().frame_sizes is None


@pytest.mark.parametrize("case, match", [
    ("no number", r"cover\.png has none; rename the files"),
    ("duplicate", r"shot\.1002\.jpg and .*shot\.1002\.png both carry frame number 1002|"
                  r"shot\.1002\.png and .*shot\.1002\.jpg both carry frame number 1002"),
    ("negative", r"first frame -5 is below 0; give --first-frame 0 or more"),
    ("video", r"clip\.mp4: --frame-numbers names reads frame numbers from image file names and a video has none"),
    ("both", r"--first-frame 1001 and --frame-numbers names both set the numbers"),
    ("unknown", r"frame_numbers='shot' is not known"),
])
def test_bad_numbering_is_one_line(shot, video, case, match):
    kw: dict = {"frame_numbers": "names"}
    source: object = shot
    if case == "no number":
        cv2.imwrite(str(shot / "cover.png"), np.zeros((4, 4, 3), np.uint8))
    elif case == "duplicate":
        cv2.imwrite(str(shot / "shot.1002.jpg"), np.zeros((4, 4, 3), np.uint8))
    elif case == "negative":
        kw = {"first_frame": -5}
        source = video
    elif case == "video":
        source = video
    elif case == "both":
        kw["first_frame"] = 1001
    else:
        kw = {"frame_numbers": "shot"}
    with pytest.raises(InputError, match=match) as e:
        open_frames(source, **kw)
    assert "\n" not in str(e.value)


# ============================================================================= media record & store
def test_media_record_carries_the_numbering_and_old_records_are_unchanged(shot, video):
    old = open_frames(shot).media_info().to_dict()
    assert "numbering" not in old and "first_frame" not in old  # a store made without the options: same JSON
    assert MediaInfo.from_dict(old).numbering == "index" and MediaInfo.from_dict(old).first_frame == 0
    named = open_frames(shot, frame_numbers="names").media_info()
    d = named.to_dict()
    assert d["numbering"] == "names" and "first_frame" not in d
    assert MediaInfo.from_dict(json.loads(json.dumps(d))) == named
    shifted = open_frames(video, first_frame=1001).media_info()
    assert shifted.to_dict()["first_frame"] == 1001 and "numbering" not in shifted.to_dict()
    with pytest.raises(InputError, match="numbering 'frames' is not known"):
        MediaInfo(name="x", width=4, height=4, frames=[0], numbering="frames")
    with pytest.raises(InputError, match="first frame -1 must be an integer >= 0"):
        MediaInfo(name="x", width=4, height=4, frames=[0], first_frame=-1)


def test_store_round_trip_and_reopen_with_another_numbering_is_refused(shot, tmp_path):
    named = open_frames(shot, frame_numbers="names").media_info()
    path = tmp_path / "shot.sqlite"
    AnnotationStore.create(path, named).close()
    with AnnotationStore.open(path, readonly=True) as st:
        assert st.media == named and st.media.frames == list(SHOT)
    AnnotationStore.open_or_create(path, named).close()  # the same numbering reopens
    for other, says in ((open_frames(shot).media_info(), "--frame-numbers index"),
                        (open_frames(shot, first_frame=1001).media_info(), "--first-frame 1001")):
        with pytest.raises(StoreError) as e:
            AnnotationStore.open_or_create(path, other).close()
        msg = str(e.value)
        assert "\n" not in msg and "--frame-numbers names" in msg and says in msg and "new --out" in msg
    # an old store (no numbering in its record) is index-numbered: names are refused even where the
    # numbers would coincide (files named 0..n-1)
    plain = tmp_path / "zero"
    write_shot(plain, numbers=range(4), fmt="f{:d}.png")
    old = tmp_path / "old.sqlite"
    AnnotationStore.create(old, open_frames(plain).media_info()).close()
    with pytest.raises(StoreError, match="--frame-numbers index but .* is opened with --frame-numbers names"):
        AnnotationStore.open_or_create(old, open_frames(plain, frame_numbers="names").media_info())


def test_open_media_reopens_with_the_recorded_numbering(shot, video, tmp_path):
    from dl_utils.video_utils import open_media

    for src in (open_frames(shot, frame_numbers="names", start=1002, step=2),
                open_frames(video, first_frame=1001, start=1003, step=3)):
        m = src.media_info()
        again = open_media(m)
        assert again.media_info() == m  # the same frames, numbering and selection
        assert open_media(m, start=None).frame_numbers[0] == 1001  # a wider selection, same numbers
        f = m.frames[-1]
        assert np.array_equal(again.get_frame(f), src.get_frame(f))
    with pytest.raises(InputError, match="records no path"):
        open_media(MediaInfo(name="x", width=4, height=4, frames=[0]))


def test_old_store_fixture_opens_index_numbered():
    fixture = Path(__file__).parent / "data" / "store_schema1.sqlite"
    with AnnotationStore.open(fixture, readonly=True) as st:
        m = st.media
        assert m is not None and (m.numbering, m.first_frame, m.plain_numbering) == ("index", 0, True)
        assert m.task_frames() == m.frames


# ============================================================================= drivers' options
def _parser(command: str) -> argparse.ArgumentParser:
    from dl_utils.drivers.annotate import add_annotate_arguments
    from dl_utils.drivers.batch import add_batch_arguments
    from dl_utils.drivers.detect import add_detect_arguments
    from dl_utils.drivers.segment import add_segment_arguments

    p = argparse.ArgumentParser(prog=f"dl-utils {command}")
    {"segment": add_segment_arguments, "annotate": add_annotate_arguments, "detect": add_detect_arguments,
     "batch": add_batch_arguments}[command](p)
    return p


@pytest.mark.parametrize("command, argv", [
    ("segment", ["shot", "--out", "o.sqlite", "--prompts", "p.json"]),
    ("annotate", ["shot", "--out", "o.sqlite", "--text", "car"]),
    ("detect", ["shot", "--out", "o.sqlite", "--text", "car"]),
    ("batch", ["shot", "--out", "stores", "--text", "car"]),
])
def test_every_command_has_the_numbering_options(command, argv):
    p = _parser(command)
    assert SourceOptions.from_args(p.parse_args(argv)) == SourceOptions()
    a = p.parse_args(argv + ["--frame-numbers", "names"])
    assert SourceOptions.from_args(a) == SourceOptions(frame_numbers="names")
    assert SourceOptions.from_args(p.parse_args(argv + ["--first-frame", "1001"])).first_frame == 1001
    text = p.format_help()
    assert "--frame-numbers {index,names}" in text and "--first-frame N" in text
    with pytest.raises(SystemExit):
        p.parse_args(argv + ["--frame-numbers", "files"])


def test_source_options_check_and_open(shot):
    SourceOptions(first_frame=1001).check()
    with pytest.raises(InputError, match="first frame -1 is below 0"):
        SourceOptions(first_frame=-1).check()
    with pytest.raises(InputError, match="both set the numbers"):
        SourceOptions("names", 1001).check()
    assert SourceOptions("names").open(shot).frame_numbers == list(SHOT)


class _Boxes:
    """A detector that finds one 'car' box in every image (its score says which picture it saw)."""

    name = "boxes"

    def detect(self, image, prompt=None):
        from dl_utils.dinoal.detector import Detections

        n = int(image[0, 0, 0]) + 256 * int(image[0, 0, 1])
        return Detections(boxes=[[2, 3, 20, 30]], scores=[n / 10_000], phrases=["car"], labels=["car"])

    def detect_batch(self, images, prompt=None):
        return [self.detect(im, prompt) for im in images]


def test_detect_writes_shot_numbers(shot, tmp_path):
    from dl_utils.drivers.detect import detect

    out = tmp_path / "det.sqlite"
    detect(shot, out, "car", detector=_Boxes(), numbering=SourceOptions("names"), progress=False)
    with AnnotationStore.open(out, readonly=True) as st:
        assert st.frames() == list(SHOT) and st.media.numbering == "names"
        for n in SHOT:  # each frame's detection came from its own file
            assert st.read_frame(n).scores.tolist() == [pytest.approx(n / 10_000)]
    with pytest.raises(StoreError, match="with --frame-numbers names but .* --frame-numbers index"):
        detect(shot, out, "car", detector=_Boxes(), progress=False)


class _Recorder:
    """An image segmenter that keeps the image it was given for each frame and masks its top rows."""

    def __init__(self):
        self.seen: dict[int, np.ndarray] = {}

    def set_image(self, image, key=None, *, frame=None):
        self.seen[frame], self.frame = image.copy(), frame
        return True

    def predict_objects(self, prompts):
        from dl_utils.annotations import Instances

        h, w = self.seen[self.frame].shape[:2]
        m = np.zeros((h, w), bool)
        m[: 1 + self.frame % 7] = True
        return Instances([Instance(oid, mask=m.copy(), score=0.9) for oid in prompts], frame=self.frame)


def test_annotate_prompts_speak_shot_numbers(shot, tmp_path):
    from dl_utils.drivers.annotate import annotate

    pts = tmp_path / "p.json"
    pts.write_text(json.dumps([{"frame": 1004, "object": 1, "label": "car", "points": [[10, 10, 1]]},
                               {"frame": 1009, "object": 2, "label": "car", "points": [[20, 10, 1]]}]))
    seg = _Recorder()
    out = tmp_path / "a.sqlite"
    annotate(shot, out, points=pts, segmenter=seg, numbering=SourceOptions("names"), progress=False)
    assert sorted(seg.seen) == [1004, 1009]
    for n, img in seg.seen.items():  # the prompt of frame 1004 ran on shot.1004.png
        assert np.array_equal(img, read_image(shot / f"shot.{n}.png"))
    with AnnotationStore.open(out, readonly=True) as st:
        assert st.frames() == [1004, 1009] and st.media.frames == list(SHOT)
        assert st.read_frame(1009).by_object()[2].mask.sum() == W * (1 + 1009 % 7)


@requires_sam2
def test_segment_names_with_start_writes_shot_numbers(shot, tmp_path, tiny_sam2_video):  # noqa: F811
    """``segment --frame-numbers names --start 1003``: the prompt on frame 1004, the store's frames are
    the shot's numbers from 1004 on, and every mask equals the position-numbered run's on the same
    picture (the numbering changes names, never pixels)."""
    from dl_utils.drivers.segment import plan_segment, run_segment

    click = {"object": 1, "label": "car", "points": [[30, 20, 1]]}
    named = tmp_path / "named.json"
    named.write_text(json.dumps([dict(click, frame=1004)]))
    args = _parser("segment").parse_args([str(shot), "--out", str(tmp_path / "n.sqlite"), "--prompts", str(named),
                                          "--frame-numbers", "names", "--start", "1003"])
    numbering = SourceOptions.from_args(args)
    plan = plan_segment(args.source, args.out, args.prompts, start=args.start, numbering=numbering)
    assert (plan["start"], plan["to_compute"]) == (1003, {"1": "1005-1006, 1009"})
    s = run_segment(args.source, args.out, args.prompts, start=args.start, stop=args.stop, numbering=numbering,
                    sam_model=tiny_sam2_video, progress=False)
    assert s["prompts_applied"] == 1
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([dict(click, frame=2)]))
    run_segment(shot, tmp_path / "p.sqlite", plain, start=2, sam_model=tiny_sam2_video, progress=False)
    with AnnotationStore.open(args.out, readonly=True) as a, AnnotationStore.open(tmp_path / "p.sqlite") as b:
        assert a.frames() == [1004, 1005, 1006, 1009] and b.frames() == [2, 3, 4, 5]
        assert a.media.numbering == "names" and a.media.frames == list(SHOT)
        for n, k in zip(a.frames(), b.frames()):
            assert np.array_equal(a.read_frame(n).by_object()[1].mask, b.read_frame(k).by_object()[1].mask), n
    # the prompt's frame is a shot number: frame 2 is not one of them
    with pytest.raises(InputError, match="frame"):
        run_segment(shot, tmp_path / "x.sqlite", plain, numbering=numbering, sam_model=tiny_sam2_video,
                    progress=False)


# ============================================================================= CVAT
def _store_with_masks(path: Path, media: MediaInfo) -> dict[int, np.ndarray]:
    """One object, a different mask on every frame (its size tells the frame)."""
    st = AnnotationStore.create(path, media)
    st.set_labels([Label("car", "#ff0000")])
    st.add_object("car", id=1)
    exp = {}
    for k, f in enumerate(media.frames):
        m = np.zeros((H, W), bool)
        m[5:10 + 3 * k, 4:30] = True
        st.write_frame(f, [Instance(1, mask=m)])
        exp[f] = m
    st.close()
    return exp


def _task_masks(conn, task) -> dict[int, np.ndarray]:
    from dl_utils.cv_utils import decode_cvat_rle

    out = {}
    for j in task.jobs:
        data = conn.request("GET", f"/api/jobs/{j.id}/annotations", what="test read")
        for s in data["shapes"]:
            out[s["frame"]] = decode_cvat_rle(s["points"], H, W)
        for t in data["tracks"]:
            for s in t["shapes"]:
                if not s["outside"]:
                    out[s["frame"]] = decode_cvat_rle(s["points"], H, W)
    return out


def _conn(server):
    from dl_utils.cvat import RetryPolicy, connect

    return connect(server.url, token=server.token, prompt=False, retry=RetryPolicy(retries=1, base_delay=0.0),
                   sleep=lambda s: None)


def test_cvat_push_of_a_gapped_shot_maps_to_task_frames_by_position(shot, tmp_path, cvat_server):  # noqa: F811
    from dl_utils.cvat import create_task_for_store, pull, push, read_task
    from dl_utils.cvat.tasks import create_task

    media = open_frames(shot, frame_numbers="names", start=1002).media_info()  # 1002 1004 1005 1006 1009
    exp = _store_with_masks(tmp_path / "shot.sqlite", media)
    conn = _conn(cvat_server)
    try:
        with AnnotationStore.open(tmp_path / "shot.sqlite") as st:
            plan = create_task_for_store(conn, st, dry_run=True)
            assert plan["files"] == 5 and plan["data"]["start_frame"] == 0
            assert "stop_frame" not in plan["data"] and "frame_step" not in plan["data"]
            task = create_task_for_store(conn, st, segment_size=3, overlap=0, poll_interval=0.01)
            info = read_task(conn, task.id)
            assert info.media.frames == [0, 1, 2, 3, 4]  # the kept files, in order: a frame list
            assert info.media.frame_names == [f"shot.{n}.png" for n in media.frames]
            rep = push(st, conn, task.id, shape="mask")
            assert rep.created == 5
        got = _task_masks(conn, info)
        assert sorted(got) == [0, 1, 2, 3, 4]
        for i, f in enumerate(media.frames):
            assert np.array_equal(got[i], exp[f]), (i, f)
        # pull back into the shot-numbered store: by position again, nothing changes
        with AnnotationStore.open(tmp_path / "shot.sqlite") as st:
            pull(st, conn, task.id)
            assert st.frames() == media.frames
            for f in media.frames:
                assert np.array_equal(st.read_frame(f).by_object()[1].mask, exp[f]), f
        # a new store from the task is CVAT-numbered (0..4), the same masks in the same order
        with AnnotationStore.create(tmp_path / "back.sqlite") as back:
            pull(back, conn, task.id)
            assert back.frames() == [0, 1, 2, 3, 4]
            for i, f in enumerate(media.frames):
                assert np.array_equal(back.read_frame(i).by_object()[1].mask, exp[f])
        # the task's range cannot be given for a shot-numbered store (it holds the store's frames)
        with pytest.raises(InputError, match=r"numbered with --frame-numbers names: .* leave out start/stop/step"):
            create_task(conn, "x", media=media, labels=[Label("car")], start=1002, dry_run=True)
    finally:
        conn.close()


def test_cvat_first_frame_video_maps_by_position(video, tmp_path, cvat_server):  # noqa: F811
    from dl_utils.cvat import create_task_for_store, push
    from dl_utils.errors import CvatError

    media = open_frames(video, first_frame=1001, start=1003, stop=1011, step=2).media_info()
    exp = _store_with_masks(tmp_path / "v.sqlite", media)
    conn = _conn(cvat_server)
    try:
        with AnnotationStore.open(tmp_path / "v.sqlite") as st:
            plan = create_task_for_store(conn, st, dry_run=True)
            assert (plan["data"]["start_frame"], plan["data"]["stop_frame"], plan["data"]["frame_step"]) == (2, 10, 2)
            task = create_task_for_store(conn, st, poll_interval=0.01)
            assert task.media.frames == [2, 4, 6, 8, 10] and task.media.frames == media.task_frames()
            push(st, conn, task.id, shape="mask")
        got = _task_masks(conn, task)
        assert sorted(got) == [0, 1, 2, 3, 4]
        for i, f in enumerate(media.frames):
            assert np.array_equal(got[i], exp[f]), (i, f)
        # a plain store with the same frame numbers is another video's task: refused, naming both
        plain = MediaInfo(name="clip.mp4", width=W, height=H, frames=media.frames, start=1003, stop=1011, step=2)
        with AnnotationStore.create(tmp_path / "plain.sqlite", plain) as st2:
            with pytest.raises(CvatError, match=r"start=1003 step=2 in .* but start=2 step=2 in task"):
                push(st2, conn, task.id)
    finally:
        conn.close()


# ============================================================================= the widget
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_widget_speaks_shot_numbers(shot, tmp_path):
    """The annotator on a names-numbered shot: it shows, steps over the gaps by kept frame, writes
    clicks and propagation under the shot's numbers, and a number in a gap is a message, not a crash."""
    from dl_utils.ipy_utils import Annotator
    from dl_utils.sam2al import VideoSession
    from tests.sam2_fixtures import build_tiny

    session = VideoSession(open_frames(shot, frame_numbers="names"), tmp_path / "w.sqlite",
                           sam_model=build_tiny(video=True))
    a = Annotator(session)
    assert a.controller.frame == 1001
    a.step(1)
    assert a.controller.frame == 1002
    a.step(1)
    assert a.controller.frame == 1004  # 1003 is a gap in the shot
    a.show(1003)
    assert a.controller.frame == 1004 and a.messages[-1][0] == "error" and "frame 1003" in a.messages[-1][1]
    inst = a.click(20, 20, True)
    assert inst is not None and a.store.frames() == [1004]
    assert a.store.read_frame(1004)[0].keyframe
    assert a.propagate("forward") and a.wait(180), a.messages[-3:]
    assert a.store.frames() == [1004, 1005, 1006, 1009]
    assert a.store.media.numbering == "names"
