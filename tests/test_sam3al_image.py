"""dl_utils.sam3al.image: the engine returns exactly what sam3's own Sam3Processor returns
(set_image + set_text_prompt, + add_geometric_prompt for exemplars), phrase by phrase, on a real
photo with the tiny random-weight model; bad input is a one-line InputError."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import shared_file
from tests.sam3_fixtures import (  # noqa: F401
    requires_sam3,
    sam3_on_device,
    tiny_sam3_image_model,
    tiny_spec,
)

pytestmark = requires_sam3

# random weights score every query around 0.2-0.3: this keeps some and drops others
THRESHOLD = 0.25


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(shared_file("truck.jpg")))
    small = cv2.resize(bgr, (bgr.shape[1] // 4, bgr.shape[0] // 4), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small[:, :, ::-1])


def _reference(model, image, phrase, boxes=()):
    """sam3's processor called directly, a fresh set_image per concept."""
    from PIL import Image
    from sam3.model.sam3_image_processor import Sam3Processor

    proc = Sam3Processor(model, resolution=tiny_spec().image_size, device="cpu", confidence_threshold=THRESHOLD)
    with sam3_on_device("cpu"):
        state = proc.set_image(Image.fromarray(image))
        if phrase is not None:
            state = proc.set_text_prompt(phrase, state)
        for box, positive in boxes:
            state = proc.add_geometric_prompt(box, positive, state)
    return state


def _assert_equal(d, ref, rows):
    assert np.array_equal(d.masks[rows], ref["masks"][:, 0].numpy())
    assert np.array_equal(d.boxes[rows], ref["boxes"].numpy())
    assert np.array_equal(d.scores[rows], ref["scores"].numpy())


def test_caption_phrases_equal_sam3_processor(tiny_sam3_image_model, photo) -> None:
    from dl_utils.sam3al import Sam3ImageEngine

    engine = Sam3ImageEngine(tiny_sam3_image_model, score_threshold=THRESHOLD)
    d = engine.segment(photo, "truck. car")
    h, w = photo.shape[:2]
    assert d.masks is not None and d.masks.shape == (len(d), h, w) and d.masks.dtype == bool
    assert d.caption == "truck. car." and d.image_size == (h, w)
    for k, phrase in enumerate(["truck", "car"]):
        ref = _reference(tiny_sam3_image_model, photo, phrase)
        rows = d.phrase_ids == k
        assert rows.sum() == len(ref["scores"]) > 0, phrase  # non-empty: the comparison means something
        _assert_equal(d, ref, rows)
        assert {d.labels[i] for i in np.flatnonzero(rows)} == {phrase}


def test_exemplars_equal_add_geometric_prompt(tiny_sam3_image_model, photo) -> None:
    from dl_utils.sam3al import Exemplar, Sam3ImageEngine, exemplar_box

    h, w = photo.shape[:2]
    exs = [Exemplar((w * 0.2, h * 0.3, w * 0.7, h * 0.8), True), Exemplar((0, 0, w * 0.2, h * 0.2), False)]
    boxes = [(exemplar_box(e, h, w), e.positive) for e in exs]
    x1, y1, x2, y2 = exs[0].box_xyxy
    assert boxes[0][0] == pytest.approx([(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h])
    engine = Sam3ImageEngine(tiny_sam3_image_model, score_threshold=THRESHOLD)

    d = engine.segment(photo, "truck", exs)
    ref = _reference(tiny_sam3_image_model, photo, "truck", boxes)
    assert len(d) == len(ref["scores"]) > 0
    _assert_equal(d, ref, np.ones(len(d), bool))

    d = engine.segment(photo, "", exs)  # the boxes alone: upstream's "visual" text
    ref = _reference(tiny_sam3_image_model, photo, None, boxes)
    assert len(d) == len(ref["scores"]) > 0
    _assert_equal(d, ref, np.ones(len(d), bool))
    assert set(d.labels) == {""}


def test_class_table_labels_and_bad_input(tiny_sam3_image_model, photo, tmp_path) -> None:
    from dl_utils.classes import ClassTable
    from dl_utils.errors import InputError
    from dl_utils.sam3al import Exemplar, Sam3ImageEngine

    csv = tmp_path / "classes.csv"
    csv.write_text("name,synonyms\nvehicle,truck;car\n")
    table = ClassTable.load(csv)
    engine = Sam3ImageEngine(tiny_sam3_image_model, score_threshold=THRESHOLD, classes=table)
    d = engine.segment(photo, "truck")
    assert len(d) > 0 and set(d.labels) == {"vehicle"} and set(d.class_ids.tolist()) == {table.resolve("truck").id}

    bad = [
        lambda: engine.segment(photo, "dog"),  # unknown label
        lambda: engine.segment(photo, ""),
        lambda: engine.segment(photo, None),
        lambda: engine.segment(photo, ". ."),
        lambda: engine.segment(photo[:, :, 0], "truck"),
        lambda: engine.segment(photo.astype(np.float32), "truck"),
        lambda: engine.segment(photo, "truck. car", [Exemplar((0, 0, 5, 5))]),
        lambda: engine.segment(photo, "truck", [Exemplar((5, 5, 1, 1))]),
        lambda: Sam3ImageEngine(tiny_sam3_image_model, score_threshold=1.5),
    ]
    for call in bad:
        with pytest.raises(InputError) as e:
            call()
        assert "\n" not in str(e.value), str(e.value)
