from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dl_utils.annotations import Clicks, Instance, Label, MediaInfo, Provenance, ShapeType, Source
from dl_utils.errors import InputError, MaskError, StoreError, StoreVersionError
from dl_utils.store import SCHEMA_VERSION, AnnotationStore
from tests.store_writer import expected_mask

ROOT = Path(__file__).resolve().parent.parent


def media(n=20, w=64, h=48, start=0, step=1):
    return MediaInfo(name="clip.mp4", width=w, height=h, frames=list(range(start, start + n * step, step)),
                     fps=25.0, start=start, step=step)


@pytest.fixture
def store(tmp_path):
    st = AnnotationStore.create(tmp_path / "job.sqlite", media())
    yield st
    st.close()


def rect(h=48, w=64, y0=5, y1=20, x0=3, x1=30):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_create_open_roundtrip_meta_labels_objects(tmp_path, store):
    store.set_labels([Label("car", "#ff0000", id=1), Label("truck", superclass="car", type="mask")])
    a = store.add_object("car", attributes={"moving": True})
    b = store.add_object("truck", color=(0, 255, 0))
    store.close()
    st = AnnotationStore.open(tmp_path / "job.sqlite")
    assert st.schema_version == SCHEMA_VERSION
    assert st.media == media()
    assert [lb.name for lb in st.labels()] == ["car", "truck"]
    assert st.labels()[1].superclass == "car" and st.labels()[1].type == "mask"
    assert [o.id for o in st.objects()] == [a.id, b.id] == [1, 2]
    assert st.get_object(1).attributes == {"moving": True}
    assert st.get_object(2).color == "#00ff00"
    st.update_object(2, label="bus")
    assert st.get_object(2).label == "bus"
    st.close()


def test_instances_roundtrip_exact(store, rng):
    o = [store.add_object("car").id for _ in range(3)]
    masks = [rng.random((48, 64)) < 0.3, rect(), np.zeros((48, 64), bool)]
    store.write_frame(
        7,
        [
            Instance(o[0], mask=masks[0], score=0.75, source="semi-auto", keyframe=True,
                     clicks=Clicks(points=((1, 2, 1),)), label="car",
                     provenance=Provenance(engine="sam2-video", model="tiny", object_score=3.5, area=12,
                                           extra={"note": [1, "x"]})),
            Instance(o[1], mask=masks[1], source=Source.AUTO),
            Instance(o[2], mask=masks[2]),
        ],
    )
    got = store.read_frame(7)
    assert got.object_ids.tolist() == o
    for inst, m in zip(got, masks):
        assert np.array_equal(inst.mask, m)
    assert got[0].score == 0.75 and got[0].source is Source.SEMI_AUTO and got[0].keyframe
    assert got[0].clicks == Clicks(points=((1.0, 2.0, 1),)) and got[0].label == "car"
    assert got[0].provenance == Provenance(engine="sam2-video", model="tiny", object_score=3.5, area=12,
                                           extra={"note": [1, "x"]})
    assert got[1].clicks is None and got[1].provenance is None and got[1].label is None
    assert got[1].box == (3.0, 5.0, 30.0, 20.0)
    assert got[2].is_empty and not got[1].is_empty
    assert store.frames() == [7]
    assert store.frames_done(o[2]) == [7]
    assert store.progress()[o[2]] == {"frames_done": 1, "frames_visible": 0, "first": 7, "last": 7}
    # decode=False gives boxes without masks
    assert store.read_frame(7, decode=False)[1].mask is None


def test_box_and_polygon_instances(store):
    o = store.add_object("car").id
    p = store.add_object("car").id
    store.write_frame(0, [Instance(o, box=(1, 2, 10, 20)), Instance(p, polygon=[[0, 0, 10, 0, 10, 10]],
                                                                    mask=rect())])
    a, b = store.read_frame(0)
    assert a.shape is ShapeType.BOX and a.mask is None and a.box == (1.0, 2.0, 10.0, 20.0)
    assert b.shape is ShapeType.POLYGON and b.polygon == [[0, 0, 10, 0, 10, 10]]


def test_replace_and_delete(store):
    ids = [store.add_object("car").id for _ in range(3)]
    for f in range(5):
        store.write_frame(f, [Instance(i, mask=rect()) for i in ids])
    store.write_frame(2, [Instance(ids[0], mask=rect(x0=1))], replace=True)
    assert store.read_frame(2).object_ids.tolist() == [ids[0]]
    assert store.delete_instances(object_id=ids[1], start=3, stop=4) == 2
    assert store.frames_done(ids[1]) == [0, 1]
    assert store.delete_instances(frames=[0], object_id=ids[2]) == 1
    store.delete_object(ids[0])
    assert [o.id for o in store.objects()] == ids[1:]
    assert all(ids[0] not in fr.object_ids for _, fr in store.iter_frames())


def test_iter_frames_order_range_and_objects(store):
    a, b = store.add_object("car").id, store.add_object("person").id
    for f in [9, 3, 5, 1]:
        store.write_frame(f, [Instance(a, mask=rect()), Instance(b, box=(0, 0, 4, 4))])
    assert [f for f, _ in store.iter_frames()] == [1, 3, 5, 9]
    assert [f for f, _ in store.iter_frames(start=3, stop=5)] == [3, 5]
    assert all(fr.object_ids.tolist() == [b] for _, fr in store.iter_frames(objects=[b]))
    assert sorted(store.read_object(a)) == [1, 3, 5, 9]


def test_bad_input_errors(tmp_path, store):
    o = store.add_object("car").id
    with pytest.raises(MaskError, match=r"frame 3, object 1: mask is 10x10 but the frame is 64x48"):
        store.write_frame(3, [Instance(o, mask=np.ones((10, 10), bool))])
    with pytest.raises(InputError, match=r"unknown object id\(s\) \[99\]"):
        store.write_frame(0, [Instance(99, mask=rect())])
    with pytest.raises(InputError, match="appears twice"):
        store.write_frame(0, [Instance(o, mask=rect()), Instance(o, mask=rect())])
    with pytest.raises(InputError, match="already exists"):
        store.add_object("car", id=o)
    with pytest.raises(InputError, match="needs a label"):
        store.add_object("  ")
    with pytest.raises(InputError, match="object 42 is not in"):
        store.get_object(42)
    # nothing partial was written by the failed calls
    assert store.frames() == []
    with pytest.raises(StoreError, match="does not exist"):
        AnnotationStore.open(tmp_path / "missing.sqlite")
    with pytest.raises(StoreError, match="already exists"):
        AnnotationStore.create(store.path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a readable annotation store"):
        AnnotationStore.open(junk)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not an annotation store"):
        AnnotationStore.open(other)


def test_media_mismatch_refused(tmp_path):
    p = tmp_path / "s.sqlite"
    AnnotationStore.create(p, media()).close()
    with pytest.raises(StoreError, match="does not match"):
        AnnotationStore.open_or_create(p, media(n=30))
    AnnotationStore.open_or_create(p, media()).close()


def test_newer_schema_refused(tmp_path):
    p = tmp_path / "s.sqlite"
    AnnotationStore.create(p).close()
    with sqlite3.connect(p) as c:
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for readonly in (False, True):
        with pytest.raises(StoreVersionError, match=rf"{p.name} has schema version {SCHEMA_VERSION + 1},"
                           rf" newer than .* \({SCHEMA_VERSION}\); upgrade dl-utils"):
            AnnotationStore.open(p, readonly=readonly)


def test_readonly_reader_sees_commits_while_writer_writes(tmp_path):
    p = tmp_path / "s.sqlite"
    w = AnnotationStore.create(p, media())
    o = w.add_object("car").id
    r = AnnotationStore.open(p, readonly=True)
    assert r.frames() == []
    w.write_frame(0, [Instance(o, mask=rect())])
    assert r.frames() == [0]
    w._conn.execute("BEGIN IMMEDIATE")  # writer mid-transaction: reader is not blocked
    try:
        t = time.perf_counter()
        assert r.frames() == [0]
        assert time.perf_counter() - t < 1.0
    finally:
        w._conn.execute("ROLLBACK")
    with pytest.raises(StoreError, match="read-only"):
        r.add_object("x")
    r.close()
    w.close()


def test_threads_can_share_a_store(store):
    import threading

    o = store.add_object("car").id
    errors = []

    def work(base):
        try:
            for f in range(base, base + 20):
                store.write_frame(f, [Instance(o, mask=rect())])
                store.read_frame(f)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k * 100,)) for k in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors and len(store.frames()) == 80


def test_runs(store):
    r = store.begin_run("propagate", {"direction": "forward"})
    assert store.runs(status="running")[0]["params"] == {"direction": "forward"}
    assert store.runs()[0]["writer"]["pid"] == os.getpid()  # this process: still running
    assert store.runs(status="interrupted") == []
    store.finish_run(r, "cancelled")
    assert store.runs()[0]["status"] == "cancelled"
    with pytest.raises(InputError):
        store.finish_run(r, "weird")


def test_masks_are_compressed_not_raw(store):
    o = store.add_object("car").id
    big = np.zeros((48, 64), bool)
    big[:, :40] = True
    store.write_frame(0, [Instance(o, mask=big)])
    (blob,) = store._query("SELECT rle FROM instances")[0]
    assert len(blob) < 48 * 64 / 8


@pytest.mark.slow
def test_sigkill_mid_write_keeps_every_committed_frame_and_no_partial_one(tmp_path):
    """A real writer process killed with SIGKILL at random points, several times, resuming each time."""
    p = tmp_path / "kill.sqlite"
    n_obj = 5
    rnd = random.Random(7)
    committed: set[int] = set()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.store_writer", str(p), str(n_obj)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        committed |= {int(x) for x in out.split()}
        with AnnotationStore.open(p, readonly=True) as st:
            st.check()
            frames = st.frames()
            assert committed <= set(frames), "a frame reported committed is missing"
            assert frames == list(range(len(frames))), "frames are contiguous (resume continued)"
            for f in frames:
                fr = st.read_frame(f)
                assert fr.object_ids.tolist() == list(range(1, n_obj + 1)), f"partial frame {f}"
                for inst in fr:
                    assert np.array_equal(inst.mask, expected_mask(f, inst.object_id))
            assert {o: v["frames_done"] for o, v in st.progress().items()} == {
                k: len(frames) for k in range(1, n_obj + 1)
            }
            # the killed runs are reported interrupted (their process is gone): the resumable
            # work; the stored status is left as it was
            assert all(r["status"] == "interrupted" for r in st.runs())
            assert {r[0] for r in st._query("SELECT status FROM runs")} == {"running"}
    assert len(committed) > 20


def test_mask_size_check_follows_set_media(tmp_path):
    """The media record is cached per connection for write speed; set_media must refresh it."""
    s = AnnotationStore.create(tmp_path / "m.sqlite", MediaInfo(name="a", width=8, height=6, frames=[0, 1]))
    o = s.add_object("car")
    s.write_frame(0, [Instance(o.id, mask=np.ones((6, 8), bool))])
    s.set_media(MediaInfo(name="a", width=10, height=4, frames=[0, 1]))
    with pytest.raises(MaskError):
        s.write_frame(1, [Instance(o.id, mask=np.ones((6, 8), bool))])
    s.write_frame(1, [Instance(o.id, mask=np.ones((4, 10), bool))])
    assert s.read_frame(1)[0].mask.shape == (4, 10)


# ---------------------------------------------------------------- per-frame sizes (issue 13)
def _write_images(folder: Path, sizes: list[tuple[int, int]]) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for k, (w, h) in enumerate(sizes):
        img = np.full((h, w, 3), 40 + k * 30, np.uint8)
        assert cv2.imwrite(str(folder / f"img_{k:02d}.png"), img)


def test_mixed_size_folder_store_keeps_each_frame_size(tmp_path):
    from dl_utils.video_utils import open_frames

    sizes = [(64, 48), (40, 30), (30, 50), (64, 48)]
    _write_images(tmp_path / "imgs", sizes)
    src = open_frames(tmp_path / "imgs")
    m = src.media_info()
    assert m.mixed_sizes and m.frame_sizes == sizes and (m.width, m.height) == sizes[0]
    assert [src.frame_size(n) for n in range(4)] == sizes
    p = tmp_path / "mixed.sqlite"
    with AnnotationStore.create(p, m) as st:
        o = st.add_object("car").id
        for f, (w, h) in enumerate(sizes):
            st.write_frame(f, [Instance(o, mask=rect(h=h, w=w, y0=1, y1=h - 1, x0=2, x1=w - 2))])
        # a mask at the first image's size no longer fits the second image
        with pytest.raises(MaskError, match=r"frame 1, object 1: mask is 64x48 but the frame is 40x30"):
            st.write_frame(1, [Instance(o, mask=rect())])
    with AnnotationStore.open(p, readonly=True) as st:
        assert st.media.frame_sizes == sizes and st.media.size_of(2) == (30, 50)
        for f, (w, h) in enumerate(sizes):
            assert st.read_frame(f)[0].mask.shape == (h, w)
        assert "frame_sizes" in st.get_meta("media")


def test_uniform_folder_has_no_frame_sizes(tmp_path):
    from dl_utils.video_utils import open_frames

    _write_images(tmp_path / "imgs", [(40, 30)] * 3)
    m = open_frames(tmp_path / "imgs").media_info()
    assert m.frame_sizes is None and not m.mixed_sizes and m.sizes() == [(40, 30)] * 3
    assert "frame_sizes" not in m.to_dict()
    # a list of equal sizes collapses to the compact form
    assert MediaInfo(name="a", width=4, height=3, frames=[0, 1], frame_sizes=[(4, 3), (4, 3)]).frame_sizes is None
    with pytest.raises(InputError, match="2 frame sizes for 3 frames"):
        MediaInfo(name="a", width=4, height=3, frames=[0, 1, 2], frame_sizes=[(4, 3), (5, 3)])
    with pytest.raises(InputError, match="frame 1 has size 0x3"):
        MediaInfo(name="a", width=4, height=3, frames=[0, 1], frame_sizes=[(4, 3), (0, 3)])


def test_old_store_without_frame_sizes_opens_unchanged(tmp_path):
    """A store written before per-frame sizes: its media record has no 'frame_sizes' key."""
    p = tmp_path / "old.sqlite"
    AnnotationStore.create(p).close()
    old = {"name": "clip.mp4", "width": 64, "height": 48, "frames": [0, 1, 2], "fps": 25.0,
           "start": 0, "stop": None, "step": 1, "frame_names": None, "path": None}
    with sqlite3.connect(p) as c:
        c.execute("INSERT OR REPLACE INTO meta VALUES ('media', ?)", (json.dumps(old),))
    with AnnotationStore.open(p) as st:
        assert st.media.frame_sizes is None and st.media.size_of(2) == (64, 48)
        o = st.add_object("car").id
        st.write_frame(2, [Instance(o, mask=rect())])
        st.check_media(MediaInfo(name="clip.mp4", width=64, height=48, frames=[0, 1, 2], fps=25.0))
    with sqlite3.connect(p) as c:
        assert json.loads(c.execute("SELECT value FROM meta WHERE key='media'").fetchone()[0]) == old


def test_check_media_names_the_frame_whose_size_changed(tmp_path):
    a = MediaInfo(name="imgs", width=4, height=3, frames=[0, 1], frame_sizes=[(4, 3), (5, 3)])
    b = MediaInfo(name="imgs", width=4, height=3, frames=[0, 1], frame_sizes=[(4, 3), (6, 3)])
    with AnnotationStore.create(tmp_path / "s.sqlite", a) as st:
        with pytest.raises(StoreError, match="frame 1 is 5x3 in the store but 6x3 now"):
            st.check_media(b)
        st.check_media(a)


def test_summary_shows_size_or_mixed_sizes(tmp_path):
    with AnnotationStore.create(tmp_path / "u.sqlite", media()) as st:
        assert st.summary()["size"] == "64x48"
    m = MediaInfo(name="imgs", width=40, height=30, frames=[0, 1, 2],
                  frame_sizes=[(40, 30), (2250, 1500), (30, 50)])
    with AnnotationStore.create(tmp_path / "m.sqlite", m) as st:
        assert st.summary()["size"] == "mixed sizes: 3 sizes from 40x30 to 2250x1500 (first image 40x30)"
