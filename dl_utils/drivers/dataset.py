"""``dl-utils dataset split | stats | remap``: training data out of annotation stores.

The library code is :mod:`dl_utils.splits` (the split itself) and :mod:`dl_utils.datasets` (counting
stores, statistics, remapping); this module parses options and prints. ``--json`` prints the result
as JSON on stdout (progress and notes go to stderr), ``--dry-run`` computes and prints what would be
written and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_dataset_split(args: argparse.Namespace) -> int:
    """Split the stores' videos/images into train/val[/test], stratified by class."""
    from ..datasets.counts import split_stores
    from ..splits import SplitOptions, parse_ratios

    if not args.out and not args.dry_run:
        raise InputError("dataset split: give --out SPLIT.json (where the split is saved), or --dry-run to"
                         " only print it")
    opts = SplitOptions(parse_ratios(args.ratios), args.seed, args.by, args.tolerance)
    earlier = _earlier_split(args.out) if args.out else None  # before the stores are read
    report = split_stores(args.stores, opts, progress=not args.json)
    saved = None
    if earlier is not None:
        _note_moves(earlier, report.split, args.out, args.dry_run)
    if not args.dry_run:
        saved = report.split.save(args.out)
    if args.json:
        _print_json({**report.to_json(), "out": str(saved) if saved else None, "dry_run": bool(args.dry_run),
                     "split": report.split.to_json()})
        return 0
    print(report.table())
    if saved:
        print(f"split written to {saved}")
    else:
        print("dry run: nothing written")
    return 0


def _earlier_split(out: str) -> Any:
    """The split an existing ``--out`` holds (it is about to be replaced), or None when there is none.
    A file that is not a split (a typo naming the class table, a chart) is refused, never replaced."""
    from ..splits import Split

    path = Path(out)
    if not path.is_file():
        return None  # a new file; a folder or a device is refused by Split.save with its own message
    try:
        return Split.load(path)
    except InputError:
        raise InputError(f"--out {out} exists and is not a split file; give a new path (or the split file"
                         " to replace), e.g. split.json") from None


def _note_moves(earlier: Any, split: Any, out: str, dry_run: bool) -> None:
    """Say on stderr which groups the new split puts on another side than the file at ``out`` did: a
    model trained on the earlier split has seen the frames of a group that moved to val or test, so
    its scores there are no longer unseen data."""
    moved = [(g, earlier.side(g), split.side(g)) for side in ("train", "val", "test") for g in split.groups(side)
             if earlier.side(g) not in (None, split.side(g))]
    if not moved:
        return
    seen = [m for m in moved if m[1] == "train"]
    g, a, b = (seen or moved)[0]
    risk = (f"; {len(seen)} left train: a model trained on the earlier split has seen their frames, so"
            " its val/test scores on them are not unseen data" if seen else "")
    print(f"note: {out} {'would change' if dry_run else 'changed'}: {len(moved)} group(s) on another side"
          f" than before (e.g. {g} {a} -> {b}){risk}", file=sys.stderr)


def cmd_dataset_stats(args: argparse.Namespace) -> int:
    """Per-split images, annotated images, instances per class, groups and mask areas."""
    from ..datasets.stats import check_chart_path, dataset_stats, have_matplotlib, write_chart
    from .finetune import load_split

    if args.png and not have_matplotlib():  # before counting: refuse at once, not after a long read
        raise InputError("--png needs matplotlib, which this environment lacks; install it (pip install"
                         " matplotlib) or leave --png out")
    if args.png:
        check_chart_path(args.png)
    split = load_split(args.split) if args.split else None
    stats = dataset_stats(args.stores, split=split, progress=not args.json)
    stats.split = str(args.split) if args.split else None
    png = write_chart(stats, args.png) if args.png else None
    if args.json:
        _print_json({**stats.to_json(), "png": str(png) if png else None})
        return 0
    print(stats.table())
    if png:
        print(f"chart written to {png}")
    return 0


def cmd_dataset_remap(args: argparse.Namespace) -> int:
    """Rename labels to the class table's classes (or their superclasses), in place or to --out."""
    from ..classes import ClassTable
    from ..datasets.remap import RemapOptions, remap_store

    table = ClassTable.load(args.classes)
    res = remap_store(args.store, table, out=args.out,
                      options=RemapOptions(to=args.to, drop_unknown=args.drop_unknown), dry_run=args.dry_run)
    if args.json:
        _print_json({**res.plan.to_json(), "out": str(res.out) if res.out else None,
                     "dry_run": bool(args.dry_run)})
        return 0
    print(res.plan)
    if args.dry_run:
        print("dry run: nothing written")
    elif res.out is None:
        print(f"{args.store} left as it was")
    elif args.out:
        print(f"store written to {res.out}")
    else:
        print(f"{args.store} rewritten in place")
    return 0


def add_dataset_arguments(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dataset`` command group to the main parser's subparsers."""
    ds = subparsers.add_parser(
        "dataset", help="training data: leak-free train/val/test splits, statistics, class remapping")
    dsub = ds.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND", required=True)

    sp = dsub.add_parser(
        "split", help="split stores' videos/images into train/val[/test], whole videos on one side,"
        " class shares near the ratios",
        description="Whole groups (a video, or each image of an image set) go to one side; the sides'"
        " per-class instance shares are brought within --tolerance of --ratios where the groups allow"
        " (a seeded search, the same split for the same seed). Prints each class's achieved shares and"
        " why a class misses.")
    sp.add_argument("stores", nargs="+", metavar="STORE", help="annotation stores (.sqlite)")
    sp.add_argument("--ratios", required=True,
                    help="train,val[,test] shares summing to 1, e.g. 0.8,0.1,0.1 or 0.8,0.2")
    sp.add_argument("--seed", type=int, default=0, help="seed of the search (default 0)")
    sp.add_argument("--by", choices=("group", "item"), default="group",
                    help="group: a video's frames stay together (default); item: each image on its own"
                    " (image sets only: refused for a video)")
    sp.add_argument("--tolerance", type=float, default=0.05,
                    help="how far a class's share on a side may be from its ratio (absolute, default 0.05)")
    sp.add_argument("--out", metavar="SPLIT.json", help="where to save the split (written atomically)")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.add_argument("--dry-run", action="store_true", help="print the split's report; write nothing")
    sp.set_defaults(func=cmd_dataset_split)

    st = dsub.add_parser(
        "stats", help="per-split images, annotated images, instances per class, groups, mask area histogram",
        description="Streams the stores (one frame in memory) and prints a table with one column per"
        " side of --split (train, val, test, and 'unassigned' for frames of groups the split lacks), or"
        " one column 'all'.")
    st.add_argument("stores", nargs="+", metavar="STORE", help="annotation stores (.sqlite)")
    st.add_argument("--split", metavar="SPLIT.json",
                    help="a split file (dl-utils dataset split) or a fine-tuned checkpoint / its .json")
    st.add_argument("--png", metavar="CHART", help="also draw a PNG chart (needs matplotlib)")
    st.add_argument("--json", action="store_true", help="print the numbers as JSON")
    st.set_defaults(func=cmd_dataset_stats)

    rm = dsub.add_parser(
        "remap", help="rename a store's labels to a class table's classes, or map them to superclasses",
        description="A label becomes the class it names or is a synonym (or plural) of; --to superclass"
        " maps that class to its top ancestor. Only labels change; without --out the store is rewritten"
        " in place (built beside it, then renamed over it).")
    rm.add_argument("store", metavar="STORE", help="annotation store (.sqlite)")
    rm.add_argument("--classes", required=True, metavar="TABLE", help="class table (.csv/.xlsx)")
    rm.add_argument("--out", metavar="NEW_STORE", help="write a new store here instead of rewriting STORE")
    rm.add_argument("--to", choices=("name", "superclass"), default="name",
                    help="name: each label becomes its class (default); superclass: its class's top ancestor")
    rm.add_argument("--drop-unknown", action="store_true",
                    help="delete objects whose label the table lacks (default: refuse, naming them)")
    rm.add_argument("--json", action="store_true", help="print the mapping as JSON")
    rm.add_argument("--dry-run", action="store_true", help="print the mapping; write nothing")
    rm.set_defaults(func=cmd_dataset_remap)


__all__ = ["add_dataset_arguments", "cmd_dataset_remap", "cmd_dataset_split", "cmd_dataset_stats"]
