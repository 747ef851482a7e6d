"""``probe(source)``: what a frame source holds, as a JSON-ready dict (``dl-utils frames info``)."""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

from .sources import ImageSequence, open_frames
from .video import VideoSource


def probe(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Frame count, fps, size, codec, duration, rotation and keyframe count of a source.

    Sizes are as displayed (rotation applied). Reading a video costs one demux pass (no decoding
    except the first frame, which gives the displayed size and rotation).

    >>> probe("bedroom.mp4")["frames"]   # doctest: +SKIP
    200
    """
    with open_frames(source) as src:
        w, h = src.source_size
        info: dict[str, Any] = {
            "kind": src.kind,
            "path": None if src.path is None else str(src.path),
            "frames": len(src),
            "fps": src.fps,
            "width": w,
            "height": h,
            "codec": src.codec,
            "duration_s": None,
            "rotation": 0,
            "keyframes": None,
        }
        if isinstance(src, VideoSource):
            d = src.duration_s
            info["duration_s"] = None if math.isnan(d) else round(d, 6)
            info["rotation"] = src.rotation
            if src.orientation[1]:
                info["mirrored"] = True
            info["keyframes"] = int(len(src.index.key_dec))
        elif isinstance(src, ImageSequence):
            info["keyframes"] = len(src)  # every image stands alone
    return info
