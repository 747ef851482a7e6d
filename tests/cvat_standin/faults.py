"""Fault injection: make the k-th request from now fail, drop its connection, rate-limit or stall.

Requests are counted in arrival order (the server's request log), so ``fail_at(3)`` hits the fourth
request the server receives after the call, whatever it is. Several faults may be armed at once.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Fault:
    """What happens to one request. ``applied``: the request is processed before the fault."""

    kind: str  # "fail" | "drop" | "rate"
    status: int = 500
    applied: bool = False
    retry_after: float | None = None


class Faults:
    """Armed faults, keyed by absolute request index. ``counter`` gives the number of requests seen."""

    def __init__(self, counter: Callable[[], int]):
        self._counter = counter
        self._lock = threading.Lock()
        self._armed: dict[int, Fault] = {}
        # (method, compiled path pattern, matching requests still to let through, times, fault)
        self._matching: list[list] = []
        self.delay = 0.0

    def _arm(self, k: int, fault: Fault) -> None:
        if int(k) < 0:
            raise ValueError(f"request index {k} must be >= 0 (0 = the next request)")
        with self._lock:
            self._armed[self._counter() + int(k)] = fault

    def fail_at(self, k: int, status: int = 500, applied: bool = False) -> None:
        """Answer request k with ``status`` (after processing it when ``applied``)."""
        if not 400 <= int(status) <= 599:
            raise ValueError(f"status {status}: a fault answers with a 4xx or 5xx status")
        self._arm(k, Fault("fail", int(status), bool(applied)))

    def drop_at(self, k: int, applied: bool = True) -> None:
        """Close request k's connection without an answer (after processing it when ``applied``)."""
        self._arm(k, Fault("drop", 0, bool(applied)))

    def rate_limit_at(self, k: int, retry_after: float = 1) -> None:
        """Answer request k with 429 and ``Retry-After`` (the request is not applied)."""
        self._arm(k, Fault("rate", 429, False, retry_after))

    def fail_matching(self, method: str, path: str, *, skip: int = 0, times: int = 1,
                      status: int = 500, applied: bool = False) -> None:
        """Answer ``status`` to requests ``method`` whose path fully matches the regular expression
        ``path``: the first ``skip`` such requests pass, the next ``times`` fail.

        A fault "in the middle of" a multi-request operation (the second task move of a plan)
        without counting every request before it.
        """
        if not 400 <= int(status) <= 599:
            raise ValueError(f"status {status}: a fault answers with a 4xx or 5xx status")
        if skip < 0 or times < 1:
            raise ValueError("skip must be >= 0 and times >= 1")
        with self._lock:
            self._matching.append([method.upper(), re.compile(path), int(skip), int(times),
                                   Fault("fail", int(status), bool(applied))])

    def slow(self, seconds: float) -> None:
        """Delay every answer by ``seconds`` (0 switches it off)."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self.delay = float(seconds)

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()
            self._matching.clear()
        self.delay = 0.0

    def take(self, index: int, method: str | None = None, path: str | None = None) -> Fault | None:
        """The fault armed for request ``index`` (removed: each fires once), else the first
        :meth:`fail_matching` rule this request (``method``, ``path``) triggers."""
        with self._lock:
            fault = self._armed.pop(index, None)
            if fault is not None or method is None or path is None:
                return fault
            for rule in self._matching:
                m, rx, skip, times, f = rule
                if m != method.upper() or not rx.fullmatch(path):
                    continue
                if skip > 0:
                    rule[2] -= 1
                    continue
                rule[3] -= 1
                if rule[3] <= 0:
                    self._matching.remove(rule)
                return f
            return None

    @property
    def pending(self) -> dict[int, Fault]:
        with self._lock:
            return dict(self._armed)


__all__ = ["Fault", "Faults"]
