"""Jupyter annotator widget: click, propagate, detect and push from a notebook (docs/ipy_utils.md).

Only :mod:`.geometry`, :mod:`.history`, :mod:`.render` and :mod:`.worker` are imported eagerly;
:class:`Annotator` (the facade over the controller, the view and the engine adapter, whose widgets need
ipywidgets, ipycanvas and ipyevents) is imported on first use.
"""

from __future__ import annotations

from typing import Any

from .geometry import (
    View,
    drag_box,
    fit_scale,
    footprint,
    pan,
    sample_indices,
    to_display,
    to_source,
    zoom_at,
)
from .history import Action, ClickBook, History, PromptBook
from .render import display_frame, display_mask, overlay_rgba, render
from .worker import Worker

__all__ = [
    "SHORTCUTS",
    "Action",
    "Annotator",
    "ClickBook",
    "History",
    "PromptBook",
    "View",
    "Worker",
    "display_frame",
    "display_mask",
    "drag_box",
    "fit_scale",
    "footprint",
    "overlay_rgba",
    "pan",
    "render",
    "sample_indices",
    "to_display",
    "to_source",
    "zoom_at",
]


def __getattr__(name: str) -> Any:
    if name in ("Annotator", "SHORTCUTS"):
        from . import annotator

        return getattr(annotator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
