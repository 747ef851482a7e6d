"""Per-split statistics of a training set: images, annotated images, instances per class, groups,
and how large the masks are (a histogram of each instance's area as a fraction of its frame).

Read before an export or a training run to see what the model will learn from: a class with 12
instances in val scores noisily, a val side of only tiny masks measures something else than train.
The stores are streamed one frame at a time (masks are decoded to measure their area, one frame in
memory), so a store of any length is counted in bounded memory.
"""

from __future__ import annotations

import io
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..cv_utils import polygons_to_mask
from ..errors import InputError, OutputError
from ..splits import SIDES, Split
from .counts import add_frames, frames_by_group, instance_class, open_stores
from .groups import frame_groups

if TYPE_CHECKING:
    from ..annotations import Instance, MediaInfo
    from ..store import StoreReader

#: Log-spaced bin edges of the area histogram (area / frame area): half a decade per bin from 1e-7
#: (a pixel of a 4K frame is 1.2e-7) to 1 (the whole frame). A smaller area counts in the first bin.
AREA_EDGES: tuple[float, ...] = tuple(10.0 ** (e / 2) for e in range(-14, 1))
#: The side name for frames of groups the given split does not list.
UNASSIGNED = "unassigned"
#: The side name when no split is given.
ALL = "all"


@dataclass
class SideStats:
    """One side's numbers (or the whole set's, side ``"all"``)."""

    name: str
    images: int = 0
    annotated_images: int = 0
    groups: int = 0
    instances: Counter[str] = field(default_factory=Counter)
    area_hist: list[int] = field(default_factory=lambda: [0] * (len(AREA_EDGES) - 1))

    def to_json(self) -> dict[str, object]:
        return {
            "images": self.images,
            "annotated_images": self.annotated_images,
            "groups": self.groups,
            "instances": dict(sorted(self.instances.items())),
            "instances_total": sum(self.instances.values()),
            "area_hist": list(self.area_hist),
        }


@dataclass
class DatasetStats:
    """The numbers of every side, in side order (train, val, test, then unassigned frames)."""

    stores: tuple[str, ...]
    split: str | None
    sides: list[SideStats]

    @property
    def classes(self) -> list[str]:
        return sorted({c for s in self.sides for c in s.instances})

    def side(self, name: str) -> SideStats:
        for s in self.sides:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_json(self) -> dict[str, object]:
        return {
            "stores": list(self.stores),
            "split": self.split,
            "classes": self.classes,
            "area_edges": list(AREA_EDGES),
            "sides": {s.name: s.to_json() for s in self.sides},
        }

    def table(self) -> str:
        """Rows of counts, one column per side: what ``dl-utils dataset stats`` prints."""
        names = [s.name for s in self.sides]
        rows: list[tuple[str, list[str]]] = [
            ("images", [str(s.images) for s in self.sides]),
            ("annotated images", [str(s.annotated_images) for s in self.sides]),
            ("groups", [str(s.groups) for s in self.sides]),
            ("instances", [str(sum(s.instances.values())) for s in self.sides]),
        ]
        rows += [(f"  {c}", [str(s.instances.get(c, 0)) for s in self.sides]) for c in self.classes]
        rows.append(("mask area (of frame)", ["" for _ in self.sides]))
        for b in range(len(AREA_EDGES) - 1):
            if any(s.area_hist[b] for s in self.sides):
                rows.append((f"  {_area_label(b)}", [str(s.area_hist[b]) for s in self.sides]))
        w0 = max(len(r[0]) for r in rows)
        ws = [max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)]
        out = [f"{'':<{w0}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, ws))]
        out.append("-" * len(out[0]))
        out += [f"{label:<{w0}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, ws)) for label, cells in rows]
        if any(s.name == UNASSIGNED for s in self.sides):
            out.append(f"{UNASSIGNED}: frames of groups the split does not list (split again to include them)")
        return "\n".join(out)


def _area_label(b: int) -> str:
    lo, hi = AREA_EDGES[b], AREA_EDGES[b + 1]
    return f"{_pct(lo)}-{_pct(hi)}" if b else f"< {_pct(hi)}"


def _pct(x: float) -> str:
    return f"{x * 100:.2g}%"


def area_bin(fraction: float) -> int:
    """The histogram bin of an area fraction (``AREA_EDGES``; below the first edge -> bin 0)."""
    if fraction <= AREA_EDGES[0]:
        return 0
    b = int(math.floor(2 * math.log10(fraction))) + 14  # half-decade bins from 10**-7
    return min(max(b, 0), len(AREA_EDGES) - 2)


def instance_area(inst: "Instance", height: int, width: int) -> int:
    """Pixels an instance covers: its mask, its polygon rasterised as the rest of dl_utils does
    (``cv_utils.polygons_to_mask``: the union of its rings), else its box."""
    if inst.mask is not None:
        return int(np.count_nonzero(inst.mask))
    if inst.polygon:
        return int(np.count_nonzero(polygons_to_mask(inst.polygon, height, width)))
    return inst.area


def dataset_stats(
    paths: Sequence[str | os.PathLike[str]], *, split: Split | None = None, progress: bool = True
) -> DatasetStats:
    """Count every store (streamed, one frame in memory) per side of ``split`` (or as one ``"all"``
    side). Frames of a media that several stores annotate count once as images."""
    order = list(SIDES[: 3 if split is not None and split.test else 2]) if split is not None else [ALL]
    sides = {n: SideStats(n) for n in order}
    frames: dict[str, np.ndarray] = {}  # group -> its distinct frames (several stores: the union)
    annotated: dict[str, np.ndarray] = {}

    def side_of(key: str) -> SideStats:
        name = ALL if split is None else (split.side(key) or UNASSIGNED)
        if name not in sides:
            sides[name] = SideStats(name)
        return sides[name]

    for store in open_stores(paths):
        media = _media_of(store)
        by_frame = frame_groups(store, "group")
        for key, media_frames in frames_by_group(by_frame).items():
            add_frames(frames, key, media_frames)
        shown: dict[str, list[int]] = {}
        labels = {o.id: o.label for o in store.objects()}
        bar = tqdm(store.iter_frames(), desc=f"stats {store.path.name}", disable=None if progress else True,
                   leave=False)
        for frame, insts in bar:
            found = by_frame.get(frame)
            if found is None:
                continue  # outside the media record: no export writes it
            s = side_of(found)
            w, h = media.size_of(frame)
            any_shown = False
            for inst in insts:
                if inst.is_empty:
                    continue
                area = instance_area(inst, h, w)
                if area <= 0:
                    continue
                any_shown = True
                s.instances[instance_class(labels, inst)] += 1
                s.area_hist[area_bin(area / float(w * h))] += 1
            if any_shown:
                shown.setdefault(found, []).append(frame)
        for key, shown_frames in shown.items():
            add_frames(annotated, key, shown_frames)
    for key, distinct in frames.items():
        s = side_of(key)
        s.groups += 1
        s.images += int(len(distinct))
        s.annotated_images += int(len(annotated.get(key, ())))
    ordered = [sides[n] for n in order] + [sides[n] for n in sides if n not in order]
    return DatasetStats(tuple(str(p) for p in paths), None, ordered)


def _media_of(store: "StoreReader") -> "MediaInfo":
    media = store.media
    if media is None:
        raise InputError(f"{store.path}: the store has no media record; it was not written by dl-utils")
    return media


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def check_chart_path(out: str | os.PathLike[str]) -> Path:
    """Refuse a ``--png`` that cannot be a chart file (a folder, a device) before the stores are read:
    counting them can take minutes, and the chart is written last."""
    path = Path(out)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.is_dir():
        raise OutputError(f"--png {out} is a folder; give a file path for the chart, e.g. {path / 'stats.png'}")
    if target.exists() and not target.is_file():
        raise OutputError(f"--png {out} is not a regular file (a device, pipe or socket); give a file path"
                          " for the chart, e.g. stats.png")
    return path


def write_chart(stats: DatasetStats, out: str | os.PathLike[str]) -> Path:
    """A PNG of instances per class per side (grouped bars) beside the area histogram (one line per
    side, as a share of the side's instances so sides of different sizes compare), written to a
    temporary file and renamed (``formats._common.write_atomic``)."""
    if not have_matplotlib():
        raise InputError("--png needs matplotlib, which this environment lacks; install it (pip install"
                         " matplotlib) or leave --png out")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..formats._common import write_atomic

    classes = stats.classes
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8.0, 4.0 + 0.5 * len(classes)) + 5.0, 4.8),
                                   gridspec_kw={"width_ratios": [max(1.0, len(classes) / 6), 1.0]})
    try:
        width = 0.8 / max(1, len(stats.sides))
        x = np.arange(len(classes))
        for i, s in enumerate(stats.sides):
            ax1.bar(x + (i - (len(stats.sides) - 1) / 2) * width, [s.instances.get(c, 0) for c in classes],
                    width, label=f"{s.name} ({sum(s.instances.values())})")
        ax1.set_xticks(x, classes, rotation=45 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center")
        ax1.set_ylabel("instances")
        ax1.set_title("instances per class")
        if any(s.instances for s in stats.sides):
            ax1.legend()
        centres = [math.sqrt(AREA_EDGES[b] * AREA_EDGES[b + 1]) for b in range(len(AREA_EDGES) - 1)]
        for s in stats.sides:
            total = sum(s.area_hist)
            if total:
                ax2.plot(centres, [c / total for c in s.area_hist], marker="o", label=f"{s.name} ({total})")
        ax2.set_xscale("log")
        ax2.set_xlabel("mask area / frame area")
        ax2.set_ylabel("share of the side's instances")
        ax2.set_title("mask area")
        if any(sum(s.area_hist) for s in stats.sides):
            ax2.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    path = check_chart_path(out)
    write_atomic(path, buf.getvalue())  # OutputError naming the file (full disk, a folder, ...)
    return path


__all__ = ["ALL", "AREA_EDGES", "DatasetStats", "SideStats", "UNASSIGNED", "area_bin", "check_chart_path",
           "dataset_stats", "have_matplotlib", "instance_area", "write_chart"]
