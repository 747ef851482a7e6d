"""What every worker needs to run one source exactly like ``dl-utils annotate``.

:class:`BatchOptions` is shipped to worker processes (pickled by ``multiprocessing`` or Ray), so it
holds only plain values: the annotate driver's options objects, no models, no connections and no
secrets (CVAT credentials stay with the driver: a Ray runtime environment is visible on its dashboard).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..drivers.options import DetectorOptions, SamOptions, SourceOptions, TrackOptions


@dataclass(frozen=True)
class BatchOptions:
    """The per-batch settings of :func:`dl_utils.drivers.annotate.annotate` (a source's own text and
    points come from its :class:`~dl_utils.batch.plan.BatchSource`).

    ``detector``, ``sam``, ``track`` and ``numbering`` are the options objects ``dl-utils annotate``
    builds from the same command-line flags (``sam`` carries ``--tracker``/``--samurai``/``--force``,
    ``--precision`` and ``--compile``); ``progress`` turns the per-source tqdm bars of the engines on (off in
    workers: the batch shows one bar for sources and one for frames)."""

    detector: DetectorOptions = field(default_factory=DetectorOptions)
    sam: SamOptions = field(default_factory=SamOptions)
    track: TrackOptions = field(default_factory=TrackOptions)
    #: how each source's frames are numbered (``--frame-numbers``/``--first-frame``): every store of
    #: the batch records it, exactly as ``dl-utils annotate`` with the same flags would
    numbering: SourceOptions = field(default_factory=SourceOptions)
    progress: bool = False

    def cache_key(self) -> str:
        """Which loaded models a worker may reuse: equal keys, equal models (the per-process cache
        of :mod:`dl_utils.batch.worker`). The tracker mode (``sam.tracker``/``samurai``/``force``) is
        not in it: it is a setting of each source's session, opened per source over the same
        network (SAMURAI keeps SAM2's weights), and reaches the session through ``sam`` itself.
        ``sam.precision`` and ``sam.compile`` are: a compiled network is another network (upstream's
        ``vos_optimized`` class), and an image segmenter computes in its precision for its life."""
        d, s = self.detector, self.sam
        # the threshold's type too: an untyped default means SAM 3's own threshold, the same value typed does not
        return repr((d.backend, str(d.model), str(d.text_encoder), d.device, d.box_threshold,
                     type(d.box_threshold).__name__, d.text_threshold, d.detector_size, str(d.classes), str(d.bpe),
                     d.nms_iou,
                     s.model_name, str(s.checkpoint), s.image_size, s.device, s.precision, s.compile))


__all__ = ["BatchOptions"]
