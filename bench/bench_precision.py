"""SAM 2 video propagation per precision mode, ours beside raw upstream in the same mode (issue 20, part 3).

Modes: ``fp32`` (no autocast), ``bf16`` and ``fp16`` (``torch.autocast`` in that dtype around the whole
propagation, as upstream's demos enter it), and with ``--compile`` also ``compile`` (bf16 autocast +
upstream's ``vos_optimized`` predictor: every component under ``torch.compile``; slow to build on a CPU,
so off by default). Per mode and in one run, with the tiny SAM 2.1 config at 256 px and random weights
(speed does not depend on the weight values; the IoU figures do, see below):

* **ours / raw in the same mode**: raw = ``SAM2VideoPredictor.init_state`` on a JPEG folder + one clicked
  object + ``propagate_in_video`` under the mode's autocast, masks to CPU numpy; ours =
  ``VideoSession(..., dtype=mode).propagate`` on the same frames (decoded on demand, every mask written to
  an SQLite store; ``pipeline='auto'``, the library default: on for CUDA, off on a CPU). Figure: the median
  of the per-round ratios raw time / our time (> 1: ours faster).
* **mode vs fp32**: each arm's time against raw fp32 in the same round (> 1: the mode is faster than fp32).
* **IoU vs fp32**: each arm's masks in the mode against raw fp32's masks of the same frames (mean and
  minimum over frames; a frame where both are empty counts 1), and ours against raw in the same mode
  (parity). With random weights this is the precision floor of an untrained network, not of SAM 2.1's
  real weights: ``bench/gpu_check.py --models DIR`` measures it on real checkpoints.

Rounds are interleaved: every round runs each (mode, arm) once, in an order rotated from round to round,
so load on a shared machine falls on all of them alike. A warm-up pass per mode and arm comes first,
outside the timed rounds (it also compiles the ``compile`` mode and records the masks). An arm that
crashes in a mode (raw upstream under fp16 autocast: its bf16 memories meet fp16 features in
``torch.cat``) is recorded with the error's first line and left out of the rounds; the others go on.

    .venv/bin/python bench/bench_precision.py [--quick] [--rounds N] [--frames N] [--compile]
                                              [--modes fp32,bf16,fp16] [--device auto|cpu|cuda] [--out FILE]

Writes only under bench/out/ (git-ignored) unless ``--out`` says otherwise. ``bench/gpu_check.py`` uses the
same runners (:func:`raw_pass`, :func:`ours_pass`, :func:`mask_iou`) for its per-mode table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
warnings.filterwarnings("ignore")
os.environ.setdefault("TQDM_DISABLE", "1")  # upstream's per-call progress bars would bury the figures

from bench_sam2al import sync  # noqa: E402  (needs bench/ on the path, above)

MODES = ("fp32", "bf16", "fp16", "compile")
# the autocast dtype each mode runs under (compile: upstream's benchmark.py runs the compiled model in bf16)
DTYPE = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "compile": "bf16"}
ARMS = ("raw", "ours")
CLICK = (0.40, 0.55)  # relative position of the one positive click on the first frame


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (torch's errors run to dozens of lines)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# ------------------------------------------------------------------------------------ runners
def raw_pass(model, folder: Path, mode: str, masks: dict | None = None, total: list | None = None) -> float:
    """Raw upstream in ``mode``: seconds in ``propagate_in_video`` (one object clicked on frame 0).

    The autocast is entered around everything (``init_state``, the click, the propagation), as
    upstream's notebooks and ``benchmark.py`` do; ``masks`` (when given) gets frame -> bool (H, W);
    ``total`` gets the seconds including ``init_state`` (which loads every frame) and the click.
    """
    import torch

    from dl_utils.sam2_loader import autocast_context

    t_start = time.perf_counter()
    with torch.inference_mode(), autocast_context(model.device, DTYPE[mode]):
        st = model.init_state(str(folder))
        w, h = st["video_width"], st["video_height"]
        model.add_new_points_or_box(st, 0, 1, points=[[CLICK[0] * w, CLICK[1] * h]], labels=[1])
        sync(model.device)
        t0 = time.perf_counter()
        for f, _ids, logits in model.propagate_in_video(st):
            m = (logits[:, 0] > 0).cpu().numpy()
            if masks is not None:
                masks[int(f)] = m[0]
        sync(model.device)
        t1 = time.perf_counter()
    if total is not None:
        total.append(t1 - t_start)
    return t1 - t0


def ours_pass(model, folder: Path, store_path: Path, mode: str, masks: dict | None = None,
              total: list | None = None) -> float:
    """Ours in ``mode``: seconds in ``VideoSession.propagate`` (the same click), every mask stored.

    ``masks`` (when given) gets the store's masks after the timed pass, read back from SQLite;
    ``total`` gets the seconds including opening the frames, the store, the session and the click.
    """
    from dl_utils.sam2al import VideoSession
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames

    t_start = time.perf_counter()
    src = open_frames(folder)
    store = AnnotationStore.create(store_path, src.media_info(), overwrite=True)
    try:
        ses = VideoSession(src, store, sam_model=model, dtype=DTYPE[mode], compile=mode == "compile")
        try:
            w, h = src.source_size
            ses.add_points(0, 1, [[CLICK[0] * w, CLICK[1] * h, 1]], label="obj1")
            sync(model.device)
            t0 = time.perf_counter()
            ses.propagate("forward", progress=False)
            sync(model.device)
            t1 = time.perf_counter()
        finally:
            ses.close()
        if total is not None:
            total.append(t1 - t_start)
        if masks is not None:
            for f, inst in store.read_object(1).items():
                masks[int(f)] = np.asarray(inst.mask, dtype=bool)
        return t1 - t0
    finally:
        store.close()


def mask_iou(a: dict, ref: dict) -> dict | None:
    """Mean and minimum per-frame IoU of ``a`` against ``ref`` over their common frames.

    A frame where both masks are empty counts 1 (they agree); ``None`` when no frame is shared.
    """
    frames = sorted(set(a) & set(ref))
    if not frames:
        return None
    vals = []
    for f in frames:
        x, y = np.asarray(a[f], bool), np.asarray(ref[f], bool)
        union = np.logical_or(x, y).sum()
        vals.append(1.0 if union == 0 else float(np.logical_and(x, y).sum() / union))
    return {"mean": round(float(np.mean(vals)), 4), "min": round(float(np.min(vals)), 4), "frames": len(frames)}


def foreground(masks: dict) -> float | None:
    """Mean foreground share of the masks: whether an IoU compares real shapes or empty frames."""
    if not masks:
        return None
    return round(float(np.mean([np.asarray(m, bool).mean() for m in masks.values()])), 4)


def build(size_name: str, image_size: int, device, mode: str, checkpoint=None):
    """The network a mode runs on: eager for fp32/bf16/fp16, upstream's VOS predictor for compile."""
    from dl_utils.sam2_loader import build_sam2_model

    return build_sam2_model(size_name, checkpoint, image_size=image_size, device=device,
                            random_weights=checkpoint is None, video=True, compile=mode == "compile")


# ------------------------------------------------------------------------------------ main
def parse_modes(text: str) -> list[str]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in vals if v not in MODES[:3]]
    if bad or not vals:
        raise argparse.ArgumentTypeError(f"{', '.join(bad) or 'empty list'}: choose from fp32, bf16, fp16 "
                                         "(--compile adds the compiled mode)")
    return vals


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 3 frames, 1 round")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5; --quick 1)")
    ap.add_argument("--frames", type=int, default=None, help="frames in the clip (default 8 on a CPU, 60 on CUDA; "
                                                             "--quick 3)")
    ap.add_argument("--image-size", type=int, default=256, help="SAM 2 input size (default 256)")
    ap.add_argument("--modes", type=parse_modes, default=list(MODES[:3]),
                    help="comma list of fp32, bf16, fp16 (default all three; fp32 is always run: the reference)")
    ap.add_argument("--compile", action="store_true",
                    help="add the compile mode (bf16 + vos_optimized; builds for minutes on a CPU)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=str(OUT / "precision.json"), help="the JSON results file")
    args = ap.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.frames is not None and args.frames < 2:
        ap.error("--frames must be >= 2")
    modes = set(args.modes) | {"fp32"} | ({"compile"} if args.compile else set())
    args.modes = [m for m in MODES if m in modes]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import bench_sam2al as b

    device = b.bench_device(args.device, args.threads)
    if device is None:
        return 2
    args.device = device.type
    cuda = device.type == "cuda"
    rounds = args.rounds or (1 if args.quick else 5)
    n = args.frames or (3 if args.quick else 60 if cuda else 8)
    OUT.mkdir(parents=True, exist_ok=True)
    video = b.make_video(OUT / f"precision_synth_{n}.mp4", n, 960, 540)
    folder = b.jpeg_folder(video, n, OUT / f"precision_clip{n}")
    load = os.getloadavg()
    card = torch.cuda.get_device_name(device) if cuda else f"CPU, {os.cpu_count()} cores"
    print(f"precision modes: {', '.join(args.modes)} | {card} | torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads | sam2.1_hiera_tiny, random weights, {args.image_size} px | {n} frames "
          f"(synthetic 960x540), 1 object | {rounds} interleaved round(s) | load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}", flush=True)

    def db(mode: str) -> Path:  # per process: a run beside this one has its own stores
        return OUT / f"precision_{mode}_{os.getpid()}.sqlite"

    models = {}
    masks: dict[tuple[str, str], dict] = {}
    crashed: dict[tuple[str, str], str] = {}
    build_s: dict[str, float] = {}
    warm_s: dict[tuple[str, str], float] = {}
    for mode in args.modes:
        kind = "compile" if mode == "compile" else "eager"
        if kind not in models:
            t = time.perf_counter()
            models[kind] = build("sam2.1_hiera_tiny", args.image_size, device, mode)
            build_s[kind] = round(time.perf_counter() - t, 2)
        for arm in ARMS:
            got: dict = {}
            t = time.perf_counter()
            try:  # warm-up: allocator, kernels, the compiled graphs; records the masks
                if arm == "raw":
                    raw_pass(models[kind], folder, mode, got)
                else:
                    ours_pass(models[kind], folder, db(mode), mode, got)
                masks[(mode, arm)] = got
            except Exception as e:  # noqa: BLE001  recorded; the other modes and arms go on
                crashed[(mode, arm)] = first_line(e)
                print(f"  {mode} {arm}: CRASHED ({crashed[(mode, arm)]}); left out of the rounds", flush=True)
            warm_s[(mode, arm)] = round(time.perf_counter() - t, 2)
        print(f"  warm-up {mode}: raw {warm_s[(mode, 'raw')]:.1f} s, ours {warm_s[(mode, 'ours')]:.1f} s", flush=True)

    pairs = [(m, a) for m in args.modes for a in ARMS if (m, a) not in crashed]
    times: dict[tuple[str, str], list[float]] = {p: [] for p in pairs}
    ends: dict[tuple[str, str], list[float]] = {p: [] for p in pairs}  # with the setup (raw: init_state's preload)
    for r in range(rounds):
        k = r % len(pairs) if pairs else 0
        for mode, arm in pairs[k:] + pairs[:k]:
            kind = "compile" if mode == "compile" else "eager"
            if arm == "raw":
                times[(mode, arm)].append(raw_pass(models[kind], folder, mode, total=ends[(mode, arm)]))
            else:
                times[(mode, arm)].append(ours_pass(models[kind], folder, db(mode), mode, total=ends[(mode, arm)]))
        print(f"  round {r + 1}: " + ", ".join(f"{m} {a} {times[(m, a)][-1]:.2f} s" for m, a in pairs)
              + f"; load average {os.getloadavg()[0]:.2f}", flush=True)

    for f in OUT.glob(f"precision_*_{os.getpid()}.sqlite*"):  # this run's stores (-wal / -shm too)
        f.unlink(missing_ok=True)
    med = statistics.median
    ref_t = times.get(("fp32", "raw"))
    ref_m = masks.get(("fp32", "raw"))
    rows = {}
    for mode in args.modes:
        row: dict = {"dtype": DTYPE[mode], "compiled": mode == "compile"}
        for arm in ARMS:
            key = (mode, arm)
            if key in crashed:
                row[f"{arm}_error"] = crashed[key]
                continue
            row[f"{arm}_s"] = times[key]
            row[f"{arm}_end_to_end_s"] = ends[key]
            row[f"{arm}_fps"] = round(n / med(times[key]), 3)
            if ref_t:
                row[f"{arm}_vs_fp32_raw"] = round(med([a / x for a, x in zip(ref_t, times[key])]), 3)
            if ref_m is not None:
                row[f"{arm}_iou_vs_fp32"] = mask_iou(masks[key], ref_m)
        if ("raw_s" in row) and ("ours_s" in row):
            per = [a / x for a, x in zip(times[(mode, "raw")], times[(mode, "ours")])]
            row["ratio_per_round"] = [round(x, 4) for x in per]
            row["ratio"] = round(med(per), 3)
            e2e = [a / x for a, x in zip(ends[(mode, "raw")], ends[(mode, "ours")])]
            row["end_to_end_ratio"] = round(med(e2e), 3)
            row["ours_iou_vs_raw"] = mask_iou(masks[(mode, "ours")], masks[(mode, "raw")])
        rows[mode] = row

    def iou(x):
        return f"{x['mean']:.4f} (min {x['min']:.4f})" if x else "-"

    print(f"\nSAM 2.1 tiny, {args.image_size} px, random weights, {n} frames, 1 object, {card}; median of "
          f"{rounds} interleaved round(s); ratios > 1: faster")
    print("| mode | raw fps | ours fps | ours/raw (same mode) | ours/raw end to end | raw vs fp32 raw "
          "| ours vs fp32 raw | IoU raw vs fp32 | IoU ours vs fp32 | IoU ours vs raw |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, row in rows.items():
        cell = {}
        for arm in ARMS:
            if f"{arm}_error" in row:
                cell[arm] = ("crashed", "-", "-")
                continue
            vs = row.get(f"{arm}_vs_fp32_raw")
            cell[arm] = (f"{row[f'{arm}_fps']:.2f}", f"{vs:.3f}x" if vs else "-", iou(row.get(f"{arm}_iou_vs_fp32")))
        ratio = f"**{row['ratio']:.3f}x** | {row['end_to_end_ratio']:.3f}x" if "ratio" in row else "- | -"
        print(f"| {mode} | {cell['raw'][0]} | {cell['ours'][0]} | {ratio} | {cell['raw'][1]} | {cell['ours'][1]} | "
              f"{cell['raw'][2]} | {cell['ours'][2]} | {iou(row.get('ours_iou_vs_raw'))} |")
    for (mode, arm), why in crashed.items():
        print(f"{mode} {arm} crashed: {why}")
    fg = foreground(ref_m or {})
    if fg is not None:
        print(f"(fp32 masks cover {100 * fg:.1f} % of the frame on average: the IoU compares real shapes"
              f"{'' if 0.001 < fg < 0.999 else ' -- NOT: they are (nearly) empty or full'})")
    result = {"device": str(device), "card": card, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "model": "sam2.1_hiera_tiny", "weights": "random", "image_size": args.image_size, "frames": n,
              "objects": 1, "rounds": rounds, "modes": args.modes, "build_s": build_s,
              "warmup_s": {f"{m} {a}": s for (m, a), s in warm_s.items()}, "fp32_foreground": fg,
              "load_average_start": load, "rows": rows,
              "method": "ratio = median over rounds of raw time / our time in the same mode (propagation only); "
                        "end_to_end_ratio = the same with the setup (raw: init_state, which preloads every frame; "
                        "ours: opening the frames, store and session; both: the click); x_vs_fp32_raw = median "
                        "of raw fp32 time / x time; IoU vs raw fp32 masks, per-frame mean and min"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")  # a run cut short never leaves half a file under --out
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
