"""CVAT XML and COCO exports of shot-numbered stores (issue 18): the files speak the frame numbers of
the task ``dl_utils.cvat.create_task`` makes from the store (``MediaInfo.task_frames()``), and our
own import restores the store's numbering."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from dl_utils.annotations import Instance, MediaInfo
from dl_utils.formats import export_store, import_file
from dl_utils.store import AnnotationStore

NAMES = MediaInfo(name="shot", width=16, height=12, frames=[1001, 1003, 1007], start=1001, stop=1007,
                  frame_names=["shot.1001.png", "shot.1003.png", "shot.1007.png"], numbering="names")
# a video numbered from 1001, the store kept positions 1..4 (frames 1002..1005)
VIDEO = MediaInfo(name="clip.mp4", width=16, height=12, frames=[1002, 1003, 1004, 1005], start=1002,
                  stop=1005, numbering="index", first_frame=1001)


def _mask(k: int) -> np.ndarray:
    m = np.zeros((12, 16), bool)
    m[2 + k:6 + k, 3:9 + k] = True
    return m


def _store(tmp_path: Path, media: MediaInfo) -> tuple[Path, dict[int, np.ndarray]]:
    path = tmp_path / f"{media.name}.sqlite"
    masks = {f: _mask(k) for k, f in enumerate(media.frames) if k != 1}  # a frame without a mask
    with AnnotationStore.create(path, media) as st:
        o = st.add_object("cup")
        for f, m in masks.items():
            st.write_frame(f, [Instance(o.id, mask=m)])
    return path, masks


def _export(src: Path, fmt: str, out: Path, **opts) -> Path:
    with AnnotationStore.open(src, readonly=True) as st:
        return export_store(st, fmt, out, **opts)


def _back(tmp_path: Path, out: Path, tag: str) -> AnnotationStore:
    back = AnnotationStore.create(tmp_path / f"back_{tag}.sqlite")
    import_file(out, back)
    return back


@pytest.mark.parametrize("media,task", [(NAMES, [0, 1, 2]), (VIDEO, [1, 2, 3, 4])],
                         ids=["names", "first-frame"])
@pytest.mark.parametrize("fmt", ["cvat-images", "cvat-video"])
def test_cvat_xml_uses_task_frames_and_round_trips(tmp_path, media, task, fmt):
    assert media.task_frames() == task
    src, masks = _store(tmp_path, media)
    out = _export(src, fmt, tmp_path / "out.xml")
    root = ET.parse(out).getroot()
    assert root.find("meta/task/start_frame").text == str(task[0])
    assert root.find("meta/task/stop_frame").text == str(task[-1])
    assert root.find("meta/task/frame_filter").text in (None, "")
    to_task = dict(zip(media.frames, task))
    if fmt == "cvat-images":
        images = root.findall("image")
        assert [int(im.get("id")) for im in images] == task
        if media.frame_names:  # the shot's file names, which the task's images carry too
            assert [im.get("name") for im in images] == media.frame_names
        with_mask = [int(im.get("id")) for im in images if im.find("mask") is not None]
        assert with_mask == [to_task[f] for f in masks]
    else:
        shapes = [(int(s.get("frame")), s.get("outside")) for s in root.iter("mask")]
        # one track per frame: the keyframe and, where a next frame exists, its outside marker
        want = []
        for f in masks:
            i = media.frames.index(f)
            want.append((task[i], "0"))
            if i + 1 < len(task):
                want.append((task[i + 1], "1"))
        assert shapes == want
    back = _back(tmp_path, out, fmt)
    with back:
        m = back.media
        assert m.frames == media.frames
        assert (m.numbering, m.first_frame) == (media.numbering, media.first_frame)
        assert m.task_frames() == task
        if fmt == "cvat-images":
            assert m.frame_names == media.frame_names
        for f, want_mask in masks.items():
            assert np.array_equal(back.read_frame(f)[0].mask, want_mask)
        assert len(back.read_frame(media.frames[1]).visible()) == 0


def test_cvat_xml_subrange_of_names_store(tmp_path):
    """Task frames of a slice are the frames' positions in the whole store (the task holds them all)."""
    src, masks = _store(tmp_path, NAMES)
    out = _export(src, "cvat-images", tmp_path / "out.xml", start=1003)
    root = ET.parse(out).getroot()
    assert [int(im.get("id")) for im in root.findall("image")] == [1, 2]
    assert root.find("meta/task/start_frame").text == "1"
    with _back(tmp_path, out, "sub") as back:
        assert back.media.frames == [1003, 1007] and back.media.numbering == "names"
        assert np.array_equal(back.read_frame(1007)[0].mask, masks[1007])


def test_plain_store_unchanged(tmp_path):
    """A store with the default numbering writes no numbering comment and its own numbers."""
    media = MediaInfo(name="v.mp4", width=16, height=12, frames=[3, 5, 7], start=3, stop=7, step=2)
    src, _ = _store(tmp_path, media)
    out = _export(src, "cvat-video", tmp_path / "out.xml")
    text = out.read_text()
    assert "dl_utils frame numbering" not in text
    root = ET.parse(out).getroot()
    assert root.find("meta/task/start_frame").text == "3"
    assert root.find("meta/task/frame_filter").text == "step=2"
    with _back(tmp_path, out, "plain") as back:
        assert back.media.frames == [3, 5, 7] and back.media.plain_numbering


def test_xml_without_comment_keeps_task_numbering(tmp_path):
    """A CVAT server export of the task (no comment) imports in the task's numbering."""
    src, masks = _store(tmp_path, VIDEO)
    out = _export(src, "cvat-video", tmp_path / "out.xml")
    text = out.read_text()
    stripped = "\n".join(ln for ln in text.splitlines() if "dl_utils frame numbering" not in ln)
    (tmp_path / "server.xml").write_text(stripped)
    with _back(tmp_path, tmp_path / "server.xml", "server") as back:
        assert back.media.frames == [1, 2, 3, 4] and back.media.plain_numbering
        assert np.array_equal(back.read_frame(1)[0].mask, masks[1002])


def test_damaged_comment_warns_and_keeps_task_numbering(tmp_path):
    src, _ = _store(tmp_path, NAMES)
    out = _export(src, "cvat-images", tmp_path / "out.xml")
    text = out.read_text().replace('"frames":[1001,1003,1007]', '"frames":[1001,1003]')
    (tmp_path / "edited.xml").write_text(text)
    with pytest.warns(UserWarning, match=r"edited\.xml line \d+: the dl_utils frame numbering comment"
                                         r" does not list 3 increasing frame numbers"):
        back = _back(tmp_path, tmp_path / "edited.xml", "edited")
    with back:
        assert back.media.frames == [0, 1, 2] and back.media.plain_numbering
        assert back.media.frame_names == NAMES.frame_names


@pytest.mark.parametrize("media,names", [
    (NAMES, ["shot.1001.png", "shot.1003.png", "shot.1007.png"]),
    (VIDEO, ["frame_000001", "frame_000002", "frame_000003", "frame_000004"]),
], ids=["names", "first-frame"])
def test_coco_file_names_are_the_tasks_and_round_trip(tmp_path, media, names):
    src, masks = _store(tmp_path, media)
    out = _export(src, "coco", tmp_path / "out.json")
    doc = json.loads(out.read_text())
    assert [im["file_name"] for im in doc["images"]] == names  # what CVAT matches images by
    assert [im["frame"] for im in doc["images"]] == media.frames
    saved = doc["info"]["dl_utils"]["media"]
    assert saved.get("numbering", "index") == media.numbering
    assert saved.get("first_frame", 0) == media.first_frame
    with _back(tmp_path, out, "coco") as back:
        assert back.media.frames == media.frames
        assert (back.media.numbering, back.media.first_frame) == (media.numbering, media.first_frame)
        for f, m in masks.items():
            assert np.array_equal(back.read_frame(f)[0].mask, m)


def test_coco_slice_keeps_numbering(tmp_path):
    src, masks = _store(tmp_path, VIDEO)
    out = _export(src, "coco", tmp_path / "out.json", start=1004)
    doc = json.loads(out.read_text())
    assert [im["file_name"] for im in doc["images"]] == ["frame_000003", "frame_000004"]
    with _back(tmp_path, out, "slice") as back:
        assert back.media.frames == [1004, 1005] and back.media.first_frame == 1001


def test_datumaro_reads_the_shot_xml_in_task_frames(tmp_path):
    """A third-party CVAT reader (datumaro, whose parser CVAT's importer shares) skips the numbering
    comment and sees the task's frames: image i of the task is the i-th kept file."""
    try:
        import datumaro as dm
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"datumaro is not importable here ({type(e).__name__}: {e}); pip install datumaro")
    from PIL import Image

    src, masks = _store(tmp_path, NAMES)
    out = _export(src, "cvat-images", tmp_path / "cvat" / "annotations.xml")
    (out.parent / "images").mkdir()
    for name in NAMES.frame_names:
        Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(out.parent / "images" / name)
    ds = dm.Dataset.import_from(str(out), "cvat")
    got = {item.attributes["frame"]: item for item in ds}
    assert sorted(got) == [0, 1, 2]
    assert [got[i].id for i in range(3)] == [n.rsplit(".", 1)[0] for n in NAMES.frame_names]
    for k, f in enumerate(NAMES.frames):
        anns = got[k].annotations
        if f in masks:
            assert len(anns) == 1 and np.array_equal(anns[0].image.astype(bool), masks[f])
        else:
            assert anns == []
