"""``dl-utils cvat projects | tasks | create-tasks | balance`` (filled in by issue 19)."""

from __future__ import annotations

import argparse


def add_project_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the project utilities to ``dl-utils cvat``'s subparsers."""


__all__ = ["add_project_commands"]
