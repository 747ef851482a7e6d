"""Propagation cost per frame with 1, 5 and 20 objects: dl_utils.sam2al.VideoSession vs raw SAM2 (issue 20.4).

Raw = ``SAM2VideoPredictor.init_state`` (JPEG folder) + one click per object on frame 0 +
``propagate_in_video`` with the ``logits > 0`` -> numpy step every caller does. Upstream keeps all
objects in one inference state: the image encoder runs once per frame and its features are shared,
then the memory attention, mask decoder and memory encoder run once per object
(``_run_single_frame_inference(batch_size=1)`` per object slice). Ours = ``VideoSession`` with the
same clicks, ``propagate("forward")`` into an SQLite store (pipelined: ``pipeline=True``), which calls the
same per-object inference: the image features are computed once per frame for all objects there too.

Per count: ``--rounds`` interleaved rounds (raw, ours, ours with ``pipeline=False``, in a rotating
order), per round the ratio raw seconds / our seconds (> 1: we are cheaper per frame); the figure is
the median of the per-round ratios. The cost per frame (propagation seconds / propagated frames) and
per object-frame are printed beside it, with the load average: on a shared machine a process with
more busy threads gets a larger share of the cores, so judge the pipelined arm on a quiet machine.
Tiny SAM 2.1 at 256 px, random weights (cost does not depend on the weights).

    .venv/bin/python bench/bench_objects.py [--rounds 7] [--frames 12] [--counts 1,5,20] [--image-size 256]

Writes only under bench/out/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")  # upstream's per-call progress bars would bury the figures

import bench_sam2al as b  # noqa: E402  (the clip, the tiny model, run_raw/run_ours)


def object_prompts(n: int, w: int, h: int) -> list[tuple[int, list[list[float]]]]:
    """``n`` one-click objects on a grid over the frame (distinct, deterministic)."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = []
    for k in range(n):
        r, c = divmod(k, cols)
        out.append((k + 1, [[(c + 0.5) / cols * w, (r + 0.5) / rows * h, 1]]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--frames", type=int, default=12, help="frames in the clip (the first holds the clicks)")
    ap.add_argument("--counts", default="1,5,20", help="comma list of object counts")
    ap.add_argument("--image-size", type=int, default=256)
    args = ap.parse_args()
    import torch

    counts = [int(c) for c in args.counts.split(",") if c]
    b.OUT.mkdir(parents=True, exist_ok=True)
    bedroom = b.SHARED / "bedroom.mp4"
    video = bedroom if bedroom.is_file() else b.make_video(b.OUT / "sam2al_synth_clip.mp4", args.frames, 960, 540)
    folder = b.jpeg_folder(video, args.frames, b.OUT / f"sam2al_clip{args.frames}")
    from PIL import Image

    with Image.open(next(iter(sorted(folder.glob("*.jpg"))))) as im:
        w, h = im.size
    model = b.tiny(args.image_size)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image_size {args.image_size}, "
          f"{args.frames} frames of {video.name}, {args.rounds} rounds; load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    b.run_raw(model, folder, object_prompts(1, w, h))  # warm-up
    b.run_ours(model, folder, b.OUT / "objects.sqlite", object_prompts(1, w, h))
    steps = args.frames - 1
    results: dict = {"frames": args.frames, "rounds": args.rounds, "image_size": args.image_size, "counts": {}}
    table = []
    for n in counts:
        prompts = object_prompts(n, w, h)
        raw_t, our_t, nop_t = [], [], []
        for r in range(args.rounds):
            order = ["raw", "ours", "nopipe"]
            order = order[r % 3:] + order[:r % 3]  # nobody always runs first
            for arm in order:
                if arm == "raw":
                    raw_t.append(b.run_raw(model, folder, prompts))
                else:
                    (our_t if arm == "ours" else nop_t).append(
                        b.run_ours(model, folder, b.OUT / "objects.sqlite", prompts, pipeline=arm == "ours"))
            print(f"  {n:>2} objects, round {r + 1}: raw {raw_t[-1] / steps * 1000:.1f} ms/frame, ours "
                  f"{our_t[-1] / steps * 1000:.1f} ms/frame (pipeline=False {nop_t[-1] / steps * 1000:.1f}), "
                  f"ratio raw/ours {raw_t[-1] / our_t[-1]:.3f} (pipeline=False {raw_t[-1] / nop_t[-1]:.3f}); "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        ratios = [a / c for a, c in zip(raw_t, our_t)]
        nratios = [a / c for a, c in zip(raw_t, nop_t)]
        med, nmed = statistics.median(ratios), statistics.median(nratios)
        rm, om = statistics.median(raw_t) / steps, statistics.median(our_t) / steps
        results["counts"][n] = {"raw_s": raw_t, "ours_s": our_t, "ours_nopipe_s": nop_t,
                                "ratio_per_round": ratios, "ratio": med,
                                "nopipe_ratio_per_round": nratios, "nopipe_ratio": nmed,
                                "raw_ms_per_frame": rm * 1000, "ours_ms_per_frame": om * 1000}
        print(f"  {n:>2} objects: per-round ratios " + " ".join(f"{x:.3f}" for x in ratios)
              + f" -> median {med:.3f}; pipeline=False " + " ".join(f"{x:.3f}" for x in nratios)
              + f" -> median {nmed:.3f}", flush=True)
        table.append((n, rm * 1000, om * 1000, rm * 1000 / n, om * 1000 / n, med, nmed))
    load = os.getloadavg()
    results["load_average_end"] = load
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| objects | raw ms/frame | ours ms/frame | raw ms/object-frame | ours ms/object-frame "
          "| raw time / our time, median of per-round ratios (goal >= 1.0) | same, pipeline=False |")
    print("|---|---|---|---|---|---|---|")
    for n, rm, om, ro, oo, med, nmed in table:
        print(f"| {n} | {rm:.1f} | {om:.1f} | {ro:.1f} | {oo:.1f} | {med:.3f}x | {nmed:.3f}x |")
    (b.OUT / "objects.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
