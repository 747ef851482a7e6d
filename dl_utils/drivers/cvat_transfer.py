"""``dl-utils cvat export-dataset | backup | restore`` (filled in by issue 19)."""

from __future__ import annotations

import argparse


def add_transfer_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the server-side export and backup commands to ``dl-utils cvat``'s subparsers."""


__all__ = ["add_transfer_commands"]
