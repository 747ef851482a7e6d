"""Mask and geometry tools: RLE codecs (CVAT, COCO), polygons, boxes, IoU, overlays, contact sheets."""

from .colors import color_for_index, palette
from .geometry import (
    box_iou,
    box_to_mask,
    mask_area,
    mask_iou,
    mask_to_box,
    mask_to_polygons,
    masks_iou,
    polygons_to_mask,
    resize_mask,
)
from .overlay import contact_sheet, draw_overlay, load_image, save_image
from .rle import (
    coco_rle_area,
    coco_rle_box,
    decode_coco_rle,
    decode_cvat_rle,
    decode_cvat_rle_array,
    encode_coco_rle,
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
    "encode_coco_rle",
    "decode_coco_rle",
    "coco_rle_area",
    "coco_rle_box",
    "mask_to_polygons",
    "polygons_to_mask",
    "box_to_mask",
    "mask_to_box",
    "mask_area",
    "mask_iou",
    "masks_iou",
    "box_iou",
    "resize_mask",
    "draw_overlay",
    "contact_sheet",
    "save_image",
    "load_image",
]
