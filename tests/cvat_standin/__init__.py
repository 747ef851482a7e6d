"""A stand-in CVAT server for tests: CVAT's REST wire format on 127.0.0.1, in-memory state, faults.

No real CVAT can run in the test environment, so :mod:`dl_utils.cvat` is tested against this
server through the real ``cvat-sdk`` client. It keeps projects, tasks, labels, jobs and annotations
in memory, validates annotation payloads the way the CVAT server does, serves frames and chunks of
the uploaded media, logs every request and injects faults (500s, 429 with ``Retry-After``, dropped
connections, slow answers). See docs/cvat_standin.md.

    python -m tests.cvat_standin --port 8080          # a manual try-out
"""

from __future__ import annotations

from .faults import Faults
from .server import StandinServer
from .state import LogEntry, State

__all__ = ["Faults", "LogEntry", "StandinServer", "State"]
