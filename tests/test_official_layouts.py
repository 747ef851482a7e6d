"""Every registry entry's official weight-file layout loads through the CLI (issue 13).

No official weights can be downloaded in tests, so each file is rebuilt with random weights in the
official file's exact layout, as upstream's loaders and issue threads describe it:

* SAM 2 / 2.1 ``.pt``: ``{"model": state_dict}`` with exactly the model's keys (upstream's
  ``sam2.build_sam._load_checkpoint`` loads strictly);
* GroundingDINO SwinT-OGC / SwinB-COGCOOR ``.pth``: ``{"model": state_dict}`` with every key prefixed
  ``module.`` (upstream's ``clean_state_dict`` strips it), plus ``label_enc.weight`` (the training-time
  denoising label embedding, 2001 x 256) and ``bert.embeddings.position_ids`` that the released model
  code does not define (IDEA-Research/GroundingDINO#271 lists both as unexpected for SwinB). The BERT
  part follows the test text encoder (1 layer, width 32) so no 440 MB BERT is needed; its layout is
  the same;
* transformers ports (``IDEA-Research/grounding-dino-tiny`` / ``-base``): ``save_pretrained`` folders
  (config.json, model.safetensors, preprocessor_config.json, tokenizer files) of the real
  architectures (Swin-T / Swin-B backbones), with a small processor size to stay fast.

Each file then goes through ``dl-utils segment ... --checkpoint FILE`` or ``dl-utils detect ...
--model FILE``. The big architectures are marked ``slow``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.dino_fixtures import (
    HAVE_GD,
    HAVE_TF,
    SKIP_GD,
    SKIP_TF,
    VOCAB,
    one_thread,
    scene,
    text_encoder_dir,  # noqa: F401  (fixture)
    write_vocab,
)
from tests.sam2_fixtures import HAVE_SAM2, SKIP_REASON

SAM2_NAMES = [
    "sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large",
    "sam2_hiera_tiny", "sam2_hiera_small", "sam2_hiera_base_plus", "sam2_hiera_large",
]
BIG = {"sam2.1_hiera_base_plus", "sam2.1_hiera_large", "sam2_hiera_base_plus", "sam2_hiera_large",
       "groundingdino-swinb-cogcoor", "grounding-dino-base"}


def _param(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in BIG else name


def _frames(folder: Path, n: int = 2, size: tuple[int, int] = (48, 64)) -> Path:
    from dl_utils.cv_utils import save_image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        save_image(folder / f"{i:03d}.png", scene(*size, seed=i))
    return folder


def _run_cli(argv: list[str], capsys) -> dict:
    from dl_utils.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


# ----------------------------------------------------------------------------- SAM 2 / 2.1
def _sam2_official_file(name: str, path: Path) -> Path:
    """A random-weight ``{"model": state_dict}`` file with exactly the model's keys (as the release)."""
    import torch
    from hydra.utils import instantiate

    from dl_utils.models import get_spec
    from dl_utils.sam2_loader import _compose

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = instantiate(_compose(get_spec(name).config, []).model, _recursive_=True)
    torch.save({"model": net.state_dict()}, path)
    del net
    return path


@pytest.mark.skipif(not HAVE_SAM2, reason=SKIP_REASON)
@pytest.mark.parametrize("name", [_param(n) for n in SAM2_NAMES])
def test_sam2_official_layout_through_segment_cli(name, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DL_UTILS_MODELS", str(tmp_path / "models"))
    ckpt = _sam2_official_file(name, tmp_path / f"{name}.pt")
    frames = _frames(tmp_path / "frames")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"frame": 0, "object": 1, "label": "car", "points": [[20, 20, 1]]}]))
    try:
        s = _run_cli(["segment", str(frames), "--out", str(tmp_path / "s.sqlite"), "--prompts", str(prompts),
                      "--model", name, "--checkpoint", str(ckpt), "--image-size", "128", "--device", "cpu"],
                     capsys)
        assert s["prompts_applied"] == 1 and s["status"] == "done"
        # the registry route: the same file in the models folder under its official name
        (tmp_path / "models").mkdir()
        ckpt.rename(tmp_path / "models" / ckpt.name)
        s = _run_cli(["segment", str(frames), "--out", str(tmp_path / "s2.sqlite"), "--prompts", str(prompts),
                      "--model", name, "--image-size", "128", "--device", "cpu"], capsys)
        assert s["status"] == "done"
    finally:
        for p in [ckpt, tmp_path / "models" / ckpt.name]:
            p.unlink(missing_ok=True)  # up to 900 MB each: do not keep them in pytest's temp folders


# ----------------------------------------------------------------------------- GroundingDINO (.pth)
def _gd_official_file(registry_name: str, encoder: Path, folder: Path) -> Path:
    """The official ``.pth`` layout: ``{"model": {"module." + key: ...}}`` plus the training-time extras."""
    import torch

    from dl_utils.dino_models import DINO_MODELS, config_path
    from dl_utils.dinoal import build_groundingdino

    spec = DINO_MODELS[registry_name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_groundingdino(config_path(spec.config), encoder)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    sd["module.label_enc.weight"] = torch.randn(2001, 256)  # dn_labelbook_size + 1, hidden_dim
    sd["module.bert.embeddings.position_ids"] = torch.arange(512)[None]
    path = folder / spec.filename  # the official file name picks the config (SwinB needs its own)
    torch.save({"model": sd}, path)
    del model
    return path


@pytest.mark.skipif(not HAVE_GD, reason=SKIP_GD)
@pytest.mark.parametrize("name", [_param(n) for n in ("groundingdino-swint-ogc", "groundingdino-swinb-cogcoor")])
def test_groundingdino_official_layout_through_detect_cli(name, text_encoder_dir, tmp_path, capsys,  # noqa: F811
                                                           monkeypatch):
    from dl_utils.cv_utils import save_image

    monkeypatch.setenv("DL_UTILS_MODELS", str(tmp_path / "models"))
    with one_thread():
        weights = _gd_official_file(name, text_encoder_dir, tmp_path)
        img = tmp_path / "street.png"
        save_image(img, scene(240, 320))
        models = tmp_path / "models"
        try:
            s = _run_cli(["detect", str(img), "--text", "car. person", "--out", str(tmp_path / "d.sqlite"),
                          "--model", str(weights), "--text-encoder", str(text_encoder_dir),
                          "--detector-size", "240", "--device", "cpu", "--box-threshold", "0.0"], capsys)
            assert s["frames"] == 1 and s["detections"] > 0
            # the registry route: weights and the bert-base-uncased entry (a save_pretrained BERT folder)
            # where `dl-utils models download` puts them, named by the registry name only
            models.mkdir()
            weights = weights.rename(models / weights.name)
            shutil.copytree(text_encoder_dir, models / "bert-base-uncased")
            s = _run_cli(["detect", str(img), "--text", "car. person", "--out", str(tmp_path / "d2.sqlite"),
                          "--model", name, "--detector-size", "240", "--device", "cpu", "--box-threshold", "0.0"],
                         capsys)
            assert s["frames"] == 1 and s["detections"] > 0
        finally:
            weights.unlink(missing_ok=True)


@pytest.mark.skipif(not HAVE_GD, reason=SKIP_GD)
def test_groundingdino_unknown_extra_key_still_refused(text_encoder_dir, tmp_path, capsys):  # noqa: F811
    """Only the listed extras are dropped: another unexpected key stops the load, naming it."""
    import torch

    from dl_utils.cli import main
    from dl_utils.models import OFFICIAL_EXTRA_KEYS

    assert set(OFFICIAL_EXTRA_KEYS["groundingdino"]) == {"label_enc.weight", "bert.embeddings.position_ids"}
    assert OFFICIAL_EXTRA_KEYS["sam2"] == {}
    with one_thread():
        weights = _gd_official_file("groundingdino-swint-ogc", text_encoder_dir, tmp_path)
        ckpt = torch.load(weights, weights_only=True)
        ckpt["model"]["module.extra_head.weight"] = torch.zeros(3)
        torch.save(ckpt, weights)
        img = tmp_path / "street.png"
        from dl_utils.cv_utils import save_image

        save_image(img, scene(240, 320))
        rc = main(["detect", str(img), "--text", "car", "--out", str(tmp_path / "d.sqlite"), "--model", str(weights),
                   "--text-encoder", str(text_encoder_dir), "--detector-size", "240", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "1 unexpected keys (e.g. extra_head.weight)" in err and "label_enc" not in err


# ----------------------------------------------------------------------------- transformers ports
def _hf_port_folder(registry_name: str, folder: Path) -> Path:
    """A ``save_pretrained`` folder of the port's real architecture (random weights, small processor)."""
    import torch
    from transformers import (
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    if registry_name == "grounding-dino-tiny":
        backbone = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                              image_size=224, out_indices=[2, 3, 4])
    else:  # Swin-B 384
        backbone = SwinConfig(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12,
                              image_size=384, out_indices=[2, 3, 4])
    cfg = GroundingDinoConfig(backbone_config=backbone)  # text_config: bert-base, 900 queries, 6+6 layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GroundingDinoForObjectDetection(cfg).eval()
    model.save_pretrained(str(folder))
    vocab = write_vocab(folder / "_vocab")
    tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 240, "longest_edge": 320}),
        tokenizer=tok,
    ).save_pretrained(str(folder))
    del model
    return folder


@pytest.mark.skipif(not HAVE_TF, reason=SKIP_TF)
@pytest.mark.parametrize("name", [_param(n) for n in ("grounding-dino-tiny", "grounding-dino-base")])
def test_transformers_port_layout_through_detect_cli(name, tmp_path, capsys, monkeypatch):
    import shutil

    from dl_utils.cv_utils import save_image

    assert len(VOCAB) < 30522  # the test vocab indexes into the real embedding table
    monkeypatch.setenv("DL_UTILS_MODELS", str(tmp_path / "models"))
    with one_thread():
        folder = _hf_port_folder(name, tmp_path / "models" / name)  # where `models download` puts it
        assert {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.txt"} <= {
            p.name for p in folder.iterdir()}
        img = tmp_path / "street.png"
        save_image(img, scene(240, 320))
        try:
            s = _run_cli(["detect", str(img), "--text", "car. person", "--out", str(tmp_path / "d.sqlite"),
                          "--backend", "transformers", "--model", name, "--device", "cpu",
                          "--box-threshold", "0.0"], capsys)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    assert s["frames"] == 1


@pytest.mark.skipif(not HAVE_TF, reason=SKIP_TF)
def test_transformers_port_with_missing_weights_is_refused(tmp_path, capsys):
    """from_pretrained would fill missing weights with random values: refused, naming them."""
    from safetensors.torch import load_file, save_file

    from dl_utils.cli import main
    from dl_utils.cv_utils import save_image
    from tests.dino_fixtures import make_hf_model_dir

    with one_thread():
        folder = make_hf_model_dir(tmp_path / "port")
        sd = load_file(str(folder / "model.safetensors"))
        drop = sorted(k for k in sd if "bbox_embed" in k)[0]
        del sd[drop]
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
        img = tmp_path / "street.png"
        save_image(img, np.zeros((64, 64, 3), np.uint8))
        rc = main(["detect", str(img), "--text", "car", "--out", str(tmp_path / "d.sqlite"), "--backend",
                   "transformers", "--model", str(folder), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "missing keys" in err and str(folder) in err
