"""SAM2's image path split in two: the frozen encoder once per frame, the prompt path per click set.

Fine-tuning trains the prompt encoder and the mask decoder on features the frozen image encoder
computed once (and :class:`~dl_utils.finetune.features.FeatureCache` keeps). For the tuned model to
behave in :class:`dl_utils.samal.ImageSegmenter` as it did in training, both halves here are upstream's
``SAM2ImagePredictor`` code paths, not re-implementations of their idea:

* :func:`encoder` runs ``SAM2ImagePredictor.set_image`` itself (its transforms, ``forward_image``,
  ``no_mem_embed``) and hands the features on as :class:`FrameFeatures`;
* :func:`decode` is ``SAM2ImagePredictor._prep_prompts`` + ``_predict`` without ``no_grad`` (points
  scaled by the original size, a box prepended as two corner points with labels 2 and 3, the same
  prompt-encoder and mask-decoder calls), so gradients flow;
* :func:`predict_mask` adds what ``ImageSegmenter`` does on top: several candidates for a single
  point, the one with the highest predicted IoU kept, logits upscaled to the frame, threshold 0.

The mask decoder's ``conv_s0``/``conv_s1`` run inside ``forward_image`` (they project the backbone's
high-resolution levels before the features are kept), so they belong to the frozen half: training
them would make every cached feature stale. :func:`trainable_parameters` says what trains.

Parity (tests/test_finetune.py): from fp32 features the masks equal upstream's predictor bit for bit;
from the cache's fp16 features they differ on a few pixels along the edges (measured there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from ..annotations import Clicks
from ..errors import InputError
from .features import FrameFeatures

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Modules of SAM2Base that train (the prompt path), and what inside them stays frozen.
TRAINED = ("sam_prompt_encoder", "sam_mask_decoder")
FROZEN_INSIDE = ("sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.")
#: Unfrozen on top with ``train_memory`` (the video path): memory attention and encoder, and the
#: pieces that carry the object pointer and the memories' time encoding into memory attention.
#: ``mask_downsample`` (mask prompts only) gets no gradient from a click-prompted pair, and
#: ``no_mem_embed`` is baked into the cached image features, so both stay frozen.
MEMORY = ("memory_attention", "memory_encoder", "maskmem_tpos_enc", "obj_ptr_proj", "obj_ptr_tpos_proj",
          "no_obj_ptr", "no_obj_embed_spatial")


def trainable_parameters(model: Any, *, memory: bool = False) -> Iterator[tuple[str, "torch.nn.Parameter"]]:
    """``(name, parameter)`` of what fine-tuning changes, in the model's stable order."""
    heads = TRAINED + (MEMORY if memory else ())
    for name, p in model.named_parameters():
        if name.split(".", 1)[0] in heads and not name.startswith(FROZEN_INSIDE):
            yield name, p


def freeze_for_finetuning(model: Any, *, memory: bool = False) -> list[str]:
    """Set ``requires_grad`` so only :func:`trainable_parameters` train; returns their names."""
    names = {n for n, _ in trainable_parameters(model, memory=memory)}
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    return sorted(names)


def encoder(model: Any) -> Callable[[np.ndarray], FrameFeatures]:
    """A ``compute`` for ``FeatureCache.get``: upstream ``set_image`` on ``model``, fp32 features.

    The cache stores them as fp16; :func:`encode_fp32` keeps them exact for the parity check.
    """
    import torch

    from ..sam2_loader import make_image_predictor

    predictor = make_image_predictor(model)

    def compute(image: np.ndarray) -> FrameFeatures:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"image of shape {image.shape} and dtype {image.dtype}: SAM2 wants RGB uint8 HxWx3")
        with torch.no_grad():
            predictor.set_image(image)
        feats = predictor._features
        out = FrameFeatures(
            image_embed=feats["image_embed"][0].detach().float().cpu().numpy(),
            high_res_feats=tuple(t[0].detach().float().cpu().numpy() for t in feats["high_res_feats"]),
            orig_hw=(int(image.shape[0]), int(image.shape[1])),
        )
        predictor.reset_predictor()
        return out

    return compute


def encode_fp32(model: Any, image: np.ndarray) -> FrameFeatures:
    """The frame's features in fp32 (no cache): the exact path, for parity checks and small jobs."""
    return encoder(model)(image)


@dataclass
class Decoded:
    """The decoder's output for one prompt: logits ``(1, C, s/4, s/4)`` and predicted IoU ``(1, C)``
    (``C`` = 3 candidates for a single point, else 1), plus the frame size to upscale to."""

    low_res: "torch.Tensor"
    iou: "torch.Tensor"
    orig_hw: tuple[int, int]
    multimask: bool


def wants_multimask(clicks: Clicks) -> bool:
    """A single point with nothing else is ambiguous: ask for three candidates (as samal does)."""
    return len(clicks.points) == 1 and clicks.box is None


def _prompt_tensors(clicks: Clicks, orig_hw: tuple[int, int], resolution: int,
                    device: "torch.device") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Points and box as the prompt encoder's ``(coords (1, N, 2), labels (1, N))`` in input pixels:
    upstream's ``transform_coords(normalize=True)`` and its box-first concatenation."""
    import torch

    h, w = orig_hw
    coords: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    if clicks.box is not None:
        box = torch.as_tensor(clicks.box, dtype=torch.float, device=device).reshape(-1, 2, 2).clone()
        box[..., 0] = box[..., 0] / w
        box[..., 1] = box[..., 1] / h
        coords.append(box * resolution)
        labels.append(torch.tensor([[2, 3]], dtype=torch.int, device=device))
    if clicks.points:
        pts = torch.as_tensor([p[:2] for p in clicks.points], dtype=torch.float, device=device).clone()
        pts[..., 0] = pts[..., 0] / w
        pts[..., 1] = pts[..., 1] / h
        coords.append((pts * resolution)[None])
        labels.append(torch.as_tensor([[int(p[2]) for p in clicks.points]], dtype=torch.int, device=device))
    if not coords:
        raise InputError("decode: the clicks hold no point and no box; give at least one")
    return torch.cat(coords, dim=1), torch.cat(labels, dim=1)


def decode(model: Any, features: dict[str, Any], orig_hw: tuple[int, int], clicks: Clicks,
           *, multimask: bool | None = None) -> Decoded:
    """Prompt encoder + mask decoder on one frame's features (``FrameFeatures.to_torch`` layout),
    differentiable. ``multimask=None`` decides as :func:`wants_multimask`."""
    mm = wants_multimask(clicks) if multimask is None else bool(multimask)
    device = features["image_embed"].device
    coords, labels = _prompt_tensors(clicks, orig_hw, int(model.image_size), device)
    sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    low_res, iou, _, _ = model.sam_mask_decoder(
        image_embeddings=features["image_embed"],
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=mm,
        repeat_image=False,
        high_res_features=list(features["high_res_feats"]),
    )
    return Decoded(low_res, iou, orig_hw, mm)


def upscale(low_res: "torch.Tensor", hw: tuple[int, int]) -> "torch.Tensor":
    """Logits at ``hw`` as ``SAM2Transforms.postprocess_masks`` makes them (bilinear, no corners)."""
    import torch.nn.functional as F

    return F.interpolate(low_res.float(), hw, mode="bilinear", align_corners=False)


def predict_mask(model: Any, features: FrameFeatures | dict[str, Any], clicks: Clicks) -> tuple[np.ndarray, float]:
    """The mask ``ImageSegmenter.predict`` gives for ``clicks`` (bool, frame size) and its predicted
    IoU: the best of three candidates for a single point, threshold 0."""
    import torch

    if isinstance(features, FrameFeatures):
        orig_hw = features.orig_hw
        device = next(model.parameters()).device
        tensors = features.to_torch(device)
    else:
        tensors, orig_hw = features, tuple(features["orig_hw"])
    with torch.no_grad():
        out = decode(model, tensors, orig_hw, clicks)
        k = int(torch.argmax(out.iou[0])) if out.multimask else 0
        logits = upscale(out.low_res[:, k : k + 1], orig_hw)
    return (logits[0, 0] > 0.0).cpu().numpy(), float(out.iou[0, k])


__all__ = [
    "Decoded",
    "FROZEN_INSIDE",
    "MEMORY",
    "TRAINED",
    "decode",
    "encode_fp32",
    "encoder",
    "freeze_for_finetuning",
    "predict_mask",
    "trainable_parameters",
    "upscale",
    "wants_multimask",
]
