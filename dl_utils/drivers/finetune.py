"""``dl-utils finetune`` and ``dl-utils evaluate``: the learning half of the loop, as commands.

People correct pre-annotations in CVAT; ``dl-utils cvat pull`` brings the corrections into the
stores; ``finetune`` teaches SAM2 those masks (:func:`dl_utils.finetune.finetune`) and ``evaluate``
scores checkpoints on the same masks and prompts (:func:`dl_utils.finetune.evaluate.evaluate`). This
module only turns arguments into those calls and prints their reports; the training, the data and
the scoring live in :mod:`dl_utils.finetune`.

The base model is chosen as ``segment`` chooses it (:class:`SamOptions`: ``--model``,
``--checkpoint``, ``--image-size``, ``--device``), and every :class:`TrainOptions` field is an
option, derived from the dataclass so the two cannot drift apart: ``finetune --help`` lists them
all with their defaults. Importing this module needs neither torch nor the models.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import MISSING, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import InputError, OutputError
from .options import SamOptions

if TYPE_CHECKING:  # pragma: no cover
    from ..finetune.train import TrainOptions
    from ..models import FinetunedInfo

#: which store masks count as ground truth: people's (locked, pulled from CVAT, imported) or all
SELECT = ("reviewed", "all")

#: help lines of the TrainOptions fields (a field missing here still gets an option, with its name)
_TRAIN_HELP = {
    "steps": "optimiser steps",
    "batch_size": "masks per micro-batch",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "accumulate": "gradient accumulation: micro-batches per optimiser step",
    "warmup": "steps of linear warm-up",
    "cosine": "cosine decay of the learning rate after the warm-up",
    "loss": "pixel loss: bce or focal",
    "dice_weight": "weight of the dice loss",
    "iou_weight": "weight of the IoU-score loss (the decoder's predicted IoU against the real one)",
    "val_fraction": "share of videos (image sets: images) held out for validation",
    "seed": "seed of the split, the prompt sampling and the initialisation (CPU runs repeat exactly)",
    "checkpoint_every": "write a resumable checkpoint every N steps (into OUT.ckpt/)",
    "cache_dir": "folder of the image-feature cache, fp16, memory-mapped (default: the user cache, "
                 "$XDG_CACHE_HOME/dl-utils/sam2-features)",
    "cache_max_bytes": "size cap of the feature cache in GiB; least recently used frames are evicted",
    "train_memory": "also train the video memory path (memory attention, memory encoder, object pointer) on "
                    "pairs of one object's masks 1-8 frames apart in a video; needs videos, refused for image sets",
    "amp": "mixed precision (bf16 autocast) where a GPU is present",
    "compile": "torch.compile the decoder where a GPU is present",
    "sampling.points": "MIN MAX positive points sampled in each mask per step",
    "sampling.negatives": "at most this many negative points per mask",
    "sampling.box": "probability of adding a (jittered) box to the points",
    "sampling.box_jitter": "largest shift of each box side, as a fraction of the box's size",
}
#: TrainOptions fields given by other options of the command (SAM2's, or the data's)
_NOT_TRAIN_OPTIONS = {"image_size", "device", "select", "model", "checkpoint", "out"}
#: fields whose option has another name and unit: field -> (option dest, factor from option to field)
_RENAMED = {"cache_max_bytes": ("cache_max_gb", float(1 << 30))}


def _train_options_class() -> type[TrainOptions]:
    from ..finetune.train import TrainOptions

    return TrainOptions


def _field_type(value: Any, annotation: Any) -> Any:
    """The argparse ``type`` of a field: from its default, else from its annotation's text."""
    if value is not None and not isinstance(value, (bool, list, tuple)):
        return type(value) if isinstance(value, (int, float)) else str
    text = str(annotation)
    for name, kind in (("float", float), ("int", int)):
        if name in text:
            return kind
    return str


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def _add_field(group: Any, f: Any, dest: str, default: Any, help_key: str) -> None:
    """One option for one dataclass field; its type, arity and default follow the field's default.
    A flag the command already has (a field added later under a taken name) is left to that option."""
    flag = "--" + dest.replace("_", "-")
    if flag in group._option_string_actions:
        return
    text = _TRAIN_HELP.get(help_key, help_key.replace("_", " ").replace(".", " "))
    if dest in {d for d, _ in _RENAMED.values()}:
        factor = next(k for d, k in _RENAMED.values() if d == dest)
        group.add_argument(flag, dest=dest, type=float, default=None,
                           help=f"{text} (default: {default / factor:g})")
    elif isinstance(default, bool):
        group.add_argument(flag, dest=dest, default=default, action=argparse.BooleanOptionalAction,
                           help=f"{text} (default: {'on' if default else 'off'})")
    elif isinstance(default, (list, tuple)):
        kind = _field_type(default[0] if default else None, f.type)
        group.add_argument(flag, dest=dest, default=default, type=kind, nargs=len(default) or "+",
                           metavar=("MIN", "MAX") if len(default) == 2 else None,
                           help=f"{text} (default: {' '.join(map(str, default))})")
    else:
        group.add_argument(flag, dest=dest, default=default, type=_field_type(default, f.type),
                           help=text if "(default" in text else f"{text} (default: %(default)s)")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainOptions` field (``batch_size`` -> ``--batch-size``; the fields of a
    nested options object, the click sampling, as ``--sampling-points`` ...), each with its default."""
    group = parser.add_argument_group("training (TrainOptions)")
    try:
        cls = _train_options_class()
    except ImportError as e:  # `dl-utils --help` must work without the train extra
        group.description = f"unavailable here ({e}): pip install 'dl-utils[train]'"
        return
    for f in fields(cls):
        if f.name in _NOT_TRAIN_OPTIONS or f.name.startswith("_"):
            continue
        default = _default(f)
        if is_dataclass(default):
            for sub in fields(default):
                _add_field(group, sub, f"{f.name}_{sub.name}", getattr(default, sub.name), f"{f.name}.{sub.name}")
        else:
            _add_field(group, f, _RENAMED.get(f.name, (f.name, 1.0))[0], default, f.name)
    if "--restart" not in group._option_string_actions:
        group.add_argument("--restart", action="store_true",
                           help="start over instead of resuming from OUT.ckpt/ (default: resume)")


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stores", nargs="*", metavar="STORE",
                        help="annotation stores (.sqlite) whose masks are the ground truth")
    parser.add_argument("--folder", default=None, metavar="ROOT",
                        help="an images/ + masks/ folder pair (binary PNGs, same stem), instead of or besides stores")
    parser.add_argument("--select", choices=SELECT, default="reviewed",
                        help="reviewed: masks people made or corrected (locked frames, CVAT pulls, imports); "
                             "all: the engine's unreviewed output too (default: %(default)s)")


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """``dl-utils finetune STORE... --out FILE`` with the SAM2 base options and every TrainOptions field."""
    _add_data_arguments(parser)
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="the tuned checkpoint {'model': state_dict}; FILE.json beside it says what it is")
    parser.add_argument("--split", default=None, metavar="FILE",
                        help="train on the train side and score on the val side of a saved split (dl-utils "
                             "dataset split, or a tuned checkpoint / its .json); its test side is held out. "
                             "Default: a seeded split by video (--val-fraction, --seed)")
    SamOptions.add_arguments(parser, command="segment", direction=False)
    _add_train_options(parser)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """``dl-utils evaluate STORE... --checkpoint A --checkpoint B ...``."""
    _add_data_arguments(parser)
    parser.add_argument("--checkpoint", action="append", required=True, dest="checkpoints", metavar="CKPT",
                        help="a checkpoint file or a registry name (the base compares too); repeat to compare")
    parser.add_argument("--split", default=None, metavar="FILE",
                        help="a saved split file, or a tuned checkpoint / its .json (the split it was trained with): "
                             "score its val side only")
    parser.add_argument("--sheet", default=None, metavar="PNG",
                        help="contact sheet of the largest improvements and regressions")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    parser.add_argument("--image-size", type=int, default=None, dest="image_size",
                        help="SAM2 input size (default: a fine-tuned checkpoint's own, else the model's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled prompts (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")


# ----------------------------------------------------------------------------- data
def load_dataset(stores: Sequence[str | os.PathLike[str]], folder: str | os.PathLike[str] | None,
                 select: str = "reviewed") -> Any:
    """The ground truth of ``stores`` and/or a folder pair, as one dataset for training or scoring."""
    from ..finetune import data

    if select not in SELECT:
        raise InputError(f"--select {select!r}: use one of {', '.join(SELECT)}")
    if not stores and folder is None:
        raise InputError("no data: give one or more STORE files (dl-utils cvat pull writes them) "
                         "and/or --folder ROOT (an images/ + masks/ folder pair)")
    for s in stores:
        if not Path(s).is_file():
            raise InputError(f"store {s} does not exist; check the path (dl-utils cvat pull STORE --task N makes one)")
    parts = []
    if stores:
        parts.append(data.from_stores([Path(s) for s in stores], select=select))
    if folder is not None:
        parts.append(data.from_folder_pair(Path(folder)))
    return parts[0] if len(parts) == 1 else data.merge(parts)


# ----------------------------------------------------------------------------- finetune
def train_options(args: argparse.Namespace, sam: SamOptions) -> TrainOptions:
    """The :class:`TrainOptions` of parsed arguments (the base's image size and ``--select`` included)."""
    cls = _train_options_class()
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name == "image_size":
            if sam.image_size is not None:
                values["image_size"] = sam.image_size
        elif f.name == "select":
            values["select"] = args.select
        elif f.name in _RENAMED:
            dest, factor = _RENAMED[f.name]
            if getattr(args, dest, None) is not None:
                values[f.name] = int(getattr(args, dest) * factor)
        elif is_dataclass(default := _default(f)):
            sub = {g.name: getattr(args, f"{f.name}_{g.name}") for g in fields(default)
                   if hasattr(args, f"{f.name}_{g.name}")}
            values[f.name] = replace(default, **sub)  # type: ignore[type-var]
        elif hasattr(args, f.name) and f.name not in _NOT_TRAIN_OPTIONS:
            values[f.name] = getattr(args, f.name)
    return cls(**values)


def _percent(v: float | None) -> str:
    return "?" if v is None else f"{100 * v:.2f}%"


def finetune_report(info: FinetunedInfo) -> list[str]:
    """The before/after lines; the last one says plainly when the tuned model is not better."""
    lines = [f"base model: {info.base_model}" + (f" at {info.image_size} px" if info.image_size else ""),
             f"val mean IoU: before {_percent(info.iou_before)}, after {_percent(info.iou_after)}"]
    if info.improved:
        gain = 100 * ((info.iou_after or 0.0) - (info.iou_before or 0.0))
        small = " (a negligible gain: more steps or more corrections may do better)" if gain < 0.5 else ""
        lines.append(f"better: +{gain:.2f} IoU points on the val split{small}; use it with --checkpoint "
                     f"{info.path} (annotate: --sam-checkpoint {info.path})")
    elif info.improved is None:
        lines.append("no before/after figures (empty val split?): the run is not shown to be better")
    else:
        lines.append(f"NOT better: val IoU did not improve ({_percent(info.iou_before)} -> "
                     f"{_percent(info.iou_after)}); keep using {info.base_model} (more or more varied "
                     "corrections, fewer steps or a lower --lr may help)")
    return lines


def register_checkpoint(out: str | os.PathLike[str]) -> FinetunedInfo:
    """Record a finished checkpoint's digest and add it to the local registry (``models list``);
    what ``dl-utils finetune`` does after training, for library runs (the notebook) too."""
    from ..errors import ModelError
    from ..models import finetuned_info, record_sha256, register_finetuned

    out = Path(out)
    info = finetuned_info(out)
    if info is None:
        raise ModelError(f"{out} was written without its sidecar {out}.json; run dl-utils finetune again "
                         "(it resumes from the last checkpoint)")
    record_sha256(out)  # the new file's digest: a stale record of an earlier run would refuse it
    register_finetuned(info)
    return info


def _restart_keyword(finetune: Any, out: Path) -> dict[str, Any]:
    """``--restart``: the library's own ``restart=True`` when it has one; otherwise the resumable
    checkpoints of ``out`` (``OUT.ckpt/``) are removed so the run starts over."""
    import inspect
    import shutil

    if "restart" in inspect.signature(finetune).parameters:
        return {"restart": True}
    ckpt_dir = Path(str(out) + ".ckpt")
    if ckpt_dir.is_dir():
        shutil.rmtree(ckpt_dir)
    return {}


def run_finetune_cli(args: argparse.Namespace) -> int:
    """Run ``dl-utils finetune`` from parsed arguments; prints the before/after report."""
    from ..models import cli_warnings

    with cli_warnings(getattr(args, "debug", False)):
        return _run_finetune_cli(args)


def _run_finetune_cli(args: argparse.Namespace) -> int:
    from ..finetune.train import finetune

    out = Path(args.out)
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; give the checkpoint file to write, e.g. {out / 'tuned.pt'}")
    sam = SamOptions.from_args(args, command="segment")
    options = train_options(args, sam)
    dataset = load_dataset(args.stores, args.folder, args.select)
    extra = _restart_keyword(finetune, out) if getattr(args, "restart", False) else {}
    split = load_split(args.split) if getattr(args, "split", None) is not None else None
    result = finetune(dataset, model=sam.model_name, checkpoint=sam.checkpoint, out=out, options=options,
                      split=split, device=sam.device, progress=True, **extra)
    info = register_checkpoint(out)
    print(f"fine-tuned checkpoint: {out} (what it is: {info.sidecar})")
    resumed = getattr(result, "resumed_from", None)
    how = ("; already trained to the last step, nothing to do (--restart starts over)" if resumed and
           resumed == info.steps else f"; resumed from step {resumed}" if resumed else "")
    print(f"{info.steps} steps on {getattr(result, 'train_size', '?')} train masks, scored on "
          f"{getattr(result, 'val_size', '?')} val masks{how}")
    for line in finetune_report(info):
        print(line)
    if info.improved is False:
        print(f"dl-utils finetune: the tuned model is not better than {info.base_model} on the val split",
              file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- evaluate
def load_split(path: str | os.PathLike[str]) -> Any:
    """A saved split: a split file, a fine-tune sidecar (``tuned.pt.json``) or the tuned checkpoint
    itself (its sidecar holds the split it was trained with)."""
    from ..models import FINETUNE_FORMAT, sidecar_path
    from ..splits import Split

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--split {p} does not exist; give a split file or a fine-tuned checkpoint / its .json")
    if p.suffix != ".json" and sidecar_path(p).is_file():
        p = sidecar_path(p)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return Split.load(p)  # names the file and why
    if isinstance(doc, dict) and doc.get("format") == FINETUNE_FORMAT:
        if not isinstance(doc.get("split"), dict):
            raise InputError(f"--split {p}: the sidecar holds no split (field 'split'); pass the split file")
        try:
            return Split.from_json(doc["split"])
        except InputError as e:
            raise InputError(f"--split {p}: {e}") from None
    return Split.load(p)


def _val_only(dataset: Any, split_file: str | os.PathLike[str]) -> Any:
    """The part of ``dataset`` on the val side of a saved split."""
    split = load_split(split_file)
    val = dataset.subset(split.val)
    if not len(val):
        raise InputError(f"--split {split_file}: none of its {len(split.val)} val group(s) is in the data given "
                         f"(first: {split.val[0] if split.val else 'none'}); pass the stores the split was made from")
    return val


def run_evaluate_cli(args: argparse.Namespace) -> int:
    """Run ``dl-utils evaluate``: the comparison table on stdout (and --json / --sheet files)."""
    from ..models import cli_warnings

    with cli_warnings(getattr(args, "debug", False)):
        return _run_evaluate_cli(args)


def _run_evaluate_cli(args: argparse.Namespace) -> int:
    from ..finetune.evaluate import evaluate

    dataset = load_dataset(args.stores, args.folder, args.select)
    if args.split is not None:
        dataset = _val_only(dataset, args.split)
    report = evaluate(dataset, list(args.checkpoints), image_size=args.image_size, seed=args.seed,
                      device=args.device, progress=True, sheet=args.sheet)
    print(report.format_table())
    if args.json is not None:
        doc = report.to_json()
        _write_json(Path(args.json), json.loads(doc) if isinstance(doc, str) else doc)
        print(f"report: {args.json}")
    if args.sheet is not None:
        print(f"contact sheet: {args.sheet}")
    return 0


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write --json {path} ({e.strerror or e}); check the folder") from None


__all__ = [
    "SELECT",
    "add_evaluate_arguments",
    "add_finetune_arguments",
    "finetune_report",
    "load_dataset",
    "load_split",
    "register_checkpoint",
    "run_evaluate_cli",
    "run_finetune_cli",
    "train_options",
]
