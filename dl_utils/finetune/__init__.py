"""Fine-tuning SAM2 on the project's own corrected masks (see docs/finetune.md).

* :mod:`.data` — which masks teach (:class:`~.data.MaskDataset` from stores or a folder pair);
* :mod:`dl_utils.splits` — the train/val split by video or image;
* :mod:`.clicks` — clicks sampled in each mask the way people click;
* :mod:`.forward` — SAM2's image encoder and prompt path as upstream's predictor runs them, from
  cached features, differentiable;
* :mod:`.train` — the training loop (frozen image encoder, resumable checkpoints).

Only :mod:`.data`, :mod:`.clicks` need no torch; the package imports nothing heavy on import.
"""

from __future__ import annotations

from .clicks import ClickSampling, fixed_clicks, sample_clicks
from .data import FrameRef, MaskDataset, MaskSample, from_folder_pair, from_stores
from .train import FinetuneResult, TrainOptions, finetune

__all__ = [
    "ClickSampling",
    "FinetuneResult",
    "FrameRef",
    "MaskDataset",
    "MaskSample",
    "TrainOptions",
    "finetune",
    "fixed_clicks",
    "from_folder_pair",
    "from_stores",
    "sample_clicks",
]
