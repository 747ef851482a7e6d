"""``dl-utils batch`` against a shell loop of ``dl-utils annotate`` (issue 16), one run.

8 synthetic clips x 30 frames (a moving square on a gradient, 320x180), one click file shared by all,
the tiny SAM 2.1 config with random weights at ``--image-size`` (speed does not depend on the weight
values). Three ways to annotate all of them, each starting from an empty output folder:

* **loop**: ``dl-utils annotate CLIP --points ... --out ...`` once per clip, one process after another,
  as a shell ``for`` loop would (each process imports torch and builds SAM2 again; torch uses every core);
* **local**: :func:`dl_utils.batch.run.run_batch` with :class:`~dl_utils.batch.executors.LocalExecutor`
  (``--workers 2``, one torch thread each), in a fresh process;
* **ray**: the same with :class:`~dl_utils.batch.ray_executor.RayExecutor` (2 actors, one thread
  each) on a local Ray started by the run (its start-up is printed apart); Ray's scheduling overhead
  per source is the driver's submit-to-result time minus the time ``run_source`` took.

Goal: batch >= 1.7x faster than the loop on this 2-core machine (models loaded once per worker, both
cores busy).

    .venv/bin/python bench/bench_batch.py [--clips 8] [--frames 30] [--image-size 256] [--skip ray]

Writes only under bench/out/batch/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "batch"
CLICK = [{"frame": 0, "object": 1, "label": "square", "points": [[40, 40, 1], [250, 150, 0]]}]


def frame(i: int, h: int = 180, w: int = 320) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x + i) % 256, (y * 2) % 256, np.full_like(x, (i * 7) % 256)], -1).astype(np.uint8)
    x0, y0 = 20 + (i * 4) % (w - 80), 20 + (i * 2) % (h - 80)
    img[y0:y0 + 40, x0:x0 + 40] = 255
    return img


def prepare(args: argparse.Namespace) -> dict[str, Path]:
    """Clips, the click file and the random-weight checkpoint (made once, reused by later runs)."""
    import torch

    from dl_utils.sam2_loader import build_sam2_model
    from dl_utils.video_utils import write_video

    clips = OUT / f"clips_{args.clips}x{args.frames}"
    clips.mkdir(parents=True, exist_ok=True)
    for k in range(args.clips):
        p = clips / f"clip{k}.mp4"
        if not p.is_file():
            write_video(p, (frame(i + 3 * k) for i in range(args.frames)), fps=30, preset="ultrafast")
    pts = OUT / "clicks.json"
    pts.write_text(json.dumps(CLICK))
    ckpt = OUT / f"sam_tiny_{args.image_size}.pt"
    if not ckpt.is_file():
        m = build_sam2_model("sam2.1_hiera_tiny", image_size=args.image_size, device="cpu",
                             random_weights=True, seed=0, video=True)
        torch.save({"model": m.state_dict()}, ckpt)
    return {"clips": clips, "points": pts, "ckpt": ckpt}


def fresh(name: str) -> Path:
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def loop(args: argparse.Namespace, data: dict[str, Path]) -> float:
    """One ``dl-utils annotate`` process per clip, one after another."""
    out = fresh("loop")
    t0 = time.perf_counter()
    for clip in sorted(data["clips"].glob("*.mp4")):
        cmd = [sys.executable, "-m", "dl_utils", "annotate", str(clip), "--points", str(data["points"]),
               "--out", str(out / f"{clip.stem}.sqlite"), "--sam-checkpoint", str(data["ckpt"]),
               "--image-size", str(args.image_size), "--device", "cpu"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            sys.exit(f"annotate failed on {clip}: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def batch(args: argparse.Namespace, data: dict[str, Path], engine: str) -> dict:
    """The batch in a fresh process (its wall time includes Python start, as a command's would)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", engine, "--clips", str(args.clips),
                           "--frames", str(args.frames), "--image-size", str(args.image_size)],
                          capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{engine} batch failed: {proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall"] = wall
    return res


def child(args: argparse.Namespace) -> None:
    """Inside the fresh process: plan the sources, run the batch, print one JSON line."""
    from dl_utils.batch.executors import LocalExecutor
    from dl_utils.batch.options import BatchOptions
    from dl_utils.batch.plan import BatchSource
    from dl_utils.batch.run import run_batch
    from dl_utils.drivers.options import SamOptions

    data = prepare(args)
    out = fresh(args.child)
    srcs = [BatchSource(source=c, name=c.name, store_name=f"{c.stem}.sqlite", points=data["points"])
            for c in sorted(data["clips"].glob("*.mp4"))]
    opts = BatchOptions(sam=SamOptions(checkpoint=data["ckpt"], image_size=args.image_size, device="cpu"))
    info: dict = {}
    if args.child == "ray":
        import ray

        from dl_utils.batch.ray_executor import RayExecutor

        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        info["ray_init"] = time.perf_counter() - t
        ex: object = RayExecutor(workers=2, threads=1)
    else:
        ex = LocalExecutor(2, 1)
    t = time.perf_counter()
    results = run_batch(srcs, opts, out, executor=ex, progress=False)  # type: ignore[arg-type]
    info["run"] = time.perf_counter() - t
    info["done"] = sum(r.status == "done" for r in results)
    if args.child == "ray":
        trips = ex.round_trips  # type: ignore[attr-defined]
        info["overhead"] = statistics.median(rt - s for _, rt, s in trips)
        t = time.perf_counter()
        again = run_batch(srcs, opts, out, executor=ex, progress=False)  # type: ignore[arg-type]
        info["rerun"] = time.perf_counter() - t
        info["rerun_skipped"] = sum(r.status == "skipped" for r in again)
        info["overhead_skipped"] = statistics.median(rt for _, rt, _ in ex.round_trips)  # type: ignore[attr-defined]
    print(json.dumps(info))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--skip", default="", help="comma list of: loop, local, ray")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        return child(args)
    skip = set(filter(None, args.skip.split(",")))
    data = prepare(args)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.clips} clips x "
          f"{args.frames} frames, tiny SAM2 (random weights) at {args.image_size} px, one click each")
    base = None if "loop" in skip else loop(args, data)
    if base is not None:
        print(f"loop of dl-utils annotate   {base:7.1f} s")
    for engine in ("local", "ray"):
        if engine in skip:
            continue
        r = batch(args, data, engine)
        ratio = f"  {base / r['wall']:.2f}x the loop" if base else ""
        print(f"batch {engine:5s} --workers 2    {r['wall']:7.1f} s{ratio}  ({r['done']} done; run {r['run']:.1f} s)")
        if engine == "ray":
            print(f"  ray.init {r['ray_init']:.1f} s (in the wall time); without it "
                  f"{base / (r['wall'] - r['ray_init']):.2f}x" if base else f"  ray.init {r['ray_init']:.1f} s")
            print(f"  scheduling overhead per source: {r['overhead'] * 1000:.0f} ms (median submit-to-result "
                  f"minus run_source); re-run {r['rerun']:.2f} s, {r['rerun_skipped']} skipped, "
                  f"{r['overhead_skipped'] * 1000:.0f} ms per skipped source")


if __name__ == "__main__":
    main()
