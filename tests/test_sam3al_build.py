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


# ---- dl_utils.sam3al.checkpoint: the sam3.pt layout, strictly ---------------------------------


@pytest.fixture(scope="module")
def official_layout_file(tmp_path_factory, tiny_sam3_video_model):
    """A random-weight file in the released layout: the video model's state_dict IS sam3.pt's
    layout (build_sam3_video_model loads the file into it with strict=True)."""
    import torch

    path = tmp_path_factory.mktemp("sam3ckpt") / "sam3.pt"
    torch.save({"model": tiny_sam3_video_model.state_dict()}, path)
    return path


def _fresh_image(inst: bool = False):
    from dl_utils.sam3al.build import build_image_model

    return build_image_model(tiny_spec(), bpe_path=tiny_bpe_path(), enable_inst_interactivity=inst)


def _fresh_video():
    from dl_utils.sam3al.build import build_video_model

    return build_video_model(tiny_spec(), bpe_path=tiny_bpe_path())


def test_official_layout_loads_into_image_and_video_models(official_layout_file, tiny_sam3_video_model) -> None:
    import torch

    from dl_utils.sam3al.checkpoint import load_sam3_checkpoint

    src = tiny_sam3_video_model.state_dict()
    video = _fresh_video()
    load_sam3_checkpoint(video, official_layout_file, kind="video")
    for k, v in video.state_dict().items():
        assert torch.equal(v, src[k]), k
    image = _fresh_image()
    load_sam3_checkpoint(image, official_layout_file, kind="image")
    for k, v in image.state_dict().items():
        assert torch.equal(v, src["detector." + k]), k
    inst = _fresh_image(inst=True)
    load_sam3_checkpoint(inst, official_layout_file)
    n_tracker = 0
    for k, v in inst.state_dict().items():
        if k.startswith("inst_interactive_predictor.model."):
            n_tracker += 1
            assert torch.equal(v, src["tracker." + k.removeprefix("inst_interactive_predictor.model.")]), k
        else:
            assert torch.equal(v, src["detector." + k]), k
    assert n_tracker > 0


def test_unwrapped_dict_loads_too(tmp_path, tiny_sam3_video_model) -> None:
    import torch

    from dl_utils.sam3al.checkpoint import load_sam3_checkpoint

    path = tmp_path / "bare.pt"
    torch.save(tiny_sam3_video_model.state_dict(), path)
    load_sam3_checkpoint(_fresh_image(), path)


def _one_line_model_error(model, path, kind="image", match=""):
    from dl_utils.errors import ModelError
    from dl_utils.sam3al.checkpoint import load_sam3_checkpoint

    with pytest.raises(ModelError, match=match) as e:
        load_sam3_checkpoint(model, path, kind=kind)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_bad_files_are_one_line_model_errors(tmp_path, official_layout_file, tiny_sam3_video_model, capsys) -> None:
    import torch

    image = _fresh_image()
    sam2 = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(2),
                          "memory_attention.layers.0.norm1.weight": torch.zeros(2),
                          "sam_mask_decoder.iou_token.weight": torch.zeros(2)}}, sam2)
    _one_line_model_error(image, sam2, match="a SAM2 checkpoint")
    dino = tmp_path / "groundingdino_swint_ogc.pth"
    torch.save({"model": {"module.bert.embeddings.word_embeddings.weight": torch.zeros(2),
                          "module.transformer.enc_out_bbox_embed.layers.0.weight": torch.zeros(2)}}, dino)
    _one_line_model_error(image, dino, match="a GroundingDINO checkpoint")

    data = official_layout_file.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    _one_line_model_error(image, truncated, match="not a readable torch checkpoint")

    sd = dict(tiny_sam3_video_model.state_dict())
    dropped = sorted(k for k in sd if k.startswith("detector."))[:4]
    for k in dropped:
        del sd[k]
    partial = tmp_path / "partial.pt"
    torch.save(sd, partial)
    msg = _one_line_model_error(image, partial, match="4 missing keys")
    _one_line_model_error(_fresh_video(), partial, kind="video", match="4 missing keys")

    sd = dict(tiny_sam3_video_model.state_dict())
    sd["detector.extra.weight"] = torch.zeros(1)
    extra = tmp_path / "extra.pt"
    torch.save(sd, extra)
    _one_line_model_error(image, extra, match="1 unexpected keys")

    sd = dict(tiny_sam3_video_model.state_dict())
    k = next(k for k in sd if k.startswith("detector.") and sd[k].ndim == 2)
    sd[k] = torch.zeros(sd[k].shape[0] + 1, sd[k].shape[1])
    wrong = tmp_path / "wrong_shape.pt"
    torch.save(sd, wrong)
    _one_line_model_error(image, wrong, match="another size")

    _one_line_model_error(image, tmp_path / "absent.pt", match="not found")
    assert capsys.readouterr().out == ""
    assert msg


def test_tiny_instance_interactivity_runs() -> None:
    """The instance predictor's feature sizes follow the spec (upstream hard-codes 288/144/72):
    a click on the tiny image+instance model gives three full-size masks."""
    import numpy as np
    from PIL import Image
    from sam3.model.sam3_image_processor import Sam3Processor

    from tests.sam3_fixtures import build_tiny_image

    model = build_tiny_image(inst=True)
    proc = Sam3Processor(model, resolution=tiny_spec().image_size, device="cpu")
    img = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
    with sam3_on_device("cpu"):
        state = proc.set_image(Image.fromarray(img))
        masks, scores, _ = model.predict_inst(
            state, point_coords=np.array([[60, 45]]), point_labels=np.array([1]), multimask_output=True
        )
    assert masks.shape == (3, 90, 120) and scores.shape == (3,)
