"""``Sam3VideoSession``: SAM 3 text-prompted video segmentation into the annotation store.

A caption (``"car. person"``) becomes one SAM 3 concept prompt per phrase; SAM 3 detects every
instance of the concept on every frame, tracks it with a stable id and picks up objects that enter
later by itself. This module drives sam3's own ``propagate_in_video`` (no copy of its tracking
logic) and changes only what is around it:

- **No whole video in memory.** sam3's ``init_state`` decodes the entire video into one tensor; the
  state here is built with :class:`~dl_utils.sam3al.frames.Sam3LazyFrames` (each frame decoded when
  the model asks, bit-exact to sam3's loader) and a lazy per-frame query list, so the inputs cost
  the same for 100 or 100,000 frames.
- **One state per phrase, in lockstep.** sam3 holds one text prompt per state (``add_prompt``
  resets the state). Each phrase gets its own state over the *same* decoded frames; the phrases'
  generators are advanced together, one frame each, so a frame is decoded once and written once
  with every phrase's instances (one store transaction). sam3 numbers objects from 0 in each state;
  the store object of ``(phrase, sam3 id)`` is created on first sight, so ids are unique across
  phrases and stable through the video.
- **Memory flat in video length** (``trim_memory``): what sam3's state keeps per frame and never
  reads again once the frame is written is dropped after each frame (see :meth:`_trim`, and
  docs/sam3al_video.md for what still grows).
- **Cancel and resume.** :meth:`cancel` stops after the current frame; what was written stays. A
  later :meth:`propagate` on the same session continues sam3's suspended generators (exact, nothing
  recomputed). A new session on a store with progress cannot restart sam3's tracker mid-video
  faithfully (its memory, hot-start bookkeeping and ids live only in the state), so
  ``resume="replay"`` recomputes from the first frame and writes only the frames not yet written
  (identical results), while ``resume="redetect"`` starts fresh at the first missing frame (fast,
  but objects get new ids there).
- **Exemplars on frame k.** Boxes (:class:`Exemplar`) go with the text to sam3's ``add_prompt`` on
  their frame; on a frame after the first the run is sam3's demo's "both": forward from k, then
  backward from k (two chained generators per phrase, still in lockstep), resumed by replay only,
  trimmed by the mirrored rule (:meth:`Sam3VideoSession._trim`), refined like any run.
- **Refine and undo.** :meth:`Sam3VideoSession.refine` drives sam3's click refinement of one
  object through the whole video; :meth:`Sam3VideoSession.undo_refine` puts the store back as it
  was before the last one and rebuilds sam3's state without its clicks when next needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..annotations import Clicks, Instance, Instances, Provenance, Source
from ..cv_utils.rle import decode_cvat_rle_array, encode_cvat_rle_array
from ..errors import InputError
from ..store import AnnotationStore
from .frames import PREPROCESS, Sam3LazyFrames
from .prompts import Exemplar  # one type for images and video (kept importable from here)

ENGINE = "sam3"
RESUME = ("replay", "redetect")
# store meta: {caption text: {"done_through": i, "start": s}}; a run prompted on frame k > 0 (exemplars
# there) adds {"forward_done_through": i, "backward_done_through": j, "exemplars": [...]} (see _set_progress)
PROGRESS_KEY = "sam3_video.progress"


@dataclass(frozen=True)
class Sam3VideoOptions:
    """Settings of one session. ``None`` thresholds keep the model's own values (the released
    model: detection 0.5, new object 0.7, NMS IoU 0.1, association IoU 0.1); a value set here is
    applied to the shared model only while this session runs it and restored afterwards."""

    score_threshold_detection: float | None = None  # detections kept above this probability
    new_det_thresh: float | None = None  # an unmatched detection becomes a new object above this
    det_nms_thresh: float | None = None  # IoU of the detector's mask NMS (0 turns NMS off)
    assoc_iou_thresh: float | None = None  # detection <-> track matching IoU
    preprocess: str = "image_folder"  # sam3's loader flavour to reproduce (see sam3al.frames)
    trim_memory: bool = True
    frame_cache: int = 16  # resized frames kept decoded (phrases share them)
    resume: str = "replay"
    frames_device: str | None = None  # where decoded frames live; None: the model's device
    # one vision-trunk pass per frame for all phrases (exact: dl_utils.sam3al.backbone); False runs
    # the trunk once per phrase, as sam3's one-prompt states do on their own
    share_backbone: bool = True

    def __post_init__(self) -> None:
        for name in ("score_threshold_detection", "new_det_thresh", "det_nms_thresh", "assoc_iou_thresh"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0):
                raise InputError(f"{name}={v!r}: give a number between 0 and 1 (or None for the model's)")
        if self.preprocess not in PREPROCESS:
            raise InputError(f"preprocess={self.preprocess!r}: use one of {', '.join(PREPROCESS)}")
        if self.resume not in RESUME:
            raise InputError(f"resume={self.resume!r}: use one of {', '.join(RESUME)}")
        if int(self.frame_cache) < 2:
            raise InputError(f"frame_cache={self.frame_cache!r}: keep at least 2 frames (sam3 reads one ahead)")

    def model_overrides(self) -> dict[str, float]:
        return {k: float(v) for k in ("score_threshold_detection", "new_det_thresh", "det_nms_thresh",
                                       "assoc_iou_thresh") if (v := getattr(self, k)) is not None}


class _FindInputs(Sequence[Any]):
    """sam3's per-frame ``FindStage`` list, made on demand.

    ``_construct_initial_input_batch`` builds one ``FindStage`` per frame up front (a few KB each:
    300 MB for a 100,000-frame video). They differ only in ``img_ids``; ``text_ids`` is written for
    every frame at once by ``add_prompt``/``reset_state`` (``find_inputs[t].text_ids[...] = id``),
    so all stages share one ``text_ids`` tensor and a write through any of them is seen by all.
    """

    def __init__(self, n: int, device: Any):
        import torch

        self.n = n
        self.device = device
        self.text_ids = torch.zeros(1, dtype=torch.long, device=device)
        self._last: tuple[int, Any] | None = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, t: Any) -> Any:
        import torch
        from sam3.model.data_misc import FindStage, convert_my_tensors
        from sam3.model.utils.misc import copy_data_to_device

        t = int(t)
        if not 0 <= t < self.n:
            raise IndexError(t)
        if self._last is not None and self._last[0] == t:
            return self._last[1]
        stage = convert_my_tensors(FindStage(
            img_ids=[t], text_ids=[0],
            input_boxes=[torch.zeros(258)],  # sam3's "historical default" embedding sizes
            input_boxes_mask=[torch.empty(0, dtype=torch.bool)],
            input_boxes_label=[torch.empty(0, dtype=torch.long)],
            input_points=[torch.empty(0, 257)],
            input_points_mask=[torch.empty(0)],
            object_ids=[],
        ))
        stage = copy_data_to_device(stage, self.device, non_blocking=True)
        stage.text_ids = self.text_ids
        self._last = (t, stage)
        return stage


@dataclass
class _Phrase:
    index: int
    phrase: str
    label: str
    color: str | None
    state: dict[str, Any] = field(default_factory=dict)
    gen: Iterator[tuple[int, Any]] | None = None
    objects: dict[int, int] = field(default_factory=dict)  # sam3 id -> store object id
    # what trimming takes out of sam3's state and a refinement gives back (see Sam3VideoSession.refine)
    scores: dict[int, dict[int, float]] = field(default_factory=dict)  # frame -> tracker score per sam3 id
    suppressed: dict[int, set[int]] = field(default_factory=dict)  # frame -> suppressed sam3 ids
    residue: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # frame -> id -> lost pixels


@dataclass(frozen=True)
class _SavedRow:
    """A store row as it was before a refinement replaced or deleted it (``instance`` None: the
    refinement added the row where there was none). The mask is kept as the store keeps it
    (zlib-compressed CVAT runs), so an undo log costs what the rows cost on disk, not a decoded mask."""

    instance: Instance | None  # without its mask
    runs: bytes = b""
    rle_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    size: tuple[int, int] = (0, 0)  # (height, width) of the mask; (0, 0): the row had no mask

    @classmethod
    def of(cls, inst: Instance | None) -> _SavedRow:
        if inst is None:
            return cls(None)
        if inst.mask is None:
            return cls(inst)
        runs, box = encode_cvat_rle_array(inst.mask)
        h, w = inst.mask.shape
        return cls(dataclasses.replace(inst, mask=None), zlib.compress(runs.astype("<u4").tobytes(), 1),
                   box, (int(h), int(w)))

    def restored(self) -> Instance | None:
        """The row as it was (a fresh Instance with its mask decoded)."""
        if self.instance is None:
            return None
        if self.size == (0, 0):
            return dataclasses.replace(self.instance)
        runs = np.frombuffer(zlib.decompress(self.runs), dtype="<u4")
        mask = decode_cvat_rle_array(runs, self.rle_box, *self.size)
        return dataclasses.replace(self.instance, mask=mask)


@dataclass
class _RefinePass:
    """One ``propagate_in_video`` call of a refinement, as run: a rebuild replays it exactly (a
    cancelled refinement's pass stopped after ``frames`` yields; ``None``: it ran to its end)."""

    reverse: bool
    limit: int | None
    frames: int | None = None


@dataclass
class _Refinement:
    """What :meth:`Sam3VideoSession.undo_refine` needs to revert one refinement and what a rebuild of
    sam3's state needs to re-apply it without writing."""

    run_id: int
    object_id: int
    phrase_index: int
    sam_id: int
    frame: int  # source frame number
    f_idx: int
    points: list[list[float]]
    labels: list[int]
    clicks: Clicks
    prev_clicks: Clicks | None  # refinements[object][frame] before this refinement
    passes: list[_RefinePass] = field(default_factory=list)
    prompted: bool = False  # sam3's add_prompt ran (the clicks are in sam3's state)
    clicks_recorded: bool = False  # the clicks went into Sam3VideoSession.refinements
    failed: bool = False
    rows: dict[int, dict[int, _SavedRow]] = field(default_factory=dict)  # frame idx -> object -> row before

    def save(self, t: int, object_id: int, before: Instance | None) -> None:
        """Keep the row of ``object_id`` on frame index ``t`` as it was before this refinement
        (the first time only: the clicked frame is written twice, by add_prompt and the forward pass)."""
        rows = self.rows.setdefault(int(t), {})
        if object_id not in rows:
            rows[object_id] = _SavedRow.of(before)


class _StoreBackedOutputs(dict):
    """sam3's ``cached_frame_outputs`` read back from the store, one frame at a time.

    sam3's partial propagation and point refinement read ``cached_frame_outputs[t]`` (every object's
    video-size mask on frame ``t``, before sam3's non-overlap rule) for each frame they yield. The
    session trimmed those after writing; they are exactly the written masks plus, per object, the
    pixels the non-overlap rule gave to another object (kept as flat indices: ``residue``, small), so
    a frame is rebuilt when sam3 asks for it and dropped once it is written again (memory stays flat).
    Frames sam3 writes (``_cache_frame_outputs``) are plain dict entries and win over the store.
    """

    def __init__(self, frames: range, load: Callable[[int], dict[int, Any]]):
        super().__init__()
        self._frames = frames
        self._load = load

    def __contains__(self, t: object) -> bool:
        return dict.__contains__(self, t) or t in self._frames

    def __getitem__(self, t: Any) -> Any:
        if not dict.__contains__(self, t) and t in self._frames:
            dict.__setitem__(self, t, self._load(int(t)))
        return dict.__getitem__(self, t)

    def get(self, t: Any, default: Any = None) -> Any:
        return self[t] if t in self else default


class Sam3VideoSession:
    """SAM 3 over one video (or image sequence) for one caption, into one annotation store.

    ``model``: a built ``Sam3VideoInferenceWithInstanceInteractivity``
    (:func:`dl_utils.sam3al.build.build_video_model`), shared; its thresholds are changed only while
    this session runs it (``options``). ``source``: a :class:`~dl_utils.video_utils.FrameSource`
    (or anything ``open_frames`` takes). ``store``: an :class:`AnnotationStore` or a path. ``caption``:
    ``"car. person"`` or a :class:`~dl_utils.dinoal.caption.Caption`; each phrase is mapped to a
    label through ``classes`` as GroundingDINO's are (``on_unknown``, ``superclass``); a phrase
    that maps to no label is not run. ``exemplars``: boxes on the first frame (see
    :class:`Exemplar`), all on one frame: the run's first frame (``frame=None``) or any frame ``k``;
    on ``k > 0`` the session does what sam3's own demo does with a prompt on a middle frame
    (``add_prompt`` on ``k``, ``propagate_in_video`` forward from ``k``, then backward from ``k``).
    """

    def __init__(self, model: Any, source: Any, store: Any, caption: Any, *, classes: Any = None,
                 on_unknown: str = "warn", superclass: bool = False,
                 options: Sam3VideoOptions | None = None, exemplars: Sequence[Exemplar] = (),
                 model_name: str | None = None):
        from ..dinoal.caption import LabelMapper, parse_caption
        from ..video_utils import FrameSource, open_frames

        self.caption = parse_caption(caption)  # InputError on a missing/empty caption, before any work
        self.options = options if options is not None else Sam3VideoOptions()
        if not isinstance(self.options, Sam3VideoOptions):
            raise InputError(f"options must be a Sam3VideoOptions, got {type(self.options).__name__}")
        if model is None or not hasattr(model, "propagate_in_video") or not hasattr(model, "tracker"):
            raise InputError(
                "model must be a built SAM 3 video model (dl_utils.sam3al.build.build_video_model), "
                f"got {type(model).__name__}"
            )
        self.model = model
        self.model_name = model_name or getattr(model, "dl_utils_name", None) or type(model).__name__
        self.source = source if isinstance(source, FrameSource) else open_frames(source)
        media = self.source.media_info()
        self.store = AnnotationStore.for_media(store, media)
        self.media = media
        self._numbers = list(media.frames)
        if media.frame_sizes is not None and len(set(media.frame_sizes)) > 1:
            raise InputError(
                f"{self.source.name}: images of different sizes; SAM 3's video model needs one frame "
                "size (resize the images, or segment them one by one)"
            )
        mapped = LabelMapper(classes, on_unknown=on_unknown, superclass=superclass).map(self.caption)
        self.phrases = [_Phrase(k, pl.phrase, pl.label, pl.color)
                        for k, pl in enumerate(mapped) if pl.label is not None]
        if not self.phrases:
            raise InputError(
                f"no phrase of the prompt {self.caption.text!r} maps to a class; fix the prompt or the "
                "class table (or on_unknown='keep')"
            )
        self.exemplars = self._check_exemplars(exemplars)
        dev = self.options.frames_device or model.device
        self.frames = Sam3LazyFrames(self.source, int(model.image_size), dev,
                                     preprocess=self.options.preprocess,
                                     mean=tuple(model.image_mean), std=tuple(model.image_std),
                                     cache_frames=int(self.options.frame_cache))
        self._cancel = threading.Event()
        self._started = False
        self._start_idx = 0
        self._next_idx = 0  # the next frame index the generators yield
        self.peak_memory: dict[str, int] = {}
        self.refinements: dict[int, dict[int, Clicks]] = {}  # store object -> frame -> clicks (refine)
        self._undo: list[_Refinement] = []  # refinements not undone, oldest first (undo_refine)
        self._recording: _Refinement | None = None  # the refinement being run (_write_refined logs into it)
        self._stale = False  # sam3's state holds clicks of an undone refinement: rebuild before refining
        self._restore_objects()

    # ------------------------------------------------------------------ setup
    def _check_exemplars(self, exemplars: Sequence[Exemplar]) -> list[Exemplar]:
        out = []
        names = [p.phrase for p in self.phrases]
        for e in exemplars:
            if not isinstance(e, Exemplar):
                raise InputError(f"exemplars must be Exemplar(box=..., positive=..., phrase=..., frame=...), got {e!r}")
            ph = e.phrase if e.phrase is not None else (names[0] if len(names) == 1 else None)
            if ph is None or ph not in names:
                raise InputError(
                    f"exemplar {e.box}: name its phrase (one of {names}) with Exemplar(..., phrase=...)"
                )
            x1, y1, x2, y2 = e.checked_box(self.media.width, self.media.height, "frame")
            if e.frame is not None and e.frame not in self._numbers:
                raise InputError(
                    f"exemplar {e.box} on frame {e.frame}: {self.source.name} has no such frame "
                    f"(frames {self._numbers[0]}..{self._numbers[-1]}); give a source frame number"
                )
            out.append(Exemplar((x1, y1, x2, y2), bool(e.positive), ph, e.frame))
        frames = sorted({self._numbers[0] if e.frame is None else int(e.frame) for e in out})
        if len(frames) > 1:  # sam3's add_prompt resets the state: one prompt frame per run
            raise InputError(
                f"exemplar boxes on frames {frames}: SAM 3 takes one prompt frame per run (a new prompt "
                "restarts it); draw all boxes on one frame"
            )
        for ph in names:
            mine = [e.box for e in out if e.phrase == ph]
            if len(mine) > 1:  # sam3's _get_visual_prompt: a fresh prompt frame takes a single box
                raise InputError(
                    f"exemplar boxes {mine} for {ph!r}: SAM 3's video model takes one box per phrase "
                    "(positive or negative); keep one, or segment the frame with the image model"
                )
        self._prompt_idx = self._numbers.index(frames[0]) if frames else 0
        if self._prompt_idx > 0 and self._prompt_idx == len(self._numbers) - 1:
            # sam3 takes a first pass that starts on the last frame as the whole run: its backward
            # pass would only fetch (parse_action_history_for_propagation), not segment
            raise InputError(
                f"exemplar boxes on frame {frames[0]}, the last frame: SAM 3 cannot track back from the "
                "last frame; draw them on an earlier frame"
            )
        return out

    @property
    def bidirectional(self) -> bool:
        """True when the run is prompted on a frame after the first (exemplars there): sam3's forward
        pass from that frame, then its backward pass from it."""
        return self._prompt_idx > 0

    def _exemplars_json(self) -> list[list[Any]]:
        return [[*e.box, bool(e.positive), e.phrase] for e in self.exemplars]

    def _progress(self) -> dict[str, Any] | None:
        got = self.store.get_meta(PROGRESS_KEY, {}) or {}
        entry = got.get(self.caption.text) if isinstance(got, dict) else None
        return entry if isinstance(entry, dict) else None

    def _set_progress(self, f_idx: int) -> None:
        """Record frame index ``f_idx`` as written. A run from the first frame keeps
        ``{"done_through": i, "start": s}``. A run prompted on ``k > 0`` writes its forward pass
        (``k`` .. end) then its backward pass (``k - 1`` .. 0): ``forward_done_through`` is the last
        forward frame written (``k - 1`` before any), ``backward_done_through`` the last backward
        frame written (``k`` before any), ``done_through`` the last frame of the run's order
        (forward then backward) written, as an index into that order, so ``done_through == n - 1``
        means finished for both kinds; ``exemplars`` the boxes, so a resume can tell it replays the
        same prompt."""
        got = self.store.get_meta(PROGRESS_KEY, {}) or {}
        got = dict(got) if isinstance(got, dict) else {}
        if not self.bidirectional:
            entry: dict[str, Any] = {"done_through": int(f_idx), "start": int(self._start_idx)}
            if self.exemplars:  # what a finished run was prompted with (see propagate)
                entry["exemplars"] = self._exemplars_json()
            got[self.caption.text] = entry
        else:
            k = self._prompt_idx
            old = got.get(self.caption.text) if isinstance(got.get(self.caption.text), dict) else None
            fwd = int(old.get("forward_done_through", k - 1)) if old and old.get("start") == k else k - 1
            bwd = int(old.get("backward_done_through", k)) if old and old.get("start") == k else k
            if f_idx >= k:
                fwd = max(fwd, int(f_idx))
            else:
                bwd = min(bwd, int(f_idx))
            got[self.caption.text] = {"start": k, "forward_done_through": fwd, "backward_done_through": bwd,
                                      "done_through": (fwd - k) + (k - bwd), "exemplars": self._exemplars_json()}
        self.store.set_meta(PROGRESS_KEY, got)

    def _written(self, prog: dict[str, Any] | None) -> Callable[[int], bool]:
        """Whether frame index ``t`` is already written by this caption's run (see _set_progress)."""
        if prog is None:
            return lambda t: False
        if "forward_done_through" in prog:
            k, fwd, bwd = int(prog["start"]), int(prog["forward_done_through"]), int(prog["backward_done_through"])
            return lambda t: k <= t <= fwd or bwd <= t < k
        done = int(prog["done_through"])
        return lambda t: t <= done

    def _restore_objects(self) -> None:
        """Re-link store objects made by an earlier session for this caption (resume by replay)."""
        for obj in self.store.objects():
            a = obj.attributes.get("sam3") if isinstance(obj.attributes, dict) else None
            if not isinstance(a, dict) or a.get("caption") != self.caption.text:
                continue
            for ph in self.phrases:
                if a.get("phrase") == ph.phrase and a.get("start") == self._start_idx:
                    ph.objects[int(a["id"])] = obj.id

    def _init_state(self) -> dict[str, Any]:
        """sam3's ``init_state`` + ``_construct_initial_input_batch`` over the lazy frames."""
        import torch
        from sam3.model.data_misc import BatchedDatapoint
        from sam3.model.geometry_encoders import Prompt

        n = len(self.frames)
        device = self.model.device
        st: dict[str, Any] = {
            "image_size": self.model.image_size,
            "num_frames": n,
            "orig_height": self.media.height,
            "orig_width": self.media.width,
            "constants": {},
        }
        st["input_batch"] = BatchedDatapoint(
            img_batch=self.frames,  # indexable, as sam3's async loaders are
            find_text_batch=["<text placeholder>", "visual"],
            find_inputs=_FindInputs(n, device),
            find_targets=[None] * n,
            find_metadatas=[None] * n,
        )
        bs = 1
        st["constants"]["empty_geometric_prompt"] = Prompt(
            box_embeddings=torch.zeros(0, bs, 4, device=device),
            box_mask=torch.zeros(bs, 0, device=device, dtype=torch.bool),
            box_labels=torch.zeros(0, bs, device=device, dtype=torch.long),
            point_embeddings=torch.zeros(0, bs, 2, device=device),
            point_mask=torch.zeros(bs, 0, device=device, dtype=torch.bool),
            point_labels=torch.zeros(0, bs, device=device, dtype=torch.long),
        )
        st["previous_stages_out"] = [None] * n
        st["text_prompt"] = None
        st["per_frame_raw_point_input"] = [None] * n
        st["per_frame_raw_box_input"] = [None] * n
        st["per_frame_visual_prompt"] = [None] * n
        st["per_frame_geometric_prompt"] = [None] * n
        st["per_frame_cur_step"] = [0] * n
        st["visual_prompt_embed"] = None
        st["visual_prompt_mask"] = None
        st["tracker_inference_states"] = []
        st["tracker_metadata"] = {}
        st["feature_cache"] = {}
        st["cached_frame_outputs"] = {}
        st["action_history"] = []
        st["is_image_only"] = False
        return st

    def _start(self, start_idx: int) -> None:
        """A fresh state per phrase, its text (and exemplar boxes) on ``start_idx``, its generator."""
        self._start_idx = start_idx
        self._next_idx = start_idx
        for ph in self.phrases:
            ph.objects = {}
        self._restore_objects()
        w, h = self.media.width, self.media.height
        for ph in self.phrases:
            ph.state = self._init_state()
            boxes = [e for e in self.exemplars if e.phrase == ph.phrase]
            kw: dict[str, Any] = {}
            if boxes:
                kw["boxes_xywh"] = [[b.box[0] / w, b.box[1] / h, (b.box[2] - b.box[0]) / w,
                                     (b.box[3] - b.box[1]) / h] for b in boxes]
                kw["box_labels"] = [1 if b.positive else 0 for b in boxes]
            self.model.add_prompt(ph.state, frame_idx=start_idx, text_str=ph.phrase, **kw)
            if start_idx > 0 and self.bidirectional:
                # sam3's demo with a prompt on a middle frame: forward from it, then backward from it
                # (the second generator's body, where sam3 reads its action history, runs only once
                # the first is exhausted)
                ph.gen = itertools.chain(
                    self.model.propagate_in_video(ph.state, start_frame_idx=start_idx, reverse=False),
                    self.model.propagate_in_video(ph.state, start_frame_idx=start_idx, reverse=True))
            else:
                ph.gen = iter(self.model.propagate_in_video(ph.state))
        self._started = True

    @contextlib.contextmanager
    def _model_settings(self) -> Iterator[None]:
        """The options' thresholds on the shared model while this session drives it, then the old ones.

        Also sam3's CPU fallbacks (:mod:`dl_utils.sam3al.cpu`) off CUDA, and bfloat16 autocast on the
        model's device: sam3's tracker enters a CUDA bf16 autocast at construction and never leaves it (``Sam3TrackerPredictor.__init__``), and its detector casts
        the tracker's backbone features to bf16, so the model only runs inside such a context. Autocast
        state is per thread, so a session driven from another thread (the widget) would fail without it.

        And the phrases share one vision-trunk pass per frame (:func:`~dl_utils.sam3al.backbone.
        shared_image_backbone`: exact, keyed on the pixels), and sam3's own progress bars are off
        (ours report the frames).
        """
        import torch

        from .backbone import quiet_sam3_progress, shared_image_backbone
        from .cpu import cpu_fallbacks

        over = self.options.model_overrides()
        old = {k: getattr(self.model, k) for k in over}
        try:
            for k, v in over.items():
                setattr(self.model, k, v)
            share = shared_image_backbone(self.model) if self.options.share_backbone else contextlib.nullcontext()
            with torch.inference_mode(), torch.autocast(device_type=self.model.device.type, dtype=torch.bfloat16), \
                    cpu_fallbacks(self.model.device), share, quiet_sam3_progress():
                yield
        finally:
            for k, v in old.items():
                setattr(self.model, k, v)

    # ------------------------------------------------------------------ propagation
    def cancel(self) -> None:
        """Stop the running :meth:`propagate` after the current frame (thread-safe; what is written stays)."""
        self._cancel.set()

    def frame_number(self, index: int) -> int:
        return self._numbers[index]

    def propagate(self, callback: Callable[[int, Instances], Any] | None = None) -> dict[str, Any]:
        """Segment every phrase's instances on every frame, writing each frame as it is produced.

        ``callback(frame, instances)`` gets each written frame (source frame number; it may call
        :meth:`cancel`). Frames the store already holds for this caption are not written again (see
        the module doc for what is recomputed). Returns a summary; the run is recorded in the store
        (``done``, ``cancelled`` on cancel or Ctrl-C, ``failed`` on an error).
        """
        self._cancel.clear()
        t0 = time.perf_counter()
        prog = self._progress()
        done_through = int(prog["done_through"]) if prog is not None else -1
        written = self._written(prog)
        n = len(self.frames)
        params = {"caption": self.caption.text, "phrases": [p.phrase for p in self.phrases],
                  "model": self.model_name, **self.options.model_overrides()}
        stats = {"frames_written": 0, "instances_written": 0, "frames_computed": 0, "frames_skipped": 0}
        if done_through >= n - 1 and not self._started:
            if self.exemplars and prog is not None and prog.get("exemplars") != self._exemplars_json():
                # finished with another prompt: returning "done" would drop these boxes silently
                raise InputError(
                    f"{self.store.path}: {self.caption.text!r} is already segmented "
                    f"{'with other exemplar boxes' if prog.get('exemplars') else 'without exemplar boxes'}; "
                    "use a new store for these exemplars (or another caption)"
                )
            return {"run_id": None, "status": "done", "caption": self.caption.text, **stats,
                    "seconds": round(time.perf_counter() - t0, 3)}
        run_id = self.store.begin_run("sam3-propagate", params)
        status = "failed"
        try:
            with self._model_settings():
                if not self._started and (self.bidirectional or (prog is not None and "forward_done_through" in prog)):
                    self._check_same_prompt(prog)
                    self._start(self._prompt_idx)  # replay: sam3's ids before k depend on the whole run
                if not self._started:
                    start = done_through + 1 if (self.options.resume == "redetect" and done_through >= 0) else 0
                    if prog is not None and self.options.resume == "replay":
                        start = int(prog.get("start", 0))
                        if start > done_through + 1:
                            start = 0
                    self._start(start)
                status = self._loop(callback, run_id, written, stats)
        except KeyboardInterrupt:
            status = "cancelled"
            raise
        finally:
            self.store.finish_run(run_id, status)
        return {"run_id": run_id, "status": status, "caption": self.caption.text,
                "objects": sorted(o for ph in self.phrases for o in ph.objects.values()), **stats,
                "seconds": round(time.perf_counter() - t0, 3)}

    def _check_same_prompt(self, prog: dict[str, Any] | None) -> None:
        """A run prompted on frame k > 0 resumes only by replaying the same prompt (sam3's ids on
        frames before k come from its backward pass, after the whole forward one)."""
        if prog is None:
            return
        same = ("forward_done_through" in prog and self.bidirectional and int(prog["start"]) == self._prompt_idx
                and prog.get("exemplars") == self._exemplars_json())
        if not same:
            was = (f"exemplar boxes {prog.get('exemplars')} on frame {self._numbers[int(prog['start'])]}"
                   if "forward_done_through" in prog else f"a prompt on frame {self._numbers[int(prog.get('start', 0))]}")
            raise InputError(
                f"{self.store.path}: {self.caption.text!r} was started with {was}; resume with the same "
                "exemplars, or use a new store for other ones"
            )

    def _loop(self, callback: Callable[[int, Instances], Any] | None, run_id: int, written: Callable[[int], bool],
              stats: dict[str, int], cancellable: bool = True) -> str:
        while True:
            if cancellable and self._cancel.is_set():
                return "cancelled"
            items = [next(ph.gen, None) if ph.gen is not None else None for ph in self.phrases]
            if all(it is None for it in items):
                for ph in self.phrases:
                    ph.gen = None
                return "done"
            idx = {int(it[0]) for it in items if it is not None}
            if len(idx) != 1 or any(it is None for it in items):
                raise RuntimeError(f"sam3 phrase states went out of step: frames {sorted(idx)}")
            f_idx = idx.pop()
            self._next_idx = f_idx + 1
            stats["frames_computed"] += 1
            backward = self.bidirectional and f_idx < self._prompt_idx
            if written(f_idx):
                stats["frames_skipped"] += 1
            else:
                frame = self._numbers[f_idx]
                insts: list[Instance] = []
                for ph, (_, out) in zip(self.phrases, items):  # type: ignore[misc]
                    insts += self._instances(ph, f_idx, out, "backward" if backward else "forward")
                self.store.write_frame(frame, insts, run_id=run_id)
                self._set_progress(f_idx)
                stats["frames_written"] += 1
                stats["instances_written"] += len(insts)
                if callback is not None:
                    callback(frame, Instances(insts, frame=frame))
            if self.options.trim_memory:
                for ph, (_, out) in zip(self.phrases, items):  # type: ignore[misc]
                    self._keep_residue(ph, f_idx, out)
                    self._trim(ph.state, f_idx, ph, reverse=backward)
            self._note_memory()

    def _object_id(self, ph: _Phrase, sam_id: int) -> int:
        oid = ph.objects.get(sam_id)
        if oid is None:
            attrs = {"sam3": {"caption": self.caption.text, "phrase": ph.phrase, "id": int(sam_id),
                              "start": int(self._start_idx)}}
            oid = self.store.add_object(ph.label, color=ph.color, attributes=attrs).id
            ph.objects[sam_id] = oid
        return oid

    def _instances(self, ph: _Phrase, f_idx: int, out: dict[str, Any], direction: str = "forward",
                   keyframe: tuple[int, Clicks] | None = None) -> list[Instance]:
        """One yielded sam3 frame output -> store instances (``out_binary_masks`` are at video size);
        ``keyframe``: (sam3 id, clicks) of the object a person refined on this frame."""
        ids = np.asarray(out["out_obj_ids"]).reshape(-1)
        probs = np.asarray(out["out_probs"]).reshape(-1)
        masks = np.asarray(out["out_binary_masks"])
        tm = ph.state.get("tracker_metadata") or {}
        trk = (tm.get("obj_id_to_tracker_score_frame_wise") or {}).get(f_idx, {})
        insts = []
        for sam_id, p, m in zip(ids.tolist(), probs.tolist(), masks):
            oid = self._object_id(ph, int(sam_id))
            ts = trk.get(sam_id)
            extra: dict[str, Any] = {"sam3_id": int(sam_id)}
            logit = None
            if ts is not None and np.isfinite(ts):
                extra["tracker_score"] = float(ts)
                q = min(max(float(ts), 1e-7), 1 - 1e-7)
                logit = math.log(q / (1 - q))
            m = np.asarray(m, dtype=bool)
            key = keyframe is not None and keyframe[0] == int(sam_id)
            insts.append(Instance(
                oid, mask=m, score=float(p), source=Source.SEMI_AUTO if key else Source.AUTO, label=ph.label,
                keyframe=key, clicks=keyframe[1] if keyframe is not None and key else None,
                provenance=Provenance(engine=ENGINE, model=self.model_name, caption=self.caption.text,
                                      phrase=ph.phrase, detector_score=float(p), direction=direction,
                                      object_score=logit, area=int(m.sum()), extra=extra),
            ))
        return insts

    # ------------------------------------------------------------------ refinement
    def sam3_object(self, object_id: int) -> tuple[str, int]:
        """(phrase, sam3 id) of a store object this session made; one-line InputError otherwise."""
        for ph in self.phrases:
            for sam_id, oid in ph.objects.items():
                if oid == object_id:
                    return ph.phrase, sam_id
        known = sorted(o for ph in self.phrases for o in ph.objects.values())
        raise InputError(
            f"object {object_id} is not one SAM 3 found for {self.caption.text!r} in this session "
            f"(its objects: {known[:20]}{' ...' if len(known) > 20 else ''}); pick one of them"
        )

    def _frame_index(self, frame: int) -> int:
        try:
            idx = self._numbers.index(int(frame))
        except (ValueError, TypeError):
            raise InputError(
                f"frame {frame!r} is not in {self.source.name} (frames {self._numbers[0]}..{self._numbers[-1]}); "
                "give a source frame number"
            ) from None
        if idx < self._first_idx:
            raise InputError(
                f"frame {frame} is before frame {self._numbers[self._first_idx]}, where this SAM 3 run "
                "started; refine on a frame the run covers"
            )
        return idx

    def _click_prompt(self, frame: int, object_id: int, clicks: Clicks) -> tuple[list[list[float]], list[int]]:
        """``clicks`` as sam3's relative points and labels: a box is its two corners with labels 2
        and 3 ahead of the clicks, which is what sam3's tracker does with ``box=`` itself
        (``add_new_points_or_box``; ``add_prompt`` passes points only)."""
        if not isinstance(clicks, Clicks):
            raise InputError(f"object {object_id}, frame {frame}: give Clicks(points=..., box=...), "
                             f"got {type(clicks).__name__}")
        if not clicks.points and clicks.box is None:
            raise InputError(f"object {object_id}, frame {frame}: no clicks and no box to refine with")
        w, h = self.media.width, self.media.height
        pts: list[list[float]] = []
        labels: list[int] = []
        if clicks.box is not None:
            x1, y1, x2, y2 = (float(v) for v in clicks.box)
            if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
                raise InputError(f"object {object_id}, frame {frame}: box {clicks.box} is not inside the "
                                 f"{w}x{h} frame with x1 < x2, y1 < y2; give (x1, y1, x2, y2) in pixels")
            pts += [[x1 / w, y1 / h], [x2 / w, y2 / h]]
            labels += [2, 3]
        for x, y, v in clicks.points:
            if not (0 <= x < w and 0 <= y < h) or v not in (0, 1):
                raise InputError(f"object {object_id}, frame {frame}: click ({x}, {y}, {v}) is not a point "
                                 f"inside the {w}x{h} frame with label 1 (positive) or 0 (negative)")
            pts.append([x / w, y / h])
            labels.append(int(v))
        return pts, labels

    def _ensure_finished(self) -> None:
        """sam3's state after its whole run and the session's refinements: what a refinement starts
        from. A session that did not run it (a new session on a finished store) replays the run,
        writing nothing (see the module doc); one whose state holds an undone refinement's clicks
        (:meth:`undo_refine`) rebuilds it (:meth:`_rebuild`)."""
        if self._stale:
            self._rebuild()
            return
        if self._started and all(ph.gen is None for ph in self.phrases):
            return
        if self._started:
            raise InputError(
                f"{self.caption.text!r}: SAM 3's run stopped at frame {self._numbers[max(self._next_idx - 1, 0)]}; "
                "finish it (propagate()) before refining"
            )
        self._replay_run()

    def _replay_run(self) -> None:
        """The caption's finished run recomputed from its prompt, writing nothing."""
        prog = self._progress()
        n = len(self.frames)
        if prog is None or int(prog["done_through"]) < n - 1:
            raise InputError(f"{self.caption.text!r}: run propagate() to the end before refining")
        stats = {"frames_written": 0, "instances_written": 0, "frames_computed": 0, "frames_skipped": 0}
        with self._model_settings():
            self._start(int(prog.get("start", 0)))
            # not cancellable: a replay cut short would leave sam3's state half-run, and the refine
            # that needs it would go on from there (cancel() stops the refine itself, between frames)
            self._loop(None, 0, lambda t: True, stats, cancellable=False)

    def _rebuild(self) -> None:
        """sam3's state without the undone refinements: the run replayed, then each remaining
        refinement re-applied in order, writing nothing (the store already holds their results).

        Why replay rather than patch: sam3 keeps no per-click undo; an object's clicks live in its
        tracker state (point inputs, conditioning outputs, memory of every frame it re-tracked) and
        in the action history that decides what its next propagation does, so the only faithful
        state without them is one that never saw them. The re-applied refinements read sam3's cache
        (with trimming, rebuilt from the store) as it was before each of them: the store overlaid
        with the rows the later refinements replaced (their undo logs), see :meth:`_load_cached`."""
        for ph in self.phrases:
            close = getattr(ph.gen, "close", None)
            if close is not None:
                close()
            ph.gen, ph.state = None, {}
            ph.scores, ph.suppressed, ph.residue = {}, {}, {}
        self._started = False
        self._replay_run()
        with self._model_settings():
            for i, rec in enumerate(self._undo):
                if rec.prompted and not rec.failed:
                    self._reapply(rec, i)
        self._stale = False

    def _reapply(self, rec: _Refinement, level: int) -> None:
        """Refinement ``rec`` (``self._undo[level]``) on sam3's state again, as it ran, writing nothing."""
        ph = self.phrases[rec.phrase_index]
        seen: set[int] = set()
        later = self._undo[level + 1:]
        if self.options.trim_memory:
            # frames this re-application has yielded read the store as it was after it, others before it
            self._rehydrate(ph, lambda t: self._load_cached(ph, t, later if t in seen else self._undo[level:]))
        try:
            _, out = self.model.add_prompt(ph.state, frame_idx=rec.f_idx, points=rec.points,
                                           point_labels=rec.labels, obj_id=rec.sam_id)
            self._drop_cached(ph, rec.f_idx, out)
            seen.add(rec.f_idx)
            for p in rec.passes:
                gen = self.model.propagate_in_video(ph.state, start_frame_idx=rec.f_idx,
                                                    max_frame_num_to_track=p.limit, reverse=p.reverse)
                try:
                    steps = itertools.islice(gen, p.frames) if p.frames is not None else gen
                    for t, out in steps:
                        self._drop_cached(ph, int(t), out)
                        seen.add(int(t))
                finally:
                    gen.close()
        finally:
            if self.options.trim_memory:
                self._retrim(ph)

    def _load_cached(self, ph: _Phrase, t: int, undone: Sequence[_Refinement] = ()) -> dict[int, Any]:
        """``cached_frame_outputs[t]`` of ``ph`` rebuilt: stored mask | residue per sam3 id.
        ``undone``: refinements whose rows on ``t`` are read as they were before them (the store as
        it was before the oldest of them; newest applied first, so the oldest's saved row wins)."""
        import torch

        by_oid = {oid: sam_id for sam_id, oid in ph.objects.items()}
        h, w = self.media.height, self.media.width
        rows: dict[int, Instance | None] = {x.object_id: x for x in self.store.read_frame(self._numbers[t])}
        for rec in reversed(list(undone)):
            for oid, saved in rec.rows.get(t, {}).items():
                rows[oid] = saved.restored()
        flat: dict[int, np.ndarray] = {}
        for inst in rows.values():
            sam_id = by_oid.get(inst.object_id) if inst is not None else None
            if inst is not None and sam_id is not None and inst.mask is not None and np.asarray(inst.mask).any():
                flat[sam_id] = np.asarray(inst.mask, dtype=bool).reshape(-1).copy()  # empty: a keyframe mark
        for sam_id, idx in ph.residue.get(t, {}).items():
            m = flat.setdefault(sam_id, np.zeros(h * w, dtype=bool))
            m[idx] = True
        dev = self.model.device
        return {i: torch.from_numpy(m.reshape(1, h, w)).to(dev) for i, m in sorted(flat.items())}

    def _rehydrate(self, ph: _Phrase, load: Callable[[int], dict[int, Any]] | None = None) -> None:
        """Put back into sam3's state what trimming took out and its refinement reads."""
        st = ph.state
        tm = st["tracker_metadata"]
        tm["obj_id_to_tracker_score_frame_wise"].update(ph.scores)
        tm["rank0_metadata"]["suppressed_obj_ids"].update(ph.suppressed)
        ph.scores, ph.suppressed = {}, {}
        kept = dict(st["cached_frame_outputs"])
        lazy = _StoreBackedOutputs(range(self._first_idx, len(self.frames)),
                                   load if load is not None else (lambda t: self._load_cached(ph, t)))
        for t, v in kept.items():
            dict.__setitem__(lazy, t, v)
        st["cached_frame_outputs"] = lazy

    def _retrim(self, ph: _Phrase) -> None:
        st = ph.state
        cached = st["cached_frame_outputs"]
        st["cached_frame_outputs"] = {}
        n = len(self.frames)
        self._trim(st, n - 1, ph)
        for ts in st["tracker_inference_states"]:
            _trim_tracker_state(self.model.tracker, ts, n)
        del cached

    @property
    def _first_idx(self) -> int:
        """The first frame index the run covers (its start; 0 for a run prompted on k > 0)."""
        return 0 if self.bidirectional else self._start_idx

    @property
    def can_undo(self) -> bool:
        """True when :meth:`undo_refine` has a refinement of this session to revert."""
        return bool(self._undo)

    def refine(self, frame: int, object_id: int, clicks: Clicks,
               callback: Callable[[int, Instances], Any] | None = None) -> dict[str, Any]:
        """Correct one object with clicks on one frame and carry the correction through the video.

        Drives sam3's own instance refinement on the object's phrase state: ``add_prompt(points=...,
        point_labels=..., obj_id=<sam3 id>)`` on ``frame`` (positive/negative clicks; ``clicks.box``
        as sam3's box corners), then sam3's partial propagation (``propagate_in_video`` with the
        action history it keeps: only the refined object is tracked again, the other objects' masks
        come from its cache) forward from ``frame`` to the end and backward to the run's start
        (frame 0 for a run prompted on frame k > 0: its passes covered the whole video, so the clicked
        frame may be before or after k; sam3's action history treats the bidirectional text run as
        any finished run).
        Every frame sam3 yields is written: the phrase's instances that changed (the refined object;
        a same-phrase neighbour only where sam3's non-overlap rule moves pixels between them) are
        replaced, others are left as they are, instances of other phrases are never touched. Store
        object ids stay (sam3 keeps the object's id). ``callback(frame, instances)`` gets each frame.

        Why re-hydrate rather than keep: sam3 reads ``cached_frame_outputs`` (every object's
        video-size masks) for every frame it yields, and per-frame scores and suppressions. Keeping
        the masks would make memory grow with the video, which trimming exists to avoid; the store
        already holds them, so the session keeps only what the store cannot give back (a few scores
        per frame, and the pixels sam3's non-overlap rule moved: usually none) and rebuilds a frame's
        cache when sam3 asks for it. The tracker's memory of frames before ``frame`` that trimming
        dropped (older than its memory window; all kept with ``trim_memory=False``) cannot be rebuilt:
        there the forward pass starts from the clicked frame alone (sam3 skips missing memory
        frames), so results equal sam3's untrimmed run exactly only within the window of the run's
        end (for a run prompted on k > 0, whose backward pass ends on frame 0: within the window of
        frame 0 for the first refinement, of the video's end for later ones), or with
        ``trim_memory=False``. :meth:`undo_refine` reverts it. Returns a summary (``frames_written`` counts each frame
        once; the clicked frame is yielded by ``add_prompt`` and again by the forward pass); recorded
        as a ``sam3-refine`` run.

        :meth:`cancel` stops between frames (``status="cancelled"``): every frame written is whole
        (the phrase's instances as sam3 gave them), frames not reached keep what the store had
        before, and the clicks stay recorded (``refinements``, the clicked frame's keyframe): sam3
        holds them as the object's prompt. A later :meth:`refine` of the same object carries its
        clicks through the whole video again (forward and backward), so it also completes the
        frames the cancelled one did not reach; :meth:`propagate` has nothing left to do (the text
        run is finished) and writes nothing.
        """
        t0 = time.perf_counter()
        prog = self._progress()
        if not self._started and (self.bidirectional or (prog is not None and "forward_done_through" in prog)):
            self._check_same_prompt(prog)  # a replay must rebuild the run the store holds
        _, sam_id = self.sam3_object(int(object_id))
        k = self._frame_index(frame)
        pts, labels = self._click_prompt(frame, object_id, clicks)
        ph = next(p for p in self.phrases if object_id in p.objects.values())
        self._ensure_finished()
        n = len(self.frames)
        run_id = self.store.begin_run("sam3-refine", {"caption": self.caption.text, "phrase": ph.phrase,
                                                      "object": int(object_id), "frame": int(frame),
                                                      "clicks": clicks.to_json(), "model": self.model_name})
        rec = _Refinement(run_id, int(object_id), self.phrases.index(ph),
                          int(sam_id), int(frame), k, pts, labels, clicks,
                          self.refinements.get(int(object_id), {}).get(int(frame)))
        self._undo.append(rec)  # undoable from its first write on (also when cancelled or failed)
        self._recording = rec
        stats = {"frames_written": 0, "instances_written": 0, "frames_computed": 0}
        seen: set[int] = set()  # frames written (the clicked frame comes from add_prompt and the forward pass)
        status = "failed"
        self._cancel.clear()
        cancelled = False
        try:
            with self._model_settings():
                if self.options.trim_memory:
                    self._rehydrate(ph)
                try:
                    rec.prompted = True  # from here on sam3's state may hold the clicks
                    _, out = self.model.add_prompt(ph.state, frame_idx=k, points=pts, point_labels=labels,
                                                   obj_id=sam_id)
                    self._write_refined(ph, k, out, "forward", (sam_id, clicks), run_id, stats, callback, sam_id,
                                        clicks_frame=True)
                    seen.add(k)
                    self._drop_cached(ph, k, out)
                    cancelled = self._cancel.is_set()
                    passes: list[tuple[bool, int | None]] = []
                    first = self._first_idx
                    if k < n - 1 or k == first:  # sam3 takes a pass from the last frame as done
                        passes.append((False, None))
                    if k > first:  # None: sam3's own bound (it reads it back) when the run starts at 0
                        passes.append((True, k - first if first else None))
                    for reverse, limit in passes:
                        if cancelled:
                            break
                        p = _RefinePass(reverse, limit, 0)
                        rec.passes.append(p)
                        gen = self.model.propagate_in_video(ph.state, start_frame_idx=k,
                                                            max_frame_num_to_track=limit, reverse=reverse)
                        try:
                            for t, out in gen:
                                p.frames = (p.frames or 0) + 1
                                stats["frames_computed"] += 1
                                key = (sam_id, clicks) if t == k else None
                                self._write_refined(ph, t, out, "backward" if reverse else "forward", key,
                                                    run_id, stats, callback, sam_id, clicks_frame=t == k)
                                seen.add(int(t))
                                self._drop_cached(ph, t, out)
                                if self._cancel.is_set():  # between frames: this one is written whole
                                    cancelled = True
                                    break
                            else:
                                p.frames = None  # ran to its end
                        finally:
                            gen.close()
                finally:
                    stats["frames_written"] = len(seen)
                    if self.options.trim_memory:
                        self._retrim(ph)
            # the clicks are sam3's prompt now (on frame k), also when the passes were cut short
            self.refinements.setdefault(int(object_id), {})[int(frame)] = clicks
            rec.clicks_recorded = True
            status = "cancelled" if cancelled else "done"
        finally:
            self._recording = None
            if status == "failed":
                rec.failed = True  # what sam3's state holds is unknown: rebuild it without this one
                self._stale = rec.prompted or self._stale
            self.store.finish_run(run_id, status)
        return {"run_id": run_id, "status": status, "object": int(object_id), "frame": int(frame), **stats,
                "seconds": round(time.perf_counter() - t0, 3)}

    def undo_refine(self) -> dict[str, Any]:
        """Revert the most recent refinement of this session not undone yet (a cancelled one too).

        Every store row it wrote or deleted is put back as it was (rows it added are deleted, rows it
        replaced are written back with their mask, score, source, keyframe, clicks and provenance),
        and its clicks leave :attr:`refinements`. Several undos in a row revert refinements newest
        first. Recorded as a ``sam3-undo`` run. sam3's state still holds the undone clicks, so it is
        marked stale and rebuilt at the next :meth:`refine` (see :meth:`_rebuild`); :meth:`propagate`
        has nothing to do (the text run is finished and its rows are untouched by refinements'
        undo). Why a log of rows rather than re-running: the rows are what the person saw before the
        refinement, exactly; recomputing them would need the rebuilt state first (a whole replay)."""
        if not self._undo:
            raise InputError(f"{self.caption.text!r}: no refinement of this session to undo "
                             f"(undo reverts refine() calls made through this session)")
        if self._recording is not None:
            raise InputError(f"{self.caption.text!r}: a refinement is running; cancel() it and wait for it "
                             "to return before undoing")
        rec = self._undo[-1]
        run_id = self.store.begin_run("sam3-undo", {"caption": self.caption.text, "object": rec.object_id,
                                                    "frame": rec.frame, "undone_run": rec.run_id})
        status = "failed"
        try:
            for t in sorted(rec.rows):
                frame = self._numbers[t]
                back = [inst for saved in rec.rows[t].values() if (inst := saved.restored()) is not None]
                if back:
                    self.store.write_frame(frame, back, run_id=run_id)
                for oid, saved in sorted(rec.rows[t].items()):
                    if saved.instance is None:
                        self.store.delete_instances(object_id=oid, frames=[frame])
            status = "done"
        finally:
            self.store.finish_run(run_id, status)
        self._undo.pop()
        if rec.clicks_recorded:
            mine = self.refinements.get(rec.object_id, {})
            if rec.prev_clicks is not None:
                mine[rec.frame] = rec.prev_clicks
            else:
                mine.pop(rec.frame, None)
            if not mine:
                self.refinements.pop(rec.object_id, None)
        if rec.prompted:
            self._stale = True
        return {"status": "undone", "object": rec.object_id, "frame": rec.frame,
                "frames_restored": len(rec.rows), "run_id": rec.run_id}

    def _drop_cached(self, ph: _Phrase, t: int, out: dict[str, Any]) -> None:
        """After a refined frame is written (trimming on): keep its residue, drop sam3's cache of it."""
        if not self.options.trim_memory:
            return
        cached = ph.state["cached_frame_outputs"]
        self._keep_residue(ph, t, out)
        if dict.__contains__(cached, t):
            dict.__delitem__(cached, t)

    def _write_refined(self, ph: _Phrase, t: int, out: dict[str, Any], direction: str,
                       keyframe: tuple[int, Clicks] | None, run_id: int, stats: dict[str, int],
                       callback: Callable[[int, Instances], Any] | None, refined_id: int | None = None,
                       clicks_frame: bool = False) -> None:
        """Write the phrase's instances on frame ``t`` that differ from the stored ones; delete the
        phrase's instances sam3 no longer shows there. ``clicks_frame``: ``t`` is the clicked frame;
        when sam3 shows the refined object nowhere there (negative clicks took it all) it gets an
        empty-mask keyframe instance with the clicks, so the correction stays recorded where it
        was made (the store's way to say "processed, not visible")."""
        frame = self._numbers[t]
        new = self._instances(ph, t, out, direction, keyframe)
        mine = set(ph.objects.values())
        old = {x.object_id: x for x in self.store.read_frame(frame) if x.object_id in mine}
        refined = ph.objects.get(refined_id) if refined_id is not None else None
        if clicks_frame and keyframe is not None and refined is not None and \
                all(x.object_id != refined for x in new):
            h, w = self.media.height, self.media.width
            new.append(Instance(refined, mask=np.zeros((h, w), dtype=bool), score=0.0, source=Source.SEMI_AUTO,
                                label=ph.label, keyframe=True, clicks=keyframe[1],
                                provenance=Provenance(engine=ENGINE, model=self.model_name,
                                                      caption=self.caption.text, phrase=ph.phrase,
                                                      direction=direction, area=0,
                                                      extra={"sam3_id": int(keyframe[0])})))
        changed = [x for x in new if x.object_id not in old or x.object_id == refined
                   or old[x.object_id].mask is None or old[x.object_id].score != x.score
                   or not np.array_equal(np.asarray(old[x.object_id].mask), np.asarray(x.mask))]
        gone = set(old) - {x.object_id for x in new}
        if self._recording is not None:  # the rows as they were, for undo_refine
            for oid in sorted({x.object_id for x in changed} | gone):
                self._recording.save(t, oid, old.get(oid))
        if changed:
            self.store.write_frame(frame, changed, run_id=run_id)
        for oid in sorted(gone):
            self.store.delete_instances(object_id=oid, frames=[frame])
        stats["instances_written"] += len(changed)
        if callback is not None:
            callback(frame, self.store.read_frame(frame))

    # ------------------------------------------------------------------ memory
    def _keep_residue(self, ph: _Phrase, t: int, out: dict[str, Any]) -> None:
        """Before ``cached_frame_outputs[t]`` is dropped: per object, the pixels of sam3's cached mask
        that its output (what the store gets) lacks, i.e. what the non-overlap rule gave to another
        object. With the stored masks they rebuild the cache exactly (:class:`_StoreBackedOutputs`)."""
        cached = ph.state.get("cached_frame_outputs", {})
        if not dict.__contains__(cached, t):
            ph.residue.pop(t, None)
            return
        shown = {int(i): np.asarray(m, dtype=bool) for i, m in
                 zip(np.asarray(out["out_obj_ids"]).reshape(-1).tolist(), np.asarray(out["out_binary_masks"]))}
        res: dict[int, np.ndarray] = {}
        for sam_id, m in dict.__getitem__(cached, t).items():
            pre = m.detach().cpu().numpy().reshape(-1).astype(bool)
            post = shown.get(int(sam_id))
            lost = pre if post is None else pre & ~post.reshape(-1)
            idx = np.flatnonzero(lost)
            if idx.size:
                res[int(sam_id)] = idx.astype(np.int32)
        if res:
            ph.residue[t] = res
        else:
            ph.residue.pop(t, None)

    def _trim(self, st: dict[str, Any], written: int, ph: _Phrase | None = None, reverse: bool = False) -> None:
        """Drop what sam3's state holds for frames that are written and that no later frame reads.

        ``reverse``: ``written`` is a frame of the backward pass of a run prompted on frame k > 0, so
        the written frames are ``written`` and after. In such a run the forward pass keeps, besides
        what a later forward frame reads, what the backward pass will read of it: the memory window
        after k and the conditioning frames sam3 selects going backward (the earliest ones, see
        :func:`_tracker_keep` with ``reverse``); the backward pass keeps what a smaller-index frame
        reads (the mirrored rule). Both are bounded by the tracker's window, not the video.

        - ``cached_frame_outputs[t]`` (video-size masks of every object): read only by a later
          refinement/fetch pass, which this session does not run; dropped up to the written frame.
        - ``tracker_metadata["obj_id_to_tracker_score_frame_wise"][t]`` and
          ``rank0_metadata["suppressed_obj_ids"][t]``: read for the current frame only (sam3
          deep-copies the whole frame-wise dict on every frame, so trimming also keeps the per-frame
          cost flat); dropped up to the written frame (moved to the phrase's ``scores`` and
          ``suppressed``, a few numbers per frame, which :meth:`refine` puts back).
        - each tracker state's non-conditioning outputs (memory features, object pointers): kept
          only for frames the memory attention of a later frame can still select (see
          :func:`_tracker_keep`); conditioning outputs beyond the ``max_cond_frames_in_attn`` most
          recent ones (and the first, where the tracker keeps it) likewise.
        """
        def done(t: int) -> bool:
            return t >= written if reverse else t <= written

        st["cached_frame_outputs"] = {t: v for t, v in dict.items(st["cached_frame_outputs"]) if not done(t)}
        tm = st.get("tracker_metadata") or {}
        fw = tm.get("obj_id_to_tracker_score_frame_wise")
        if fw is not None:
            for t in [t for t in fw if done(t)]:
                if ph is not None:  # a few floats per frame, for a later refinement
                    ph.scores[t] = fw[t]
                del fw[t]
        r0 = tm.get("rank0_metadata") or {}
        sup = r0.get("suppressed_obj_ids")
        if sup is not None:
            for t in [t for t in sup if done(t)]:
                if ph is not None:
                    ph.suppressed[t] = sup[t]
                del sup[t]
        # the generator may have run ahead (hot-start delay): later reads start after the last
        # frame it processed (backward: before the earliest)
        done_ = [t for t, v in enumerate(st["previous_stages_out"]) if v is not None]
        tracker = self.model.tracker
        if not self.bidirectional:
            nxt = (max(done_) if done_ else written) + 1
            for ts in st["tracker_inference_states"]:
                _trim_tracker_state(tracker, ts, nxt)
            return
        k = self._prompt_idx
        if not reverse:  # forward pass: also what the backward pass will read around k
            fwd = [t for t in done_ if t >= k]
            nxt = (max(fwd) if fwd else written) + 1
            for ts in st["tracker_inference_states"]:
                _trim_tracker_state(tracker, ts, nxt, also=_tracker_keep(tracker, ts, k - 1, reverse=True))
        else:
            bwd = [t for t in done_ if t < k]
            nxt = (min(bwd) if bwd else written) - 1
            for ts in st["tracker_inference_states"]:
                _trim_tracker_state(tracker, ts, nxt, reverse=True)

    def _note_memory(self) -> None:
        info = self.memory_info()
        for k, v in info.items():
            self.peak_memory[k] = max(self.peak_memory.get(k, 0), v)

    def memory_info(self) -> dict[str, int]:
        """Per-frame entries sam3's states hold now (all phrases): flat in video length when trimmed."""
        cached = frame_wise = suppressed = non_cond = cond = tracked = 0
        for ph in self.phrases:
            st = ph.state
            if not st:
                continue
            cached += len(st["cached_frame_outputs"])
            tm = st.get("tracker_metadata") or {}
            frame_wise += len(tm.get("obj_id_to_tracker_score_frame_wise") or {})
            suppressed += len((tm.get("rank0_metadata") or {}).get("suppressed_obj_ids") or {})
            for ts in st["tracker_inference_states"]:
                non_cond += len(ts["output_dict"]["non_cond_frame_outputs"])
                cond += len(ts["output_dict"]["cond_frame_outputs"])
                tracked += len(ts["frames_already_tracked"])
        return {"cached_frame_outputs": cached, "tracker_score_frames": frame_wise,
                "suppressed_frames": suppressed, "tracker_non_cond_outputs": non_cond,
                "tracker_cond_outputs": cond, "tracker_frames_tracked": tracked,
                "decoded_frames_cached": self.frames.cache_info()["cached"]}

    def close(self) -> None:
        for ph in self.phrases:
            if ph.gen is not None:
                close = getattr(ph.gen, "close", None)
                if close is not None:
                    close()
            ph.gen = None
            ph.state = {}
        self._started = False
        self.frames.close()
        self.source.close()


class Sam3ClickEngine:
    """:class:`dl_utils.interactive.PropagatingEngine` over a :class:`Sam3VideoSession`, so the click
    widget can drive SAM 3 as it drives SAM2: ``add_clicks`` is :meth:`Sam3VideoSession.refine` (the
    correction is carried through the whole video at once, as sam3's partial propagation does),
    ``propagate`` runs (or finishes) the caption's text run, which goes forward only.

    :meth:`undo` reverts the last refinement (:meth:`Sam3VideoSession.undo_refine`). Not offered by
    sam3's refinement, so refused with a one-line InputError: forgetting one frame's clicks
    (``clear_clicks``: sam3 keeps no per-frame undo; undo the last refinement, or refine again with
    other clicks) and dropping an object from sam3's tracking (``remove_object``: delete the store
    object instead).
    """

    can_propagate = True

    def __init__(self, session: Sam3VideoSession):
        if not isinstance(session, Sam3VideoSession):
            raise InputError(f"Sam3ClickEngine needs a Sam3VideoSession, got {type(session).__name__}")
        self.session = session

    def add_clicks(self, frame: int, object_id: int, clicks: Clicks) -> Instance:
        self.session.refine(frame, object_id, clicks)
        for inst in self.session.store.read_frame(frame):
            if inst.object_id == object_id:
                return inst
        h, w = self.session.media.height, self.session.media.width
        return Instance(object_id, mask=np.zeros((h, w), dtype=bool), source=Source.SEMI_AUTO,
                        keyframe=True, clicks=clicks)

    def clear_clicks(self, frame: int, object_id: int) -> None:
        raise InputError(f"object {object_id}, frame {frame}: SAM 3 cannot forget one frame's clicks; "
                         "undo() the last refinement, or refine again with the clicks you want")

    @property
    def can_undo(self) -> bool:
        return self.session.can_undo

    def undo(self) -> dict[str, Any]:
        """Revert the session's last refinement (store rows and clicks); see
        :meth:`Sam3VideoSession.undo_refine`."""
        return self.session.undo_refine()

    def remove_object(self, object_id: int) -> None:
        raise InputError(f"object {object_id}: SAM 3's session cannot stop tracking one object; "
                         "delete it from the store instead")

    def keyframes(self) -> dict[int, list[int]]:
        return {o: sorted(f) for o, f in self.session.refinements.items()}

    def propagate(self, direction: str, callback: Callable[[int, Instances], object]) -> dict[str, Any]:
        if direction not in ("forward", "both"):
            raise InputError(f"direction={direction!r}: SAM 3's text run goes forward only; use 'forward'")
        return self.session.propagate(callback=callback)

    def cancel(self) -> None:
        self.session.cancel()


def _tracker_keep(tracker: Any, ts: dict[str, Any], g: int, reverse: bool = False) -> tuple[set[int], set[int]]:
    """(non-conditioning, conditioning) frame indices a tracker state may read for any frame >= ``g``
    when tracking forward (``reverse``: for any frame <= ``g`` when tracking backward).

    Mirrors ``Sam3TrackerBase._prepare_memory_conditioned_features``: without memory selection the
    reads are the previous frame, ``num_maskmem - 2`` frames every ``r`` frames behind it and
    ``max_obj_ptrs_in_encoder - 1`` object pointers, all within a window that moves with ``g``; with
    memory selection (``frame_filter``) they are the previous frame and, per stride class, the most
    recent ``max_num - 1`` frames whose ``eff_iou_score`` passes ``mf_threshold``, which only newer
    frames can displace. Conditioning frames: ``select_closest_cond_frames`` picks the temporally
    closest ``max_cond_frames_in_attn`` (going forward the most recent, going backward the earliest),
    and with ``keep_first_cond_frame`` the first one before the frame, or when there is none (the
    backward case) the last one; unselected ones are read only inside the window. Backward, "behind"
    is "after": every rule is the forward one mirrored (sam3's ``track_in_reverse`` branches).
    """
    r = max(1, int(getattr(tracker, "memory_temporal_stride_for_eval", 1)))
    num_frames = ts["num_frames"]
    max_ptrs = min(num_frames, int(tracker.max_obj_ptrs_in_encoder))
    span = max(r * int(tracker.num_maskmem) + 2, max_ptrs + 1)
    sign = -1 if reverse else 1  # forward: reads go back in time; backward: forward in time

    def behind(t: int) -> int:  # how far behind the frames still to come (<= 0: not behind)
        return (g - t) * sign

    od = ts["output_dict"]
    non_cond = {t for t in od["non_cond_frame_outputs"] if behind(t) <= span}
    if getattr(tracker, "use_memory_selection", False):
        thr = tracker.mf_threshold
        per_class: dict[int, int] = {}
        for t in sorted(od["non_cond_frame_outputs"], key=behind):  # nearest first
            if behind(t) <= 0:
                non_cond.add(t)
                continue
            out = od["non_cond_frame_outputs"][t]
            if "eff_iou_score" not in out:
                continue
            try:
                valid = bool(out["eff_iou_score"] > thr)
            except (RuntimeError, ValueError):  # a batched score: keep it, never guess
                valid = True
            k = (behind(t) - 1) % r
            if valid and per_class.get(k, 0) < max_ptrs - 1:
                per_class[k] = per_class.get(k, 0) + 1
                non_cond.add(t)
    conds = od["cond_frame_outputs"]
    max_cond = int(getattr(tracker, "max_cond_frames_in_attn", -1))
    if max_cond == -1 or len(conds) <= max_cond:
        cond = set(conds)
    else:
        cond = {t for t in conds if behind(t) <= span}
        cond |= set(sorted(conds, key=behind)[:max_cond])
        if getattr(tracker, "keep_first_cond_frame", False) and conds:
            cond.add(max(conds) if reverse else min(conds))
    return non_cond, cond


def _trim_tracker_state(tracker: Any, ts: dict[str, Any], g: int, reverse: bool = False,
                        also: tuple[set[int], set[int]] | None = None) -> None:
    """Drop a tracker state's outputs no frame >= ``g`` reads (``reverse``: no frame <= ``g``
    tracking backward) and none in ``also`` (non-cond, cond: what another pass will read), from the
    batched dict, the per-object views and the indices."""
    keep_nc, keep_c = _tracker_keep(tracker, ts, g, reverse)
    if also is not None:
        keep_nc, keep_c = keep_nc | also[0], keep_c | also[1]
    for key, keep in (("non_cond_frame_outputs", keep_nc), ("cond_frame_outputs", keep_c)):
        for d in [ts["output_dict"], *ts["output_dict_per_obj"].values()]:
            for t in [t for t in d[key] if t not in keep]:
                del d[key][t]
        inds = ts["consolidated_frame_inds"][key]
        for t in [t for t in inds if t not in keep]:
            inds.discard(t)

    def gone(t: int) -> bool:  # passed by the frames still to come (the frame next to them stays)
        return t > g + 1 if reverse else t < g - 1

    for t in [t for t in ts["frames_already_tracked"] if gone(t) and t not in keep_c]:
        del ts["frames_already_tracked"][t]
    for per_obj in (ts["point_inputs_per_obj"], ts["mask_inputs_per_obj"]):
        for d in per_obj.values():
            for t in [t for t in d if gone(t) and t not in keep_c]:
                del d[t]


__all__ = ["ENGINE", "PROGRESS_KEY", "RESUME", "Exemplar", "Sam3ClickEngine", "Sam3VideoOptions", "Sam3VideoSession"]
