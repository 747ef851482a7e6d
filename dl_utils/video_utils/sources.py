"""Frame sources: one indexable, iterable view over a video, a folder of images, a glob, a printf
pattern, one image or a list of images.

Everything downstream (engines, store, sinks) speaks *source frame numbers*: a video's frame n is the
n-th picture in presentation order, an image set's frame n is the n-th file in natural-sort order.
``start``/``stop``/``step`` select frames the way CVAT does (``stop`` inclusive), so a store filled
from ``open_frames(..., start=5, step=10)`` lines up with a CVAT task created with the same values.

Compositors number a shot's frames themselves (``shot.1001.png`` ... ``shot.1200.png``), and a
range or a prompt given as "frame 1003" must mean that file. Two opt-in numberings serve them:
``first_frame=N`` counts from N instead of 0 (videos and image sets), and ``frame_numbers="names"``
takes each image's number from its file name, gaps included. Either way a source keeps two
numberings apart: *positions* in the file or the file list (what the decoders read) and the
*frame numbers* everyone else speaks; ``step`` counts positions, as CVAT's frame filter counts the
files of a task.
"""

from __future__ import annotations

import abc
import glob as _glob
import os
import re
from bisect import bisect_left, bisect_right
from operator import index as _as_index
from pathlib import Path
from typing import Any, Iterator, Sequence, SupportsIndex, cast

import cv2
import numpy as np
from natsort import natsorted, ns

from ..annotations import FRAME_NUMBERINGS, MediaInfo
from ..errors import FrameIndexError, InputError, MediaError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
_IMAGE_FORMAT = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".bmp": "bmp", ".tif": "tiff",
                 ".tiff": "tiff", ".webp": "webp"}
_PRINTF = re.compile(r"%(0?)(\d*)d")
_GLOB_CHARS = re.compile(r"[*?\[]")
_DIGITS = re.compile(r"\d+")


def is_image_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# ------------------------------------------------------------------------------------------ resize
def _check_resize(resize: object, name: str) -> int | tuple[int, int] | None:
    if resize is None:
        return None
    if isinstance(resize, (int, np.integer)) and not isinstance(resize, bool):
        if resize < 1:
            raise InputError(f"{name}: resize={resize} must be a positive longest side in pixels")
        return int(resize)
    if (isinstance(resize, (tuple, list)) and len(resize) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                    for v in resize)):
        return int(resize[0]), int(resize[1])
    raise InputError(
        f"{name}: resize={resize!r} is not valid; give None, an int (longest side) or (width, height)"
    )


def target_size(width: int, height: int, resize: int | tuple[int, int] | None) -> tuple[int, int]:
    """The (width, height) an image of the given size has after ``resize``."""
    if resize is None:
        return width, height
    if isinstance(resize, int):
        scale = resize / max(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))
    return resize


def apply_resize(img: np.ndarray, resize: int | tuple[int, int] | None) -> np.ndarray:
    h, w = img.shape[:2]
    tw, th = target_size(w, h, resize)
    if (tw, th) == (w, h):
        return img
    # INTER_AREA averages the pixels that fold into one output pixel (no aliasing) when shrinking;
    # it degenerates to nearest-like blocks when enlarging, where bilinear is the better choice.
    interp = cv2.INTER_AREA if tw <= w and th <= h else cv2.INTER_LINEAR
    return cv2.resize(img, (tw, th), interpolation=interp)


# ------------------------------------------------------------------------------------------ base
class FrameSource(abc.ABC):
    """Common behaviour of every source: CVAT-style frame selection, indexing, iteration, resize.

    Subclasses provide ``_total`` (frames in the whole source), ``_read(p)`` (the picture at
    position ``p`` of the file or file list, as RGB at source size) and ``_iter(positions)`` (the
    pictures of a ``range`` of positions in order, streaming, as ``(position, image)``).

    ``self._numbers`` is the ``range`` of kept positions; ``self._labels`` the frame number of each
    kept position (a ``range`` too unless the numbers come from file names). With index numbering
    a frame number is its position plus ``first_frame``; with ``names`` it is the number read from
    the file's name (``file_numbers``, one per position, increasing).
    """

    kind: str = "?"

    def __init__(self, name: str, path: Path | None, total: int, *, start: int | None, stop: int | None,
                 step: int, resize: object, first_frame: int = 0,
                 file_numbers: Sequence[int] | None = None) -> None:
        self.name = name
        self.path = path
        self._resize = _check_resize(resize, name)
        self._first_frame = check_first_frame(first_frame, name)
        self._file_numbers = None if file_numbers is None else list(file_numbers)
        self._labels: Sequence[int]
        if self._file_numbers is None:
            ff = self._first_frame
            self._numbers = _select(name, total, ff if start is None else start, stop, step, first=ff)
            self._labels = range(self._numbers.start + ff, self._numbers.stop + ff, self._numbers.step)
        else:
            self._numbers = _select_named(name, self._file_numbers, start, stop, step)
            self._labels = [self._file_numbers[p] for p in self._numbers]
        self._where: dict[int, int] | None = None  # frame number -> kept index (names only)

    def _label(self, position: int) -> int:
        """The frame number of the picture at ``position``."""
        if self._file_numbers is None:
            return position + self._first_frame
        return self._file_numbers[position]

    @property
    def numbering(self) -> str:
        """``"index"`` (positions, from :attr:`first_frame`) or ``"names"`` (numbers in file names)."""
        return "index" if self._file_numbers is None else "names"

    @property
    def first_frame(self) -> int:
        """The frame number of the source's first picture under index numbering (0 unless given)."""
        return self._first_frame

    # ---------------------------------------------------------------- to implement
    @abc.abstractmethod
    def _read(self, n: int) -> np.ndarray: ...

    @abc.abstractmethod
    def _iter(self, numbers: range) -> Iterator[tuple[int, np.ndarray]]: ...

    @property
    @abc.abstractmethod
    def source_size(self) -> tuple[int, int]:
        """(width, height) of the source frames as displayed, before ``resize``."""

    @property
    def fps(self) -> float | None:
        return None

    @property
    def codec(self) -> str | None:
        return None

    @property
    def frame_names(self) -> list[str] | None:
        return None

    def close(self) -> None:
        """Release decoders and files; the source can be reopened by indexing it again."""

    # ---------------------------------------------------------------- selection
    @property
    def start(self) -> int:
        """Frame number of the first kept frame."""
        return self._labels[0]

    @property
    def step(self) -> int:
        """Positions between kept frames (with names numbering: files, not frame numbers)."""
        return self._numbers.step

    @property
    def stop(self) -> int:
        """Inclusive last source frame number of the selection (CVAT's ``stop_frame``)."""
        return self._labels[-1]

    @property
    def frame_numbers(self) -> list[int]:
        return list(self._labels)

    def frame_number(self, i: int) -> int:
        """Source frame number of the i-th kept frame (negative ``i`` counts from the end)."""
        return self._labels[self._checked_index(i)]

    def index_of(self, frame_number: int) -> int:
        """Position among the kept frames of a source frame number."""
        n = _as_int(frame_number, "frame number")
        labels = self._labels
        if isinstance(labels, range):
            k = (n - labels.start) // labels.step if n in labels else None
        else:
            if self._where is None:
                self._where = {f: i for i, f in enumerate(labels)}
            k = self._where.get(n)
        if k is None:
            gaps = "" if isinstance(labels, range) else ", numbered by file names"
            raise FrameIndexError(
                f"{self.name}: frame {n} is not one of the kept frames (start={self.start},"
                f" stop={self.stop}, step={self.step}{gaps}); use a frame number from .frame_numbers"
            )
        return k

    def _checked_index(self, i: object) -> int:
        k = _as_int(i, "index")
        n = len(self._numbers)
        if not -n <= k < n:
            raise FrameIndexError(
                f"{self.name}: index {k} is out of range; valid indices are 0..{n - 1}"
                f" (or -{n}..-1) for its {n} kept frames"
            )
        return k % n

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self._numbers)

    def __getitem__(self, i: int) -> np.ndarray:
        return self._finish(self._read(self._numbers[self._checked_index(i)]))

    def get_frame(self, frame_number: int) -> np.ndarray:
        """The frame with this source frame number (it must be one of the kept frames)."""
        return self._finish(self._read(self._numbers[self.index_of(frame_number)]))

    def __iter__(self) -> Iterator[np.ndarray]:
        for _, img in self.iter_numbered():
            yield img

    def iter_numbered(self, start: int | None = None, stop: int | None = None
                      ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(source frame number, image)`` for kept frames, streaming with one decoder.

        ``start``/``stop`` narrow the run to kept frames with ``start <= n <= stop`` (source frame
        numbers, ``stop`` inclusive like CVAT), e.g. to resume a job.
        """
        labels = self._labels
        lo = labels[0] if start is None else _as_int(start, "start")
        hi = labels[-1] if stop is None else _as_int(stop, "stop")
        # kept frame numbers increase, so bisect finds the kept indices in lo..hi (a range bisects too)
        first, last = bisect_left(labels, lo), bisect_right(labels, hi) - 1
        sub = self._numbers[first:last + 1]
        if len(sub) == 0:
            return
        for p, img in self._iter(sub):
            yield self._label(p), self._finish(img)

    def _finish(self, img: np.ndarray) -> np.ndarray:
        if self._resize is not None:
            img = apply_resize(img, self._resize)
        return np.ascontiguousarray(img)

    # ---------------------------------------------------------------- description
    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames this source returns, i.e. after ``resize``."""
        return target_size(*self.source_size, self._resize)

    def frame_size(self, frame_number: int) -> tuple[int, int]:
        """(width, height) of source frame ``frame_number`` before ``resize`` (its own, in an image
        set of mixed sizes)."""
        self.index_of(frame_number)  # validates
        return self.source_size

    def frame_sizes(self) -> list[tuple[int, int]] | None:
        """Each kept frame's source size when they differ, else ``None`` (see MediaInfo.size_of)."""
        return None

    def media_info(self) -> MediaInfo:
        """What the store needs: sizes in SOURCE pixels (annotations never use resized pixels)."""
        w, h = self.source_size
        names = self.frame_names
        return MediaInfo(
            name=self.name, width=w, height=h, frames=self.frame_numbers, fps=self.fps,
            start=self.start, stop=self.stop, step=self.step,
            frame_names=None if names is None else [names[p] for p in self._numbers],
            path=None if self.path is None else str(self.path),
            frame_sizes=self.frame_sizes(),
            numbering=self.numbering, first_frame=self._first_frame,
        )

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name!r}: {len(self)} frames"
                f" [{self.start}:{self.stop}:{self.step}]>")


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"{what} must be an integer, not {value!r}")
    try:
        return _as_index(cast(SupportsIndex, value))  # anything else raises TypeError
    except TypeError:
        raise InputError(f"{what} must be an integer, not {value!r}") from None


def check_first_frame(first_frame: object, name: str = "source") -> int:
    """``first_frame`` as an int, refused below 0 (CVAT and the store number frames from 0 up)."""
    ff = _as_int(first_frame, "first frame")
    if ff < 0:
        raise InputError(f"{name}: first frame {ff} is below 0; give --first-frame 0 or more"
                         " (the number of the source's first frame)")
    return ff


def _select(name: str, total: int, start: object, stop: object, step: object, first: int = 0) -> range:
    """Validate CVAT-style start/stop/step (frame numbers, ``first`` numbering the first frame)
    against a source of ``total`` frames; the kept POSITIONS (frame number - ``first``)."""
    start = _as_int(start, "start")
    step = _as_int(step, "step")
    if step < 1:
        raise InputError(f"{name}: step={step} must be >= 1")
    if total < 1:
        raise MediaError(f"{name} has no frames; check the file or folder")
    end = first + total - 1
    if not first <= start <= end:
        raise InputError(
            f"{name}: start={start} is outside the source; valid frame numbers are {first}..{end}"
        )
    if stop is None:
        last = end
    else:
        stop = _as_int(stop, "stop")
        if stop < start:
            raise InputError(f"{name}: stop={stop} is before start={start}; valid frame numbers are"
                             f" {first}..{end} (stop is inclusive, like CVAT's stop frame)")
        last = min(stop, end)  # like CVAT, a stop past the end means "to the end"
    return range(start - first, last - first + 1, step)


def _select_named(name: str, numbers: Sequence[int], start: object, stop: object, step: object) -> range:
    """The kept positions of a sequence numbered by its file names (increasing, with gaps).

    ``start``/``stop`` are frame numbers bounding the run (a bound in a gap takes the next file in),
    ``step`` counts files from the first kept one: what CVAT's frame filter does to the same files.
    """
    step = _as_int(step, "step")
    if step < 1:
        raise InputError(f"{name}: step={step} must be >= 1")
    if not numbers:
        raise MediaError(f"{name} has no frames; check the file or folder")
    lo, hi = numbers[0], numbers[-1]
    start = lo if start is None else _as_int(start, "start")
    if not lo <= start <= hi:
        raise InputError(f"{name}: start={start} is outside the source; its file names number frames"
                         f" {lo}..{hi}")
    last = hi
    if stop is not None:
        stop = _as_int(stop, "stop")
        if stop < start:
            raise InputError(f"{name}: stop={stop} is before start={start}; its file names number frames"
                             f" {lo}..{hi} (stop is inclusive, like CVAT's stop frame)")
        last = min(stop, hi)
    return range(bisect_left(numbers, start), bisect_right(numbers, last), step)


def number_in_name(path: Path) -> int | None:
    """The last run of digits in a file's stem (``shot.1001.png`` -> 1001), None without digits.

    The last run because shot names carry other digits before the frame (``sh010_v2.1001.exr``)
    and the frame number is what comes last, by the convention of every compositing package.
    """
    runs = _DIGITS.findall(Path(path).stem)
    return int(runs[-1]) if runs else None


def _named_order(files: Sequence[Path], name: str,
                 numbers: Sequence[int | None] | None = None) -> tuple[list[Path], list[int]]:
    """The files sorted by the numbers in their names, and those numbers; refuses a file without a
    number and two files with the same number (each would make "frame N" ambiguous)."""
    nums = [number_in_name(f) for f in files] if numbers is None else list(numbers)
    missing = [f for f, n in zip(files, nums) if n is None]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InputError(f"{name}: --frame-numbers names needs a frame number in every file name, but"
                         f" {missing[0]}{more} has none; rename the files (shot.1001.png) or number"
                         " the frames by position (--frame-numbers index)")
    pairs = sorted(zip(cast("list[int]", nums), range(len(files))))
    for (a, i), (b, j) in zip(pairs, pairs[1:]):
        if a == b:
            raise InputError(f"{name}: {files[i]} and {files[j]} both carry frame number {a};"
                             " remove one of them or number the frames by position"
                             " (--frame-numbers index)")
    return [files[i] for _, i in pairs], [n for n, _ in pairs]


# ------------------------------------------------------------------------------------------ images
def read_image(path: Path) -> np.ndarray:
    """Decode an image file to RGB uint8, honouring its EXIF orientation."""
    try:
        # np.fromfile + imdecode instead of imread: imread cannot open non-ASCII paths on Windows.
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise MediaError(f"cannot read image {path}: {e.strerror or e}; check that it exists and is"
                         " readable") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None  # 8-bit BGR, EXIF-rotated
    if img is None:
        raise MediaError(f"{path} is not a readable image (jpg, png, bmp, tiff, webp);"
                         " check that it opens in an image viewer or re-export it")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# EXIF orientations that turn the picture a quarter (read_image applies them, so the size swaps)
_EXIF_TRANSPOSED = frozenset({5, 6, 7, 8})
# formats whose header size (+ EXIF orientation) Pillow reads as cv2 decodes them (checked per format)
_HEADER_SIZED = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as :func:`read_image` returns it, from its header only.

    Decoding every photo of a folder to learn its size would cost as much as reading the folder;
    Pillow reads the header (and the EXIF orientation, which cv2 applies on decode). Files Pillow
    cannot size are decoded instead.
    """
    from PIL import Image, UnidentifiedImageError

    if path.suffix.lower() not in _HEADER_SIZED:
        # TIFF and the rest: Pillow and cv2 disagree on where the orientation lives; decode
        img = read_image(path)
        return img.shape[1], img.shape[0]
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(0x0112)
            except Exception:  # a broken EXIF block: cv2 ignores it as well
                orientation = None
        return (h, w) if orientation in _EXIF_TRANSPOSED else (w, h)
    except (UnidentifiedImageError, OSError, ValueError):
        img = read_image(path)
        return img.shape[1], img.shape[0]


class ImageSequence(FrameSource):
    """An ordered list of image files; frame n is the n-th file (counted from ``first_frame``), or
    with ``frame_numbers="names"`` the file whose name carries n (files ordered by that number).

    ``name_numbers``: the frame number of each file when its name does not say it plainly (a
    ``%04d`` pattern's field); otherwise the last run of digits in each stem is read.
    """

    kind = "images"

    def __init__(self, files: Sequence[Path], name: str, path: Path | None, *, start: int | None = None,
                 stop: int | None = None, step: int = 1, resize: object = None,
                 frame_numbers: str = "index", first_frame: int = 0,
                 name_numbers: Sequence[int | None] | None = None) -> None:
        self._files = [Path(f) for f in files]
        if not self._files:
            raise MediaError(f"{name}: no images found (looked for"
                             f" {', '.join(sorted(IMAGE_EXTENSIONS))}); check the path or pattern")
        numbering = check_frame_numbers(frame_numbers, first_frame, name)
        file_numbers = None
        if numbering == "names":
            self._files, file_numbers = _named_order(self._files, name, name_numbers)
        root = _common_dir(self._files)
        self._names = [_rel_name(f, root) for f in self._files]
        self._source_size: tuple[int, int] | None = None
        self._sizes: dict[int, tuple[int, int]] | None = None
        super().__init__(name, path, len(self._files), start=start, stop=stop, step=step,
                         resize=resize, first_frame=first_frame, file_numbers=file_numbers)

    def file_of(self, frame_number: int) -> Path:
        """The image file of a kept frame (what a CVAT task made from the kept frames uploads)."""
        return self._files[self._numbers[self.index_of(frame_number)]]

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    @property
    def frame_names(self) -> list[str]:
        return list(self._names)

    @property
    def codec(self) -> str | None:
        kinds = {_IMAGE_FORMAT.get(f.suffix.lower(), f.suffix.lower().lstrip("."))
                 for f in self._files}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def source_size(self) -> tuple[int, int]:
        """Size of the first kept image (images of other sizes come back at their own size)."""
        if self._source_size is None:
            h, w = read_image(self._files[self._numbers.start]).shape[:2]
            self._source_size = (w, h)
        return self._source_size

    def _read(self, n: int) -> np.ndarray:
        img = read_image(self._files[n])
        if self._source_size is None and n == self._numbers.start:
            self._source_size = (img.shape[1], img.shape[0])
        return img

    def frame_size(self, frame_number: int) -> tuple[int, int]:
        position = self._numbers[self.index_of(frame_number)]  # validates
        if self._sizes is None:
            self._sizes = {}
        if frame_number not in self._sizes:
            self._sizes[frame_number] = image_size(self._files[position])
        return self._sizes[frame_number]

    def frame_sizes(self) -> list[tuple[int, int]] | None:
        """Reads each image's header (not its pixels): ~0.1 ms an image."""
        sizes = [self.frame_size(n) for n in self._labels]
        return None if len(set(sizes)) <= 1 else sizes

    def _iter(self, numbers: range) -> Iterator[tuple[int, np.ndarray]]:
        for n in numbers:
            yield n, self._read(n)


def _common_dir(files: Sequence[Path]) -> Path:
    try:
        return Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
    except ValueError:  # different drives on Windows
        return Path()


def _rel_name(f: Path, root: Path) -> str:
    try:
        return f.resolve().relative_to(root).as_posix()
    except ValueError:
        return f.name


def _image_files_in(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if p.is_file() and is_image_path(p) and not p.name.startswith(".")]
    return natsorted(files, key=lambda p: p.name, alg=ns.IGNORECASE)


def _printf_files(pattern: str) -> list[Path]:
    """Files matching a printf pattern such as ``frames/img_%06d.jpg``, ordered by their number."""
    return [p for _, p in _printf_matches(pattern)]


def _printf_matches(pattern: str) -> list[tuple[tuple[int, ...], Path]]:
    """``(numbers of the pattern's fields, file)`` of every file matching a printf pattern, sorted."""
    folder, base = os.path.split(pattern)
    folder_path = Path(folder or ".")
    parts = _PRINTF.split(base)  # literal, zero-flag, width, literal, ...
    regex = ""
    for i in range(0, len(parts), 3):
        regex += re.escape(parts[i])
        if i + 2 < len(parts):
            width = parts[i + 2]
            regex += rf"(\d{{{width}}})" if parts[i + 1] == "0" and width else r"(\d+)"
    rx = re.compile(regex + r"\Z")
    if not folder_path.is_dir():
        raise MediaError(f"{pattern}: folder {folder_path} does not exist; check the pattern")
    found = []
    for p in folder_path.iterdir():
        m = rx.match(p.name)
        if m and p.is_file():
            found.append((tuple(int(g) for g in m.groups()), p))
    return sorted(found)


def check_frame_numbers(frame_numbers: object, first_frame: object = 0, name: str = "source") -> str:
    """Validate the numbering options together; returns ``"index"`` or ``"names"``."""
    if frame_numbers not in FRAME_NUMBERINGS:
        raise InputError(f"{name}: frame_numbers={frame_numbers!r} is not known; use 'index' (positions,"
                         " from --first-frame) or 'names' (the numbers in the image file names)")
    ff = check_first_frame(first_frame, name)
    if frame_numbers == "names" and ff != 0:
        raise InputError(f"{name}: --first-frame {ff} and --frame-numbers names both set the numbers; the"
                         " file names give them, so drop --first-frame (or use --frame-numbers index)")
    return str(frame_numbers)


# ------------------------------------------------------------------------------------------ dispatch
def open_frames(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, start: int | None = None,
                stop: int | None = None, step: int = 1, resize: object = None,
                frame_numbers: str = "index", first_frame: int = 0) -> FrameSource:
    """Open a video, an image folder, a glob, a printf pattern, one image or a list of images.

    ``start``/``stop``/``step`` are source frame numbers with CVAT's meaning (``stop`` inclusive,
    ``None`` = first/last frame; ``step`` counts pictures). ``resize`` is ``None``, the longest side
    in pixels, or ``(width, height)``.

    Numbering (opt-in; the default numbers pictures 0, 1, 2 ...): ``first_frame=N`` numbers them
    N, N+1 ...; ``frame_numbers="names"`` (image sets only) numbers each image by the last run of
    digits in its file name (a printf pattern: by its last ``%d`` field), gaps kept, so
    ``shot.1001.png`` is frame 1001 and a missing ``shot.1003.png`` is a missing frame 1003.

    >>> video = open_frames("bedroom.mp4", start=0, stop=60, step=10)   # doctest: +SKIP
    >>> video.frame_numbers, video[0].shape                              # doctest: +SKIP
    ([0, 10, 20, 30, 40, 50, 60], (540, 960, 3))
    >>> open_frames("shot/shot.%04d.png", frame_numbers="names").frame_numbers  # doctest: +SKIP
    [1001, 1002, 1004, 1005]
    """
    label = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image list"
    numbering = check_frame_numbers(frame_numbers, first_frame, label)
    kw: dict[str, Any] = dict(start=start, stop=stop, step=step, resize=resize)
    img_kw: dict[str, Any] = dict(kw, frame_numbers=numbering, first_frame=first_frame)
    if isinstance(source, (list, tuple)):
        files = [Path(p) for p in source]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise MediaError(f"image list: {len(missing)} file(s) do not exist, first {missing[0]};"
                             " check the paths")
        name = _common_dir(files).name if files else "images"
        return ImageSequence(files, name or "images", None, **img_kw)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot open frames from {type(source).__name__} {source!r}: give a path,"
                         " a glob, a printf pattern or a list of image paths")
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        return ImageSequence(_image_files_in(path), path.resolve().name or text, path, **img_kw)
    if path.is_file():
        if is_image_path(path):
            return ImageSequence([path], path.name, path, **img_kw)
        if numbering == "names":
            raise InputError(f"{text}: --frame-numbers names reads frame numbers from image file names and a"
                             " video has none; number the video from N with --first-frame N instead")
        from .video import VideoSource

        return VideoSource(path, first_frame=first_frame, **kw)
    if _GLOB_CHARS.search(text):
        files = [Path(p) for p in _glob.glob(text, recursive=True)]
        files = natsorted([p for p in files if p.is_file() and is_image_path(p)],
                          key=lambda p: p.as_posix(), alg=ns.IGNORECASE)
        if not files:
            raise MediaError(f"glob {text!r} matches no image files; check the pattern")
        return ImageSequence(files, _common_dir(files).name or text, path, **img_kw)
    if _PRINTF.search(text):
        found = _printf_matches(text)
        if not found:
            raise MediaError(f"pattern {text!r} matches no files; check the folder and the digits"
                             " (e.g. frame_%06d.jpg for frame_000001.jpg)")
        # a pattern says where the frame number is: its last field, not the stem's last digits
        return ImageSequence([p for _, p in found], path.parent.resolve().name or text, path,
                             name_numbers=[g[-1] for g, _ in found], **img_kw)
    raise MediaError(f"{text} does not exist; check the path (a video file, a folder of images,"
                     " a glob such as 'dir/*.jpg' or a pattern such as 'dir/frame_%06d.jpg')")


def open_media(media: MediaInfo, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> FrameSource:
    """Reopen the source a store's media record describes (``path``: where it is now, default
    ``media.path``) with the numbering the record holds, so its frame numbers name the same pictures
    as the store's (a shot opened by position would put frame 1001 on another picture).

    The selection is the record's (``start``/``stop``/``step``) unless ``kwargs`` give another;
    ``kwargs`` go to :func:`open_frames` (``resize`` ...).
    """
    where = media.path if path is None else path
    if where is None:
        raise InputError(f"media {media.name!r} records no path; give the path of its video or images")
    kwargs.setdefault("start", media.frames[0] if media.frames else media.start)
    kwargs.setdefault("stop", media.frames[-1] if media.frames else media.stop)
    kwargs.setdefault("step", media.step)
    return open_frames(where, frame_numbers=media.numbering, first_frame=media.first_frame, **kwargs)
