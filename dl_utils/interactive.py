"""The seam between a click-driven UI and a segmentation engine (docs/interactive.md).

A person's clicks and boxes on one frame for one object go in, an :class:`Instance` (written to the
store) comes out. The widget (:mod:`dl_utils.ipy_utils`) talks to an engine only through
:class:`InteractiveEngine`, so a new engine (SAM 3, SAMURAI, ...) plugs in by implementing it, with no
change to the UI; and this module, being in the engine layer, never imports UI code.

Two adapters ship: :class:`VideoClickEngine` over :class:`~dl_utils.sam2al.VideoSession` (clicks lock
a keyframe, propagation tracks through the video) and :class:`ImageClickEngine` over
:class:`~dl_utils.samal.ImageSegmenter` (each image on its own, no propagation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .annotations import Clicks, Instance, Instances
from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from .samal import ImageSegmenter
    from .sam2al import VideoSession
    from .store import AnnotationStore
    from .video_utils import FrameSource

#: called with (source frame number, the frame's instances) for every frame a propagation writes
FrameCallback = Callable[[int, Instances], object]


@runtime_checkable
class InteractiveEngine(Protocol):
    """What a click-driven UI needs from an engine.

    ``add_clicks`` gets *all* of an object's clicks on a frame every time (SAM-style engines replace
    the frame's earlier prompt rather than accumulate), so an undo is just another call with fewer
    clicks. The engine writes the result to its store itself: the store, not the UI, is the record.
    """

    #: whether :meth:`PropagatingEngine.propagate` is available (videos: yes; image folders: no)
    can_propagate: bool

    def add_clicks(self, frame: int, object_id: int, clicks: Clicks) -> Instance:
        """Segment ``object_id`` on ``frame`` from ``clicks`` (points and/or box); the frame becomes a keyframe."""
        ...

    def clear_clicks(self, frame: int, object_id: int) -> None:
        """Forget the object's clicks on ``frame`` and the mask they made (undo of its first click there)."""
        ...

    def remove_object(self, object_id: int) -> None:
        """Stop tracking the object; the store's copy is the caller's to delete (an undo may restore it)."""
        ...


@dataclass(frozen=True)
class PendingClick:
    """A click's result before it is stored: show ``instance``, then call ``commit()`` (once).

    Why two steps: a person waits for the mask on screen, not for the store row, so the widget draws
    first and writes right after, on the same thread, before it takes the next click. ``commit``
    raises what the write raises (the caller reports it and shows what the store holds); until it
    runs, the engine's state may already hold the click (the next click refines from it) but the
    store does not.
    """

    instance: Instance
    commit: Callable[[], None]


@runtime_checkable
class TwoStepEngine(InteractiveEngine, Protocol):
    """An engine whose click can be shown before it is written (both shipped adapters are)."""

    def predict_clicks(self, frame: int, object_id: int, clicks: Clicks) -> PendingClick:
        """What :meth:`InteractiveEngine.add_clicks` does, the store write left to ``commit()``."""
        ...


@runtime_checkable
class PropagatingEngine(InteractiveEngine, Protocol):
    """An engine that also carries keyframes through a video, in a background thread."""

    def keyframes(self) -> dict[int, list[int]]:
        """Object id -> its keyframes (source frame numbers): where propagation starts from."""
        ...

    def propagate(self, direction: str, callback: FrameCallback) -> dict[str, Any]:
        """Fill the frames missing between and around keyframes; returns the run's summary (``status``)."""
        ...

    def cancel(self) -> None:
        """Ask a running :meth:`propagate` (on another thread) to stop after its current frame."""
        ...


def _points(clicks: Clicks) -> list[list[float]] | None:
    return [list(p) for p in clicks.points] or None


def _box(clicks: Clicks) -> list[float] | None:
    return None if clicks.box is None else [float(v) for v in clicks.box]


class VideoClickEngine:
    """Clicks through a SAM2 :class:`~dl_utils.sam2al.VideoSession` (a video or frame sequence)."""

    can_propagate = True

    def __init__(self, session: VideoSession):
        self.session = session

    def add_clicks(self, frame: int, object_id: int, clicks: Clicks) -> Instance:
        pts, box = _points(clicks), _box(clicks)
        if pts is None:
            if box is None:
                raise InputError(f"object {object_id}, frame {frame}: no clicks and no box to segment from")
            return self.session.add_box(frame, object_id, box)
        return self.session.add_points(frame, object_id, pts, box=box)

    def predict_clicks(self, frame: int, object_id: int, clicks: Clicks) -> PendingClick:
        """``add_points``/``add_box`` split at the store write: the same prompt tensors, the same
        refinement from the frame's previous mask, the same :class:`Instance`; ``commit`` locks the
        frame, writes the row and drops the results the new keyframe made stale, as ``add_points``
        does (``VideoSession._after_prompt``). A failed write leaves the frame unlocked again."""
        s, oid = self.session, int(object_id)
        pts, box = _points(clicks), _box(clicks)
        if pts is None and box is None:
            raise InputError(f"object {oid}, frame {frame}: no clicks and no box to segment from")
        s._ensure_object(oid, None)  # an unknown id fails here, before SAM2 runs (as add_points)
        inst = s._add_prompt(frame, oid, points=pts, box=box, label=None, write=False)
        idx = s.source.index_of(frame)

        def commit() -> None:
            was_locked = idx in s._locked.get(oid, set())
            try:
                s._after_prompt(idx, oid, inst)
            except BaseException:
                if not was_locked:
                    s._locked.get(oid, set()).discard(idx)
                raise

        return PendingClick(inst, commit)

    def clear_clicks(self, frame: int, object_id: int) -> None:
        s = self.session
        if object_id in s.object_ids and frame in s.locked_frames(object_id):
            s.clear_prompts(frame, object_id)
        else:  # never reached SAM2's state (restored from the store only): the stored mask goes
            s.store.delete_instances(object_id=object_id, frames=[frame])

    def remove_object(self, object_id: int) -> None:
        if object_id in self.session.object_ids:
            self.session.remove_object(object_id, keep_results=True)

    def keyframes(self) -> dict[int, list[int]]:
        locked = self.session.locked_frames()
        assert isinstance(locked, dict)  # without an object id: per object
        return locked

    def propagate(self, direction: str, callback: FrameCallback) -> dict[str, Any]:
        return self.session.propagate(direction, callback=callback, progress=False)

    def cancel(self) -> None:
        self.session.cancel()


class ImageClickEngine:
    """Clicks through a SAM2 :class:`~dl_utils.samal.ImageSegmenter` (image folders: every image alone)."""

    can_propagate = False

    def __init__(self, segmenter: ImageSegmenter, source: FrameSource, store: AnnotationStore):
        self.segmenter, self.source, self.store = segmenter, source, store

    def add_clicks(self, frame: int, object_id: int, clicks: Clicks) -> Instance:
        pending = self.predict_clicks(frame, object_id, clicks)
        pending.commit()
        return pending.instance

    def predict_clicks(self, frame: int, object_id: int, clicks: Clicks) -> PendingClick:
        # the key names the image, so revisiting it reuses the cached embedding
        self.segmenter.set_image(self.source.get_frame(frame), key=(str(self.source.path), frame), frame=frame)
        inst = self.segmenter.predict(_points(clicks), _box(clicks), object_id=object_id, refine=False)
        inst = inst.replace(keyframe=True)
        return PendingClick(inst, lambda: self.store.write_frame(frame, [inst]))

    def clear_clicks(self, frame: int, object_id: int) -> None:
        self.store.delete_instances(object_id=object_id, frames=[frame])

    def remove_object(self, object_id: int) -> None:
        """Nothing to forget: an image segmenter keeps no per-object state across images."""


__all__ = ["FrameCallback", "ImageClickEngine", "InteractiveEngine", "PendingClick", "PropagatingEngine",
           "TwoStepEngine", "VideoClickEngine"]
