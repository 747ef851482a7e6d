"""YOLO detect/segment exports, COCO per split and the YOLO import, checked by a reader written here.

The reader below is independent of dl_utils: it parses data.yaml with PyYAML and label rows with
str.split, and rasterises polygons with cv2.fillPoly, the way Ultralytics' polygon2mask does.
Masks are made in the tests from frames of the sample clips (thresholded pictures: organic shapes,
with holes and several parts).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from dl_utils.annotations import Instance, ShapeType, box_from_mask
from dl_utils.classes import ClassTable
from dl_utils.cli import main
from dl_utils.datasets.groups import frame_groups
from dl_utils.errors import FormatError, InputError
from dl_utils.formats import YoloOptions, export_yolo, import_yolo
from dl_utils.formats.polygons import join_rings, mask_ring
from dl_utils.splits import Split
from dl_utils.store import AnnotationStore
from dl_utils.video_utils import open_frames, write_video

from .conftest import shared_file

W, H = 192, 108  # small clips: decoding and writing stay fast


# ------------------------------------------------------------------ an independent reader
def read_dataset(root: Path) -> tuple[dict, dict[str, dict[str, list[tuple[int, list[float]]]]]]:
    """data.yaml and, per side, stem -> rows ``(class, values)`` read with plain parsing."""
    doc = yaml.safe_load((root / "data.yaml").read_text())
    sides: dict[str, dict[str, list[tuple[int, list[float]]]]] = {}
    for side in ("train", "val", "test"):
        folder = root / "labels" / side
        if not folder.is_dir():
            continue
        sides[side] = {}
        for f in sorted(folder.glob("*.txt")):
            rows = []
            for line in f.read_text().splitlines():
                parts = line.split()
                rows.append((int(parts[0]), [float(v) for v in parts[1:]]))
            sides[side][f.stem] = rows
    return doc, sides


def fill(values: list[float], w: int, h: int) -> np.ndarray:
    pts = np.round(np.array(values).reshape(-1, 2) * (w, h)).astype(np.int32)
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [pts], 1)
    return m.astype(bool)


def fails(args: list[str], capsys) -> str:
    """Run the CLI expecting the one-line error (exit code 1); returns that line."""
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dl-utils: error: ") and "\n" not in err, err
    return err


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# ------------------------------------------------------------------ masks from real frames
def frame_masks(img: np.ndarray) -> list[np.ndarray]:
    """Three object-like masks of a picture: its bright and its dark pixels within a window, kept
    where they form the largest part or lie near it (an object in pieces, with holes), and a ring
    (an annulus: one hole) where the picture is bright.

    Parts far apart cost a single ring IoU (each bridge is drawn as a 1-pixel line: see
    docs/formats_yolo.md), which is why the parts are kept near each other, as an object's are."""
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    h, w = g.shape
    out = []
    for (y0, x0), m in (((0, w // 3), g > 150), ((h // 3, w // 2), g < 70)):
        win = np.zeros_like(m)
        win[y0:y0 + h // 2, x0:x0 + w // 2] = True
        m = cv2.morphologyEx((m & win).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        n, lab, stats, _ = cv2.connectedComponentsWithStats(m)
        if n < 2:
            continue
        # the largest part and the parts near it: an object seen in pieces (occluded), not specks
        big = lab == 1 + int(np.argmax(stats[1:, 4]))
        near = cv2.dilate(big.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
        out.append(np.isin(lab, [i for i in range(1, n) if stats[i, 4] >= 12 and near[lab == i].any()]))
    yy, xx = np.mgrid[:h, :w]
    cy, cx = np.unravel_index(int(np.argmax(cv2.blur(g, (25, 25)))), g.shape)
    r = np.hypot(yy - cy, xx - cx)
    out.append((r < min(h, w) * 0.25) & (r > min(h, w) * 0.1))
    return [m for m in out if m.any()]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Two short clips cut from the sample video (different frames: two 'videos' to split)."""
    bedroom = shared_file("bedroom.mp4")
    d = tmp_path_factory.mktemp("clips")
    out = []
    for k, (a, b) in enumerate(((0, 5), (100, 105))):
        p = d / f"clip{k}.mp4"
        write_video(p, open_frames(bedroom, start=a, stop=b, resize=(W, H)), fps=30, crf=12)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    """An image folder of the sample photos, made small."""
    d = tmp_path_factory.mktemp("pics") / "photos"
    d.mkdir()
    for name in ("truck.jpg", "cars.jpg", "groceries.jpg"):
        img = cv2.imread(str(shared_file(name)))
        cv2.imwrite(str(d / name), cv2.resize(img, (160, 120)), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return d


LABELS = ("bright", "dark", "ring")


def make_store(path: Path, source: Path, *, labels=LABELS, shapes=("mask", "mask", "mask")) -> Path:
    """A store of ``source`` whose objects are the frame_masks of each frame (every other frame
    of a video left empty), stored as masks, or as a polygon / box where ``shapes`` says so."""
    src = open_frames(source)
    video = src.frame_names is None
    with AnnotationStore.create(path, src.media_info()) as store:
        for k, label in enumerate(labels, 1):
            store.add_object(label, id=10 * k)  # store ids unlike export ids on purpose
        for f, img in src.iter_numbered():
            if video and f % 2:
                continue
            insts = []
            for k, (m, shape) in enumerate(zip(frame_masks(img), shapes), 1):
                if shape == "mask":
                    insts.append(Instance(10 * k, mask=m, shape=ShapeType.MASK))
                elif shape == "box":
                    insts.append(Instance(10 * k, box=box_from_mask(m), shape=ShapeType.BOX))
                else:
                    ring = mask_ring(m).points.reshape(-1).tolist()
                    insts.append(Instance(10 * k, polygon=[ring], shape=ShapeType.POLYGON))
            store.write_frame(f, insts)
    src.close()
    return path


@pytest.fixture()
def stores(tmp_path, clips, pictures) -> list[Path]:
    return [make_store(tmp_path / "a.sqlite", clips[0]), make_store(tmp_path / "b.sqlite", clips[1]),
            make_store(tmp_path / "p.sqlite", pictures)]


def split_for(store_paths: list[Path], sides: list[str], path: Path) -> Path:
    """A split putting every group of store i on sides[i]."""
    by_side: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for p, side in zip(store_paths, sides):
        with AnnotationStore.open(p, readonly=True) as s:
            by_side[side] += sorted(set(frame_groups(s).values()))
    Split(train=tuple(by_side["train"]), val=tuple(by_side["val"]), test=tuple(by_side["test"]),
          seed=0, val_fraction=0.0, by="group").save(path)
    return path


def store_masks(path: Path) -> dict[int, dict[str, np.ndarray]]:
    with AnnotationStore.open(path, readonly=True) as s:
        label = {o.id: o.label for o in s.objects()}
        media = s.media
        return {f: {label[i.object_id]: (i.mask if i.mask is not None else
                                        np.zeros((media.size_of(f)[1], media.size_of(f)[0]), bool))
                    for i in insts} for f, insts in s.iter_frames()}


# ------------------------------------------------------------------ polygons
def test_mask_ring_reproduces_masks_with_holes_and_parts(clips, pictures):
    """One ring per mask, re-rasterised by cv2.fillPoly: IoU >= 0.98 on real-frame masks."""
    checked = holes = parts = 0
    imgs = [img for _, img in open_frames(clips[0]).iter_numbered()][:3]
    imgs += [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in sorted(pictures.iterdir())]
    for img in imgs:
        for m in frame_masks(img):
            _, hier = cv2.findContours(m.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
            holes += sum(1 for h in hier[0] if h[3] >= 0)
            parts += sum(1 for h in hier[0] if h[3] < 0) > 1
            ring = mask_ring(m)
            assert ring.points is not None and ring.points.shape[1] == 2
            h, w = m.shape
            assert iou(fill((ring.points / (w, h)).reshape(-1).tolist(), w, h), m) >= 0.98
            checked += 1
    assert checked >= 12 and holes >= 5 and parts >= 3  # the cases the rule is for did occur


def test_bridged_ring_keeps_a_hole_empty_and_both_parts():
    m = np.zeros((60, 90), bool)
    m[5:45, 5:45] = True
    m[15:35, 15:35] = False  # a hole
    m[10:30, 60:80] = True  # a second part
    ring = mask_ring(m).points
    back = fill((ring / (90, 60)).reshape(-1).tolist(), 90, 60)
    assert not back[25, 25] and back[7, 7] and back[20, 70]
    assert iou(back, m) >= 0.98
    # the bridge is walked there and back: every bridge vertex pair appears twice
    joined = join_rings([np.array([[0, 0], [4, 0], [4, 4]]), np.array([[10, 0], [14, 0], [14, 4]])])
    assert len(joined) == 3 + 3 + 2


def test_degenerate_mask_has_no_ring():
    m = np.zeros((20, 20), bool)
    m[5, 5] = True
    r = mask_ring(m)
    assert r.points is None and r.dropped == 1


# ------------------------------------------------------------------ YOLO-seg / detect exports
def test_yolo_seg_export_read_back(tmp_path, stores):
    split = split_for(stores, ["train", "val", "test"], tmp_path / "split.json")
    out = tmp_path / "ds"
    assert main(["export", *map(str, stores), "--format", "yolo-seg", "--out", str(out),
                 "--split", str(split)]) == 0
    doc, sides = read_dataset(out)
    assert doc["names"] == {0: "bright", 1: "dark", 2: "ring"}  # sorted union, dense from 0
    assert doc["train"] == "images/train" and doc["val"] == "images/val" and doc["test"] == "images/test"
    assert "path" not in doc  # sides are relative to data.yaml's folder: the dataset can move
    # each store on its own side: a video's frames never on two sides
    assert {s for s in sides["train"]} == {f"clip0_{f:06d}" for f in (0, 2, 4)}
    assert {s for s in sides["val"]} == {f"clip1_{f:06d}" for f in (0, 2, 4)}
    assert set(sides["test"]) == {"cars", "groceries", "truck"}
    names = ["bright", "dark", "ring"]
    for side, path in zip(("train", "val", "test"), stores):
        masks = store_masks(path)
        with AnnotationStore.open(path, readonly=True) as s:
            media = s.media
            stem_of = {f: (Path(media.frame_name(f)).stem if media.frame_names else
                           f"{Path(media.name).stem}_{f:06d}") for f in media.frames}
        for f, by_label in masks.items():
            rows = sides[side][stem_of[f]]
            assert len(rows) == len(by_label)
            img = cv2.imread(str(next((out / "images" / side).glob(stem_of[f] + ".*"))))
            h, w = img.shape[:2]
            for cls, values in rows:
                assert len(values) >= 6 and len(values) % 2 == 0
                assert min(values) >= 0 and max(values) <= 1
                assert iou(fill(values, w, h), by_label[names[cls]]) >= 0.98
    summary = json.loads((out / "dl_utils_export.json").read_text())
    assert summary["images"] == {"train": 3, "val": 3, "test": 3}
    # the photos were copied as they are (already JPEG), the video frames encoded
    assert (out / "images/test/truck.jpg").read_bytes() == (stores_dir(stores[2]) / "truck.jpg").read_bytes()
    assert summary["copied_images"] == 3 and summary["encoded_images"] == 6


def stores_dir(store: Path) -> Path:
    with AnnotationStore.open(store, readonly=True) as s:
        return Path(s.media.path)


def test_split_made_by_dataset_split_drives_the_sides(tmp_path, stores):
    """The split file `dl-utils dataset split` writes puts each video wholly on one side."""
    split = tmp_path / "split.json"
    assert main(["dataset", "split", *map(str, stores), "--ratios", "0.5,0.5", "--out", str(split)]) == 0
    out = tmp_path / "ds"
    assert main(["export", *map(str, stores), "--format", "yolo-detect", "--out", str(out),
                 "--split", str(split)]) == 0
    _, sides = read_dataset(out)
    s = Split.load(split)
    for k, clip in enumerate(("clip0", "clip1")):
        on = {side for side, stems in sides.items() if any(st.startswith(clip + "_") for st in stems)}
        with AnnotationStore.open(stores[k], readonly=True) as st:
            assert on == {s.side(next(iter(frame_groups(st).values())))}  # one side, the split's
    assert sum(len(v) for v in sides.values()) == 9


def test_yolo_detect_boxes_equal_and_class_table_order(tmp_path, stores):
    table = tmp_path / "classes.csv"
    table.write_text("name,synonyms\nring,\ndark,shadow\nlight,bright\n")  # 'bright' by synonym
    out = tmp_path / "det"
    assert main(["export", str(stores[0]), str(stores[2]), "--format", "yolo-detect", "--out", str(out),
                 "--classes", str(table), "--image-format", "png"]) == 0
    doc, sides = read_dataset(out)
    assert doc["names"] == {0: "ring", 1: "dark", 2: "light"}  # table order, dense from 0
    assert doc["val"] == "images/train" and set(sides) == {"train"}  # no split: all train
    ids = {"ring": 0, "dark": 1, "bright": 2}
    for path in (stores[0], stores[2]):
        with AnnotationStore.open(path, readonly=True) as s:
            media = s.media
            label = {o.id: o.label for o in s.objects()}
            for f, insts in s.iter_frames():
                stem = Path(media.frame_name(f)).stem if media.frame_names else f"clip0_{f:06d}"
                w, h = media.size_of(f)
                assert (out / "images/train" / f"{stem}.png").is_file()  # re-encoded as asked
                want = sorted((ids[label[i.object_id]], *(np.array(
                    [(b[0] + b[2]) / 2 / w, (b[1] + b[3]) / 2 / h, (b[2] - b[0]) / w, (b[3] - b[1]) / h]
                ))) for i in insts for b in [box_from_mask(i.mask)])
                got = sorted((c, *v) for c, v in sides["train"][stem])
                assert len(got) == len(want)
                for g, e in zip(got, want):
                    assert g[0] == e[0] and np.allclose(g[1:], e[1:], atol=1e-6)


def test_stored_polygons_and_boxes_are_written_as_they_are(tmp_path, clips):
    store = make_store(tmp_path / "s.sqlite", clips[0], shapes=("polygon", "box", "mask"))
    out = tmp_path / "ds"
    export_yolo([AnnotationStore.open(store, readonly=True)], out, YoloOptions(task="segment"))
    _, sides = read_dataset(out)
    with AnnotationStore.open(store, readonly=True) as s:
        for f, insts in s.iter_frames():
            rows = dict(sides["train"][f"clip0_{f:06d}"])
            for i in insts:
                if i.shape is ShapeType.POLYGON:
                    want = np.array(i.polygon[0]).reshape(-1, 2) / (W, H)
                    assert np.allclose(np.array(rows[0]).reshape(-1, 2), want, atol=1e-6)
                elif i.shape is ShapeType.BOX:
                    x1, y1, x2, y2 = i.box
                    assert np.allclose(rows[1], [x1 / W, y1 / H, x2 / W, y1 / H, x2 / W, y2 / H,
                                                 x1 / W, y2 / H], atol=1e-6)


def test_dry_run_counts_and_writes_nothing(tmp_path, stores, capsys):
    split = split_for(stores, ["train", "val", "test"], tmp_path / "split.json")
    out = tmp_path / "ds"
    args = ["export", *map(str, stores), "--format", "yolo-seg", "--out", str(out), "--split", str(split)]
    capsys.readouterr()
    assert main([*args, "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not out.exists() and plan["dry_run"] is True
    assert main([*args, "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert plan["images"] == done["images"] == {"train": 3, "val": 3, "test": 3}
    assert plan["instances"] == done["instances"] and plan["names"] == done["names"]
    assert main([*args[:-2], "--dry-run", "--include-empty"]) == 0
    assert "would export 3 store(s) as yolo-seg" in capsys.readouterr().out


def test_include_empty_writes_background_images(tmp_path, stores):
    out = tmp_path / "ds"
    assert main(["export", str(stores[0]), "--format", "yolo-detect", "--out", str(out),
                 "--include-empty", "--json"]) == 0
    _, sides = read_dataset(out)
    assert len(sides["train"]) == 6  # frames 0..5, odd ones empty
    assert all(sides["train"][f"clip0_{f:06d}"] == [] for f in (1, 3, 5))
    assert len(list((out / "images/train").iterdir())) == 6
    # exported again into the same folder: replaced whole, the background images do not linger
    assert main(["export", str(stores[0]), "--format", "yolo-detect", "--out", str(out)]) == 0
    assert sorted(p.stem for p in (out / "images/train").iterdir()) == [f"clip0_{f:06d}" for f in (0, 2, 4)]
    assert sorted(read_dataset(out)[1]["train"]) == [f"clip0_{f:06d}" for f in (0, 2, 4)]


def test_picture_names_unique_across_stores_and_link(tmp_path, clips, pictures):
    """Two videos with the same name (in two folders) and two image sets with the same file names:
    later ones get _2, in the order the stores are given; --link hard-links the photos."""
    stores = []
    for k in range(2):
        d = tmp_path / f"cam{k}"
        d.mkdir()
        shutil.copy(clips[k], d / "clip.mp4")
        shutil.copytree(pictures, d / "photos")
        stores += [make_store(d / "v.sqlite", d / "clip.mp4"), make_store(d / "p.sqlite", d / "photos")]
    out = tmp_path / "ds"
    assert main(["export", *map(str, stores), "--format", "yolo-detect", "--out", str(out), "--link"]) == 0
    names = sorted(p.name for p in (out / "images/train").iterdir())
    assert names == sorted([f"clip_{f:06d}{s}.jpg" for f in (0, 2, 4) for s in ("", "_2")]
                           + [f"{n}{s}.jpg" for n in ("cars", "groceries", "truck") for s in ("", "_2")])
    # the second camera's frames are its own pictures, not the first one's
    first, second = (cv2.imread(str(out / "images/train" / n)) for n in ("clip_000000.jpg", "clip_000000_2.jpg"))
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 5
    assert (out / "images/train/truck_2.jpg").stat().st_ino == (tmp_path / "cam1/photos/truck.jpg").stat().st_ino
    assert len(list((out / "labels/train").iterdir())) == 12


def test_video_is_decoded_once_front_to_back(tmp_path, stores, monkeypatch):
    """No seek, no random access: the export reads the video with one streaming decoder."""
    from dl_utils.video_utils.video import VideoSource

    calls = []
    orig = VideoSource._iter

    def counted(self, numbers):
        calls.append(numbers)
        return orig(self, numbers)

    def refuse(self, n):
        raise AssertionError("random access during export")

    monkeypatch.setattr(VideoSource, "_iter", counted)
    monkeypatch.setattr(VideoSource, "_read", refuse)
    export_yolo([AnnotationStore.open(stores[0], readonly=True)], tmp_path / "ds", YoloOptions())
    assert len(calls) == 1


# ------------------------------------------------------------------ bad input
def test_label_missing_from_the_table_names_it(tmp_path, stores, capsys):
    table = tmp_path / "classes.csv"
    table.write_text("name\nring\ndark\n")
    err = fails(["export", str(stores[0]), "--format", "yolo-seg", "--out", str(tmp_path / "x"),
                 "--classes", str(table)], capsys)
    assert re.search(r"label 'bright' of .*a\.sqlite is not in the class table .*classes\.csv", err)
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match="label 'bright'"):
        export_yolo([AnnotationStore.open(stores[0], readonly=True)], tmp_path / "x",
                    YoloOptions(classes=ClassTable.load(table)))


def test_unknown_split_group_is_one_line(tmp_path, stores, capsys):
    split = split_for(stores[:1], ["train"], tmp_path / "split.json")
    err = fails(["export", str(stores[0]), str(stores[1]), "--format", "yolo-seg", "--out",
                 str(tmp_path / "x"), "--split", str(split)], capsys)
    assert re.search(r"b\.sqlite: frame group '.*clip1\.mp4' is not in the split .*split\.json", err)


def test_degenerate_polygon_skipped_and_counted_or_strict(tmp_path, clips, capsys):
    store = tmp_path / "s.sqlite"
    src = open_frames(clips[0])
    with AnnotationStore.create(store, src.media_info()) as s:
        s.add_object("dot", id=1)
        s.add_object("blob", id=2)
        dot = np.zeros((H, W), bool)
        dot[10, 10] = True
        blob = np.zeros((H, W), bool)
        blob[20:40, 30:60] = True
        s.write_frame(0, [Instance(1, mask=dot), Instance(2, mask=blob)])
    out = tmp_path / "ds"
    assert main(["export", str(store), "--format", "yolo-seg", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["degenerate_skipped"] == 1 and summary["instances"]["train"] == 1
    before = (out / "labels/train/clip0_000000.txt").read_text()
    err = fails(["export", str(store), "--format", "yolo-seg", "--out", str(out), "--strict"], capsys)
    assert "frame 0, object 1: its polygon has fewer than 3 points" in err
    # the failed export left the earlier one as it was, and no temporary folder behind
    assert (out / "labels/train/clip0_000000.txt").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_nothing_to_export_is_one_line_and_leaves_the_earlier_export(tmp_path, clips, stores, capsys):
    empty = tmp_path / "empty.sqlite"
    AnnotationStore.create(empty, open_frames(clips[0]).media_info()).close()
    out = tmp_path / "ds"
    assert main(["export", str(stores[0]), "--format", "yolo-detect", "--out", str(out)]) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert "nothing to export: no frame of" in fails(
        ["export", str(empty), "--format", "yolo-seg", "--out", str(out)], capsys)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    split = split_for([empty], ["train"], tmp_path / "split.json")
    assert "nothing to export: no frame of" in fails(
        ["export", str(empty), "--format", "coco", "--split", str(split), "--out", str(tmp_path / "c")], capsys)
    assert not (tmp_path / "c").exists()


def test_several_stores_refused_by_single_store_formats(tmp_path, stores, capsys):
    assert "--format coco writes one store (2 given)" in fails(
        ["export", str(stores[0]), str(stores[1]), "--format", "coco", "--out", str(tmp_path / "x.json")], capsys)
    assert "--classes apply to --format yolo-detect" in fails(
        ["export", str(stores[0]), "--format", "cvat-video", "--out", str(tmp_path / "x.xml"),
         "--classes", "t.csv"], capsys)
    assert "--shape does not apply to --format yolo-seg" in fails(
        ["export", str(stores[0]), "--format", "yolo-seg", "--out", str(tmp_path / "y"), "--shape", "box"],
        capsys)


def test_store_without_media_path_or_media_file(tmp_path, clips, capsys):
    import dataclasses

    media = open_frames(clips[0]).media_info()
    for name, path in (("nopath", None), ("gone", str(tmp_path / "gone.mp4"))):
        store = tmp_path / f"{name}.sqlite"
        with AnnotationStore.create(store, dataclasses.replace(media, path=path)) as s:
            s.add_object("thing", id=1)
            s.write_frame(0, [Instance(1, box=(1.0, 2.0, 30.0, 40.0))])
        err = fails(["export", str(store), "--format", "yolo-detect", "--out", str(tmp_path / name)], capsys)
        assert ("its media record has no path" if path is None else "gone.mp4") in err
        assert not (tmp_path / name).exists()
        assert main(["export", str(store), "--format", "yolo-detect", "--out", str(tmp_path / name),
                     "--dry-run", "--json"]) == 0  # the plan says so instead of stopping
        assert "is not there; the export would stop at it" in " ".join(json.loads(capsys.readouterr().out)["notes"])


def test_export_store_points_to_export_yolo(tmp_path, stores):
    from dl_utils.formats import export_store

    with AnnotationStore.open(stores[0], readonly=True) as s:
        with pytest.raises(InputError, match=r"yolo-seg is a dataset of one or more stores: use export_yolo"):
            export_store(s, "yolo-seg", tmp_path / "x")


def test_export_refuses_a_folder_of_other_files(tmp_path, stores, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert "holding other files" in fails(["export", str(stores[0]), "--format", "yolo-seg", "--out", str(out)],
                                          capsys)
    assert (out / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------ import and round trip
@pytest.mark.parametrize("fmt", ["yolo-seg", "yolo-detect"])
def test_round_trip_export_import_export(tmp_path, stores, fmt):
    first, second = tmp_path / "one", tmp_path / "two"
    assert main(["export", str(stores[0]), str(stores[2]), "--format", fmt, "--out", str(tmp_path / "orig")]) == 0
    # moved since (data.yaml's absolute path is gone) into a folder whose name holds glob characters
    shutil.move(tmp_path / "orig", first := tmp_path / "moved [1]")
    back = tmp_path / "back.sqlite"
    assert main(["import", str(first), "--format", "yolo", "--out", str(back), "--split", "train"]) == 0
    with AnnotationStore.open(back, readonly=True) as s:
        assert [lb.name for lb in s.labels()] == ["bright", "dark", "ring"]
        kinds = {i.shape for _, insts in s.iter_frames() for i in insts}
        assert kinds == ({ShapeType.POLYGON} if fmt == "yolo-seg" else {ShapeType.BOX})
    assert main(["export", str(back), "--format", fmt, "--out", str(second)]) == 0
    a = {p.relative_to(first): p.read_text() for p in (first / "labels").rglob("*.txt")}
    b = {p.relative_to(second): p.read_text() for p in (second / "labels").rglob("*.txt")}
    assert a == b and len(a) == 6
    assert yaml.safe_load((first / "data.yaml").read_text())["names"] == \
        yaml.safe_load((second / "data.yaml").read_text())["names"]


def test_import_all_sides_and_bad_rows(tmp_path, stores, capsys):
    split = split_for(stores, ["train", "val", "test"], tmp_path / "split.json")
    ds = tmp_path / "ds"
    main(["export", *map(str, stores), "--format", "yolo-detect", "--out", str(ds), "--split", str(split)])
    back = tmp_path / "all.sqlite"
    assert main(["import", str(ds), "--out", str(back)]) == 0  # a folder: YOLO by auto
    with AnnotationStore.open(back, readonly=True) as s:
        assert len(s.media.frames) == 9
        assert s.media.frame_names[0].split("/")[0] in ("test", "train", "val")
    (ds / "images/extra").mkdir()
    shutil.copy(next((ds / "images/train").iterdir()), ds / "images/extra/stray.jpg")
    assert "images/extra holds images but is no side data.yaml names" in fails(
        ["import", str(ds), "--out", str(tmp_path / "bad.sqlite")], capsys)
    assert main(["import", str(ds), "--out", str(tmp_path / "val.sqlite"), "--split", "val"]) == 0
    (ds / "labels/train/clip0_000000.txt").write_text("0 0.5 0.5 0.2\n")
    assert "clip0_000000.txt line 1: 3 values after the class" in fails(
        ["import", str(ds), "--out", str(tmp_path / "bad.sqlite"), "--split", "train"], capsys)
    (ds / "labels/train/clip0_000000.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    assert "line 1: class 7 is not in data.yaml's names" in fails(
        ["import", str(ds), "--out", str(tmp_path / "bad.sqlite"), "--split", "train"], capsys)
    with pytest.raises(FormatError, match="class 7"):
        import_yolo(ds, AnnotationStore.create(tmp_path / "direct.sqlite"), split="train")
    assert not (tmp_path / "bad.sqlite").exists()


# ------------------------------------------------------------------ COCO per split
def test_coco_per_split(tmp_path, stores):
    from pycocotools import mask as mask_utils

    split = split_for(stores, ["train", "val", "train"], tmp_path / "split.json")
    out = tmp_path / "coco"
    assert main(["export", *map(str, stores), "--format", "coco", "--split", str(split),
                 "--out", str(out), "--json"]) == 0
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["instances_train.json",
                                                                        "instances_val.json"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["train", "val"]
    val = json.loads((out / "annotations/instances_val.json").read_text())
    assert [c["name"] for c in val["categories"]] == ["bright", "dark", "ring"]
    assert {im["file_name"] for im in val["images"]} == {f"clip1_{f:06d}.jpg" for f in (0, 2, 4)}
    masks = store_masks(stores[1])
    names = {c["id"]: c["name"] for c in val["categories"]}
    for a in val["annotations"]:
        im = next(i for i in val["images"] if i["id"] == a["image_id"])
        assert (out / "images/val" / im["file_name"]).is_file()
        m = mask_utils.decode(a["segmentation"]).astype(bool)
        assert np.array_equal(m, masks[im["frame"]][names[a["category_id"]]])


# ------------------------------------------------------------------ Ultralytics' own reader
@pytest.mark.parametrize("fmt,task", [("yolo-seg", "segment"), ("yolo-detect", "detect")])
def test_ultralytics_reads_the_export(tmp_path, stores, monkeypatch, fmt, task):
    """Ultralytics' own dataset checker and loader accept the export, every row, offline.

    Installed without its dependencies (``pip install --no-deps ultralytics``: with them it would
    replace opencv-python-headless by opencv-python); skipped where it is absent."""
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics-settings"))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    pytest.importorskip("ultralytics")
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    split = split_for(stores, ["train", "val", "test"], tmp_path / "split.json")
    out = tmp_path / "ds"
    main(["export", *map(str, stores), "--format", fmt, "--out", str(out), "--split", str(split)])
    data = check_det_dataset(str(out / "data.yaml"), autodownload=False)
    assert data["names"] == {0: "bright", 1: "dark", 2: "ring"} and data["nc"] == 3
    _, sides = read_dataset(out)
    for side in ("train", "val", "test"):
        ds = YOLODataset(img_path=data[side], data=data, task=task, augment=False, imgsz=224)
        labels = ds.get_labels()
        assert len(labels) == 3  # no image dropped as corrupt
        for lb in labels:
            rows = sides[side][Path(lb["im_file"]).stem]
            assert lb["cls"].reshape(-1).astype(int).tolist() == [c for c, _ in rows]
            if task == "segment":
                assert [len(sg) for sg in lb["segments"]] == [len(v) // 2 for _, v in rows]
            else:
                assert np.allclose(lb["bboxes"], [v for _, v in rows], atol=1e-6)
