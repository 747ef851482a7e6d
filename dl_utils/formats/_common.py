"""Shared pieces of the format sinks: geometry conversion, shape merging, media and label helpers.

Every exporter turns store instances into one of three geometries (mask, polygon rings, box) and every
importer turns file shapes back into :class:`~dl_utils.annotations.Instance` objects; doing both here
keeps the rules (holes, multi-ring polygons, boxes) identical across CVAT XML and COCO.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from ..annotations import (
    Instance,
    Instances,
    Label,
    MediaInfo,
    ObjectInfo,
    Provenance,
    ShapeType,
    Source,
    box_from_mask,
)
from ..cv_utils import box_to_mask, color_for_index, mask_to_polygons, polygons_to_mask
from ..errors import DlUtilsError, FormatError, InputError, OutputError, mount_point

if TYPE_CHECKING:
    from ..store import StoreReader, StoreReaderWriter

_T = TypeVar("_T")

#: Frames written per ``store.write_frames`` transaction on import (bounded memory, few commits).
WRITE_BATCH = 64


def progress(iterable: Iterable[_T], *, total: int | None = None, desc: str = "") -> Iterator[_T]:
    """A tqdm bar on a terminal, silent elsewhere (``disable=None``)."""
    from tqdm.auto import tqdm

    bar: Iterator[_T] = tqdm(iterable, total=total, desc=desc, disable=None, leave=False)
    return bar


# ---------------------------------------------------------------------------------------- export
@dataclass
class Geometry:
    """One instance as written to a file: exactly one of ``mask``, ``rings``, ``box`` is set."""

    kind: ShapeType
    mask: np.ndarray | None = None
    rings: list[list[float]] | None = None
    box: tuple[float, float, float, float] | None = None


def instance_mask(inst: Instance, height: int, width: int) -> np.ndarray:
    """Full-frame mask of any instance (polygons and boxes rasterised)."""
    if inst.mask is not None:
        return inst.mask
    if inst.polygon:
        return polygons_to_mask(inst.polygon, height, width)
    if inst.box is not None:
        return box_to_mask(inst.box, height, width)
    return np.zeros((height, width), dtype=bool)


def box_ring(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def to_geometry(
    inst: Instance, height: int, width: int, shape: "ShapeType | str | None" = None
) -> Geometry | None:
    """The geometry to write for ``inst``: its own shape, or ``shape`` when given; ``None`` if empty."""
    if inst.is_empty:
        return None
    target = ShapeType(shape) if shape else (inst.shape or ShapeType.MASK)
    if target is ShapeType.MASK:
        m = instance_mask(inst, height, width)
        return Geometry(ShapeType.MASK, mask=m) if m.any() else None
    if target is ShapeType.POLYGON:
        if inst.polygon:
            rings = [list(map(float, r)) for r in inst.polygon]
        elif inst.mask is not None:
            rings = mask_to_polygons(inst.mask)  # holes filled: CVAT/COCO polygons have none
        elif inst.box is not None:
            rings = [box_ring(inst.box)]
        else:
            rings = []
        return Geometry(ShapeType.POLYGON, rings=rings) if rings else None
    box = inst.box
    if box is None and inst.mask is not None:
        box = box_from_mask(inst.mask)
    if box is None:
        return None
    return Geometry(ShapeType.BOX, box=tuple(float(v) for v in box))  # type: ignore[arg-type]


def require_media(store: StoreReader) -> MediaInfo:
    media = store.media
    if media is None:
        raise InputError(
            f"{store.path} has no media record (video or images, size, frame numbers): it was made"
            " without its media; annotate or import it again with its video or image folder (from Python:"
            " store.set_media(source.media_info()))"
        )
    return media


def select_frames(media: MediaInfo, start: int | None, stop: int | None) -> list[int]:
    """Media frames in ``[start, stop]`` (source frame numbers, ``stop`` inclusive)."""
    frames = [
        f for f in media.frames if (start is None or f >= start) and (stop is None or f <= stop)
    ]
    if not frames:
        raise InputError(
            f"no frame of {media.name!r} lies in start={start}, stop={stop} (the media has frames"
            f" {media.frames[0]}..{media.frames[-1]} step {media.step}); widen the range"
            if media.frames
            else f"media {media.name!r} has no frames; nothing to export"
        )
    return frames


def sub_media(media: MediaInfo, frames: list[int]) -> MediaInfo:
    """The media restricted to ``frames`` (an export of a frame range describes only that range)."""
    if frames == list(media.frames):
        return media
    names = None
    if media.frame_names is not None:
        names = [media.frame_name(f) for f in frames]
    step = media.step
    if len(frames) > 1:
        diffs = {b - a for a, b in zip(frames, frames[1:])}
        step = diffs.pop() if len(diffs) == 1 else media.step
    sizes = [media.size_of(f) for f in frames] if media.frame_sizes else None
    return MediaInfo(
        name=media.name, width=media.width, height=media.height, frames=list(frames), fps=media.fps,
        start=frames[0], stop=frames[-1], step=step, frame_names=names, path=media.path,
        frame_sizes=sizes,
    )


def select_objects(store: StoreReader, objects: Iterable[int] | None) -> list[ObjectInfo]:
    all_objs = store.objects()
    if objects is None:
        return all_objs
    wanted = {int(o) for o in objects}
    known = {o.id for o in all_objs}
    missing = sorted(wanted - known)
    if missing:
        raise InputError(
            f"object id(s) {missing} are not in {store.path}; known ids: {sorted(known)}"
        )
    return [o for o in all_objs if o.id in wanted]


def export_labels(store: StoreReader, objects: Sequence[ObjectInfo]) -> list[Label]:
    """The store's labels plus any object label missing from them, each with a colour."""
    labels = list(store.labels())
    names = {lb.name for lb in labels}
    for o in objects:
        if o.label not in names:
            labels.append(Label(o.label))
            names.add(o.label)
    return [
        lb if lb.color else Label(lb.name, color_for_index(i), lb.id, lb.superclass, lb.type, lb.attributes)
        for i, lb in enumerate(labels)
    ]


def iter_store_frames(
    store: StoreReader, frames: list[int], objects: Sequence[ObjectInfo], *, desc: str
) -> Iterator[tuple[int, Instances]]:
    """``(frame, instances)`` for every frame in ``frames`` (empty ``Instances`` where none)."""
    ids = [o.id for o in objects]
    have = iter(store.iter_frames(start=frames[0], stop=frames[-1], objects=ids))
    wanted = set(frames)
    stored: dict[int, Instances] = {}
    nxt = next(have, None)
    for f in progress(frames, desc=desc):
        while nxt is not None and nxt[0] <= f:
            if nxt[0] == f:
                stored[f] = nxt[1]
            elif nxt[0] not in wanted:
                pass  # a stored frame that is not part of the media: not exportable, skipped
            nxt = next(have, None)
        yield f, stored.pop(f, Instances([], frame=f))


def source_of(sources: Iterable[Source]) -> Source:
    """One source for a group of instances (a CVAT track): the common one, else ``semi-auto``."""
    s = set(sources)
    if len(s) == 1:
        return s.pop()
    return Source.SEMI_AUTO if s else Source.MANUAL


def parse_source(value: object) -> Source:
    """CVAT/COCO source strings to ours; CVAT's ``file`` and ``consensus`` count as ``manual``."""
    try:
        return Source(str(value).strip().lower())
    except ValueError:
        return Source.MANUAL


def output_error(
    path: str | os.PathLike[str], e: OSError, *, cls: type[DlUtilsError] = OutputError
) -> DlUtilsError:
    """One-line error for an ``OSError`` while writing ``path``: what happened and what to do."""
    path = Path(path)
    code = e.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        msg = (f"cannot write {path}: no space left on the device; free space on"
               f" {mount_point(path)} or write somewhere else")
    elif code == errno.EROFS:
        msg = f"cannot write {path}: the file system is read-only; choose a writable location"
    elif code in (errno.EACCES, errno.EPERM):
        msg = (f"cannot write {path}: permission denied; choose a writable location or fix the"
               " folder's permissions")
    elif code == errno.EISDIR:
        msg = f"cannot write {path}: it is a folder; give a file path"
    else:
        msg = f"cannot write {path}: {e.strerror or e}"
    return cls(msg)


def output_file(out: str | os.PathLike[str], suffix: str = ".xml") -> Path:
    """The file an export of ``out`` really writes, checked before any work.

    A folder, a device, a pipe or a socket is refused (an export never replaces one); a symlink to
    a regular file is written *through* (the link stays, its target gets the new content); a
    dangling symlink is refused. Parent folders are created.
    """
    out = Path(out)
    if out.is_symlink():
        target = Path(os.path.realpath(out))
        if not target.exists():
            raise OutputError(
                f"{out} is a symlink to {target}, which does not exist; give a file path for --out"
            )
        out = target
    if out.exists():
        st = out.stat()
        if stat.S_ISDIR(st.st_mode):
            example = out / ("annotations" + suffix)
            raise OutputError(f"{out} is a folder; give a file path for --out (e.g. {example})")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(
                f"{out} is not a regular file (a device, pipe or socket); an export writes a file:"
                " give a file path for --out"
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{out.parent} is a file, not a folder; give another path for --out") from None
    except OSError as e:
        raise output_error(out.parent, e) from None
    return out


def _what_is(path: Path) -> str:
    """'a file', 'a device', ... for messages about a path that is in the way."""
    mode = path.stat().st_mode
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a folder"


@contextmanager
def atomic_file(out: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``out``; on success it is flushed, synced and renamed over
    ``out`` (``os.replace``), on any failure removed. ``out`` is checked with :func:`output_file`.
    An interrupted export leaves the previous file as it was and no half file."""
    target = output_file(out)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as e:
        raise output_error(target, e) from None
    try:
        try:
            # the new file keeps the mode of the one it replaces (mkstemp makes 0600)
            os.fchmod(fd, stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~current_umask())
            kw: dict[str, Any] = {} if "b" in mode else {"encoding": "utf-8"}
            with os.fdopen(fd, mode, **kw) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as e:
            raise output_error(target, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(out: Path, data: bytes | str) -> None:
    """Write via a temporary file and rename, so an interrupted export leaves no half file."""
    with atomic_file(out, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def current_umask() -> int:
    """The process umask (read by setting and restoring it): the mode a new file gets where a
    temporary file (always 0600) replaces one that did not exist."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_SWAP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>part|old)-(?P<pid>\d+)(?:-\w+)?$")


def _foreign_entry(folder: Path, own: set[str], own_dir: "re.Pattern[str]") -> Path | None:
    """The first entry (sorted) of ``folder`` that no earlier export of this kind wrote, else None."""
    for e in sorted(folder.iterdir()):
        if e.name in own or (e.is_dir() and not e.is_symlink() and own_dir.match(e.name)):
            continue
        return e
    return None


def _is_export_folder(folder: Path, own: set[str], own_dir: "re.Pattern[str]") -> bool:
    """True when every entry of ``folder`` is something an earlier export of this kind wrote."""
    return _foreign_entry(folder, own, own_dir) is None


def folder_target(out: str | os.PathLike[str], writes: str) -> Path:
    """The absolute folder a folder export writes into: a symlink to a folder is written through
    (the user's link stays), anything else that is not a folder is refused in one line (``writes``
    says what the export writes, for the message), never replaced."""
    p = Path(out)
    if p.is_symlink():
        target = Path(os.path.realpath(p))
        if not target.is_dir():
            raise OutputError(f"{p} is a symlink to {target}, which is not a folder; give a folder for --out")
        p = target
    p = Path(os.path.abspath(p))
    if p.exists() and not p.is_dir():
        raise OutputError(f"{p} is {_what_is(p)}; {writes}, give a folder for --out")
    return p


@contextmanager
def atomic_folder(
    out: str | os.PathLike[str], *, marker: str, own: set[str], own_dir: "re.Pattern[str]"
) -> Iterator[Path]:
    """Build a folder export in a temporary folder beside ``out``, then swap it in.

    The swap renames the old folder aside, renames the new one in and only then removes the old
    one, so the previous export is never deleted before the new one is complete; a kill leaves
    either the old folder or the new one at ``out`` (and a hidden ``.NAME.part-PID``/``.old-PID``
    that the next export of the same folder cleans up or restores). Stale files of an earlier
    export (objects no longer in the store) do not survive. An existing ``out`` must be empty or
    hold only what such an export writes (``marker`` plus ``own``/``own_dir`` entries): any other
    folder is refused, never replaced. A symlink to a folder is written through.
    """
    out = folder_target(out, "this export writes a folder")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(parent, e) from None
    _recover_swaps(parent, out.name)
    if out.is_dir() and any(out.iterdir()) and not (
        (out / marker).is_file() and _is_export_folder(out, own | {marker}, own_dir)
    ):
        first = _foreign_entry(out, own | {marker}, own_dir) if (out / marker).is_file() else None
        why = f"files the export did not write, first: {first}" if first else f"no {marker}"
        raise OutputError(
            f"{out} is a folder holding other files (it is not an earlier export: {why});"
            " give a new or empty folder for --out"
        )
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.part-{os.getpid()}-", dir=parent))
        os.chmod(tmp, 0o777 & ~current_umask())
    except OSError as e:
        raise output_error(out, e) from None
    try:
        yield tmp
        if out.exists():
            old = parent / f".{out.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise output_error(out, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _recover_swaps(parent: Path, name: str) -> None:
    """Clean up after an export of ``parent/name`` killed mid-way (by a process now gone):
    an unfinished ``.part`` folder is removed; an ``.old`` folder is put back when ``name`` is
    missing (killed between the two renames), else removed."""
    for e in parent.iterdir():
        m = _SWAP_RE.match(e.name)
        if not m or m.group("name") != name or _pid_alive(int(m.group("pid"))):
            continue
        if m.group("kind") == "old" and not (parent / name).exists():
            os.rename(e, parent / name)
        else:
            shutil.rmtree(e, ignore_errors=True)


def safe_name(text: str) -> str:
    """A file-name-safe version of a label (Nuke and shells dislike spaces and slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "object"


# ---------------------------------------------------------------------------------------- import
@dataclass
class ParsedShape:
    """One shape read from a file, before it becomes an :class:`Instance`.

    ``data`` is the raw geometry: CVAT RLE points (mask), rings (polygon), ``(x1, y1, x2, y2)`` (box),
    or a COCO RLE dict (``coco_rle``); decoded only when its frame is written, so a long file never
    holds decoded masks for more than one batch of frames.
    """

    kind: str  # "mask" (CVAT points), "coco_rle", "polygon", "box"
    data: Any
    source: Source = Source.MANUAL
    keyframe: bool = False
    score: float | None = None
    where: str = ""


#: ``decode(shape, height, width)``: a ``mask`` / ``coco_rle`` :class:`ParsedShape` as a bool mask.
Decoder = Callable[["ParsedShape", int, int], np.ndarray]


@dataclass
class ObjectKey:
    key: tuple[Any, ...]
    label: str
    preferred_id: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


def assign_object_ids(keys: Sequence[ObjectKey], existing: Iterable[int]) -> dict[tuple[Any, ...], int]:
    """Ids for the objects of a file: the preferred ones (CVAT group, COCO track_id) when free."""
    taken = set(existing)
    out: dict[tuple[Any, ...], int] = {}
    for k in keys:
        p = k.preferred_id
        if p is not None and p >= 0 and p not in taken:
            out[k.key] = p
            taken.add(p)
    nxt = max(taken, default=0) + 1
    for k in keys:
        if k.key not in out:
            out[k.key] = nxt
            taken.add(nxt)
            nxt += 1
    return out


def build_instance(
    object_id: int, shapes: Sequence[ParsedShape], height: int, width: int, decode: Decoder,
    *, box_mask: bool = False, polygon_mask: bool = True, source: Source | None = None,
    provenance: Provenance | None = None,
) -> Instance:
    """One instance from the shapes of one object on one frame.

    One shape maps directly. Several (a multi-ring polygon written as several CVAT polygons of one
    group, or pieces drawn separately): all polygons -> one polygon instance with every ring; any
    other mix -> the union of their masks as a mask instance.

    Shared by the file importers and the CVAT pull (:mod:`dl_utils.cvat.pull`), which passes
    ``box_mask`` / ``polygon_mask`` (rasterise a lone box / polygons: pull's ``rasterize``), its own
    ``source`` rule and the :class:`~dl_utils.annotations.Provenance` of pulled instances (their
    CVAT origin, so a later push never sends them back). ``decode(shape, height, width)`` turns a
    ``mask`` / ``coco_rle`` shape into a bool mask.
    """
    first = shapes[0]
    keyframe = any(s.keyframe for s in shapes)
    scores = [s.score for s in shapes if s.score is not None]
    score = max(scores) if scores else None
    common: dict[str, Any] = dict(object_id=object_id, source=first.source if source is None else source,
                  keyframe=keyframe, score=score, provenance=provenance)
    if len(shapes) == 1 and first.kind == "box":
        return Instance(box=first.data, mask=box_to_mask(first.data, height, width) if box_mask else None,
                        shape=ShapeType.BOX, **common)
    if all(s.kind == "polygon" for s in shapes):
        rings = [r for s in shapes for r in s.data]
        return Instance(
            mask=polygons_to_mask(rings, height, width) if polygon_mask else None, polygon=rings,
            shape=ShapeType.POLYGON, **common,
        )
    mask = np.zeros((height, width), dtype=bool)
    for s in shapes:
        if s.kind == "box":
            mask |= box_to_mask(s.data, height, width)
        elif s.kind == "polygon":
            mask |= polygons_to_mask(s.data, height, width)
        else:
            mask |= decode(s, height, width)
    return Instance(mask=mask, shape=ShapeType.MASK, **common)


def check_geometry(shape: ParsedShape, width: int, height: int, prefix: str) -> None:
    """Refuse a box or polygon that cannot be what the file meant (raises :class:`FormatError`).

    An inverted box (``xbr < xtl`` or ``ybr < ytl``; a COCO bbox with a negative width or height)
    and a box or polygon lying entirely outside its ``width`` x ``height`` image are refused.
    A shape that is only *partly* outside is legal in CVAT (it keeps such boxes as drawn) and is
    kept unchanged: masks made from it are clipped to the image, the coordinates are not.
    """
    xs: Sequence[float]
    ys: Sequence[float]
    if shape.kind == "box":
        x1, y1, x2, y2 = shape.data
        if x2 < x1 or y2 < y1:
            raise FormatError(
                f"{prefix}: {shape.where}: box xtl={x1:g} ytl={y1:g} xbr={x2:g} ybr={y2:g} is inverted"
                f" ({'xbr < xtl' if x2 < x1 else 'ybr < ytl'}); fix its coordinates or re-export the file"
            )
        xs, ys = (x1, x2), (y1, y2)
        what = f"box xtl={x1:g} ytl={y1:g} xbr={x2:g} ybr={y2:g}"
    elif shape.kind == "polygon":
        xs = [v for r in shape.data for v in r[0::2]]
        ys = [v for r in shape.data for v in r[1::2]]
        what = f"polygon spanning x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}"
    else:
        return
    if max(xs) < 0 or min(xs) > width or max(ys) < 0 or min(ys) > height:
        raise FormatError(
            f"{prefix}: {shape.where}: {what} lies entirely outside the {width}x{height} image;"
            " fix its coordinates or remove it"
        )


def merge_labels(store: StoreReaderWriter, file_labels: Sequence[Label], used: Iterable[str]) -> list[str]:
    """Give the store the file's labels (kept as they are when it already has them); returns new names."""
    current = list(store.labels())
    names = {lb.name for lb in current}
    added: list[Label] = []
    for lb in file_labels:
        if lb.name not in names:
            added.append(lb)
            names.add(lb.name)
    for name in used:
        if name not in names:
            added.append(Label(name))
            names.add(name)
    if added:
        store.set_labels(current + added)
    return [lb.name for lb in added]


def check_store_media(store: StoreReaderWriter, media: MediaInfo, where: str) -> MediaInfo:
    """Use ``media`` for a new store; for a store that has media, check the file fits it."""
    mine = store.media
    if mine is None:
        store.set_media(media)
        return media
    if not (mine.mixed_sizes or media.mixed_sizes) and (mine.width, mine.height) != (media.width, media.height):
        raise FormatError(
            f"{where}: frames are {media.width}x{media.height} but {store.path} was made for"
            f" {mine.name!r} at {mine.width}x{mine.height}; import into a new store (--out)"
        )
    extra = sorted(set(media.frames) - set(mine.frames))
    if extra:
        raise FormatError(
            f"{where}: frame(s) {extra[:5]}{'...' if len(extra) > 5 else ''} are not part of"
            f" {mine.name!r} in {store.path} (start={mine.start}, step={mine.step},"
            f" {len(mine.frames)} frames); import into a new store (--out)"
        )
    for f in media.frames:  # an image set: each image keeps its own size
        if mine.size_of(f) != media.size_of(f):
            (a, b), (c, d) = media.size_of(f), mine.size_of(f)
            raise FormatError(
                f"{where}: frame {f} ({media.frame_name(f)}) is {a}x{b} but {c}x{d} in {store.path}"
                f" ({mine.name!r}); import into a new store (--out)"
            )
    return mine


_IMPORTED = Provenance(engine="import")


def write_objects(
    store: StoreReaderWriter,
    keys: Sequence[ObjectKey],
    frames: dict[int, dict[tuple[Any, ...], list[ParsedShape]]],
    media: MediaInfo,
    decode: Decoder,
    *,
    desc: str,
) -> dict[str, Any]:
    """Create the objects and write every frame's instances in batched transactions.

    Each instance is marked ``Provenance(engine="import")``: a shape read from a file is a person's
    (or another tool's) work, which sinks and training-data selection tell from model output."""
    ids = assign_object_ids(keys, (o.id for o in store.objects()))
    for k in keys:
        store.add_object(k.label, id=ids[k.key], attributes=k.attributes or None)
    batch: list[tuple[int, list[Instance]]] = []
    n_inst = 0
    for f in progress(sorted(frames), desc=desc):
        w, h = media.size_of(f)  # each image of a mixed-size set at its own size
        insts = [
            build_instance(ids[key], shapes, h, w, decode, provenance=_IMPORTED)
            for key, shapes in frames[f].items()
        ]
        n_inst += len(insts)
        batch.append((f, insts))
        if len(batch) >= WRITE_BATCH:
            store.write_frames(batch)
            batch = []
    if batch:
        store.write_frames(batch)
    return {"objects": len(keys), "instances": n_inst, "frames": len(frames),
            "object_ids": sorted(ids.values())}


def media_from_frames(
    name: str, width: int, height: int, frames: list[int], names: dict[int, str] | None,
    sizes: dict[int, tuple[int, int]] | None = None,
) -> MediaInfo:
    """A MediaInfo for a set of frame numbers (start, step from their spacing).

    ``sizes`` gives frames whose size differs from ``width`` x ``height`` (images of a mixed set).
    """
    frames = sorted(set(frames))
    diffs = {b - a for a, b in zip(frames, frames[1:])}
    step = diffs.pop() if len(diffs) == 1 else 1
    frame_names = None
    if names and any(names.get(f, f"frame_{f:06d}") != f"frame_{f:06d}" for f in frames):
        frame_names = [names.get(f, f"frame_{f:06d}") for f in frames]
    frame_sizes = [sizes.get(f, (width, height)) for f in frames] if sizes else None
    return MediaInfo(
        name=name, width=width, height=height, frames=frames, start=frames[0] if frames else 0,
        stop=frames[-1] if frames else None, step=step, frame_names=frame_names,
        frame_sizes=frame_sizes,
    )


@dataclass
class ExportSelection:
    """What an exporter writes: the full media, the chosen frames/media slice, objects and labels."""

    media_full: MediaInfo
    frames: list[int]
    media: MediaInfo
    objects: list[ObjectInfo]
    labels: list[Label]


def select_export(
    store: StoreReader, objects: Iterable[int] | None, start: int | None, stop: int | None
) -> ExportSelection:
    """The frame range and objects every exporter starts from, checked the same way for all."""
    media_full = require_media(store)
    frames = select_frames(media_full, start, stop)
    objs = select_objects(store, objects)
    return ExportSelection(media_full, frames, sub_media(media_full, frames), objs,
                           export_labels(store, objs))
