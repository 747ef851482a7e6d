"""One vision-backbone pass per frame for all phrases of a SAM 3 caption, and quiet sam3 progress bars.

sam3 holds one text prompt per inference state, so :class:`~dl_utils.sam3al.video.Sam3VideoSession`
runs a caption of P phrases as P states advanced in lockstep. Each state's detector computes the
frame's image features itself (``Sam3Image._get_img_feats`` calls
``model.detector.backbone.forward_image(image)``), so the ViT trunk, by far the most expensive part
of a frame, runs P times on the same pixels. :func:`shared_image_backbone` makes every call after
the first on the same input return the first call's outputs, so the trunk runs once per frame.

Why this is exact (bit-identical to not sharing):

- the cache is keyed on the input's **content** (shape, dtype, device, then ``torch.equal``
  against a private copy of the input), never on its address: freed storage is reused, so a new
  frame can sit at an old frame's ``data_ptr``; and the copy means an input changed in place after
  the call cannot make a stale entry look current;
- it is also keyed on everything else ``forward_image`` depends on: the autocast state of the input's
  device type, grad/inference mode, train/eval mode and the version counters of the backbone's
  parameters (a weight load or an optimizer step changes them);
- a hit gets fresh ``dict``/``list``/``tuple`` containers around the *same* tensors: sam3's callers
  do replace entries of those containers (``Sam3TrackerBase.forward_image`` assigns
  ``backbone_out["backbone_fpn"][0] = conv_s0(...)``), and one phrase's assignment must not reach
  another's. No caller changes the tensors themselves in place (checked through sam3 0.1.4: the
  only in-place op on image features, ``encoder.py``'s ``x.add_(pooled_text)``, runs on the copies
  ``_get_img_feats`` makes with ``x[img_ids]``, an advanced index; the tests hold a clone of every
  cached output and compare it after whole runs);
- while autograd records (grad mode on), nothing is shared: two callers would share one graph.

:func:`quiet_sam3_progress` silences the ``tqdm`` bars sam3's video code draws itself (its
``propagate_in_video`` loop prints a bar of its own beside ours).
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import InputError

# sam3 modules that draw tqdm bars during video inference (propagation, refinement)
SAM3_PROGRESS_MODULES = ("sam3.model.sam3_video_inference", "sam3.model.sam3_tracking_predictor")

_LOCK = threading.RLock()


class ImageBackbone(Protocol):
    """What sharing needs of sam3's ``SAM3VLBackbone``: ``forward_image(image) -> features``."""

    def forward_image(self, samples: Any) -> Any: ...


@dataclass
class BackboneShareStats:
    """What one sharing context did: ``misses`` is how many times the trunk really ran."""

    hits: int = 0
    misses: int = 0  # computed by the backbone (and cached)
    bypassed: int = 0  # computed without caching (grad mode on: outputs must not be shared)

    @property
    def calls(self) -> int:
        return self.hits + self.misses + self.bypassed


@dataclass
class _Entry:
    image: Any  # a private copy of the input (the caller may reuse or change its tensor)
    context: tuple[Any, ...]
    outputs: Any


def _fresh_containers(x: Any) -> Any:
    """New dicts/lists/tuples all the way down, the same tensors (and other leaves) inside."""
    if isinstance(x, dict):
        items = [(k, _fresh_containers(v)) for k, v in x.items()]
        return dict(items) if type(x) is dict else type(x)(items)
    if isinstance(x, list):
        return [_fresh_containers(v) for v in x]
    if isinstance(x, tuple):
        vals = [_fresh_containers(v) for v in x]
        return type(x)(*vals) if hasattr(x, "_fields") else tuple(vals)
    return x


class _SharedForward:
    """Stands in for the backbone's ``forward_image`` while sharing is on (an instance attribute,
    so the class and other backbones are untouched)."""

    def __init__(self, backbone: Any, original: Callable[..., Any], had_attr: bool, keep: int):
        self.backbone = backbone
        self.original = original  # what ``backbone.forward_image`` was (bound method or a patch)
        self.had_attr = had_attr  # it was an instance attribute (someone else's patch): put it back
        self.keep = keep
        self.depth = 1
        self.closed = False
        self.stats = BackboneShareStats()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._serial = 0
        self._lock = threading.Lock()

    def _context(self, image: Any) -> tuple[Any, ...] | None:
        """Everything besides the pixels that ``forward_image`` depends on; None: do not share."""
        import torch

        if torch.is_grad_enabled():
            return None
        dev = image.device.type
        autocast: tuple[bool, Any]
        try:
            autocast = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        except (RuntimeError, TypeError):  # a device type without autocast
            autocast = (False, None)
        versions = 0
        for p in self.backbone.parameters():
            try:
                versions += p._version
            except RuntimeError:  # an inference tensor has no version counter (never changed in place)
                pass
        return (autocast, torch.is_inference_mode_enabled(), bool(self.backbone.training), versions)

    def _find(self, image: Any, context: tuple[Any, ...]) -> _Entry | None:
        import torch

        for key, e in reversed(self._entries.items()):
            if (e.context == context and e.image.shape == image.shape and e.image.dtype == image.dtype
                    and e.image.device == image.device and torch.equal(e.image, image)):
                self._entries.move_to_end(key)
                return e
        return None

    def __call__(self, samples: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        if self.closed or args or kwargs or not isinstance(samples, torch.Tensor):
            return self.original(samples, *args, **kwargs)
        context = self._context(samples)
        if context is None:
            with self._lock:
                self.stats.bypassed += 1
            return self.original(samples)
        with self._lock:
            hit = self._find(samples, context)
            if hit is not None:
                self.stats.hits += 1
                return _fresh_containers(hit.outputs)
        # computed outside the lock: another thread's frame need not wait for this one
        image = samples.detach().clone()
        outputs = self.original(samples)
        with self._lock:
            self.stats.misses += 1
            if not self.closed:
                self._serial += 1
                self._entries[self._serial] = _Entry(image, context, outputs)
                while len(self._entries) > self.keep:
                    self._entries.popitem(last=False)
        return _fresh_containers(outputs)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._entries.clear()


def image_backbone(model: Any) -> ImageBackbone:
    """The backbone whose ``forward_image`` a SAM 3 model's detector calls: ``model.detector.backbone``
    for a video model, ``model.backbone`` for an image model, or ``model`` itself."""
    for cand in (getattr(getattr(model, "detector", None), "backbone", None), getattr(model, "backbone", None),
                 model):
        if cand is not None and callable(getattr(cand, "forward_image", None)) and hasattr(cand, "parameters"):
            return cand
    raise InputError(
        f"{type(model).__name__} has no SAM 3 image backbone (model.detector.backbone.forward_image); "
        "pass a model from dl_utils.sam3al.build"
    )


@contextlib.contextmanager
def shared_image_backbone(model: Any, *, keep: int = 2) -> Iterator[BackboneShareStats]:
    """Inside the block, ``forward_image`` on pixels it has just seen returns that call's outputs.

    ``keep``: how many distinct inputs (frames) stay cached, least recently used dropped first. Two
    cover the lockstep phrases of a session (sam3's detector builds frame t+1 ahead while on frame
    t). With sam3's hot-start delay (``model.hotstart_delay``, 15 in the released model with
    temporal disambiguation) a phrase's first propagation step computes frames 2..hotstart_delay + 1
    before the next phrase starts; those are shared only when ``keep`` holds them all
    (``keep=model.hotstart_delay + 2`` does), at the memory of that many frames' features (about
    223 MB each at the released size, see docs/sam3al_backbone.md). Earlier and later frames are
    shared with the default.

    Re-entrant (an inner block on the same model shares the outer block's cache, its ``keep`` is
    the larger of the two); the original ``forward_image`` is put back when the outermost block
    ends, on an error too. Yields the sharing's counts (:class:`BackboneShareStats`).
    """
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise InputError(f"keep={keep!r}: give the number of frames to keep cached (1 or more)")
    backbone = image_backbone(model)
    with _LOCK:
        current = backbone.__dict__.get("forward_image")
        if isinstance(current, _SharedForward) and not current.closed:
            shared = current
            shared.depth += 1
            shared.keep = max(shared.keep, keep)
        else:
            had_attr = "forward_image" in backbone.__dict__
            shared = _SharedForward(backbone, backbone.forward_image, had_attr, keep)
            backbone.forward_image = shared  # type: ignore[method-assign]
    try:
        yield shared.stats
    finally:
        with _LOCK:
            shared.depth -= 1
            if shared.depth == 0:
                shared.close()
                if backbone.__dict__.get("forward_image") is shared:
                    if shared.had_attr:
                        backbone.forward_image = shared.original  # type: ignore[method-assign]
                    else:
                        del backbone.__dict__["forward_image"]
                # else: someone patched over it and did not restore; left to them (ours passes through)


_quiet_depth = 0
_quiet_saved: dict[str, Any] = {}


def _quiet(original: Callable[..., Any]) -> Callable[..., Any]:
    def tqdm_disabled(*args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True
        return original(*args, **kwargs)

    tqdm_disabled.__wrapped__ = original  # type: ignore[attr-defined]
    return tqdm_disabled


@contextlib.contextmanager
def quiet_sam3_progress() -> Iterator[None]:
    """Inside the block sam3's own video progress bars are not drawn (our session draws one).

    Only the ``tqdm`` name of sam3's video modules (:data:`SAM3_PROGRESS_MODULES`) is replaced, by
    tqdm called with ``disable=True`` (the loops still iterate the same); tqdm itself and every
    other bar, ours from ``tqdm.auto`` included, are untouched. The patch is per module, so it holds
    for every thread while any block is open (re-entrant: the last block to end restores it).
    """
    import importlib

    global _quiet_depth
    with _LOCK:
        if _quiet_depth == 0:
            for name in SAM3_PROGRESS_MODULES:
                mod: Any = importlib.import_module(name)
                _quiet_saved[name] = mod.tqdm
                mod.tqdm = _quiet(mod.tqdm)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _LOCK:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                for name, original in _quiet_saved.items():
                    setattr(importlib.import_module(name), "tqdm", original)
                _quiet_saved.clear()


__all__ = ["SAM3_PROGRESS_MODULES", "BackboneShareStats", "ImageBackbone", "image_backbone",
           "quiet_sam3_progress", "shared_image_backbone"]
