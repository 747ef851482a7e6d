"""Train/validation splits by group: one implementation for fine-tuning and the dataset tools.

Frames of one video look alike, so a video split across both sides leaks the training set into the
validation score. :func:`split_groups` therefore puts whole *groups* on one side: a group is a video
(the store's media path) or, for an image set, each image (``by="item"``). The split is decided by a
seeded hash of each group name, not by input order, so the same groups and seed give the same split
whatever order they arrive in, and adding a group moves no other group. A :class:`Split` is saved
next to what it produced (a fine-tuned checkpoint's sidecar, a dataset export) so a later evaluation
uses exactly the same validation set.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .errors import InputError, OutputError

BY = ("group", "item")
#: The sides of a split, in the order of ``--ratios``.
SIDES = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Which groups train, which validate and which test; ``by`` records what a group is ("group" = a
    video or another unit of several frames, "item" = each image on its own).

    ``test`` is empty for a two-sided split (every split written before test sides existed loads as
    one). ``ratios`` are the target shares the split was made for (train, val[, test]); empty for a
    split made by :func:`split_groups` before ratios were recorded."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    seed: int
    val_fraction: float
    by: str  # "group" | "item"
    test: tuple[str, ...] = ()
    ratios: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", tuple(str(g) for g in self.train))
        object.__setattr__(self, "val", tuple(str(g) for g in self.val))
        object.__setattr__(self, "test", tuple(str(g) for g in self.test))
        object.__setattr__(self, "ratios", tuple(float(r) for r in self.ratios))
        if self.by not in BY:
            raise InputError(f"split: by={self.by!r}; use 'group' (whole videos) or 'item' (each image)")
        sides: dict[str, str] = {}
        for name in SIDES:
            for g in getattr(self, name):
                other = sides.setdefault(g, name)
                if other != name:
                    raise InputError(
                        f"split: group {g!r} is on both sides ({other} and {name}); a group belongs to"
                        " one side only: split again (dl-utils dataset split, or split_groups())"
                    )
        # frozen: a plain attribute outside the fields (not compared, not serialised) for O(1) side()
        object.__setattr__(self, "_sides", sides)

    def side(self, group: str) -> str | None:
        """``"train"``, ``"val"``, ``"test"`` or ``None`` for a group the split does not know."""
        return self._sides.get(group)  # type: ignore[attr-defined, no-any-return]

    def groups(self, side: str) -> tuple[str, ...]:
        """The groups of one side by name (``"train"``, ``"val"`` or ``"test"``)."""
        if side not in SIDES:
            raise InputError(f"split: side {side!r} is not known; use one of {', '.join(SIDES)}")
        return getattr(self, side)  # type: ignore[no-any-return]

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {
            "train": list(self.train),
            "val": list(self.val),
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "by": self.by,
        }
        # written only when set, so a two-sided split's record (and a fine-tune run's identity, which
        # holds it) stays what it was before test sides existed
        if self.test:
            d["test"] = list(self.test)
        if self.ratios:
            d["ratios"] = list(self.ratios)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> "Split":
        try:
            train, val, test = d["train"], d["val"], d.get("test", [])
            if not all(isinstance(x, (list, tuple)) for x in (train, val, test)):
                raise TypeError("train, val and test must be lists of group names")
            seed, frac, ratios = d.get("seed", 0), d.get("val_fraction", 0.0), d.get("ratios", [])
            if not isinstance(seed, int) or not isinstance(frac, (int, float)):
                raise TypeError("seed must be an integer and val_fraction a number")
            if not isinstance(ratios, (list, tuple)) or not all(
                isinstance(r, (int, float)) and not isinstance(r, bool) for r in ratios
            ):
                raise TypeError("ratios must be a list of numbers")
            return cls(
                train=tuple(str(g) for g in train),  # type: ignore[union-attr]
                val=tuple(str(g) for g in val),  # type: ignore[union-attr]
                seed=seed,
                val_fraction=float(frac),
                by=str(d.get("by", "group")),
                test=tuple(str(g) for g in test),  # type: ignore[union-attr]
                ratios=tuple(float(r) for r in ratios),
            )
        except (KeyError, TypeError) as e:
            raise InputError(
                f"split: not a split record ({type(e).__name__}: {e}); a split is"
                " {'train': [...], 'val': [...], 'test': [...] (optional), 'seed': int, 'val_fraction':"
                " float, 'by': 'group'|'item'}"
            ) from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the split as JSON, atomically (a temporary file beside ``path``, then renamed)."""
        path = Path(path)
        text = json.dumps(self.to_json(), indent=1) + "\n"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise OutputError(f"cannot write split {path} ({e.strerror or e}); check the folder") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Split":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise InputError(f"cannot read split {path} ({e.strerror or e}); check the path") from None
        except ValueError as e:
            raise InputError(f"split {path} is not JSON ({e}); write it with Split.save") from None
        if not isinstance(d, dict):
            raise InputError(f"split {path} holds a {type(d).__name__}, not a split record")
        try:
            return cls.from_json(d)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None


def group_key(media_path: str | os.PathLike[str], frame_name: str | None = None) -> str:
    """THE split group of a frame: a video's frames all share its media path (they look alike, so
    they must stay on one side); an image of an image folder is its own group,
    ``str(Path(media_path) / frame_name)``. Fine-tuning's samples and the dataset tools both key by
    this, so a split file made by ``dl-utils dataset split`` selects the same frames in ``finetune``."""
    if frame_name is None:
        return str(media_path)
    return str(Path(media_path) / frame_name)


def _rank(group: str, seed: int) -> str:
    """The seeded sort key that decides a group's side: independent of input order and of the
    other groups, and the same on every platform (unlike a numpy permutation across versions)."""
    return hashlib.sha256(f"{seed}\0{group}".encode("utf-8")).hexdigest()


def split_groups(
    groups: Iterable[str], *, val_fraction: float = 0.2, seed: int = 0, by: str = "group"
) -> Split:
    """Split the distinct ``groups`` into train and val, whole groups on one side.

    ``round(n * val_fraction)`` groups (at least one, at most ``n - 1``) go to val: those first in
    the seeded hash order. Refuses (``InputError``) when either side would be empty.
    """
    if by not in BY:
        raise InputError(f"split: by={by!r}; use 'group' (whole videos) or 'item' (each image)")
    if not isinstance(val_fraction, (int, float)) or not 0.0 < float(val_fraction) < 1.0:
        raise InputError(
            f"split: val_fraction={val_fraction!r}; give a fraction between 0 and 1 (e.g. 0.2)"
        )
    unique = sorted({str(g) for g in groups})
    what = "videos (groups)" if by == "group" else "images"
    if len(unique) < 2:
        hint = (
            "split by image instead (by='item'), or add more videos"
            if by == "group"
            else "add more annotated images"
        )
        raise InputError(
            f"split: {len(unique)} {what} cannot give both a training and a validation side (whole"
            f" {what} stay on one side); {hint}"
        )
    n_val = min(max(1, int(math.floor(len(unique) * float(val_fraction) + 0.5))), len(unique) - 1)
    ordered = sorted(unique, key=lambda g: _rank(g, seed))
    val = set(ordered[:n_val])
    return Split(
        train=tuple(g for g in unique if g not in val),
        val=tuple(g for g in unique if g in val),
        seed=int(seed),
        val_fraction=float(val_fraction),
        by=by,
    )


__all__ = ["BY", "SIDES", "Split", "group_key", "split_groups"]
