"""Frame sources (videos, image folders, globs, patterns), video writing and lossless splitting.

``open_frames`` is the one entry point every engine uses to read pixels; it numbers frames the way
CVAT does so annotations written against it line up with CVAT tasks. See docs/video_utils.md.
"""

from .probe import probe
from .sources import IMAGE_EXTENSIONS, FrameSource, ImageSequence, open_frames, read_image
from .split import split_video
from .video import VideoIndex, VideoSource, build_index
from .writer import write_video

__all__ = [
    "IMAGE_EXTENSIONS",
    "FrameSource",
    "ImageSequence",
    "VideoSource",
    "VideoIndex",
    "build_index",
    "open_frames",
    "probe",
    "read_image",
    "split_video",
    "write_video",
]
