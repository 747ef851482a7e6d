"""Frame sources: one indexable, iterable view over a video, a folder of images, a glob, a printf
pattern, one image or a list of images.

Everything downstream (engines, store, sinks) speaks *source frame numbers*: a video's frame n is the
n-th picture in presentation order, an image set's frame n is the n-th file in natural-sort order.
``start``/``stop``/``step`` select frames the way CVAT does (``stop`` inclusive), so a store filled
from ``open_frames(..., start=5, step=10)`` lines up with a CVAT task created with the same values.
"""

from __future__ import annotations

import abc
import glob as _glob
import os
import re
from operator import index as _as_index
from pathlib import Path
from typing import Any, Iterator, Sequence, SupportsIndex, cast

import cv2
import numpy as np
from natsort import natsorted, ns

from ..annotations import MediaInfo
from ..errors import FrameIndexError, InputError, MediaError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
_IMAGE_FORMAT = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".bmp": "bmp", ".tif": "tiff",
                 ".tiff": "tiff", ".webp": "webp"}
_PRINTF = re.compile(r"%(0?)(\d*)d")
_GLOB_CHARS = re.compile(r"[*?\[]")


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

    Subclasses provide ``_total`` (frames in the whole source), ``_read(n)`` (source frame ``n`` as
    RGB at source size) and ``_iter(numbers)`` (the frames of a ``range`` in order, streaming).
    """

    kind: str = "?"

    def __init__(self, name: str, path: Path | None, total: int, *, start: int, stop: int | None,
                 step: int, resize: object) -> None:
        self.name = name
        self.path = path
        self._resize = _check_resize(resize, name)
        self._numbers = _select(name, total, start, stop, step)

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
        return self._numbers.start

    @property
    def step(self) -> int:
        return self._numbers.step

    @property
    def stop(self) -> int:
        """Inclusive last source frame number of the selection (CVAT's ``stop_frame``)."""
        return self._numbers[-1]

    @property
    def frame_numbers(self) -> list[int]:
        return list(self._numbers)

    def frame_number(self, i: int) -> int:
        """Source frame number of the i-th kept frame (negative ``i`` counts from the end)."""
        return self._numbers[self._checked_index(i)]

    def index_of(self, frame_number: int) -> int:
        """Position among the kept frames of a source frame number."""
        n = _as_int(frame_number, "frame number")
        if n not in self._numbers:
            raise FrameIndexError(
                f"{self.name}: frame {n} is not one of the kept frames (start={self.start},"
                f" stop={self.stop}, step={self.step}); use a frame number from .frame_numbers"
            )
        return (n - self.start) // self.step

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
        numbers = self._numbers
        lo = numbers.start if start is None else _as_int(start, "start")
        hi = numbers[-1] if stop is None else _as_int(stop, "stop")
        first = max(0, -(-(lo - numbers.start) // numbers.step))  # ceil division
        last = -1
        if hi >= numbers.start:
            last = min(len(numbers) - 1, (hi - numbers.start) // numbers.step)
        sub = numbers[first:last + 1]
        if len(sub) == 0:
            return
        for n, img in self._iter(sub):
            yield n, self._finish(img)

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
            frame_names=None if names is None else [names[n] for n in self._numbers],
            path=None if self.path is None else str(self.path),
            frame_sizes=self.frame_sizes(),
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


def _select(name: str, total: int, start: object, stop: object, step: object) -> range:
    """Validate CVAT-style start/stop/step against a source of ``total`` frames."""
    start = _as_int(start, "start")
    step = _as_int(step, "step")
    if step < 1:
        raise InputError(f"{name}: step={step} must be >= 1")
    if total < 1:
        raise MediaError(f"{name} has no frames; check the file or folder")
    if not 0 <= start < total:
        raise InputError(
            f"{name}: start={start} is outside the source; valid frame numbers are 0..{total - 1}"
        )
    if stop is None:
        last = total - 1
    else:
        stop = _as_int(stop, "stop")
        if stop < start:
            raise InputError(f"{name}: stop={stop} is before start={start}; valid frame numbers are"
                             f" 0..{total - 1} (stop is inclusive, like CVAT's stop frame)")
        last = min(stop, total - 1)  # like CVAT, a stop past the end means "to the end"
    return range(start, last + 1, step)


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
    """An ordered list of image files; frame n is the n-th file."""

    kind = "images"

    def __init__(self, files: Sequence[Path], name: str, path: Path | None, *, start: int = 0,
                 stop: int | None = None, step: int = 1, resize: object = None) -> None:
        self._files = [Path(f) for f in files]
        if not self._files:
            raise MediaError(f"{name}: no images found (looked for"
                             f" {', '.join(sorted(IMAGE_EXTENSIONS))}); check the path or pattern")
        root = _common_dir(self._files)
        self._names = [_rel_name(f, root) for f in self._files]
        self._source_size: tuple[int, int] | None = None
        self._sizes: dict[int, tuple[int, int]] | None = None
        super().__init__(name, path, len(self._files), start=start, stop=stop, step=step,
                         resize=resize)

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
        self.index_of(frame_number)  # validates
        if self._sizes is None:
            self._sizes = {}
        if frame_number not in self._sizes:
            self._sizes[frame_number] = image_size(self._files[frame_number])
        return self._sizes[frame_number]

    def frame_sizes(self) -> list[tuple[int, int]] | None:
        """Reads each image's header (not its pixels): ~0.1 ms an image."""
        sizes = [self.frame_size(n) for n in self._numbers]
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
    return [p for _, p in sorted(found)]


# ------------------------------------------------------------------------------------------ dispatch
def open_frames(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, start: int = 0,
                stop: int | None = None, step: int = 1, resize: object = None) -> FrameSource:
    """Open a video, an image folder, a glob, a printf pattern, one image or a list of images.

    ``start``/``stop``/``step`` are source frame numbers with CVAT's meaning (``stop`` inclusive,
    ``None`` = last frame). ``resize`` is ``None``, the longest side in pixels, or
    ``(width, height)``.

    >>> video = open_frames("bedroom.mp4", start=0, stop=60, step=10)   # doctest: +SKIP
    >>> video.frame_numbers, video[0].shape                              # doctest: +SKIP
    ([0, 10, 20, 30, 40, 50, 60], (540, 960, 3))
    """
    kw: dict[str, Any] = dict(start=start, stop=stop, step=step, resize=resize)
    if isinstance(source, (list, tuple)):
        files = [Path(p) for p in source]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise MediaError(f"image list: {len(missing)} file(s) do not exist, first {missing[0]};"
                             " check the paths")
        name = _common_dir(files).name if files else "images"
        return ImageSequence(files, name or "images", None, **kw)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot open frames from {type(source).__name__} {source!r}: give a path,"
                         " a glob, a printf pattern or a list of image paths")
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        return ImageSequence(_image_files_in(path), path.resolve().name or text, path, **kw)
    if path.is_file():
        if is_image_path(path):
            return ImageSequence([path], path.name, path, **kw)
        from .video import VideoSource

        return VideoSource(path, **kw)
    if _GLOB_CHARS.search(text):
        files = [Path(p) for p in _glob.glob(text, recursive=True)]
        files = natsorted([p for p in files if p.is_file() and is_image_path(p)],
                          key=lambda p: p.as_posix(), alg=ns.IGNORECASE)
        if not files:
            raise MediaError(f"glob {text!r} matches no image files; check the pattern")
        return ImageSequence(files, _common_dir(files).name or text, path, **kw)
    if _PRINTF.search(text):
        files = _printf_files(text)
        if not files:
            raise MediaError(f"pattern {text!r} matches no files; check the folder and the digits"
                             " (e.g. frame_%06d.jpg for frame_000001.jpg)")
        return ImageSequence(files, path.parent.resolve().name or text, path, **kw)
    raise MediaError(f"{text} does not exist; check the path (a video file, a folder of images,"
                     " a glob such as 'dir/*.jpg' or a pattern such as 'dir/frame_%06d.jpg')")
