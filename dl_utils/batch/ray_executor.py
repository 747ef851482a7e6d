"""``dl-utils batch --executor ray``: the batch on Ray actors (one machine or a cluster).

Why actors and not tasks: loading SAM2 (and GroundingDINO) costs seconds to minutes, a source often
less. Each actor is a long-lived worker process that keeps the models :func:`~.worker.run_source`
caches per process, and the driver hands it one source at a time from its own queue, so a slow video
never holds back a short one and a fast worker is never idle while work is left.

What the driver guarantees (the same as the local executor):

- **one store per source**: the store's name is fixed by :attr:`BatchSource.store_name`; the worker
  writes on its node's local disk (SQLite's WAL is unsafe on network filesystems) and the store reaches
  ``out_dir`` whole. ``out_dir`` must be a folder every node sees at the same path (NFS, a shared PVC).
- **a dead worker is replaced**: an actor that dies (OOM killer, SIGKILL, node lost) surfaces as a
  ``RayActorError``; a fresh actor takes its place and the source is tried again, resuming from the
  last store that reached ``out_dir`` (never a second store). Each try counts against ``attempts``.
- **Ctrl-C** stops scheduling, lets the running sources finish and commit (a second Ctrl-C kills the
  actors at once), shuts the actors down and re-raises.
- **no secrets on the cluster**: only :class:`BatchSource` rows and :class:`BatchOptions` (plain values)
  are sent; CVAT is the driver's business, so no credential enters a Ray runtime environment.

Ray is optional (the ``ray`` extra); importing this module does not need it.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from .options import BatchOptions
    from .plan import BatchSource
    from .worker import SourceResult

INSTALL = "pip install 'dl-utils[ray]'"
FLUSH_SECONDS = 0.5  # how often a worker sends its frame count to the driver
PLACE_SECONDS = 600  # how long workers may wait for room on the cluster (an autoscaler adds nodes)


def import_ray() -> Any:
    """Ray, or a one-line error naming the install command (Ray is an optional extra)."""
    try:
        import ray
    except ImportError as e:
        raise InputError(f"--executor ray needs Ray, which is not installed: {INSTALL}") from e
    return ray


class _Frames:
    """A tiny actor counting frames for the driver's progress bar: workers add, the driver takes."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, n: int) -> None:
        self.n += n

    def take(self) -> int:
        n, self.n = self.n, 0
        return n


class _Worker:
    """One long-lived worker: models stay loaded between sources (run_source's per-process cache)."""

    def __init__(self, threads: int | None, frames: Any) -> None:
        self.threads = threads
        self.frames = frames
        self.work_dir = Path(tempfile.mkdtemp(prefix="dl-utils-batch-"))
        self.pending, self.last = 0, time.monotonic()

    def pid(self) -> int:
        return os.getpid()

    def check_out_dir(self, out_dir: str) -> str | None:
        """Why this node cannot write ``out_dir`` (None when it can): every node must see it."""
        if not os.path.isdir(out_dir):
            return f"{out_dir} does not exist on node {socket.gethostname()}"
        if not os.access(out_dir, os.W_OK | os.X_OK):
            return f"{out_dir} is not writable on node {socket.gethostname()}"
        return None

    def _on_frames(self, n: int) -> None:
        self.pending += n
        now = time.monotonic()
        if now - self.last >= FLUSH_SECONDS:
            self.frames.add.remote(self.pending)
            self.pending, self.last = 0, now

    def run(self, src: BatchSource, options: BatchOptions, out_dir: str, attempt: int) -> SourceResult:
        from .worker import run_source

        try:
            return run_source(src, options, self.work_dir, Path(out_dir), on_frames=self._on_frames,
                              threads=self.threads, attempt=attempt)
        finally:
            if self.pending:
                self.frames.add.remote(self.pending)
                self.pending = 0


@dataclasses.dataclass
class _Running:
    actor: Any
    src: BatchSource
    attempt: int
    t0: float = dataclasses.field(default_factory=time.perf_counter)


class RayExecutor:
    """Run a batch on Ray actors (:class:`~dl_utils.batch.executors.Executor`).

    ``address``: ``None`` starts a local Ray; ``"auto"`` joins the cluster this machine belongs to;
    ``"ray://HOST:PORT"`` connects through Ray Client (a KubeRay head's port 10001). ``workers``: how
    many actors (default: as many as the cluster's GPUs or CPUs allow at the requested fractions, at
    most one per source); ``gpus_per_worker`` 0.5 packs two workers on a GPU; ``threads``: torch
    threads per worker (default: its CPUs). An already initialised Ray (a notebook, a test) is used
    as it is."""

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0, threads: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise InputError(f"--workers {workers}: use 1 or more")
        if gpus_per_worker < 0 or cpus_per_worker <= 0:
            raise InputError(f"--gpus-per-worker {gpus_per_worker} / --cpus-per-worker {cpus_per_worker}: "
                             "use a GPU fraction >= 0 and a CPU count > 0")
        self.address, self.workers = address, workers
        self.gpus_per_worker, self.cpus_per_worker = gpus_per_worker, cpus_per_worker
        self.threads = threads if threads is not None else max(1, int(cpus_per_worker))
        self.actors: list[Any] = []  # the live actors of the current run (tests find their pids here)
        #: (source, seconds from submit to result on the driver, seconds run_source took): the
        #: difference is Ray's scheduling overhead per source (bench/bench_batch.py prints it)
        self.round_trips: list[tuple[str, float, float]] = []

    # -- connecting ---------------------------------------------------------------------------------
    def connect(self) -> Any:
        """Ray, initialised: a one-line error when the address does not answer or lacks a GPU."""
        ray = import_ray()
        if not ray.is_initialized():
            if self.address not in (None, "auto"):
                _probe(self.address)
            try:
                ray.init(address=self.address, log_to_driver=False, ignore_reinit_error=True)
            except (ConnectionError, RuntimeError, TimeoutError) as e:
                where = self.address or "a local Ray"
                raise InputError(f"Ray at {where} does not answer ({_first_line(e)}): start the cluster "
                                 "(ray start --head) or fix --address") from e
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if self.gpus_per_worker > 0 and gpus == 0:
            raise InputError(f"--gpus-per-worker {self.gpus_per_worker}: the Ray cluster at "
                             f"{self.address or 'this machine'} has no GPU; use --gpus-per-worker 0 or a GPU node")
        return ray

    def pool_size(self, ray: Any, n_sources: int) -> int:
        """How many actors: ``workers`` if given, else what the cluster fits; never more than sources."""
        if self.workers is not None:
            n = self.workers
        else:
            res = ray.cluster_resources()
            fit = (float(res.get("GPU", 0)) / self.gpus_per_worker if self.gpus_per_worker > 0
                   else float(res.get("CPU", 1)) / self.cpus_per_worker)
            n = max(1, int(fit))
        return max(1, min(n, n_sources))

    # -- the run --------------------------------------------------------------------------------------
    def run(self, sources: Sequence[BatchSource], options: BatchOptions, out_dir: Path, *, attempts: int,
            on_result: Callable[[SourceResult], None], on_frames: Callable[[int], None]) -> None:
        """Annotate ``sources`` into ``out_dir``; ``on_result`` gets each source's final result."""
        if not sources:
            return
        ray = self.connect()
        self.round_trips = []
        frames = ray.remote(num_cpus=0)(_Frames).remote()
        n = self.pool_size(ray, len(sources))
        self.actors = [self._new_actor(ray, frames) for _ in range(n)]
        try:
            self._check_out_dir(ray, str(out_dir))
            _Schedule(self, ray, frames, options, str(out_dir), attempts, on_result, on_frames).loop(sources)
        finally:
            for a in self.actors:
                ray.kill(a)
            ray.kill(frames)
            self.actors = []

    def _new_actor(self, ray: Any, frames: Any) -> Any:
        # max_concurrency 2: pid() and check_out_dir() answer while a source runs (the driver never
        # sends a worker a second source before the first one's result is in)
        cls = ray.remote(_Worker).options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                                          max_restarts=0, max_task_retries=0, max_concurrency=2)
        return cls.remote(self.threads, frames)

    def _check_out_dir(self, ray: Any, out_dir: str) -> None:
        """Every worker's node must see ``out_dir``: a one-line error before any work otherwise."""
        from ray.exceptions import GetTimeoutError

        try:
            answers = ray.get([a.check_out_dir.remote(out_dir) for a in self.actors], timeout=PLACE_SECONDS)
        except GetTimeoutError:
            raise InputError(f"{len(self.actors)} Ray workers of {self.cpus_per_worker} CPU and "
                             f"{self.gpus_per_worker} GPU each could not start in {PLACE_SECONDS} s: the "
                             "cluster has no room for them; lower --workers or --cpus-per-worker") from None
        for why in answers:
            if why:
                raise InputError(f"--out {why}: with Ray, --out must be a folder every node mounts at the "
                                 "same path (NFS, a shared volume)")


class _Schedule:
    """The driver's loop: one source per idle actor, results as they finish, dead actors replaced."""

    def __init__(self, ex: RayExecutor, ray: Any, frames: Any, options: BatchOptions, out_dir: str,
                 attempts: int, on_result: Callable[[SourceResult], None],
                 on_frames: Callable[[int], None]) -> None:
        self.ex, self.ray, self.frames, self.options, self.out_dir = ex, ray, frames, options, out_dir
        self.attempts, self.on_result, self.on_frames = max(1, attempts), on_result, on_frames
        self.running: dict[Any, _Running] = {}
        self.tries: dict[str, int] = collections.Counter()

    def loop(self, sources: Sequence[BatchSource]) -> None:
        queue = collections.deque(sources)
        idle = list(self.ex.actors)
        try:
            while queue or self.running:
                while queue and idle:
                    self._submit(idle.pop(), queue.popleft())
                idle += self._collect(queue, timeout=0.25)
        except KeyboardInterrupt:
            self._drain()  # stop scheduling; running sources finish and commit
            raise

    def _submit(self, actor: Any, src: BatchSource) -> None:
        self.tries[src.name] += 1
        ref = actor.run.remote(src, self.options, self.out_dir, self.tries[src.name])
        self.running[ref] = _Running(actor, src, self.tries[src.name])

    def _collect(self, queue: collections.deque[BatchSource], timeout: float) -> list[Any]:
        """Wait a little for results; report them, re-queue retries; return the actors now idle."""
        ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=timeout)
        self._frames()
        idle = []
        for ref in ready:
            job = self.running.pop(ref)
            res, actor = self._result(ref, job)
            self.ex.round_trips.append((job.src.name, time.perf_counter() - job.t0, res.seconds))
            idle.append(actor)
            if res.status == "failed" and job.attempt < self.attempts:
                queue.appendleft(job.src)  # tried again first, on whichever worker is free
            else:
                self.on_result(res)
        return idle

    def _result(self, ref: Any, job: _Running) -> tuple[SourceResult, Any]:
        """The source's result and the actor to reuse: a dead actor is replaced by a fresh one."""
        from ray.exceptions import RayActorError, RayTaskError

        from .worker import SourceResult

        try:
            return self.ray.get(ref), job.actor
        except RayActorError as e:
            actor = self._replace(job.actor)
            err = f"worker died ({_first_line(e)}); resumed from the store in --out"
        except RayTaskError as e:
            actor, err = job.actor, _first_line(e.cause if e.cause is not None else e)
        return SourceResult(name=job.src.name, store=str(Path(self.out_dir) / job.src.store_name),
                            status="failed", error=err, attempt=job.attempt, worker="ray (died)"), actor

    def _replace(self, dead: Any) -> Any:
        actors = self.ex.actors
        new = self.ex._new_actor(self.ray, self.frames)
        actors[actors.index(dead)] = new
        self.ray.kill(dead)
        return new

    def _frames(self) -> None:
        n = self.ray.get(self.frames.take.remote())
        if n:
            self.on_frames(n)

    def _drain(self) -> None:
        """After Ctrl-C: let running sources finish (a second Ctrl-C gives up on them)."""
        self.attempts = 1  # what fails now is reported, not tried again
        try:
            while self.running:
                self._collect(collections.deque(), timeout=0.5)  # nothing is re-queued
        except KeyboardInterrupt:
            pass


def _probe(address: str) -> None:
    """Fail fast, in one line, when nothing listens at ``ray://HOST:PORT`` or ``HOST:PORT``
    (Ray Client would otherwise retry for minutes)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address {address}: use auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise InputError(f"Ray at {address} does not answer ({e.strerror or e}): start the cluster "
                         "(ray start --head) or fix --address") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["INSTALL", "RayExecutor", "import_ray"]
