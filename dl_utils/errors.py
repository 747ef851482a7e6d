"""One exception hierarchy for everything dl_utils raises on purpose.

Callers (CLI, notebooks, widget) catch :class:`DlUtilsError` and show its message; every message
names the file, frame, row or field at fault and says what to do, so a user never has to read a
library traceback to fix their input.
"""

from __future__ import annotations

import os
from pathlib import Path


class DlUtilsError(Exception):
    """Base class: an expected failure with a message meant for the user."""


class InputError(DlUtilsError, ValueError):
    """The user's input (a file, a value, an option) cannot be used as given."""


class MediaError(InputError):
    """A video, image, folder or pattern cannot be opened or decoded."""


class FrameIndexError(MediaError, IndexError):
    """A frame index or frame number lies outside the source."""


class MaskError(InputError):
    """A mask, RLE or polygon is malformed or does not fit the frame it belongs to."""


class ClassTableError(InputError):
    """A class table (.csv / .xlsx) is malformed; the message names the row."""


class FormatError(InputError):
    """An annotation file (CVAT XML, COCO JSON, PNG masks) is malformed or unsupported."""


class OutputError(InputError):
    """An output file or folder cannot be written: disk full, read-only, permissions, a folder or a
    device where a file is expected. The message names the path and what to do."""


class StoreError(DlUtilsError):
    """The annotation store cannot be opened or written (version, lock, corruption)."""


class StoreVersionError(StoreError):
    """The store was written by a newer dl_utils schema than this one understands."""


class ModelError(DlUtilsError):
    """A model or its weights cannot be found, downloaded or loaded."""


class CvatError(DlUtilsError):
    """The CVAT server refused a request or does not match the local data."""


class TrainingError(DlUtilsError):
    """Fine-tuning cannot go on: the loss diverged, a training checkpoint is damaged or belongs to
    another run, cached features do not fit their frame. The message says how to resume or restart."""


def mount_point(path: str | os.PathLike[str]) -> Path:
    """The mount point holding ``path``: what a user frees space on when a write finds the disk
    full (store commits, exports, video parts all name it the same way)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


__all__ = [
    "mount_point",
    "DlUtilsError",
    "InputError",
    "MediaError",
    "FrameIndexError",
    "MaskError",
    "ClassTableError",
    "FormatError",
    "OutputError",
    "StoreError",
    "StoreVersionError",
    "ModelError",
    "CvatError",
    "TrainingError",
]
