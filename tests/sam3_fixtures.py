"""Tiny random-weight SAM 3 networks for tests (no weights or vocabulary can be downloaded).

Built by :mod:`dl_utils.sam3al.build` from sam3's own classes at the reduced :data:`TINY` spec (one
video frame well under a second on two CPU cores), with a small generated BPE vocabulary
(:func:`make_bpe_vocab`: the wheel lacks ``bpe_simple_vocab_16e6.txt.gz``). Import what a test
module needs::

    from tests.sam3_fixtures import requires_sam3, tiny_sam3_image_model  # noqa: F401

Parity tests compare our code with sam3's own code paths, and some of those place tensors on CUDA
unconditionally; :func:`sam3_on_device` redirects only that device placement, and only inside a
``with`` block of a test. Importing this module never needs torch or sam3.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import importlib
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import pytest

if TYPE_CHECKING:
    from dl_utils.sam3al.build import Sam3Spec

HAVE_SAM3 = (
    importlib.util.find_spec("torch") is not None and importlib.util.find_spec("sam3") is not None
)
SKIP_REASON = "torch/sam3 not installed: pip install torch torchvision sam3"
requires_sam3 = pytest.mark.skipif(not HAVE_SAM3, reason=SKIP_REASON)

TEST_SEED = 0

# Words the tiny vocabulary merges into single tokens (any other text still tokenizes, into bytes).
VOCAB_WORDS = (
    "car", "person", "truck", "dog", "cat", "tree", "traffic", "light", "visual", "road", "sky",
    "bed", "lamp", "window", "chair",
)  # fmt: skip


def tiny_spec() -> Sam3Spec:
    """The reduced SAM 3: 112 px (8x8 patches), a 2-block ViT (one global), 2-layer text encoder."""
    from dl_utils.sam3al.build import Sam3Spec

    return Sam3Spec(
        image_size=112,
        patch_size=14,
        pretrain_img_size=56,
        vit_embed_dim=64,
        vit_depth=2,
        vit_num_heads=2,
        vit_mlp_ratio=2.0,
        vit_window_size=4,
        vit_global_att_blocks=(1,),
        d_model=256,  # sam3 has literal 256s that must equal d_model (see Sam3Spec)
        num_heads=8,
        dim_feedforward=128,
        text_width=64,
        text_heads=2,
        text_layers=2,
        text_context_length=32,
        text_vocab_size=1024,
        encoder_layers=1,
        decoder_layers=2,
        num_queries=16,
        geometry_layers=1,
        tracker_num_maskmem=3,
        tracker_mem_dim=64,
        tracker_layers=1,
        tracker_dim_feedforward=128,
    )


def make_bpe_vocab(path: str | Path, words: tuple[str, ...] = VOCAB_WORDS) -> Path:
    """Write a valid BPE merges file in ``SimpleTokenizer``'s format (gzip, one header line, then
    ``"a b"`` merges) that turns each of ``words`` into one token.

    SimpleTokenizer keeps ``merges[1 : 49152 - 256 - 2 + 1]``: the slice just stops early on a small
    file. No trailing new line: the empty last line would become an empty "merge" (the real file is
    cut before its end, so it never meets one). Vocabulary size: 512 bytes + merges + 2 specials.
    """
    merges: list[str] = []
    seen: set[tuple[str, str]] = set()
    for w in words:
        syms = list(w[:-1]) + [w[-1] + "</w>"]
        while len(syms) > 1:
            pair = (syms[0], syms[1])
            if pair not in seen:
                seen.add(pair)
                merges.append(f"{pair[0]} {pair[1]}")
            syms = [pair[0] + pair[1]] + syms[2:]
    p = Path(path)
    with gzip.open(p, "wb") as f:
        f.write(("#version: 0.2\n" + "\n".join(merges)).encode("utf-8"))
    return p


@functools.lru_cache(maxsize=None)
def tiny_bpe_path() -> Path:
    """The tiny vocabulary, written once per process into a private temporary folder."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="dl_utils_sam3_bpe_"))
    return make_bpe_vocab(folder / "bpe_tiny.txt.gz")


def _seeded(build: Callable[[], Any], seed: int) -> Any:
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = build()
        # upstream's init leaves several parameters at zero (no_mem_embed, layer scales, ...);
        # fill every floating tensor so random weights exercise every path
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, t in sorted(model.state_dict().items()):
                if t.is_floating_point():
                    t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * 0.05 + _offset(name, t))
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def _offset(name: str, t: Any) -> float:
    # LayerNorm weights near 1 keep activations in range through the random network
    return 1.0 if (name.endswith(".weight") and t.ndim == 1 and "norm" in name) else 0.0


@functools.lru_cache(maxsize=None)
def build_tiny_image(seed: int = TEST_SEED, inst: bool = False) -> Any:
    """``Sam3Image`` at :func:`tiny_spec`, seeded random weights, CPU, eval; built once per args."""
    if not HAVE_SAM3:
        pytest.skip(SKIP_REASON)
    from dl_utils.sam3al.build import build_image_model

    return _seeded(
        lambda: build_image_model(tiny_spec(), bpe_path=tiny_bpe_path(), enable_inst_interactivity=inst),
        seed,
    )


@functools.lru_cache(maxsize=None)
def build_tiny_video(seed: int = TEST_SEED, apply_temporal_disambiguation: bool = True) -> Any:
    """``Sam3VideoInferenceWithInstanceInteractivity`` at :func:`tiny_spec`, seeded, CPU, eval."""
    if not HAVE_SAM3:
        pytest.skip(SKIP_REASON)
    from dl_utils.sam3al.build import build_video_model

    return _seeded(
        lambda: build_video_model(
            tiny_spec(), bpe_path=tiny_bpe_path(),
            apply_temporal_disambiguation=apply_temporal_disambiguation,
        ),
        seed,
    )


@pytest.fixture(scope="session")
def tiny_sam3_image_model() -> Any:
    return build_tiny_image()


@pytest.fixture(scope="session")
def tiny_sam3_video_model() -> Any:
    return build_tiny_video()


@pytest.fixture(scope="session")
def sam3_bpe_path() -> Path:
    if not HAVE_SAM3:
        pytest.skip(SKIP_REASON)
    return tiny_bpe_path()


# ---- device placement of sam3's own code (tests only) ----------------------------------------

# sam3 modules that place tensors on "cuda" by name (torch.zeros(..., device="cuda"),
# torch.device("cuda"), arange(device="cuda") through TransformerDecoder._get_coords).
_CUDA_MODULES = (
    "sam3.model.position_encoding",
    "sam3.model.decoder",
    "sam3.model.sam3_tracking_predictor",
    "sam3.model.sam3_tracker_base",
    "sam3.model.sam3_video_inference",
    "sam3.model.sam3_video_base",
    "sam3.model.io_utils",
    "sam3.model.vl_combiner",
    "sam3.model_builder",
)


class _TorchOnDevice:
    """Stands in for ``torch`` inside one sam3 module: ``device="cuda"`` and ``torch.device("cuda")``
    become ``target``; everything else is the real torch."""

    def __init__(self, torch_module: Any, target: str) -> None:
        self._torch = torch_module
        self._target = target

    def _fix(self, d: Any) -> Any:
        if isinstance(d, str) and d.startswith("cuda"):
            return self._target
        if isinstance(d, self._torch.device) and d.type == "cuda":
            return self._torch.device(self._target)
        return d

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._torch, name)
        if name == "device":
            return lambda *a, **k: real(*(self._fix(x) for x in a), **k)
        if callable(real) and not isinstance(real, type) and name in {
            "zeros", "ones", "empty", "full", "arange", "tensor", "as_tensor", "linspace",
            "rand", "randn", "zeros_like", "ones_like",
        }:  # fmt: skip

            def call(*a: Any, **k: Any) -> Any:
                if "device" in k:
                    k["device"] = self._fix(k["device"])
                return real(*a, **k)

            return call
        return real


@contextlib.contextmanager
def sam3_on_device(target: str = "cpu") -> Iterator[None]:
    """Run sam3's own code (the parity reference) with its hard-coded CUDA placement sent to
    ``target``: the module-level ``torch`` of the sam3 modules that name "cuda", ``Tensor.cuda``
    and ``Tensor.pin_memory`` (only while the block runs) and ``TransformerDecoder._get_coords``."""
    import torch

    with contextlib.ExitStack() as stack:
        for modname in _CUDA_MODULES:
            mod = importlib.import_module(modname)
            if getattr(mod, "torch", None) is torch:
                stack.enter_context(mock.patch.object(mod, "torch", _TorchOnDevice(torch, target)))
        stack.enter_context(
            mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self.to(target))
        )
        if not target.startswith("cuda"):
            # pinning needs a CUDA driver and never changes values
            stack.enter_context(mock.patch.object(torch.Tensor, "pin_memory", lambda self, *a, **k: self))
        from sam3.model.decoder import TransformerDecoder

        orig = TransformerDecoder._get_coords

        def coords(H: int, W: int, device: Any) -> Any:
            return orig(H, W, target if str(device).startswith("cuda") else device)

        stack.enter_context(mock.patch.object(TransformerDecoder, "_get_coords", staticmethod(coords)))
        yield


@pytest.fixture
def sam3_cpu() -> Iterator[None]:
    """``sam3_on_device("cpu")`` for the whole test."""
    with sam3_on_device("cpu"):
        yield
