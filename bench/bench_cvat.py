"""Benchmark: push 1,000 frames x 10 objects as masks to the stand-in CVAT server, then re-push 1 %.

Prints, for each step, requests, bytes sent, seconds, and the ratio against the upstream baseline
measured in the same run: ONE plain cvat-sdk ``update_annotations`` (PATCH create) call carrying
the same shapes, built as cvat-sdk models (what a script written with cvat-sdk alone would do).

    .venv/bin/python bench/bench_cvat.py            # 1000 frames x 10 objects, 960x540
    .venv/bin/python bench/bench_cvat.py --quick    # 100 frames x 10 objects

Writes nothing into the repository (the store and the video live in a temporary folder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dl_utils.annotations import Instance, Label, MediaInfo, Source  # noqa: E402
from dl_utils.cv_utils import encode_cvat_rle  # noqa: E402
from dl_utils.store import AnnotationStore  # noqa: E402


def object_mask(frame: int, obj: int, h: int, w: int) -> np.ndarray:
    """An irregular moving blob per (frame, object), like a segmented object (computed in its box)."""
    cx = (80 + obj * 83 + frame * 3) % (w - 120) + 60
    cy = (60 + obj * 47 + frame * 2) % (h - 120) + 60
    r = 30 + (obj * 7) % 25
    R = int(r * 1.35) + 1
    y0, x0 = max(0, cy - R), max(0, cx - R)
    y, x = np.ogrid[y0:min(h, cy + R), x0:min(w, cx + R)]
    ang = np.arctan2(y - cy, x - cx)
    rad = r * (1 + 0.2 * np.sin(3 * ang + 0.3 * frame + obj) + 0.1 * np.cos(7 * ang))
    m = np.zeros((h, w), dtype=bool)
    m[y0:y0 + rad.shape[0], x0:x0 + rad.shape[1]] = np.hypot(x - cx, y - cy) <= rad
    return m


def build_store(path: Path, frames: int, objects: int, h: int, w: int, video: Path) -> AnnotationStore:
    media = MediaInfo(name=video.name, width=w, height=h, frames=list(range(frames)), start=0,
                      stop=frames - 1, step=1, fps=30.0, path=str(video))
    st = AnnotationStore.create(path, media)
    st.set_labels([Label("car", "#ff0000", type="mask"), Label("person", "#00ff00", type="mask")])
    for o in range(1, objects + 1):
        st.add_object("car" if o % 2 else "person", id=o)
    batch = []
    for f in range(frames):
        batch.append((f, [Instance(o, mask=object_mask(f, o, h, w), score=0.9, source=Source.AUTO)
                          for o in range(1, objects + 1)]))
        if len(batch) == 50:
            st.write_frames(batch)
            batch = []
    if batch:
        st.write_frames(batch)
    return st


def write_clip(path: Path, frames: int, h: int, w: int) -> Path:
    from dl_utils.video_utils import write_video

    img = np.zeros((h, w, 3), np.uint8)
    return write_video(path, (img for _ in range(frames)), fps=30, crf=40, preset="ultrafast")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 frames instead of 1000")
    ap.add_argument("--frames", type=int)
    ap.add_argument("--objects", type=int, default=10)
    ap.add_argument("--height", type=int, default=540)
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--max-request-mb", type=float, default=8.0)
    args = ap.parse_args()
    n_frames = args.frames or (100 if args.quick else 1000)
    h, w, k = args.height, args.width, args.objects

    from cvat_sdk import models
    from cvat_sdk.core.proxies.annotations import AnnotationUpdateAction

    from dl_utils.cvat import RetryPolicy, connect, create_task_for_store, push
    from tests.cvat_standin.server import StandinServer  # the stand-in, in a thread

    tmp = tempfile.TemporaryDirectory()
    d = Path(tmp.name)
    t = time.perf_counter()
    video = write_clip(d / "clip.mp4", n_frames, h, w)
    store = build_store(d / "job.sqlite", n_frames, k, h, w, video)
    print(f"store: {n_frames} frames x {k} objects ({w}x{h}) built in {time.perf_counter() - t:.1f} s")

    server = StandinServer().start()
    try:
        conn = connect(server.url, token=server.token, prompt=False, retry=RetryPolicy(base_delay=0.05))
        task = create_task_for_store(conn, store, name="bench", poll_interval=0.05)
        label_ids = {lb["name"]: lb["id"] for lb in conn.get_paginated(
            "/api/labels", {"task_id": task.id}, what="labels")}

        # ---- upstream baseline: one cvat-sdk update_annotations call with the same shapes
        t = time.perf_counter()
        shapes = []
        for f, insts in store.iter_frames():
            for inst in insts:
                shapes.append(models.LabeledShapeRequest(
                    type="mask", frame=f, label_id=label_ids[store.get_object(inst.object_id).label],
                    group=inst.object_id, source="auto", points=encode_cvat_rle(inst.mask),
                    score=inst.score, occluded=False, z_order=0, rotation=0.0, attributes=[]))
        t_build = time.perf_counter() - t
        log0 = len(server.log)
        t = time.perf_counter()
        conn.client.tasks.retrieve(task.id).update_annotations(
            models.PatchedLabeledDataRequest(shapes=shapes), action=AnnotationUpdateAction.CREATE)
        t_send = time.perf_counter() - t
        base_req = len(server.log) - log0
        base_bytes = sum(e.bytes for e in server.log[log0:])
        base_time = t_build + t_send
        print(f"baseline cvat-sdk update_annotations: {len(shapes)} shapes, {base_req} request(s),"
              f" {base_bytes / 1e6:.2f} MB sent, {base_time:.2f} s ({t_build:.2f} s building models,"
              f" {t_send:.2f} s sending)")
        conn.request("DELETE", f"/api/tasks/{task.id}/annotations", what="clearing the baseline")

        # ---- dl_utils push
        mb = int(args.max_request_mb * 1024 * 1024)
        log0 = len(server.log)
        rep = push(store, conn, task.id, max_request_bytes=mb)
        n_patch = sum(e.method == "PATCH" for e in server.log[log0:])
        print(f"push:            {rep.created} created in {rep.requests} requests"
              f" ({n_patch} PATCH), {rep.bytes_sent / 1e6:.2f} MB sent,"
              f" {rep.seconds:.2f} s  -> time {rep.seconds / base_time:.2f}x baseline,"
              f" bytes {rep.bytes_sent / base_bytes:.2f}x")
        first_bytes = rep.bytes_sent

        # ---- re-push after changing 1 % of the frames
        rng = np.random.default_rng(0)
        changed = sorted(rng.choice(n_frames, size=max(1, n_frames // 100), replace=False).tolist())
        for f in changed:
            store.write_frame(f, [Instance(o, mask=np.roll(object_mask(f, o, h, w), 3, axis=1),
                                           score=0.8, source=Source.SEMI_AUTO) for o in range(1, k + 1)])
        for verify in (True, False):
            if not verify:  # change the same frames again so there is something to send
                for f in changed:
                    store.write_frame(f, [Instance(o, mask=object_mask(f, o, h, w), score=0.9)
                                          for o in range(1, k + 1)])
            rep2 = push(store, conn, task.id, max_request_bytes=mb, verify=verify)
            print(f"re-push 1 % (verify={verify}): {rep2.updated} updated, {rep2.unchanged} unchanged,"
                  f" {rep2.requests} requests, {rep2.bytes_sent / 1e6:.3f} MB sent"
                  f" ({100 * rep2.bytes_sent / first_bytes:.2f} % of the first push),"
                  f" {rep2.bytes_received / 1e6:.2f} MB read, {rep2.seconds:.2f} s"
                  f" -> time {rep2.seconds / base_time:.2f}x baseline")
        conn.close()
    finally:
        server.stop()
        store.close()
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
