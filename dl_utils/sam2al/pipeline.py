"""The writer side of a pipelined propagation pass: masks to RLE to SQLite on a thread of its own.

A propagated frame costs the network's time plus the post-processing every caller pays: the
low-resolution logits upscaled to the source size, thresholded and copied to the host (on a GPU a
synchronisation), the masks run-length encoded, one SQLite transaction. None of that is needed
before the network can start on the next frame, so :class:`FrameWriter` does it on a background
thread fed by a bounded queue, while the caller's thread keeps SAM2 busy.

What stays as it was without the pipeline:

* frames are committed one transaction each, in the order the pass produced them;
* a kill loses only frames computed and not yet committed: at most ``queue + 2`` (the queue, the
  frame being encoded, the frame the pass is handing over); resume recomputes them as it does
  every missing frame;
* the per-frame ``callback`` runs right after its frame commits (on the writer thread when
  pipelined), so a ``cancel()`` from it stops at exactly that frame: frames computed after it and
  still queued are dropped, never written;
* an exception in the writer (a store error, an exception or ``KeyboardInterrupt`` from the
  callback) stops the writer and is raised in the caller's thread with its own type;
* an exception or Ctrl-C in the caller's thread: the frames computed before it are committed,
  then the thread ends.

The store is the session's own: while a pipelined pass runs, every write to it goes through this
thread (the store's lock serialises the reads the pass makes on the caller's thread).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

_END = object()


@dataclass(frozen=True)
class Pipeline:
    """How far a pipelined pass runs ahead (``VideoSession(pipeline=...)``).

    ``decode_ahead``: frames decoded, preprocessed and run through SAM2's image encoder ahead of
    the per-object tracking (each holds the encoder's features: up to 7 MB at 256 px, 105 MB
    at 1024 px). ``write_queue``: computed frames waiting for the writer (each holds its objects'
    low-resolution logits). Both bound memory whatever the clip length; ``write_queue`` also bounds
    what a kill loses (``write_queue + 2`` frames at most).
    """

    decode_ahead: int = 2
    write_queue: int = 4

    def __post_init__(self) -> None:
        for name in ("decode_ahead", "write_queue"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"Pipeline({name}={v!r}): give a whole number of frames >= 1")


def as_pipeline(value: Any, device: Any = None) -> Pipeline | None:
    """``True`` -> default :class:`Pipeline`, ``False``/``None`` -> off, a Pipeline as is;
    ``"auto"`` (the session's default) -> on for a CUDA ``device``, off otherwise.

    Why off on a CPU: the network's own torch threads already use every core there, so the decode
    and writer threads only compete with it (measured on 2 cores: 0.95x the unpipelined pass). On a
    GPU the host work they take over (decode, preprocessing, the device-to-host copy, RLE, SQLite)
    would otherwise sit between two network calls."""
    if isinstance(value, str) and value == "auto":
        return Pipeline() if getattr(device, "type", str(device or "")) == "cuda" else None
    if value is True:
        return Pipeline()
    if value is False or value is None:
        return None
    if isinstance(value, Pipeline):
        return value
    raise InputError(f"pipeline={value!r}: give 'auto', True, False or a dl_utils.sam2al.Pipeline(...)")


class FrameWriter:
    """Runs ``job()`` for each computed frame, in order: inline, or on one background thread.

    ``job`` encodes and commits one frame and calls the callback; it returns nothing. ``stop``
    (an Event, the session's cancel flag) makes the writer drop what is still queued. With
    ``threads=False`` every job runs at once in the caller's thread (the unpipelined pass).
    """

    def __init__(self, stop: threading.Event, queue_size: int | None):
        self.stop_flag = stop
        self.error: BaseException | None = None
        self._drop = False
        self._queue: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        if queue_size is not None:
            self._queue = queue.Queue(maxsize=queue_size)
            self._thread = threading.Thread(target=self._run, name="dl_utils-sam2al-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            job = self._queue.get()
            if job is _END:
                return
            if self.error is not None or self._drop or self.stop_flag.is_set():
                continue  # drain without writing, so the producer never blocks on a full queue
            try:
                job()
            except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
                self.error = e

    def put(self, job: Callable[[], None]) -> None:
        """Hand over one frame's job (blocks while the queue is full); raises a writer error."""
        self.check()
        if self._queue is None:
            job()
            return
        self._queue.put(job)

    def check(self) -> None:
        """Raise, in the caller's thread, the exception the writer stopped on (its own type)."""
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def close(self, *, raise_error: bool = True) -> None:
        """Commit what is queued (dropped after a cancel), end the thread, then raise the writer's
        exception if ``raise_error`` (not when the caller is already raising its own).

        Frames computed before an error on the caller's thread are committed, as the unpipelined
        pass would have; a second Ctrl-C while waiting drops the rest and stops at once.
        """
        if self._thread is not None and self._queue is not None:
            self._queue.put(_END)
            try:
                self._thread.join()
            except KeyboardInterrupt:
                self._drop = True
                self._thread.join()
                raise
            finally:
                self._thread = None
        if raise_error:
            self.check()
