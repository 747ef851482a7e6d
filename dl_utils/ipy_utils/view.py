"""The annotator's view: the widgets, the canvas layers and the display geometry.

Layout: a status line, the canvas (ipycanvas ``MultiCanvas``: layer 0 the frame, layer 1 the mask
overlays, layer 2 the clicks and the drag rectangle), the frame controls, the object list and the
action rows. :class:`AnnotatorView` is the controller's :class:`~.controller.Listener`: it redraws
what the controller says changed and turns widget callbacks into controller calls; mouse and
keyboard events go through :class:`~.events.InputHandler`. ipywidgets/ipycanvas/ipyevents are imported
only when the widgets are built, so ``widgets=False`` (scripts, tests) keeps the geometry and
:meth:`AnnotatorView.rendered` without them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from . import geometry as geo
from .controller import AnnotatorController, object_title
from .render import display_frame, display_mask, encode_indexed_png, encode_jpeg, overlay_indexed_masks, render

if TYPE_CHECKING:  # pragma: no cover
    from ..annotations import Instance
    from .annotator import Annotator

log = logging.getLogger("dl_utils.ipy_utils")

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
    ("e", "exemplar mode on / off (SAM 3): a drag is an example box, 'more like this one'"),
    ("Shift / Ctrl / right drag in exemplar mode", "an exemplar of what it is not"),
    ("Esc", "cancel the drag, else the running job (what is written stays), else clear the exemplars"),
    ("← / →", "previous / next frame"),
    ("Space", "play / pause"),
    ("c", "contour only on / off"),
    ("h", "show / hide this help"),
]


#: exemplar boxes on the canvas: positive ("like this") green, negative red
EXEMPLAR_COLORS = {True: "#00e000", False: "#ff2020"}


def _help_html() -> str:
    rows = "".join(f"<tr><td><b>{escape(k)}</b></td><td>{escape(v)}</td></tr>" for k, v in SHORTCUTS)
    return f"<table class='dl-help'>{rows}</table>"


class AnnotatorView:
    """Widgets and drawing for one :class:`~.controller.AnnotatorController` (see the module doc).

    Buttons call the facade's public methods, so a button and the matching Python call take the same
    path (and report errors under the same name).
    """

    def __init__(self, controller: AnnotatorController, *, max_size: tuple[int, int], scale: float | None,
                 alpha: float, widgets: bool):
        self.c = controller
        self.max_size, self.scale = max_size, scale
        self.alpha = float(alpha)
        self.contour_only = False
        self.show_labels = False
        self.view: geo.View | None = None
        self.drag_box: tuple[float, float, float, float] | None = None  # display pixels, while dragging
        self.drag_kind = "box"  # what the drag draws: "box" (SAM2 prompt), "positive" / "negative" exemplar
        self.has_widgets = bool(widgets)
        self._base: np.ndarray | None = None
        #: display-size masks of the shown frame per object, and the (frame, view) they were made for:
        #: a click maps only its object's new mask, the others come from here (no store read)
        self._masks: dict[int, np.ndarray] = {}
        self._masks_key: tuple[object, ...] | None = None
        self._syncing = False

    # ------------------------------------------------------------------ building
    def build(self, ann: Annotator) -> None:
        """Build the widgets, wired to ``ann``'s methods."""
        import ipywidgets as W
        from ipycanvas import MultiCanvas

        self.ann = ann
        self.w_status = W.HTML("")
        self.canvas = MultiCanvas(3, width=1, height=1)
        self.canvas.layout.width = "auto"
        self._build_events(ann.handle_event)
        nav = self._build_nav(W)
        objects = self._build_objects(W)
        actions = self._build_actions(W)
        self.w_help = W.HTML(_help_html())
        self.w_help_box = W.Accordion(children=[self.w_help], titles=("keyboard and mouse (h)",))
        self.w_help_box.selected_index = None
        self.widget = W.VBox([self.w_status, self.canvas, nav, objects, actions, self.w_help_box])
        self.widget.add_class("dl-annotator")
        self.canvas.add_class("dl-annotator-canvas")

    def _build_events(self, handle: Callable[[dict[str, Any]], object]) -> None:
        from ipyevents import Event

        ev_kw = {"prevent_default_action": True}
        self._events = Event(source=self.canvas, watched_events=[
            "mousedown", "mouseup", "contextmenu", "keydown", "wheel"], **ev_kw)
        self._events.on_dom_event(handle)
        self._moves = Event(source=self.canvas, watched_events=["mousemove"], wait=30,
                            throttle_or_debounce="throttle", **ev_kw)
        self._moves.on_dom_event(handle)

    def _button(self, desc: str, tip: str, fn: Callable[[], object], width: str | None = None,
                button_style: str = "") -> Any:
        import ipywidgets as W

        btn = W.Button(description=desc, tooltip=tip, button_style=button_style,
                       layout=W.Layout(width=width) if width else W.Layout(width="auto"))
        btn.on_click(lambda _b: self.c.guard(desc, fn))
        return btn

    def _observe(self, widget: Any, what: str, fn: Callable[[Any], object]) -> None:
        widget.observe(lambda ch: self.c.guard(what, fn, ch["new"]), "value")

    def _build_nav(self, W: Any) -> Any:
        ann, b = self.ann, self._button
        self.w_play = W.Play(min=0, max=0, step=1, interval=100, description="play")
        self.w_slider = W.IntSlider(min=0, max=0, description="frame", continuous_update=False,
                                    layout=W.Layout(width="420px"))
        W.jslink((self.w_play, "value"), (self.w_slider, "value"))
        self._observe(self.w_slider, "changing frame", self._slider_changed)
        self.w_frame = W.HTML("")
        self.w_prev = b("◀", "previous frame (←)", lambda: ann.step(-1), width="36px")
        self.w_next = b("▶", "next frame (→)", lambda: ann.step(1), width="36px")
        self.w_zin = b("+", "zoom in (+)", lambda: ann.zoom(2.0), width="36px")
        self.w_zout = b("−", "zoom out (-)", lambda: ann.zoom(0.5), width="36px")
        self.w_zreset = b("1:1", "whole frame (0)", lambda: ann.zoom(None), width="44px")
        return W.HBox([self.w_play, self.w_prev, self.w_slider, self.w_next, self.w_frame,
                       self.w_zout, self.w_zin, self.w_zreset])

    def _build_objects(self, W: Any) -> Any:
        ann, b, obs = self.ann, self._button, self._observe
        self.w_objects = W.Select(options=[], rows=6, description="objects")
        obs(self.w_objects, "selecting", self._object_picked)
        self.w_new = b("new (n)", "new object", lambda: ann.new_object())
        self.w_delete = b("delete", "delete the selected object and its masks", lambda: ann.delete_object())
        self.w_undo = b("undo (z)", "undo the last prompt or edit", ann.undo)
        self.w_redo = b("redo (y)", "redo", ann.redo)
        self.w_name = W.Text(description="name", continuous_update=False, layout=W.Layout(width="240px"))
        obs(self.w_name, "renaming", lambda v: self._edited("rename", name=str(v)))
        self.w_label = W.Dropdown(options=[], description="label", layout=W.Layout(width="240px"))
        obs(self.w_label, "relabelling", lambda v: self._edited("relabel", label=v or None))
        self.w_color = W.ColorPicker(description="colour", concise=True, layout=W.Layout(width="240px"))
        obs(self.w_color, "recolouring", lambda v: self._edited("recolour", color=v or None))
        self.w_alpha = W.FloatSlider(value=self.alpha, min=0, max=1, step=0.05, description="opacity")
        obs(self.w_alpha, "opacity", lambda v: self.set_style(alpha=v))
        self.w_contour = W.Checkbox(value=False, description="contour only (c)", indent=False)
        obs(self.w_contour, "contour", lambda v: self.set_style(contour_only=v))
        self.w_labels = W.Checkbox(value=False, description="labels", indent=False)
        obs(self.w_labels, "labels", lambda v: self.set_style(show_labels=v))
        self.w_auto = W.Checkbox(value=False, description="re-propagate after corrections", indent=False)
        obs(self.w_auto, "re-propagate", lambda v: setattr(self.c, "auto_propagate", bool(v)))
        return W.HBox([
            self.w_objects,
            W.VBox([W.HBox([self.w_new, self.w_delete, self.w_undo, self.w_redo]),
                    self.w_name, self.w_label, self.w_color]),
            W.VBox([self.w_alpha, self.w_contour, self.w_labels, self.w_auto]),
        ])

    def _build_actions(self, W: Any) -> Any:
        ann, b = self.ann, self._button
        self.w_fwd = b("propagate ▶ (f)", "track forward", lambda: ann.propagate("forward"))
        self.w_back = b("◀ propagate (b)", "track backward", lambda: ann.propagate("backward"))
        self.w_both = b("◀ both ▶ (a)", "track both ways", lambda: ann.propagate("both"))
        self.w_cancel = b("cancel (Esc)", "stop the running job; results so far stay", ann.cancel,
                          button_style="warning")
        self.w_progress = W.IntProgress(value=0, min=0, max=1, description="", layout=W.Layout(width="240px"))
        self.w_text = W.Text(placeholder="car. person", description="detect", layout=W.Layout(width="300px"))
        self.w_detect = b("detect", self.c.detect_tip(), lambda: ann.detect(self.w_text.value))
        self.w_exemplar = W.ToggleButton(value=False, description="exemplars (e)",
                                         tooltip="SAM 3: a drag is an example box, 'more like this one' "
                                                 "(Shift/Ctrl/right drag: not like this); detect uses them",
                                         layout=W.Layout(width="auto"))
        self._observe(self.w_exemplar, "exemplar mode", self._exemplar_toggled)
        self.w_clear_exemplars = b("clear exemplars", "forget the exemplar boxes (Esc)", ann.clear_exemplars)
        self.w_push = b("push to CVAT", "dry run first, then confirm", ann.push)
        self.w_confirm = b("confirm push", "send what the dry run listed", ann.confirm_push,
                           button_style="danger")
        self.w_confirm.layout.display = "none"
        self.w_push_info = W.HTML("")
        self.w_path = W.Text(placeholder="video.mp4 or image folder", description="open",
                             layout=W.Layout(width="360px"))
        self.w_open = b("open", "open another video or folder", lambda: ann.open(self.w_path.value, None))
        return W.VBox([
            W.HBox([self.w_fwd, self.w_back, self.w_both, self.w_cancel, self.w_progress]),
            W.HBox([self.w_text, self.w_detect, self.w_exemplar, self.w_clear_exemplars, self.w_push,
                    self.w_confirm]),
            self.w_push_info,
            W.HBox([self.w_path, self.w_open]),
        ])

    # ------------------------------------------------------------------ widget callbacks
    def _slider_changed(self, index: int) -> None:
        src = self.c.source
        if self._syncing or src is None:
            return
        n = src.frame_number(int(index))
        if n != self.c.frame:
            self.c.show_frame(n)

    def _exemplar_toggled(self, on: bool) -> None:
        if not self._syncing and bool(on) != self.c.exemplar_mode:
            self.c.set_exemplar_mode(bool(on))

    def detector_changed(self) -> None:
        """The Detect button names the engine a press runs (the detector or SAM 3 model changed)."""
        if self.has_widgets:
            self.w_detect.tooltip = self.c.detect_tip()

    def _object_picked(self, oid: int | None) -> None:
        if not self._syncing and oid is not None:
            self.c.select(oid)

    def _edited(self, what: str, **field: str | None) -> None:
        """A name/label/colour widget changed by the user (not by a sync): edit the selected object."""
        if self._syncing or self.c.selected is None or ("name" not in field and not any(field.values())):
            return
        self.c.edit_object(self.c.selected, what, **field)

    # ------------------------------------------------------------------ Listener
    def say(self, level: str, text: str) -> None:
        if self.has_widgets:
            color = {"error": "#b00020", "warn": "#8a6d00"}.get(level, "#1b5e20")
            self.w_status.value = f"<span style='color:{color}'>{escape(text)}</span>"

    def media_opened(self) -> None:
        src = self.c.source
        assert src is not None
        media = src.media_info()
        s = self.scale or geo.fit_scale(media.width, media.height, *self.max_size)
        self.view = geo.View(media.width, media.height, s)
        if self.has_widgets:
            self._setup_canvas()
            self._syncing = True
            try:
                self.w_label.options = self.c.label_names()
            finally:
                self._syncing = False

    def frame_shown(self) -> None:
        src, frame = self.c.source, self.c.frame
        assert src is not None and frame is not None
        self._base = None
        self._fit_view(frame)
        if self.has_widgets:
            idx = src.index_of(frame)
            self._syncing = True
            try:
                self.w_slider.value = idx
            finally:
                self._syncing = False
            self.w_frame.value = f"frame <b>{frame}</b> ({idx + 1}/{len(src)})"
        self.draw_frame()
        self.masks_changed()

    def objects_changed(self) -> None:
        if not self.has_widgets or self.c.store is None:
            return
        objs = self.c.objects()
        sel = next((o for o in objs if o.id == self.c.selected), None)
        self._syncing = True
        try:
            self.w_objects.options = [(object_title(o), o.id) for o in objs]
            self.w_objects.value = sel.id if sel else None
            self.w_name.value = (sel.attributes or {}).get("name", "") if sel else ""
            if sel is not None and sel.label not in self.w_label.options:
                self.w_label.options = [*self.w_label.options, sel.label]
            self.w_label.value = sel.label if sel else None
            self.w_color.value = (self.c.colors().get(sel.id) if sel else None) or "#000000"
        finally:
            self._syncing = False

    def chosen_label(self) -> str | None:
        return str(self.w_label.value) if self.has_widgets and self.w_label.value else None

    def job_started(self, total: int) -> None:
        if self.has_widgets:
            self.w_progress.max, self.w_progress.value = total, 0
            self.w_progress.bar_style = "info"

    def job_progress(self, done: int) -> None:
        if self.has_widgets:
            self.w_progress.value = min(done, self.w_progress.max)

    def job_ended(self, outcome: str) -> None:
        if self.has_widgets:
            if outcome != "danger":
                self.w_progress.value = self.w_progress.max
            self.w_progress.bar_style = outcome

    def push_summary(self, title: str, text: str, confirm: bool) -> None:
        if self.has_widgets:
            self.w_push_info.value = f"<b>{escape(title)}</b>: {escape(text)}"
            self.w_confirm.layout.display = None if confirm else "none"

    # ------------------------------------------------------------------ geometry
    def _setup_canvas(self) -> None:
        assert self.view is not None and self.c.source is not None
        cw, ch = self.view.canvas_size
        self.canvas.width, self.canvas.height = cw, ch
        self.canvas.layout.width = f"{cw}px"
        self.canvas.layout.height = f"{ch}px"
        self.w_slider.max = self.w_play.max = len(self.c.source) - 1
        fps = self.c.source.media_info().fps or 10.0
        self.w_play.interval = max(10, round(1000.0 / fps))

    def _fit_view(self, frame: int) -> None:
        """In an image set of mixed sizes each image gets its own geometry: when the shown frame's
        size differs from the view's, the view (fit scale, whole frame) and the canvas follow it."""
        assert self.c.source is not None
        w, h = self.c.source.frame_size(frame)
        if self.view is not None and (self.view.width, self.view.height) == (w, h):
            return
        self.view = geo.View(w, h, self.scale or geo.fit_scale(w, h, *self.max_size))
        if self.has_widgets:
            self._setup_canvas()

    def set_view(self, view: geo.View) -> None:
        """A new zoom or pan: the frame layer is rebuilt."""
        self.view = view
        self._base = None
        self.draw_frame()
        self.masks_changed()

    def zoom(self, factor: float | None, x: float | None = None, y: float | None = None) -> None:
        if self.view is None:
            return
        cw, ch = self.view.canvas_size
        self.set_view(geo.reset(self.view) if factor is None else
                      geo.zoom_at(self.view, factor, cw / 2 if x is None else x, ch / 2 if y is None else y))

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
        self.masks_changed()

    # ------------------------------------------------------------------ drawing
    def base_frame(self) -> np.ndarray:
        if self._base is None:
            assert self.c.image is not None and self.view is not None
            self._base = display_frame(self.c.image, self.view)
        return self._base

    def rendered(self) -> np.ndarray:
        if self.c.image is None or self.view is None:
            raise InputError("nothing is shown: open a video first")
        labels = {o.id: object_title(o) for o in self.c.objects()}
        return render(self.c.image, self.c.instances(), self.view, colors=self.c.colors(), labels=labels,
                      alpha=self.alpha, contour_only=self.contour_only, selected=self.c.selected,
                      show_labels=self.show_labels, base=self.base_frame())

    def put(self, layer: int, data: bytes, fallback: Callable[[], np.ndarray] | np.ndarray,
            at: tuple[int, int] = (0, 0)) -> None:
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

    def draw_frame(self) -> None:
        if not self.has_widgets or self.c.image is None:
            return
        base = self.base_frame()
        self.put(0, encode_jpeg(base), base)

    def _key(self) -> tuple[object, ...]:
        return (self.c.store, self.c.frame, self.view)

    def masks_changed(self) -> None:
        """Redraw the overlay layer from the store, then the clicks: only where something is drawn, as
        a palette PNG (a quarter of the bytes to fill and encode of an RGBA layer)."""
        if not self.has_widgets or self.c.image is None or self.view is None:
            return
        view = self.view
        self._masks = {i.object_id: display_mask(i.mask, view) for i in self.c.instances()
                       if not i.is_empty and i.mask is not None}
        self._masks_key = self._key()
        self._draw_layers({})

    def mask_predicted(self, object_id: int, instance: Instance, timings: dict[str, float]) -> None:
        """A click's mask before the store has it: map just this object's mask to the display, draw
        the overlay from it and the other objects' kept display masks, then the click rings."""
        if not self.has_widgets or self.c.image is None or self.view is None:
            return
        t = time.perf_counter()
        if self._masks_key != self._key():  # another frame, view or store since the last draw
            self._masks = {i.object_id: display_mask(i.mask, self.view) for i in self.c.instances()
                           if not i.is_empty and i.mask is not None}
            self._masks_key = self._key()
        if instance.is_empty or instance.mask is None:
            self._masks.pop(int(object_id), None)
        else:
            self._masks[int(object_id)] = display_mask(instance.mask, self.view)
        timings["overlay"] = time.perf_counter() - t
        self._draw_layers(timings)

    def _draw_layers(self, timings: dict[str, float]) -> None:
        """Layer 1 from :attr:`_masks` (in object id order, as the store reads a frame) and layer 2
        (the clicks), sent as ONE comm message (``hold_canvas``): unheld, ipycanvas sends the layer
        switch, the clear, the image and the rings as four messages, each serialised and written to
        the kernel's socket on its own."""
        from ipycanvas import hold_canvas

        assert self.view is not None
        t = time.perf_counter()
        idx, pal, at = overlay_indexed_masks(sorted(self._masks.items()), self.view.canvas_size,
                                             colors=self.c.colors(), alpha=self.alpha,
                                             contour_only=self.contour_only, selected=self.c.selected)
        t1 = time.perf_counter()
        data = encode_indexed_png(idx, pal)
        t2 = time.perf_counter()
        with hold_canvas():
            self.put(1, data, lambda: np.asarray(pal, np.uint8)[idx], at)
            t3 = time.perf_counter()
            self._click_commands()
            t4 = time.perf_counter()
        t5 = time.perf_counter()
        timings["overlay"] = timings.get("overlay", 0.0) + t1 - t
        timings["encode"], timings["markers"] = t2 - t1, t4 - t3
        timings["send"] = (t3 - t2) + (t5 - t4)

    def draw_clicks(self) -> None:
        """Clicks as rings (the clicked pixel itself stays visible), boxes, the SAM 3 exemplars of the shown
        frame (dashed: green "like this", red "not like this") and the drag rectangle, on layer 2."""
        if not self.has_widgets or self.view is None or self.c.frame is None:
            return
        from ipycanvas import hold_canvas

        with hold_canvas():
            self._click_commands()

    def _click_commands(self) -> None:
        """:meth:`draw_clicks`' canvas commands, for a caller that holds the canvas (one message)."""
        if self.view is None or self.c.frame is None:
            return
        c, view, book = self.canvas[2], self.view, self.c.clicks
        c.clear()
        for oid in book.objects():
            k = book.get(oid, self.c.frame)
            c.line_width = 2 if oid == self.c.selected else 1
            for x, y, lab in k.points:
                dx, dy = geo.to_display(view, x + 0.5, y + 0.5)
                c.stroke_style = "#00e000" if lab else "#ff2020"
                c.stroke_circle(dx, dy, 6)
            if k.box is not None:
                x1, y1 = geo.to_display(view, k.box[0], k.box[1])
                x2, y2 = geo.to_display(view, k.box[2], k.box[3])
                c.stroke_style = "#ffffff"
                c.stroke_rect(x1, y1, x2 - x1, y2 - y1)
        c.line_width = 2
        c.set_line_dash([6, 4])
        for ex in self.c.exemplars.get(self.c.frame, []):
            x1, y1 = geo.to_display(view, ex.box_xyxy[0], ex.box_xyxy[1])
            x2, y2 = geo.to_display(view, ex.box_xyxy[2], ex.box_xyxy[3])
            c.stroke_style = EXEMPLAR_COLORS[ex.positive]
            c.stroke_rect(x1, y1, x2 - x1, y2 - y1)
        if self.drag_box is not None:
            x1, y1, x2, y2 = self.drag_box
            c.stroke_style = {"positive": EXEMPLAR_COLORS[True],
                              "negative": EXEMPLAR_COLORS[False]}.get(self.drag_kind, "#ffff00")
            c.set_line_dash([4, 3])
            c.stroke_rect(x1, y1, x2 - x1, y2 - y1)
        c.set_line_dash([])

    # ------------------------------------------------------------------ view-only keys
    def toggle_contour(self) -> None:
        if self.has_widgets:
            self.w_contour.value = not self.w_contour.value  # its observer redraws
        else:
            self.set_style(contour_only=not self.contour_only)

    def toggle_help(self) -> None:
        if self.has_widgets:
            self.w_help_box.selected_index = None if self.w_help_box.selected_index == 0 else 0

    def toggle_exemplar(self) -> None:
        if self.has_widgets:
            self.w_exemplar.value = not self.w_exemplar.value  # its observer tells the controller
        else:
            self.c.set_exemplar_mode(not self.c.exemplar_mode)

    def toggle_play(self) -> None:
        if self.has_widgets:
            self.w_play.playing = not self.w_play.playing


__all__ = ["EXEMPLAR_COLORS", "SHORTCUTS", "AnnotatorView"]
