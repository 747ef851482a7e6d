"""SAM 3 networks assembled from sam3's own classes, every size taken from a :class:`Sam3Spec`.

Why not ``sam3.model_builder``: its builders hard-code the released model (a 32-layer ViT at 1008 px,
a 24-layer text encoder), precompute position encodings with ``device="cuda"`` (so they cannot even
be *constructed* on a CPU-only machine), download the checkpoint from the Hugging Face hub and print
instead of failing on a bad checkpoint. Tests need the same architecture at a size that runs on two
CPU cores, and CPU users need a build that does not reach for CUDA.

So :func:`build_image_model` and :func:`build_video_model` call the very classes, with the very
arguments, that ``build_sam3_image_model`` / ``build_sam3_video_model`` use, except that each size
comes from the spec and every size *derived* from the input resolution (tracker RoPE feature sizes,
the decoder's box-bias grid, the position-encoding caches, the mask-memory interpolation size, the
instance predictor's feature sizes) is computed from ``image_size`` and ``patch_size``, so a small
spec gives a consistent small model. ``OFFICIAL`` reproduces upstream exactly: the same
``state_dict`` key names and shapes (tests/test_sam3al_build.py checks it under the meta device).

The caches upstream computes on ``"cuda"`` at construction are computed here on the build device
(the same ``forward`` fills them, so values are equal); build the model on the device it will run on.
No checkpoint is read here: :mod:`dl_utils.sam3al.checkpoint` loads weights strictly.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from sam3.model.decoder import (
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerDecoderLayerv2,
    TransformerEncoderCrossAttention,
)
from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
from sam3.model.geometry_encoders import SequenceGeometryEncoder
from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
from sam3.model.memory import CXBlock, SimpleFuser, SimpleMaskDownSampler, SimpleMaskEncoder
from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper
from sam3.model.model_misc import MultiheadAttentionWrapper as MultiheadAttention
from sam3.model.necks import Sam3DualViTDetNeck
from sam3.model.position_encoding import PositionEmbeddingSine
from sam3.model.sam1_task_predictor import SAM3InteractiveImagePredictor
from sam3.model.sam3_image import Sam3Image, Sam3ImageOnVideoMultiGPU
from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor
from sam3.model.sam3_video_inference import Sam3VideoInferenceWithInstanceInteractivity
from sam3.model.text_encoder_ve import VETextEncoder
from sam3.model.tokenizer_ve import SimpleTokenizer
from sam3.model.vitdet import ViT
from sam3.model.vl_combiner import SAM3VLBackbone
from sam3.sam.transformer import RoPEAttention

from ..errors import InputError, ModelError

DeviceLike = str | torch.device

# SimpleMaskDownSampler's default total stride (kernel 3, stride 2, four times): upstream's
# interpol_size 1152 is exactly (1008 // 14) * 16, i.e. the mask is resized so that after the
# downsampler it lands on the backbone's feature grid.
MASK_DOWNSAMPLER_TOTAL_STRIDE = 16


@dataclass(frozen=True)
class Sam3Spec:
    """Every size ``sam3.model_builder`` hard-codes. ``Sam3Spec()`` is the released SAM 3.

    Fields are sizes only; behaviour switches (presence token, dot-product scoring, the tracker's
    heuristics) are the released ones and not knobs. ``d_model`` is kept at 256 by any spec meant
    to run: sam3 has a few literal 256s (e.g. the SAM mask decoder's IoU head) that only coincide
    with ``d_model`` in the release.
    """

    image_size: int = 1008
    patch_size: int = 14
    pretrain_img_size: int = 336
    vit_embed_dim: int = 1024
    vit_depth: int = 32
    vit_num_heads: int = 16
    vit_mlp_ratio: float = 4.625
    vit_window_size: int = 24
    vit_global_att_blocks: tuple[int, ...] = (7, 15, 23, 31)
    d_model: int = 256
    num_heads: int = 8
    dim_feedforward: int = 2048
    text_width: int = 1024
    text_heads: int = 16
    text_layers: int = 24
    text_context_length: int = 32
    text_vocab_size: int = 49408
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_queries: int = 200
    geometry_layers: int = 3
    seg_upsampling_stages: int = 3
    tracker_num_maskmem: int = 7
    tracker_mem_dim: int = 64
    tracker_layers: int = 4
    tracker_dim_feedforward: int = 2048

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise InputError(
                f"Sam3Spec: image_size {self.image_size} is not a multiple of patch_size "
                f"{self.patch_size}; pick e.g. {self.patch_size * max(1, self.image_size // self.patch_size)}"
            )
        bad = [b for b in self.vit_global_att_blocks if not 0 <= b < self.vit_depth]
        if bad:
            raise InputError(
                f"Sam3Spec: global attention blocks {bad} do not exist in a ViT of depth {self.vit_depth}"
            )

    @property
    def feat_size(self) -> int:
        """Side of the backbone's stride-``patch_size`` feature grid (72 in the release)."""
        return self.image_size // self.patch_size

    @property
    def maskmem_interpol_size(self) -> int:
        """Mask size fed to the memory downsampler so it ends on the feature grid (1152)."""
        return self.feat_size * MASK_DOWNSAMPLER_TOTAL_STRIDE

    @property
    def sam1_feat_sizes(self) -> list[tuple[int, int]]:
        """Feature sizes of the instance predictor's three levels ((288, 288), (144, 144), (72, 72))."""
        f = self.feat_size
        return [(4 * f, 4 * f), (2 * f, 2 * f), (f, f)]


OFFICIAL = Sam3Spec()


# ---- pieces (one function per model_builder helper, same arguments) -------------------------


def _fill_pos_cache(pe: PositionEmbeddingSine, resolution: int, device: torch.device) -> None:
    """What ``PositionEmbeddingSine(precompute_resolution=...)`` does, on ``device`` not "cuda"."""
    for stride in (4, 8, 16, 32):
        size = (resolution // stride, resolution // stride)
        pe.forward(torch.zeros((1, 1) + size, device=device))
        pe.cache[size] = pe.cache[size].clone().detach()


def _position_encoding(
    num_pos_feats: int, precompute_resolution: int | None, device: torch.device
) -> PositionEmbeddingSine:
    pe = PositionEmbeddingSine(
        num_pos_feats=num_pos_feats, normalize=True, scale=None, temperature=10000,
        precompute_resolution=None,
    )
    if precompute_resolution is not None:
        _fill_pos_cache(pe, precompute_resolution, device)
    return pe


def _mha(spec: Sam3Spec, dropout: float, batch_first: bool | None = None) -> MultiheadAttention:
    if batch_first is None:
        return MultiheadAttention(num_heads=spec.num_heads, dropout=dropout, embed_dim=spec.d_model)
    return MultiheadAttention(
        num_heads=spec.num_heads, dropout=dropout, embed_dim=spec.d_model, batch_first=batch_first
    )


def _vision_backbone(
    spec: Sam3Spec, device: torch.device, enable_inst_interactivity: bool
) -> Sam3DualViTDetNeck:
    position_encoding = _position_encoding(spec.d_model, spec.image_size, device)
    vit = ViT(
        img_size=spec.image_size,
        pretrain_img_size=spec.pretrain_img_size,
        patch_size=spec.patch_size,
        embed_dim=spec.vit_embed_dim,
        depth=spec.vit_depth,
        num_heads=spec.vit_num_heads,
        mlp_ratio=spec.vit_mlp_ratio,
        norm_layer="LayerNorm",
        drop_path_rate=0.1,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=tuple(spec.vit_global_att_blocks),
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=spec.vit_window_size,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
        compile_mode=None,
    )
    return Sam3DualViTDetNeck(
        position_encoding=position_encoding,
        d_model=spec.d_model,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        trunk=vit,
        add_sam2_neck=enable_inst_interactivity,
    )


def _text_encoder(spec: Sam3Spec, bpe_path: str | os.PathLike[str]) -> VETextEncoder:
    path = os.fspath(bpe_path)
    if not os.path.isfile(path):
        raise ModelError(
            f"{path}: BPE vocabulary not found; SAM 3's tokenizer needs bpe_simple_vocab_16e6.txt.gz "
            "(the sam3 wheel does not ship it: take it from the sam3 repository's assets/ folder)"
        )
    tokenizer = SimpleTokenizer(bpe_path=path)
    return VETextEncoder(
        tokenizer=tokenizer,
        d_model=spec.d_model,
        width=spec.text_width,
        heads=spec.text_heads,
        layers=spec.text_layers,
        context_length=spec.text_context_length,
        vocab_size=spec.text_vocab_size,
    )


def _transformer(spec: Sam3Spec, device: torch.device) -> TransformerWrapper:
    encoder_layer = TransformerEncoderLayer(
        activation="relu",
        d_model=spec.d_model,
        dim_feedforward=spec.dim_feedforward,
        dropout=0.1,
        pos_enc_at_attn=True,
        pos_enc_at_cross_attn_keys=False,
        pos_enc_at_cross_attn_queries=False,
        pre_norm=True,
        self_attention=_mha(spec, 0.1, batch_first=True),
        cross_attention=_mha(spec, 0.1, batch_first=True),
    )
    encoder = TransformerEncoderFusion(
        layer=encoder_layer,
        num_layers=spec.encoder_layers,
        d_model=spec.d_model,
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )
    decoder_layer = TransformerDecoderLayer(
        activation="relu",
        d_model=spec.d_model,
        dim_feedforward=spec.dim_feedforward,
        dropout=0.1,
        cross_attention=_mha(spec, 0.1),
        n_heads=spec.num_heads,
        use_text_cross_attention=True,
    )
    decoder = TransformerDecoder(
        layer=decoder_layer,
        num_layers=spec.decoder_layers,
        num_queries=spec.num_queries,
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=spec.d_model,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        # upstream passes resolution/stride only to precompute this cache on "cuda"; the same
        # cache is filled below on the build device
        resolution=None,
        stride=None,
        use_act_checkpoint=True,
        presence_token=True,
    )
    f = spec.feat_size
    decoder.compilable_cord_cache = decoder._get_coords(f, f, device=device)
    decoder.compilable_stored_size = (f, f)
    return TransformerWrapper(encoder=encoder, decoder=decoder, d_model=spec.d_model)


def _dot_product_scoring(spec: Sam3Spec) -> DotProductScoring:
    prompt_mlp = MLP(
        input_dim=spec.d_model,
        hidden_dim=spec.dim_feedforward,
        output_dim=spec.d_model,
        num_layers=2,
        dropout=0.1,
        residual=True,
        out_norm=nn.LayerNorm(spec.d_model),
    )
    return DotProductScoring(d_model=spec.d_model, d_proj=spec.d_model, prompt_mlp=prompt_mlp)


def _segmentation_head(spec: Sam3Spec) -> UniversalSegmentationHead:
    pixel_decoder = PixelDecoder(
        num_upsampling_stages=spec.seg_upsampling_stages,
        interpolation_mode="nearest",
        hidden_dim=spec.d_model,
        compile_mode=None,
    )
    return UniversalSegmentationHead(
        hidden_dim=spec.d_model,
        upsampling_stages=spec.seg_upsampling_stages,
        aux_masks=False,
        presence_head=False,
        dot_product_scorer=None,
        act_ckpt=True,
        cross_attend_prompt=_mha(spec, 0),
        pixel_decoder=pixel_decoder,
    )


def _cx_block(spec: Sam3Spec) -> CXBlock:
    return CXBlock(
        dim=spec.d_model, kernel_size=7, padding=3, layer_scale_init_value=1.0e-06, use_dwconv=True
    )


def _geometry_encoder(spec: Sam3Spec, device: torch.device) -> SequenceGeometryEncoder:
    geo_layer = TransformerEncoderLayer(
        activation="relu",
        d_model=spec.d_model,
        dim_feedforward=spec.dim_feedforward,
        dropout=0.1,
        pos_enc_at_attn=False,
        pre_norm=True,
        self_attention=_mha(spec, 0.1, batch_first=False),
        pos_enc_at_cross_attn_queries=False,
        pos_enc_at_cross_attn_keys=True,
        cross_attention=_mha(spec, 0.1, batch_first=False),
    )
    return SequenceGeometryEncoder(
        pos_enc=_position_encoding(spec.d_model, None, device),
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=spec.d_model,
        num_layers=spec.geometry_layers,
        layer=geo_layer,
        use_act_ckpt=True,
        add_cls=True,
        add_post_encode_proj=True,
    )


def _tracker(
    spec: Sam3Spec, device: torch.device, apply_temporal_disambiguation: bool
) -> Sam3TrackerPredictor:
    """``model_builder.build_tracker(with_backbone=False)`` at the spec's sizes."""
    mask_downsampler = SimpleMaskDownSampler(
        embed_dim=spec.d_model,
        kernel_size=3,
        stride=2,
        padding=1,
        total_stride=MASK_DOWNSAMPLER_TOTAL_STRIDE,
        interpol_size=[spec.maskmem_interpol_size, spec.maskmem_interpol_size],
    )
    maskmem_backbone = SimpleMaskEncoder(
        out_dim=spec.tracker_mem_dim,
        position_encoding=_position_encoding(spec.tracker_mem_dim, spec.image_size, device),
        mask_downsampler=mask_downsampler,
        fuser=SimpleFuser(layer=_cx_block(spec), num_layers=2),
        in_dim=spec.d_model,
    )
    feat = [spec.feat_size, spec.feat_size]
    self_attention = RoPEAttention(
        embedding_dim=spec.d_model,
        num_heads=1,
        downsample_rate=1,
        dropout=0.1,
        rope_theta=10000.0,
        feat_sizes=list(feat),
        use_fa3=False,
        use_rope_real=False,
    )
    cross_attention = RoPEAttention(
        embedding_dim=spec.d_model,
        num_heads=1,
        downsample_rate=1,
        dropout=0.1,
        kv_in_dim=spec.tracker_mem_dim,
        rope_theta=10000.0,
        feat_sizes=list(feat),
        rope_k_repeat=True,
        use_fa3=False,
        use_rope_real=False,
    )
    encoder_layer = TransformerDecoderLayerv2(
        cross_attention_first=False,
        activation="relu",
        dim_feedforward=spec.tracker_dim_feedforward,
        dropout=0.1,
        pos_enc_at_attn=False,
        pre_norm=True,
        self_attention=self_attention,
        d_model=spec.d_model,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        cross_attention=cross_attention,
    )
    encoder = TransformerEncoderCrossAttention(
        remove_cross_attention_layers=[],
        batch_first=True,
        d_model=spec.d_model,
        frozen=False,
        pos_enc_at_input=True,
        layer=encoder_layer,
        num_layers=spec.tracker_layers,
        use_act_checkpoint=False,
    )
    transformer = TransformerWrapper(encoder=encoder, decoder=None, d_model=spec.d_model)
    return Sam3TrackerPredictor(
        image_size=spec.image_size,
        num_maskmem=spec.tracker_num_maskmem,
        backbone=None,
        backbone_stride=spec.patch_size,
        transformer=transformer,
        maskmem_backbone=maskmem_backbone,
        multimask_output_in_sam=True,
        forward_backbone_per_frame_for_eval=True,
        trim_past_non_cond_mem_for_eval=False,
        multimask_output_for_tracking=True,
        multimask_min_pt_num=0,
        multimask_max_pt_num=1,
        always_start_from_first_ann_frame=False,
        non_overlap_masks_for_mem_enc=False,
        non_overlap_masks_for_output=False,
        max_cond_frames_in_attn=4,
        offload_output_to_cpu_for_eval=False,
        sam_mask_decoder_extra_args={
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": 0.05,
            "dynamic_multimask_stability_thresh": 0.98,
        },
        clear_non_cond_mem_around_input=True,
        fill_hole_area=0,
        use_memory_selection=apply_temporal_disambiguation,
    )


# ---- the two builders ------------------------------------------------------------------------


class _DropPathRatesOnCpu(TorchFunctionMode):
    """Under the meta device, ViT's drop-path schedule (``torch.linspace(...)`` read back with
    ``.item()``) cannot be computed; this mode computes just ``linspace`` on the CPU. Only active
    inside a meta build, so a layout check (``device="meta"``) allocates nothing."""

    def __torch_function__(
        self,
        func: Callable[..., object],
        types: object,
        args: tuple[object, ...] = (),
        kwargs: dict[str, object] | None = None,
    ) -> object:
        kwargs = dict(kwargs or {})
        if func is torch.linspace and kwargs.get("device") is None:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_device(dev: torch.device) -> Iterator[None]:
    """Where the builders construct modules: ``torch.device(dev)``, and for ``meta`` the one
    scalar sam3 reads back during construction computed on the CPU."""
    with torch.device(dev):
        if dev.type == "meta":
            with _DropPathRatesOnCpu():
                yield
        else:
            yield



def build_image_model(
    spec: Sam3Spec = OFFICIAL,
    *,
    bpe_path: str | os.PathLike[str],
    device: DeviceLike = "cpu",
    enable_inst_interactivity: bool = False,
) -> Sam3Image:
    """``build_sam3_image_model(eval_mode=True, enable_segmentation=True)`` at ``spec``'s sizes,
    random weights, on ``device`` (``"meta"`` allocates nothing), in eval mode."""
    dev = torch.device(device)
    with on_device(dev):
        vision = _vision_backbone(spec, dev, enable_inst_interactivity)
        backbone = SAM3VLBackbone(visual=vision, text=_text_encoder(spec, bpe_path), scalp=1)
        inst_predictor = None
        if enable_inst_interactivity:
            inst_predictor = SAM3InteractiveImagePredictor(_tracker(spec, dev, False))
            # upstream hard-codes the 1008-px sizes here
            inst_predictor._bb_feat_sizes = spec.sam1_feat_sizes
        model = Sam3Image(
            backbone=backbone,
            transformer=_transformer(spec, dev),
            input_geometry_encoder=_geometry_encoder(spec, dev),
            segmentation_head=_segmentation_head(spec),
            num_feature_levels=1,
            o2m_mask_predict=True,
            dot_prod_scoring=_dot_product_scoring(spec),
            use_instance_query=False,
            multimask_output=True,
            inst_interactive_predictor=inst_predictor,
            matcher=None,
        )
    return model.eval()


def build_video_model(
    spec: Sam3Spec = OFFICIAL,
    *,
    bpe_path: str | os.PathLike[str],
    device: DeviceLike = "cpu",
    apply_temporal_disambiguation: bool = True,
) -> Sam3VideoInferenceWithInstanceInteractivity:
    """``build_sam3_video_model`` (presence token, image cross-attention in the geometry encoder,
    no compile) at ``spec``'s sizes, random weights, on ``device``, in eval mode."""
    dev = torch.device(device)
    with on_device(dev):
        tracker = _tracker(spec, dev, apply_temporal_disambiguation)
        backbone = SAM3VLBackbone(
            scalp=1,
            visual=_vision_backbone(spec, dev, enable_inst_interactivity=True),
            text=_text_encoder(spec, bpe_path),
        )
        detector = Sam3ImageOnVideoMultiGPU(
            num_feature_levels=1,
            backbone=backbone,
            transformer=_transformer(spec, dev),
            segmentation_head=_segmentation_head(spec),
            semantic_segmentation_head=None,
            input_geometry_encoder=_geometry_encoder(spec, dev),
            use_early_fusion=True,
            use_dot_prod_scoring=True,
            dot_prod_scoring=_dot_product_scoring(spec),
            supervise_joint_box_scores=True,
        )
        # the two branches of build_sam3_video_model differ only in these heuristics
        heuristics = (
            dict(hotstart_delay=15, hotstart_unmatch_thresh=8, hotstart_dup_thresh=8,
                 recondition_every_nth_frame=16)
            if apply_temporal_disambiguation
            else dict(hotstart_delay=0, hotstart_unmatch_thresh=0, hotstart_dup_thresh=0,
                      recondition_every_nth_frame=0)
        )
        model = Sam3VideoInferenceWithInstanceInteractivity(
            detector=detector,
            tracker=tracker,
            score_threshold_detection=0.5,
            assoc_iou_thresh=0.1,
            det_nms_thresh=0.1,
            new_det_thresh=0.7,
            suppress_unmatched_only_within_hotstart=True,
            min_trk_keep_alive=-1,
            max_trk_keep_alive=30,
            init_trk_keep_alive=30,
            suppress_overlapping_based_on_recent_occlusion_threshold=0.7,
            suppress_det_close_to_boundary=False,
            fill_hole_area=16,
            masklet_confirmation_enable=False,
            decrease_trk_keep_alive_for_empty_masklets=False,
            image_size=spec.image_size,
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            compile_model=False,
            **heuristics,
        )
    return model.eval()


__all__ = [
    "MASK_DOWNSAMPLER_TOTAL_STRIDE",
    "OFFICIAL",
    "Sam3Spec",
    "build_image_model",
    "on_device",
    "build_video_model",
]
