"""A click without the browser, stage by stage (issues 7 and 20.2).

Same process, same tiny SAM 2.1 network at ``--image-size`` (default 1024, random weights), same
1280x720 frame with its image features cached, same point; interleaved rounds, each round one call
of each, medians (and the median of the per-round differences):

* **raw**: upstream ``SAM2VideoPredictor.add_new_points_or_box`` + ``(mask_logits > 0).cpu().numpy()``
  (``reset_state`` before each call, untimed);
* **session**: ``VideoSession.add_points`` (SAM2 + the store write: RLE + SQLite);
* **widget**: ``Annotator.click`` on the widget (ipycanvas built, no kernel: the comm send is the
  widget library's own path without a frontend), with ``Annotator.last_click_timings`` per stage:
  predict (SAM2), overlay (the clicked object's mask mapped to the display + palette overlay), encode
  (PNG), send (to the canvas comm), markers (click rings), shown (click start -> overlay handed to the
  comm), store_write (after the overlay), total. The click is undone between rounds (untimed).

The browser's own part (decode, composite) is ``bench_widget.py``'s.

    .venv/bin/python bench/bench_click_kernel.py [--clicks N] [--image-size S] [--size WxH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=15, help="interleaved rounds (one call of each per round)")
    ap.add_argument("--image-size", type=int, default=1024)
    ap.add_argument("--size", default="1280x720", help="frame size WxH (the canvas is at most 1280x720)")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    import torch
    from PIL import Image

    from dl_utils.ipy_utils import Annotator
    from dl_utils.ipy_utils.controller import CLICK_STAGES
    from dl_utils.sam2_loader import build_sam2_model
    from dl_utils.sam2al import VideoSession
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames, write_video
    from tests.conftest import shared_file

    tmp = Path(tempfile.mkdtemp(prefix="dl_utils_click_"))
    clip = write_video(tmp / "clip.mp4", open_frames(shared_file("bedroom.mp4"), stop=3, resize=(w, h)),
                       fps=30, preset="ultrafast")
    model = build_sam2_model("sam2.1_hiera_tiny", image_size=args.image_size, random_weights=True, video=True,
                             device="cpu")
    for i, img in enumerate(open_frames(clip)):
        Image.fromarray(img).save(tmp / f"{i:05d}.jpg", quality=95)
    state = model.init_state(str(tmp))
    src = open_frames(clip)
    x, y = w // 2, h // 2
    session = VideoSession(src, AnnotationStore.create(tmp / "s.sqlite", src.media_info()), sam_model=model)
    pts, lab = np.array([[x, y]], np.float32), np.array([1], np.int32)
    session.add_points(0, 1, [[x, y, 1]], label="object")  # warm-up: frame 0's features
    session.clear_prompts(0, 1)
    wsession = VideoSession(open_frames(clip), AnnotationStore.create(tmp / "w.sqlite", src.media_info()),
                            sam_model=model)
    ann = Annotator(wsession)
    ann.new_object("object")
    ann.click(x, y)  # warm-up
    ann.undo()
    with torch.inference_mode():
        model.add_new_points_or_box(state, 0, 1, points=pts, labels=lab)
    raw, ours, widget = [], [], []
    stages: dict[str, list[float]] = {s: [] for s in CLICK_STAGES}
    for _ in range(args.clicks):
        model.reset_state(state)
        t = time.perf_counter()
        _, _, logits = model.add_new_points_or_box(state, 0, 1, points=pts, labels=lab)
        (logits[0, 0] > 0).cpu().numpy()
        raw.append(time.perf_counter() - t)
        t = time.perf_counter()
        session.add_points(0, 1, [[x, y, 1]])
        ours.append(time.perf_counter() - t)
        session.clear_prompts(0, 1)
        t = time.perf_counter()
        got = ann.click(x, y)
        widget.append(time.perf_counter() - t)
        assert got is not None, ann.status
        for s, v in ann.last_click_timings.items():
            stages[s].append(v)
        ann.undo()

    def med(v: list[float]) -> float:
        return float(np.median(v)) * 1000

    r = med(raw)
    view = ann.ui.view
    assert view is not None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; tiny@{args.image_size}, {w}x{h} frame, "
          f"canvas {view.canvas_size[0]}x{view.canvas_size[1]}; median of {args.clicks} interleaved rounds; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (shared machine)")
    print(f"upstream add_new_points_or_box: {r:.1f} ms")
    o = med(ours)
    print(f"VideoSession.add_points (+ store write): {o:.1f} ms  -> {o / r:.2f}x, {o - r:+.1f} ms "
          f"(per-round median {med([a - b for a, b in zip(ours, raw)]):+.1f} ms)")
    wt = med(widget)
    print(f"Annotator.click (SAM2 + overlay + send + store write): {wt:.1f} ms  -> {wt / r:.2f}x, {wt - r:+.1f} ms")
    sh = stages["shown"]
    print(f"  mask handed to the canvas comm ('shown'): {med(sh):.1f} ms -> {med(sh) / r:.2f}x raw, "
          f"{med(sh) - r:+.1f} ms (per-round median {med([a - b for a, b in zip(sh, raw)]):+.1f} ms)")
    print("  stages (median ms): " + ", ".join(f"{s} {med(v):.1f}" for s, v in stages.items()))


if __name__ == "__main__":
    main()
