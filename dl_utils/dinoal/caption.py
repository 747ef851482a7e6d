"""The detector's caption (its text) and the mapping of caption phrases to the job's class table.

"Caption" is the one word for the text GroundingDINO reads ("prompt" also means clicks, a box prompt
and the PROMPTS.json file elsewhere in dl_utils). GroundingDINO reads one caption,
``"car. person. traffic light."``: phrases separated by ``.``, lower case, ending with ``.`` (what
upstream's ``preprocess_caption`` makes of a user's text). Every box
it returns carries a probability per caption *token*; :func:`phrase_index_of_tokens` tells which
phrase each token belongs to, so a box's label is the phrase with the highest token probability,
not the decoded text above ``text_threshold`` (that text is kept as ``phrases`` for display, but it
can be empty, a fragment such as ``"traffic"`` or two phrases glued together).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..classes import ClassTable, UnknownClassError, _closest, _list_names
from ..cv_utils.colors import palette
from ..errors import InputError

ON_UNKNOWN = ("warn", "error", "keep")
_SPLIT = re.compile(r"[.\n]+")


class UnknownPhraseWarning(UserWarning):
    """A caption phrase matches no class of the table; its detections are dropped."""


@dataclass(frozen=True)
class Caption:
    """A parsed caption: unique phrases in order; ``text`` is what the model reads."""

    phrases: tuple[str, ...]

    @property
    def text(self) -> str:
        return ". ".join(self.phrases) + "."

    @property
    def caption(self) -> str:
        """``text`` under its pre-rename name (code written against ``Prompt.caption`` reads it)."""
        return self.text

    def __str__(self) -> str:
        return self.text

    def __len__(self) -> int:
        return len(self.phrases)


def parse_caption(text: str | Sequence[str] | Caption | None) -> Caption:
    """``"Car. person.  traffic light"`` → phrases ``("car", "person", "traffic light")``.

    Phrases are split on ``.`` (and new lines), lower-cased, stripped, inner spaces collapsed and
    duplicates dropped (first kept). A list of phrases is accepted too. An empty caption raises
    :class:`InputError` before any model is loaded. (Messages still say "prompt": the CLI's
    wording is a contract.)
    """
    if isinstance(text, Caption):
        return text
    if text is None:
        raise InputError("no prompt: give the objects to find, e.g. --text \"car. person. traffic light\"")
    parts = [text] if isinstance(text, str) else list(text)
    phrases: list[str] = []
    seen: set[str] = set()
    for part in parts:
        if not isinstance(part, str):
            raise InputError(f"prompt phrase {part!r} is not text; give strings such as 'car'")
        for raw in _SPLIT.split(part):
            p = " ".join(raw.lower().split())
            if p and p not in seen:
                seen.add(p)
                phrases.append(p)
    if not phrases:
        raise InputError(
            f"the prompt {text!r} names no object; give phrases separated by '.', e.g. "
            "\"car. person. traffic light\""
        )
    return Caption(tuple(phrases))


# Pre-rename names, kept importable: notebooks and other modules (the widget, the auto-annotation
# function, drivers/run.py) import them; new code uses Caption / parse_caption.
Prompt = Caption
parse_prompt = parse_caption


def phrase_index_of_tokens(input_ids: Sequence[int], dot_id: int, special_ids: Iterable[int]) -> np.ndarray:
    """For each caption token, the index of the phrase it belongs to; -1 for ``.``/[CLS]/[SEP]/pad.

    The caption is ``p0 . p1 . p2 .`` so phrase ``k`` is the run of tokens after the ``k``-th ``.``
    (the same split GroundingDINO's sub-sentence attention mask uses).
    """
    special = {int(i) for i in special_ids}
    out = np.full(len(input_ids), -1, dtype=np.int64)
    k = 0
    for pos, tid in enumerate(input_ids):
        tid = int(tid)
        if tid == dot_id:
            k += 1
        elif tid not in special:
            out[pos] = k
    return out


def phrase_scores(token_probs: np.ndarray, token_phrase: np.ndarray, n_phrases: int) -> np.ndarray:
    """``(N, P)``: per detection, the highest token probability inside each phrase."""
    n = token_probs.shape[0]
    out = np.zeros((n, n_phrases), dtype=np.float32)
    t = min(token_probs.shape[1], token_phrase.shape[0])
    for k in range(n_phrases):
        cols = np.flatnonzero(token_phrase[:t] == k)
        if cols.size:
            out[:, k] = token_probs[:, cols].max(axis=1)
    return out


@dataclass(frozen=True)
class PhraseLabel:
    """What one caption phrase becomes: a class name (``None``: drop its boxes) and the class id."""

    phrase: str
    label: str | None
    class_id: int = -1
    color: str | None = None


class LabelMapper:
    """Maps caption phrases to labels the CVAT task knows.

    With a class table, a phrase resolves through :meth:`ClassTable.resolve` (names, synonyms,
    plurals); ``superclass=True`` then labels it with the class's superclass (when it has one), for
    tasks annotated at the coarser level. A phrase with no class is handled per ``on_unknown``:
    ``"warn"`` (an :class:`UnknownPhraseWarning`, its boxes dropped), ``"error"``
    (:class:`~dl_utils.classes.UnknownClassError` before the model runs) or ``"keep"`` (labelled
    with the phrase itself, class id -1). Without a table every phrase is its own label.
    """

    def __init__(self, classes: ClassTable | None = None, *, on_unknown: str = "warn",
                 superclass: bool = False):
        if on_unknown not in ON_UNKNOWN:
            raise InputError(f"on_unknown={on_unknown!r}: use one of {', '.join(ON_UNKNOWN)}")
        if classes is not None and not isinstance(classes, ClassTable):
            raise InputError(
                f"classes must be a ClassTable (dl_utils.classes.ClassTable.load(path)), got "
                f"{type(classes).__name__}"
            )
        self.classes = classes
        self.on_unknown = on_unknown
        self.superclass = bool(superclass)
        self._cache: dict[tuple[str, ...], list[PhraseLabel]] = {}

    def map(self, caption: Caption) -> list[PhraseLabel]:
        """One :class:`PhraseLabel` per phrase (warnings/errors raised once per caption)."""
        hit = self._cache.get(caption.phrases)
        if hit is not None:
            return hit
        out: list[PhraseLabel] = []
        unknown: list[str] = []
        if self.classes is None:
            colors = palette(len(caption.phrases))
            out = [PhraseLabel(p, p, -1, c) for p, c in zip(caption.phrases, colors)]
        else:
            for p in caption.phrases:
                info = self.classes.resolve(p)
                if info is not None and self.superclass and info.superclass:
                    info = self.classes[info.superclass]
                if info is None:
                    unknown.append(p)
                    out.append(PhraseLabel(p, p if self.on_unknown == "keep" else None, -1, None))
                else:
                    out.append(PhraseLabel(p, info.name, info.id, info.color))
        if unknown:
            self._report(unknown)
        self._cache[caption.phrases] = out
        return out

    def _report(self, unknown: list[str]) -> None:
        table = self.classes
        assert table is not None
        hints = []
        for p in unknown:
            close = _closest(p, table.names)
            hints.append(f"{p!r}" + (f" (did you mean {close!r}?)" if close else ""))
        what = (
            f"prompt phrase(s) {', '.join(hints)} match no class of {table.source} "
            f"(classes: {_list_names(table.names)})"
        )
        if self.on_unknown == "error":
            raise UnknownClassError(
                f"{what}; add them to the table (as classes or synonyms), fix the prompt, or pass "
                "on_unknown='warn' (drop their boxes) / 'keep' (label them with the phrase)"
            )
        if self.on_unknown == "warn":
            warnings.warn(
                f"{what}; their boxes are dropped (add them as synonyms, or on_unknown='keep' to label "
                "them with the phrase)",
                UnknownPhraseWarning,
                stacklevel=4,
            )


__all__ = [
    "ON_UNKNOWN",
    "Caption",
    "LabelMapper",
    "PhraseLabel",
    "Prompt",
    "UnknownPhraseWarning",
    "parse_caption",
    "parse_prompt",
    "phrase_index_of_tokens",
    "phrase_scores",
]
