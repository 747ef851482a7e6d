"""A view of upstream's ``SAM2VideoPredictor``: shared weights, the CPU dtype fix, IoU capture."""

from __future__ import annotations

import functools
from typing import Any

from ..errors import InputError
from ..sam2_loader import require_sam2


@functools.cache
def _guard_cls():
    import torch

    class _MemoryDtypeGuard(torch.nn.Module):
        """Feeds memory attention memories in the dtype of the current frame's features.

        Upstream stores spatial memories as bfloat16 (``_run_single_frame_inference``); when a frame's
        memory holds no float32 object pointer (a conditioning frame only "in the future": objects
        prompted on different frames, or reverse tracking, sam2 issues #308/#577), ``torch.cat``
        keeps bfloat16 and the float32 linear layers fail on CPU. Where upstream works, ``torch.cat``
        already promoted the memory to float32 and this cast changes nothing (bf16 -> fp32 is exact).
        """

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
            want = (curr[0] if isinstance(curr, (list, tuple)) else curr).dtype
            if memory.dtype != want:
                memory = memory.to(want)
            if memory_pos is not None and memory_pos.dtype != want:
                memory_pos = memory_pos.to(want)
            return self.inner(curr=curr, memory=memory, curr_pos=curr_pos, memory_pos=memory_pos,
                              num_obj_ptr_tokens=num_obj_ptr_tokens)

    return _MemoryDtypeGuard


class _EngineMixin:
    """Keeps the predicted IoU of the last decoded frame (upstream's ``track_step`` drops it) and
    routes a tracked frame to SAMURAI's seams while the session has set ``dl_samurai`` for it.

    ``dl_samurai`` is a per-call context (which object's filter, the frame size, its memory frames):
    the session sets it around one ``_run_single_frame_inference`` and clears it after, so the
    engine is plain SAM2 at every other moment (prompts, ``tracker="sam2"`` sessions) and the
    shared model the caller passed is never changed (the engine is a per-session view).
    """

    dl_last_iou: Any = None
    dl_samurai: Any = None  # samurai.SamuraiCall | None
    dl_memory_dtype: Any = None  # torch.float16 when the session computes in fp16 (see _store_memory)

    def _store_memory(self, maskmem_features: Any) -> Any:
        """Upstream's stored memory, in the dtype fp16 autocast can read back (fp16 sessions only).

        Upstream always stores spatial memories as bfloat16 (``_run_single_frame_inference``,
        ``_run_memory_encoder``), while the object pointers come out of fp16 autocast as float16:
        ``_prepare_memory_conditioned_features`` then ``torch.cat``s bfloat16 with float16, which
        autocast refuses ("Unexpected floating ScalarType in at::autocast::prioritize"), so raw
        upstream cannot track a second frame under fp16 autocast, on CUDA or CPU. An fp16 session
        stores the memory as float16 instead: the values are upstream's bfloat16 ones (8 significant
        bits fit in float16's 11: exact for magnitudes in float16's normal range, 6e-5 to 65504),
        clamped to that range's ends first so an outlier cannot become inf; the size is bfloat16's.
        bf16 and fp32 sessions leave ``dl_memory_dtype`` None and store exactly what upstream stores.
        """
        want = self.dl_memory_dtype
        if maskmem_features is None or want is None or maskmem_features.dtype == want:
            return maskmem_features
        import torch

        top = torch.finfo(want).max
        return maskmem_features.clamp(-top, top).to(want)

    def _run_single_frame_inference(self, *args, **kwargs):
        out, pred_masks_gpu = super()._run_single_frame_inference(*args, **kwargs)
        out["maskmem_features"] = self._store_memory(out["maskmem_features"])
        return out, pred_masks_gpu

    def _run_memory_encoder(self, *args, **kwargs):
        maskmem_features, maskmem_pos_enc = super()._run_memory_encoder(*args, **kwargs)
        return self._store_memory(maskmem_features), maskmem_pos_enc

    def _track_step(self, *args, **kwargs):
        current_out, sam_outputs, high_res, pix_feat = super()._track_step(*args, **kwargs)
        call = self.dl_samurai
        if call is not None and call.choice is not None:
            # the kept candidate is SAMURAI's, not necessarily the argmax
            self.dl_last_iou = sam_outputs[2].detach().float()[:, call.choice.index]
        else:
            # sam_outputs[2]: (B, 3) for multimask (the kept mask is the argmax), (B, 1) otherwise;
            # for a mask prompt used as output upstream sets it to 1
            self.dl_last_iou = sam_outputs[2].detach().float().max(dim=-1).values
        return current_out, sam_outputs, high_res, pix_feat

    def _forward_sam_heads(self, backbone_features, point_inputs=None, mask_inputs=None,
                           high_res_features=None, multimask_output=False):
        call = self.dl_samurai
        if call is None or mask_inputs is not None:
            return super()._forward_sam_heads(backbone_features, point_inputs=point_inputs,
                                              mask_inputs=mask_inputs, high_res_features=high_res_features,
                                              multimask_output=multimask_output)
        from .samurai import samurai_sam_heads

        return samurai_sam_heads(self, call, backbone_features, point_inputs=point_inputs,
                                 high_res_features=high_res_features, multimask_output=multimask_output)

    def _prepare_memory_conditioned_features(self, frame_idx, is_init_cond_frame, current_vision_feats,
                                             current_vision_pos_embeds, feat_sizes, output_dict, num_frames,
                                             track_in_reverse=False):
        call = self.dl_samurai
        if call is None or is_init_cond_frame or self.num_maskmem == 0:
            return super()._prepare_memory_conditioned_features(
                frame_idx, is_init_cond_frame, current_vision_feats, current_vision_pos_embeds, feat_sizes,
                output_dict, num_frames, track_in_reverse)
        from .samurai import samurai_memory_features

        return samurai_memory_features(self, call, frame_idx, current_vision_feats, current_vision_pos_embeds,
                                       feat_sizes, output_dict, num_frames, track_in_reverse)


@functools.cache
def _engine_cls(base: type) -> type:
    return type(f"DlUtils{base.__name__}", (_EngineMixin, base), {})


def make_engine(sam_model: Any, *, dtype: Any = None) -> Any:
    """A view of a ``SAM2VideoPredictor`` sharing its weights, with the dtype guard and IoU capture.

    ``dtype``: the session's compute dtype (a ``torch.dtype``); ``torch.float16`` makes the engine
    store memories as float16 (see ``_EngineMixin._store_memory``), any other leaves upstream's
    bfloat16 storage as it is.

    Built as a new instance of a subclass whose ``__dict__`` is a copy of the model's: parameters,
    buffers and submodules are the same objects (no copy), but swapping ``memory_attention`` for the
    guard, or setting attributes, never changes the model the caller passed (tests compare against
    raw upstream on that very model).
    """
    require_sam2()
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    if not isinstance(sam_model, SAM2VideoPredictor):
        raise InputError(
            f"sam_model is a {type(sam_model).__name__}, not a SAM2VideoPredictor; build it with "
            "dl_utils.sam2_loader.build_sam2_model(name, video=True) or leave sam_model out"
        )
    base: type = type(sam_model)
    cls: Any = _engine_cls(base)
    eng = cls.__new__(cls)
    eng.__dict__.update(sam_model.__dict__)
    eng._modules = dict(sam_model._modules)
    inner = sam_model._modules["memory_attention"]
    eng._modules["memory_attention"] = _guard_cls()(inner)
    import torch

    eng.dl_memory_dtype = torch.float16 if dtype == torch.float16 else None
    return eng
