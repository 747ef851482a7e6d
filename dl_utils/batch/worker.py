"""One source, start to finish, inside a worker: the function both executors call.

:func:`run_source` runs ``dl-utils annotate``'s code path (:func:`dl_utils.drivers.annotate.annotate`,
itself :func:`~dl_utils.drivers.run.run_into_store` with the store ledger) on one
:class:`~dl_utils.batch.plan.BatchSource`; there is no second pipeline. Around it:

* **skip**: a store in ``out_dir`` whose ledger says every asked step is done is not run again;
* **local disk**: SQLite's WAL is unsafe on network filesystems, so the store is written in
  ``work_dir`` (a half-done one from ``out_dir`` is copied there first and resumed) and reaches
  ``out_dir`` whole: WAL merged, copied beside the target, then ``os.replace``d. A reader of
  ``out_dir`` sees the previous store or the new one, never a torn file; a failed source's partial
  store is published the same way, so the next attempt resumes from it;
* **models once per process**: the SAM2 network, the detector and the image segmenter (with
  ``--backend sam3``: SAM 3's image and video models, and SAM2 only for clicks) are kept in a
  per-process cache keyed by :meth:`~dl_utils.batch.options.BatchOptions.cache_key`. With
  ``--compile`` the cached SAM2 video network is built compiled here (upstream's ``vos_optimized``),
  so it compiles once per worker and each source's session runs it with ``--precision``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .options import BatchOptions
from .plan import BatchSource

#: per-process models: {cache key: {"sam_video": ..., "detector": ..., "segmenter": ...}}
_MODELS: dict[str, dict[str, Any]] = {}


@dataclass
class SourceResult:
    """What became of one source (one line of ``summary.jsonl``)."""

    name: str
    store: str
    status: str  # "done" | "skipped" | "failed"
    objects: int = 0
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None
    attempt: int = 1
    worker: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """One JSON line (no newline)."""
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def worker_name() -> str:
    """``host:pid``: which process ran a source (the summary's ``worker``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def one_line(e: BaseException) -> str:
    """An error as the one line the summary and the final table show."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def store_done(path: Path, src: BatchSource, backend: str | None = None, tracker: str | None = None) -> bool:
    """Whether the store at ``path`` records every step ``src`` asks for as done (the annotate ledger),
    by ``backend`` and SAM2 ``tracker`` (``--tracker``) when given."""
    from ..drivers.run import recorded_backend, steps, stored_tracker
    from ..store import AnnotationStore

    if not path.is_file():
        return False
    try:
        with AnnotationStore.open(path, readonly=True) as st:
            led = steps(st)
            rec = recorded_backend(st)
            made_by = stored_tracker(st)
    except Exception:  # a store that does not open is not done: the run says why
        return False
    # another tracker's finished store is not "done" for this one: the run refuses it (or, with
    # --force, recomputes), and the summary says so, instead of a silent "skipped"
    if tracker is not None and made_by is not None and made_by != tracker:
        return False
    if src.points is not None and (led.get("points") or {}).get("status") != "done":
        return False
    if src.text is not None:
        from ..dinoal.caption import parse_caption

        t = led.get("text") or {}
        if t.get("status") != "done" or t.get("prompt") != parse_caption(src.text).caption:
            return False
        # another backend's finished store is not "done" for this one: the run refuses it, and the
        # summary says why, instead of a silent "skipped"
        if backend is not None and rec is not None and rec["backend"] != backend:
            return False
    return src.points is not None or src.text is not None


def _counts(path: Path) -> tuple[int, int]:
    """(objects, frames with results) of a store; (0, 0) when it cannot be read."""
    from ..store import AnnotationStore

    try:
        with AnnotationStore.open(path, readonly=True) as st:
            return len(st.objects()), len(st.frames())
    except Exception:
        return 0, 0


def publish(work: Path, target: Path) -> None:
    """Copy ``work`` to ``target`` atomically: settle, copy beside the target, ``os.replace``."""
    from ..store import settle_store

    settle_store(work)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        shutil.copyfile(work, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _unlink_store(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def models_for(options: BatchOptions, *, video: bool, text: bool, points: bool = True) -> dict[str, Any]:
    """This process's models for ``options`` (built on first use, then reused): the keyword
    arguments :func:`~dl_utils.drivers.annotate.annotate` takes pre-built models through.

    With ``--backend sam3`` the text step needs SAM 3 alone (its video model on video, its image
    model on images); clicks on video refine SAM 3's objects (its video model too), and SAM2 is built
    only for ``points`` on images."""
    cache = _MODELS.setdefault(options.cache_key(), {})
    if options.detector.backend == "sam3":
        return _sam3_models_for(options, cache, video=video, text=text, points=points)
    s = options.sam
    if video and "sam_video" not in cache:  # built compiled with --compile: every session reuses it
        cache["sam_video"] = s.build_video_model()
    if not video and "segmenter" not in cache:
        cache["segmenter"] = s.image_segmenter()
    if text and "detector" not in cache:
        cache["detector"] = options.detector.build(options.detector.class_table())
    out: dict[str, Any] = {"sam_video_model": cache["sam_video"]} if video else {"segmenter": cache["segmenter"]}
    if text:
        out["detector"] = cache["detector"]
    return out


def _sam3_models_for(options: BatchOptions, cache: dict[str, Any], *, video: bool, text: bool,
                     points: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    d = options.detector
    if video and (text or points):  # the text step and clicks (they refine SAM 3's objects) on video
        if "sam3_video" not in cache:
            cache["sam3_video"] = d.build_sam3("video")
        out["sam3_video_model"] = cache["sam3_video"]
    if text and not video:
        if "sam3_image" not in cache:
            cache["sam3_image"] = d.build_sam3("image")
        out["sam3_model"] = cache["sam3_image"]
    if points and not video:
        if "segmenter" not in cache:
            cache["segmenter"] = options.sam.image_segmenter()
        out["segmenter"] = cache["segmenter"]
    return out


class _FrameWatch:
    """Reports the growth of a store's frames to ``on_frames`` every ``period`` seconds (the engines
    take no progress callback through ``annotate``; the store is what they write, read while written)."""

    def __init__(self, path: Path, on_frames: Callable[[int], None] | None, period: float = 1.0) -> None:
        self.path, self.on_frames, self.period = path, on_frames, period
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True) if on_frames else None

    def __enter__(self) -> _FrameWatch:
        if self._thread is not None:
            self._thread.start()
        return self

    def poll(self) -> None:
        if self.on_frames is None or not self.path.is_file():
            return
        n = _counts(self.path)[1]
        if n > self.seen:
            self.on_frames(n - self.seen)
            self.seen = n

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.poll()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()


def run_source(src: BatchSource, options: BatchOptions, work_dir: Path, out_dir: Path, *,
               on_frames: Callable[[int], None] | None = None, threads: int | None = None,
               attempt: int = 1) -> SourceResult:
    """Annotate one source into ``out_dir/src.store_name`` (see the module doc). Errors are caught and
    returned as a ``failed`` result with their one-line message; KeyboardInterrupt propagates after the
    partial store has been published."""
    t0 = time.perf_counter()
    target = Path(out_dir) / src.store_name
    res = SourceResult(name=src.name, store=str(target), status="failed", attempt=attempt, worker=worker_name())
    sam2_tracker = options.sam.tracker if options.detector.backend != "sam3" else None
    if store_done(target, src, options.detector.backend, sam2_tracker):
        res.status = "skipped"
        res.objects, res.frames = _counts(target)
        return res
    work = Path(work_dir) / src.store_name
    work.parent.mkdir(parents=True, exist_ok=True)
    _unlink_store(work)
    if target.is_file():
        shutil.copyfile(target, work)
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
    try:
        with _FrameWatch(work, on_frames):
            _annotate(src, options, work)
        res.status = "done"
    except Exception as e:
        res.error = one_line(e)
    finally:  # done, failed or interrupted: what was committed reaches out_dir whole
        if work.is_file():
            publish(work, target)
            res.objects, res.frames = _counts(target)
            _unlink_store(work)
        res.seconds = round(time.perf_counter() - t0, 3)
    return res


def _annotate(src: BatchSource, options: BatchOptions, work: Path) -> dict[str, Any]:
    """The annotate driver on one source, with this process's cached models."""
    from ..drivers.annotate import annotate

    with options.numbering.open(src.source) as fs:  # image folder or video: which models annotate will ask for
        video = fs.kind == "video"
    models = models_for(options, video=video, text=src.text is not None, points=src.points is not None)
    return annotate(src.source, work, text=src.text, points=src.points, detector_options=options.detector,
                    sam=options.sam, track=options.track, numbering=options.numbering, progress=options.progress,
                    **models)


__all__ = ["SourceResult", "models_for", "one_line", "publish", "run_source", "store_done", "worker_name"]
