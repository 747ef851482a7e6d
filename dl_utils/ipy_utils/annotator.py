"""The Jupyter annotator: click objects, propagate, detect, push to CVAT (see docs/ipy_utils.md).

Layout: a status line, the canvas (ipycanvas ``MultiCanvas``: layer 0 the frame, layer 1 the mask
overlays, layer 2 prompts and the drag rectangle), the frame controls, the object list and the
action rows. Input comes from ipyevents (ipycanvas' own mouse events carry no button or modifier).

Every handler is a plain method (:meth:`Annotator.handle_event`, :meth:`Annotator.new_object`,
:meth:`Annotator.propagate`, ...) that widget callbacks call, so notebooks and tests drive the
widget without a browser; :meth:`Annotator.rendered` returns the composited RGB the canvas shows.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from ..annotations import Instance, Instances, ObjectInfo
from ..cv_utils import palette
from ..errors import DlUtilsError, InputError, MediaError
from . import geometry as geo
from .history import OBJECT, PROMPT, Action, History, PromptBook, is_empty
from .render import display_frame, encode_indexed_png, encode_jpeg, overlay_indexed, render
from .worker import Worker, kernel_scheduler

log = logging.getLogger("dl_utils.ipy_utils")

#: display pixels a mouse must move between press and release to make a box rather than a click
DRAG_THRESHOLD = 4.0

SHORTCUTS: list[tuple[str, str]] = [
    ("left click", "positive point on the selected object (a new object when none is selected)"),
    ("right click / Shift+click", "negative point"),
    ("drag (> 4 px)", "box prompt for the selected object"),
    ("middle drag / Alt+drag", "pan when zoomed in"),
    ("wheel, + / -, 0", "zoom in / out at the pointer, reset zoom"),
    ("n", "new object"),
    ("1 .. 9", "select object 1..9 of the list"),
    ("Delete", "delete the selected object"),
    ("z / Ctrl+Z", "undo"),
    ("y / Ctrl+Shift+Z / Ctrl+Y", "redo"),
    ("f / b / a", "propagate forward / backward / both"),
    ("Esc", "cancel the running job (what is written stays), or the drag"),
    ("← / →", "previous / next frame"),
    ("Space", "play / pause"),
    ("c", "contour only on / off"),
    ("h", "show / hide this help"),
]


def _help_html() -> str:
    rows = "".join(f"<tr><td><b>{escape(k)}</b></td><td>{escape(v)}</td></tr>" for k, v in SHORTCUTS)
    return f"<table class='dl-help'>{rows}</table>"


# ----------------------------------------------------------------------------------------- engines
class _VideoEngine:
    """Prompts through :class:`~dl_utils.sam2al.VideoSession` (video or frame sequence)."""

    can_propagate = True

    def __init__(self, session: Any):
        self.session = session

    def prompt(self, frame: int, oid: int, prompt: dict[str, Any]) -> Instance:
        pts = prompt.get("points") or None
        box = prompt.get("box")
        if pts is None:
            return self.session.add_box(frame, oid, box)
        return self.session.add_points(frame, oid, pts, box=box)

    def clear(self, frame: int, oid: int) -> None:
        """Drop an object's prompts on one frame (undo of its first click there)."""
        s = self.session
        if oid in s.object_ids and frame in s.locked_frames(oid):
            s.clear_prompts(frame, oid)
        else:
            s.store.delete_instances(object_id=oid, frames=[frame])

    def remove(self, oid: int) -> None:
        if oid in self.session.object_ids:
            self.session.remove_object(oid, keep_results=True)


class _ImageEngine:
    """Prompts through :class:`~dl_utils.samal.ImageSegmenter` (image folders: no propagation)."""

    can_propagate = False

    def __init__(self, segmenter: Any, source: Any, store: Any):
        self.segmenter, self.source, self.store = segmenter, source, store

    def prompt(self, frame: int, oid: int, prompt: dict[str, Any]) -> Instance:
        self.segmenter.set_image(self.source.get_frame(frame), key=(str(self.source.path), frame), frame=frame)
        inst = self.segmenter.predict(prompt.get("points") or None, prompt.get("box"), object_id=oid,
                                      refine=False)
        inst = inst.replace(keyframe=True)
        self.store.write_frame(frame, [inst])
        return inst

    def clear(self, frame: int, oid: int) -> None:
        self.store.delete_instances(object_id=oid, frames=[frame])

    def remove(self, oid: int) -> None:
        pass


# ----------------------------------------------------------------------------------------- widget
class Annotator:
    """Interactive annotation of one video / image folder into an :class:`~dl_utils.store.AnnotationStore`.

    ``source_or_session``: a :class:`~dl_utils.sam2al.VideoSession` (its source, store and model are
    used), or anything :func:`~dl_utils.video_utils.open_frames` opens. ``store``: a store or a path
    (default: a temporary store, announced in the status line). The SAM2 model: ``sam_model`` (a
    built network: ``SAM2VideoPredictor`` for videos, ``SAM2Base`` for image folders) or ``model``
    (a registry name, built here); with neither, clicks ask for :meth:`load_model`. ``classes``: a
    :class:`~dl_utils.classes.ClassTable` (or path) for the label dropdown. ``detector``: anything
    with ``detect(image, prompt)`` (GroundingDINO, see dl_utils.dinoal). ``cvat``: ``(connection,
    task_id)`` for the Push button. ``max_size``: the canvas fits in this (width, height) at zoom 1.
    """

    def __init__(
        self,
        source_or_session: Any = None,
        store: Any = None,
        *,
        classes: Any = None,
        detector: Any = None,
        cvat: Any = None,
        sam_model: Any = None,
        model: str | None = None,
        image_size: int | None = None,
        device: Any = None,
        max_size: tuple[int, int] = (1280, 720),
        scale: float | None = None,
        alpha: float = 0.45,
        default_label: str | None = None,
        widgets: bool = True,
    ):
        self._lock = threading.RLock()  # widget callbacks may arrive on another thread
        self.session: Any = None
        self.engine: Any = None
        self.source: Any = None
        self.store: Any = None
        self.detector = detector
        self.cvat = cvat
        self.classes = self._load_classes(classes)
        self.default_label = default_label
        self.max_size = max_size
        self._scale = scale
        self.alpha = float(alpha)
        self.contour_only = False
        self.show_labels = False
        #: after a correction, re-propagate (both ways) the frames it made stale, in the background
        self.auto_propagate = False
        self.history = History()
        self.prompts = PromptBook()
        self.selected: int | None = None
        self.frame: int | None = None
        self.view: geo.View | None = None
        self.messages: list[tuple[str, str]] = []  # (level, text), newest last
        self.worker = Worker(self._on_worker, kernel_scheduler())
        self.job: str | None = None
        self.job_summary: Any = None
        self.pending_push: Any = None
        self._image: np.ndarray | None = None
        self._base: np.ndarray | None = None
        self._drag: dict[str, Any] | None = None
        self._progress = (0, 1)
        self.has_widgets = bool(widgets)
        if self.has_widgets:
            self._build_widgets()
        self.open(source_or_session, store)
        if self.source is not None and self.session is None and self.engine is None and (
                sam_model is not None or model is not None):
            self.load_model(sam_model=sam_model, model=model, image_size=image_size, device=device)

    # ------------------------------------------------------------------ messages
    def _say(self, text: str, level: str = "info") -> None:
        self.messages.append((level, text))
        del self.messages[:-50]
        getattr(log, "warning" if level == "error" else "info")(text)
        if self.has_widgets:
            color = {"error": "#b00020", "warn": "#8a6d00"}.get(level, "#1b5e20")
            self.w_status.value = f"<span style='color:{color}'>{escape(text)}</span>"

    @property
    def status(self) -> str:
        """The message the status line shows now."""
        return self.messages[-1][1] if self.messages else ""

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a handler; any failure becomes a visible message (and a log record), never a silent one."""
        with self._lock:
            try:
                return fn(*args, **kwargs)
            except DlUtilsError as e:
                self._say(f"{what}: {e}", "error")
            except Exception as e:  # a bug or a library error: show it, keep the widget usable
                log.exception("%s failed", what)
                self._say(f"{what} failed: {type(e).__name__}: {e} (details in the log)", "error")
            return None

    # ------------------------------------------------------------------ opening
    @staticmethod
    def _load_classes(classes: Any) -> Any:
        if classes is None or hasattr(classes, "names"):
            return classes
        from ..classes import ClassTable

        return ClassTable.load(classes)

    def open(self, source_or_session: Any, store: Any = None) -> bool:
        """Show another video / folder (or session); a failure is shown and the widget stays usable."""
        if source_or_session is None:
            self._say("nothing open: call annotator.open('video.mp4') or type a path and press Open", "warn")
            return False
        return bool(self._guard(f"opening {source_or_session}", self._open, source_or_session, store))

    def _open(self, src: Any, store: Any) -> bool:
        from ..store import AnnotationStore
        from ..video_utils import FrameSource, open_frames

        if self.worker.busy:
            raise InputError(f"{self.job} is running; cancel it (Esc) before opening something else")
        session = None
        if hasattr(src, "add_points") and hasattr(src, "propagate"):
            session, source, st = src, src.source, src.store
        else:
            source = src if isinstance(src, FrameSource) else open_frames(src)
            if len(source) == 0:
                raise MediaError(f"{src} has no frames; check the file")
            media = source.media_info()
            if isinstance(store, AnnotationStore):
                st = store
                if st.media is None:
                    st.set_media(media)
                else:
                    st.check_media(media)
            elif store is not None:
                st = AnnotationStore.open_or_create(store, media)
            else:
                path = Path(tempfile.mkdtemp(prefix="dl_utils_annotator_")) / "annotations.sqlite"
                st = AnnotationStore.create(path, media)
        self.source, self.store, self.session = source, st, session
        self.engine = _VideoEngine(session) if session is not None else None
        self.history.clear()
        self.prompts = PromptBook()
        self._load_prompts()
        media = self.source.media_info()
        s = self._scale or geo.fit_scale(media.width, media.height, *self.max_size)
        self.view = geo.View(media.width, media.height, s)
        self.frame = self.source.frame_numbers[0]
        objs = self.store.objects()
        self.selected = objs[0].id if objs else None
        if self.has_widgets:
            self._setup_canvas()
            self._sync_objects()
            self._sync_labels()
        self._show_frame(self.frame)
        where = f" into {self.store.path}" if store is not None or session is not None else (
            f"; results go to a temporary store {self.store.path}: pass store= to keep them")
        self._say(f"opened {media.name} ({media.width}x{media.height}, {len(self.source)} frames){where}"
                  + ("" if self.engine is not None else "; no SAM2 model yet: load_model(...)"),
                  "info" if self.engine is not None else "warn")
        return True

    def _load_prompts(self) -> None:
        """Prompts of keyframes already in the store (a resumed session continues from them)."""
        for obj in self.store.objects():
            for f, inst in self.store.read_object(obj.id, decode=False).items():
                p = inst.prompts or {}
                if inst.keyframe and ("points" in p or "box" in p):
                    self.prompts.set(obj.id, f, {"points": [list(q) for q in p.get("points") or []],
                                                 "box": p.get("box")})

    def load_model(self, model: str | None = None, *, sam_model: Any = None, image_size: int | None = None,
                   device: Any = None) -> bool:
        """Build the SAM2 session for the open media (``model``: a registry name; or a built ``sam_model``)."""
        return bool(self._guard("loading the SAM2 model", self._load_model, model, sam_model, image_size, device))

    def _load_model(self, model: str | None, sam_model: Any, image_size: int | None, device: Any) -> bool:
        if self.source is None:
            raise InputError("open a video or an image folder first (annotator.open(path))")
        if self.source.kind == "video":
            from ..models import DEFAULT_MODEL
            from ..sam2al import VideoSession

            self.session = VideoSession(self.source, self.store, model=model or DEFAULT_MODEL,
                                        sam_model=sam_model, image_size=image_size, device=device)
            self.engine = _VideoEngine(self.session)
        else:
            from ..models import DEFAULT_MODEL
            from ..samal import ImageSegmenter

            seg = ImageSegmenter(sam_model if sam_model is not None else (model or DEFAULT_MODEL),
                                 image_size=image_size if sam_model is None else None,
                                 device=device if sam_model is None else None)
            self.engine = _ImageEngine(seg, self.source, self.store)
        self._say(f"SAM2 ready ({getattr(self.session, 'model_name', None) or 'image model'})")
        return True

    # ------------------------------------------------------------------ widgets
    def _build_widgets(self) -> None:
        import ipywidgets as W
        from ipycanvas import MultiCanvas
        from ipyevents import Event

        self.w_status = W.HTML("")
        self.canvas = MultiCanvas(3, width=1, height=1)
        self.canvas.layout.width = "auto"
        ev_kw = {"prevent_default_action": True}
        self._events = Event(source=self.canvas, watched_events=[
            "mousedown", "mouseup", "contextmenu", "keydown", "wheel"], **ev_kw)
        self._events.on_dom_event(lambda e: self.handle_event(e))
        self._moves = Event(source=self.canvas, watched_events=["mousemove"], wait=30,
                            throttle_or_debounce="throttle", **ev_kw)
        self._moves.on_dom_event(lambda e: self.handle_event(e))

        self.w_play = W.Play(min=0, max=0, step=1, interval=100, description="play")
        self.w_slider = W.IntSlider(min=0, max=0, description="frame", continuous_update=False,
                                    layout=W.Layout(width="420px"))
        W.jslink((self.w_play, "value"), (self.w_slider, "value"))
        self.w_slider.observe(lambda c: self._guard("changing frame", self._slider_changed, c["new"]), "value")
        self.w_frame = W.HTML("")
        b = lambda desc, tip, fn, **kw: self._button(desc, tip, fn, **kw)
        self.w_prev = b("◀", "previous frame (←)", lambda: self.step(-1), width="36px")
        self.w_next = b("▶", "next frame (→)", lambda: self.step(1), width="36px")
        self.w_zin = b("+", "zoom in (+)", lambda: self.zoom(2.0), width="36px")
        self.w_zout = b("−", "zoom out (-)", lambda: self.zoom(0.5), width="36px")
        self.w_zreset = b("1:1", "whole frame (0)", lambda: self.zoom(None), width="44px")
        nav = W.HBox([self.w_play, self.w_prev, self.w_slider, self.w_next, self.w_frame,
                      self.w_zout, self.w_zin, self.w_zreset])

        self.w_objects = W.Select(options=[], rows=6, description="objects")
        self.w_objects.observe(lambda c: self._guard("selecting", self._object_picked, c["new"]), "value")
        self.w_new = b("new (n)", "new object", lambda: self.new_object())
        self.w_delete = b("delete", "delete the selected object and its masks", lambda: self.delete_object())
        self.w_undo = b("undo (z)", "undo the last prompt or edit", lambda: self.undo())
        self.w_redo = b("redo (y)", "redo", lambda: self.redo())
        self.w_name = W.Text(description="name", continuous_update=False, layout=W.Layout(width="240px"))
        self.w_name.observe(lambda c: self._guard("renaming", self._name_edited, c["new"]), "value")
        self.w_label = W.Dropdown(options=[], description="label", layout=W.Layout(width="240px"))
        self.w_label.observe(lambda c: self._guard("relabelling", self._label_edited, c["new"]), "value")
        self.w_color = W.ColorPicker(description="colour", concise=True, layout=W.Layout(width="240px"))
        self.w_color.observe(lambda c: self._guard("recolouring", self._color_edited, c["new"]), "value")
        self.w_alpha = W.FloatSlider(value=self.alpha, min=0, max=1, step=0.05, description="opacity")
        self.w_alpha.observe(lambda c: self._guard("opacity", self.set_style, alpha=c["new"]), "value")
        self.w_contour = W.Checkbox(value=False, description="contour only (c)", indent=False)
        self.w_contour.observe(lambda c: self._guard("contour", self.set_style, contour_only=c["new"]), "value")
        self.w_labels = W.Checkbox(value=False, description="labels", indent=False)
        self.w_labels.observe(lambda c: self._guard("labels", self.set_style, show_labels=c["new"]), "value")
        self.w_auto = W.Checkbox(value=False, description="re-propagate after corrections", indent=False)
        self.w_auto.observe(lambda c: setattr(self, "auto_propagate", bool(c["new"])), "value")
        objects = W.HBox([
            self.w_objects,
            W.VBox([W.HBox([self.w_new, self.w_delete, self.w_undo, self.w_redo]),
                    self.w_name, self.w_label, self.w_color]),
            W.VBox([self.w_alpha, self.w_contour, self.w_labels, self.w_auto]),
        ])

        self.w_fwd = b("propagate ▶ (f)", "track forward", lambda: self.propagate("forward"))
        self.w_back = b("◀ propagate (b)", "track backward", lambda: self.propagate("backward"))
        self.w_both = b("◀ both ▶ (a)", "track both ways", lambda: self.propagate("both"))
        self.w_cancel = b("cancel (Esc)", "stop the running job; results so far stay", lambda: self.cancel(),
                          button_style="warning")
        self.w_progress = W.IntProgress(value=0, min=0, max=1, description="", layout=W.Layout(width="240px"))
        self.w_text = W.Text(placeholder="car. person", description="detect", layout=W.Layout(width="300px"))
        self.w_detect = b("detect", "GroundingDINO boxes -> SAM2 masks", lambda: self.detect(self.w_text.value))
        self.w_push = b("push to CVAT", "dry run first, then confirm", lambda: self.push())
        self.w_confirm = b("confirm push", "send what the dry run listed", lambda: self.confirm_push(),
                           button_style="danger")
        self.w_confirm.layout.display = "none"
        self.w_push_info = W.HTML("")
        self.w_path = W.Text(placeholder="video.mp4 or image folder", description="open",
                             layout=W.Layout(width="360px"))
        self.w_open = b("open", "open another video or folder", lambda: self.open(self.w_path.value, None))
        self.w_help = W.HTML(_help_html())
        self.w_help_box = W.Accordion(children=[self.w_help], titles=("keyboard and mouse (h)",))
        self.w_help_box.selected_index = None
        actions = W.VBox([
            W.HBox([self.w_fwd, self.w_back, self.w_both, self.w_cancel, self.w_progress]),
            W.HBox([self.w_text, self.w_detect, self.w_push, self.w_confirm]),
            self.w_push_info,
            W.HBox([self.w_path, self.w_open]),
        ])
        self.widget = W.VBox([self.w_status, self.canvas, nav, objects, actions, self.w_help_box])
        self.widget.add_class("dl-annotator")
        self.canvas.add_class("dl-annotator-canvas")

    def _button(self, desc: str, tip: str, fn: Callable[[], Any], width: str | None = None,
                button_style: str = "") -> Any:
        import ipywidgets as W

        btn = W.Button(description=desc, tooltip=tip, button_style=button_style,
                       layout=W.Layout(width=width) if width else W.Layout(width="auto"))
        btn.on_click(lambda _b: self._guard(desc, fn))
        return btn

    def _ipython_display_(self) -> None:  # display(annotator) shows the widget
        from IPython.display import display

        display(self.widget if self.has_widgets else repr(self))

    def _setup_canvas(self) -> None:
        assert self.view is not None
        cw, ch = self.view.canvas_size
        self.canvas.width, self.canvas.height = cw, ch
        self.canvas.layout.width = f"{cw}px"
        self.canvas.layout.height = f"{ch}px"
        n = len(self.source)
        self.w_slider.max = self.w_play.max = n - 1
        fps = self.source.media_info().fps or 10.0
        self.w_play.interval = max(10, round(1000.0 / fps))

    # ------------------------------------------------------------------ objects
    def objects(self) -> list[ObjectInfo]:
        return self.store.objects() if self.store is not None else []

    @staticmethod
    def object_title(o: ObjectInfo) -> str:
        name = (o.attributes or {}).get("name")
        return f"{o.id}: {name} [{o.label}]" if name else f"{o.id}: {o.label}"

    def label_names(self) -> list[str]:
        names = [lb.name for lb in self.store.labels()] if self.store is not None else []
        if self.classes is not None:
            names += [n for n in self.classes.names if n not in names]
        return names

    def _colors(self) -> dict[int, str]:
        from ..cv_utils import color_for_index

        return {o.id: o.color or color_for_index(o.id) for o in self.objects()}

    def _sync_objects(self) -> None:
        if not self.has_widgets or self.store is None:
            return
        objs = self.objects()
        opts = [(self.object_title(o), o.id) for o in objs]
        self._syncing = True
        try:
            self.w_objects.options = opts
            self.w_objects.value = self.selected if self.selected in {o.id for o in objs} else None
            o = next((o for o in objs if o.id == self.selected), None)
            self.w_name.value = (o.attributes or {}).get("name", "") if o else ""
            if o is not None and o.label not in self.w_label.options:
                self.w_label.options = [*self.w_label.options, o.label]
            self.w_label.value = o.label if o else None
            self.w_color.value = (self._colors().get(o.id) if o else None) or "#000000"
        finally:
            self._syncing = False

    def _sync_labels(self) -> None:
        if self.has_widgets:
            self._syncing = True
            try:
                self.w_label.options = self.label_names()
            finally:
                self._syncing = False

    def _editing(self) -> bool:
        return not getattr(self, "_syncing", False) and self.selected is not None

    def _object_picked(self, oid: Any) -> None:
        if getattr(self, "_syncing", False) or oid is None:
            return
        self.select(oid)

    def _name_edited(self, v: str) -> None:
        if self._editing():
            self.rename(self.selected, v)  # type: ignore[arg-type]

    def _label_edited(self, v: str | None) -> None:
        if self._editing() and v:
            self.set_label(self.selected, v)  # type: ignore[arg-type]

    def _color_edited(self, v: str) -> None:
        if self._editing() and v:
            self.set_color(self.selected, v)  # type: ignore[arg-type]

    def select(self, object_id: int | None) -> None:
        with self._lock:
            if object_id is not None:
                self.store.get_object(int(object_id))  # unknown id: a clear error
            self.selected = None if object_id is None else int(object_id)
            self._sync_objects()
            self._draw_overlay()

    def _pick_label(self, label: str | None) -> str:
        if label:
            return label
        if self.has_widgets and self.w_label.value and self.selected is not None:
            return str(self.w_label.value)
        names = self.label_names()
        return self.default_label or (names[0] if names else "object")

    def new_object(self, label: str | None = None, *, name: str | None = None, color: str | None = None) -> ObjectInfo | None:
        """Add an object to the store and select it; the next click prompts it."""
        return self._guard("new object", self._new_object, label, name, color)

    def _new_object(self, label: str | None, name: str | None, color: str | None) -> ObjectInfo:
        self._need_store()
        lab = self._pick_label(label)
        if color is None:  # a colour no other object has, so objects of one class stay apart
            color = palette(1, avoid=set(self._colors().values()))[0]
        attrs = {"name": name} if name else {}
        obj = self.store.add_object(lab, color=color, attributes=attrs)
        self.history.push(Action(OBJECT, obj.id, None, _obj_state(obj), f"new object {obj.id}"))
        self.selected = obj.id
        self._sync_objects()
        self._draw_overlay()
        self._say(f"object {obj.id} ({lab}) created: click on it")
        return obj

    def _edit_object(self, oid: int, what: str, **fields: Any) -> ObjectInfo:
        self._need_store()
        before = self.store.get_object(int(oid))
        after = self.store.update_object(int(oid), **fields)
        if _obj_state(before) != _obj_state(after):
            self.history.push(Action(OBJECT, int(oid), _obj_state(before), _obj_state(after),
                                     f"{what} object {oid}"))
        self._sync_objects()
        self._draw_overlay()
        return after

    def rename(self, object_id: int, name: str) -> ObjectInfo | None:
        def run():
            attrs = dict(self.store.get_object(int(object_id)).attributes)
            if name:
                attrs["name"] = str(name)
            else:
                attrs.pop("name", None)
            return self._edit_object(object_id, "rename", attributes=attrs)
        return self._guard("renaming", run)

    def set_label(self, object_id: int, label: str) -> ObjectInfo | None:
        return self._guard("relabelling", self._edit_object, object_id, "relabel", label=str(label))

    def set_color(self, object_id: int, color: str) -> ObjectInfo | None:
        return self._guard("recolouring", self._edit_object, object_id, "recolour", color=color)

    def delete_object(self, object_id: int | None = None) -> bool:
        """Delete an object, its prompts and its masks (undo brings all of them back)."""
        return bool(self._guard("deleting", self._delete_object, object_id))

    def _delete_object(self, object_id: int | None) -> bool:
        self._need_store()
        self._not_busy("delete an object")
        oid = self.selected if object_id is None else int(object_id)
        if oid is None:
            raise InputError("no object selected: pick one in the list first")
        obj = self.store.get_object(oid)
        snapshot = {"object": _obj_state(obj), "instances": self.store.read_object(oid),
                    "prompts": {f: self.prompts.get(oid, f) for f in self.prompts.frames(oid)}}
        self._apply_object(oid, None)
        self.history.push(Action(OBJECT, oid, snapshot, None, f"delete object {oid}"))
        self._say(f"object {oid} deleted (undo brings it back)")
        return True

    def _apply_object(self, oid: int, state: Any) -> None:
        """Make object ``oid`` match ``state`` (None: absent; a dict: fields, plus a snapshot to restore)."""
        if state is None:
            if self.engine is not None:
                self.engine.remove(oid)
            self.prompts.drop_object(oid)
            self.store.delete_object(oid)
            if self.selected == oid:
                self.selected = None
        else:
            fields = state.get("object", state)
            self.store.ensure_object(ObjectInfo(oid, fields["label"], fields["color"], dict(fields["attributes"])))
            if "instances" in state:  # undo of a delete: prompts back into SAM2, then the exact masks
                for f, p in sorted(state["prompts"].items()):
                    if self.engine is not None:
                        self.engine.prompt(f, oid, p)
                    self.prompts.set(oid, f, p)
                self.store.write_frames([(f, [i]) for f, i in sorted(state["instances"].items())])
            self.selected = oid
        self._sync_objects()
        self._show_frame(self.frame)

    # ------------------------------------------------------------------ prompts
    def _need_store(self) -> None:
        if self.store is None:
            raise InputError("nothing is open: call annotator.open('video.mp4') first")

    def _not_busy(self, what: str) -> None:
        if self.worker.busy:
            raise InputError(f"cannot {what} while {self.job} runs: wait, or press Esc / cancel first")

    def _need_engine(self) -> None:
        self._need_store()
        if self.engine is None:
            raise InputError("no SAM2 model loaded: call annotator.load_model('sam2.1_hiera_tiny') "
                             "(or pass sam_model= / model= to Annotator) before clicking")

    def click(self, x: int, y: int, positive: bool = True, *, frame: int | None = None,
              object_id: int | None = None) -> Instance | None:
        """A point prompt at SOURCE pixel (x, y) on the selected object (a new one when none is)."""
        return self._guard("click", self._prompt_point, x, y, positive, frame, object_id)

    def box(self, box: tuple[int, int, int, int], *, frame: int | None = None,
            object_id: int | None = None) -> Instance | None:
        """A box prompt ``(x1, y1, x2, y2)`` in source pixels (exclusive right/bottom)."""
        return self._guard("box", self._prompt_box, box, frame, object_id)

    def _target(self, object_id: int | None) -> int:
        if object_id is not None:
            return int(object_id)
        if self.selected is None or self.selected not in {o.id for o in self.objects()}:
            return self._new_object(None, None, None).id
        return self.selected

    def _prompt_point(self, x: int, y: int, positive: bool, frame: int | None, object_id: int | None) -> Instance:
        self._need_engine()
        self._not_busy("add a prompt")
        f = self.frame if frame is None else int(frame)
        oid = self._target(object_id)
        return self._set_prompt(oid, f, self.prompts.with_point(oid, f, x, y, positive),
                                f"{'positive' if positive else 'negative'} point ({x}, {y})")

    def _prompt_box(self, box: Any, frame: int | None, object_id: int | None) -> Instance:
        self._need_engine()
        self._not_busy("add a prompt")
        f = self.frame if frame is None else int(frame)
        oid = self._target(object_id)
        return self._set_prompt(oid, f, self.prompts.with_box(oid, f, tuple(int(v) for v in box)), f"box {tuple(box)}")

    def _set_prompt(self, oid: int, frame: int, prompt: dict[str, Any], text: str) -> Instance:
        before = self.prompts.get(oid, frame)
        t0 = time.perf_counter()
        inst = self._apply_prompt(oid, frame, prompt)
        self.last_prompt_seconds = time.perf_counter() - t0
        self.history.push(Action(PROMPT, (oid, frame), before, prompt, f"{text} on object {oid}, frame {frame}"))
        if self.auto_propagate and self.engine.can_propagate and len(self.store.frames_done(oid)) > 1:
            # the session dropped the results this keyframe made stale; refill exactly those
            self._propagate("both")
            return inst
        self._say(f"object {oid}, frame {frame}: {text} -> {inst.area} px"
                  f" (score {inst.score:.2f})" if inst.score is not None else
                  f"object {oid}, frame {frame}: {text} -> {inst.area} px")
        return inst

    def _apply_prompt(self, oid: int, frame: int, prompt: dict[str, Any] | None) -> Instance | None:
        assert self.engine is not None
        if is_empty(prompt):
            self.engine.clear(frame, oid)
            inst = None
        else:
            inst = self.engine.prompt(frame, oid, prompt)  # type: ignore[arg-type]
        self.prompts.set(oid, frame, prompt)
        if frame == self.frame:
            self._draw_overlay()
        return inst

    # ------------------------------------------------------------------ undo / redo
    def undo(self) -> bool:
        return bool(self._guard("undo", self._undo_redo, True))

    def redo(self) -> bool:
        return bool(self._guard("redo", self._undo_redo, False))

    def _undo_redo(self, undo: bool) -> bool:
        self._not_busy("undo" if undo else "redo")
        a = self.history.undo() if undo else self.history.redo()
        if a is None:
            self._say(f"nothing to {'undo' if undo else 'redo'}", "warn")
            return False
        state = a.before if undo else a.after
        try:
            if a.kind == PROMPT:
                self._need_engine()
                oid, f = a.target
                self._apply_prompt(oid, f, state)
                if f != self.frame:
                    self.show(f)
            else:
                self._apply_object(a.target, state)
        except BaseException:
            self.history.rollback(a, undone=undo)
            raise
        self._say(f"{'undid' if undo else 'redid'} {a.text}")
        return True

    # ------------------------------------------------------------------ frames and view
    def show(self, frame: int) -> None:
        """Show a source frame number."""
        self._guard(f"showing frame {frame}", self._show_frame, int(frame))

    def step(self, delta: int) -> None:
        if self.source is None:
            return
        i = self.source.index_of(self.frame) + int(delta)
        i = min(max(i, 0), len(self.source) - 1)
        self.show(self.source.frame_number(i))

    def _slider_changed(self, index: int) -> None:
        if getattr(self, "_syncing", False) or self.source is None:
            return
        n = self.source.frame_number(int(index))
        if n != self.frame:
            self._show_frame(n)

    def _show_frame(self, frame: int | None) -> None:
        if self.source is None or frame is None:
            return
        idx = self.source.index_of(frame)
        self.frame = int(frame)
        self._image = self.source[idx]
        self._base = None
        self._fit_view(int(frame))
        if self.has_widgets:
            self._syncing = True
            try:
                self.w_slider.value = idx
            finally:
                self._syncing = False
            self.w_frame.value = f"frame <b>{frame}</b> ({idx + 1}/{len(self.source)})"
        self._draw_frame()
        self._draw_overlay()

    def _fit_view(self, frame: int) -> None:
        """In an image set of mixed sizes each image gets its own geometry: when the shown frame's
        size differs from the view's, the view (fit scale, whole frame) and the canvas follow it."""
        w, h = self.source.frame_size(frame)
        if self.view is not None and (self.view.width, self.view.height) == (w, h):
            return
        self.view = geo.View(w, h, self._scale or geo.fit_scale(w, h, *self.max_size))
        if self.has_widgets:
            self._setup_canvas()

    def zoom(self, factor: float | None, x: float | None = None, y: float | None = None) -> None:
        """Zoom by ``factor`` around display point (x, y) (default: the canvas centre); ``None`` resets."""
        if self.view is None:
            return
        cw, ch = self.view.canvas_size
        if factor is None:
            self.view = geo.reset(self.view)
        else:
            self.view = geo.zoom_at(self.view, factor, cw / 2 if x is None else x, ch / 2 if y is None else y)
        self._base = None
        self._draw_frame()
        self._draw_overlay()

    def set_style(self, *, alpha: float | None = None, contour_only: bool | None = None,
                  show_labels: bool | None = None) -> None:
        if alpha is not None:
            if not 0 <= float(alpha) <= 1:
                raise InputError(f"opacity {alpha} is outside 0..1")
            self.alpha = float(alpha)
        if contour_only is not None:
            self.contour_only = bool(contour_only)
        if show_labels is not None:
            self.show_labels = bool(show_labels)
        self._draw_overlay()

    # ------------------------------------------------------------------ drawing
    def _base_frame(self) -> np.ndarray:
        if self._base is None:
            assert self._image is not None and self.view is not None
            self._base = display_frame(self._image, self.view)
        return self._base

    def instances(self, frame: int | None = None) -> Instances:
        """The store's instances of a frame (the shown one by default)."""
        f = self.frame if frame is None else int(frame)
        return self.store.read_frame(f) if self.store is not None and f is not None else Instances([])

    def rendered(self) -> np.ndarray:
        """The frame with its overlays exactly as composited for the canvas (RGB, canvas size)."""
        if self._image is None or self.view is None:
            raise InputError("nothing is shown: open a video first")
        labels = {o.id: self.object_title(o) for o in self.objects()}
        return render(self._image, self.instances(), self.view, colors=self._colors(), labels=labels,
                      alpha=self.alpha, contour_only=self.contour_only, selected=self.selected,
                      show_labels=self.show_labels, base=self._base_frame())

    def _put(self, layer: int, data: bytes, fallback: Any, at: tuple[int, int] = (0, 0)) -> None:
        """Send an encoded image to a canvas layer at ``at``; the rest of the layer is cleared.

        ipycanvas' own path re-encodes (JPEG 75 / slow PNG), hence the draw command with our bytes.
        """
        c = self.canvas[layer]
        try:
            from ipycanvas.canvas import COMMANDS

            c.clear()
            c._canvas_manager.send_draw_command(c, COMMANDS["putImageData"], [int(at[0]), int(at[1])], [data])
        except Exception:  # a newer ipycanvas: use the public (slower) call
            log.debug("ipycanvas fast path unavailable", exc_info=True)
            c.clear()
            c.put_image_data(fallback() if callable(fallback) else fallback, int(at[0]), int(at[1]))

    def _draw_frame(self) -> None:
        if not self.has_widgets or self._image is None:
            return
        base = self._base_frame()
        self._put(0, encode_jpeg(base), base)

    def _draw_overlay(self) -> None:
        if not self.has_widgets or self._image is None or self.view is None:
            return
        # only the part where something is drawn is built and sent (the rest of the layer is clear),
        # as a palette PNG: a quarter of the bytes to fill and encode of an RGBA layer
        idx, palette, at = overlay_indexed(self.instances(), self.view, colors=self._colors(), alpha=self.alpha,
                                           contour_only=self.contour_only, selected=self.selected)
        self._put(1, encode_indexed_png(idx, palette), lambda: np.asarray(palette, np.uint8)[idx], at)
        self._draw_prompts()

    def _draw_prompts(self) -> None:
        """Prompt markers as rings (the clicked pixel itself stays visible) and boxes, on layer 2."""
        from ipycanvas import hold_canvas

        c = self.canvas[2]
        view = self.view
        with hold_canvas():
            c.clear()
            for oid in self.prompts.objects():
                p = self.prompts.get(oid, self.frame)
                sel = oid == self.selected
                c.line_width = 2 if sel else 1
                for x, y, lab in p["points"]:
                    dx, dy = geo.to_display(view, x + 0.5, y + 0.5)
                    c.stroke_style = "#00e000" if lab else "#ff2020"
                    c.stroke_circle(dx, dy, 6)
                if p["box"] is not None:
                    x1, y1 = geo.to_display(view, p["box"][0], p["box"][1])
                    x2, y2 = geo.to_display(view, p["box"][2], p["box"][3])
                    c.stroke_style = "#ffffff"
                    c.stroke_rect(x1, y1, x2 - x1, y2 - y1)
            if self._drag is not None and self._drag.get("box"):
                x1, y1, x2, y2 = self._drag["box"]
                c.stroke_style = "#ffff00"
                c.set_line_dash([4, 3])
                c.stroke_rect(x1, y1, x2 - x1, y2 - y1)
                c.set_line_dash([])

    # ------------------------------------------------------------------ events
    def _xy(self, ev: dict[str, Any]) -> tuple[float, float]:
        """Event position in canvas pixels (the canvas may be shown scaled by CSS)."""
        x, y = float(ev.get("relativeX", 0.0)), float(ev.get("relativeY", 0.0))
        if self.view is not None:
            cw, ch = self.view.canvas_size
            rw, rh = ev.get("boundingRectWidth"), ev.get("boundingRectHeight")
            if rw and rh and (abs(rw - cw) > 0.5 or abs(rh - ch) > 0.5):
                x, y = x * cw / float(rw), y * ch / float(rh)
        return x, y

    def handle_event(self, ev: dict[str, Any]) -> Any:
        """Handle one ipyevents DOM event dict (``type``, ``relativeX/Y``, ``button``, ``shiftKey``, ``key``...)."""
        return self._guard(f"{ev.get('type', 'event')}", self._handle, ev)

    def _handle(self, ev: dict[str, Any]) -> Any:
        kind = ev.get("type")
        if kind == "keydown":
            return self._key(ev)
        if self.view is None:
            return None
        x, y = self._xy(ev)
        if kind == "mousedown":
            pan = int(ev.get("button", 0)) == 1 or bool(ev.get("altKey"))
            self._drag = {"start": (x, y), "button": int(ev.get("button", 0)), "shift": bool(ev.get("shiftKey")),
                          "pan": pan, "last": (x, y), "box": None}
            return None
        if kind == "mousemove":
            d = self._drag
            if d is None:
                return None
            if d["pan"]:
                lx, ly = d["last"]
                self.view = geo.pan(self.view, x - lx, y - ly)
                d["last"] = (x, y)
                self._base = None
                self._draw_frame()
                self._draw_overlay()
            elif math.hypot(x - d["start"][0], y - d["start"][1]) > DRAG_THRESHOLD and d["button"] == 0:
                sx, sy = d["start"]
                d["box"] = (min(sx, x), min(sy, y), max(sx, x), max(sy, y))
                if self.has_widgets:
                    self._draw_prompts()
            return None
        if kind == "mouseup":
            d, self._drag = self._drag, None
            if d is None or d["pan"]:
                return None
            sx, sy = d["start"]
            if math.hypot(x - sx, y - sy) > DRAG_THRESHOLD:
                if d["button"] != 0:
                    return None  # a right-button drag means nothing
                return self._prompt_box(geo.drag_box(self.view, (sx, sy), (x, y)), None, None)
            p = geo.to_source(self.view, sx, sy)
            if p is None:
                return None
            positive = d["button"] == 0 and not d["shift"]
            if d["button"] not in (0, 2):
                return None
            return self._prompt_point(p[0], p[1], positive, None, None)
        if kind == "wheel":
            dy = float(ev.get("deltaY", 0.0))
            if dy:
                self.zoom(1.25 if dy < 0 else 0.8, x, y)
            return None
        return None  # contextmenu: only prevented (right click is a negative point)

    def _key(self, ev: dict[str, Any]) -> Any:
        key = str(ev.get("key", ""))
        ctrl = bool(ev.get("ctrlKey") or ev.get("metaKey"))
        shift = bool(ev.get("shiftKey"))
        low = key.lower()
        if ctrl and low == "z":
            return self._undo_redo(not shift)
        if ctrl and low == "y":
            return self._undo_redo(False)
        if ctrl:
            return None
        if key == "ArrowLeft":
            return self.step(-1)
        if key == "ArrowRight":
            return self.step(1)
        if key == "Escape":
            if self._drag is not None:
                self._drag = None
                self._draw_prompts() if self.has_widgets else None
                return None
            return self.cancel()
        if key in ("Delete", "Backspace"):
            return self._delete_object(None)
        if key.isdigit() and key != "0":
            objs = self.objects()
            k = int(key) - 1
            if k >= len(objs):
                raise InputError(f"there is no object {key} in the list ({len(objs)} objects)")
            return self.select(objs[k].id)
        if key in ("+", "="):
            return self.zoom(2.0)
        if key == "-":
            return self.zoom(0.5)
        if key == "0":
            return self.zoom(None)
        actions: dict[str, Callable[[], Any]] = {
            "n": lambda: self._new_object(None, None, None),
            "z": lambda: self._undo_redo(True),
            "y": lambda: self._undo_redo(False),
            "f": lambda: self._propagate("forward"),
            "b": lambda: self._propagate("backward"),
            "a": lambda: self._propagate("both"),
            "c": lambda: self._toggle_contour(),
            "h": lambda: self._toggle_help(),
            " ": lambda: self._toggle_play(),
        }
        fn = actions.get(low if low != "" else key)
        return fn() if fn is not None else None

    def _toggle_contour(self) -> None:
        if self.has_widgets:
            self.w_contour.value = not self.w_contour.value  # its observer redraws
        else:
            self.set_style(contour_only=not self.contour_only)

    def _toggle_help(self) -> None:
        if self.has_widgets:
            self.w_help_box.selected_index = None if self.w_help_box.selected_index == 0 else 0

    def _toggle_play(self) -> None:
        if self.has_widgets:
            self.w_play.playing = not self.w_play.playing

    # ------------------------------------------------------------------ background jobs
    def _start(self, name: str, job: Callable[..., Any], cancel: Callable[[], None] | None, total: int) -> None:
        self._not_busy(f"start {name}")
        self.job, self.job_summary = name, None
        self._progress = (0, max(1, total))
        if self.has_widgets:
            self.w_progress.max, self.w_progress.value = max(1, total), 0
            self.w_progress.bar_style = "info"
        self.worker.start(name, job, cancel)
        self._say(f"{name} running in the background (Esc cancels; results appear as they come)")

    def propagate(self, direction: str = "forward") -> bool:
        """Track all prompted objects in the background; frames update live; :meth:`cancel` stops."""
        return bool(self._guard(f"propagate {direction}", self._propagate, direction))

    def _propagate(self, direction: str) -> bool:
        self._need_engine()
        if not self.engine.can_propagate:
            raise InputError("propagation needs a video: this is an image folder (each image is annotated alone)")
        s = self.session
        if direction not in ("forward", "backward", "both"):
            raise InputError(f"direction {direction!r}: use forward, backward or both")
        if not s.object_ids:
            raise InputError("no prompts yet: click on an object first, then propagate")
        n = len(self.source)
        locked = [self.source.index_of(f) for fs in s.locked_frames().values() for f in fs]
        fwd, back = n - 1 - min(locked), max(locked)
        total = {"forward": fwd, "backward": back, "both": fwd + back}[direction]

        def job(emit, cancelled):
            return s.propagate(direction, callback=lambda f, insts: emit("frame", f), progress=False)

        self._start(f"propagate {direction}", job, s.cancel, total)
        return True

    def detect(self, text: str) -> bool:
        """Text prompt -> GroundingDINO boxes -> SAM2 masks, in the background."""
        return bool(self._guard("detect", self._detect, text))

    def _detect(self, text: str) -> bool:
        self._need_engine()
        if not text or not str(text).strip():
            raise InputError("type what to find (e.g. 'car. person') before pressing detect")
        if self.detector is None:
            raise InputError("no detector: pass detector= (dl_utils.dinoal.load_detector(...)) to Annotator")
        from ..dinoal.prompts import parse_prompt
        from ..drivers.options import TrackOptions
        from ..drivers.run import run_into_store

        prompt = parse_prompt(text)
        store, source, video = self.store, self.source, self.engine.can_propagate
        # the one driver path (annotate and detect take it too): the tracker on video, the current image alone
        kw = dict(prompt=prompt, detector=self.detector, table=self.classes, track=TrackOptions(track=video),
                  progress=False)
        if video:
            session = self.session

            def job(emit, cancelled):
                return run_into_store(source, store, session=session, callback=lambda f, insts: emit("frame", f),
                                      **kw)["text"]

            self._start("detect", job, session.cancel, len(source))
        else:
            frame, image, seg = self.frame, self._image, self.engine.segmenter

            def job(emit, cancelled):
                res = run_into_store(source, store, frames=[frame], images={frame: image}, segmenter=seg,
                                     segment=seg is not None, **kw)
                emit("frame", frame)
                return {"detections": res["text"]["detections"]}

            self._start("detect", job, None, 1)
        return True

    def push(self) -> bool:
        """Dry-run a push to CVAT in the background; the summary then offers a Confirm button."""
        return bool(self._guard("push to CVAT", self._push, True))

    def confirm_push(self) -> bool:
        return bool(self._guard("push to CVAT", self._push, False))

    def _push(self, dry_run: bool) -> bool:
        self._need_store()
        if self.cvat is None:
            raise InputError("no CVAT task: pass cvat=(dl_utils.cvat.connect(...), task_id) to Annotator")
        try:
            from ..cvat import push
        except ImportError as e:
            raise InputError(f"CVAT support is not available ({e}); install dl_utils with its cvat extra") from None
        if not dry_run and self.pending_push is None:
            raise InputError("press 'push to CVAT' first: it shows what would change, then confirm")
        conn, task_id = self.cvat
        store = self.store

        def job(emit, cancelled):
            return push(store, conn, int(task_id), dry_run=dry_run)

        self._start("push dry run" if dry_run else "push", job, None, 1)
        return True

    def cancel(self) -> bool:
        """Stop the running job after its current frame; everything written so far stays."""
        with self._lock:
            if not self.worker.cancel():
                self._say("nothing is running", "warn")
                return False
            self._say(f"cancelling {self.job}: finishing the current frame")
            return True

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until the background job ends and apply its results (scripts and tests)."""
        return self.worker.wait(timeout)

    def _on_worker(self, name: str, kind: str, payload: Any) -> None:
        """Messages from the job thread, applied on the kernel's thread (see worker.py)."""
        with self._lock:
            if kind == "frame":
                done, total = self._progress
                self._progress = (done + 1, total)
                if self.has_widgets:
                    self.w_progress.value = min(done + 1, self.w_progress.max)
                if payload == self.frame:
                    self._draw_overlay()
            elif kind == "done":
                self._finish(name, payload)
            elif kind == "error":
                self.job = None
                if self.has_widgets:
                    self.w_progress.bar_style = "danger"
                e = payload
                msg = str(e) if isinstance(e, DlUtilsError) else f"{type(e).__name__}: {e}"
                if not isinstance(e, DlUtilsError):
                    log.error("%s failed", name, exc_info=(type(e), e, e.__traceback__))
                if name.startswith("push"):
                    self.pending_push = None
                    msg = f"CVAT push failed (is the server reachable?): {msg}"
                self._say(f"{name} failed: {msg}; results written so far are kept", "error")
                self._sync_objects()
                self._show_frame(self.frame)

    def _finish(self, name: str, result: Any) -> None:
        self.job, self.job_summary = None, result
        if self.has_widgets:
            self.w_progress.value = self.w_progress.max
            self.w_progress.bar_style = "success"
        if name == "push dry run":
            self.pending_push = result
            if self.has_widgets:
                self.w_push_info.value = f"<b>dry run</b>: {escape(str(result))}"
                self.w_confirm.layout.display = None
            self._say(f"CVAT dry run: {result}; press 'confirm push' to send it")
            return
        if name == "push":
            self.pending_push = None
            if self.has_widgets:
                self.w_push_info.value = f"<b>pushed</b>: {escape(str(result))}"
                self.w_confirm.layout.display = "none"
            self._say(f"pushed to CVAT: {result}")
            return
        status = result.get("status", "done") if isinstance(result, dict) else "done"
        if status == "cancelled":
            self._say(f"{name} cancelled; {self._progress[0]} frames written so far are kept", "warn")
            if self.has_widgets:
                self.w_progress.bar_style = "warning"
        else:
            self._say(f"{name} finished: {self._progress[0]} frames written")
        self._sync_objects()
        self._show_frame(self.frame)

    def __repr__(self) -> str:
        name = self.source.media_info().name if self.source is not None else "nothing open"
        return f"<Annotator {name} frame={self.frame} objects={len(self.objects())}>"


def _obj_state(o: ObjectInfo) -> dict[str, Any]:
    return {"label": o.label, "color": o.color, "attributes": dict(o.attributes or {})}


__all__ = ["DRAG_THRESHOLD", "SHORTCUTS", "Annotator"]
