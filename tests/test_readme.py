"""The README's ten-line example runs as printed (a stale README is a bug)."""

from __future__ import annotations

import json
import re

import numpy as np

from tests.conftest import ROOT, shared_file


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Ten lines", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README has no python block under 'Ten lines'"
    return m.group(1)


def test_example_is_at_most_about_ten_lines():
    code = [ln for ln in readme_example().splitlines() if ln.strip() and not ln.startswith("from ")]
    assert len(code) <= 10


def test_readme_example_runs(tmp_path, monkeypatch):
    video = shared_file("bedroom.mp4")
    code = readme_example().replace("../shared/data/bedroom.mp4", str(video))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    import cv2

    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet is not None and sheet.shape[0] > 0
    coco = json.loads((tmp_path / "job_coco.json").read_text())
    assert len(coco["images"]) == 7 and len(coco["annotations"]) == 7
    from dl_utils.store import AnnotationStore

    with AnnotationStore.open(tmp_path / "job.sqlite", readonly=True) as st:
        assert st.frames() == [0, 10, 20, 30, 40, 50, 60]
        m = st.read_frame(30)[0].mask
        assert m.shape == (540, 960) and m[120:500, 300:520].all() and np.count_nonzero(m) == 220 * 380
