"""GroundingDINO captions (text) → labelled boxes (two backends, or your own ONNX YOLO detector) →
SAM2 masks → annotation store.

Import what you need from here; torch, groundingdino, transformers and onnxruntime are imported only
when a backend is built or boxes are suppressed, so this package imports without the model extras
(the ONNX detector needs onnxruntime alone, not torch).
See docs/dinoal.md; the ``dl-utils detect`` driver is :mod:`dl_utils.drivers.detect`.
"""

from .backends import (
    MAX_TEXT_LEN,
    Backend,
    GroundingDinoBackend,
    TransformersBackend,
    build_groundingdino,
    load_groundingdino_weights,
    verify_groundingdino,
)
from .caption import (
    ON_UNKNOWN,
    Caption,
    LabelMapper,
    PhraseLabel,
    Prompt,  # pre-rename alias of Caption
    UnknownPhraseWarning,
    parse_caption,
    parse_prompt,  # pre-rename alias of parse_caption
    phrase_index_of_tokens,
    phrase_scores,
)
from .detections import (
    Detections,
    cap,
    clip_boxes,
    drop_cut_boxes,
    nms,
    shift,
    tile_grid,
)
from .detector import BACKENDS, Detector, GroundedDetector, load_detector
from .onnx_yolo import OnnxDetections, OnnxYoloDetector
from .pipeline import (
    add_detection_objects,
    detect_frames,
    ensure_labels,
    segment_detections,
    store_detections,
    with_detection,
)

__all__ = [
    "BACKENDS",
    "MAX_TEXT_LEN",
    "ON_UNKNOWN",
    "Backend",
    "Caption",
    "Detections",
    "Detector",
    "GroundedDetector",
    "GroundingDinoBackend",
    "LabelMapper",
    "OnnxDetections",
    "OnnxYoloDetector",
    "PhraseLabel",
    "Prompt",
    "TransformersBackend",
    "UnknownPhraseWarning",
    "add_detection_objects",
    "build_groundingdino",
    "cap",
    "clip_boxes",
    "detect_frames",
    "drop_cut_boxes",
    "ensure_labels",
    "load_detector",
    "load_groundingdino_weights",
    "nms",
    "parse_caption",
    "parse_prompt",
    "phrase_index_of_tokens",
    "phrase_scores",
    "segment_detections",
    "shift",
    "store_detections",
    "tile_grid",
    "verify_groundingdino",
    "with_detection",
]
