"""Your own detector: an Ultralytics YOLOv8/11 ONNX export run with onnxruntime, behind the Detector protocol.

Why: GroundingDINO finds anything a caption names, slowly; a model the team trained on data exported
from its own stores (``dl-utils export --format yolo-detect``) finds a closed set of classes, fast.
:class:`OnnxYoloDetector` returns the same :class:`~dl_utils.dinoal.detections.Detections` as the
GroundingDINO detector, so ``detect``, ``annotate``, ``batch``, the CVAT auto-annotation function and
the widget's Detect button (SAM2 masks, tracking, the store) take it unchanged.

What it reads (docs/dinoal_onnx.md):

* input ``1x3xHxW`` float32 (float16 exports too) RGB in 0..1, letterboxed as Ultralytics'
  ``LetterBox`` does (scale to fit, centred, grey 114 padding); ``H, W`` from the input shape, else the
  metadata ``imgsz``, else 640;
* output 0 in one of two layouts: **yolo** ``1x(4+nc)xA`` (``cx, cy, w, h`` in input pixels, then one
  score per class; NMS is ours) or **end-to-end** ``1xNx6`` (``x1, y1, x2, y2, score, class``; NMS
  in the graph, as YOLOv10 / ``nms=True`` exports write);
* class names from the metadata Ultralytics writes (``names`` = ``"{0: 'person', ...}"``, read with
  :func:`ast.literal_eval`) or from a class table (its classes in order are the model's classes).

Post-processing follows Ultralytics' ``non_max_suppression`` (single label per anchor: its best class,
kept when that score is above the threshold and the class is among the chosen ones; per-class NMS;
at most ``max_detections``), then ``scale_boxes`` (the letterbox undone, boxes clipped to the image).
NMS is numpy here: this backend needs neither torch nor torchvision.
"""

from __future__ import annotations

import ast
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..classes import ClassTable, _closest, _list_names
from ..errors import InputError, ModelError
from .backends import check_image
from .caption import Caption, UnknownPhraseWarning, parse_caption
from .detections import Detections

#: the output layouts this backend reads (for error messages and docs)
LAYOUTS = ("yolo (1, 4+classes, anchors): boxes cx,cy,w,h + class scores, NMS by dl_utils",
           "end-to-end (1, N, 6): x1,y1,x2,y2,score,class, NMS in the graph")
#: Ultralytics' defaults: prediction confidence, NMS IoU, detections per image, input size, padding
DEFAULT_SCORE = 0.25
DEFAULT_IOU = 0.7
DEFAULT_MAX_DETECTIONS = 300
DEFAULT_IMGSZ = 640
PAD_VALUE = 114
#: candidates kept for NMS (Ultralytics' max_nms): the highest scores
MAX_NMS = 30000
INSTALL = "pip install 'dl-utils[onnx]' (onnxruntime; onnxruntime-gpu for CUDA)"


class OnnxDetections(Detections):
    """:class:`Detections` whose provenance names this engine (``onnx``), not GroundingDINO.

    Why a subclass: ``Detections.engine`` is a class attribute, so every subset/copy (``dets[keep]``,
    ``dataclasses.replace``) keeps it, and the store's provenance (``Detections.provenance``, box
    tracking in ``dinoal.video``) names the engine that found the box."""

    engine = "onnx"


# ----------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Letterbox:
    """How one image was placed in the model input: scale ``gain``, padding ``left``/``top``
    (pixels), the input ``size`` (h, w), the source ``shape`` (h, w) and the scaled image's ``resized``
    (h, w); :meth:`to_source` undoes it."""

    gain: float
    left: int
    top: int
    size: tuple[int, int]
    shape: tuple[int, int]
    resized: tuple[int, int] = (0, 0)

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Input-pixel ``xyxy`` boxes → source pixels, clipped to the image (Ultralytics' scale_boxes:
        each axis divided by its own scale, the resized side over the source side, since the resize
        rounded each side to whole pixels)."""
        b = np.asarray(boxes, dtype=np.float32).copy()
        h, w = self.shape
        rh, rw = self.resized if self.resized != (0, 0) else (round(h * self.gain), round(w * self.gain))
        b[:, [0, 2]] -= self.left
        b[:, [1, 3]] -= self.top
        b[:, [0, 2]] /= rw / w
        b[:, [1, 3]] /= rh / h
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
        return b


def letterbox(image: np.ndarray, size: tuple[int, int], *, pad: int = PAD_VALUE) -> tuple[np.ndarray, Letterbox]:
    """An RGB ``HxWx3`` uint8 image fitted into ``size`` (h, w) as Ultralytics' ``LetterBox(auto=False)``
    does: scaled (up or down) to fit, ``cv2.INTER_LINEAR``, centred, ``pad`` grey around it."""
    import cv2

    h, w = image.shape[:2]
    new_h, new_w = int(size[0]), int(size[1])
    r = min(new_h / h, new_w / w)
    unpad_w, unpad_h = max(int(round(w * r)), 1), max(int(round(h * r)), 1)  # a thin image keeps 1 pixel
    dw, dh = (new_w - unpad_w) / 2, (new_h - unpad_h) / 2
    if (w, h) != (unpad_w, unpad_h):
        image = cv2.resize(image, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    out = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad, pad, pad))
    return out, Letterbox(gain=r, left=left, top=top, size=(new_h, new_w), shape=(h, w), resized=(unpad_h, unpad_w))


def to_input(images: Sequence[np.ndarray], dtype: Any = np.float32) -> np.ndarray:
    """Letterboxed RGB uint8 images → ``Nx3xHxW`` in 0..1 (``/ 255`` as Ultralytics divides)."""
    x = np.stack([np.asarray(im).transpose(2, 0, 1) for im in images]).astype(np.float32)
    x /= 255.0
    return x if dtype == np.float32 else x.astype(dtype)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float,
        max_keep: int | None = None) -> np.ndarray:
    """Greedy per-class NMS: indices kept, by descending score (stable for ties).

    A box is suppressed by a higher-scoring kept box of its class whose IoU with it is above
    ``iou`` (torchvision's rule, which Ultralytics uses). Classes are kept apart by offsetting each
    class's boxes beyond the others (the batched-NMS trick), in float64. ``max_keep``: stop after that
    many; greedy NMS decides boxes in score order, so this is exactly the full result's first
    ``max_keep`` (Ultralytics' ``[:max_det]``), without the work on the rest."""
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    b = np.asarray(boxes, dtype=np.float64)
    off = (float(np.abs(b).max()) + 1.0) * 2.0 * np.asarray(classes, dtype=np.float64)
    b = b + off[:, None]
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    limit = n if max_keep is None else int(max_keep)
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0.0)
        ih = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0.0)
        inter = iw * ih
        # two empty boxes have union 0 and IoU 0 (kept apart), not 0/0
        order = rest[inter / np.maximum(areas[i] + areas[rest] - inter, 1e-300) <= iou]
    return np.asarray(keep, dtype=np.int64)


# ----------------------------------------------------------------------------- metadata
def _literal(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def parse_names(value: str | None, path: str = "the model") -> list[str] | None:
    """Ultralytics' ``names`` metadata (``"{0: 'person', 1: 'bicycle'}"`` or a list) → names in class
    order; None when absent. A value that is not a dense ``{0..n-1: name}`` is a one-line ModelError."""
    if value is None:
        return None
    got = _literal(value)
    if isinstance(got, (list, tuple)) and all(isinstance(n, str) for n in got):
        return list(got)
    if isinstance(got, dict) and got and all(isinstance(k, int) for k in got) \
            and sorted(got) == list(range(len(got))) and all(isinstance(v, str) for v in got.values()):
        return [got[k] for k in range(len(got))]
    raise ModelError(f"{path}: metadata 'names' is {value[:80]!r}, not Ultralytics' {{0: 'name', 1: ...}}; "
                     "re-export the model, or pass --classes TABLE with its classes in the model's order")


def parse_imgsz(value: str | None) -> tuple[int, int] | None:
    """``imgsz`` metadata (``"[640, 640]"`` or ``"640"``) → (h, w); None when absent or unreadable."""
    got = _literal(value)
    if isinstance(got, int) and got > 0:
        return (got, got)
    if isinstance(got, (list, tuple)) and len(got) == 2 and all(isinstance(v, int) and v > 0 for v in got):
        return (int(got[0]), int(got[1]))
    return None


def _key(name: str) -> str:
    """A class name as a caption phrase (parse_caption's normalisation: lower case, single spaces)."""
    return " ".join(str(name).lower().split())


# ----------------------------------------------------------------------------- the session
def _providers(device: Any) -> tuple[list[Any], str]:
    """onnxruntime providers for ``device`` (None: CUDA when onnxruntime has it, else CPU)."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    available = ort.get_available_providers()
    dev = str(device if device is not None else os.environ.get("DL_UTILS_DEVICE") or "").strip().lower()
    if dev in ("", "auto"):
        dev = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if dev.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise InputError(f"--device {dev}: this onnxruntime has no CUDA provider (it has {', '.join(available)}); "
                             "pip install onnxruntime-gpu (instead of onnxruntime), or use --device cpu")
        _, _, idx = dev.partition(":")
        try:
            device_id = int(idx or 0)
        except ValueError:
            raise InputError(f"--device {dev}: use cuda, cuda:N or cpu") from None
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"], f"cuda:{device_id}"
    if dev in ("cpu", "mps"):  # mps: onnxruntime's CoreML provider is not used here; the CPU runs it
        return ["CPUExecutionProvider"], "cpu"
    raise InputError(f"--device {dev}: use cuda, cuda:N or cpu")


def _threads(threads: int | None) -> int:
    if threads is not None:
        if int(threads) < 1:
            raise InputError(f"threads={threads!r}: use 1 or more")
        return int(threads)
    try:
        n = len(os.sched_getaffinity(0))  # the cores this process may use (containers, taskset)
    except AttributeError:  # pragma: no cover  macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def open_session(path: str | os.PathLike[str], *, device: Any = None, threads: int | None = None) -> Any:
    """An onnxruntime session on ``path`` (full graph optimisation, ``threads`` intra-op threads:
    the cores this process may use; one inter-op thread, the graph being a single chain)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError(f"--backend onnx needs onnxruntime: {INSTALL}") from None
    p = Path(os.fspath(path))
    if not p.is_file():
        raise ModelError(f"ONNX model {p} does not exist; give the .onnx file an Ultralytics export wrote "
                         "(yolo export model=best.pt format=onnx)")
    providers, chosen = _providers(device)
    if chosen.startswith("cuda") and hasattr(ort, "preload_dlls"):
        # CUDA/cuDNN from the nvidia-* wheels torch installs (not on the loader's path in a pip setup)
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001  the system's libraries may still serve; the session says if not
            pass
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = _threads(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's to act on
    try:
        return ort.InferenceSession(str(p), sess_options=so, providers=providers)
    except Exception as e:  # noqa: BLE001  onnxruntime raises its own Fail/InvalidProtobuf/... types
        first = (str(e).splitlines() or [""])[0][:200]
        raise ModelError(f"{p} is not an ONNX model onnxruntime can load ({type(e).__name__}: {first}); give "
                         "the .onnx file of an Ultralytics export (yolo export model=best.pt format=onnx)") from None


@dataclass(frozen=True)
class _Selection:
    """What a caption asks of the model: per model class, allowed or not, its label, table id and phrase."""

    allowed: np.ndarray  # (nc,) bool
    labels: tuple[str, ...]  # per model class
    class_ids: np.ndarray  # (nc,) int64, the table's id or -1
    phrase_ids: np.ndarray  # (nc,) int64, the caption phrase that chose the class or -1
    phrases: tuple[str, ...]  # per model class: that phrase ("" when not chosen)


class OnnxYoloDetector:
    """An Ultralytics YOLO detection export behind :class:`~dl_utils.dinoal.detector.Detector`.

    ``model``: the ``.onnx`` file. ``classes``: a class table: without ``names`` metadata its classes,
    in order, are the model's; with it, the model's names are resolved through the table (names,
    synonyms) and boxes are labelled with the table's class (a model class the table lacks is
    dropped, with a warning). ``box_threshold``: lowest score kept (Ultralytics' ``conf``, 0.25);
    ``nms_iou``: per-class NMS IoU of the yolo layout (0.7); ``max_detections`` per image (300);
    ``device``: ``cuda[:N]`` or ``cpu`` (None: CUDA when onnxruntime has it); ``threads``: CPU
    intra-op threads (default: the cores this process may use); ``batch_size``: images per run when
    the export has a dynamic batch axis (a fixed one runs one image at a time); ``session``: an open
    onnxruntime session on ``model`` (tests, benchmarks).

    A caption chooses classes: ``None`` is every class; ``"car. person"`` the named ones (names
    through the table, else the model's names, case-insensitive); an unknown name is a one-line
    :class:`InputError` listing the model's classes.
    """

    engine_name = "onnx"

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        classes: ClassTable | None = None,
        box_threshold: float = DEFAULT_SCORE,
        nms_iou: float = DEFAULT_IOU,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        device: Any = None,
        threads: int | None = None,
        batch_size: int = 1,
        name: str | None = None,
        session: Any = None,
    ) -> None:
        if classes is not None and not isinstance(classes, ClassTable):
            raise InputError(f"classes must be a ClassTable (dl_utils.classes.ClassTable.load(path)), got "
                             f"{type(classes).__name__}")
        try:
            self.box_threshold = float(box_threshold)
            self.nms_iou = float(nms_iou)
        except (TypeError, ValueError):
            raise InputError(f"box_threshold={box_threshold!r}, nms_iou={nms_iou!r}: use numbers") from None
        if not 0.0 <= self.box_threshold < 1.0:
            raise InputError(f"--box-threshold {box_threshold}: use a score in [0, 1)")
        if not 0.0 < self.nms_iou <= 1.0:
            raise InputError(f"--nms-iou {nms_iou}: use an IoU in (0, 1]")
        if int(max_detections) < 1 or int(batch_size) < 1:
            raise InputError(f"max_detections={max_detections!r}, batch_size={batch_size!r}: use 1 or more")
        self.max_detections, self.batch_size = int(max_detections), int(batch_size)
        self.path = Path(os.fspath(model))
        self.name = name or os.fspath(model)
        self.classes = classes
        if session is None:
            session = open_session(self.path, device=device, threads=threads)
        self.session = session
        self.providers = list(session.get_providers())
        self.device = "cuda" if "CUDAExecutionProvider" in self.providers else "cpu"
        meta = session.get_modelmeta().custom_metadata_map or {}
        self.metadata = dict(meta)
        task = meta.get("task")
        if task is not None and task != "detect":
            raise ModelError(f"{self.path} is an Ultralytics '{task}' export; this backend reads detection "
                             "models (task 'detect'): export one trained with yolo detect")
        self._read_io(meta)
        self._cache: dict[tuple[str, ...], _Selection] = {}
        self._warned = False

    # ------------------------------------------------------------------ model description
    def _read_io(self, meta: dict[str, str]) -> None:
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        shape = list(inp.shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise ModelError(f"{self.path}: input {inp.name!r} has shape {shape}; a YOLO export takes "
                             "(1, 3, H, W) RGB images")
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        if inp.type not in ("tensor(float)", "tensor(float16)"):
            raise ModelError(f"{self.path}: input {inp.name!r} is {inp.type}; a YOLO export takes float images")
        static = tuple(shape[2:]) if all(isinstance(v, int) and v > 0 for v in shape[2:]) else None
        self.input_size: tuple[int, int] = static or parse_imgsz(meta.get("imgsz")) or (DEFAULT_IMGSZ, DEFAULT_IMGSZ)
        self.fixed_batch = isinstance(shape[0], int)
        self.output_shape = list(out.shape)
        names = parse_names(meta.get("names"), str(self.path))
        table = self.classes
        if names is None:
            if table is None:
                raise ModelError(f"{self.path} has no class names (no Ultralytics 'names' metadata): pass "
                                 "--classes TABLE with the model's classes in its order")
            names = list(table.names)
        self.names: list[str] = names
        self.layout = self._layout(self.output_shape, strict=False)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def _layout(self, shape: Sequence[Any], *, strict: bool = True) -> str | None:
        """``"yolo"`` or ``"end2end"`` for an output shape (None when dynamic axes leave it open
        and ``strict`` is False: the first run decides); a shape neither can be is a ModelError."""
        nc = self.num_classes
        dims = list(shape)
        if len(dims) == 3:
            if dims[2] == 6 and str(self.metadata.get("end2end", "")).lower() == "true":
                return "end2end"  # Ultralytics says so (a 2-class model's (1, 6, 6) would read either way)
            if dims[1] == 4 + nc:
                return "yolo"
            if dims[2] == 6 and dims[1] != 4 + nc:
                return "end2end"
            if not strict and not (isinstance(dims[1], int) and isinstance(dims[2], int)):
                return None
        why = (f"{len(self.names)} classes from {'its metadata' if 'names' in self.metadata else 'the class table'}")
        raise ModelError(f"{self.path}: output {self.output_name!r} has shape {dims}, which fits no layout this "
                         f"backend reads for {why}: {'; '.join(LAYOUTS)}")

    # ------------------------------------------------------------------ classes
    def _label_of(self, k: int) -> tuple[str | None, int]:
        """The label and table id of model class ``k`` (None: the table has no such class)."""
        if self.classes is None:
            return self.names[k], -1
        info = self.classes.resolve(self.names[k])
        return (None, -1) if info is None else (info.name, int(info.id))

    def class_labels(self) -> list[str]:
        """The labels the model's classes come out as, in class order (classes the table lacks left out)."""
        return [lb for lb, _ in map(self._label_of, range(self.num_classes)) if lb is not None]

    def resolve_caption(self, caption: str | Sequence[str] | Caption | None = None) -> Caption:
        """The caption to run: the one given, else every class the model has (as labels)."""
        if caption is not None:
            c = parse_caption(caption)
            self._select(c)  # unknown names fail now, before any image
            return c
        labels = self.class_labels()
        if not labels:
            raise InputError(f"none of the classes of {self.path} ({_list_names(self.names)}) is in the class "
                             f"table {self.classes.source if self.classes else ''}; use the table the model was "
                             "trained with")
        return parse_caption(list(dict.fromkeys(labels)))

    resolve_prompt = resolve_caption

    def labels_for(self, caption: str | Sequence[str] | Caption | None = None) -> list[str]:
        """The labels detections of ``caption`` can carry (what a CVAT function declares)."""
        sel = self._select(self.resolve_caption(caption))
        return list(dict.fromkeys(sel.labels[k] for k in np.flatnonzero(sel.allowed)))

    def _select(self, caption: Caption) -> _Selection:
        hit = self._cache.get(caption.phrases)
        if hit is not None:
            return hit
        nc = self.num_classes
        per_class = [self._label_of(k) for k in range(nc)]
        allowed = np.zeros(nc, dtype=bool)
        pid = np.full(nc, -1, dtype=np.int64)
        phrases = [""] * nc
        unknown: list[str] = []
        for j, p in enumerate(caption.phrases):
            if self.classes is not None:
                info = self.classes.resolve(p)
                ks = [k for k in range(nc) if info is not None and per_class[k][0] == info.name]
            else:
                ks = [k for k in range(nc) if _key(self.names[k]) == p]
            if not ks:
                unknown.append(p)
            for k in ks:
                if not allowed[k]:
                    allowed[k], pid[k], phrases[k] = True, j, p
        if unknown:
            labels = self.class_labels()
            close = _closest(unknown[0], labels)
            raise InputError(f"--text {', '.join(map(repr, unknown))}: not a class of {self.path}"
                             + (f" (did you mean {close!r}?)" if close else "")
                             + f"; its classes: {_list_names(labels, limit=30)}")
        lost = [self.names[k] for k in range(nc) if per_class[k][0] is None]
        if lost and self.classes is not None and not self._warned:
            self._warned = True  # once per detector: every caption would say the same
            warnings.warn(f"classes {_list_names(lost)} of {self.path} are not in the class table "
                          f"{self.classes.source}: their boxes are dropped", UnknownPhraseWarning, stacklevel=3)
        sel = _Selection(allowed=allowed, labels=tuple(lb or "" for lb, _ in per_class),
                         class_ids=np.array([i for _, i in per_class], dtype=np.int64), phrase_ids=pid,
                         phrases=tuple(phrases))
        self._cache[caption.phrases] = sel
        return sel

    # ------------------------------------------------------------------ inference
    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """One RGB image → the letterboxed uint8 ``HxWx3`` input and its :class:`Letterbox`."""
        return letterbox(image, self.input_size)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """``session.run`` on an ``Nx3xHxW`` batch: output 0 as float32."""
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def detect(self, image: np.ndarray, prompt: str | Sequence[str] | Caption | None = None) -> Detections:
        """Labelled boxes on one RGB ``HxWx3`` uint8 image."""
        return self.detect_batch([image], prompt)[0]

    def detect_batch(self, images: Sequence[np.ndarray], prompt: str | Sequence[str] | Caption | None = None
                     ) -> list[Detections]:
        """:meth:`detect` on several images (``batch_size`` per run when the batch axis is dynamic)."""
        caption = self.resolve_caption(prompt) if prompt is None else parse_caption(prompt)
        sel = self._select(caption)
        imgs = [check_image(im, f"image {i}") for i, im in enumerate(images)]
        step = 1 if self.fixed_batch else self.batch_size
        out: list[Detections] = []
        for s in range(0, len(imgs), step):
            prepped = [self.preprocess(im) for im in imgs[s:s + step]]
            raw = self.run(to_input([p for p, _ in prepped], self.input_dtype))
            if raw.ndim != 3 or raw.shape[0] != len(prepped):
                self._layout(raw.shape[1:] if raw.ndim == 3 else raw.shape)  # a shape no layout fits: its error
                raise ModelError(f"{self.path}: output {self.output_name!r} has shape {list(raw.shape)} for a batch of "
                                 f"{len(prepped)} images; export with one output row per image (batch axis first)")
            for b, (_, lb) in enumerate(prepped):
                out.append(self.postprocess(raw[b:b + 1], lb, caption, sel))
        return out

    def postprocess(self, raw: np.ndarray, lb: Letterbox, caption: Caption, sel: _Selection) -> Detections:
        """One image's output (``1x...``) → :class:`Detections` in source pixels (see the module doc)."""
        layout = self._layout(raw.shape)  # raises, naming the shape seen, for one no layout fits
        if layout == "yolo":
            pred = raw[0]  # (4 + nc, A)
            scores = pred[4:]
            cls = scores.argmax(axis=0)
            conf = scores[cls, np.arange(scores.shape[1])]
            keep = np.flatnonzero((conf > self.box_threshold) & sel.allowed[cls])
            if keep.size > MAX_NMS:
                keep = keep[np.argsort(-conf[keep], kind="stable")[:MAX_NMS]]
            cx, cy, w, h = pred[0, keep], pred[1, keep], pred[2, keep], pred[3, keep]
            boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
            conf, cls = conf[keep], cls[keep]
            k = nms(boxes, conf, cls, self.nms_iou, max_keep=self.max_detections)
            boxes, conf, cls = boxes[k], conf[k], cls[k]
        else:
            pred = raw[0]  # (N, 6)
            cls = np.rint(pred[:, 5]).astype(np.int64)
            ok = (cls >= 0) & (cls < self.num_classes)
            cls_ok = np.where(ok, cls, 0)
            keep = np.flatnonzero((pred[:, 4] > self.box_threshold) & ok & sel.allowed[cls_ok])
            keep = keep[np.argsort(-pred[keep, 4], kind="stable")][: self.max_detections]
            boxes, conf, cls = pred[keep, :4], pred[keep, 4], cls[keep]
        boxes = lb.to_source(boxes.reshape(-1, 4))
        return OnnxDetections(
            boxes=boxes, scores=conf.astype(np.float32),
            phrases=[sel.phrases[c] for c in cls], labels=[sel.labels[c] for c in cls],
            class_ids=sel.class_ids[cls], phrase_ids=sel.phrase_ids[cls],
            caption=caption.text, image_size=lb.shape,
        )

    def __repr__(self) -> str:
        return (f"OnnxYoloDetector({self.name!r}, {self.num_classes} classes, layout={self.layout}, "
                f"input={self.input_size}, providers={self.providers})")


__all__ = [
    "DEFAULT_IOU",
    "DEFAULT_MAX_DETECTIONS",
    "DEFAULT_SCORE",
    "LAYOUTS",
    "Letterbox",
    "OnnxDetections",
    "OnnxYoloDetector",
    "letterbox",
    "nms",
    "open_session",
    "parse_imgsz",
    "parse_names",
    "to_input",
]
