"""Store write throughput and memory: 1080p frames with 10 objects (issue #3 targets).

Targets: >= 200 frames/s (the store must never be the bottleneck: SAM2 on a GPU produces ~10-40
frames/s) and peak memory flat while writing 5,000 frames. Prints frames/s as a ratio against the
200 frames/s target, and as a ratio against the baseline measured in the same run: the same SQLite
transactions with the masks already encoded (so the ratio shows what mask encoding costs).

    .venv/bin/python bench/bench_store.py [--frames 5000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from dl_utils.annotations import Instance, MediaInfo
from dl_utils.store import AnnotationStore

H, W, N_OBJ = 1080, 1920, 10


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_mask_sets(n_sets: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(0)
    sets = []
    for s in range(n_sets):
        masks = []
        for k in range(N_OBJ):
            m = np.zeros((H, W), np.uint8)
            cx, cy = int(rng.integers(200, W - 200)), int(rng.integers(150, H - 150))
            ax, ay = int(rng.integers(20, 300)), int(rng.integers(20, 250))
            cv2.ellipse(m, (cx, cy), (ax, ay), float(rng.integers(0, 180)), 0, 360, 1, -1)
            masks.append(m.astype(bool))
        sets.append(masks)
    return sets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=5000)
    args = ap.parse_args()
    sets = make_mask_sets(6)
    media = MediaInfo(name="bench", width=W, height=H, frames=list(range(args.frames)))
    with tempfile.TemporaryDirectory() as d:
        st = AnnotationStore.create(Path(d) / "bench.sqlite", media)
        for _ in range(N_OBJ):
            st.add_object("car")
        rss_samples = []
        t0 = time.perf_counter()
        for f in range(args.frames):
            masks = sets[f % len(sets)]
            st.write_frame(f, [Instance(k + 1, mask=m, score=0.9) for k, m in enumerate(masks)])
            if f in (args.frames // 10, args.frames // 2, args.frames - 1):
                rss_samples.append((f + 1, rss_mb()))
        dt = time.perf_counter() - t0
        fps = args.frames / dt
        size_mb = (Path(d) / "bench.sqlite").stat().st_size / 2**20

        # baseline: the same transactions with pre-encoded rows (pure SQLite cost)
        n_base = min(args.frames, 1000)
        st2 = AnnotationStore.create(Path(d) / "base.sqlite", media)
        for _ in range(N_OBJ):
            st2.add_object("car")
        st2._media_cache = None
        rows = [[st2._encode(0, Instance(k + 1, mask=m), None, 0.0) for k, m in enumerate(s)] for s in sets]
        sql = (
            "INSERT OR REPLACE INTO instances (frame, object_id, shape, x1, y1, x2, y2, mask_h, mask_w, rle,"
            " rle_box, polygon, area, score, source, prompts, keyframe, run_id, updated)"
            f" VALUES ({','.join('?' * 19)})"
        )
        t0 = time.perf_counter()
        for f in range(n_base):
            with st2._write() as c:
                c.executemany(sql, [(f, *r[1:]) for r in rows[f % len(rows)]])
        base_fps = n_base / (time.perf_counter() - t0)

        # reading back (what exports and the widget do)
        t0 = time.perf_counter()
        n_read = min(args.frames, 500)
        for f in range(n_read):
            st.read_frame(f)
        read_fps = n_read / (time.perf_counter() - t0)
        st.close()
        st2.close()

    print(f"store write, 1080p x {N_OBJ} objects, {args.frames} frames: {fps:.0f} frames/s")
    print(f"  ratio vs 200 frames/s target: {fps / 200:.2f}x")
    print(f"  ratio vs SQLite with pre-encoded masks (same run): {fps / base_fps:.2f}x ({base_fps:.0f} frames/s)")
    print(f"  store size: {size_mb:.1f} MiB ({size_mb * 1024 / args.frames:.1f} KiB/frame)")
    print(f"  read back: {read_fps:.0f} frames/s (masks decoded)")
    first = rss_samples[0][1]
    for n, mb in rss_samples:
        print(f"  RSS after {n} frames: {mb:.0f} MiB (x{mb / first:.3f} of the first sample)")


if __name__ == "__main__":
    main()
