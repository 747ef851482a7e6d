"""Fine-tuning SAM2 with cached image features against the widely copied recipe (issue 15), one run.

Measured on CPU with the tiny SAM 2.1 config at 256 px and random weights (step time and memory do
not depend on the weight values), on a synthetic folder pair (``images/<stem>.png`` +
``masks/<stem>_<k>.png``: a textured gradient with K discs, each disc one object's mask):

1. **training steps/s** (target: ours >= 5x the recipe). One step = one optimiser step on the
   masks of one image's K objects (the recipe's batch; ours with ``batch_size=K``). Rounds
   interleaved, medians:

   * **recipe**: the loop of the widely copied "fine-tune SAM2 in 60 lines" script (sagieppel's
     ``TRAIN.py``, copied into many tutorials), re-implemented here step for step: ``read_batch`` (the
     image read with OpenCV and scaled so its longer side is 1024, each mask eroded 5x5 and one
     random point drawn inside it), ``predictor.set_image(image)`` (the image encoder, every step),
     ``_prep_prompts`` + ``sam_prompt_encoder`` + ``sam_mask_decoder`` (``multimask_output=True``,
     ``repeat_image`` for several objects), ``postprocess_masks`` to the image size, BCE of the first
     candidate + 0.05 x |predicted IoU - actual IoU|, ``zero_grad``/``backward``/AdamW (lr 1e-5,
     weight decay 4e-5). The script passes ``model.parameters()`` to AdamW; only the prompt encoder
     and the mask decoder receive gradients (``set_image`` runs under ``no_grad``), so it updates
     exactly the decoder + prompt encoder given here. Its CUDA autocast/GradScaler are used only in
     the CUDA section;
   * **recipe, cached** (no target, it splits the gain): the same step with the encoder's features
     read from :class:`~dl_utils.finetune.features.FeatureCache` instead of ``set_image``;
   * **lean** (reference, no target): the cached recipe step with the loss on the decoder's
     low-resolution grid and the positional encoding computed once (:class:`LeanLoop`): what a
     cached step can cost;
   * **ours**: the step of :func:`dl_utils.finetune.train.finetune` from its public parts
     (``sample_clicks``, ``FeatureCache`` + ``FrameFeatures.to_torch``, ``sample_loss``, AdamW on
     ``freeze_for_finetuning``'s parameters), with the frame's features cached (after the first
     epoch, which pays the encoder once per frame: printed separately; on the CPU the first step
     with each new prompt shape sets up kernels for seconds, so ours is warmed up untimed). The end-to-end
     ``finetune()`` is timed too (two warm runs of different length: per-step time by difference, so
     model copy, validation and checkpoint writes cancel).

2. **peak RSS streaming 10,000 cached frames vs 100** (target: flat). The cache is filled once with
   N distinct frames (a frame-number stamp in the pixels; features of the few real images, so the
   fill costs writes, not encoder runs), then each N runs in a fresh process (peak reset after the
   model is built): every frame's features mapped and converted (``FeatureCache.get`` +
   ``to_torch``), with a few training steps spread over the pass; and the trainer's own feature path
   (``dl_utils.finetune.train._Features``) over the same frames. What keeping every frame in RAM
   would cost is printed beside.

3. with CUDA: steps/s and minutes per epoch of 1,000 frames for tiny, small and base+ at 1024 px,
   recipe and ours; skipped with a message on CPU.

    .venv/bin/python bench/bench_finetune.py [--quick] [--rounds N] [--n1 100] [--n2 10000]
                                             [--skip speed,e2e,memory,cuda]

Writes only under bench/out/finetune/ (git-ignored): the folder pair, the caches (the 10,000-frame
cache, about 5 GiB at 256 px, is removed at the end unless ``--keep``), the tuned checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "finetune"
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

TINY = "sam2.1_hiera_tiny"
CUDA_MODELS = ("sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus")


# ------------------------------------------------------------------------------------ data
@dataclass
class Item:
    """One image of the folder pair and its K object masks."""

    image: Path
    masks: list[Path]


def synthetic(i: int, h: int, w: int, k: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A textured gradient with ``k`` discs (RGB uint8) and the discs' masks."""
    rng = np.random.default_rng(1000 + i)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // w + 7 * i) % 256, (y * 255 // h) % 256, (x ^ y) % 256], -1).astype(np.uint8)
    masks = []
    for _ in range(k):
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        r = rng.uniform(0.08, 0.18) * min(h, w)
        m = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[m] = rng.integers(0, 256, 3)
        masks.append(m)
    return img, masks


def make_folder_pair(root: Path, n: int, h: int, w: int, k: int) -> list[Item]:
    import cv2

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        img, masks = synthetic(i, h, w, k)
        ip = root / "images" / f"img{i:03d}.png"
        cv2.imwrite(str(ip), img[..., ::-1])
        mps = []
        for j, m in enumerate(masks, 1):
            mp = root / "masks" / f"img{i:03d}_{j}.png"
            cv2.imwrite(str(mp), m.astype(np.uint8) * 255)
            mps.append(mp)
        items.append(Item(ip, mps))
    return items


def recipe_read_batch(item: Item, rng: np.random.Generator):
    """The recipe's ``read_batch``: image scaled to a longer side of 1024, one point per mask."""
    import cv2

    img = cv2.imread(str(item.image))[..., ::-1]
    r = min(1024 / img.shape[1], 1024 / img.shape[0])
    img = np.ascontiguousarray(cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r))))
    masks, points = [], []
    for mp in item.masks:
        m = cv2.resize(cv2.imread(str(mp), 0), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        masks.append(m)
        coords = np.argwhere(cv2.erode(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
        yx = coords[rng.integers(len(coords))]
        points.append([[yx[1], yx[0]]])
    return img, np.array(masks), np.array(points), np.ones([len(masks), 1])


# ------------------------------------------------------------------------------------ loops
def build(name: str, image_size: int, device: str):
    from dl_utils.sam2_loader import build_sam2_model

    return build_sam2_model(name, image_size=image_size, device=device, random_weights=True, seed=0)


class RecipeLoop:
    """The copied recipe's training step (see the module docstring); ``cache`` swaps ``set_image``
    for the feature cache (the "recipe, cached" row)."""

    def __init__(self, model, device: str, cache=None, amp: bool = False):
        import torch

        from dl_utils.sam2_loader import make_image_predictor

        self.model, self.device, self.cache = model, device, cache
        self.predictor = make_image_predictor(model)
        model.sam_mask_decoder.train(True)
        model.sam_prompt_encoder.train(True)
        params = list(model.sam_mask_decoder.parameters()) + list(model.sam_prompt_encoder.parameters())
        self.optimizer = torch.optim.AdamW(params=params, lr=1e-5, weight_decay=4e-5)
        self.amp = amp and device == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.rng = np.random.default_rng(0)

    def _features(self, image: np.ndarray) -> None:
        if self.cache is None:
            self.predictor.set_image(image)
            return
        from dl_utils.finetune.features import predictor_compute

        f = self.cache.get(image, predictor_compute(self.predictor))
        self.predictor._features = f.to_torch(self.device)
        self.predictor._orig_hw = [f.orig_hw]
        self.predictor._is_image_set = True

    def step(self, item: Item) -> float:
        import torch

        image, mask, input_point, input_label = recipe_read_batch(item, self.rng)
        ctx = torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()
        with ctx:
            self._features(image)
            p, m = self.predictor, self.model
            mask_input, unnorm_coords, labels, unnorm_box = p._prep_prompts(
                input_point, input_label, box=None, mask_logits=None, normalize_coords=True)
            sparse_embeddings, dense_embeddings = m.sam_prompt_encoder(
                points=(unnorm_coords, labels), boxes=None, masks=None)
            batched_mode = unnorm_coords.shape[0] > 1
            high_res_features = [feat_level[-1].unsqueeze(0) for feat_level in p._features["high_res_feats"]]
            low_res_masks, prd_scores, _, _ = m.sam_mask_decoder(
                image_embeddings=p._features["image_embed"][-1].unsqueeze(0),
                image_pe=m.sam_prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse_embeddings,
                dense_prompt_embeddings=dense_embeddings, multimask_output=True, repeat_image=batched_mode,
                high_res_features=high_res_features)
            prd_masks = p._transforms.postprocess_masks(low_res_masks, p._orig_hw[-1])
            gt_mask = torch.tensor(mask.astype(np.float32), device=self.device)
            prd_mask = torch.sigmoid(prd_masks[:, 0])
            seg_loss = (-gt_mask * torch.log(prd_mask + 0.00001)
                        - (1 - gt_mask) * torch.log((1 - prd_mask) + 0.00001)).mean()
            inter = (gt_mask * (prd_mask > 0.5)).sum(1).sum(1)
            iou = inter / (gt_mask.sum(1).sum(1) + (prd_mask > 0.5).sum(1).sum(1) - inter)
            score_loss = torch.abs(prd_scores[:, 0] - iou).mean()
            loss = seg_loss + score_loss * 0.05
        m.zero_grad()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return float(loss)


class OursLoop:
    """The step of ``dl_utils.finetune.train.finetune`` from its public parts, features cached."""

    def __init__(self, model, device: str, dataset, cache, batch: int):
        import copy

        import torch

        from dl_utils.finetune.forward import encoder, freeze_for_finetuning
        from dl_utils.finetune.train import TrainOptions

        self.net = copy.deepcopy(model).eval()
        freeze_for_finetuning(self.net)
        self.options = TrainOptions(batch_size=batch, image_size=int(model.image_size))
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.options.lr, weight_decay=self.options.weight_decay)
        self.dataset, self.cache, self.device, self.batch = dataset, cache, device, batch
        self.compute = encoder(self.net)
        self.rng = np.random.default_rng(0)
        self.amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda"
                    else contextlib.nullcontext())

    def features(self, sample):
        return self.cache.get(self.dataset.image(sample.ref), self.compute)

    def step(self, start: int) -> float:
        from dl_utils.finetune.clicks import sample_clicks
        from dl_utils.finetune.train import sample_loss

        self.optimizer.zero_grad(set_to_none=True)
        picked = [self.dataset.samples[(start + j) % len(self.dataset.samples)] for j in range(self.batch)]
        loss: Any = 0.0
        for s in picked:
            clicks = sample_clicks(s.mask, self.rng, self.options.sampling)
            f = self.features(s)
            with self.amp:
                loss = loss + sample_loss(self.net, f.to_torch(self.device), f.orig_hw, clicks, s.mask,
                                          self.options)
        loss = loss / len(picked)
        loss.backward()
        self.optimizer.step()
        return float(loss)


class LeanLoop(RecipeLoop):
    """Reference only (no target): the recipe's step on cached features, leaner where the loss is.

    The K masks of the frame in one decoder call (as the recipe), the loss on the decoder's own
    low-resolution grid (``image_size / 4``, masks area-resampled to it) instead of upscaled to the
    image, the dense positional encoding computed once. It shows what a cached step can cost.
    """

    def __init__(self, model, device: str, cache, amp: bool = False):
        super().__init__(model, device, cache=cache, amp=amp)
        self.pe: Any = None

    def step(self, item: Item) -> float:
        import torch
        import torch.nn.functional as F

        image, mask, input_point, input_label = recipe_read_batch(item, self.rng)
        p, m = self.predictor, self.model
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        with ctx:
            self._features(image)
            if self.pe is None:
                self.pe = m.sam_prompt_encoder.get_dense_pe().detach()
            _, coords, labels, _ = p._prep_prompts(input_point, input_label, box=None, mask_logits=None,
                                                   normalize_coords=True)
            sparse, dense = m.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            low, scores, _, _ = m.sam_mask_decoder(
                image_embeddings=p._features["image_embed"], image_pe=self.pe, sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, multimask_output=True, repeat_image=coords.shape[0] > 1,
                high_res_features=list(p._features["high_res_feats"]))
            logits = low[:, 0].float()
            gt = torch.from_numpy(mask.astype(np.float32)).to(logits.device)[:, None]
            gt = F.interpolate(gt, size=logits.shape[-2:], mode="area")[:, 0]
            seg = F.binary_cross_entropy_with_logits(logits, gt)
            with torch.no_grad():
                pred, truth = logits > 0, gt > 0.5
                iou = (pred & truth).sum((1, 2)) / (pred | truth).sum((1, 2)).clamp(min=1)
            loss = seg + 0.05 * (scores[:, 0].float() - iou).abs().mean()
        m.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss)


# ------------------------------------------------------------------------------------ 1. speed
def timed2(fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``. CPU time is what the ratios use on the CPU:
    on a machine shared with other jobs wall time swings with their load, CPU time much less."""
    sync()
    t, c = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - t, time.process_time() - c


def speed(args, items: list[Item], device: str = "cpu", image_size: int = 256, name: str = TINY) -> dict:
    """Per-step medians of the loops, interleaved rounds (see the module docstring)."""
    import torch

    from dl_utils.finetune.data import from_folder_pair
    from dl_utils.finetune.features import FeatureCache

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    amp = device == "cuda"
    dataset = from_folder_pair(OUT / "pair")
    k = len(items[0].masks)
    cache_dir = OUT / f"cache_speed_{name}_{image_size}"
    shutil.rmtree(cache_dir, ignore_errors=True)

    def cache(tag: str) -> Any:
        return FeatureCache(cache_dir / tag, model_key=f"{name}|{tag}|{image_size}")

    recipe = RecipeLoop(build(name, image_size, device), device, amp=amp)
    cached = RecipeLoop(build(name, image_size, device), device, cache=cache("recipe"), amp=amp)
    ours = OursLoop(build(name, image_size, device), device, dataset, cache("ours"), k)
    lean = LeanLoop(build(name, image_size, device), device, cache("lean"), amp=amp)
    used = items[: args.steps]
    # First epoch: every frame encoded once and written (timed alone: encoder + write per frame).
    fill = [timed2(lambda i=i: ours.features(dataset.samples[i * k]), sync) for i in range(len(used))]
    # Warm-up, untimed. On the CPU the first step with a new prompt shape (ours samples 1-3 points,
    # a negative, a box) sets up kernels for seconds, once per process; the recipe's shape is fixed.
    for _ in range(3):
        for i, it in enumerate(used):
            ours.step(i * k)
    for it in used:
        cached.step(it), lean.step(it), recipe.step(it)
    scaled = [recipe_read_batch(it, np.random.default_rng(0))[0] for it in used]
    names = ("recipe", "recipe_cached", "ours", "lean", "encoder")
    runs: dict[str, list[tuple[float, float]]] = {k_: [] for k_ in names}
    for _ in range(args.rounds):
        for i, it in enumerate(used):
            runs["recipe"].append(timed2(lambda: recipe.step(it), sync))
            runs["recipe_cached"].append(timed2(lambda: cached.step(it), sync))
            runs["ours"].append(timed2(lambda: ours.step(i * k), sync))
            runs["lean"].append(timed2(lambda: lean.step(it), sync))
            with torch.no_grad():
                runs["encoder"].append(timed2(lambda: recipe.predictor.set_image(scaled[i]), sync))
    clock = 0 if device == "cuda" else 1  # CUDA: wall time (the CPU waits on the GPU); CPU: CPU time
    res: dict[str, Any] = {f"{k_}_s": statistics.median(t[clock] for t in v) for k_, v in runs.items()}
    res.update({f"{k_}_wall_s": statistics.median(t[0] for t in v) for k_, v in runs.items()})
    res.update({"clock": "wall" if clock == 0 else "process CPU time", "image_size": image_size, "model": name,
                "encode_write_s": statistics.median(t[clock] for t in fill), "steps": len(runs["ours"]),
                "masks_per_step": k, "image_hw": list(MEM_HW), "cache_hits": ours.cache.hits,
                "cache_misses": ours.cache.misses})
    shutil.rmtree(cache_dir, ignore_errors=True)
    return res


def print_speed(res: dict, label: str) -> None:
    r, c, o, f = res["recipe_s"], res["recipe_cached_s"], res["ours_s"], res["encode_write_s"]
    print(f"\n[{label}: one step = {res['masks_per_step']} masks of one image, median of {res['steps']}, "
          f"{res['clock']}]")
    print(f"  recipe (set_image every step)        {r * 1e3:8.1f} ms/step  {1 / r:6.2f} steps/s")
    print(f"  recipe, features from the cache      {c * 1e3:8.1f} ms/step  {1 / c:6.2f} steps/s  {r / c:5.2f}x")
    print(f"  ours (finetune's step, cached)       {o * 1e3:8.1f} ms/step  {1 / o:6.2f} steps/s  "
          f"{r / o:5.2f}x  (target >= 5x)  -> {'PASS' if r / o >= 5 else 'FAIL'}")
    print(f"  first epoch: + encode and write      {f * 1e3:8.1f} ms/frame (once per frame and model)")
    le = res["lean_s"]
    print(f"  reference: lean cached step          {le * 1e3:8.1f} ms/step  {1 / le:6.2f} steps/s  {r / le:5.2f}x"
          "  (one decoder call per frame, loss on the low-res grid)")
    rw, ow = res["recipe_wall_s"], res["ours_wall_s"]
    print(f"  wall clock: recipe {rw * 1e3:.1f} ms, ours {ow * 1e3:.1f} ms ({rw / ow:.2f}x), cached recipe "
          f"{res['recipe_cached_wall_s'] * 1e3:.1f} ms, lean {res['lean_wall_s'] * 1e3:.1f} ms")
    e = res["encoder_s"]
    print(f"  of the recipe's step, set_image alone {e * 1e3:7.1f} ms = {e / r:.0%}: skipping the encoder alone"
          f" can give at most {r / max(r - e, 1e-9):.2f}x; the rest is the prompt path and the loss")


# ------------------------------------------------------------------------------------ 1b. end to end
def end_to_end(args, k: int) -> dict:
    """``finetune()`` itself: a cold run (encodes every frame), then two warm runs of different
    length; their difference is the per-step time with every fixed cost cancelled."""
    from dl_utils.finetune.data import from_folder_pair
    from dl_utils.finetune.train import TrainOptions, finetune

    model = build(TINY, 256, "cpu")
    dataset = from_folder_pair(OUT / "pair")
    cache = OUT / "cache_e2e"
    shutil.rmtree(cache, ignore_errors=True)
    res: dict[str, Any] = {}
    s1, s2 = 2, 2 + args.e2e_steps
    # "warmup": the first steps with each new prompt shape set up CPU kernels (seconds, once per
    # process, see speed()); timed runs come after it.
    for tag, steps in (("cold", s1), ("warmup", s2), ("warm_short", s1), ("warm_long", s2)):
        opts = TrainOptions(steps=steps, batch_size=k, checkpoint_every=10**6, warmup=0, cache_dir=str(cache))
        r = finetune(dataset, model=model, out=OUT / f"e2e_{tag}.pt", options=opts, device="cpu",
                     progress=False, restart=True)
        res[tag] = {"steps": r.steps, "seconds": r.seconds, "cache_hits": r.cache_hits,
                    "cache_misses": r.cache_misses}
    res["per_step_s"] = (res["warm_long"]["seconds"] - res["warm_short"]["seconds"]) / (s2 - s1)
    shutil.rmtree(cache, ignore_errors=True)
    for p in OUT.glob("e2e_*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return res


# ------------------------------------------------------------------------------------ 2. memory
MEM_KEY = f"{TINY}|bench-memory|256"
MEM_HW = (480, 640)


def stamped(n: int, bases: list[np.ndarray]) -> np.ndarray:
    """Frame ``n``: one of the base images with ``n`` written into its first pixels (distinct key)."""
    img = bases[n % len(bases)].copy()
    img.reshape(-1)[:8] = np.frombuffer(int(n).to_bytes(8, "little"), np.uint8)
    return img


def _bases() -> tuple[list[np.ndarray], list[np.ndarray]]:
    pairs = [synthetic(i, *MEM_HW, 1) for i in range(4)]
    return [p[0] for p in pairs], [p[1][0] for p in pairs]


def fill_cache(cache_dir: Path, n: int, cap: int) -> dict:
    """Put ``n`` stamped frames in the cache; their features are the real encoder's for the base
    images (encoded once), so the fill costs hashing and writing only."""
    from dl_utils.finetune.features import FeatureCache
    from dl_utils.finetune.forward import encoder

    bases, _ = _bases()
    enc = encoder(build(TINY, 256, "cpu"))
    feats = [enc(b) for b in bases]
    cache = FeatureCache(cache_dir, model_key=MEM_KEY, max_bytes=cap)
    t = time.perf_counter()
    for i in range(n):
        cache.get(stamped(i, bases), lambda img, i=i: feats[i % len(feats)])
    dt = time.perf_counter() - t
    return {"frames": n, "seconds": dt, "ms_per_frame": dt / max(n, 1) * 1e3, "bytes": cache.bytes,
            "entries": cache.entries, "evicted": cache.evicted, "entry_bytes": feats[0].nbytes}


def _vm(key: str) -> float:
    """A /proc/self/status memory figure in MB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _stamped_dataset(n: int, bases: list[np.ndarray], masks: list[np.ndarray]):
    """A MaskDataset of ``n`` stamped frames whose masks share the base arrays (no RAM per frame)."""
    from dl_utils.finetune.data import FrameRef, MaskDataset, MaskSample

    class Stamped(MaskDataset):
        def image(self, ref: FrameRef) -> np.ndarray:
            return stamped(ref.frame, bases)

    samples = [MaskSample(FrameRef("stamped", i, f"f{i}", f"frame {i}"), 1, "disc", masks[i % len(masks)], "folder")
               for i in range(n)]
    return Stamped(samples)


def child_memory(args) -> None:
    """One RSS measurement in a fresh process (``--child``); prints a JSON line."""
    import gc

    import torch

    from dl_utils.finetune.features import FeatureCache
    from dl_utils.finetune.train import TrainOptions

    torch.set_num_threads(max(1, args.threads))
    n, bases, masks = args.n, *_bases()
    cache = FeatureCache(args.cache, model_key=MEM_KEY, max_bytes=args.cap)
    dataset = _stamped_dataset(n, bases, masks)
    ours = OursLoop(build(TINY, 256, "cpu"), "cpu", dataset, cache, 1)
    ours.compute = _no_encoder
    gc.collect()
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        reset = False
    base = _vm("VmRSS")
    train_at = set(np.linspace(0, n - 1, args.train_steps).astype(int).tolist())
    t = time.perf_counter()
    if args.path == "stream":
        for i in range(n):
            f = cache.get(stamped(i, bases), _no_encoder)
            tensors = f.to_torch("cpu")
            del f, tensors
            if i in train_at:
                ours.step(i)
    else:  # the trainer's own feature path (F1's _Features: what finetune() iterates)
        from dl_utils.finetune import train as tr

        feats = tr._Features(dataset, cache, _no_encoder, torch.device("cpu"))
        refs = dataset.frames()
        feats.warm(refs, progress=False)
        for i, ref in enumerate(refs):
            tensors, hw = feats.tensors(ref)
            del tensors
            if i in train_at:
                ours.features = lambda s: feats.get(s.ref)  # type: ignore[method-assign]
                ours.step(i)
    dt = time.perf_counter() - t
    peak = _vm("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"path": args.path, "n": n, "peak_rss_mb": peak, "rss_after_model_mb": base,
                      "rss_end_mb": _vm("VmRSS"), "seconds": dt, "misses": cache.misses, "peak_reset": reset,
                      "options_batch": TrainOptions().batch_size}))


def _no_encoder(image: np.ndarray):
    raise RuntimeError("bench: the memory pass found a frame missing from the filled cache")


def memory(args) -> dict:
    """Fill the cache with ``n2`` frames, then each (path, n) in a fresh process."""
    cache_dir = OUT / "cache_memory"
    need = args.n2 * 530_000
    free = shutil.disk_usage(OUT).free
    print(f"\n[memory] disk free at {OUT}: {free / 2**30:.1f} GiB; the {args.n2}-frame cache needs "
          f"about {need / 2**30:.1f} GiB", flush=True)
    if need * 2 > free:
        raise SystemExit(f"not enough disk for --n2 {args.n2} (free {free / 2**30:.1f} GiB): give a smaller --n2")
    cap = int(need * 1.2)
    shutil.rmtree(cache_dir, ignore_errors=True)
    res: dict[str, Any] = {"fill": fill_cache(cache_dir, args.n2, cap), "cap_bytes": cap}
    print(f"  filled {args.n2} frames in {res['fill']['seconds']:.1f} s "
          f"({res['fill']['ms_per_frame']:.2f} ms/frame), {res['fill']['bytes'] / 2**30:.2f} GiB", flush=True)
    for path in ("stream", "trainer"):
        for n in (args.n1, args.n2):
            cmd = [sys.executable, __file__, "--child", "--path", path, "--n", str(n), "--cache", str(cache_dir),
                   "--cap", str(cap), "--threads", str(args.threads), "--train-steps", str(args.train_steps)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"  {path} n={n}: failed\n{out.stderr[-2000:]}", flush=True)
                res[f"{path}_{n}"] = {"error": out.stderr[-500:]}
                continue
            res[f"{path}_{n}"] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {path} n={n}: {res[f'{path}_{n}']}", flush=True)
    if not args.keep:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return res


def print_memory(res: dict, n1: int, n2: int) -> None:
    eb = res["fill"]["entry_bytes"]
    print(f"\n[peak RSS, {n1} vs {n2} cached frames, each in a fresh process, peak reset after the model]")
    for path, what in (("stream", "FeatureCache.get + to_torch, streamed"),
                       ("trainer", "finetune's feature path (train._Features)")):
        a, b = res.get(f"{path}_{n1}", {}), res.get(f"{path}_{n2}", {})
        if "peak_rss_mb" not in a or "peak_rss_mb" not in b:
            print(f"  {what}: failed")
            continue
        ratio = b["peak_rss_mb"] / a["peak_rss_mb"]
        print(f"  {what:45s} {a['peak_rss_mb']:8.0f} MB -> {b['peak_rss_mb']:8.0f} MB  x{ratio:.3f}"
              f"  ({b['seconds']:.0f} s for {n2})")
    print(f"  keeping every frame's fp32 features in RAM instead (as SAM2ImagePredictor holds them): "
          f"{n1 * eb / 2**20:.0f} MB -> {n2 * eb / 2**20:.0f} MB")


# ------------------------------------------------------------------------------------ 3. cuda
def cuda(args, items: list[Item], device: str = "cuda", image_size: int = 1024,
         models: tuple[str, ...] = CUDA_MODELS) -> dict:
    """Per model at ``image_size``: steps/s of both loops and minutes per epoch of 1,000 frames."""
    res = {}
    for name in models:
        r = speed(args, items, device=device, image_size=image_size, name=name)
        r["minutes_per_1000_frames"] = {
            "recipe": 1000 * r["recipe_s"] / 60, "ours_first_epoch": 1000 * (r["encode_write_s"] + r["ours_s"]) / 60,
            "ours_later_epochs": 1000 * r["ours_s"] / 60}
        res[name] = r
        print_speed(r, f"{device} {name} at {image_size}")
        m = r["minutes_per_1000_frames"]
        print(f"  minutes per epoch of 1,000 frames: recipe {m['recipe']:.1f}, ours {m['ours_first_epoch']:.1f}"
              f" (first epoch) then {m['ours_later_epochs']:.1f}", flush=True)
    return res


# ------------------------------------------------------------------------------------ main
def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, Python {platform.python_version()}, torch "
            f"{torch.__version__}, {torch.get_num_threads()} torch threads, load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="short run (fewer rounds and steps; memory still 100 vs 10,000)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds of the speed section")
    ap.add_argument("--steps", type=int, default=None, help="steps per loop and round (one per image)")
    ap.add_argument("--images", type=int, default=8, help="images in the folder pair")
    ap.add_argument("--objects", type=int, default=3, help="objects (masks) per image = masks per step")
    ap.add_argument("--image-size", type=int, default=256, help="SAM2 input size of the speed section")
    ap.add_argument("--e2e-steps", type=int, default=None, help="extra steps of the long end-to-end run")
    ap.add_argument("--n1", type=int, default=100)
    ap.add_argument("--n2", type=int, default=None, help="frames of the large memory run (default 10000)")
    ap.add_argument("--train-steps", type=int, default=None, help="training steps spread over a memory pass (5)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip", default="", help="comma list of sections to skip: speed,e2e,memory,cuda")
    ap.add_argument("--cuda-on-cpu", action="store_true", help="run the CUDA section's code on CPU at 256 px (a check)")
    ap.add_argument("--keep", action="store_true", help="keep the memory section's cache")
    ap.add_argument("--json", default=str(OUT / "result.json"), help="where the figures go (JSON)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", default="stream", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default="", help=argparse.SUPPRESS)
    ap.add_argument("--cap", type=int, default=8 << 30, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.steps = args.steps or (4 if args.quick else args.images)
    args.e2e_steps = args.e2e_steps or (4 if args.quick else 8)
    args.n2 = args.n2 or 10000
    args.train_steps = args.train_steps or (2 if args.quick else 5)
    return args


def main() -> None:
    args = parse()
    if args.child:
        child_memory(args)
        return
    import torch

    torch.set_num_threads(max(1, args.threads))
    skip = set(filter(None, args.skip.split(",")))
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(OUT / "pair", ignore_errors=True)
    items = make_folder_pair(OUT / "pair", args.images, *MEM_HW, args.objects)
    print(f"machine: {machine()}")
    print(f"data: {args.images} images {MEM_HW[1]}x{MEM_HW[0]}, {args.objects} objects each; {TINY} at "
          f"{args.image_size} px, "
          f"random weights, CPU; {args.rounds} interleaved rounds of {args.steps} steps per loop", flush=True)
    results: dict[str, Any] = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "child"}}
    if "speed" not in skip:
        results["speed"] = speed(args, items, image_size=args.image_size)
        print_speed(results["speed"], f"cpu tiny at {args.image_size}")
    if "e2e" not in skip:
        results["e2e"] = e2e = end_to_end(args, args.objects)
        per = e2e["per_step_s"]
        print(f"\n[finetune() end to end, batch {args.objects}] cold {e2e['cold']['seconds']:.1f} s for "
              f"{e2e['cold']['steps']} steps ({e2e['cold']['cache_misses']} frames encoded); warm "
              f"{e2e['warm_short']['seconds']:.1f} s / {e2e['warm_long']['seconds']:.1f} s for "
              f"{e2e['warm_short']['steps']} / {e2e['warm_long']['steps']} steps: {per * 1e3:.1f} ms/step "
              f"({1 / per:.2f} steps/s)", flush=True)
        if "speed" in results:
            rw = results["speed"]["recipe_wall_s"]
            print(f"  vs the recipe's {rw * 1e3:.1f} ms/step (wall clock, speed section): {rw / per:.2f}x")
    if "memory" not in skip:
        results["memory"] = memory(args)
        print_memory(results["memory"], args.n1, args.n2)
    if "cuda" not in skip:
        if torch.cuda.is_available():
            results["cuda"] = cuda(args, items)
        elif args.cuda_on_cpu:
            results["cuda_on_cpu"] = cuda(args, items, device="cpu", image_size=256, models=(TINY,))
        else:
            print("\n[cuda] skipped: torch.cuda.is_available() is False on this machine (no GPU); run this "
                  "script where one is for tiny/small/base+ at 1024 px")
    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(f"\nresults: {args.json}")


if __name__ == "__main__":
    main()
