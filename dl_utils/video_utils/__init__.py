"""Frame sources (videos, image folders, globs, patterns), video writing and lossless splitting.

``open_frames`` is the one entry point every engine uses to read pixels; it numbers frames the way
CVAT does so annotations written against it line up with CVAT tasks, or (opt-in) by a shot's own
numbers (``frame_numbers="names"``, ``first_frame=N``); ``open_media`` reopens a store's media with
the numbering it recorded. See docs/video_utils.md.
"""

from .probe import probe
from .sources import IMAGE_EXTENSIONS, FrameSource, ImageSequence, number_in_name, open_frames, open_media, read_image
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
    "number_in_name",
    "open_frames",
    "open_media",
    "probe",
    "read_image",
    "split_video",
    "write_video",
]
