"""SAM2's video path for fine-tuning the memory: a conditioning frame with clicks, a later frame without.

``train_memory`` teaches memory attention and the memory encoder what people's masks look like a few
frames after a click. A pair ``(t, t+k)`` of one object's masks in one video is one example: frame
``t`` is a conditioning frame (sampled clicks, as a person clicks in ``sam2al``), its mask goes
through the memory encoder, and frame ``t+k`` is predicted from memory attention over that memory
with no click; the loss is on frame ``t+k``.

So that :class:`dl_utils.sam2al.VideoSession` (upstream ``SAM2VideoPredictor``) behaves as trained,
:func:`pair_forward` replays the predictor's own calls, not a re-implementation of them:

* the conditioning frame is ``add_new_points_or_box``: ``SAM2Base.track_step`` with
  ``is_init_cond_frame=True`` and no memory encoding, then (``propagate_in_video_preflight``) the
  low-res logits, hole-filled when the model fills holes, upscaled and encoded by
  ``_encode_new_memory`` with ``is_mask_from_pts=True``;
* the predicted frame is one ``propagate_in_video`` step: ``SAM2Base._track_step`` (the body of
  ``track_step``; it also returns the IoU predictions the loss needs) with the conditioning output as
  the only memory.

Features come from the image path's cache (:class:`~dl_utils.finetune.features.FrameFeatures`), so a
frame is encoded once for both kinds of example: the two high-resolution levels are the backbone's
(after ``conv_s0``/``conv_s1``) as they are, the top level is ``image_embed`` minus ``no_mem_embed``
(what ``set_image`` added), and the positional encodings depend only on the feature shapes (the
neck's own encoder computes them). ``no_mem_embed`` therefore stays frozen: training it would make every
cached feature stale. The networks' top-level module stays in eval mode, so memory encoding binarises
the clicked frame's mask exactly as inference does.

Parity (tests/test_finetune.py): from fp32 features the predicted frame's logits equal upstream's
video predictor up to float rounding (the predictor stores memories in bfloat16; measured there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..annotations import Clicks
from .features import FrameFeatures
from .forward import _prompt_tensors

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: The most frames between a pair's conditioning frame and its predicted frame.
MAX_GAP = 8


@dataclass
class VideoFeatures:
    """One frame in the layout ``SAM2Base._prepare_backbone_features`` returns (``(HW, 1, C)`` each)."""

    vision_feats: list["torch.Tensor"]
    vision_pos: list["torch.Tensor"]
    feat_sizes: list[tuple[int, int]]
    orig_hw: tuple[int, int]


@dataclass
class PairOutput:
    """The predicted frame's decoder output: candidates ``(1, C, s/4, s/4)``, their IoU ``(1, C)``,
    the object score ``(1, 1)``, and the chosen mask ``(1, 1, s/4, s/4)`` (what the predictor keeps)."""

    multimasks: "torch.Tensor"
    ious: "torch.Tensor"
    object_score: "torch.Tensor"
    low_res: "torch.Tensor"


def _position(model: Any, shape: tuple[int, ...], device: "torch.device") -> "torch.Tensor":
    """The neck's sine encoding for a ``(C, h, w)`` level, flattened to ``(hw, 1, C)`` (upstream's
    encoder caches it per size, so this costs a lookup after the first frame)."""
    import torch

    with torch.no_grad():
        x = torch.zeros((1, *shape), device=device)
        return model.image_encoder.neck.position_encoding(x).to(x.dtype).flatten(2).permute(2, 0, 1)


def video_features(model: Any, features: FrameFeatures, device: "torch.device") -> VideoFeatures:
    """The backbone features the video predictor would use, rebuilt from the image path's features."""
    t = features.to_torch(device)
    levels = [*t["high_res_feats"], t["image_embed"]]
    if getattr(model, "directly_add_no_mem_embed", False):
        top = levels[-1].flatten(2).permute(2, 0, 1) - model.no_mem_embed.detach()
        levels[-1] = top.permute(1, 2, 0).reshape(levels[-1].shape)
    feats = [x.flatten(2).permute(2, 0, 1) for x in levels]
    pos = [_position(model, tuple(int(s) for s in x.shape[1:]), device) for x in levels]
    sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in levels]
    return VideoFeatures(feats, pos, sizes, features.orig_hw)


def _memory(model: Any, cond: VideoFeatures, clicks: Clicks) -> dict[str, Any]:
    """The conditioning frame's output with its memory, as ``add_new_points_or_box`` + preflight."""
    import torch.nn.functional as F

    coords, labels = _prompt_tensors(clicks, cond.orig_hw, int(model.image_size), cond.vision_feats[-1].device)
    out = model.track_step(
        frame_idx=0, is_init_cond_frame=True, current_vision_feats=cond.vision_feats,
        current_vision_pos_embeds=cond.vision_pos, feat_sizes=cond.feat_sizes,
        point_inputs={"point_coords": coords, "point_labels": labels}, mask_inputs=None,
        output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}, num_frames=1,
        track_in_reverse=False, run_mem_encoder=False)
    low = out["pred_masks"]
    if int(getattr(model, "fill_hole_area", 0) or 0) > 0:
        from sam2.utils.misc import fill_holes_in_mask_scores

        low = fill_holes_in_mask_scores(low, model.fill_hole_area)
    size = int(model.image_size)
    high = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    score = out.get("object_score_logits")
    if score is None:  # track_step keeps it only in eval mode; the heads compute it either way
        score = low.new_ones((low.shape[0], 1))
    feats, pos = model._encode_new_memory(current_vision_feats=cond.vision_feats, feat_sizes=cond.feat_sizes,
                                          pred_masks_high_res=high, object_score_logits=score,
                                          is_mask_from_pts=True)
    out.update(pred_masks=low, maskmem_features=feats, maskmem_pos_enc=pos, object_score_logits=score)
    return out


def pair_forward(model: Any, cond: VideoFeatures, clicks: Clicks, target: VideoFeatures, gap: int) -> PairOutput:
    """Frame ``gap`` frames after ``cond`` predicted from ``cond``'s memory alone (differentiable)."""
    memory = _memory(model, cond, clicks)
    _, sam, _, _ = model._track_step(
        gap, False, target.vision_feats, target.vision_pos, target.feat_sizes, None, None,
        {"cond_frame_outputs": {0: memory}, "non_cond_frame_outputs": {}}, gap + 1, False, None)
    multimasks, _, ious, low_res, _, _, score = sam
    return PairOutput(multimasks, ious, score, low_res)


__all__ = ["MAX_GAP", "PairOutput", "VideoFeatures", "pair_forward", "video_features"]
