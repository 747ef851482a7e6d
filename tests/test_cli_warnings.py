"""No raw library warnings on stderr (issue 13): each command runs in its own process, as a user runs it.

Deprecation warnings that libraries raise inside upstream code (timm's ``timm.models.layers``
import in groundingdino, torch/transformers deprecations in its forward) are hidden at their call
sites (``dl_utils.models.HARMLESS_WARNINGS``); our own warnings print as one ``dl-utils: warning:``
line; ``dl-utils --debug`` shows everything in Python's form.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.dino_fixtures import HAVE_GD, SKIP_GD, gd_model, hf_model_dir, scene, text_encoder_dir  # noqa: F401
from tests.sam2_fixtures import HAVE_SAM2, SKIP_REASON

ROOT = Path(__file__).resolve().parent.parent
RAW = re.compile(r"\b\w*Warning\b")  # "UserWarning:", "FutureWarning:" ... Python's own form


def _run(args: list[str], cwd: Path, debug: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("DL_UTILS_DEBUG", None)
    env.pop("PYTHONWARNINGS", None)
    cmd = [sys.executable, "-m", "dl_utils", *(["--debug"] if debug else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_frames_split_warning_is_one_line(tmp_path):
    from dl_utils.video_utils import write_video
    from tests.conftest import synthetic_frame

    video = write_video(tmp_path / "v.mp4", (synthetic_frame(i) for i in range(30)), fps=10, gop=1000)
    p = _run(["frames", "split", str(video), "--seconds", "1", "--out", str(tmp_path / "parts")], tmp_path)
    assert p.returncode == 0, p.stderr
    assert not RAW.search(p.stderr), p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dl-utils: warning: ") and "instead of 3" in lines[0]
    d = _run(["frames", "split", str(video), "--seconds", "1", "--out", str(tmp_path / "parts2")], tmp_path,
             debug=True)
    assert "UserWarning" in d.stderr  # --debug keeps Python's form


@pytest.mark.skipif(not HAVE_GD, reason=SKIP_GD)
def test_groundingdino_detect_prints_no_library_warnings(gd_model, text_encoder_dir, tmp_path):  # noqa: F811
    from dl_utils.cv_utils import save_image

    _, weights = gd_model
    img = tmp_path / "street.png"
    save_image(img, scene(240, 320))
    args = ["detect", str(img), "--text", "car. person", "--out", str(tmp_path / "d.sqlite"), "--model",
            str(weights), "--text-encoder", str(text_encoder_dir), "--detector-size", "240", "--device", "cpu"]
    p = _run(args, tmp_path)
    assert p.returncode == 0, p.stderr
    assert not RAW.search(p.stderr), p.stderr
    assert json.loads(p.stdout)["frames"] == 1
    args[5] = str(tmp_path / "d2.sqlite")
    d = _run(args, tmp_path, debug=True)
    assert d.returncode == 0 and "FutureWarning" in d.stderr  # the hidden ones are still there with --debug


@pytest.mark.skipif(not HAVE_GD, reason=SKIP_GD)
def test_transformers_detect_prints_no_library_warnings(hf_model_dir, tmp_path):  # noqa: F811
    from dl_utils.cv_utils import save_image

    img = tmp_path / "street.png"
    save_image(img, scene(120, 160))
    p = _run(["detect", str(img), "--text", "car", "--out", str(tmp_path / "d.sqlite"), "--backend",
              "transformers", "--model", str(hf_model_dir), "--device", "cpu"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert not RAW.search(p.stderr), p.stderr


@pytest.mark.skipif(not HAVE_SAM2, reason=SKIP_REASON)
def test_segment_prints_no_library_warnings(tmp_path):
    import torch

    from dl_utils.cv_utils import save_image
    from tests.sam2_fixtures import build_tiny, test_image

    ckpt = tmp_path / "tiny.pt"
    torch.save({"model": build_tiny(video=True).state_dict()}, ckpt)
    frames = tmp_path / "f"
    frames.mkdir()
    for i in range(3):
        save_image(frames / f"{i}.png", test_image(120, 160, seed=i))
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"frame": 0, "object": 1, "label": "a", "points": [[50, 50, 1]]}]))
    p = _run(["segment", str(frames), "--out", str(tmp_path / "s.sqlite"), "--prompts", str(prompts),
              "--checkpoint", str(ckpt), "--image-size", "256", "--device", "cpu"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert not RAW.search(p.stderr), p.stderr
    assert np.isfinite(json.loads(p.stdout)["seconds"])
