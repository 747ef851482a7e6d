"""``dl-utils dataset``: split, stats and remap over annotation stores (filled in by issue 19)."""

from __future__ import annotations

import argparse


def add_dataset_arguments(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dataset`` command group to the main parser's subparsers."""


__all__ = ["add_dataset_arguments"]
