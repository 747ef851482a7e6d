"""Options objects: each owns its command-line arguments and its defaults, defined once.

``dl-utils detect``, ``annotate`` and ``segment`` (and the library calls behind them) share the
detector, tracking and SAM2 settings. Each group is a dataclass with

* ``add_arguments(parser, command=...)``: the group's options, with the help text of that command
  (option names, defaults, types and choices are the same for every command that has the option);
* ``from_args(args)``: the dataclass from parsed arguments (missing attributes take the defaults);
* the defaults as dataclass field defaults, the only place they are written down. The detector's
  thresholds are the engine's own defaults (:class:`~dl_utils.dinoal.detector.GroundedDetector`),
  read from its signature, so the CLI, the drivers and the engine cannot drift apart.

Only the option lists are built here: importing this module needs neither torch nor the models.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..errors import InputError
from ..models import DEFAULT_MODEL as DEFAULT_SAM2
from ..sam2_loader import PRECISIONS, precision_label  # torch-free, like the names below
from ..sam2al.samurai import TRACKERS, SamuraiConfig, check_tracker  # torch-free, like DIRECTIONS
from ..sam2al.session import DIRECTIONS  # torch-free (the engine imports torch when a model is built)

if TYPE_CHECKING:  # pragma: no cover
    from ..classes import ClassTable
    from ..dinoal.detector import GroundedDetector
    from ..dinoal.onnx_yolo import OnnxYoloDetector
    from ..samal import ImageSegmenter
    from ..tracking import TrackerConfig
    from ..video_utils import FrameSource

PathLike = Union[str, "os.PathLike[str]"]
#: what :func:`dl_utils.video_utils.open_frames` opens: a video, an image folder, a glob or pattern, images
SourceSpec = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]

#: the commands whose options these groups build (help texts differ a little between them)
COMMANDS = ("detect", "annotate", "segment")
#: keyframe spacing of tracked video when ``--every`` is not given (images: every image)
DEFAULT_EVERY_TRACKED = 20
#: frames an object may stay unseen and keep its id
DEFAULT_MAX_GAP = 30


def _detector_default(name: str) -> Any:
    """A :class:`GroundedDetector` keyword default (the engine owns its thresholds)."""
    from ..dinoal.detector import GroundedDetector

    return inspect.signature(GroundedDetector.__init__).parameters[name].default


class EngineDefault(float):
    """A threshold the user did not set: equal to GroundingDINO's default, but it tells the SAM 3
    backend to keep SAM 3's own (its released score threshold, 0.5), so ``--backend sam3`` alone
    does not run SAM 3 at GroundingDINO's 0.35. A typed ``--box-threshold`` is a plain float and is
    used by every backend. Pickles and prints as the float it is (batch workers, JSON summaries)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (EngineDefault, (float(self),))


#: the SAM 3 defaults: ``--model`` (a registry name of :mod:`dl_utils.sam3_weights`)
SAM3_DEFAULT_MODEL = "sam3"


def _check(command: str) -> None:
    if command not in COMMANDS:
        raise ValueError(f"command {command!r}: use one of {', '.join(COMMANDS)}")


def _values(cls: type, args: argparse.Namespace, names: dict[str, str] | None = None) -> dict[str, Any]:
    """Field values from ``args`` (attribute ``names.get(field, field)``); absent ones keep the default."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        attr = (names or {}).get(f.name, f.name)
        if hasattr(args, attr):
            out[f.name] = getattr(args, attr)
    return out


# ----------------------------------------------------------------------------- detector
@dataclass
class DetectorOptions:
    """The text step's detector: which engine and weights, where they run, and what counts as a
    detection. ``backend="onnx"``: your own YOLO export (``model`` the ``.onnx`` file; ``nms_iou`` its
    NMS; an untyped ``box_threshold`` means Ultralytics' 0.25)."""

    backend: str = "groundingdino"
    model: PathLike | None = None
    box_threshold: float = EngineDefault(_detector_default("box_threshold"))
    text_threshold: float = _detector_default("text_threshold")
    text_encoder: PathLike | None = None
    device: str | None = None
    detector_size: int | None = None
    classes: PathLike | ClassTable | None = None
    bpe: PathLike | None = None
    nms_iou: float = _detector_default("nms_iou")

    _HELP = {
        "model": {
            "detect": "groundingdino: .pth file, registry name or URL; transformers: save_pretrained folder, "
                      "registry name or Hugging Face id; sam3: sam3.pt file or registry name (default sam3); "
                      "onnx: the .onnx file of an Ultralytics YOLO detection export",
            "annotate": "detector weights: file, folder, registry name or hub id (sam3: sam3.pt or sam3; "
                        "onnx: FILE.onnx)",
        },
        "text_encoder": {
            "detect": "groundingdino backend: local BERT folder (default: bert-base-uncased in the models folder)",
            "annotate": "groundingdino backend: local BERT folder",
        },
    }

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *, command: str = "detect",
                      device: bool = True) -> None:
        """``--backend --model --box-threshold --text-threshold --classes --text-encoder`` (and ``--device``
        unless ``device=False``; ``--detector-size`` on ``detect``)."""
        from ..dinoal.detector import BACKENDS

        _check(command)
        d = cls()
        parser.add_argument("--backend", choices=BACKENDS, default=d.backend,
                            help="groundingdino or transformers: boxes (SAM2 makes masks and tracks); sam3: "
                                 "SAM 3 alone detects, segments and tracks; onnx: your own YOLO export "
                                 "(--model FILE.onnx; --text optional) (default groundingdino)")
        parser.add_argument("--model", default=d.model, help=cls._HELP["model"][command])
        parser.add_argument("--box-threshold", type=float, default=d.box_threshold, dest="box_threshold",
                            help=f"lowest box score kept (default {float(d.box_threshold)}); sam3: SAM 3's "
                                 "score threshold (default: SAM 3's own, 0.5); onnx: the class score "
                                 "(default Ultralytics' 0.25)")
        parser.add_argument("--nms-iou", type=float, default=d.nms_iou, dest="nms_iou",
                            help=f"IoU above which a lower-scoring box of the same class is dropped (default "
                                 f"{d.nms_iou}); not used by sam3")
        parser.add_argument("--text-threshold", type=float, default=d.text_threshold, dest="text_threshold",
                            help=f"GroundingDINO token threshold of a box's phrase (default {d.text_threshold}); "
                                 "not used by sam3 or onnx")
        parser.add_argument("--classes", default=d.classes,
                            help="class table (.csv/.xlsx) the labels must come from (onnx: the model's classes "
                                 "in order when its metadata has no names)")
        parser.add_argument("--text-encoder", default=d.text_encoder, dest="text_encoder",
                            help=cls._HELP["text_encoder"][command])
        parser.add_argument("--bpe", default=d.bpe, metavar="FILE",
                            help="sam3 backend: the tokenizer vocabulary bpe_simple_vocab_16e6.txt.gz (default: "
                                 "the one in the models folder, dl-utils models download sam3)")
        if device:
            add_device_argument(parser)
        if command == "detect":
            parser.add_argument("--detector-size", type=int, default=d.detector_size, dest="detector_size",
                                help="groundingdino backend: shorter side images are resized to (default 800, "
                                     "upstream's; smaller is faster and coarser)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DetectorOptions:
        return cls(**_values(cls, args))

    def class_table(self) -> ClassTable | None:
        """``classes`` as a :class:`ClassTable` (a path is loaded; a table or ``None`` is returned)."""
        c = self.classes
        if isinstance(c, (str, bytes, os.PathLike)):
            from ..classes import ClassTable

            return ClassTable.load(c if isinstance(c, str) else Path(os.fsdecode(c)))
        return c

    def build(self, table: ClassTable | None = None) -> GroundedDetector | Sam3Detector | OnnxYoloDetector:
        """The detector these options describe (``table``: the loaded class table, if any).

        ``sam3``: the released SAM 3 image model (:meth:`build_sam3` ``"image"``) behind
        :class:`Sam3Detector`, whose detections carry their masks."""
        from ..dinoal.detector import load_detector

        if self.backend == "sam3":
            return self.sam3_detector(self.build_sam3("image"), table)
        if self.backend == "onnx":
            self.check_onnx()
            return load_detector("onnx", self.model, device=self.device, classes=table,
                                 box_threshold=self.onnx_score_threshold(), nms_iou=self.nms_iou,
                                 name=self.model_label)
        return load_detector(self.backend, self.model, text_encoder=self.text_encoder, device=self.device,
                             classes=table, box_threshold=self.box_threshold,
                             text_threshold=self.text_threshold, image_size=self.detector_size,
                             nms_iou=self.nms_iou)

    # ------------------------------------------------------------------ ONNX
    def onnx_score_threshold(self) -> float:
        """``box_threshold`` for the onnx backend: Ultralytics' 0.25 unless the user set it."""
        from ..dinoal.onnx_yolo import DEFAULT_SCORE

        return DEFAULT_SCORE if isinstance(self.box_threshold, EngineDefault) else float(self.box_threshold)

    def check_onnx(self) -> None:
        """Refuse, before anything is opened, what ``--backend onnx`` cannot use: no ``--model``, the
        GroundingDINO/SAM 3-only options (silently ignored they would look like they had an effect)."""
        if self.backend != "onnx":
            return
        if self.model is None:
            raise InputError("--backend onnx needs --model FILE.onnx (an Ultralytics YOLO detection export: "
                             "yolo export model=best.pt format=onnx)")
        for flag, v in (("--text-encoder", self.text_encoder), ("--detector-size", self.detector_size),
                        ("--bpe", self.bpe)):
            if v is not None:
                raise InputError(f"{flag} does not apply to --backend onnx (the export has its own input size and "
                                 "no text encoder); drop it")
        t = self.onnx_score_threshold()
        if not 0.0 <= t < 1.0:
            raise InputError(f"--box-threshold {t}: use a score in [0, 1)")
        if not 0.0 < float(self.nms_iou) <= 1.0:
            raise InputError(f"--nms-iou {self.nms_iou}: use an IoU in (0, 1]")

    def all_classes_caption(self, table: ClassTable | None = None) -> str:
        """The caption of every class of the ``--model`` export (onnx backend, ``--text`` left out):
        read from its metadata (or ``table``) on the CPU. ``batch`` gives it to every source, so the
        workers' ledgers and the stores record one caption."""
        from ..dinoal.onnx_yolo import OnnxYoloDetector

        self.check_onnx()
        assert self.model is not None  # check_onnx refused None
        detector = OnnxYoloDetector(os.fspath(self.model), classes=table, device="cpu", threads=1)
        return detector.resolve_caption(None).text

    # ------------------------------------------------------------------ SAM 3
    @property
    def model_label(self) -> str:
        """The model name the store records for the text step (``--model`` as given, else the backend's
        default: ``sam3`` for SAM 3, the backend name for the others, whose default weights it names)."""
        if self.model is not None:
            return os.fspath(self.model)
        return SAM3_DEFAULT_MODEL if self.backend == "sam3" else self.backend

    def sam3_score_threshold(self) -> float | None:
        """``box_threshold`` for SAM 3: None (SAM 3's own) unless the user set it."""
        return None if isinstance(self.box_threshold, EngineDefault) else float(self.box_threshold)

    def check_sam3(self) -> None:
        """Refuse the GroundingDINO-only options with ``--backend sam3`` (before any file is read):
        a silently ignored ``--text-encoder`` or ``--detector-size`` would look like it had an effect.
        With ``--backend onnx`` it runs :meth:`check_onnx` (every driver calls this one check)."""
        if self.backend == "onnx":
            self.check_onnx()
            return
        if self.backend != "sam3":
            if self.bpe is not None:
                raise InputError(f"--bpe is the sam3 backend's tokenizer vocabulary; the {self.backend} backend "
                                 "does not read it (drop --bpe or use --backend sam3)")
            return
        if self.text_encoder is not None:
            raise InputError("--text-encoder applies to the groundingdino backend; SAM 3 reads its tokenizer "
                             "vocabulary from --bpe")
        if self.detector_size is not None:
            raise InputError("--detector-size applies to the groundingdino backend; SAM 3 runs at its own "
                             "input size (1008)")
        t = self.sam3_score_threshold()
        if t is not None and not 0.0 <= t < 1.0:
            raise InputError(f"--box-threshold {t}: SAM 3's score threshold is a probability in [0, 1)")
        if float(self.nms_iou) != float(_detector_default("nms_iou")):
            raise InputError(f"--nms-iou {self.nms_iou} does not apply to --backend sam3 (SAM 3 keeps or drops its "
                             "own masks); drop it")

    def build_sam3(self, kind: str = "image") -> Any:
        """The released SAM 3 ``"image"`` (single images) or ``"video"`` (tracking) model on ``device``.

        The files are resolved first (:func:`dl_utils.sam3_weights.sam3_files`: a missing or foreign
        ``--model`` is a one-line :class:`~dl_utils.errors.ModelError` before torch or sam3 is
        imported), then the network is built at the official size and loaded strictly
        (:func:`dl_utils.sam3al.checkpoint.load_sam3_checkpoint`)."""
        from ..errors import ModelError
        from ..sam3_weights import sam3_files

        self.check_sam3()
        files = sam3_files(self.model, bpe=self.bpe)
        try:
            from ..dinoal.backends import pick_device
            from ..sam3al.build import OFFICIAL, build_image_model, build_video_model
            from ..sam3al.checkpoint import load_sam3_checkpoint
        except ImportError as e:
            raise ModelError(f"--backend sam3 needs torch and sam3: pip install 'dl-utils[sam3]' ({e})") from None
        dev = pick_device(self.device)
        if kind == "image":
            model = build_image_model(OFFICIAL, bpe_path=files.bpe, device=dev)
        elif kind == "video":
            model = build_video_model(OFFICIAL, bpe_path=files.bpe, device=dev)
        else:
            raise ValueError(f"kind {kind!r}: use 'image' or 'video'")
        load_sam3_checkpoint(model, files.checkpoint, kind="image" if kind == "image" else "video")
        return model

    def sam3_detector(self, model: Any, table: ClassTable | None = None) -> Sam3Detector:
        """:class:`Sam3Detector` over a built SAM 3 image model (the released one, or a test's tiny one)."""
        from ..dinoal.backends import pick_device
        from ..sam3al.image import Sam3ImageEngine

        self.check_sam3()
        t = self.sam3_score_threshold()
        kw: dict[str, Any] = {} if t is None else {"score_threshold": t}
        dev = next((p.device for p in model.parameters()), None) if self.device is None else pick_device(self.device)
        engine = Sam3ImageEngine(model, device=dev if dev is not None else "cpu", classes=table, **kw)
        return Sam3Detector(engine, name=self.model_label, classes=table)


class Sam3Detector:
    """SAM 3's image engine behind the :class:`~dl_utils.dinoal.detector.Detector` protocol.

    Why: the drivers' image path, the auto-annotation function and notebooks call ``detect(image,
    caption)`` on whatever detector the options built; with SAM 3 the returned detections carry
    full-image ``masks``, which :func:`~dl_utils.dinoal.pipeline.store_detections` writes as they
    are (no SAM2). ``engine`` is a :class:`~dl_utils.sam3al.image.Sam3ImageEngine`; ``name`` the model
    the provenance and store record; ``classes`` the class table (a caption-less call prompts its
    leaf classes, as :class:`~dl_utils.dinoal.detector.GroundedDetector` does).
    """

    #: the provenance ``engine`` of what it finds
    engine_name = "sam3"

    def __init__(self, engine: Any, *, name: str = SAM3_DEFAULT_MODEL, classes: ClassTable | None = None) -> None:
        self.engine = engine
        self.name = name
        self.classes = classes

    def resolve_caption(self, caption: Any = None) -> Any:
        """The caption to run: the one given, else the class table's leaf classes."""
        from ..dinoal.caption import parse_caption

        if caption is not None:
            return parse_caption(caption)
        if self.classes is not None:
            return parse_caption(self.classes.prompt(self.classes.leaves(), synonyms=True))
        raise InputError("no prompt: pass one (e.g. \"car. person\") or build the detector with classes=")

    resolve_prompt = resolve_caption

    def detect(self, image: Any, prompt: Any = None) -> Any:
        """SAM 3's labelled detections with masks on one RGB image."""
        return self.engine.segment(image, self.resolve_caption(prompt))

    def detect_batch(self, images: Sequence[Any], prompt: Any = None) -> list[Any]:
        """:meth:`detect` image by image (SAM 3's image engine computes one image's features at a time)."""
        caption = self.resolve_caption(prompt)
        return [self.engine.segment(im, caption) for im in images]


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``: one for the detector and SAM2 of a command."""
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")


# ----------------------------------------------------------------------------- source numbering
@dataclass(frozen=True)
class SourceOptions:
    """How the source's frames are numbered: ``--frame-numbers index|names`` and ``--first-frame N``.

    One place for the numbering every command opens its source with, because the numbers are the
    contract between the source, ``--start``/``--stop``, PROMPTS.json's ``frame`` fields, the store
    and CVAT: two commands numbering one shot differently would name different pictures "frame 1003".
    The store records the numbering (:class:`~dl_utils.annotations.MediaInfo`) and refuses a reopen
    with another one. Plain values only, so it pickles to batch workers.
    """

    frame_numbers: str = "index"
    first_frame: int = 0

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *, command: str = "annotate") -> None:
        """``--frame-numbers`` and ``--first-frame`` (the same for every command)."""
        _check(command)
        from ..annotations import FRAME_NUMBERINGS

        d = cls()
        parser.add_argument("--frame-numbers", choices=FRAME_NUMBERINGS, default=d.frame_numbers,
                            dest="frame_numbers",
                            help="how source frames are numbered: index (0, 1, 2 ... or from --first-frame; "
                                 "default) or names (image sequences: the number in each file name, e.g. "
                                 "shot.1001.png is frame 1001, gaps kept); frame ranges, PROMPTS.json frames "
                                 "and the store then use these numbers")
        parser.add_argument("--first-frame", type=int, default=d.first_frame, dest="first_frame", metavar="N",
                            help="number the first frame N instead of 0 (a video, or images numbered by "
                                 "position), e.g. 1001 for a shot; recorded in the store")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SourceOptions:
        return cls(**_values(cls, args))

    def check(self) -> None:
        """Refuse an unknown numbering, a first frame below 0, or both options at once (before any
        file is read)."""
        from ..video_utils.sources import check_frame_numbers

        check_frame_numbers(self.frame_numbers, self.first_frame, "--frame-numbers/--first-frame")

    def open_kwargs(self) -> dict[str, Any]:
        """The :func:`~dl_utils.video_utils.open_frames` keywords of this numbering."""
        return {"frame_numbers": self.frame_numbers, "first_frame": self.first_frame}

    def open(self, source: SourceSpec) -> FrameSource:
        """``source`` opened with this numbering."""
        from ..video_utils import open_frames

        return open_frames(source, **self.open_kwargs())


# ----------------------------------------------------------------------------- tracking
@dataclass
class TrackOptions:
    """Video text step: keyframe spacing, and how long and how many objects are tracked."""

    every: int | None = None
    max_gap: int = DEFAULT_MAX_GAP
    max_objects: int | None = None
    track: bool = True

    _HELP = {
        "every": {
            "detect": "detect on every N-th frame (default: 1 for images, 20 for tracked video; tracking also "
                      "re-detects early when SAM2's quality drops)",
            "annotate": "video: detect every N frames (default 20)",
        },
        "max_gap": {
            "detect": "tracked video: frames an object may stay unseen and keep its id (default 30)",
            "annotate": "frames an object may stay unseen and keep its id (default 30)",
        },
        "max_objects": {
            "detect": "tracked video: most objects tracked at once (bounds memory and time; default: no cap)",
            "annotate": "most objects tracked at once (default: no cap)",
        },
    }

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *, command: str = "detect") -> None:
        """``--every --max-gap --max-objects`` (and ``--no-track`` on ``detect``)."""
        _check(command)
        d = cls()
        parser.add_argument("--every", type=int, default=d.every, help=cls._HELP["every"][command])
        if command == "detect":
            parser.add_argument("--no-track", action="store_false", dest="track",
                                help="video: independent detections per keyframe instead of tracked objects "
                                     "with stable ids (with --segment: SAM2 propagation between keyframes)")
        parser.add_argument("--max-gap", type=int, default=d.max_gap, dest="max_gap",
                            help=cls._HELP["max_gap"][command])
        parser.add_argument("--max-objects", type=int, default=d.max_objects, dest="max_objects",
                            help=cls._HELP["max_objects"][command])

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrackOptions:
        return cls(**_values(cls, args))

    def check(self) -> None:
        """Refuse impossible counts before anything is opened or loaded (also for image sets, where
        the tracking options do nothing: a negative value is a mistake either way)."""
        check_counts(every=self.every, max_gap=self.max_gap, max_objects=self.max_objects)

    def tracker_config(self) -> TrackerConfig:
        """The matcher's :class:`~dl_utils.tracking.TrackerConfig` of these options (``max_gap``,
        ``max_objects``; the other knobs keep the engine's defaults, ``dataclasses.replace`` changes
        them). ``every`` is the keyframe policy's, not the matcher's: see :meth:`every_for`."""
        from ..tracking import TrackerConfig

        return TrackerConfig(max_gap=self.max_gap, max_objects=self.max_objects)

    def every_for(self, tracked: bool) -> int:
        """The keyframe spacing: ``every``, else 20 on tracked video and 1 otherwise."""
        every = int(self.every) if self.every is not None else (DEFAULT_EVERY_TRACKED if tracked else 1)
        if every < 1:
            raise InputError(f"every={every!r}: use 1 (every frame) or more")
        return every


def check_counts(*, every: Any = None, max_gap: Any = None, max_objects: Any = None) -> None:
    """Refuse impossible counts (``--every 0``, ``--max-gap -1``, ``--max-objects -3``) with the option named."""
    import numpy as np

    for name, v, least, hint in (("every", every, 1, "1 (every frame) or more"),
                                 ("max_gap", max_gap, 0, "0 or more frames"),
                                 ("max_objects", max_objects, 1, "1 or more, or leave it out (no cap)")):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
            raise InputError(f"--{name.replace('_', '-')} {v}: use {hint}")


# ----------------------------------------------------------------------------- SAM2
def parse_samurai(items: Sequence[str]) -> SamuraiConfig:
    """``--samurai KEY=VALUE`` items as a :class:`~dl_utils.sam2al.SamuraiConfig` (unknown keys and
    out-of-range values are its one-line errors; ``inf``/``-inf`` are numbers)."""
    known = [f.name for f in fields(SamuraiConfig)]
    kw: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key or not raw:
            raise InputError(f"--samurai {item!r}: write KEY=VALUE, e.g. kf_score_weight=0.15; keys: {', '.join(known)}")
        if key not in known:
            raise InputError(f"--samurai {key}: unknown SAMURAI parameter; keys: {', '.join(known)}")
        try:
            value: Any = int(raw) if key == "stable_frames_threshold" else float(raw)
        except ValueError:
            what = "an integer" if key == "stable_frames_threshold" else "a number"
            raise InputError(f"--samurai {key}={raw}: the value must be {what}") from None
        kw[key] = value
    return SamuraiConfig.from_dict(kw)


class _DefaultModel(str):
    """``segment``'s ``--model`` default: equal to the name, but tells :meth:`SamOptions.from_args` that
    the user did not type it (so a fine-tuned checkpoint's base model is taken, not contradicted)."""


@dataclass
class SamOptions:
    """SAM2: which model and checkpoint, input size, device, and the direction clicks propagate.

    ``model=None`` means :data:`dl_utils.models.DEFAULT_MODEL`. On ``segment`` the options are
    ``--model --checkpoint --image-size --device --direction`` (default forward); on ``detect`` and
    ``annotate``, where ``--model`` is the detector's, ``--sam-model --sam-checkpoint --image-size``
    (``annotate`` adds ``--direction``, default both; ``--device`` is shared with the detector).

    The tracker mode lives here too, the one place every SAM2 video session of the drivers, the
    batch workers and the widget is built from (:meth:`session_kwargs`): ``tracker`` (``--tracker``,
    ``"sam2"`` or ``"samurai"``), ``samurai`` (a :class:`~dl_utils.sam2al.SamuraiConfig`, or a dict
    of its fields; ``--samurai KEY=VALUE``, only with ``tracker="samurai"``) and ``force``
    (``--force``: continue a store whose propagated results another tracker made, dropping them).
    A bad name or parameter is refused when the options are built, before anything is opened.

    The GPU modes travel with them, to every SAM2 engine built from these options (video sessions,
    image segmenters, the batch workers' cached networks, the widget): ``precision``
    (``--precision``, one of :data:`PRECISIONS`; None: bf16 on CUDA, fp32 elsewhere, the autocast
    upstream's demos use) and ``compile`` (``--compile``: upstream's ``vos_optimized`` video
    predictor, or ``compile_image_encoder`` for the image model, all under ``torch.compile``).
    """

    model: str | None = None
    checkpoint: PathLike | None = None
    image_size: int | None = None
    device: str | None = None
    direction: str = "both"
    tracker: str = "sam2"
    #: a :class:`SamuraiConfig` once built (a dict of its fields is converted by ``__post_init__``)
    samurai: SamuraiConfig | dict[str, Any] | None = None
    force: bool = False
    #: ``--precision``: ``"fp32"``, ``"bf16"``, ``"fp16"``, or None (bf16 on CUDA, fp32 elsewhere)
    precision: str | None = None
    #: ``--compile``: build the SAM2 network compiled (``torch.compile``; the first pass compiles)
    compile: bool = False

    _HELP = {
        "sam_model": {
            "detect": "--segment: SAM2 model name (default sam2.1_hiera_tiny)",
            "annotate": "SAM2 model name (default tiny)",
        },
        "sam_checkpoint": {
            "detect": "--segment: SAM2 checkpoint file {'model': state_dict}; a fine-tuned one brings its base "
                      "model and image size",
            "annotate": "SAM2 checkpoint file {'model': state_dict}; a fine-tuned one (dl-utils finetune) brings "
                        "its base model and image size",
        },
        "image_size": {
            "detect": "--segment: SAM2 input size override (tests and benchmarks)",
            "annotate": "SAM2 input size override (tests and benchmarks)",
            "segment": "SAM2 input size override (tests and benchmarks)",
        },
        "direction": {
            "annotate": "propagation of clicked objects (default both)",
            "segment": "propagation direction from the prompted frames (default forward)",
        },
    }
    #: ``--direction``'s default per command (the library default, ``direction``, is annotate's)
    _DIRECTION = {"annotate": "both", "segment": "forward"}
    #: argparse attribute of each field, per command (the SAM2 options of detect/annotate are prefixed)
    #: (``--compile`` is ``sam_compile``: ``finetune`` parses its own ``--compile`` into ``compile``)
    _DEST = {"segment": {"compile": "sam_compile"},
             "detect": {"model": "sam_model", "checkpoint": "sam_checkpoint", "compile": "sam_compile"},
             "annotate": {"model": "sam_model", "checkpoint": "sam_checkpoint", "compile": "sam_compile"}}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *, command: str = "segment",
                      direction: bool = True) -> None:
        """The SAM2 options of ``command`` (see the class doc); ``direction=False`` leaves ``--direction`` out."""
        _check(command)
        if direction and command != "detect":
            parser.add_argument("--direction", choices=DIRECTIONS, default=cls._DIRECTION[command],
                                help=cls._HELP["direction"][command])
        if command == "segment":
            parser.add_argument("--model", default=_DefaultModel(DEFAULT_SAM2),
                                help=f"SAM2 model name (default {DEFAULT_SAM2}; with a fine-tuned --checkpoint: "
                                     "its base model)")
            parser.add_argument("--checkpoint", default=None,
                                help="official-format checkpoint {'model': state_dict}; a fine-tuned one "
                                     "(dl-utils finetune) brings its base model and image size")
        else:
            parser.add_argument("--sam-model", default=None, dest="sam_model", help=cls._HELP["sam_model"][command])
            parser.add_argument("--sam-checkpoint", default=None, dest="sam_checkpoint",
                                help=cls._HELP["sam_checkpoint"][command])
        parser.add_argument("--image-size", type=int, default=None, dest="image_size",
                            help=cls._HELP["image_size"][command])
        if command == "segment":  # detect and annotate share theirs with the detector
            add_device_argument(parser)
        cls.add_tracker_arguments(parser, command=command)

    @classmethod
    def add_tracker_arguments(cls, parser: argparse.ArgumentParser, *, command: str = "segment") -> None:
        """``--tracker --samurai --force``: the same on every command that propagates with SAM2."""
        _check(command)
        where = "--segment on video: " if command == "detect" else ""
        parser.add_argument("--tracker", choices=TRACKERS, default=cls.tracker,
                            help=f"{where}SAM2 propagation mode: sam2 (upstream's, default) or samurai (motion-aware "
                                 "mask choice and memory, SAM2's weights; docs/sam2al_samurai.md)")
        parser.add_argument("--samurai", action="append", default=None, dest="samurai", metavar="KEY=VALUE",
                            help="a SAMURAI parameter (repeatable; with --tracker samurai), e.g. "
                                 f"kf_score_weight=0.15; keys: {', '.join(f.name for f in fields(SamuraiConfig))}")
        parser.add_argument("--force", action="store_true", default=False,
                            help="continue a store whose propagated results the other tracker made: they are "
                                 "dropped and recomputed (prompts and keyframes stay)")

    @classmethod
    def add_gpu_arguments(cls, parser: argparse.ArgumentParser, *, command: str = "segment") -> None:
        """``--precision --compile``: the same on every command that builds a SAM2 engine (``segment``,
        ``annotate``, ``detect --segment``, ``batch``). A method of its own, not part of
        :meth:`add_arguments`, because ``finetune`` shares the SAM2 model options but has its own
        ``--compile`` (the training step's) and trains in its own precision (``--amp``)."""
        _check(command)
        where = "--segment: " if command == "detect" else ""
        parser.add_argument("--precision", choices=PRECISIONS, default=cls.precision,
                            help=f"{where}SAM2 compute precision (autocast, as upstream's demos use it): fp32, bf16 "
                                 "or fp16 (default bf16 on CUDA, fp32 on CPU); the store's provenance records it")
        parser.add_argument("--compile", action="store_true", default=cls.compile, dest="sam_compile",
                            help=f"{where}run SAM2 under torch.compile (upstream's vos_optimized video predictor; "
                                 "compile_image_encoder on images): the first pass compiles (minutes), so it pays "
                                 "off on long videos on a GPU")

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, command: str = "segment") -> SamOptions:
        _check(command)
        values = _values(cls, args, cls._DEST[command])
        if isinstance(values.get("model"), _DefaultModel):  # not typed by the user: a sidecar may choose
            values["model"] = None
        if values.get("samurai") is not None:  # --samurai KEY=VALUE ... (a list of strings)
            values["samurai"] = parse_samurai(values["samurai"])
        return cls(**values)

    def __post_init__(self) -> None:
        """A fine-tuned checkpoint names its base model and input size in its sidecar
        (:func:`dl_utils.models.resolve_finetuned`, the one reader): they fill what was not given, so
        every command, the widget and the auto-annotation function load ``tuned.pt`` alone, and a
        contradicting ``model`` is refused here, before anything is opened. The tracker mode and the
        SAMURAI parameters are checked here too (one-line errors before any model loads)."""
        from ..models import resolve_finetuned

        self.tracker = check_tracker(self.tracker)
        if isinstance(self.samurai, dict):
            self.samurai = SamuraiConfig.from_dict(self.samurai)
        if self.samurai is not None and not isinstance(self.samurai, SamuraiConfig):
            raise InputError(f"samurai={self.samurai!r}: give a SamuraiConfig, a dict of its fields, or "
                             "--samurai KEY=VALUE")
        if self.samurai is not None and self.tracker != "samurai":
            raise InputError("--samurai parameters apply with --tracker samurai; add --tracker samurai or drop them")
        self.force = bool(self.force)
        self.precision = check_precision(self.precision)
        if not isinstance(self.compile, bool):
            raise InputError(f"compile={self.compile!r}: use True (--compile) or False")
        self.model, self.image_size = resolve_finetuned(self.model, self.checkpoint, self.image_size)

    def check_backend(self, backend: str) -> None:
        """Refuse ``--tracker samurai`` with ``--backend sam3``: SAM 3 detects, segments and tracks
        with its own tracker (and its clicks refine SAM 3's objects), so no SAM2 propagation would
        run in SAMURAI mode and the flag would silently do nothing."""
        if self.tracker == "samurai" and backend == "sam3":
            raise InputError("--tracker samurai is a SAM2 propagation mode; --backend sam3 tracks with SAM 3's "
                             "own tracker: drop --tracker samurai or use --backend groundingdino/transformers")

    def session_kwargs(self) -> dict[str, Any]:
        """The mode keywords of :class:`~dl_utils.sam2al.VideoSession` (``tracker``, ``samurai``,
        ``force``, ``dtype``, ``compile``): every session the drivers, the batch workers and the
        widget open takes them from here. With a pre-built ``sam_model`` that is not compiled the
        session refuses ``compile=True``: build it with :meth:`build_video_model` instead."""
        return {"tracker": self.tracker, "samurai": self.samurai, "force": self.force,
                "dtype": self.precision, "compile": self.compile}

    def engine_kwargs(self) -> dict[str, Any]:
        """``dtype`` and ``compile`` of an :class:`~dl_utils.samal.ImageSegmenter` (the image path's
        SAM2 engine; the tracker keywords are the video session's only)."""
        return {"dtype": self.precision, "compile": self.compile}

    def build_video_model(self) -> Any:
        """The SAM2 video network these options describe (compiled with ``compile``), for a caller
        that keeps one network for many sessions (the batch workers): each session then gets it as
        ``sam_model`` with :meth:`session_kwargs`."""
        from ..sam2_loader import build_sam2_model

        return build_sam2_model(self.model_name, self.checkpoint, image_size=self.image_size, device=self.device,
                                video=True, compile=self.compile)

    def check_prebuilt(self, *, sam_video_model: Any = None, segmenter: Any = None) -> None:
        """Refuse ``compile`` with a network the caller built eagerly (``sam_video_model=``, a
        ``segmenter=``'s model), naming the keyword, before a store is touched: the run would
        otherwise not compile what the user asked compiled. A compiled one passes (the batch workers
        build theirs with :meth:`build_video_model`)."""
        if not self.compile or (sam_video_model is None and segmenter is None):
            return
        from ..sam2_loader import is_compiled

        if sam_video_model is not None and not is_compiled(sam_video_model):
            raise InputError("--compile (compile=True) with sam_video_model= built eagerly: build it compiled "
                             "(SamOptions(..., compile=True).build_video_model(), or build_sam2_model(..., video=True, "
                             "compile=True)) or leave compile out")
        if segmenter is not None and not is_compiled(getattr(segmenter, "model", None)):
            raise InputError("--compile (compile=True) with a segmenter= built eagerly: build it with "
                             "ImageSegmenter(..., compile=True) (or SamOptions(..., compile=True).image_segmenter()) "
                             "or leave compile out")

    def compile_note(self) -> str | None:
        """The line the commands print on stderr when a GPU mode is asked for off CUDA: ``--compile``
        works on a CPU (or MPS) but its first pass compiles for a minute or more (tiny) and the gain
        is a GPU's; ``--precision fp16`` works on a CPU but has no fast kernels there (about 8x
        slower than fp32, bench/bench_precision.py). None when neither applies. Resolves the device
        (imports torch), so call it when a model is about to be built anyway."""
        if not self.compile and self.precision != "fp16":
            return None
        from ..sam2_loader import pick_device

        dev = pick_device(self.device)
        if dev.type == "cuda":
            return None
        notes = []
        if self.compile:
            notes.append(f"--compile on {dev.type}: allowed but slow to start (the first pass compiles, about a "
                         "minute for tiny, more for larger models) and it pays off on long videos on a GPU")
        if self.precision == "fp16":
            notes.append(f"--precision fp16 on {dev.type}: allowed but slow (no fast fp16 kernels there, about 8x "
                         "fp32's time); use fp32 or bf16 off a GPU")
        return "; ".join(notes)

    def say_slow_modes(self, command: str) -> None:
        """Print :meth:`compile_note` (when there is one) on stderr as ``dl-utils COMMAND: ...``,
        once, before the models load: what every command that builds a SAM2 engine says."""
        note = self.compile_note()
        if note:
            print(f"dl-utils {command}: {note}", file=sys.stderr, flush=True)

    @property
    def model_name(self) -> str:
        """The SAM2 model to load (``model`` or the default)."""
        return self.model or DEFAULT_SAM2

    def check_direction(self) -> None:
        if self.direction not in DIRECTIONS:
            raise InputError(f"direction={self.direction!r}: use one of {', '.join(DIRECTIONS)}")

    def image_segmenter(self) -> ImageSegmenter:
        """A :class:`~dl_utils.samal.ImageSegmenter` (image folders, untracked ``--segment``)."""
        from ..samal import ImageSegmenter

        return ImageSegmenter(self.model_name, self.checkpoint, image_size=self.image_size, device=self.device,
                              **self.engine_kwargs())


def check_precision(precision: Any) -> str | None:
    """``precision`` as one of :data:`PRECISIONS` (None stays None: the device's default); anything
    else is a one-line :class:`InputError` naming the allowed values."""
    if precision is None:
        return None
    if not isinstance(precision, str) or precision.strip().lower() not in PRECISIONS:
        raise InputError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)} (default: bf16 on CUDA, "
                         "fp32 on CPU)")
    return precision.strip().lower()


def sam2_summary(engine: Any) -> dict[str, Any]:
    """What the commands' JSON summaries say about the SAM2 engine that ran: ``model``, the resolved
    ``precision`` (``--precision``'s name) and whether it ran ``compile``d. ``engine``: a
    :class:`~dl_utils.sam2al.VideoSession` or :class:`~dl_utils.samal.ImageSegmenter`."""
    from ..sam2_loader import is_compiled

    network = getattr(engine, "engine", None)  # a session's view of its network (same class, same weights)
    if network is None:
        network = getattr(engine, "model", None)  # an image segmenter's network
    return {"model": getattr(engine, "model_name", None), "precision": precision_label(getattr(engine, "dtype", None)),
            "compile": bool(network is not None and is_compiled(network))}


__all__ = [
    "COMMANDS",
    "EngineDefault",
    "PRECISIONS",
    "SAM3_DEFAULT_MODEL",
    "Sam3Detector",
    "DEFAULT_EVERY_TRACKED",
    "DEFAULT_MAX_GAP",
    "DEFAULT_SAM2",
    "DIRECTIONS",
    "DetectorOptions",
    "PathLike",
    "SamOptions",
    "SourceOptions",
    "SourceSpec",
    "TrackOptions",
    "add_device_argument",
    "check_counts",
    "check_precision",
    "parse_samurai",
    "precision_label",
    "sam2_summary",
]
