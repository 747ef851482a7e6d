"""dl_utils.video_utils: frame sources, random access exactness, writing, splitting, probing."""

from __future__ import annotations

import json
import os
import subprocess
import weakref
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from dl_utils.errors import FrameIndexError, InputError, MediaError
from dl_utils.video_utils import (
    FrameSource,
    ImageSequence,
    VideoSource,
    open_frames,
    probe,
    split_video,
    write_video,
)

from .conftest import ROOT, synthetic_frame

W, H = 128, 96


# ------------------------------------------------------------------------------------------ helpers
def encode(path: Path, codec: str = "libx264", n: int = 40, *, options: dict | None = None,
           fmt: str | None = None, rate: int = 25, pts=None, time_base: Fraction | None = None,
           rotation: int | None = None, hflip: bool = False, audio: bool = False) -> Path:
    """Write synthetic_frame(0..n-1) with PyAV; ``pts(i)`` gives custom timestamps."""
    if codec not in av.codecs_available:
        pytest.skip(f"encoder {codec} is not in this FFmpeg build")
    c = av.open(str(path), "w", format=fmt)
    v = c.add_stream(codec, rate=rate)
    v.width, v.height, v.pix_fmt = W, H, "yuv420p"
    if time_base is not None:
        v.codec_context.time_base = time_base
    if options:
        v.options = options
    if rotation is not None:
        v.set_display_rotation(rotation, hflip=hflip)
    a = None
    if audio:
        a = c.add_stream("aac", rate=48000)
        a.layout = "mono"
    apts = 0
    for i in range(n):
        f = av.VideoFrame.from_ndarray(synthetic_frame(i), format="rgb24")
        if pts is not None:
            f.pts, f.time_base = pts(i), time_base
        c.mux(v.encode(f))
        while a is not None and apts < (i + 1) * 48000 / rate:
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                            layout="mono")
            af.sample_rate, af.pts = 48000, apts
            apts += 1024
            c.mux(a.encode(af))
    c.mux(v.encode())
    if a is not None:
        c.mux(a.encode())
    c.close()
    return path


def raw_pyav_frames(path: Path) -> list[np.ndarray]:
    """The reference: plain PyAV sequential decoding."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def nearest_synthetic(img: np.ndarray, n: int) -> int:
    """Which synthetic_frame(j) a decoded picture shows (lossy codecs: the closest one)."""
    errs = [np.abs(img.astype(np.int16) - synthetic_frame(j)).mean() for j in range(n)]
    return int(np.argmin(errs))


def assert_random_equals_sequential(src: FrameSource, order: list[int]) -> list[np.ndarray]:
    seq = list(src)
    assert len(seq) == len(src)
    for i in order:
        got = src[i]
        assert got.dtype == np.uint8 and got.flags["C_CONTIGUOUS"] and got.shape[2] == 3
        assert np.array_equal(got, seq[i]), f"{src.name}: src[{i}] differs from sequential decoding"
    return seq


# ------------------------------------------------------------------------------------------ bedroom
@pytest.mark.slow
def test_bedroom_every_frame_random_access_equals_sequential(bedroom_mp4, rng):
    src = open_frames(bedroom_mp4)
    assert isinstance(src, VideoSource)
    assert len(src) == 200 and src.fps == 30.0 and src.size == (960, 540)
    assert src.codec == "h264" and src.frame_names is None
    seq = list(src)
    raw = raw_pyav_frames(bedroom_mp4)
    assert len(seq) == len(raw) == 200
    assert all(np.array_equal(a, b) for a, b in zip(seq, raw))  # iteration == plain PyAV
    order = rng.permutation(200).tolist()
    for i in order:
        assert np.array_equal(src[i], seq[i]), f"bedroom.mp4 frame {i}"
    assert np.array_equal(src[-1], seq[199])
    src.close()


def test_bedroom_selection_and_media_info(bedroom_mp4):
    src = open_frames(bedroom_mp4, start=5, stop=50, step=10)
    assert src.frame_numbers == [5, 15, 25, 35, 45] and len(src) == 5
    assert src.frame_number(1) == 15 and src.frame_number(-1) == 45 and src.index_of(25) == 2
    full = open_frames(bedroom_mp4, stop=45)
    numbered = list(src.iter_numbered())
    assert [n for n, _ in numbered] == [5, 15, 25, 35, 45]
    seq = list(full)
    for n, img in numbered:
        assert np.array_equal(img, seq[n])
    assert np.array_equal(src.get_frame(35), seq[35]) and np.array_equal(src[2], seq[25])
    assert [n for n, _ in src.iter_numbered(start=10, stop=40)] == [15, 25, 35]
    m = src.media_info()
    assert (m.name, m.width, m.height, m.frames, m.fps) == ("bedroom.mp4", 960, 540,
                                                             [5, 15, 25, 35, 45], 30.0)
    assert (m.start, m.stop, m.step, m.frame_names, m.path) == (5, 45, 10, None, str(bedroom_mp4))
    assert m.task_index(25) == 2
    with pytest.raises(FrameIndexError, match="not one of the kept frames"):
        src.get_frame(6)
    tail = open_frames(bedroom_mp4, start=190, stop=10_000)  # like CVAT: a stop past the end = end
    assert tail.frame_numbers == list(range(190, 200))


def test_bedroom_resize_and_probe(bedroom_mp4):
    full = open_frames(bedroom_mp4, stop=3)
    small = open_frames(bedroom_mp4, stop=3, resize=480)
    fixed = open_frames(bedroom_mp4, stop=3, resize=(320, 200))
    assert small.size == (480, 270) and small.source_size == (960, 540)
    assert fixed.size == (320, 200)
    ref = full[2]
    assert np.array_equal(small[2], cv2.resize(ref, (480, 270), interpolation=cv2.INTER_AREA))
    assert np.array_equal(fixed[2], cv2.resize(ref, (320, 200), interpolation=cv2.INTER_AREA))
    assert small.media_info().width == 960  # annotations stay in source pixels
    big = open_frames(bedroom_mp4, stop=0, resize=1920)
    assert big[0].shape == (1080, 1920, 3)
    assert np.array_equal(big[0], cv2.resize(full[0], (1920, 1080), interpolation=cv2.INTER_LINEAR))
    info = probe(bedroom_mp4)
    json.dumps(info)
    assert info == {"kind": "video", "path": str(bedroom_mp4), "frames": 200, "fps": 30.0,
                    "width": 960, "height": 540, "codec": "h264",
                    "duration_s": pytest.approx(200 / 30, abs=1e-6), "rotation": 0, "keyframes": 1}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_iteration_memory_is_constant(bedroom_mp4):
    # The arrays are views on FFmpeg's buffers, which tracemalloc does not see: check that no
    # yielded frame stays alive (weak references) and that resident memory stays flat.
    if not Path("/proc/self/statm").exists():
        pytest.skip("needs /proc to measure resident memory")
    src = open_frames(bedroom_mp4)
    frame_bytes = 960 * 540 * 3
    alive = []
    before = _rss_bytes()
    peak = before
    for img in src:
        alive.append(weakref.ref(img))
        peak = max(peak, _rss_bytes())
    del img
    assert len(alive) == 200
    assert sum(r() is not None for r in alive) == 0, "the source keeps references to frames"
    growth = peak - before
    assert growth < 25 * frame_bytes, f"RSS grew {growth / 1e6:.0f} MB while iterating (all 200" \
        f" frames are {200 * frame_bytes / 1e6:.0f} MB): frames are being kept"


def test_random_access_during_and_after_iteration(tmp_path):
    path = encode(tmp_path / "b.mp4", options={"bf": "2", "g": "12"})
    src = open_frames(path)
    ref = raw_pyav_frames(path)
    seen = []
    for i, img in enumerate(src):
        seen.append(img)
        if i == 10:
            assert np.array_equal(src[30], ref[30])  # seeks its own decoder...
            assert np.array_equal(src[3], ref[3])
    assert len(seen) == 40 and all(np.array_equal(a, b) for a, b in zip(seen, ref))  # ...not ours
    src.close()
    assert np.array_equal(src[25], ref[25])  # usable again after close()
    with src:
        assert np.array_equal(src[-1], ref[-1])


# ------------------------------------------------------------------------------------------ synthetic
SYNTHETIC = {
    "h264-bframes.mp4": dict(codec="libx264", options={"bf": "2", "g": "12"}),
    "h264-bframes.mkv": dict(codec="libx264", options={"bf": "2", "g": "12"}),
    "h264.ts": dict(codec="libx264", options={"bf": "2", "g": "12"}),
    "h264-opengop.mp4": dict(codec="libx264", options={
        "bf": "3", "x264-params": "open-gop=1:keyint=12:min-keyint=12:scenecut=0"}),
    "hevc-opengop.mkv": dict(codec="libx265", options={
        "x265-params": "keyint=12:min-keyint=12:bframes=3:open-gop=1:log-level=error"}),
    "mpeg2.ts": dict(codec="mpeg2video", options={"g": "12", "bf": "2"}),
    "mpeg4.avi": dict(codec="mpeg4", options={"g": "12"}),
    "mpeg4-bframes.avi": dict(codec="mpeg4", options={"g": "12", "bf": "2"}),
    "vp9.webm": dict(codec="libvpx-vp9", options={"g": "12"}),
    "start100.mp4": dict(codec="libx264", options={"bf": "2", "g": "12"}, pts=lambda i: 100 + i,
                         time_base=Fraction(1, 25)),
    "vfr.mkv": dict(codec="libx264", options={"bf": "2", "g": "12"}, pts=lambda i: i * i,
                    time_base=Fraction(1, 100)),
    "raw.h264": dict(codec="libx264", options={"bf": "2", "g": "12"}, fmt="h264"),
}


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_random_access_matches_sequential(tmp_path, name, rng):
    path = encode(tmp_path / name, n=40, **SYNTHETIC[name])
    src = open_frames(path)
    assert len(src) == 40 and src.size == (W, H)
    seq = assert_random_equals_sequential(src, rng.permutation(40).tolist())
    raw = raw_pyav_frames(path)
    assert len(raw) == 40 and all(np.array_equal(a, b) for a, b in zip(seq, raw))
    # Frame numbers follow presentation order: frame i shows synthetic picture i.
    assert [nearest_synthetic(seq[i], 40) for i in (0, 1, 2, 13, 27, 39)] == [0, 1, 2, 13, 27, 39]
    idx = src.index
    if "bframes" in name or "opengop" in name or name in ("h264.ts", "mpeg2.ts", "start100.mp4",
                                                          "vfr.mkv"):
        assert not np.all(np.diff(idx.dec_pos) > 0), "the file should have reordered (B) frames"
        assert len(idx.key_dec) >= 3  # several GOPs, so seeks really happen
    if name == "start100.mp4":
        assert idx.pts[0] > 0
    if name == "vfr.mkv":
        assert src.fps == pytest.approx(39 / 15.21)
    if name == "raw.h264":
        assert idx.mode == "count"  # no timestamps in an elementary stream: still exact, slower
    sub = open_frames(path, start=3, stop=30, step=9)
    assert sub.frame_numbers == [3, 12, 21, 30]
    assert all(np.array_equal(img, seq[n]) for n, img in sub.iter_numbered())
    assert np.array_equal(sub.get_frame(21), seq[21])


@pytest.mark.parametrize("rotation,hflip,expect", [
    (90, False, lambda img: np.rot90(img, 1)),
    (-90, False, lambda img: np.rot90(img, -1)),
    (180, False, lambda img: np.rot90(img, 2)),
    (90, True, lambda img: np.rot90(img, 1)[:, ::-1]),
])
def test_rotation_metadata_is_honoured(tmp_path, rotation, hflip, expect):
    path = encode(tmp_path / "rot.mp4", n=12, options={"g": "6", "bf": "2"}, rotation=rotation,
                  hflip=hflip)
    src = open_frames(path)
    raw = raw_pyav_frames(path)  # PyAV itself does not rotate
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).rotation % 360 == rotation % 360  # the file carries it
    shape = (W, H) if rotation % 180 else (H, W)
    assert src.size == (shape[1], shape[0]) and src.source_size == src.size
    assert src.orientation == (rotation % 360, hflip)
    for i in (0, 5, 11, 7):
        img = src[i]
        assert img.shape[:2] == shape and img.flags["C_CONTIGUOUS"]
        assert np.array_equal(img, expect(raw[i]))
    assert np.array_equal(list(src)[5], src[5])
    # The display transform applied to the encoded synthetic picture: up to coding noise.
    err = np.abs(src[3].astype(np.int16) - expect(synthetic_frame(3))).mean()
    assert err < 4
    info = probe(path)
    assert (info["width"], info["height"], info["rotation"]) == (shape[1], shape[0], rotation % 360)
    assert src.media_info().width == shape[1]


# ------------------------------------------------------------------------------------------ images
def _write_images(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, name in enumerate(names):
        img = synthetic_frame(k * 10, 40, 60)
        cv2.imwrite(str(folder / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        out[name] = img
    return out


def test_image_folder_natural_sort_and_media_info(tmp_path):
    imgs = _write_images(tmp_path / "seq", ["10.png", "2.png", "1.PNG", "frame_3.bmp"])
    (tmp_path / "seq" / "notes.txt").write_text("not an image")
    cv2.imwrite(str(tmp_path / "seq" / ".hidden.png"), np.zeros((4, 4, 3), np.uint8))
    src = open_frames(tmp_path / "seq")
    assert isinstance(src, ImageSequence)
    assert src.frame_names == ["1.PNG", "2.png", "10.png", "frame_3.bmp"]
    assert len(src) == 4 and src.fps is None and src.size == (60, 40)
    for i, name in enumerate(src.frame_names):
        assert np.array_equal(src[i], imgs[name])  # PNG/BMP are lossless: exact
    assert [n for n, _ in src.iter_numbered()] == [0, 1, 2, 3]
    assert np.array_equal(list(src)[2], imgs["10.png"])
    sub = open_frames(tmp_path / "seq", start=1, step=2)
    m = sub.media_info()
    assert (m.name, m.width, m.height, m.frames, m.frame_names) == ("seq", 60, 40, [1, 3],
                                                                    ["2.png", "frame_3.bmp"])
    assert m.frame_name(3) == "frame_3.bmp" and m.fps is None
    info = probe(tmp_path / "seq")
    assert (info["kind"], info["frames"], info["width"], info["height"]) == ("images", 4, 60, 40)
    json.dumps(info)


def test_glob_printf_single_and_list(tmp_path, truck_jpg):
    imgs = _write_images(tmp_path / "f", [f"img_{i:03d}.png" for i in (1, 2, 9, 10, 11)])
    g = open_frames(str(tmp_path / "f" / "img_*.png"))
    assert g.frame_names == ["img_001.png", "img_002.png", "img_009.png", "img_010.png",
                             "img_011.png"]
    p = open_frames(str(tmp_path / "f" / "img_%03d.png"), start=1, stop=3)
    assert p.frame_names == g.frame_names and p.frame_numbers == [1, 2, 3]
    assert np.array_equal(p[0], imgs["img_002.png"])
    one = open_frames(truck_jpg)
    ref = cv2.cvtColor(cv2.imread(str(truck_jpg)), cv2.COLOR_BGR2RGB)
    assert len(one) == 1 and np.array_equal(one[0], ref) and one.codec == "jpeg"
    assert one.size == (ref.shape[1], ref.shape[0]) and one.media_info().frame_names == ["truck.jpg"]
    files = [tmp_path / "f" / "img_010.png", tmp_path / "f" / "img_001.png"]
    lst = open_frames(files)  # a list keeps the caller's order
    assert lst.frame_names == ["img_010.png", "img_001.png"]
    assert np.array_equal(lst[1], imgs["img_001.png"])
    r = open_frames(files, resize=30)
    assert r.size == (30, 20) and r[0].shape == (20, 30, 3)
    assert np.array_equal(r[0], cv2.resize(imgs["img_010.png"], (30, 20),
                                           interpolation=cv2.INTER_AREA))
    assert open_frames(files, resize=(16, 16))[1].shape == (16, 16, 3)


# ------------------------------------------------------------------------------------------ errors
def test_errors_name_the_input_and_the_fix(tmp_path, bedroom_mp4):
    with pytest.raises(MediaError, match=r"nope\.mp4 does not exist"):
        open_frames(tmp_path / "nope.mp4")
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match=r"broken\.mp4 is not a readable video: .*ffplay/VLC"):
        open_frames(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError, match="empty: no images found"):
        open_frames(tmp_path / "empty")
    with pytest.raises(MediaError, match="matches no image files"):
        open_frames(str(tmp_path / "*.jpg"))
    with pytest.raises(MediaError, match="matches no files"):
        open_frames(str(tmp_path / "x_%04d.png"))
    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w") as c:
        a = c.add_stream("aac", rate=48000)
        a.layout = "mono"
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts = 48000, 0
        c.mux(a.encode(af))
        c.mux(a.encode())
    with pytest.raises(MediaError, match=r"audio\.m4a has no video stream"):
        open_frames(audio)

    src = open_frames(bedroom_mp4)
    with pytest.raises(FrameIndexError, match=r"bedroom\.mp4: index 200 is out of range; valid"
                                              r" indices are 0\.\.199"):
        src[200]
    with pytest.raises(IndexError):  # FrameIndexError is an IndexError too
        src[-201]
    with pytest.raises(InputError, match="step=0 must be >= 1"):
        open_frames(bedroom_mp4, step=0)
    with pytest.raises(InputError, match=r"start=250 is outside the source; valid frame numbers"
                                         r" are 0\.\.199"):
        open_frames(bedroom_mp4, start=250)
    with pytest.raises(InputError, match="stop=3 is before start=10"):
        open_frames(bedroom_mp4, start=10, stop=3)
    with pytest.raises(InputError, match="resize"):
        open_frames(bedroom_mp4, resize=(0, 10))
    with pytest.raises(MediaError, match="do not exist"):
        open_frames([tmp_path / "a.png"])

    folder = tmp_path / "imgs"
    _write_images(folder, ["1.png"])
    (folder / "2.png").write_bytes(b"not a png")
    seq = open_frames(folder)
    assert len(seq) == 2
    with pytest.raises(MediaError, match=r"2\.png is not a readable image"):
        seq[1]


# ------------------------------------------------------------------------------------------ writer
def test_write_video_round_trip_and_draw_hook(tmp_path):
    frames = [(n, synthetic_frame(n, 95, 127)) for n in range(10, 40)]  # odd size: padded
    calls = []

    def draw(n, img):
        calls.append(n)
        out = img.copy()
        out[:8, :8] = (255, 0, 0)
        return out

    out = write_video(tmp_path / "out" / "review.mp4", iter(frames), fps=Fraction(30000, 1001),
                      draw=draw, gop=10)
    assert out == tmp_path / "out" / "review.mp4" and out.is_file()
    assert calls == list(range(10, 40))
    src = open_frames(out)
    assert len(src) == 30 and src.size == (128, 96) and src.codec == "h264"
    assert src.fps == pytest.approx(30000 / 1001)
    assert [src.index.key_frame_number(j) for j in range(len(src.index.key_dec))] == [0, 10, 20]
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    for i in (0, 17, 29):
        got = src[i][:95, :127].astype(np.int16)
        want = frames[i][1].astype(np.int16)
        assert np.abs(got[16:, 16:] - want[16:, 16:]).mean() < 3  # crf 18: close to the input
        assert got[2:6, 2:6, 0].min() > 200 and got[2:6, 2:6, 1].max() < 60  # the overlay is there

    avi = write_video(tmp_path / "plain.avi", [f for _, f in frames[:5]], fps=25, codec="mpeg4")
    s2 = open_frames(avi)
    assert len(s2) == 5 and s2.codec == "mpeg4" and s2.fps == 25.0
    assert np.abs(s2[4][:95, :127].astype(np.int16) - frames[4][1]).mean() < 4

    with pytest.raises(InputError, match="no frames to write"):
        write_video(tmp_path / "empty.mp4", [], fps=25)
    assert not (tmp_path / "empty.mp4").exists()
    with pytest.raises(InputError, match="frame 1 is 64x48 but the video is 128x96"):
        write_video(tmp_path / "mixed.mp4", [synthetic_frame(0), synthetic_frame(1, 48, 64)], fps=25)
    assert not (tmp_path / "mixed.mp4").exists()
    with pytest.raises(InputError, match="fps"):
        write_video(tmp_path / "x.mp4", [synthetic_frame(0)], fps=0)
    with pytest.raises(InputError, match="gop"):
        write_video(tmp_path / "x.mp4", [synthetic_frame(0)], fps=25, gop=0)


# ------------------------------------------------------------------------------------------ split
def _check_parts(parts: list[Path], original: list[np.ndarray], audio: bool) -> list[int]:
    counts, k = [], 0
    for p in parts:
        with av.open(str(p)) as c:
            first = next(c.decode(video=0))
            assert first.time == pytest.approx(0, abs=1e-6), f"{p.name} does not start at 0"
            assert bool(c.streams.audio) == audio
        src = open_frames(p)
        for img in src:
            assert np.array_equal(img, original[k]), f"{p.name}: frame differs from original {k}"
            k += 1
        counts.append(len(src))
    assert k == len(original)
    return counts


def test_split_video_by_seconds_and_parts(tmp_path):
    path = encode(tmp_path / "clip.mp4", n=120, rate=30,
                  options={"g": "30", "bf": "2", "sc_threshold": "0"}, audio=True)
    original = list(open_frames(path))
    parts = split_video(path, tmp_path / "by_s", seconds=1)
    assert [p.name for p in parts] == [f"clip_part00{i}.mp4" for i in range(1, 5)]
    assert _check_parts(parts, original, audio=True) == [30, 30, 30, 30]
    parts = split_video(path, tmp_path / "by_n", parts=3)
    # nominal cuts at 1.33 s and 2.67 s move to the next keyframes (2 s, 3 s)
    assert _check_parts(parts, original, audio=True) == [60, 30, 30]
    with pytest.warns(UserWarning, match="4 part.* instead of 5"):  # no keyframe after 3.6 s
        parts = split_video(path, tmp_path / "by_s2", seconds=0.9)  # cuts at 1 s, 2 s, 3 s
    assert _check_parts(parts, original, audio=True) == [30, 30, 30, 30]
    with pytest.raises(InputError, match="exactly one of"):
        split_video(path, tmp_path / "x")
    with pytest.raises(InputError, match="exactly one of"):
        split_video(path, tmp_path / "x", seconds=1, parts=2)
    with pytest.raises(InputError, match="seconds"):
        split_video(path, tmp_path / "x", seconds=-1)
    with pytest.raises(MediaError, match="does not exist"):
        split_video(tmp_path / "missing.mp4", tmp_path / "x", seconds=1)


def test_split_video_single_keyframe_gives_one_part(bedroom_mp4, tmp_path):
    with pytest.warns(UserWarning, match="1 part.* instead of 4.*1 keyframe"):
        parts = split_video(bedroom_mp4, tmp_path, seconds=2)
    assert parts == [tmp_path / "bedroom_part001.mp4"]
    assert len(open_frames(parts[0])) == 200


def test_split_video_script_end_to_end(tmp_path):
    script = ROOT / "split-video.sh"
    assert os.access(script, os.X_OK)
    path = encode(tmp_path / "movie.mkv", n=90, rate=30,
                  options={"g": "30", "bf": "2", "sc_threshold": "0"})
    proc = subprocess.run([str(script), str(path), "1"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "movie_parts"
    listed = [Path(line) for line in proc.stdout.split()]
    assert listed == [out / f"movie_part00{i}.mkv" for i in (1, 2, 3)]
    assert _check_parts(listed, list(open_frames(path)), audio=False) == [30, 30, 30]
    usage = subprocess.run([str(script)], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    missing = subprocess.run([str(script), str(tmp_path / "nope.mp4"), "2"], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode != 0 and "nope.mp4" in missing.stderr


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"),
                                     ("TIFF", "tif"), ("BMP", "bmp")])
def test_image_size_from_header_matches_the_decoded_image(tmp_path, fmt, ext):
    """Per-frame sizes come from headers; they must equal what read_image returns, EXIF turn
    included (a TIFF's orientation tag once gave the unturned size, and every mask was refused)."""
    from PIL import Image

    from dl_utils.video_utils.sources import image_size, read_image

    path = tmp_path / f"turned.{ext}"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(path, fmt, exif=exif)
    img = read_image(path)
    assert image_size(path) == (img.shape[1], img.shape[0])


def test_video_source_reads_from_two_threads_are_the_sequential_frames(bedroom_mp4):
    """A propagation's decode-ahead thread and the caller (the text tracker's detector reading a
    keyframe) share one VideoSource: concurrent random reads give exactly the frames a lone reader
    gets (before the lock, PyAV's generator failed with "generator already executing")."""
    import threading

    from dl_utils.video_utils import open_frames

    src = open_frames(bedroom_mp4)
    want = {i: src[i].copy() for i in (0, 3, 40, 41, 90, 150)}
    shared = open_frames(bedroom_mp4)
    errors: list[BaseException] = []
    got: dict[tuple[int, int], np.ndarray] = {}

    def reader(k: int, order: list[int]) -> None:
        try:
            for _ in range(3):
                for i in order:
                    got[(k, i)] = shared[i]
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(0, [0, 3, 40, 41, 90, 150])),
               threading.Thread(target=reader, args=(1, [150, 90, 41, 40, 3, 0]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(np.array_equal(got[(k, i)], want[i]) for k in (0, 1) for i in want)
