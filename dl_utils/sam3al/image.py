"""SAM 3 on single images: a caption's phrases (and box exemplars) -> labelled masks.

Why a wrapper and not sam3's ``Sam3Processor`` alone: the processor answers one concept at a time,
takes boxes as normalized ``cxcywh``, reads numpy images' size wrongly (``image.shape[-2:]`` of an
``HxWx3`` array is ``(W, 3)``) and returns tensors on the model's device. The engine computes the
image features once (``set_image``), runs each caption phrase as its own concept prompt on them
(SAM 3 grounds one noun phrase per query), labels the results through the job's class table exactly
as the GroundingDINO path does (:class:`dl_utils.dinoal.caption.LabelMapper`) and returns one
:class:`~dl_utils.dinoal.detections.Detections` with full-image masks. The model calls are the
processor's own, so masks, boxes and scores equal upstream's bit for bit
(tests/test_sam3al_image.py).
"""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np
import torch
from PIL import Image
from sam3.model.sam3_image import Sam3Image
from sam3.model.sam3_image_processor import Sam3Processor

from ..classes import ClassTable
from ..dinoal.caption import Caption, LabelMapper, PhraseLabel, parse_caption
from ..dinoal.detections import Detections
from ..errors import InputError
from .cpu import cpu_fallbacks
from .prompts import Exemplar  # one type for images and video (kept importable from here)

# the text upstream's add_geometric_prompt reads when a prompt has boxes and no text
VISUAL_ONLY_TEXT = "visual"


def _check_image(image: np.ndarray) -> tuple[int, int]:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        what = (
            f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        )
        raise InputError(f"SAM 3 takes an HxWx3 uint8 RGB image, got a {what}")
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise InputError(f"SAM 3 got an empty image ({h}x{w})")
    return int(h), int(w)


def exemplar_box(ex: Exemplar, height: int, width: int) -> list[float]:
    """``ex``'s box as upstream's ``add_geometric_prompt`` wants it: ``[cx, cy, w, h]`` in [0, 1]."""
    x1, y1, x2, y2 = ex.checked_box(width, height, "image")
    return [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]


def _model_image_size(model: Sam3Image) -> int:
    """The input size the model was built for (the decoder's box-bias grid times the patch size)."""
    try:
        grid = model.transformer.decoder.compilable_stored_size[0]
        patch = model.backbone.vision_backbone.trunk.patch_embed.proj.kernel_size[0]
        return int(grid) * int(patch)
    except (AttributeError, TypeError, IndexError):
        raise InputError("cannot tell the model's input size; pass image_size= to Sam3ImageEngine") from None


class Sam3ImageEngine:
    """Concept segmentation of single images with a SAM 3 image model (:func:`.build_image_model`
    plus :func:`.load_sam3_checkpoint`).

    ``score_threshold``: upstream's confidence threshold (query score times presence score).
    ``classes`` / ``on_unknown`` / ``superclass``: the phrase -> class mapping of
    :class:`~dl_utils.dinoal.caption.LabelMapper`; here a phrase with no class is an error by
    default (SAM 3 would otherwise spend a full pass on a concept that is then dropped).
    """

    def __init__(
        self,
        model: Sam3Image,
        *,
        device: str | torch.device = "cpu",
        score_threshold: float = 0.5,
        classes: ClassTable | None = None,
        on_unknown: str = "error",
        superclass: bool = False,
        image_size: int | None = None,
    ) -> None:
        if not 0.0 <= float(score_threshold) < 1.0:
            raise InputError(f"score_threshold={score_threshold!r}: use a probability in [0, 1)")
        self.model = model
        self.device = torch.device(device)
        self.score_threshold = float(score_threshold)
        self.image_size = _model_image_size(model) if image_size is None else int(image_size)
        self.mapper = LabelMapper(classes, on_unknown=on_unknown, superclass=superclass)
        self.processor = Sam3Processor(
            model, resolution=self.image_size, device=str(self.device),
            confidence_threshold=self.score_threshold,
        )

    def segment(
        self,
        image: np.ndarray,
        caption: str | Caption | None,
        exemplars: Sequence[Exemplar] = (),
    ) -> Detections:
        """Masks, boxes and scores of every instance of each caption phrase on ``image``.

        ``caption``: ``"car. person"`` (each phrase one concept prompt); it may be empty when
        ``exemplars`` are given: the boxes alone then define the concept and the detections are
        unlabelled (``label`` ``""``). Exemplars go with a single phrase: they show one concept.
        """
        h, w = _check_image(image)
        exemplars = tuple(exemplars)
        for ex in exemplars:
            if not isinstance(ex, Exemplar):
                raise InputError(f"exemplars must be Exemplar(box, positive), got {type(ex).__name__}")
        empty = caption is None or (isinstance(caption, str) and not caption.replace(".", "").strip())
        if empty and not exemplars:
            raise InputError('SAM 3 needs a caption (e.g. "car. person") or exemplar boxes; got neither')
        parsed = None if empty else parse_caption(caption)
        if parsed is not None and exemplars and len(parsed) > 1:
            raise InputError(
                f"exemplar boxes show one concept but the caption has {len(parsed)} phrases "
                f"({parsed.text!r}); give one phrase with exemplars"
            )
        for ex in exemplars:
            if ex.phrase is not None and (parsed is None or ex.phrase != parsed.phrases[0]):
                raise InputError(
                    f"exemplar {ex.box} names phrase {ex.phrase!r}, which is not the caption's "
                    f"({'none' if parsed is None else repr(parsed.phrases[0])}); drop phrase= or fix the caption"
                )
        boxes = [exemplar_box(ex, h, w) for ex in exemplars]
        plabels: list[PhraseLabel]
        if parsed is None:
            plabels = [PhraseLabel(VISUAL_ONLY_TEXT, "", -1)]
        else:
            plabels = self.mapper.map(parsed)  # unknown phrases: UnknownClassError before the model runs
        text = "" if parsed is None else parsed.text

        parts: list[Detections] = []
        with cpu_fallbacks(self.device), torch.inference_mode():
            state = self.processor.set_image(Image.fromarray(image))
            for k, pl in enumerate(plabels):
                if pl.label is None:  # on_unknown="warn": dropped, already reported
                    continue
                self.processor.reset_all_prompts(state)
                if boxes:
                    # what add_geometric_prompt does per box, without its forward per box
                    prompt = self.model._get_dummy_prompt()
                    for b, ex in zip(boxes, exemplars):
                        prompt.append_boxes(
                            torch.tensor(b, device=self.device, dtype=torch.float32).view(1, 1, 4),
                            torch.tensor([ex.positive], device=self.device, dtype=torch.bool).view(1, 1),
                        )
                    state["geometric_prompt"] = prompt
                out = self.processor.set_text_prompt(pl.phrase, state)
                n = int(out["scores"].shape[0])
                phrase = "" if parsed is None else pl.phrase
                parts.append(
                    Detections(
                        boxes=out["boxes"].float().cpu().numpy(),
                        scores=out["scores"].float().cpu().numpy(),
                        phrases=[phrase] * n,
                        labels=[pl.label] * n,
                        class_ids=np.full(n, pl.class_id, dtype=np.int64),
                        phrase_ids=np.full(n, k if parsed is not None else -1, dtype=np.int64),
                        caption=text,
                        image_size=(h, w),
                        masks=out["masks"][:, 0].cpu().numpy().reshape(n, h, w),
                    )
                )
        if not parts:
            return Detections(np.zeros((0, 4)), np.zeros(0), caption=text, image_size=(h, w),
                              masks=np.zeros((0, h, w), dtype=bool))
        return Detections.concat(parts)


__all__ = ["VISUAL_ONLY_TEXT", "Exemplar", "Sam3ImageEngine", "exemplar_box"]
