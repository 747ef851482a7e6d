"""Shared fixtures: sample media (skipped with a reason when absent) and synthetic frames."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("DL_UTILS_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_file(name: str) -> Path:
    """Path of a sample file in ../shared/data, or skip the test saying what is missing."""
    p = SHARED_DATA / name
    if not p.is_file():
        pytest.skip(f"sample media {p} is absent (set DL_UTILS_SHARED_DATA to the folder holding it)")
    return p


@pytest.fixture
def bedroom_mp4() -> Path:
    return shared_file("bedroom.mp4")


@pytest.fixture
def truck_jpg() -> Path:
    return shared_file("truck.jpg")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def synthetic_frame(index: int, height: int = 96, width: int = 128) -> np.ndarray:
    """An RGB frame whose content encodes its index (a moving square on a gradient)."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 2 + index) % 256, (y * 2) % 256, np.full_like(x, (index * 7) % 256)], -1)
    img = img.astype(np.uint8)
    s = 16
    x0 = (index * 5) % (width - s)
    y0 = (index * 3) % (height - s)
    img[y0 : y0 + s, x0 : x0 + s] = 255
    return img


def pytest_sessionfinish(session, exitstatus):
    """No worker process outlives the run: an orphan keeps the runner's stdout open and CI waits on it
    until its own time limit (it did, once, after a test timed out waiting on a stuck worker)."""
    import multiprocessing

    for child in multiprocessing.active_children():
        print(f"\nconftest: terminating leftover worker process {child.pid} ({child.name})")
        child.kill()
        child.join(5)
