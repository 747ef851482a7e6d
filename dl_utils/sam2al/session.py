"""``VideoSession``: prompts, propagation into the store, corrections, cancel and resume."""

from __future__ import annotations

import functools
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np

from ..annotations import Box, Clicks, Instance, Instances, Provenance, Source
from ..errors import DlUtilsError, FrameIndexError, InputError, MaskError
from ..models import DEFAULT_MODEL
from ..sam2_loader import (
    autocast_context,
    build_sam2_model,
    is_compiled,
    precision_name,
    require_sam2,
    resolve_dtype,
)
from ..samal import MASK_LOGIT_BIAS, MASK_LOGIT_SCALE, parse_box, parse_points
from ..store import AnnotationStore
from .engine import make_engine
from .frames import LazyFrames
from .pipeline import FrameWriter, Pipeline, as_pipeline
from .review import ReviewItem, review_frames
from .samurai import MotionTrack, SamuraiCall, SamuraiConfig, admits, check_tracker, memory_frames

TRACKER_META = "sam2al.tracker"  # store meta: {"tracker": "sam2"|"samurai", "samurai": {...}}

DIRECTIONS = ("forward", "backward", "both")


@dataclass
class _Plan:
    """One object's run in one pass: frame indices ``begin -> end`` (in pass order), which to write."""

    begin: int
    end: int
    write: set[int] = field(default_factory=set)
    anchor: int | None = None  # the locked frame the run hangs from (SAMURAI replays its filter from it)


@dataclass
class _Motion:
    """One object's SAMURAI state in one pass: its filter and which computed frames are admitted."""

    track: MotionTrack
    admitted: dict[int, bool] = field(default_factory=dict)


def stored_tracker(store: Any) -> str | None:
    """The tracker (``"sam2"``/``"samurai"``) whose propagated results ``store`` holds, None when it
    holds none: the one rule a session refuses a switch by and the drivers check before loading
    models (its meta ``sam2al.tracker``; a store from before tracker modes existed, with a
    propagation run, was made by SAM2)."""
    rec = store.get_meta(TRACKER_META)
    if isinstance(rec, dict) and rec.get("tracker") in ("sam2", "samurai"):
        return str(rec["tracker"])
    if any(r["kind"] == "propagate" for r in store.runs()):
        return "sam2"
    return None


def _as_oid(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        raise InputError(f"object id {value!r} is not an integer >= 0; use the id of the object to segment")
    return int(value)


def dependent_frames(store: Any, source: Any, oid: int, idx: int, locked: Iterable[int]) -> list[int]:
    """Source frames of ``oid``'s stored propagated results that a new prompt on kept frame ``idx``
    makes stale: forward results between ``idx`` and the next locked frame, backward results between
    the previous locked frame and ``idx`` (``locked``: kept-frame indices). The rule corrections use;
    ``dl-utils segment`` reports (and ``--dry-run`` lists) the same frames."""
    locked = set(locked)
    nxt = min((i for i in locked if i > idx), default=len(source))
    prv = max((i for i in locked if i < idx), default=-1)
    stale = []
    for f, old in store.read_object(oid, decode=False).items():
        d = old.provenance.direction if old.provenance is not None else None
        if old.keyframe or old.source != Source.AUTO or d is None:
            continue
        try:
            i = source.index_of(f)
        except DlUtilsError:
            continue
        if (d == "forward" and idx < i < nxt) or (d == "backward" and prv < i < idx):
            stale.append(f)
    return sorted(stale)


class VideoSession:
    """Interactive SAM2 over one video (or image sequence) and one annotation store.

    ``source``: a :class:`~dl_utils.video_utils.FrameSource` or anything ``open_frames`` takes.
    ``store``: an :class:`~dl_utils.store.AnnotationStore` (or a path, opened or created); a store
    without media gets the source's, one with media must match it. Frames in every method are
    **source frame numbers**. The network comes from ``sam_model`` (an already built
    ``SAM2VideoPredictor``, shared, never modified) or is built from ``model``/``checkpoint``/
    ``image_size``/``device``. ``trim_memory`` drops what memory attention can no longer read;
    ``resume_warmup``: when a pass resumes after frames already in the store, at most this many frames
    before the first missing one are recomputed to rebuild SAM2's memory (``None``: recompute from the
    locked frame, exact but slower).

    Opening a session on a store that holds keyframes (prompts from an earlier session, or manual
    keyframes imported from CVAT) re-applies them as locked frames, so ``propagate`` continues.

    ``tracker``: ``"sam2"`` (SAM2 as upstream runs it) or ``"samurai"`` (motion-aware candidate
    choice and memory bank, parameters in ``samurai``, a :class:`SamuraiConfig`; see
    docs/sam2al_samurai.md). The store records the tracker its results were made with; a session
    with the other tracker is refused unless ``force=True``, which deletes the propagated results of
    the other tracker (prompts and keyframes stay) so the next ``propagate`` recomputes them.

    ``pipeline`` (default ``"auto"``: on for CUDA, off on a CPU, where it only competes with the
    network's own threads): ``propagate`` prepares the next frames on a background thread while
    the network runs on the current one, and a writer thread upscales, encodes and commits each
    computed frame (queue sizes in a :class:`Pipeline`; ``False``: everything on the caller's
    thread). The store's rows are the same either way; see :mod:`dl_utils.sam2al.pipeline` for what
    a kill loses and where the callback runs.

    ``dtype``: the compute precision, ``"bf16"``, ``"fp16"`` or ``"fp32"`` (default: bf16 on CUDA,
    fp32 elsewhere), run as autocast the way upstream's demos do; every instance's provenance
    records it (``precision``). bf16 and fp32 give upstream's masks exactly; fp16 stores SAM2's
    memories as float16 (upstream crashes under fp16 autocast, see the engine's ``_store_memory``).
    ``compile=True`` builds upstream's ``vos_optimized`` predictor (``torch.compile``: the first
    frames compile, minutes); a given ``sam_model`` must have been built compiled. On CUDA, frames
    reach the device from pinned memory without blocking (:class:`LazyFrames` ``pin_memory``).
    """

    def __init__(
        self,
        source: Any,
        store: AnnotationStore | str | os.PathLike[str],
        *,
        model: str = DEFAULT_MODEL,
        checkpoint: Any = None,
        image_size: int | None = None,
        device: Any = None,
        dtype: Any = None,
        sam_model: Any = None,
        trim_memory: bool = True,
        offload_video_to_cpu: bool = False,
        frame_cache: int = 16,
        resume_warmup: int | None = 16,
        download: bool = False,
        tracker: str = "sam2",
        samurai: SamuraiConfig | None = None,
        force: bool = False,
        pipeline: bool | Pipeline | str = "auto",
        compile: bool = False,
    ):
        require_sam2()
        import torch

        self.tracker = check_tracker(tracker)
        if samurai is not None and not isinstance(samurai, SamuraiConfig):
            raise InputError(f"samurai={samurai!r}: give a dl_utils.sam2al.SamuraiConfig(...) or leave it out")
        if samurai is not None and self.tracker != "samurai":
            raise InputError("samurai= parameters only apply with tracker='samurai'; set tracker='samurai' or drop them")
        self.samurai: SamuraiConfig | None = (samurai or SamuraiConfig()) if self.tracker == "samurai" else None

        from ..video_utils import FrameSource, open_frames

        self.source = source if isinstance(source, FrameSource) else open_frames(source)
        media = self.source.media_info()
        self.store = AnnotationStore.for_media(store, media)
        self._check_tracker(bool(force))
        if sam_model is None:
            sam_model = build_sam2_model(
                model, checkpoint, image_size=image_size, device=device, video=True, download=download,
                compile=bool(compile),
            )
        elif checkpoint is not None or device is not None or (image_size is not None and image_size != sam_model.image_size):
            raise InputError(
                "checkpoint=, device= and image_size= only apply when the network is built here; "
                "build sam_model with them (dl_utils.sam2_loader.build_sam2_model(..., video=True))"
            )
        elif compile and not is_compiled(sam_model):
            raise InputError(
                "compile=True only applies when the network is built here; build sam_model compiled "
                "(dl_utils.sam2_loader.build_sam2_model(..., video=True, compile=True)) or leave compile out"
            )
        if resume_warmup is not None and int(resume_warmup) < 0:
            raise InputError(f"resume_warmup={resume_warmup!r}: use a number of frames >= 0 or None")
        # the dtype before the engine: an fp16 engine stores its memories as fp16 (make_engine says
        # why); a sam_model without a device is refused by make_engine with its own message
        self.dtype = resolve_dtype(getattr(sam_model, "device", None) or torch.device("cpu"), dtype)
        self.engine = make_engine(sam_model, dtype=self.dtype)  # fp16: memories stored as fp16
        self.model_name: str = getattr(sam_model, "dl_utils_name", type(sam_model).__name__)
        self.device = self.engine.device
        self.trim_memory = bool(trim_memory)
        self.pipeline: Pipeline | None = as_pipeline(pipeline, self.device)
        self.resume_warmup = None if resume_warmup is None else int(resume_warmup)
        self.width, self.height = media.width, media.height  # the first frame's (all, in a video)
        self.media = media  # per-frame sizes of an image set of mixed sizes: media.size_of(frame)
        self._numbers = list(media.frames)
        self._cancel = threading.Event()
        self._locked: dict[int, set[int]] = {}  # object id -> locked frame indices
        self._origins: dict[int, Provenance] = {}  # object id -> where it came from (set_origin)
        self.peak_memory_frames = 0  # most non-conditioning outputs held at once (all objects)
        frames_dev = torch.device("cpu") if offload_video_to_cpu else self.device
        self.frames = LazyFrames(self.source, self.engine.image_size, frames_dev, cache_frames=frame_cache)
        self.state = self._init_state(offload_video_to_cpu)
        self._restore_keyframes()

    # ------------------------------------------------------------------ tracker record
    def _tracker_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"tracker": self.tracker}
        if self.samurai is not None:
            rec["samurai"] = self.samurai.to_dict()
        return rec

    def _stored_tracker(self) -> str | None:
        return stored_tracker(self.store)

    def _check_tracker(self, force: bool) -> None:
        have = self._stored_tracker()
        if have is None or have == self.tracker:
            return
        if not force:
            raise InputError(
                f"{self.store.path} holds results tracked with tracker={have!r}, not {self.tracker!r}; "
                "write to a new store (--out) or pass force=True (--force) to recompute them"
            )
        for obj in self.store.objects():  # drop the other tracker's propagated results, keep prompts
            gone = [f for f, inst in self.store.read_object(obj.id, decode=False).items()
                    if not inst.keyframe and inst.source == Source.AUTO
                    and (inst.provenance is None or inst.provenance.engine == "sam2-video")]
            if gone:
                self.store.delete_instances(object_id=obj.id, frames=gone)
        self.store.set_meta(TRACKER_META, self._tracker_record())

    # ------------------------------------------------------------------ state
    def _init_state(self, offload_video_to_cpu: bool) -> dict[str, Any]:
        """Upstream's ``init_state`` without loading the video (and without its frame-0 warm-up)."""
        dev = self.device
        return {
            "images": self.frames,
            "num_frames": len(self.frames),
            "offload_video_to_cpu": offload_video_to_cpu,
            "offload_state_to_cpu": False,
            "video_height": self.height,
            "video_width": self.width,
            "device": dev,
            "storage_device": dev,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }

    def _ctx(self):
        import contextlib

        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast_context(self.device, self.dtype))
        return stack

    def _index(self, frame: Any, oid: int | None = None) -> int:
        try:
            return self.source.index_of(frame)
        except (FrameIndexError, InputError) as e:
            who = f"object {oid}: " if oid is not None else ""
            raise FrameIndexError(f"{who}{e}") from None

    def frame_number(self, index: int) -> int:
        return self._numbers[index]

    @property
    def object_ids(self) -> list[int]:
        """Objects SAM2 tracks in this session (those with at least one locked frame)."""
        return [int(o) for o in self.state["obj_ids"]]

    def locked_frames(self, object_id: int | None = None) -> dict[int, list[int]] | list[int]:
        """Locked (conditioning) frames, as source frame numbers, per object or for one object."""
        if object_id is not None:
            oid = _as_oid(object_id)
            return [self._numbers[i] for i in sorted(self._locked.get(oid, ()))]
        return {oid: [self._numbers[i] for i in sorted(s)] for oid, s in sorted(self._locked.items())}

    def memory_info(self) -> dict[str, int]:
        """What SAM2's state holds now: per-object outputs and cached frames (memory is flat if bounded)."""
        cond = non_cond = 0
        for d in self.state["output_dict_per_obj"].values():
            cond += len(d["cond_frame_outputs"])
            non_cond += len(d["non_cond_frame_outputs"])
        info = {"cond_outputs": cond, "non_cond_outputs": non_cond,
                "cached_features": len(self.state["cached_features"])}
        info.update(self.frames.cache_info())
        return info

    def result(self, frame: int) -> Instances:
        """The store's instances of a frame (empty ``Instances`` when nothing was computed there)."""
        self._index(frame)
        return self.store.read_frame(int(frame))

    # ------------------------------------------------------------------ objects
    def _provenance(self, oid: int, **fields: Any) -> Provenance:
        """What this session's instances were made by (the model), with the object's origin (see
        :meth:`set_origin`) and per-instance ``fields``."""
        origin = self._origins.get(oid)
        precision = precision_name(self.dtype)
        if origin is None:
            return Provenance(engine="sam2-video", model=self.model_name, precision=precision, **fields)
        return replace(origin, engine="sam2-video", model=self.model_name, precision=precision, **fields)

    def set_origin(self, object_id: int, origin: Provenance) -> None:
        """Object-level facts (``detector``, ``caption``, ``tracker`` mode...) that every instance this
        session writes for the object carries from now on.

        A text-prompt tracker knows where an object came from, but the session writes its masks: the
        tracker hands the facts over here. ``engine``, ``model`` and the per-frame fields (direction,
        scores, area) are the session's own and replace the origin's. Held in memory: a session
        opened again starts without origins (the instances already written keep theirs).
        """
        self._origins[_as_oid(object_id)] = origin

    def _ensure_object(self, oid: int, label: str | None) -> None:
        known = {o.id: o for o in self.store.objects()}
        if oid in known:
            if label is not None and known[oid].label != label:
                raise InputError(
                    f"object {oid} is a {known[oid].label!r} in {self.store.path}, not a {label!r}; "
                    "leave label out or use another object id"
                )
            return
        if label is None or not str(label).strip():
            ids = ", ".join(map(str, sorted(known))) or "none yet"
            raise InputError(
                f"unknown object id {oid}: it is not in {self.store.path} (known: {ids}); pass "
                "label='<class name>' to create it"
            )
        self.store.add_object(str(label), id=oid)

    def remove_object(self, object_id: int, *, keep_results: bool = False) -> None:
        """Stop tracking an object; its instances and the object leave the store unless ``keep_results``."""
        oid = _as_oid(object_id)
        if oid not in self._locked and oid not in {o.id for o in self.store.objects()}:
            raise InputError(f"unknown object id {oid}: nothing to remove")
        with self._ctx():
            self.engine.remove_object(self.state, oid, strict=False, need_output=False)
        self._locked.pop(oid, None)
        if not keep_results:
            self.store.delete_object(oid)

    # ------------------------------------------------------------------ prompts
    def add_points(
        self,
        frame: int,
        object_id: int,
        points: Any,
        labels: Any = None,
        *,
        label: str | None = None,
        box: Any = None,
    ) -> Instance:
        """Clicks on ``frame`` for an object: ``[[x, y, 1|0], ...]`` or ``points=[[x, y]]`` + ``labels``.

        Replaces the object's earlier clicks on that frame (send all of them each time); the previous
        mask of the object on that frame, if any, is fed back as SAM2 does for refinement. The frame
        becomes locked; the instance is written to the store at once (semi-auto, keyframe, prompts
        recorded) and returned. ``label`` creates the object when the id is new.
        """
        oid = _as_oid(object_id)
        if labels is not None and points is not None:
            p = np.asarray(points, dtype=np.float64)
            lab = np.asarray(labels, dtype=np.float64).reshape(-1)
            if p.ndim != 2 or p.shape[1] != 2 or len(lab) != len(p):
                raise InputError(
                    f"object {oid}, frame {frame}: {len(p)} points with {len(lab)} labels; give "
                    "points=[[x, y], ...] and one label (1 object, 0 background) per point"
                )
            points = np.concatenate([p, lab[:, None]], axis=1)
        return self._add_prompt(frame, oid, points=points, box=box, label=label)

    def add_box(self, frame: int, object_id: int, box: Any, *, points: Any = None,
                label: str | None = None) -> Instance:
        """A box ``(x1, y1, x2, y2)`` in source pixels (optionally with clicks) on ``frame``."""
        oid = _as_oid(object_id)
        if box is None:
            raise InputError(f"object {oid}, frame {frame}: box is None; give (x1, y1, x2, y2)")
        return self._add_prompt(frame, oid, points=points, box=box, label=label)

    def add_mask(self, frame: int, object_id: int, mask: Any, *, label: str | None = None) -> Instance:
        """A drawn mask (bool, source size) on ``frame``: locked, stored as given (manual)."""
        import torch

        oid = _as_oid(object_id)
        idx = self._index(frame, oid)
        m = np.asarray(mask)
        h, w = self.frame_hw(frame)
        if m.ndim != 2 or m.shape != (h, w):
            raise MaskError(
                f"object {oid}, frame {frame}: mask has shape {m.shape}, the frame is "
                f"{w}x{h}; give a bool mask of shape ({h}, {w})"
            )
        m = m.astype(bool)
        self._ensure_object(oid, label)
        with self._ctx():
            # upstream's add_new_mask preprocessing
            t = torch.tensor(m, dtype=torch.bool)[None, None].float().to(self.device)
            s = self.engine.image_size
            if t.shape[-2:] != (s, s):
                t = torch.nn.functional.interpolate(t, size=(s, s), align_corners=False, mode="bilinear",
                                                    antialias=True)
                t = (t >= 0.5).float()
            out, _ = self._run_prompt(idx, oid, None, t, None)
        inst = Instance(oid, mask=m, score=None, source=Source.MANUAL, keyframe=True,
                        clicks=Clicks(mask="given"),
                        provenance=self._provenance(oid, object_score=_score(out), area=int(m.sum())))
        self._after_prompt(idx, oid, inst)
        return inst

    def _add_prompt(self, frame: int, oid: int, *, points: Any, box: Any, label: str | None,
                    refine: bool = True, write: bool = True) -> Instance:
        import torch

        idx = self._index(frame, oid)
        hw = self.frame_hw(frame)
        try:
            pts = parse_points(points, oid, hw)
            bx = None if box is None else parse_box(box, oid, hw)
        except InputError as e:
            raise InputError(f"frame {frame}, {e}") from None
        if pts is None and bx is None:
            raise InputError(
                f"frame {frame}, object {oid}: empty prompt; give points=[[x, y, 1]] and/or "
                "box=(x1, y1, x2, y2) in source pixels"
            )
        if write:
            self._ensure_object(oid, label)
        with self._ctx():
            # the tensors upstream's add_new_points_or_box builds, op for op
            if pts is None:
                p = torch.zeros(0, 2, dtype=torch.float32)
                lab = torch.zeros(0, dtype=torch.int32)
            else:
                p = torch.tensor(pts[0].tolist(), dtype=torch.float32)
                lab = torch.tensor(pts[1].tolist(), dtype=torch.int32)
            p, lab = p.unsqueeze(0), lab.unsqueeze(0)
            if bx is not None:
                b = torch.tensor(bx.tolist(), dtype=torch.float32).reshape(1, 2, 2)
                p = torch.cat([b, p], dim=1)
                lab = torch.cat([torch.tensor([2, 3], dtype=torch.int32).reshape(1, 2), lab], dim=1)
            p = p / torch.tensor([hw[1], hw[0]]).to(p.device)
            p = p * self.engine.image_size
            point_inputs = {"point_coords": p.to(self.device), "point_labels": lab.to(self.device)}
            prev, refined = self._prev_logits(idx, oid, frame) if refine else (None, False)
            out, iou = self._run_prompt(idx, oid, point_inputs, None, prev)
            mask = self._video_masks([out["pred_masks"]], hw)[0]
        clicks = Clicks(
            points=() if pts is None else tuple((float(x), float(y), int(v)) for (x, y), v in zip(pts[0], pts[1])),
            box=None if bx is None else cast(Box, tuple(float(v) for v in bx)),
            refined=bool(refined),
        )
        inst = Instance(oid, mask=mask, score=float(iou), source=Source.SEMI_AUTO, keyframe=True, clicks=clicks,
                        provenance=self._provenance(oid, object_score=_score(out), area=int(mask.sum())))
        if write:
            self._after_prompt(idx, oid, inst)
        return inst

    def _prev_logits(self, idx: int, oid: int, frame: int):
        """Logits to refine: this session's output on the frame, else the store's mask as logits."""
        import torch

        obj_idx = self.state["obj_id_to_idx"].get(oid)
        if obj_idx is not None:
            for d in (self.state["temp_output_dict_per_obj"][obj_idx], self.state["output_dict_per_obj"][obj_idx]):
                prev = d["cond_frame_outputs"].get(idx)
                if prev is not None and prev["pred_masks"] is not None:
                    return torch.clamp(prev["pred_masks"].to(self.device), -32.0, 32.0), True
        inst = self.store.read_frame(frame).by_object().get(oid)
        if inst is None or inst.mask is None or inst.is_empty:
            return None, False
        import cv2

        low = self.engine.image_size // 4
        # SAM2Base._use_mask_as_output's scale/bias, on the mask squashed to the model's square input
        small = cv2.resize(inst.mask.astype(np.float32), (low, low), interpolation=cv2.INTER_AREA)
        logits = small * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
        return torch.from_numpy(logits)[None, None].to(self.device), True

    def _run_prompt(self, idx: int, oid: int, point_inputs: Any, mask_inputs: Any, prev: Any):
        """Upstream's add_new_points_or_box / add_new_mask core, always as an initial conditioning frame.

        A prompt never reads SAM2's memory (``is_init_cond_frame=True``), so its result does not
        depend on what trimming kept; it is stored as a conditioning output (locked frame).
        """
        eng, st = self.engine, self.state
        obj_idx = eng._obj_id_to_idx(st, oid)
        if point_inputs is not None:
            st["point_inputs_per_obj"][obj_idx][idx] = point_inputs
            st["mask_inputs_per_obj"][obj_idx].pop(idx, None)
        else:
            st["mask_inputs_per_obj"][obj_idx][idx] = mask_inputs
            st["point_inputs_per_obj"][obj_idx].pop(idx, None)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
            warnings.filterwarnings("ignore", message=".*Skipping the post-processing.*")
            out, _ = eng._run_single_frame_inference(
                inference_state=st, output_dict=st["output_dict_per_obj"][obj_idx], frame_idx=idx,
                batch_size=1, is_init_cond_frame=True, point_inputs=point_inputs, mask_inputs=mask_inputs,
                reverse=False, run_mem_encoder=False, prev_sam_mask_logits=prev,
            )
        st["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"][idx] = out
        st["output_dict_per_obj"][obj_idx]["cond_frame_outputs"].pop(idx, None)
        st["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"].pop(idx, None)
        return out, float(eng.dl_last_iou[0])

    def take_corrections(self, corrections: Iterable[tuple[int, int]]) -> int:
        """Treat instances someone else wrote into the store (a CVAT pull, an import) as corrections.

        ``corrections`` are ``(frame, object_id)`` pairs (``PullReport.corrections``). Each non-empty
        mask becomes a locked frame as with :meth:`add_mask` (kept exactly as stored), so the results
        it makes stale are dropped and the next :meth:`propagate` recomputes them. Empty instances
        (the object was deleted there) stay as they are. Returns how many frames were locked.
        """
        n = 0
        labels = {o.id: o.label for o in self.store.objects()}
        for frame, oid in sorted({(int(f), _as_oid(o)) for f, o in corrections}):
            inst = self.store.read_frame(frame).by_object().get(oid)
            if inst is None or inst.mask is None or not inst.mask.any():
                continue
            kept = inst
            self.add_mask(frame, oid, inst.mask, label=labels.get(oid))
            # add_mask records the mask as manual; keep what the store had (source, CVAT marker)
            self.store.write_frame(frame, [kept.replace(keyframe=True)])
            n += 1
        return n

    def clear_prompts(self, frame: int, object_id: int) -> None:
        """Undo an object's prompts on ``frame``: the frame is no longer locked and every propagated
        result of the object goes (SAM2 attends to all conditioning frames, so each one was computed
        with this frame in memory); the next ``propagate`` recomputes the object from its remaining
        locked frames, exactly as if ``frame`` had never been prompted. When it was the object's only
        locked frame, the object leaves SAM2's state with all its results; it stays in the store (its
        label, colour) for new prompts."""
        oid = _as_oid(object_id)
        idx = self._index(frame, oid)
        locked = self._locked.get(oid, set())
        if idx not in locked:
            have = [self._numbers[i] for i in sorted(locked)]
            raise InputError(f"object {oid} has no prompt on frame {frame}; its prompted frames: {have or 'none'}")
        if locked == {idx}:
            with self._ctx():
                self.engine.remove_object(self.state, oid, strict=False, need_output=False)
            self._locked.pop(oid, None)
            self.store.delete_instances(object_id=oid)
            return
        with self._ctx():
            self.engine.clear_all_prompts_in_frame(self.state, idx, oid, need_output=False)
        locked.discard(idx)
        kept = {self._numbers[i] for i in locked}
        self.store.delete_instances(object_id=oid, frames=[f for f in self.store.frames_done(oid) if f not in kept])

    def _dependents(self, idx: int, oid: int) -> list[int]:
        """Stored propagated frames of ``oid`` computed from locked frame ``idx`` (up to the neighbours)."""
        return dependent_frames(self.store, self.source, oid, idx, self._locked.get(oid, set()))

    def _after_prompt(self, idx: int, oid: int, inst: Instance) -> None:
        """Lock the frame, store the instance, delete the results that depended on the old frame."""
        self._locked.setdefault(oid, set()).add(idx)
        frame = self._numbers[idx]
        stale = self._dependents(idx, oid)
        self.store.write_frame(frame, [inst])
        if stale:
            self.store.delete_instances(object_id=oid, frames=stale)

    def _restore_keyframes(self) -> None:
        """Re-apply the keyframes of an existing store as locked frames (resume)."""
        kept = []
        for obj in self.store.objects():  # one query per object, not per frame
            kept += [(f, obj.id) for f, inst in self.store.read_object(obj.id, decode=False).items()
                     if inst.keyframe]
        for frame, oid in sorted(kept):
            try:
                idx = self.source.index_of(frame)
            except DlUtilsError:
                continue
            inst = self.store.read_frame(frame).by_object()[oid]
            c = inst.clicks
            if c is not None and (c.points or c.box is not None) and inst.source == Source.SEMI_AUTO:
                self._add_prompt(frame, oid, points=[list(pt) for pt in c.points] or None,
                                 box=None if c.box is None else list(c.box), label=None,
                                 refine=c.refined, write=False)
            elif inst.mask is not None:
                self._replay_mask(idx, oid, inst.mask)
            else:
                continue
            self._locked.setdefault(oid, set()).add(idx)

    def _replay_mask(self, idx: int, oid: int, mask: np.ndarray) -> None:
        import torch

        with self._ctx():
            t = torch.tensor(mask, dtype=torch.bool)[None, None].float().to(self.device)
            s = self.engine.image_size
            if t.shape[-2:] != (s, s):
                t = torch.nn.functional.interpolate(t, size=(s, s), align_corners=False, mode="bilinear",
                                                    antialias=True)
                t = (t >= 0.5).float()
            self._run_prompt(idx, oid, None, t, None)

    # ------------------------------------------------------------------ propagation
    def cancel(self) -> None:
        """Stop the running ``propagate`` after the current frame (thread-safe; what is written stays)."""
        self._cancel.set()

    def frame_hw(self, frame: int) -> tuple[int, int]:
        """(height, width) of source frame ``frame`` (each image at its own size in a mixed set)."""
        if self.media.frame_sizes is None:
            return self.height, self.width
        w, h = self.media.size_of(frame)
        return h, w

    def _video_masks(self, pred_masks: Sequence[Any], hw: tuple[int, int] | None = None) -> np.ndarray:
        """Low-res logits -> bool masks at source size, as upstream's ``_get_orig_video_res_output``."""
        import torch

        x = torch.cat([m.to(self.device) for m in pred_masks], dim=0)
        x = torch.nn.functional.interpolate(x.float(), size=hw or (self.height, self.width), mode="bilinear",
                                            align_corners=False)
        return (x[:, 0] > 0.0).cpu().numpy()

    def _range(self, start: Any, stop: Any) -> tuple[int, int]:
        """Kept-frame indices of the inclusive source-frame range ``start..stop``.

        As the frame sources (and CVAT) do, a ``stop`` past the last frame means "to the end" and a
        bound between kept frames (another ``step``) takes the kept frames inside the range.
        """
        import bisect

        nums = self._numbers
        for name, v in (("start", start), ("stop", stop)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise InputError(f"{name}={v!r}: give a source frame number (an integer)")
        if start is not None and start < 0:
            raise InputError(f"start={start}: give a source frame number >= 0")
        if start is not None and stop is not None and start > stop:
            raise InputError(f"start={start} is after stop={stop}; give start <= stop (source frame numbers)")
        lo = 0 if start is None else bisect.bisect_left(nums, int(start))
        hi = len(nums) - 1 if stop is None else bisect.bisect_right(nums, int(stop)) - 1
        if lo >= len(nums) or hi < 0 or lo > hi:
            raise FrameIndexError(
                f"no kept frame of {self.source.name} lies in start={start}..stop={stop} (kept frames "
                f"{nums[0]}..{nums[-1]}, step {self.source.step}); give a range that overlaps them"
            )
        return lo, hi

    def _plan(self, reverse: bool, lo: int, hi: int) -> dict[int, _Plan]:
        plans: dict[int, _Plan] = {}
        for oid in self.object_ids:
            locked = sorted(self._locked.get(oid, ()))
            if not locked:
                continue
            done = set()
            for f in self.store.frames_done(oid):
                try:
                    done.add(self.source.index_of(f))
                except DlUtilsError:
                    pass
            if not reverse:
                cand = range(max(lo, locked[0] + 1), hi + 1)
            else:
                cand = range(min(hi, locked[-1] - 1), lo - 1, -1)
            missing = [i for i in cand if i not in done and i not in self._locked[oid]]
            if not missing:
                continue
            first = missing[0]
            if not reverse:
                anchor = max(i for i in locked if i < first)
                gap = first - anchor
                begin = anchor if self.resume_warmup is None or gap <= self.resume_warmup + 1 else first - self.resume_warmup
            else:
                anchor = min(i for i in locked if i > first)
                gap = anchor - first
                begin = anchor if self.resume_warmup is None or gap <= self.resume_warmup + 1 else first + self.resume_warmup
            plans[oid] = _Plan(begin, missing[-1], set(missing), anchor)
        return plans

    def _oldest_needed(self, g: int, reverse: bool) -> int:
        """The farthest frame behind ``g`` whose non-conditioning output SAM2 reads when tracking ``g``.

        Mirrors the frame choices of ``SAM2Base._prepare_memory_conditioned_features``: the previous
        frame, ``num_maskmem - 2`` more frames every ``memory_temporal_stride_for_eval`` frames, and
        ``min(num_frames, max_obj_ptrs_in_encoder) - 1`` object pointers. All of these move with ``g``,
        so once ``g`` is processed, frames behind ``_oldest_needed(g + 1)`` are never read again.
        """
        eng = self.engine
        r = 1 if eng.training else eng.memory_temporal_stride_for_eval
        reads = [g + 1 if reverse else g - 1]
        for t_rel in range(2, eng.num_maskmem):
            if not reverse:
                reads.append(((g - 2) // r) * r - (t_rel - 2) * r)
            else:
                reads.append(-(-(g + 2) // r) * r + (t_rel - 2) * r)
        if eng.use_obj_ptrs_in_encoder:
            n = min(self.state["num_frames"], eng.max_obj_ptrs_in_encoder)
            if n > 1:
                reads.append(g + (n - 1) if reverse else g - (n - 1))
        return max(reads) if reverse else min(reads)

    def _trim(self, non_cond: dict[int, Any], f: int, reverse: bool, motion: _Motion | None = None) -> None:
        """Drop outputs memory attention will not read again. In SAMURAI mode the memory bank may
        reach behind SAM2's window: the ``num_maskmem - 1`` most recent admitted frames are kept too
        (frames admitted later are newer, so older admitted ones can never come back): still flat."""
        keep = self._oldest_needed(f - 1 if reverse else f + 1, reverse)
        protect: set[int] = set()
        if motion is not None:  # non_cond is bounded, motion.admitted grows with the pass: scan the former
            ok = sorted((g for g in non_cond if motion.admitted.get(g)), reverse=reverse)
            protect = set(ok[-(self.engine.num_maskmem - 1):]) if self.engine.num_maskmem > 1 else set()
        for t in [t for t in non_cond if (t > keep if reverse else t < keep) and t not in protect]:
            del non_cond[t]
            if motion is not None:
                motion.admitted.pop(t, None)  # never a memory candidate again

    def propagate(
        self,
        direction: str = "forward",
        start: int | None = None,
        stop: int | None = None,
        callback: Callable[[int, Instances], Any] | None = None,
        progress: bool = True,
        objects: Iterable[int] | None = None,
    ) -> dict[str, Any]:
        """Track every object (or just ``objects``) over ``start..stop`` (source frames, inclusive), writing each frame as produced.

        ``forward`` fills each object's missing frames after its first locked frame, ``backward``
        those before its last locked frame, ``both`` forward then backward (so frames before an
        object's first prompt are filled too). Frames already in the store are not recomputed (resume,
        corrections); locked frames keep their prompt's result. ``callback(frame, instances)`` gets
        each written frame (it may call :meth:`cancel`). Returns a summary dict; the run is recorded
        in the store (``done``, ``cancelled`` on cancel or Ctrl-C, ``failed`` on an error).
        """
        if direction not in DIRECTIONS:
            raise InputError(f"direction={direction!r}: use one of {', '.join(DIRECTIONS)}")
        lo, hi = self._range(start, stop)
        if not self.object_ids:
            raise InputError("no prompts yet: add points, a box or a mask for an object on some frame first")
        only = None
        if objects is not None:
            only = {_as_oid(o) for o in objects}
            unknown = sorted(only - set(self.object_ids))
            if unknown:
                raise InputError(f"objects {unknown} have no prompts in this session; known: {self.object_ids}")
        passes = {"forward": [False], "backward": [True], "both": [False, True]}[direction]
        self._cancel.clear()
        t0 = time.perf_counter()
        params = {"direction": direction, "start": self._numbers[lo], "stop": self._numbers[hi],
                  "model": self.model_name, "objects": sorted(only) if only is not None else self.object_ids}
        if self.tracker != "sam2":  # a SAM2 run records nothing new: stores stay as they were
            params["tracker"] = self._tracker_record()
            if self.store.get_meta(TRACKER_META) != self._tracker_record():
                self.store.set_meta(TRACKER_META, self._tracker_record())
        run_id = self.store.begin_run("propagate", params)
        stats = {"frames_written": 0, "instances_written": 0, "frames_computed": 0}
        status = "failed"
        try:
            with self._ctx():
                self.engine.propagate_in_video_preflight(self.state)
                for reverse in passes:
                    self._pass(reverse, lo, hi, callback, progress, run_id, stats, only)
                    if self._cancel.is_set():
                        break
            status = "cancelled" if self._cancel.is_set() else "done"
        except KeyboardInterrupt:
            status = "cancelled"
            raise
        finally:
            self.store.finish_run(run_id, status)
        return {"run_id": run_id, "status": status, "direction": direction,
                "start": self._numbers[lo], "stop": self._numbers[hi], "objects": self.object_ids,
                **stats, "seconds": round(time.perf_counter() - t0, 3)}

    def _pass(self, reverse: bool, lo: int, hi: int, callback, progress: bool, run_id: int,
              stats: dict[str, int], only: set[int] | None = None) -> None:
        from tqdm.auto import tqdm

        eng, st = self.engine, self.state
        plans = self._plan(reverse, lo, hi)
        if only is not None:
            plans = {oid: p for oid, p in plans.items() if oid in only}
        if not plans:
            return
        # each pass starts from the locked frames' memory alone: nothing a previous pass (possibly
        # trimmed) left behind is read, so trimmed and untrimmed sessions give the same masks
        for oid in plans:
            st["output_dict_per_obj"][st["obj_id_to_idx"][oid]]["non_cond_frame_outputs"].clear()
        step = -1 if reverse else 1
        first = max(p.begin for p in plans.values()) if reverse else min(p.begin for p in plans.values())
        last = min(p.end for p in plans.values()) if reverse else max(p.end for p in plans.values())
        order = range(first, last + step, step)
        name = "backward" if reverse else "forward"
        motions = {oid: self._rebuild_motion(oid, p, reverse) for oid, p in plans.items()} if self.samurai else {}
        bar = tqdm(order, desc=f"propagate {name}", unit="frame", disable=None if progress else True)
        pipe = self.pipeline
        writer = FrameWriter(self._cancel, pipe.write_queue if pipe is not None else None)
        # the image encoder runs ahead on the decode thread, except in a compiled network (its CUDA
        # graphs are recorded per thread): that one's decode thread prepares the frame tensors only
        encoder_ahead = pipe is not None and not is_compiled(self.engine)
        if pipe is not None:  # the frames the network will run on (every object locked there: none)
            need = [f for f in order if any(
                (p.end <= f <= p.begin if reverse else p.begin <= f <= p.end)
                and f not in st["output_dict_per_obj"][st["obj_id_to_idx"][oid]]["cond_frame_outputs"]
                for oid, p in plans.items())]
            self.frames.start_ahead(need, pipe.decode_ahead, prepare=self._features if encoder_ahead else None)
        finished = False
        try:
            for f in bar:
                if self._cancel.is_set():
                    break
                writer.check()
                active = [oid for oid, p in plans.items()
                          if (p.end <= f <= p.begin if reverse else p.begin <= f <= p.end)]
                if encoder_ahead:
                    feats = self.frames.take_ahead(f)
                    if feats is not None:  # the image encoder already ran on f: SAM2 finds it cached
                        st["cached_features"] = {f: feats}
                written_ids, outs, ious = [], [], []
                made: dict[int, tuple[np.ndarray | None, dict[str, Any]]] = {}  # SAMURAI: mask, provenance extra
                for oid in active:
                    obj_idx = st["obj_id_to_idx"][oid]
                    od = st["output_dict_per_obj"][obj_idx]
                    motion = motions.get(oid)
                    if f in od["cond_frame_outputs"]:
                        if motion is not None:  # a prompt/correction: the filter restarts from its mask
                            motion.track.reinit(self._stored_box(oid, f, od["cond_frame_outputs"][f])[0])
                        continue  # a locked frame: its prompt's output is used as is
                    call = None
                    if motion is not None:
                        motion.track.begin_frame()
                        call = SamuraiCall(motion.track, self.frame_hw(self._numbers[f]), memory_frames(
                            f, od["non_cond_frame_outputs"].keys(), motion.admitted, eng.num_maskmem - 1, reverse))
                        eng.dl_samurai = call
                    try:
                        with warnings.catch_warnings():
                            warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
                            warnings.filterwarnings("ignore", message=".*Skipping the post-processing.*")
                            out, _ = eng._run_single_frame_inference(
                                inference_state=st, output_dict=od, frame_idx=f, batch_size=1,
                                is_init_cond_frame=False, point_inputs=None, mask_inputs=None,
                                reverse=reverse, run_mem_encoder=True,
                            )
                    finally:
                        eng.dl_samurai = None
                    od["non_cond_frame_outputs"][f] = out
                    stats["frames_computed"] += 1
                    if f in plans[oid].write:
                        written_ids.append(oid)
                        outs.append(out)
                        ious.append(float(eng.dl_last_iou[0]))
                    if motion is not None and call is not None:
                        made[oid] = self._samurai_step(oid, f, out, call, motion, f in plans[oid].write)
                    if self.trim_memory:
                        self._trim(od["non_cond_frame_outputs"], f, reverse, motion)
                held = sum(len(d["non_cond_frame_outputs"]) for d in st["output_dict_per_obj"].values())
                self.peak_memory_frames = max(self.peak_memory_frames, held)
                if not written_ids:
                    continue
                upscaled = None
                if not made and (pipe is None or self.device.type == "cpu"):
                    # on a CPU the upscale stays here: torch's threads on the writer would fight
                    # this thread's for the same cores (on a GPU it is a device sync: the writer's)
                    upscaled = self._video_masks([o["pred_masks"] for o in outs], self.frame_hw(self._numbers[f]))
                writer.put(functools.partial(
                    self._commit, self._numbers[f], name, written_ids,
                    [(o["pred_masks"], o["object_score_logits"]) for o in outs], ious,
                    {oid: made[oid] for oid in written_ids if oid in made}, run_id, stats, callback, upscaled))
            finished = True
        finally:
            if pipe is not None:
                self.frames.stop_ahead()
            writer.close(raise_error=finished)  # commits what is queued (a cancel drops it)
            bar.close()
            if self.trim_memory:  # the next pass starts from the locked frames: nothing here is read again
                for d in st["output_dict_per_obj"].values():
                    d["non_cond_frame_outputs"].clear()

    def _features(self, idx: int) -> tuple[Any, dict[str, Any]]:
        """The image and image-encoder output of kept frame ``idx``, as SAM2's
        ``_get_image_feature`` computes them on a cache miss (same ops, same context): run on the
        decode thread of a pipelined pass, so the encoder of the next frames runs while the memory
        attention, mask decoder and memory encoder of the current frame run on the pass's thread.
        The encoder does not read the memory, so this changes no result."""
        with self._ctx():
            image = self.frames._tensor(idx, prefetch=False).to(self.device).float().unsqueeze(0)
            return image, self.engine.forward_image(image)

    def _commit(self, frame: int, name: str, oids: list[int], outs: list[tuple[Any, Any]], ious: list[float],
                made: dict[int, tuple[np.ndarray | None, dict[str, Any]]], run_id: int,
                stats: dict[str, int], callback: Callable[[int, Instances], Any] | None,
                upscaled: np.ndarray | None = None) -> None:
        """One computed frame into the store (one transaction), then the callback: the writer's job.

        ``outs``: each object's ``(pred_masks, object_score_logits)``, upscaled and read back here
        (on the writer thread when pipelined: on a GPU the host copy waits for the device there, not
        on the thread that drives the network); ``upscaled``: the masks already at source size (on
        a CPU, where the upscale stays on the pass's thread); ``made``: SAMURAI's masks and
        provenance extras, already at source size (its filter needed them on the pass's thread)."""
        with self._ctx():
            if made:
                masks = np.stack([cast(np.ndarray, made[oid][0]) for oid in oids])
            elif upscaled is not None:
                masks = upscaled
            else:
                masks = self._video_masks([pm for pm, _ in outs], self.frame_hw(frame))
            insts = []
            for oid, (_, logit), iou, m in zip(oids, outs, ious, masks):
                area = int(m.sum())
                fields_: dict[str, Any] = {"direction": name, "object_score": float(logit.float().reshape(-1)[0]),
                                           "area": area}
                if oid in made:
                    origin = self._origins.get(oid)
                    fields_["extra"] = {**(dict(origin.extra) if origin is not None else {}), **made[oid][1]}
                insts.append(Instance(
                    oid, mask=m, score=iou if area else None, source=Source.AUTO,
                    provenance=self._provenance(oid, **fields_),
                ))
        self.store.write_frame(frame, insts, run_id=run_id)
        stats["frames_written"] += 1
        stats["instances_written"] += len(insts)
        if callback is not None:
            callback(frame, Instances(insts, frame=frame))

    # ------------------------------------------------------------------ SAMURAI
    def _stored_box(self, oid: int, idx: int, out: dict[str, Any] | None = None):
        """Box of the object's instance in the store on kept frame ``idx`` (what the filter measures);
        when the store has none, the box of ``out``'s mask (a frame computed but not written)."""
        from .samurai import mask_box

        inst = self.store.read_frame(self._numbers[idx], decode=False).by_object().get(oid)
        if inst is not None:
            return inst.box, inst.score
        if out is None:
            return None, None
        m = self._video_masks([out["pred_masks"]], self.frame_hw(self._numbers[idx]))[0]
        return mask_box(m), None

    def _samurai_step(self, oid: int, f: int, out: dict[str, Any], call: SamuraiCall, motion: _Motion,
                      write: bool) -> tuple[np.ndarray | None, dict[str, Any]]:
        """After SAMURAI tracked frame ``f``: admit it to the memory bank or not, and feed the filter
        the box of the object's mask in the store (the one written now, or the one already there)."""
        from .samurai import Choice, mask_box

        assert self.samurai is not None
        ch = call.choice or Choice(0, float(self.engine.dl_last_iou[0]), None, None)
        motion.admitted[f] = admits(self.samurai, ch.iou, _score(out), ch.kf_score)
        mask = None
        if write:
            mask = self._video_masks([out["pred_masks"]], self.frame_hw(self._numbers[f]))[0]
            motion.track.measure(mask_box(mask), ch.iou)
        else:
            box, score = self._stored_box(oid, f, out)
            motion.track.measure(box, score)
        extra = {"samurai_candidate": ch.index, "samurai_kf_score": ch.kf_score,
                 "samurai_memory": motion.admitted[f],
                 "samurai_predicted_box": None if ch.predicted is None else [float(v) for v in ch.predicted]}
        return mask, extra

    def _rebuild_motion(self, oid: int, plan: _Plan, reverse: bool) -> _Motion:
        """The filter a pass starting at ``plan.begin`` would have, rebuilt from the store.

        The filter's state before frame ``g`` depends only on the boxes (and predicted IoUs) of the
        object's stored masks from the locked ``anchor`` up to ``g`` in pass order: a resumed pass
        replays them (the anchor's mask re-initialises, every later frame predicts then measures;
        a frame without a stored instance coasts) and arrives at the very state the interrupted
        pass had. Frames the pass then recomputes to rebuild SAM2's memory measure their stored
        masks too, as the live pass did."""
        assert self.samurai is not None
        motion = _Motion(MotionTrack(self.samurai))
        if plan.anchor is None or plan.anchor == plan.begin:
            return motion  # the pass starts on the locked frame: the loop initialises there
        stored = self.store.read_object(oid, decode=False)
        step = -1 if reverse else 1
        for g in range(plan.anchor, plan.begin, step):
            inst = stored.get(self._numbers[g])
            box = None if inst is None else inst.box
            if g == plan.anchor:
                motion.track.reinit(box)
            else:
                motion.track.replay(box, None if inst is None else inst.score)
        return motion

    # ------------------------------------------------------------------ review
    def review_frames(self, *, min_iou: float = 0.5, area_change: float = 0.5,
                      objects: Iterable[int] | None = None) -> list[ReviewItem]:
        """Frames worth a human look (see :func:`review_frames`)."""
        return review_frames(self.store, min_iou=min_iou, area_change=area_change, objects=objects)

    def close(self) -> None:
        self.state["cached_features"].clear()
        self.frames.close()
        self.source.close()


def _score(out: dict[str, Any]) -> float:
    return float(out["object_score_logits"].float().reshape(-1)[0])
