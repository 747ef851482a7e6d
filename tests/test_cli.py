"""The ``dl-utils`` command: every subcommand end to end, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dl_utils.annotations import Instance, Label, MediaInfo
from dl_utils.cli import main
from dl_utils.store import AnnotationStore

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real entry point in a subprocess (what users and outside checks do)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DL_UTILS_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "dl_utils", *args], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=120,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 1) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dl-utils: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in proc.stderr


def blob(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (x - cx) ** 2 / (r * 1.3) ** 2 + (y - cy) ** 2 / r**2 <= 1.0


def make_store(path: Path, n: int = 8, h: int = 48, w: int = 64) -> dict:
    """A small store: two objects, one leaving and coming back; returns the masks written."""
    media = MediaInfo(name="clip.mp4", width=w, height=h, frames=list(range(3, 3 + 2 * n, 2)), fps=25.0,
                      start=3, step=2, stop=3 + 2 * (n - 1))
    written: dict[tuple[int, int], np.ndarray] = {}
    with AnnotationStore.create(path, media) as st:
        st.set_labels([Label("car", "#ff0000"), Label("person", "#00ff00")])
        car = st.add_object("car")
        person = st.add_object("person")
        for k, f in enumerate(media.frames):
            insts = []
            m1 = blob(h, w, 10 + 3 * k, 20, 6)
            insts.append(Instance(car.id, mask=m1, score=0.9))
            written[(f, car.id)] = m1
            if k not in (3, 4):  # invisible on two frames: outside in CVAT, absent in COCO
                m2 = blob(h, w, 50 - 2 * k, 30, 5) & ~blob(h, w, 50 - 2 * k, 30, 2)
                insts.append(Instance(person.id, mask=m2, score=0.5))
                written[(f, person.id)] = m2
            else:
                insts.append(Instance(person.id, mask=np.zeros((h, w), bool)))
            st.write_frame(f, insts)
    return written


def test_version_and_help():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("dl-utils ")
    proc = run_cli("--help")
    assert proc.returncode == 0
    for sub in ("frames", "import", "export", "store", "classes"):
        assert sub in proc.stdout


def test_frames_info_json(bedroom_mp4, capsys):
    assert main(["frames", "info", str(bedroom_mp4), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["frames"] == 200
    assert info["width"] == 960 and info["height"] == 540
    assert abs(info["fps"] - 30) < 0.01
    assert info["codec"] == "h264"


def test_frames_info_text_on_image_folder(tmp_path, capsys):
    import cv2

    for i in (1, 2, 10):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((20, 30, 3), i, np.uint8))
    assert main(["frames", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "frames" in out and "3" in out and "30" in out


def test_frames_info_missing_file_is_one_line_error(tmp_path):
    missing = tmp_path / "nope.mp4"
    assert_one_line_error(run_cli("frames", "info", str(missing)), "nope.mp4")


def test_frames_info_corrupt_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(4096))
    assert_one_line_error(run_cli("frames", "info", str(bad)), "broken.mp4")


def test_frames_split_seconds_and_parts(bedroom_mp4, tmp_path, capsys):
    from dl_utils.video_utils import open_frames, write_video

    # bedroom.mp4 has a single keyframe, so re-encode it with a keyframe every second (30 frames):
    # cuts without re-encoding can only land on keyframes.
    clip = write_video(
        tmp_path / "bedroom_gop30.mp4", open_frames(bedroom_mp4), fps=30, gop=30, preset="ultrafast"
    )
    out = tmp_path / "parts"
    assert main(["frames", "split", str(clip), "--seconds", "2", "--out", str(out)]) == 0
    parts = [Path(p) for p in capsys.readouterr().out.split()]
    assert len(parts) == 4 and all(p.is_file() and p.parent == out for p in parts)
    assert sum(len(open_frames(p)) for p in parts) == 200
    out2 = tmp_path / "three"
    assert main(["frames", "split", str(clip), "--parts", "3", "--out", str(out2)]) == 0
    parts2 = [Path(p) for p in capsys.readouterr().out.split()]
    assert len(parts2) == 3
    assert sum(len(open_frames(p)) for p in parts2) == 200


def test_frames_split_needs_exactly_one_of_seconds_parts(bedroom_mp4, tmp_path):
    proc = run_cli("frames", "split", str(bedroom_mp4), "--out", str(tmp_path / "x"))
    assert_one_line_error(proc, "--seconds", "--parts")


@pytest.mark.parametrize("fmt", ["cvat-video", "cvat-images", "coco"])
def test_export_import_round_trip_bit_exact(tmp_path, fmt, capsys):
    src = tmp_path / "job.sqlite"
    written = make_store(src)
    out = tmp_path / ("out.json" if fmt == "coco" else "out.xml")
    assert main(["export", str(src), "--format", fmt, "--out", str(out)]) == 0
    assert out.is_file()
    back = tmp_path / "back.sqlite"
    assert main(["import", str(out), "--out", str(back)]) == 0
    assert "imported" in capsys.readouterr().out
    with AnnotationStore.open(back, readonly=True) as st:
        objs = st.objects()
        assert sorted(o.label for o in objs) == ["car", "person"]
        by_label = {o.label: o.id for o in objs}
        src_ids = {"car": 1, "person": 2}
        got = 0
        for frame, insts in st.iter_frames():
            for inst in insts.visible():
                label = next(lb for lb, i in by_label.items() if i == inst.object_id)
                ref = written[(frame, src_ids[label])]
                assert np.array_equal(inst.mask, ref), (fmt, frame, label)
                got += 1
        assert got == sum(1 for m in written.values() if m.any())
        assert st.media.frames == list(range(3, 19, 2))


def test_export_png_masks(tmp_path, capsys):
    src = tmp_path / "job.sqlite"
    written = make_store(src)
    out = tmp_path / "pngs"
    assert main(["export", str(src), "--format", "png-masks", "--out", str(out)]) == 0
    pngs = sorted(out.rglob("mask_*.png"))
    assert len(pngs) >= len([m for m in written.values() if m.any()])


def test_export_shape_option(tmp_path):
    src = tmp_path / "job.sqlite"
    make_store(src)
    out = tmp_path / "boxes.xml"
    assert main(["export", str(src), "--format", "cvat-video", "--out", str(out), "--shape", "box"]) == 0
    text = out.read_text()
    assert "<box " in text and "<mask " not in text


def test_import_refuses_to_clobber_existing_store(tmp_path):
    src = tmp_path / "job.sqlite"
    make_store(src)
    out = tmp_path / "out.xml"
    assert main(["export", str(src), "--format", "cvat-video", "--out", str(out)]) == 0
    proc = run_cli("import", str(out), "--out", str(src))
    assert_one_line_error(proc, "job.sqlite", "--overwrite")
    with AnnotationStore.open(src, readonly=True) as st:  # untouched
        assert st.count_instances() == 16


def test_import_malformed_file_leaves_no_store(tmp_path):
    bad = tmp_path / "broken.xml"
    bad.write_text("<annotations><version>1.1</version><track id='0'")
    out = tmp_path / "new.sqlite"
    proc = run_cli("import", str(bad), "--out", str(out))
    assert_one_line_error(proc, "broken.xml")
    assert not out.exists()


def test_import_malformed_json(tmp_path):
    bad = tmp_path / "coco.json"
    bad.write_text('{"images": [], "annotations": [ }')
    assert_one_line_error(run_cli("import", str(bad), "--out", str(tmp_path / "s.sqlite")), "coco.json")


def test_store_info(tmp_path, capsys):
    src = tmp_path / "job.sqlite"
    make_store(src)
    assert main(["store", "info", str(src)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["objects"] == 2 and info["instances"] == 16


def test_store_info_missing_store(tmp_path):
    assert_one_line_error(run_cli("store", "info", str(tmp_path / "none.sqlite")), "none.sqlite")


def test_classes_check_template_and_bad_table(tmp_path, capsys):
    from dl_utils.classes import template_path

    assert main(["classes", "check", str(template_path("xlsx"))]) == 0
    assert "classes OK" in capsys.readouterr().out
    bad = tmp_path / "classes.csv"
    bad.write_text("name,id,color\ncar,1,#ff0000\ncar,2,#00ff00\n")
    assert_one_line_error(run_cli("classes", "check", str(bad)), "classes.csv", "row 3", "car")


def test_unknown_export_format_is_a_usage_error(tmp_path):
    proc = run_cli("export", str(tmp_path / "x.sqlite"), "--format", "yolo", "--out", "o")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_internal_error_is_one_line_exit_2(monkeypatch, capsys):
    import dl_utils.cli as cli

    def boom(args):
        raise RuntimeError("kaput")

    monkeypatch.setattr(cli, "cmd_store_info", boom)
    monkeypatch.delenv("DL_UTILS_DEBUG", raising=False)
    assert cli.main(["store", "info", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RuntimeError: kaput" in err[0] and "--debug" in err[0]


# ---------------------------------------------------------------- segment (SAM2 video)
def test_segment_command_end_to_end(bedroom_mp4, tmp_path):
    """``dl-utils segment`` in a real subprocess: checkpoint file, reduced size, resume, bad prompts."""
    from tests.sam2_fixtures import HAVE_SAM2, SKIP_REASON, build_tiny

    if not HAVE_SAM2:
        pytest.skip(SKIP_REASON)
    import torch

    from dl_utils.video_utils import open_frames, write_video

    clip = write_video(tmp_path / "clip.mp4", open_frames(bedroom_mp4, stop=5, resize=(320, 180)),
                       fps=30, preset="ultrafast")
    ckpt = tmp_path / "tiny_random.pt"
    torch.save({"model": build_tiny(video=True).state_dict()}, ckpt)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([
        {"frame": 2, "object": 1, "label": "bed", "points": [[150, 120, 1], [20, 20, 0]]},
        {"frame": 2, "object": 2, "label": "lamp", "box": [40, 30, 120, 110]},
    ]))
    store = tmp_path / "seg.sqlite"
    args = ["segment", str(clip), "--out", str(store), "--prompts", str(prompts), "--direction", "both",
            "--checkpoint", str(ckpt), "--image-size", "256", "--device", "cpu"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    # the prompted frame is written when the prompt is applied; propagation fills the other five
    assert summary["objects"] == [1, 2] and summary["frames_written"] == 5
    with AnnotationStore.open(store, readonly=True) as st:
        assert st.frames() == list(range(6))
        assert {o.label for o in st.objects()} == {"bed", "lamp"}
        for f in range(6):
            insts = st.read_frame(f)
            assert sorted(insts.object_ids.tolist()) == [1, 2]
            assert all(i.mask.shape == (180, 320) for i in insts)
    again = run_cli(*args)  # a store that already holds results resumes: nothing to recompute
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["frames_written"] == 0
    prompts.write_text(json.dumps([{"frame": 99, "object": 1, "label": "bed", "points": [[1, 1, 1]]}]))
    assert_one_line_error(run_cli(*args), "frame 99")
