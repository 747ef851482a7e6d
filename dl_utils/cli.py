"""``dl-utils``: the command line, a thin driver over the library modules.

Each subcommand imports its module only when it runs, so ``dl-utils --help`` stays instant and the
frame/format commands work without the model extras installed. Errors the user can fix
(:class:`dl_utils.errors.DlUtilsError`) end the process with one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .errors import DlUtilsError, InputError

EXPORT_FORMATS = ("cvat-video", "cvat-images", "coco", "png-masks", "mattes", "yolo-detect", "yolo-seg")
#: export options that only the mattes format reads (argparse dest -> the option as typed)
_MATTE_OPTIONS = {"pattern": "--pattern", "combine": "--combine", "bit_depth": "--bit-depth",
                  "dilate": "--dilate", "feather": "--feather", "exr": "--exr",
                  "skip_empty": "--skip-empty", "json": "--json", "force": "--force"}


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ---------------------------------------------------------------- frames
def cmd_frames_info(args: argparse.Namespace) -> int:
    from .video_utils import probe

    info = probe(args.source)
    if args.json:
        _print_json(info)
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def cmd_frames_split(args: argparse.Namespace) -> int:
    from .video_utils import split_video

    if (args.seconds is None) == (args.parts is None):
        raise InputError("give exactly one of --seconds N or --parts N")
    from .models import cli_warnings

    with cli_warnings(args.debug):  # "fewer parts than asked" prints as one line, not Python's form
        parts = split_video(args.video, args.out, seconds=args.seconds, parts=args.parts)
    for p in parts:
        print(p)
    return 0


# ---------------------------------------------------------------- import / export / store
def cmd_import(args: argparse.Namespace) -> int:
    from .formats import import_file, import_yolo
    from .store import staged_store

    out = Path(args.out)
    given = Path(args.file)
    # a folder, or its data.yaml (what Ultralytics' own commands are given: data=ds/data.yaml)
    yolo = args.format == "yolo" or (args.format == "auto" and (
        given.is_dir() or given.suffix.lower() in (".yaml", ".yml")))
    if args.split and not yolo:
        raise InputError("--split picks a side of a YOLO dataset; it applies to --format yolo only")
    if yolo and args.append:
        raise InputError("a YOLO dataset is imported into a new store (its images become the store's"
                         " media); drop --append")
    if out.exists() and not (args.overwrite or args.append):
        raise InputError(
            f"{out} already exists; pass --overwrite to replace it" if yolo else
            f"{out} already exists; pass --append to add to it or --overwrite to replace it"
        )
    # built beside --out and renamed over it when complete: a failed import (bad file, full disk,
    # Ctrl-C) leaves an existing store exactly as it was and creates nothing
    with staged_store(out, keep_existing=bool(args.append and out.exists())) as store:
        if yolo:
            import_yolo(args.file, store, split=args.split)
        else:
            import_file(args.file, store, format=args.format)
        s = store.summary()
    print(f"imported {args.file} -> {out}: {s['objects']} objects, {s['instances']} instances"
          f" on {s['frames']} frames")
    return 0


#: options of the dataset exports (yolo-detect, yolo-seg, coco with --split): dest -> flag
_DATASET_OPTIONS = {"split": "--split", "classes": "--classes", "image_format": "--image-format",
                    "jpeg_quality": "--jpeg-quality", "include_empty": "--include-empty",
                    "strict": "--strict", "link": "--link", "dry_run": "--dry-run"}


def cmd_export(args: argparse.Namespace) -> int:
    from .formats import export_mattes, export_store
    from .store import AnnotationStore

    dataset = args.format in ("yolo-detect", "yolo-seg") or (args.format == "coco" and args.split)
    if dataset:
        return _export_dataset(args)
    given = [flag for dest, flag in _DATASET_OPTIONS.items() if getattr(args, dest) not in (None, False)]
    if given:
        raise InputError(f"{', '.join(given)} apply to --format yolo-detect, yolo-seg (and coco with"
                         f" --split), not {args.format}")
    if len(args.store) > 1:
        raise InputError(f"--format {args.format} writes one store ({len(args.store)} given); export them"
                         " one by one, or use yolo-detect, yolo-seg or coco --split for one dataset")
    args.store = args.store[0]
    objects: list[int] | None = None
    if args.objects:
        try:
            objects = [int(v) for v in args.objects.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--objects {args.objects!r}: give ids separated by commas, e.g. 1,2,5") from None
    opts: dict[str, object] = {}
    if args.shape:
        opts["shape"] = args.shape
    if objects is not None:
        opts["objects"] = objects
    if args.start is not None:
        opts["start"] = args.start
    if args.stop is not None:
        opts["stop"] = args.stop
    if args.format != "mattes":
        given = [flag for dest, flag in _MATTE_OPTIONS.items() if getattr(args, dest) not in (None, False)]
        if given:
            raise InputError(f"{', '.join(given)} apply to --format mattes only, not {args.format}")
        with AnnotationStore.open(args.store, readonly=True) as store:
            written = export_store(store, args.format, args.out, **opts)
        print(f"exported {args.store} as {args.format} -> {written if written else args.out}")
        return 0
    if args.shape:
        raise InputError("--shape does not apply to mattes (a matte is pixels: boxes and polygons are filled)")
    with AnnotationStore.open(args.store, readonly=True) as store:
        result = export_mattes(
            store, args.out, pattern=args.pattern, objects=objects, start=args.start, stop=args.stop,
            combine=args.combine, bit_depth=args.bit_depth, dilate=args.dilate, feather=args.feather,
            exr=args.exr, skip_empty=args.skip_empty, force=args.force,
        )
    if args.json:  # one object on stdout, nothing else: plugins parse it
        print(json.dumps(result.summary()))
    else:
        s = result.summary()
        print(f"exported {args.store} as mattes -> {s['pattern']} ({s['file_count']} files,"
              f" frames {s['first_frame']}..{s['last_frame']})")
    return 0


def _export_dataset(args: argparse.Namespace) -> int:
    """yolo-detect / yolo-seg (and coco per split): several stores into one training dataset."""
    from contextlib import ExitStack

    from .classes import ClassTable
    from .formats import YoloOptions, export_coco_splits, export_yolo, plan_yolo
    from .splits import Split, check_distinct_stores
    from .store import AnnotationStore

    not_here = {"shape": "--shape", "objects": "--objects", "start": "--start", "stop": "--stop"}
    not_here.update({k: v for k, v in _MATTE_OPTIONS.items() if k != "json"})
    given = [flag for dest, flag in not_here.items() if getattr(args, dest) not in (None, False, 0)]
    if given:
        raise InputError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to --format {args.format}"
                         f"{' --split' if args.format == 'coco' else ''}")
    check_distinct_stores(args.store)  # as typed: the message shows the user's spelling
    split = Split.load(args.split) if args.split else None
    table = ClassTable.load(args.classes) if args.classes else None
    with ExitStack() as stack:
        stores = [stack.enter_context(AnnotationStore.open(p, readonly=True)) for p in args.store]
        if args.dry_run and args.format == "coco":
            raise InputError("--dry-run applies to yolo-detect and yolo-seg; coco --split has none yet")
        if args.format == "coco":
            if args.image_format or args.strict:
                raise InputError("--image-format and --strict apply to YOLO exports; COCO --split"
                                 " copies JPEG images as they are and encodes the rest as jpg")
            summary = export_coco_splits(stores, args.out, split=split, split_name=args.split,
                                         classes=table, include_empty=args.include_empty, link=args.link,
                                         jpeg_quality=95 if args.jpeg_quality is None else args.jpeg_quality,
                                         ).summary()
        else:
            opts = YoloOptions(
                task="detect" if args.format == "yolo-detect" else "segment", split=split,
                split_name=args.split or "", classes=table, image_format=args.image_format or "jpg",
                jpeg_quality=95 if args.jpeg_quality is None else args.jpeg_quality,
                include_empty=args.include_empty, strict=args.strict, link=args.link,
            )
            from .models import cli_warnings

            if args.dry_run:
                summary = dict(plan_yolo(stores, opts).summary(), out=str(Path(args.out).absolute()),
                               dry_run=True)
            else:
                with cli_warnings(args.debug):
                    summary = export_yolo(stores, args.out, opts).summary()
    if args.json:
        print(json.dumps(summary))
        return 0
    sides = ", ".join(f"{side} {n}" for side, n in summary["images"].items() if n)
    print(f"{'would export' if summary.get('dry_run') else 'exported'} {len(args.store)} store(s) as"
          f" {args.format} -> {summary['out']}"
          f" ({sides or 'no'} images, {sum(summary['instances'].values())} instances,"
          f" {len(summary['names'])} classes)")
    for note in summary.get("notes", []):
        print(f"note: {note}")
    return 0  # skipped degenerate polygons were a warning line on stderr (export_yolo warns)


def cmd_store_info(args: argparse.Namespace) -> int:
    from .store import AnnotationStore

    with AnnotationStore.open(args.store, readonly=True) as store:
        info = store.summary()
        info["progress"] = store.progress()
        info["runs"] = store.runs()
    _print_json(info)
    return 0


def cmd_classes_check(args: argparse.Namespace) -> int:
    from .classes import ClassTable

    table = ClassTable.load(args.file)
    for c in table:
        sup = f"  (superclass {c.superclass})" if c.superclass else ""
        print(f"{c.id:>4}  {c.name:<24} {c.color}{sup}")
    print(f"{len(table)} classes OK")
    return 0


# ---------------------------------------------------------------- models
def cmd_models_list(args: argparse.Namespace) -> int:
    from .dino_models import list_dino_models
    from .models import find_spec, format_finetuned_table, format_model_table, list_finetuned, list_models
    from .sam3_weights import list_sam3_models

    dino = list_dino_models()
    for r in dino:  # `models download tiny` means SAM2's tiny: show only the aliases that reach DINO
        r["aliases"] = [a for a in r["aliases"] if find_spec(a) is None]
    rows = list_models() + dino + list_sam3_models()
    tuned = list_finetuned()
    if args.json:  # fine-tuned checkpoints: family "sam2-finetuned", named by their path
        _print_json(rows + [{**t, "name": t["path"], "family": "sam2-finetuned"} for t in tuned])
    else:
        print(format_model_table(rows))
        print()
        print(format_finetuned_table(tuned))
    return 0


def _have(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


def cmd_models_download(args: argparse.Namespace) -> int:
    from .dino_models import download_dino, find_dino_spec
    from .models import find_spec

    from .sam3_weights import download_sam3, find_sam3_spec

    sam3 = find_sam3_spec(args.name) if find_spec(args.name) is None else None
    if sam3 is not None:  # SAM 3's official source is Hugging Face: --from changes nothing; --url: a mirror
        print(download_sam3(args.name, force=args.force, url=args.url))
        if not args.no_verify and sam3.name == "sam3":
            print("(sha256 recorded; the strict load of SAM 3 runs at first use)", file=sys.stderr)
        return 0
    # SAM2 names win over the GroundingDINO registry's short aliases ("tiny", "base")
    dino = find_dino_spec(args.name) if find_spec(args.name) is None else None
    if dino is not None:
        path = download_dino(args.name, force=args.force, url=args.url, source=args.source)
        print(path)
        if args.no_verify or dino.family != "groundingdino":
            return 0
        if not _have("torch", "groundingdino"):
            print("(torch/groundingdino not installed: the strict load check runs at first use)",
                  file=sys.stderr)
            return 0
        from .dinoal import verify_groundingdino

        print(f"strict load OK, sha256 {verify_groundingdino(path)}")
        return 0

    from .models import download

    path = download(args.name, force=args.force, url=args.url, source=args.source)
    print(path)
    if args.no_verify:
        return 0
    if not _have("torch", "sam2"):
        print("(torch/sam2 not installed: the strict load check runs at first use)", file=sys.stderr)
        return 0
    from .sam2_loader import verify_checkpoint

    spec = find_spec(args.name)
    if spec is None:  # a Hugging Face id of a model outside the registry: its config is unknown here
        print("(not in the registry: pass --model when loading it to pick the config)", file=sys.stderr)
        return 0
    digest = verify_checkpoint(spec.name, path)
    print(f"strict load OK, sha256 {digest}")
    return 0


# ---------------------------------------------------------------- segment (SAM2 video)
def cmd_segment(args: argparse.Namespace) -> int:
    from .drivers.segment import run_segment_cli

    return run_segment_cli(args)


# ---------------------------------------------------------------- detect (GroundingDINO)
def cmd_detect(args: argparse.Namespace) -> int:
    from .drivers.detect import run_detect_cli

    return run_detect_cli(args)


# ---------------------------------------------------------------- finetune / evaluate
def cmd_finetune(args: argparse.Namespace) -> int:
    from .drivers.finetune import run_finetune_cli

    return run_finetune_cli(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .drivers.finetune import run_evaluate_cli

    return run_evaluate_cli(args)


# ---------------------------------------------------------------- parser
def cmd_annotate(args: argparse.Namespace) -> int:
    from .drivers.annotate import run_annotate_cli

    return run_annotate_cli(args)


def cmd_batch(args: argparse.Namespace) -> int:
    from .drivers.batch import run_batch_cli

    return run_batch_cli(args)


def build_parser() -> argparse.ArgumentParser:
    """The ``dl-utils`` parser; each command group is added by a function of its own, in the order
    ``dl-utils --help`` lists them."""
    p = argparse.ArgumentParser(
        prog="dl-utils",
        description="Pre-annotate images and videos (SAM2, GroundingDINO) and hand the result to CVAT.",
    )
    p.add_argument("--version", action="version", version=f"dl-utils {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_frames_commands(sub)
    _add_import_command(sub)
    _add_export_command(sub)
    _add_store_commands(sub)
    _add_models_commands(sub)
    _add_engine_commands(sub)
    _add_finetune_commands(sub)

    from .drivers.cvat import add_cvat_arguments  # cvat-sdk is imported only when a cvat command runs

    add_cvat_arguments(sub)
    _add_classes_commands(sub)

    from .drivers.dataset import add_dataset_arguments

    add_dataset_arguments(sub)
    return p


def _add_frames_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    frames = sub.add_parser("frames", help="inspect and split videos and image sequences")
    fsub = frames.add_subparsers(dest="frames_command", metavar="SUBCOMMAND", required=True)
    info = fsub.add_parser("info", help="frame count, fps, size, codec of a video or image set")
    info.add_argument("source", help="video file, image folder, glob, printf pattern or image")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_frames_info)
    split = fsub.add_parser("split", help="split a video into parts without re-encoding")
    split.add_argument("video")
    split.add_argument("--seconds", type=float, help="part duration in seconds")
    split.add_argument("--parts", type=int, help="number of parts instead of a duration")
    split.add_argument("--out", required=True, help="output folder")
    split.set_defaults(func=cmd_frames_split)


def _add_import_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = sub.add_parser("import", help="read CVAT XML (video or images), COCO JSON or a YOLO dataset"
                         " into a store")
    imp.add_argument("file", help="CVAT XML or COCO JSON file, or a YOLO dataset (its folder or data.yaml)")
    imp.add_argument("--out", required=True, help="annotation store (.sqlite) to write")
    imp.add_argument("--format", default="auto", choices=("auto", "cvat", "coco", "yolo"),
                     help="auto: a folder or a .yaml file is a YOLO dataset, another file CVAT or COCO by its content")
    imp.add_argument("--split", choices=("train", "val", "test"),
                     help="YOLO: import only this side (default: every side data.yaml names)")
    g = imp.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace an existing store")
    g.add_argument("--append", action="store_true", help="add to an existing store")
    imp.set_defaults(func=cmd_import)


def _add_export_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    exp = sub.add_parser("export", help="write stores as CVAT XML, COCO JSON, PNG masks, matte sequences"
                         " or YOLO datasets")
    exp.add_argument("store", nargs="+", help="annotation store(s); several only for yolo-detect,"
                     " yolo-seg and coco --split (one dataset)")
    exp.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    exp.add_argument("--out", required=True, help="output file (XML/JSON) or folder (png-masks, mattes,"
                     " YOLO, coco --split)")
    exp.add_argument("--shape", choices=("mask", "polygon", "box"),
                     help="geometry to write (default: each instance's own)")
    exp.add_argument("--objects", help="only these object ids, e.g. 1,2,5")
    exp.add_argument("--start", type=int, help="first source frame (inclusive)")
    exp.add_argument("--stop", type=int, help="last source frame (inclusive)")
    d = exp.add_argument_group("datasets", "options of --format yolo-detect, yolo-seg and coco --split"
                               " (docs/formats_yolo.md)")
    d.add_argument("--split", metavar="SPLIT.json", help="train/val/test sides by video or image group"
                   " (dl-utils dataset split); without it every frame is under train")
    d.add_argument("--classes", metavar="TABLE", help="class table (.csv/.xlsx): class ids are its row"
                   " order; without it the sorted label names of the stores")
    d.add_argument("--image-format", choices=("jpg", "png"), help="picture files (default jpg; an image"
                   " set's files already in this format are copied as they are)")
    d.add_argument("--jpeg-quality", type=int, metavar="Q", help="JPEG quality 1..100 (default 95)")
    d.add_argument("--include-empty", action="store_true",
                   help="also frames without instances (background images, empty label files)")
    d.add_argument("--strict", action="store_true",
                   help="a polygon of < 3 points is an error (default: skipped and counted)")
    d.add_argument("--link", action="store_true",
                   help="hard-link image set files instead of copying them (same file system)")
    d.add_argument("--dry-run", action="store_true", help="YOLO: check classes, split and media and print"
                   " the pictures and instances per side; decode and write nothing")
    m = exp.add_argument_group("mattes", "options of --format mattes (docs/formats_mattes.md)")
    m.add_argument("--pattern", help="file name in --out with a frame field %%04d, %%d or ####, and"
                   " {object} / {label} for one sequence per object / label (default mask_%%04d.png)")
    m.add_argument("--combine", action="store_true", help="one matte of all selected objects")
    m.add_argument("--bit-depth", type=int, help="8 (default for PNG) or 16; EXR is always half float")
    m.add_argument("--dilate", type=int, default=0, metavar="PX", help="grow the matte by PX pixels")
    m.add_argument("--feather", type=int, default=0, metavar="PX",
                   help="soft edge: Gaussian ramp PX pixels each side of the edge")
    m.add_argument("--exr", action="store_true", help="single-channel (A) half-float OpenEXR instead of PNG")
    m.add_argument("--skip-empty", action="store_true",
                   help="no file for frames without a mask (default: a black file, an unbroken sequence)")
    m.add_argument("--json", action="store_true", help="print a JSON summary (mattes, YOLO, coco --split)")
    m.add_argument("--force", action="store_true",
                   help="replace files in --out that no matte export wrote (never symlinks or devices)")
    exp.set_defaults(func=cmd_export)


def _add_store_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store = sub.add_parser("store", help="inspect an annotation store")
    ssub = store.add_subparsers(dest="store_command", metavar="SUBCOMMAND", required=True)
    sinfo = ssub.add_parser("info", help="objects, frames, progress per object, runs")
    sinfo.add_argument("store")
    sinfo.set_defaults(func=cmd_store_info)


def _add_models_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="list and download SAM2 checkpoints")
    msub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    mlist = msub.add_parser("list", help="known models, sizes, and which are downloaded")
    mlist.add_argument("--json", action="store_true", help="print JSON")
    mlist.set_defaults(func=cmd_models_list)
    mdl = msub.add_parser("download", help="fetch a checkpoint (resumable, size-checked, strict load)")
    mdl.add_argument("name", help="registry name or alias (see 'models list': SAM2, GroundingDINO, SAM 3)"
                     " or a Hugging Face id")
    mdl.add_argument("--force", action="store_true", help="download again even if present")
    mdl.add_argument("--from", dest="source", default="official", choices=("official", "hf"),
                     help="official URL (default) or the Hugging Face mirror")
    mdl.add_argument("--url", help="download from this address instead (a mirror)")
    mdl.add_argument("--no-verify", action="store_true", help="skip the strict load check")
    mdl.set_defaults(func=cmd_models_download)


def _add_engine_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """segment, detect, annotate: their options live with their drivers (torch-free to import)."""
    from .drivers.detect import add_detect_arguments  # torch-free: only the option lists
    from .drivers.segment import add_segment_arguments

    seg = sub.add_parser(
        "segment",
        help="SAM2: masks from PROMPTS.json propagated through a video into a store (resumes)",
    )
    add_segment_arguments(seg)
    seg.set_defaults(func=cmd_segment)

    det = sub.add_parser(
        "detect",
        help="GroundingDINO: text prompt -> labelled boxes (and SAM2 masks with --segment) into a store",
    )
    add_detect_arguments(det)
    det.set_defaults(func=cmd_detect)

    from .drivers.annotate import add_annotate_arguments

    ann = sub.add_parser(
        "annotate",
        help="clicks and/or a text prompt -> tracked masks in a store (resumable), optionally pushed to CVAT",
    )
    add_annotate_arguments(ann)
    ann.set_defaults(func=cmd_annotate)

    from .drivers.batch import add_batch_arguments

    bat = sub.add_parser("batch", help="annotate many videos and image folders (local processes or Ray), resumable")
    add_batch_arguments(bat)
    bat.set_defaults(func=cmd_batch)


def _add_finetune_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """finetune, evaluate: their options live with their driver (torch-free to import)."""
    from .drivers.finetune import add_evaluate_arguments, add_finetune_arguments

    ft = sub.add_parser("finetune", help="teach SAM2 people's corrected masks (stores, a folder pair) -> tuned.pt")
    add_finetune_arguments(ft)
    ft.set_defaults(func=cmd_finetune)
    ev = sub.add_parser("evaluate", help="score checkpoints (files or registry names) on the same masks and prompts")
    add_evaluate_arguments(ev)
    ev.set_defaults(func=cmd_evaluate)


def _add_classes_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    classes = sub.add_parser("classes", help="class tables (.csv / .xlsx)")
    csub = classes.add_subparsers(dest="classes_command", metavar="SUBCOMMAND", required=True)
    check = csub.add_parser("check", help="validate a class table and list its classes")
    check.add_argument("file")
    check.set_defaults(func=cmd_classes_check)


def _stdout_closed() -> bool:
    """True when stdout is a pipe (or socket) whose reading end has been closed."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError as e:
        if not _stdout_closed():  # a broken connection elsewhere (a socket): a bug report
            return _internal_error(e, args)
        # the reader of our output went away (`dl-utils store info X | head`): stop quietly, as
        # the Python docs advise: point stdout at devnull so the exit-time flush cannot fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell tool cut off by `head` exits with
    except DlUtilsError as e:
        if args.debug:
            raise
        print(f"dl-utils: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dl-utils: interrupted; what was written so far is kept (stores, uploads, checkpoints); files"
              " written atomically (exports, splits, remaps) are as they were before this run", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: still one line unless --debug
        return _internal_error(e, args)


def _internal_error(e: Exception, args: argparse.Namespace) -> int:
    if args.debug or os.environ.get("DL_UTILS_DEBUG"):
        raise e
    print(
        f"dl-utils: internal error: {type(e).__name__}: {e} (run with --debug for the traceback,"
        " and please report it)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
