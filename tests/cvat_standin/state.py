"""The stand-in's in-memory state: projects, tasks, labels, jobs, annotations, media, requests, log.

Objects are plain dicts shaped like CVAT's database rows; the server turns them into CVAT's JSON.
Id counters survive :meth:`State.reset` so a task id is never reused while the server runs (cvat-sdk
caches task data on disk by server address and task id).
"""

from __future__ import annotations

import io
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import count
from pathlib import Path
from typing import Any

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class LogEntry:
    """One HTTP request as the server saw it. ``status`` is None when the connection was dropped."""

    method: str
    path: str
    query: dict[str, Any]
    bytes_in: int = 0
    bytes_out: int = 0
    status: int | None = None

    @property
    def bytes(self) -> int:
        """Request body size (what the client sent)."""
        return self.bytes_in


class MediaError(Exception):
    """Uploaded media the stand-in cannot use (the data request then fails, as on a server)."""


class TaskMedia:
    """A task's frames: uploaded images (kept as bytes) or one video (decoded on frame requests)."""

    def __init__(self, kind: str, numbers: list[int], names: list[str], sizes: list[tuple[int, int]],
                 images: list[bytes] | None = None, video: Path | None = None):
        self.kind = kind  # "images" | "video"
        self.numbers = numbers  # source frame number of each task frame
        self.names = names
        self.sizes = sizes  # (width, height) per task frame (one entry for a video)
        self.images = images
        self.video = video
        self._source: Any = None
        self._lock = threading.Lock()

    def size_of(self, i: int) -> tuple[int, int]:
        return self.sizes[i] if self.kind == "images" else self.sizes[0]

    def frame_bytes(self, i: int) -> tuple[bytes, str]:
        """Task frame ``i`` as an encoded image (the uploaded file; a PNG for video frames)."""
        if self.kind == "images":
            assert self.images is not None
            return self.images[i], _mime(self.names[i])
        from PIL import Image

        with self._lock:
            if self._source is None:
                from dl_utils.video_utils import open_frames

                self._source = open_frames(self.video)
            arr = self._source.get_frame(self.numbers[i])
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue(), "image/png"

    def chunk_zip(self, k: int, chunk_size: int) -> bytes:
        """Chunk ``k`` of an image task: a zip of its images in task order (CVAT's 'imageset')."""
        assert self.kind == "images" and self.images is not None
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for i in range(k * chunk_size, min(len(self.images), (k + 1) * chunk_size)):
                z.writestr(f"{i:06d}{Path(self.names[i]).suffix.lower()}", self.images[i])
        return buf.getvalue()

    def close(self) -> None:
        with self._lock:
            if self._source is not None:
                self._source.close()
                self._source = None


def _mime(name: str) -> str:
    ext = Path(name).suffix.lower()
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp",
            ".tif": "image/tiff", ".tiff": "image/tiff", ".webp": "image/webp"}.get(ext,
                                                                                  "application/octet-stream")


def build_media(files: list[tuple[str, bytes]], params: dict[str, Any], workdir: Path) -> TaskMedia:
    """Order, sample and measure uploaded files the way CVAT's task creation does."""
    if not files:
        raise MediaError("No media data found")
    videos = [f for f in files if Path(f[0]).suffix.lower() in VIDEO_EXTENSIONS]
    start = int(params.get("start_frame") or 0)
    step = 1
    ff = str(params.get("frame_filter") or "").strip()
    if ff:
        if not ff.startswith("step="):
            raise MediaError(f"Invalid frame filter {ff!r}")
        step = int(ff[5:])
        if step < 1:
            raise MediaError(f"Invalid frame filter {ff!r}")
    stop = params.get("stop_frame")
    if videos:
        if len(files) != 1:
            raise MediaError("Only one video file can be uploaded, without other files")
        name, data = videos[0]
        path = workdir / Path(name).name
        path.write_bytes(data)
        from dl_utils.video_utils import open_frames

        try:
            src = open_frames(path)
            total = len(src)
            w, h = src.source_size
            src.close()
        except Exception as e:  # any decoding problem: the server's request fails
            raise MediaError(f"cannot read video {name}: {e}") from None
        last = total - 1 if stop is None else min(int(stop), total - 1)
        numbers = list(range(start, last + 1, step))
        if not numbers:
            raise MediaError(f"start_frame {start} is beyond the video's {total} frames")
        return TaskMedia("video", numbers, [Path(name).name], [(int(w), int(h))], video=path)
    method = str(params.get("sorting_method") or "lexicographical")
    order = list(files)
    if method == "lexicographical":
        order.sort(key=lambda f: f[0])
    elif method == "natural":
        from natsort import natsorted

        order = natsorted(order, key=lambda f: f[0])
    elif method == "predefined":
        wanted = params.get("upload_file_order")
        if wanted:
            pos = {n: i for i, n in enumerate(wanted)}
            missing = [f[0] for f in order if f[0] not in pos]
            if missing:
                raise MediaError(f"upload_file_order does not list {missing[0]}")
            order.sort(key=lambda f: pos[f[0]])
    elif method == "random":
        import random

        random.Random(0).shuffle(order)
    else:
        raise MediaError(f"Unknown sorting method {method!r}")
    from PIL import Image

    total = len(order)
    last = total - 1 if stop is None else min(int(stop), total - 1)
    numbers = list(range(start, last + 1, step))
    if not numbers:
        raise MediaError(f"start_frame {start} is beyond the {total} images")
    names, sizes, images = [], [], []
    for n in numbers:
        name, data = order[n]
        try:
            with Image.open(io.BytesIO(data)) as im:
                sizes.append((int(im.width), int(im.height)))
        except Exception:
            raise MediaError(f"file {name} is not an image the server can read") from None
        names.append(name)
        images.append(data)
    return TaskMedia("images", numbers, names, sizes, images=images)


@dataclass
class JobAnnotations:
    """Annotations stored in one job (CVAT keeps them per job)."""

    shapes: dict[int, dict] = field(default_factory=dict)
    tracks: dict[int, dict] = field(default_factory=dict)
    tags: dict[int, dict] = field(default_factory=dict)
    version: int = 0


class State:
    """Everything the server knows. Guard every access with ``state.lock``."""

    def __init__(self, *, version: str = "2.24.0", username: str = "admin",
                 password: str = "admin-pass", share_root: str | Path | None = None):
        self.lock = threading.RLock()
        self.version = version
        self.username = username
        self.password = password
        self.share_root = Path(share_root) if share_root else None
        self.rq_polls_before_finish = 1  # a data request reports 'started' this many times first
        self._ids = {k: count(1) for k in ("project", "task", "label", "job", "shape", "track", "tag",
                                           "tracked_shape", "data", "attribute")}
        self.log: list[LogEntry] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="cvat-standin-"))
        self._clear()

    def _clear(self) -> None:
        self.projects: dict[int, dict] = {}
        self.tasks: dict[int, dict] = {}
        self.labels: dict[int, dict] = {}
        self.jobs: dict[int, dict] = {}
        self.annotations: dict[int, JobAnnotations] = {}  # job id -> its annotations
        self.media: dict[int, TaskMedia] = {}
        self.uploads: dict[int, dict] = {}  # task id -> {"files": [(name, bytes)], "tus": {...}}
        self.requests: dict[str, dict] = {}
        self.sessions: dict[str, dict] = {}  # sessionid -> {"csrf": ..., "user": ...}
        self.login_keys: dict[str, str] = {}  # key from /api/auth/login -> user

    def next_id(self, kind: str) -> int:
        return next(self._ids[kind])

    def reset(self) -> None:
        """Forget all objects, the log and sessions (ids keep counting up)."""
        with self.lock:
            for m in self.media.values():
                m.close()
            self._clear()
            self.log.clear()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp.mkdir(parents=True, exist_ok=True)

    def workdir(self, task_id: int) -> Path:
        d = self._tmp / f"task_{task_id}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def close(self) -> None:
        with self.lock:
            for m in self.media.values():
                m.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    # ------------------------------------------------------------------ helpers
    def task_labels(self, task_id: int) -> list[dict]:
        """Labels a task's shapes may use: its project's when it has one."""
        t = self.tasks[task_id]
        if t.get("project_id"):
            return [lb for lb in self.labels.values() if lb.get("project_id") == t["project_id"]]
        return [lb for lb in self.labels.values() if lb.get("task_id") == task_id]

    def task_jobs(self, task_id: int) -> list[dict]:
        return sorted((j for j in self.jobs.values() if j["task_id"] == task_id),
                      key=lambda j: (j["start_frame"], j["id"]))


__all__ = ["JobAnnotations", "LogEntry", "MediaError", "State", "TaskMedia", "build_media", "now_iso"]
