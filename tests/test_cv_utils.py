"""dl_utils.cv_utils: RLE codecs against cvat-sdk and pycocotools, geometry, overlays, contact sheets."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from cvat_sdk.masks import decode_mask as sdk_decode
from cvat_sdk.masks import encode_mask as sdk_encode
from pycocotools import mask as coco

from dl_utils.annotations import Instance, Instances, ObjectInfo, box_from_mask, color_to_rgb
from dl_utils.cv_utils import (
    box_iou,
    box_to_mask,
    coco_rle_area,
    coco_rle_box,
    color_for_index,
    contact_sheet,
    decode_coco_rle,
    decode_cvat_rle,
    decode_cvat_rle_array,
    draw_overlay,
    encode_coco_rle,
    encode_cvat_rle,
    encode_cvat_rle_array,
    load_image,
    mask_area,
    mask_iou,
    mask_to_box,
    mask_to_polygons,
    masks_iou,
    polygons_to_mask,
    resize_mask,
    save_image,
)
from dl_utils.errors import MaskError, MediaError

# pycocotools' own decode (used here only as the reference) trips a NumPy 2 deprecation warning
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

# ------------------------------------------------------------------------------------------------
# mask corpus


def _blobs(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    for _ in range(n):
        center = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4)))
        axes = (int(rng.integers(0, max(1, w // 2))), int(rng.integers(0, max(1, h // 2))))
        cv2.ellipse(m, center, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
    return m.astype(bool)


def _corpus() -> list[tuple[str, np.ndarray]]:
    """~200 masks: noise, blobs, empty, full, corner pixels, single rows/columns, edge-touching."""
    rng = np.random.default_rng(20240601)
    out: list[tuple[str, np.ndarray]] = []
    for h, w in [(1, 1), (1, 7), (7, 1), (5, 9), (48, 64), (37, 53)]:
        out.append((f"empty {h}x{w}", np.zeros((h, w), bool)))
        out.append((f"full {h}x{w}", np.ones((h, w), bool)))
        for y, x in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]:
            m = np.zeros((h, w), bool)
            m[y, x] = True
            out.append((f"pixel ({x},{y}) {h}x{w}", m))
        r = np.zeros((h, w), bool)
        r[h // 2] = True
        out.append((f"row {h}x{w}", r))
        c = np.zeros((h, w), bool)
        c[:, w // 2] = True
        out.append((f"column {h}x{w}", c))
    for i in range(60):
        h, w = (int(v) for v in rng.integers(2, 70, 2))
        out.append((f"noise {i}", rng.random((h, w)) < rng.uniform(0.02, 0.98)))
    for i in range(60):
        h, w = (int(v) for v in rng.integers(8, 90, 2))
        out.append((f"blobs {i}", _blobs(rng, h, w, int(rng.integers(1, 5)))))
    for i in range(32):  # rectangles touching one or more edges
        h, w = (int(v) for v in rng.integers(3, 60, 2))
        m = np.zeros((h, w), bool)
        y1, y2 = sorted(int(v) for v in rng.integers(0, h + 1, 2))
        x1, x2 = sorted(int(v) for v in rng.integers(0, w + 1, 2))
        if i % 3 == 0:
            y1 = 0
        if i % 3 == 1:
            x2 = w
        if i % 5 == 0:
            y2 = h
        m[y1:y2, x1:x2] = True
        out.append((f"rect {i}", m))
    return out


CORPUS = _corpus()
IDS = [name for name, _ in CORPUS]


def test_corpus_size():
    assert len(CORPUS) >= 200
    assert any(not m.any() for _, m in CORPUS) and any(m.all() for _, m in CORPUS)


# ------------------------------------------------------------------------------------------------
# CVAT RLE vs cvat_sdk.masks


@pytest.mark.parametrize("name,mask", CORPUS, ids=IDS)
def test_cvat_rle_matches_cvat_sdk(name, mask):
    h, w = mask.shape
    ours = encode_cvat_rle(mask)
    assert ours == sdk_encode(mask)
    assert all(type(v) is int for v in ours)
    # decode equals the SDK's decode and round-trips
    dec = decode_cvat_rle(ours, h, w)
    assert dec.dtype == np.bool_
    np.testing.assert_array_equal(dec, sdk_decode(ours, image_width=w, image_height=h))
    if mask.any():
        np.testing.assert_array_equal(dec, mask)
    # array variant, without and with the tight box
    runs, box = encode_cvat_rle_array(mask)
    assert runs.dtype == np.uint32
    assert runs.tolist() + list(box) == ours
    np.testing.assert_array_equal(decode_cvat_rle_array(runs, box, h, w), dec)
    tight = box_from_mask(mask)
    if tight is not None:
        runs2, box2 = encode_cvat_rle_array(mask, box=tight)
        assert runs2.tolist() + list(box2) == ours
        assert runs2.tolist() + list(box2) == sdk_encode(mask, bbox=list(tight))


def test_cvat_rle_accepts_0_1_arrays():
    m = np.zeros((6, 8), np.uint8)
    m[2:4, 3:7] = 1
    assert encode_cvat_rle(m) == sdk_encode(m.astype(bool))


def test_cvat_rle_decode_errors():
    with pytest.raises(MaskError, match="runs plus 4 box values"):
        decode_cvat_rle([1, 0, 0], 4, 4)
    with pytest.raises(MaskError, match="non-integer"):
        decode_cvat_rle([1.5, 0, 0, 0, 0], 4, 4)
    with pytest.raises(MaskError, match="outside"):
        decode_cvat_rle([1, 0, 0, 9, 0], 4, 4)
    with pytest.raises(MaskError, match="covers 3 pixels"):
        decode_cvat_rle([1, 2, 0, 0, 1, 1], 4, 4)
    with pytest.raises(MaskError, match="negative"):
        decode_cvat_rle([5, -1, 0, 0, 1, 1], 4, 4)
    with pytest.raises(MaskError, match="2-D"):
        encode_cvat_rle(np.zeros((2, 2, 2), bool))


# ------------------------------------------------------------------------------------------------
# COCO RLE vs pycocotools


def _coco_ref(mask: np.ndarray) -> dict:
    return coco.encode(np.asfortranarray(mask.astype(np.uint8)))


@pytest.mark.parametrize("name,mask", CORPUS, ids=IDS)
def test_coco_rle_matches_pycocotools(name, mask):
    h, w = mask.shape
    ref = _coco_ref(mask)
    ours = encode_coco_rle(mask)
    assert ours == {"size": [h, w], "counts": ref["counts"].decode("ascii")}
    assert isinstance(ours["counts"], str) and all(type(v) is int for v in ours["size"])
    # same result from a Fortran-order array, a non-contiguous view and a 0/255 uint8 array
    assert encode_coco_rle(np.asfortranarray(mask)) == ours
    assert encode_coco_rle(mask.astype(np.uint8) * 255) == ours
    big = np.zeros((h + 2, w + 3), bool)
    big[1 : h + 1, 2 : w + 2] = mask
    assert encode_coco_rle(big[1 : h + 1, 2 : w + 2]) == ours
    # decode: str and bytes counts, equal to pycocotools' decode and to the mask
    dec = decode_coco_rle(ours)
    assert dec.dtype == np.bool_ and dec.shape == (h, w) and dec.flags.c_contiguous
    np.testing.assert_array_equal(dec, mask)
    np.testing.assert_array_equal(decode_coco_rle(ref), coco.decode(ref).astype(bool))
    # area and box equal pycocotools'
    assert coco_rle_area(ours) == int(coco.area(ref))
    assert coco_rle_box(ours) == tuple(float(v) for v in coco.toBbox(ref))


def _uncompressed(mask: np.ndarray) -> list[int]:
    """COCO iscrowd-style counts computed the slow obvious way (column-major runs, background first)."""
    flat = mask.T.ravel()
    runs, cur, n = [], False, 0
    for v in flat:
        if bool(v) != cur:
            runs.append(n)
            cur, n = bool(v), 0
        n += 1
    runs.append(n)
    return runs


@pytest.mark.parametrize("name,mask", CORPUS[::7], ids=IDS[::7])
def test_coco_rle_uncompressed_counts(name, mask):
    h, w = mask.shape
    rle = {"size": [h, w], "counts": _uncompressed(mask)}
    np.testing.assert_array_equal(decode_coco_rle(rle), mask)
    np.testing.assert_array_equal(decode_coco_rle({"counts": rle["counts"]}, h, w), mask)
    ref = coco.frPyObjects(rle, h, w)
    assert encode_coco_rle(mask)["counts"] == ref["counts"].decode()
    assert coco_rle_area(rle) == int(coco.area(ref))
    assert coco_rle_box(rle) == tuple(float(v) for v in coco.toBbox(ref))


def test_coco_rle_large_mask_paths():
    """Both encoder paths (box runs, and pycocotools on a transposed copy for noisy masks)."""
    rng = np.random.default_rng(7)
    h, w = 270, 480
    noisy_blob = _blobs(rng, h, w, 1) & (rng.random((h, w)) < 0.9)
    for mask in (_blobs(rng, h, w, 3), rng.random((h, w)) < 0.5, noisy_blob):
        ref = _coco_ref(mask)
        assert encode_coco_rle(mask)["counts"] == ref["counts"].decode()
        np.testing.assert_array_equal(decode_coco_rle(ref), mask)


def test_coco_rle_malformed():
    good = encode_coco_rle(np.eye(4, dtype=bool))
    with pytest.raises(MaskError, match="covers 15 pixels"):
        decode_coco_rle({"size": [4, 4], "counts": [0, 5, 10]})
    with pytest.raises(MaskError, match="covers"):
        decode_coco_rle({"size": [5, 4], "counts": good["counts"]})
    with pytest.raises(MaskError, match="negative"):
        decode_coco_rle({"size": [2, 2], "counts": [5, -1]})
    with pytest.raises(MaskError, match="non-integer"):
        decode_coco_rle({"size": [2, 2], "counts": [1.5, 2.5]})
    with pytest.raises(MaskError, match="outside '0'..'o'"):
        decode_coco_rle({"size": [4, 4], "counts": "0 ~"})
    with pytest.raises(MaskError, match="truncated"):
        decode_coco_rle({"size": [4, 4], "counts": "P"})  # 'P' carries the continuation bit
    with pytest.raises(MaskError, match="empty"):
        decode_coco_rle({"size": [4, 4], "counts": ""})
    with pytest.raises(MaskError, match="expected a str/bytes"):
        decode_coco_rle({"size": [4, 4], "counts": 16})
    with pytest.raises(MaskError, match="no 'size'"):
        decode_coco_rle({"counts": [16]})
    with pytest.raises(MaskError, match="was asked for"):
        decode_coco_rle(good, 5, 4)
    with pytest.raises(MaskError, match="must be a dict"):
        decode_coco_rle([0, 16])  # type: ignore[arg-type]
    with pytest.raises(MaskError, match=r"expected \[height, width\]"):
        decode_coco_rle({"size": "4x4", "counts": [16]})
    with pytest.raises(MaskError, match="too large"):
        decode_coco_rle({"size": [4, 4], "counts": "oooooooo0"})
    with pytest.raises(MaskError):
        coco_rle_area({"size": [4, 4], "counts": [3]})
    with pytest.raises(MaskError, match="non-empty frame"):
        encode_coco_rle(np.zeros((0, 5), bool))
    with pytest.raises(MaskError, match="2-D"):
        encode_coco_rle(np.zeros((2, 3, 4), bool))
    # the errors are ValueErrors too, for callers that catch those
    with pytest.raises(ValueError):
        decode_coco_rle({"size": [4, 4], "counts": [3]})


# ------------------------------------------------------------------------------------------------
# geometry


def _fill_holes(m: np.ndarray) -> np.ndarray:
    """Reference hole filling: background not 4-connected to the border is a hole."""
    h, w = m.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = ~m
    pad[0, :] = pad[-1, :] = 1
    pad[:, 0] = pad[:, -1] = 1
    ff = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(pad, ff, (0, 0), 2, flags=4)
    return pad[1:-1, 1:-1] != 2


@pytest.mark.parametrize("name,mask", CORPUS, ids=IDS)
def test_polygons_round_trip_fills_holes(name, mask):
    h, w = mask.shape
    rings = mask_to_polygons(mask)
    assert all(len(r) >= 6 and len(r) % 2 == 0 for r in rings)
    assert all(type(v) is float for r in rings for v in r)
    np.testing.assert_array_equal(polygons_to_mask(rings, h, w), _fill_holes(mask))
    # one ring per 8-connected component of the hole-filled mask
    n_comp = cv2.connectedComponents(_fill_holes(mask).astype(np.uint8), connectivity=8)[0] - 1
    assert len(rings) == n_comp


def test_polygon_holes_are_filled():
    m = np.zeros((20, 20), bool)
    m[2:18, 2:18] = True
    m[6:12, 6:12] = False  # a hole
    rings = mask_to_polygons(m)
    assert len(rings) == 1
    filled = polygons_to_mask(rings, 20, 20)
    assert filled[8, 8] and filled.sum() == 16 * 16


def test_polygon_degenerate_components():
    m = np.zeros((10, 12), bool)
    m[1, 1] = True  # one pixel
    m[5, 2:9] = True  # horizontal line
    m[0:4, 10] = True  # vertical line touching the top edge
    rings = mask_to_polygons(m)
    assert len(rings) == 3
    for r in rings:
        pts = np.asarray(r).reshape(-1, 2)
        assert len(pts) >= 3
        assert cv2.contourArea(pts.astype(np.float32)) > 0  # a visible polygon in CVAT
    np.testing.assert_array_equal(polygons_to_mask(rings, 10, 12), m)
    one = mask_to_polygons(m[:3, :3])
    assert one == [[0.75, 0.75, 1.25, 0.75, 1.25, 1.25, 0.75, 1.25]]


def test_polygon_centres_and_ordering():
    m = np.zeros((8, 8), bool)
    m[2:5, 3:7] = True
    (ring,) = mask_to_polygons(m)
    pts = {tuple(p) for p in np.asarray(ring).reshape(-1, 2)}
    assert pts == {(3.0, 2.0), (6.0, 2.0), (6.0, 4.0), (3.0, 4.0)}


def test_polygon_tolerance_and_min_area():
    m = np.zeros((200, 200), np.uint8)
    cv2.circle(m, (100, 100), 60, 1, -1)
    cv2.circle(m, (20, 20), 2, 1, -1)
    m = m.astype(bool)
    full = mask_to_polygons(m)
    simple = mask_to_polygons(m, tolerance=2.0)
    assert len(full) == len(simple) == 2
    big_full = max(full, key=len)
    big_simple = max(simple, key=len)
    assert len(big_simple) < len(big_full) // 2
    iou = mask_iou(polygons_to_mask(simple, 200, 200), m)
    assert iou > 0.97
    kept = mask_to_polygons(m, min_area=100)
    assert len(kept) == 1 and kept[0] == big_full
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []
    # heavy tolerance on a tiny blob still yields a valid ring
    tiny = np.zeros((10, 10), bool)
    tiny[4:6, 4:7] = True
    (r,) = mask_to_polygons(tiny, tolerance=50)
    assert len(r) >= 6


def test_polygons_to_mask_inputs_and_errors():
    ring = [1, 1, 6, 1, 6, 4, 1, 4]
    ref = np.zeros((6, 8), bool)
    ref[1:5, 1:7] = True
    np.testing.assert_array_equal(polygons_to_mask([ring], 6, 8), ref)
    np.testing.assert_array_equal(polygons_to_mask(ring, 6, 8), ref)  # a single flat ring
    np.testing.assert_array_equal(polygons_to_mask(np.array(ring).reshape(-1, 2), 6, 8), ref)
    np.testing.assert_array_equal(polygons_to_mask([np.array(ring).reshape(-1, 2)], 6, 8), ref)
    # union, not even-odd: a nested ring does not cut a hole
    inner = [2, 2, 4, 2, 4, 3, 2, 3]
    np.testing.assert_array_equal(polygons_to_mask([ring, inner], 6, 8), ref)
    # half-up rounding of centres; out-of-frame parts clipped
    np.testing.assert_array_equal(polygons_to_mask([[0.5, 0.5, 6.4, 0.5, 6.4, 4.49, 0.5, 4.49]], 6, 8), ref)
    clipped = polygons_to_mask([[-100, -100, 100, -100, 100, 100, -100, 100]], 6, 8)
    assert clipped.all()
    assert not polygons_to_mask([], 6, 8).any()
    with pytest.raises(MaskError, match="even"):
        polygons_to_mask([[1, 2, 3]], 6, 8)
    with pytest.raises(MaskError, match="at least 3"):
        polygons_to_mask([[1, 2, 3, 4]], 6, 8)
    with pytest.raises(MaskError, match="NaN"):
        polygons_to_mask([[1, 2, 3, 4, float("nan"), 1]], 6, 8)
    with pytest.raises(MaskError, match="non-numeric"):
        polygons_to_mask([["a", "b", "c", "d", "e", "f"]], 6, 8)
    with pytest.raises(MaskError, match="not positive"):
        polygons_to_mask([ring], 0, 8)


def test_box_helpers():
    m = box_to_mask((2, 1, 5, 4), 6, 8)
    assert m.dtype == np.bool_ and m.sum() == 9 and m[1:4, 2:5].all()
    assert mask_to_box(m) == (2.0, 1.0, 5.0, 4.0)
    assert mask_to_box(np.zeros((3, 3))) is None
    assert box_to_mask((-5, -5, 3, 100), 6, 8).sum() == 3 * 6  # clipped
    assert not box_to_mask((5, 5, 2, 2), 6, 8).any()
    assert mask_area(m) == 9 and mask_area(m.astype(np.uint8)) == 9
    with pytest.raises(MaskError, match="four numbers"):
        box_to_mask((1, 2, 3), 6, 8)
    with pytest.raises(MaskError, match="NaN"):
        box_to_mask((1, 2, 3, float("nan")), 6, 8)
    for _, mask in CORPUS[::5]:
        b = mask_to_box(mask)
        if b is not None:
            filled = box_to_mask(b, *mask.shape)
            assert (filled | mask).sum() == filled.sum()  # box covers the mask
            assert mask_to_box(filled) == b


def test_mask_iou_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        a = rng.random((h, w)) < rng.random()
        b = rng.random((h, w)) < rng.random()
        inter = sum(bool(a[y, x] and b[y, x]) for y in range(h) for x in range(w))
        union = sum(bool(a[y, x] or b[y, x]) for y in range(h) for x in range(w))
        assert mask_iou(a, b) == (inter / union if union else 0.0)
    z = np.zeros((3, 3), bool)
    assert mask_iou(z, z) == 0.0  # documented: both empty -> 0
    with pytest.raises(MaskError, match="differ in size"):
        mask_iou(z, np.zeros((3, 4), bool))


def test_masks_iou_matches_pycocotools():
    rng = np.random.default_rng(4)
    h, w = 60, 80
    A = np.stack([_blobs(rng, h, w, 2) for _ in range(7)] + [np.zeros((h, w), bool)])
    B = np.stack([_blobs(rng, h, w, 2) for _ in range(4)] + [A[0], rng.random((h, w)) < 0.3])
    ours = masks_iou(A, B)
    assert ours.shape == (8, 6) and ours.dtype == np.float64
    ra = [_coco_ref(m) for m in A]
    rb = [_coco_ref(m) for m in B]
    ref = coco.iou(ra, rb, [0] * len(rb))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert ours[0, 4] == 1.0
    brute = np.array([[mask_iou(a, b) for b in B] for a in A])
    np.testing.assert_allclose(ours, brute, rtol=0, atol=1e-12)
    assert masks_iou(A[:0], B).shape == (0, 6)
    assert masks_iou(np.zeros((2, 5, 5), bool), np.zeros((3, 5, 5), bool)).tolist() == [[0.0] * 3] * 2
    np.testing.assert_allclose(masks_iou(list(A[:2]), B[0]), brute[:2, :1], atol=1e-12)
    with pytest.raises(MaskError, match="frame size"):
        masks_iou(A, np.zeros((1, 5, 5), bool))


def test_masks_iou_noisy_masks_path():
    """Masks with very many runs take the matrix-product path; same values."""
    rng = np.random.default_rng(9)
    A = rng.random((4, 50, 60)) < 0.5
    B = np.concatenate([rng.random((2, 50, 60)) < 0.3, A[:1], np.zeros((1, 50, 60), bool)])
    brute = np.array([[mask_iou(x, y) for y in B] for x in A])
    np.testing.assert_allclose(masks_iou(A, B), brute, rtol=0, atol=1e-6)
    ref = coco.iou([_coco_ref(x) for x in A], [_coco_ref(y) for y in B], [0] * len(B))
    np.testing.assert_allclose(masks_iou(A, B), ref, rtol=0, atol=1e-6)


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 0, 0]], float)
    b = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [0, 0, 5, 5]], float)
    got = box_iou(a, b)
    exp = np.array(
        [[1.0, 0.0, 25 / 100], [25 / 175, 25 / 175, 0.0], [0.0, 0.0, 0.0]],
    )
    np.testing.assert_allclose(got, exp)
    # against mask IoU of the rasterised boxes
    rng = np.random.default_rng(5)
    xs = np.sort(rng.integers(0, 30, (20, 2)), axis=1)
    ys = np.sort(rng.integers(0, 30, (20, 2)), axis=1)
    boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
    masks = np.stack([box_to_mask(bx, 30, 30) for bx in boxes])
    np.testing.assert_allclose(box_iou(boxes, boxes), masks_iou(masks, masks), atol=1e-6)
    assert box_iou([], b).shape == (0, 3)


def test_resize_mask():
    m = np.zeros((4, 6), bool)
    m[1:3, 2:4] = True
    up = resize_mask(m, (12, 8))
    assert up.dtype == np.bool_ and up.shape == (8, 12)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(m, 2, 0), 2, 1))
    np.testing.assert_array_equal(resize_mask(up, (6, 4)), m)
    # same as Pillow's nearest-neighbour
    from PIL import Image

    rng = np.random.default_rng(6)
    r = rng.random((37, 53)) < 0.5
    ref = np.asarray(Image.fromarray(r.astype(np.uint8) * 255).resize((20, 15), Image.NEAREST)) > 0
    np.testing.assert_array_equal(resize_mask(r, (20, 15)), ref)
    with pytest.raises(MaskError, match="not positive"):
        resize_mask(m, (0, 3))


# ------------------------------------------------------------------------------------------------
# overlays


def _image(h: int = 60, w: int = 80) -> np.ndarray:
    return np.random.default_rng(8).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _blend(px: np.ndarray, rgb: tuple[int, int, int], alpha: float) -> np.ndarray:
    return px.astype(np.float64) * (1 - alpha) + np.array(rgb, np.float64) * alpha


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (or on the frame edge)."""
    pad = np.pad(mask, 1)
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return mask & ~inner


def test_overlay_fill_contour_and_untouched_input():
    img = _image()
    before = img.copy()
    m = np.zeros((60, 80), bool)
    m[10:40, 20:60] = True
    info = ObjectInfo(5, "car", "#ff8000")
    out = draw_overlay(img, Instances([Instance(5, mask=m)]), {5: info}, alpha=0.4, labels=False)
    np.testing.assert_array_equal(img, before)  # input untouched
    assert out.dtype == np.uint8 and out.shape == img.shape and out is not img
    rgb = (255, 128, 0)
    # deep inside: exact alpha blend within rounding
    inner = np.zeros_like(m)
    inner[14:36, 24:56] = True
    diff = np.abs(out[inner].astype(np.float64) - _blend(img[inner], rgb, 0.4))
    assert diff.max() <= 0.5 + 1e-9
    # contour pixels carry the colour
    edge = _boundary(m)
    assert (out[edge] == rgb).all()
    # far outside unchanged
    far = np.ones_like(m)
    far[6:44, 16:64] = False
    np.testing.assert_array_equal(out[far], img[far])


def test_overlay_colour_priority_and_inputs():
    img = _image()
    m = np.zeros((60, 80), bool)
    m[20:30, 20:30] = True
    probe = (25, 25)

    def colour_at(out):
        return tuple(int(v) for v in out[probe])

    def drawn(**kw):
        return draw_overlay(img, [Instance(3, mask=m)], alpha=1.0, contour=False, labels=False, **kw)

    assert colour_at(drawn()) == color_to_rgb(color_for_index(3))
    assert colour_at(drawn(colors={3: "#102030"})) == (16, 32, 48)
    assert colour_at(drawn(colors=[(1, 2, 3)])) == (1, 2, 3)
    with_info = draw_overlay(
        img, [Instance(3, mask=m)], [ObjectInfo(3, "x", "#00ff00")], alpha=1.0, contour=False,
        labels=False, colors={3: "#102030"},
    )
    assert colour_at(with_info) == (0, 255, 0)  # ObjectInfo wins
    # a mask stack and a list of masks: object id = position
    stack = np.stack([np.zeros_like(m), m])
    for given in (stack, list(stack)):
        out = draw_overlay(img, given, alpha=1.0, contour=False, labels=False)
        assert colour_at(out) == color_to_rgb(color_for_index(1))
    # alpha 0 + no contour leaves the frame as it was
    untinted = draw_overlay(img, [Instance(3, mask=m)], alpha=0, contour=False, labels=False)
    np.testing.assert_array_equal(untinted, img)


def test_overlay_boxes_polygons_empty_and_labels():
    img = np.full((60, 80, 3), 100, np.uint8)
    red = {1: "#ff0000"}
    # box-only instance: outline, no fill
    out = draw_overlay(img, [Instance(1, box=(10, 10, 40, 30))], colors=red, thickness=1, labels=False)
    assert (out[10, 10:40] == (255, 0, 0)).all() and (out[29, 10:40] == (255, 0, 0)).all()
    assert (out[10:30, 10] == (255, 0, 0)).all() and (out[10:30, 39] == (255, 0, 0)).all()
    assert (out[20, 20] == 100).all() and (out[40, 50] == 100).all()
    # polygon instance: filled and outlined
    poly = Instance(1, polygon=[[10, 10, 50, 10, 50, 40, 10, 40]])
    out = draw_overlay(img, [poly], colors=red, alpha=0.5, thickness=1, labels=False)
    assert tuple(out[25, 30]) == tuple(np.rint(_blend(img[25, 30], (255, 0, 0), 0.5)).astype(int))
    assert (out[10, 10:51] == (255, 0, 0)).all()
    assert (out[45, 60] == 100).all()
    # empty instances draw nothing, not even a tag
    empty = [Instance(1, mask=np.zeros((60, 80), bool)), Instance(2, polygon=[])]
    np.testing.assert_array_equal(draw_overlay(img, empty, scores=True), img)
    np.testing.assert_array_equal(draw_overlay(img, Instances([])), img)
    # boxes=True outlines a mask's box; labels put a tag in the object's colour above the box
    m = np.zeros((60, 80), bool)
    m[30:50, 20:60] = True
    out = draw_overlay(img, [Instance(1, mask=m, score=0.5)], {1: ObjectInfo(1, "car")}, colors=red,
                       alpha=0.0, contour=False, boxes=True, thickness=1)
    assert (out[30, 20:60] == (255, 0, 0)).all()
    tag = out[:30, 20:60]
    assert (tag == (255, 0, 0)).all(axis=-1).sum() > 50  # filled tag
    assert (tag.sum(axis=-1) > 255 + 100).any()  # white-ish text on red
    no_label = draw_overlay(img, [Instance(1, mask=m)], colors=red, alpha=0.0, contour=False, labels=False)
    np.testing.assert_array_equal(no_label, img)
    # scores change the tag; grey input becomes RGB
    a = draw_overlay(img, [Instance(1, mask=m, score=0.5)], colors=red, scores=False)
    b = draw_overlay(img, [Instance(1, mask=m, score=0.5)], colors=red, scores=True)
    assert (a != b).any()
    grey = draw_overlay(img[:, :, 0], [Instance(1, mask=m)], colors=red, labels=False)
    assert grey.shape == (60, 80, 3)


def test_overlay_errors():
    img = _image()
    with pytest.raises(MaskError, match=r"object 7: mask is 10x5 but the image is 80x60"):
        draw_overlay(img, [Instance(7, mask=np.ones((5, 10), bool))])
    with pytest.raises(MaskError, match="object 7"):
        draw_overlay(img, [Instance(7, mask=np.zeros((5, 10), bool))])  # even when empty
    with pytest.raises(ValueError, match="alpha"):
        draw_overlay(img, [], alpha=1.5)
    with pytest.raises(ValueError, match="uint8"):
        draw_overlay(img.astype(np.float32), [])
    with pytest.raises(ValueError, match="mixing"):
        draw_overlay(img, [np.zeros((60, 80), bool), Instance(1)])
    with pytest.raises(ValueError, match="colour of object 1"):
        draw_overlay(img, [Instance(1, box=(1, 1, 5, 5))], colors={1: "red"})


def test_contact_sheet_layout():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    imgs = [np.full((100, 200, 3), c, np.uint8) for c in colours]
    sheet = contact_sheet(imgs, columns=2, width=50, pad=4, background=(9, 9, 9))
    assert sheet.shape == (3 * 25 + 4 * 4, 2 * 50 + 3 * 4, 3)
    for k, c in enumerate(colours):
        r, col = divmod(k, 2)
        x, y = 4 + col * 54, 4 + r * 29
        assert (sheet[y : y + 25, x : x + 50] == c).all()
    assert (sheet[:4] == 9).all() and (sheet[-4:, :] == 9).all()
    assert (sheet[4 + 2 * 29 :, 58:] == 9).all()  # the sixth cell is empty
    # fewer images than columns: the sheet is only as wide as needed; aspect ratio kept
    one = contact_sheet([np.zeros((30, 90, 3), np.uint8)], columns=4, width=60, pad=2)
    assert one.shape == (20 + 4, 60 + 4, 3)
    # mixed sizes: cells as tall as the tallest thumbnail
    mixed = contact_sheet([np.zeros((10, 40, 3), np.uint8), np.zeros((40, 40, 3), np.uint8)], width=40, pad=0)
    assert mixed.shape == (40, 80, 3)


def test_contact_sheet_titles():
    img = _image(40, 80)
    plain = contact_sheet([img, img], columns=2, width=80, pad=4)
    titled = contact_sheet([(12, img), ("frame 13", img)], columns=2, width=80, pad=4)
    assert titled.shape[1] == plain.shape[1] and titled.shape[0] > plain.shape[0]
    title_h = titled.shape[0] - plain.shape[0]
    np.testing.assert_array_equal(titled[4 + title_h : 4 + title_h + 40, 4:84], img)
    # an int title reads "frame N"; titles= fills in titles
    same = contact_sheet([img, img], columns=2, width=80, pad=4, titles=["frame 12", 13])
    np.testing.assert_array_equal(same, titled)
    strip = titled[4 : 4 + title_h, 4:84]
    assert (strip != 32).any()  # the text was drawn
    with pytest.raises(ValueError, match="no images"):
        contact_sheet([])
    with pytest.raises(ValueError, match="columns"):
        contact_sheet([img], columns=0)
    with pytest.raises(ValueError, match="image 1"):
        contact_sheet([img, np.zeros((3, 3, 5), np.uint8)])


def test_save_load_round_trip(tmp_path):
    img = _image(30, 40)
    p = save_image(tmp_path / "sub" / "a.png", img)
    assert p.is_file()
    back = load_image(p)
    np.testing.assert_array_equal(back, img)
    # channel order: what cv2 reads (BGR) is the reverse of what we wrote
    np.testing.assert_array_equal(cv2.imread(str(p))[:, :, ::-1], img)
    jpg = load_image(save_image(tmp_path / "a.jpg", np.full((16, 16, 3), (200, 30, 60), np.uint8)))
    assert np.abs(jpg.astype(int) - (200, 30, 60)).max() <= 6
    rgba = np.dstack([img, np.full((30, 40), 255, np.uint8)])
    np.testing.assert_array_equal(load_image(save_image(tmp_path / "b.png", rgba)), img)


def test_load_image_applies_exif_orientation(tmp_path):
    from PIL import Image

    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(a).save(tmp_path / "o.jpg", exif=exif)
    img = load_image(tmp_path / "o.jpg")
    assert img.shape == (40, 20, 3)
    assert img[:20].mean() > 200 and img[20:].mean() < 50  # the white half is now on top


def test_image_io_errors(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(MediaError, match="cannot decode image .*junk.png"):
        load_image(junk)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.jpg"):
        load_image(empty)
    img = _image(8, 8)
    with pytest.raises(MediaError, match="extension"):
        save_image(tmp_path / "noext", img)
    with pytest.raises(MediaError, match=r"\.xyz"):
        save_image(tmp_path / "a.xyz", img)
    with pytest.raises(MediaError, match="cannot save image"):
        save_image(junk / "inside_a_file.png", img)


def test_truck_overlay(truck_jpg, tmp_path):
    """Real photo: overlay of a blob, saved and read back unchanged (PNG)."""
    img = load_image(truck_jpg)
    h, w = img.shape[:2]
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (w // 2, h // 2), (w // 4, h // 6), 0, 0, 360, 1, -1)
    inst = Instance(0, mask=m.astype(bool), score=0.87)
    out = draw_overlay(img, [inst], {0: ObjectInfo(0, "truck")}, scores=True)
    assert out.shape == img.shape and (out != img).any()
    np.testing.assert_array_equal(load_image(save_image(tmp_path / "o.png", out)), out)
