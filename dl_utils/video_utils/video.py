"""Video files through PyAV: an exact frame index, exact random access, streaming iteration.

Why an index: ``stream.frames`` is a container estimate (0 for WebM/MKV, wrong for edited MP4s),
and seeking by time is only exact if we know every frame's timestamp. Demuxing all packets once
(no decoding) gives each frame's pts and keyframe flag; sorting by pts gives presentation order, so
frame n is the n-th picture a player shows, whatever the B-frame reordering, the first pts or the
frame rate (VFR). Random access then seeks to the keyframe that starts frame n's GOP and decodes
forward to the frame whose pts is the target, which yields the same pixels sequential decoding does.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, cast

import av
import numpy as np

from ..errors import MediaError
from .sources import FrameSource

_INDEX_CACHE: "OrderedDict[tuple[Any, ...], VideoIndex]" = OrderedDict()
_INDEX_CACHE_SIZE = 16
# Codecs whose skip_frame=NONREF drops only pictures no other picture predicts from.
_NONREF_SAFE = frozenset({"h264", "hevc"})
_NO_TS = np.iinfo(np.int64).min

# Decode errors PyAV raises, plus what a truncated or odd file can make the wrappers raise.
_AV_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError)


@dataclass(frozen=True)
class VideoIndex:
    """Timestamps of every picture of one video stream, built by demuxing (no decoding).

    ``mode`` says which timestamps number the frames: ``"pts"`` (the normal case), ``"dts"`` (the
    container stores only decode times, e.g. some AVI; assumes no reordering) or ``"count"`` (no
    usable timestamps: frames are numbered by counting, random access decodes from the start).
    """

    pts: np.ndarray  # presentation-ordered timestamps (stream time base); frame n has pts[n]
    dec_pos: np.ndarray  # decode (demux) position of frame n
    dec_pts: np.ndarray  # timestamp of each packet in decode order
    seek_ts: np.ndarray  # what to pass to seek() to land on the packet (dts when known)
    key_dec: np.ndarray  # decode positions of keyframe packets
    time_base: Fraction
    mode: str
    last_duration: int  # duration of the last presented frame, in time base units (0 if unknown)
    codec: str = ""
    rate: Fraction | None = None  # the container's average (or guessed) frame rate

    def __len__(self) -> int:
        return len(self.pts)

    def frame_of(self, ts: int | None) -> int | None:
        """Frame number of a decoded frame's timestamp, None if it is not in the index."""
        if ts is None:
            return None
        i = int(np.searchsorted(self.pts, ts))
        return i if i < len(self.pts) and self.pts[i] == ts else None

    def gop_start(self, n: int) -> int:
        """Position in ``key_dec`` of the keyframe to decode frame n from (-1: none before it).

        It is the last keyframe that is both decoded and presented no later than frame n, so that
        open-GOP leading pictures (decoded after a keyframe, shown before it) are reached through
        the previous GOP.
        """
        j = int(np.searchsorted(self.key_dec, self.dec_pos[n], side="right")) - 1
        while j >= 0 and self.dec_pts[self.key_dec[j]] > self.pts[n]:
            j -= 1
        return j

    def key_frame_number(self, j: int) -> int:
        """Frame number (presentation position) of keyframe ``key_dec[j]``."""
        return int(np.searchsorted(self.pts, self.dec_pts[self.key_dec[j]]))

    @property
    def duration(self) -> float:
        if len(self.pts) == 0 or self.mode == "count":
            return float("nan")
        return float((int(self.pts[-1]) - int(self.pts[0]) + self.last_duration) * self.time_base)


def _pick_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    streams = [s for s in container.streams.video
               if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not streams:
        raise MediaError(f"{path} has no video stream (it may be audio only or a still cover);"
                         " check the file plays as a video in ffplay/VLC")
    return streams[0]


def open_container(path: Path) -> av.container.InputContainer:
    """``av.open`` with every failure turned into a MediaError that names the file."""
    if not path.exists():
        raise MediaError(f"{path} does not exist; check the path")
    if path.is_dir():
        raise MediaError(f"{path} is a folder; give a video file")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except _AV_ERRORS as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise MediaError(f"{path} is not a readable video: {reason}; check the file plays in"
                         " ffplay/VLC") from None


def build_index(path: str | os.PathLike[str]) -> VideoIndex:
    """Demux ``path`` once and return its frame index (cached per file, size and mtime)."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _INDEX_CACHE:
        _INDEX_CACHE.move_to_end(key)
        return _INDEX_CACHE[key]
    container = open_container(path)
    try:
        index = _demux_index(container, path)
    finally:
        container.close()
    if key is not None:
        _INDEX_CACHE[key] = index
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
    return index


def _demux_index(container: av.container.InputContainer, path: Path) -> VideoIndex:
    stream = _pick_stream(container, path)
    for other in container.streams:
        if other is not stream:
            other.discard = av.stream.Discard.all  # the demuxer then skips audio etc. cheaply
    pts_l: list[int | None] = []
    dts_l: list[int | None] = []
    key_l: list[bool] = []
    dur_l: list[int | None] = []
    try:
        for p in container.demux(stream):
            if p.size == 0:  # the flush packet PyAV yields at the end
                continue
            pts_l.append(p.pts)
            dts_l.append(p.dts)
            key_l.append(p.is_keyframe)
            dur_l.append(p.duration)
    except _AV_ERRORS as e:
        if not pts_l:
            raise MediaError(f"{path} is not a readable video: {e}; check the file plays in"
                             " ffplay/VLC") from None
        warnings.warn(f"{path}: demuxing stopped after {len(pts_l)} packets ({e}); the file is"
                      " probably truncated, only those frames are used", stacklevel=3)
    n = len(pts_l)
    if n == 0:
        raise MediaError(f"{path} has a video stream but no frames; check the file plays in"
                         " ffplay/VLC")
    tb = stream.time_base or Fraction(1, 1)
    mode = "count"
    if None not in pts_l:
        ts = np.asarray(pts_l, dtype=np.int64)
        mode = "pts"
    elif None not in dts_l:
        ts = np.asarray(dts_l, dtype=np.int64)
        mode = "dts"
    if mode != "count":
        order = np.argsort(ts, kind="stable")
        pts = ts[order]
        if n > 1 and not np.all(np.diff(pts) > 0):
            warnings.warn(f"{path}: duplicate frame timestamps; frames are numbered in decode order"
                          " and random access decodes from the start (slow but exact)", stacklevel=3)
            mode = "count"
    if mode == "count":
        ts = np.arange(n, dtype=np.int64)
        order = np.arange(n)
        pts = ts
    dts = np.asarray([_NO_TS if d is None else d for d in dts_l], dtype=np.int64)
    seek_ts = np.where(dts != _NO_TS, dts, ts)
    key_dec = np.flatnonzero(np.asarray(key_l, dtype=bool))
    last_dur = dur_l[int(order[-1])] or 0
    rate = stream.average_rate or stream.guessed_rate
    return VideoIndex(pts=pts, dec_pos=order, dec_pts=ts, seek_ts=seek_ts, key_dec=key_dec,
                      time_base=Fraction(tb), mode=mode, last_duration=int(last_dur),
                      codec=stream.codec_context.name, rate=Fraction(rate) if rate else None)


# ---------------------------------------------------------------------------------- orientation
def _candidate_matrices() -> list[tuple[int, bool, tuple[int, int, int, int]]]:
    """Signs of FFmpeg's display matrix (a, b, c, d) for each rotation/flip PyAV can write.

    Mirrors ``av_display_rotation_set(-deg)`` + ``av_display_matrix_flip(hflip)``, the calls behind
    ``VideoStream.set_display_rotation(deg, hflip)``: rotate ``deg`` counter-clockwise, then mirror.
    """
    out = []
    for deg in (0, 90, 180, 270):
        c, s = round(math.cos(math.radians(deg))), round(math.sin(math.radians(deg)))
        for hflip in (False, True):
            f = -1 if hflip else 1
            out.append((deg, hflip, (c * f, -s, s * f, c)))
    return out


_CANDIDATES = _candidate_matrices()


def frame_orientation(frame: av.VideoFrame) -> tuple[int, bool]:
    """(counter-clockwise degrees, mirrored) a player applies to show this frame upright."""
    try:
        sd = frame.side_data.get("DISPLAYMATRIX")
    except (KeyError, ValueError):
        sd = None
    if sd is None:
        return 0, False
    m = np.frombuffer(bytes(cast(Any, sd)), dtype=np.int32)  # PyAV types side data as object
    if m.size < 5:
        return 0, False
    signs = tuple(int(np.sign(v)) if abs(int(v)) > (1 << 15) else 0 for v in (m[0], m[1], m[3], m[4]))
    for deg, hflip, cand in _CANDIDATES:
        if cand == signs:
            return deg, hflip
    # Not a multiple of 90 degrees: the nearest right angle is the best a pixel grid can do.
    return (round(frame.rotation / 90) * 90) % 360, False


def orient(img: np.ndarray, orientation: tuple[int, bool]) -> np.ndarray:
    deg, hflip = orientation
    if deg:
        img = np.rot90(img, k=deg // 90)  # np.rot90 turns counter-clockwise, like the matrix
    if hflip:
        img = img[:, ::-1]
    return img


# ---------------------------------------------------------------------------------- decoder
class _Decoder:
    """One open container + a frame generator positioned somewhere in the stream."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._open()

    def _open(self) -> None:
        # PyAV's default slice threading is kept: frame threading ("AUTO") delays every output by
        # a frame per thread, which costs random access, and was not faster for iteration here.
        self.container = open_container(self.path)
        self.stream = _pick_stream(self.container, self.path)
        for other in self.container.streams:
            if other is not self.stream:
                other.discard = av.stream.Discard.all
        self.gen: Generator[tuple[int, av.VideoFrame], None, None] | None = None
        self.last: int | None = None  # frame number of the last frame taken from gen
        self.skip_if: Callable[[int], bool] | None = None  # frames whose decoding may be skipped

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()
            self.gen = None
        self.container.close()

    def reopen(self) -> None:
        self.close()
        self._open()


def _prepend(first: tuple[int, av.VideoFrame],
             rest: Generator[tuple[int, av.VideoFrame], None, None]
             ) -> Generator[tuple[int, av.VideoFrame], None, None]:
    """``itertools.chain`` that can be closed (closing releases the decoder generator at once)."""
    try:
        yield first
        yield from rest
    finally:
        rest.close()


class VideoSource(FrameSource):
    """A video file read through PyAV (any container and codec FFmpeg decodes)."""

    kind = "video"
    path: Path  # always set for a video (FrameSource allows None)

    def __init__(self, path: str | os.PathLike[str], *, start: int | None = None, stop: int | None = None,
                 step: int = 1, resize: object = None, first_frame: int = 0) -> None:
        path = Path(path)
        self._ra: _Decoder | None = None
        # one random-access decoder per source: a propagation's decode-ahead thread and a caller
        # reading a keyframe (the text tracker's detector) take turns, never interleave on it
        self._ra_lock = threading.Lock()
        self._index = idx = build_index(path)
        self._codec = idx.codec
        rate = idx.rate
        self._fps: float | None
        self._fps = float(rate) if rate else None
        if len(idx) > 1 and idx.mode != "count" and idx.pts[-1] > idx.pts[0]:
            # The timestamps are the truth: a header rate is a guess that is wrong for VFR. Keep
            # the header's exact value when they agree (timestamps rounded to ms jitter a little).
            measured = float((len(idx) - 1) / ((int(idx.pts[-1]) - int(idx.pts[0])) * idx.time_base))
            if self._fps is None or abs(measured - self._fps) > 1e-3 * self._fps:
                self._fps = measured
        self._orientation: tuple[int, bool] | None = None
        self._first_size: tuple[int, int] | None = None
        super().__init__(path.name, path, len(idx), start=start, stop=stop, step=step,
                         resize=resize, first_frame=first_frame)

    # ---------------------------------------------------------------- description
    @property
    def index(self) -> VideoIndex:
        return self._index

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def codec(self) -> str | None:
        return self._codec

    @property
    def total_frames(self) -> int:
        """Frames in the whole file (``len`` counts only the kept ones)."""
        return len(self._index)

    @property
    def duration_s(self) -> float:
        d = self._index.duration
        if math.isnan(d) and self._fps:
            return len(self._index) / self._fps
        return d

    @property
    def orientation(self) -> tuple[int, bool]:
        """(counter-clockwise degrees, mirrored) from the display matrix; frames come back upright."""
        if self._orientation is None:
            self._read(self._numbers.start)
        assert self._orientation is not None
        return self._orientation

    @property
    def rotation(self) -> int:
        return self.orientation[0]

    @property
    def source_size(self) -> tuple[int, int]:
        """(width, height) as displayed: the decoded size with the rotation applied."""
        if self._first_size is None:
            self._read(self._numbers.start)
        assert self._first_size is not None
        return self._first_size

    # ---------------------------------------------------------------- decoding
    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        if self._orientation is None:
            self._orientation = frame_orientation(frame)
        img = frame.to_ndarray(format="rgb24")
        if self._orientation != (0, False):
            img = orient(img, self._orientation)
        if self._first_size is None:
            self._first_size = (img.shape[1], img.shape[0])
        return img

    def _numbered(self, dec: _Decoder) -> Generator[tuple[int, av.VideoFrame], None, None]:
        """Decoded frames with their frame numbers; decode errors become MediaError.

        Packets are fed by hand (what ``container.decode`` does) so that pictures nobody asked for
        can be dropped before decoding: for codecs where FFmpeg's ``skip_frame=NONREF`` is exact
        (no other picture references the skipped ones), a packet whose frame ``dec.skip_if`` rejects
        is discarded unless it is a reference picture. That halves the work of reaching a frame deep
        in a long GOP and leaves every decoded picture bit-identical.
        """
        index = self._index
        cc = dec.stream.codec_context
        can_skip = index.mode != "count" and cc.name in _NONREF_SAFE
        skipping = False
        n = -1
        try:
            for packet in dec.container.demux(dec.stream):
                if can_skip:
                    skip_if = dec.skip_if
                    k = index.frame_of(packet.pts) if packet.size else None
                    want_skip = skip_if is not None and k is not None and skip_if(k)
                    if want_skip != skipping:
                        cc.skip_frame = "NONREF" if want_skip else "DEFAULT"
                        skipping = want_skip
                for frame in packet.decode():
                    if index.mode == "count":
                        n += 1
                    else:
                        ts = frame.pts if frame.pts is not None or index.mode == "pts" else frame.dts
                        k = index.frame_of(ts)
                        if k is None:  # a picture the index does not know (should not happen)
                            continue
                        n = k
                    yield n, frame
        except _AV_ERRORS as e:
            raise MediaError(f"{self.path}: decoding failed after frame {n}: {e}; the file is"
                             " damaged there, re-encode or cut it (ffmpeg -i in -c:v libx264"
                             " out.mp4)") from None
        finally:
            if skipping:
                cc.skip_frame = "DEFAULT"

    def _seek_to(self, dec: _Decoder, n: int) -> None:
        """Point ``dec.gen`` at a stream position from which frame ``n`` will be decoded."""
        index = self._index
        dec.last = None
        if dec.gen is not None:
            dec.gen.close()
            dec.gen = None
        if index.mode != "count" and n > 0:
            j = index.gop_start(n)
            # Try the GOP's keyframe; if the demuxer lands past it (its seek index uses a different
            # timestamp than ours), step back one keyframe at a time.
            for jj in range(j, max(j - 4, -1), -1):
                kd = int(index.key_dec[jj])
                try:
                    dec.container.seek(int(index.seek_ts[kd]), stream=dec.stream, backward=True,
                                       any_frame=False)
                except _AV_ERRORS:
                    break
                gen = self._numbered(dec)
                first = next(gen, None)
                if first is None:
                    continue
                ts = first[1].pts if first[1].pts is not None else first[1].dts
                if ts is not None and ts <= index.dec_pts[kd]:
                    dec.gen = _prepend(first, gen)
                    return
                gen.close()
        # From the very start: a fresh container is the one position every demuxer gets right.
        dec.reopen()
        dec.gen = self._numbered(dec)

    def _take(self, dec: _Decoder, n: int) -> av.VideoFrame | None:
        """Advance ``dec`` to frame ``n``; None if the stream ends or skips past it."""
        assert dec.gen is not None
        for k, frame in dec.gen:
            dec.last = k
            if k == n:
                return frame
            if k > n:
                return None
        dec.gen = None
        return None

    def _forward_is_cheaper(self, dec: _Decoder, n: int) -> bool:
        if dec.gen is None or dec.last is None or dec.last >= n:
            return False
        if self._index.mode == "count":
            return True
        j = self._index.gop_start(n)
        if j < 0:
            return True
        key = self._index.key_frame_number(j)
        # Same GOP (or the keyframe is behind us): decoding on is never worse than seeking.
        return key <= dec.last + 1 or n - dec.last <= n - key

    def _read(self, n: int) -> np.ndarray:
        with self._ra_lock:
            return self._read_locked(n)

    def _read_locked(self, n: int) -> np.ndarray:
        if self._ra is None:
            self._ra = _Decoder(Path(self.path))
        dec = self._ra
        dec.skip_if = lambda k: k < n
        if self._forward_is_cheaper(dec, n):
            frame = self._take(dec, n)
            if frame is not None:
                return self._rgb(frame)
        self._seek_to(dec, n)
        frame = self._take(dec, n)
        if frame is None:
            raise MediaError(f"{self.path}: frame {n} could not be decoded (its packet gave no"
                             f" picture); the file is damaged or unusual, re-encode it"
                             f" (ffmpeg -i in -c:v libx264 out.mp4)")
        return self._rgb(frame)

    def _iter(self, numbers: range) -> Iterator[tuple[int, np.ndarray]]:
        dec = _Decoder(Path(self.path))
        dec.skip_if = lambda k: k not in numbers
        try:
            if numbers.start > 0:
                self._seek_to(dec, numbers.start)
            else:
                dec.gen = self._numbered(dec)
            first, last, step = numbers.start, numbers[-1], numbers.step
            assert dec.gen is not None
            for k, frame in dec.gen:
                if k > last:
                    break
                if k >= first and (k - first) % step == 0:
                    yield k, self._rgb(frame)
        finally:
            dec.close()

    def close(self) -> None:
        ra = getattr(self, "_ra", None)
        if ra is not None:
            self._ra = None
            ra.close()
