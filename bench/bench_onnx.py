"""The onnx backend (issue 19 part 4) against calling onnxruntime directly, on the same frames.

The model: a small random-weight conv net at 640x640 whose output is in the Ultralytics YOLOv8
detection layout, ``1 x (4 + 80) x 8400`` (strides 8/16/32, like YOLOv8n's head), exported here with
``torch.onnx.export`` and given Ultralytics' metadata; the class logits are biased so that a few
hundred anchors pass the 0.25 threshold per frame (a trained model's busy scene), so NMS has real
work. Its weights do not change the speed. Frames: 1280x720 RGB (synthetic, made once, not timed).

Two ways to detect on the same frames, sharing ONE onnxruntime session (same providers, threads):

* **ours**: :meth:`dl_utils.dinoal.onnx_yolo.OnnxYoloDetector.detect` (letterbox, ``session.run``,
  decode, per-class NMS, letterbox undone, :class:`Detections` with labels);
* **direct**: the same steps written minimally here: ``cv2`` letterbox, ``/ 255``, ``session.run``,
  best class per anchor, threshold, per-class greedy NMS in numpy over every candidate, then the 300
  best (as Ultralytics does: full NMS, then ``[:max_det]``), boxes scaled back;
* **direct-stop**: the same, its NMS stopping once 300 boxes are kept (what ours does; the same
  boxes): ``ours / direct-stop`` is the cost of our wrapper alone (labels, checks, Detections).

Rounds are interleaved (the order rotates each round); the figures are the medians over rounds of
``ours frames/s / direct frames/s`` (goal: >= 0.95x) and ``ours / direct-stop``.

    .venv/bin/python bench/bench_onnx.py [--rounds 7] [--frames 20] [--threads 2] [--device cpu]

Writes only under bench/out/onnx/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "onnx"
NC = 80
SIZE = 640
SPREAD, OFFSET = 1.0, -4.5  # class logits: a few hundred anchors pass 0.25 (a busy scene), most far below


def build_model(path: Path) -> Path:
    """A YOLOv8n-sized conv net with a YOLO-layout output, exported and given Ultralytics metadata."""
    import onnx
    import torch
    from torch import nn

    torch.manual_seed(0)

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.SiLU())

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(block(3, 16, 2), block(16, 32, 2), block(32, 32, 1))
            self.p3 = nn.Sequential(block(32, 64, 2), block(64, 64, 1))
            self.p4 = nn.Sequential(block(64, 128, 2), block(128, 128, 1))
            self.p5 = nn.Sequential(block(128, 256, 2), block(256, 256, 1))
            self.heads = nn.ModuleList(nn.Conv2d(c, 4 + NC, 1) for c in (64, 128, 256))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            f3 = self.p3(x)
            f4 = self.p4(f3)
            f5 = self.p5(f4)
            outs = []
            for f, head, stride in zip((f3, f4, f5), self.heads, (8, 16, 32)):
                o = head(f)
                b, _, h, w = o.shape
                gy, gx = torch.meshgrid(torch.arange(h, dtype=o.dtype), torch.arange(w, dtype=o.dtype),
                                        indexing="ij")
                cx = (gx + 0.5 + torch.tanh(o[:, 0])) * stride
                cy = (gy + 0.5 + torch.tanh(o[:, 1])) * stride
                wh = torch.sigmoid(o[:, 2:4]) * stride * 8
                z = o[:, 4:]
                z = (z - z.mean(dim=(2, 3), keepdim=True)) / (z.std(dim=(2, 3), keepdim=True) + 1e-6)
                cls = torch.sigmoid(z * SPREAD + OFFSET)  # per class and scale standardised: a few hundred pass
                outs.append(torch.cat([cx[:, None], cy[:, None], wh, cls], 1).flatten(2))
            return torch.cat(outs, 2)  # (1, 84, 8400)

    net = Net().eval()
    torch.onnx.export(net, torch.zeros(1, 3, SIZE, SIZE), str(path), input_names=["images"],
                      output_names=["output0"], opset_version=17, dynamo=False)
    m = onnx.load(str(path))
    for k, v in (("names", str({i: f"class{i}" for i in range(NC)})), ("imgsz", f"[{SIZE}, {SIZE}]"),
                 ("stride", "32"), ("task", "detect")):
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(path))
    return path


# ----------------------------------------------------------------------------- the direct baseline
def direct(session, image: np.ndarray, conf: float = 0.25, iou: float = 0.7, stop: bool = False):
    """Letterbox, session.run, decode, per-class NMS, scale back: the minimal hand-written pipeline."""
    import cv2

    h, w = image.shape[:2]
    r = min(SIZE / h, SIZE / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    dw, dh = (SIZE - nw) / 2, (SIZE - nh) / 2
    im = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    im = cv2.copyMakeBorder(im, top, int(round(dh + 0.1)), left, int(round(dw + 0.1)), cv2.BORDER_CONSTANT,
                            value=(114, 114, 114))
    x = im.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    pred = session.run(None, {"images": x})[0][0]
    scores = pred[4:]
    cls = scores.argmax(0)
    s = scores[cls, np.arange(scores.shape[1])]
    k = np.flatnonzero(s > conf)
    cx, cy, bw, bh = pred[:4, k]
    b = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).astype(np.float64)
    s, cls = s[k], cls[k]
    ob = b + (cls * 4096.0)[:, None]
    area = (ob[:, 2] - ob[:, 0]) * (ob[:, 3] - ob[:, 1])
    order, keep = np.argsort(-s, kind="stable"), []
    while order.size and not (stop and len(keep) == 300):
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.clip(np.minimum(ob[i, 2], ob[rest, 2]) - np.maximum(ob[i, 0], ob[rest, 0]), 0, None)
        ih = np.clip(np.minimum(ob[i, 3], ob[rest, 3]) - np.maximum(ob[i, 1], ob[rest, 1]), 0, None)
        inter = iw * ih
        order = rest[inter / (area[i] + area[rest] - inter) <= iou]
    keep = np.asarray(keep[:300], dtype=np.int64)
    out = b[keep]
    out[:, [0, 2]] = ((out[:, [0, 2]] - left) / r).clip(0, w)
    out[:, [1, 3]] = ((out[:, [1, 3]] - top) / r).clip(0, h)
    return out, s[keep], cls[keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import onnxruntime as ort

    from dl_utils.dinoal.onnx_yolo import OnnxYoloDetector, open_session

    OUT.mkdir(parents=True, exist_ok=True)
    model = OUT / "yolo_like_640.onnx"
    if not model.is_file():
        build_model(model)
    session = open_session(model, device=args.device, threads=args.threads)
    det = OnnxYoloDetector(model, session=session)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(720 // 8, 1280 // 8, 3), dtype=np.uint8)
    import cv2

    frames = [np.ascontiguousarray(np.roll(cv2.resize(base, (1280, 720)), 13 * i, axis=1))
              for i in range(args.frames)]
    # the two pipelines agree (same boxes, up to float32 vs float64 rounding) before anything is timed
    mine, ref, ref2 = det.detect(frames[0]), direct(session, frames[0]), direct(session, frames[0], stop=True)
    for r in (ref, ref2):
        assert len(mine) == len(r[0]) and np.allclose(mine.boxes, r[0], atol=1e-2), (len(mine), len(r[0]))
    for f in frames[:3]:  # warm-up
        det.detect(f)
        direct(session, f)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        for f in frames:
            fn(f)
        return len(frames) / (time.perf_counter() - t0)

    ways = {"ours": det.detect, "direct": lambda f: direct(session, f),
            "direct_stop": lambda f: direct(session, f, stop=True)}
    names = list(ways)
    fps: dict[str, list[float]] = {n: [] for n in names}
    ratios, ratios_stop = [], []
    for r in range(args.rounds):
        got = {}
        for n in names[r % 3:] + names[:r % 3]:  # the order rotates
            got[n] = timed(ways[n])
            fps[n].append(got[n])
        ratios.append(got["ours"] / got["direct"])
        ratios_stop.append(got["ours"] / got["direct_stop"])
        print(f"round {r}: ours {got['ours']:.2f} fps, direct {got['direct']:.2f}, direct-stop "
              f"{got['direct_stop']:.2f}; ours/direct {ratios[-1]:.3f}, ours/direct-stop {ratios_stop[-1]:.3f}",
              flush=True)
    res = {
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_vs_direct_stop_median": round(statistics.median(ratios_stop), 3),
        "ratios": [round(x, 3) for x in ratios],
        "ratios_vs_direct_stop": [round(x, 3) for x in ratios_stop],
        **{f"{n}_fps_median": round(statistics.median(v), 2) for n, v in fps.items()},
        "detections_per_frame": len(mine),
        "frames": args.frames, "rounds": args.rounds, "threads": args.threads,
        "providers": session.get_providers(), "onnxruntime": ort.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    (OUT / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
