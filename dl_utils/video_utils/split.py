"""Split a video into parts by duration or count without re-encoding.

Long recordings are annotated as several CVAT tasks; cutting by remuxing keeps every pixel and takes
seconds, where re-encoding would take minutes and lose quality. The price: a part can only start at
a keyframe, so cuts move to the first keyframe at/after each nominal boundary.
"""

from __future__ import annotations

import errno
import math
import os
import warnings
from bisect import bisect_right
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError, MediaError, mount_point
from .video import _AV_ERRORS, _pick_stream, build_index, open_container


def _cut_points(path: Path, seconds: float | None, parts: int | None) -> tuple[list[int], list[int]]:
    """Decode positions and pts of the keyframes where parts 2..N start."""
    index = build_index(path)
    if index.mode != "pts":
        raise MediaError(f"{path}: the container stores no presentation timestamps, so it cannot be"
                         " cut without re-encoding; remux it first (ffmpeg -i in -c copy out.mp4)")
    t0 = int(index.pts[0])
    tb = index.time_base
    duration = index.duration
    if seconds is not None:
        count = max(1, math.ceil(duration / seconds - 1e-9))
        bounds = [seconds * i for i in range(1, count)]
    else:
        assert parts is not None
        bounds = [duration * i / parts for i in range(1, parts)]
    key_dec = index.key_dec
    key_time = np.array([float((int(index.dec_pts[k]) - t0) * tb) for k in key_dec])
    cuts: list[int] = []
    for b in bounds:
        # Half a frame of slack so a keyframe exactly on the boundary is not missed by rounding.
        j = int(np.searchsorted(key_time, b - 1e-6))
        if j < len(key_dec) and key_dec[j] > 0 and (not cuts or key_dec[j] > cuts[-1]):
            cuts.append(int(key_dec[j]))
    wanted = len(bounds) + 1
    if len(cuts) + 1 < wanted:
        warnings.warn(
            f"{path}: {len(cuts) + 1} part(s) instead of {wanted}: parts must start at keyframes and"
            f" the video has {len(key_dec)} keyframe(s) in {duration:.1f} s; re-encode it with a"
            " shorter GOP (e.g. ffmpeg -i in -g 30 out.mp4) to cut finer", stacklevel=3)
    return cuts, [int(index.dec_pts[c]) for c in cuts]


def split_video(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                seconds: float | None = None, parts: int | None = None) -> list[Path]:
    """Cut ``path`` into ``<stem>_part001<ext>``, ... in ``out_dir``; return the part paths.

    Give exactly one of ``seconds`` (nominal part length) or ``parts`` (nominal count). Packets are
    copied as they are (video and audio); each part starts at a keyframe and its timestamps start at
    0. The frames of the parts, in order, are exactly the frames of the original.
    """
    if (seconds is None) == (parts is None):
        raise InputError("split_video: give exactly one of seconds=N or parts=N")
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0 \
                or math.isinf(seconds):
            raise InputError(f"split_video: seconds={seconds!r} must be a positive number")
        seconds = float(seconds)
    if parts is not None:
        if isinstance(parts, bool) or not isinstance(parts, (int, np.integer)) or parts < 1:
            raise InputError(f"split_video: parts={parts!r} must be an integer >= 1")
        parts = int(parts)
    path = Path(path)
    cuts, cut_pts = _cut_points(path, seconds, parts)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MediaError(f"cannot create output folder {out_dir}: {e.strerror or e}") from None
    names = [out_dir / f"{path.stem}_part{j + 1:03d}{path.suffix}" for j in range(len(cuts) + 1)]
    try:
        _remux(path, names, cuts, cut_pts)
    except BaseException:
        for p in names:
            p.unlink(missing_ok=True)
        raise
    return names


def disk_full_error(e: BaseException, where: Path) -> MediaError | None:
    """A one-line error for a full disk (ENOSPC/EDQUOT) while writing under ``where``, else None."""
    if getattr(e, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
        return None
    target = getattr(e, "filename", None) or where
    return MediaError(f"cannot write {target}: no space left on the device; free space on"
                      f" {mount_point(where)}"
                      " or write somewhere else (--out)")


def _remux(path: Path, names: list[Path], cuts: list[int], cut_pts: list[int]) -> None:
    src = open_container(path)
    outputs: dict[int, tuple[Any, dict[int, Any]]] = {}  # part -> (container, {in stream index: out stream})
    try:
        video = _pick_stream(src, path)
        copied = [video] + [s for s in src.streams.audio]
        for s in src.streams:
            if s not in copied:
                s.discard = av.stream.Discard.all
        vtb = cast(Fraction, video.time_base)  # FFmpeg sets it on every demuxed stream
        index = build_index(path)
        starts_pts = [int(index.pts[0])] + cut_pts  # first presented pts of each part
        cut_times = [float(p * vtb) for p in cut_pts]  # absolute seconds where parts 2.. start
        part_start_s = [float(starts_pts[0] * vtb)] + cut_times

        def output(j: int) -> tuple[Any, dict[int, Any]]:
            if j not in outputs:
                try:
                    oc = av.open(str(names[j]), mode="w")
                except _AV_ERRORS as e:
                    raise disk_full_error(e, names[j].parent) or MediaError(
                        f"cannot write {names[j]}: {e}") from None
                smap = {s.index: oc.add_stream_from_template(s) for s in copied}
                outputs[j] = (oc, smap)
            return outputs[j]

        def close_before(j: int) -> None:
            for k in [k for k in outputs if k < j]:
                outputs.pop(k)[0].close()

        vpos = 0  # decode position of the next video packet (same count as the index)
        vpart = 0
        latest_audio = {s.index: -math.inf for s in copied[1:]}
        bar = tqdm(total=len(index), disable=None, unit="frame", desc=f"splitting {path.name}")
        for pkt in src.demux(copied):
            if pkt.size == 0 or pkt.stream.index not in {s.index for s in copied}:
                continue
            s = pkt.stream
            if s.index == video.index:
                part = bisect_right(cuts, vpos)
                vpos += 1
                bar.update(1)
                vpart = part
                offset = starts_pts[part]
            else:
                stb = cast(Fraction, s.time_base)
                t = float(pkt.pts * stb) if pkt.pts is not None else None
                part = vpart if t is None else bisect_right(cut_times, t + 1e-9)
                if t is not None:
                    latest_audio[s.index] = max(latest_audio[s.index], t)
                offset = round(part_start_s[part] / stb)
            oc, smap = output(part)
            if pkt.pts is not None:
                pkt.pts -= offset
            if pkt.dts is not None:
                pkt.dts -= offset
            pkt.stream = smap[s.index]
            oc.mux(pkt)
            # A part is finished once video has moved on and every audio stream has passed its end.
            done_before = min([vpart] + [bisect_right(cut_times, t) for t in latest_audio.values()])
            if done_before > 0:
                close_before(done_before)
        bar.close()
        for j in range(len(names)):
            output(j)  # a part that received no packet (should not happen) still gets a file
    except MediaError:
        raise
    except _AV_ERRORS as e:
        full = disk_full_error(e, names[0].parent)
        if full is not None:
            raise full from None
        raise MediaError(f"{path}: splitting failed: {e}; check the file plays in ffplay/VLC"
                         ) from None
    finally:
        for oc, _ in outputs.values():
            try:
                oc.close()
            except _AV_ERRORS:
                pass
        src.close()
