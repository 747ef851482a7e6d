"""YOLO-seg export speed and memory (issue 19): 10,000 frames x 10 objects.

Figures:

1. **frames/s of ``export_yolo(..., task="segment")``** and its ratio against a bare baseline
   measured in the same run: decode the same video with PyAV and write the same JPEGs (cv2, quality
   95), no labels, no store. Rounds alternate baseline/ours on the N1-frame store; the median of the
   per-round ratios is reported (the machine is shared, so single timings are noisy).
2. **peak RSS exporting N1 vs N2 frames** (target: flat, ratio ~1.0): each export runs in a fresh
   process (``--child``) and reports its peak RSS (``ru_maxrss``).

Inputs are synthesised under bench/out/ (git-ignored) and reused: a 160x120 x264 video of N2 frames
and two stores of it (the first N1 frames, and all N2), each frame holding 10 mask objects (ellipses
moving, every other one with a hole; one object in two parts), written with the store API.

    .venv/bin/python bench/bench_yolo_export.py [--quick] [--rounds N] [--n1 N] [--n2 N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dl_utils.annotations import Instance  # noqa: E402
from dl_utils.formats import YoloOptions, export_yolo  # noqa: E402
from dl_utils.store import AnnotationStore  # noqa: E402
from dl_utils.video_utils import open_frames, write_video  # noqa: E402

OUT = ROOT / "bench" / "out" / "yolo_export"
W, H, OBJECTS = 160, 120, 10


def picture(i: int) -> np.ndarray:
    x = np.arange(W, dtype=np.uint16)[None, :]
    y = np.arange(H, dtype=np.uint16)[:, None]
    img = np.empty((H, W, 3), np.uint8)
    img[..., 0] = (x + 3 * i) % 256
    img[..., 1] = (y + 2 * i) % 256
    img[..., 2] = ((x + y) // 2 + i) % 256
    return img


def masks(i: int) -> list[np.ndarray]:
    """10 object masks of frame i: moving ellipses, every other one with a hole, object 0 in two parts."""
    out = []
    for k in range(OBJECTS):
        m = np.zeros((H, W), np.uint8)
        cx = int((17 * k + 2 * i) % (W - 30)) + 15
        cy = int((11 * k + i) % (H - 24)) + 12
        cv2.ellipse(m, (cx, cy), (12, 9), (i + 10 * k) % 180, 0, 360, 1, -1)
        if k % 2:
            cv2.circle(m, (cx, cy), 3, 0, -1)
        if k == 0:
            cv2.circle(m, ((cx + 40) % W, cy), 5, 1, -1)
        out.append(m.astype(bool))
    return out


def make_inputs(n1: int, n2: int) -> tuple[Path, Path, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    video = OUT / f"clip_{n2}.mp4"
    if not video.exists():
        print(f"  generating {video.name}: {n2} frames {W}x{H}", flush=True)
        tmp = video.with_name(video.stem + ".part.mp4")
        write_video(tmp, (picture(i) for i in range(n2)), fps=30, crf=23, preset="veryfast")
        os.replace(tmp, video)
    stores = []
    for n in (n1, n2):
        path = OUT / f"store_{n}.sqlite"
        if not path.exists():
            print(f"  generating {path.name}: {n} frames x {OBJECTS} objects", flush=True)
            tmp = path.with_name(path.stem + ".part.sqlite")
            for suffix in ("", "-wal", "-shm"):
                Path(str(tmp) + suffix).unlink(missing_ok=True)
            media = open_frames(video, stop=n - 1).media_info()
            with AnnotationStore.create(tmp, media) as s:
                for k in range(OBJECTS):
                    s.add_object(f"class{k % 4}", id=k + 1)
                batch = []
                for i in range(n):
                    batch.append((i, [Instance(k + 1, mask=m) for k, m in enumerate(masks(i))]))
                    if len(batch) == 64:
                        s.write_frames(batch)
                        batch = []
                if batch:
                    s.write_frames(batch)
            os.replace(tmp, path)
        stores.append(path)
    return video, stores[0], stores[1]


def run_ours(store: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    with AnnotationStore.open(store, readonly=True) as s:
        r = export_yolo([s], out, YoloOptions(task="segment"))
    dt = time.perf_counter() - t
    assert sum(r.images.values()) > 0
    return dt


def run_baseline(video: Path, n: int, out: Path) -> float:
    """Decode the first n frames with PyAV and write each as JPEG (quality 95): no labels."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    with av.open(str(video)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i >= n:
                break
            bgr = frame.to_ndarray(format="bgr24")
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
            buf.tofile(str(out / f"clip_{i:06d}.jpg"))
    return time.perf_counter() - t


def child(args: argparse.Namespace) -> None:
    dt = run_ours(Path(args.store), Path(args.out))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"store": args.store, "seconds": dt, "peak_rss_mb": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 vs 2,000 frames, 2 rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n1", type=int, default=1000)
    ap.add_argument("--n2", type=int, default=10000)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.n1, args.n2, args.rounds = 200, 2000, 2
    print(f"[inputs] {W}x{H} video, {OBJECTS} mask objects a frame, N1={args.n1}, N2={args.n2}")
    video, s1, s2 = make_inputs(args.n1, args.n2)

    print(f"\n[speed, {args.n1} frames, {args.rounds} interleaved rounds: baseline (PyAV decode +"
          " cv2 JPEG write) vs ours (YOLO-seg export)]")
    ratios = []
    for r in range(args.rounds):
        b = run_baseline(video, args.n1, OUT / "baseline")
        o = run_ours(s1, OUT / "ours")
        ratios.append(b / o)
        print(f"  round {r + 1}: baseline {args.n1 / b:7.1f} frames/s   ours {args.n1 / o:7.1f} frames/s"
              f"   ours/baseline x{b / o:.3f}", flush=True)
    print(f"  median ratio of throughputs (ours/baseline): x{statistics.median(ratios):.3f}")

    print(f"\n[peak RSS, {args.n1} vs {args.n2} frames, each export in a fresh process]")
    res = {}
    for n, store in ((args.n1, s1), (args.n2, s2)):
        cmd = [sys.executable, __file__, "--child", "--store", str(store), "--out", str(OUT / f"child_{n}")]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res[n] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {n:6d} frames: {res[n]['seconds']:7.1f} s ({n / res[n]['seconds']:6.1f} frames/s,"
              f" {n * OBJECTS / res[n]['seconds']:7.0f} instances/s), peak RSS {res[n]['peak_rss_mb']:6.0f} MB",
              flush=True)
    ratio = res[args.n2]["peak_rss_mb"] / res[args.n1]["peak_rss_mb"]
    print(f"  peak RSS ratio {args.n2}/{args.n1}: x{ratio:.3f} (flat = 1.0)")
    for n in (args.n1, args.n2):
        shutil.rmtree(OUT / f"child_{n}", ignore_errors=True)
    shutil.rmtree(OUT / "baseline", ignore_errors=True)
    shutil.rmtree(OUT / "ours", ignore_errors=True)


if __name__ == "__main__":
    main()
