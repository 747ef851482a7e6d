"""Train/val/test splits by group: one implementation for fine-tuning and the dataset tools.

Frames of one video look alike, so a video split across two sides leaks the training set into the
validation score. Splits here therefore put whole *groups* on one side: a group is a video (the
store's media path) or, for an image set, each image (:func:`group_key` is the rule). Groups are
ordered by a seeded hash of their names, not by input order, so the same groups and seed give the
same split whatever order they arrive in.

* :func:`split_groups` (fine-tuning): train/val of equal groups, the first of the hash order to val;
  adding a group moves at most the boundary group.
* :func:`stratified_split` (``dl-utils dataset split``): train/val[/test] from per-group class counts,
  each class's share of instances on each side brought within a tolerance of the target where the
  groups allow (greedy by rarest class, then improving moves and swaps), with a report naming every
  class that misses and why. Without class counts it is exactly the hash-order rule above.

A :class:`Split` is saved next to what it produced (a fine-tuned checkpoint's sidecar, a split file
for the exports) so a later evaluation uses exactly the same sides.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

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
        """``"train"``, ``"val"``, ``"test"`` or ``None`` for a group the split does not know.

        A group the split does not name as given is looked up as the rule before
        :func:`media_group` named it: a group of a store whose media lies beside it was then named by
        the path as found from the working folder (``stores/videos/a.mp4``), now by its absolute path.
        So a relative name in the split also answers for its absolute path from the current folder,
        and a split file or fine-tuned checkpoint written by the old rule, used from the folder it
        was made in (which the old rule needed anyway), still finds every group."""
        sides: dict[str, str] = self.__dict__["_sides"]
        found = sides.get(group)
        if found is not None:
            return found
        norm = os.path.normpath(group)
        return sides.get(norm) or _aliases(self.__dict__, sides).get(norm)

    def groups(self, side: str) -> tuple[str, ...]:
        """The groups of one side by name (``"train"``, ``"val"`` or ``"test"``)."""
        if side not in SIDES:
            raise InputError(f"split: side {side!r} is not known; use one of {', '.join(SIDES)}")
        groups: tuple[str, ...] = getattr(self, side)
        return groups

    def to_json(self, base: str | os.PathLike[str] | None = None) -> dict[str, object]:
        """The split as a JSON-able record. With ``base`` (a split file's folder), absolute group
        names inside it are written ``./relative/to/base``, so the file keeps working when the
        project folder is copied to another place or machine (:meth:`from_json` resolves them)."""
        def names(groups: tuple[str, ...]) -> list[str]:
            return [_relative_to(g, base) for g in groups] if base is not None else list(groups)

        d: dict[str, object] = {
            "train": names(self.train),
            "val": names(self.val),
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "by": self.by,
        }
        # written only when set, so a two-sided split's record (and a fine-tune run's identity, which
        # holds it) stays what it was before test sides existed
        if self.test:
            d["test"] = names(self.test)
        if self.ratios:
            d["ratios"] = list(self.ratios)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, object], base: str | os.PathLike[str] | None = None) -> "Split":
        """The split of a record; with ``base`` (the split file's folder) a name written
        ``./path`` (:meth:`to_json` with a base) is that path under ``base``, made absolute."""
        def names(groups: object) -> tuple[str, ...]:
            return tuple(_under(str(g), base) for g in groups)  # type: ignore[attr-defined]

        try:
            train, val, test = d["train"], d["val"], d.get("test", [])
            if not (isinstance(train, (list, tuple)) and isinstance(val, (list, tuple))
                    and isinstance(test, (list, tuple))):
                raise TypeError("train, val and test must be lists of group names")
            seed, frac, ratios = d.get("seed", 0), d.get("val_fraction", 0.0), d.get("ratios", [])
            if not isinstance(seed, int) or not isinstance(frac, (int, float)):
                raise TypeError("seed must be an integer and val_fraction a number")
            if not isinstance(ratios, (list, tuple)) or not all(
                isinstance(r, (int, float)) and not isinstance(r, bool) for r in ratios
            ):
                raise TypeError("ratios must be a list of numbers")
            return cls(
                train=names(train),
                val=names(val),
                seed=seed,
                val_fraction=float(frac),
                by=str(d.get("by", "group")),
                test=names(test),
                ratios=tuple(float(r) for r in ratios),
            )
        except (KeyError, TypeError) as e:
            raise InputError(
                f"split: not a split record ({type(e).__name__}: {e}); a split is"
                " {'train': [...], 'val': [...], 'test': [...] (optional), 'seed': int, 'val_fraction':"
                " float, 'by': 'group'|'item'}"
            ) from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the split as JSON, atomically (a temporary file beside ``path``, then renamed).

        As the exports do (``formats._common.output_file``): a symlink is written through (the link
        stays, its target gets the split), a dangling one, a folder or a device is refused."""
        given = path = Path(path)
        if path.is_symlink():
            path = Path(os.path.realpath(path))
            if not path.exists():
                raise OutputError(f"{given} is a symlink to {path}, which does not exist; give a file path for the split")
        if path.exists() and not path.is_file():
            what = "a folder" if path.is_dir() else "not a regular file (a device, pipe or socket)"
            raise OutputError(f"{given} is {what}; give a file path for the split, e.g. split.json")
        text = json.dumps(self.to_json(base=os.path.abspath(path.parent)), indent=1) + "\n"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                os.fchmod(fd, _file_mode(path))  # mkstemp makes 0600: a split is shared like any file
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise OutputError(f"cannot write split {given} ({e.strerror or e}); check the folder") from None
        return given

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
            return cls.from_json(d, base=os.path.abspath(path.parent))
        except InputError as e:
            raise InputError(f"{path}: {e}") from None


def _relative_to(name: str, base: str | os.PathLike[str]) -> str:
    """``./rel`` for an absolute ``name`` inside ``base``; any other name as it is. The ``./`` marks
    it: a group name never starts so (group names are normalised paths), so :func:`_under` knows
    which names to resolve and leaves old-rule relative names alone."""
    b = os.path.abspath(base)
    if os.path.isabs(name) and os.path.commonpath([name, b]) == b and name != b:
        return "./" + Path(os.path.relpath(name, b)).as_posix()
    return name


def _under(name: str, base: str | os.PathLike[str] | None) -> str:
    if base is not None and name.startswith("./"):
        return os.path.normpath(os.path.join(os.path.abspath(base), name))
    return name


def _file_mode(path: Path) -> int:
    """The mode a rewritten file keeps (the old file's), or a new file's (0666 less the umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _aliases(cache: dict[str, object], named: Mapping[str, str]) -> dict[str, str]:
    """Other spellings of the names in ``named`` (name -> value): each name normalised, and each
    relative name made absolute from the current working folder (the folder an old-rule name was
    relative to). A spelling that is itself a name stays that name's; one two names share with
    different values is left out (ambiguous). Cached per working folder in ``cache``."""
    cwd = os.getcwd()
    held = cache.get("_aliases")
    if isinstance(held, tuple) and held[0] == cwd:
        return held[1]
    out: dict[str, str] = {}
    clash: set[str] = set()
    for name, value in named.items():
        spellings = {os.path.normpath(name)}
        if not os.path.isabs(name):
            spellings.add(os.path.abspath(name))
        for sp in spellings - named.keys():
            if out.setdefault(sp, value) != value:
                clash.add(sp)
    for sp in clash:
        del out[sp]
    cache["_aliases"] = (cwd, out)
    return out


class GroupSet:
    """Group names that also answer for the other spellings :meth:`Split.side` accepts (an old-rule
    relative name for its absolute path from the current folder): fine-tuning's ``subset`` of a
    split's side matches its samples' groups through this."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = {str(n): str(n) for n in names}
        self._cache: dict[str, object] = {}

    def __contains__(self, group: object) -> bool:
        if not isinstance(group, str):
            return False
        norm = os.path.normpath(group)
        return group in self.names or norm in self.names or norm in _aliases(self._cache, self.names)


def media_group(recorded: str | None, store_path: str | os.PathLike[str]) -> str:
    """The name a store's media gives its split groups, the same from every working folder.

    * an absolute media path: itself (normalised);
    * a relative one that lies beside the store (media copied or moved with the store): its
      absolute path there, so ``stores/a.sqlite`` typed from one folder and ``a.sqlite`` from
      another name one group, and two stores each beside their own ``clip.mp4`` name two;
    * a relative one that does not (found from the working folder, or gone): as recorded,
      normalised; the same string from every folder;
    * no media path (a COCO import of bare file names): the store's absolute path stands for it.

    Only the store's location and the recorded path decide, never the working folder. Groups named
    by the rule before this one still match through :meth:`Split.side` (see there)."""
    if not recorded:
        return os.path.abspath(store_path)
    if os.path.isabs(recorded):
        return os.path.normpath(recorded)
    beside = os.path.join(os.path.dirname(os.path.abspath(store_path)), recorded)
    if os.path.exists(beside) or (glob.has_magic(recorded) and bool(glob.glob(beside))):
        return os.path.normpath(beside)
    return os.path.normpath(recorded)


def check_distinct_stores(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse one store file given twice (overlapping shell globs, two spellings of one path): the
    dataset tools would count, split and export its frames twice (duplicate training pictures, doubled
    class counts). Two *different* stores of one video are fine (their instances add up)."""
    seen: dict[str, str] = {}
    for p in paths:
        key = os.path.normcase(os.path.realpath(p))
        if key in seen:
            also = "" if seen[key] == str(p) else f" (also as {seen[key]})"
            raise InputError(f"store {p} is given twice{also}; give each store once, else its frames"
                             " are counted and exported twice")
        seen[key] = str(p)


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


def parse_ratios(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.8,0.1,0.1"`` (train, val, test) or ``"0.8,0.2"`` (train, val) as checked shares: two or
    three numbers >= 0 summing to 1 (within 1e-6), train and at least one other side above 0."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        try:
            ratios = tuple(float(p) for p in parts)
        except ValueError:
            raise InputError(
                f"--ratios {text!r}: not numbers; give train,val[,test] shares such as 0.8,0.1,0.1"
            ) from None
        shown = text
    else:
        ratios = tuple(float(r) for r in text)
        shown = ",".join(f"{r:g}" for r in ratios)
    if len(ratios) not in (2, 3):
        raise InputError(
            f"--ratios {shown}: {len(ratios)} value(s); give train,val (0.8,0.2) or train,val,test"
            " (0.8,0.1,0.1)"
        )
    if any(not math.isfinite(r) or r < 0 for r in ratios):
        raise InputError(f"--ratios {shown}: a share is negative or not finite; each share is >= 0")
    total = math.fsum(ratios)
    if abs(total - 1.0) > 1e-6:
        raise InputError(
            f"--ratios {shown}: the shares sum to {total:.6g}, not 1; e.g. 0.8,0.1,0.1 or 0.8,0.2"
        )
    if ratios[0] <= 0 or sum(1 for r in ratios if r > 0) < 2:
        raise InputError(
            f"--ratios {shown}: a split needs a train share above 0 and at least one other side"
            " (val or test) above 0"
        )
    return ratios


def _check_count(n: int, ratios: Sequence[float], by: str) -> None:
    """Refuse when there are fewer distinct groups than sides to fill: whole groups cannot be cut."""
    sides = sum(1 for r in ratios if r > 0)
    if n >= sides:
        return
    if by == "group":
        what = "video (group)" if n == 1 else "videos (groups)"
        # fewer sides is a way out only from three: two (train and val) is the least a split has
        fewer = ", or give fewer sides (e.g. --ratios 0.8,0.2)" if sides > 2 else ""
        hint = f"whole videos stay on one side (by='item' splits image sets only): add more videos{fewer}"
    else:
        what = "image" if n == 1 else "images"
        hint = "add more annotated images"
    names = [SIDES[i] for i, r in enumerate(ratios) if r > 0]
    shown = " and ".join(names) if len(names) < 3 else f"{names[0]}, {names[1]} and {names[2]}"
    raise InputError(f"split: {n} {what} cannot fill {sides} sides ({shown}); {hint}")


def _side_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """Groups per side for ``n`` equal groups: each share rounded (half up), every non-zero side at
    least one group, train the rest (and at least one)."""
    counts = [0] * len(ratios)
    for i in range(1, len(ratios)):
        if ratios[i] > 0:
            counts[i] = max(1, int(math.floor(n * ratios[i] + 0.5)))
    while sum(counts[1:]) > n - 1:  # train keeps one: take from the largest other side
        i = max(range(1, len(counts)), key=lambda k: (counts[k], -k))
        counts[i] -= 1
    counts[0] = n - sum(counts[1:])
    return counts


def _make_split(sides: Sequence[Iterable[str]], ratios: Sequence[float], seed: int, by: str) -> Split:
    parts = [tuple(sorted(g)) for g in sides]
    return Split(
        train=parts[0],
        val=parts[1],
        seed=int(seed),
        val_fraction=float(ratios[1]),
        by=by,
        test=parts[2] if len(parts) > 2 else (),
        ratios=tuple(float(r) for r in ratios) if len(ratios) > 2 else (),
    )


def _by_rank(unique: Sequence[str], ratios: Sequence[float], seed: int, by: str) -> Split:
    """Equal groups: the first groups of the seeded hash order fill val, the next test, the rest
    train. Adding a group moves at most the boundary groups, and input order never matters."""
    counts = _side_counts(len(unique), ratios)
    ordered = sorted(unique, key=lambda g: _rank(g, seed))
    val = ordered[: counts[1]]
    test = ordered[counts[1] : counts[1] + (counts[2] if len(counts) > 2 else 0)]
    taken = set(val) | set(test)
    sides: list[list[str]] = [[g for g in unique if g not in taken], val]
    if len(ratios) > 2:
        sides.append(test)
    return _make_split(sides, ratios, seed, by)


def split_groups(
    groups: Iterable[str], *, val_fraction: float = 0.2, seed: int = 0, by: str = "group"
) -> Split:
    """Split the distinct ``groups`` into train and val, whole groups on one side.

    ``round(n * val_fraction)`` groups (at least one, at most ``n - 1``) go to val: those first in
    the seeded hash order. Refuses (``InputError``) when either side would be empty. This is
    :func:`stratified_split` for groups that carry no class counts (every group weighs the same).
    """
    if by not in BY:
        raise InputError(f"split: by={by!r}; use 'group' (whole videos) or 'item' (each image)")
    if not isinstance(val_fraction, (int, float)) or not 0.0 < float(val_fraction) < 1.0:
        raise InputError(
            f"split: val_fraction={val_fraction!r}; give a fraction between 0 and 1 (e.g. 0.2)"
        )
    f = float(val_fraction)
    return stratified_split({str(g): GroupCounts() for g in groups}, SplitOptions((1.0 - f, f), seed, by)).split


# ----------------------------------------------------------------------------- stratified splits
@dataclass(frozen=True)
class GroupCounts:
    """What one group holds: its frames (images) and its instances per class."""

    frames: int = 1
    instances: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitOptions:
    """How to split: target shares (train, val[, test]; :func:`parse_ratios`), the seed, what a
    group is, and how far (absolute share) a class's share on a side may be from its target."""

    ratios: tuple[float, ...] = (0.8, 0.2)
    seed: int = 0
    by: str = "group"
    tolerance: float = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", parse_ratios(tuple(self.ratios)))
        if self.by not in BY:
            raise InputError(f"split: by={self.by!r}; use 'group' (whole videos) or 'item' (each image)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"split: seed={self.seed!r}; give a whole number")
        if not (isinstance(self.tolerance, (int, float)) and 0.0 <= float(self.tolerance) < 1.0):
            raise InputError(f"--tolerance {self.tolerance!r}: give a share between 0 and 1, e.g. 0.05")


@dataclass(frozen=True)
class ClassShare:
    """One class's instances on each side of a split, against the target."""

    name: str
    instances: int
    groups: int  # how many groups hold the class
    counts: tuple[int, ...]  # instances per side
    shares: tuple[float, ...]  # counts / instances per side
    within: bool  # every side within tolerance of its target
    why: str | None = None  # why it misses (None when within)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "instances": self.instances, "groups": self.groups,
                "counts": list(self.counts), "shares": [round(s, 6) for s in self.shares],
                "within": self.within, "why": self.why}


@dataclass(frozen=True)
class SplitReport:
    """The split and how well it met its targets: per-class shares, frames and groups per side."""

    split: Split
    ratios: tuple[float, ...]
    tolerance: float
    classes: tuple[ClassShare, ...]
    frames: tuple[int, ...]  # frames (images) per side
    groups: tuple[int, ...]  # groups per side

    @property
    def sides(self) -> tuple[str, ...]:
        return SIDES[: len(self.ratios)]

    def misses(self) -> list[ClassShare]:
        """The classes with a side outside the tolerance (each with its reason)."""
        return [c for c in self.classes if not c.within]

    def to_json(self) -> dict[str, object]:
        return {
            "sides": list(self.sides),
            "ratios": list(self.ratios),
            "tolerance": self.tolerance,
            "seed": self.split.seed,
            "by": self.split.by,
            "groups": list(self.groups),
            "frames": list(self.frames),
            "classes": [c.to_json() for c in self.classes],
            "missed": [c.name for c in self.misses()],
        }

    def table(self) -> str:
        """Per-class achieved shares, one row per class, then the frames and groups rows."""
        sides = self.sides
        width = max([len("frames")] + [len(c.name) for c in self.classes])
        head = f"{'class':<{width}}  {'instances':>9}  {'groups':>6}  " + "  ".join(
            f"{s + ' ' + _pct(r):>12}" for s, r in zip(sides, self.ratios)
        )
        rows = [head, "-" * len(head)]
        for c in self.classes:
            cells = "  ".join(f"{format(sh, '.1%') + ('' if c.within else ' !'):>12}" for sh in c.shares)
            rows.append(f"{c.name:<{width}}  {c.instances:>9}  {c.groups:>6}  {cells}")
        nf = sum(self.frames) or 1
        rows.append(f"{'frames':<{width}}  {'':>9}  {'':>6}  " + "  ".join(
            f"{format(f / nf, '.1%') + f' ({f})':>12}" for f in self.frames))
        rows.append(f"{'groups':<{width}}  {'':>9}  {sum(self.groups):>6}  " + "  ".join(
            f"{g:>12}" for g in self.groups))
        misses = self.misses()
        if misses:
            rows.append(f"{len(misses)} class(es) miss the tolerance of {_pct(self.tolerance)} (marked !):")
            rows += [f"  {c.name}: {c.why}" for c in misses]
        elif self.classes:
            rows.append(f"every class is within {_pct(self.tolerance)} of its target share on every side")
        return "\n".join(rows)


def _pct(x: float) -> str:
    """0.125 -> "12.5%", 0.1 -> "10%": a ratio or tolerance as the user gave it."""
    return f"{round(x * 100, 4):g}%"


#: Weight of a share outside the tolerance against one inside it (squared distances): the search
#: first brings classes within tolerance, then centres them.
_OUTSIDE = 20.0


def stratified_split(groups: Mapping[str, GroupCounts], options: SplitOptions) -> SplitReport:
    """Whole groups to sides so each class's share of instances on each side is near its target.

    When no group holds an instance, the groups are placed by the seeded hash order, exactly as
    :func:`split_groups` does. Otherwise: the groups in seeded hash order, those holding the rarest
    classes first (groups without instances last, placed by their frames), each go to the side
    furthest below its target for the group's rarest class (iterative stratification); a non-zero
    side left empty gets its cheapest group; then single moves and pairwise swaps that lower the
    summed squared distance of every class's (and the frames') share to the target, distances beyond
    the tolerance weighing ``_OUTSIDE`` times more, until none does. Deterministic for a seed and
    independent of input order. Refuses fewer groups than non-zero sides.
    """
    ratios, by, seed = options.ratios, options.by, options.seed
    names = sorted({str(g) for g in groups})
    counts = {str(g): c for g, c in groups.items()}
    _check_count(len(names), ratios, by)
    classes = sorted({c for g in names for c, n in counts[g].instances.items() if n > 0})
    if not classes:
        split = _by_rank(names, ratios, seed, by)
        return _report(split, counts, classes, options)
    order = sorted(names, key=lambda g: _rank(g, seed))
    col = {c: j for j, c in enumerate(classes)}
    n = np.zeros((len(order), len(classes) + 1), dtype=np.float64)  # last column: frames
    for i, g in enumerate(order):
        for c, k in counts[g].instances.items():
            if k > 0:
                n[i, col[c]] = k
        n[i, -1] = max(0, int(counts[g].frames))
    side = _greedy(n, ratios)
    side = _improve(n, side, ratios, options.tolerance)
    parts: list[list[str]] = [[] for _ in ratios]
    for g, s in zip(order, side):
        parts[int(s)].append(g)
    return _report(_make_split(parts, ratios, seed, by), counts, classes, options)


def _totals(n: np.ndarray) -> np.ndarray:
    k = n.sum(axis=0)
    k[k == 0] = 1.0  # a column without weight (no frames counted) never divides by zero
    return k


def _greedy(n: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    """Iterative stratification: rarest-class groups first, each to the side most short of it."""
    r = np.asarray(ratios)
    k = _totals(n)
    total = n[:, :-1].sum(axis=0)
    held = n[:, :-1] > 0
    # a group's rarest class: the one with the fewest instances in all; groups without classes last
    rarest = np.where(held, total[None, :], np.inf).argmin(axis=1)
    rarity = np.where(held.any(axis=1), total[rarest], np.inf)
    order = sorted(range(len(n)), key=lambda i: (rarity[i], -n[i, rarest[i]] if held[i].any() else 0, i))
    t = np.zeros((len(r), n.shape[1]))
    side = np.zeros(len(n), dtype=np.int64)
    open_sides = r > 0
    for i in order:
        j = rarest[i] if held[i].any() else n.shape[1] - 1
        want = r * k[j] - t[:, j]  # how far each side is below its target for this column
        frames = r * k[-1] - t[:, -1]
        cand = [s for s in range(len(r)) if open_sides[s]]
        s = max(cand, key=lambda s: (round(want[s] / k[j], 12), round(frames[s] / k[-1], 12), -s))
        side[i] = s
        t[s] += n[i]
    return side


def _cost_rows(t: np.ndarray, k: np.ndarray, r: float, tol: float) -> np.ndarray:
    """Cost of side totals ``t`` (rows x columns) against target share ``r``, one value per row."""
    dev = np.abs(t / k - r)
    out = np.maximum(dev - tol, 0.0)
    return (dev * dev + _OUTSIDE * out * out).sum(axis=-1)


def _improve(n: np.ndarray, side: np.ndarray, ratios: Sequence[float], tol: float) -> np.ndarray:
    """Best-improvement local search: the best single move while one lowers the cost, else the best
    pairwise swap (bounded: at most ``_SWAP_PAIRS`` pairs per pair of sides), until neither does.
    Non-zero sides keep at least one group; zero sides stay empty."""
    side = side.copy()
    r = list(ratios)
    k = _totals(n)
    live = [s for s in range(len(r)) if r[s] > 0]
    t = np.stack([n[side == s].sum(axis=0) for s in range(len(r))])
    for b in live:  # a non-zero side the greedy pass left empty gets the group that costs least there
        if (side == b).any():
            continue
        base = {s: float(_cost_rows(t[s][None, :], k, r[s], tol)[0]) for s in live}
        best: tuple[float, int] | None = None
        for a in live:
            on_a = np.flatnonzero(side == a)
            if len(on_a) <= 1:
                continue
            delta = (_cost_rows(t[a] - n[on_a], k, r[a], tol) - base[a]
                     + _cost_rows(t[b] + n[on_a], k, r[b], tol) - base[b])
            i = int(delta.argmin())
            if best is None or delta[i] < best[0]:
                best = (float(delta[i]), int(on_a[i]))
        assert best is not None  # _check_count: at least as many groups as non-zero sides
        g = best[1]
        t[side[g]] -= n[g]
        t[b] += n[g]
        side[g] = b
    for _ in range(4 * len(n) + 100):
        base = {s: float(_cost_rows(t[s][None, :], k, r[s], tol)[0]) for s in live}
        act = _best_move(n, side, t, k, r, tol, live, base) or _best_swap(n, side, t, k, r, tol, live, base)
        if act is None:
            break
        if act[0] == "move":
            g, b = act[1], act[2]
            t[side[g]] -= n[g]
            t[b] += n[g]
            side[g] = b
        else:
            g, h = act[1], act[2]
            a, b = side[g], side[h]
            t[a] += n[h] - n[g]
            t[b] += n[g] - n[h]
            side[g], side[h] = b, a
    return side


#: An action must lower the cost (squared share distances) by more than this to be taken: smaller
#: gains are share changes far below a tenth of a percent and would only cost time.
_GAIN = 1e-9
#: Candidate swaps evaluated per pair of sides and step (numpy blocks), so a 10,000-image split stays
#: in seconds; swaps only run once no single move helps.
_SWAP_PAIRS = 100_000


def _best_move(n: np.ndarray, side: np.ndarray, t: np.ndarray, k: np.ndarray, r: list[float], tol: float,
               live: list[int], base: dict[int, float]) -> tuple[str, int, int] | None:
    best, act = -_GAIN, None
    for a in live:
        on_a = np.flatnonzero(side == a)
        if len(on_a) <= 1:  # a move keeps every non-zero side non-empty
            continue
        ca = _cost_rows(t[a] - n[on_a], k, r[a], tol) - base[a]
        for b in live:
            if a == b:
                continue
            delta = ca + _cost_rows(t[b] + n[on_a], k, r[b], tol) - base[b]
            i = int(delta.argmin())
            if delta[i] < best:
                best, act = float(delta[i]), ("move", int(on_a[i]), b)
    return act


def _best_swap(n: np.ndarray, side: np.ndarray, t: np.ndarray, k: np.ndarray, r: list[float], tol: float,
               live: list[int], base: dict[int, float]) -> tuple[str, int, int] | None:
    best, act = -_GAIN, None
    for a in live:
        for b in live:
            if b <= a:
                continue
            on_a, on_b = np.flatnonzero(side == a), np.flatnonzero(side == b)
            if len(on_a) == 0 or len(on_b) == 0:
                continue
            # groups with the same counts swap to no effect: keep one of each distinct row per side
            on_a = on_a[np.unique(n[on_a], axis=0, return_index=True)[1]]
            on_b = on_b[np.unique(n[on_b], axis=0, return_index=True)[1]]
            rows = max(1, _SWAP_PAIRS // len(on_b))
            for lo in range(0, min(len(on_a), rows), 256):
                ga = on_a[lo : min(lo + 256, rows)]
                diff = n[ga][:, None, :] - n[on_b][None, :, :]  # what a gives b
                delta = (_cost_rows(t[a] - diff, k, r[a], tol) - base[a]
                         + _cost_rows(t[b] + diff, k, r[b], tol) - base[b])
                i, j = np.unravel_index(int(delta.argmin()), delta.shape)
                if delta[i, j] < best:
                    best, act = float(delta[i, j]), ("swap", int(ga[i]), int(on_b[j]))
    return act


def _report(split: Split, counts: Mapping[str, GroupCounts], classes: Sequence[str],
            options: SplitOptions) -> SplitReport:
    ratios, tol = options.ratios, options.tolerance
    sides = SIDES[: len(ratios)]
    frames = tuple(sum(max(0, int(counts[g].frames)) for g in split.groups(s)) for s in sides)
    ngroups = tuple(len(split.groups(s)) for s in sides)
    live = sum(1 for r in ratios if r > 0)
    rows = []
    for c in classes:
        per = [sum(int(counts[g].instances.get(c, 0)) for g in split.groups(s)) for s in sides]
        total = sum(per)
        holders = [int(counts[g].instances.get(c, 0)) for g in counts if counts[g].instances.get(c, 0) > 0]
        shares = tuple(p / total if total else 0.0 for p in per)
        within = all(abs(sh - r) <= tol + 1e-9 for sh, r in zip(shares, ratios))
        why = None
        if not within:
            largest = max(holders) / total
            if len(holders) < live:
                why = (f"too few groups: {len(holders)} group(s) hold its {total} instance(s), fewer"
                       f" than the {live} sides; annotate it in more videos/images")
            elif largest > tol:
                why = (f"too few groups: {len(holders)} group(s) hold its {total} instance(s) and the"
                       f" largest holds {largest:.0%}; whole groups move together, so its shares come in"
                       " steps that large")
            else:
                why = (f"{len(holders)} group(s) hold it, but they also hold the other classes and no"
                       " assignment found keeps every class within tolerance (the closest found)")
        rows.append(ClassShare(c, total, len(holders), tuple(per), shares, within, why))
    return SplitReport(split, tuple(ratios), float(tol), tuple(rows), frames, ngroups)


__all__ = [
    "BY", "SIDES", "ClassShare", "GroupCounts", "GroupSet", "Split", "SplitOptions", "SplitReport",
    "check_distinct_stores", "group_key", "media_group", "parse_ratios", "split_groups", "stratified_split",
]
