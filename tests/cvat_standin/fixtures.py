"""The ``cvat_server`` pytest fixture: one stand-in per test session, reset before every test.

Import it into a test module (``from tests.cvat_standin.fixtures import cvat_server``). The server
is started lazily on first use and stopped when the interpreter exits; each test gets it with empty
state, an empty log and no faults, so tests cannot see each other's objects.
"""

from __future__ import annotations

import atexit
import threading
from typing import Iterator

import pytest

from .server import StandinServer

_LOCK = threading.Lock()
_SERVER: StandinServer | None = None


def shared_server() -> StandinServer:
    """The process-wide stand-in (started on first call)."""
    global _SERVER
    with _LOCK:
        if _SERVER is None:
            _SERVER = StandinServer().start()
            atexit.register(_SERVER.stop)
        return _SERVER


@pytest.fixture
def cvat_server() -> Iterator[StandinServer]:
    """A running stand-in CVAT server with empty state: ``.url``, ``.token``, ``.state``, ``.log``,
    ``.faults``, ``.reset()``."""
    srv = shared_server()
    srv.reset()
    srv.state.version = "2.24.0"
    try:
        yield srv
    finally:
        srv.faults.clear()


__all__ = ["cvat_server", "shared_server"]
