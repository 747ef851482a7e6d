"""SAM 3 (text/exemplar concept prompts -> masks) as a third engine beside SAM2 and GroundingDINO.

Meta's ``sam3`` wheel builds only the released 1008-px model, fetches its weights from the hub,
needs CUDA in a few places and prints instead of failing on a bad checkpoint. This package keeps
sam3's networks and inference code as they are (so results equal upstream's) and adds what dl_utils
needs around them: a size-parameterized build (:mod:`.build`: tests run a tiny random-weight model on
CPU, users build the released one), a strict checkpoint loader with one-line errors
(:mod:`.checkpoint`), what sam3 needs to run without CUDA (:mod:`.cpu`), an image engine that returns
dl_utils detections labelled from the job's class table (:mod:`.image`), and a video session that
writes every phrase's instances into the store frame by frame (:mod:`.video`, frames decoded on demand
by :mod:`.frames`; one vision-trunk pass per frame for all phrases and sam3's own progress bars off,
:mod:`.backbone`). sam3 is imported only when this package is.
"""

from .backbone import quiet_sam3_progress, shared_image_backbone
from .build import OFFICIAL, Sam3Spec, build_image_model, build_video_model
from .checkpoint import load_sam3_checkpoint
from .cpu import cpu_fallbacks
from .image import Sam3ImageEngine, exemplar_box
from .prompts import Exemplar

__all__ = [
    "OFFICIAL",
    "Exemplar",
    "Sam3ImageEngine",
    "Sam3Spec",
    "build_image_model",
    "build_video_model",
    "cpu_fallbacks",
    "exemplar_box",
    "load_sam3_checkpoint",
    "quiet_sam3_progress",
    "shared_image_backbone",
]
