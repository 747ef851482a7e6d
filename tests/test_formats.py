"""dl_utils.formats: CVAT XML (video, images), COCO and PNG masks; round trips, references, bad input."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from dl_utils.annotations import Instance, Label, MediaInfo, Provenance, ShapeType, Source
from dl_utils.cv_utils import box_to_mask, color_for_index, mask_to_polygons, polygons_to_mask
from dl_utils.errors import FormatError, InputError
from dl_utils.formats import detect_format, export_store, import_file
from dl_utils.store import AnnotationStore

H, W = 48, 64
FRAMES = list(range(3, 23, 2))  # start=3, step=2: 10 frames, source numbers 3..21


def blob(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    """A random star-ish blob (irregular outline) around (cx, cy)."""
    y, x = np.mgrid[0:H, 0:W]
    ang = np.arctan2(y - cy, x - cx)
    k = rng.uniform(0.1, 0.3, size=3)
    rad = r * (1 + k[0] * np.sin(3 * ang + k[1] * 10) + k[2] * np.cos(5 * ang))
    return np.hypot(x - cx, y - cy) <= rad


@pytest.fixture
def rich(tmp_path, rng):
    """A store with masks (holes, two components), multi-ring polygons, fractional boxes and gaps.

    Returns (path, expected) where expected[(frame, object_id)] = (shape, mask, polygon, box).
    """
    path = tmp_path / "rich.sqlite"
    media = MediaInfo(name="clip.mp4", width=W, height=H, frames=FRAMES, fps=25.0, start=3,
                      stop=FRAMES[-1], step=2)
    exp: dict[tuple[int, int], tuple] = {}
    with AnnotationStore.create(path, media) as st:
        st.set_labels([Label("car", "#ff0000"), Label("person", "#00ff00"),
                       Label("dog", "#0000ff", superclass="animal")])
        car = st.add_object("car")  # 1: masks, some with a hole, gap on frames 4-5
        person = st.add_object("person")  # 2: polygons, two rings on odd k
        truck = st.add_object("car")  # 3: boxes with fractional coordinates
        dog = st.add_object("dog", id=7)  # 7: two-component masks on the last frames only
        for k, f in enumerate(FRAMES):
            insts = []
            if k in (4, 5):
                insts.append(Instance(car.id, mask=np.zeros((H, W), bool)))
            else:
                m = blob(rng, 12 + 2 * k, 14, 7)
                if k % 3 == 0:
                    m &= ~blob(rng, 12 + 2 * k, 14, 2.5)  # a hole
                insts.append(Instance(car.id, mask=m, score=0.5 + k / 40))
                exp[(f, car.id)] = (ShapeType.MASK, m, None, None)
            rings = mask_to_polygons(blob(rng, 45 - k, 32, 6))
            if k % 2:
                rings = rings + [[2.0, 40.0, 8.0, 40.0, 8.0, 46.0, 2.0, 46.0]]
            pm = polygons_to_mask(rings, H, W)
            insts.append(Instance(person.id, mask=pm, polygon=rings, source=Source.MANUAL))
            exp[(f, person.id)] = (ShapeType.POLYGON, pm, rings, None)
            if k != 7:  # a gap of one frame
                box = (30.25 + k, 2.5, 40.75 + k, 11.0)
                insts.append(Instance(truck.id, box=box, source=Source.MANUAL, keyframe=True))
                exp[(f, truck.id)] = (ShapeType.BOX, None, None, box)
            if k >= 6:
                m = blob(rng, 8, 38, 4) | blob(rng, 24, 40, 3)
                insts.append(Instance(dog.id, mask=m, source=Source.SEMI_AUTO, score=0.9))
                exp[(f, dog.id)] = (ShapeType.MASK, m, None, None)
            st.write_frame(f, insts)
    return path, exp


def round_trip(src: Path, fmt: str, tmp_path: Path, **opts) -> tuple[Path, AnnotationStore, dict]:
    out = tmp_path / {"coco": "out.json"}.get(fmt, "out.xml")
    with AnnotationStore.open(src, readonly=True) as st:
        assert export_store(st, fmt, out, **opts) == out
    back = AnnotationStore.create(tmp_path / f"back_{fmt}.sqlite")
    summary = import_file(out, back)
    return out, back, summary


def check_same(back: AnnotationStore, exp: dict, fmt: str) -> None:
    got = {}
    for frame, insts in back.iter_frames():
        for inst in insts.visible():
            got[(frame, inst.object_id)] = inst
    assert sorted(got) == sorted(exp), fmt
    for key, (shape, mask, rings, box) in exp.items():
        inst = got[key]
        assert inst.shape is shape, (fmt, key)
        if shape is ShapeType.BOX:
            assert inst.box == pytest.approx(box, abs=0.005), (fmt, key)
            continue
        assert np.array_equal(inst.mask, mask), (fmt, key)  # bit for bit
        if shape is ShapeType.POLYGON:
            assert len(inst.polygon) == len(rings)
            for a, b in zip(inst.polygon, rings):
                assert a == pytest.approx(b, abs=0.005)


@pytest.mark.parametrize("fmt", ["cvat-video", "cvat-images", "coco"])
def test_round_trip_bit_exact(rich, tmp_path, fmt):
    src, exp = rich
    _, back, summary = round_trip(src, fmt, tmp_path)
    with back:
        check_same(back, exp, fmt)
        assert {o.id: o.label for o in back.objects()} == {1: "car", 2: "person", 3: "car", 7: "dog"}
        assert [lb.name for lb in back.labels()] == ["car", "person", "dog"]
        assert back.labels()[0].color == "#ff0000"
        m = back.media
        assert (m.frames, m.start, m.step, m.width, m.height) == (FRAMES, 3, 2, W, H)
        assert m.frame_names is None
        assert summary["format"] == ("coco" if fmt == "coco" else "cvat")
        assert summary["instances"] == len(exp)
        if fmt == "coco":  # COCO keeps scores, sources and keyframe flags per instance
            assert back.read_frame(3).by_object()[1].score == pytest.approx(0.5)
            assert back.read_frame(3).by_object()[3].keyframe is True
            assert back.read_frame(21).by_object()[7].source is Source.SEMI_AUTO


def test_frame_range_and_object_selection(rich, tmp_path):
    src, exp = rich
    _, back, _ = round_trip(src, "cvat-video", tmp_path, start=7, stop=13, objects=[2, 7])
    with back:
        assert back.media.frames == [7, 9, 11, 13]
        check_same(back, {k: v for k, v in exp.items() if 7 <= k[0] <= 13 and k[1] in (2, 7)}, "range")


def test_shape_option_converts_geometry(rich, tmp_path):
    src, exp = rich
    _, back, _ = round_trip(src, "cvat-images", tmp_path, shape="mask")
    with back:
        for (f, oid), (shape, mask, rings, box) in exp.items():
            inst = back.read_frame(f).by_object()[oid]
            assert inst.shape is ShapeType.MASK
            ref = mask if mask is not None else box_to_mask(box, H, W)
            assert np.array_equal(inst.mask, ref)
    _, back, _ = round_trip(src, "coco", tmp_path, shape="polygon")
    with back:
        for (f, oid), (shape, mask, rings, box) in exp.items():
            inst = back.read_frame(f).by_object()[oid]
            assert inst.shape is ShapeType.POLYGON
            if shape is ShapeType.MASK:  # holes filled: polygons have none
                assert np.array_equal(inst.mask, polygons_to_mask(mask_to_polygons(mask), H, W))
    _, back, _ = round_trip(src, "cvat-video", tmp_path, shape="box")
    with back:
        inst = back.read_frame(3).by_object()[1]
        assert inst.shape is ShapeType.BOX and inst.mask is None
        ys, xs = np.nonzero(exp[(3, 1)][1])
        assert inst.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_cvat_video_layout_matches_server(rich, tmp_path):
    """Meta, absolute frame numbers, outside after a gap, mask tracks of one shape, rle/box values."""
    src, exp = rich
    out = tmp_path / "v.xml"
    with AnnotationStore.open(src, readonly=True) as st:
        export_store(st, "cvat-video", out)
    root = ET.parse(out).getroot()
    task = root.find("meta/task")
    assert root.find("version").text == "1.1"
    assert (task.find("size").text, task.find("mode").text) == ("10", "interpolation")
    assert (task.find("start_frame").text, task.find("stop_frame").text) == ("3", "21")
    assert task.find("frame_filter").text == "step=2"
    assert task.find("original_size/width").text == str(W)
    assert [lb.find("name").text for lb in task.findall("labels/label")] == ["car", "person", "dog"]
    tracks = root.findall("track")
    box_tracks = [t for t in tracks if t.find("box") is not None]
    assert len(box_tracks) == 1
    boxes = box_tracks[0].findall("box")
    assert [b.get("frame") for b in boxes] == [str(f) for f in FRAMES[:7]] + ["17", "19", "21"]
    assert [b.get("outside") for b in boxes] == ["0"] * 7 + ["1", "0", "0"]  # k=7 (frame 17) gone
    assert all(b.get("keyframe") == "1" for b in boxes)
    assert list(boxes[0].attrib) == ["frame", "keyframe", "outside", "occluded", "xtl", "ytl", "xbr",
                                     "ybr", "z_order"]
    assert (boxes[0].get("xtl"), boxes[0].get("xbr")) == ("30.25", "40.75")
    assert box_tracks[0].get("group_id") == "3" and box_tracks[0].get("source") == "manual"
    masks = [t for t in tracks if t.find("mask") is not None]
    car = [t for t in masks if t.get("group_id") == "1"]
    assert len(car) == 8  # one track per visible mask frame, as the server exports shapes
    first = car[0].findall("mask")
    assert [(m.get("frame"), m.get("outside")) for m in first] == [("3", "0"), ("5", "1")]
    dog_last = [t for t in masks if t.get("group_id") == "7"][-1].findall("mask")
    assert len(dog_last) == 1 and dog_last[0].get("frame") == "21"  # no outside past the end
    m0 = first[0]
    ref = exp[(3, 1)][1]
    ys, xs = np.nonzero(ref)
    left, top, w, h = (int(m0.get(k)) for k in ("left", "top", "width", "height"))
    assert (left, top, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    runs = [int(v) for v in m0.get("rle").split(", ")]
    assert sum(runs) == w * h
    from cvat_sdk.masks import encode_mask  # the SDK's encoder is the reference for CVAT points

    assert runs == [int(v) for v in encode_mask(ref, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])[:-4]]
    person = [t for t in tracks if t.get("group_id") == "2"]
    assert len(person) == 2  # ring 0 and the extra ring of odd frames
    assert [p.get("outside") for p in person[1].findall("polygon")][:2] == ["0", "1"]


def test_cvat_images_layout(rich, tmp_path):
    src, exp = rich
    out = tmp_path / "i.xml"
    with AnnotationStore.open(src, readonly=True) as st:
        export_store(st, "cvat-images", out)
    root = ET.parse(out).getroot()
    images = root.findall("image")
    assert [im.get("id") for im in images] == [str(f) for f in FRAMES]
    assert images[0].get("name") == "frame_000003"
    assert (images[0].get("width"), images[0].get("height")) == (str(W), str(H))
    im1 = images[1]  # k=1: car mask, person 2 rings, truck box
    assert [c.tag for c in im1] == ["mask", "polygon", "polygon", "box"]
    assert [c.get("group_id") for c in im1] == ["1", "2", "2", "3"]
    assert list(im1[0].attrib)[:3] == ["label", "source", "occluded"]


def test_pycocotools_reads_every_annotation(rich, tmp_path):
    from pycocotools.coco import COCO

    src, exp = rich
    out = tmp_path / "coco.json"
    with AnnotationStore.open(src, readonly=True) as st:
        export_store(st, "coco", out, shape="mask")
    coco = COCO(str(out))
    assert len(coco.getImgIds()) == len(FRAMES)
    assert len(coco.getAnnIds()) == len(exp)
    for ann in coco.loadAnns(coco.getAnnIds()):
        frame = coco.imgs[ann["image_id"]]["frame"]
        shape, mask, rings, box = exp[(frame, ann["attributes"]["track_id"])]
        ref = mask if mask is not None else box_to_mask(box, H, W)
        assert np.array_equal(coco.annToMask(ann).astype(bool), ref)
        assert ann["area"] == int(ref.sum()) and ann["iscrowd"] == 0
        ys, xs = np.nonzero(ref)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    cats = {c["name"]: c for c in coco.loadCats(coco.getCatIds())}
    assert cats["dog"]["supercategory"] == "animal"


def test_coco_geometry_kinds(rich, tmp_path):
    src, exp = rich
    out = tmp_path / "coco.json"
    with AnnotationStore.open(src, readonly=True) as st:
        export_store(st, "coco", out)
    doc = json.loads(out.read_text())
    by_track = {}
    for a in doc["annotations"]:
        by_track.setdefault(a["attributes"]["track_id"], []).append(a)
    assert all(isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], str)
               for a in by_track[1])
    assert all(isinstance(a["segmentation"], list) and a["segmentation"] for a in by_track[2])
    assert all(a["segmentation"] == [] and a["area"] == 10.5 * 8.5 for a in by_track[3])
    assert by_track[3][0]["bbox"] == [30.25, 2.5, 10.5, 8.5]
    assert doc["info"]["dl_utils"]["media"]["frames"] == FRAMES
    from pycocotools.coco import COCO

    coco = COCO(str(out))
    for a in by_track[1] + by_track[7]:  # RLE annotations of a default export are exact too
        frame = coco.imgs[a["image_id"]]["frame"]
        assert np.array_equal(coco.annToMask(a).astype(bool), exp[(frame, a["attributes"]["track_id"])][1])


def write_images(folder: Path, names: list[str]) -> None:
    """Frame files beside an annotation file: datumaro wants the dataset's images to exist."""
    folder.mkdir(parents=True, exist_ok=True)
    png = cv2.imencode(".png", np.zeros((H, W), np.uint8))[1].tobytes()
    for n in names:
        (folder / n).write_bytes(png)


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def _datumaro():
    try:
        import datumaro
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"datumaro is not importable here ({type(e).__name__}: {e}); pip install datumaro")
    return datumaro


def test_datumaro_imports_cvat_images(rich, tmp_path):
    dm = _datumaro()
    from datumaro.components.annotation import AnnotationType

    src, exp = rich
    out = tmp_path / "cvat_images" / "annotations.xml"
    with AnnotationStore.open(src, readonly=True) as st:
        export_store(st, "cvat-images", out)
    write_images(out.parent / "images", [f"frame_{f:06d}" for f in FRAMES])
    ds = dm.Dataset.import_from(str(out), "cvat")
    assert len(ds) == len(FRAMES)
    n = {t: 0 for t in (AnnotationType.mask, AnnotationType.polygon, AnnotationType.bbox)}
    for item in ds:
        frame = item.attributes["frame"]
        for ann in item.annotations:
            n[ann.type] += 1
            if ann.type == AnnotationType.mask:
                assert np.array_equal(ann.image.astype(bool), exp[(frame, ann.group)][1])
    polys = sum(len(v[2]) for v in exp.values() if v[0] is ShapeType.POLYGON)
    assert n[AnnotationType.polygon] == polys
    assert n[AnnotationType.bbox] == sum(1 for v in exp.values() if v[0] is ShapeType.BOX)
    assert n[AnnotationType.mask] == sum(1 for v in exp.values() if v[0] is ShapeType.MASK)


def test_datumaro_imports_cvat_video(rich, tmp_path):
    """Polygons and boxes in tracks. (datumaro 1.13 cannot read <mask> inside <track>: it needs an
    <image> for the frame size, so this export uses shape='polygon'.)"""
    dm = _datumaro()
    src, exp = rich
    out = tmp_path / "cvat_video" / "annotations.xml"
    with AnnotationStore.open(src, readonly=True) as st:
        export_store(st, "cvat-video", out, shape="polygon")
    ds = dm.Dataset.import_from(str(out), "cvat")
    n_items = len(ds)
    n_anns = sum(len(item.annotations) for item in ds)
    root = ET.parse(out).getroot()
    assert n_anns == len(root.findall("track/polygon"))  # datumaro keeps outside shapes too
    assert n_items == len({p.get("frame") for p in root.findall("track/polygon")})


def test_datumaro_imports_coco(rich, tmp_path):
    dm = _datumaro()
    from datumaro.components.annotation import AnnotationType

    src, exp = rich
    folder = tmp_path / "coco_ds"
    with AnnotationStore.open(src, readonly=True) as st:
        export_store(st, "coco", folder / "annotations" / "instances_default.json")
    write_images(folder / "images" / "default", [f"frame_{f:06d}" for f in FRAMES])
    ds = dm.Dataset.import_from(str(folder), "coco_instances")
    assert len(ds) == len(FRAMES)
    masks = polys = 0
    for item in ds:
        for ann in item.annotations:
            if ann.type == AnnotationType.mask:
                masks += 1
                tid = ann.attributes["track_id"]
                key = (FRAMES[item.attributes["id"] - 1], tid)
                assert np.array_equal(ann.image.astype(bool), exp[key][1])
            elif ann.type == AnnotationType.polygon:
                polys += 1
    assert masks == sum(1 for v in exp.values() if v[0] is ShapeType.MASK)
    assert polys == sum(len(v[2]) for v in exp.values() if v[0] is ShapeType.POLYGON)


def test_png_masks(rich, tmp_path):
    src, exp = rich
    out = tmp_path / "pngs"
    with AnnotationStore.open(src, readonly=True) as st:
        assert export_store(st, "png-masks", out) == out
    doc = json.loads((out / "objects.json").read_text())
    objs = {o["id"]: o for o in doc["objects"]}
    assert {o["id"]: o["value"] for o in doc["objects"]} == {1: 1, 2: 2, 3: 3, 7: 4}
    assert objs[7]["folder"] == "007_dog" and objs[7]["first"] == FRAMES[6] and objs[7]["last"] == 21
    for oid, o in objs.items():
        files = sorted((out / o["folder"]).glob("mask_*.png"))
        assert [p.name for p in files] == [f"mask_{f:04d}.png" for f in FRAMES]  # every media frame
        for f in FRAMES:
            img = cv2.imread(str(out / o["folder"] / f"mask_{f:04d}.png"), cv2.IMREAD_UNCHANGED)
            assert img.dtype == np.uint8 and img.ndim == 2 and set(np.unique(img)) <= {0, 255}
            e = exp.get((f, oid))
            ref = np.zeros((H, W), bool) if e is None else (e[1] if e[1] is not None else box_to_mask(e[3], H, W))
            assert np.array_equal(img == 255, ref), (oid, f)
    # index images: P mode, palette = object colours, higher id wins overlaps
    im = Image.open(out / "ids" / "ids_0021.png")
    assert im.mode == "P"
    pal = im.getpalette()
    for o in doc["objects"]:  # objects without a colour of their own get color_for_index(id)
        v = o["value"]
        assert "#%02x%02x%02x" % tuple(pal[3 * v : 3 * v + 3]) == o["color"] == color_for_index(o["id"])
    ids = np.array(im)
    expected = np.zeros((H, W), np.uint8)
    for oid in (1, 2, 3, 7):
        e = exp.get((21, oid))
        if e is not None:
            expected[e[1] if e[1] is not None else box_to_mask(e[3], H, W)] = objs[oid]["value"]
    assert np.array_equal(ids, expected)


def test_png_masks_visible_only_and_16bit(tmp_path):
    media = MediaInfo(name="many", width=40, height=30, frames=[0, 1, 2])
    with AnnotationStore.create(tmp_path / "many.sqlite", media) as st:
        insts = []
        for k in range(300):
            o = st.add_object("thing")
            m = np.zeros((30, 40), bool)
            m.flat[k] = True
            insts.append(Instance(o.id, mask=m))
        st.write_frame(1, insts)
        export_store(st, "png-masks", tmp_path / "out", sequence="visible", objects=range(1, 301))
    ids = cv2.imread(str(tmp_path / "out" / "ids" / "ids_0001.png"), cv2.IMREAD_UNCHANGED)
    assert ids.dtype == np.uint16 and ids.flat[299] == 300 and ids.flat[0] == 1
    assert sorted(p.name for p in (tmp_path / "out" / "001_thing").iterdir()) == ["mask_0001.png"]
    doc = json.loads((tmp_path / "out" / "objects.json").read_text())
    assert doc["index"]["mode"] == "I;16"


def test_png_masks_colors_from_objects(tmp_path):
    media = MediaInfo(name="c", width=8, height=8, frames=[0])
    with AnnotationStore.create(tmp_path / "c.sqlite", media) as st:
        a = st.add_object("a", color="#102030")
        b = st.add_object("b", color="#405060")
        m = np.zeros((8, 8), bool)
        m[2:6, 2:6] = True
        st.write_frame(0, [Instance(a.id, mask=m), Instance(b.id, mask=np.roll(m, 2, axis=1))])
        export_store(st, "png-masks", tmp_path / "o")
    im = Image.open(tmp_path / "o" / "ids" / "ids_0000.png")
    assert im.getpalette()[:9] == [0, 0, 0, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60]
    ids = np.array(im)
    assert ids[3, 3] == 1 and ids[3, 4] == 2 and ids[3, 7] == 2  # overlap: higher id wins


def test_image_set_keeps_file_names(tmp_path):
    names = ["cam/a.jpg", "cam/b.jpg", "cam/c.jpg"]
    media = MediaInfo(name="photos", width=12, height=10, frames=[0, 1, 2], frame_names=names)
    m = np.zeros((10, 12), bool)
    m[2:7, 3:9] = True
    with AnnotationStore.create(tmp_path / "p.sqlite", media) as st:
        o = st.add_object("cup")
        st.write_frame(1, [Instance(o.id, mask=m)])
    for fmt in ("cvat-images", "cvat-video", "coco"):
        _, back, _ = round_trip(tmp_path / "p.sqlite", fmt, tmp_path)
        with back:
            assert back.media.frames == [0, 1, 2]
            # CVAT for video has no <image> elements, so only the other two carry file names
            assert back.media.frame_names == (None if fmt == "cvat-video" else names)
            assert np.array_equal(back.read_frame(1)[0].mask, m)
    root = ET.parse(tmp_path / "out.xml").getroot()
    assert root.find("meta/task/mode").text == "annotation"


# --------------------------------------------------------------------------- foreign files
SERVER_LIKE = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>12</id><name>drive</name><size>5</size><mode>interpolation</mode>
      <start_frame>10</start_frame><stop_frame>14</stop_frame><frame_filter></frame_filter>
      <labels>
        <label><name>car</name><color>#fa3253</color><type>rectangle</type>
          <attributes><attribute><name>parked</name><input_type>checkbox</input_type></attribute></attributes>
        </label>
        <label><name>road</name><color>#33ddff</color><type>any</type><attributes/></label>
      </labels>
      <original_size><width>20</width><height>10</height></original_size>
    </task>
    <source>drive.mp4</source>
  </meta>
  <track id="0" label="car" source="manual">
    <box frame="10" keyframe="1" outside="0" occluded="0" xtl="1.00" ytl="1.00" xbr="5.00" ybr="5.00" z_order="0">
      <attribute name="parked">false</attribute>
    </box>
    <box frame="11" keyframe="0" outside="0" occluded="0" xtl="2.00" ytl="1.00" xbr="6.00" ybr="5.00" z_order="0"/>
    <box frame="12" keyframe="1" outside="1" occluded="0" xtl="2.00" ytl="1.00" xbr="6.00" ybr="5.00" z_order="0"/>
  </track>
  <track id="1" label="road" source="file">
    <mask frame="13" keyframe="1" outside="0" occluded="0" rle="3, 2, 2, 2" left="4" top="2" width="3" height="3" z_order="0"/>
  </track>
  <track id="2" label="road" source="auto">
    <points frame="10" keyframe="1" outside="0" occluded="0" points="1.00,1.00" z_order="0"/>
  </track>
</annotations>
"""


def test_import_server_style_video_xml(tmp_path):
    p = tmp_path / "task_12.xml"
    p.write_text(SERVER_LIKE)
    assert detect_format(p) == "cvat"
    with AnnotationStore.create(tmp_path / "s.sqlite") as st:
        s = import_file(p, st)
        assert s["skipped"] == {"points": 1} and s["objects"] == 2 and s["instances"] == 3
        m = st.media
        assert (m.name, m.frames, m.width, m.height, m.step) == ("drive.mp4", [10, 11, 12, 13, 14], 20, 10, 1)
        labels = {lb.name: lb for lb in st.labels()}
        assert labels["car"].color == "#fa3253" and labels["car"].attributes == ("parked",)
        assert labels["car"].type == "rectangle"
        car = st.read_object(1)
        assert sorted(car) == [10, 11]  # the outside shape is not an instance
        assert car[10].shape is ShapeType.BOX and car[10].box == (1, 1, 5, 5) and car[10].keyframe
        assert car[11].keyframe is False and car[10].source is Source.MANUAL
        road = st.read_object(2)[13]
        ref = np.zeros((10, 20), bool)
        ref[2:5, 4:7] = np.array([0, 0, 0, 1, 1, 0, 0, 1, 1], bool).reshape(3, 3)
        assert np.array_equal(road.mask, ref) and road.source is Source.MANUAL  # 'file' -> manual
        # a file's shapes are people's work: marked as imported, no clicks, no detector label
        for inst in (car[10], car[11], road):
            assert inst.provenance == Provenance(engine="import") and inst.provenance.from_person
            assert inst.clicks is None and inst.label is None


def test_import_images_xml_without_meta_and_append(tmp_path):
    xml = """<annotations><version>1.1</version>
      <image id="0" name="a/img1.jpg" width="10" height="8">
        <polygon label="cat" occluded="0" points="1,1;6,1;6,6"/>
        <box label="cat" occluded="0" xtl="0" ytl="0" xbr="2" ybr="2"/>
      </image>
      <image id="1" name="a/img2.jpg" width="10" height="8"/>
    </annotations>"""
    p = tmp_path / "imgs.xml"
    p.write_text(xml)
    with AnnotationStore.create(tmp_path / "s.sqlite") as st:
        s = import_file(p, st)
        assert s["objects"] == 2  # no group ids: one object per shape
        assert st.media.frame_names == ["a/img1.jpg", "a/img2.jpg"] and st.media.frames == [0, 1]
        s2 = import_file(p, st)  # appending the same file again: fresh ids, same media
        assert s2["object_ids"] == [3, 4]
        assert st.read_frame(0).object_ids.tolist() == [1, 2, 3, 4]


def test_import_foreign_coco(tmp_path):
    """External COCO: no frame field, no track ids, uncompressed RLE, polygon and bbox-only."""
    doc = {
        "images": [{"id": 5, "file_name": "b.jpg", "width": 4, "height": 3},
                   {"id": 2, "file_name": "a.jpg", "width": 4, "height": 3}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [
            {"id": 1, "image_id": 2, "category_id": 1, "segmentation": {"size": [3, 4], "counts": [1, 2, 9]},
             "bbox": [0, 1, 1, 2], "iscrowd": 1},
            {"id": 2, "image_id": 5, "category_id": 1, "segmentation": [[0, 0, 2, 0, 2, 2]], "bbox": [0, 0, 2, 2]},
            {"id": 3, "image_id": 5, "category_id": 1, "bbox": [1, 1, 2, 1]},
        ],
    }
    p = tmp_path / "ext.json"
    p.write_text(json.dumps(doc))
    with AnnotationStore.create(tmp_path / "s.sqlite") as st:
        s = import_file(p, st, format="coco")
        assert s["objects"] == 3
        m = st.media
        assert m.frames == [0, 1] and m.frame_names == ["a.jpg", "b.jpg"]  # image-id order
        f0 = st.read_frame(0)[0]
        ref = np.zeros((3, 4), bool)
        ref[1:3, 0] = True  # column-major counts: 1 background, 2 foreground
        assert np.array_equal(f0.mask, ref)
        f1 = st.read_frame(1).by_object()
        assert f1[2].shape is ShapeType.POLYGON and f1[3].shape is ShapeType.BOX
        assert f1[3].box == (1, 1, 3, 2)


# --------------------------------------------------------------------------- bad input
def _import_error(tmp_path: Path, name: str, text: str, fmt: str = "auto") -> str:
    p = tmp_path / name
    p.write_text(text)
    st = AnnotationStore.create(tmp_path / f"{name}.sqlite")
    with st, pytest.raises(FormatError) as ei:
        import_file(p, st, format=fmt)
    msg = str(ei.value)
    assert name in msg
    return msg


def test_truncated_xml(tmp_path):
    msg = _import_error(tmp_path, "cut.xml", SERVER_LIKE[: SERVER_LIKE.index("<track id=\"1\"") + 20])
    assert "line" in msg and "XML syntax error" in msg


def test_wrong_rle_length(tmp_path):
    bad = SERVER_LIKE.replace('rle="3, 2, 2, 2"', 'rle="3, 2, 2, 3"')
    msg = _import_error(tmp_path, "rle.xml", bad)
    assert f"line {line_of(bad, '<mask')}:" in msg and "track 1 frame 13" in msg and "10 pixels" in msg and "3*3 = 9" in msg


def test_unknown_label_and_bad_frame(tmp_path):
    msg = _import_error(tmp_path, "lab.xml", SERVER_LIKE.replace('label="road" source="file"', 'label="tree" source="file"'))
    assert "'tree'" in msg and f"line {line_of(SERVER_LIKE, '<mask')}:" in msg and "<labels>" in msg
    msg = _import_error(tmp_path, "fr.xml", SERVER_LIKE.replace('frame="13"', 'frame="40"'))
    assert "frame 40 is not part of the task" in msg


def test_mask_outside_frame_and_missing_attribute(tmp_path):
    msg = _import_error(tmp_path, "out.xml", SERVER_LIKE.replace('left="4"', 'left="19"'))
    assert "outside the 20x10 frame" in msg
    msg = _import_error(tmp_path, "attr.xml", SERVER_LIKE.replace('xtl="1.00" ', ""))
    assert "no 'xtl'" in msg and f"line {line_of(SERVER_LIKE, '<box')}:" in msg


def test_not_cvat_xml(tmp_path):
    p = tmp_path / "other.xml"
    p.write_text("<svg></svg>")
    with pytest.raises(FormatError, match="other.xml.*<svg>"):
        detect_format(p)
    p.write_text("hello")
    with pytest.raises(FormatError, match="neither XML"):
        detect_format(p)


def test_json_syntax_error(tmp_path):
    msg = _import_error(tmp_path, "c.json", '{"images": [],\n "annotations": [ }')
    assert "line 2, column" in msg and "JSON syntax error" in msg


def test_coco_missing_keys_and_bad_references(tmp_path):
    msg = _import_error(tmp_path, "m.json", json.dumps({"images": [], "annotations": []}))
    assert "'categories'" in msg
    base = {"images": [{"id": 1, "width": 4, "height": 3, "file_name": "a.jpg"}],
            "categories": [{"id": 1, "name": "x"}]}
    msg = _import_error(tmp_path, "n.json", json.dumps({**base, "annotations": [{"id": 9, "category_id": 1}]}))
    assert "annotation #0 (id 9)" in msg and "'image_id'" in msg
    msg = _import_error(tmp_path, "o.json", json.dumps(
        {**base, "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}]}))
    assert "category_id 3" in msg
    msg = _import_error(tmp_path, "p.json", json.dumps(
        {**base, "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                  "segmentation": {"size": [3, 4], "counts": [1, 2, 3]}}]}))
    assert "covers 6 pixels" in msg
    # images of different sizes are an image set of photos: imported, each at its own size
    q = tmp_path / "q.json"
    q.write_text(json.dumps(
        {**base, "images": base["images"] + [{"id": 2, "width": 5, "height": 3}], "annotations": []}))
    with AnnotationStore.create(tmp_path / "q.sqlite") as st:
        import_file(q, st)
        assert st.media.frame_sizes == [(4, 3), (5, 3)]


def test_import_into_store_of_other_media(rich, tmp_path):
    src, _ = rich
    out = tmp_path / "v.xml"
    with AnnotationStore.open(src, readonly=True) as st:
        export_store(st, "cvat-video", out)
    other = AnnotationStore.create(tmp_path / "o.sqlite", MediaInfo("x", 10, 10, [0, 1]))
    with other, pytest.raises(FormatError, match="64x48"):
        import_file(out, other)


def test_export_errors(rich, tmp_path):
    src, _ = rich
    with AnnotationStore.open(src, readonly=True) as st:
        with pytest.raises(InputError, match="cvat-video, cvat-images, coco, png-masks"):
            export_store(st, "yolo", tmp_path / "x")
        with pytest.raises(InputError, match="shape="):
            export_store(st, "coco", tmp_path / "x.json", shape="circle")
        with pytest.raises(InputError, match=r"\[99\]"):
            export_store(st, "coco", tmp_path / "x.json", objects=[99])
        with pytest.raises(InputError, match="no frame"):
            export_store(st, "coco", tmp_path / "x.json", start=100)
    with AnnotationStore.create(tmp_path / "nomedia.sqlite") as st, pytest.raises(InputError, match="set_media"):
        export_store(st, "coco", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------- per-frame sizes (issue 13)
MIXED = [(64, 48), (40, 30), (30, 50)]


@pytest.fixture
def mixed(tmp_path):
    """A store of three photos of different sizes: a mask, a polygon and a box on each."""
    path = tmp_path / "mixed.sqlite"
    media = MediaInfo(name="photos", width=64, height=48, frames=[0, 1, 2],
                      frame_names=["a.jpg", "b.jpg", "c.jpg"], frame_sizes=MIXED)
    exp = {}
    with AnnotationStore.create(path, media) as st:
        st.set_labels([Label("car", "#ff0000"), Label("person", "#00ff00")])
        car, person, sign = st.add_object("car"), st.add_object("person"), st.add_object("car")
        for f, (w, h) in enumerate(MIXED):
            m = np.zeros((h, w), bool)
            m[h // 4 : h - 2, w // 3 : w - 1] = True  # reaches the right edge of each image
            ring = [1.0, 1.0, w - 2.0, 1.0, w - 2.0, h / 2, 1.0, h / 2]
            box = (2.0, 3.0, w - 1.0, h - 1.0)
            st.write_frame(f, [Instance(car.id, mask=m),
                               Instance(person.id, polygon=[ring], mask=polygons_to_mask([ring], h, w)),
                               Instance(sign.id, box=box)])
            exp[f] = (m, polygons_to_mask([ring], h, w), box)
    return path, exp


def test_mixed_sizes_refused_by_cvat_video(mixed, tmp_path):
    """CVAT for video XML has one <original_size>: a mixed set would come back at the wrong size."""
    src, _ = mixed
    with AnnotationStore.open(src, readonly=True) as st:
        with pytest.raises(InputError, match="3 different sizes.*cvat-images or coco"):
            export_store(st, "cvat-video", tmp_path / "v.xml")
    assert not (tmp_path / "v.xml").exists() and not list(tmp_path.glob(".v.xml*"))


@pytest.mark.parametrize("fmt", ["cvat-images", "coco"])
def test_mixed_sizes_export_and_import_round_trip(mixed, tmp_path, fmt):
    src, exp = mixed
    out, back, _ = round_trip(src, fmt, tmp_path)
    if fmt == "cvat-images":
        root = ET.parse(out).getroot()
        assert [(int(i.get("width")), int(i.get("height"))) for i in root.iter("image")] == MIXED
    elif fmt == "coco":
        doc = json.loads(out.read_text())
        assert [(i["width"], i["height"]) for i in doc["images"]] == MIXED
        import pycocotools.mask as pm  # the RLE of each image has that image's size

        for a in doc["annotations"]:
            if isinstance(a["segmentation"], dict):
                w, h = MIXED[a["image_id"] - 1]
                assert a["segmentation"]["size"] == [h, w] and pm.decode(a["segmentation"]).shape == (h, w)
    with back:
        assert back.media.frame_sizes == MIXED
        for f, (m, pmask, box) in exp.items():
            insts = back.read_frame(f).by_object()
            assert np.array_equal(insts[1].mask, m), (fmt, f)
            assert np.array_equal(insts[2].mask, pmask), (fmt, f)
            assert insts[3].box == pytest.approx(box)


def test_mixed_sizes_without_dl_utils_meta(mixed, tmp_path):
    """A COCO file / CVAT images XML from another tool: the sizes come from the images alone."""
    src, exp = mixed
    with AnnotationStore.open(src, readonly=True) as st:
        export_store(st, "coco", tmp_path / "c.json")
        export_store(st, "cvat-images", tmp_path / "c.xml")
    doc = json.loads((tmp_path / "c.json").read_text())
    del doc["info"]["dl_utils"]
    (tmp_path / "c.json").write_text(json.dumps(doc))
    text = (tmp_path / "c.xml").read_text()
    start, end = text.index("<meta>"), text.index("</meta>") + len("</meta>")
    (tmp_path / "c.xml").write_text(text[:start] + text[end:])
    for name in ("c.json", "c.xml"):
        with AnnotationStore.create(tmp_path / f"{name}.sqlite") as st:
            import_file(tmp_path / name, st)
            assert st.media.frame_sizes == MIXED, name
            assert np.array_equal(st.read_frame(2).by_object()[1].mask, exp[2][0]), name


def test_mixed_sizes_png_masks_at_each_frame_size(mixed, tmp_path):
    src, exp = mixed
    out = tmp_path / "pngs"
    with AnnotationStore.open(src, readonly=True) as st:
        export_store(st, "png-masks", out)
    doc = json.loads((out / "objects.json").read_text())
    assert doc["media"]["frame_sizes"] == [list(s) for s in MIXED]
    for f, (w, h) in enumerate(MIXED):
        img = cv2.imread(str(out / "001_car" / f"mask_{f:04d}.png"), cv2.IMREAD_UNCHANGED)
        assert img.shape == (h, w) and np.array_equal(img == 255, exp[f][0])
        assert np.array(Image.open(out / "ids" / f"ids_{f:04d}.png")).shape == (h, w)


def test_mixed_sizes_range_export_and_append_check(mixed, tmp_path):
    src, _ = mixed
    with AnnotationStore.open(src, readonly=True) as st:
        export_store(st, "coco", tmp_path / "r.json", start=1, stop=2)
        export_store(st, "cvat-images", tmp_path / "r.xml")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [(i["width"], i["height"]) for i in doc["images"]] == MIXED[1:]
    # appending a file whose image 1 has another size than the store's image 1: refused by name
    other = MediaInfo(name="photos", width=64, height=48, frames=[0, 1, 2],
                      frame_names=["a.jpg", "b.jpg", "c.jpg"], frame_sizes=[(64, 48), (41, 30), (30, 50)])
    with AnnotationStore.create(tmp_path / "o.sqlite", other) as st:
        with pytest.raises(FormatError, match=r"frame 1 \(b.jpg\) is 40x30 but 41x30"):
            import_file(tmp_path / "r.xml", st)


# ---------------------------------------------------------------- impossible geometry (issue 13)
def _images_xml(shape: str, w: int = 64, h: int = 48) -> str:
    return (f"<annotations><version>1.1</version><image id='0' name='a.jpg' width='{w}' height='{h}'>"
            f"{shape}</image></annotations>")


@pytest.mark.parametrize("shape, needles", [
    ("<box label='car' xtl='5000' ytl='2' xbr='-300' ybr='9'/>", ["inverted", "xbr < xtl", "image 0", "<box>"]),
    ("<box label='car' xtl='5' ytl='20' xbr='30' ybr='9'/>", ["inverted", "ybr < ytl"]),
    ("<box label='car' xtl='5000' ytl='2' xbr='6000' ybr='9'/>", ["entirely outside", "64x48"]),
    ("<box label='car' xtl='-50' ytl='-40' xbr='-10' ybr='-1'/>", ["entirely outside"]),
    ("<polygon label='car' points='100,1;120,1;120,20'/>", ["polygon", "entirely outside"]),
])
def test_cvat_impossible_boxes_refused(tmp_path, shape, needles):
    msg = _import_error(tmp_path, "bad.xml", _images_xml(shape))
    assert msg.startswith("bad.xml line 1: ")
    for n in needles:
        assert n in msg, (n, msg)


def test_cvat_impossible_box_in_track_refused(tmp_path):
    text = ("<annotations><version>1.1</version><meta><task><size>3</size><start_frame>0</start_frame>"
            "<original_size><width>64</width><height>48</height></original_size></task></meta>"
            "<track id='4' label='car'><box frame='2' keyframe='1' outside='0' xtl='5000' ytl='1'"
            " xbr='-300' ybr='5'/></track></annotations>")
    msg = _import_error(tmp_path, "t.xml", text)
    assert "track 4 frame 2" in msg and "inverted" in msg


def test_partly_outside_box_is_kept_as_drawn(tmp_path):
    p = tmp_path / "ok.xml"
    p.write_text(_images_xml("<box label='car' xtl='-5' ytl='2' xbr='70' ybr='9'/>"))
    with AnnotationStore.create(tmp_path / "ok.sqlite") as st:
        import_file(p, st)
        assert st.read_frame(0)[0].box == (-5.0, 2.0, 70.0, 9.0)


@pytest.mark.parametrize("ann, needles", [
    ({"bbox": [10, 5, -4, 3]}, ["negative width", "annotation #0 (id 1) on image 1"]),
    ({"bbox": [10, 5, 4, -3]}, ["negative height"]),
    ({"bbox": [500, 5, 4, 3]}, ["entirely outside", "4x3"]),
    ({"segmentation": [[50, 50, 60, 50, 60, 60]]}, ["polygon", "entirely outside"]),
])
def test_coco_impossible_boxes_refused(tmp_path, ann, needles):
    doc = {"images": [{"id": 1, "width": 4, "height": 3, "file_name": "a.jpg"}],
           "categories": [{"id": 1, "name": "x"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, **ann}]}
    msg = _import_error(tmp_path, "c.json", json.dumps(doc))
    assert msg.startswith("c.json: ")
    for n in needles:
        assert n in msg, (n, msg)
