"""Which split group each frame of a store belongs to (the rule is :func:`dl_utils.splits.group_key`).

A split file names groups, not frames, so every tool that reads one (``dl-utils dataset split`` and
``stats``, the YOLO/COCO exports, ``finetune --split``) must derive the same group for the same frame,
from whatever folder it runs in. Groups are therefore named by :func:`dl_utils.splits.media_group`
(the recorded media path; its absolute path when the media lies beside the store), while the pixels
are read from where :func:`media_path` finds the media (as recorded, else beside the store).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..splits import BY, group_key, media_group

if TYPE_CHECKING:
    from ..annotations import MediaInfo
    from ..store import StoreReader


def media_key(store: "StoreReader") -> str:
    """The media path a store's groups are named by (:func:`dl_utils.splits.media_group`): the same
    from every working folder, so a split made in one folder selects the same frames in another."""
    return media_group(_media(store).path, store.path)


def media_path(store: "StoreReader") -> str:
    """Where the store's media is read from: as recorded when it exists there, else beside the store
    (where ``finetune`` finds it too), else as recorded (the caller reports it missing). A store
    without a media path gives its own path (it has no pictures to read)."""
    media = _media(store)
    if not media.path:
        return str(store.path)
    given = Path(media.path)
    for p in (given, store.path.parent / given):
        if p.exists():
            return str(p)
    return media.path


def frame_groups(store: "StoreReader", by: str = "group") -> dict[int, str]:
    """Frame number -> split group for every frame of the store's media.

    ``by="group"``: a video's frames share one group (its path); each image of an image set is its
    own group. ``by="item"`` is the same for image sets and refused for a video: each frame of a
    video on its own would put near-identical frames on both sides of a split.
    """
    if by not in BY:
        raise InputError(f"{store.path}: by={by!r}; use 'group' (whole videos) or 'item' (each image)")
    media = _media(store)
    path = media_key(store)
    found = media_path(store)
    if media.frame_names is None:
        if by == "item":
            raise InputError(
                f"{store.path}: its media {path} is a video; by='item' would put frames of one video on"
                " both sides of a split (they look alike, so the validation score would leak): use"
                " by='group' (--by group)"
            )
        key = group_key(path)
        return {f: key for f in media.frames}
    # an image set whose recorded path is one file (not a folder) has nothing to join a name to
    single = bool(media.path) and Path(found).is_file()
    return {
        f: group_key(path, None if single else name) for f, name in zip(media.frames, media.frame_names)
    }


def _media(store: "StoreReader") -> "MediaInfo":
    media = store.media
    if media is None:
        raise InputError(
            f"{store.path}: the store has no media record, so its frames have no split group; it was"
            " not written by dl-utils (annotate, import or pull into it first)"
        )
    return media


__all__ = ["frame_groups", "media_key", "media_path"]
