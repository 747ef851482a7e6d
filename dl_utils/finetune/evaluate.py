"""Does fine-tuning pay? Score SAM2 checkpoints on the same held-out masks with the same clicks.

Every model is run through the engine users get, :class:`dl_utils.samal.ImageSegmenter` (its
transforms, its single-mask choice for the clicks given, its embedding cache: one image encoding
per frame per model), with the clicks :func:`dl_utils.finetune.clicks.fixed_clicks` samples once
for all models, so a difference between two rows is the weights' doing and nothing else. Each
sample gets two numbers:

* **IoU** of the predicted and the true mask;
* **boundary F** (DAVIS's F measure): precision and recall of the predicted mask's boundary pixels
  against the true one's, each matched within a tolerance of ``0.008`` of the image diagonal
  (at least one pixel); IoU barely moves when a mask is a few pixels off along a long outline, the
  boundary F does.

They are averaged over samples per class and overall, and per object (each object's mean first, so
an object seen on many frames does not outweigh the others). :meth:`EvalReport.better` is the only
verdict: ``True`` only when the mean IoU went up; callers print "not better" otherwise, never an
improvement. A contact sheet shows the samples that gained and lost most between the first two
models, because a person judges masks faster by looking than by reading numbers.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ..cv_utils import contact_sheet, decode_coco_rle, draw_overlay, encode_coco_rle, mask_iou
from ..errors import InputError, MaskError, ModelError, OutputError
from ..models import finetuned_info
from .clicks import ClickSampling, fixed_clicks
from .data import MaskDataset, MaskSample

#: boundary tolerance as a fraction of the image diagonal (DAVIS's ``bound_th``)
BOUNDARY_TOLERANCE = 0.008
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
_DEFAULT_IMAGE_SIZE = 1024


# ----------------------------------------------------------------------------- metrics
def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's inner boundary: its pixels with a 4-neighbour outside it. The frame's edge is
    not a boundary (an object cut by the frame has no outline there to get right)."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return m.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    eroded = cv2.erode(m.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1)
    return m & ~eroded.astype(bool)


def boundary_tolerance(shape: tuple[int, ...], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """Pixels a boundary may be off and still match: ``ceil(tolerance * diagonal)``, at least 1."""
    return max(1, int(math.ceil(tolerance * math.hypot(shape[0], shape[1]))))


def boundary_f(pred: np.ndarray, truth: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """DAVIS's boundary F measure of ``pred`` against ``truth`` (bool masks of one size).

    Both empty: 1 (nothing to outline, nothing outlined); one empty: 0.
    """
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise MaskError(f"boundary_f: masks differ in size ({p.shape} vs {t.shape})")
    bp, bt = boundary(p), boundary(t)
    n_p, n_t = int(bp.sum()), int(bt.sum())
    if n_p == 0 and n_t == 0:
        return 1.0
    if n_p == 0 or n_t == 0:
        return 0.0
    r = boundary_tolerance(p.shape, tolerance)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    near_t = cv2.dilate(bt.astype(np.uint8), disk).astype(bool)
    near_p = cv2.dilate(bp.astype(np.uint8), disk).astype(bool)
    precision = float((bp & near_t).sum()) / n_p
    recall = float((bt & near_p).sum()) / n_t
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------- report
@dataclass(frozen=True)
class SampleInfo:
    """Which mask a row of numbers belongs to (the dataset's sample, without the pixels)."""

    name: str
    media: str
    frame: int
    group: str
    object_id: int
    label: str


@dataclass
class ModelResult:
    """One model's numbers, one entry per sample in the report's sample order."""

    name: str  # shown in tables
    checkpoint: str | None  # the file, None for a registry model
    base_model: str
    sha256: str | None
    iou: list[float] = field(default_factory=list)
    boundary_f: list[float] = field(default_factory=list)
    score: list[float] = field(default_factory=list)  # SAM2's predicted IoU
    #: the predicted masks as COCO RLE, kept for the first two models only (the contact sheet's)
    masks: list[dict[str, Any]] | None = field(default=None, repr=False)

    def mean_iou(self) -> float:
        return float(np.mean(self.iou)) if self.iou else float("nan")

    def mean_boundary_f(self) -> float:
        return float(np.mean(self.boundary_f)) if self.boundary_f else float("nan")


@dataclass(frozen=True)
class SampleDelta:
    """One sample's change from model ``a`` to model ``b`` (positive: ``b`` is better)."""

    index: int
    sample: SampleInfo
    iou_a: float
    iou_b: float
    d_iou: float
    d_boundary_f: float


def _means(idx: Sequence[int], m: ModelResult) -> dict[str, Any]:
    return {"n": len(idx), "iou": float(np.mean([m.iou[i] for i in idx])) if idx else None,
            "boundary_f": float(np.mean([m.boundary_f[i] for i in idx])) if idx else None}


@dataclass
class EvalReport:
    """Every model's per-sample numbers on one dataset with one set of clicks (see the module doc)."""

    samples: list[SampleInfo]
    models: list[ModelResult]
    image_size: int
    seed: int
    sampling: dict[str, Any]
    tolerance: float = BOUNDARY_TOLERANCE

    def labels(self) -> list[str]:
        return sorted({s.label for s in self.samples})

    def model(self, which: int | str) -> ModelResult:
        """A model by position or name; ``InputError`` naming the known ones otherwise."""
        if isinstance(which, int) and -len(self.models) <= which < len(self.models):
            return self.models[which]
        for m in self.models:
            if m.name == which or m.checkpoint == which:
                return m
        raise InputError(f"no model {which!r} in this report; it has {[m.name for m in self.models]}")

    def per_class(self, which: int | str = 0) -> dict[str, dict[str, Any]]:
        m = self.model(which)
        return {lb: _means([i for i, s in enumerate(self.samples) if s.label == lb], m) for lb in self.labels()}

    def per_object(self, which: int | str = 0) -> dict[str, Any]:
        """Each object's (media, object id) mean first, then the mean over objects."""
        m = self.model(which)
        objs: dict[tuple[str, int], list[int]] = {}
        for i, s in enumerate(self.samples):
            objs.setdefault((s.media, s.object_id), []).append(i)
        ious = [float(np.mean([m.iou[i] for i in idx])) for idx in objs.values()]
        fs = [float(np.mean([m.boundary_f[i] for i in idx])) for idx in objs.values()]
        return {"n": len(objs), "iou": float(np.mean(ious)) if ious else None,
                "boundary_f": float(np.mean(fs)) if fs else None}

    def compare(self, a: int | str = 0, b: int | str = 1) -> list[SampleDelta]:
        """Per-sample deltas from ``a`` to ``b``, in sample order."""
        ma, mb = self.model(a), self.model(b)
        return [SampleDelta(i, s, ma.iou[i], mb.iou[i], mb.iou[i] - ma.iou[i],
                            mb.boundary_f[i] - ma.boundary_f[i]) for i, s in enumerate(self.samples)]

    def better(self, a: int | str = 0, b: int | str = 1) -> bool:
        """True only when ``b``'s mean IoU is above ``a``'s: the one claim of improvement allowed."""
        return bool(self.model(b).mean_iou() > self.model(a).mean_iou())

    def verdict(self, a: int | str = 0, b: int | str = 1) -> str:
        """One line for people: ``better`` or ``not better`` with both mean IoUs."""
        ma, mb = self.model(a), self.model(b)
        word = "better" if self.better(a, b) else "not better"
        return (f"{mb.name} vs {ma.name}: {word} (mean IoU {ma.mean_iou():.4f} -> {mb.mean_iou():.4f},"
                f" {mb.mean_iou() - ma.mean_iou():+.4f} on {len(self.samples)} masks)")

    def to_json(self) -> dict[str, Any]:
        """Everything, JSON-able: settings, per-model summaries and per-sample numbers."""
        models = []
        for k, m in enumerate(self.models):
            models.append({**{f: getattr(m, f) for f in ("name", "checkpoint", "base_model", "sha256")},
                           "overall": _means(range(len(self.samples)), m), "objects": self.per_object(k),
                           "classes": self.per_class(k), "iou": m.iou, "boundary_f": m.boundary_f,
                           "score": m.score})
        doc: dict[str, Any] = {"image_size": self.image_size, "seed": self.seed, "sampling": self.sampling,
                               "boundary_tolerance": self.tolerance,
                               "samples": [asdict(s) for s in self.samples], "models": models}
        if len(self.models) >= 2:
            doc["better"] = self.better(0, 1)
            doc["verdict"] = self.verdict(0, 1)
        return doc

    def format_table(self) -> str:
        """Mean IoU per model (rows) and class (columns), overall and per object; boundary F; the
        verdict of the second model against the first."""
        labels = self.labels()
        name_w = max([5] + [len(m.name) for m in self.models])
        cols = [f"{lb[:12]:>12}" for lb in labels]
        head = f"{'model':<{name_w}} " + " ".join(cols) + f" {'all':>8} {'objects':>8} {'bound F':>8}"
        n_frames = len({(s.media, s.frame) for s in self.samples})
        lines = [f"mean IoU on {len(self.samples)} masks ({n_frames} frames), image_size {self.image_size},"
                 f" seed {self.seed}", head]
        for k, m in enumerate(self.models):
            pc = self.per_class(k)
            cells = [f"{pc[lb]['iou']:>12.4f}" for lb in labels]
            lines.append(f"{m.name:<{name_w}} " + " ".join(cells) + f" {m.mean_iou():>8.4f}"
                         f" {self.per_object(k)['iou']:>8.4f} {m.mean_boundary_f():>8.4f}")
        lines.append(f"{'masks':<{name_w}} " + " ".join(f"{self.per_class(0)[lb]['n']:>12d}" for lb in labels)
                     + f" {len(self.samples):>8d}")
        if len(self.models) >= 2:
            lines.append(self.verdict(0, 1))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- models
@dataclass(frozen=True)
class _ModelSpec:
    name: str
    base_model: str
    checkpoint: Path | None
    image_size: int | None  # from a sidecar


def _guess_base(path: Path) -> str:
    """A checkpoint without a sidecar: the registry model its shapes belong to, else the default."""
    from ..models import DEFAULT_MODEL
    from ..sam2_loader import guess_model

    try:
        import torch

        sd = torch.load(path, map_location="cpu", weights_only=True)
        guess = guess_model(sd.get("model", {})) if isinstance(sd, dict) else None
    except Exception:  # the loader reads it again and raises its own typed error
        guess = None
    return guess or DEFAULT_MODEL


def _resolve(item: str | os.PathLike[str], base_model: str | None) -> _ModelSpec:
    """A checkpoint file (a fine-tuned one's sidecar names its base model and input size) or a
    registry name."""
    text = os.fspath(item)
    path = Path(text).expanduser()
    if path.is_file():
        side = finetuned_info(path)  # the one reader of `dl-utils finetune`'s sidecar
        if side is not None:
            return _ModelSpec(path.name, side.base_model, path, side.image_size)
        return _ModelSpec(path.name, base_model or _guess_base(path), path, None)
    if path.suffix.lower() in _CHECKPOINT_SUFFIXES or path.exists():
        raise ModelError(f"checkpoint {path} does not exist (or is not a file); check the path, or name a"
                         " registry model such as sam2.1_hiera_tiny (`dl-utils models list`)")
    return _ModelSpec(text, text, None, None)


def _unique_names(specs: list[_ModelSpec]) -> list[str]:
    names = [s.name for s in specs]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def _segmenter(spec: _ModelSpec, index: int, n: int, image_size: int, device: Any) -> Any:
    """The engine users get, on this model's weights; the loader's typed error names the model."""
    from ..samal import ImageSegmenter

    try:
        return ImageSegmenter(spec.base_model, spec.checkpoint, image_size=image_size, device=device,
                              cache_size=2)
    except ModelError as e:
        what = f"{spec.checkpoint} (base model {spec.base_model})" if spec.checkpoint else spec.base_model
        raise ModelError(f"evaluate: model {index + 1} of {n}, {what}: {e}") from None


def _run_model(seg: Any, result: ModelResult, dataset: MaskDataset, by_frame: dict[Any, list[int]],
               clicks: Sequence[Any], tolerance: float, progress: bool, keep_masks: bool) -> None:
    """One image encoding per frame, then each of its samples from its fixed clicks, no refinement
    between samples: every model sees exactly the same prompts."""
    from tqdm.auto import tqdm

    n = len(dataset.samples)
    iou, bf, score = [0.0] * n, [0.0] * n, [0.0] * n
    masks: list[dict[str, Any]] = [{} for _ in range(n)]
    for ref, idx in tqdm(by_frame.items(), desc=f"evaluate {result.name}", unit="frame", disable=not progress):
        image = dataset.image(ref)
        seg.set_image(image, key=(ref.media, ref.frame), frame=ref.frame)
        for i in idx:
            sample, c = dataset.samples[i], clicks[i]
            if sample.mask.shape != image.shape[:2]:
                raise MaskError(f"{ref.name}: the mask of object {sample.object_id} is"
                                f" {sample.mask.shape[1]}x{sample.mask.shape[0]} but the frame is"
                                f" {image.shape[1]}x{image.shape[0]}; the media changed since it was annotated")
            pts = [list(p) for p in c.points] or None
            inst = seg.predict(pts, c.box, object_id=sample.object_id, refine=False)
            iou[i] = mask_iou(inst.mask, sample.mask)
            bf[i] = boundary_f(inst.mask, sample.mask, tolerance)
            score[i] = float(inst.score or 0.0)
            if keep_masks:
                masks[i] = encode_coco_rle(inst.mask)
    result.iou, result.boundary_f, result.score = iou, bf, score
    result.masks = masks if keep_masks else None


def _pick_size(image_size: int | None, specs: list[_ModelSpec]) -> int:
    """One input size for every model, so rows compare: the argument, else the first sidecar's."""
    if image_size is not None:
        return int(image_size)
    return next((s.image_size for s in specs if s.image_size), _DEFAULT_IMAGE_SIZE)


def evaluate(
    dataset: MaskDataset,
    checkpoints: Sequence[str | os.PathLike[str]],
    *,
    image_size: int | None = None,
    seed: int = 0,
    sampling: ClickSampling | None = None,
    device: Any = None,
    progress: bool = True,
    sheet: str | os.PathLike[str] | None = None,
    sheet_rows: int = 6,
    base_model: str | None = None,
) -> EvalReport:
    """Score each of ``checkpoints`` on ``dataset`` with the same clicks (see the module doc).

    ``checkpoints``: files (official ``{"model": state_dict}``; a fine-tuned one's sidecar
    ``<file>.json`` names its ``base_model`` and ``image_size``) or registry names
    (``"sam2.1_hiera_tiny"``: the base model compares too). A file without a sidecar is read as
    ``base_model`` (default: the registry model its shapes belong to). ``image_size``: one input
    size for all models (default: the first sidecar's, else 1024). ``sheet``: a PNG of the
    ``sheet_rows`` largest gains and losses between the first two models.
    """
    if not len(dataset.samples):
        raise InputError("evaluate: the dataset has no masks; a store's reviewed masks are keyframes,"
                         " pulled or imported ones (select='all' adds the engine's own output)")
    if not checkpoints:
        raise InputError("evaluate: no model given; name checkpoint files or registry models"
                         " (e.g. sam2.1_hiera_tiny for the base model)")
    if sheet is not None and len(checkpoints) < 2:
        raise InputError("evaluate: a contact sheet compares two models; give at least two")
    specs = [_resolve(c, base_model) for c in checkpoints]
    size = _pick_size(image_size, specs)
    sampling = sampling or ClickSampling()
    clicks = fixed_clicks(dataset.samples, seed, sampling)
    by_frame: dict[Any, list[int]] = {}
    for i, s in enumerate(dataset.samples):
        by_frame.setdefault(s.ref, []).append(i)
    report = EvalReport(
        [SampleInfo(s.ref.name, s.ref.media, s.ref.frame, s.ref.group, s.object_id, s.label)
         for s in dataset.samples], [], size, seed, sampling.to_json())
    for k, (spec, name) in enumerate(zip(specs, _unique_names(specs))):
        seg = _segmenter(spec, k, len(specs), size, device)
        result = ModelResult(name, str(spec.checkpoint) if spec.checkpoint else None, spec.base_model,
                             getattr(seg.model, "dl_utils_sha256", None))
        _run_model(seg, result, dataset, by_frame, clicks, report.tolerance, progress, keep_masks=k < 2)
        report.models.append(result)
        del seg
    if sheet is not None:
        write_sheet(report, dataset, sheet, rows=sheet_rows)
    return report


# ----------------------------------------------------------------------------- contact sheet
SHEET_PANEL = 192  # px, each of the four panels of a row
SHEET_PAD = 4


def _square_crop(masks: Sequence[np.ndarray], h: int, w: int) -> tuple[int, int, int]:
    """(x, y, side) of a square around every mask with a margin, inside the frame, so every panel
    of the sheet has the same shape."""
    union = np.logical_or.reduce([np.asarray(m, bool) for m in masks])
    ys, xs = np.nonzero(union)
    side_max = min(h, w)
    if xs.size == 0:
        return 0, 0, side_max
    x1, x2, y1, y2 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    side = min(side_max, int(max(x2 - x1, y2 - y1) * 1.4) + 8)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    x = int(np.clip(cx - side // 2, 0, w - side))
    y = int(np.clip(cy - side // 2, 0, h - side))
    return x, y, side


def _sheet_row(image: np.ndarray, d: SampleDelta, truth: np.ndarray, pa: np.ndarray, pb: np.ndarray,
               names: tuple[str, str]) -> list[tuple[str, np.ndarray]]:
    h, w = truth.shape
    x, y, side = _square_crop([truth, pa, pb], h, w)
    crop = (slice(y, y + side), slice(x, x + side))
    panels = [(f"{d.d_iou:+.3f} {d.sample.name} #{d.sample.object_id}", image[crop])]
    for title, m, colour in (("truth", truth, "#00ff00"), (f"{names[0]} {d.iou_a:.3f}", pa, "#ff8800"),
                             (f"{names[1]} {d.iou_b:.3f}", pb, "#3399ff")):
        over = draw_overlay(image[crop], [m[crop]], labels=False, colors=[colour])
        if m is not truth:  # the truth's outline on the models' panels: where they should have been
            outline, _ = cv2.findContours(truth[crop].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(over, outline, -1, (255, 255, 255), 1)
        panels.append((title, over))
    return panels


def write_sheet(report: EvalReport, dataset: MaskDataset, path: str | os.PathLike[str], *, rows: int = 6) -> Path:
    """The ``rows`` largest IoU gains and ``rows`` largest losses of the second model over the first:
    image crop, truth, model A, model B (IoUs in the titles); written atomically as PNG."""
    if len(report.models) < 2:
        raise InputError("contact sheet: the report has fewer than two models to compare")
    a, b = report.models[0], report.models[1]
    if a.masks is None or b.masks is None:
        raise InputError("contact sheet: the report holds no predicted masks (made by evaluate(), not read"
                         " from JSON); run evaluate(..., sheet=PATH)")
    deltas = report.compare(0, 1)
    gains = sorted((d for d in deltas if d.d_iou > 0), key=lambda d: -d.d_iou)[:rows]
    losses = sorted((d for d in deltas if d.d_iou < 0), key=lambda d: d.d_iou)[:rows]
    chosen = gains + losses or deltas[:rows]
    items: list[tuple[str, np.ndarray]] = []
    for d in chosen:
        sample: MaskSample = dataset.samples[d.index]
        pa, pb = decode_coco_rle(a.masks[d.index]), decode_coco_rle(b.masks[d.index])
        items += _sheet_row(dataset.image(sample.ref), d, sample.mask, pa, pb, (a.name, b.name))
    grid = contact_sheet(items, columns=4, width=SHEET_PANEL, pad=SHEET_PAD)
    return _write_png_atomic(Path(path), grid)


def _write_png_atomic(path: Path, rgb: np.ndarray) -> Path:
    """Encode, write beside, rename: an interrupted run leaves the old sheet or none, never half."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OutputError(f"cannot encode the contact sheet {path} as PNG")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write the contact sheet {path} ({e.strerror or e}); check the folder"
                          " exists and is writable, or pass another --sheet path") from None
    return path


__all__ = [
    "BOUNDARY_TOLERANCE",
    "EvalReport",
    "ModelResult",
    "SampleDelta",
    "SampleInfo",
    "boundary",
    "boundary_f",
    "boundary_tolerance",
    "evaluate",
    "write_sheet",
]
