"""SAM 3 video (issue 17): ``Sam3VideoSession`` against sam3's own video path, one run, ratios.

CPU, random weights, a reduced spec: by default the tiny spec of tests/sam3_fixtures.py (112 px,
2-block ViT, 2-layer text encoder; ``--image-size`` / ``--depth`` give a larger one, printed and
recorded). Speed and memory do not depend on the weight values, but the *number of objects* does:
the released thresholds (0.5 / 0.7) keep nothing from a random network, so detection and new-object
thresholds are lowered (``--threshold``, default 0.2, as the tests do) and the objects per frame are
printed beside each figure. Frames are cut from ../shared/data/bedroom.mp4 (resized to ``--clip-size``).

1. **throughput** (goal ours/theirs >= 0.95): the same JPEG folder, the same text prompt.
   Theirs = the model-level API sam3's ``Sam3VideoPredictor`` wraps (that wrapper needs CUDA:
   it builds the model with ``.cuda()`` and sets up NCCL/distributed state), i.e.
   ``model.init_state(resource_path=FOLDER)`` + ``add_prompt(text)`` + ``propagate_in_video``,
   consuming each yielded frame's masks. Ours = ``Sam3VideoSession(model, FOLDER, store, text)``
   + ``propagate()`` (frames decoded on demand, every mask RLE-encoded into an SQLite store in a temp
   dir). frames/s = frames / wall time from nothing loaded to the last frame (theirs includes
   ``init_state``, which decodes all frames up front; ours includes opening the store and the
   session); the propagation-only rates are printed too. Interleaved repeats, medians; the outputs of
   the first repeat are checked equal (same objects on every frame).
2. **memory** (goal ours peak RSS(1,000 frames) / peak RSS(100 frames) <= 1.2): each length in a
   fresh subprocess: build the model, reset the peak (``/proc/self/clear_refs``), run, read
   ``VmHWM`` (``ru_maxrss`` where the reset is unavailable); RSS is also sampled every
   ``--sample-every`` frames for the growth per frame. The long clip is bedroom.mp4 played forwards
   and backwards (it has 200 frames) at ``--clip-size``; ours reads the mp4, theirs a JPEG folder of
   the same frames (sam3's mp4 path normalises without ``/ 255``, upstream bug #493, and would
   give different objects). Theirs loads all frames up front: measured unless ``--memory-who ours``.
3. **compare**: ms/frame of ``Sam3VideoSession`` beside the GroundingDINO + SAM2 text path at
   ``--every 20`` through :func:`dl_utils.drivers.run.run_into_store` on the same clip (as an mp4:
   the tracked path needs a video), with the test fixtures' tiny random-weight models (transformers
   GroundingDINO of tests/dino_fixtures.py, SAM 2.1 tiny at 256 px of tests/sam2_fixtures.py; the
   box threshold picked to give ~3 boxes per frame, ``max_objects`` 4). Random weights and reduced
   sizes make this a comparison of plumbing cost, not of model speed.

4. **phrases** (issue 17, :func:`dl_utils.sam3al.backbone.shared_image_backbone`): per-frame cost of
   a ``--phrase-counts`` (2 and 3) phrase caption through ``Sam3VideoSession`` with one vision-trunk
   pass per frame shared by all phrases vs one pass per phrase (sam3's one-prompt-per-state design),
   on ``--phrase-frames`` frames, ``--phrase-rounds`` interleaved rounds (the order alternates), the
   per-round ratio printed. The session does not enter the sharing itself yet, so the bench wraps
   ``propagate()`` in it, as the hook would. The model here is built without sam3's hot-start delay
   (``apply_temporal_disambiguation=False``): with it, a phrase's first propagation step runs 16
   frames before the next phrase starts, which the default ``keep=2`` does not share (see
   docs/sam3al_backbone.md), so a short clip would measure that burst, not the steady state. The
   trunk's own time per call is measured too (the share of a frame the sharing can save), and the
   stores of both sides are checked equal (masks, scores, ids).

sam3 runs on CPU only with the test patches both sides share (tests/test_sam3al_video.py): its
hard-coded CUDA placements (``tests.sam3_fixtures.sam3_on_device``), ``Tensor.pin_memory`` and its
CPU connected-components fallback (needs scikit-image; OpenCV stands in), plus bf16 autocast on CPU
(the session enters it itself: sam3's detector casts features to bf16). One torch thread by default.

    .venv/bin/python bench/bench_sam3.py [--frames 30] [--repeats 3] [--mem-frames 100,1000]
        [--image-size 112] [--depth 2] [--clip-size 480x270] [--every 20]
        [--phrase-counts 2,3] [--phrase-frames 8] [--phrase-rounds 2]
        [--skip throughput,memory,compare,phrases] [--json OUT] [--profile]

Writes under bench/out/sam3/ (git-ignored: clips, JPEG folders, model folders) and a temp dir
(stores).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "sam3"
SHARED = Path(os.environ.get("DL_UTILS_SHARED_DATA", ROOT.parent / "shared" / "data"))
BEDROOM = SHARED / "bedroom.mp4"
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")  # sam3's per-run progress bars


# ------------------------------------------------------------------------------------ setup
def spec(args: argparse.Namespace) -> Any:
    """tests' tiny spec, with ``--image-size`` / ``--depth`` applied (the last block global)."""
    from tests.sam3_fixtures import tiny_spec

    s = tiny_spec()
    kw: dict[str, Any] = {}
    if args.image_size and args.image_size != s.image_size:
        kw["image_size"] = args.image_size
        kw["pretrain_img_size"] = max(s.patch_size, (args.image_size // 2) // s.patch_size * s.patch_size)
    if args.depth and args.depth != s.vit_depth:
        kw["vit_depth"] = args.depth
        kw["vit_global_att_blocks"] = tuple(range(args.depth // 2 - 1, args.depth, max(1, args.depth // 2)))
    return dataclasses.replace(s, **kw) if kw else s


def spec_text(s: Any) -> str:
    return (f"{s.image_size} px, ViT depth {s.vit_depth} (global {list(s.vit_global_att_blocks)}) dim "
            f"{s.vit_embed_dim}, text {s.text_layers} layers x {s.text_width}, encoder/decoder "
            f"{s.encoder_layers}/{s.decoder_layers}, {s.num_queries} queries, tracker {s.tracker_layers} "
            f"layer, {s.tracker_num_maskmem} memories")


def build_model(args: argparse.Namespace) -> Any:
    from dl_utils.sam3al.build import build_video_model
    from tests.sam3_fixtures import _seeded, tiny_bpe_path

    s = spec(args)
    return _seeded(lambda: build_video_model(s, bpe_path=tiny_bpe_path()), 0)


def thresholds(args: argparse.Namespace) -> dict[str, float]:
    return {"score_threshold_detection": args.threshold, "new_det_thresh": args.threshold}


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def bedroom_frames(n: int, size: tuple[int, int], pingpong: bool = False) -> Iterator[np.ndarray]:
    """``n`` frames of bedroom.mp4 at ``size``; past its end, played backwards and forwards again."""
    from dl_utils.video_utils import open_frames

    src = open_frames(BEDROOM, resize=size)
    m = len(src)
    if not pingpong and n > m:
        raise SystemExit(f"{BEDROOM} has {m} frames; use --frames {m} or fewer")
    frames = list(src) if n > m else None
    if frames is None:
        for i, img in enumerate(src):
            if i >= n:
                return
            yield img
        return
    period = 2 * (m - 1)
    for i in range(n):
        k = i % period
        yield frames[k if k < m else period - k]


def jpeg_clip(n: int, size: tuple[int, int]) -> Path:
    from PIL import Image

    out = OUT / f"clip_{n}_{size[0]}x{size[1]}_jpg"
    if out.is_dir() and len(list(out.glob("*.jpg"))) == n:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for i, img in enumerate(bedroom_frames(n, size, pingpong=True)):
        Image.fromarray(img).save(out / f"{i:05d}.jpg", quality=95)
    return out


def mp4_clip(n: int, size: tuple[int, int]) -> Path:
    from dl_utils.errors import DlUtilsError
    from dl_utils.video_utils import open_frames, write_video

    path = OUT / f"clip_{n}_{size[0]}x{size[1]}.mp4"
    if path.exists():
        try:
            if len(open_frames(path)) == n:
                return path
        except DlUtilsError:
            pass
        path.unlink()
    OUT.mkdir(parents=True, exist_ok=True)
    write_video(path, bedroom_frames(n, size, pingpong=True), fps=30, preset="fast", crf=18, gop=250, total=n)
    return path


@contextlib.contextmanager
def sam3_cpu(fallbacks: str = "session") -> Iterator[None]:
    """What sam3 needs on CPU, as tests/test_sam3al_video.py runs it.

    Always ``tests.sam3_fixtures.sam3_on_device("cpu")`` (sam3's CUDA placements by name, and
    ``pin_memory`` patched to a no-op). ``fallbacks="session"``: also
    :func:`dl_utils.sam3al.cpu.cpu_fallbacks`, what the session enters itself (OpenCV connected
    components, and its ``TorchFunctionMode`` that sees every torch call) - the
    baseline then runs under exactly the session's patches. ``"patch"``: the same connected components
    patched in, no function mode (the cheapest way to run sam3's own path on CPU).
    """
    import sam3.perflib.connected_components as cc

    from dl_utils.sam3al import cpu
    from tests.sam3_fixtures import sam3_on_device

    with contextlib.ExitStack() as stack:
        stack.enter_context(sam3_on_device("cpu"))
        if fallbacks == "session":
            stack.enter_context(cpu.cpu_fallbacks("cpu"))
        elif fallbacks == "patch":
            stack.enter_context(mock.patch.object(cc, "connected_components_cpu", cpu._connected_components_cpu))
        yield


@contextlib.contextmanager
def model_thresholds(model: Any, over: dict[str, float]) -> Iterator[None]:
    old = {k: getattr(model, k) for k in over}
    try:
        for k, v in over.items():
            setattr(model, k, v)
        yield
    finally:
        for k, v in old.items():
            setattr(model, k, v)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------ runners
def run_theirs(model: Any, folder: Path, prompt: str, over: dict[str, float], *, keep: bool = False,
               sample_every: int = 0, fallbacks: str = "session") -> dict[str, Any]:
    """sam3's own path: init_state (all frames loaded) + add_prompt + propagate_in_video."""
    import torch

    objs: list[tuple[int, ...]] = []
    samples: list[tuple[int, float]] = []
    n = 0
    t0 = time.perf_counter()
    with sam3_cpu(fallbacks), model_thresholds(model, over), torch.inference_mode(), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        st = model.init_state(resource_path=str(folder), offload_video_to_cpu=True)
        t1 = time.perf_counter()
        model.add_prompt(st, frame_idx=0, text_str=prompt)
        for f, out in model.propagate_in_video(st):
            masks = np.asarray(out["out_binary_masks"])
            n += 1
            if keep:
                objs.append(tuple(int(i) for i in np.asarray(out["out_obj_ids"]).reshape(-1)))
            else:
                objs.append((len(masks),))
            if sample_every and n % sample_every == 0:
                samples.append((n, rss_mb()))
    t2 = time.perf_counter()
    del st
    return {"total_s": t2 - t0, "init_s": t1 - t0, "propagate_s": t2 - t1, "frames": n,
            "objects": objs, "samples": samples}


def run_ours(model: Any, source: Path, prompt: str, over: dict[str, float], store_dir: Path, *,
             keep: bool = False, sample_every: int = 0) -> dict[str, Any]:
    """Sam3VideoSession: frames on demand, masks into an SQLite store."""
    from dl_utils.sam3al.video import Sam3VideoOptions, Sam3VideoSession

    objs: list[tuple[int, ...]] = []
    samples: list[tuple[int, float]] = []
    count = [0]

    def cb(frame: int, insts: Any) -> None:
        count[0] += 1
        if keep:
            objs.append(tuple(sorted(int(x.provenance.extra["sam3_id"]) for x in insts)))
        else:
            objs.append((len(insts),))
        if sample_every and count[0] % sample_every == 0:
            samples.append((count[0], rss_mb()))

    db = store_dir / f"ours_{os.getpid()}_{time.monotonic_ns()}.sqlite"
    t0 = time.perf_counter()
    with sam3_cpu("none"):  # the session enters cpu_fallbacks itself
        ses = Sam3VideoSession(model, str(source), str(db), prompt, options=Sam3VideoOptions(**over))
        t1 = time.perf_counter()
        res = ses.propagate(callback=cb)
    t2 = time.perf_counter()
    peak = dict(ses.peak_memory)
    ses.close()
    ses.store.close()
    db.unlink(missing_ok=True)
    if res["status"] != "done":
        raise SystemExit(f"our session stopped: {res}")
    return {"total_s": t2 - t0, "init_s": t1 - t0, "propagate_s": t2 - t1, "frames": res["frames_written"],
            "objects": objs, "samples": samples, "instances": res["instances_written"], "state_peak": peak}


def objects_per_frame(objs: list[tuple[int, ...]], keep: bool) -> float:
    return float(np.mean([len(o) if keep else o[0] for o in objs])) if objs else 0.0


# ------------------------------------------------------------------------------------ 1. throughput
def throughput(args: argparse.Namespace, model: Any, tmp: Path) -> dict[str, Any]:
    folder = jpeg_clip(args.frames, args.clip)
    over = thresholds(args)
    n = args.frames
    print(f"[throughput] {n} frames {args.clip[0]}x{args.clip[1]} ({folder.name}), prompt {args.prompt!r}, "
          f"{args.repeats} interleaved repeats", flush=True)
    # warm-up on a short clip (allocator, thread pool, lazy imports)
    warm = jpeg_clip(4, args.clip)
    run_theirs(model, warm, args.prompt, over)
    run_ours(model, warm, args.prompt, over, tmp)
    theirs, ours, bare = [], [], []
    whos = ["theirs", "ours"] + ([] if args.no_bare else ["bare"])
    for r in range(args.repeats):
        first = r == 0
        for who in (whos if r % 2 == 0 else whos[::-1]):
            if who == "theirs":
                theirs.append(run_theirs(model, folder, args.prompt, over, keep=first))
            elif who == "bare":
                bare.append(run_theirs(model, folder, args.prompt, over, keep=first, fallbacks="patch"))
            else:
                ours.append(run_ours(model, folder, args.prompt, over, tmp, keep=first))
        print(f"  repeat {r + 1}: theirs {theirs[-1]['total_s']:.2f} s (init {theirs[-1]['init_s']:.2f}), "
              f"ours {ours[-1]['total_s']:.2f} s (init {ours[-1]['init_s']:.2f})"
              + (f", theirs without the function mode {bare[-1]['total_s']:.2f} s" if bare else ""), flush=True)
    same = theirs[0]["objects"] == ours[0]["objects"] and (not bare or bare[0]["objects"] == ours[0]["objects"])
    if not same:
        print("  WARNING: the two paths' objects differ on some frame (first repeat)", flush=True)
    med = {k: {who: statistics.median(x[k] for x in runs) for who, runs in (("theirs", theirs), ("ours", ours))}
           for k in ("total_s", "propagate_s", "init_s")}
    res = {
        "frames": n, "clip": f"{args.clip[0]}x{args.clip[1]}", "prompt": args.prompt, "repeats": args.repeats,
        "theirs_fps": n / med["total_s"]["theirs"], "ours_fps": n / med["total_s"]["ours"],
        "theirs_propagate_fps": n / med["propagate_s"]["theirs"], "ours_propagate_fps": n / med["propagate_s"]["ours"],
        "theirs_s": [x["total_s"] for x in theirs], "ours_s": [x["total_s"] for x in ours],
        "theirs_init_s": med["init_s"]["theirs"], "ours_init_s": med["init_s"]["ours"],
        "objects_per_frame": objects_per_frame(ours[0]["objects"], True),
        "objects_total": len({i for o in ours[0]["objects"] for i in o}),
        "same_outputs": same,
    }
    res["ratio"] = res["ours_fps"] / res["theirs_fps"]
    # each repeat's own ratio (its runs are adjacent in time): robust to load that drifts over minutes
    res["paired_ratios"] = [t["total_s"] / o["total_s"] for t, o in zip(theirs, ours)]
    res["paired_ratio_median"] = statistics.median(res["paired_ratios"])
    res["best_ratio"] = min(x["total_s"] for x in theirs) / min(x["total_s"] for x in ours)  # best of repeats
    res["propagate_ratio"] = res["ours_propagate_fps"] / res["theirs_propagate_fps"]
    if bare:
        res["bare_s"] = [x["total_s"] for x in bare]
        res["bare_fps"] = n / statistics.median(res["bare_s"])
        res["ratio_vs_bare"] = res["ours_fps"] / res["bare_fps"]
        res["paired_ratios_vs_bare"] = [b["total_s"] / o["total_s"] for b, o in zip(bare, ours)]
        res["mode_cost"] = statistics.median(t["total_s"] / b["total_s"] for t, b in zip(theirs, bare))
        res["best_ratio_vs_bare"] = min(res["bare_s"]) / min(x["total_s"] for x in ours)
        res["best_mode_cost"] = min(x["total_s"] for x in theirs) / min(res["bare_s"])
    return res


def profile_ours(args: argparse.Namespace, model: Any, tmp: Path) -> str:
    import cProfile
    import io
    import pstats

    folder = jpeg_clip(args.frames, args.clip)
    pr = cProfile.Profile()
    pr.enable()
    run_ours(model, folder, args.prompt, thresholds(args), tmp)
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(40)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ 2. memory
def child(args: argparse.Namespace) -> None:
    """One RSS measurement in this fresh process; prints a JSON line."""
    import gc

    import torch

    torch.set_num_threads(args.threads)
    model = build_model(args)
    over = thresholds(args)
    src = Path(args.child_source)
    # touch sam3's lazy imports and allocator once on a tiny clip, then reset the peak
    warm = jpeg_clip(4, args.clip)
    (run_theirs if args.child == "theirs" else lambda *a, **k: run_ours(*a, Path(tempfile.gettempdir()), **k))(
        model, warm, args.prompt, over)
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    base = rss_mb()
    with tempfile.TemporaryDirectory(prefix="bench_sam3_") as d:
        if args.child == "theirs":
            r = run_theirs(model, src, args.prompt, over, sample_every=args.sample_every)
        else:
            r = run_ours(model, src, args.prompt, over, Path(d), sample_every=args.sample_every)
    peak = hwm_mb() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "rss_before_mb": base, "peak_reset": reset,
                      "seconds": r["total_s"], "frames": r["frames"], "samples": r["samples"],
                      "objects_per_frame": objects_per_frame(r["objects"], False),
                      "state_peak": r.get("state_peak"), "threads": torch.get_num_threads()}))


def measure(args: argparse.Namespace, who: str, source: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", who, "--child-source", str(source),
           "--image-size", str(args.image_size or 0), "--depth", str(args.depth or 0),
           "--clip-size", f"{args.clip[0]}x{args.clip[1]}", "--prompt", args.prompt,
           "--threshold", str(args.threshold), "--sample-every", str(args.sample_every),
           "--threads", str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"memory child {who} {source.name} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    return res


def slope(samples: list[list[float]]) -> float | None:
    """MB per 1,000 frames of the RSS samples' least-squares line (second half of the run)."""
    pts = samples[len(samples) // 2:]
    if len(pts) < 2:
        return None
    x, y = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
    return float(np.polyfit(x, y, 1)[0] * 1000)


def memory(args: argparse.Namespace) -> dict[str, Any]:
    n1, n2 = args.mem_frames
    res: dict[str, Any] = {"n1": n1, "n2": n2, "clip": f"{args.clip[0]}x{args.clip[1]}"}
    whos = [w for w in ("ours", "theirs") if w in args.memory_who.split(",")]
    for who in whos:
        for n in (n1, n2):
            src = mp4_clip(n, args.clip) if who == "ours" else jpeg_clip(n, args.clip)
            print(f"[memory] {who}, {n} frames ({src.name}) in a fresh process ...", flush=True)
            r = measure(args, who, src)
            res[f"{who}_{n}"] = r
            print(f"  peak {r['peak_rss_mb']:.0f} MB (before the run {r['rss_before_mb']:.0f} MB), "
                  f"{r['frames']} frames in {r['seconds']:.1f} s, {r['objects_per_frame']:.1f} objects/frame",
                  flush=True)
        a, b = res[f"{who}_{n1}"], res[f"{who}_{n2}"]
        res[who] = {"peak_mb": [a["peak_rss_mb"], b["peak_rss_mb"]],
                    "ratio": b["peak_rss_mb"] / a["peak_rss_mb"],
                    "growth_mb": [a["peak_rss_mb"] - a["rss_before_mb"], b["peak_rss_mb"] - b["rss_before_mb"]],
                    "mb_per_1000_frames": slope(b["samples"])}
    return res


# ------------------------------------------------------------------------------------ 3. compare
def compare(args: argparse.Namespace, model: Any, tmp: Path) -> dict[str, Any]:
    import torch

    from dl_utils.dinoal import load_detector
    from dl_utils.dinoal.caption import parse_caption
    from dl_utils.drivers.options import TrackOptions
    from dl_utils.drivers.run import run_into_store
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames
    from tests.dino_fixtures import make_hf_model_dir
    from tests.sam2_fixtures import TEST_IMAGE_SIZE, build_tiny

    n = args.frames
    video = mp4_clip(n, args.clip)
    print(f"[compare] {n} frames ({video.name}), GroundingDINO + SAM2 at --every {args.every} vs SAM 3", flush=True)
    folder = OUT / "gd_hf_tiny"
    if not (folder / "config.json").is_file():
        with torch.random.fork_rng(devices=[]):
            make_hf_model_dir(folder)
    # the threshold giving ~3 boxes per frame on a few frames (random-weight scores are spread)
    probe = load_detector("transformers", str(folder), device="cpu", box_threshold=0.05)
    src = open_frames(video)
    scores = [probe.detect(src[i], args.prompt).scores for i in np.linspace(0, n - 1, 4).astype(int)]
    thr = float(np.median([np.sort(s)[-3] if len(s) >= 3 else 0.05 for s in scores]))
    thr = round(max(0.05, thr - 1e-4), 4)
    det = load_detector("transformers", str(folder), device="cpu", box_threshold=thr)
    sam2 = build_tiny(TEST_IMAGE_SIZE, 0, True)
    track = TrackOptions(every=args.every, max_objects=4)

    def grounded() -> tuple[float, dict[str, Any]]:
        src = open_frames(video)
        store = AnnotationStore.create(tmp / "grounded.sqlite", src.media_info(), overwrite=True)
        t0 = time.perf_counter()
        out = run_into_store(src, store, prompt=parse_caption(args.prompt), detector=det, sam_video_model=sam2,
                             track=track, progress=False)
        dt = time.perf_counter() - t0
        inst = sum(len(store.read_frame(f)) for f in store.media.frames)
        store.close()
        src.close()
        return dt, {"keyframes": len(out["text"]["keyframes"]), "objects": len(out["text"]["objects"]),
                    "instances": inst, "status": out["text"]["status"]}

    over = thresholds(args)
    g_t, s_t, info = [], [], {}
    grounded()  # warm-up
    for r in range(args.repeats):
        for who in (("grounded", "sam3") if r % 2 == 0 else ("sam3", "grounded")):
            if who == "grounded":
                dt, info = grounded()
                g_t.append(dt)
            else:
                s = run_ours(model, video, args.prompt, over, tmp)
                s_t.append(s["total_s"])
                s_inst = s["instances"]
        print(f"  repeat {r + 1}: grounded {g_t[-1]:.2f} s, sam3 {s_t[-1]:.2f} s", flush=True)
    g, s = statistics.median(g_t), statistics.median(s_t)
    return {"frames": n, "every": args.every, "box_threshold": thr, "max_objects": 4,
            "grounded_ms_per_frame": 1000 * g / n, "sam3_ms_per_frame": 1000 * s / n,
            "grounded_s": g_t, "sam3_s": s_t, "grounded": info,
            "grounded_instances_per_frame": info["instances"] / n, "sam3_instances_per_frame": s_inst / n,
            "sam2_image_size": TEST_IMAGE_SIZE, "ratio_sam3_over_grounded": s / g}


# ------------------------------------------------------------------------------------ 4. phrases
PHRASE_WORDS = ("person", "bed", "lamp", "window", "chair")  # in the tiny vocabulary (tests/sam3_fixtures)


def run_phrases(model: Any, folder: Path, caption: str, over: dict[str, float], store_dir: Path,
                shared: bool) -> dict[str, Any]:
    """One session over ``folder`` for ``caption``; ``shared``: inside ``shared_image_backbone``.
    The trunk's real calls are counted and timed (a wrapper under the sharing)."""
    from dl_utils.sam3al.backbone import quiet_sam3_progress, shared_image_backbone
    from dl_utils.sam3al.video import Sam3VideoOptions, Sam3VideoSession

    bb = model.detector.backbone
    original = bb.forward_image
    trunk = {"calls": 0, "s": 0.0, "cpu_s": 0.0}

    def timed(samples: Any) -> Any:
        t, c = time.perf_counter(), time.process_time()
        out = original(samples)
        trunk["s"] += time.perf_counter() - t
        trunk["cpu_s"] += time.process_time() - c
        trunk["calls"] += 1
        return out

    db = store_dir / f"phrases_{os.getpid()}_{time.monotonic_ns()}.sqlite"
    bb.forward_image = timed
    try:
        with sam3_cpu("none"), quiet_sam3_progress(), \
                (shared_image_backbone(model) if shared else contextlib.nullcontext()):
            ses = Sam3VideoSession(model, str(folder), str(db), caption, options=Sam3VideoOptions(**over))
            t0, c0 = time.perf_counter(), time.process_time()
            res = ses.propagate()
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        del bb.__dict__["forward_image"]
    # what was written, to check both sides equal: per frame, (phrase, sam3 id, score, mask bytes)
    written = []
    for f in ses.store.media.frames:
        written.append(sorted((x.provenance.phrase, int(x.provenance.extra["sam3_id"]), float(x.score or 0.0),
                               np.packbits(np.asarray(x.mask, dtype=bool)).tobytes())
                              for x in ses.store.read_frame(f)))
    ses.close()
    ses.store.close()
    db.unlink(missing_ok=True)
    if res["status"] != "done":
        raise SystemExit(f"our session stopped: {res}")
    return {"propagate_s": dt, "cpu_s": cpu, "frames": res["frames_written"], "instances": res["instances_written"],
            "trunk_calls": trunk["calls"], "trunk_s": trunk["s"], "trunk_cpu_s": trunk["cpu_s"], "written": written}


def phrases(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from dl_utils.sam3al.build import build_video_model
    from tests.sam3_fixtures import _seeded, tiny_bpe_path

    s = spec(args)
    model = _seeded(lambda: build_video_model(s, bpe_path=tiny_bpe_path(), apply_temporal_disambiguation=False), 0)
    n = args.phrase_frames
    folder = jpeg_clip(n, args.clip)
    over = thresholds(args)
    print(f"[phrases] {n} frames {args.clip[0]}x{args.clip[1]}, captions of {args.phrase_counts} phrases, "
          f"{args.phrase_rounds} interleaved rounds, shared trunk vs a trunk pass per phrase", flush=True)
    run_phrases(model, jpeg_clip(2, args.clip), "person. bed", over, tmp, True)  # warm-up
    out: dict[str, Any] = {"frames": n, "clip": f"{args.clip[0]}x{args.clip[1]}", "rounds": args.phrase_rounds,
                           "hotstart_delay": int(model.hotstart_delay), "by_phrases": {}}
    for p in args.phrase_counts:
        if not 1 <= p <= len(PHRASE_WORDS):
            raise SystemExit(f"--phrase-counts: 1..{len(PHRASE_WORDS)} phrases ({', '.join(PHRASE_WORDS)})")
        caption = ". ".join(PHRASE_WORDS[:p])
        runs: dict[str, list[dict[str, Any]]] = {"plain": [], "shared": []}
        for r in range(args.phrase_rounds):
            for who in (("plain", "shared") if r % 2 == 0 else ("shared", "plain")):
                runs[who].append(run_phrases(model, folder, caption, over, tmp, who == "shared"))
            a, b = runs["plain"][-1], runs["shared"][-1]
            print(f"  {p} phrases, round {r + 1}: per phrase {1000 * a['propagate_s'] / n:.0f} ms/frame "
                  f"(CPU {1000 * a['cpu_s'] / n:.0f} ms, {a['trunk_calls']} trunk calls), shared "
                  f"{1000 * b['propagate_s'] / n:.0f} ms/frame (CPU {1000 * b['cpu_s'] / n:.0f} ms, "
                  f"{b['trunk_calls']} trunk calls), ratio {a['propagate_s'] / b['propagate_s']:.3f}x wall, "
                  f"{a['cpu_s'] / b['cpu_s']:.3f}x CPU", flush=True)
        same = all(x["written"] == runs["plain"][0]["written"] for x in runs["plain"] + runs["shared"])
        if not same:
            print(f"  WARNING: {p} phrases: the stores differ", flush=True)
        plain_s = statistics.median(x["propagate_s"] for x in runs["plain"])
        shared_s = statistics.median(x["propagate_s"] for x in runs["shared"])
        plain_cpu = statistics.median(x["cpu_s"] for x in runs["plain"])
        shared_cpu = statistics.median(x["cpu_s"] for x in runs["shared"])
        trunk_calls = sum(x["trunk_calls"] for x in runs["plain"])
        trunk_ms = 1000 * sum(x["trunk_cpu_s"] for x in runs["plain"]) / max(1, trunk_calls)  # CPU time
        out["by_phrases"][p] = {
            "caption": caption, "plain_ms_per_frame": 1000 * plain_s / n, "shared_ms_per_frame": 1000 * shared_s / n,
            "ratio": plain_s / shared_s,
            "paired_ratios": [a["propagate_s"] / b["propagate_s"] for a, b in zip(runs["plain"], runs["shared"])],
            # CPU time of the process (one torch thread): much less moved by the other jobs on the cores
            "plain_cpu_ms_per_frame": 1000 * plain_cpu / n, "shared_cpu_ms_per_frame": 1000 * shared_cpu / n,
            "cpu_ratio": plain_cpu / shared_cpu,
            "paired_cpu_ratios": [a["cpu_s"] / b["cpu_s"] for a, b in zip(runs["plain"], runs["shared"])],
            "plain_trunk_calls": runs["plain"][0]["trunk_calls"], "shared_trunk_calls": runs["shared"][0]["trunk_calls"],
            "trunk_ms_per_call": trunk_ms,
            "trunk_share_of_plain_frame": (trunk_ms * runs["plain"][0]["trunk_calls"] / n) / (1000 * plain_cpu / n),
            "instances_per_frame": runs["plain"][0]["instances"] / n, "same_outputs": same,
            "plain_s": [x["propagate_s"] for x in runs["plain"]], "shared_s": [x["propagate_s"] for x in runs["shared"]],
        }
    return out


# ------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=30,
                    help="frames of the throughput/compare clip (bedroom.mp4 has 200; past them it plays backwards)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mem-frames", default="100,1000", help="the two lengths of the memory section")
    ap.add_argument("--image-size", type=int, default=0, help="SAM 3 input size (default: tiny spec, 112)")
    ap.add_argument("--depth", type=int, default=0, help="ViT depth (default: tiny spec, 2)")
    ap.add_argument("--clip-size", default="480x270", help="frames of bedroom.mp4 resized to WxH")
    ap.add_argument("--prompt", default="person")
    ap.add_argument("--threshold", type=float, default=0.2,
                    help="detection and new-object thresholds (random weights: the released 0.5/0.7 keep nothing)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on 2 shared cores, 2 threads ran up to 10x slower per frame, "
                         "their spin-waits losing to other jobs)")
    ap.add_argument("--every", type=int, default=20, help="GroundingDINO keyframe spacing (compare)")
    ap.add_argument("--sample-every", type=int, default=50, help="RSS sample spacing in frames (memory)")
    ap.add_argument("--memory-who", default="ours,theirs",
                    help="memory: whose runs (ours,theirs; theirs at 1,000 frames takes as long as ours)")
    ap.add_argument("--no-bare", action="store_true",
                    help="throughput: skip the third run (theirs without the session's TorchFunctionMode)")
    ap.add_argument("--phrase-counts", default="2,3", help="phrases: caption sizes to measure")
    ap.add_argument("--phrase-frames", type=int, default=8, help="phrases: frames per run")
    ap.add_argument("--phrase-rounds", type=int, default=2, help="phrases: interleaved rounds")
    ap.add_argument("--skip", default="", help="comma list: throughput,memory,compare,phrases")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one run of ours")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-source", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.clip = parse_size(args.clip_size)
    args.mem_frames = tuple(int(x) for x in args.mem_frames.split(","))
    args.phrase_counts = tuple(int(x) for x in args.phrase_counts.split(","))
    if not BEDROOM.is_file():
        raise SystemExit(f"{BEDROOM} is absent (see ../shared/data/README.md)")
    if args.child:
        child(args)
        return
    skip = set(filter(None, args.skip.split(",")))
    sections = {"throughput", "memory", "compare", "phrases"}
    if skip - sections:
        raise SystemExit(f"--skip: unknown sections {sorted(skip - sections)}")
    OUT.mkdir(parents=True, exist_ok=True)
    import sam3
    import torch

    torch.set_num_threads(args.threads)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "dl_utils/sam3al"], capture_output=True,
                                text=True, cwd=ROOT).stdout.strip())
    s = spec(args)
    meta = {"commit": commit, "sam3al_uncommitted_changes": dirty, "python": platform.python_version(),
            "torch": torch.__version__, "sam3": getattr(sam3, "__version__", "?"), "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "load_avg_start": os.getloadavg(), "spec": dataclasses.asdict(s),
            "spec_is_tiny": not (args.image_size or args.depth), "threshold": args.threshold,
            "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"commit {commit}{' (+ uncommitted sam3al changes)' if dirty else ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    print(f"SAM 3 spec ({'tiny, tests/sam3_fixtures.py' if meta['spec_is_tiny'] else 'flags'}): {spec_text(s)}; "
          f"random weights, thresholds {args.threshold}", flush=True)
    results: dict[str, Any] = {"meta": meta}
    rows: list[tuple[str, str, str, str]] = []
    tmp_obj = tempfile.TemporaryDirectory(prefix="bench_sam3_")
    tmp = Path(tmp_obj.name)
    model = build_model(args) if not {"throughput", "compare"} <= skip or args.profile else None

    def dump() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))

    if "throughput" not in skip:
        t = throughput(args, model, tmp)
        results["throughput"] = t
        rows.append((f"throughput, {t['frames']} frames {t['clip']}, '{t['prompt']}' "
                     f"({t['objects_per_frame']:.1f} obj/frame)",
                     f"{t['ours_fps']:.2f} fps", f"{t['theirs_fps']:.2f} fps",
                     f"{t['ratio']:.3f}x (goal >= 0.95); median of per-repeat ratios "
                     f"{t['paired_ratio_median']:.3f}x; best of repeats {t['best_ratio']:.3f}x"))
        if "bare_fps" in t:
            rows.append(("  theirs without cpu_fallbacks' TorchFunctionMode (plain patches; CPU only)",
                         f"{t['ours_fps']:.2f} fps", f"{t['bare_fps']:.2f} fps",
                         f"{t['ratio_vs_bare']:.3f}x; the mode costs theirs {t['mode_cost']:.2f}x"))
        rows.append(("  propagation only (theirs without init_state)", f"{t['ours_propagate_fps']:.2f} fps",
                     f"{t['theirs_propagate_fps']:.2f} fps", f"{t['propagate_ratio']:.3f}x"))
        dump()
    if args.profile:
        print(profile_ours(args, model, tmp))
    if "memory" not in skip:
        m = memory(args)
        results["memory"] = m
        for who in ("ours", "theirs"):
            if who in m:
                a, b = m[who]["peak_mb"]
                ga, gb = m[who]["growth_mb"]
                sl = m[who]["mb_per_1000_frames"]
                rows.append((f"peak RSS {m['n1']} -> {m['n2']} frames, {who}",
                             f"{a:.0f} -> {b:.0f} MB (run adds {ga:.0f} -> {gb:.0f} MB)",
                             f"{sl:+.1f} MB/1000 frames" if sl is not None else "-",
                             f"{m[who]['ratio']:.3f}x" + (" (goal <= 1.2)" if who == "ours" else "")))
        dump()
    if "compare" not in skip:
        c = compare(args, model, tmp)
        results["compare"] = c
        rows.append((f"per frame, {c['frames']} frames: SAM 3 session vs GroundingDINO+SAM2 --every {c['every']}",
                     f"{c['sam3_ms_per_frame']:.1f} ms/frame ({c['sam3_instances_per_frame']:.1f} inst/frame)",
                     f"{c['grounded_ms_per_frame']:.1f} ms/frame ({c['grounded_instances_per_frame']:.1f} inst/frame, "
                     f"{c['grounded']['keyframes']} keyframes)",
                     f"{c['ratio_sam3_over_grounded']:.2f}x (plumbing cost, random weights)"))
        dump()
    if "phrases" not in skip:
        ph = phrases(args, tmp)
        results["phrases"] = ph
        for p, x in ph["by_phrases"].items():
            rows.append((f"{p}-phrase caption ('{x['caption']}'), {ph['frames']} frames {ph['clip']}, "
                         f"{x['instances_per_frame']:.1f} inst/frame: one trunk pass per frame (shared) vs one "
                         "per phrase",
                         f"{x['shared_ms_per_frame']:.0f} ms/frame, CPU {x['shared_cpu_ms_per_frame']:.0f} ms "
                         f"({x['shared_trunk_calls']} trunk calls)",
                         f"{x['plain_ms_per_frame']:.0f} ms/frame, CPU {x['plain_cpu_ms_per_frame']:.0f} ms "
                         f"({x['plain_trunk_calls']} trunk calls)",
                         f"CPU {x['cpu_ratio']:.3f}x faster (rounds {', '.join(f'{r:.3f}' for r in x['paired_cpu_ratios'])}); "
                         f"wall {x['ratio']:.3f}x (rounds {', '.join(f'{r:.3f}' for r in x['paired_ratios'])}); "
                         f"trunk {x['trunk_ms_per_call']:.0f} ms CPU/call = {100 * x['trunk_share_of_plain_frame']:.0f}% "
                         f"of the per-phrase frame's CPU; outputs {'equal' if x['same_outputs'] else 'DIFFER'}"))
        dump()
    meta["load_avg_end"] = os.getloadavg()
    dump()
    tmp_obj.cleanup()
    print()
    print("| measurement | ours | theirs / other | ratio |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")


if __name__ == "__main__":
    main()
