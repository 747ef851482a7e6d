"""dl_utils.sam2al.VideoSession against raw SAM2VideoPredictor (issue #4 targets), one run, ratios.

Measured on CPU with the tiny SAM 2.1 config at 256 px and random weights (timing and memory do not
depend on the weight values):

1. **propagation throughput**: the same JPEG frames (a clip of bedroom.mp4, or a synthetic clip),
   the same two prompted objects, forward over the whole clip. Raw = ``propagate_in_video`` plus the
   ``logits > 0`` -> numpy step every caller does; ours = ``VideoSession.propagate`` (frames decoded on
   demand, masks written to an SQLite store), pipelined (``pipeline=True``; the default on CUDA, off
   on a CPU) and with ``pipeline=False``.
   Rounds interleaved (the three arms in a rotating order), each round's ratio raw time / our time,
   the figure is the median of the per-round ratios (issue 20: >= 1.05x; end to end, where raw's
   ``init_state`` preloads every frame first, >= 1.1x).
2. **peak RSS after N1 vs N2 frames** (target <= 1.2x): each configuration in a fresh subprocess
   (``ru_maxrss``) on a synthetic video made with ``dl_utils.video_utils.write_video``; raw reads the
   same frames from a JPEG folder (the only way it reads a video without decord). The issue's
   100/1,000 frames are reduced to what runs in a few minutes on CPU (defaults 100/400, ``--quick``
   30/120); raw's growth is printed beside ours.
3. **time to the first mask on a 10-minute video** (18,000 frames, 320x180, synthetic): open the
   video, create the store and the session, one click on a frame in the middle -> the mask. Baseline:
   raw ``SAM2ImagePredictor.set_image`` + ``predict`` on the already decoded frame. Target <= +0.5 s.
4. with CUDA available (not on the CPU machines this was written on): frames per second per model size
   at 1024 px beside the SAM2 paper's A100 figures.

    .venv/bin/python bench/bench_sam2al.py [--quick] [--rounds N] [--n1 N] [--n2 N] [--skip rss,first,cuda]

Writes only under bench/out/ (git-ignored): the synthetic videos, JPEG folders and stores.
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
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
SHARED = Path(os.environ.get("DL_UTILS_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")  # upstream's per-call progress bars would bury the figures

PAPER_A100_FPS = {"sam2.1_hiera_tiny": 91.2, "sam2.1_hiera_small": 84.8, "sam2.1_hiera_base_plus": 64.1,
                  "sam2.1_hiera_large": 39.5}
PROMPTS = [(1, [[0.40, 0.55, 1]]), (2, [[0.72, 0.35, 1], [0.1, 0.1, 0]])]  # relative coordinates


def bench_device(name: str, threads: int = 0):
    """The torch device of a benchmark's ``--device auto|cpu|cuda`` (None, said on stderr, when CUDA is
    asked for and absent), with ``threads`` CPU threads (0: torch's default) and TF32 allowed for
    matrix products on CUDA, as upstream's ``sam2/benchmark.py`` runs (baseline and ours alike)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        print(f"error: --device cuda but torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return None
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def sync(device) -> None:
    """Wait for the device's queued work (CUDA), so a timer around it measures the work."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def synthetic(i: int, w: int, h: int) -> np.ndarray:
    """A gradient with two moving discs: structured enough for masks that are not trivial."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w + i) % 256, (y * 255 // h) % 256, np.full_like(x, 90)], -1).astype(np.uint8)
    for k, (cx, cy, r, col) in enumerate(((0.3, 0.5, 0.18, (240, 40, 40)), (0.7, 0.35, 0.12, (40, 200, 60)))):
        px = (cx + 0.15 * np.sin(i / 40 + k)) * w
        py = (cy + 0.1 * np.cos(i / 55 + k)) * h
        img[(x - px) ** 2 + (y - py) ** 2 < (r * h) ** 2] = col
    return img


def make_video(path: Path, n: int, w: int, h: int) -> Path:
    from dl_utils.errors import DlUtilsError
    from dl_utils.video_utils import open_frames, write_video

    if path.exists():
        try:
            if len(open_frames(path)) == n:
                return path
        except DlUtilsError:  # a half-written file from an interrupted run: write it again
            path.unlink()
    print(f"  generating {path.name}: {n} frames {w}x{h} (write_video, x264 ultrafast, GOP 250)", flush=True)
    write_video(path, (synthetic(i, w, h) for i in range(n)), fps=30, preset="ultrafast", gop=250, total=n)
    return path


def jpeg_folder(video: Path, n: int, out: Path) -> Path:
    from PIL import Image

    from dl_utils.video_utils import open_frames

    if out.is_dir() and len(list(out.glob("*.jpg"))) == n:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for i, img in enumerate(open_frames(video, stop=n - 1)):
        Image.fromarray(img).save(out / f"{i:05d}.jpg", quality=90)
    return out


def tiny(image_size: int, video: bool = True):
    from dl_utils.sam2_loader import build_sam2_model

    return build_sam2_model("sam2.1_hiera_tiny", image_size=image_size, device="cpu", random_weights=True,
                            video=video)


def abs_prompts(w: int, h: int):
    return [(oid, [[x * w, y * h, lab] for x, y, lab in pts]) for oid, pts in PROMPTS]


# ------------------------------------------------------------------------------------ runners
def run_raw(model, folder: Path, prompts, n_objects: int | None = None, total: list | None = None) -> float:
    """Seconds in ``propagate_in_video``; ``total`` gets the time including ``init_state`` + prompts."""
    t_start = time.perf_counter()
    st = model.init_state(str(folder))
    w, h = st["video_width"], st["video_height"]
    for oid, pts in (prompts or abs_prompts(w, h))[:n_objects]:
        model.add_new_points_or_box(st, 0, oid, points=[p[:2] for p in pts], labels=[p[2] for p in pts])
    t0 = time.perf_counter()
    for _f, _ids, logits in model.propagate_in_video(st):
        (logits[:, 0] > 0).cpu().numpy()
    t1 = time.perf_counter()
    if total is not None:
        total.append(t1 - t_start)
    return t1 - t0


def run_ours(model, source, store_path: Path, prompts, n_objects: int | None = None, trim: bool = True,
             total: list | None = None, pipeline: bool = True) -> float:
    """Seconds in ``propagate``; ``total`` gets the time including opening, the session and prompts."""
    from dl_utils.sam2al import VideoSession
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames

    t_start = time.perf_counter()
    src = open_frames(source)
    store = AnnotationStore.create(store_path, src.media_info(), overwrite=True)
    ses = VideoSession(src, store, sam_model=model, trim_memory=trim, pipeline=pipeline)
    w, h = src.source_size
    for oid, pts in (prompts or abs_prompts(w, h))[:n_objects]:
        ses.add_points(0, oid, pts, label=f"obj{oid}")
    t0 = time.perf_counter()
    ses.propagate("forward", progress=False)
    t1 = time.perf_counter()
    ses.close()
    store.close()
    if total is not None:
        total.append(t1 - t_start)
    return t1 - t0


def _vm(key: str) -> float:
    """A /proc/self/status memory figure in MB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_rss(args) -> None:
    """One RSS measurement in a fresh process (``--child``); prints a JSON line.

    Building the network has its own transient peak (hydra, random init), higher than a short run's;
    the peak is reset after building (``/proc/self/clear_refs`` = 5, Linux >= 4.0) so what is
    measured is the peak while prompting and propagating.
    """
    import torch

    torch.set_num_threads(max(1, args.threads))
    model = tiny(args.image_size)
    import gc

    gc.collect()
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        reset = False
    base = _vm("VmRSS")
    if args.engine == "raw":
        dt = run_raw(model, Path(args.folder), None, 1)
    else:
        dt = run_ours(model, Path(args.folder), OUT / f"rss_{os.getpid()}.sqlite", None, 1)
        Path(OUT / f"rss_{os.getpid()}.sqlite").unlink(missing_ok=True)
    peak = _vm("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "rss_after_model_mb": base, "seconds": dt, "peak_reset": reset}))


def rss(engine: str, source: Path, image_size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--engine", engine, "--folder", str(source),
           "--image-size", str(image_size)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (fewer frames and rounds)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--frames", type=int, default=None, help="frames in the throughput clip")
    ap.add_argument("--n1", type=int, default=None)
    ap.add_argument("--n2", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--skip", default="", help="comma list of sections to skip: speed,rss,first,cuda")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--folder", default="", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import torch

        args.threads = args.threads or torch.get_num_threads()
        child_rss(args)
        return
    quick = args.quick
    rounds = args.rounds or (1 if quick else 7)
    n_clip = args.frames or (12 if quick else 30)
    n1, n2 = args.n1 or (30 if quick else 100), args.n2 or (120 if quick else 400)
    skip = set(filter(None, args.skip.split(",")))
    OUT.mkdir(parents=True, exist_ok=True)
    import torch

    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, image_size {args.image_size}, "
          f"{'quick' if quick else 'full'} run; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} CPUs (a process with more busy threads gets a larger share of a loaded "
          "machine: judge the pipelined arm on a quiet one)")
    rows: list[tuple[str, str, str, str]] = []
    results: dict = {}

    # 1. throughput -------------------------------------------------------------------------
    if "speed" not in skip:
        bedroom = SHARED / "bedroom.mp4"
        src_video = bedroom if bedroom.is_file() else make_video(OUT / "sam2al_synth_clip.mp4", n_clip, 960, 540)
        folder = jpeg_folder(src_video, n_clip, OUT / f"sam2al_clip{n_clip}")
        model = tiny(args.image_size)
        run_raw(model, folder, None)  # warm-up (allocator, threads)
        run_ours(model, folder, OUT / "speed.sqlite", None)
        arms = {"raw": [], "ours": [], "ours_nopipe": []}
        ends = {"raw": [], "ours": [], "ours_nopipe": []}
        print(f"  throughput: {rounds} interleaved rounds, {n_clip} frames x 2 objects, forward; "
              "per round: raw, ours (pipelined), ours with pipeline=False, in a rotating order")
        for r in range(rounds):
            names = ["raw", "ours", "ours_nopipe"]
            names = names[r % 3:] + names[:r % 3]  # nobody always runs first (caches, load)
            for nm in names:
                if nm == "raw":
                    arms[nm].append(run_raw(model, folder, None, total=ends[nm]))
                else:
                    arms[nm].append(run_ours(model, folder, OUT / "speed.sqlite", None, total=ends[nm],
                                             pipeline=nm == "ours"))
            print(f"    round {r + 1}: raw {arms['raw'][-1]:.2f} s (end to end {ends['raw'][-1]:.2f}), "
                  f"ours {arms['ours'][-1]:.2f} s ({ends['ours'][-1]:.2f}), ours without pipeline "
                  f"{arms['ours_nopipe'][-1]:.2f} s ({ends['ours_nopipe'][-1]:.2f}); throughput ratio "
                  f"ours/raw {arms['raw'][-1] / arms['ours'][-1]:.3f}, end to end "
                  f"{ends['raw'][-1] / ends['ours'][-1]:.3f}; load average {os.getloadavg()[0]:.2f}", flush=True)
        tput = [a / b for a, b in zip(arms["raw"], arms["ours"])]
        e2e = [a / b for a, b in zip(ends["raw"], ends["ours"])]
        nop = [a / b for a, b in zip(arms["raw"], arms["ours_nopipe"])]
        gain = [a / b for a, b in zip(arms["ours_nopipe"], arms["ours"])]
        med = statistics.median
        fr, fo = (n_clip - 1) / med(arms["raw"]), (n_clip - 1) / med(arms["ours"])
        results["speed"] = {
            "frames": n_clip, "objects": 2, "rounds": rounds, "raw_s": arms["raw"], "ours_s": arms["ours"],
            "ours_nopipe_s": arms["ours_nopipe"], "raw_end_to_end_s": ends["raw"],
            "ours_end_to_end_s": ends["ours"], "ratio_per_round": tput, "ratio": med(tput),
            "end_to_end_ratio_per_round": e2e, "end_to_end_ratio": med(e2e),
            "nopipe_ratio_per_round": nop, "pipeline_gain_per_round": gain, "raw_fps": fr, "ours_fps": fo}
        print("  per-round ratios (raw time / our time, > 1: we are faster):")
        print("    throughput  " + " ".join(f"{x:.3f}" for x in tput) + f"  -> median {med(tput):.3f}")
        print("    end to end  " + " ".join(f"{x:.3f}" for x in e2e) + f"  -> median {med(e2e):.3f}")
        print("    no pipeline " + " ".join(f"{x:.3f}" for x in nop) + f"  -> median {med(nop):.3f}")
        print("    pipeline gain (unpipelined / pipelined) " + " ".join(f"{x:.3f}" for x in gain)
              + f"  -> median {med(gain):.3f}")
        rows.append((f"propagation, {n_clip} frames x 2 objects ({src_video.name}), median of {rounds} rounds",
                     f"{fo:.2f} fps", f"{fr:.2f} fps", f"{med(tput):.3f}x (goal >= 1.05)"))
        rows.append(("  same, end to end (raw: init_state preload + prompts + propagation)",
                     f"{med(ends['ours']):.2f} s", f"{med(ends['raw']):.2f} s", f"{med(e2e):.3f}x (goal >= 1.1)"))
        rows.append(("  ours with pipeline=False", f"{(n_clip - 1) / med(arms['ours_nopipe']):.2f} fps",
                     f"{fr:.2f} fps", f"{med(nop):.3f}x"))

    # 2. peak RSS ---------------------------------------------------------------------------
    if "rss" not in skip:
        res = {}
        for n in (n1, n2):
            video = make_video(OUT / f"sam2al_rss_{n}.mp4", n, 640, 360)
            folder = jpeg_folder(video, n, OUT / f"sam2al_rss_{n}")
            res[("ours", n)] = rss("ours", video, args.image_size)
            res[("raw", n)] = rss("raw", folder, args.image_size)
            print(f"  rss n={n}: ours {res[('ours', n)]}, raw {res[('raw', n)]}", flush=True)
        o1, o2 = res[("ours", n1)]["peak_rss_mb"], res[("ours", n2)]["peak_rss_mb"]
        r1, r2 = res[("raw", n1)]["peak_rss_mb"], res[("raw", n2)]["peak_rss_mb"]
        results["rss"] = {"n1": n1, "n2": n2, "ours": [o1, o2], "raw": [r1, r2]}
        rows.append((f"peak RSS {n1} -> {n2} frames, 1 object (640x360)",
                     f"{o1:.0f} -> {o2:.0f} MB (+{o2 - o1:.0f})", f"{r1:.0f} -> {r2:.0f} MB (+{r2 - r1:.0f})",
                     f"ours {o2 / o1:.2f}x (target <= 1.2), raw {r2 / r1:.2f}x"))

    # 3. first mask on a 10-minute video ----------------------------------------------------
    if "first" not in skip:
        from dl_utils.sam2_loader import make_image_predictor
        from dl_utils.sam2al import VideoSession
        from dl_utils.store import AnnotationStore
        from dl_utils.video_utils import open_frames
        from dl_utils.video_utils import video as vmod

        long = make_video(OUT / "sam2al_10min.mp4", 18000, 320, 180)
        vmodel, imodel = tiny(args.image_size), tiny(args.image_size, video=False)
        pred = make_image_predictor(imodel)
        frame_no = 9000
        img = open_frames(long)[frame_no]
        pt = np.array([[160.0, 90.0]]), np.array([1])
        ours_t, raw_t = [], []
        for r in range(rounds + 1):
            t0 = time.perf_counter()
            pred.set_image(img)
            pred.predict(*pt, multimask_output=True)
            raw_dt = time.perf_counter() - t0
            vmod._INDEX_CACHE.clear()  # a first mask opens the video cold: no frame index from the last round
            t0 = time.perf_counter()
            src = open_frames(long)
            store = AnnotationStore.create(OUT / "first.sqlite", src.media_info(), overwrite=True)
            ses = VideoSession(src, store, sam_model=vmodel)
            ses.add_points(frame_no, 1, [[160, 90, 1]], label="thing")
            ours_dt = time.perf_counter() - t0
            store.close()
            if r:  # the first round warms caches (index cache, allocator)
                raw_t.append(raw_dt)
                ours_t.append(ours_dt)
        ro, rr = statistics.median(ours_t), statistics.median(raw_t)
        results["first_mask"] = {"ours_s": ro, "raw_image_predict_s": rr, "extra_s": ro - rr}
        rows.append(("first mask, 10-min video (18,000 frames), click on frame 9000",
                     f"{ro:.3f} s", f"{rr:.3f} s (image predict)", f"+{ro - rr:.3f} s (target <= +0.5 s)"))

    # 4. CUDA fps per model size ------------------------------------------------------------
    if "cuda" not in skip and torch.cuda.is_available():
        results["cuda"] = cuda_fps(n_clip if quick else 60)
        for name, (ours, raw) in results["cuda"].items():
            rows.append((f"CUDA {name} @1024, 1 object", f"{ours:.1f} fps", f"{raw:.1f} fps",
                         f"{ours / raw:.2f}x; paper A100: {PAPER_A100_FPS[name]}"))
    elif "cuda" not in skip:
        print("  (no CUDA here: the per-model-size fps table is skipped)")

    w0 = max(len(r[0]) for r in rows) if rows else 10
    print()
    print(f"| {'measurement':<{w0}} | ours | raw SAM2 | ratio / target |")
    print(f"|{'-' * (w0 + 2)}|------|----------|----------------|")
    for r in rows:
        print(f"| {r[0]:<{w0}} | {r[1]} | {r[2]} | {r[3]} |")
    (OUT / "sam2al.json").write_text(json.dumps(results, indent=2))


def cuda_fps(n: int) -> dict[str, tuple[float, float]]:
    """fps per model size at the trained 1024 px, bf16 autocast, one object, ours and raw."""
    import torch

    from dl_utils.sam2_loader import build_sam2_model

    bedroom = SHARED / "bedroom.mp4"
    src_video = bedroom if bedroom.is_file() else make_video(OUT / "sam2al_synth_clip.mp4", n, 960, 540)
    folder = jpeg_folder(src_video, n, OUT / f"sam2al_clip{n}")
    out = {}
    for name in PAPER_A100_FPS:
        model = build_sam2_model(name, device="cuda", random_weights=True, video=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            run_raw(model, folder, None, 1)  # warm-up
            torch.cuda.synchronize()
            raw = run_raw(model, folder, None, 1)
            torch.cuda.synchronize()
        ours = run_ours(model, folder, OUT / "cuda.sqlite", None, 1)  # the session autocasts itself
        torch.cuda.synchronize()
        out[name] = ((n - 1) / ours, (n - 1) / raw)
        del model
        torch.cuda.empty_cache()
    return out


if __name__ == "__main__":
    main()
