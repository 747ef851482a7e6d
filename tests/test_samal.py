"""dl_utils.samal: exact parity with upstream SAM2ImagePredictor / SAM2AutomaticMaskGenerator,
the embedding cache, refinement and input validation (tiny config, 256 px, random weights, CPU)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dl_utils.annotations import Clicks, Source, box_from_mask
from dl_utils.errors import InputError
from tests.sam2_fixtures import (  # noqa: F401  (fixtures)
    raw_image_predictor,
    requires_sam2,
    test_image,
    tiny_sam2,
)

pytestmark = requires_sam2

H, W = 120, 160
IMG = test_image(H, W, seed=0)
IMG2 = test_image(H, W, seed=1)


@pytest.fixture(scope="module")
def raw(tiny_sam2):
    """Upstream predictor on the same network, image set once."""
    p = raw_image_predictor(tiny_sam2)
    p.set_image(IMG)
    return p


@pytest.fixture
def seg(tiny_sam2):
    from dl_utils.samal import ImageSegmenter

    s = ImageSegmenter(tiny_sam2)
    s.set_image(IMG)
    return s


def _pts(*p):
    a = np.array(p, dtype=np.float64)
    return a[:, :2], a[:, 2].astype(np.int32)


def _assert_same(inst, mask, score):
    assert inst.mask.dtype == np.bool_ and inst.mask.shape == (H, W)
    assert np.array_equal(inst.mask, mask.astype(bool))
    assert inst.score == float(score)
    assert inst.box == box_from_mask(inst.mask)
    assert 0 < inst.mask.sum() < H * W  # the comparison is not between two trivial masks


# ----------------------------------------------------------------------------- parity
def test_single_point_is_best_of_multimask(seg, raw):
    inst = seg.predict([[50, 60, 1]], object_id=4)
    m, s, _ = raw.predict(*_pts([50, 60, 1]), multimask_output=True)
    assert m.shape == (3, H, W)
    _assert_same(inst, m[np.argmax(s)], s[np.argmax(s)])
    assert inst.object_id == 4 and inst.source == Source.SEMI_AUTO
    assert inst.clicks == Clicks(points=((50.0, 60.0, 1),), multimask=True)
    prov = inst.provenance
    assert (prov.engine, prov.model, prov.precision) == ("sam2-image", "sam2.1_hiera_tiny", str(seg.dtype)[6:])
    assert prov.checkpoint is None or len(prov.checkpoint) == 64  # the loader's sha256, or unknown


def test_positive_and_negative_points(seg, raw):
    pts = [[50, 60, 1], [120.5, 30.25, 0], [20, 100, 1]]
    inst = seg.predict(pts)
    m, s, _ = raw.predict(*_pts(*pts), multimask_output=False)
    _assert_same(inst, m[0], s[0])
    assert inst.clicks.points == ((50.0, 60.0, 1), (120.5, 30.25, 0), (20.0, 100.0, 1))


def test_box_and_box_with_points(seg, raw):
    box = [30, 20, 110, 90]
    inst = seg.predict(box=box, object_id=1)
    m, s, _ = raw.predict(box=np.array(box, dtype=float), multimask_output=False)
    _assert_same(inst, m[0], s[0])
    assert inst.clicks.box == (30.0, 20.0, 110.0, 90.0) and inst.clicks.multimask is False
    inst = seg.predict([[60, 50, 1], [100, 80, 0]], box=box, object_id=2)
    m, s, _ = raw.predict(*_pts([60, 50, 1], [100, 80, 0]), box=np.array(box, float), multimask_output=False)
    _assert_same(inst, m[0], s[0])


def test_box_past_the_border_is_clipped(seg, raw):
    inst = seg.predict(box=[-5.5, 10, W + 3, H + 0.5])
    m, s, _ = raw.predict(box=np.array([0, 10, W, H], float), multimask_output=False)
    _assert_same(inst, m[0], s[0])
    assert inst.clicks.box == (0.0, 10.0, float(W), float(H))


def test_multimask_override(seg, raw):
    one = seg.predict([[50, 60, 1]], multimask=False, object_id=1)
    m, s, _ = raw.predict(*_pts([50, 60, 1]), multimask_output=False)
    _assert_same(one, m[0], s[0])
    two = seg.predict([[50, 60, 1], [140, 110, 0]], multimask=True, object_id=2)
    m, s, _ = raw.predict(*_pts([50, 60, 1], [140, 110, 0]), multimask_output=True)
    _assert_same(two, m[np.argmax(s)], s[np.argmax(s)])


def test_refinement_feeds_previous_logits(seg, raw):
    first = seg.predict([[50, 60, 1]], object_id=7)
    m, s, low = raw.predict(*_pts([50, 60, 1]), multimask_output=True)
    best = np.argmax(s)
    assert np.array_equal(seg.low_res_logits(7), low[best][None])
    # the next click of object 7 refines it: all clicks + the previous best logits, single output
    second = seg.predict([[50, 60, 1], [90, 40, 0]], object_id=7)
    m2, s2, low2 = raw.predict(*_pts([50, 60, 1], [90, 40, 0]), mask_input=low[best][None], multimask_output=False)
    _assert_same(second, m2[0], s2[0])
    assert second.clicks.mask == "previous" and first.clicks.mask is None
    # refine=False (or forget) starts from the clicks alone
    third = seg.predict([[50, 60, 1], [90, 40, 0]], object_id=7, refine=False)
    m3, s3, _ = raw.predict(*_pts([50, 60, 1], [90, 40, 0]), multimask_output=False)
    _assert_same(third, m3[0], s3[0])
    seg.forget(7)
    assert 7 not in seg.object_ids
    fourth = seg.predict([[50, 60, 1], [90, 40, 0]], object_id=7)
    assert np.array_equal(fourth.mask, third.mask) and fourth.clicks.mask is None


def test_explicit_mask_inputs(seg, raw):
    _, s, low = raw.predict(*_pts([70, 70, 1]), multimask_output=True)
    logits = low[np.argmax(s)]
    inst = seg.predict([[70, 70, 1], [10, 10, 0]], mask=logits, object_id=3)  # (64, 64) logits
    m, s2, _ = raw.predict(*_pts([70, 70, 1], [10, 10, 0]), mask_input=logits[None], multimask_output=False)
    _assert_same(inst, m[0], s2[0])
    assert inst.clicks.mask == "given"
    # a bool mask of the image size: converted to logits as SAM2Base does for mask prompts
    prev = np.zeros((H, W), bool)
    prev[30:90, 40:120] = True
    inst = seg.predict(box=[40, 30, 120, 90], mask=prev, object_id=5)
    small = cv2.resize(prev.astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA)
    m, s3, _ = raw.predict(box=np.array([40, 30, 120, 90], float), mask_input=(small * 20 - 10)[None],
                           multimask_output=False)
    _assert_same(inst, m[0], s3[0])
    # a mask alone is a valid prompt
    only = seg.predict(mask=prev, object_id=6)
    m, s4, _ = raw.predict(mask_input=(small * 20 - 10)[None], multimask_output=False)
    assert np.array_equal(only.mask, m[0].astype(bool)) and only.score == float(s4[0])


def test_multi_object_batches_by_prompt_structure(seg, raw):
    res = seg.predict_objects(
        {
            1: {"points": [[30, 30, 1]]},
            2: {"points": [[120, 90, 1]]},
            5: {"box": [10, 50, 80, 115]},
            9: {"points": [[100, 20, 1], [60, 60, 0]]},
        }
    )
    assert res.object_ids.tolist() == [1, 2, 5, 9]
    # objects 1 and 2 share one batched decoder call, exactly as upstream's batched predict
    m, s, _ = raw.predict(np.array([[[30, 30]], [[120, 90]]], float), np.array([[1], [1]]), multimask_output=True)
    assert m.shape == (2, 3, H, W)
    for row, inst in enumerate(res[:2]):
        b = np.argmax(s[row])
        _assert_same(inst, m[row, b], s[row, b])
    m, s, _ = raw.predict(box=np.array([10, 50, 80, 115], float), multimask_output=False)
    _assert_same(res[2], m[0], s[0])
    m, s, _ = raw.predict(*_pts([100, 20, 1], [60, 60, 0]), multimask_output=False)
    _assert_same(res[3], m[0], s[0])
    assert sorted(seg.object_ids) == [1, 2, 5, 9]


def test_detector_boxes_in_one_batch(seg, raw):
    boxes = np.array([[10, 10, 60, 50], [40, 30, 150, 110], [0, 0, W, H], [90, 60, 130, 100], [5, 70, 45, 118]], float)
    res = seg.predict_boxes(boxes, object_ids=[11, 12, 13, 14, 15], scores=[0.9, 0.8, 0.7, 0.6, 0.5])
    m, s, _ = raw.predict(box=boxes, multimask_output=False)
    assert m.shape == (5, 1, H, W)
    for i, inst in enumerate(res):
        _assert_same(inst, m[i, 0], s[i, 0])
        assert inst.source == Source.AUTO and inst.clicks.box == tuple(boxes[i].tolist())
    assert res.object_ids.tolist() == [11, 12, 13, 14, 15]
    assert [i.provenance.detector_score for i in res] == [0.9, 0.8, 0.7, 0.6, 0.5]
    # chunked: each chunk is one upstream call
    chunked = seg.predict_boxes(boxes, batch_size=2)
    assert chunked.object_ids.tolist() == [1, 2, 3, 4, 5]
    for start in (0, 2, 4):
        m, s, _ = raw.predict(box=boxes[start : start + 2], multimask_output=False)
        m, s = m.reshape(-1, H, W), s.reshape(-1)
        for j in range(len(s)):
            _assert_same(chunked[start + j], m[j], s[j])
    assert len(seg.predict_boxes(np.zeros((0, 4)))) == 0


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script inside upstream's own predictor
def test_segment_everything_matches_upstream(tiny_sam2):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from dl_utils.samal import ImageSegmenter
    from dl_utils.sam2_loader import bb_feat_sizes

    params = dict(points_per_side=6, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                  box_nms_thresh=1.0)  # keep every candidate: random weights make near-duplicates
    img = test_image(96, 128, seed=3)
    seg = ImageSegmenter(tiny_sam2)
    res = seg.segment_everything(img, **params)
    amg = SAM2AutomaticMaskGenerator(tiny_sam2, **params)
    amg.predictor._bb_feat_sizes = bb_feat_sizes(256)  # upstream needs this fix at 256 px too
    ref = amg.generate(img)
    assert len(res) == len(ref) == 6 * 6 * 3
    for k, (inst, r) in enumerate(zip(res, ref)):
        assert inst.object_id == k + 1 and inst.source == Source.AUTO
        assert np.array_equal(inst.mask, r["segmentation"])
        assert inst.score == r["predicted_iou"]
        assert inst.provenance.engine == "sam2-image" and inst.clicks is None
        assert inst.provenance.extra["point"] == [float(v) for v in r["point_coords"][0]]
        assert inst.provenance.extra["stability_score"] == r["stability_score"]
    assert seg.cache_info()["misses"] == 1  # the grid reused the embedding set_image computed
    with pytest.raises(InputError, match="output_mode"):
        seg.segment_everything(output_mode="coco_rle")
    with pytest.raises(InputError, match="segment_everything options"):
        seg.segment_everything(points_per_side=None)


# ----------------------------------------------------------------------------- cache
def test_cache_hit_skips_the_encoder(tiny_sam2, monkeypatch):
    from dl_utils.samal import ImageSegmenter

    calls = []
    original = tiny_sam2.forward_image
    monkeypatch.setattr(tiny_sam2, "forward_image", lambda x: calls.append(x.shape) or original(x))
    seg = ImageSegmenter(tiny_sam2)
    assert seg.set_image(IMG) is False and len(calls) == 1
    a = seg.predict([[50, 60, 1]], object_id=1, refine=False)
    assert seg.set_image(IMG2) is False and len(calls) == 2
    assert seg.set_image(IMG.copy()) is True and len(calls) == 2  # same content, another array
    b = seg.predict([[50, 60, 1]], object_id=1, refine=False)
    assert np.array_equal(a.mask, b.mask) and a.score == b.score
    changed = IMG.copy()
    changed[0, 0, 0] ^= 1
    assert seg.set_image(changed) is False and len(calls) == 3  # one pixel differs: a new entry
    assert seg.set_image(IMG, key=("img", 0)) is False  # a caller key replaces the content hash
    assert seg.set_image(IMG2, key=("img", 0)) is True and len(calls) == 4
    info = seg.cache_info()
    assert info["hits"] == 2 and info["misses"] == 4 and info["entries"] == 4


def test_cache_is_bounded(tiny_sam2):
    from dl_utils.samal import ImageSegmenter

    imgs = [test_image(H, W, seed=10 + i) for i in range(4)]
    seg = ImageSegmenter(tiny_sam2, cache_size=2)
    for im in imgs[:3]:
        seg.set_image(im)
    info = seg.cache_info()
    assert info["entries"] == 2 and info["evictions"] == 1
    assert seg.set_image(imgs[0]) is False  # evicted (least recently used)
    assert seg.set_image(imgs[2]) is True
    per_entry = seg.cache.nbytes // len(seg.cache)
    assert per_entry == 4 * (256 * 16 * 16 + 32 * 64 * 64 + 64 * 32 * 32)  # fp32 features at 256 px
    seg = ImageSegmenter(tiny_sam2, cache_size=100, cache_bytes=int(2.5 * per_entry))
    for im in imgs:
        seg.set_image(im)
    assert len(seg.cache) == 2 and seg.cache.nbytes <= 2.5 * per_entry
    seg = ImageSegmenter(tiny_sam2, cache_size=0)
    seg.set_image(imgs[0])
    assert seg.set_image(imgs[0]) is False and len(seg.cache) == 0
    with pytest.raises(InputError, match="cache_size"):
        ImageSegmenter(tiny_sam2, cache_size=-1)


def test_changing_image_drops_refinement_state(seg):
    seg.predict([[50, 60, 1]], object_id=3)
    seg.set_image(IMG)  # same image: kept
    assert seg.object_ids == [3]
    seg.set_image(IMG2)
    assert seg.object_ids == []


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(points=[[W, 10, 1]]), r"object 2: point 0 \(160, 10\) lies outside the 160x120 image"),
        (dict(points=[[5, -1, 1]]), r"object 2: point 0 .* lies outside"),
        (dict(points=[[5, 5, 1], [6, 6, 2]]), "object 2: point 1 has label 2; use 1 for the object, 0 for background"),
        (dict(points=[[5, 5]]), r"object 2: points have shape \(1, 2\); give \[\[x, y, label\]"),
        (dict(points=[[np.nan, 5, 1]]), "object 2: points contain NaN"),
        (dict(points="abc"), "object 2: points 'abc' is not numeric"),
        (dict(), "object 2: empty prompt; give points"),
        (dict(points=[]), "object 2: empty prompt"),
        (dict(box=[50, 50, 40, 80]), r"object 2: box .* is empty or inverted"),
        (dict(box=[200, 10, 300, 50]), r"object 2: box .* lies outside the 160x120 image"),
        (dict(box=[1, 2, 3]), r"object 2: box .* is not \(x1, y1, x2, y2\)"),
        (dict(mask=np.zeros((10, 10), bool)), "object 2: mask is 10x10 but the image is 160x120"),
        (dict(mask=np.zeros((H, W), np.float32)), r"object 2: mask of shape \(120, 160\) and dtype float32"),
        (dict(points=[[5, 5, 1]], multimask="sometimes"), "object 2: multimask='sometimes'"),
    ],
)
def test_bad_prompts_name_object_and_field(seg, kwargs, pattern):
    with pytest.raises(InputError, match=pattern):
        seg.predict(object_id=2, **kwargs)


def test_other_bad_input(tiny_sam2, seg):
    from dl_utils.samal import ImageSegmenter

    fresh = ImageSegmenter(tiny_sam2)
    with pytest.raises(InputError, match="no image set: call set_image"):
        fresh.predict([[1, 1, 1]])
    for bad in (IMG[..., 0], IMG.astype(np.float32), np.dstack([IMG, IMG[..., :1]])):
        with pytest.raises(InputError, match="RGB image as an HxWx3 uint8 array.*cvtColor"):
            fresh.set_image(bad)
    with pytest.raises(InputError, match="unknown object id 42: no prediction for it"):
        seg.forget(42)
    with pytest.raises(InputError, match="unknown object id 42"):
        seg.low_res_logits(42)
    for oid in (-1, "a", 1.5, True):
        with pytest.raises(InputError, match="is not an integer >= 0"):
            seg.predict([[1, 1, 1]], object_id=oid)
    with pytest.raises(InputError, match=r"object 3: unknown prompt field\(s\) \['point'\]"):
        seg.predict_objects({3: {"point": [[1, 1, 1]]}})
    with pytest.raises(InputError, match="object 3: prompt must be a dict"):
        seg.predict_objects({3: [[1, 1, 1]]})
    with pytest.raises(InputError, match="object id 'x' is not an integer"):
        seg.predict_objects({"x": {"points": [[1, 1, 1]]}})
    with pytest.raises(InputError, match=r"boxes have shape \(2, 3\)"):
        seg.predict_boxes(np.zeros((2, 3)))
    with pytest.raises(InputError, match="2 boxes but 1 object ids"):
        seg.predict_boxes([[0, 0, 5, 5], [1, 1, 6, 6]], object_ids=[1])
    with pytest.raises(InputError, match="2 boxes but 3 scores"):
        seg.predict_boxes([[0, 0, 5, 5], [1, 1, 6, 6]], scores=[1, 2, 3])
    with pytest.raises(InputError, match=r"object 2: box .* is empty or inverted"):
        seg.predict_boxes([[0, 0, 5, 5], [6, 6, 1, 1]])
    with pytest.raises(InputError, match="image_size=512 differs"):
        ImageSegmenter(tiny_sam2, image_size=512)
    with pytest.raises(InputError, match="checkpoint= and device= only apply"):
        ImageSegmenter(tiny_sam2, device="cpu")
    with pytest.raises(InputError, match="multimask="):
        ImageSegmenter(tiny_sam2, multimask="yes")
    with pytest.raises(InputError, match="not a SAM2 network"):
        ImageSegmenter(object())
