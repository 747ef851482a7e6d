"""The Jupyter annotator: click objects, propagate, detect, push to CVAT (see docs/ipy_utils.md).

:class:`Annotator` is the public facade over three parts: the :class:`~.controller.AnnotatorController`
(state and edits, headless; its :class:`~.jobs.JobRunner` runs the background jobs), the
:class:`~.view.AnnotatorView` (widgets, canvas layers, display geometry) with its
:class:`~.events.InputHandler` (mouse and keyboard), and an :class:`~dl_utils.interactive.InteractiveEngine`
(SAM2 on video or on images). Every control is a plain method here, so notebooks and tests drive the
widget without a browser; :meth:`Annotator.rendered` returns the composited RGB the canvas shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..annotations import Instance, Instances, ObjectInfo
from . import geometry as geo
from .controller import AnnotatorController, object_title
from .events import DRAG_THRESHOLD, InputHandler
from .history import ClickBook, History, LegacyPromptView
from .view import SHORTCUTS, AnnotatorView
from .worker import Worker

if TYPE_CHECKING:  # pragma: no cover
    from ..classes import ClassTable
    from ..cvat.connection import CvatConnection
    from ..dinoal.detector import Detector
    from ..drivers.options import DetectorOptions
    from ..interactive import InteractiveEngine
    from ..sam2al import VideoSession
    from ..sam2al.samurai import SamuraiConfig
    from ..sam3al.image import Exemplar
    from ..store import AnnotationStore
    from ..video_utils import FrameSource


class Annotator:
    """Interactive annotation of one video / image folder into an :class:`~dl_utils.store.AnnotationStore`.

    ``source_or_session``: a :class:`~dl_utils.sam2al.VideoSession` (its source, store and model are
    used), or anything :func:`~dl_utils.video_utils.open_frames` opens. ``store``: a store or a path
    (default: a temporary store, announced in the status line). The SAM2 model: ``sam_model`` (a
    built network: ``SAM2VideoPredictor`` for videos, ``SAM2Base`` for image folders) or ``model``
    (a registry name, built here); with neither, clicks ask for :meth:`load_model`. ``classes``: a
    :class:`~dl_utils.classes.ClassTable` (or path) for the label dropdown. ``detector``: anything
    with ``detect(image, caption)`` (GroundingDINO, see dl_utils.dinoal). ``cvat``: ``(connection,
    task_id)`` for the Push button. ``max_size``: the canvas fits in this (width, height) at zoom 1.

    SAM 3 (see docs/ipy_utils.md): ``detector=DetectorOptions(backend="sam3").sam3_detector(model)``
    (the image model: image sets, the shown frame, exemplar boxes) and/or ``sam3_video_model=`` (a
    built SAM 3 video model: Detect on a video runs SAM 3's session over it); ``detector_options``
    (backend ``"sam3"``): the video session's score threshold (``box_threshold``) and model label.
    Detect then needs no SAM2 model.

    ``tracker`` (``"sam2"``, default, or ``"samurai"``), ``samurai`` (a
    :class:`~dl_utils.sam2al.SamuraiConfig` or a dict of its fields) and ``force``: the propagation
    mode of the video session :meth:`load_model` builds, as ``--tracker``/``--samurai``/``--force``
    set it for the commands (a store the other tracker made is refused unless ``force``).

    ``precision`` (``"fp32"``, ``"bf16"``, ``"fp16"``; None: bf16 on CUDA, fp32 on CPU) and
    ``compile`` (upstream's ``vos_optimized`` predictor under ``torch.compile``; the first click
    compiles, minutes) are ``--precision`` and ``--compile`` of the commands, for the SAM2 engine
    :meth:`load_model` builds (video session or image segmenter); the status line names the
    precision. A given ``sam_model`` with ``compile=True`` must be built compiled.
    """

    def __init__(
        self,
        source_or_session: object = None,
        store: AnnotationStore | str | Path | None = None,
        *,
        classes: ClassTable | str | Path | None = None,
        detector: Detector | None = None,
        sam3_video_model: object = None,
        detector_options: DetectorOptions | None = None,
        cvat: tuple[CvatConnection, int] | None = None,
        sam_model: object = None,
        model: str | None = None,
        checkpoint: str | Path | None = None,
        image_size: int | None = None,
        device: object = None,
        max_size: tuple[int, int] = (1280, 720),
        scale: float | None = None,
        alpha: float = 0.45,
        default_label: str | None = None,
        widgets: bool = True,
        tracker: str = "sam2",
        samurai: SamuraiConfig | dict[str, object] | None = None,
        force: bool = False,
        precision: str | None = None,
        compile: bool = False,
    ):
        self.controller = c = AnnotatorController(detector=detector, cvat=cvat, classes=_load_classes(classes),
                                                  default_label=default_label, sam3_video_model=sam3_video_model,
                                                  detector_options=detector_options)
        #: the propagation mode :meth:`load_model` gives the video session unless it is given one
        self.tracker, self.samurai, self.force = tracker, samurai, bool(force)
        #: ``--precision``/``--compile`` of the SAM2 engine :meth:`load_model` builds unless it is given them
        self.precision, self.compile = precision, bool(compile)
        self.ui = AnnotatorView(c, max_size=max_size, scale=scale, alpha=alpha, widgets=widgets)
        self.input = InputHandler(c, self.ui)
        c.listener = self.ui
        if self.ui.has_widgets:
            self.ui.build(self)
        self.open(source_or_session, store)
        if c.source is not None and c.session is None and c.engine is None and (
                sam_model is not None or model is not None or checkpoint is not None):
            self.load_model(sam_model=sam_model, model=model, checkpoint=checkpoint, image_size=image_size,
                            device=device)

    # ------------------------------------------------------------------ state, read through
    @property
    def store(self) -> AnnotationStore | None:
        return self.controller.store

    @property
    def source(self) -> FrameSource | None:
        return self.controller.source

    @property
    def session(self) -> VideoSession | None:
        return self.controller.session

    @property
    def engine(self) -> InteractiveEngine | None:
        return self.controller.engine

    @engine.setter
    def engine(self, engine: InteractiveEngine | None) -> None:  # tests put a stand-in here
        self.controller.engine = engine

    @property
    def cvat(self) -> tuple[CvatConnection, int] | None:
        return self.controller.cvat

    @cvat.setter
    def cvat(self, cvat: tuple[CvatConnection, int] | None) -> None:
        self.controller.cvat = cvat

    @property
    def detector(self) -> Detector | None:
        return self.controller.detector

    @detector.setter
    def detector(self, detector: Detector | None) -> None:
        self.controller.detector = detector
        self.ui.detector_changed()

    @property
    def sam3_video_model(self) -> object:
        """A built SAM 3 video model: Detect on a video runs SAM 3's session (no SAM2)."""
        return self.controller.sam3_video_model

    @sam3_video_model.setter
    def sam3_video_model(self, model: object) -> None:
        self.controller.sam3_video_model = model
        self.ui.detector_changed()

    @property
    def text_backend(self) -> str:
        """What Detect runs: ``"sam3"`` or ``"groundingdino"`` (GroundingDINO boxes, SAM2 masks)."""
        return self.controller.text_backend

    @property
    def exemplars(self) -> dict[int, list[Exemplar]]:
        """SAM 3 exemplar boxes per frame, drawn and not yet used by Detect."""
        return self.controller.exemplars

    @property
    def exemplar_mode(self) -> bool:
        """A drag draws a SAM 3 exemplar box ("more like this one") instead of a SAM2 box prompt."""
        return self.controller.exemplar_mode

    @exemplar_mode.setter
    def exemplar_mode(self, on: bool) -> None:
        if self.ui.has_widgets:
            self.ui.w_exemplar.value = bool(on)  # its observer tells the controller
        if bool(on) != self.controller.exemplar_mode:
            self.controller.guard("exemplar mode", self.controller.set_exemplar_mode, bool(on))

    @property
    def classes(self) -> ClassTable | None:
        return self.controller.classes

    @property
    def frame(self) -> int | None:
        return self.controller.frame

    @property
    def selected(self) -> int | None:
        return self.controller.selected

    @property
    def clicks(self) -> ClickBook:
        """The current clicks per (object, frame)."""
        return self.controller.clicks

    @property
    def prompts(self) -> LegacyPromptView:
        """The clicks as the dicts of earlier versions (new code: :attr:`clicks`)."""
        return LegacyPromptView(self.controller.clicks)

    @property
    def history(self) -> History:
        return self.controller.history

    @property
    def messages(self) -> list[tuple[str, str]]:
        return self.controller.messages

    @property
    def status(self) -> str:
        """The message the status line shows now."""
        return self.messages[-1][1] if self.messages else ""

    @property
    def auto_propagate(self) -> bool:
        """After a correction, re-propagate (both ways) the frames it made stale, in the background."""
        return self.controller.auto_propagate

    @auto_propagate.setter
    def auto_propagate(self, on: bool) -> None:
        self.controller.auto_propagate = bool(on)

    @property
    def last_prompt_seconds(self) -> float | None:
        """The engine's time for the last click (the benchmark reads it)."""
        return self.controller.last_click_seconds

    @property
    def last_click_timings(self) -> dict[str, float]:
        """Where the last click's time went, seconds per stage (``controller.CLICK_STAGES``: predict,
        overlay, encode, send, markers, shown, store_write, total); the benchmarks print it."""
        return dict(self.controller.last_click_timings)

    @property
    def worker(self) -> Worker:
        return self.controller.jobs.worker

    @property
    def job(self) -> str | None:
        return self.controller.jobs.job

    @property
    def job_summary(self) -> object:
        return self.controller.jobs.job_summary

    @property
    def pending_push(self) -> object:
        return self.controller.jobs.pending_push

    @property
    def view(self) -> geo.View | None:
        return self.ui.view

    @property
    def has_widgets(self) -> bool:
        return self.ui.has_widgets

    @property
    def widget(self) -> Any:  # an ipywidgets VBox (ipywidgets has no type information)
        return self.ui.widget

    @property
    def canvas(self) -> Any:  # the ipycanvas MultiCanvas
        return self.ui.canvas

    @property
    def alpha(self) -> float:
        return self.ui.alpha

    @property
    def contour_only(self) -> bool:
        return self.ui.contour_only

    @property
    def show_labels(self) -> bool:
        return self.ui.show_labels

    def __getattr__(self, name: str) -> Any:
        """The widgets (``w_slider``, ``w_text``, ...) live on the view; read them through here."""
        if name.startswith("w_") and "ui" in self.__dict__:
            return getattr(self.__dict__["ui"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _ipython_display_(self) -> None:  # display(annotator) shows the widget
        from IPython.display import display

        display(self.ui.widget if self.ui.has_widgets else repr(self))

    # ------------------------------------------------------------------ opening
    def open(self, source_or_session: object, store: AnnotationStore | str | Path | None = None) -> bool:
        """Show another video / folder (or session); a failure is shown and the widget stays usable."""
        if source_or_session is None:
            self.controller.say("nothing open: call annotator.open('video.mp4') or type a path and press Open",
                                "warn")
            return False
        return bool(self.controller.guard(f"opening {source_or_session}", self.controller.open,
                                          source_or_session, store))

    def load_model(self, model: str | None = None, *, sam_model: object = None, image_size: int | None = None,
                   device: object = None, checkpoint: str | Path | None = None, tracker: str | None = None,
                   samurai: SamuraiConfig | dict[str, object] | None = None, force: bool | None = None,
                   precision: str | None = None, compile: bool | None = None) -> bool:
        """Build the SAM2 session for the open media (``model``: a registry name; ``checkpoint``: a weights
        file, a fine-tuned one bringing its base model and size; or a built ``sam_model``).
        ``tracker``/``samurai``/``force``: the propagation mode, ``precision``/``compile`` the engine's
        (``--precision``, ``--compile``); default: the constructor's; given here, they also become
        the default of later loads."""
        if tracker is not None:
            self.tracker = tracker
            if samurai is None and tracker != "samurai":
                self.samurai = None  # SAMURAI parameters go with the samurai mode only
        if samurai is not None:
            self.samurai = samurai
        if force is not None:
            self.force = bool(force)
        if precision is not None:
            self.precision = precision
        if compile is not None:
            self.compile = bool(compile)
        return bool(self.controller.guard("loading the SAM2 model", self.controller.load_model, model, sam_model,
                                          image_size, device, checkpoint, tracker=self.tracker,
                                          samurai=self.samurai, force=self.force, precision=self.precision,
                                          compile=self.compile))

    # ------------------------------------------------------------------ objects
    def objects(self) -> list[ObjectInfo]:
        return self.controller.objects()

    object_title = staticmethod(object_title)

    def label_names(self) -> list[str]:
        return self.controller.label_names()

    def select(self, object_id: int | None) -> None:
        with self.controller.lock:
            self.controller.select(object_id)

    def new_object(self, label: str | None = None, *, name: str | None = None,
                   color: str | None = None) -> ObjectInfo | None:
        """Add an object to the store and select it; the next click goes to it."""
        return self.controller.guard("new object", self.controller.new_object, label, name, color)

    def rename(self, object_id: int, name: str) -> ObjectInfo | None:
        return self.controller.guard("renaming", self.controller.edit_object, object_id, "rename", name=str(name))

    def set_label(self, object_id: int, label: str) -> ObjectInfo | None:
        return self.controller.guard("relabelling", self.controller.edit_object, object_id, "relabel",
                                     label=str(label))

    def set_color(self, object_id: int, color: str) -> ObjectInfo | None:
        return self.controller.guard("recolouring", self.controller.edit_object, object_id, "recolour",
                                     color=color)

    def delete_object(self, object_id: int | None = None) -> bool:
        """Delete an object, its clicks and its masks (undo brings all of them back)."""
        return bool(self.controller.guard("deleting", self.controller.delete_object, object_id))

    # ------------------------------------------------------------------ clicks, undo
    def click(self, x: int, y: int, positive: bool = True, *, frame: int | None = None,
              object_id: int | None = None) -> Instance | None:
        """A point at SOURCE pixel (x, y) on the selected object (a new one when none is)."""
        return self.controller.guard("click", self.controller.add_point, x, y, positive, frame, object_id)

    def box(self, box: tuple[int, int, int, int], *, frame: int | None = None,
            object_id: int | None = None) -> Instance | None:
        """A box ``(x1, y1, x2, y2)`` in source pixels (exclusive right/bottom)."""
        return self.controller.guard("box", self.controller.add_box, box, frame, object_id)

    def exemplar(self, box: tuple[int, int, int, int], positive: bool = True, *,
                 frame: int | None = None) -> Exemplar | None:
        """A SAM 3 exemplar box ``(x1, y1, x2, y2)`` (source pixels) on the shown frame: the next Detect
        finds more like it (``positive``) or not like it. Needs the SAM 3 backend."""
        return self.controller.guard("exemplar", self.controller.add_exemplar, box, positive, frame)

    def clear_exemplars(self) -> int:
        """Forget the exemplar boxes Detect has not used."""
        return int(self.controller.guard("clearing exemplars", self.controller.clear_exemplars) or 0)

    def undo(self) -> bool:
        return bool(self.controller.guard("undo", self.controller.undo_redo, True))

    def redo(self) -> bool:
        return bool(self.controller.guard("redo", self.controller.undo_redo, False))

    def handle_event(self, ev: dict[str, Any]) -> object:
        """Handle one ipyevents DOM event dict (``type``, ``relativeX/Y``, ``button``, ``shiftKey``, ``key``...)."""
        return self.controller.guard(f"{ev.get('type', 'event')}", self.input.handle, ev)

    # ------------------------------------------------------------------ frames and view
    def show(self, frame: int) -> None:
        """Show a source frame number."""
        self.controller.guard(f"showing frame {frame}", self.controller.show_frame, int(frame))

    def step(self, delta: int) -> None:
        """Show the frame ``delta`` kept frames away (clamped to the first / last)."""
        target = self.controller.step_target(delta)
        if target is not None:
            self.show(target)

    def zoom(self, factor: float | None, x: float | None = None, y: float | None = None) -> None:
        """Zoom by ``factor`` around display point (x, y) (default: the canvas centre); ``None`` resets."""
        self.ui.zoom(factor, x, y)

    def set_style(self, *, alpha: float | None = None, contour_only: bool | None = None,
                  show_labels: bool | None = None) -> None:
        self.ui.set_style(alpha=alpha, contour_only=contour_only, show_labels=show_labels)

    def instances(self, frame: int | None = None) -> Instances:
        """The store's instances of a frame (the shown one by default)."""
        return self.controller.instances(frame)

    def rendered(self) -> np.ndarray:
        """The frame with its overlays exactly as composited for the canvas (RGB, canvas size)."""
        return self.ui.rendered()

    def _base_frame(self) -> np.ndarray:
        return self.ui.base_frame()

    # ------------------------------------------------------------------ background jobs
    def propagate(self, direction: str = "forward") -> bool:
        """Track all clicked objects in the background; frames update live; :meth:`cancel` stops."""
        return bool(self.controller.guard(f"propagate {direction}", self.controller.jobs.propagate, direction))

    def detect(self, text: str) -> bool:
        """Caption -> GroundingDINO boxes -> SAM2 masks, or SAM 3 (with the shown frame's exemplar boxes), in
        the background (the drivers' run_into_store)."""
        return bool(self.controller.guard("detect", self.controller.jobs.detect, text))

    def push(self) -> bool:
        """Dry-run a push to CVAT in the background; the summary then offers a Confirm button."""
        return bool(self.controller.guard("push to CVAT", self.controller.jobs.push, True))

    def confirm_push(self) -> bool:
        return bool(self.controller.guard("push to CVAT", self.controller.jobs.push, False))

    def cancel(self) -> bool:
        """Stop the running job after its current frame; everything written so far stays."""
        return self.controller.jobs.cancel()

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until the background job ends and apply its results (scripts and tests)."""
        return self.worker.wait(timeout)

    def _on_worker(self, name: str, kind: str, payload: object) -> None:
        """The worker's message handler (tests wrap it to see which thread applies messages)."""
        self.controller.jobs.on_message(name, kind, payload)

    def __repr__(self) -> str:
        src = self.controller.source
        name = src.media_info().name if src is not None else "nothing open"
        return f"<Annotator {name} frame={self.frame} objects={len(self.objects())}>"


def _load_classes(classes: ClassTable | str | Path | None) -> ClassTable | None:
    from ..classes import ClassTable

    if classes is None or isinstance(classes, ClassTable):
        return classes
    if hasattr(classes, "names"):  # a table-like object (tests, a subclass from elsewhere)
        return classes  # type: ignore[return-value]
    return ClassTable.load(classes)


__all__ = ["DRAG_THRESHOLD", "SHORTCUTS", "Annotator"]
