"""bench/track_eval.py and bench/track_metrics.py: LaSOT one-pass evaluation from a store (issue 18).

Every expected number is worked out by hand in the test from the protocol (21 IoU thresholds
0..1 step 0.05 with IoU > t, centre distance <= t px for 0..50, normalised distance 0..0.5 step
0.01)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dl_utils.annotations import Instance, MediaInfo
from dl_utils.errors import InputError
from dl_utils.store import AnnotationStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import track_eval  # noqa: E402  (bench/ is not a package)
import track_metrics as tm  # noqa: E402

H, W = 40, 60


def test_threshold_grids_are_the_toolkits():
    assert len(tm.IOU_THRESHOLDS) == 21 and tm.IOU_THRESHOLDS[0] == 0 and tm.IOU_THRESHOLDS[-1] == 1
    assert np.allclose(np.diff(tm.IOU_THRESHOLDS), 0.05)
    assert list(tm.PIXEL_THRESHOLDS) == list(range(51)) and tm.PIXEL_THRESHOLDS[tm.PRECISION_AT] == 20
    assert len(tm.NORM_THRESHOLDS) == 51 and tm.NORM_THRESHOLDS[-1] == 0.5


def test_perfect_tracker():
    gt = {f: (10.0, 5.0, 20.0, 10.0) for f in range(5)}
    s = tm.scores(tm.frame_errors(dict(gt), gt))
    # IoU 1 passes every threshold but the last (1 > 1 is false): 20 of 21
    assert s.success_auc == pytest.approx(20 / 21)
    assert s.precision_20 == 1.0 and s.norm_precision_auc == 1.0
    assert (s.frames, s.excluded, s.missing) == (5, 0, 0)


def test_shifted_box_known_iou():
    gt = {0: (0.0, 0.0, 10.0, 10.0)}
    pred = {0: (5.0, 0.0, 10.0, 10.0)}  # overlap 5x10 = 50, union 150: IoU 1/3
    err = tm.frame_errors(pred, gt)
    assert err.iou[0] == pytest.approx(1 / 3)
    assert err.center[0] == pytest.approx(5.0) and err.norm_center[0] == pytest.approx(0.5)
    s = tm.scores(err)
    # IoU 1/3 > t for t = 0, 0.05, ..., 0.30: 7 thresholds
    assert s.success_auc == pytest.approx(7 / 21)
    assert list(s.success[:7]) == [1.0] * 7 and not s.success[7:].any()
    # distance 5 <= t for t = 5..50: precision@20 = 1, the curve starts at t=5
    assert s.precision_20 == 1.0 and s.precision[4] == 0.0 and s.precision[5] == 1.0
    # normalised 0.5 <= t only for t = 0.5: 1 of 51
    assert s.norm_precision_auc == pytest.approx(1 / 51)


def test_missing_prediction_is_a_failure():
    gt = {0: (0.0, 0.0, 10.0, 10.0), 1: (0.0, 0.0, 10.0, 10.0)}
    err = tm.frame_errors({0: (0.0, 0.0, 10.0, 10.0), 1: None}, gt)
    assert err.missing == [1] and err.iou[1] == 0 and math.isinf(err.center[1])
    s = tm.scores(err)
    assert s.success_auc == pytest.approx(0.5 * 20 / 21)
    assert s.precision_20 == 0.5 and s.norm_precision_auc == 0.5
    # a frame the prediction lacks altogether counts the same
    assert tm.scores(tm.frame_errors({0: (0.0, 0.0, 10.0, 10.0)}, gt)).precision_20 == 0.5


def test_excluded_frames_leave_numerator_and_denominator():
    box = (0.0, 0.0, 10.0, 10.0)
    gt = {0: box, 1: (0.0, 0.0, 0.0, 0.0), 2: (math.nan,) * 4, 3: None, 4: box, 5: box}
    err = tm.frame_errors({0: box, 4: box}, gt, excluded=[5])  # frame 5 flagged absent
    assert err.frames == [0, 4] and err.excluded == [1, 2, 3, 5] and err.missing == []
    s = tm.scores(err)
    assert s.success_auc == pytest.approx(20 / 21) and s.precision_20 == 1.0


# ------------------------------------------------------------------ stores and files
def _store(path: Path, frames: list[int], boxes: dict[int, tuple[int, int, int, int] | None],
           **media) -> Path:
    """A store whose object 1 has a mask filling each (x1, y1, x2, y2) box; None: an empty frame."""
    with AnnotationStore.create(path, MediaInfo(name="shot", width=W, height=H, frames=frames,
                                                start=frames[0], stop=frames[-1], **media)) as st:
        o = st.add_object("car")
        for f, b in boxes.items():
            m = np.zeros((H, W), bool)
            if b is not None:
                x1, y1, x2, y2 = b
                m[y1:y2, x1:x2] = True
            st.write_frame(f, [Instance(o.id, mask=m)])
    return path


FRAMES = [1001, 1002, 1004, 1005]  # shot numbers with a gap
GT_XYWH = [(10, 10, 10, 10)] * 4


@pytest.fixture
def stores(tmp_path):
    names = {"frame_names": [f"s.{f}.png" for f in FRAMES], "numbering": "names"}
    perfect = _store(tmp_path / "perfect.sqlite", FRAMES, {f: (10, 10, 20, 20) for f in FRAMES}, **names)
    shifted = _store(tmp_path / "shifted.sqlite", FRAMES,
                     {1001: (10, 10, 20, 20), 1002: (15, 10, 25, 20), 1004: None}, **names)  # 1005: never written
    gt = tmp_path / "groundtruth.txt"
    gt.write_text("".join(f"{x},{y},{w},{h}\n" for x, y, w, h in GT_XYWH))
    return perfect, shifted, gt


def test_evaluate_store_both_gt_formats(stores, tmp_path):
    perfect, shifted, gt = stores
    row = track_eval.evaluate_store(perfect, gt)
    assert row["object"] == 1 and row["frames"] == 4
    assert row["success_auc"] == pytest.approx(20 / 21)
    # shifted: frame 1001 IoU 1, 1002 IoU 1/3 (5 px), 1004 empty, 1005 missing
    row = track_eval.evaluate_store(shifted, gt)
    assert row["missing"] == 2
    assert row["success_auc"] == pytest.approx((20 + 7) / 21 / 4)
    assert row["precision_20"] == pytest.approx(0.5)
    assert row["norm_precision_auc"] == pytest.approx((51 + 1) / 51 / 4)
    js = tmp_path / "gt.json"
    js.write_text(json.dumps({str(f): [10, 10, 20, 20] for f in FRAMES[:2]}
                             | {"1004": None, "1005": [0, 0, 0, 0]}))
    row = track_eval.evaluate_store(shifted, js)
    assert (row["frames"], row["excluded"], row["missing"]) == (2, 2, 0)
    assert row["success_auc"] == pytest.approx((20 + 7) / 21 / 2)


def test_first_frame_and_absent_files(stores, tmp_path):
    perfect, _, _ = stores
    gt = tmp_path / "gt.txt"  # 6 lines numbered 1000..1005: 1000 and 1003 are not in the store
    gt.write_text("\n".join(["10\t10\t10\t10"] * 6) + "\n")
    row = track_eval.evaluate_store(perfect, gt, first_frame=1000)
    assert (row["frames"], row["missing"]) == (6, 2)
    occl = tmp_path / "full_occlusion.txt"
    occl.write_text("1,0,0,1,0,0")  # LaSOT writes the flags on one line
    oov = tmp_path / "out_of_view.txt"
    oov.write_text("0\n0\n0\n0\n0\n1\n")
    row = track_eval.evaluate_store(perfect, gt, first_frame=1000, absent=[occl, oov])
    assert (row["frames"], row["excluded"], row["missing"]) == (3, 3, 0)
    assert row["success_auc"] == pytest.approx(20 / 21)


@pytest.mark.parametrize("text,kw,says", [
    ("10,10,10,10\n" * 3, {}, r"gt\.txt has 3 boxes but .*perfect\.sqlite has 4 frames; .* --first-frame N"),
    ("10,10,10\n" * 4, {}, r"gt\.txt line 1: '10,10,10' is not 4 numbers x,y,w,h"),
    ("10,10,10,ten\n" * 4, {}, r"gt\.txt line 1: .* is not 4 numbers"),
    ("10,10,10,10\n" * 4, {"first_frame": 0}, r"none of the 4 ground-truth frames \(0\.\.3\) is a frame of"),
    ("0,0,0,0\n" * 4, {}, r"every ground-truth box of .* is excluded"),
    ("10,10,10,10\n" * 4, {"object_id": 7}, r"has no object 7; its objects are \[1\]"),
])
def test_one_line_errors(stores, tmp_path, text, kw, says):
    perfect, _, _ = stores
    gt = tmp_path / "gt.txt"
    gt.write_text(text)
    with pytest.raises(InputError, match=says) as e:
        track_eval.evaluate_store(perfect, gt, **kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("doc,says", [
    ("[1, 2]", r"must be a non-empty object"),
    ('{"a": [1, 2, 3, 4]}', r"key 'a' is not a frame number"),
    ('{"1001": [1, 2, 3]}', r"frame 1001: \[1, 2, 3\] is not \[x1, y1, x2, y2\] or null"),
    ('{"1001": ', r"is not valid JSON"),
])
def test_json_errors(stores, tmp_path, doc, says):
    perfect, _, _ = stores
    gt = tmp_path / "gt.json"
    gt.write_text(doc)
    with pytest.raises(InputError, match=says):
        track_eval.evaluate_store(perfect, gt)


def test_absent_file_of_wrong_length(stores, tmp_path):
    perfect, _, gt = stores
    (tmp_path / "occ.txt").write_text("0,1,0")
    with pytest.raises(InputError, match=r"occ\.txt has 3 flags but the ground truth has 4 boxes"):
        track_eval.evaluate_store(perfect, gt, absent=[tmp_path / "occ.txt"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "track_eval.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_end_to_end(stores, tmp_path):
    perfect, shifted, gt = stores
    r = _cli(str(perfect), str(shifted), "--gt", str(gt))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["store", "object"] and "success AUC" in lines[0]
    assert lines[1].split()[0] == "perfect.sqlite" and lines[1].split()[-3:] == ["0.952", "1.000", "1.000"]
    assert lines[2].split()[0] == "shifted.sqlite" and lines[2].split()[-3:] == [
        f"{27 / 84:.3f}", "0.500", f"{52 / 204:.3f}"]
    r = _cli(str(perfect), str(shifted), "--gt", str(gt), "--json", "--plot", str(tmp_path / "s.png"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [Path(s["store"]).name for s in doc["stores"]] == ["perfect.sqlite", "shifted.sqlite"]
    assert len(doc["thresholds"]["iou"]) == 21 and doc["precision_at"] == 20
    assert doc["stores"][0]["success_curve"] == [1.0] * 20 + [0.0]
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_line(stores, tmp_path):
    perfect, _, _ = stores
    bad = tmp_path / "bad.txt"
    bad.write_text("1,2\n")
    r = _cli(str(perfect), "--gt", str(bad))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("track_eval: error: ")
    r = _cli(str(tmp_path / "nope.sqlite"), "--gt", str(bad))
    assert r.returncode == 2 and "store" in r.stderr and r.stderr.count("\n") == 1


def test_plot_refused_without_matplotlib(stores, tmp_path, monkeypatch, capsys):
    perfect, _, gt = stores
    monkeypatch.setattr(track_eval, "_matplotlib", lambda: False)
    assert track_eval.main([str(perfect), "--gt", str(gt), "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--plot needs matplotlib" in err
    assert not (tmp_path / "p.png").exists()


def test_several_objects_need_object(tmp_path):
    path = tmp_path / "two.sqlite"
    with AnnotationStore.create(path, MediaInfo(name="v", width=W, height=H, frames=[0, 1])) as st:
        a, b = st.add_object("car"), st.add_object("car")
        m = np.zeros((H, W), bool)
        m[10:20, 10:20] = True
        st.write_frame(0, [Instance(a.id, mask=m), Instance(b.id, box=(0, 0, 5, 5))])
    gt = tmp_path / "gt.txt"
    gt.write_text("0,0,5,5\n0,0,5,5\n")
    with pytest.raises(InputError, match=r"holds 2 objects \[1, 2\]; choose one with --object ID"):
        track_eval.evaluate_store(path, gt)
    row = track_eval.evaluate_store(path, gt, object_id=b.id)  # a box instance: its own box
    assert (row["frames"], row["missing"]) == (2, 1)
    assert row["precision_20"] == 0.5
