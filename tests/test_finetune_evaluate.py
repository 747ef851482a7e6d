"""dl_utils.finetune.evaluate: metrics on hand-made masks, and evaluate() on two random-weight tiny
SAM2 models at 256 px against ImageSegmenter.predict run by hand with the same clicks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from dl_utils.cv_utils import load_image, mask_iou, save_image
from dl_utils.errors import InputError, MediaError, ModelError
from dl_utils.finetune.clicks import fixed_clicks
from dl_utils.models import FINETUNE_FORMAT
from dl_utils.finetune.data import FrameRef, MaskDataset, MaskSample
from dl_utils.finetune.evaluate import (
    SHEET_PAD,
    SHEET_PANEL,
    EvalReport,
    ModelResult,
    SampleInfo,
    _resolve,
    boundary,
    boundary_f,
    boundary_tolerance,
    evaluate,
)
from tests.sam2_fixtures import TINY, build_tiny, requires_sam2, test_image


def disk(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


# ----------------------------------------------------------------------------- metrics
def test_boundary_f_on_hand_made_masks():
    a = np.zeros((64, 64), bool)
    a[10:40, 12:30] = True
    assert boundary_f(a, a) == 1.0
    assert boundary_tolerance(a.shape) == 1  # ceil(0.008 * 90.5)
    far = np.zeros_like(a)
    far[50:60, 45:60] = True
    assert boundary_f(a, far) == 0.0 and mask_iou(a, far) == 0.0
    shifted = np.roll(a, 1, axis=1)  # one pixel: within the tolerance
    assert boundary_f(shifted, a) == 1.0 and mask_iou(shifted, a) < 1.0
    assert 0 < boundary_f(np.roll(a, 6, axis=0), a) < 0.75  # the long sides still meet
    empty = np.zeros_like(a)
    assert boundary_f(empty, empty) == 1.0 and boundary_f(a, empty) == 0.0 and boundary_f(empty, a) == 0.0
    # the boundary is the inner outline; the frame's edge is none
    b = boundary(a)
    assert b.sum() == 2 * (30 + 18) - 4 and not (b & ~a).any()
    full = np.ones((20, 20), bool)
    assert not boundary(full).any() and boundary_f(full, full) == 1.0
    # a large image: the tolerance grows with the diagonal (DAVIS: 0.008 of it)
    assert boundary_tolerance((1080, 1920)) == math.ceil(0.008 * math.hypot(1080, 1920)) == 18


def _report(ious_a, ious_b, labels=("car", "car", "person")) -> EvalReport:
    samples = [SampleInfo(f"im{i}.png", f"im{i}.png", 0, f"im{i}.png", 1, lb) for i, lb in enumerate(labels)]
    return EvalReport(samples, [ModelResult("a", None, TINY, None, list(ious_a), list(ious_a), [0.5] * 3),
                                ModelResult("b", "b.pt", TINY, None, list(ious_b), list(ious_b), [0.5] * 3)],
                      256, 0, {})


def test_better_only_when_mean_iou_goes_up():
    same = _report([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert not same.better() and "not better" in same.format_table()
    worse = _report([0.5, 0.6, 0.7], [0.9, 0.6, 0.2])  # one big gain, mean down
    assert not worse.better() and "not better" in worse.verdict()
    up = _report([0.5, 0.6, 0.7], [0.5, 0.6, 0.75])
    assert up.better() and "b vs a: better" in up.format_table()
    assert [round(d.d_iou, 6) for d in worse.compare("a", "b")] == [0.4, 0.0, -0.5]
    assert up.per_class(1)["person"] == {"n": 1, "iou": 0.75, "boundary_f": 0.75}
    doc = json.loads(json.dumps(up.to_json()))
    assert doc["better"] is True and doc["models"][1]["classes"]["car"]["n"] == 2
    with pytest.raises(InputError, match="no model 'c'"):
        up.model("c")


# ----------------------------------------------------------------------------- evaluate
def _save_checkpoint(path: Path, seed: int, sidecar: bool) -> Path:
    import torch

    net = build_tiny(256, seed)
    torch.save({"model": net.state_dict()}, path)
    if sidecar:
        path.with_name(path.name + ".json").write_text(json.dumps({"format": FINETUNE_FORMAT, "base_model": TINY,
                                                                "image_size": 256}))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> MaskDataset:
    """Three images (two sizes), five masks of two classes."""
    root = tmp_path_factory.mktemp("evalset")
    samples = []
    for k, (h, w) in enumerate([(120, 160), (96, 128), (120, 160)]):
        path = save_image(root / f"im{k}.png", test_image(h, w, seed=k))
        ref = FrameRef(str(path), 0, str(path), path.name)
        samples.append(MaskSample(ref, 1, "car", disk(h, w, w * 0.3, h * 0.4, h * 0.2), "folder"))
        if k != 1:
            samples.append(MaskSample(ref, 2, "person", disk(h, w, w * 0.7, h * 0.6, h * 0.15), "folder"))
    return MaskDataset(samples, (str(root),))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return _save_checkpoint(d / "base.pt", 0, sidecar=True), _save_checkpoint(d / "tuned.pt", 1, sidecar=False)


def _by_hand(net, dataset: MaskDataset, seed: int) -> list[float]:
    from dl_utils.samal import ImageSegmenter

    seg = ImageSegmenter(net)
    out = []
    for s, c in zip(dataset.samples, fixed_clicks(dataset.samples, seed)):
        seg.set_image(dataset.image(s.ref))
        inst = seg.predict([list(p) for p in c.points] or None, c.box, object_id=s.object_id, refine=False)
        out.append(mask_iou(inst.mask, s.mask))
    return out


@requires_sam2
def test_evaluate_matches_the_engine_by_hand(dataset, checkpoints, tmp_path):
    base, tuned = checkpoints
    sheet = tmp_path / "out" / "sheet.png"
    rep = evaluate(dataset, [base, str(tuned)], image_size=256, seed=3, device="cpu", progress=False,
                   sheet=sheet, sheet_rows=2)
    assert [m.name for m in rep.models] == ["base.pt", "tuned.pt"] and rep.image_size == 256
    assert rep.models[0].base_model == TINY and rep.models[1].base_model == TINY  # sidecar / guessed
    assert rep.models[0].iou == _by_hand(build_tiny(256, 0), dataset, 3)
    assert rep.models[1].iou == _by_hand(build_tiny(256, 1), dataset, 3)
    for m in rep.models:
        assert len(m.iou) == len(m.boundary_f) == len(dataset.samples)
        assert all(0.0 <= v <= 1.0 for v in m.iou + m.boundary_f)
    doc = json.loads(json.dumps(rep.to_json()))
    assert doc["models"][1]["iou"] == rep.models[1].iou and len(doc["samples"]) == 5
    assert doc["better"] == (np.mean(rep.models[1].iou) > np.mean(rep.models[0].iou))
    table = rep.format_table()
    for word in ("car", "person", "base.pt", "tuned.pt", "all", "objects"):
        assert word in table
    assert ("not better" in table) != rep.better()
    # the contact sheet: rows of four square panels, written whole (no temporary file left)
    img = load_image(sheet)
    deltas = [d.d_iou for d in rep.compare()]
    rows = (min(2, sum(d > 0 for d in deltas)) + min(2, sum(d < 0 for d in deltas))) or 2
    assert img.shape[1] == 4 * SHEET_PANEL + 5 * SHEET_PAD
    title_h = (img.shape[0] - (rows + 1) * SHEET_PAD) / rows - SHEET_PANEL
    assert title_h == int(title_h) and 0 < title_h < 40
    assert [p.name for p in sheet.parent.iterdir()] == ["sheet.png"]
    # the same clicks: a second run gives the same numbers
    again = evaluate(dataset, [tuned], image_size=256, seed=3, device="cpu", progress=False)
    assert again.models[0].iou == rep.models[1].iou


@requires_sam2
def test_bad_inputs_are_named(dataset, checkpoints, tmp_path):
    base, tuned = checkpoints
    with pytest.raises(InputError, match="no masks"):
        evaluate(MaskDataset([]), [base], progress=False)
    with pytest.raises(InputError, match="no model"):
        evaluate(dataset, [], progress=False)
    with pytest.raises(ModelError, match="missing.pt does not exist"):
        evaluate(dataset, [tmp_path / "missing.pt"], progress=False)
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(tuned.read_bytes())
    wrong.with_name("wrong.pt.json").write_text(json.dumps({"format": FINETUNE_FORMAT,
                                                            "base_model": "sam2.1_hiera_small"}))
    with pytest.raises(ModelError, match=r"model 1 of 1, .*wrong\.pt \(base model sam2.1_hiera_small\).*"
                                         r"does not match"):
        evaluate(dataset, [wrong], image_size=256, device="cpu", progress=False)
    bad_side = tmp_path / "side.pt"
    bad_side.write_bytes(b"x")
    bad_side.with_name("side.pt.json").write_text("{not json")
    with pytest.raises(ModelError, match="sidecar .*side.pt.json"):
        evaluate(dataset, [bad_side], progress=False)
    gone = tmp_path / "gone.png"
    save_image(gone, test_image(120, 160))
    ref = FrameRef(str(gone), 0, str(gone), gone.name)
    ds = MaskDataset([MaskSample(ref, 1, "car", disk(120, 160, 50, 50, 20), "folder")])
    gone.unlink()
    with pytest.raises(MediaError, match="gone.png"):
        evaluate(ds, [base], image_size=256, device="cpu", progress=False)
    with pytest.raises(InputError, match="two models"):
        evaluate(dataset, [base], sheet=tmp_path / "s.png", progress=False)


def test_registry_names_are_models():
    spec = _resolve("sam2.1_hiera_tiny", None)
    assert (spec.base_model, spec.checkpoint) == ("sam2.1_hiera_tiny", None)
    # cv2 is what the metrics use; a plain numpy check that the erosion kernel is a cross
    assert cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)).sum() == 5
