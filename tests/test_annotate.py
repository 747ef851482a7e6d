"""``dl-utils annotate``: clicks + text on a video, resumable; image folders; bad input.

Real tiny SAM2 (random weights); the detector is a fixed stand-in so object ids can be asserted.
Masks are checked by parity with the engines called directly, never by how they look.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dl_utils.annotate import STEPS_KEY, run_annotate
from dl_utils.dinoal import Detections
from dl_utils.errors import InputError
from dl_utils.store import AnnotationStore
from tests.cvat_standin.fixtures import cvat_server  # noqa: F401  (fixture)
from tests.dino_fixtures import hf_model_dir  # noqa: F401  (fixture)
from tests.sam2_fixtures import requires_sam2, tiny_sam2, tiny_sam2_video  # noqa: F401  (fixtures)

N = 8


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from dl_utils.video_utils import open_frames, write_video

    from tests.conftest import shared_file

    bedroom_mp4 = shared_file("bedroom.mp4")
    out = tmp_path_factory.mktemp("annotate") / "clip.mp4"
    return Path(write_video(out, open_frames(bedroom_mp4, stop=N - 1, resize=(160, 90)), fps=30,
                            preset="ultrafast"))


class Fixed:
    """A detector that sees a 'lamp' on every frame and a 'bed' from frame 4 on."""

    name = "fixed"

    def __init__(self):
        self.calls = 0

    def detect(self, image, prompt=None):
        self.calls += 1
        rows = [([100, 5, 150, 40], "lamp")]
        if self.frame_of(image) >= 4:
            rows.append(([10, 40, 90, 88], "bed"))
        return Detections(boxes=[b for b, _ in rows], scores=[0.8] * len(rows), phrases=[p for _, p in rows],
                          labels=[p for _, p in rows])

    frames: dict = {}

    def frame_of(self, image) -> int:
        return self.frames[image.tobytes()[:4096]]


def prompts_file(tmp_path, entries) -> Path:
    p = tmp_path / "clicks.json"
    p.write_text(json.dumps(entries))
    return p


CLICK = [{"frame": 2, "object": 1, "label": "chair", "points": [[40, 60, 1], [120, 20, 0]]}]


def fixed_detector(clip) -> Fixed:
    from dl_utils.video_utils import open_frames

    det = Fixed()
    det.frames = {img.tobytes()[:4096]: i for i, img in enumerate(open_frames(clip))}
    return det


@requires_sam2
def test_points_only_equals_dl_utils_segment(tiny_sam2_video, clip, tmp_path):  # noqa: F811
    from dl_utils.drivers.segment import run_segment

    pts = prompts_file(tmp_path, CLICK)
    s = run_annotate(clip, tmp_path / "a.sqlite", points=pts, sam_video_model=tiny_sam2_video, progress=False)
    assert s["points"] == {"applied": 1, "objects": [1], "frames_written": N - 1} and "text" not in s
    run_segment(clip, tmp_path / "ref.sqlite", pts, direction="both", sam_model=tiny_sam2_video, progress=False)
    a, ref = AnnotationStore.open(tmp_path / "a.sqlite"), AnnotationStore.open(tmp_path / "ref.sqlite")
    assert a.frames() == ref.frames() == list(range(N))
    for f in range(N):
        assert np.array_equal(a.read_frame(f).by_object()[1].mask, ref.read_frame(f).by_object()[1].mask), f
    assert a.get_meta(STEPS_KEY)["points"]["status"] == "done"


@requires_sam2
def test_clicks_and_text_then_rerun_does_nothing(tiny_sam2_video, clip, tmp_path):  # noqa: F811
    pts = prompts_file(tmp_path, CLICK)
    out = tmp_path / "ct.sqlite"
    det = fixed_detector(clip)
    s = run_annotate(clip, out, text="lamp. bed", points=pts, every=2, detector=det,
                     sam_video_model=tiny_sam2_video, progress=False)
    assert s["text"]["status"] == "done"
    st = AnnotationStore.open(out)
    labels = {o.id: o.label for o in st.objects()}
    assert labels[1] == "chair"  # the click keeps its id and label
    assert sorted(labels.values()).count("lamp") >= 1 and "bed" in labels.values()
    bed = [k for k, v in labels.items() if v == "bed"]
    assert bed and min(bed) > 1
    assert st.frames() == list(range(N))
    assert all(1 in st.read_frame(f).by_object() for f in range(N))
    steps = st.get_meta(STEPS_KEY)
    assert steps["text"]["status"] == "done" and steps["text"]["prompt"] == "lamp. bed."
    before = {f: {k: v.mask.copy() for k, v in st.read_frame(f).by_object().items() if v.mask is not None}
              for f in range(N)}
    st.close()
    calls = det.calls
    again = run_annotate(clip, out, text="lamp. bed", points=pts, every=2, detector=det,
                         sam_video_model=tiny_sam2_video, progress=False)
    assert again["resumed"] and again["points"]["applied"] == 0 and again["points"]["frames_written"] == 0
    assert again["text"]["status"] == "already done" and det.calls == calls
    st = AnnotationStore.open(out)
    for f in range(N):
        now = {k: v.mask for k, v in st.read_frame(f).by_object().items() if v.mask is not None}
        assert now.keys() == before[f].keys() and all(np.array_equal(now[k], before[f][k]) for k in now)
    with pytest.raises(InputError, match="was annotated with the text"):
        run_annotate(clip, out, text="car", detector=det, sam_video_model=tiny_sam2_video, progress=False)


class Squares:
    """Detects every white square as a 'box'."""

    name = "squares"

    def detect(self, image, prompt=None):
        import cv2

        _, _, stats, _ = cv2.connectedComponentsWithStats((image[..., 0] > 200).astype(np.uint8))
        boxes = [[x, y, x + w, y + h] for x, y, w, h, a in stats[1:] if a >= 30]
        return Detections(boxes=np.array(boxes, float).reshape(-1, 4), scores=[0.9] * len(boxes),
                          phrases=["box"] * len(boxes), labels=["box"] * len(boxes))


@requires_sam2
def test_image_folder_clicks_and_text(tiny_sam2, tmp_path):  # noqa: F811
    from PIL import Image

    from dl_utils.samal import ImageSegmenter

    folder = tmp_path / "imgs"
    folder.mkdir()
    images = []
    for i in range(3):
        img = np.zeros((64, 96, 3), np.uint8)
        img[10 + i:30 + i, 20:44] = 255
        Image.fromarray(img).save(folder / f"im_{i}.png")
        images.append(img)
    pts = prompts_file(tmp_path, [{"frame": 1, "object": 9, "label": "spot", "points": [[70, 50, 1]]}])
    seg = ImageSegmenter(tiny_sam2)
    s = run_annotate(folder, tmp_path / "i.sqlite", text="box", points=pts, detector=Squares(), segmenter=seg,
                     progress=False)
    assert s["points"] == {"applied": 1} and s["text"] == {"status": "done", "detections": 3, "images": 3}
    st = AnnotationStore.open(tmp_path / "i.sqlite")
    ref = ImageSegmenter(tiny_sam2)
    ref.set_image(images[1])
    want = ref.predict([[70, 50, 1]], object_id=9).mask
    assert np.array_equal(st.read_frame(1).by_object()[9].mask, want)
    assert {o.label for o in st.objects()} == {"spot", "box"}
    for f in range(3):
        boxes = [i for i in st.read_frame(f) if i.object_id != 9]
        assert len(boxes) == 1 and boxes[0].mask is not None and boxes[0].score is not None
    st.close()
    again = run_annotate(folder, tmp_path / "i.sqlite", text="box", points=pts, detector=Squares(),
                         segmenter=seg, progress=False)
    assert again["points"] == {"applied": 0} and again["text"]["images"] == 3 and again["text"]["detections"] == 0


def test_bad_input(tmp_path, bedroom_mp4):
    with pytest.raises(InputError, match="nothing to annotate"):
        run_annotate(bedroom_mp4, tmp_path / "x.sqlite")
    with pytest.raises(InputError, match="names no object"):
        run_annotate(bedroom_mp4, tmp_path / "x.sqlite", text="  ")
    with pytest.raises(InputError, match="does not exist"):
        run_annotate(bedroom_mp4, tmp_path / "x.sqlite", points=tmp_path / "none.json")
    assert not (tmp_path / "x.sqlite").exists()  # nothing created before the input is valid


def test_cli_wiring():
    from dl_utils.cli import build_parser

    a = build_parser().parse_args(["annotate", "v.mp4", "--text", "car. person", "--out", "s.sqlite",
                                   "--points", "p.json", "--cvat-task", "7", "--every", "10"])
    assert (a.source, a.text, a.out, a.points, a.cvat_task, a.every, a.direction) == (
        "v.mp4", "car. person", "s.sqlite", "p.json", 7, 10, "both")


@requires_sam2
def test_cvat_task_push_from_the_environment(tiny_sam2_video, clip, tmp_path, monkeypatch, cvat_server):  # noqa: F811
    """--cvat-task: credentials from CVAT_* variables; a re-run pushes nothing new."""
    from dl_utils.annotations import MediaInfo
    from dl_utils.cvat import connect, create_task_for_store

    pts = prompts_file(tmp_path, CLICK)
    out = tmp_path / "c.sqlite"
    run_annotate(clip, out, points=pts, sam_video_model=tiny_sam2_video, progress=False)
    with AnnotationStore.open(out) as st:
        st.set_media(MediaInfo(**{**st.media.to_dict(), "path": str(clip)}))
        conn = connect(cvat_server.url, token=cvat_server.token, prompt=False)
        task = create_task_for_store(conn, st, poll_interval=0.01)
        conn.close()
    monkeypatch.setenv("CVAT_HOST", cvat_server.url)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", cvat_server.token)
    s = run_annotate(clip, out, points=pts, cvat_task=task.id, sam_video_model=tiny_sam2_video, progress=False)
    assert s["cvat"]["created"] == N and s["points"]["frames_written"] == 0
    shapes = [sh for a in cvat_server.state.annotations.values() for sh in a.shapes.values()]
    assert sorted(sh["frame"] for sh in shapes) == list(range(N)) and {sh["group"] for sh in shapes} == {1}
    again = run_annotate(clip, out, points=pts, cvat_task=task.id, sam_video_model=tiny_sam2_video,
                         progress=False)
    assert (again["cvat"]["created"], again["cvat"]["updated"], again["cvat"]["deleted"]) == (0, 0, 0)
    assert cvat_server.token not in json.dumps(s) + json.dumps(again)


@requires_sam2
def test_annotate_command_end_to_end(tiny_sam2_video, clip, tmp_path, hf_model_dir):  # noqa: F811
    """``dl-utils annotate VIDEO --text ... --points FILE --out STORE``: models from files, a real
    process; the clicked object keeps its id, the run resumes to a no-op."""
    import os
    import subprocess
    import sys

    import torch

    ckpt = tmp_path / "sam.pt"
    torch.save({"model": tiny_sam2_video.state_dict()}, ckpt)
    pts = prompts_file(tmp_path, CLICK)
    out = tmp_path / "cli.sqlite"
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "dl_utils", "annotate", str(clip), "--text", "sedan. pedestrian",
           "--points", str(pts), "--out", str(out), "--backend", "transformers", "--model", str(hf_model_dir),
           "--box-threshold", "0.75", "--sam-checkpoint", str(ckpt), "--image-size", "256", "--every", "3",
           "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import re

    assert not re.search(r"\b\w*Warning\b", proc.stderr), proc.stderr[-3000:]  # no raw library warnings
    s = json.loads(proc.stdout)
    assert s["points"]["applied"] == 1 and s["text"]["status"] in ("done", "no objects found")
    with AnnotationStore.open(out, readonly=True) as st:
        labels = {o.id: o.label for o in st.objects()}
        assert labels[1] == "chair" and set(labels.values()) <= {"chair", "sedan", "pedestrian"}
        assert st.frames_done(1) == list(range(N))
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    s2 = json.loads(again.stdout)
    assert s2["resumed"] and s2["points"]["applied"] == 0 and s2["text"]["status"] == "already done"
    bad = subprocess.run([sys.executable, "-m", "dl_utils", "annotate", str(clip), "--out", str(out)],
                         capture_output=True, text=True, cwd=root, timeout=120, env=env)
    assert bad.returncode != 0 and "nothing to annotate" in bad.stderr and "Traceback" not in bad.stderr


def test_annotate_refuses_negative_max_objects_before_any_work(tmp_path, capsys):
    from dl_utils.cli import main
    from dl_utils.cv_utils import save_image

    folder = tmp_path / "imgs"
    folder.mkdir()
    save_image(folder / "a.png", np.zeros((16, 16, 3), np.uint8))
    out = tmp_path / "a.sqlite"
    assert main(["annotate", str(folder), "--text", "car", "--out", str(out), "--max-objects", "-3"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--max-objects -3: use 1 or more" in err and not out.exists()


@requires_sam2
def test_image_folder_of_mixed_sizes(tiny_sam2, tmp_path):  # noqa: F811
    """Clicks are checked against, and masks stored at, each image's own size."""
    from PIL import Image

    from dl_utils.samal import ImageSegmenter

    folder = tmp_path / "imgs"
    folder.mkdir()
    sizes = [(96, 64), (50, 120), (140, 40)]  # (w, h)
    for i, (w, h) in enumerate(sizes):
        img = np.zeros((h, w, 3), np.uint8)
        img[5:30, 5:30] = 255
        Image.fromarray(img).save(folder / f"im_{i}.png")
    pts = prompts_file(tmp_path, [{"frame": 1, "object": 9, "label": "spot", "points": [[40, 100, 1]]}])
    seg = ImageSegmenter(tiny_sam2)
    s = run_annotate(folder, tmp_path / "m.sqlite", text="box", points=pts, detector=Squares(), segmenter=seg,
                     progress=False)
    assert s["points"] == {"applied": 1} and s["text"]["images"] == 3
    with AnnotationStore.open(tmp_path / "m.sqlite", readonly=True) as st:
        assert st.media.sizes() == sizes
        for f, (w, h) in enumerate(sizes):
            for inst in st.read_frame(f):
                assert inst.mask.shape == (h, w)
    # (40, 100) lies inside image 1 (50x120) but not inside image 2 (140x40): refused there
    (tmp_path / "bad").mkdir()
    bad = prompts_file(tmp_path / "bad", [{"frame": 2, "object": 9, "label": "spot", "points": [[40, 100, 1]]}])
    with pytest.raises(InputError, match=r"outside the 140x40 image"):
        run_annotate(folder, tmp_path / "m2.sqlite", points=bad, segmenter=seg, progress=False)
