from __future__ import annotations

import numpy as np
import pytest

from dl_utils.annotations import (
    Clicks,
    CvatOrigin,
    Instance,
    Instances,
    Label,
    MediaInfo,
    ObjectInfo,
    Provenance,
    ShapeType,
    Source,
    box_from_mask,
    color_to_rgb,
    normalize_color,
    split_legacy_prompts,
)
from dl_utils.errors import InputError, MaskError


def test_box_from_mask_is_exclusive_and_none_when_empty():
    m = np.zeros((10, 12), bool)
    assert box_from_mask(m) is None
    m[3, 4] = True
    assert box_from_mask(m) == (4.0, 3.0, 5.0, 4.0)
    m[7, 9] = True
    assert box_from_mask(m) == (4.0, 3.0, 10.0, 8.0)


def test_instance_derives_box_shape_and_emptiness():
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:6] = 1
    i = Instance(1, mask=m)
    assert i.mask.dtype == bool and i.box == (3.0, 2.0, 6.0, 5.0) and i.area == 9
    assert i.shape is ShapeType.MASK and not i.is_empty and i.source is Source.AUTO
    assert Instance(1, mask=np.zeros((4, 4))).is_empty
    b = Instance(2, box=(1, 1, 3, 4))
    assert b.shape is ShapeType.BOX and b.area == 6 and not b.is_empty
    p = Instance(3, polygon=[[0, 0, 4, 0, 4, 4]])
    assert p.shape is ShapeType.POLYGON
    assert Instance(4, source="semi-auto").source is Source.SEMI_AUTO


def test_instance_errors_name_object_and_sizes():
    with pytest.raises(MaskError, match="object 5: mask has shape"):
        Instance(5, mask=np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match="unknown instance source 'robot'"):
        Instance(1, source="robot")
    with pytest.raises(MaskError, match="frame 9, object 1: mask is 3x2 but the frame is 4x4"):
        Instance(1, mask=np.zeros((2, 3))).check_size(4, 4, frame=9)


def test_instances_vector_views():
    m = np.zeros((6, 8), bool)
    m[1:3, 2:4] = True
    fr = Instances([Instance(7, mask=m, score=0.5), Instance(2, box=(0, 0, 2, 2)),
                    Instance(3, mask=np.zeros((6, 8)))], frame=4)
    assert fr.object_ids.tolist() == [7, 2, 3]
    assert np.isnan(fr.boxes[2]).all() and fr.boxes[0].tolist() == [2, 1, 4, 3]
    assert np.isnan(fr.scores[1]) and fr.scores[0] == 0.5
    stack = fr.masks(6, 8)
    assert stack.shape == (3, 6, 8) and stack[1, :2, :2].all() and stack[1].sum() == 4
    assert fr.visible().object_ids.tolist() == [7, 2]
    assert set(fr.by_object()) == {7, 2, 3}
    assert len(fr[:2]) == 2
    with pytest.raises(InputError, match="frame 4: object 7 appears twice"):
        Instances([Instance(7), Instance(7)], frame=4)


def test_colors():
    assert normalize_color("#ABC") == "#aabbcc"
    assert normalize_color("ff0000") == "#ff0000"
    assert normalize_color((0, 128, 255)) == "#0080ff"
    assert color_to_rgb("#0080ff") == (0, 128, 255)
    for bad in ("red", "#12345", (1, 2), (0, 0, 300)):
        with pytest.raises(InputError):
            normalize_color(bad)


def test_label_and_object_validation():
    assert Label("car", (255, 0, 0)).color == "#ff0000"
    with pytest.raises(InputError):
        Label(" ")
    with pytest.raises(InputError, match="negative"):
        ObjectInfo(id=-1, label="x")


def test_media_info_numbering_and_roundtrip():
    m = MediaInfo(name="v.mp4", width=10, height=8, frames=[5, 8, 11], start=5, stop=11, step=3)
    assert m.task_index(8) == 1
    with pytest.raises(InputError, match="frame 6 is not part of 'v.mp4'"):
        m.task_index(6)
    assert m.frame_name(11) == "frame_000011"
    assert MediaInfo.from_dict(m.to_dict()) == m
    imgs = MediaInfo(name="imgs", width=4, height=4, frames=[0, 1], frame_names=["a.jpg", "b.jpg"])
    assert imgs.frame_name(1) == "b.jpg"
    with pytest.raises(InputError):
        MediaInfo(name="x", width=0, height=4, frames=[0])
    with pytest.raises(InputError, match="2 frame names for 1 frames"):
        MediaInfo(name="x", width=4, height=4, frames=[0], frame_names=["a", "b"])


def test_clicks_provenance_and_cvat_origin_round_trip_through_json():
    import json

    clicks = Clicks(points=[[1, 2.5, 1], (3, 4, 0)], box=[0, 1, 10, 12], mask="previous", refined=True,
                    multimask=False)
    assert clicks.points == ((1.0, 2.5, 1), (3.0, 4.0, 0)) and clicks.box == (0.0, 1.0, 10.0, 12.0)
    assert Clicks.from_json(json.loads(json.dumps(clicks.to_json()))) == clicks
    assert Clicks().to_json() == {} and Clicks().is_empty and not Clicks(mask="given").is_empty
    origin = CvatOrigin("https://cvat.example", "7", [41, 44], [3])
    assert (origin.task, origin.shapes, origin.tracks) == (7, (41, 44), (3,))
    assert CvatOrigin.from_json(json.loads(json.dumps(origin.to_json()))) == origin
    prov = Provenance(engine="sam2-video", model="tiny", checkpoint="ab" * 32, direction="forward",
                      object_score=3, area=12.0, precision="bfloat16", cvat=origin, extra={"k": [1, "x"]})
    assert isinstance(prov.object_score, float) and prov.area == 12 and isinstance(prov.area, int)
    d = json.loads(json.dumps(prov.to_json()))
    assert Provenance.from_json(d) == prov and "caption" not in d  # None fields are left out
    assert Provenance().to_json() == {} and prov.from_person and not Provenance(engine="sam2-image").from_person
    # a field a newer writer added survives a round trip (in extra) instead of failing the read
    assert Provenance.from_json({"engine": "x", "future": 1}).extra == {"future": 1}
    with pytest.raises(InputError, match="is not"):
        Clicks(box=(1, 2, 3))


@pytest.mark.parametrize("old, label, clicks, prov", [
    (None, None, None, None),
    ({}, None, None, None),
    ({"points": [[1.0, 2.0, 1]], "multimask": True, "model": "tiny"},
     None, Clicks(points=((1, 2, 1),), multimask=True), Provenance(model="tiny")),
    ({"mask": "given", "model": "m", "object_score": 1.5, "area": 9},
     None, Clicks(mask="given"), Provenance(model="m", object_score=1.5, area=9)),
    ({"model": "m", "direction": "backward", "object_score": -1.0, "area": 0},
     None, None, Provenance(engine="sam2-video", model="m", direction="backward", object_score=-1.0, area=0)),
    ({"text": "red car", "label": "car", "prompt": "red car . dog .", "box": [1.0, 2.0, 3.0, 4.0],
      "detector_score": 0.5, "detector": "gd"},
     "car", Clicks(box=(1, 2, 3, 4)),
     Provenance(detector="gd", caption="red car . dog .", phrase="red car", detector_score=0.5)),
    ({"text": "red car . dog .", "label": "dog"}, "dog", None, Provenance(caption="red car . dog .")),
    ({"cvat": {"host": "h", "task": 3, "shapes": [1], "tracks": []}},
     None, None, Provenance(engine="cvat", cvat=CvatOrigin("h", 3, (1,)))),
    ({"point": [1.0, 2.0], "stability_score": 0.9, "crop_box": [0, 0, 4, 4], "model": "m",
      "mode": "segment_everything"},
     None, None, Provenance(engine="sam2-image", model="m",
                            extra={"point": [1.0, 2.0], "stability_score": 0.9, "crop_box": [0, 0, 4, 4],
                                   "mode": "segment_everything"})),
])
def test_split_legacy_prompts_reads_every_old_producers_dict(old, label, clicks, prov):
    assert split_legacy_prompts(old) == (label, clicks, prov)
    inst = Instance(1, box=(0, 0, 1, 1), label=label, clicks=clicks, provenance=prov)
    # the legacy view gives a dict that splits back to the same typed fields
    assert split_legacy_prompts(inst.prompts) == (label, clicks, prov)


def test_prompts_is_a_read_only_view():
    with pytest.raises(TypeError):
        Instance(1, prompts={"points": [[1, 2, 1]]})  # type: ignore[call-arg]
    inst = Instance(1, box=(0, 0, 1, 1), clicks=Clicks(points=((1, 2, 1),)))
    assert inst.prompts == {"points": [[1.0, 2.0, 1]]}
    with pytest.raises(AttributeError):
        inst.prompts = {}  # type: ignore[misc]
