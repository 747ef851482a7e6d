"""Strict loading of SAM 3 weights in the released ``sam3.pt`` layout.

Upstream's image builder loads with ``strict=False`` and *prints* the missing keys, so a wrong file
(a SAM2 checkpoint, a truncated download, another model size) gives a model that runs and
segments nonsense. Here every key of the model must come from the file and every key the file
offers for the model must fit, or :class:`~dl_utils.errors.ModelError` says in one line what the
file looks like.

The layout, read from ``sam3.model_builder``: one dict (possibly wrapped as ``{"model": dict}``)
holding the *video* model's state, i.e. ``detector.*`` (the image model) and ``tracker.*`` (the
SAM 2-style tracker). ``build_sam3_video_model`` loads it whole with ``strict=True`` by default,
so the release carries no other key; no extra (training-time) key is accepted. The image model
takes ``detector.*`` with the prefix removed and, with instance interactivity, ``tracker.*`` as
``inst_interactive_predictor.model.*``; without it the ``tracker.*`` keys and the detector's SAM 2
neck (``sam2_convs``) are expected and unused, as upstream's non-strict load leaves them.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from ..errors import ModelError

Kind = Literal["image", "video"]
KINDS: tuple[Kind, ...] = ("image", "video")

DETECTOR = "detector."
TRACKER = "tracker."
INST = "inst_interactive_predictor.model."
# the SAM 2-style neck the release's detector carries for the tracker (add_sam2_neck=True in
# build_sam3_video_model); an image model built without instance interactivity has no use for it
SAM2_NECK = "backbone.vision_backbone.sam2_convs."

# key fragments of checkpoints that are not SAM 3, for the one-line diagnosis
_LOOKS_LIKE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("a SAM2 checkpoint", ("image_encoder.trunk.", "memory_attention.", "sam_mask_decoder.")),
    ("a GroundingDINO checkpoint", ("bert.", "transformer.enc_out_bbox_embed", "feat_map.")),
    ("a SAM (v1) checkpoint", ("image_encoder.blocks.", "prompt_encoder.", "mask_decoder.")),
)


def _read(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise ModelError(f"{path}: SAM 3 checkpoint not found; give the path of sam3.pt")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"{path}: not a readable torch checkpoint (truncated download or another format: {first}); "
            "download sam3.pt again"
        ) from None
    if isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        raw = raw["model"]
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()
    ):
        raise ModelError(f"{path}: not a SAM 3 checkpoint (expected a dict of tensors, got {type(raw).__name__})")
    return dict(raw)


def _describe(keys: set[str]) -> str | None:
    stripped = {k.removeprefix("module.") for k in keys}
    for what, fragments in _LOOKS_LIKE:
        if any(k.startswith(f) or f"{f}" in k for k in stripped for f in fragments) and not any(
            k.startswith((DETECTOR, TRACKER)) for k in stripped
        ):
            return what
    if stripped and not any(k.startswith((DETECTOR, TRACKER)) for k in stripped) and any(
        k.startswith(("backbone.vision_backbone.", "transformer.decoder.")) for k in stripped
    ):
        return "a bare SAM 3 image-model state_dict (no detector./tracker. prefixes, not the sam3.pt layout)"
    return None


def _examples(keys: set[str], n: int = 3) -> str:
    shown = sorted(keys)[:n]
    more = ", ..." if len(keys) > n else ""
    return ", ".join(shown) + more


def map_to_model(ckpt: Mapping[str, torch.Tensor], model_keys: set[str], kind: Kind) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The file's tensors under the model's key names, and the file keys that map to nothing.

    The ``tracker.*`` keys and the detector's SAM 2 neck (``detector.backbone.vision_backbone.
    sam2_convs.*``), which an image model without instance interactivity has no use for, are
    neither mapped nor unexpected: the release always carries them."""
    if kind == "video":
        return dict(ckpt), set()
    inst = any(k.startswith(INST) for k in model_keys)
    mapped: dict[str, torch.Tensor] = {}
    unused: set[str] = set()
    for k, v in ckpt.items():
        if k.startswith(DETECTOR):
            if inst or not k.startswith(DETECTOR + SAM2_NECK):
                mapped[k.removeprefix(DETECTOR)] = v
        elif k.startswith(TRACKER):
            if inst:
                mapped[INST + k.removeprefix(TRACKER)] = v
        else:
            unused.add(k)
    return mapped, unused


def load_sam3_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], *, kind: Kind = "image"
) -> None:
    """Load ``path`` (the ``sam3.pt`` layout) into ``model`` (``Sam3Image`` for ``kind="image"``,
    the video model for ``"video"``), all keys and shapes or :class:`ModelError`."""
    if kind not in KINDS:
        raise ModelError(f"load_sam3_checkpoint: kind must be one of {KINDS}, not {kind!r}")
    p = os.fspath(path)
    ckpt = _read(p)
    own = model.state_dict()
    mapped, unused = map_to_model(ckpt, set(own), kind)
    missing = set(own) - set(mapped)
    unexpected = (set(mapped) - set(own)) | unused
    if missing or unexpected:
        what = _describe(set(ckpt))
        if what is not None:
            raise ModelError(f"{p}: this is {what}, not SAM 3 weights (sam3.pt)")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {_examples(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {_examples(unexpected)}")
        raise ModelError(
            f"{p}: does not fit the SAM 3 {kind} model: {'; '.join(parts)} "
            "(a truncated or different checkpoint; the release's sam3.pt has detector.* and tracker.* keys)"
        )
    wrong = [k for k in sorted(own) if tuple(own[k].shape) != tuple(mapped[k].shape)]
    if wrong:
        k = wrong[0]
        raise ModelError(
            f"{p}: a SAM 3 checkpoint of another size: {len(wrong)} tensors differ in shape, e.g. "
            f"{k} is {tuple(mapped[k].shape)} in the file and {tuple(own[k].shape)} in the model "
            "(build the model with the spec the file was trained at)"
        )
    model.load_state_dict(mapped, strict=True)


__all__ = ["KINDS", "Kind", "load_sam3_checkpoint", "map_to_model"]
