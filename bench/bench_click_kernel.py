"""A click without the browser: ``VideoSession.add_points`` vs upstream ``add_new_points_or_box`` (issue 7).

Same process, same tiny SAM 2.1 network at 1024 px (random weights), same 1280x720 frame with its
image features cached, same point; alternating calls, medians. Ours includes writing the instance to
the store (RLE + SQLite); upstream's includes ``(mask_logits > 0).cpu().numpy()``. This isolates what
the session adds to a click from what the browser round trip adds (``bench_widget.py``).

    .venv/bin/python bench/bench_click_kernel.py [--clicks N]
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--clicks", type=int, default=15)
    ap.add_argument("--image-size", type=int, default=1024)
    args = ap.parse_args()
    import torch
    from PIL import Image

    from dl_utils.sam2_loader import build_sam2_model
    from dl_utils.sam2al import VideoSession
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames, write_video
    from tests.conftest import shared_file

    tmp = Path(tempfile.mkdtemp(prefix="dl_utils_click_"))
    clip = write_video(tmp / "clip.mp4", open_frames(shared_file("bedroom.mp4"), stop=3, resize=(1280, 720)),
                       fps=30, preset="ultrafast")
    model = build_sam2_model("sam2.1_hiera_tiny", image_size=args.image_size, random_weights=True, video=True,
                             device="cpu")
    for i, img in enumerate(open_frames(clip)):
        Image.fromarray(img).save(tmp / f"{i:05d}.jpg", quality=95)
    state = model.init_state(str(tmp))
    src = open_frames(clip)
    session = VideoSession(src, AnnotationStore.create(tmp / "s.sqlite", src.media_info()), sam_model=model)
    pts, lab = np.array([[640, 360]], np.float32), np.array([1], np.int32)
    session.add_points(0, 1, [[640, 360, 1]], label="object")  # warm-up: frame 0's features
    session.clear_prompts(0, 1)
    with torch.inference_mode():
        model.add_new_points_or_box(state, 0, 1, points=pts, labels=lab)
    raw, ours = [], []
    for _ in range(args.clicks):
        model.reset_state(state)
        t = time.perf_counter()
        _, _, logits = model.add_new_points_or_box(state, 0, 1, points=pts, labels=lab)
        (logits[0, 0] > 0).cpu().numpy()
        raw.append(time.perf_counter() - t)
        t = time.perf_counter()
        session.add_points(0, 1, [[640, 360, 1]])
        ours.append(time.perf_counter() - t)
        session.clear_prompts(0, 1)
    r, o = float(np.median(raw)) * 1000, float(np.median(ours)) * 1000
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; tiny@{args.image_size}, 1280x720, "
          f"median of {args.clicks}")
    print(f"upstream add_new_points_or_box: {r:.1f} ms")
    print(f"VideoSession.add_points (+ store write): {o:.1f} ms  -> {o / r:.2f}x, {o - r:+.1f} ms")


if __name__ == "__main__":
    main()
