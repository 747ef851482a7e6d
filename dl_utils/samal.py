"""SAM2 on still images: clicks, boxes, previous masks, detector boxes and "segment everything".

:class:`ImageSegmenter` wraps the upstream ``SAM2ImagePredictor`` (its transforms, prompt encoder and
mask decoder are used as they are, so results equal upstream's bit for bit) and adds what an
annotation tool needs around it:

* an **embedding cache** (LRU keyed by image content, model and input size, bounded by entries and
  optionally bytes), so going back to an image, or clicking again, costs the mask decoder only;
* **validated prompts** per object (points in image pixels with labels 1/0, a box, a previous mask),
  with errors that name the object and the field;
* **best of multimask by predicted IoU** when a prompt is ambiguous (one point), single output else,
  as the SAM authors recommend;
* **refinement**: the last low-resolution logits of every object are kept, so the next call for that
  object feeds them back as ``mask_input`` (like the SAM demos);
* results as :class:`dl_utils.annotations.Instance` with the predicted IoU as ``score``.

Nothing here imports torch at module import time; the first :class:`ImageSegmenter` does.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, cast

import numpy as np

from .annotations import Box, Clicks, Instance, Instances, Provenance, Source
from .errors import InputError
from .models import DEFAULT_MODEL
from .sam2_loader import (
    autocast_context,
    build_sam2_model,
    is_compiled,
    make_image_predictor,
    precision_name,
    require_sam2,
    resolve_dtype,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

# SAM2Base._use_mask_as_output turns a binary mask into logits with this scale and bias; a bool mask
# given as a prompt is converted the same way so the decoder sees what it was trained on.
MASK_LOGIT_SCALE = 20.0
MASK_LOGIT_BIAS = -10.0
_PROMPT_KEYS = {"points", "box", "mask", "multimask", "refine"}


# ----------------------------------------------------------------------------- embedding cache
@dataclass
class _Entry:
    features: dict[str, Any]
    hw: tuple[int, int]
    nbytes: int


class EmbeddingCache:
    """LRU of image features, bounded by ``max_entries`` and (optionally) ``max_bytes``.

    At image_size 1024 one entry is ~16 MiB whatever the model size (a 256-channel 64x64 embedding
    plus the two high-resolution maps), so the default 8 entries hold ~128 MiB.
    """

    def __init__(self, max_entries: int = 8, max_bytes: int | None = None):
        if int(max_entries) < 0 or (max_bytes is not None and int(max_bytes) < 0):
            raise InputError(
                f"cache_size={max_entries!r}, cache_bytes={max_bytes!r}: use counts >= 0 (0 disables the cache)"
            )
        self.max_entries = int(max_entries)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self._d: OrderedDict[Any, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def key(image: np.ndarray, model_key: str, user_key: Any = None) -> tuple:
        """Content key: sha1 of the pixels + shape + model; ``user_key`` replaces the hash when given."""
        if user_key is not None:
            return ("key", user_key, image.shape, model_key)
        digest = hashlib.sha1(np.ascontiguousarray(image).data).hexdigest()
        return ("sha1", digest, image.shape, str(image.dtype), model_key)

    def get(self, key: tuple) -> _Entry | None:
        with self._lock:
            entry = self._d.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: tuple, features: dict[str, Any], hw: tuple[int, int]) -> None:
        if self.max_entries == 0:
            return
        nbytes = _tensor_bytes(features)
        if self.max_bytes is not None and nbytes > self.max_bytes:
            return  # one entry larger than the whole budget: not worth evicting everything for
        with self._lock:
            self._d[key] = _Entry(features, (int(hw[0]), int(hw[1])), nbytes)
            self._d.move_to_end(key)
            while len(self._d) > self.max_entries or (
                self.max_bytes is not None and self.nbytes > self.max_bytes
            ):
                self._d.popitem(last=False)
                self.evictions += 1

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._d.values())

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def info(self) -> dict[str, int | None]:
        return {
            "entries": len(self._d),
            "bytes": self.nbytes,
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    numel = getattr(obj, "numel", None)
    return int(numel() * obj.element_size()) if numel is not None else 0


@functools.lru_cache(maxsize=None)
def _caching_predictor_cls():
    """``SAM2ImagePredictor`` whose ``set_image`` goes through an :class:`EmbeddingCache`.

    A subclass (not a wrapper) so sam2's own ``SAM2AutomaticMaskGenerator`` can use it too: it calls
    ``predictor.set_image`` per crop and then the predictor's private decoder helpers.
    """
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    class CachingImagePredictor(SAM2ImagePredictor):
        def __init__(self, sam_model, *, cache: EmbeddingCache, model_key: str, **kwargs):
            super().__init__(sam_model, **kwargs)
            self.cache = cache
            self.model_key = model_key
            self.last_key: tuple | None = None
            self.last_hit = False

        def set_image(self, image, key: Any = None) -> bool:
            image = np.asarray(image)
            k = EmbeddingCache.key(image, self.model_key, key)
            entry = self.cache.get(k)
            if entry is not None:
                self.reset_predictor()
                self._features = entry.features
                self._orig_hw = [entry.hw]
                self._is_image_set = True
            else:
                super().set_image(image)
                self.cache.put(k, self._features, self._orig_hw[0])
            self.last_key, self.last_hit = k, entry is not None
            return self.last_hit

    return CachingImagePredictor


# ----------------------------------------------------------------------------- prompts
@dataclass
class _Prompt:
    object_id: int
    coords: np.ndarray | None  # (N, 2) float64, image pixels
    labels: np.ndarray | None  # (N,) int32
    box: np.ndarray | None  # (4,) float64
    mask: Any  # torch (1, h, w) float32 logits or None
    mask_kind: str | None  # "given" | "previous" | None
    multimask: bool

    @property
    def signature(self) -> tuple:
        n = None if self.coords is None else len(self.coords)
        return (n, self.box is not None, self.mask is not None, self.multimask)

    def clicks(self) -> Clicks:
        """What was given, kept with the instance so the widget can show and edit it again."""
        points: tuple[tuple[float, float, int], ...] = ()
        if self.coords is not None:
            points = tuple(
                (float(x), float(y), int(lab)) for (x, y), lab in zip(self.coords, self.labels)  # type: ignore[arg-type]
            )
        box = None if self.box is None else cast(Box, tuple(float(v) for v in self.box))
        return Clicks(points=points, box=box, mask=self.mask_kind, multimask=self.multimask)


def weights_sha256(model: Any) -> str | None:
    """The sha256 of the checkpoint the loader read (``dl_utils_sha256``), None when unknown: a model
    built elsewhere, or random weights (the loader then records ``random-<seed>``, not a digest)."""
    digest = getattr(model, "dl_utils_sha256", None)
    return digest if isinstance(digest, str) and _SHA256.fullmatch(digest) else None


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _as_array(value: Any, what: str, oid: int) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().float().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"object {oid}: {what} {value!r} is not numeric") from None


def parse_points(points: Any, oid: int, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Clicks ``[[x, y, 1|0], ...]`` in source pixels -> (coords, labels), checked against the image
    size ``hw``; shared with :mod:`dl_utils.sam2al` so both engines accept and reject the same input."""
    if points is None:
        return None
    arr = _as_array(points, "points", oid)
    if arr.size == 0:
        return None
    if arr.ndim == 1 and arr.shape[0] == 3:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(
            f"object {oid}: points have shape {arr.shape}; give [[x, y, label], ...] with label 1 "
            "(object) or 0 (background)"
        )
    if not np.isfinite(arr).all():
        raise InputError(f"object {oid}: points contain NaN or infinity; give finite pixel coordinates")
    h, w = hw
    for i, (x, y, lab) in enumerate(arr):
        if lab not in (0.0, 1.0):
            raise InputError(
                f"object {oid}: point {i} has label {lab:g}; use 1 for the object, 0 for background"
            )
        if not (0 <= x < w and 0 <= y < h):
            raise InputError(
                f"object {oid}: point {i} ({x:g}, {y:g}) lies outside the {w}x{h} image; clicks "
                f"must satisfy 0 <= x < {w} and 0 <= y < {h}"
            )
    return arr[:, :2].copy(), arr[:, 2].astype(np.int32)


#: how far past the image border a box drawn or typed by a person may reach (a share of the side);
#: detector boxes (``slack=None``) are clipped whatever they are
USER_BOX_SLACK = 0.05


def parse_box(box: Any, oid: int, hw: tuple[int, int], *, slack: float | None = None) -> np.ndarray | None:
    """A box ``(x1, y1, x2, y2)`` in source pixels, checked against ``hw`` (shared with sam2al).

    ``slack``: a box reaching further past the border than this share of the image side is
    refused (a typo or the wrong image's coordinates) instead of being clipped.
    """
    if box is None:
        return None
    arr = _as_array(box, "box", oid).reshape(-1)
    if arr.shape != (4,):
        raise InputError(f"object {oid}: box {box!r} is not (x1, y1, x2, y2)")
    if not np.isfinite(arr).all():
        raise InputError(f"object {oid}: box {arr.tolist()} contains NaN or infinity")
    x1, y1, x2, y2 = arr
    if x2 <= x1 or y2 <= y1:
        raise InputError(
            f"object {oid}: box {arr.tolist()} is empty or inverted; give (x1, y1, x2, y2) with "
            "x2 > x1 and y2 > y1 (right/bottom exclusive)"
        )
    h, w = hw
    if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
        raise InputError(
            f"object {oid}: box {arr.tolist()} lies outside the {w}x{h} image; give a box that overlaps it"
        )
    if slack is not None:
        mx, my = slack * w, slack * h
        if x1 < -mx or y1 < -my or x2 > w + mx or y2 > h + my:
            raise InputError(
                f"object {oid}: box {arr.tolist()} reaches far outside the {w}x{h} image (more than "
                f"{slack:.0%} of a side past its border); give 0 <= x1 < x2 <= {w} and 0 <= y1 < y2 <= {h} "
                "in this image's pixels"
            )
    # detectors routinely return boxes a little past the border: clip rather than refuse
    return np.array([max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))])


# ----------------------------------------------------------------------------- the engine
class ImageSegmenter:
    """Interactive SAM2 on still images (see the module docstring and docs/samal.md).

    ``model`` is a registry name/alias, Hugging Face id or config (built with
    :func:`dl_utils.sam2_loader.build_sam2_model`), or an already built ``SAM2Base`` module (then
    ``checkpoint``/``image_size``/``device`` must be left out). ``multimask``: ``"auto"`` (three
    candidates and the best by predicted IoU for a single point without box or mask, one output
    otherwise), ``True`` or ``False``. ``refine``: feed an object's last logits back on its next call.

    ``dtype``: ``"bf16"``, ``"fp16"`` or ``"fp32"`` (default bf16 on CUDA, fp32 elsewhere), run as
    autocast around upstream's predictor the way its demos do, recorded in each result's provenance
    (``precision``) and part of the embedding-cache key. ``compile=True`` builds the image encoder
    under ``torch.compile`` (upstream's ``compile_image_encoder``; the first image compiles); a given
    module must have been built that way. See docs/samal.md, "Precision and the compiled path".
    """

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        checkpoint: Any = None,
        *,
        device: Any = None,
        image_size: int | None = None,
        dtype: Any = None,
        cache_size: int = 8,
        cache_bytes: int | None = None,
        multimask: bool | str = "auto",
        refine: bool = True,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        download: bool = False,
        compile: bool = False,
    ):
        require_sam2()
        if isinstance(model, str):
            model = build_sam2_model(
                model, checkpoint, image_size=image_size, device=device, download=download,
                compile=bool(compile),
            )
        else:
            if not hasattr(model, "sam_mask_decoder"):
                raise InputError(
                    f"model {type(model).__name__} is not a SAM2 network; pass a model name such as "
                    "'sam2.1_hiera_tiny' or a module from dl_utils.sam2_loader.build_sam2_model"
                )
            if checkpoint is not None or device is not None:
                raise InputError(
                    "checkpoint= and device= only apply when the model is given by name; load the "
                    "weights into the module (and move it) before passing it"
                )
            if compile and not is_compiled(model):
                raise InputError(
                    "compile=True only applies when the model is given by name; build the module "
                    "compiled (dl_utils.sam2_loader.build_sam2_model(..., compile=True)) or leave compile out"
                )
            if image_size is not None and image_size != model.image_size:
                raise InputError(
                    f"image_size={image_size} differs from the given model's {model.image_size}; "
                    "build the model with that size"
                )
        if multimask not in ("auto", True, False):
            raise InputError(f"multimask={multimask!r}: use 'auto', True or False")
        self.model = model
        self.model_name: str = getattr(model, "dl_utils_name", type(model).__name__)
        self.image_size: int = int(model.image_size)
        self.device = model.device
        self.dtype = resolve_dtype(self.device, dtype)
        self.multimask = multimask
        self.refine = bool(refine)
        self.cache = EmbeddingCache(cache_size, cache_bytes)
        weights = getattr(model, "dl_utils_sha256", None) or f"id{id(model)}"
        # features computed in another precision are other numbers: never served across modes
        self._model_key = f"{self.model_name}:{weights}:{self.image_size}:{precision_name(self.dtype)}"
        self._pred_kwargs = dict(
            mask_threshold=mask_threshold, max_hole_area=max_hole_area, max_sprinkle_area=max_sprinkle_area
        )
        self.predictor = self._make_predictor(**self._pred_kwargs)
        self._image: np.ndarray | None = None
        self._hw: tuple[int, int] | None = None
        self._frame: int | None = None
        self._current_key: tuple | None = None
        self._logits: dict[int, Any] = {}

    # ------------------------------------------------------------------ image
    def _make_predictor(self, **kwargs: Any):
        return make_image_predictor(
            self.model,
            predictor_cls=_caching_predictor_cls(),
            cache=self.cache,
            model_key=self._model_key,
            **kwargs,
        )

    def set_image(self, image: Any, key: Any = None, *, frame: int | None = None) -> bool:
        """Make ``image`` (RGB ``HxWx3`` uint8 or a PIL image) current; True when served from the cache.

        ``key`` (any hashable, e.g. ``(path, frame)``) replaces the content hash in the cache key when
        the caller already knows the image's identity. ``frame`` is passed on to results.
        Changing image forgets the per-object logits kept for refinement.
        """
        import torch

        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise InputError(
                f"set_image needs an RGB image as an HxWx3 uint8 array, got shape {arr.shape} dtype "
                f"{arr.dtype}; convert it (e.g. cv2.cvtColor(img, cv2.COLOR_BGR2RGB) for OpenCV "
                "images, COLOR_GRAY2RGB / COLOR_RGBA2RGB for grey / RGBA)"
            )
        with torch.no_grad(), autocast_context(self.device, self.dtype):
            hit = self.predictor.set_image(arr, key=key)
        if self.predictor.last_key != self._current_key:
            self._logits.clear()
        self._current_key = self.predictor.last_key
        self._image, self._hw, self._frame = arr, (arr.shape[0], arr.shape[1]), frame
        return hit

    def _require_image(self) -> tuple[int, int]:
        if self._hw is None:
            raise InputError("no image set: call set_image(image) before predicting")
        return self._hw

    def cache_info(self) -> dict[str, int | None]:
        return self.cache.info()

    # ------------------------------------------------------------------ object state
    @property
    def object_ids(self) -> list[int]:
        """Objects whose last logits are kept for refinement on the current image."""
        return list(self._logits)

    def low_res_logits(self, object_id: int) -> np.ndarray:
        """The last low-resolution logits of an object, ``(1, s/4, s/4)`` float32 (s = image_size)."""
        oid = self._check_known(object_id)
        return self._logits[oid].float().cpu().numpy()

    def forget(self, object_id: int | None = None) -> None:
        """Drop the kept logits of one object (or all): its next call starts from its prompts only."""
        if object_id is None:
            self._logits.clear()
            return
        del self._logits[self._check_known(object_id)]

    def _check_known(self, object_id: Any) -> int:
        oid = _object_id(object_id)
        if oid not in self._logits:
            known = ", ".join(map(str, self._logits)) or "none yet"
            raise InputError(
                f"unknown object id {oid}: no prediction for it on the current image (known: {known}); "
                "predict it first"
            )
        return oid

    # ------------------------------------------------------------------ prompts
    def _parse_mask(self, mask: Any, oid: int, hw: tuple[int, int]):
        import torch

        low = self.image_size // 4
        if hasattr(mask, "detach"):
            t = mask.detach()
            arr = None
        else:
            arr = np.asarray(mask)
            t = None
        src: Any = t if t is not None else arr  # exactly one of them is set
        shape = tuple(src.shape)
        is_bool = (t.dtype == torch.bool) if t is not None else (arr.dtype == np.bool_)  # type: ignore[union-attr]
        if is_bool or (arr is not None and np.issubdtype(arr.dtype, np.integer)):
            if shape != hw:
                raise InputError(
                    f"object {oid}: mask is {shape[-1]}x{shape[0]} but the image is {hw[1]}x{hw[0]}; "
                    "give a bool mask of the image size (or the low-res logits from a previous prediction)"
                )
            import cv2

            m = (t.cpu().numpy() if t is not None else src).astype(np.float32)
            m = (m != 0).astype(np.float32)
            # area interpolation keeps partial coverage at the border as fractional logits
            small = cv2.resize(m, (low, low), interpolation=cv2.INTER_AREA)
            logits = small * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
            return torch.from_numpy(logits[None]).to(self.device)
        if shape in ((low, low), (1, low, low)):
            if t is None:
                t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            return t.float().reshape(1, low, low).to(self.device)
        raise InputError(
            f"object {oid}: mask of shape {shape} and dtype {t.dtype if t is not None else arr.dtype}; "  # type: ignore[union-attr]
            f"give a bool mask of the image size {hw[1]}x{hw[0]} or low-res logits of shape "
            f"({low}, {low}) / (1, {low}, {low})"
        )

    def _prompt(
        self,
        oid: int,
        points: Any = None,
        box: Any = None,
        mask: Any = None,
        multimask: bool | str | None = None,
        refine: bool | None = None,
    ) -> _Prompt:
        hw = self._require_image()
        pts = parse_points(points, oid, hw)
        bx = parse_box(box, oid, hw)
        m, kind = None, None
        if mask is not None:
            m, kind = self._parse_mask(mask, oid, hw), "given"
        if pts is None and bx is None and m is None:
            raise InputError(
                f"object {oid}: empty prompt; give points=[[x, y, 1]], a box=(x1, y1, x2, y2) or a mask"
            )
        if m is None and (self.refine if refine is None else refine) and oid in self._logits:
            m, kind = self._logits[oid], "previous"
        mm = self.multimask if multimask is None else multimask
        if mm not in ("auto", True, False):
            raise InputError(f"object {oid}: multimask={mm!r}; use 'auto', True or False")
        if mm == "auto":
            mm = pts is not None and len(pts[0]) == 1 and bx is None and m is None
        return _Prompt(
            oid,
            None if pts is None else pts[0],
            None if pts is None else pts[1],
            bx,
            m,
            kind,
            bool(mm),
        )

    # ------------------------------------------------------------------ decoding
    def _decode(self, group: Sequence[_Prompt]) -> list[tuple[np.ndarray, float, Any]]:
        """One decoder call for prompts of the same structure; (mask, score, logits) per prompt.

        Calls the predictor's own prompt preparation and decoder (``_prep_prompts``/``_predict``, as
        its public ``predict`` does) so the numbers are upstream's, but converts only the chosen
        candidate to numpy instead of all of them.
        """
        import torch

        p0 = group[0]
        coords = labels = boxes = mask_in = None
        # a group holds prompts of one kind: what the first one has, all have
        if p0.coords is not None:
            coords = np.stack([cast(np.ndarray, p.coords) for p in group])
            labels = np.stack([cast(np.ndarray, p.labels) for p in group])
        if p0.box is not None:
            boxes = np.stack([cast(np.ndarray, p.box) for p in group])
        if p0.mask is not None:
            mask_in = torch.stack([p.mask for p in group])  # (B, 1, h, w)
        pred = self.predictor
        with torch.no_grad(), autocast_context(self.device, self.dtype):
            mask_input, ucoords, ulabels, ubox = pred._prep_prompts(coords, labels, boxes, mask_in, True)
            masks, ious, low = pred._predict(
                ucoords, ulabels, ubox, mask_input, p0.multimask, return_logits=False
            )
        ious_np = ious.float().cpu().numpy()  # (B, C)
        best = ious_np.argmax(axis=1) if p0.multimask else np.zeros(len(group), dtype=np.int64)
        rows = torch.arange(len(group), device=masks.device)
        idx = torch.as_tensor(best, device=masks.device)
        chosen = masks[rows, idx].cpu().numpy()  # (B, H, W) bool
        chosen_low = low[rows, idx].float()[:, None]  # (B, 1, h, w), kept on the device
        return [
            (chosen[b], float(ious_np[b, best[b]]), chosen_low[b]) for b in range(len(group))
        ]

    def _provenance(self, **fields: Any) -> Provenance:
        """This segmenter's engine, model, weights and precision, with ``fields`` added."""
        return Provenance(engine="sam2-image", model=self.model_name, checkpoint=weights_sha256(self.model),
                          precision=precision_name(self.dtype), **fields)

    def _run(self, prompts: Sequence[_Prompt], source: Source, scores: Sequence[float] | None = None,
             batch_size: int | None = None) -> list[Instance]:
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p.signature, []).append(i)
        out: list[Instance | None] = [None] * len(prompts)
        for idxs in groups.values():
            step = len(idxs) if not batch_size else int(batch_size)
            for s in range(0, len(idxs), step):
                chunk = idxs[s : s + step]
                for i, (mask, score, low) in zip(chunk, self._decode([prompts[i] for i in chunk])):
                    p = prompts[i]
                    prov = self._provenance(detector_score=None if scores is None else scores[i])
                    self._logits[p.object_id] = low
                    out[i] = Instance(p.object_id, mask=mask, score=score, source=source,
                                      clicks=p.clicks(), provenance=prov)
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ public prediction API
    def predict(
        self,
        points: Any = None,
        box: Any = None,
        mask: Any = None,
        *,
        object_id: int = 1,
        multimask: bool | str | None = None,
        refine: bool | None = None,
    ) -> Instance:
        """Segment one object from points ``[[x, y, 1|0], ...]`` (image pixels), a box, a mask, or all.

        ``mask`` is a bool mask of the image size or low-res logits from a previous prediction; without
        it the object's last logits are used when ``refine`` is on. Returns an :class:`Instance`
        (full-size bool mask, ``score`` = predicted IoU, ``source`` semi-auto, the prompts recorded).
        """
        oid = _object_id(object_id)
        prompt = self._prompt(oid, points, box, mask, multimask, refine)
        return self._run([prompt], Source.SEMI_AUTO)[0]

    def predict_objects(self, prompts: Mapping[int, Mapping[str, Any]]) -> Instances:
        """Several objects at once: ``{object_id: {"points": ..., "box": ..., "mask": ...}}``.

        Objects whose prompts have the same structure share one decoder call.
        """
        if not isinstance(prompts, Mapping):
            raise InputError("predict_objects takes {object_id: {'points': ..., 'box': ..., 'mask': ...}}")
        parsed = []
        for key, pr in prompts.items():
            oid = _object_id(key)
            if not isinstance(pr, Mapping):
                raise InputError(f"object {oid}: prompt must be a dict with points / box / mask, got {pr!r}")
            bad = set(pr) - _PROMPT_KEYS
            if bad:
                raise InputError(
                    f"object {oid}: unknown prompt field(s) {sorted(bad)}; use {sorted(_PROMPT_KEYS)}"
                )
            parsed.append(
                self._prompt(oid, pr.get("points"), pr.get("box"), pr.get("mask"), pr.get("multimask"),
                             pr.get("refine"))
            )
        return Instances(self._run(parsed, Source.SEMI_AUTO), frame=self._frame)

    def predict_boxes(
        self,
        boxes: Any,
        object_ids: Iterable[int] | None = None,
        scores: Iterable[float] | None = None,
        *,
        batch_size: int | None = 64,
    ) -> Instances:
        """Masks for detector boxes ``(N, 4)`` in one batched decoder call (per ``batch_size`` boxes).

        ``object_ids`` default to 1..N; detector ``scores`` are kept in ``provenance.detector_score``
        while ``Instance.score`` is SAM's predicted IoU. Source is ``auto`` (no human prompt).
        """
        hw = self._require_image()
        arr = _as_array(boxes, "boxes", -1) if boxes is not None else np.zeros((0, 4))
        if arr.size == 0:
            return Instances([], frame=self._frame)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise InputError(f"boxes have shape {arr.shape}; give an (N, 4) array of (x1, y1, x2, y2)")
        ids = list(range(1, len(arr) + 1)) if object_ids is None else [_object_id(i) for i in object_ids]
        if len(ids) != len(arr):
            raise InputError(f"{len(arr)} boxes but {len(ids)} object ids; give one id per box")
        sc = None if scores is None else [float(s) for s in scores]
        if sc is not None and len(sc) != len(arr):
            raise InputError(f"{len(arr)} boxes but {len(sc)} scores; give one score per box")
        if batch_size is not None and int(batch_size) < 1:
            raise InputError(f"batch_size={batch_size!r}: use a positive number or None (one call)")
        prompts = [
            _Prompt(oid, None, None, parse_box(b, oid, hw), None, None, False) for oid, b in zip(ids, arr)
        ]
        return Instances(self._run(prompts, Source.AUTO, sc, batch_size), frame=self._frame)

    def segment_everything(self, image: Any = None, *, start_id: int = 1, **kwargs: Any) -> Instances:
        """SAM2's automatic mode on the current image (or ``image``): every mask it finds.

        ``kwargs`` go to ``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator`` (points_per_side,
        pred_iou_thresh, stability_score_thresh, crop_n_layers, min_mask_region_area, ...). Results are
        ordered as upstream returns them, numbered from ``start_id``; ``score`` is the predicted IoU
        and ``provenance.extra`` keeps the grid point, stability score and crop box.
        """
        import torch
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        if image is not None:
            self.set_image(image)
        self._require_image()
        if kwargs.get("output_mode", "binary_mask") != "binary_mask":
            raise InputError(
                f"output_mode={kwargs['output_mode']!r}: segment_everything returns masks as Instances; "
                "leave output_mode out"
            )
        kwargs.pop("output_mode", None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script in SAM2Transforms
                amg = SAM2AutomaticMaskGenerator(self.model, output_mode="binary_mask", **kwargs)
        except (AssertionError, TypeError, ValueError) as e:
            raise InputError(f"segment_everything options {kwargs}: {e or type(e).__name__}") from None
        area = kwargs.get("min_mask_region_area", 0)
        # same transforms as upstream's own predictor, plus the shared embedding cache and the size fix
        amg.predictor = self._make_predictor(max_hole_area=area, max_sprinkle_area=area)
        with torch.no_grad(), autocast_context(self.device, self.dtype):
            records = amg.generate(self._image)
        out = []
        for k, r in enumerate(records):
            out.append(
                Instance(
                    start_id + k,
                    mask=r["segmentation"],
                    score=float(r["predicted_iou"]),
                    source=Source.AUTO,
                    provenance=self._provenance(extra={
                        "point": [float(v) for v in r["point_coords"][0]],
                        "stability_score": float(r["stability_score"]),
                        "crop_box": [float(v) for v in r["crop_box"]],
                        "mode": "segment_everything",
                    }),
                )
            )
        return Instances(out, frame=self._frame)


def _object_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        raise InputError(f"object id {value!r} is not an integer >= 0; use the id of the object to segment")
    return int(value)


__all__ = ["EmbeddingCache", "ImageSegmenter", "MASK_LOGIT_BIAS", "MASK_LOGIT_SCALE", "parse_box", "parse_points",
           "precision_name", "weights_sha256"]
