"""Detection throughput through dinoal vs each GroundingDINO backend called directly (target >= 0.95x).

Random weights (no downloads), small inputs, same images and prompt for both sides:

* **groundingdino**: the real ``GroundingDINO_SwinT_OGC.py`` model with a 1-layer BERT text encoder
  (tests/dino_fixtures.py). Reference per image = upstream's ``load_image`` transform (at the bench
  size) + ``groundingdino.util.inference.predict`` + ``Model.post_process_result``; ours =
  ``GroundedDetector.detect`` (labels, clipping and per-class NMS included).
* **transformers**: ``GroundingDinoForObjectDetection`` from the default config (Swin-T, BERT-base,
  900 queries: the architecture of IDEA-Research/grounding-dino-tiny) with random weights. Reference =
  ``processor(...)`` + ``model(**inputs)`` + ``post_process_grounded_object_detection``; ours =
  ``GroundedDetector.detect``.

Before timing, ours (NMS off) is checked equal to the reference. Timing interleaves reference and
ours per round and reports the median seconds per image; ``ratio`` = reference time / our time
(throughput ours / reference; >= 0.95 is the target). ``ours batch`` runs ``detect_batch`` on all
images at once. Writes nothing.

    .venv/bin/python bench/bench_dinoal.py [--quick] [--device cpu|cuda] [--threads N] [--backend both]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


# the figures of the last run per backend (seconds per image), for bench/gpu_check.py
RESULTS: dict[str, dict[str, float]] = {}


def _report(name: str, ref: list[float], ours: list[float], batch: list[float], n_images: int) -> float:
    r, o, b = statistics.median(ref), statistics.median(ours), statistics.median(batch) / n_images
    ratio = r / o
    RESULTS[name] = {"reference_s": r, "ours_s": o, "ours_batch_s": b, "ratio": ratio, "images": n_images,
                     "rounds": len(ours) // max(n_images, 1)}
    print(f"{name:14s} reference {r * 1000:8.1f} ms/img | ours {o * 1000:8.1f} ms/img | ratio {ratio:5.3f}x "
          f"| ours batch {b * 1000:8.1f} ms/img ({r / b:5.2f}x)")
    return ratio


def bench_groundingdino(images, prompt, device, repeats: int, size: tuple[int, int]) -> float:
    import groundingdino.datasets.transforms as T
    from groundingdino.util.inference import Model, predict
    from PIL import Image

    from dl_utils.dinoal import GroundedDetector, GroundingDinoBackend
    from tests.dino_fixtures import build_gd_model, make_text_encoder

    tmp = Path(tempfile.mkdtemp(prefix="bench_dino_"))
    enc = make_text_encoder(tmp / "bert")
    model = build_gd_model(enc).to(device)
    backend = GroundingDinoBackend.from_model(model, device=device, image_size=size[0], max_size=size[1])
    tr = T.Compose([T.RandomResize([size[0]], max_size=size[1]), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    caption, thr, tthr = prompt.lower() + ".", 0.7, 0.5

    def reference(img):
        x, _ = tr(Image.fromarray(img), None)
        boxes, logits, phrases = predict(model, x, caption, thr, tthr, device=str(device))
        return Model.post_process_result(img.shape[0], img.shape[1], boxes, logits), phrases

    raw = GroundedDetector(backend, nms_iou=None, clip=False, box_threshold=thr, text_threshold=tthr)
    for img in images:  # correctness first (also warms up)
        (sv, phrases), d = reference(img), raw.detect(img, prompt)
        assert np.array_equal(sv.xyxy, d.boxes) and np.array_equal(sv.confidence, d.scores) and phrases == d.phrases
    det = GroundedDetector(backend, box_threshold=thr, text_threshold=tthr)
    return _loop("groundingdino", images, prompt, det, reference, device, repeats)


def bench_transformers(images, prompt, device, repeats: int, size: tuple[int, int]) -> float:
    import torch
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    from dl_utils.dinoal import GroundedDetector, TransformersBackend
    from tests.dino_fixtures import write_vocab

    tmp = Path(tempfile.mkdtemp(prefix="bench_dino_"))
    tok = BertTokenizerFast(vocab_file=str(write_vocab(tmp)), do_lower_case=True)
    proc = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": size[0], "longest_edge": size[1]}),
        tokenizer=tok,
    )
    cfg = GroundingDinoConfig(text_config=BertConfig(vocab_size=tok.vocab_size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GroundingDinoForObjectDetection(cfg).eval()
    with torch.no_grad():
        model.model.decoder.layer_norm.weight.mul_(0.05)  # spread random scores (see tests/dino_fixtures.py)
    model = model.to(device)
    backend = TransformersBackend.from_model(model, proc, device=device)
    caption, thr, tthr = prompt.lower() + ".", 0.6, 0.5

    def reference(img):
        inputs = proc(images=img, text=caption, return_tensors="pt").to(device)
        with torch.no_grad():
            out = model(**inputs)
        return proc.post_process_grounded_object_detection(out, inputs.input_ids, threshold=thr, text_threshold=tthr,
                                                           target_sizes=[img.shape[:2]])[0]

    raw = GroundedDetector(backend, nms_iou=None, clip=False, box_threshold=thr, text_threshold=tthr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for img in images:
            r, d = reference(img), raw.detect(img, prompt)
            assert np.array_equal(r["boxes"].cpu().numpy(), d.boxes) and np.array_equal(r["scores"].cpu().numpy(), d.scores)
    det = GroundedDetector(backend, box_threshold=thr, text_threshold=tthr)
    return _loop("transformers", images, prompt, det, reference, device, repeats)


def _loop(name, images, prompt, det, reference, device, repeats: int) -> float:
    ref_t, ours_t, batch_t = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            for img in images:
                ref_t.append(_time(lambda img=img: reference(img), device))
                ours_t.append(_time(lambda img=img: det.detect(img, prompt), device))
            batch_t.append(_time(lambda: det.detect_batch(images, prompt), device))
    return _report(name, ref_t, ours_t, batch_t, len(images))


def main() -> None:
    import torch

    from tests.dino_fixtures import scene

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 images, 2 rounds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--backend", choices=("both", "groundingdino", "transformers"), default="both")
    ap.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("SHORT", "LONG"),
                    help="resize limits (shorter, longer side); the SwinT-OGC model needs > 900 encoder tokens")
    args = ap.parse_args()
    # upstream's forward passes warn on every call (deprecations in its code); keep the table readable
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    n, repeats = (2, 2) if args.quick else (4, 5)
    h, w = args.size[0], args.size[1]
    images = [scene(h, w, seed=i) for i in range(n)]
    prompt = "car. person. traffic light"
    dev = torch.device(args.device)
    print(f"device {dev} | torch threads {torch.get_num_threads()} | {n} images {w}x{h} | {repeats} rounds | "
          f"prompt {prompt!r}")
    ratios = {}
    if args.backend in ("both", "groundingdino"):
        ratios["groundingdino"] = bench_groundingdino(images, prompt, dev, repeats, (h, w))
    if args.backend in ("both", "transformers"):
        ratios["transformers"] = bench_transformers(images, prompt, dev, repeats, (h, w))
    print("target >= 0.95x:", ", ".join(f"{k} {'OK' if v >= 0.95 else 'BELOW'} ({v:.3f}x)" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
