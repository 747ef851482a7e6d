"""Distinct, deterministic colours for objects and classes (one palette for overlays and class tables)."""

from __future__ import annotations

import colorsys

from ..annotations import normalize_color

_GOLDEN = 0.618033988749895


def color_for_index(i: int) -> str:
    """The i-th colour of an endless palette: hues spread by the golden ratio, bright and saturated.

    Deterministic so an object keeps its colour across sessions without the colour being stored.
    """
    h = (0.11 + i * _GOLDEN) % 1.0
    s = 0.65 + 0.25 * ((i // 7) % 2)
    v = 0.95 - 0.2 * ((i // 3) % 2)
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return normalize_color((round(r * 255), round(g * 255), round(b * 255)))  # type: ignore[return-value]


def palette(n: int, *, avoid: "set[str] | None" = None) -> list[str]:
    """``n`` distinct ``#rrggbb`` colours, skipping any in ``avoid`` (colours already taken)."""
    taken = {normalize_color(c) for c in (avoid or set())}
    out: list[str] = []
    i = 0
    while len(out) < n:
        c = color_for_index(i)
        if c not in taken:
            out.append(c)
            taken.add(c)
        i += 1
    return out
