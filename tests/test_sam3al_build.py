"""dl_utils.sam3al.build: OFFICIAL is sam3.model_builder's model key for key, shape for shape
(both built on the meta device, so nothing is allocated), and the tiny spec runs on CPU."""

from __future__ import annotations

import pytest

from tests.sam3_fixtures import (  # noqa: F401
    requires_sam3,
    sam3_on_device,
    tiny_bpe_path,
    tiny_sam3_video_model,
    tiny_spec,
)

pytestmark = requires_sam3


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _assert_same(ours: dict, theirs: dict) -> None:
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    assert not missing and not extra, (missing[:5], extra[:5])
    diff = [(k, ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]]
    assert not diff, diff[:5]


@pytest.mark.parametrize("inst", [False, True])
def test_official_image_model_matches_model_builder(inst: bool) -> None:
    import torch
    from sam3 import model_builder

    from dl_utils.sam3al.build import OFFICIAL, build_image_model, on_device

    bpe = str(tiny_bpe_path())
    ours = build_image_model(OFFICIAL, bpe_path=bpe, device="meta", enable_inst_interactivity=inst)
    with sam3_on_device("meta"), on_device(torch.device("meta")):
        theirs = model_builder.build_sam3_image_model(
            bpe_path=bpe, device="meta", checkpoint_path=None, load_from_HF=False,
            enable_inst_interactivity=inst,
        )
    _assert_same(_shapes(ours), _shapes(theirs))
    if inst:
        assert ours.inst_interactive_predictor._bb_feat_sizes == [(288, 288), (144, 144), (72, 72)]


@pytest.mark.parametrize("temporal", [True, False])
def test_official_video_model_matches_model_builder(temporal: bool) -> None:
    import torch
    from sam3 import model_builder

    from dl_utils.sam3al.build import OFFICIAL, build_video_model, on_device

    bpe = str(tiny_bpe_path())
    ours = build_video_model(OFFICIAL, bpe_path=bpe, device="meta", apply_temporal_disambiguation=temporal)
    with sam3_on_device("meta"), on_device(torch.device("meta")):
        theirs = model_builder.build_sam3_video_model(
            checkpoint_path=None, load_from_HF=False, bpe_path=bpe, device="meta",
            apply_temporal_disambiguation=temporal,
        )
    _assert_same(_shapes(ours), _shapes(theirs))
    for attr in ("hotstart_delay", "recondition_every_nth_frame", "image_size"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.tracker.use_memory_selection == theirs.tracker.use_memory_selection


def test_official_caches_and_derived_sizes() -> None:
    from dl_utils.sam3al.build import OFFICIAL

    assert OFFICIAL.feat_size == 72
    assert OFFICIAL.maskmem_interpol_size == 1152
    assert OFFICIAL.sam1_feat_sizes == [(288, 288), (144, 144), (72, 72)]


def test_tiny_sizes_follow_the_spec(tiny_sam3_video_model) -> None:
    spec = tiny_spec()
    m = tiny_sam3_video_model
    f = spec.image_size // spec.patch_size
    dec = m.detector.transformer.decoder
    assert dec.compilable_stored_size == (f, f)
    assert dec.compilable_cord_cache[0].device.type == "cpu"
    ds = m.tracker.maskmem_backbone.mask_downsampler
    assert list(ds.interpol_size) == [f * 16, f * 16]
    assert m.tracker.image_size == spec.image_size and m.image_size == spec.image_size
    pe = m.detector.backbone.vision_backbone.position_encoding
    assert (spec.image_size // 4, spec.image_size // 4) in pe.cache


def test_bad_spec_and_missing_vocab_are_one_liners(tmp_path) -> None:
    from dl_utils.errors import InputError, ModelError
    from dl_utils.sam3al.build import Sam3Spec, build_image_model

    with pytest.raises(InputError, match="multiple of patch_size"):
        Sam3Spec(image_size=100)
    with pytest.raises(InputError, match="global attention"):
        Sam3Spec(vit_depth=2, vit_global_att_blocks=(5,))
    with pytest.raises(ModelError, match="BPE vocabulary not found"):
        build_image_model(tiny_spec(), bpe_path=tmp_path / "nope.txt.gz", device="meta")
