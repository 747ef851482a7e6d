"""Undo/redo of clicks and object edits, as plain data (no widgets, no models).

Every edit is recorded as an :class:`Action` holding the state *before* and *after* it; undo applies
``before``, redo applies ``after``. Storing states rather than inverse operations keeps the history
trivially correct when an apply step is not exactly invertible (a SAM2 re-run, a store write): the
annotator only needs one ``apply(kind, target, state)`` per kind.

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


__all__ = ["CLICKS", "OBJECT", "PROMPT", "Action", "ClickBook", "History", "LegacyPromptView", "PromptBook"]
