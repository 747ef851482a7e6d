"""Every GPU figure docs/benchmarks.md promises, in one process, printed with ratios and written as JSON.

Sections (``--sections``, default all three):

* **sam2**: SAM 2.1 video propagation, frames per second per model size (tiny, small, base+, large) at
  the trained 1024 px and per precision mode (``--modes``: ``fp32``, ``bf16`` and ``fp16`` autocast on the
  eager predictor, ``compile`` = bf16 + upstream's ``vos_optimized`` predictor, every component under
  ``torch.compile``; compile last per size, its warm-up (which compiles) outside the timed rounds), one
  clicked object (as upstream's ``sam2/benchmark.py``). Baseline in the same run and the same mode: raw
  upstream ``SAM2VideoPredictor`` (``SAM2VideoPredictorVOS`` for compile; ``init_state`` on a JPEG folder +
  ``propagate_in_video`` under the mode's autocast, masks to CPU numpy); ours:
  ``dl_utils.sam2al.VideoSession(dtype=mode).propagate`` on the same network and frames (decoded on
  demand, every mask written to an SQLite store). Rounds interleaved, medians; ratio = ours / raw (issue 4
  target >= 0.95). Per mode the mask IoU against raw fp32's masks of the same size (real weights when
  ``--models`` has them, random otherwise: the JSON says which). Raw upstream crashes under fp16 autocast
  (its bf16 memories meet fp16 features in ``torch.cat``): recorded with the error's first line, ours still
  measured. Beside them the SAM 2.1 README's A100 figures (below): compiled for ``compile``, eager for
  the others.
* **detector**: GroundingDINO throughput through ``GroundedDetector.detect`` vs each backend called
  directly (``bench_dinoal.py``: groundingdino-py SwinT-OGC with a 1-layer BERT; transformers with the
  grounding-dino-tiny architecture), ratio = direct time / our time (target >= 0.95).
* **grounded**: ``GroundedVideoTracker`` stage times at several ``--every`` (``bench_grounded.py``), with
  its baselines (detector alone per frame, raw ``SAM2VideoPredictor`` propagation).

Weights are random unless real ones are found (SAM 2.1 checkpoints in ``$DL_UTILS_MODELS``, or
``--models DIR``): speed does not depend on the weight values, only on the architecture and input size.
TF32 is allowed for matrix products on CUDA (as upstream's benchmark does) for baseline and ours alike.
``--budget`` seconds: the remaining model sizes / modes / backends / intervals are skipped (and listed) once
it is spent (a compile mode also when less than ``COMPILE_RESERVE_S`` of it is left), so the whole check
ends in time; the JSON is rewritten after every figure, so a run cut short keeps what it measured.

    python bench/gpu_check.py [--sections sam2,detector,grounded] [--quick] [--device auto|cuda|cpu]
                              [--out FILE] [--budget S] [--sam2-sizes tiny,small,base+,large]
                              [--modes fp32,bf16,fp16,compile] ...

bench/gpu_check.sh installs the offline bundle (bench/gpu_bundle.sh) and runs this.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
OUT = BENCH / "out"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

SECTIONS = ("sam2", "detector", "grounded")
SIZES = {"tiny": "sam2.1_hiera_tiny", "small": "sam2.1_hiera_small", "base+": "sam2.1_hiera_base_plus",
         "large": "sam2.1_hiera_large"}
BACKENDS = ("groundingdino", "transformers")
# precision modes of the sam2 section (bench_precision.MODES): run in this order per model size, compile last
# (its build and first passes take minutes)
MODES = ("fp32", "bf16", "fp16", "compile")
MODE_NOTES = {"fp32": "fp32 (no autocast)", "bf16": "bf16 autocast", "fp16": "fp16 autocast",
              "compile": "bf16 autocast + vos_optimized (SAM2VideoPredictorVOS, every component torch.compile'd)"}
COMPILE_RESERVE_S = 150  # budget a compile mode needs left to start (build + compiling first passes)
# facebookresearch/sam2 README.md, "SAM 2.1 checkpoints" table, Speed (FPS).
PAPER = {
    "source": "facebookresearch/sam2 README.md, table 'SAM 2.1 checkpoints', column Speed (FPS): "
              "'Speed measured on an A100 with torch 2.5.1, cuda 12.4. See benchmark.py for an example on "
              "benchmarking (compiling all the model components)' (sam2/benchmark.py: build_sam2_video_predictor("
              "vos_optimized=True), bf16 autocast, TF32, bedroom clip, 1 clicked object, propagate_in_video)",
    "a100_compiled_fps": {"tiny": 91.2, "small": 84.8, "base+": 64.1, "large": 39.5},
    "source_eager": "same table as first released with SAM 2.1 (2024-09-30, before whole-model compilation): "
                    "A100, no compilation; small/base+/large with compile_image_encoder in parentheses",
    "a100_eager_fps": {"tiny": 47.2, "small": 43.3, "base+": 34.8, "large": 24.2},
    "a100_image_encoder_compiled_fps": {"small": 53.0, "base+": 43.8, "large": 30.2},
}
# what each section imports (module names); a section whose modules are missing is skipped, named
NEEDS = {
    "sam2": ("torch", "torchvision", "numpy", "PIL", "cv2", "av", "pycocotools", "natsort", "sam2", "hydra", "omegaconf",
             "iopath"),
    "detector": ("torch", "torchvision", "numpy", "PIL", "cv2", "av", "pycocotools", "natsort", "transformers",
                 "tokenizers", "huggingface_hub", "timm", "groundingdino", "supervision", "addict", "yapf", "matplotlib",
                 "pytest"),
}
NEEDS["grounded"] = tuple(dict.fromkeys(NEEDS["sam2"] + NEEDS["detector"]))
WEIGHTS_NOTE = ("random weights at full model size and resolution unless a checkpoint is named: speed does not "
                "depend on the weight values")


# ------------------------------------------------------------------------------------ plumbing
class Check:
    """Results, the time budget and the JSON file, shared by the sections."""

    def __init__(self, args) -> None:
        self.args = args
        self.t0 = time.perf_counter()
        self.results: dict = {"meta": {}, "skipped": [], "errors": []}
        self.out = Path(args.out)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def in_budget(self, what: str, need: float = 0) -> bool:
        """Whether ``what`` may start: the budget is not spent, and ``need`` seconds of it are left."""
        if self.args.budget and self.elapsed() > self.args.budget:
            self.skip(what, f"time budget {self.args.budget:.0f} s spent ({self.elapsed():.0f} s)")
            return False
        if self.args.budget and need and self.elapsed() + need > self.args.budget:
            self.skip(what, f"needs about {need:.0f} s (building and compiling), "
                            f"{self.args.budget - self.elapsed():.0f} s of the {self.args.budget:.0f} s budget left")
            return False
        return True

    def skip(self, what: str, why: str) -> None:
        print(f"  SKIPPED {what}: {why}", flush=True)
        self.results["skipped"].append({"what": what, "why": why})

    def error(self, what: str, exc: BaseException) -> None:
        print(f"  ERROR in {what}: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc(limit=6)
        self.results["errors"].append({"what": what, "error": f"{type(exc).__name__}: {exc}"})

    def save(self) -> None:
        self.results["meta"]["elapsed_s"] = round(self.elapsed(), 2)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".part")
        tmp.write_text(json.dumps(self.results, indent=2, default=str))
        tmp.replace(self.out)


def missing_modules(sections: list[str]) -> dict[str, str]:
    """Module -> why it cannot be imported, for the modules the sections need."""
    import importlib

    out = {}
    for mod in dict.fromkeys(m for s in sections for m in NEEDS[s]):
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001  ImportError, or a version check failing at import (transformers)
            out[mod] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return out


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def meta(args, device) -> dict:
    import torch

    m = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "executable": sys.executable, "host": platform.node(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "device": str(device),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "quick": args.quick, "sections": args.sections, "modes": args.modes, "weights": WEIGHTS_NOTE,
        "packages": {d: version(d) for d in ("sam2", "transformers", "tokenizers", "huggingface_hub",
                                             "groundingdino-py", "timm", "av", "numpy", "opencv-python-headless")},
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        m["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                    "multiprocessors": p.multi_processor_count}
        m["tf32"] = True
    return m


# ------------------------------------------------------------------------------------ sam2
def sam2_checkpoint(name: str) -> Path | None:
    """A real checkpoint for a registry name, if one is in the models folder ($DL_UTILS_MODELS)."""
    try:
        from dl_utils.models import checkpoint_path

        p = checkpoint_path(name)
    except Exception:  # noqa: BLE001  no registry entry / folder: random weights
        return None
    return p if p.is_file() else None


def section_sam2(chk: Check, device) -> None:
    import torch

    import bench_precision as bp
    import bench_sam2al as b
    from dl_utils.sam2_loader import is_compiled

    args = chk.args
    cuda = device.type == "cuda"
    n = args.frames or (16 if args.quick else 120)
    rounds = args.rounds or (1 if args.quick else 2)
    size = args.image_size or (1024 if cuda else 256)
    OUT.mkdir(parents=True, exist_ok=True)
    bedroom = b.SHARED / "bedroom.mp4"
    if bedroom.is_file():
        from dl_utils.video_utils import open_frames

        video, clip = bedroom, "bedroom.mp4 (SAM2's own benchmark clip)"
        n = min(n, len(open_frames(bedroom)))
    else:
        video, clip = b.make_video(OUT / f"gpu_synth_{n}.mp4", n, 960, 540), "synthetic 960x540 (two moving discs)"
    folder = b.jpeg_folder(video, n, OUT / f"gpu_clip{n}")
    warm = b.jpeg_folder(video, min(n, 8), OUT / f"gpu_clip{min(n, 8)}")
    warm_db, ours_db = OUT / f"gpu_warm_{os.getpid()}.sqlite", OUT / f"gpu_ours_{os.getpid()}.sqlite"  # per run:
    #                                                     another check running beside this one has its own
    res = chk.results["sam2"] = {
        "frames": n, "rounds": rounds, "image_size": size, "objects": 1, "clip": clip, "modes": args.modes,
        "mode_dtypes": {m: MODE_NOTES[m] for m in args.modes}, "paper": PAPER, "models": {},
        "method": "per model size and mode: raw = SAM2VideoPredictor (compile: upstream's SAM2VideoPredictorVOS, "
                  "compiled) init_state(JPEG folder) + one click + propagate_in_video under the mode's autocast, "
                  "masks to CPU numpy (bench_precision.raw_pass); ours = VideoSession(open_frames(folder), store, "
                  "sam_model=the same network, dtype=mode).propagate('forward') (bench_precision.ours_pass; "
                  "pipeline='auto': on for CUDA); fps = frames / propagation seconds (every frame the propagation "
                  "yields, as sam2/benchmark.py counts), median of rounds (raw and ours interleaved); warm-up "
                  "passes (which compile the compile mode) outside the timed rounds; IoU: per-frame mean and "
                  "minimum against raw fp32's masks of the same size (first timed round), a frame empty in both "
                  "counting 1",
    }
    print(f"\n== sam2: {n} frames of {clip}, 1 object, {size} px, modes {','.join(args.modes)}, {rounds} round(s)",
          flush=True)
    for short in args.sam2_sizes:
        name = SIZES[short]
        ckpt = sam2_checkpoint(name)
        entry = {"model": name, "weights": str(ckpt) if ckpt else "random",
                 "iou_weights": (f"real ({ckpt.name}): the precision floor of SAM 2.1 itself" if ckpt else
                                 "random: the precision floor of an untrained network, not SAM 2.1's "
                                 "(bench/gpu_check.sh --models DIR measures it on real checkpoints)"),
                 "modes": {}}
        res["models"][short] = entry
        ref: dict | None = None  # raw fp32 masks of this size
        model = None
        for mode in args.modes:
            need = COMPILE_RESERVE_S if mode == "compile" else 0
            if not chk.in_budget(f"sam2 {short} {mode}", need):
                continue
            row = {"model": name, "mode": mode, "dtype": MODE_NOTES[mode], "compiled": mode == "compile"}
            try:
                if model is None or is_compiled(model) != (mode == "compile"):
                    model = None
                    if cuda:
                        torch.cuda.empty_cache()
                    t = time.perf_counter()
                    model = bp.build(name, size, device, mode, ckpt)
                    row["build_s"] = round(time.perf_counter() - t, 2)
                    entry.setdefault("params_m", round(sum(p.numel() for p in model.parameters()) / 1e6, 1))
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                # warm-up: kernels, allocator, cuDNN; for compile the whole clip (the first passes compile,
                # and memory attention meets each number of memories and object pointers once)
                wfolder = folder if mode == "compile" else warm
                t = time.perf_counter()
                raw_error = None
                try:
                    bp.raw_pass(model, wfolder, mode)
                except Exception as e:  # noqa: BLE001  upstream's own crash (fp16): recorded, ours still measured
                    raw_error = row["raw_error"] = bp.first_line(e)
                    print(f"  {short} {mode}: raw upstream CRASHED ({raw_error}); ours is still measured", flush=True)
                bp.ours_pass(model, wfolder, warm_db, mode)
                row["warmup_s"] = round(time.perf_counter() - t, 2)
                raw_t, our_t, raw_all, our_all, raw_m, our_m = [], [], [], [], {}, {}
                for r in range(rounds):
                    first = r == 0
                    arms = ["raw", "ours"] if r % 2 == 0 else ["ours", "raw"]
                    for arm in arms:
                        if arm == "raw" and raw_error is None:
                            raw_t.append(bp.raw_pass(model, folder, mode, raw_m if first else None, total=raw_all))
                        elif arm == "ours":
                            our_t.append(bp.ours_pass(model, folder, ours_db, mode,
                                                      our_m if first else None, total=our_all))
                fo = n / statistics.median(our_t)
                paper = PAPER["a100_compiled_fps" if mode == "compile" else "a100_eager_fps"][short]
                row.update({"ours_fps": round(fo, 2), "ours_s": our_t, "ours_end_to_end_s": statistics.median(our_all),
                            "paper_a100_fps": paper,
                            "paper_kind": "compiled" if mode == "compile" else "eager",
                            "ours_vs_paper": round(fo / paper, 3)})
                if raw_error is None:
                    fr = n / statistics.median(raw_t)
                    row.update({"raw_fps": round(fr, 2), "raw_s": raw_t, "ratio": round(fo / fr, 3),
                                "raw_end_to_end_s": statistics.median(raw_all), "raw_vs_paper": round(fr / paper, 3),
                                "ours_iou_vs_raw": bp.mask_iou(our_m, raw_m)})
                    if mode == "fp32":
                        ref = raw_m
                        row["fp32_foreground"] = bp.foreground(raw_m)
                if ref is not None:
                    row["ours_iou_vs_fp32"] = bp.mask_iou(our_m, ref)
                    if raw_error is None:
                        row["raw_iou_vs_fp32"] = bp.mask_iou(raw_m, ref)
                if cuda:
                    row["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                entry["modes"][mode] = row
                raw_txt = f"raw {row['raw_fps']:7.2f} fps" if raw_error is None else "raw CRASHED    "
                ratio_txt = f"ours/raw {row['ratio']:5.3f}x" if raw_error is None else "ours/raw   -   "
                iou = row.get("ours_iou_vs_fp32")
                print(f"  {short:6s} {mode:7s} {raw_txt} | ours {fo:7.2f} fps | {ratio_txt} | paper A100 "
                      f"{row['paper_kind']} {paper} | IoU ours vs fp32 {iou['mean'] if iou else '-'} | "
                      f"{entry['weights']} weights", flush=True)
            except Exception as e:  # noqa: BLE001  one size/mode failing (out of memory, say) must not lose the others
                row["error"] = bp.first_line(e)
                entry["modes"][mode] = row
                chk.error(f"sam2 {short} {mode}", e)
            chk.save()
        model = None
        if cuda:
            torch.cuda.empty_cache()
        chk.save()
    for db in (warm_db, ours_db):
        for f in db.parent.glob(db.name + "*"):  # the store and any -wal / -shm beside it
            f.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ detector
def section_detector(chk: Check, device) -> None:
    import bench_dinoal as bd
    from bench_sam2al import sync
    from tests.dino_fixtures import scene

    args = chk.args
    cuda = device.type == "cuda"
    h, w = args.det_size or ((800, 1333) if cuda and not args.quick else (480, 640) if cuda else (240, 320))
    n_img, repeats = (1, 1) if args.quick else (4, 5)
    if args.rounds:
        repeats = args.rounds
    images = [scene(h, w, seed=i) for i in range(n_img)]
    prompt = "car. person. traffic light"
    res = chk.results["detector"] = {
        "image_size": [w, h], "images": n_img, "rounds": repeats, "prompt": prompt, "backends": {},
        "method": "bench_dinoal.py: reference = the backend called directly (upstream predict + post-processing "
                  "/ processor + model + post_process_grounded_object_detection); ours = GroundedDetector.detect "
                  "(labels, clipping, NMS); ratio = reference time / our time; checked equal first",
        "models": {"groundingdino": "groundingdino-py GroundingDINO_SwinT_OGC.py, 1-layer BERT text encoder",
                   "transformers": "GroundingDinoForObjectDetection default config (grounding-dino-tiny "
                                   "architecture: Swin-T, BERT-base, 900 queries)"},
    }
    print(f"\n== detector: {n_img} image(s) {w}x{h}, {repeats} round(s), prompt {prompt!r}", flush=True)
    for name in args.backends:
        if not chk.in_budget(f"detector {name}"):
            continue
        try:
            fn = bd.bench_groundingdino if name == "groundingdino" else bd.bench_transformers
            fn(images, prompt, device, repeats, (h, w))
            r = bd.RESULTS[name]
            res["backends"][name] = {"reference_ms": round(r["reference_s"] * 1000, 2),
                                     "ours_ms": round(r["ours_s"] * 1000, 2),
                                     "ours_batch_ms": round(r["ours_batch_s"] * 1000, 2),
                                     "ratio": round(r["ratio"], 4), "ours_fps": round(1 / r["ours_s"], 2)}
        except Exception as e:  # noqa: BLE001
            chk.error(f"detector {name}", e)
        sync(device)
        if cuda:
            import torch

            torch.cuda.empty_cache()
        chk.save()


# ------------------------------------------------------------------------------------ grounded
def full_dino_dir(folder: Path) -> Path:
    """grounding-dino-tiny's architecture (transformers default config) with random weights, saved."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    from tests.dino_fixtures import write_vocab

    tok = BertTokenizerFast(vocab_file=str(write_vocab(folder / "_vocab")), do_lower_case=True)
    proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tok)  # 800 / 1333
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GroundingDinoForObjectDetection(GroundingDinoConfig(text_config=BertConfig(vocab_size=tok.vocab_size)))
    with torch.no_grad():  # spread the random scores (as tests/dino_fixtures.py does)
        model.model.decoder.layer_norm.weight.mul_(0.05)
    model.save_pretrained(str(folder))
    proc.save_pretrained(str(folder))
    return folder


def section_grounded(chk: Check, device) -> None:
    import bench_grounded as bg

    args = chk.args
    cuda = device.type == "cuda"
    n = args.grounded_frames or (120 if not args.quick else 24 if cuda else 8)
    everies = args.every or ("1,10,30" if not args.quick else "1,10" if cuda else "1,4")
    left = args.budget - chk.elapsed() if args.budget else None
    if left is not None and left < 90 and not (args.quick or args.grounded_frames or args.every):
        n, everies = 40, "1,10"  # one unit that cannot be cut short: made to fit what is left
        chk.results.setdefault("notes", []).append(f"grounded shortened to {n} frames, every {everies}: "
                                                   f"{left:.0f} s of the budget left")
        print(f"  grounded shortened to {n} frames, every {everies} ({left:.0f} s of the budget left)", flush=True)
    size = args.image_size or (1024 if cuda else 256)
    argv = ["bench_grounded.py", "--device", str(device), "--frames", str(n), "--every", everies,
            "--image-size", str(size), "--size", "960x540" if cuda else "320x180"]
    detector = "small transformers GroundingDINO (tests/dino_fixtures.py), random weights"
    if cuda and not args.quick:
        if not chk.in_budget("grounded (building the grounding-dino-tiny architecture)"):
            return
        argv += ["--dino-model", str(full_dino_dir(OUT / "gpu_gd_tiny_arch")), "--dino-backend", "transformers"]
        detector = "transformers GroundingDINO, grounding-dino-tiny architecture (800/1333 px), random weights"
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if not chk.in_budget("grounded"):
        return
    print(f"\n== grounded: {' '.join(argv[1:])}", flush=True)
    (OUT / "grounded.json").unlink(missing_ok=True)
    old = sys.argv
    try:
        sys.argv = argv
        bg.main()
    except Exception as e:  # noqa: BLE001
        chk.error("grounded", e)
    finally:
        sys.argv = old
    if not (OUT / "grounded.json").is_file():
        return
    g = json.loads((OUT / "grounded.json").read_text())
    runs = []
    for r in g.get("runs", []):
        st, tot = r["stages_s"], r["total_s"]
        runs.append({"every": r["every"], "keyframes": r["keyframes"], "objects": r["objects"],
                     "total_s": round(tot, 3), "fps": round(n / tot, 2),
                     "stages_s": {k: round(v, 3) for k, v in st.items()},
                     "detect_share": round(st["detect"] / tot, 4) if tot else None})
    res = chk.results["grounded"] = {
        "frames": n, "size": g.get("size"), "image_size": size, "clip": g.get("clip"), "detector": detector,
        "sam2": "sam2.1_hiera_tiny, random weights", "box_threshold": g.get("box_threshold"), "runs": runs,
        "detector_direct_ms_per_frame": g.get("detector_direct_ms_per_frame"), "raw_sam2": g.get("raw_sam2"),
    }
    raw = g.get("raw_sam2")
    if raw and runs:
        last = max(runs, key=lambda r: r["every"])
        res["ours_vs_raw_propagation"] = round(last["total_s"] / raw["propagate_s"], 3)
        res["ours_vs_raw_note"] = (f"every {last['every']}: tracker total / raw SAM2 propagation "
                                   f"({last['objects']} vs {raw['objects']} objects); lower is faster")


# ------------------------------------------------------------------------------------ main
def summary(chk: Check) -> None:
    r = chk.results
    m = r["meta"]
    gpu = m.get("gpu", {}).get("name", "no GPU")
    print(f"\n=== GPU check summary: {gpu}, torch {m['torch']}, Python {m['python']}, "
          f"{'quick' if m['quick'] else 'full'} run, {chk.elapsed():.0f} s")
    print(f"    ({WEIGHTS_NOTE})")
    if "sam2" in r:
        s = r["sam2"]
        print(f"\nSAM 2.1 propagation, {s['frames']} frames, 1 object, {s['image_size']} px, per precision mode "
              "(compile = bf16 + vos_optimized); paper: compiled figure for compile, eager for the others")
        print("| model | mode | raw SAM2VideoPredictor fps | ours (sam2al) fps | ours/raw | paper A100 fps "
              "| raw/paper | IoU ours vs fp32 (mean / min) | IoU ours vs raw | weights |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")

        def iou(x):
            return f"{x['mean']:.4f} / {x['min']:.4f}" if x else "-"

        for k, v in s["models"].items():
            for mode, row in v["modes"].items():
                if "error" in row:
                    print(f"| {k} | {mode} | error: {row['error']} | | | | | | | |")
                    continue
                raw = f"{row['raw_fps']:.1f}" if "raw_fps" in row else f"crashed ({row['raw_error']})"
                ratio = f"**{row['ratio']:.2f}x**" if "ratio" in row else "-"
                rp = f"{row['raw_vs_paper']:.2f}x" if "raw_vs_paper" in row else "-"
                print(f"| {k} | {mode} | {raw} | {row['ours_fps']:.1f} | {ratio} | {row['paper_a100_fps']} "
                      f"({row['paper_kind']}) | {rp} | {iou(row.get('ours_iou_vs_fp32'))} | "
                      f"{iou(row.get('ours_iou_vs_raw'))} | {v['weights'] if v['weights'] == 'random' else 'real'} |")
    if "detector" in r:
        d = r["detector"]
        print(f"\nDetection, {d['images']} image(s) {d['image_size'][0]}x{d['image_size'][1]}")
        print("| backend | direct ms/img | ours ms/img | ratio (target >= 0.95) | ours batch ms/img |")
        print("|---|---:|---:|---:|---:|")
        for k, v in d["backends"].items():
            print(f"| {k} | {v['reference_ms']:.1f} | {v['ours_ms']:.1f} | **{v['ratio']:.3f}x** | "
                  f"{v['ours_batch_ms']:.1f} |")
    if "grounded" in r:
        g = r["grounded"]
        print(f"\nGrounded tracking, {g['frames']} frames, {g['detector']}; SAM2 tiny @ {g['image_size']}")
        print("| every | keyframes | total s | fps | decode | detect | segment | propagate | store | detect share |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for run in g["runs"]:
            st = run["stages_s"]
            print(f"| {run['every']} | {run['keyframes']} | {run['total_s']:.2f} | {run['fps']:.1f} | "
                  + " | ".join(f"{st.get(k, 0):.2f}" for k in ("decode", "detect", "segment", "propagate", "store"))
                  + f" | {100 * (run['detect_share'] or 0):.1f} % |")
        if g.get("raw_sam2"):
            print(f"baselines: detector alone {g['detector_direct_ms_per_frame']:.1f} ms/frame; raw SAM2 propagation "
                  f"{g['raw_sam2']['fps']:.1f} fps ({g['raw_sam2']['objects']} objects); "
                  f"ours/raw time {g.get('ours_vs_raw_propagation')}x")
    for s in r["skipped"]:
        print(f"skipped: {s['what']} ({s['why']})")
    for e in r["errors"]:
        print(f"error: {e['what']}: {e['error']}")


def csv(kind, allowed=None):
    def parse(text: str) -> list:
        vals = [v.strip() for v in text.split(",") if v.strip()]
        if allowed is not None:
            bad = [v for v in vals if v not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"{', '.join(bad)}: choose from {', '.join(allowed)}")
        if not vals:
            raise argparse.ArgumentTypeError(f"empty {kind} list")
        return vals
    return parse


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", type=csv("sections", SECTIONS), default=list(SECTIONS),
                    help="comma list of sam2, detector, grounded (default all)")
    ap.add_argument("--quick", action="store_true", help="few frames, images and rounds (a smoke test)")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--out", default=str(OUT / "gpu_check.json"), help="the JSON results file")
    ap.add_argument("--budget", type=float, default=0, help="seconds; skip what is left once spent (0: none)")
    ap.add_argument("--sam2-sizes", type=csv("sizes", tuple(SIZES)), default=None,
                    help="comma list of tiny, small, base+, large (default all on CUDA, tiny on CPU)")
    ap.add_argument("--modes", type=csv("modes", MODES), default=list(MODES),
                    help="sam2 precision modes, comma list of fp32, bf16, fp16, compile (= bf16 + vos_optimized) "
                         "(default all four; run in that order per size, compile last)")
    ap.add_argument("--backends", type=csv("backends", BACKENDS), default=list(BACKENDS),
                    help="detector backends (default both)")
    ap.add_argument("--frames", type=int, default=None, help="sam2 clip length (default 120, --quick 16)")
    ap.add_argument("--grounded-frames", type=int, default=None, help="grounded clip length (default 120, --quick 24; 8 on CPU)")
    ap.add_argument("--every", default=None, help="grounded keyframe intervals (default 1,10,30; --quick 1,10; 1,4 on CPU)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 2 sam2 / 5 detector; --quick 1)")
    ap.add_argument("--image-size", type=int, default=None, help="SAM2 input size (default 1024 CUDA, 256 CPU)")
    ap.add_argument("--det-size", type=int, nargs=2, default=None, metavar=("SHORT", "LONG"),
                    help="detector image size (default 800 1333 CUDA, 240 320 CPU)")
    ap.add_argument("--models", default=None, help="folder with real SAM 2.1 checkpoints (sets DL_UTILS_MODELS)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    args.sections = [s for s in SECTIONS if s in args.sections]  # run in the documented order
    args.modes = [m for m in MODES if m in args.modes]  # fp32 first (the IoU reference), compile last
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")  # upstream's deprecation warnings on every forward pass
    os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: upstream's progress bars would fill
    #                                             the device tool's output tail
    if args.models:
        os.environ["DL_UTILS_MODELS"] = str(Path(args.models).resolve())
    from bench_sam2al import bench_device

    device = bench_device(args.device, args.threads)
    if device is None:
        return 2
    args.device = device.type
    if args.sam2_sizes is None:
        args.sam2_sizes = list(SIZES) if device.type == "cuda" else ["tiny"]
    chk = Check(args)
    chk.results["meta"] = meta(args, device)
    m = chk.results["meta"]
    print(f"GPU check: {m.get('gpu', {}).get('name', 'CPU')} | torch {m['torch']} (CUDA {m['torch_cuda']}) | "
          f"Python {m['python']} | sections {','.join(args.sections)} | {'quick' if args.quick else 'full'}"
          f"{f' | budget {args.budget:.0f} s' if args.budget else ''}", flush=True)
    print(f"  {WEIGHTS_NOTE}", flush=True)
    missing = missing_modules(args.sections)
    if missing:
        chk.results["meta"]["missing_modules"] = missing
        for mod, why in missing.items():
            print(f"  cannot import {mod}: {why}", flush=True)
    chk.save()
    for name in args.sections:
        fn = {"sam2": section_sam2, "detector": section_detector, "grounded": section_grounded}[name]
        lacking = [m for m in NEEDS[name] if m in missing]
        if lacking:
            chk.skip(name, f"cannot import {', '.join(lacking)} (bench/gpu_bundle.sh; --with-fat for cv2/matplotlib)")
            chk.results["errors"].append({"what": name, "error": f"missing modules: {', '.join(lacking)}"})
            continue
        if not chk.in_budget(name):
            continue
        try:
            fn(chk, device)
        except Exception as e:  # noqa: BLE001  a broken section must not lose the others
            chk.error(name, e)
        chk.save()
    summary(chk)
    chk.save()
    print(f"\nwrote {chk.out}")
    return 1 if chk.results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
