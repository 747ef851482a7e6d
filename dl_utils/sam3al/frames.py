"""Frames on demand for SAM 3's video model: the tensor sam3's own loader gives for a frame, decoded
when the model asks for it.

sam3's ``init_state`` calls ``io_utils.load_resource_as_video_frames``, which decodes the whole video
into one tensor up front (a 1-hour 30 fps video at 1008 px is ~700 GB in float16). The model only
ever indexes that tensor one frame at a time (``img_batch[i]``, ``len(img_batch)``), as it does for
sam3's own ``AsyncImageFrameLoader``, so an indexable container that produces frame ``i`` on demand
is a faithful stand-in.

sam3 has two preprocessing paths and they do not agree, so the flavour is explicit:

- ``"image_folder"`` (default): ``load_video_frames_from_image_folder`` / ``_load_img_as_tensor``:
  PIL ``resize((S, S), BILINEAR)`` (torchvision's ``TF.resize`` on a PIL image), ``/ 255`` in float32,
  cast to float16, then ``(x - 0.5) / 0.5`` in float16.
- ``"cv2_video"``: ``load_video_frames_from_video_file_using_cv2`` (what an ``.mp4`` path gets):
  ``cv2.resize(..., INTER_CUBIC)`` of the RGB frame, float32 **without** ``/ 255``, then
  ``(x - 0.5) / 0.5`` in float32, so inputs lie in [-1, 509]. That is upstream bug
  facebookresearch/sam3#493 (open, fixes proposed in #522/#603); it is reproduced here only so a
  result can be compared with upstream's mp4 path bit for bit.

Decoding, the LRU of resized frames, forward prefetch and chunked backward reads are
:class:`dl_utils.sam2al.frames.LazyFrames`'s; only the resize and the normalisation differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FrameIndexError, InputError
from ..sam2al.frames import LazyFrames

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..video_utils import FrameSource

PREPROCESS = ("image_folder", "cv2_video")
# sam3's defaults (Sam3VideoInference.__init__ and io_utils)
SAM3_MEAN = (0.5, 0.5, 0.5)
SAM3_STD = (0.5, 0.5, 0.5)


class Sam3LazyFrames(LazyFrames):
    """``frames[i]``: kept frame ``i`` of ``source`` exactly as sam3's loader of flavour
    ``preprocess`` would hold it (``(3, S, S)``; float16 for ``"image_folder"``, float32 for
    ``"cv2_video"``), on ``device``. Memory: ``cache_frames`` resized ``uint8`` frames, whatever the
    video's length."""

    def __init__(self, source: FrameSource, image_size: int, device: Any = "cpu", *,
                 preprocess: str = "image_folder", mean: tuple[float, float, float] = SAM3_MEAN,
                 std: tuple[float, float, float] = SAM3_STD, cache_frames: int = 16, chunk: int = 16,
                 prefetch: bool = True):
        import torch

        if preprocess not in PREPROCESS:
            raise InputError(f"preprocess={preprocess!r}: use one of {', '.join(PREPROCESS)}")
        super().__init__(source, image_size, device, cache_frames=cache_frames, chunk=chunk,
                         prefetch=prefetch)
        self.preprocess = preprocess
        # sam3 builds its mean/std as float16 tensors in both paths
        self._mean = torch.tensor(mean, dtype=torch.float16)[:, None, None]
        self._std = torch.tensor(std, dtype=torch.float16)[:, None, None]

    def _decode(self, i: int) -> np.ndarray:
        with self._src_lock:
            rgb = self.source[i]
        s = self.image_size
        if self.preprocess == "cv2_video":
            import cv2

            return np.ascontiguousarray(cv2.resize(rgb, (s, s), interpolation=cv2.INTER_CUBIC))
        from PIL import Image

        # TF.resize(pil, (S, S)) is pil.resize((S, S), BILINEAR) (torchvision's PIL backend)
        return np.array(Image.fromarray(rgb).convert("RGB").resize((s, s), Image.Resampling.BILINEAR))

    def __getitem__(self, i: int) -> torch.Tensor:
        import torch

        n = len(self)
        i = int(i)
        if not 0 <= i < n:
            raise FrameIndexError(f"{self.source.name}: frame index {i} is outside 0..{n - 1}")
        arr = self.resized(i)
        if self.preprocess == "cv2_video":
            img = torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1)
        else:
            # TF.to_tensor: uint8 HWC -> CHW float32 / 255, then sam3 stores it as float16
            img = torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(torch.float32).div(255).half()
        img = img.contiguous()
        img -= self._mean
        img /= self._std
        return img.to(self.device)
