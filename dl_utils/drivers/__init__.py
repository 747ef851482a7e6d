"""The drivers layer: commands and calls that run the engines into a store.

Engines (:mod:`dl_utils.sam2al`, :mod:`dl_utils.samal`, :mod:`dl_utils.dinoal`) do one job each and never
import this package; drivers put them together:

* :mod:`~dl_utils.drivers.options`: :class:`DetectorOptions`, :class:`TrackOptions`, :class:`SamOptions`,
  each owning its command-line options and defaults;
* :mod:`~dl_utils.drivers.run`: :func:`run_into_store`, the one path that runs clicks and a text prompt
  into a store (video or images), used by ``annotate``, ``detect``, ``segment`` and the widget;
* :mod:`~dl_utils.drivers.annotate`, :mod:`~dl_utils.drivers.detect`, :mod:`~dl_utils.drivers.segment`:
  the ``dl-utils annotate|detect|segment`` commands (``run_*`` library calls, ``add_*_arguments``,
  ``run_*_cli``);
* :mod:`~dl_utils.drivers.cvat`: the ``dl-utils cvat labels|create-task|push|pull`` commands over the
  sink :mod:`dl_utils.cvat` (command-line code does not belong in a sink);
* :mod:`~dl_utils.drivers.finetune`: the ``dl-utils finetune|evaluate`` commands over
  :mod:`dl_utils.finetune` (training options derived from ``TrainOptions``, the fine-tuned registry).

Importing this package (and the options) needs neither torch nor the models; see docs/drivers.md.
"""

from .options import DetectorOptions, SamOptions, TrackOptions

__all__ = ["DetectorOptions", "SamOptions", "TrackOptions"]
