"""Stand-in routes for CVAT's dataset export and task backup/restore (filled in by issue 19)."""

from __future__ import annotations

import re
from typing import Callable


def routes(r: Callable[..., tuple[str, re.Pattern, Callable, bool]]) -> list[tuple[str, re.Pattern, Callable, bool]]:
    """Routes this module serves, built with the server's ``r(method, pattern, fn, public=False)``."""
    return []
