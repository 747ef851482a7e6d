"""The onnx backend (dl_utils.dinoal.onnx_yolo): an Ultralytics-layout ONNX detector built in the test.

A tiny torch module whose output is a constant tensor in the YOLO layout (known boxes and scores; the
input is added times zero so the graph reads it) is exported with ``torch.onnx.export(dynamo=False)``
and given Ultralytics' metadata with the ``onnx`` package. The expected boxes are computed here,
independently (plain Python: best class per anchor, threshold, greedy per-class NMS, letterbox
inverse), with dyadic coordinates and a gain of 2 so both computations are exact: the boxes coming
through ``detect`` must be EQUAL, not close.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dl_utils.classes import ClassTable
from dl_utils.errors import InputError, ModelError

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore:.*TorchScript-based ONNX export:DeprecationWarning",
                                        "ignore:The feature will be removed:DeprecationWarning",
                                        "ignore:Converting a tensor to a Python boolean")  # ultralytics' export

NAMES = ["person", "car", "traffic light"]
SIZE = 320  # model input (square)


# ----------------------------------------------------------------------------- the model
def export(path: Path, output: np.ndarray, *, size: tuple[int, int] = (SIZE, SIZE), meta: dict | None = None,
           dynamic: bool = False) -> Path:
    """An ONNX file whose output 0 is ``output`` whatever the image (plus Ultralytics-style metadata);
    ``output`` is (1, ...) or (...) for a rank test, repeated per image of a dynamic batch."""

    class Const(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("out", torch.from_numpy(np.ascontiguousarray(output, dtype=np.float32)))

        def forward(self, x):  # one copy of the output per image of the batch
            return self.out.expand(x.shape[0], -1, -1) + 0.0 * x.mean(dim=(1, 2, 3))[:, None, None]

    kw = {"dynamic_axes": {"images": {0: "batch"}}} if dynamic else {}
    torch.onnx.export(Const(), torch.zeros(1, 3, *size), str(path), input_names=["images"],
                      output_names=["output0"], opset_version=17, dynamo=False, **kw)
    m = onnx.load(str(path))
    for k, v in (meta or {}).items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(path))
    return path


def ultra_meta(names=NAMES, imgsz=(SIZE, SIZE), **extra) -> dict:
    return {"names": str(dict(enumerate(names))), "imgsz": str(list(imgsz)), "stride": "32", "task": "detect",
            **{k: str(v) for k, v in extra.items()}}


def yolo_output(seed: int = 0, anchors: int = 60, nc: int = len(NAMES)) -> np.ndarray:
    """(1, 4+nc, A): integer centres/sizes (exact in float32), scores in eighths, clusters of
    overlapping boxes so NMS has work (same class suppressed, another class kept)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((1, 4 + nc, anchors), np.float32)
    centres = rng.integers(40, SIZE - 40, size=(anchors // 4, 2))
    for a in range(anchors):
        cx, cy = centres[a // 4] + rng.integers(-6, 7, size=2)
        out[0, 0, a], out[0, 1, a] = cx, cy
        out[0, 2, a], out[0, 3, a] = 2 * rng.integers(8, 40), 2 * rng.integers(8, 40)
        out[0, 4:, a] = rng.integers(0, 8, size=nc) / 8.0
    return out


# ----------------------------------------------------------------------------- independent reference
def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def expected_yolo(out, image_hw, *, thr=0.25, iou_thr=0.7, allowed=None):
    """Ultralytics' post-processing written out: (boxes in source pixels, scores, classes)."""
    h, w = image_hw
    gain = min(SIZE / h, SIZE / w)
    nw, nh = max(round(w * gain), 1), max(round(h * gain), 1)  # the resized image, whole pixels
    gx, gy = nw / w, nh / h  # Ultralytics 8.4 scales each axis back by its own ratio
    left = round((SIZE - nw) / 2 - 0.1)
    top = round((SIZE - nh) / 2 - 0.1)
    cands = []
    for a in range(out.shape[2]):
        col = [float(v) for v in out[0, :, a]]
        scores = col[4:]
        c = max(range(len(scores)), key=lambda k: (scores[k], -k))
        if scores[c] > thr and (allowed is None or c in allowed):
            cx, cy, bw, bh = col[:4]
            cands.append(([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], scores[c], c, a))
    cands.sort(key=lambda t: (-t[1], t[3]))
    kept = []
    for box, s, c, a in cands:
        if all(not (kc == c and iou(box, kb) > iou_thr) for kb, _, kc, _ in kept):
            kept.append((box, s, c, a))
    boxes = [[min(max((b[0] - left) / gx, 0), w), min(max((b[1] - top) / gy, 0), h),
              min(max((b[2] - left) / gx, 0), w), min(max((b[3] - top) / gy, 0), h)] for b, *_ in kept]
    return (np.array(boxes, np.float32).reshape(-1, 4), np.array([k[1] for k in kept], np.float32),
            [k[2] for k in kept])


def image(h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def yolo_model(tmp_path_factory) -> tuple[Path, np.ndarray]:
    out = yolo_output()
    return export(tmp_path_factory.mktemp("onnx") / "yolo.onnx", out, meta=ultra_meta()), out


# ----------------------------------------------------------------------------- boxes exactly
@pytest.mark.parametrize("hw", [(80, 160), (160, 80), (160, 160)])
def test_yolo_layout_boxes_equal_the_independent_computation(yolo_model, hw):
    from dl_utils.dinoal import OnnxYoloDetector

    path, out = yolo_model
    det = OnnxYoloDetector(path, device="cpu")
    assert det.layout == "yolo" and det.input_size == (SIZE, SIZE) and det.names == NAMES
    dets = det.detect(image(*hw))
    boxes, scores, classes = expected_yolo(out, hw)
    assert len(boxes) >= 5 and len(dets) == len(boxes)
    assert np.array_equal(dets.boxes, boxes) and np.array_equal(dets.scores, scores)
    assert dets.labels == [NAMES[c] for c in classes] and dets.image_size == hw
    assert dets.caption == "person. car. traffic light."
    # NMS had work to do: same-class neighbours went, and the threshold dropped some anchors
    assert len(expected_yolo(out, hw, iou_thr=1.0)[0]) > len(boxes)


def test_thresholds_and_class_subset(yolo_model):
    from dl_utils.dinoal import OnnxYoloDetector

    path, out = yolo_model
    det = OnnxYoloDetector(path, device="cpu", box_threshold=0.5, nms_iou=0.3)
    dets = det.detect(image(80, 160), "Traffic Light. car")
    boxes, scores, classes = expected_yolo(out, (80, 160), thr=0.5, iou_thr=0.3, allowed={1, 2})
    assert np.array_equal(dets.boxes, boxes) and np.array_equal(dets.scores, scores)
    assert dets.labels == [NAMES[c] for c in classes] and set(dets.labels) == {"car", "traffic light"}
    assert list(dets.phrase_ids) == [0 if c == 2 else 1 for c in classes]  # index of the caption phrase
    with pytest.raises(InputError, match=r"'bicycle'.*not a class of .*yolo.onnx.*'person', 'car', 'traffic light'"):
        det.detect(image(80, 160), "car. bicycle")
    assert det.labels_for("car") == ["car"] and det.labels_for(None) == NAMES


def test_nms_against_the_reference_and_its_early_stop():
    """numpy NMS = the greedy reference written here; stopping at max_keep = the full result's head."""
    from dl_utils.dinoal.onnx_yolo import nms

    rng = np.random.default_rng(3)
    xy = rng.integers(0, 200, size=(400, 2)).astype(np.float32)
    wh = rng.integers(4, 80, size=(400, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.integers(1, 64, size=400).astype(np.float32) / 64
    classes = rng.integers(0, 3, size=400)
    order = sorted(range(400), key=lambda i: (-scores[i], i))
    want: list[int] = []
    for i in order:
        if all(not (classes[j] == classes[i] and iou(boxes[i], boxes[j]) > 0.5) for j in want):
            want.append(i)
    assert nms(boxes, scores, classes, 0.5).tolist() == want
    assert nms(boxes, scores, classes, 0.5, max_keep=7).tolist() == want[:7]
    assert nms(np.zeros((2, 4)), np.array([0.9, 0.8]), np.zeros(2, int), 0.5).tolist() == [0, 1]  # empty boxes


def test_max_detections_keeps_the_best(yolo_model):
    from dl_utils.dinoal import OnnxYoloDetector

    path, out = yolo_model
    dets = OnnxYoloDetector(path, device="cpu", max_detections=4).detect(image(80, 160))
    boxes, scores, _ = expected_yolo(out, (80, 160))
    assert np.array_equal(dets.boxes, boxes[:4]) and np.array_equal(dets.scores, scores[:4])


def test_end_to_end_layout(tmp_path):
    from dl_utils.dinoal import OnnxYoloDetector

    rows = np.array([[[16, 96, 80, 160, 0.875, 1], [100, 120, 200, 200, 0.5, 0], [0, 0, 10, 10, 0.125, 2],
                      [40, 100, 60, 110, 0.75, 2], [0, 0, 0, 0, 0.0, 0]]], np.float32)
    path = export(tmp_path / "e2e.onnx", rows, meta=ultra_meta())
    det = OnnxYoloDetector(path, device="cpu")
    assert det.layout == "end2end"
    dets = det.detect(image(80, 160))  # gain 2, top 80, left 0
    assert np.array_equal(dets.boxes, np.array([[8, 8, 40, 40], [20, 10, 30, 15], [50, 20, 100, 60]], np.float32))
    assert dets.labels == ["car", "traffic light", "person"] and np.array_equal(dets.scores, [0.875, 0.75, 0.5])
    assert det.detect(image(80, 160), "person").labels == ["person"]


def test_class_table_names_and_synonyms(tmp_path, yolo_model):
    from dl_utils.dinoal import OnnxYoloDetector

    path, out = yolo_model
    table = ClassTable.from_records([{"name": "pedestrian", "id": 7, "synonyms": "person"},
                                     {"name": "vehicle", "id": 3, "synonyms": "car; automobile"}])
    with pytest.warns(UserWarning, match="'traffic light'.*not in the class table"):
        det = OnnxYoloDetector(path, device="cpu", classes=table)
        dets = det.detect(image(80, 160))
    boxes, _, classes = expected_yolo(out, (80, 160), allowed={0, 1})
    assert np.array_equal(dets.boxes, boxes)
    assert dets.labels == [["pedestrian", "vehicle"][c] for c in classes]
    assert list(dets.class_ids) == [[7, 3][c] for c in classes]
    assert det.detect(image(80, 160), "automobile").labels == ["vehicle"] * classes.count(1)
    # no names metadata: the table's classes, in order, are the model's
    bare = export(tmp_path / "bare.onnx", out, meta={})
    with pytest.raises(ModelError, match=r"bare.onnx has no class names.*--classes TABLE"):
        OnnxYoloDetector(bare, device="cpu")
    t3 = ClassTable.from_names(["person", "car", "sign"])
    d3 = OnnxYoloDetector(bare, device="cpu", classes=t3).detect(image(80, 160))
    assert np.array_equal(d3.boxes, expected_yolo(out, (80, 160))[0]) and set(d3.labels) <= {"person", "car", "sign"}
    with pytest.raises(ModelError, match=r"output 'output0' has shape \[1, 7, 60\].*2 classes.*yolo \(1, 4\+classes"):
        OnnxYoloDetector(bare, device="cpu", classes=ClassTable.from_names(["a", "b"]))


def test_imgsz_from_metadata_with_dynamic_axes_and_batches(tmp_path, yolo_model):
    """A dynamic batch axis: several images per run give what one at a time gives."""
    from dl_utils.dinoal import OnnxYoloDetector

    _, out = yolo_model
    path = export(tmp_path / "dyn.onnx", out, meta=ultra_meta(), dynamic=True)
    det = OnnxYoloDetector(path, device="cpu", batch_size=3)
    assert not det.fixed_batch
    ims = [image(80, 160, s) for s in range(4)]
    got = det.detect_batch(ims)
    for d in got:
        assert np.array_equal(d.boxes, expected_yolo(out, (80, 160))[0])


def test_letterbox_is_ultralytics(tmp_path):
    """Our letterbox against Ultralytics' LetterBox(auto=False) written out here, on odd sizes."""
    import cv2

    from dl_utils.dinoal.onnx_yolo import letterbox, to_input

    for h, w in [(37, 101), (480, 640), (333, 200), (640, 640)]:
        im = image(h, w, seed=h)
        r = min(320 / h, 256 / w)
        nw, nh = int(round(w * r)), int(round(h * r))
        dw, dh = (256 - nw) / 2, (320 - nh) / 2
        ref = cv2.resize(im, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w, h) else im
        ref = cv2.copyMakeBorder(ref, round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1),
                                 cv2.BORDER_CONSTANT, value=(114, 114, 114))
        got, lb = letterbox(im, (320, 256))
        assert np.array_equal(got, ref) and lb.left == round(dw - 0.1) and lb.top == round(dh - 0.1)
        x = to_input([got])
        assert x.shape == (1, 3, 320, 256) and x.dtype == np.float32
        assert np.array_equal(x[0], ref.transpose(2, 0, 1).astype(np.float32) / 255.0)


# ----------------------------------------------------------------------------- bad input
def test_bad_files_and_missing_onnxruntime(tmp_path, monkeypatch):
    from dl_utils.dinoal import OnnxYoloDetector

    with pytest.raises(ModelError, match=r"nope.onnx does not exist"):
        OnnxYoloDetector(tmp_path / "nope.onnx", device="cpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(ModelError, match=r"junk.onnx is not an ONNX model onnxruntime can load") as e:
        OnnxYoloDetector(junk, device="cpu")
    assert "\n" not in str(e.value)
    rank2 = export(tmp_path / "rank2.onnx", np.zeros((1, 7, 60), np.float32), meta=ultra_meta())
    import onnx.helper

    m = onnx.load(str(rank2))  # the graph's output reshaped to rank 2, as a foreign export could be
    node = onnx.helper.make_node("Reshape", ["output0", "shape2"], ["flat"])
    m.graph.initializer.append(onnx.helper.make_tensor("shape2", onnx.TensorProto.INT64, [2], [7, 60]))
    m.graph.node.append(node)
    m.graph.output.pop()
    m.graph.output.append(onnx.helper.make_tensor_value_info("flat", onnx.TensorProto.FLOAT, [7, 60]))
    onnx.save(m, str(rank2))
    with pytest.raises(ModelError, match=r"rank2.onnx: output 'flat' has shape \[7, 60\].*3 classes from its "
                                         r"metadata.*end-to-end \(1, N, 6\)"):
        OnnxYoloDetector(rank2, device="cpu")
    seg = export(tmp_path / "seg.onnx", yolo_output(), meta=ultra_meta(task="segment"))
    with pytest.raises(ModelError, match=r"'segment' export"):
        OnnxYoloDetector(seg, device="cpu")
    bad_names = export(tmp_path / "names.onnx", yolo_output(), meta={"names": "__import__('os')"})
    with pytest.raises(ModelError, match=r"metadata 'names'"):
        OnnxYoloDetector(bad_names, device="cpu")
    with pytest.raises(InputError, match=r"--nms-iou 0"):
        OnnxYoloDetector(bad_names, nms_iou=0)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(ModelError, match=r"pip install 'dl-utils\[onnx\]'"):
        OnnxYoloDetector(junk, device="cpu")


def test_the_backend_needs_no_torch(yolo_model):
    """A process where torch cannot be imported runs the detector (onnxruntime, numpy, cv2 only)."""
    import subprocess
    import sys

    path, out = yolo_model
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "import numpy as np\nfrom dl_utils.drivers.options import DetectorOptions\n"
            f"det = DetectorOptions(backend='onnx', model={str(path)!r}, device='cpu').build()\n"
            "d = det.detect(np.zeros((80, 160, 3), np.uint8))\nprint(len(d), d.boxes.tolist())")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n = len(expected_yolo(out, (80, 160))[0])
    assert proc.stdout.startswith(f"{n} ")


# ----------------------------------------------------------------------------- drivers
def test_options_refuse_what_onnx_does_not_use(yolo_model):
    from dl_utils.drivers.options import DetectorOptions

    path, _ = yolo_model
    with pytest.raises(InputError, match="--backend onnx needs --model FILE.onnx"):
        DetectorOptions(backend="onnx").check_sam3()
    with pytest.raises(InputError, match="--text-encoder does not apply to --backend onnx"):
        DetectorOptions(backend="onnx", model=path, text_encoder="bert").check_sam3()
    with pytest.raises(InputError, match="--detector-size does not apply"):
        DetectorOptions(backend="onnx", model=path, detector_size=512).build()
    with pytest.raises(InputError, match="--nms-iou 2.0"):
        DetectorOptions(backend="onnx", model=path, nms_iou=2.0).check_sam3()
    with pytest.raises(InputError, match="--nms-iou 0.5 does not apply to --backend sam3"):
        DetectorOptions(backend="sam3", nms_iou=0.5).check_sam3()
    d = DetectorOptions(backend="onnx", model=path, device="cpu").build()
    assert d.box_threshold == 0.25 and d.nms_iou == 0.7 and d.name == str(path)  # Ultralytics' defaults
    assert DetectorOptions(backend="onnx", model=path, box_threshold=0.35, device="cpu").build().box_threshold == 0.35


def _store_boxes(path):
    from dl_utils.store import AnnotationStore

    with AnnotationStore.open(path, readonly=True) as st:
        frames = {f: sorted(st.read_frame(f), key=lambda i: i.object_id) for f in st.frames()}
        labels = {o.id: o.label for o in st.objects()}
        rec = st.get_meta("text.backend")
    return frames, labels, rec


def test_cli_detect_boxes_into_the_store_exactly(yolo_model, tmp_path, capsys):
    from PIL import Image

    from dl_utils.cli import main

    path, out = yolo_model
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, hw in enumerate([(80, 160), (160, 80)]):
        Image.fromarray(image(*hw, seed=i)).save(folder / f"im_{i}.png")
    store = tmp_path / "d.sqlite"
    assert main(["detect", str(folder), "--backend", "onnx", "--model", str(path), "--out", str(store),
                 "--device", "cpu"]) == 0
    s = json.loads(capsys.readouterr().out)
    frames, labels, rec = _store_boxes(store)
    assert rec == {"backend": "onnx", "model": str(path)}
    total = 0
    for f, hw in enumerate([(80, 160), (160, 80)]):
        boxes, scores, classes = expected_yolo(out, hw)
        insts = frames[f]
        got = sorted((tuple(round(v, 4) for v in i.box), labels[i.object_id]) for i in insts)
        want = sorted((tuple(round(float(v), 4) for v in b), NAMES[c]) for b, c in zip(boxes, classes))
        assert got == want
        assert all(i.provenance.engine == "onnx" and i.provenance.detector == str(path) for i in insts)
        total += len(boxes)
    assert s["detections"] == total
    # --text: a subset; an unknown name is one line naming the model's classes, before the store changes
    assert main(["detect", str(folder), "--backend", "onnx", "--model", str(path), "--out", str(tmp_path / "c.sqlite"),
                 "--text", "car", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert set(_store_boxes(tmp_path / "c.sqlite")[1].values()) == {"car"}
    assert main(["detect", str(folder), "--backend", "onnx", "--model", str(path), "--out", str(tmp_path / "x.sqlite"),
                 "--text", "zebra", "--device", "cpu"]) != 0
    err = capsys.readouterr().err
    assert "'zebra'" in err and "'traffic light'" in err and not (tmp_path / "x.sqlite").exists()
    assert main(["detect", str(folder), "--out", str(tmp_path / "g.sqlite")]) != 0  # groundingdino still needs --text
    assert "no prompt" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sam_ckpt(tmp_path_factory):
    from tests.sam2_fixtures import build_tiny

    model = build_tiny(video=True)
    p = tmp_path_factory.mktemp("sam") / "sam.pt"
    torch.save({"model": model.state_dict()}, p)
    return p


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from dl_utils.video_utils import write_video

    def frame(i):
        im = np.full((80, 160, 3), 40, np.uint8)
        im[20 + i:50 + i, 30:90] = (200, 60, 60)
        return im

    out = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return Path(write_video(out, (frame(i) for i in range(3)), fps=30, preset="ultrafast"))


def test_cli_detect_segment_and_annotate_with_tiny_sam2(tmp_path, clip, sam_ckpt, capsys):
    """--segment on images (SAM2 masks from our boxes) and annotate on video (tracked), no --text."""
    from PIL import Image

    from dl_utils.cli import main

    rows = np.array([[[40, 100, 140, 180, 0.875, 1], [180, 120, 260, 220, 0.75, 0]]], np.float32)
    path = export(tmp_path / "m.onnx", rows, meta=ultra_meta())
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(image(80, 160)).save(folder / "a.png")
    store = tmp_path / "s.sqlite"
    sam = ["--sam-checkpoint", str(sam_ckpt), "--image-size", "256", "--device", "cpu"]
    assert main(["detect", str(folder), "--backend", "onnx", "--model", str(path), "--out", str(store),
                 "--segment", *sam]) == 0
    capsys.readouterr()
    frames, labels, _ = _store_boxes(store)
    assert sorted(labels.values()) == ["car", "person"]
    # SAM2 made the masks (its engine), from our boxes (the detector the provenance names)
    assert all(i.mask is not None and i.provenance.detector == str(path) for i in frames[0])
    ann = tmp_path / "a.sqlite"
    args = ["annotate", str(clip), "--backend", "onnx", "--model", str(path), "--out", str(ann), "--every", "2", *sam]
    assert main(args) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["text"]["status"] == "done" and s["text"]["keyframes"] == 2 and s["objects"] >= 2
    frames, labels, rec = _store_boxes(ann)
    assert rec["backend"] == "onnx" and set(labels.values()) == {"car", "person"} and len(frames) == 3
    assert main(args) == 0  # the ledger: the same (all-classes) caption is already done
    assert json.loads(capsys.readouterr().out)["text"]["status"] == "already done"


def test_batch_carries_the_backend_to_the_workers(tmp_path, sam_ckpt, capsys):
    """dl-utils batch --backend onnx: the workers (processes of the local pool) build our detector."""
    from PIL import Image

    from dl_utils.cli import main

    clip = tmp_path / "imgs"
    clip.mkdir()
    for i in range(2):
        Image.fromarray(image(80, 160, seed=i)).save(clip / f"im_{i}.png")
    rows = np.array([[[40, 100, 140, 180, 0.875, 1], [180, 120, 260, 220, 0.75, 0]]], np.float32)
    path = export(tmp_path / "m.onnx", rows, meta=ultra_meta())
    out = tmp_path / "out"
    argv = ["batch", str(clip), "--backend", "onnx", "--model", str(path), "--out", str(out),
            "--sam-checkpoint", str(sam_ckpt), "--image-size", "256", "--device", "cpu", "--threads", "1"]
    assert main(argv) == 0  # no --text: every class, read once from the metadata in the parent
    capsys.readouterr()
    line = json.loads((out / "summary.jsonl").read_text().splitlines()[0])
    assert line["status"] == "done", line
    frames, labels, rec = _store_boxes(out / "imgs.sqlite")
    assert rec["backend"] == "onnx" and set(labels.values()) == {"car", "person"} and len(frames) == 2
    assert all(i.mask is not None for insts in frames.values() for i in insts)  # the worker's SAM2 masks


def test_batch_fills_the_all_classes_caption_in_the_parent(tmp_path):
    from dl_utils.batch.plan import BatchSource
    from dl_utils.drivers.batch import with_onnx_text
    from dl_utils.drivers.options import DetectorOptions

    path = export(tmp_path / "m.onnx", yolo_output(), meta=ultra_meta())
    srcs = [BatchSource(source=tmp_path / "a", name="a", store_name="a.sqlite"),
            BatchSource(source=tmp_path / "b", name="b", store_name="b.sqlite", text="car")]
    got = with_onnx_text(srcs, DetectorOptions(backend="onnx", model=path))
    assert [s.text for s in got] == ["person. car. traffic light.", "car"]
    assert with_onnx_text(srcs, DetectorOptions()) == srcs  # other backends: as planned


def test_widget_detect_button_with_empty_text_runs_every_class(tmp_path):
    """The widget's Detect with our detector: empty text is every class; the store records onnx."""
    pytest.importorskip("ipywidgets")
    from PIL import Image

    from dl_utils.dinoal import OnnxYoloDetector
    from dl_utils.ipy_utils import Annotator
    from tests.sam2_fixtures import build_tiny

    rows = np.array([[[40, 100, 140, 180, 0.875, 1], [180, 120, 260, 220, 0.75, 0]]], np.float32)
    path = export(tmp_path / "m.onnx", rows, meta=ultra_meta())
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(image(80, 160)).save(folder / "a.png")
    det = OnnxYoloDetector(path, device="cpu")
    a = Annotator(folder, tmp_path / "w.sqlite", sam_model=build_tiny(), detector=det)
    assert a.text_backend == "onnx"
    a.w_text.value = ""
    a.w_detect.click()
    assert a.wait(60) and "detect finished" in a.status, a.status
    assert sorted(o.label for o in a.objects()) == ["car", "person"]
    assert a.store.get_meta("text.backend") == {"backend": "onnx", "model": str(path)}
    a.w_text.value = "bus"
    a.w_detect.click()
    assert "'bus'" in a.status and "'traffic light'" in a.status


def test_cvat_auto_annotation_function(tmp_path):
    """dl_utils.auto_annotation.create(backend="onnx"): the model's classes are the labels it declares,
    and its rectangles are our boxes."""
    pytest.importorskip("cvat_sdk")
    from PIL import Image

    from dl_utils.auto_annotation import create

    path, out = export(tmp_path / "y.onnx", yolo_output(), meta=ultra_meta()), yolo_output()
    fn = create(backend="onnx", model=str(path), shape="rectangle", device="cpu")
    assert [s.name for s in fn.spec.labels] == NAMES
    shapes = fn.detect(None, Image.fromarray(image(80, 160)))
    boxes, _, classes = expected_yolo(out, (80, 160))
    ids = {s.id: s.name for s in fn.spec.labels}
    assert sorted((ids[s.label_id], tuple(s.points)) for s in shapes) == \
        sorted((NAMES[c], tuple(float(v) for v in b)) for b, c in zip(boxes, classes))
    assert [s.name for s in create(text="car", backend="onnx", model=str(path), shape="rectangle",
                                   device="cpu").spec.labels] == ["car"]


def test_annotate_cvat_preflight_checks_the_model_labels(tmp_path, monkeypatch):
    """annotate --cvat-task with onnx: the task must have the labels the boxes will carry (the model's
    names as written, "Traffic Light"), not the caption's lower-cased phrases."""
    from PIL import Image

    import dl_utils.cvat as cvat
    from dl_utils.drivers.annotate import annotate
    from dl_utils.drivers.options import DetectorOptions

    path = export(tmp_path / "m.onnx", yolo_output(), meta=ultra_meta(["Person", "Car", "Traffic Light"]))
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(image(80, 160)).save(folder / "a.png")
    seen = {}

    class Stop(Exception):
        pass

    def preflight(task, *, labels, **kw):
        seen["labels"] = labels
        raise Stop

    monkeypatch.setattr(cvat, "preflight", preflight)
    with pytest.raises(Stop):
        annotate(folder, tmp_path / "s.sqlite", cvat_task=3, connection=object(), progress=False,
                 detector_options=DetectorOptions(backend="onnx", model=path, device="cpu"))
    assert seen["labels"] == ["Person", "Car", "Traffic Light"]
    with pytest.raises(Stop):
        annotate(folder, tmp_path / "s.sqlite", text="traffic light", cvat_task=3, connection=object(),
                 progress=False, detector_options=DetectorOptions(backend="onnx", model=path, device="cpu"))
    assert seen["labels"] == ["Traffic Light"]


def test_parity_with_ultralytics_own_predict_on_a_real_export(tmp_path, monkeypatch):
    """Where ultralytics is importable: a real YOLOv8n (built from its yaml, random weights, nothing
    downloaded) exported by Ultralytics to ONNX; our boxes, scores and labels equal those of
    Ultralytics' own ``YOLO(file.onnx).predict`` on the same images (its BGR input, a threshold low
    enough that 300 boxes per image come out of NMS)."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "cfg"))
    ultralytics = pytest.importorskip("ultralytics")
    import cv2

    from dl_utils.dinoal import OnnxYoloDetector

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    path = Path(ultralytics.YOLO("yolov8n.yaml").export(format="onnx", imgsz=320, simplify=False, opset=17))
    det = OnnxYoloDetector(path, device="cpu", box_threshold=1e-7)
    ul = ultralytics.YOLO(str(path), task="detect")
    rng = np.random.default_rng(0)
    for h, w in [(480, 640), (333, 517), (640, 360)]:
        rgb = np.ascontiguousarray(cv2.resize(rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8),
                                              (w, h), interpolation=cv2.INTER_CUBIC))
        ours = det.detect(rgb)
        r = ul.predict(rgb[..., ::-1].copy(), conf=1e-7, iou=0.7, imgsz=320, verbose=False)[0]
        assert len(ours) == len(r.boxes) == 300
        assert np.array_equal(ours.boxes, r.boxes.xyxy.numpy()) and np.array_equal(ours.scores, r.boxes.conf.numpy())
        assert ours.labels == [det.names[int(c)] for c in r.boxes.cls.numpy()]


def test_cli_detect_video_box_tracking_names_the_onnx_engine(yolo_model, bedroom_mp4, tmp_path, capsys):
    """Video ``detect`` without ``--segment`` tracks boxes (dinoal.video.track_boxes): its rows name the
    engine that found the boxes (``onnx``), not GroundingDINO."""
    from dl_utils.cli import main
    from dl_utils.store import AnnotationStore

    path, _ = yolo_model
    store = tmp_path / "v.sqlite"
    assert main(["detect", str(bedroom_mp4), "--backend", "onnx", "--model", str(path), "--out", str(store),
                 "--every", "50", "--device", "cpu"]) == 0
    capsys.readouterr()
    with AnnotationStore.open(store, readonly=True) as st:
        engines = {i.provenance.engine for f in st.frames() for i in st.read_frame(f) if i.provenance}
    assert engines == {"onnx"}
