"""Matte sequences for compositors: one numbered image per source frame, as a Read/Loader node reads.

``export_mattes(store, out, pattern="mask_%04d.png")`` writes ``out/mask_1001.png``... numbered by the
store's source frame numbers (shot numbers when the store was made with them). A Nuke Read node or a
Fusion Loader reads a sequence over a frame range and treats a missing number as an error (or holds
the previous frame), so every frame of the range gets a file, black where nothing is masked, unless
``skip_empty``.

Unlike png-masks (a folder this module owns whole), a matte folder is usually shared with the shot's
other renders, so files are written one by one (temporary name, then rename) beside files that are
not ours. A hidden manifest, :data:`MANIFEST`, records what earlier matte exports wrote (name, size,
mtime): only such files are replaced silently; anything else in the way needs ``force`` and a
symlink, device or folder in the way is always refused. A matte edited by hand since the export
(another size or mtime) counts as the user's file again.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import cv2
import numpy as np
from PIL import Image

from ..annotations import Instances, MediaInfo, ObjectInfo
from ..errors import InputError, OutputError
from ._common import (
    _pid_alive,
    current_umask,
    _what_is,
    folder_target,
    instance_mask,
    iter_store_frames,
    output_error,
    require_media,
    safe_name,
    select_frames,
    select_objects,
    write_atomic,
)

if TYPE_CHECKING:
    from ..store import StoreReader

#: Hidden file in ``out`` listing the files matte exports wrote there (and may therefore replace).
MANIFEST = ".dl-utils-mattes.json"
#: The EXR channel a matte is written to: alpha, what Nuke's and Fusion's mask inputs read by default.
EXR_CHANNEL = "A"
BIT_DEPTHS = (8, 16)
FIELDS = ("object", "label")

_TOKEN = re.compile(r"%%|%(?P<pad>0\d+)?d|(?P<hashes>#+)|\{\{|\}\}|\{(?P<field>[^{}]*)\}|%|\{|\}")
_TEMP_RE = re.compile(r"^\.(?P<name>.+\.(?:png|exr))\.part-(?P<pid>\d+)-\w+$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------- pattern
@dataclass(frozen=True)
class MattePattern:
    """A parsed file name pattern: literal text, exactly one frame field and optional object fields.

    ``parts`` holds ``("text", s)``, ``("frame", width)`` (0 = no padding), ``("object", "")`` and
    ``("label", "")``. Parsing it once up front lets every error be raised before a file is written.
    """

    text: str
    parts: tuple[tuple[str, Any], ...]
    frame_width: int
    has_object: bool
    has_label: bool

    @classmethod
    def parse(cls, text: str, *, exr: bool = False) -> "MattePattern":
        """Parse ``text``: printf ``%04d`` / ``%d`` or a run of ``#`` (its length is the padding) for
        the frame, ``{object}`` (object id) and ``{label}`` (label, file-name-safe); ``%%``, ``{{``
        and ``}}`` are literal. Raises :class:`InputError` naming the pattern and the fix."""
        if not text:
            raise InputError("--pattern is empty; give a file name with a frame field, e.g. mask_%04d.png")
        parts: list[tuple[str, Any]] = []
        frames: list[str] = []
        pos = 0
        for m in _TOKEN.finditer(text):
            if m.start() > pos:
                parts.append(("text", text[pos:m.start()]))
            tok = m.group(0)
            pos = m.end()
            if tok in ("%%", "{{", "}}"):
                parts.append(("text", tok[0]))
            elif tok.startswith("%") and tok.endswith("d"):
                pad = m.group("pad")
                parts.append(("frame", int(pad) if pad else 0))
                frames.append(tok)
            elif m.group("hashes"):
                parts.append(("frame", len(tok)))
                frames.append(tok)
            elif m.group("field") is not None:
                name = m.group("field")
                if name not in FIELDS:
                    raise InputError(
                        f"--pattern {text!r}: unknown field {tok}; the fields are {{object}} (object id)"
                        " and {label}, the frame is %04d, %d or ####"
                    )
                parts.append((name, ""))
            else:
                bad = text[m.start():m.start() + 3]
                raise InputError(
                    f"--pattern {text!r}: {bad!r} is not a field; the frame is %04d, %d or ####, a"
                    " literal % is %%, literal braces are {{ and }}"
                )
        if pos < len(text):
            parts.append(("text", text[pos:]))
        if not frames:
            raise InputError(
                f"--pattern {text!r} has no frame field; add %04d or #### (e.g. mask_%04d.png) so each"
                " frame gets its own file"
            )
        if len(frames) > 1:
            raise InputError(
                f"--pattern {text!r} has {len(frames)} frame fields ({', '.join(frames)}); give exactly one"
            )
        if os.path.isabs(text) or any(p == ".." for p in re.split(r"[/\\]", text)):
            raise InputError(
                f"--pattern {text!r} must be a path inside --out (no leading / and no '..'); put the"
                " folder in --out"
            )
        tail = text.rsplit("/", 1)[-1]
        if tail.startswith(".") or not tail.strip() or text.endswith("/"):
            raise InputError(f"--pattern {text!r}: the file name must not be empty or hidden (start with '.')")
        ext = ".exr" if exr else ".png"
        if not text.lower().endswith(ext):
            hint = " (pass --exr for OpenEXR)" if text.lower().endswith(".exr") else ""
            raise InputError(f"--pattern {text!r} must end in {ext}{hint}, e.g. mask_%04d{ext}")
        width = next(v for k, v in parts if k == "frame")
        return cls(text, tuple(parts), width, any(k == "object" for k, _ in parts),
                   any(k == "label" for k, _ in parts))

    def render(self, frame: int | None, object_id: int | None = None, label: str | None = None) -> str:
        """The file name for ``frame`` (``None``: keep the frame as printf ``%0Nd``, for readers)."""
        out: list[str] = []
        for kind, v in self.parts:
            if kind == "text":
                out.append(str(v))
            elif kind == "frame":
                if frame is None:
                    out.append(f"%0{v}d" if v else "%d")
                else:
                    out.append(f"{frame:0{v}d}" if v else str(frame))
            elif kind == "object":
                out.append("{object}" if object_id is None else str(object_id))
            else:
                out.append("{label}" if label is None else safe_name(label))
        return "".join(out)

    @property
    def canonical(self) -> str:
        """The pattern with the frame as printf (``mask_####.png`` and ``mask_%04d.png`` are one)."""
        out: list[str] = []
        for kind, v in self.parts:
            if kind == "text":
                out.append(str(v).replace("%", "%%").replace("{", "{{").replace("}", "}}"))
            elif kind == "frame":
                out.append(f"%0{v}d" if v else "%d")
            else:
                out.append("{" + kind + "}")
        return "".join(out)


# ---------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class MatteOptions:
    """How a matte is made from masks; checked by :meth:`check` before anything is read or written."""

    bit_depth: int = 8
    dilate: int = 0
    feather: int = 0
    exr: bool = False

    def check(self) -> None:
        if self.bit_depth not in BIT_DEPTHS:
            raise InputError(f"--bit-depth {self.bit_depth}: use 8 or 16")
        if self.exr and self.bit_depth != 16:
            raise InputError(
                f"--bit-depth {self.bit_depth} with --exr: EXR mattes are half floats (16 bits);"
                " leave --bit-depth out or use 16"
            )
        for name, v in (("--dilate", self.dilate), ("--feather", self.feather)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise InputError(f"{name} {v!r}: give a whole number of pixels >= 0")

    @property
    def max_value(self) -> int:
        return 65535 if self.bit_depth == 16 else 255


def disk(radius: int) -> np.ndarray:
    """The pixels within ``radius`` of the centre (Euclidean), as a ``(2r+1, 2r+1)`` uint8 kernel.

    Dilation and feathering share this support (rather than OpenCV's ``MORPH_ELLIPSE``, whose
    rounding differs, and a separable Gaussian, whose support is a square): that is what makes
    the exact statements of :func:`make_matte` hold."""
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    inside: np.ndarray = x * x + y * y <= radius * radius
    return inside.astype(np.uint8)


def make_matte(mask: np.ndarray, opts: MatteOptions) -> np.ndarray:
    """A float32 matte in [0, 1] from a bool mask: grown by ``dilate`` pixels, then feathered by
    ``feather`` pixels.

    ``dilate`` D: a pixel becomes matte when a mask pixel lies within D pixels of it (a disk of
    radius D: the elliptical kernel with equal axes). ``feather`` F: a Gaussian blur of sigma F/3
    truncated to a disk of radius F and normalised, so the soft ramp is centred on the (dilated)
    edge and reaches exactly F pixels each side: a pixel farther than F from the edge is exactly 0
    or 1 (no grey haze far out), and ``dilate=N, feather=N`` keeps the original mask fully opaque
    with the whole soft fringe outside it. Frame borders replicate (a matte touching the border
    does not fade there).
    """
    out = np.zeros(mask.shape, np.float32)
    box = _grown_box(mask, opts)
    if box is not None:
        out[box] = _matte_of(mask[box], opts)
    return out


def matte_pixels(mask: np.ndarray, opts: MatteOptions) -> np.ndarray:
    """The matte as written: uint8 0..255, uint16 0..65535 or float16 0..1 (EXR), whole frame.

    Only the mask's grown box is computed and quantised; a hard matte (no feather) skips floats."""
    dtype = np.float16 if opts.exr else (np.uint16 if opts.bit_depth == 16 else np.uint8)
    out = np.zeros(mask.shape, dtype)
    box = _grown_box(mask, opts)
    if box is None:
        return out
    if opts.feather:
        out[box] = _quantise(_matte_of(mask[box], opts), opts)
    else:
        hard = _matte_of(mask[box], MatteOptions(opts.bit_depth, opts.dilate, 0, opts.exr)) > 0
        out[box] = hard.astype(dtype) * (1 if opts.exr else opts.max_value)
    return out


def _grown_box(mask: np.ndarray, opts: MatteOptions) -> tuple[slice, slice] | None:
    """The mask's box grown by dilate + feather + 1 (None for an empty mask).

    Outside it the matte is 0; inside it the result equals the whole frame's (the box's edge pixels
    are 0 either way, and where the box meets the frame border it replicates the same pixels), at a
    fraction of the cost for objects smaller than the frame."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    h, w = mask.shape
    r = int(opts.dilate) + int(opts.feather) + 1
    return (slice(max(0, int(rows[0]) - r), min(h, int(rows[-1]) + 1 + r)),
            slice(max(0, int(cols[0]) - r), min(w, int(cols[-1]) + 1 + r)))


def _matte_of(mask: np.ndarray, opts: MatteOptions) -> np.ndarray:
    m: np.ndarray = mask.astype(np.uint8)
    if opts.dilate:
        m = cv2.dilate(m, disk(int(opts.dilate)), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    out: np.ndarray = m.astype(np.float32)
    if opts.feather:
        f = int(opts.feather)
        y, x = np.mgrid[-f : f + 1, -f : f + 1]
        sigma = f / 3.0
        kernel = (np.exp(-(x * x + y * y) / (2 * sigma * sigma)) * disk(f)).astype(np.float64)
        kernel /= kernel.sum()
        out = cv2.filter2D(out, cv2.CV_32F, kernel.astype(np.float32), borderType=cv2.BORDER_REPLICATE)
        # float sums of the weights land within ~1e-6 of 0 and 1 where the disk is all one side
        out[out < 1e-5] = 0.0
        out[out > 1 - 1e-5] = 1.0
    return out


def _quantise(matte: np.ndarray, opts: MatteOptions) -> np.ndarray:
    if opts.exr:
        return matte.astype(np.float16)
    scaled = np.rint(matte * np.float32(opts.max_value))
    return scaled.astype(np.uint16) if opts.bit_depth == 16 else scaled.astype(np.uint8)


def _png_bytes(img: np.ndarray) -> bytes:
    """8-bit through Pillow at zlib level 1 (a few ms for 1080p, as png-masks); 16-bit through OpenCV,
    which writes a 16-bit grayscale PNG straight from a uint16 array."""
    if img.dtype == np.uint16:
        ok, buf = cv2.imencode(".png", img)
        if not ok:
            raise OutputError("OpenCV could not encode a 16-bit matte PNG")
        return buf.tobytes()
    im = Image.frombytes("L", (img.shape[1], img.shape[0]), img.tobytes())
    bio = io.BytesIO()
    im.save(bio, "PNG", compress_level=1)
    return bio.getvalue()


def _import_openexr() -> Any:
    try:
        import OpenEXR
    except ImportError:
        raise InputError(
            "--exr needs the openexr package: pip install openexr (or pip install 'dl-utils[mattes]')"
        ) from None
    return OpenEXR


# ---------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class MatteGroup:
    """The objects one sequence is made of: one object, one label, or all (``combine``)."""

    object_ids: tuple[int, ...]
    object: int | None
    label: str | None


@dataclass
class MatteSequence:
    """One written sequence: its reader pattern (absolute, frame as printf) and which frames have a file."""

    pattern: str
    group: MatteGroup
    frames: list[int] = field(default_factory=list)
    empty: list[int] = field(default_factory=list)  # frames without any mask (black, or skipped)
    files: list[Path] = field(default_factory=list)


@dataclass
class MatteExport:
    """What :func:`export_mattes` wrote; :meth:`summary` is the ``--json`` document plugins parse."""

    out: Path
    pattern: MattePattern
    frames: list[int]
    objects: list[ObjectInfo]
    sequences: list[MatteSequence]
    options: MatteOptions
    combine: bool
    skip_empty: bool
    removed: list[Path] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [p for s in self.sequences for p in s.files]

    def summary(self) -> dict[str, Any]:
        files = self.files
        return {
            "format": "mattes",
            "version": 1,
            "dir": str(self.out),
            "pattern": str(self.out / self.pattern.canonical),
            "first_frame": self.frames[0],
            "last_frame": self.frames[-1],
            "frames": len(self.frames),
            "file_count": len(files),
            "files": [str(p) for p in files],
            "sequences": [
                {
                    "pattern": s.pattern,
                    "object": s.group.object,
                    "label": s.group.label,
                    "objects": list(s.group.object_ids),
                    "first_frame": s.frames[0] if s.frames else None,
                    "last_frame": s.frames[-1] if s.frames else None,
                    "files": len(s.files),
                    "empty_frames": s.empty,
                }
                for s in self.sequences
            ],
            "objects": [{"id": o.id, "label": o.label} for o in self.objects],
            "bit_depth": self.options.bit_depth,
            "exr": self.options.exr,
            "channel": EXR_CHANNEL if self.options.exr else None,
            "dilate": int(self.options.dilate),
            "feather": int(self.options.feather),
            "combine": self.combine,
            "skip_empty": self.skip_empty,
            "removed": [str(p) for p in self.removed],
        }


def plan_groups(pattern: MattePattern, objs: list[ObjectInfo], combine: bool) -> list[MatteGroup]:
    """The sequences to write, or the one-line refusal when the pattern cannot name them apart."""
    if combine:
        if pattern.has_object or pattern.has_label:
            raise InputError(
                f"--combine writes one matte of all objects, but --pattern {pattern.text!r} has"
                " {object}/{label}; drop --combine or those fields"
            )
        return [MatteGroup(tuple(o.id for o in objs), None, None)]
    if pattern.has_object:
        return [MatteGroup((o.id,), o.id, o.label) for o in objs]
    if pattern.has_label:
        by_label: dict[str, list[int]] = {}
        for o in objs:
            by_label.setdefault(o.label, []).append(o.id)
        return [MatteGroup(tuple(ids), None, lb) for lb, ids in by_label.items()]
    if len(objs) > 1:
        raise InputError(
            f"--pattern {pattern.text!r} has no {{object}} or {{label}} field but {len(objs)} objects"
            f" are selected ({', '.join(str(o.id) for o in objs[:6])}{'...' if len(objs) > 6 else ''});"
            " add {object} to the pattern, or pass --combine, or --objects ID"
        )
    if objs:
        return [MatteGroup((objs[0].id,), objs[0].id, objs[0].label)]
    return [MatteGroup((), None, None)]


# ---------------------------------------------------------------------------------------- manifest
@dataclass
class _Manifest:
    """``files``: relative path -> {"pattern", "size", "mtime_ns"} of files a matte export wrote;
    ``pending``: relative path -> pattern of files an export was about to write when it stopped
    (killed): they were checked as free or ours then, so they stay ours."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "_Manifest":
        if not path.exists() and not path.is_symlink():
            return cls()
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(
                f"{path} is {'a symlink' if stat.S_ISLNK(st.st_mode) else _what_is(path)}, not the"
                " manifest of matte exports; remove it or choose another --out"
            )
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            files = {str(k): dict(v) for k, v in doc["files"].items()}
            pending = {str(k): str(v) for k, v in doc.get("pending", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return cls()  # unreadable: nothing counts as ours, so nothing is replaced without force
        return cls(files, pending)

    def owns(self, rel: str, st: os.stat_result) -> bool:
        if rel in self.pending:
            return True
        rec = self.files.get(rel)
        return rec is not None and rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns

    def save(self, path: Path) -> None:
        doc = {"version": 1, "note": "files dl-utils matte exports wrote here (and may replace)",
               "files": self.files, "pending": self.pending}
        write_atomic(path, json.dumps(doc, sort_keys=True))


def _resolve_out(out: str | os.PathLike[str]) -> Path:
    """The folder to write into: created if missing; a symlink to a folder is written through."""
    p = folder_target(out, "mattes are written into a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{p} (or a folder above it) is a file; give a folder for --out") from None
    except OSError as e:
        raise output_error(p, e) from None
    return p


def _check_folders(out: Path, rels: Iterable[str]) -> None:
    """Folders a pattern puts files in (``{label}/mask_%04d.png``) must be real folders or absent."""
    seen: set[str] = set()
    for rel in rels:
        parts = rel.split("/")[:-1]
        for k in range(1, len(parts) + 1):
            sub = "/".join(parts[:k])
            if sub in seen:
                continue
            seen.add(sub)
            p = out / sub
            if p.is_symlink() or (p.exists() and not p.is_dir()):
                raise OutputError(
                    f"{p} is {'a symlink' if p.is_symlink() else _what_is(p)} where --pattern needs a"
                    " folder; mattes never write through or replace it: remove it or change --pattern"
                )


def _preflight(out: Path, rels: Iterable[str], manifest: _Manifest, force: bool) -> None:
    """Refuse, before anything is written, to replace what is not a regular file or not ours."""
    foreign: list[str] = []
    for rel in rels:
        p = out / rel
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise output_error(p, e) from None
        if not stat.S_ISREG(st.st_mode):
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else (
                "a folder" if stat.S_ISDIR(st.st_mode) else _what_is(p))
            raise OutputError(
                f"{p} is {what}; a matte export never replaces one (not even with --force): remove it"
                " or choose another --out or --pattern"
            )
        if not manifest.owns(rel, st):
            foreign.append(rel)
    if foreign and not force:
        raise OutputError(
            f"{len(foreign)} file(s) in {out} that no matte export wrote (or that were edited since)"
            f" would be replaced, first {foreign[0]}; pass --force to replace them, or choose another"
            " --out or --pattern"
        )


def _clean_temps(folders: Iterable[Path]) -> None:
    """Remove temporary files a killed export (a process now gone) left in the folders we write."""
    for folder in folders:
        if not folder.is_dir():
            continue
        for e in folder.iterdir():
            m = _TEMP_RE.match(e.name)
            if m and not _pid_alive(int(m.group("pid"))) and e.is_file() and not e.is_symlink():
                e.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- writing
class _Writer:
    """Writes each file to a hidden temporary name beside it, then renames it over the target."""

    def __init__(self, opts: MatteOptions) -> None:
        self.opts = opts
        self.mode = 0o666 & ~current_umask()
        self.exr = _import_openexr() if opts.exr else None
        self.blacks: dict[tuple[int, int], bytes] = {}

    def write(self, path: Path, pixels: np.ndarray | None, size: tuple[int, int]) -> None:
        """``pixels`` from :func:`matte_pixels`; None: a black frame (a PNG encoded once per size).

        The new file keeps the permissions of the one it replaces (else the umask's)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else self.mode
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.part-{os.getpid()}-", dir=path.parent)
        except OSError as e:
            raise output_error(path, e) from None
        try:
            try:
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), mode)
                    if self.exr is None:
                        f.write(self._png(pixels, size))
                if self.exr is not None:  # the bindings write by file name
                    w, h = size
                    data = np.zeros((h, w), np.float16) if pixels is None else pixels
                    header = {"compression": self.exr.ZIP_COMPRESSION, "type": self.exr.scanlineimage}
                    self.exr.File(header, {EXR_CHANNEL: self.exr.Channel(data)}).write(tmp)
                os.replace(tmp, path)
            except OSError as e:
                raise output_error(path, e) from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _png(self, pixels: np.ndarray | None, size: tuple[int, int]) -> bytes:
        if pixels is not None:
            return _png_bytes(pixels)
        if size not in self.blacks:
            w, h = size
            self.blacks[size] = _png_bytes(
                np.zeros((h, w), np.uint16 if self.opts.bit_depth == 16 else np.uint8))
        return self.blacks[size]


def _visible(store: StoreReader, frames: list[int], objs: list[ObjectInfo]) -> set[tuple[int, int]]:
    """``(frame, object id)`` pairs with something to draw, read without decoding any mask."""
    if not objs:
        return set()
    wanted = set(frames)
    out: set[tuple[int, int]] = set()
    for f, insts in store.iter_frames(start=frames[0], stop=frames[-1], objects=[o.id for o in objs],
                                      decode=False):
        if f in wanted:
            out.update((f, i.object_id) for i in insts if not i.is_empty)
    return out


def export_mattes(
    store: StoreReader,
    out: str | os.PathLike[str],
    *,
    pattern: str | None = None,
    objects: Iterable[int] | None = None,
    start: int | None = None,
    stop: int | None = None,
    combine: bool = False,
    bit_depth: int | None = None,
    dilate: int = 0,
    feather: int = 0,
    exr: bool = False,
    skip_empty: bool = False,
    force: bool = False,
) -> MatteExport:
    """Write matte sequences of ``store`` into the folder ``out``; returns what was written.

    ``pattern`` defaults to ``mask_%04d.png`` (``.exr`` with ``exr``). Every option, the pattern,
    the objects, the frame range and every file in the way are checked before the first file is
    written, so bad input leaves ``out`` untouched. Files of an earlier export with the same pattern
    that this one no longer writes (a shorter range, ``skip_empty``) are removed at the end, so a
    Read node never picks up a stale frame.
    """
    opts = MatteOptions(bit_depth=(16 if exr else 8) if bit_depth is None else bit_depth,
                        dilate=dilate, feather=feather, exr=exr)
    opts.check()
    pat = MattePattern.parse(pattern or ("mask_%04d.exr" if exr else "mask_%04d.png"), exr=exr)
    if exr:
        _import_openexr()
    media: MediaInfo = require_media(store)
    side = max([media.width, media.height] + [max(wh) for wh in media.frame_sizes or []])
    for name, v in (("--dilate", opts.dilate), ("--feather", opts.feather)):
        if v > side:
            raise InputError(
                f"{name} {v} is more than the frame's larger side ({side} px in {media.name!r});"
                " give a smaller number of pixels"
            )
    frames = select_frames(media, start, stop)
    objs = select_objects(store, objects)
    groups = plan_groups(pat, objs, combine)

    visible = _visible(store, frames, objs) if skip_empty else None
    planned: dict[tuple[int, int], str] = {}  # (frame, group index) -> relative path
    owner: dict[str, int] = {}
    for gi, g in enumerate(groups):
        for f in frames:
            if visible is not None and not any((f, oid) in visible for oid in g.object_ids):
                continue
            rel = pat.render(f, g.object, g.label).replace("\\", "/")
            other = owner.setdefault(rel, gi)
            if other != gi:
                a, b = groups[other], g
                raise InputError(
                    f"--pattern {pat.text!r} gives {rel} to both {_describe(a)} and {_describe(b)}"
                    " (labels that differ only in characters a file name cannot hold); add {object}"
                )
            planned[(f, gi)] = rel

    root = _resolve_out(out)
    manifest_path = root / MANIFEST
    manifest = _Manifest.load(manifest_path)
    _check_folders(root, owner)
    _preflight(root, owner, manifest, force)

    canon = pat.canonical
    result = MatteExport(root, pat, frames, objs, [
        MatteSequence(str(root / pat.render(None, g.object, g.label)), g) for g in groups
    ], opts, combine, skip_empty)
    _clean_temps({(root / rel).parent for rel in owner})
    manifest.pending.update({rel: canon for rel in owner})
    manifest.save(manifest_path)

    writer = _Writer(opts)
    written: dict[str, Path] = {}
    try:
        for f, insts in iter_store_frames(store, frames, objs, desc="mattes"):
            _write_frame(f, insts, media, groups, planned, result, writer, root, written)
    except BaseException:  # Ctrl-C, a full disk: what was written stays ours, names never written do not
        _record(manifest, root, written, canon)
        manifest.pending = {rel: c for rel, c in manifest.pending.items() if (root / rel).exists()}
        manifest.save(manifest_path)
        raise
    _record(manifest, root, written, canon)
    for rel, rec in sorted(manifest.files.items()):  # stale files of an earlier export of this pattern
        p = root / rel
        if rec.get("pattern") != canon or rel in written:
            continue
        try:
            st = p.lstat()
        except FileNotFoundError:
            del manifest.files[rel]
            continue
        if stat.S_ISREG(st.st_mode) and manifest.owns(rel, st):
            p.unlink()
            result.removed.append(p)
        del manifest.files[rel]  # edited since: the user's file now, left alone
    for rel, pcanon in list(manifest.pending.items()):
        if pcanon == canon and rel not in written:
            p = root / rel
            if p.is_file() and not p.is_symlink():  # written by a killed run of this pattern
                p.unlink()
                result.removed.append(p)
            del manifest.pending[rel]
    manifest.save(manifest_path)
    return result


def _describe(g: MatteGroup) -> str:
    if g.object is not None:
        return f"object {g.object}"
    return f"label {g.label!r} (objects {list(g.object_ids)})"


def _write_frame(
    f: int, insts: Instances, media: MediaInfo, groups: list[MatteGroup],
    planned: dict[tuple[int, int], str], result: MatteExport, writer: _Writer, root: Path,
    written: dict[str, Path],
) -> None:
    """Frame ``f``'s file of every group (each object's mask rasterised once)."""
    w, h = media.size_of(f)
    masks: dict[int, np.ndarray] = {}
    for inst in insts:
        if not inst.is_empty:
            m = instance_mask(inst, h, w)
            if m.any():
                masks[inst.object_id] = m
    for gi, g in enumerate(groups):
        seq = result.sequences[gi]
        mine = [masks[oid] for oid in g.object_ids if oid in masks]
        if not mine:
            seq.empty.append(f)
            if result.skip_empty:
                continue
        rel = planned.get((f, gi))
        if rel is None:  # skip_empty planned no file here and there is still nothing to draw
            continue
        pixels = None
        if mine:
            union = mine[0] if len(mine) == 1 else np.logical_or.reduce(mine)
            pixels = matte_pixels(union, result.options)
        path = root / rel
        writer.write(path, pixels, (w, h))
        written[rel] = path
        seq.frames.append(f)
        seq.files.append(path)


def _record(manifest: _Manifest, root: Path, written: dict[str, Path], canon: str) -> None:
    for rel, p in written.items():
        st = p.stat()
        manifest.files[rel] = {"pattern": canon, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        manifest.pending.pop(rel, None)

