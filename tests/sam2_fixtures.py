"""Tiny random-weight SAM2 networks for tests (no weights can be downloaded in tests).

Built from the real ``sam2.1_hiera_t`` config at a reduced ``image_size`` (256 keeps CPU tests fast),
once per process. Import the fixtures into a test module to use them::

    from tests.sam2_fixtures import requires_sam2, tiny_sam2, tiny_sam2_video  # noqa: F401

Everything skips with a clear reason when torch or sam2 is not installed; importing this module
never needs them.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest

TINY = "sam2.1_hiera_tiny"
TEST_IMAGE_SIZE = 256
TEST_SEED = 0

HAVE_SAM2 = (
    importlib.util.find_spec("torch") is not None and importlib.util.find_spec("sam2") is not None
)
SKIP_REASON = (
    "torch/sam2 not installed: pip install torch torchvision && "
    "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2"
)
requires_sam2 = pytest.mark.skipif(not HAVE_SAM2, reason=SKIP_REASON)


@functools.lru_cache(maxsize=None)
def build_tiny(image_size: int = TEST_IMAGE_SIZE, seed: int = TEST_SEED, video: bool = False):
    """The tiny SAM 2.1 network with seeded random weights, on CPU, built once per arguments."""
    if not HAVE_SAM2:
        pytest.skip(SKIP_REASON)

    from dl_utils.sam2_loader import build_sam2_model

    return build_sam2_model(
        TINY, image_size=image_size, device="cpu", random_weights=True, seed=seed, video=video
    )


@pytest.fixture(scope="session")
def tiny_sam2():
    """``SAM2Base`` (image model) built from the real tiny config at 256 px, random weights."""
    return build_tiny()


@pytest.fixture(scope="session")
def tiny_sam2_video():
    """``SAM2VideoPredictor`` built like upstream's video builder, tiny config at 256 px."""
    return build_tiny(video=True)


def raw_image_predictor(model, **kwargs):
    """Upstream ``SAM2ImagePredictor`` on ``model`` with the feature-size fix for non-1024 sizes."""
    from dl_utils.sam2_loader import make_image_predictor

    return make_image_predictor(model, **kwargs)


def test_image(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    """A structured RGB image (shapes on a gradient) so random-weight masks are not all alike."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), (x + y) % 256], -1)
    img = img.astype(np.uint8)
    for _ in range(4):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        r = int(rng.integers(min(height, width) // 10, min(height, width) // 4))
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


test_image.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test
