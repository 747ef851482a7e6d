"""Undo/redo of prompts and object edits, as plain data (no widgets, no models).

Every edit is recorded as an :class:`Action` holding the state *before* and *after* it; undo applies
``before``, redo applies ``after``. Storing states rather than inverse operations keeps the history
trivially correct when an apply step is not exactly invertible (a SAM2 re-run, a store write): the
annotator only needs one ``apply(kind, target, state)`` per kind.

:class:`PromptBook` keeps the current prompt of every (object, frame): the clicks and the box the
user gave there, which is what SAM2 needs again on every new click (``VideoSession.add_points``
replaces a frame's earlier clicks).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

#: action kinds the annotator knows how to apply
PROMPT = "prompt"  # target (object_id, frame); state: prompt dict or None
OBJECT = "object"  # target object_id; state: {"label", "color", "attributes"} or None (deleted)


@dataclass(frozen=True)
class Action:
    kind: str
    target: Any
    before: Any
    after: Any
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


def empty_prompt() -> dict[str, Any]:
    return {"points": [], "box": None}


def is_empty(prompt: dict[str, Any] | None) -> bool:
    return prompt is None or (not prompt.get("points") and prompt.get("box") is None)


@dataclass
class PromptBook:
    """Current prompts per (object id, frame): ``{"points": [[x, y, 1|0], ...], "box": [x1, y1, x2, y2] | None}``."""

    prompts: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)

    def get(self, object_id: int, frame: int) -> dict[str, Any]:
        p = self.prompts.get((int(object_id), int(frame)))
        return copy.deepcopy(p) if p is not None else empty_prompt()

    def set(self, object_id: int, frame: int, prompt: dict[str, Any] | None) -> None:
        key = (int(object_id), int(frame))
        if is_empty(prompt):
            self.prompts.pop(key, None)
        else:
            self.prompts[key] = copy.deepcopy(prompt)  # type: ignore[arg-type]

    def with_point(self, object_id: int, frame: int, x: int, y: int, positive: bool) -> dict[str, Any]:
        """The prompt after one more click (not stored: the caller stores it once SAM2 accepted it)."""
        p = self.get(object_id, frame)
        p["points"].append([int(x), int(y), 1 if positive else 0])
        return p

    def with_box(self, object_id: int, frame: int, box: tuple[int, int, int, int]) -> dict[str, Any]:
        """The prompt with its box replaced (the clicks on the frame are kept)."""
        p = self.get(object_id, frame)
        p["box"] = [int(v) for v in box]
        return p

    def frames(self, object_id: int) -> list[int]:
        return sorted(f for o, f in self.prompts if o == int(object_id))

    def objects(self) -> list[int]:
        return sorted({o for o, _ in self.prompts})

    def drop_object(self, object_id: int) -> dict[int, dict[str, Any]]:
        """Forget an object's prompts; return them ({frame: prompt}) so a delete can be undone."""
        out = {f: self.prompts.pop((o, f)) for o, f in list(self.prompts) if o == int(object_id)}
        return out


__all__ = ["OBJECT", "PROMPT", "Action", "History", "PromptBook", "empty_prompt", "is_empty"]
