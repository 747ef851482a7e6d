"""Mask and geometry tools: RLE codecs (CVAT, COCO), polygons, boxes, IoU, overlays, contact sheets."""

from .colors import color_for_index, palette
from .rle import (
    decode_cvat_rle,
    decode_cvat_rle_array,
    encode_cvat_rle,
    encode_cvat_rle_array,
)

__all__ = [
    "color_for_index",
    "palette",
    "encode_cvat_rle",
    "decode_cvat_rle",
    "encode_cvat_rle_array",
    "decode_cvat_rle_array",
]
