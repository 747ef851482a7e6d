"""The annotator's state and edits, without widgets: what a click, an undo or a delete does.

:class:`AnnotatorController` owns the store, the open source, the engine (an
:class:`~dl_utils.interactive.InteractiveEngine`), the shown frame, the selected object, the
:class:`~.history.ClickBook` and the undo :class:`~.history.History`; background jobs are its
:class:`~.jobs.JobRunner`. It imports no ipywidgets/ipycanvas, so it runs headless (tests, scripts);
the view learns about changes through the :class:`Listener` it is given and turns events into calls
here. Every public entry point of :class:`~.annotator.Annotator` ends in one of these methods,
wrapped by :meth:`AnnotatorController.guard` so no exception escapes a widget callback.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar, cast

import numpy as np

from ..annotations import Clicks, Instance, Instances, ObjectInfo
from ..cv_utils import color_for_index, palette
from ..errors import DlUtilsError, InputError, MediaError
from ..interactive import ImageClickEngine, InteractiveEngine, TwoStepEngine, VideoClickEngine
from .history import CLICKS, OBJECT, SAM3_REFINE, Action, ClickBook, History, Sam3Refine
from .jobs import JobRunner

if TYPE_CHECKING:  # pragma: no cover
    from ..classes import ClassTable
    from ..cvat.connection import CvatConnection
    from ..dinoal.detector import Detector
    from ..drivers.options import DetectorOptions
    from ..sam2al import VideoSession
    from ..sam3al.image import Exemplar
    from ..sam3al.video import Sam3ClickEngine
    from ..store import AnnotationStore
    from ..video_utils import FrameSource

log = logging.getLogger("dl_utils.ipy_utils")

#: the Detect button's tooltip per text backend: which engine a press runs
DETECT_TIPS = {"groundingdino": "GroundingDINO boxes -> SAM2 masks", "sam3": "SAM 3: find, segment, track",
               "onnx": "your ONNX detector's boxes -> SAM2 masks (empty text: all its classes)"}

P = ParamSpec("P")
T = TypeVar("T")


class Listener(Protocol):
    """What the view is told when the controller's state changes (the controller never draws)."""

    def say(self, level: str, text: str) -> None: ...
    def media_opened(self) -> None: ...  # new source / store: canvas size, slider, labels
    def frame_shown(self) -> None: ...  # a new frame image is current
    def objects_changed(self) -> None: ...  # the object list, the selection or an object's fields
    def masks_changed(self) -> None: ...  # masks or clicks of the shown frame
    # a click's new mask of the shown frame, not stored yet: draw it now (the stages it took go in timings)
    def mask_predicted(self, object_id: int, instance: Instance, timings: dict[str, float]) -> None: ...
    def chosen_label(self) -> str | None: ...  # the label list's value (a new object takes it)
    def job_started(self, total: int) -> None: ...
    def job_progress(self, done: int) -> None: ...
    def job_ended(self, outcome: str) -> None: ...  # "success" | "warning" | "danger"
    def push_summary(self, title: str, text: str, confirm: bool) -> None: ...


class NullListener:
    """No view at all: a controller used on its own (scripts, tests of the controller)."""

    def say(self, level: str, text: str) -> None: ...
    def media_opened(self) -> None: ...
    def frame_shown(self) -> None: ...
    def objects_changed(self) -> None: ...
    def masks_changed(self) -> None: ...
    def mask_predicted(self, object_id: int, instance: Instance, timings: dict[str, float]) -> None: ...
    def chosen_label(self) -> str | None: return None
    def job_started(self, total: int) -> None: ...
    def job_progress(self, done: int) -> None: ...
    def job_ended(self, outcome: str) -> None: ...
    def push_summary(self, title: str, text: str, confirm: bool) -> None: ...


@dataclass(frozen=True)
class ObjectState:
    """An object's editable fields: the before/after of a rename, relabel or recolour."""

    label: str
    color: str | None
    attributes: dict[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, o: ObjectInfo) -> ObjectState:
        return cls(o.label, o.color, dict(o.attributes or {}))


@dataclass(frozen=True)
class DeletedObject:
    """What a delete removed, so its undo restores the object, its clicks and its exact masks."""

    object: ObjectState
    instances: dict[int, Instance]
    clicks: dict[int, Clicks]


#: the stages of :attr:`AnnotatorController.last_click_timings`, in the order a click runs them
#: (seconds each; a stage that did not run, e.g. drawing for a frame not shown, is 0.0):
#: ``predict`` SAM2 (prompt tensors, network, mask to frame size), ``overlay`` the palette overlay of
#: the shown frame, ``encode`` its PNG, ``send`` handing it to the canvas comm, ``markers`` the click
#: rings (layer 2), ``shown`` from the click's start to the overlay handed to the comm (what the
#: person waits for, less the browser), ``store_write`` the store row (RLE + SQLite commit, stale
#: results dropped), ``total`` the whole click
CLICK_STAGES = ("predict", "overlay", "encode", "send", "markers", "shown", "store_write", "total")


def object_title(o: ObjectInfo) -> str:
    name = (o.attributes or {}).get("name")
    return f"{o.id}: {name} [{o.label}]" if name else f"{o.id}: {o.label}"


class AnnotatorController:
    """State and edits of one annotation session (see the module doc)."""

    def __init__(self, *, detector: Detector | None = None, cvat: tuple[CvatConnection, int] | None = None,
                 classes: ClassTable | None = None, default_label: str | None = None,
                 listener: Listener | None = None, sam3_video_model: object = None,
                 detector_options: DetectorOptions | None = None):
        self.lock = threading.RLock()  # widget callbacks may arrive on another thread
        self.listener: Listener = listener or NullListener()
        self.session: VideoSession | None = None
        self.engine: InteractiveEngine | None = None
        self.source: FrameSource | None = None
        self.store: AnnotationStore | None = None
        self.detector, self.cvat, self.classes = detector, cvat, classes
        #: a built SAM 3 video model: Detect on a video then runs SAM 3's session over the whole source
        self.sam3_video_model = sam3_video_model
        #: the text step's options for run_into_store (SAM 3: score threshold, model label)
        self.detector_options = detector_options
        self.default_label = default_label
        #: SAM 3 box exemplars ("more like this one") per frame, until Detect consumes them
        self.exemplars: dict[int, list[Exemplar]] = {}
        #: a drag draws an exemplar instead of a SAM2 box prompt
        self.exemplar_mode = False
        #: after a correction, re-propagate (both ways) the frames it made stale, in the background
        self.auto_propagate = False
        #: SAM 3 refiners by caption (clicks on SAM 3's objects): opened at the first click, dropped
        #: by Detect and open (their sam3 state is that of the text run they replayed)
        self.sam3_engines: dict[str, Sam3ClickEngine] = {}
        self.history = History()
        self.clicks = ClickBook()
        self.selected: int | None = None
        self.frame: int | None = None
        self.image: np.ndarray | None = None  # the shown frame, RGB
        self.messages: list[tuple[str, str]] = []  # (level, text), newest last
        self.last_click_seconds: float | None = None
        #: the last click's time per stage (:data:`CLICK_STAGES`), seconds
        self.last_click_timings: dict[str, float] = {}
        self.jobs = JobRunner(self)

    # ------------------------------------------------------------------ messages
    def say(self, text: str, level: str = "info") -> None:
        self.messages.append((level, text))
        del self.messages[:-50]
        (log.warning if level == "error" else log.info)(text)
        self.listener.say(level, text)

    def guard(self, what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """Run a handler; any failure becomes a visible message (and a log record), never a silent one."""
        with self.lock:
            try:
                return fn(*args, **kwargs)
            except DlUtilsError as e:
                self.say(f"{what}: {e}", "error")
            except Exception as e:  # a bug or a library error: show it, keep the widget usable
                log.exception("%s failed", what)
                self.say(f"{what} failed: {type(e).__name__}: {e} (details in the log)", "error")
            return None

    # ------------------------------------------------------------------ opening
    def open(self, src: object, store: AnnotationStore | str | Path | None) -> bool:
        from ..video_utils import FrameSource, open_frames

        if self.jobs.busy:
            raise InputError(f"{self.jobs.job} is running; cancel it (Esc) before opening something else")
        if hasattr(src, "add_points") and hasattr(src, "propagate"):  # a VideoSession (sam2 stays unimported)
            session = cast("VideoSession", src)
            self.source, self.store, self.session = session.source, session.store, session
        else:
            source = src if isinstance(src, FrameSource) else open_frames(src)  # type: ignore[arg-type]
            if len(source) == 0:
                raise MediaError(f"{src} has no frames; check the file")
            self.store, self.source, self.session = self._store_for(source, store), source, None
        self.engine = VideoClickEngine(self.session) if self.session is not None else None
        self.drop_sam3_engines()
        self.history.clear()
        self.clicks = ClickBook()
        self.exemplars = {}
        self._load_clicks()
        media = self.source.media_info()
        objs = self.store.objects()
        self.selected = objs[0].id if objs else None
        self.frame = None
        self.listener.media_opened()
        self.show_frame(self.source.frame_numbers[0])
        self.listener.objects_changed()
        where = f" into {self.store.path}" if store is not None or self.session is not None else (
            f"; results go to a temporary store {self.store.path}: pass store= to keep them")
        self.say(f"opened {media.name} ({media.width}x{media.height}, {len(self.source)} frames){where}"
                 + ("" if self.engine is not None else "; no SAM2 model yet: load_model(...)"),
                 "info" if self.engine is not None else "warn")
        return True

    @staticmethod
    def _store_for(source: FrameSource, store: AnnotationStore | str | Path | None) -> AnnotationStore:
        """The given store checked against the source, a path opened or created, else a temporary one."""
        from ..store import AnnotationStore

        media = source.media_info()
        if store is not None:
            return AnnotationStore.for_media(store, media)
        path = Path(tempfile.mkdtemp(prefix="dl_utils_annotator_")) / "annotations.sqlite"
        return AnnotationStore.create(path, media)

    def _load_clicks(self) -> None:
        """Clicks of keyframes already in the store (a resumed session continues from them)."""
        store = self.need_store()
        for obj in store.objects():
            for f, inst in store.read_object(obj.id, decode=False).items():
                c = inst.clicks
                if inst.keyframe and c is not None and (c.points or c.box is not None):
                    self.clicks.set(obj.id, f, Clicks(points=c.points, box=c.box))

    def load_model(self, model: str | None, sam_model: object, image_size: int | None, device: object,
                   checkpoint: str | Path | None = None, *, tracker: str = "sam2",
                   samurai: object = None, force: bool = False, precision: str | None = None,
                   compile: bool = False) -> bool:
        """Build the SAM2 engine for the open media. On a video the session propagates in ``tracker``
        mode (``"sam2"`` or ``"samurai"`` with ``samurai``: a :class:`~dl_utils.sam2al.SamuraiConfig`
        or a dict of its fields; ``force``: continue a store the other tracker made), the
        ``--tracker``/``--samurai``/``--force`` of the commands, checked by the same
        :class:`~dl_utils.drivers.options.SamOptions`. ``precision`` (``"fp32"``, ``"bf16"``,
        ``"fp16"``; None: bf16 on CUDA, fp32 elsewhere) and ``compile`` are ``--precision`` and
        ``--compile``, for the video session and the image segmenter alike; a given ``sam_model``
        with ``compile`` must be built compiled (the engines refuse it otherwise)."""
        from ..drivers.options import SamOptions, sam2_summary
        from ..models import DEFAULT_MODEL, resolve_finetuned

        if self.source is None or self.store is None:
            raise InputError("open a video or an image folder first (annotator.open(path))")
        # the commands' checks (tracker name, SAMURAI parameters) before any model loads
        modes = SamOptions(tracker=tracker, samurai=cast("dict[str, object] | None", samurai), force=force,
                           precision=precision, compile=compile)
        if sam_model is None:  # a fine-tuned checkpoint names its base model and size (one reader)
            model, image_size = resolve_finetuned(model, checkpoint, image_size)
        if self.source.kind == "video":
            from ..sam2al import VideoSession

            self.session = VideoSession(self.source, self.store, model=model or DEFAULT_MODEL,
                                        checkpoint=checkpoint if sam_model is None else None,
                                        sam_model=sam_model, image_size=image_size, device=device,
                                        **modes.session_kwargs())
            self.engine = VideoClickEngine(self.session)
            built: object = self.session
        else:
            if modes.tracker != "sam2":  # a silently ignored mode would look like it had an effect
                raise InputError(f"tracker={modes.tracker!r} is a video propagation mode; {self.source.name} is "
                                 "an image set, segmented image by image: leave tracker out")
            from ..samal import ImageSegmenter

            seg = ImageSegmenter(sam_model if sam_model is not None else (model or DEFAULT_MODEL),
                                 checkpoint if sam_model is None else None,
                                 image_size=image_size if sam_model is None else None,
                                 device=device if sam_model is None else None, **modes.engine_kwargs())
            self.engine = ImageClickEngine(seg, self.source, self.store)
            built = seg
        info = sam2_summary(built)  # the precision it resolved (and compile) said where the user sees it
        self.say(f"SAM2 ready ({getattr(self.session, 'model_name', None) or 'image model'}, {info['precision']}"
                 + (", compiled: the first pass compiles" if info["compile"] else "") + ")")
        return True

    # ------------------------------------------------------------------ the text backend, exemplars
    @property
    def text_backend(self) -> str:
        """``"sam3"`` when Detect runs SAM 3 (a SAM 3 detector, a SAM 3 video model, or SAM 3 options),
        ``"onnx"`` for your own ONNX detector (:class:`~dl_utils.dinoal.onnx_yolo.OnnxYoloDetector`),
        else ``"groundingdino"`` (GroundingDINO boxes, SAM2 masks)."""
        opts = self.detector_options
        if (getattr(self.detector, "engine_name", None) == "sam3" or self.sam3_video_model is not None
                or (opts is not None and opts.backend == "sam3")):
            return "sam3"
        if getattr(self.detector, "engine_name", None) == "onnx":
            return "onnx"
        return opts.backend if opts is not None else "groundingdino"

    def detect_tip(self) -> str:
        return DETECT_TIPS.get(self.text_backend, DETECT_TIPS["groundingdino"])

    def sam3_options(self) -> DetectorOptions:
        """The options run_into_store gets with SAM 3: the ones given, else SAM 3's defaults under the
        detector's model name (the store records it). Why refuse a mix: one store, one text backend
        (run_into_store refuses the second anyway, after a model load)."""
        from ..drivers.options import DetectorOptions

        det_backend = getattr(self.detector, "engine_name", None)
        if self.detector is not None and det_backend != "sam3":
            raise InputError("detector= is not SAM 3 but sam3_video_model= is: give SAM 3's detector "
                             "(DetectorOptions(backend='sam3').sam3_detector(model)) or leave one out")
        opts = self.detector_options
        if opts is None:
            return DetectorOptions(backend="sam3", model=getattr(self.detector, "name", None))
        if opts.backend != "sam3":
            raise InputError(f"detector_options has backend {opts.backend!r} but the models given are SAM 3; "
                             "use DetectorOptions(backend='sam3', ...)")
        return opts

    def set_exemplar_mode(self, on: bool) -> None:
        self.exemplar_mode = bool(on)
        if not self.exemplar_mode:
            self.say("exemplar mode off: a drag is a box prompt again")
        elif self.text_backend != "sam3":
            self.say(f"exemplar mode on, but exemplar boxes need SAM 3 (the detector here is {self.text_backend})",
                     "warn")
        else:
            self.say("exemplar mode: drag a box around an example (Shift/Ctrl/right drag: not like this), "
                     "then type what it is and press detect")

    def add_exemplar(self, box: tuple[int, int, int, int], positive: bool, frame: int | None) -> Exemplar:
        """A box exemplar on a frame (source pixels, exclusive right/bottom): Detect passes it to SAM 3."""
        self.need_store()
        if self.text_backend != "sam3":
            raise InputError("exemplar boxes need SAM 3: pass detector=DetectorOptions(backend='sam3')"
                             f".sam3_detector(model) to Annotator (the {self.text_backend} detector takes text only)")
        from ..sam3al.image import Exemplar

        f = self._frame(frame)
        x1, y1, x2, y2 = (int(v) for v in box)
        ex = Exemplar((float(x1), float(y1), float(x2), float(y2)), bool(positive))
        self.exemplars.setdefault(f, []).append(ex)
        if f == self.frame:
            self.listener.masks_changed()
        n = len(self.exemplars[f])
        self.say(f"exemplar {n} on frame {f}: {'like' if positive else 'not like'} ({x1}, {y1}, {x2}, {y2}); "
                 "type what it is and press detect (Esc clears)")
        return ex

    def clear_exemplars(self) -> int:
        """Forget every exemplar not yet used by Detect; returns how many there were."""
        n = sum(len(v) for v in self.exemplars.values())
        self.exemplars = {}
        self.listener.masks_changed()
        self.say(f"{n} exemplar box{'es' if n != 1 else ''} cleared" if n else "no exemplars to clear",
                 "info" if n else "warn")
        return n

    def consume_exemplars(self, frame: int, used: list[Exemplar]) -> None:
        """Detect finished with ``used`` on ``frame``: drop them (ones drawn meanwhile stay)."""
        left = [e for e in self.exemplars.get(frame, []) if e not in used]
        if left:
            self.exemplars[frame] = left
        else:
            self.exemplars.pop(frame, None)
        if frame == self.frame:
            self.listener.masks_changed()

    # ------------------------------------------------------------------ preconditions
    def need_store(self) -> AnnotationStore:
        if self.store is None:
            raise InputError("nothing is open: call annotator.open('video.mp4') first")
        return self.store

    def need_engine(self) -> InteractiveEngine:
        self.need_store()
        if self.engine is None:
            raise InputError("no SAM2 model loaded: call annotator.load_model('sam2.1_hiera_tiny') "
                             "(or pass sam_model= / model= to Annotator) before clicking")
        return self.engine

    def not_busy(self, what: str) -> None:
        if self.jobs.busy:
            raise InputError(f"cannot {what} while {self.jobs.job} runs: wait, or press Esc / cancel first")

    # ------------------------------------------------------------------ objects
    def objects(self) -> list[ObjectInfo]:
        return self.store.objects() if self.store is not None else []

    def label_names(self) -> list[str]:
        names = [lb.name for lb in self.store.labels()] if self.store is not None else []
        if self.classes is not None:
            names += [n for n in self.classes.names if n not in names]
        return names

    def colors(self) -> dict[int, str]:
        return {o.id: o.color or color_for_index(o.id) for o in self.objects()}

    def select(self, object_id: int | None) -> None:
        if object_id is not None:
            self.need_store().get_object(int(object_id))  # unknown id: a clear error
        self.selected = None if object_id is None else int(object_id)
        self.listener.objects_changed()
        self.listener.masks_changed()

    def _pick_label(self, label: str | None) -> str:
        if label:
            return label
        chosen = self.listener.chosen_label()
        if chosen and self.selected is not None:
            return chosen
        names = self.label_names()
        return self.default_label or (names[0] if names else "object")

    def new_object(self, label: str | None, name: str | None, color: str | None) -> ObjectInfo:
        store = self.need_store()
        lab = self._pick_label(label)
        if color is None:  # a colour no other object has, so objects of one class stay apart
            color = palette(1, avoid=set(self.colors().values()))[0]
        obj = store.add_object(lab, color=color, attributes={"name": name} if name else {})
        self.history.push(Action(OBJECT, obj.id, None, ObjectState.of(obj), f"new object {obj.id}"))
        self.select(obj.id)
        self.say(f"object {obj.id} ({lab}) created: click on it")
        return obj

    def edit_object(self, oid: int, what: str, *, label: str | None = None, color: str | None = None,
                    name: str | None = None) -> ObjectInfo:
        """Change one field (``name``: "" removes it); an edit that changes nothing is not recorded."""
        store = self.need_store()
        before = store.get_object(int(oid))
        changes: dict[str, object] = {k: v for k, v in (("label", label), ("color", color)) if v is not None}
        if name is not None:
            attrs = {k: v for k, v in before.attributes.items() if k != "name"}
            changes["attributes"] = {**attrs, "name": str(name)} if name else attrs
        after = store.update_object(int(oid), **changes)
        if ObjectState.of(before) != ObjectState.of(after):
            self.history.push(Action(OBJECT, int(oid), ObjectState.of(before), ObjectState.of(after),
                                     f"{what} object {oid}"))
        self.listener.objects_changed()
        self.listener.masks_changed()
        return after

    def delete_object(self, object_id: int | None) -> bool:
        store = self.need_store()
        self.not_busy("delete an object")
        oid = self.selected if object_id is None else int(object_id)
        if oid is None:
            raise InputError("no object selected: pick one in the list first")
        snapshot = DeletedObject(ObjectState.of(store.get_object(oid)), store.read_object(oid),
                                 {f: self.clicks.get(oid, f) for f in self.clicks.frames(oid)})
        self._apply_object(oid, None)
        self.history.push(Action(OBJECT, oid, snapshot, None, f"delete object {oid}"))
        self.say(f"object {oid} deleted (undo brings it back)")
        return True

    def _apply_object(self, oid: int, state: object) -> None:
        """Make object ``oid`` match ``state``: None (absent), its fields, or a deleted one to restore."""
        store = self.need_store()
        if state is None:
            if self.engine is not None:
                self.engine.remove_object(oid)
            self.clicks.drop_object(oid)
            store.delete_object(oid)
            if self.selected == oid:
                self.selected = None
        else:
            fields = state.object if isinstance(state, DeletedObject) else state
            assert isinstance(fields, ObjectState)
            store.ensure_object(ObjectInfo(oid, fields.label, fields.color, dict(fields.attributes)))
            if isinstance(state, DeletedObject):  # clicks back into SAM2, then the exact masks
                for f, c in sorted(state.clicks.items()):
                    if self.engine is not None:
                        self.engine.add_clicks(f, oid, c)
                    self.clicks.set(oid, f, c)
                store.write_frames([(f, [i]) for f, i in sorted(state.instances.items())])
            self.selected = oid
        self.listener.objects_changed()
        self.show_frame(self.frame)

    # ------------------------------------------------------------------ clicks
    def _target(self, object_id: int | None) -> int:
        if object_id is not None:
            return int(object_id)
        if self.selected is None or self.selected not in {o.id for o in self.objects()}:
            return self.new_object(None, None, None).id
        return self.selected

    def add_point(self, x: int, y: int, positive: bool, frame: int | None,
                  object_id: int | None) -> Instance | None:
        """A click on the object (SAM2; on a SAM 3 object, SAM 3's refine in the background: None)."""
        text = f"{'positive' if positive else 'negative'} point ({x}, {y})"
        caption = self.refine_target(object_id if object_id is not None else self.selected)
        if caption is not None:
            self.not_busy("add a prompt")
            f, oid = self._frame(frame), self._target(object_id)
            self.jobs.refine(caption, oid, f, self.clicks.with_point(oid, f, x, y, positive), text)
            return None
        self.need_engine()
        self.not_busy("add a prompt")
        f = self._frame(frame)
        oid = self._target(object_id)
        return self.set_clicks(oid, f, self.clicks.with_point(oid, f, x, y, positive), text)

    def add_box(self, box: tuple[int, int, int, int], frame: int | None,
                object_id: int | None) -> Instance | None:
        """A box prompt on the object (SAM2; on a SAM 3 object, SAM 3's refine in the background: None)."""
        b = (int(box[0]), int(box[1]), int(box[2]), int(box[3]))
        caption = self.refine_target(object_id if object_id is not None else self.selected)
        if caption is not None:
            self.not_busy("add a prompt")
            f, oid = self._frame(frame), self._target(object_id)
            self.jobs.refine(caption, oid, f, self.clicks.with_box(oid, f, b), f"box {tuple(box)}")
            return None
        self.need_engine()
        self.not_busy("add a prompt")
        f = self._frame(frame)
        oid = self._target(object_id)
        return self.set_clicks(oid, f, self.clicks.with_box(oid, f, b), f"box {tuple(box)}")

    # ------------------------------------------------------------------ SAM 3 refinement
    def refine_target(self, object_id: int | None) -> str | None:
        """The caption of the SAM 3 run that made ``object_id`` when clicks on it go to SAM 3's
        refine: Detect runs SAM 3's video session here (a SAM 3 text backend with a
        ``sam3_video_model``, on a video) and the object is one SAM 3 made. Else None: SAM2 takes
        the click as before (objects clicked with SAM2 or found by GroundingDINO, image folders).

        Why by object: one store may hold both, and SAM 3's refinement only knows its own instances
        (sam3 ids); SAM2's clicks on them would fight SAM 3's tracking of the same object."""
        if (object_id is None or self.store is None or self.source is None or self.source.kind != "video"
                or self.sam3_video_model is None or self.text_backend != "sam3"):
            return None
        from ..drivers.run import sam3_caption_of

        return sam3_caption_of(self.store, int(object_id))

    def sam3_engine(self, caption: str) -> Sam3ClickEngine:
        """The :class:`~dl_utils.sam3al.video.Sam3ClickEngine` refining ``caption``'s objects, opened
        at its first use (its first refine replays the finished text run, writing nothing: the
        session Detect ran is closed by then). Called from the refine job's thread."""
        eng = self.sam3_engines.get(caption)
        if eng is None:
            from ..drivers.run import open_sam3_session
            from ..sam3al.video import Sam3ClickEngine

            assert self.source is not None
            s = open_sam3_session(self.source, self.need_store(), caption, self.sam3_options(), table=self.classes,
                                  model=self.sam3_video_model)
            eng = self.sam3_engines[caption] = Sam3ClickEngine(s)
        return eng

    def drop_sam3_engines(self) -> int:
        """Close the SAM 3 refiners (a new Detect or another store makes their state stale) and forget
        the undo steps of their refines (returns how many): undoing one is the closed session's work
        (it kept the rows each refine replaced), so no later session could do it."""
        engines, self.sam3_engines = self.sam3_engines, {}
        for eng in engines.values():
            eng.session.close()
        return self.history.drop(SAM3_REFINE)

    def _frame(self, frame: int | None) -> int:
        if frame is not None:
            return int(frame)
        if self.frame is None:
            raise InputError("nothing is shown: open a video first")
        return self.frame

    def set_clicks(self, oid: int, frame: int, clicks: Clicks, text: str) -> Instance:
        """Run the engine on the object's clicks of ``frame`` and record the change for undo."""
        before = self.clicks.get(oid, frame)
        t0 = time.perf_counter()
        inst = self._apply_clicks(oid, frame, clicks)
        assert inst is not None  # non-empty clicks always give an instance
        self.last_click_seconds = time.perf_counter() - t0
        self.history.push(Action(CLICKS, (oid, frame), before, clicks, f"{text} on object {oid}, frame {frame}"))
        engine = self.need_engine()
        if self.auto_propagate and engine.can_propagate and len(self.need_store().frames_done(oid)) > 1:
            # the session dropped the results this keyframe made stale; refill exactly those
            self.jobs.propagate("both")
            return inst
        score = f" (score {inst.score:.2f})" if inst.score is not None else ""
        self.say(f"object {oid}, frame {frame}: {text} -> {inst.area} px{score}")
        return inst

    def _apply_clicks(self, oid: int, frame: int, clicks: Clicks) -> Instance | None:
        """Run the engine, show the mask, then store it (an engine of two steps, see
        :class:`~dl_utils.interactive.PendingClick`): the overlay goes to the canvas before the row is
        written, the write happens right after on this thread, so the store holds the click's mask
        before the next click (or any other call) is taken. A failed write puts the clicks back,
        redraws what the store holds and raises (the guard reports it); a crash between the two loses
        this click's row only."""
        engine = self.need_engine()
        timings = dict.fromkeys(CLICK_STAGES, 0.0)
        self.last_click_timings = timings
        t0 = time.perf_counter()
        inst = None
        if clicks.is_empty:
            engine.clear_clicks(frame, oid)
        elif isinstance(engine, TwoStepEngine):
            before = self.clicks.get(oid, frame)
            pending = engine.predict_clicks(frame, oid, clicks)
            inst = pending.instance
            timings["predict"] = time.perf_counter() - t0
            self.clicks.set(oid, frame, clicks)
            if frame == self.frame:
                self.listener.mask_predicted(oid, inst, timings)
                timings["shown"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            try:
                pending.commit()
            except BaseException:
                self.clicks.set(oid, frame, before)
                if frame == self.frame:
                    self.listener.masks_changed()  # back to what the store holds
                raise
            finally:
                timings["store_write"] = time.perf_counter() - t1
                timings["total"] = time.perf_counter() - t0
            return inst
        else:  # an engine that writes as it predicts: one step, drawn after
            inst = engine.add_clicks(frame, oid, clicks)
            timings["predict"] = time.perf_counter() - t0
        self.clicks.set(oid, frame, clicks)
        if frame == self.frame:
            self.listener.masks_changed()
            timings["shown"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t0
        return inst

    # ------------------------------------------------------------------ undo / redo
    def undo_redo(self, undo: bool) -> bool:
        """Undo or redo the latest edit. A SAM 3 refine is undone or redone in the background (it
        rewrites many frames): see :meth:`~.jobs.JobRunner.undo_refine`; its message comes when it ends."""
        self.not_busy("undo" if undo else "redo")
        a = self.history.undo() if undo else self.history.redo()
        if a is None:
            self.say(f"nothing to {'undo' if undo else 'redo'}", "warn")
            return False
        state = a.before if undo else a.after
        try:
            if a.kind == SAM3_REFINE:
                return self._undo_redo_refine(a, undo)
            if a.kind == CLICKS:
                oid, f = cast("tuple[int, int]", a.target)
                self._apply_clicks(oid, f, state if isinstance(state, Clicks) else Clicks())
                if f != self.frame:
                    self.show_frame(f)
            else:
                self._apply_object(cast(int, a.target), state)
        except BaseException:
            self.history.rollback(a, undone=undo)
            raise
        self.say(f"{'undid' if undo else 'redid'} {a.text}")
        return True

    def _undo_redo_refine(self, a: Action, undo: bool) -> bool:
        """Start the job: undo reverts the session's latest refine, redo refines again with the same clicks."""
        t = a.target
        if not isinstance(t, Sam3Refine) or not isinstance(a.after, Clicks):
            raise InputError(f"{a.text!r}: not a SAM 3 refine action ({type(t).__name__} target)")
        if t.frame != self.frame:
            self.show_frame(t.frame)
        if undo:
            return self.jobs.undo_refine(a)
        return self.jobs.refine(t.caption, t.object_id, t.frame, a.after, "same clicks", redo=a)

    # ------------------------------------------------------------------ frames
    def show_frame(self, frame: int | None) -> None:
        if self.source is None or frame is None:
            return
        self.image = self.source[self.source.index_of(frame)]
        self.frame = int(frame)
        self.listener.frame_shown()

    def step_target(self, delta: int) -> int | None:
        """The frame ``delta`` kept frames from the shown one, clamped (None when nothing is open)."""
        if self.source is None or self.frame is None:
            return None
        i = self.source.index_of(self.frame) + int(delta)
        return self.source.frame_number(min(max(i, 0), len(self.source) - 1))

    def step(self, delta: int) -> None:
        self.show_frame(self.step_target(delta))

    def instances(self, frame: int | None = None) -> Instances:
        f = self.frame if frame is None else int(frame)
        return self.store.read_frame(f) if self.store is not None and f is not None else Instances([])


__all__ = ["CLICK_STAGES", "DETECT_TIPS", "AnnotatorController", "DeletedObject", "Listener", "NullListener", "ObjectState",
           "object_title"]
