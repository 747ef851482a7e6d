"""Grounded video tracking: time per stage and the share of detection at several ``--every`` (issue 5).

``GroundedVideoTracker`` (GroundingDINO on keyframes inside SAM2's propagation callback) runs over one
clip for each ``every`` N, each time on a fresh store and a fresh ``VideoSession`` (the networks are
built once and shared). Wall time is split into stages by wrapping library calls from here (nothing in
the library is edited; the wrappers are removed afterwards):

* **decode**: frames SAM2 reads (``LazyFrames.__getitem__``: decode, resize to S x S, normalise, or a
  cache hit / a wait on the prefetch thread) and the detector's full-resolution reads
  (``FrameSource.__getitem__`` on the main thread). The prefetch thread decodes the next frame while
  SAM2 works; that time overlaps the other stages and is printed apart (``bg decode``), not summed;
* **detect**: ``detector.detect`` (pre-processing, forward pass, labels, NMS);
* **segment**: the prompts, ``session.add_box`` (and ``remove_object``): SAM2 on the keyframe;
* **propagate**: ``session.propagate`` minus the stages nested inside it (the detector runs inside its
  callback; frames are decoded and written inside it);
* **store**: ``AnnotationStore`` writes (``write_frame``/``write_frames``, ``delete_instances``, run
  records, ``add_object``) and reads (``read_frame``, ``objects``), split in a footnote;
* **other**: the rest of ``tracker.run()`` (matching, the keyframe policy, the tracker's own glue).

A stage stack timer gives each stage its *self* time: a nested stage's time is subtracted from its
parent, so the stages add up to the wall time with nothing counted twice.

Baselines on the same clip: the detector called directly on every frame once (frames decoded
beforehand; ms/frame), and raw ``SAM2VideoPredictor`` (``init_state`` on a JPEG folder of the clip,
``add_new_points_or_box`` with the first keyframe's boxes, ``propagate_in_video`` forward).

Models: a small transformers GroundingDINO with random weights (tests/dino_fixtures.py
``make_hf_model_dir``; its scores are spread, ``--box-threshold auto`` picks the threshold that gives
about 3 boxes per frame on sample frames) and tiny SAM 2.1 at 256 px with random weights, or real
ones with ``--dino-model`` / ``--sam-checkpoint``. Random SAM2 masks never match the detector's boxes,
so every keyframe would start new objects and the cost would grow with the keyframe count; the
tracker's ``max_objects`` cap (``--max-objects``, default 4) keeps the object count, and so the SAM2
cost, the same at every ``every``: the stage shares then compare like with like.

    .venv/bin/python bench/bench_grounded.py [--quick] [--frames N] [--every 1,10,30] [--threads N]

Writes only under bench/out/ (git-ignored): the resized clip, its JPEG folder, the stores, the model
folder and grounded.json.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import sys
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
SHARED = Path(os.environ.get("DL_UTILS_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

STAGES = ("decode", "detect", "segment", "propagate", "store")
PROMPT = "car. person. dog."  # words of the random-weight model's test vocabulary


# ------------------------------------------------------------------------------------ timing
class StageTimer:
    """Self time per stage on the owner thread; calls from other threads go to ``background``."""

    def __init__(self) -> None:
        self.owner = threading.current_thread()
        self.self_time: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.background: dict[str, float] = defaultdict(float)
        self._stack: list[float] = []  # per open stage: time spent in stages nested inside it
        self._bg = threading.local()  # nesting depth on other threads (only the outermost call counts)

    def reset(self) -> None:
        self.self_time.clear()
        self.calls.clear()
        self.background.clear()
        self._stack.clear()

    def wrap(self, stage: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if threading.current_thread() is not self.owner:
                depth = getattr(self._bg, "depth", 0)
                self._bg.depth = depth + 1
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._bg.depth = depth
                    if depth == 0:
                        self.background[stage] += time.perf_counter() - t0
            self._stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                nested = self._stack.pop()
                self.self_time[stage] += dt - nested
                self.calls[stage] += 1
                if self._stack:
                    self._stack[-1] += dt

        timed.__bench_wrapped__ = True
        return timed


@contextlib.contextmanager
def patched(timer: StageTimer, session, detector, store):
    """Wrap the calls of one run (classes for dunder methods, instances for the rest); undo after."""
    from dl_utils.sam2al.frames import LazyFrames

    undo: list = []

    def on_class(cls, name, stage):
        old = cls.__dict__.get(name)
        setattr(cls, name, timer.wrap(stage, getattr(cls, name)))
        undo.append(lambda: setattr(cls, name, old) if old is not None else delattr(cls, name))

    def on_obj(obj, name, stage):
        setattr(obj, name, timer.wrap(stage, getattr(obj, name)))
        undo.append(lambda: obj.__dict__.pop(name, None))

    on_class(LazyFrames, "__getitem__", "decode")
    on_class(LazyFrames, "_decode", "decode")  # main thread: nested in __getitem__; prefetch: background
    on_class(type(session.source), "__getitem__", "decode")
    on_obj(detector, "detect", "detect")
    on_obj(session, "add_box", "segment")
    on_obj(session, "remove_object", "segment")
    on_obj(session, "propagate", "propagate")
    for name in ("write_frame", "write_frames", "delete_instances", "begin_run", "finish_run", "add_object"):
        on_obj(store, name, "store")
    for name in ("read_frame", "objects"):
        on_obj(store, name, "store_read")
    try:
        yield
    finally:
        for u in reversed(undo):
            u()


# ------------------------------------------------------------------------------------ inputs
def synthetic(i: int, w: int, h: int) -> np.ndarray:
    """A gradient with three moving blocks (one enters late), for when bedroom.mp4 is absent."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w + i) % 256, (y * 255 // h) % 256, np.full_like(x, 90)], -1).astype(np.uint8)
    for k, (cx, cy, r, col) in enumerate(((0.3, 0.5, 0.18, (240, 40, 40)), (0.7, 0.35, 0.12, (40, 200, 60)),
                                          (-0.2 + i / 150, 0.7, 0.1, (30, 30, 220)))):
        px, py = (cx + 0.1 * np.sin(i / 40 + k)) * w, (cy + 0.1 * np.cos(i / 55 + k)) * h
        img[(np.abs(x - px) < r * h) & (np.abs(y - py) < r * h)] = col
    return img


def make_clip(n: int, size: tuple[int, int], gop: int) -> tuple[Path, str]:
    from dl_utils.errors import DlUtilsError
    from dl_utils.video_utils import open_frames, write_video

    bedroom = SHARED / "bedroom.mp4"
    name = "bedroom" if bedroom.is_file() else "synthetic"
    path = OUT / f"grounded_{name}_{n}_{size[0]}x{size[1]}_gop{gop}.mp4"
    if path.exists():
        try:
            if len(open_frames(path)) == n:
                return path, name
        except DlUtilsError:
            pass
        path.unlink()
    if name == "bedroom":
        src = open_frames(bedroom, stop=n - 1, resize=size)
        if len(src) < n:
            raise SystemExit(f"{bedroom} has {len(src)} frames; use --frames {len(src)} or fewer")
        frames = iter(src)
    else:
        frames = (synthetic(i, *size) for i in range(n))
    write_video(path, frames, fps=30, preset="fast", crf=18, gop=gop, total=n)
    return path, name


def jpeg_folder(video: Path, out: Path) -> Path:
    from PIL import Image

    from dl_utils.video_utils import open_frames

    src = open_frames(video)
    if out.is_dir() and len(list(out.glob("*.jpg"))) == len(src):
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for i, img in enumerate(src):
        Image.fromarray(img).save(out / f"{i:05d}.jpg", quality=95)
    return out


def build_detector(args, box_threshold: float):
    from dl_utils.dinoal import load_detector

    if args.dino_model:
        return load_detector(args.dino_backend, args.dino_model, device=args.device,
                             box_threshold=box_threshold, on_unknown="keep")
    from tests.dino_fixtures import make_hf_model_dir

    folder = OUT / "grounded_gd_hf_tiny"
    if not (folder / "config.json").is_file():
        make_hf_model_dir(folder)
    return load_detector("transformers", str(folder), device=args.device, box_threshold=box_threshold)


def calibrate(args, frames: list[np.ndarray]) -> tuple[float, list[int]]:
    """The box threshold giving about ``--target-boxes`` boxes per frame on sample frames.

    One detection at a low threshold per sample; for a higher threshold the kept boxes are those
    above it (NMS keeps the same boxes: suppression only ever comes from higher-scored boxes).
    """
    det = build_detector(args, 0.05)
    samples = [frames[i] for i in np.linspace(0, len(frames) - 1, min(8, len(frames))).astype(int)]
    scores = [det.detect(f, args.prompt).scores for f in samples]
    best = None
    for t in np.arange(0.05, 0.96, 0.01):
        counts = [int((s > t).sum()) for s in scores]
        med = float(np.median(counts))
        key = (abs(med - args.target_boxes), -t)
        if best is None or key < best[0]:
            best = (key, round(float(t), 2), counts)
    return best[1], best[2]


def build_sam(args):
    from dl_utils.sam2_loader import build_sam2_model

    if args.sam_checkpoint:
        return build_sam2_model(args.sam_model, args.sam_checkpoint, image_size=args.image_size,
                                device=args.device, video=True)
    return build_sam2_model(args.sam_model, image_size=args.image_size, device=args.device,
                            random_weights=True, seed=0, video=True)


# ------------------------------------------------------------------------------------ runs
def run_tracker(args, video: Path, sam, detector, every: int, timer: StageTimer) -> dict:
    from dl_utils.dinoal.video import GroundedVideoTracker
    from dl_utils.sam2al import VideoSession
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames

    t0 = time.perf_counter()
    src = open_frames(video)
    store = AnnotationStore.create(OUT / f"grounded_every{every}.sqlite", src.media_info(), overwrite=True)
    session = VideoSession(src, store, sam_model=sam)
    tracker = GroundedVideoTracker(session, detector, args.prompt, every=every, max_objects=args.max_objects)
    setup = time.perf_counter() - t0
    timer.reset()
    with patched(timer, session, detector, store):
        t0 = time.perf_counter()
        summary = tracker.run(progress=False)
        total = time.perf_counter() - t0
    stages = {s: timer.self_time.get(s, 0.0) for s in STAGES}
    reads = timer.self_time.get("store_read", 0.0)
    writes = stages["store"]
    stages["store"] = writes + reads
    stages["other"] = total - sum(stages.values())
    info = session.memory_info()
    kf = summary["keyframes"]
    res = {
        "every": every, "status": summary["status"], "total_s": total, "setup_s": setup,
        "keyframes": len(kf), "keyframe_list": kf,
        "early_keyframes": sum(1 for a, b in zip(kf, kf[1:]) if b - a < every),
        "detections": summary["detections"], "objects": len(summary["objects"]),
        "ended": len(summary["ended"]), "passes": summary["passes"],
        "stages_s": stages, "store_writes_s": writes, "store_reads_s": reads,
        "calls": dict(timer.calls), "bg_decode_s": timer.background.get("decode", 0.0),
        "frames_decoded": info.get("decoded"),
        "instances": store_count(store),
    }
    session.close()
    store.close()
    return res


def store_count(store) -> int:
    try:
        return sum(len(store.read_frame(f)) for f in store.media.frames)
    except Exception:  # noqa: BLE001  only a figure for the report
        return -1


def detector_baseline(detector, frames: list[np.ndarray], prompt: str) -> tuple[float, list[int]]:
    detector.detect(frames[0], prompt)  # warm-up
    counts = []
    t0 = time.perf_counter()
    for f in frames:
        counts.append(len(detector.detect(f, prompt)))
    return (time.perf_counter() - t0) / len(frames), counts


def raw_baseline(sam, folder: Path, boxes: np.ndarray) -> dict:
    import torch

    # on CUDA in bf16 autocast, as upstream's README and benchmark.py run it (and as VideoSession does)
    cuda = next(sam.parameters()).device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    t0 = time.perf_counter()
    with torch.inference_mode(), amp:
        st = sam.init_state(str(folder))
        t1 = time.perf_counter()
        for k, b in enumerate(boxes):
            sam.add_new_points_or_box(st, 0, k + 1, box=np.asarray(b, dtype=np.float32))
        t2 = time.perf_counter()
        n = 0
        for _f, _ids, logits in sam.propagate_in_video(st):
            (logits[:, 0] > 0).cpu().numpy()
            n += 1
        t3 = time.perf_counter()
    return {"load_s": t1 - t0, "prompt_s": t2 - t1, "propagate_s": t3 - t2, "total_s": t3 - t0,
            "frames": n, "objects": len(boxes), "fps": n / (t3 - t2)}


# ------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 frames")
    ap.add_argument("--frames", type=int, default=None, help="clip length (default 200, --quick 60)")
    ap.add_argument("--every", default="1,10,30", help="comma list of keyframe intervals")
    ap.add_argument("--size", default="480x270", help="clip size WxH (bedroom.mp4 is resized to it)")
    ap.add_argument("--gop", type=int, default=30, help="keyframe interval of the written clip")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--box-threshold", default="auto", help="a number, or auto (about --target-boxes per frame)")
    ap.add_argument("--target-boxes", type=float, default=3)
    ap.add_argument("--max-objects", type=int, default=4,
                    help="tracker cap (random-weight SAM2 masks never match the detector's boxes, so without "
                         "a cap every keyframe would start new objects; 0: no cap)")
    ap.add_argument("--dino-model", default=None, help="real detector weights (folder, file, name or hub id)")
    ap.add_argument("--dino-backend", default="transformers", choices=("transformers", "groundingdino"))
    ap.add_argument("--sam-model", default="sam2.1_hiera_tiny")
    ap.add_argument("--sam-checkpoint", default=None, help="real SAM2 weights (else random)")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--skip-baselines", action="store_true")
    args = ap.parse_args()
    n = args.frames or (60 if args.quick else 200)
    args.max_objects = args.max_objects or None
    everies = [int(v) for v in args.every.split(",") if v.strip()]
    size = tuple(int(v) for v in args.size.lower().split("x"))
    OUT.mkdir(parents=True, exist_ok=True)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    video, clip_name = make_clip(n, size, args.gop)
    from dl_utils.video_utils import open_frames

    frames = list(open_frames(video))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{os.cpu_count()} CPUs; clip {video.name}: {n} frames {size[0]}x{size[1]} ({clip_name}), "
          f"SAM2 {args.sam_model} @ {args.image_size} ({'weights' if args.sam_checkpoint else 'random weights'}), "
          f"detector {'%s %s' % (args.dino_backend, args.dino_model) if args.dino_model else 'transformers tiny (random weights)'}; "
          f"prompt {args.prompt!r}", flush=True)

    if args.box_threshold == "auto":
        thr, counts = calibrate(args, frames)
        print(f"box_threshold auto -> {thr} (boxes on 8 sample frames: {counts})", flush=True)
    else:
        thr = float(args.box_threshold)
    detector = build_detector(args, thr)
    sam = build_sam(args)
    results: dict = {"frames": n, "size": list(size), "clip": clip_name, "box_threshold": thr,
                     "threads": torch.get_num_threads(), "prompt": args.prompt, "runs": []}

    base_det = None
    if not args.skip_baselines:
        ms, counts = detector_baseline(detector, frames, args.prompt)
        base_det = ms
        results["detector_direct_ms_per_frame"] = ms * 1000
        results["boxes_per_frame"] = {"min": min(counts), "median": float(np.median(counts)), "max": max(counts)}
        print(f"detector alone: {ms * 1000:.1f} ms/frame over {n} frames; boxes per frame "
              f"min {min(counts)} median {np.median(counts):g} max {max(counts)}", flush=True)

    timer = StageTimer()
    # warm-up: a few frames through the whole pipeline (allocator, threads, first-call costs)
    warm = OUT / f"grounded_warm_{size[0]}x{size[1]}.mp4"
    if not warm.exists():
        from dl_utils.video_utils import write_video

        write_video(warm, frames[:6], fps=30, preset="fast", gop=args.gop, total=6)
    run_tracker(args, warm, sam, detector, 3, timer)

    for every in everies:
        r = run_tracker(args, video, sam, detector, every, timer)
        results["runs"].append(r)
        st = r["stages_s"]
        print(f"every {every}: {r['total_s']:.1f} s, {r['keyframes']} keyframes ({r['early_keyframes']} early), "
              f"{r['objects']} objects ({r['ended']} ended), {r['detections']} detections, {r['passes']} passes, "
              f"status {r['status']}; " + ", ".join(f"{k} {v:.1f}" for k, v in st.items())
              + f"; bg decode {r['bg_decode_s']:.1f} s; calls {r['calls']}", flush=True)

    raw = None
    if not args.skip_baselines:
        d0 = detector.detect(frames[0], args.prompt)
        folder = jpeg_folder(video, OUT / f"grounded_jpeg_{n}_{size[0]}x{size[1]}")
        raw = raw_baseline(sam, folder, d0.boxes)
        results["raw_sam2"] = raw
        print(f"raw SAM2VideoPredictor, {raw['objects']} boxes of frame 0: propagate {raw['propagate_s']:.1f} s "
              f"({raw['fps']:.2f} fps), init_state (load JPEGs) {raw['load_s']:.1f} s, prompts {raw['prompt_s']:.2f} s",
              flush=True)

    # ------------------------------------------------------------------ table
    print()
    print(f"### {n} frames {size[0]}x{size[1]}, box_threshold {thr}, {torch.get_num_threads()} torch threads")
    print()
    head = ("| every | keyframes | objects | total s | s/frame | " + " | ".join(STAGES + ("other",))
            + " | detect share |")
    print(head)
    print("|" + "|".join(["---:"] * (head.count("|") - 1)) + "|")
    for r in results["runs"]:
        st, tot = r["stages_s"], r["total_s"]
        cells = [f"{st[s]:.1f} ({100 * st[s] / tot:.0f} %)" for s in STAGES + ("other",)]
        print(f"| {r['every']} | {r['keyframes']} | {r['objects']} | {tot:.1f} | {tot / n:.2f} | "
              + " | ".join(cells) + f" | **{100 * st['detect'] / tot:.1f} %** |")
    print()
    for r in results["runs"]:
        per_kf = r["stages_s"]["detect"] / max(r["keyframes"], 1) * 1000
        print(f"every {r['every']}: detect {per_kf:.0f} ms/keyframe; store writes {r['store_writes_s']:.1f} s, "
              f"reads {r['store_reads_s']:.1f} s; decode on the prefetch thread {r['bg_decode_s']:.1f} s "
              f"(overlapped, not in the sum); {r['frames_decoded']} SAM2-size frames decoded; "
              f"{r['instances']} instances stored; setup (store + session) {r['setup_s']:.2f} s")
    if base_det is not None:
        print(f"baseline: detector alone {base_det * 1000:.1f} ms/frame")
    if raw is not None:
        last = next((r for r in results["runs"] if r["every"] == max(everies)), None)
        print(f"baseline: raw SAM2VideoPredictor propagation {raw['propagate_s']:.1f} s for {raw['frames']} frames x "
              f"{raw['objects']} objects ({raw['fps']:.2f} fps; {raw['total_s']:.1f} s with init_state + prompts)")
        if last is not None:
            print(f"ours at every {last['every']}: {last['total_s']:.1f} s = {last['total_s'] / raw['propagate_s']:.2f}x "
                  f"raw propagation, {last['total_s'] / raw['total_s']:.2f}x raw end to end "
                  f"({last['objects']} objects vs {raw['objects']})")
    results["wall_s"] = time.perf_counter() - t_all
    print(f"whole benchmark: {results['wall_s']:.0f} s")
    (OUT / "grounded.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
