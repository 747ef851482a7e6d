"""One background job at a time, with results handed to the kernel's thread through a queue.

Why a queue: ipywidgets and our own render state are not meant to be changed from two threads at
once. The job thread therefore never touches a widget: it puts ``(kind, payload)`` messages into a
:class:`queue.Queue` and asks the kernel's event loop to call :meth:`Worker.drain` soon
(``IOLoop.add_callback`` / ``loop.call_soon_threadsafe``, both thread-safe). ``drain`` runs on the
kernel's thread, between cell executions and widget messages, and hands each message to the
annotator, which updates widgets there. Without a kernel (tests, scripts) nothing is scheduled:
call :meth:`drain` (or :meth:`wait`, which joins the job and drains).

While a cell runs, the kernel's loop is busy, so results pile up in the queue and are shown when
the cell finishes; the job itself keeps running.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("dl_utils.ipy_utils")

Emit = Callable[[str, Any], None]
#: "call this on the kernel's thread soon" (thread-safe); what it returns is not used
Schedule = Callable[[Callable[[], object]], object]


def kernel_scheduler() -> Schedule | None:
    """A thread-safe "call this on the kernel's thread soon", or ``None`` outside a kernel."""
    try:
        from IPython import get_ipython

        ip = get_ipython()
        loop = getattr(getattr(ip, "kernel", None), "io_loop", None)
        if loop is not None and hasattr(loop, "add_callback"):
            return loop.add_callback
    except ImportError:  # no IPython at all: a plain script
        log.debug("IPython is not installed: results are applied by Worker.drain()")
    try:
        import asyncio

        aloop = asyncio.get_running_loop()
        return lambda fn: aloop.call_soon_threadsafe(fn)
    except RuntimeError:
        return None


class Worker:
    """Runs ``job(emit, cancelled)`` in a daemon thread; ``handler(job name, kind, payload)`` gets its messages.

    Messages: whatever the job emits, then exactly one of ``("done", result)`` or
    ``("error", exception)``. ``cancel`` sets the flag the job polls and calls the job's own cancel
    hook (e.g. ``VideoSession.cancel``).
    """

    def __init__(self, handler: Callable[[str, str, Any], None],
                 schedule: Schedule | None = None):
        self.handler = handler
        self.schedule = schedule
        self.queue: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._cancelled = threading.Event()
        self._cancel_hook: Callable[[], None] | None = None
        self.name: str | None = None
        self._drain_lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, name: str, job: Callable[[Emit, threading.Event], Any],
              cancel: Callable[[], None] | None = None) -> None:
        if self.busy:
            raise RuntimeError(f"{self.name} is still running")
        self.name = name
        self._cancelled.clear()
        self._cancel_hook = cancel

        def emit(kind: str, payload: Any = None) -> None:
            self.queue.put((name, kind, payload))
            if self.schedule is not None:
                self.schedule(self.drain)

        def run() -> None:
            try:
                result = job(emit, self._cancelled)
            except BaseException as e:  # everything reaches the user as a message
                log.debug("background job %s failed", name, exc_info=True)
                emit("error", e)
            else:
                emit("done", result)

        self._thread = threading.Thread(target=run, name=f"dl_utils-{name}", daemon=True)
        self._thread.start()

    def cancel(self) -> bool:
        """Ask the running job to stop after its current step; False when nothing runs."""
        if not self.busy:
            return False
        self._cancelled.set()
        if self._cancel_hook is not None:
            self._cancel_hook()
        return True

    def drain(self) -> int:
        """Hand queued messages to the handler on this thread; returns how many."""
        n = 0
        with self._drain_lock:  # two scheduled drains never interleave
            while True:
                try:
                    name, kind, payload = self.queue.get_nowait()
                except queue.Empty:
                    return n
                n += 1
                try:
                    self.handler(name, kind, payload)
                except Exception:  # a broken handler must not kill the drain (or the kernel loop)
                    log.exception("annotator failed to apply a %s message of %s", kind, name)

    def wait(self, timeout: float | None = None) -> bool:
        """Join the job (``True`` when it finished) and drain what it left."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        self.drain()
        return t is None or not t.is_alive()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0, poll: float = 0.01) -> bool:
        """Drain until ``predicate()`` holds (tests: "until frame N arrived")."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.drain()
            if predicate():
                return True
            time.sleep(poll)
        self.drain()
        return predicate()


__all__ = ["Emit", "Schedule", "Worker", "kernel_scheduler"]
