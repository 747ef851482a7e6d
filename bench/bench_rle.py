"""Mask RLE encoding speed on 1920x1080 masks: ours vs cvat-sdk and pycocotools (issue target >= 1x).

Times, per mask, with interleaved repeats (every encoder once per round, median over rounds):

* ``cvat_sdk.masks.encode_mask(m)`` vs our ``encode_cvat_rle(m)`` (CVAT mask RLE; the summary also
  compares it with pycocotools' encode, the issue's yardstick for both formats);
* ``pycocotools.mask.encode(np.asfortranarray(m.astype(np.uint8)))`` (how a caller holding a C-order
  bool mask must call it) vs our ``encode_coco_rle(m)`` (COCO compressed RLE);
* decoding: ``pycocotools.mask.decode`` + conversion to a C-order bool mask vs ``decode_coco_rle``.

Masks: filled ellipses and smooth random blobs covering 1-30 % of the frame (what SAM2 produces),
plus a 50 % salt-and-pepper mask as the worst case (one run per pixel on average). Every encoder's
output is checked equal to its reference before timing. Prints each figure and ours / reference
speed ratios (> 1 means ours is faster). Writes nothing.

    .venv/bin/python bench/bench_rle.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from cvat_sdk.masks import encode_mask as sdk_encode
from pycocotools import mask as coco

from dl_utils.cv_utils import decode_coco_rle, encode_coco_rle, encode_cvat_rle

H, W = 1080, 1920


def ellipses(rng: np.random.Generator, n: int, target: float) -> np.ndarray:
    """n ellipses whose union covers about ``target`` of the frame."""
    m = np.zeros((H, W), np.uint8)
    area = target * H * W / n
    for _ in range(n):
        ratio = rng.uniform(0.5, 2.0)
        a = int(np.sqrt(area / np.pi * ratio))
        b = int(np.sqrt(area / np.pi / ratio))
        c = (int(rng.integers(a // 2, W - a // 2)), int(rng.integers(b // 2, H - b // 2)))
        cv2.ellipse(m, c, (a, b), float(rng.integers(0, 180)), 0, 360, 1, -1)
    return m.astype(bool)


def blob(rng: np.random.Generator, target: float) -> np.ndarray:
    """A smooth irregular blob (thresholded blurred noise) covering ``target`` of the frame."""
    field = cv2.GaussianBlur(rng.random((H // 8, W // 8)).astype(np.float32), (0, 0), 6)
    field = cv2.resize(field, (W, H), interpolation=cv2.INTER_CUBIC)
    return field > np.quantile(field, 1 - target)


def make_masks() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        ("1 ellipse", ellipses(rng, 1, 0.01)),
        ("3 ellipses", ellipses(rng, 3, 0.05)),
        ("blob", blob(rng, 0.15)),
        ("5 ellipses", ellipses(rng, 5, 0.30)),
        ("large blob", blob(rng, 0.30)),
        ("noise (worst case)", rng.random((H, W)) < 0.5),
    ]


def coco_reference(m: np.ndarray) -> dict:
    return coco.encode(np.asfortranarray(m.astype(np.uint8)))


def coco_decode_reference(rle: dict) -> np.ndarray:
    return np.ascontiguousarray(coco.decode(rle)).astype(bool)


def timed(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call, every function once per round (interleaved, so drift hits all)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repeats (a smoke run)")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    repeats = args.repeats or (5 if args.quick else 40)

    masks = make_masks()
    print(f"{W}x{H} masks, median of {repeats} interleaved rounds, times in ms\n")
    header = (
        f"{'mask':24} {'cover':>6} {'cvat_sdk':>9} {'ours':>7} {'ratio':>6} |"
        f" {'pycoco enc':>10} {'ours':>7} {'ratio':>6} | {'pycoco dec':>10} {'ours':>7} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    ratios_cvat, ratios_coco, ratios_dec, ratios_cvat_pc = [], [], [], []
    for name, m in masks:
        # correctness first: equal outputs or the timing means nothing
        ref = coco_reference(m)
        assert encode_cvat_rle(m) == sdk_encode(m), name
        assert encode_coco_rle(m) == {"size": [H, W], "counts": ref["counts"].decode()}, name
        assert (decode_coco_rle(ref) == m).all(), name
        t = timed(
            {
                "sdk": lambda: sdk_encode(m),
                "cvat": lambda: encode_cvat_rle(m),
                "pycoco": lambda: coco_reference(m),
                "coco": lambda: encode_coco_rle(m),
                "pycoco_dec": lambda: coco_decode_reference(ref),
                "coco_dec": lambda: decode_coco_rle(ref),
            },
            repeats,
        )
        rc, rk, rd = t["sdk"] / t["cvat"], t["pycoco"] / t["coco"], t["pycoco_dec"] / t["coco_dec"]
        ratios_cvat.append(rc)
        ratios_cvat_pc.append(t["pycoco"] / t["cvat"])
        ratios_coco.append(rk)
        ratios_dec.append(rd)
        print(
            f"{name:24} {m.mean():6.1%} {t['sdk'] * 1e3:9.2f} {t['cvat'] * 1e3:7.2f} {rc:5.1f}x |"
            f" {t['pycoco'] * 1e3:10.2f} {t['coco'] * 1e3:7.2f} {rk:5.1f}x |"
            f" {t['pycoco_dec'] * 1e3:10.2f} {t['coco_dec'] * 1e3:7.2f} {rd:5.1f}x"
        )
    print()
    print(f"encode_cvat_rle vs cvat_sdk.masks.encode_mask: {min(ratios_cvat):.2f}x .. "
          f"{max(ratios_cvat):.2f}x faster")
    print(f"encode_cvat_rle vs pycocotools encode:        {min(ratios_cvat_pc):.2f}x .. {max(ratios_cvat_pc):.2f}x "
          f"(target >= 1.0x: {'met' if min(ratios_cvat_pc) >= 1.0 else 'NOT met'})")
    print(f"encode_coco_rle vs pycocotools encode:        {min(ratios_coco):.2f}x .. {max(ratios_coco):.2f}x "
          f"(target >= 1.0x: {'met' if min(ratios_coco) >= 1.0 else 'NOT met'})")
    print(f"decode_coco_rle vs pycocotools decode:        {min(ratios_dec):.2f}x .. {max(ratios_dec):.2f}x")


if __name__ == "__main__":
    main()
