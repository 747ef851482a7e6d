"""Executors: who runs :func:`~dl_utils.batch.worker.run_source` for each source.

An :class:`Executor` takes the planned sources and calls ``on_result`` once per source with its final
:class:`~dl_utils.batch.worker.SourceResult` (after its retries) and ``on_frames(n)`` as workers
write frames. :class:`LocalExecutor` is a process pool on this machine; the Ray executor
(:mod:`dl_utils.batch.ray_executor`, the ``ray`` extra) spreads the same calls over a cluster.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.util as mp_util
import os
import queue as queue_mod
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol

from .options import BatchOptions
from .plan import BatchSource
from .worker import SourceResult, run_source, worker_name


class Executor(Protocol):
    """Runs every source once to a final result (done, skipped or failed after ``attempts`` tries)."""

    def run(self, sources: Sequence[BatchSource], options: BatchOptions, out_dir: Path, *, attempts: int,
            on_result: Callable[[SourceResult], None], on_frames: Callable[[int], None]) -> None: ...


def gpu_count() -> int:
    """CUDA devices visible here (0 without torch or CUDA)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


# ----------------------------------------------------------------------------- worker process side
_STATE: dict[str, Any] = {}


def _init(progress: Any, threads: int, counter: Any, gpus: int) -> None:
    """Pool initializer: this process's progress queue, torch threads, GPU and local work folder."""
    lock = counter.get_lock()
    if lock.acquire(timeout=10):  # a worker killed holding it must not stall its replacements
        try:
            index = counter.value
            counter.value += 1
        finally:
            lock.release()
    else:
        index = os.getpid()
    if gpus > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:  # one GPU per worker, round robin
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    # Progress is best-effort: a worker must never wait at exit for its queue's feeder thread, which
    # blocks forever if a sibling was killed while holding the queue's shared write lock.
    progress.cancel_join_thread()
    work_dir = tempfile.mkdtemp(prefix=f"dl_utils-batch-{os.getpid()}-")
    mp_util.Finalize(None, shutil.rmtree, args=(work_dir, True), exitpriority=10)  # gone when the worker exits
    _STATE.update(queue=progress, threads=threads, work_dir=Path(work_dir))


def _work(src: BatchSource, options: BatchOptions, out_dir: Path, attempt: int) -> SourceResult:
    q = _STATE["queue"]
    return run_source(src, options, _STATE["work_dir"], out_dir, on_frames=lambda n: q.put(n),
                      threads=_STATE["threads"], attempt=attempt)


# ----------------------------------------------------------------------------- driver side
class LocalExecutor:
    """A spawn-context process pool: ``workers`` processes (default one per GPU, else 1), each with
    ``threads`` torch threads (default the cores divided among the workers), models loaded once per
    process. A failed source is tried again up to ``attempts`` times; a worker process that dies
    (killed, out of memory) is replaced and its source tried again from its last published store.
    Ctrl-C stops scheduling, waits for running sources to publish what they committed, and re-raises."""

    def __init__(self, workers: int | None = None, threads: int | None = None) -> None:
        self.gpus = gpu_count()
        self.workers = max(1, int(workers)) if workers else max(1, self.gpus)
        self.threads = max(1, int(threads)) if threads else max(1, (os.cpu_count() or 1) // self.workers)

    def run(self, sources: Sequence[BatchSource], options: BatchOptions, out_dir: Path, *, attempts: int,
            on_result: Callable[[SourceResult], None], on_frames: Callable[[int], None]) -> None:
        ctx = mp.get_context("spawn")
        counter = ctx.Value("i", 0)
        todo: list[tuple[BatchSource, int]] = [(s, 1) for s in reversed(sources)]
        pool = _Pool(ctx, self.workers, self.threads, counter, self.gpus, on_frames)
        running: dict[Future[SourceResult], tuple[BatchSource, int]] = {}
        try:
            while todo or running:
                while todo and len(running) < self.workers:
                    src, attempt = todo.pop()
                    running[pool.submit(_work, src, options, Path(out_dir), attempt)] = (src, attempt)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = False
                for fut in finished:
                    src, attempt = running.pop(fut)
                    res = _result(fut, src, Path(out_dir), attempt)
                    broken |= isinstance(fut.exception(), BrokenProcessPool)
                    if res.status == "failed" and attempt < attempts:
                        todo.append((src, attempt + 1))
                    else:
                        on_result(res)
                if broken:  # a worker died: every running source failed with it; start a fresh pool
                    for fut, (src, attempt) in running.items():
                        todo.append((src, attempt)) if attempt < attempts else on_result(
                            _result(fut, src, Path(out_dir), attempt))
                    running.clear()
                    pool.close(cancel=True)
                    pool = _Pool(ctx, self.workers, self.threads, counter, self.gpus, on_frames)
        except KeyboardInterrupt:
            pool.close(cancel=True, grace=None)  # running sources publish what they committed
            raise
        pool.close()


class _Pool:
    """One generation of worker processes with its own progress queue and drain thread.

    A worker killed while it writes to a ``multiprocessing.Queue`` leaves the queue's shared write lock
    held for good, so a replaced pool never reuses its predecessor's queue, and closing never waits
    without bound for a worker that does not exit (it is terminated after ``grace`` seconds)."""

    def __init__(self, ctx: Any, workers: int, threads: int, counter: Any, gpus: int,
                 on_frames: Callable[[int], None]) -> None:
        self.progress = ctx.Queue()
        self.stop = threading.Event()
        self.drain = threading.Thread(target=_drain, args=(self.progress, on_frames, self.stop), daemon=True)
        self.drain.start()
        self.executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                                            initargs=(self.progress, threads, counter, gpus))

    def submit(self, fn: Callable[..., SourceResult], *args: Any) -> Future[SourceResult]:
        return self.executor.submit(fn, *args)

    def close(self, *, cancel: bool = False, grace: float | None = 60.0) -> None:
        """Shut the pool down; with ``grace`` None wait as long as the workers take (Ctrl-C: they
        publish what they committed), else terminate any worker still alive after ``grace`` seconds."""
        procs = list((getattr(self.executor, "_processes", None) or {}).values())
        if grace is None:
            self.executor.shutdown(wait=True, cancel_futures=cancel)
        else:
            self.executor.shutdown(wait=False, cancel_futures=cancel)
            for proc in procs:
                proc.join(grace)
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
        self.stop.set()
        self.drain.join()
        self.progress.cancel_join_thread()
        self.progress.close()


def _result(fut: Future[SourceResult], src: BatchSource, out_dir: Path, attempt: int) -> SourceResult:
    """The future's result, or a failed one naming why the worker gave none."""
    from .worker import one_line

    exc = fut.exception() if fut.done() else None
    if exc is None and fut.done():
        return fut.result()
    if isinstance(exc, KeyboardInterrupt):
        raise KeyboardInterrupt
    err = one_line(exc) if exc is not None else "the worker stopped before the source finished"
    if isinstance(exc, BrokenProcessPool):
        err = "the worker process died (killed or out of memory); " + err
    return SourceResult(name=src.name, store=str(out_dir / src.store_name), status="failed", error=err,
                        attempt=attempt, worker=worker_name())


def _drain(progress: Any, on_frames: Callable[[int], None], stop: threading.Event) -> None:
    """Feed the workers' frame counts to ``on_frames`` until stopped (then what is left)."""
    while True:
        try:
            on_frames(int(progress.get(timeout=0.2)))
        except queue_mod.Empty:
            if stop.is_set():
                return
        except (EOFError, OSError):
            return


__all__ = ["Executor", "LocalExecutor", "gpu_count"]
