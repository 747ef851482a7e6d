"""Class counts per split group, read from stores, and the stratified split made from them.

A split is decided on counts alone (how many frames each video or image has, how many instances of
each class it holds), so the stores are read without decoding a single mask (``decode=False``): an
instance counts when it is not empty, its class is its object's label (what every export writes).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..splits import GroupCounts, SplitOptions, SplitReport, check_distinct_stores, stratified_split
from ..store import AnnotationStore
from .groups import frame_groups

if TYPE_CHECKING:
    from ..annotations import Instance
    from ..store import StoreReader


def instance_class(labels: dict[int, str], inst: "Instance") -> str:
    """The class an instance counts under: its object's label (what exports and fine-tuning use),
    else the label a detector proposed, else ``"object"``."""
    return labels.get(inst.object_id) or inst.label or "object"


def open_stores(paths: Sequence[str | os.PathLike[str]]) -> Iterator["AnnotationStore"]:
    """Each store read-only, one open at a time (a list of thousands of stores never holds more
    than one connection). Refuses an empty list and a path that is not a file up front."""
    if not paths:
        raise InputError("no annotation stores given: pass one or more .sqlite stores")
    for p in paths:
        if not Path(p).is_file():
            raise InputError(f"annotation store {p} does not exist (or is not a file); check the path")
    check_distinct_stores(paths)
    for p in paths:
        with AnnotationStore.open(p, readonly=True) as store:
            yield store


def add_frames(into: dict[str, np.ndarray], group: str, frames: Sequence[int]) -> None:
    """Add distinct ``frames`` to ``into[group]`` (a sorted int64 array: 8 bytes a frame, where a set
    of Python ints costs ten times that); a group seen in several stores keeps their union."""
    a = np.asarray(frames, dtype=np.int64)
    have = into.get(group)
    into[group] = np.unique(a) if have is None else np.union1d(have, a)


def frames_by_group(groups: dict[int, str]) -> dict[str, list[int]]:
    """Invert :func:`~dl_utils.datasets.groups.frame_groups`: group -> its frames."""
    out: dict[str, list[int]] = {}
    for frame, key in groups.items():
        out.setdefault(key, []).append(frame)
    return out


def group_counts(
    paths: Sequence[str | os.PathLike[str]], *, by: str = "group", progress: bool = True
) -> dict[str, GroupCounts]:
    """Group -> its distinct frames and instances per class, over all ``paths``. Two stores of the
    same video (e.g. two teams' classes) add up into one group; its frames count once."""
    frames: dict[str, np.ndarray] = {}
    instances: dict[str, Counter[str]] = {}
    for store in open_stores(paths):
        groups = frame_groups(store, by)
        for key, fs in frames_by_group(groups).items():
            add_frames(frames, key, fs)
            instances.setdefault(key, Counter())
        _count_store(store, groups, instances, progress)
    return {g: GroupCounts(int(len(frames[g])), dict(instances[g])) for g in sorted(frames)}


def _count_store(store: "StoreReader", groups: dict[int, str], found: dict[str, Counter[str]],
                 progress: bool) -> None:
    labels = {o.id: o.label for o in store.objects()}
    frames = tqdm(store.iter_frames(decode=False), desc=f"count {store.path.name}", disable=None if progress else True,
                  leave=False)
    for frame, insts in frames:
        group = groups.get(frame)
        if group is None:
            continue  # an instance on a frame outside the media record: no export writes it either
        counter = found[group]
        for inst in insts:
            if not inst.is_empty:
                counter[instance_class(labels, inst)] += 1


def split_stores(
    paths: Sequence[str | os.PathLike[str]], options: SplitOptions, *, progress: bool = True
) -> SplitReport:
    """``dl-utils dataset split``: the stratified split of the stores' groups (see
    :func:`dl_utils.splits.stratified_split`), with its per-class report."""
    counts = group_counts(paths, by=options.by, progress=progress)
    return stratified_split(counts, options)


__all__ = ["add_frames", "frames_by_group", "group_counts", "instance_class", "open_stores", "split_stores"]
