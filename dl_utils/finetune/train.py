"""Fine-tune SAM2's prompt encoder and mask decoder on the people's corrected masks.

The widely copied recipe (BCE on the mask + 0.05 x |predicted IoU - actual IoU|, point prompts
sampled in each mask, frozen image encoder) re-runs the image encoder on every step although its
weights never change. Here every frame is encoded once, up front, into the on-disk
:class:`~dl_utils.finetune.features.FeatureCache` (a second run on the same frames encodes nothing),
and a step costs only the prompt path. The rest of the design follows from two promises:

* **The output is an ordinary SAM2 checkpoint.** ``out`` is ``{"model": state_dict}`` of the whole
  network, loaded strictly by :func:`dl_utils.sam2_loader.load_checkpoint`, so every engine (``samal``,
  ``sam2al``, the widget) uses it as it would an official file; the sidecar ``out.json`` says what it
  was trained from (base model, data, split, options) and what it scored before and after.
* **A killed run resumes to the same weights.** Every ``checkpoint_every`` steps the trainable
  weights, the optimiser, the schedule, the sampler (its epoch order and position) and every random
  generator (python, numpy, torch) go to ``out.ckpt/last.pt`` atomically; a rerun with the same
  ``out`` continues from there and, on CPU, ends bit for bit where an uninterrupted run ends. A rerun
  whose data or options differ refuses (``restart=True``, CLI ``--restart``, starts over).

The prompt encoder and mask decoder train in train mode, as SAM2's own training runs them (the
decoder then always returns its first mask token for a multi-click prompt instead of falling back to
the most stable candidate; that fallback is an inference-time rescue). A single point asks for three
candidates; the loss takes the candidate closest to the truth (as SAM does) and the IoU head learns
all three. Evaluation runs in eval mode, as the engines do.

``train_memory`` adds the video memory path (:mod:`~dl_utils.finetune.video_forward`): each
micro-batch also takes ``batch_size`` pairs of one object's masks a few frames apart in one video
(:func:`frame_pairs`), the later frame predicted from the clicked earlier frame's memory alone, so
memory attention and the memory encoder learn what ``sam2al`` propagation should produce.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..annotations import Clicks
from ..errors import InputError, MaskError, OutputError, TrainingError
from ..splits import Split, split_groups
from .clicks import ClickSampling, fixed_clicks, sample_clicks
from .data import SELECT, FrameRef, MaskDataset, MaskSample
from .features import FeatureCache, FrameFeatures
from .forward import MEMORY, TRAINED, decode, encoder, freeze_for_finetuning, predict_mask, upscale
from .video_forward import MAX_GAP, pair_forward, video_features

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT = "dl-utils-finetune"
VERSION = 1
LAST = "last.pt"
LOSSES = ("bce", "focal")
# TrainOptions fields that do not change the weights a run produces (a resume may change them).
NOT_IDENTITY = ("checkpoint_every", "cache_dir", "cache_max_bytes", "amp", "compile")


@dataclass
class TrainOptions:
    """How to train (each field is a ``dl-utils finetune`` option)."""

    steps: int = 2000  # optimiser steps
    batch_size: int = 4  # masks per micro-batch
    lr: float = 3e-5
    weight_decay: float = 4e-5
    accumulate: int = 1  # micro-batches per optimiser step (gradient accumulation)
    warmup: int = 50  # steps of linear warm-up
    cosine: bool = True  # cosine decay to 0 after the warm-up (else constant)
    loss: str = "bce"  # "bce" | "focal"
    dice_weight: float = 0.0
    iou_weight: float = 0.05
    seed: int = 0
    image_size: int | None = None  # SAM2 input size; None = the model's (1024)
    checkpoint_every: int = 100  # steps between resumable checkpoints
    train_memory: bool = False  # also train memory attention/encoder on frame pairs of videos
    amp: bool = True  # bf16 autocast, CUDA only
    compile: bool = False  # torch.compile the decoder, CUDA only
    cache_dir: str | None = None  # feature cache; None = $XDG_CACHE_HOME/dl-utils/sam2-features
    cache_max_bytes: int = 8 << 30
    val_fraction: float = 0.2
    select: str = "reviewed"
    sampling: ClickSampling = field(default_factory=ClickSampling)

    def __post_init__(self) -> None:
        if isinstance(self.sampling, Mapping):
            s = dict(self.sampling)
            self.sampling = ClickSampling(points=tuple(s.get("points", (1, 3))),
                                          negatives=int(s.get("negatives", 1)),
                                          box=float(s.get("box", 0.5)), box_jitter=float(s.get("box_jitter", 0.1)))
        for name in ("steps", "batch_size", "accumulate", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"finetune: {name}={getattr(self, name)}; give a positive integer")
        if self.warmup < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise InputError(f"finetune: warmup={self.warmup}, lr={self.lr}, weight_decay={self.weight_decay};"
                             " give warmup >= 0, lr > 0, weight_decay >= 0")
        if self.loss not in LOSSES:
            raise InputError(f"finetune: loss={self.loss!r}; use 'bce' or 'focal'")
        if self.dice_weight < 0 or self.iou_weight < 0:
            raise InputError("finetune: dice_weight and iou_weight must be >= 0")
        if self.select not in SELECT:
            raise InputError(f"finetune: select={self.select!r}; use 'reviewed' or 'all'")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["sampling"] = self.sampling.to_json()
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TrainOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def identity(self) -> dict[str, Any]:
        """The options that decide the weights (what a resume must match)."""
        return {k: v for k, v in self.to_json().items() if k not in NOT_IDENTITY}


@dataclass
class FinetuneResult:
    """What a run did and wrote (``iou_*``: mean IoU on the val split with fixed clicks)."""

    out: Path
    sidecar: Path
    steps: int
    resumed_from: int | None
    split: Split
    train_size: int  # masks
    val_size: int
    losses: list[float]
    cache_hits: int
    cache_misses: int
    iou_before: float | None
    iou_after: float | None
    base_model: str = ""
    seconds: float = 0.0


def default_cache_dir() -> Path:
    """Where encoder features live unless ``cache_dir`` says otherwise (shared by all runs)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dl-utils" / "sam2-features"


# ----------------------------------------------------------------------------- model
@dataclass
class _Base:
    net: Any
    name: str
    sha: str  # dl_utils_sha256: the weights' digest, or "random-<seed>"
    image_size: int


def _build(model: Any, checkpoint: str | os.PathLike[str] | None, image_size: int | None,
           device: Any) -> _Base:
    """The network to tune: a registry name/config (+ checkpoint) built here, or a built ``SAM2Base``
    (copied: the caller's network is left as it was)."""
    import copy

    from ..models import DEFAULT_MODEL
    from ..sam2_loader import build_sam2_model, pick_device

    if model is None or isinstance(model, str):
        net = build_sam2_model(model or DEFAULT_MODEL, checkpoint, image_size=image_size, device=device)
    else:
        if checkpoint is not None:
            raise InputError("finetune: give a built network or a checkpoint, not both")
        if image_size is not None and int(model.image_size) != int(image_size):
            raise InputError(f"finetune: image_size={image_size} but the given network was built at "
                             f"{model.image_size}; build it at that size or leave image_size out")
        net = copy.deepcopy(model).to(pick_device(device))
        for attr in ("dl_utils_name", "dl_utils_checkpoint", "dl_utils_sha256"):
            setattr(net, attr, getattr(model, attr, None))
    net.eval()
    name = str(getattr(net, "dl_utils_name", None) or "sam2")
    sha = str(getattr(net, "dl_utils_sha256", None) or "unknown")
    return _Base(net, name, sha, int(net.image_size))


# ----------------------------------------------------------------------------- features
class _Features:
    """Frame -> features: the disk cache, remembering each frame's cache key (a short string) so a
    later step maps the entry without decoding the frame or hashing its pixels again.

    Only keys are held, never the arrays: memory stays flat however many frames the data has (the
    memory-mapped pages of held entries would count as the process's memory)."""

    def __init__(self, dataset: MaskDataset, cache: FeatureCache, compute: Callable[[np.ndarray], FrameFeatures],
                 device: "torch.device"):
        self.dataset, self.cache, self.compute, self.device = dataset, cache, compute, device
        self._keys: dict[FrameRef, str] = {}

    def get(self, ref: FrameRef) -> FrameFeatures:
        key = self._keys.get(ref)
        if key is not None:
            found = self.cache.lookup(key)
            if found is not None:
                return found
        image = self.dataset.image(ref)
        key = self.cache.key(image)
        f = self.cache.get(image, self.compute, key=key)
        if f.orig_hw != image.shape[:2]:
            raise TrainingError(f"{ref.name}: cached features are for a {f.orig_hw} frame, the frame is "
                                f"{image.shape[:2]}; clear the feature cache ({self.cache.root})")
        self._keys[ref] = key
        return f

    def tensors(self, ref: FrameRef) -> tuple[dict[str, Any], tuple[int, int]]:
        f = self.get(ref)
        return f.to_torch(self.device), f.orig_hw

    def warm(self, refs: Sequence[FrameRef], progress: bool) -> None:
        """Encode every frame not cached yet, up front, with a progress bar."""
        from tqdm.auto import tqdm

        for ref in tqdm(refs, desc="encoding frames", unit="frame", disable=not progress, leave=False):
            self.get(ref)


def mean_iou(net: Any, samples: Sequence[MaskSample], clicks: Sequence[Clicks],
             features: Callable[[FrameRef], FrameFeatures]) -> float:
    """Mean IoU of :func:`predict_mask` against each sample's mask (IoU 1 when both are empty)."""
    ious = []
    for s, c in zip(samples, clicks):
        pred, _ = predict_mask(net, features(s.ref), c)
        union = np.logical_or(pred, s.mask).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(pred, s.mask).sum() / union))
    return float(np.mean(ious)) if ious else float("nan")


# ----------------------------------------------------------------------------- loss
def _target(mask: np.ndarray, size: int) -> np.ndarray:
    """The mask at the model's input grid (area-resampled: edge pixels get their coverage)."""
    import cv2

    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


def sample_loss(net: Any, tensors: dict[str, Any], orig_hw: tuple[int, int], clicks: Clicks,
                mask: np.ndarray, options: TrainOptions) -> "torch.Tensor":
    """Segmentation loss of the best candidate + ``iou_weight`` x |predicted - actual IoU| of all."""
    out = decode(net, tensors, orig_hw, clicks)
    return _mask_loss(out.low_res, out.iou, mask, int(net.image_size), options)


def _mask_loss(low_res: "torch.Tensor", iou: "torch.Tensor", mask: np.ndarray, size: int,
               options: TrainOptions) -> "torch.Tensor":
    """The loss of :func:`sample_loss` on decoder output ``(1, C, s/4, s/4)`` and IoU ``(1, C)``."""
    import torch
    import torch.nn.functional as F

    logits = upscale(low_res, (size, size))[0]  # (C, S, S)
    target = torch.from_numpy(_target(mask, size)).to(logits.device)[None].expand_as(logits)
    if options.loss == "focal":
        p = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = p * target + (1 - p) * (1 - target)
        alpha = 0.25 * target + 0.75 * (1 - target)
        seg = (alpha * ce * (1 - p_t) ** 2).mean(dim=(1, 2))
    else:
        seg = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(1, 2))
    if options.dice_weight:
        p = torch.sigmoid(logits)
        inter = (p * target).sum(dim=(1, 2))
        dice = 1 - (2 * inter + 1) / (p.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1)
        seg = seg + options.dice_weight * dice
    with torch.no_grad():
        pred, truth = logits > 0, target > 0.5
        union = (pred | truth).sum(dim=(1, 2)).float()
        actual = torch.where(union > 0, (pred & truth).sum(dim=(1, 2)).float() / union.clamp(min=1),
                             torch.ones_like(union))
    iou_loss = (iou[0].float() - actual).abs().mean()
    return seg.min() + options.iou_weight * iou_loss


#: Weight of the object-score term in a pair's loss (the mask is there: the score should say so). With
#: the object judged absent the decoder outputs a constant mask, so this term is then the only
#: gradient; SAM2's own training weighs it as its Dice term.
OBJECT_WEIGHT = 1.0


def frame_pairs(dataset: MaskDataset, max_gap: int = MAX_GAP) -> list[tuple[MaskSample, MaskSample]]:
    """``(earlier, later)`` masks of one object in one media, 1 to ``max_gap`` frames apart, in a
    stable order: what ``train_memory`` trains on (an image set has none)."""
    tracks: dict[tuple[str, str, int], list[MaskSample]] = {}
    for smp in dataset.samples:
        tracks.setdefault((smp.ref.group, smp.ref.media, smp.object_id), []).append(smp)
    out: list[tuple[MaskSample, MaskSample]] = []
    for key in sorted(tracks):
        track = sorted(tracks[key], key=lambda x: x.ref.frame)
        for i, a in enumerate(track):
            out += [(a, b) for b in track[i + 1:] if 0 < b.ref.frame - a.ref.frame <= max_gap]
    return out


def pair_loss(net: Any, cond: FrameFeatures, target: FrameFeatures, clicks: Clicks, gap: int,
              mask: np.ndarray, options: TrainOptions) -> "torch.Tensor":
    """The loss of :func:`sample_loss` on the predicted frame of a pair (no clicks there, memory of
    the clicked frame), plus ``OBJECT_WEIGHT`` x BCE of its object score against "present"."""
    import torch
    import torch.nn.functional as F

    dev = next(net.parameters()).device
    out = pair_forward(net, video_features(net, cond, dev), clicks, video_features(net, target, dev), gap)
    score = out.object_score.float()
    present = F.binary_cross_entropy_with_logits(score, torch.ones_like(score))
    return _mask_loss(out.multimasks, out.ious, mask, int(net.image_size), options) + OBJECT_WEIGHT * present


# ----------------------------------------------------------------------------- the run's state
@dataclass
class _Sampler:
    """Epoch-wise shuffled order of the training samples; its whole state goes in a checkpoint."""

    n: int
    rng: np.random.Generator
    order: list[int] = field(default_factory=list)
    pos: int = 0
    epoch: int = 0

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.pos >= len(self.order):
                self.order = [int(i) for i in self.rng.permutation(self.n)]
                self.pos = 0
                self.epoch += 1
            out.append(self.order[self.pos])
            self.pos += 1
        return out

    def state(self) -> dict[str, Any]:
        return {"order": list(self.order), "pos": self.pos, "epoch": self.epoch, "rng": self.rng.bit_generator.state}

    def load(self, d: Mapping[str, Any]) -> None:
        self.order, self.pos, self.epoch = [int(i) for i in d["order"]], int(d["pos"]), int(d["epoch"])
        self.rng.bit_generator.state = d["rng"]


def _schedule(options: TrainOptions) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if options.warmup and step < options.warmup:
            return (step + 1) / options.warmup
        if not options.cosine:
            return 1.0
        span = max(1, options.steps - options.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - options.warmup) / span)))

    return factor


def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({e.strerror or e}); free space or choose another --out") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({e.strerror or e}); check the folder") from None


@dataclass
class _Run:
    """Everything a checkpoint restores."""

    net: Any
    optimizer: "torch.optim.Optimizer"
    scheduler: Any
    sampler: _Sampler
    clicks_rng: np.random.Generator
    pairs: _Sampler | None = None  # over frame_pairs(train) with train_memory
    step: int = 0
    losses: list[float] = field(default_factory=list)
    iou_before: float | None = None

    def save(self, path: Path, identity: str) -> None:
        import torch

        _atomic_save({
            "format": FORMAT, "version": VERSION, "identity": identity, "step": self.step,
            "trainable": {n: p.detach().cpu().clone() for n, p in self._trainable()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state(), "pairs": None if self.pairs is None else self.pairs.state(),
            "clicks_rng": self.clicks_rng.bit_generator.state,
            "python_rng": random.getstate(), "torch_rng": torch.get_rng_state(),
            "losses": list(self.losses), "iou_before": self.iou_before,
        }, path)

    def _trainable(self) -> Iterator[tuple[str, Any]]:
        return ((n, p) for n, p in self.net.named_parameters() if p.requires_grad)

    def load(self, ck: Mapping[str, Any]) -> None:
        import torch

        params = dict(self._trainable())
        if set(params) != set(ck["trainable"]):
            raise TrainingError("the checkpoint's trainable weights do not match this model; use restart")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(ck["trainable"][n].to(p.device))
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.sampler.load(ck["sampler"])
        if self.pairs is not None:
            self.pairs.load(ck["pairs"])
        self.clicks_rng.bit_generator.state = ck["clicks_rng"]
        random.setstate(_as_tuple(ck["python_rng"]))
        torch.set_rng_state(ck["torch_rng"])
        self.step, self.losses, self.iou_before = int(ck["step"]), list(ck["losses"]), ck["iou_before"]


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _read_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise TrainingError(f"cannot read the training checkpoint {path} ({type(e).__name__}: {e}); delete "
                            f"{path.parent} or pass restart=True (--restart) to start over") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise TrainingError(f"{path} is not a dl-utils fine-tuning checkpoint; delete {path.parent} or restart")
    return ck


# ----------------------------------------------------------------------------- the entry point
def _split_for(dataset: MaskDataset, split: Split | None, options: TrainOptions) -> tuple[Split, MaskDataset, MaskDataset]:
    """The split (made here, seeded, unless given) and its train and val sides, each refused when
    empty. A given split's test side is held out: its groups are known (not refused as strangers)
    but neither train nor validate, so the test score made later stays unseen."""
    if split is None:
        split = split_groups(dataset.groups(), val_fraction=options.val_fraction, seed=options.seed, by=dataset.by)
    unknown = sorted(g for g in dataset.groups() if split.side(g) is None)
    if unknown:
        raise InputError(f"finetune: {len(unknown)} group(s) of the data are in neither side of the given split"
                         f" (train, val or test), first {unknown[0]!r}; split the data again (leave split out)"
                         " or add them to it")
    train, val = dataset.subset(split.train), dataset.subset(split.val)
    for side, part, what in (("train", train, "training"), ("val", val, "validation")):
        if len(part) == 0:
            raise InputError(
                f"finetune: the {side} side of the split holds no mask ({len(split.train)} train /"
                f" {len(split.val)} val / {len(split.test)} test groups); {what} needs masks: annotate"
                " more videos or images, or change val_fraction (--val-fraction) or the split's ratios")
    return split, train, val


def _identity(dataset: MaskDataset, split: Split, options: TrainOptions, base: _Base) -> str:
    d = {"data": dataset.fingerprint(), "split": split.to_json(), "options": options.identity(),
         "base": base.name, "base_sha256": base.sha, "image_size": base.image_size}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _new_run(net: Any, n_train: int, options: TrainOptions, n_pairs: int = 0) -> _Run:
    import torch

    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(options))
    # spawn(3)[:2] == spawn(2): the pair sampler's stream leaves a single-frame run's draws as they were
    seeds = np.random.SeedSequence(options.seed).spawn(3)
    pairs = _Sampler(n_pairs, np.random.default_rng(seeds[2])) if n_pairs else None
    return _Run(net, opt, sched, _Sampler(n_train, np.random.default_rng(seeds[0])), np.random.default_rng(seeds[1]),
                pairs)


def _resume(run: _Run, ckpt: Path, identity: str, restart: bool, progress: bool) -> int | None:
    """Load ``ckpt`` into ``run`` when it belongs to this run; the step resumed from, or None."""
    if restart and ckpt.parent.exists():
        shutil.rmtree(ckpt.parent)
    if not ckpt.exists():
        return None
    ck = _read_checkpoint(ckpt)
    if ck.get("identity") != identity:
        raise InputError(
            f"{ckpt.parent} holds a run on other data, split, base model or options (step {ck.get('step')});"
            " pass restart=True (dl-utils finetune --restart) to discard it and start over, or choose"
            " another --out")
    run.load(ck)
    if progress:
        print(f"finetune: resuming from step {run.step} of {ckpt}", flush=True)
    return run.step


def _check_size(s: MaskSample, hw: tuple[int, int]) -> None:
    if s.mask.shape != hw:
        raise MaskError(
            f"{s.ref.name}: the mask of object {s.object_id} is {s.mask.shape[1]}x{s.mask.shape[0]}"
            f" but the frame is {hw[1]}x{hw[0]}; the media changed since it was annotated:"
            " put the original back or leave this store out")


def _pairs_loss(run: _Run, pairs: Sequence[tuple[MaskSample, MaskSample]], feats: _Features,
                options: TrainOptions, amp: Any) -> tuple[Any, list[MaskSample]]:
    """Summed :func:`pair_loss` of ``batch_size`` pairs drawn by ``run.pairs`` (none without it)."""
    loss: Any = 0.0
    used: list[MaskSample] = []
    if run.pairs is None:
        return loss, used
    for cond, target in (pairs[i] for i in run.pairs.take(options.batch_size)):
        fc, ft = feats.get(cond.ref), feats.get(target.ref)
        _check_size(cond, fc.orig_hw)
        _check_size(target, ft.orig_hw)
        clicks = sample_clicks(cond.mask, run.clicks_rng, options.sampling)
        with amp:
            loss = loss + pair_loss(run.net, fc, ft, clicks, target.ref.frame - cond.ref.frame, target.mask, options)
        used += [cond, target]
    return loss, used


def _train(run: _Run, train: MaskDataset, feats: _Features, options: TrainOptions, ckpt: Path,
           identity: str, amp: Any, progress: bool) -> None:
    """The optimiser steps from ``run.step`` to ``options.steps``, checkpointing as it goes; with
    ``train_memory`` each micro-batch adds ``batch_size`` frame pairs to its single frames."""
    import torch
    from tqdm.auto import tqdm

    pairs = frame_pairs(train) if run.pairs is not None else []
    bar = tqdm(total=options.steps, initial=run.step, desc="fine-tuning", unit="step", disable=not progress)
    # SAM2's own training mode: no stability fallback between mask tokens (the network's top level
    # stays in eval mode, so memory encoding treats the clicked frame's mask as inference does)
    for name in TRAINED + (MEMORY if run.pairs is not None else ()):
        if isinstance(getattr(run.net, name, None), torch.nn.Module):
            getattr(run.net, name).train()
    try:
        while run.step < options.steps:
            run.optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(options.accumulate):
                picked = [train.samples[i] for i in run.sampler.take(options.batch_size)]
                loss: Any = 0.0
                for s in picked:
                    clicks = sample_clicks(s.mask, run.clicks_rng, options.sampling)
                    tensors, hw = feats.tensors(s.ref)
                    _check_size(s, hw)
                    with amp:
                        loss = loss + sample_loss(run.net, tensors, hw, clicks, s.mask, options)
                extra, used = _pairs_loss(run, pairs, feats, options, amp)
                loss = (loss + extra) / ((len(picked) + len(used) // 2) * options.accumulate)
                picked = picked + used
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingError(
                        f"finetune: the loss became {value} at step {run.step + 1} (frames"
                        f" {', '.join(s.ref.name for s in picked)}); lower the learning rate (--lr) or resume"
                        f" from the last checkpoint in {ckpt.parent}")
                loss.backward()
                total += value
            run.optimizer.step()
            run.scheduler.step()
            run.step += 1
            run.losses.append(total)
            if run.step % options.checkpoint_every == 0 or run.step == options.steps:
                run.save(ckpt, identity)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4f}")
    finally:
        run.net.eval()
        bar.close()


def _write_outputs(net: Any, out: Path, sidecar: dict[str, Any]) -> str:
    """``out`` as an official ``{"model": state_dict}`` file, its ``.sha256`` record, ``out.json``."""
    from ..models import record_sha256, sha256_file

    _atomic_save({"model": {k: v.detach().cpu() for k, v in net.state_dict().items()}}, out)
    digest = sha256_file(out)
    record_sha256(out, digest)  # replaces a stale record of an earlier run's file
    _atomic_text(json.dumps({**sidecar, "sha256": digest}, indent=1) + "\n", Path(f"{out}.json"))
    return digest


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels for the run (CPU runs resume bit for bit), the caller's setting after."""
    import torch

    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


def finetune(
    dataset: MaskDataset,
    *,
    model: Any = None,
    checkpoint: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str],
    options: TrainOptions | None = None,
    split: Split | None = None,
    device: Any = None,
    progress: bool = True,
    restart: bool = False,
) -> FinetuneResult:
    """Fine-tune SAM2's prompt encoder and mask decoder on ``dataset`` (see the module docstring).

    ``model`` is a registry name or config (default ``sam2.1_hiera_tiny``; ``checkpoint`` overrides
    its weights) or an already built ``SAM2Base`` (copied). Writes ``out``, ``out.json`` and
    ``out.ckpt/``; reruns with the same ``out`` resume, ``restart=True`` starts over.
    """
    import torch

    from ..sam2_loader import pick_device

    options = options or TrainOptions()
    started, out = time.time(), Path(out)
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; give the checkpoint file to write, e.g. {out / 'tuned.pt'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    base = _build(model, checkpoint, options.image_size, dev)
    split, train, val = _split_for(dataset, split, options)
    n_pairs = len(frame_pairs(train)) if options.train_memory else 0
    if options.train_memory and not n_pairs:
        raise InputError(
            "finetune: train_memory trains on pairs of one object's masks 1 to"
            f" {MAX_GAP} frames apart in one video, and the training side holds none (image sets have no"
            " pairs); annotate keyframes a few frames apart in videos, or leave train_memory off")
    identity = _identity(dataset, split, options, base)
    net = base.net
    freeze_for_finetuning(net, memory=options.train_memory)
    cache = FeatureCache(options.cache_dir or default_cache_dir(), model_key=f"{base.name}|{base.sha}|{base.image_size}",
                         max_bytes=options.cache_max_bytes)
    feats = _Features(dataset, cache, encoder(net), dev)
    run = _new_run(net, len(train), options, n_pairs)
    ckpt = Path(f"{out}.ckpt") / LAST
    use_amp = dev.type == "cuda" and options.amp
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
    if dev.type == "cuda" and options.compile:
        net.sam_mask_decoder.compile()
    # memory attention's dropout (train_memory) draws from torch's generator: seeded here so a run
    # repeats, saved in checkpoints so a resume continues it, the caller's state restored afterwards
    with _deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        resumed = _resume(run, ckpt, identity, restart, progress)
        feats.warm(dataset.subset(split.train + split.val).frames(), progress)
        val_clicks = fixed_clicks(val.samples, options.seed, options.sampling)
        if run.iou_before is None:
            run.iou_before = mean_iou(net, val.samples, val_clicks, feats.get)
        _train(run, train, feats, options, ckpt, identity, amp, progress)
        iou_after = mean_iou(net, val.samples, val_clicks, feats.get)
    real_sha = base.sha if len(base.sha) == 64 else None
    sidecar = {
        "format": FORMAT, "version": VERSION, "base_model": base.name, "image_size": base.image_size,
        "base_checkpoint_sha256": real_sha, "data": list(dataset.sources), "select": dataset.select,
        "split": split.to_json(), "steps": run.step, "options": options.to_json(),
        "iou_before": run.iou_before, "iou_after": iou_after, "train_masks": len(train), "val_masks": len(val),
    }
    _write_outputs(net, out, sidecar)
    return FinetuneResult(
        out=out, sidecar=Path(f"{out}.json"), steps=run.step, resumed_from=resumed, split=split,
        train_size=len(train), val_size=len(val), losses=list(run.losses), cache_hits=cache.hits,
        cache_misses=cache.misses, iou_before=run.iou_before, iou_after=iou_after, base_model=base.name,
        seconds=time.time() - started,
    )


__all__ = [
    "OBJECT_WEIGHT",
    "FinetuneResult",
    "TrainOptions",
    "default_cache_dir",
    "finetune",
    "frame_pairs",
    "mean_iou",
    "pair_loss",
    "sample_loss",
]
