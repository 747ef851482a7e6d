"""What sam3 0.1.4 needs to run where torch has no CUDA, scoped to the calls our engines make.

sam3's inference assumes a GPU:

* its tracker places tensors on CUDA by name (``tensor.cuda()`` on memory features,
  ``storage_device = torch.device("cuda")`` for every tracker state, ``.to(storage_device)``);
  inside :func:`cpu_fallbacks` a torch function mode sends those placements to the CPU (values are
  unchanged: it only picks the device), and ``Tensor.pin_memory``, which raises without a CUDA
  driver, returns the tensor itself;
* its CPU connected-components fallback (``sam3.perflib.connected_components``, used by the video
  model's hole filling and sprinkle removal) imports scikit-image, which sam3 does not declare, and
  ``torch.stack``s an empty list on a frame with no masks to fill (a crash on every frame without new
  detections). :func:`cpu_fallbacks` swaps in OpenCV's 8-connected labelling (the connectivity
  ``skimage.measure.label`` uses for 2-D input) and returns empty results for an empty batch.

The component *sizes* (what sam3 reads to fill holes and drop sprinkles) do not depend on the order
labels are numbered in, so OpenCV's numbering needs no match with scikit-image's. The swap is a patch of
sam3's module attributes for the duration of the block (process-wide, not per thread); on a CUDA
device nothing is patched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from unittest import mock

import numpy as np
import torch
from torch.overrides import TorchFunctionMode


def _labels_and_sizes(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``(H, W)`` mask: component labels (0 background) and each pixel's component size."""
    import cv2

    arr = (values.detach().cpu().numpy() != 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(arr, connectivity=8)
    sizes = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    sizes[0] = 0  # background pixels have no component
    lab = torch.from_numpy(labels.astype(np.int64))
    return lab, torch.from_numpy(sizes[labels])


def _connected_components_cpu(input_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sam3's ``connected_components_cpu`` contract: ``(B, H, W)`` or ``(B, 1, H, W)`` in, labels and
    sizes of the same shape out; an empty batch gives empty results instead of a crash."""
    shape = input_tensor.shape
    x = input_tensor.squeeze(1) if input_tensor.dim() == 4 else input_tensor
    if x.shape[0] == 0:
        z = torch.zeros(shape, dtype=torch.int64, device=input_tensor.device)
        return z, z.clone()
    pairs = [_labels_and_sizes(x[b]) for b in range(x.shape[0])]
    labels = torch.stack([p[0] for p in pairs]).to(input_tensor.device)
    sizes = torch.stack([p[1] for p in pairs]).to(input_tensor.device)
    return labels.view(shape), sizes.view(shape)


def _is_cuda(device: object) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.split(":")[0] == "cuda"


class _CudaOnCpu(TorchFunctionMode):
    """``.cuda()``, ``.to("cuda")``/``.to(torch.device("cuda"))``, ``device="cuda"`` factories and
    ``pin_memory()`` stay on the CPU while active (this thread, this block)."""

    def __torch_function__(self, func: Callable[..., object], types: object,
                           args: tuple[object, ...] = (), kwargs: dict[str, object] | None = None) -> object:
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda or func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.to:
            args = tuple("cpu" if _is_cuda(a) else a for a in args)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


@contextlib.contextmanager
def cpu_fallbacks(device: torch.device | str) -> Iterator[None]:
    """Run sam3 inference on ``device``: on a CPU, CUDA placements stay on the CPU, pinning is a
    no-op and connected components come from OpenCV (see the module doc); on CUDA, nothing changes."""
    if torch.device(device).type == "cuda":
        yield
        return
    import sam3.perflib.connected_components as cc

    with _CudaOnCpu(), mock.patch.object(cc, "connected_components_cpu", _connected_components_cpu):
        yield


__all__ = ["cpu_fallbacks"]
