"""dinoal: prompts, labels, NMS, tiling, both GroundingDINO backends (parity with upstream), grounded
masks, the store and the detect driver; dino_models: registry, download, resolution errors.

Models are built locally with random weights (tests/dino_fixtures.py); no hub access (HF_HUB_OFFLINE).
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import json
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from dl_utils import dino_models
from dl_utils.annotations import Provenance, ShapeType, Source
from dl_utils.classes import ClassTable, UnknownClassError
from dl_utils.dinoal import (
    Detections,
    Detector,
    GroundedDetector,
    LabelMapper,
    UnknownPhraseWarning,
    cap,
    clip_boxes,
    detect_frames,
    drop_cut_boxes,
    nms,
    parse_caption,
    phrase_index_of_tokens,
    segment_detections,
    store_detections,
    tile_grid,
)
from dl_utils.drivers.detect import run_detect
from dl_utils.errors import InputError, ModelError
from dl_utils.store import AnnotationStore
from tests.dino_fixtures import (  # noqa: F401  (fixtures)
    GD_SIZE,
    HAVE_GD,
    VOCAB,
    build_gd_model,
    gd_model,
    hf_model_dir,
    make_text_encoder,
    one_thread,
    requires_gd,
    requires_tf,
    scene,
    text_encoder_dir,
    write_vocab,
)

ROOT = Path(__file__).resolve().parent.parent
# the upstream reference calls warn about deprecations inside groundingdino/timm/torch on every forward
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*(use_reentrant|requires_grad=True):UserWarning"),
]
PROMPT = "car. person. traffic light"


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """An empty models folder and HF cache per test, and no route to the hub; one torch thread."""
    d = tmp_path / "models"
    monkeypatch.setenv("DL_UTILS_MODELS", str(d))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    try:
        import torch  # noqa: F401
    except ImportError:
        yield d
        return
    with one_thread():
        yield d


def table() -> ClassTable:
    return ClassTable.from_records([
        {"name": "vehicle", "id": 0, "color": "#7f7f7f"},
        {"name": "car", "id": 1, "color": "#e6194b", "superclass": "vehicle", "synonyms": "sedan; automobile"},
        {"name": "truck", "id": 2, "color": "#f58231", "superclass": "vehicle"},
        {"name": "person", "id": 5, "color": "#3cb44b", "synonyms": "pedestrian"},
        {"name": "traffic light", "id": 7, "color": "#4363d8"},
    ], source="test-table")


# ----------------------------------------------------------------------------- captions
def test_parse_caption_normalises_and_matches_upstream_caption():
    p = parse_caption("  Car. person.\n  Traffic   Light. car.. ")
    assert p.phrases == ("car", "person", "traffic light")
    assert p.text == "car. person. traffic light."
    assert parse_caption(["Car", "person. dog"]).phrases == ("car", "person", "dog")
    assert parse_caption(p) is p
    if HAVE_GD:
        from groundingdino.util.inference import preprocess_caption

        assert parse_caption(PROMPT).text == preprocess_caption(PROMPT)


def test_pre_rename_caption_names_still_import():
    """Notebooks and other modules import Prompt/parse_prompt (also from dinoal.prompts)."""
    from dl_utils import dinoal
    from dl_utils.dinoal import Caption
    from dl_utils.dinoal.prompts import Prompt, parse_prompt

    assert Prompt is Caption and dinoal.Prompt is Caption
    assert parse_prompt is parse_caption and dinoal.parse_prompt is parse_caption
    p = parse_prompt("car. person")
    assert p.caption == p.text == "car. person."  # .caption: the old property name
    d = Detections.empty(caption="car.")
    assert d.prompt == d.caption == "car."
    old = Detections(np.zeros((1, 4)), np.ones(1), prompt="car.")  # the field's old keyword
    assert old.caption == "car." and old[np.array([True])].caption == "car."
    assert GroundedDetector.resolve_prompt is GroundedDetector.resolve_caption


@pytest.mark.parametrize("bad", ["", "  ", " . .. ", [], None, ["car", 3]])
def test_parse_caption_rejects_empty_or_non_text(bad):
    with pytest.raises(InputError, match=r"prompt|phrase"):
        parse_caption(bad)


@requires_tf
def test_phrase_index_of_tokens_follows_the_dots(tmp_path):
    from transformers import BertTokenizer

    tok = BertTokenizer(str(write_vocab(tmp_path)), do_lower_case=True)
    ids = tok("car. person. traffic light.")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "car", ".", "person", ".", "traffic", "light", ".", "[SEP]"]
    idx = phrase_index_of_tokens(ids, tok.convert_tokens_to_ids("."), tok.all_special_ids)
    assert idx.tolist() == [-1, 0, -1, 1, -1, 2, 2, -1, -1]


def test_label_mapper_names_synonyms_plurals_superclass():
    m = LabelMapper(table())
    got = m.map(parse_caption("cars. pedestrian. sedan. traffic light"))
    assert [(g.label, g.class_id, g.color) for g in got] == [
        ("car", 1, "#e6194b"), ("person", 5, "#3cb44b"), ("car", 1, "#e6194b"), ("traffic light", 7, "#4363d8")]
    sup = LabelMapper(table(), superclass=True).map(parse_caption("sedan. truck. person"))
    assert [(g.label, g.class_id) for g in sup] == [("vehicle", 0), ("vehicle", 0), ("person", 5)]
    free = LabelMapper(None).map(parse_caption("dog. cat"))
    assert [(g.label, g.class_id) for g in free] == [("dog", -1), ("cat", -1)]


def test_label_mapper_unknown_policies():
    p = parse_caption("car. dog. persn")
    with pytest.warns(UnknownPhraseWarning, match=r"'dog'.*'persn' \(did you mean 'person'\?\).*dropped"):
        got = LabelMapper(table(), on_unknown="warn").map(p)
    assert [g.label for g in got] == ["car", None, None]
    with pytest.raises(UnknownClassError, match=r"'dog'.*test-table.*add them to the table"):
        LabelMapper(table(), on_unknown="error").map(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = LabelMapper(table(), on_unknown="keep").map(p)
    assert [(g.label, g.class_id) for g in kept] == [("car", 1), ("dog", -1), ("persn", -1)]
    with pytest.raises(InputError, match="on_unknown"):
        LabelMapper(table(), on_unknown="ignore")


# ----------------------------------------------------------------------------- Detections and post-processing
def dets_of(boxes, scores, labels, size=(100, 200)) -> Detections:
    return Detections(np.array(boxes, float), np.array(scores, float), phrases=list(labels), labels=list(labels),
                      image_size=size, caption="x.")


def test_detections_slicing_concat_and_instances():
    d = dets_of([[-5, 10, 50, 60], [100, 0, 250, 40], [10, 10, 20, 20]], [0.9, 0.5, 0.7], ["car", "person", "car"])
    assert len(d) == 3 and d.class_ids.tolist() == [-1, -1, -1]
    sub = d[np.array([True, False, True])]
    assert sub.labels == ["car", "car"] and sub.scores.tolist() == pytest.approx([0.9, 0.7])
    assert Detections.concat([d[:1], d[2:]]).boxes.tolist() == sub.boxes.tolist()
    insts = d.to_instances([7, 8, 9], frame=3, model="m")
    assert insts.object_ids.tolist() == [7, 8, 9] and insts.frame == 3
    i0 = insts[0]
    assert i0.box == (0.0, 10.0, 50.0, 60.0) and i0.mask is None and i0.shape is ShapeType.BOX
    assert i0.source is Source.AUTO and i0.score == pytest.approx(0.9)
    assert i0.label == "car" and i0.clicks is None  # the box is the geometry, nobody clicked
    assert i0.provenance.detector_score == pytest.approx(0.9)
    assert dataclasses.replace(i0.provenance, detector_score=None) == Provenance(
        engine="groundingdino", detector="m", caption="x.", phrase="car")
    assert insts[1].box == (100.0, 0.0, 200.0, 40.0)  # clipped to the 200x100 image
    with pytest.raises(InputError, match="3 detections but 2 object ids"):
        d.to_instances([1, 2])
    with pytest.raises(InputError, match="2 boxes but 1 scores"):
        Detections(np.zeros((2, 4)), np.zeros(1))


def test_segment_detections_merges_sam2_and_detector_fields():
    """SAM2's clicks (the box) and provenance (engine, model) stay; the detector adds label, detector,
    caption, phrase and score: one merge (with_detection) for every grounded mask."""
    from dl_utils.annotations import Clicks, Instance, Instances
    from dl_utils.dinoal import with_detection

    class FakeSegmenter:  # samal's ImageSegmenter.predict_boxes contract, no model
        def set_image(self, image, frame=None):
            self.hw = image.shape[:2]

        def predict_boxes(self, boxes, ids, scores, batch_size=None):
            out = []
            for b, oid, sc in zip(boxes, ids, scores):
                m = np.zeros(self.hw, bool)
                x1, y1, x2, y2 = (int(v) for v in b)
                m[y1:y2, x1:x2] = True
                out.append(Instance(oid, mask=m, score=0.8, clicks=Clicks(box=tuple(b)),
                                    provenance=Provenance(engine="sam2-image", model="sam2.1_hiera_tiny",
                                                          precision="float32", detector_score=sc)))
            return Instances(out)

    d = Detections(np.array([[10, 10, 40, 30], [50, 5, 90, 60]], float), np.array([0.9, 0.6]),
                   phrases=["red car", "person"], labels=["car", "person"], caption="car. person.",
                   image_size=(100, 200))
    got = segment_detections(FakeSegmenter(), np.zeros((100, 200, 3), np.uint8), d, [4, 5], frame=7,
                             detector="grounding-dino-tiny")
    assert got.frame == 7 and got.object_ids.tolist() == [4, 5]
    for k, inst in enumerate(got):
        assert inst.label == d.labels[k] and inst.score == pytest.approx(0.8)
        assert inst.clicks == Clicks(box=tuple(d.boxes[k]))
        p = inst.provenance
        assert (p.engine, p.model, p.precision) == ("sam2-image", "sam2.1_hiera_tiny", "float32")
        assert (p.detector, p.caption, p.phrase) == ("grounding-dino-tiny", "car. person.", d.phrases[k])
        assert p.detector_score == pytest.approx(d.scores[k])
    # an instance without provenance gets the detector's fields only
    bare = with_detection(Instance(1, box=(0, 0, 5, 5)), d, 1)
    assert bare.label == "person" and bare.provenance.detector_score == pytest.approx(0.6)
    assert dataclasses.replace(bare.provenance, detector_score=None) == Provenance(caption="car. person.",
                                                                                  phrase="person")


def test_nms_per_class_and_cross_class_equal_torchvision():
    torch = pytest.importorskip("torch")
    from torchvision.ops import batched_nms
    from torchvision.ops import nms as tv_nms

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 150, (60, 2))
    wh = rng.uniform(10, 60, (60, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.uniform(0, 1, 60)
    labels = [["car", "person", "dog"][i % 3] for i in range(60)]
    d = dets_of(boxes, scores, labels, size=(300, 300))
    b, s = torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores, dtype=torch.float32)
    keep = batched_nms(b, s, torch.tensor([i % 3 for i in range(60)]), 0.5).numpy()
    got = nms(d, 0.5)
    assert np.array_equal(got.boxes, d.boxes[keep]) and got.labels == [labels[k] for k in keep]
    keep_x = tv_nms(b, s, 0.3).numpy()
    assert np.array_equal(nms(d, 0.3, per_class=False).boxes, d.boxes[keep_x])
    assert 0 < len(keep_x) < len(keep) < 60
    with pytest.raises(InputError, match="IoU"):
        nms(d, 0.0)


def test_cap_and_clip():
    d = dets_of([[0, 0, 10, 10], [5, 5, 300, 90], [190, 95, 260, 140], [-20, -20, 0.5, 50]], [0.2, 0.9, 0.5, 0.8],
                ["a", "b", "c", "d"])
    assert cap(d, 2).labels == ["b", "d"] and cap(d, None) is d and len(cap(d, 0)) == 0
    c = clip_boxes(d)
    assert c.labels == ["a", "b", "c"]  # "d" is 0.5 px wide once clipped
    assert c.boxes.tolist() == [[0, 0, 10, 10], [5, 5, 200, 90], [190, 95, 200, 100]]


def test_tile_grid_covers_with_equal_windows_and_drop_cut_boxes():
    wins = tile_grid(500, 700, 256, 0.25)
    assert {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in wins} == {(256, 256)}
    cover = np.zeros((500, 700), bool)
    for x0, y0, x1, y1 in wins:
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    xs = sorted({w[0] for w in wins})
    assert xs[0] == 0 and xs[-1] == 700 - 256 and min(np.diff(xs)) <= 256 * 0.75 + 1
    assert tile_grid(100, 120, 256) == [(0, 0, 120, 100)]
    d = dets_of([[100, 100, 120, 120], [0, 5, 30, 30], [240, 10, 256, 40], [20, 250, 40, 256]], [1, 1, 1, 1],
                list("abcd"), size=(500, 700))
    # window at the image's top-left corner: left/top edges are the image border, right/bottom are cuts
    assert drop_cut_boxes(d, (0, 0, 256, 256), (500, 700)).labels == ["a", "b"]
    with pytest.raises(InputError, match="tile size"):
        tile_grid(100, 100, 8)


# ----------------------------------------------------------------------------- detector on a fake backend
class SquaresBackend:
    """Finds white squares, like a detector that misses objects under 1 % of its input area."""

    name = "squares"
    device = "cpu"

    def __init__(self):
        self.calls: list[list[tuple[int, ...]]] = []

    def infer(self, images, prompt, *, box_threshold, text_threshold):
        self.calls.append([im.shape for im in images])
        out = []
        for im in images:
            _, _, stats, _ = cv2.connectedComponentsWithStats((im[..., 0] == 255).astype(np.uint8))
            boxes, scores = [], []
            for x, y, w, h, area in stats[1:]:
                if area >= 0.01 * im.shape[0] * im.shape[1]:
                    boxes.append([x, y, x + w, y + h])
                    scores.append(0.5 + 0.4 * area / (im.shape[0] * im.shape[1]))
            ps = np.zeros((len(boxes), len(prompt)), np.float32)
            ps[:, 0] = 1.0
            out.append(Detections(np.array(boxes, float).reshape(-1, 4), np.array(scores), phrases=["sq"] * len(boxes),
                                  phrase_scores=ps, caption=prompt.text, image_size=im.shape[:2]))
        return out


def squares_image(h=400, w=400):
    img = np.zeros((h, w, 3), np.uint8)
    where = [(30, 40), (150, 150), (120, 230), (300, 330), (370, 10)]  # (x, y); (150,150)/(120,230) straddle tiles
    for x, y in where:
        img[y:y + 20, x:x + 20] = 255
    return img, sorted([float(x), float(y), float(x + 20), float(y + 20)] for x, y in where)


def test_tiling_finds_small_objects_once_each():
    img, truth = squares_image()
    plain = GroundedDetector(SquaresBackend(), prompt="square")
    assert plain.detect(img).boxes.shape == (0, 4)  # 20x20 is under 1 % of 400x400
    be = SquaresBackend()
    tiled = GroundedDetector(be, prompt="square", tile_size=160, tile_overlap=0.25, batch_size=16)
    d = tiled.detect(img)
    assert sorted(d.boxes.tolist()) == truth and d.labels == ["square"] * 5
    # the full image and all tiles (equal size) in two forward passes, none repeated
    assert [len(c) for c in be.calls] == [1, len(tile_grid(400, 400, 160, 0.25))]
    assert isinstance(tiled, Detector)


def test_detector_labels_thresholds_nms_cap_with_fake_backend():
    class Fixed:
        name, device = "fixed", "cpu"

        def infer(self, images, prompt, *, box_threshold, text_threshold):
            boxes = np.array([[0, 0, 50, 50], [2, 2, 52, 52], [100, 0, 150, 60], [0, 0, 50, 50], [300, 300, 400, 400]], float)
            ps = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.8], [0.1, 0.7, 0.3], [0.6, 0.2, 0.1], [0.1, 0.1, 0.9]])
            scores = ps.max(1)
            keep = scores > box_threshold
            return [Detections(boxes[keep], scores[keep], phrases=["?"] * int(keep.sum()), phrase_scores=ps[keep],
                               caption=prompt.text, image_size=(200, 300)) for _ in images]

    img = np.zeros((200, 300, 3), np.uint8)
    det = GroundedDetector(Fixed(), classes=table(), on_unknown="warn", nms_iou=None)
    with pytest.warns(UnknownPhraseWarning, match="'dog'"):
        d = det.detect(img, "sedan. dog. pedestrian")
    # labels from the best phrase; the "dog" box is dropped; the off-image box is clipped away
    assert d.labels == ["car", "person", "car"] and d.class_ids.tolist() == [1, 5, 1]
    assert d.phrase_ids.tolist() == [0, 2, 0]
    d = GroundedDetector(Fixed(), classes=table(), on_unknown="keep", nms_iou=0.5).detect(img, "sedan. dog. pedestrian")
    # per-class NMS drops the second "car" box only; the result is ordered by score
    assert d.labels == ["car", "person", "dog"] and d.scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    d = GroundedDetector(Fixed(), on_unknown="keep", nms_iou=0.5, cross_class_iou=0.5, max_detections=1,
                         box_threshold=0.75).detect(img, "car. dog. person")
    assert d.labels == ["car"] and d.boxes.tolist() == [[0, 0, 50, 50]]
    with pytest.raises(UnknownClassError):
        GroundedDetector(Fixed(), classes=table(), on_unknown="error").detect(img, "sedan. dog")
    with pytest.raises(UnknownClassError):  # a default prompt is checked when the detector is built
        GroundedDetector(Fixed(), classes=table(), on_unknown="error", prompt="dog")
    # the class table's leaf classes and synonyms are the default prompt
    assert GroundedDetector(Fixed(), classes=table()).resolve_caption().text == (
        "car. sedan. automobile. truck. person. pedestrian. traffic light.")
    for bad in ({"box_threshold": 1.5}, {"text_threshold": -0.1}, {"nms_iou": 0}, {"max_detections": -1},
                {"tile_size": 10}, {"batch_size": 0}):
        with pytest.raises(InputError):
            GroundedDetector(Fixed(), **bad)
    with pytest.raises(InputError, match="no prompt"):
        GroundedDetector(Fixed()).detect(img)

    class TextOnly:  # a backend without token scores: labels from the decoded text
        name, device = "text", "cpu"

        def infer(self, images, prompt, *, box_threshold, text_threshold):
            return [Detections(np.array([[0, 0, 9, 9], [5, 5, 20, 20]], float), np.array([0.9, 0.8]),
                               phrases=["red  car", "the"], caption=prompt.text, image_size=(200, 300))]

    d = GroundedDetector(TextOnly(), classes=table(), on_unknown="keep").detect(img, "person. car")
    assert d.labels == ["car"] and d.class_ids.tolist() == [1] and d.phrase_ids.tolist() == [1]
    with pytest.raises(InputError, match="RGB HxWx3 uint8"):
        det.detect(np.zeros((10, 10), np.uint8), "car")


# ----------------------------------------------------------------------------- groundingdino backend
@pytest.fixture(scope="module")
def gd_backend(gd_model, text_encoder_dir):
    from dl_utils.dinoal import GroundingDinoBackend

    _, weights = gd_model
    with one_thread():
        return GroundingDinoBackend(weights, text_encoder=text_encoder_dir, device="cpu",
                                    image_size=GD_SIZE[0], max_size=GD_SIZE[1])


def _upstream_predict(model, image, caption, box_threshold, text_threshold):
    """groundingdino.util.inference: load_image's transform (at the test size), predict, post_process_result."""
    import groundingdino.datasets.transforms as T
    from groundingdino.util.inference import Model, predict
    from PIL import Image

    tr = T.Compose([T.RandomResize([GD_SIZE[0]], max_size=GD_SIZE[1]), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    x, _ = tr(Image.fromarray(image), None)
    boxes, logits, phrases = predict(model, x, caption, box_threshold, text_threshold, device="cpu")
    sv = Model.post_process_result(image.shape[0], image.shape[1], boxes, logits)
    return sv.xyxy, sv.confidence, phrases


@requires_gd
@pytest.mark.slow
def test_groundingdino_parity_with_upstream_predict(gd_model, gd_backend):
    model, weights = gd_model
    img = scene(*GD_SIZE)
    det = GroundedDetector(gd_backend, nms_iou=None, clip=False, box_threshold=0.75, text_threshold=0.62)
    ours = det.detect(img, "Car. person. traffic light")
    ref_boxes, ref_scores, ref_phrases = _upstream_predict(model, img, PROMPT, 0.75, 0.62)
    assert 5 <= len(ours) < 100
    assert np.array_equal(ours.boxes, ref_boxes)  # same weights read back from the file: exact
    assert np.array_equal(ours.scores, ref_scores)
    assert ours.phrases == ref_phrases and len(set(ref_phrases)) > 1
    # every box carries a prompt phrase as its label (the decoded text can be a fragment)
    assert set(ours.labels) <= {"car", "person", "traffic light"}
    # the weights file got its sha256 recorded at this first strict load
    digest = (weights.parent / (weights.name + ".sha256")).read_text().split()[0]
    assert digest == gd_backend.sha256
    from dl_utils.dinoal import verify_groundingdino

    assert verify_groundingdino(weights, text_encoder=gd_backend.text_encoder) == digest


@requires_gd
def test_groundingdino_weights_errors(gd_model, text_encoder_dir, tmp_path):
    import torch
    from safetensors.torch import save_file

    from dl_utils.dinoal import GroundingDinoBackend, load_groundingdino_weights

    model, weights = gd_model
    sd = torch.load(weights, weights_only=True)["model"]
    sam = tmp_path / "sam.pt"
    torch.save({"model": {"image_encoder.trunk.pos_embed": torch.zeros(1)}}, sam)
    with pytest.raises(ModelError, match="SAM2 checkpoint"):
        load_groundingdino_weights(model, sam)
    hf = tmp_path / "model.safetensors"
    save_file({"model.backbone.conv_encoder.x": torch.zeros(1)}, str(hf))
    with pytest.raises(ModelError, match="safetensors.*--backend transformers"):
        load_groundingdino_weights(model, hf)
    hf_pth = tmp_path / "hf.pth"
    torch.save({"model.backbone.conv_encoder.x": torch.zeros(1)}, hf_pth)
    with pytest.raises(ModelError, match="transformers GroundingDinoForObjectDetection weights"):
        load_groundingdino_weights(model, hf_pth)
    # the official layout (module. prefix, label_enc.weight, BERT's position_ids) loads strictly
    official = tmp_path / "official.pth"
    torch.save({"model": {**{f"module.{k}": v for k, v in sd.items()},
                          "module.bert.embeddings.position_ids": torch.arange(3)[None],
                          "module.label_enc.weight": torch.zeros(2001, 256)}}, official)
    assert len(load_groundingdino_weights(model, official)) == 64
    # any other unexpected key is refused (strict=False loads what matches, as upstream)
    extra = tmp_path / "extra.pth"
    torch.save({"model": {**sd, "label_enc.weight": torch.zeros(2), "decoder_extra.weight": torch.zeros(2)}},
               extra)
    with pytest.raises(ModelError, match=r"1 unexpected keys \(e.g. decoder_extra.weight\).*strict=False"):
        load_groundingdino_weights(model, extra)
    assert len(load_groundingdino_weights(model, extra, strict=False)) == 64  # loads, records its sha256
    # a missing key is refused
    missing = tmp_path / "missing.pth"
    torch.save({"model": {k: v for k, v in sd.items() if not k.startswith("bbox_embed.0.")}}, missing)
    with pytest.raises(ModelError, match=r"missing keys"):
        load_groundingdino_weights(model, missing)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": sd, "args": argparse.Namespace(a=1)}, pickled)
    with pytest.raises(ModelError, match="trust_checkpoint=True"):
        load_groundingdino_weights(model, pickled)
    # a file the user gave is never called "damaged, delete it": it says what it is and how to get weights
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"<html>not found</html>")
    with pytest.raises(ModelError, match=r"not a GroundingDINO checkpoint: it is an HTML page.*"
                                         r"dl-utils models download groundingdino-swint-ogc") as ei:
        load_groundingdino_weights(model, broken)
    assert "delete" not in str(ei.value)
    photo = tmp_path / "precious.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    with pytest.raises(ModelError, match=r"precious.jpg is not a GroundingDINO checkpoint: it is a JPEG image") as ei:
        load_groundingdino_weights(model, photo)
    assert "delete" not in str(ei.value) and photo.exists()
    # a text encoder of another width than the weights were trained with
    wide = make_text_encoder(tmp_path / "bert-wide", hidden=64)
    with pytest.raises(ModelError, match=r"shape mismatches.*text encoder folder is not the BERT"):
        GroundingDinoBackend(weights, text_encoder=wide, device="cpu")


@requires_gd
def test_groundingdino_missing_files_say_what_to_do(gd_model, hf_model_dir, tmp_path, _offline):
    from dl_utils.dinoal import GroundingDinoBackend, TransformersBackend

    _, weights = gd_model
    with pytest.raises(ModelError, match=r"groundingdino_swint_ogc.pth not found in .*models.*"
                                         r"`dl-utils models download groundingdino-swint-ogc`"):
        GroundingDinoBackend(None)
    with pytest.raises(ModelError, match=r"text encoder bert-base-uncased not found.*"
                                         r"`dl-utils models download bert-base-uncased`"):
        GroundingDinoBackend(weights)
    no_vocab = tmp_path / "enc"
    no_vocab.mkdir()
    (no_vocab / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match=r"lacks vocab.txt"):
        GroundingDinoBackend(weights, text_encoder=no_vocab)
    with pytest.raises(ModelError, match="transformers GroundingDINO folder.*--backend transformers"):
        GroundingDinoBackend(hf_model_dir)
    with pytest.raises(ModelError, match="Hugging Face id.*--backend transformers"):
        GroundingDinoBackend("someone/grounding-dino-finetuned")
    with pytest.raises(ModelError, match="grounding-dino-tiny is a transformers entry"):
        GroundingDinoBackend("IDEA-Research/grounding-dino-tiny")
    with pytest.raises(ModelError, match="grounding-dino-tiny is a transformers entry"):
        GroundingDinoBackend("grounding-dino-tiny")
    # and the other way round
    with pytest.raises(ModelError, match=r"\.pth file is original GroundingDINO weights: use --backend groundingdino"):
        TransformersBackend(weights)
    with pytest.raises(ModelError, match="groundingdino-swint-ogc is a groundingdino entry"):
        TransformersBackend("groundingdino-swint-ogc")
    with pytest.raises(ModelError, match=r"IDEA-Research/grounding-dino-tiny not found .*Hugging Face cache.*"
                                         r"`dl-utils models download grounding-dino-tiny`"):
        TransformersBackend("IDEA-Research/grounding-dino-tiny")
    with pytest.raises(ModelError, match="holds a 'bert' model, not GroundingDINO"):
        TransformersBackend(make_text_encoder(tmp_path / "bert"))


# ----------------------------------------------------------------------------- transformers backend
@pytest.fixture(scope="module")
def tf_backend(hf_model_dir):
    from dl_utils.dinoal import TransformersBackend

    return TransformersBackend(hf_model_dir, device="cpu")


@requires_tf
def test_transformers_parity_with_model_and_processor(hf_model_dir, tf_backend):
    import torch
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    model = GroundingDinoForObjectDetection.from_pretrained(str(hf_model_dir)).eval()
    proc = AutoProcessor.from_pretrained(str(hf_model_dir))
    images = [scene(240, 320, seed=1), scene(200, 260, seed=2)]  # two sizes: the processor pads
    inputs = proc(images=images, text=[PROMPT.lower() + "."] * 2, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    ref = proc.post_process_grounded_object_detection(out, inputs.input_ids, threshold=0.6, text_threshold=0.5,
                                                      target_sizes=[im.shape[:2] for im in images])
    det = GroundedDetector(tf_backend, nms_iou=None, clip=False, box_threshold=0.6, text_threshold=0.5, batch_size=2)
    ours = det.backend.infer(images, parse_caption(PROMPT), box_threshold=0.6, text_threshold=0.5)
    for o, r in zip(ours, ref):
        assert 3 <= len(o) and np.array_equal(o.boxes, r["boxes"].numpy())
        assert np.array_equal(o.scores, r["scores"].numpy()) and o.phrases == r["text_labels"]
    # through the detector (one image at a time here: sizes differ, so no shared batch)
    single = det.detect(images[1], PROMPT)
    inputs1 = proc(images=images[1], text=PROMPT.lower() + ".", return_tensors="pt")
    with torch.no_grad():
        r1 = proc.post_process_grounded_object_detection(model(**inputs1), inputs1.input_ids, threshold=0.6,
                                                         text_threshold=0.5, target_sizes=[images[1].shape[:2]])[0]
    assert np.array_equal(single.boxes, r1["boxes"].numpy()) and np.array_equal(single.scores, r1["scores"].numpy())
    assert set(single.labels) <= {"car", "person", "traffic light"} and len(set(single.labels)) >= 2


@requires_tf
def test_prompt_longer_than_256_tokens_is_refused(tf_backend):
    words = [w for w in VOCAB[8:] if not w.startswith("#")]
    phrases = [f"{a} {b}" for a in words for b in words if a != b]
    assert len(phrases) * 3 > 256
    det = GroundedDetector(tf_backend)
    with pytest.raises(InputError, match=r"tokens but GroundingDINO reads at most 256.*split"):
        det.detect(scene(60, 80), phrases)


# ----------------------------------------------------------------------------- masks, store, driver
@requires_tf
@pytest.mark.slow
def test_segment_detections_equal_predict_boxes_and_store(tf_backend, tmp_path):
    pytest.importorskip("sam2")
    from dl_utils.samal import ImageSegmenter
    from tests.sam2_fixtures import build_tiny

    img = scene(240, 320, seed=4)
    dets = GroundedDetector(tf_backend, classes=table(), box_threshold=0.66).detect(img, "sedan. person")
    assert 2 <= len(dets) <= 30
    seg = ImageSegmenter(build_tiny())
    insts = segment_detections(seg, img, dets, range(10, 10 + len(dets)), frame=0)
    ref = ImageSegmenter(build_tiny())
    ref.set_image(img)
    direct = ref.predict_boxes(dets.boxes, range(10, 10 + len(dets)), dets.scores)
    assert insts.object_ids.tolist() == direct.object_ids.tolist()
    for a, b, k in zip(insts, direct, range(len(dets))):
        assert np.array_equal(a.mask, b.mask) and a.score == b.score and a.source is Source.AUTO
        assert a.label == dets.labels[k] and a.provenance.detector_score == pytest.approx(dets.scores[k])
        assert a.clicks == b.clicks and a.provenance.model == b.provenance.model  # SAM2's side kept

    from dl_utils.annotations import MediaInfo

    with AnnotationStore.create(tmp_path / "s.sqlite", MediaInfo("img", 320, 240, [0])) as store:
        written = store_detections(store, 0, img, dets, segmenter=seg, classes=table())
        back = store.read_frame(0)
        assert [lb.name for lb in store.labels()] == table().names  # the class table became the label list
        objs = store.objects()
    assert [o.label for o in objs] == dets.labels
    assert [o.color for o in objs] == [table()[lb].color for lb in dets.labels]
    for a, b in zip(back, written):
        assert np.array_equal(a.mask, b.mask) and a.score == pytest.approx(b.score) and a.source is Source.AUTO


def _image_folder(tmp_path, n=3):
    d = tmp_path / "imgs"
    d.mkdir()
    imgs = [scene(180, 240, seed=10 + i) for i in range(n)]
    for i, im in enumerate(imgs):
        cv2.imwrite(str(d / f"im_{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    return d, imgs


@requires_tf
def test_detect_cli_on_images_writes_box_objects(hf_model_dir, tf_backend, tmp_path, capsys):
    src, imgs = _image_folder(tmp_path)
    classes = tmp_path / "classes.csv"
    table().to_csv(classes)
    out = tmp_path / "det.sqlite"
    from dl_utils.cli import main  # the real `dl-utils detect` wiring

    assert main(["detect", str(src), "--text", "sedan. pedestrian", "--out", str(out), "--every", "2",
                 "--backend", "transformers", "--model", str(hf_model_dir), "--box-threshold", "0.65",
                 "--text-threshold", "0.3", "--classes", str(classes), "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    ref = GroundedDetector(tf_backend, classes=table(), box_threshold=0.65, text_threshold=0.3)
    expect = [ref.detect(imgs[i], "sedan. pedestrian") for i in (0, 2)]
    assert summary["frames"] == 2 and summary["detections"] == sum(map(len, expect)) > 0
    with AnnotationStore.open(out, readonly=True) as store:
        assert store.frames() == [0, 2]
        objs = {o.id: o for o in store.objects()}
        for frame, e in zip((0, 2), expect):
            got = store.read_frame(frame)
            assert [objs[i.object_id].label for i in got] == e.labels
            assert np.allclose(got.boxes, e.boxes) and np.allclose(got.scores, e.scores)
            assert all(i.mask is None and i.source is Source.AUTO and i.label for i in got)
            assert all(i.provenance.engine == "groundingdino" and i.provenance.caption == "sedan. pedestrian."
                       for i in got)
        assert store.runs()[-1]["status"] == "done" and store.runs()[-1]["params"]["text"] == "sedan. pedestrian."


@requires_tf
def test_detect_driver_errors(hf_model_dir, tmp_path):
    src, _ = _image_folder(tmp_path, 1)
    with pytest.raises(InputError, match="names no object"):
        run_detect(src, tmp_path / "a.sqlite", " . ", backend="transformers", model=hf_model_dir)
    assert not (tmp_path / "a.sqlite").exists()  # refused before anything was created
    pytest.importorskip("sam2")
    with pytest.raises(ModelError, match=r"`dl-utils models download"):
        run_detect(src, tmp_path / "b.sqlite", "car", backend="transformers", model=hf_model_dir, segment=True,
                   device="cpu")
    with pytest.raises(InputError, match="backend 'yolo'"):
        run_detect(src, tmp_path / "c.sqlite", "car", backend="yolo")


@requires_tf
@pytest.mark.media
def test_detect_frames_on_video_every_n(bedroom_mp4, tf_backend):
    from dl_utils.video_utils import open_frames

    det = GroundedDetector(tf_backend, box_threshold=0.6)
    got = list(detect_frames(bedroom_mp4, det, 60, prompt="person. dog", batch_size=2, progress=False))
    assert [f for f, _ in got] == [0, 60, 120, 180]
    with open_frames(bedroom_mp4) as src:
        for f, d in got:
            e = det.detect(src.get_frame(f), "person. dog")
            assert d.image_size == (540, 960) and np.allclose(d.boxes, e.boxes, atol=1e-3)
            assert d.labels == e.labels


# ----------------------------------------------------------------------------- dino_models
def test_registry_and_listing(_offline):
    assert dino_models.find_dino_spec("swint-ogc").name == "groundingdino-swint-ogc"
    spec = dino_models.DINO_MODELS["groundingdino-swint-ogc"]
    assert spec.url == ("https://github.com/IDEA-Research/GroundingDINO/releases/download/v0.1.0-alpha/"
                        "groundingdino_swint_ogc.pth")
    assert dino_models.find_dino_spec("IDEA-Research/grounding-dino-base").name == "grounding-dino-base"
    assert dino_models.find_dino_spec("bert-base-uncased").family == "text-encoder"
    assert dino_models.find_dino_spec("nope") is None
    rows = {r["name"]: r for r in dino_models.list_dino_models()}
    assert set(rows) == set(dino_models.DINO_MODELS) and not any(r["downloaded"] for r in rows.values())
    assert rows["grounding-dino-tiny"]["path"] == str(_offline / "grounding-dino-tiny")
    if HAVE_GD:
        assert dino_models.config_path("GroundingDINO_SwinT_OGC.py").is_file()
        with pytest.raises(ModelError, match="GroundingDINO_SwinT_OGC.py"):
            dino_models.config_path("nope.py")


class _Server:
    def __init__(self, blob: bytes, name: str):
        server = self
        self.requests: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                if self.path != f"/{name}":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                self.wfile.write(blob)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_and_url_resolution_use_the_models_machinery(_offline):
    blob = bytes(range(256)) * 1000
    srv = _Server(blob, "groundingdino_swint_ogc.pth")
    try:
        p = dino_models.download_dino("groundingdino-swint-ogc", url=srv.base + "groundingdino_swint_ogc.pth",
                                      progress=False, text_encoder=False)
        assert p == _offline / "groundingdino_swint_ogc.pth" and p.read_bytes() == blob
        assert not p.with_name(p.name + ".part").exists()
        assert dino_models.resolve_groundingdino_weights("groundingdino-swint-ogc") == (
            p, dino_models.DINO_MODELS["groundingdino-swint-ogc"])
        p.unlink()
        got, spec = dino_models.resolve_groundingdino_weights(srv.base + "groundingdino_swint_ogc.pth")
        assert got == p and got.read_bytes() == blob and spec.name == "groundingdino-swint-ogc"
        with pytest.raises(ModelError, match=r"HTTP 404.*by hand"):
            dino_models.resolve_groundingdino_weights(srv.base + "other.pth")
    finally:
        srv.close()
    with pytest.raises(ModelError, match="unknown GroundingDINO model"):
        dino_models.download_dino("yolo")
    with pytest.raises(InputError, match="download source"):
        dino_models.download_dino("groundingdino-swint-ogc", source="ftp")


def test_import_does_not_need_torch():
    code = ("import sys, dl_utils.dinoal, dl_utils.dino_models; "
            "print('torch' in sys.modules, 'transformers' in sys.modules, 'groundingdino' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


@requires_tf
def test_cli_models_download_routes_groundingdino_names(_offline, text_encoder_dir, capsys):
    """`dl-utils models download groundingdino-swint-ogc` uses the DINO registry; `tiny` stays SAM2's."""
    import shutil

    from dl_utils.cli import main

    # the weights need the BERT text encoder beside them; a local copy stands in for the hub download
    shutil.copytree(text_encoder_dir, _offline / "bert-base-uncased")

    blob = bytes(range(256)) * 100
    srv = _Server(blob, "groundingdino_swint_ogc.pth")
    try:
        url = srv.base + "groundingdino_swint_ogc.pth"
        assert main(["models", "download", "groundingdino-swint-ogc", "--url", url, "--no-verify"]) == 0
        assert Path(capsys.readouterr().out.strip()) == _offline / "groundingdino_swint_ogc.pth"
        # without --no-verify the strict load reports a file that is not GroundingDINO weights
        assert main(["models", "download", "swint-ogc", "--url", url, "--force"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "groundingdino_swint_ogc.pth" in err[0]
    finally:
        srv.close()
    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["groundingdino-swint-ogc"]["downloaded"] and rows["groundingdino-swint-ogc"]["family"] == "groundingdino"
    assert "tiny" in rows["sam2.1_hiera_tiny"]["aliases"] and "tiny" not in rows["grounding-dino-tiny"]["aliases"]


@pytest.mark.parametrize("opt", [["--max-objects", "-3"], ["--max-objects", "0"], ["--max-gap", "-1"],
                                 ["--every", "0"]])
def test_detect_refuses_impossible_counts_before_any_work(tmp_path, capsys, opt):
    """`detect IMAGE --max-objects -3` was accepted (ignored on images): refused, one line, nothing written."""
    from dl_utils.cli import main
    from dl_utils.cv_utils import save_image

    img = tmp_path / "a.png"
    save_image(img, np.zeros((16, 16, 3), np.uint8))
    out = tmp_path / "d.sqlite"
    assert main(["detect", str(img), "--text", "car", "--out", str(out), "--model", str(tmp_path / "none.pth"),
                 *opt]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{opt[0]} {opt[1]}: use" in err
    assert not out.exists()


@requires_tf
def test_detect_mixed_size_image_folder_each_image_at_its_size(tf_backend, tmp_path):
    """Photos come in many sizes: boxes clipped to, and masks stored at, each image's own size."""
    pytest.importorskip("sam2")
    from dl_utils.samal import ImageSegmenter
    from tests.sam2_fixtures import build_tiny

    folder = tmp_path / "mixed"
    folder.mkdir()
    sizes = [(160, 120), (96, 200), (240, 90)]  # (w, h)
    for i, (w, h) in enumerate(sizes):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(scene(h, w, seed=i), cv2.COLOR_RGB2BGR))
    det = GroundedDetector(tf_backend, box_threshold=0.0, nms_iou=None)
    for seg, out in ((None, tmp_path / "boxes.sqlite"), (ImageSegmenter(build_tiny()), tmp_path / "masks.sqlite")):
        s = run_detect(folder, out, "car. person", detector=det, segmenter=seg, segment=seg is not None,
                       progress=False)
        assert s["frames"] == 3 and s["detections"] > 0
        with AnnotationStore.open(out, readonly=True) as st:
            assert st.media.mixed_sizes and st.media.sizes() == sizes
            for f, (w, h) in enumerate(sizes):
                insts = list(st.read_frame(f))
                assert insts
                for inst in insts:
                    x1, y1, x2, y2 = inst.box
                    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
                    if seg is not None:
                        assert inst.mask.shape == (h, w)


@requires_gd
def test_detect_model_that_is_a_photo_is_never_called_damaged(text_encoder_dir, tmp_path, capsys):
    """`detect --model precious.jpg`: says what the file is and how to get weights; the file is kept."""
    from dl_utils.cli import main
    from dl_utils.cv_utils import save_image

    photo = tmp_path / "precious.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(3000))
    img = tmp_path / "a.png"
    save_image(img, scene(240, 320))
    assert main(["detect", str(img), "--text", "car", "--out", str(tmp_path / "d.sqlite"), "--model", str(photo),
                 "--text-encoder", str(text_encoder_dir), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "precious.jpg is not a GroundingDINO checkpoint: it is a JPEG image" in err
    assert "dl-utils models download groundingdino-swint-ogc" in err and "delete" not in err
    assert photo.stat().st_size == 3010
