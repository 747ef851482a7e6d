"""The two GroundingDINO implementations behind one ``infer`` call.

* :class:`GroundingDinoBackend`: the original code (``groundingdino-py``), built from its own config
  file, weights loaded strictly, the BERT text encoder read from a local folder. Pre- and
  post-processing are upstream's (``groundingdino.datasets.transforms``, the thresholding and
  ``get_phrases_from_posmap`` of ``groundingdino.util.inference.predict``), so boxes, scores and
  phrases equal ``predict``'s.
* :class:`TransformersBackend`: ``GroundingDinoForObjectDetection`` with its ``AutoProcessor`` and
  ``post_process_grounded_object_detection``.

A backend returns, per image, the boxes above ``box_threshold`` in source pixels, their scores and
phrases, and the per-phrase scores that :class:`~dl_utils.dinoal.detector.GroundedDetector` turns into
labels. Nothing else (labels, NMS, tiling) happens here, so parity with upstream is checkable.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError, ModelError
from ..models import harmless_warnings_hidden, state_dict_mismatch
from .detections import Detections
from .caption import Caption, phrase_index_of_tokens, phrase_scores

MAX_TEXT_LEN = 256  # tokens GroundingDINO reads (both implementations)


@runtime_checkable
class Backend(Protocol):
    """Raw GroundingDINO inference on a batch of RGB images with one caption."""

    name: str
    device: Any

    def infer(self, images: Sequence[np.ndarray], caption: Caption, *, box_threshold: float,
              text_threshold: float) -> list[Detections]: ...


def _require(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ModelError(f"{module} is not installed: {extra}")


def pick_device(device: Any = None):
    """cuda → mps → cpu (or the one asked for): the SAM2 engine's choice, so both run on one device."""
    import importlib.util

    if importlib.util.find_spec("sam2") is not None:
        from ..sam2_loader import pick_device as _pick

        return _pick(device)
    import torch  # a detector-only install: the same rule without sam2's checks

    if device is None:
        device = os.environ.get("DL_UTILS_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device {device!r} is not a torch device ({e}); use 'cuda', 'mps' or 'cpu'") from None


def check_image(image: Any, what: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(
            f"{what} must be an RGB HxWx3 uint8 array, got shape {arr.shape} dtype {arr.dtype}; convert "
            "it (cv2.cvtColor(img, cv2.COLOR_BGR2RGB) for OpenCV images, COLOR_GRAY2RGB / COLOR_RGBA2RGB)"
        )
    return arr


def _check_text_len(n_tokens: int, caption: Caption) -> None:
    if n_tokens > MAX_TEXT_LEN:
        raise InputError(
            f"the prompt has {n_tokens} tokens but GroundingDINO reads at most {MAX_TEXT_LEN}: phrases "
            f"after about the {MAX_TEXT_LEN}th token would be ignored; split the {len(caption)} phrases "
            "over several runs"
        )


# ----------------------------------------------------------------------------- original code
class GroundingDinoBackend:
    """groundingdino-py's ``GroundingDINO`` model (see the module docstring).

    ``weights``: a ``.pth`` file, a registry name (``groundingdino-swint-ogc``) or a URL;
    ``text_encoder``: a local BERT folder (default: ``bert-base-uncased`` in the models folder);
    ``config``: the config file name inside the package (default: the registry's, else SwinT-OGC).
    ``image_size``/``max_size``: the shorter/longer side limits of upstream's resize (800/1333).
    ``strict``: refuse weights with missing/unexpected keys (upstream loads with ``strict=False``);
    the keys official files carry that the model does not define (``label_enc.weight``, BERT's
    ``position_ids``: ``dl_utils.models.OFFICIAL_EXTRA_KEYS``) are dropped, any other one is refused.
    """

    name = "groundingdino"

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        *,
        text_encoder: str | os.PathLike[str] | None = None,
        config: str | None = None,
        device: Any = None,
        image_size: int = 800,
        max_size: int = 1333,
        download: bool = False,
        strict: bool = True,
        trust_checkpoint: bool = False,
    ):
        from ..dino_models import (
            DINO_MODELS,
            config_path,
            resolve_groundingdino_weights,
            resolve_text_encoder,
        )

        _require("groundingdino", "pip install 'groundingdino-py==0.4.0' 'transformers>=4.57,<4.58' "
                                  "(or use --backend transformers)")
        path, spec = resolve_groundingdino_weights(weights, download=download)
        encoder = resolve_text_encoder(text_encoder, download=download)
        cfg = config_path(config or (spec.config if spec else DINO_MODELS["groundingdino-swint-ogc"].config))
        model = build_groundingdino(cfg, encoder, device="cpu")
        self.sha256: str | None = load_groundingdino_weights(
            model, path, name=spec.name if spec else None, strict=strict,
            trust_checkpoint=trust_checkpoint)
        # all None for a backend wrapped around a built model (from_model)
        self.weights: Path | None = path
        self.config: Path | None = cfg
        self.text_encoder: Path | None = encoder
        self._setup(model, pick_device(device), image_size, max_size)

    @classmethod
    def from_model(cls, model: Any, *, device: Any = None, image_size: int = 800,
                   max_size: int = 1333) -> GroundingDinoBackend:
        """Wrap an already built (and loaded) ``GroundingDINO`` module (tests, notebooks)."""
        if not hasattr(model, "tokenizer") or not hasattr(model, "transformer"):
            raise InputError(f"{type(model).__name__} is not a groundingdino GroundingDINO model")
        self = cls.__new__(cls)
        self.sha256 = None
        self.weights = self.config = self.text_encoder = None
        self._setup(model, pick_device(device), image_size, max_size)
        return self

    def _setup(self, model: Any, device: Any, image_size: int, max_size: int) -> None:
        with harmless_warnings_hidden():
            import groundingdino.datasets.transforms as T

        if int(image_size) < 32 or int(max_size) < int(image_size):
            raise InputError(
                f"image_size={image_size}, max_size={max_size}: use 32 <= image_size <= max_size"
            )
        self.device = device
        self.model = model.to(device).eval()
        self.tokenizer = model.tokenizer
        self.image_size, self.max_size = int(image_size), int(max_size)
        # upstream's own transform (groundingdino.util.inference.load_image), at the chosen size
        self._transform = T.Compose([
            T.RandomResize([self.image_size], max_size=self.max_size),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])
        self._dot = self.tokenizer.convert_tokens_to_ids(".")
        self._special = set(self.tokenizer.all_special_ids)

    def preprocess(self, image: np.ndarray):
        """RGB array → normalised tensor ``(3, h, w)``, exactly as ``load_image`` does it (via PIL)."""
        from PIL import Image

        tensor, _ = self._transform(Image.fromarray(image), None)
        return tensor

    def infer(self, images: Sequence[np.ndarray], caption: Caption, *, box_threshold: float,
              text_threshold: float) -> list[Detections]:
        import torch
        from torchvision.ops import box_convert

        with harmless_warnings_hidden():
            from groundingdino.util.utils import get_phrases_from_posmap

        if not images:
            return []
        text = caption.text
        tokenized = self.tokenizer(text)
        _check_text_len(len(tokenized["input_ids"]), caption)
        token_phrase = phrase_index_of_tokens(tokenized["input_ids"], self._dot, self._special)
        tensors = [self.preprocess(check_image(im)) for im in images]
        if len({t.shape for t in tensors}) == 1:
            batch = torch.stack(tensors)  # what predict passes (image[None]) for one image
        else:  # upstream's padding for unequal sizes (the mask keeps padding out of attention)
            from groundingdino.util.misc import nested_tensor_from_tensor_list

            batch = nested_tensor_from_tensor_list(tensors)
        with torch.no_grad(), harmless_warnings_hidden():
            # upstream's forward warns on every call (torch.utils.checkpoint, cuda.amp, BERT's device
            # argument, meshgrid): deprecations in its code, not something a user can act on
            outputs = self.model(batch.to(self.device), captions=[text] * len(tensors))
        # the same ops, in the same order and on the same device (CPU), as inference.predict
        all_logits = outputs["pred_logits"].cpu().sigmoid()
        all_boxes = outputs["pred_boxes"].cpu()
        out = []
        for b, im in enumerate(images):
            logits_b, boxes_b = all_logits[b], all_boxes[b]
            mask = logits_b.max(dim=1)[0] > box_threshold
            logits = logits_b[mask]
            boxes = boxes_b[mask]
            phrases = [
                get_phrases_from_posmap(logit > text_threshold, tokenized, self.tokenizer).replace(".", "")
                for logit in logits
            ]
            h, w = im.shape[:2]
            xyxy = box_convert(boxes=boxes * torch.Tensor([w, h, w, h]), in_fmt="cxcywh", out_fmt="xyxy")
            probs = logits.numpy()
            out.append(
                Detections(
                    boxes=xyxy.numpy(),
                    scores=logits.max(dim=1)[0].numpy(),
                    phrases=phrases,
                    phrase_scores=phrase_scores(probs, token_phrase, len(caption)),
                    caption=text,
                    image_size=(h, w),
                )
            )
        return out


def verify_groundingdino(weights: str | os.PathLike[str] | None = None, *,
                         text_encoder: str | os.PathLike[str] | None = None) -> str:
    """Strict-load weights once on the CPU (records/checks ``<file>.sha256``); return the digest.

    For ``dl-utils models download groundingdino-*``: a bad file is reported at download time.
    """
    backend = GroundingDinoBackend(weights, text_encoder=text_encoder, device="cpu")
    digest = backend.sha256 or ""
    del backend
    return digest


def build_groundingdino(config: str | os.PathLike[str], text_encoder: str | os.PathLike[str], *,
                        device: str = "cpu"):
    """``groundingdino.models.build_model`` from a config file with the text encoder at a local path.

    Upstream's builder prints and warns on every build; that output is captured so the CLI stays
    readable (it is re-raised inside the error when the build fails).
    """
    with harmless_warnings_hidden():  # groundingdino imports timm.models.layers (a FutureWarning)
        from groundingdino.models import build_model
        from groundingdino.util.slconfig import SLConfig

    try:
        args = SLConfig.fromfile(str(config))
    except Exception as e:  # noqa: BLE001  a Python config file: anything can go wrong executing it
        raise ModelError(f"cannot read GroundingDINO config {config} ({type(e).__name__}: {e})") from None
    args.device = str(device)
    args.text_encoder_type = str(text_encoder)
    noise = io.StringIO()
    try:
        with contextlib.redirect_stdout(noise), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(args)
    except OSError as e:  # from_pretrained: missing/unreadable files in the text encoder folder
        raise ModelError(
            f"cannot load the text encoder from {text_encoder} ({str(e).splitlines()[0]}); the folder "
            "needs config.json, vocab.txt and the weights (model.safetensors or pytorch_model.bin): "
            "run `dl-utils models download bert-base-uncased`"
        ) from None
    model.dl_utils_config = str(config)
    return model


def load_groundingdino_weights(model: Any, path: str | os.PathLike[str], *, name: str | None = None,
                               strict: bool = True, trust_checkpoint: bool = False) -> str:
    """Load a ``{"model": state_dict}`` file into ``model``; check/record its sha256; return it.

    Key or shape mismatches raise :class:`ModelError` saying what the file is instead (transformers
    weights, a SAM2 checkpoint, another config, a text encoder of another size).
    """
    import torch

    from ..models import check_sha256, clean_official_state_dict, is_registry_download, record_sha256, why_unreadable

    path = Path(path)
    if path.suffix == ".safetensors":
        raise ModelError(
            f"{path} is a safetensors file: the original GroundingDINO code loads .pth checkpoints; a "
            "transformers GroundingDINO folder goes with --backend transformers --model FOLDER"
        )
    digest = check_sha256(path, name=name)
    ours = is_registry_download(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except Exception as e:  # noqa: BLE001  torch raises RuntimeError, UnpicklingError, EOFError...
        first = str(e).splitlines()[0] if str(e) else ""
        if "Unsupported global" in str(e):
            raise ModelError(f"cannot read GroundingDINO weights {path} ({type(e).__name__}: {first}); if you "
                             "trust the file, load it with trust_checkpoint=True") from None
        if ours:
            redo = f"`dl-utils models download {name} --force`" if name else "the download again"
            raise ModelError(f"cannot read GroundingDINO weights {path} ({type(e).__name__}: {first}); the "
                             f"downloaded file is damaged: run {redo}") from None
        raise ModelError(f"{path} is not a GroundingDINO checkpoint: {why_unreadable(path, e)}; {_HOW_TO_GET}") from None
    sd = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd:
        found = (f"a dict with keys {sorted(map(str, ckpt))[:5]}" if isinstance(ckpt, dict) and ckpt
                 else f"an empty {type(ckpt).__name__}" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}")
        raise ModelError(f"{path} is not a GroundingDINO checkpoint: it holds {found}, no state dict; "
                         f"{_HOW_TO_GET}")
    # upstream's clean_state_dict (``module.`` prefix) and the known training-time extras, from the
    # one list in dl_utils.models
    sd, _dropped = clean_official_state_dict("groundingdino", model, sd)
    _check_groundingdino_keys(model, sd, path, strict)
    model.load_state_dict(sd, strict=False)  # strictness was checked above, with readable errors
    if digest is None:
        digest = record_sha256(path) or ""
    return digest


_HOW_TO_GET = (
    "GroundingDINO weights are a PyTorch file {'model': state_dict} such as groundingdino_swint_ogc.pth: "
    "get one with `dl-utils models download groundingdino-swint-ogc` and leave --model out"
)


def _check_groundingdino_keys(model: Any, sd: dict[str, Any], path: Path, strict: bool) -> None:
    theirs = sd.keys()
    if any(k.startswith("image_encoder.") for k in theirs) and not any(k.startswith("transformer.") for k in theirs):
        raise ModelError(f"{path} is a SAM2 checkpoint, not GroundingDINO weights; pass it to the SAM2 engine")
    if any(k.startswith(("model.backbone.conv_encoder", "model.text_backbone")) for k in theirs):
        raise ModelError(
            f"{path} holds transformers GroundingDinoForObjectDetection weights; use --backend "
            "transformers with the save_pretrained folder they belong to"
        )
    missing, unexpected, shapes, parts = state_dict_mismatch(model, sd)
    if shapes or (strict and (missing or unexpected)):
        if shapes and all(s.startswith(("bert.", "feat_map.")) for s in shapes):
            hint = "the text encoder folder is not the BERT these weights were trained with (bert-base-uncased)"
        elif shapes:
            hint = "the weights belong to another config (Swin-B weights need GroundingDINO_SwinB_cfg.py)"
        else:
            hint = "pass strict=False to load what matches, as upstream does, if you know the file is right"
        cfg = getattr(model, "dl_utils_config", "the config")
        raise ModelError(f"GroundingDINO weights {path} do not fit {Path(str(cfg)).name}: {'; '.join(parts)}; {hint}")


# ----------------------------------------------------------------------------- transformers port
class TransformersBackend:
    """``GroundingDinoForObjectDetection`` + its processor, from a folder or a Hugging Face id."""

    name = "transformers"

    def __init__(self, model: str | os.PathLike[str] | None = None, *, device: Any = None,
                 download: bool = False):
        from ..dino_models import resolve_transformers_model

        _require("transformers", "pip install 'transformers>=4.57,<4.58'")
        path = resolve_transformers_model(model, download=download)
        try:
            from transformers import AutoProcessor, GroundingDinoForObjectDetection

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net, info = GroundingDinoForObjectDetection.from_pretrained(str(path), output_loading_info=True)
                processor = AutoProcessor.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise ModelError(
                f"cannot load the transformers GroundingDINO model from {path} ({str(e).splitlines()[0]}); "
                "the folder needs the model (config.json + weights) and the processor "
                "(preprocessor_config.json + tokenizer), as written by save_pretrained"
            ) from None
        # from_pretrained fills missing weights with random values and only logs it: refuse instead
        missing = sorted(info.get("missing_keys") or [])
        mismatched = [k for k, *_ in (info.get("mismatched_keys") or [])]
        if missing or mismatched:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
            if mismatched:
                parts.append(f"{len(mismatched)} shape mismatches (e.g. {', '.join(mismatched[:3])})")
            raise ModelError(
                f"the weights in {path} do not fit its config.json: {'; '.join(parts)}; the folder is "
                "incomplete or mixes two models: save it again with save_pretrained, or run "
                "`dl-utils models download grounding-dino-tiny`"
            )
        self.path: Path | None = path  # None for a wrapped model (from_model)
        self._setup(net, processor, pick_device(device))

    @classmethod
    def from_model(cls, model: Any, processor: Any, *, device: Any = None) -> TransformersBackend:
        """Wrap a loaded model and processor (tests, notebooks)."""
        self = cls.__new__(cls)
        self.path = None
        self._setup(model, processor, pick_device(device))
        return self

    def _setup(self, model: Any, processor: Any, device: Any) -> None:
        if getattr(model.config, "model_type", None) != "grounding-dino":
            raise ModelError(f"{type(model).__name__} is not a GroundingDINO model")
        self.device = device
        self.model = model.to(device).eval()
        self.processor = processor
        tok = processor.tokenizer
        self._dot = tok.convert_tokens_to_ids(".")
        self._special = set(tok.all_special_ids)

    def infer(self, images: Sequence[np.ndarray], caption: Caption, *, box_threshold: float,
              text_threshold: float) -> list[Detections]:
        import torch

        if not images:
            return []
        imgs = [check_image(im) for im in images]
        text = caption.text
        inputs = self.processor(images=imgs, text=[text] * len(imgs), return_tensors="pt")
        ids = inputs["input_ids"]
        _check_text_len(int(ids.shape[1]), caption)
        inputs = inputs.to(self.device)
        with torch.no_grad():
            outputs = self.model(**inputs)
        sizes = [im.shape[:2] for im in imgs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            results = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=box_threshold, text_threshold=text_threshold,
                target_sizes=sizes,
            )
        probs = torch.sigmoid(outputs.logits).float().cpu()  # as post_process does, for the labels
        out = []
        for b, r in enumerate(results):
            p = probs[b]
            keep = p.max(dim=-1)[0] > box_threshold
            token_phrase = phrase_index_of_tokens(ids[b].tolist(), self._dot, self._special)
            out.append(
                Detections(
                    boxes=r["boxes"].float().cpu().numpy(),
                    scores=r["scores"].float().cpu().numpy(),
                    phrases=list(r["text_labels"]),
                    phrase_scores=phrase_scores(p[keep].numpy(), token_phrase, len(caption)),
                    caption=text,
                    image_size=tuple(sizes[b]),
                )
            )
        return out


__all__ = [
    "MAX_TEXT_LEN",
    "Backend",
    "GroundingDinoBackend",
    "TransformersBackend",
    "build_groundingdino",
    "check_image",
    "load_groundingdino_weights",
    "pick_device",
    "verify_groundingdino",
]
