"""Random-weight GroundingDINO models for tests, built locally (no hub access).

* the original model (groundingdino-py) from its real ``GroundingDINO_SwinT_OGC.py`` config, with a
  tiny BERT text encoder (1 layer, hidden 32: the model maps the encoder's hidden size to its own
  256 with ``feat_map``, so BERT's 768 is not required) and a BERT tokenizer whose vocab is written
  here; its weights are saved as an official-format ``{"model": state_dict}`` file;
* the transformers port from a small ``GroundingDinoConfig`` (Swin with 1 block per stage, 1
  encoder/decoder layer, 50 queries) and a processor built from the same vocab, saved with
  ``save_pretrained``.

The SwinT-OGC model keeps its 900 queries, so test images must give the encoder more than 900
tokens: 240x320 is the smallest convenient size (1600 tokens over the four feature levels).
Everything runs on one CPU thread (:func:`one_thread`): the test machines share few cores and torch's
default thread pool made the forward passes ~10x slower there.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest

HAVE_GD = all(importlib.util.find_spec(m) is not None for m in ("torch", "groundingdino", "transformers"))
HAVE_TF = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
SKIP_GD = "groundingdino-py / transformers not installed: pip install 'groundingdino-py==0.4.0' 'transformers>=4.57,<4.58'"
SKIP_TF = "transformers not installed: pip install 'transformers>=4.57,<4.58'"
requires_gd = pytest.mark.skipif(not HAVE_GD, reason=SKIP_GD)
requires_tf = pytest.mark.skipif(not HAVE_TF, reason=SKIP_TF)

#: Prompt words (plus special tokens and punctuation) of the test vocabulary.
WORDS = ["car", "person", "traffic", "light", "dog", "cat", "truck", "bus", "a", "the", "red", "sedan",
         "tree", "bike", "##s"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", ",", *WORDS]
SEED = 0
GD_SIZE = (240, 320)  # (height, width) of test images for the SwinT-OGC model


@contextlib.contextmanager
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def write_vocab(folder: Path, words: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words or VOCAB) + "\n")
    return folder / "vocab.txt"


def make_text_encoder(folder: Path, *, hidden: int = 32, seed: int = SEED) -> Path:
    """A 1-layer BERT + tokenizer saved with save_pretrained (what ``--text-encoder`` points at)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = write_vocab(folder)
    BertTokenizer(str(vocab), do_lower_case=True).save_pretrained(str(folder))
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=256)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertModel(cfg).save_pretrained(str(folder))
    return folder


def build_gd_model(encoder: Path, seed: int = SEED):
    """The original GroundingDINO from the packaged SwinT-OGC config, seeded random weights, CPU."""
    import torch

    from dl_utils.dino_models import config_path
    from dl_utils.dinoal import build_groundingdino

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_groundingdino(config_path("GroundingDINO_SwinT_OGC.py"), encoder).eval()
    # Random weights make every query's logits huge (all scores ~1.0, thresholds select nothing
    # specific). Shrinking the decoder's output norm spreads the scores over ~0.45-0.8, so a
    # threshold picks a few dozen boxes as with trained weights.
    with torch.no_grad():
        model.transformer.decoder.norm.weight.mul_(0.05)
    return model


def make_hf_model_dir(folder: Path, seed: int = SEED, size: tuple[int, int] = (160, 224)) -> Path:
    """A small transformers GroundingDINO + processor saved with save_pretrained."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    vocab = write_vocab(folder / "_vocab")
    tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    proc = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": size[0], "longest_edge": size[1]}),
        tokenizer=tok,
    )
    cfg = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=24, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
                                   out_indices=[2, 3, 4]),
        text_config=BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64),
        num_queries=50, encoder_layers=1, decoder_layers=1, d_model=64, encoder_ffn_dim=128,
        decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(cfg).eval()
    with torch.no_grad():  # spread the random scores, as in build_gd_model
        model.model.decoder.layer_norm.weight.mul_(0.05)
    model.save_pretrained(str(folder))
    proc.save_pretrained(str(folder))
    return folder


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A structured RGB image (rectangles and discs on a gradient) so boxes differ between images."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x * y) % 256], -1).astype(np.uint8)
    for _ in range(6):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(min(height, width) // 12, min(height, width) // 4))
        color = rng.integers(0, 256, 3, dtype=np.uint8)
        if rng.random() < 0.5:
            img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = color
        else:
            img[max(cy - r, 0):cy + r, max(cx - r, 0):cx + r] = color
    return img


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def text_encoder_dir(tmp_path_factory) -> Path:
    if not HAVE_TF:
        pytest.skip(SKIP_TF)
    return make_text_encoder(tmp_path_factory.mktemp("dino") / "bert-tiny")


@pytest.fixture(scope="session")
def gd_model(text_encoder_dir):
    """(model, weights_file): the in-memory reference model and its weights saved official-style."""
    if not HAVE_GD:
        pytest.skip(SKIP_GD)
    import torch

    with one_thread():
        model = build_gd_model(text_encoder_dir)
    path = text_encoder_dir.parent / "gd_tiny_text.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, path


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory) -> Path:
    if not HAVE_TF:
        pytest.skip(SKIP_TF)
    with one_thread():
        return make_hf_model_dir(tmp_path_factory.mktemp("dino") / "gd-hf-tiny")
