"""Prompts SAM 3 takes besides text, one type for images and video.

:class:`Exemplar` is a box around an example of a concept ("more like this one", ``positive``) or of
what the concept is not (``positive=False``). The image engine (:mod:`.image`) and the video session
(:mod:`.video`) read the same type, so a box drawn in the widget on an image or on a video frame is
one value; ``phrase`` says which caption phrase it shows (needed only when the caption has several)
and ``frame`` which video frame it is drawn on (``None``: the run's first frame; ignored on images).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Exemplar:
    """A box ``(x1, y1, x2, y2)`` in source pixels around an example (``positive``) or a counter
    example of a concept; ``phrase``: the caption phrase it belongs to; ``frame``: the source frame
    number it is drawn on (video only; ``None`` = the run's first frame)."""

    box: tuple[float, float, float, float]
    positive: bool = True
    phrase: str | None = None
    frame: int | None = None

    @property
    def box_xyxy(self) -> tuple[float, float, float, float]:
        """The name the image engine's first Exemplar used for ``box``."""
        return self.box

    def checked_box(self, width: int, height: int, where: str = "image") -> tuple[float, float, float, float]:
        """``box`` as four floats inside a ``width`` x ``height`` picture, or a one-line InputError."""
        try:
            x1, y1, x2, y2 = (float(v) for v in self.box)
        except (TypeError, ValueError):
            raise InputError(f"exemplar box {self.box!r}: give four numbers (x1, y1, x2, y2) in pixels") from None
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise InputError(
                f"exemplar box {self.box!r} is not a box inside the {width}x{height} {where}; "
                "give (x1, y1, x2, y2) in pixels with x1 < x2, y1 < y2"
            )
        return x1, y1, x2, y2


__all__ = ["Exemplar"]
