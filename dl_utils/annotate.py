"""``dl-utils annotate`` as a library call: the public module name of :mod:`dl_utils.drivers.annotate`.

    from dl_utils.annotate import run_annotate
    run_annotate("drive.mp4", "drive.sqlite", text="car. person", points="clicks.json", cvat_task=42)

The driver itself (clicks, text prompt and CVAT push in one resumable run) lives in the drivers layer;
see docs/annotate.md and docs/drivers.md.
"""

from __future__ import annotations

from .drivers.annotate import STEPS_KEY, add_annotate_arguments, annotate, run_annotate, run_annotate_cli

__all__ = ["STEPS_KEY", "add_annotate_arguments", "annotate", "run_annotate", "run_annotate_cli"]
