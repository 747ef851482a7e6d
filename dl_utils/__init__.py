"""dl_utils: pre-annotate images and videos (clicks or text prompts -> SAM2 masks) and hand them to CVAT.

Data flows one way: frame sources (:mod:`dl_utils.video_utils`) -> engines (SAM2, GroundingDINO)
-> the annotation store (:mod:`dl_utils.store`, model in :mod:`dl_utils.annotations`) -> sinks
(:mod:`dl_utils.formats`, CVAT). Import submodules directly; this package imports nothing heavy.
"""

__version__ = "0.1.0"
