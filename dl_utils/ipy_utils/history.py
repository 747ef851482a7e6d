"""Undo/redo of clicks and object edits, as plain data (no widgets, no models).

Every edit is recorded as an :class:`Action` holding the state *before* and *after* it; undo applies
``before``, redo applies ``after``. Storing states rather than inverse operations keeps the history
trivially correct when an apply step is not exactly invertible (a SAM2 re-run, a store write): the
annotator only needs one ``apply(kind, target, state)`` per kind.

A SAM 3 refinement (:data:`SAM3_REFINE`) is one action too, though its states are only the clicked
frame's clicks: the frames it rewrote are put back by SAM 3's session itself
(:meth:`~dl_utils.sam3al.video.Sam3ClickEngine.undo`), which keeps the rows it replaced; redo runs
the refinement again with the ``after`` clicks. Both are background jobs (they write many frames).

:class:`ClickBook` keeps the current clicks of every (object, frame): the points and the box the
user gave there (:class:`~dl_utils.annotations.Clicks`), which is what SAM2 needs again on every new
click (``VideoSession.add_points`` replaces a frame's earlier clicks).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..annotations import Clicks
from ..errors import InputError

EMPTY = Clicks()

#: action kinds the annotator knows how to apply
CLICKS = "clicks"  # target (object_id, frame); state: Clicks (empty: none)
PROMPT = CLICKS  # the earlier name
OBJECT = "object"  # target object_id; state: ObjectState, a DeletedObject snapshot, or None (deleted)
SAM3_REFINE = "sam3-refine"  # target Sam3Refine; state: Clicks of the clicked frame (empty: none)


@dataclass(frozen=True)
class Sam3Refine:
    """What a SAM 3 refinement action refers to: the caption whose SAM 3 session refined (each caption
    has its own :class:`~dl_utils.sam3al.video.Sam3ClickEngine`, and its undo reverts that session's
    latest refine), the store object and the clicked frame."""

    caption: str
    object_id: int
    frame: int


@dataclass(frozen=True)
class Action:
    """One edit; ``target`` and the states are whatever its ``kind`` documents (the applier checks them)."""

    kind: str
    target: object
    before: object
    after: object
    text: str = ""


class History:
    """A linear undo/redo history; a new action after undos drops the redo branch."""

    def __init__(self, limit: int = 200):
        if limit < 1:
            raise InputError(f"history limit {limit!r}: keep at least 1 action")
        self.limit = int(limit)
        self._done: list[Action] = []
        self._undone: list[Action] = []

    def push(self, action: Action) -> None:
        self._done.append(action)
        if len(self._done) > self.limit:
            del self._done[0]
        self._undone.clear()

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    def undo(self) -> Action | None:
        """The action to revert (apply its ``before``), or ``None`` when there is nothing to undo."""
        if not self._done:
            return None
        a = self._done.pop()
        self._undone.append(a)
        return a

    def redo(self) -> Action | None:
        """The action to re-apply (apply its ``after``), or ``None`` when there is nothing to redo."""
        if not self._undone:
            return None
        a = self._undone.pop()
        self._done.append(a)
        return a

    def rollback(self, action: Action, *, undone: bool) -> None:
        """Put an action back where it was when applying it failed (the store is unchanged)."""
        if undone:
            if self._undone and self._undone[-1] is action:
                self._done.append(self._undone.pop())
        elif self._done and self._done[-1] is action:
            self._undone.append(self._done.pop())

    def clear(self) -> None:
        self._done.clear()
        self._undone.clear()

    def drop(self, kind: str) -> int:
        """Forget every action of ``kind`` (done and undone); returns how many.

        Why not clear all: a new SAM 3 Detect closes the SAM 3 sessions whose refinements these
        actions undo, but SAM2 click and object edits stay valid and undoable."""
        n = len(self._done) + len(self._undone)
        self._done[:] = [a for a in self._done if a.kind != kind]
        self._undone[:] = [a for a in self._undone if a.kind != kind]
        return n - len(self._done) - len(self._undone)

    def actions(self, kind: str | None = None) -> list[Action]:
        """The done actions (oldest first), of ``kind`` only when given."""
        return [a for a in self._done if kind is None or a.kind == kind]

    def __len__(self) -> int:
        return len(self._done)


@dataclass
class ClickBook:
    """The current clicks per (object id, frame): what the engine needs again on every new click
    (it replaces a frame's earlier clicks), and what undo restores."""

    clicks: dict[tuple[int, int], Clicks] = field(default_factory=dict)

    def get(self, object_id: int, frame: int) -> Clicks:
        return self.clicks.get((int(object_id), int(frame)), EMPTY)

    def set(self, object_id: int, frame: int, clicks: Clicks | None) -> None:
        key = (int(object_id), int(frame))
        if clicks is None or clicks.is_empty:
            self.clicks.pop(key, None)
        else:
            self.clicks[key] = clicks

    def with_point(self, object_id: int, frame: int, x: int, y: int, positive: bool) -> Clicks:
        """The clicks after one more (not stored: the caller stores them once the engine accepted them)."""
        c = self.get(object_id, frame)
        return replace(c, points=(*c.points, (int(x), int(y), 1 if positive else 0)))

    def with_box(self, object_id: int, frame: int, box: tuple[int, int, int, int]) -> Clicks:
        """The clicks with their box replaced (the points on the frame are kept)."""
        return replace(self.get(object_id, frame), box=(int(box[0]), int(box[1]), int(box[2]), int(box[3])))

    def frames(self, object_id: int) -> list[int]:
        return sorted(f for o, f in self.clicks if o == int(object_id))

    def objects(self) -> list[int]:
        return sorted({o for o, _ in self.clicks})

    def drop_object(self, object_id: int) -> dict[int, Clicks]:
        """Forget an object's clicks; return them ({frame: clicks}) so a delete can be undone."""
        return {f: self.clicks.pop((o, f)) for o, f in list(self.clicks) if o == int(object_id)}


#: the earlier name (the book held free "prompt" dicts then)
PromptBook = ClickBook


class LegacyPromptView:
    """``Annotator.prompts``: the click book read as the ``{"points": [[x, y, 1|0]], "box": [...] | None}``
    dicts older notebooks used; new code reads ``Annotator.clicks`` (typed :class:`Clicks`)."""

    def __init__(self, book: ClickBook):
        self._book = book

    def get(self, object_id: int, frame: int) -> dict[str, Any]:
        c = self._book.get(object_id, frame)
        return {"points": [list(p) for p in c.points], "box": None if c.box is None else list(c.box)}

    def frames(self, object_id: int) -> list[int]:
        return self._book.frames(object_id)

    def objects(self) -> list[int]:
        return self._book.objects()


__all__ = ["CLICKS", "OBJECT", "PROMPT", "SAM3_REFINE", "Action", "ClickBook", "History", "LegacyPromptView",
           "PromptBook", "Sam3Refine"]
