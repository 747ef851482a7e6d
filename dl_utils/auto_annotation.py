"""GroundingDINO + SAM2 as a cvat-sdk auto-annotation function (CVAT's ``DetectionFunction``).

Run it on an image task from the command line::

    cvat-cli --server-host https://app.cvat.ai task auto-annotate 42 \\
        --function-module dl_utils.auto_annotation \\
        -p text=str:"car. person. traffic light" -p shape=str:mask

or from Python with cvat-sdk's own driver::

    from cvat_sdk.auto_annotation import annotate_task
    from dl_utils import auto_annotation
    annotate_task(conn.client, 42, auto_annotation.create(text="car. person"))

Parameters of :func:`create` (``-p name=type:value``): ``text`` (the prompt; its phrases are the
labels, matched by name to the task's labels), ``classes`` (a class table: labels and synonyms
from it instead), ``shape`` (``mask``, default, or ``rectangle`` to skip SAM2), ``backend``
(``groundingdino``, ``transformers``, ``sam3``: SAM 3 finds the masks itself, no SAM2 is loaded, or
``onnx``: your own Ultralytics YOLO export, ``model`` its ``.onnx`` file; ``text`` optional, all its
classes without it, and the labels are its class names or the class table's),
``model`` (detector weights: file, folder, registry name or hub id), ``nms_iou`` (NMS IoU of the
groundingdino, transformers and onnx backends), ``text_encoder`` (groundingdino
backend: a local BERT folder), ``bpe`` (sam3 backend: its tokenizer vocabulary file), ``sam2`` (SAM2 model name), ``sam2_checkpoint`` (a checkpoint file for
it), ``image_size`` (SAM2 input size override), ``device``, ``box_threshold``, ``text_threshold``,
``tracker`` (``sam2``, the default and the only mode here: cvat-sdk hands the function one frame at a
time, so SAM2 segments each image on its own and nothing propagates; ``samurai``, a propagation mode,
is refused with a message pointing to ``dl-utils annotate --tracker samurai``, and an unknown name is
the one-line error the commands give). cvat-sdk passes ``conf_threshold`` (detections below it are dropped) and
``conv_mask_to_poly`` (masks are sent as polygons) through the context.

The heavy engines (torch, GroundingDINO, SAM2) are imported only when :func:`create` builds them,
so importing this module, or the rest of :mod:`dl_utils.cvat`, needs none of them.

The boxes-to-masks step is :func:`dl_utils.dinoal.pipeline.segment_detections`, the one the ``detect``
and ``annotate`` drivers use; this module adds only what CVAT's function protocol asks for (label
ids, the context's confidence threshold, masks as CVAT RLE or polygons).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .cv_utils import encode_cvat_rle, mask_to_polygons
from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import PIL.Image
    from cvat_sdk.auto_annotation import DetectionFunctionContext, DetectionFunctionSpec
    from cvat_sdk.models import LabeledShapeRequest

    from .classes import ClassTable
    from .dinoal.caption import Prompt
    from .dinoal.detector import Detector
    from .samal import ImageSegmenter

SHAPES = ("mask", "rectangle")


class GroundedSamFunction:
    """A cvat-sdk detection function: text-prompted boxes (GroundingDINO), masks from SAM2.

    ``detector`` follows :class:`dl_utils.dinoal.Detector` (``detect(image, prompt)`` →
    ``Detections``); ``segmenter`` follows :class:`dl_utils.samal.ImageSegmenter` (used through
    :func:`dl_utils.dinoal.segment_detections`), and may be ``None`` for ``shape="rectangle"``.
    ``labels`` are the label names the function declares (the detector's output labels); ``prompt``
    the text handed to the detector (``None``: the detector's own). ``masks=True``: the detector
    segments as it detects (SAM 3); its masks are sent and ``segmenter`` may be ``None``.
    """

    def __init__(self, detector: Detector, segmenter: ImageSegmenter | None = None, *, labels: Sequence[str],
                 prompt: str | Prompt | None = None, shape: str = "mask", masks: bool = False) -> None:
        if shape not in SHAPES:
            raise InputError(f"shape {shape!r}: use one of {', '.join(SHAPES)}")
        self.masks = bool(masks)  # the detector's detections carry masks (SAM 3): no segmenter needed
        if shape == "mask" and segmenter is None and not self.masks:
            raise InputError("shape='mask' needs a SAM2 segmenter; pass one or use shape='rectangle'")
        names = [str(n) for n in labels]
        if not names or len(set(names)) != len(names):
            raise InputError(f"labels {names!r}: give at least one label, each once")
        self.detector = detector
        self.segmenter = segmenter
        self.prompt = prompt
        self.shape = shape
        self.labels = names
        self._ids = {n: i for i, n in enumerate(names)}

    @property
    def spec(self) -> DetectionFunctionSpec:
        import cvat_sdk.auto_annotation as cvataa

        return cvataa.DetectionFunctionSpec(
            labels=[cvataa.label_spec(n, i, type=self.shape) for n, i in self._ids.items()]
        )

    def detect(self, context: DetectionFunctionContext | None, image: PIL.Image.Image) -> list[LabeledShapeRequest]:
        """The shapes for one image of the task, as cvat-sdk's driver calls it.

        ``context`` may lack ``conf_threshold`` / ``conv_mask_to_poly`` (older cvat-sdk, or ``None``
        when called by hand): no threshold and masks as masks then.
        """
        import cvat_sdk.auto_annotation as cvataa

        arr = np.array(image.convert("RGB"))  # a writable copy (torch warns on read-only arrays)
        dets = self.detector.detect(arr, self.prompt)
        thr = getattr(context, "conf_threshold", None)
        keep = [k for k in range(len(dets))
                if dets.labels[k] in self._ids and (thr is None or float(dets.scores[k]) >= thr)]
        if not keep:
            return []
        dets = dets[np.asarray(keep)]
        out: list[LabeledShapeRequest] = []
        if self.shape == "rectangle":
            for k in range(len(dets)):
                box = [float(v) for v in dets.boxes[k]]
                out.append(cvataa.rectangle(self._ids[dets.labels[k]], box))
            return out
        from .dinoal.pipeline import masked_instances, segment_detections

        if dets.masks is not None:  # the detector's own masks (SAM 3): no second segmenter
            insts = masked_instances(dets, list(range(1, len(dets) + 1)))
        elif self.segmenter is None:  # __init__ refuses shape="mask" without one unless masks=True
            raise InputError("shape='mask' needs a SAM2 segmenter (these detections carry no masks); pass one "
                             "or use shape='rectangle'")
        else:
            insts = segment_detections(self.segmenter, arr, dets)
        to_poly = bool(getattr(context, "conv_mask_to_poly", False))
        for k, inst in enumerate(insts):
            if inst.mask is None or not inst.mask.any():
                continue
            lid = self._ids[dets.labels[k]]
            if to_poly:
                for ring in mask_to_polygons(inst.mask):
                    out.append(cvataa.polygon(lid, [float(v) for v in ring]))
            else:
                out.append(cvataa.mask(lid, encode_cvat_rle(inst.mask)))
        return out


def create(
    text: str | None = None,
    *,
    classes: str | None = None,
    shape: str = "mask",
    backend: str = "groundingdino",
    model: str | None = None,
    sam2: str | None = None,
    sam2_checkpoint: str | None = None,
    image_size: int | None = None,
    text_encoder: str | None = None,
    device: str | None = None,
    box_threshold: float | None = None,
    text_threshold: float | None = None,
    bpe: str | None = None,
    tracker: str = "sam2",
    nms_iou: float | None = None,
) -> GroundedSamFunction:
    """Build the function for cvat-cli's ``--function-module`` (see the module doc)."""
    from .drivers.options import DetectorOptions, SamOptions

    SamOptions(tracker=tracker)  # an unknown name: the commands' one-line error
    if tracker != "sam2":  # before any model loads; a silently ignored mode would look like it had an effect
        raise InputError(f"tracker={tracker}: CVAT's auto-annotation gives the function one frame at a time, so "
                         "nothing propagates; use dl-utils annotate --tracker samurai on the video and push "
                         "the store (--cvat-task)")
    if text is None and classes is None and backend != "onnx":
        raise InputError('give the objects to find: -p text=str:"car. person" (or -p classes=str:TABLE.xlsx)')
    opts = DetectorOptions(backend=backend, model=model, text_encoder=text_encoder, device=device, classes=classes,
                           bpe=bpe)
    opts.check_sam3()
    if box_threshold is not None:
        opts.box_threshold = float(box_threshold)
    if text_threshold is not None:
        opts.text_threshold = float(text_threshold)
    if nms_iou is not None:
        opts.nms_iou = float(nms_iou)
        opts.check_sam3()
    table = opts.class_table()
    detector = opts.build(table)
    prompt = detector.resolve_prompt(text)
    # onnx: the labels its boxes carry (model or table names), not the phrases as typed
    from .dinoal.onnx_yolo import OnnxYoloDetector

    labels = (detector.labels_for(prompt) if isinstance(detector, OnnxYoloDetector)
              else _label_names(table, text, prompt.phrases))
    segmenter: ImageSegmenter | None = None
    sam3 = backend == "sam3"
    if shape == "mask" and not sam3:
        segmenter = SamOptions(model=sam2, checkpoint=sam2_checkpoint, image_size=image_size,
                               device=device).image_segmenter()
    return GroundedSamFunction(detector, segmenter, labels=labels, prompt=prompt, shape=shape, masks=sam3)


def _label_names(table: ClassTable | None, text: str | None, phrases: Sequence[str]) -> list[str]:
    """The labels the function declares, which CVAT matches by name to the task's labels: the
    class table's classes that the text names (all its leaf classes without a text), else the
    text's phrases as written."""
    if table is None:
        return list(phrases)
    if text is None:
        return list(table.leaves())
    names: list[str] = []
    for p in phrases:
        info = table.resolve(p)
        names.append(info.name if info is not None else p)
    return list(dict.fromkeys(names))


__all__ = ["GroundedSamFunction", "SHAPES", "create"]
