"""The drivers layer: options objects own their CLI options (unchanged), one driver path, layering."""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from dl_utils.cli import build_parser
from dl_utils.dinoal.detections import Detections
from dl_utils.drivers import DetectorOptions, SamOptions, TrackOptions
from dl_utils.drivers.run import STEPS_KEY, run_into_store
from dl_utils.errors import InputError
from dl_utils.store import AnnotationStore

PKG = Path(__file__).resolve().parent.parent / "dl_utils"

#: every option of the three commands as it was before the options objects: name -> (dest, default,
#: type, choices, required, action). Help texts are compared against the same snapshot's commands below.
BEFORE = {
    'segment': {
        'source': ('source', None, 'None', None, True, '_StoreAction'),
        '--frame-numbers': ('frame_numbers', 'index', 'None', ('index', 'names'), False, '_StoreAction'),
        '--first-frame': ('first_frame', 0, 'int', None, False, '_StoreAction'),
        '--out': ('out', None, 'None', None, True, '_StoreAction'),
        '--prompts': ('prompts', None, 'None', None, True, '_StoreAction'),
        '--direction': ('direction', 'forward', 'None', ('forward', 'backward', 'both'), False, '_StoreAction'),
        '--start': ('start', None, 'int', None, False, '_StoreAction'),
        '--stop': ('stop', None, 'int', None, False, '_StoreAction'),
        '--model': ('model', 'sam2.1_hiera_tiny', 'None', None, False, '_StoreAction'),
        '--checkpoint': ('checkpoint', None, 'None', None, False, '_StoreAction'),
        '--image-size': ('image_size', None, 'int', None, False, '_StoreAction'),
        '--device': ('device', None, 'None', None, False, '_StoreAction'),
        '--dry-run': ('dry_run', False, 'None', None, False, '_StoreTrueAction'),
        '--tracker': ('tracker', 'sam2', 'None', ('sam2', 'samurai'), False, '_StoreAction'),  # issue 18
        '--samurai': ('samurai', None, 'None', None, False, '_AppendAction'),  # issue 18: SAMURAI parameters
        '--force': ('force', False, 'None', None, False, '_StoreTrueAction'),  # issue 18: switch tracker
        '--precision': ('precision', None, 'None', ('fp32', 'bf16', 'fp16'), False, '_StoreAction'),  # issue 20
        '--compile': ('sam_compile', False, 'None', None, False, '_StoreTrueAction'),  # issue 20: vos_optimized
    },
    'detect': {
        'source': ('source', None, 'None', None, True, '_StoreAction'),
        '--frame-numbers': ('frame_numbers', 'index', 'None', ('index', 'names'), False, '_StoreAction'),
        '--first-frame': ('first_frame', 0, 'int', None, False, '_StoreAction'),
        '--text': ('text', None, 'None', None, False, '_StoreAction'),  # optional with --backend onnx (issue 19)
        '--out': ('out', None, 'None', None, True, '_StoreAction'),
        '--every': ('every', None, 'int', None, False, '_StoreAction'),
        '--backend': ('backend', 'groundingdino', 'None', ('groundingdino', 'transformers', 'sam3', 'onnx'), False,
                      '_StoreAction'),  # sam3: issue 17; onnx: issue 19
        '--model': ('model', None, 'None', None, False, '_StoreAction'),
        '--box-threshold': ('box_threshold', 0.35, 'float', None, False, '_StoreAction'),
        '--nms-iou': ('nms_iou', 0.7, 'float', None, False, '_StoreAction'),  # issue 19
        '--text-threshold': ('text_threshold', 0.25, 'float', None, False, '_StoreAction'),
        '--segment': ('segment', False, 'None', None, False, '_StoreTrueAction'),
        '--classes': ('classes', None, 'None', None, False, '_StoreAction'),
        '--device': ('device', None, 'None', None, False, '_StoreAction'),
        '--text-encoder': ('text_encoder', None, 'None', None, False, '_StoreAction'),
        '--bpe': ('bpe', None, 'None', None, False, '_StoreAction'),  # issue 17: SAM 3's vocabulary
        '--no-track': ('track', True, 'None', None, False, '_StoreFalseAction'),
        '--max-gap': ('max_gap', 30, 'int', None, False, '_StoreAction'),
        '--max-objects': ('max_objects', None, 'int', None, False, '_StoreAction'),
        '--sam-model': ('sam_model', None, 'None', None, False, '_StoreAction'),
        '--sam-checkpoint': ('sam_checkpoint', None, 'None', None, False, '_StoreAction'),
        '--image-size': ('image_size', None, 'int', None, False, '_StoreAction'),
        '--detector-size': ('detector_size', None, 'int', None, False, '_StoreAction'),
        '--tracker': ('tracker', 'sam2', 'None', ('sam2', 'samurai'), False, '_StoreAction'),  # issue 18
        '--samurai': ('samurai', None, 'None', None, False, '_AppendAction'),  # issue 18: SAMURAI parameters
        '--force': ('force', False, 'None', None, False, '_StoreTrueAction'),  # issue 18: switch tracker
        '--precision': ('precision', None, 'None', ('fp32', 'bf16', 'fp16'), False, '_StoreAction'),  # issue 20
        '--compile': ('sam_compile', False, 'None', None, False, '_StoreTrueAction'),  # issue 20: vos_optimized
    },
    'annotate': {
        'source': ('source', None, 'None', None, True, '_StoreAction'),
        '--frame-numbers': ('frame_numbers', 'index', 'None', ('index', 'names'), False, '_StoreAction'),
        '--first-frame': ('first_frame', 0, 'int', None, False, '_StoreAction'),
        '--out': ('out', None, 'None', None, True, '_StoreAction'),
        '--text': ('text', None, 'None', None, False, '_StoreAction'),
        '--points': ('points', None, 'None', None, False, '_StoreAction'),
        '--cvat-task': ('cvat_task', None, 'int', None, False, '_StoreAction'),
        '--cvat-shape': ('cvat_shape', 'mask', 'None', ('mask', 'polygon', 'box'), False, '_StoreAction'),
        '--direction': ('direction', 'both', 'None', ('forward', 'backward', 'both'), False, '_StoreAction'),
        '--every': ('every', None, 'int', None, False, '_StoreAction'),
        '--backend': ('backend', 'groundingdino', 'None', ('groundingdino', 'transformers', 'sam3', 'onnx'), False,
                      '_StoreAction'),  # sam3: issue 17; onnx: issue 19
        '--model': ('model', None, 'None', None, False, '_StoreAction'),
        '--box-threshold': ('box_threshold', 0.35, 'float', None, False, '_StoreAction'),
        '--nms-iou': ('nms_iou', 0.7, 'float', None, False, '_StoreAction'),  # issue 19
        '--text-threshold': ('text_threshold', 0.25, 'float', None, False, '_StoreAction'),
        '--classes': ('classes', None, 'None', None, False, '_StoreAction'),
        '--text-encoder': ('text_encoder', None, 'None', None, False, '_StoreAction'),
        '--bpe': ('bpe', None, 'None', None, False, '_StoreAction'),  # issue 17: SAM 3's vocabulary
        '--max-gap': ('max_gap', 30, 'int', None, False, '_StoreAction'),
        '--max-objects': ('max_objects', None, 'int', None, False, '_StoreAction'),
        '--sam-model': ('sam_model', None, 'None', None, False, '_StoreAction'),
        '--sam-checkpoint': ('sam_checkpoint', None, 'None', None, False, '_StoreAction'),
        '--image-size': ('image_size', None, 'int', None, False, '_StoreAction'),
        '--device': ('device', None, 'None', None, False, '_StoreAction'),
        '--tracker': ('tracker', 'sam2', 'None', ('sam2', 'samurai'), False, '_StoreAction'),  # issue 18
        '--samurai': ('samurai', None, 'None', None, False, '_AppendAction'),  # issue 18: SAMURAI parameters
        '--force': ('force', False, 'None', None, False, '_StoreTrueAction'),  # issue 18: switch tracker
        '--precision': ('precision', None, 'None', ('fp32', 'bf16', 'fp16'), False, '_StoreAction'),  # issue 20
        '--compile': ('sam_compile', False, 'None', None, False, '_StoreTrueAction'),  # issue 20: vos_optimized
    },
}


def _sub(command: str) -> argparse.ArgumentParser:
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("command", sorted(BEFORE))
def test_options_of_each_command_are_unchanged(command):
    now = {}
    for a in _sub(command)._actions:
        if a.dest == "help":
            continue
        name = a.option_strings[0] if a.option_strings else a.dest
        now[name] = (a.dest, a.default, getattr(a.type, "__name__", repr(a.type)),
                     tuple(a.choices) if a.choices else None, a.required, type(a).__name__)
    assert now == BEFORE[command]


def test_parsed_argv_gives_the_options_objects():
    p = build_parser()
    a = p.parse_args(["detect", "x.mp4", "--text", "car", "--out", "o.sqlite", "--box-threshold", "0.5",
                      "--sam-model", "small", "--device", "cpu", "--no-track", "--every", "3",
                      "--detector-size", "400"])
    assert DetectorOptions.from_args(a) == DetectorOptions(box_threshold=0.5, device="cpu", detector_size=400)
    assert SamOptions.from_args(a, command="detect") == SamOptions(model="small", device="cpu")
    assert TrackOptions.from_args(a) == TrackOptions(every=3, track=False)
    a = p.parse_args(["annotate", "x.mp4", "--out", "o.sqlite", "--direction", "forward", "--model", "m.pth",
                      "--sam-checkpoint", "c.pt", "--max-objects", "4"])
    assert DetectorOptions.from_args(a) == DetectorOptions(model="m.pth")
    assert SamOptions.from_args(a, command="annotate") == SamOptions(checkpoint="c.pt", direction="forward")
    assert TrackOptions.from_args(a) == TrackOptions(max_objects=4)
    from dl_utils.tracking import TrackerConfig

    assert TrackOptions.from_args(a).tracker_config() == TrackerConfig(max_gap=30, max_objects=4)
    a = p.parse_args(["segment", "x.mp4", "--out", "o.sqlite", "--prompts", "p.json"])
    s = SamOptions.from_args(a, command="segment")
    assert s.direction == "forward" and s.model_name == "sam2.1_hiera_tiny"


def test_each_default_is_written_once():
    """The thresholds are the engine's; the drivers' library calls take the options' defaults."""
    from dl_utils.dinoal.detector import GroundedDetector
    from dl_utils.drivers.annotate import run_annotate
    from dl_utils.drivers.detect import run_detect

    eng = inspect.signature(GroundedDetector.__init__).parameters
    d = DetectorOptions()
    assert (d.box_threshold, d.text_threshold) == (eng["box_threshold"].default, eng["text_threshold"].default)
    for fn in (run_annotate, run_detect):
        ps = inspect.signature(fn).parameters
        assert ps["box_threshold"].default == d.box_threshold and ps["max_gap"].default == TrackOptions().max_gap
    src = "\n".join(f.read_text() for f in PKG.rglob("*.py"))
    assert len(re.findall(r"threshold[^\n]*\b0\.35\b", src)) == 1  # GroundedDetector's own
    # the engine options' files (dataset remap's --classes and cvat labels' are class tables of their own)
    drivers = "\n".join(f.read_text() for f in (PKG / "drivers").rglob("*.py")
                         if f.name not in ("dataset.py", "cvat.py", "cvat_projects.py", "cvat_transfer.py"))
    for opt in ("--backend", "--model", "--box-threshold", "--text-threshold", "--classes", "--text-encoder",
                "--device", "--every", "--max-gap", "--max-objects", "--sam-model", "--sam-checkpoint",
                "--image-size"):
        assert drivers.count(f'"{opt}"') <= 2, opt  # once for detect/annotate (+ segment's --model etc.)
        assert (PKG / "annotate.py").read_text().count(f'"{opt}"') == 0
        assert (PKG / "dinoal" / "pipeline.py").read_text().count(f'"{opt}"') == 0


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    pkg = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                out.add(".".join([*base, node.module or ""]).rstrip("."))
            else:
                out.add(node.module or "")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("engine", ["dinoal", "sam2al", "samal.py", "tracking.py", "store.py", "formats", "cvat",
                                    "video_utils", "cv_utils", "annotations.py"])
def test_engines_and_spine_never_import_drivers(engine):
    root = PKG / engine
    files = [root] if root.suffix == ".py" else sorted(root.rglob("*.py"))
    for f in files:
        bad = [m for m in _imports(f) if m.startswith("dl_utils.drivers")]
        assert not bad, f"{f} imports {bad}"


def test_driver_code_left_the_engines():
    import dl_utils.dinoal as dinoal
    import dl_utils.sam2al as sam2al

    for name in ("run_detect", "run_detect_cli", "add_detect_arguments", "check_counts"):
        assert not hasattr(dinoal, name) and not hasattr(dinoal.pipeline, name)
    for name in ("run_segment", "run_segment_cli", "add_segment_arguments", "plan_segment"):
        assert not hasattr(sam2al, name) and not hasattr(sam2al.segment, name)


# ----------------------------------------------------------------------------- the one driver, no models
class Squares:
    """Every white square is a 'box'."""

    name = "squares"

    def __init__(self):
        self.calls = 0

    def detect(self, image, prompt=None):
        import cv2

        self.calls += 1
        _, _, stats, _ = cv2.connectedComponentsWithStats((image[..., 0] > 200).astype(np.uint8))
        boxes = [[x, y, x + w, y + h] for x, y, w, h, a in stats[1:] if a >= 30]
        return Detections(boxes=np.array(boxes, float).reshape(-1, 4), scores=[0.9] * len(boxes),
                          phrases=["box"] * len(boxes), labels=["box"] * len(boxes), caption=str(prompt or ""))


@pytest.fixture
def folder(tmp_path):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(4):
        img = np.zeros((48, 64, 3), np.uint8)
        img[5 + i:25 + i, 10:30] = 255
        Image.fromarray(img).save(d / f"im_{i}.png")
    return d


def test_run_into_store_images_boxes_every_and_frames(folder, tmp_path):
    from dl_utils.dinoal.caption import parse_caption
    from dl_utils.video_utils import open_frames

    src = open_frames(folder)
    with AnnotationStore.create(tmp_path / "a.sqlite", src.media_info()) as st:
        det = Squares()
        res = run_into_store(src, st, prompt=parse_caption("box"), detector=det, segment=False,
                             track=TrackOptions(every=2), progress=False)
        assert res["tracked"] is False and res["every"] == 2
        assert res["text"] == {"status": "done", "detections": 2, "frames": 2} and det.calls == 2
        assert st.frames() == [0, 2] and st.get_meta(STEPS_KEY) is None  # no ledger: nothing recorded
        inst = next(iter(st.read_frame(2)))
        assert inst.mask is None and list(inst.box) == [10, 7, 30, 27]
        assert inst.label == "box" and inst.clicks is None  # a box-only detection: the box is geometry
        assert (inst.provenance.engine, inst.provenance.caption) == ("groundingdino", "box.")
        one = run_into_store(src, st, prompt=parse_caption("box"), detector=det, segment=False, frames=[3],
                             images={3: np.zeros((48, 64, 3), np.uint8)}, progress=False)
        assert one["text"]["detections"] == 0 and det.calls == 3  # the image given, not the file
    src.close()


def test_run_into_store_ledger_resumes_images(folder, tmp_path):
    from dl_utils.dinoal.caption import parse_caption
    from dl_utils.video_utils import open_frames

    src = open_frames(folder)
    with AnnotationStore.create(tmp_path / "l.sqlite", src.media_info()) as st:
        det = Squares()
        res = run_into_store(src, st, prompt=parse_caption("box"), detector=det, segment=False, ledger=True,
                             progress=False)
        assert res["text"]["images"] == 4 and det.calls == 4
        assert st.get_meta(STEPS_KEY)["text"] == {"status": "done", "prompt": "box.", "images": [[0, 3]]}
        assert [(r["kind"], r["status"]) for r in st.runs()] == [("annotate", "done")]
        again = run_into_store(src, st, prompt=parse_caption("box"), detector=det, segment=False, ledger=True,
                               progress=False)
        assert again["text"] == {"status": "done", "detections": 0, "frames": 0, "images": 4} and det.calls == 4
    src.close()


def test_bad_options_fail_before_anything_opens(tmp_path):
    from dl_utils.drivers.annotate import run_annotate
    from dl_utils.drivers.detect import run_detect

    with pytest.raises(InputError, match="--max-gap -1"):
        run_detect(tmp_path / "none.mp4", tmp_path / "o.sqlite", "car", max_gap=-1)
    with pytest.raises(InputError, match="direction='up'"):
        run_annotate(tmp_path / "none.mp4", tmp_path / "o.sqlite", text="car", direction="up")
    with pytest.raises(ValueError, match="command"):
        TrackOptions.add_arguments(argparse.ArgumentParser(), command="train")
    assert not (tmp_path / "o.sqlite").exists()


def test_annotate_and_detect_take_the_one_driver_path(folder, tmp_path, monkeypatch):
    """``run_annotate`` and ``run_detect`` hand their options objects to ``run_into_store``."""
    import dl_utils.drivers.run as run
    from dl_utils.annotate import run_annotate
    from dl_utils.drivers.detect import run_detect

    calls = []
    real = run.run_into_store

    def spy(src, store, **kw):
        calls.append(kw)
        return real(src, store, **kw)

    monkeypatch.setattr(run, "run_into_store", spy)
    s = run_detect(folder, tmp_path / "d.sqlite", "box", detector=Squares(), every=2, box_threshold=0.5,
                   progress=False)
    assert s["frames"] == 2 and s["detections"] == 2 and s["every"] == 2
    kw = calls[-1]
    assert kw["detector_options"].box_threshold == 0.5 and kw["track"].every == 2 and not kw.get("ledger")
    assert kw["segment"] is False and kw["run_id"] is not None
    pytest.importorskip("sam2")
    from dl_utils.samal import ImageSegmenter
    from tests.sam2_fixtures import build_tiny

    s = run_annotate(folder, tmp_path / "a.sqlite", text="box", every=2, detector=Squares(),
                     segmenter=ImageSegmenter(build_tiny()), progress=False)
    assert s["text"] == {"status": "done", "detections": 4, "images": 4}  # --every does nothing on images
    assert calls[-1]["ledger"] and calls[-1]["track"].every is None


def test_segment_takes_the_one_driver_path(folder, tmp_path, monkeypatch):
    """``run_segment`` runs through ``run_into_store`` with a ``ClickSpan`` (its range and report),
    on the video path even for an image folder, and keeps its summary's keys."""
    pytest.importorskip("sam2")
    import json

    import dl_utils.drivers.run as run
    from dl_utils.drivers.run import ClickSpan
    from dl_utils.drivers.segment import run_segment
    from tests.sam2_fixtures import build_tiny

    calls = []
    real = run.run_into_store

    def spy(src, store, **kw):
        calls.append(kw)
        return real(src, store, **kw)

    monkeypatch.setattr(run, "run_into_store", spy)
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"frame": 1, "object": 1, "label": "box", "points": [[20, 15, 1]]}]))
    s = run_segment(folder, tmp_path / "s.sqlite", prompts, direction="both", start=0, stop=2,
                    sam_model=build_tiny(video=True), progress=False)
    kw = calls[-1]
    assert isinstance(kw["span"], ClickSpan) and (kw["span"].start, kw["span"].stop) == (0, 2)
    assert kw["session"] is not None and kw["sam"].direction == "both" and kw["clicks_file"] == prompts
    assert s["status"] == "done" and s["prompts_applied"] == 1 and s["resumed"] is False
    assert (s["start"], s["stop"]) == (0, 2) and s["frames_written"] == 2 and s["dropped"] == {}  # the clicked frame is the keyframe
    assert list(s)[-5:] == ["prompts_applied", "resumed", "store", "dropped", "seconds_total"]
