"""Mouse and keyboard events (the dicts ipyevents sends) -> controller and view calls.

Input comes from ipyevents because ipycanvas' own mouse events carry no button or modifier. A press
and release closer than :data:`DRAG_THRESHOLD` display pixels is a click, farther a box; the middle
button or Alt pans. In exemplar mode (``e``) a drag is a SAM 3 exemplar box instead of a SAM2 box
prompt: "more like this one", or with Shift, Ctrl or the right button "not like this". Positions are mapped to source pixels with the exact mapping of :mod:`.geometry`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from . import geometry as geo
from .controller import AnnotatorController
from .view import AnnotatorView

#: display pixels a mouse must move between press and release to make a box rather than a click
DRAG_THRESHOLD = 4.0

#: an ipyevents DOM event: type, relativeX/Y, button, shiftKey, ctrlKey, altKey, key, deltaY, ...
Event = dict[str, Any]


@dataclass
class Drag:
    """A mouse button held down on the canvas (display pixels)."""

    start: tuple[float, float]
    button: int
    shift: bool
    pan: bool
    last: tuple[float, float]
    ctrl: bool = False
    exemplar: bool = False  # exemplar mode was on at the press: the drag draws an exemplar box

    @property
    def negative(self) -> bool:
        """An exemplar of what the concept is not: Shift, Ctrl (Cmd) or the right button."""
        return self.shift or self.ctrl or self.button == 2


class InputHandler:
    """Turns events into calls; stateful only for the drag in progress."""

    def __init__(self, controller: AnnotatorController, view: AnnotatorView):
        self.c, self.v = controller, view
        self.drag: Drag | None = None

    def _xy(self, ev: Event) -> tuple[float, float]:
        """Event position in canvas pixels (the canvas may be shown scaled by CSS)."""
        x, y = float(ev.get("relativeX", 0.0)), float(ev.get("relativeY", 0.0))
        if self.v.view is not None:
            cw, ch = self.v.view.canvas_size
            rw, rh = ev.get("boundingRectWidth"), ev.get("boundingRectHeight")
            if rw and rh and (abs(rw - cw) > 0.5 or abs(rh - ch) > 0.5):
                x, y = x * cw / float(rw), y * ch / float(rh)
        return x, y

    def handle(self, ev: Event) -> object:
        kind = ev.get("type")
        if kind == "keydown":
            return self.key(ev)
        if self.v.view is None:
            return None
        x, y = self._xy(ev)
        if kind == "mousedown":
            button = int(ev.get("button", 0))
            pan = button == 1 or bool(ev.get("altKey"))
            self.drag = Drag((x, y), button, bool(ev.get("shiftKey")), pan, (x, y),
                             ctrl=bool(ev.get("ctrlKey") or ev.get("metaKey")),
                             exemplar=self.c.exemplar_mode and not pan)
        elif kind == "mousemove":
            self._move(x, y)
        elif kind == "mouseup":
            return self._release(x, y)
        elif kind == "wheel":
            dy = float(ev.get("deltaY", 0.0))
            if dy:
                self.v.zoom(1.25 if dy < 0 else 0.8, x, y)
        return None  # contextmenu: only prevented (right click is a negative point)

    def _move(self, x: float, y: float) -> None:
        d, view = self.drag, self.v.view
        if d is None or view is None:
            return
        if d.pan:
            lx, ly = d.last
            d.last = (x, y)
            self.v.set_view(geo.pan(view, x - lx, y - ly))
        elif math.hypot(x - d.start[0], y - d.start[1]) > DRAG_THRESHOLD and (
                d.button == 0 or (d.exemplar and d.button == 2)):
            sx, sy = d.start
            self.v.drag_box = (min(sx, x), min(sy, y), max(sx, x), max(sy, y))
            self.v.drag_kind = ("negative" if d.negative else "positive") if d.exemplar else "box"
            self.v.draw_clicks()

    def _release(self, x: float, y: float) -> object:
        d, self.drag = self.drag, None
        self.v.drag_box = None
        view = self.v.view
        if d is None or d.pan or view is None:
            return None
        sx, sy = d.start
        if d.exemplar:
            if math.hypot(x - sx, y - sy) <= DRAG_THRESHOLD or d.button not in (0, 2):
                self.v.draw_clicks()
                self.c.say("exemplar mode: drag a box around an example (e: back to clicks)", "warn")
                return None
            box = geo.drag_box(view, (sx, sy), (x, y))
            self.v.draw_clicks()
            return self.c.add_exemplar(box, not d.negative, None)
        if math.hypot(x - sx, y - sy) > DRAG_THRESHOLD:
            if d.button != 0:
                return None  # a right-button drag means nothing
            return self.c.add_box(geo.drag_box(view, (sx, sy), (x, y)), None, None)
        p = geo.to_source(view, sx, sy)
        if p is None or d.button not in (0, 2):
            return None
        return self.c.add_point(p[0], p[1], d.button == 0 and not d.shift, None, None)

    def key(self, ev: Event) -> object:
        key = str(ev.get("key", ""))
        ctrl = bool(ev.get("ctrlKey") or ev.get("metaKey"))
        low = key.lower()
        if ctrl:
            if low in ("z", "y"):
                return self.c.undo_redo(low == "z" and not ev.get("shiftKey"))
            return None
        if key == "Escape":
            if self.drag is not None:
                self.drag, self.v.drag_box = None, None
                self.v.draw_clicks()
                return None
            if not self.c.jobs.busy and self.c.exemplars:  # a job first: stopping it matters more
                return self.c.clear_exemplars()
            return self.c.jobs.cancel()
        if key.isdigit() and key != "0":
            self._select_nth(int(key))
            return None
        fn = self._keys().get(low if low != "" else key) or self._keys().get(key)
        return fn() if fn is not None else None

    def _select_nth(self, n: int) -> None:
        objs = self.c.objects()
        if n > len(objs):
            raise InputError(f"there is no object {n} in the list ({len(objs)} objects)")
        self.c.select(objs[n - 1].id)

    def _keys(self) -> dict[str, Callable[[], object]]:
        c, v = self.c, self.v
        return {
            "ArrowLeft": lambda: c.step(-1),
            "ArrowRight": lambda: c.step(1),
            "Delete": lambda: c.delete_object(None),
            "Backspace": lambda: c.delete_object(None),
            "+": lambda: v.zoom(2.0),
            "=": lambda: v.zoom(2.0),
            "-": lambda: v.zoom(0.5),
            "0": lambda: v.zoom(None),
            "n": lambda: c.new_object(None, None, None),
            "z": lambda: c.undo_redo(True),
            "y": lambda: c.undo_redo(False),
            "f": lambda: c.jobs.propagate("forward"),
            "b": lambda: c.jobs.propagate("backward"),
            "a": lambda: c.jobs.propagate("both"),
            "c": v.toggle_contour,
            "e": v.toggle_exemplar,
            "h": v.toggle_help,
            " ": v.toggle_play,
        }


__all__ = ["DRAG_THRESHOLD", "Drag", "InputHandler"]
