"""Write RGB frames (optionally with overlays drawn per frame) to a video file through PyAV.

Used for review videos: a source's frames go through a ``draw(frame_number, image)`` hook (the
overlay painter lives in :mod:`dl_utils.cv_utils`; this module does not import it) and are encoded as
yuv420p H.264, the one format every player and browser shows.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, cast

import av
from av.video.stream import VideoStream
import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError, MediaError

_FF_QP2LAMBDA = 118  # FFmpeg's scale between a quantiser and the "lambda" global_quality expects
_CRF_CODECS = frozenset({"libx264", "libx265", "libvpx-vp9", "libaom-av1", "libsvtav1"})

DrawHook = Callable[[int, np.ndarray], "np.ndarray | None"]


def _encoder_available(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except (av.FFmpegError, ValueError, KeyError):
        return False


def _as_rate(fps: Any) -> Fraction:
    try:
        rate = Fraction(fps) if not isinstance(fps, float) else Fraction(fps).limit_denominator(1001)
    except (TypeError, ValueError):
        rate = Fraction(-1)
    if rate <= 0:
        raise InputError(f"fps={fps!r} must be a positive number of frames per second")
    return rate


def _as_rgb(img: object, n: int, path: Path) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise InputError(f"{path}: frame {n} has dtype {arr.dtype}; give uint8 RGB images"
                         " (convert with (img * 255).astype(np.uint8) or cv2.convertScaleAbs)")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"{path}: frame {n} has shape {arr.shape}; give HxWx3 RGB (or HxW, HxWx4)")
    return arr


def _pad_even(img: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides; repeat the last row/column rather than drop image content."""
    h, w = img.shape[:2]
    ph, pw = h % 2, w % 2
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return img


def write_video(path: str | os.PathLike[str], frames: Iterable[Any], *, fps: float | Fraction,
                codec: str = "libx264", crf: int = 18, preset: str = "medium",
                gop: int | None = None, draw: DrawHook | None = None,
                total: int | None = None) -> Path:
    """Encode ``frames`` to ``path`` (container from the extension: .mp4, .mkv, .avi, .mov, .webm).

    ``frames`` yields RGB uint8 arrays or ``(frame_number, array)`` pairs (e.g. from
    ``source.iter_numbered()``); ``draw(frame_number, image)`` may return a new image or draw in
    place and return None. ``crf`` sets quality for x264/x265/VP9/AV1 (lower is better, 18 is visually
    lossless); for ``mpeg4`` (the fallback when libx264 is missing) it maps to a quantiser.
    ``gop`` fixes the keyframe interval in frames (default: the encoder's, 250 for x264); a short
    one (e.g. 30) makes the video seekable and splittable (:func:`split_video`) at that granularity.
    Odd widths/heights are padded by one pixel (yuv420p needs even sides).

    >>> write_video("review.mp4", src.iter_numbered(), fps=src.fps,
    ...             draw=lambda n, img: draw_overlay(img, store.read_frame(n)))  # doctest: +SKIP
    """
    path = Path(path)
    rate = _as_rate(fps)
    if gop is not None and (isinstance(gop, bool) or not isinstance(gop, int) or gop < 1):
        raise InputError(f"gop={gop!r} must be a positive number of frames")
    codec = _usable_codec(codec)
    if total is None and hasattr(frames, "__len__"):
        total = len(frames)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        container = av.open(str(path), mode="w")
    except (av.FFmpegError, ValueError, OSError) as e:
        raise MediaError(f"cannot write video {path}: {e}; use a .mp4, .mkv, .avi or .mov name in a"
                         " writable folder") from None
    enc = _Encoder(path, container, codec, rate, crf, preset, gop)
    ok = False
    try:
        for i, item in enumerate(tqdm(frames, total=total, disable=None, unit="frame",
                                      desc=f"writing {path.name}")):
            enc.add(*_frame_to_write(i, item, path, draw))
        enc.finish()
        ok = True
    except (av.FFmpegError, OSError) as e:
        err = _encoding_error(e, path, enc.written)
        if err is None:
            raise
        raise err from None
    finally:
        try:
            container.close()
        except av.FFmpegError:
            ok = False
        if not ok:
            path.unlink(missing_ok=True)  # a half-written file would only be mistaken for a result
    return path


def _usable_codec(codec: str) -> str:
    """``codec``, or mpeg4 in place of a missing libx264 (with a warning), so a minimal FFmpeg
    build still writes a review video."""
    if not _encoder_available(codec):
        if codec == "libx264" and _encoder_available("mpeg4"):
            warnings.warn("libx264 is not available in this FFmpeg build; writing MPEG-4 Part 2"
                          " instead (larger files, same frames)", stacklevel=3)  # write_video's caller
            return "mpeg4"
        raise InputError(f"video encoder {codec!r} is not available in this FFmpeg build;"
                         " use 'libx264' or 'mpeg4'")
    return codec


def _frame_to_write(i: int, item: Any, path: Path, draw: DrawHook | None) -> tuple[int, np.ndarray]:
    """The frame number and the checked RGB image (after ``draw``) of the ``i``-th item."""
    if isinstance(item, tuple) and len(item) == 2:
        n, img = int(item[0]), item[1]
    else:
        n, img = i, item
    img = _as_rgb(img, n, path)
    if draw is not None:
        drawn = draw(n, img)
        img = _as_rgb(img if drawn is None else drawn, n, path)
    return n, img


@dataclass
class _Encoder:
    """The video stream of an open container; opened on the first frame, whose size it takes."""

    path: Path
    container: av.container.OutputContainer
    codec: str
    rate: Fraction
    crf: int
    preset: str
    gop: int | None
    stream: VideoStream | None = None
    size: tuple[int, int] | None = None
    written: int = 0

    def add(self, n: int, img: np.ndarray) -> None:
        """Encode frame ``n``; every frame must have the first frame's size."""
        if self.size is None or self.stream is None:  # the first frame (both are set together)
            self.size = (img.shape[1], img.shape[0])
            self.stream = _open_stream(self.container, self.codec, self.rate, self.crf, self.preset,
                                       self.gop, self.size)
        elif (img.shape[1], img.shape[0]) != self.size:
            raise InputError(f"{self.path}: frame {n} is {img.shape[1]}x{img.shape[0]} but the video"
                             f" is {self.size[0]}x{self.size[1]}; resize the frames to one size"
                             " (open_frames(..., resize=(w, h)))")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(_pad_even(img)), format="rgb24")
        frame.pts = self.written
        frame.time_base = 1 / self.rate
        self.container.mux(self.stream.encode(frame))
        self.written += 1

    def finish(self) -> None:
        """Flush the encoder's buffered frames."""
        if self.stream is None:
            raise InputError(f"{self.path}: no frames to write; the frame iterable was empty")
        self.container.mux(self.stream.encode(None))


def _encoding_error(e: av.FFmpegError | OSError, path: Path, written: int) -> Exception | None:
    """The typed error for a failure while writing: a full disk, or an FFmpeg failure naming how
    far it got; None for another OSError, which is re-raised as it is."""
    from .split import disk_full_error

    full = disk_full_error(e, path.parent)
    if full is not None:
        return full
    if not isinstance(e, av.FFmpegError):
        return None
    return MediaError(f"{path}: encoding failed after {written} frames: {e}")


def _open_stream(container: av.container.OutputContainer, codec: str, rate: Fraction, crf: int,
                 preset: str, gop: int | None, size: tuple[int, int]) -> VideoStream:
    stream = cast(VideoStream, container.add_stream(codec, rate=rate))  # a video codec's stream
    stream.width, stream.height = size[0] + size[0] % 2, size[1] + size[1] % 2
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = 1 / rate
    opts: dict[str, object] = {}
    if gop is not None:
        opts["g"] = str(gop)
        if codec == "libx264":  # a fixed interval: no extra keyframes on scene cuts
            opts.update({"keyint_min": str(gop), "sc_threshold": "0"})
    if codec in _CRF_CODECS:
        opts["crf"] = str(int(crf))
        if codec == "libx264":
            opts["preset"] = preset
        if codec == "libvpx-vp9":
            opts["b"] = "0"  # constant-quality mode needs the bitrate cap off
    if opts:
        stream.options = opts
    if codec == "mpeg4":
        cc = stream.codec_context
        cc.qscale = True
        cc.global_quality = max(2, min(31, round(crf / 6))) * _FF_QP2LAMBDA
    return stream
