"""SAMURAI motion-aware tracking (Yang et al. 2024) on top of SAM2's own weights.

SAMURAI changes two decisions SAM2 makes on every tracked frame and nothing else:

1. **which of the decoder's three candidate masks is kept**: once a per-object Kalman filter on the
   mask's box is *stable*, the kept candidate maximises
   ``w * IoU(candidate box, predicted box) + (1 - w) * predicted mask IoU`` instead of the predicted
   IoU alone (``w = kf_score_weight``); before that SAM2's choice stands and only feeds the filter;
2. **which past frames are memory**: instead of the last ``num_maskmem - 1`` frames, the
   ``num_maskmem - 1`` most recent frames whose predicted IoU, object score and motion score pass
   thresholds (the previous frame is always kept, as in the paper's implementation).

This module holds the pure parts (the configuration, the filter, the selection and admission rules,
the per-object state a pass carries and can rebuild from the store) and the two network seams
(:func:`samurai_sam_heads`, :func:`samurai_memory_features`) that :mod:`.engine` routes to while a
:class:`SamuraiCall` is set for the frame. Everything here is our own code written from the paper's
equations and from upstream SAM2's structure; see docs/sam2al_samurai.md.

Coordinates: boxes are measured on the masks **as written to the store** (source pixels, pixel
edges: a one-pixel mask is the box ``(x, y, x + 1, y + 1)``). That is what makes resume exact: the
filter a resumed pass rebuilds from the store saw the very boxes the live pass saw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError

TRACKERS = ("sam2", "samurai")
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 (pixel edges)


# ----------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SamuraiConfig:
    """SAMURAI's parameters; the defaults are the reference implementation's (``configs/samurai``,
    tiny/small/base+ models; its large config uses ``kf_score_weight=0.15``).

    ``stable_frames_threshold``: frames of accepted measurements before the motion score is used.
    ``stable_ious_threshold``: a kept mask whose predicted IoU is below it resets the filter.
    ``min_obj_score_logits``: object-score logit above which the object counts as present (SAM2: 0).
    ``kf_score_weight``: weight of the motion IoU in the candidate score (0 = SAM2's choice).
    ``memory_bank_iou_threshold`` / ``memory_bank_obj_score_threshold`` /
    ``memory_bank_kf_score_threshold``: a frame enters the memory bank only when its predicted IoU,
    object-score logit and motion score (when it has one) are all strictly above these.
    ``std_weight_position`` / ``std_weight_velocity``: the filter's noise, as fractions of the box
    height per frame (ByteTrack's 1/20 and 1/160).
    """

    stable_frames_threshold: int = 15
    stable_ious_threshold: float = 0.3
    min_obj_score_logits: float = -1.0
    kf_score_weight: float = 0.25
    memory_bank_iou_threshold: float = 0.5
    memory_bank_obj_score_threshold: float = 0.0
    memory_bank_kf_score_threshold: float = 0.0
    std_weight_position: float = 1.0 / 20
    std_weight_velocity: float = 1.0 / 160

    # name -> (low, high, what to give); bounds inclusive, None = unbounded
    _RANGES: ClassVar[dict[str, tuple[float, float | None, str]]] = {
        "stable_frames_threshold": (1, None, "an integer >= 1"),
        "stable_ious_threshold": (0.0, 1.0, "a number in [0, 1]"),
        "min_obj_score_logits": (-math.inf, math.inf, "a logit (any number, SAM2 uses 0)"),
        "kf_score_weight": (0.0, 1.0, "a number in [0, 1]"),
        "memory_bank_iou_threshold": (-1.0, 1.0, "a number in [-1, 1] (below 0 admits every IoU)"),
        "memory_bank_obj_score_threshold": (-math.inf, math.inf, "a logit (any number, -inf admits every frame)"),
        "memory_bank_kf_score_threshold": (-1.0, 1.0, "a number in [-1, 1] (below 0 ignores motion)"),
        "std_weight_position": (0.0, None, "a number > 0"),
        "std_weight_velocity": (0.0, None, "a number > 0"),
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            lo, hi, what = self._RANGES[f.name]
            if f.name == "stable_frames_threshold":
                ok = not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= lo
                if ok:
                    object.__setattr__(self, f.name, int(v))
            else:
                ok = not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) \
                    and not math.isnan(float(v))
                if ok:
                    x = float(v)
                    if f.name.startswith("std_weight"):
                        ok = math.isfinite(x) and x > 0
                    else:
                        ok = float(lo) <= x <= (math.inf if hi is None else float(hi))
                    if ok:
                        object.__setattr__(self, f.name, x)
            if not ok:
                raise InputError(f"samurai {f.name}={v!r} is out of range: give {what}")

    def to_dict(self) -> dict[str, float | int | str]:
        """JSON-ready parameters (the store records them with the tracker)."""
        d = asdict(self)
        for k, v in d.items():  # JSON has no infinities
            if isinstance(v, float) and math.isinf(v):
                d[k] = "inf" if v > 0 else "-inf"
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamuraiConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(f"samurai parameters {unknown} are unknown; known: {[f.name for f in fields(cls)]}")
        kw: dict[str, Any] = {k: (float(v) if v in ("inf", "-inf") else v) for k, v in d.items()}
        return cls(**kw)


def check_tracker(tracker: Any) -> str:
    if tracker not in TRACKERS:
        raise InputError(f"tracker={tracker!r} is not a tracker mode; use one of {', '.join(TRACKERS)}")
    return str(tracker)


# ----------------------------------------------------------------------------- boxes
def mask_box(mask: np.ndarray) -> Box | None:
    """The box of a bool mask in pixel edges, or None when the mask is empty (no measurement).

    The store's own box of a mask instance (``annotations.box_from_mask``), so a box read back with
    ``decode=False`` equals the one measured live."""
    from ..annotations import box_from_mask

    return box_from_mask(mask)


def box_iou(a: Box | None, b: Box | None) -> float:
    """IoU of two xyxy boxes; 0 when either is missing or the union is empty."""
    if a is None or b is None:
        return 0.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def xyxy_to_xyah(b: Box) -> np.ndarray:
    """Centre, aspect ratio (w/h) and height: the filter's measurement space."""
    w, h = b[2] - b[0], b[3] - b[1]
    return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, w / h, h], dtype=np.float64)


def xyah_to_xyxy(m: np.ndarray) -> Box:
    x, y, a, h = (float(v) for v in m[:4])
    w = a * h
    return (x - w / 2, y - h / 2, x + w / 2, y + h / 2)


# ----------------------------------------------------------------------------- Kalman filter
class BoxKalmanFilter:
    """Constant-velocity Kalman filter on ``(x, y, a, h)`` with velocities (8-d state).

    Model (one step = one frame of the pass): ``s' = F s`` with ``F = [[I, I], [0, I]]``; the
    measurement is the box ``z = H s`` with ``H = [I, 0]``. Noise is relative to the box height ``h``
    so a large and a small object are tracked alike: process noise std
    ``(p h, p h, 1e-2, p h, v h, v h, 1e-5, v h)`` (``p``/``v``: the position/velocity weights, ``h`` of
    the state being predicted), measurement noise std ``(p h, p h, 1e-1, p h)``, initial std
    ``(2 p h, 2 p h, 1e-2, 2 p h, 10 v h, 10 v h, 1e-5, 10 v h)`` with zero velocity.
    """

    def __init__(self, std_weight_position: float = 1 / 20, std_weight_velocity: float = 1 / 160):
        self.p = float(std_weight_position)
        self.v = float(std_weight_velocity)
        self.F = np.eye(8)
        self.F[:4, 4:] = np.eye(4)
        self.H = np.eye(4, 8)

    def initiate(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = z[3]
        mean = np.r_[z, np.zeros(4)]
        std = np.array([2 * self.p * h, 2 * self.p * h, 1e-2, 2 * self.p * h,
                        10 * self.v * h, 10 * self.v * h, 1e-5, 10 * self.v * h])
        return mean, np.diag(std**2)

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = mean[3]
        q = np.array([self.p * h, self.p * h, 1e-2, self.p * h, self.v * h, self.v * h, 1e-5, self.v * h])
        return self.F @ mean, self.F @ cov @ self.F.T + np.diag(q**2)

    def update(self, mean: np.ndarray, cov: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = mean[3]
        r = np.array([self.p * h, self.p * h, 1e-1, self.p * h])
        s = self.H @ cov @ self.H.T + np.diag(r**2)
        pht = cov @ self.H.T
        gain = np.linalg.solve(s, pht.T).T  # P H^T S^-1 (S symmetric)
        return mean + gain @ (z - self.H @ mean), cov - gain @ s @ gain.T


# ----------------------------------------------------------------------------- per-object state
@dataclass
class Choice:
    """What SAMURAI decided on one tracked frame of one object."""

    index: int  # kept candidate (0..2)
    iou: float  # its predicted IoU
    kf_score: float | None  # its motion IoU (None before the filter is stable)
    predicted: Box | None  # the filter's predicted box (None before the filter is stable)


@dataclass
class MotionTrack:
    """One object's filter in one pass (its direction), advanced once per frame of the pass.

    Per frame: :meth:`begin_frame` (predict), then on a tracked frame :meth:`choose`, then
    :meth:`measure` with the box of the object's mask in the store (or just written); on a
    conditioning (prompted, corrected, locked) frame :meth:`reinit` instead: a person said where the
    object is, so the filter restarts there with zero velocity. A pass rebuilding its state on resume
    calls the same methods on the stored masks (:meth:`replay`).

    Phases (SAMURAI's): ``init`` (no state, or reset: the next box starts the filter), ``warm``
    (``0 < stable_frames < stable_frames_threshold``: SAM2's choice, each measurement with predicted
    IoU > ``stable_ious_threshold`` counts, a lower one resets), ``stable`` (the weighted choice; a
    kept mask with predicted IoU < ``stable_ious_threshold`` resets, others update). An empty mask
    (the object is absent) is no measurement: the filter coasts on its prediction and keeps its phase.
    """

    config: SamuraiConfig
    kf: BoxKalmanFilter = field(init=False)
    mean: np.ndarray | None = None
    cov: np.ndarray | None = None
    stable_frames: int = 0
    phase: str = "init"

    def __post_init__(self) -> None:
        self.kf = BoxKalmanFilter(self.config.std_weight_position, self.config.std_weight_velocity)

    def reinit(self, box: Box | None) -> None:
        if box is None:
            self.mean = self.cov = None
            self.stable_frames = 0
        else:
            self.mean, self.cov = self.kf.initiate(xyxy_to_xyah(box))
            self.stable_frames = 1
        self.phase = "init"

    def begin_frame(self) -> None:
        if self.mean is None or self.stable_frames == 0:
            self.phase = "init"
            return
        assert self.cov is not None
        self.mean, self.cov = self.kf.predict(self.mean, self.cov)
        self.phase = "stable" if self.stable_frames >= self.config.stable_frames_threshold else "warm"

    def choose(self, ious: np.ndarray, boxes: Callable[[], Sequence[Box | None]]) -> Choice:
        """The kept candidate; ``boxes()`` (the candidates' boxes) is only called when stable."""
        ious = np.asarray(ious, dtype=np.float64).reshape(-1)
        if self.phase != "stable" or len(ious) == 1:
            i = int(np.argmax(ious))
            return Choice(i, float(ious[i]), None, None)
        assert self.mean is not None
        pred = xyah_to_xyxy(self.mean)
        kf = np.array([box_iou(pred, b) for b in boxes()], dtype=np.float64)
        w = self.config.kf_score_weight
        i = int(np.argmax(w * kf + (1 - w) * ious))
        return Choice(i, float(ious[i]), float(kf[i]), pred)

    def measure(self, box: Box | None, iou: float | None) -> None:
        """Feed the kept mask's box and predicted IoU (None: a mask without one, e.g. imported)."""
        t = self.config.stable_ious_threshold
        if box is None:
            return  # absent: coast
        z = xyxy_to_xyah(box)
        if self.phase == "init":
            self.mean, self.cov = self.kf.initiate(z)
            self.stable_frames = 1
        elif self.phase == "warm":
            if iou is None or iou > t:
                self.mean, self.cov = self.kf.update(self.mean, self.cov, z)  # type: ignore[arg-type]
                self.stable_frames += 1
            else:
                self.stable_frames = 0
        else:
            if iou is not None and iou < t:
                self.stable_frames = 0
            else:
                self.mean, self.cov = self.kf.update(self.mean, self.cov, z)  # type: ignore[arg-type]

    def replay(self, box: Box | None, iou: float | None) -> None:
        """One frame rebuilt from the store: predict, then measure what is stored."""
        self.begin_frame()
        self.measure(box, iou)

    def snapshot(self) -> dict[str, Any]:
        """The state, for tests and debugging (copies)."""
        return {"mean": None if self.mean is None else self.mean.copy(),
                "cov": None if self.cov is None else self.cov.copy(),
                "stable_frames": self.stable_frames}


def admits(config: SamuraiConfig, iou: float, obj_score: float, kf_score: float | None) -> bool:
    """SAMURAI's memory-bank admission: all three scores strictly above their thresholds (a frame
    with no motion score yet, the filter not being stable, passes on the other two)."""
    return (iou > config.memory_bank_iou_threshold and obj_score > config.memory_bank_obj_score_threshold
            and (kf_score is None or kf_score > config.memory_bank_kf_score_threshold))


def memory_frames(frame_idx: int, behind: Iterable[int], admitted: Mapping[int, bool], slots: int,
                  reverse: bool) -> list[int]:
    """The non-conditioning memory of ``frame_idx``, oldest first: the ``slots`` most recent of the
    admitted frames behind it (in pass order) and the previous frame, which is always kept.

    ``behind``: frames of this pass with an output (only those behind ``frame_idx`` are used).
    The previous frame position is listed even when it has no non-conditioning output (it may be an
    unselected conditioning frame, which SAM2 then reads, or nothing, which SAM2 skips).
    """
    step = -1 if reverse else 1
    prev = frame_idx - step
    cand = {g for g in behind if (g > frame_idx if reverse else g < frame_idx) and admitted.get(g, False)}
    cand.add(prev)
    order = sorted(cand, reverse=reverse)  # oldest first in pass order
    return order[-slots:] if slots > 0 else []


# ----------------------------------------------------------------------------- the per-frame call
@dataclass
class SamuraiCall:
    """What the engine needs while it runs one tracked frame of one object (set by the session)."""

    track: MotionTrack
    hw: tuple[int, int]  # the source frame's (height, width): candidate boxes are measured there
    memory: list[int]  # non-conditioning memory frames (see memory_frames)
    choice: Choice | None = None  # filled by the heads


def candidate_boxes(low_res_multimasks: Any, hw: tuple[int, int]) -> list[Box | None]:
    """Boxes of the candidates' masks at source size, made as the session makes the stored mask
    (bilinear from the low-res logits, then > 0)."""
    import torch

    x = low_res_multimasks[0][:, None].float()  # (M, 1, h, w): one sample per candidate
    m = torch.nn.functional.interpolate(x, size=hw, mode="bilinear", align_corners=False)[:, 0] > 0.0
    rows, cols = m.any(dim=2).cpu().numpy(), m.any(dim=1).cpu().numpy()
    out: list[Box | None] = []
    for r, c in zip(rows, cols):
        ri, ci = np.flatnonzero(r), np.flatnonzero(c)
        out.append(None if ri.size == 0 else (float(ci[0]), float(ri[0]), float(ci[-1] + 1), float(ri[-1] + 1)))
    return out


def samurai_sam_heads(model: Any, call: SamuraiCall, backbone_features: Any, point_inputs: Any = None,
                      mask_inputs: Any = None, high_res_features: Any = None, multimask_output: bool = False):
    """``SAM2Base._forward_sam_heads`` with SAMURAI's two changes: presence is
    ``object_score_logits > min_obj_score_logits``, and the kept candidate is :meth:`MotionTrack.choose`'s.

    Same steps, same tensors as upstream otherwise (with ``min_obj_score_logits=0`` and
    ``kf_score_weight=0`` the outputs are upstream's bit for bit; tests check it).
    """
    import torch
    import torch.nn.functional as F
    from sam2.modeling.sam2_base import NO_OBJ_SCORE

    B = backbone_features.size(0)
    device = backbone_features.device
    if B != 1:
        raise InputError(f"SAMURAI tracks one object per call; got a batch of {B}")
    if point_inputs is not None:
        coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
    else:
        coords = torch.zeros(B, 1, 2, device=device)
        labels = -torch.ones(B, 1, dtype=torch.int32, device=device)
    dense_mask = None
    if mask_inputs is not None:
        dense_mask = mask_inputs
        if mask_inputs.shape[-2:] != model.sam_prompt_encoder.mask_input_size:
            dense_mask = F.interpolate(mask_inputs.float(), size=model.sam_prompt_encoder.mask_input_size,
                                       align_corners=False, mode="bilinear", antialias=True)
    sparse, dense = model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=dense_mask)
    low_multi, ious, tokens, obj_logits = model.sam_mask_decoder(
        image_embeddings=backbone_features, image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output,
        repeat_image=False, high_res_features=high_res_features,
    )
    if model.pred_obj_scores:
        present = obj_logits > call.track.config.min_obj_score_logits
        low_multi = torch.where(present[:, None, None], low_multi, NO_OBJ_SCORE)
    low_multi = low_multi.float()
    high_multi = F.interpolate(low_multi, size=(model.image_size, model.image_size), mode="bilinear",
                               align_corners=False)
    token = tokens[:, 0]
    if multimask_output:
        choice = call.track.choose(ious[0].float().cpu().numpy(), lambda: candidate_boxes(low_multi, call.hw))
        i = choice.index
        low, high = low_multi[:, i:i + 1], high_multi[:, i:i + 1]
        if tokens.size(1) > 1:
            token = tokens[:, i]
    else:
        choice = Choice(0, float(ious[0, 0]), None, None)
        low, high = low_multi, high_multi
    call.choice = choice
    obj_ptr = model.obj_ptr_proj(token)
    if model.pred_obj_scores:
        lam = obj_logits.sigmoid() if model.soft_no_obj_ptr else present.float()
        if model.fixed_no_obj_ptr:
            obj_ptr = lam * obj_ptr
        obj_ptr = obj_ptr + (1 - lam) * model.no_obj_ptr
    return low_multi, high_multi, ious, low, high, obj_ptr, obj_logits


def samurai_memory_features(model: Any, call: SamuraiCall, frame_idx: int, current_vision_feats: Any,
                            current_vision_pos_embeds: Any, feat_sizes: Any, output_dict: Any,
                            num_frames: int, track_in_reverse: bool = False):
    """``SAM2Base._prepare_memory_conditioned_features`` for a tracked (non-initial) frame with the
    non-conditioning spatial memories taken from ``call.memory`` (SAMURAI's memory bank) instead of
    the last ``num_maskmem - 1`` frames. Conditioning frames and object pointers are SAM2's."""
    import torch
    from sam2.modeling.sam2_utils import get_1d_sine_pe, select_closest_cond_frames

    B = current_vision_feats[-1].size(1)
    C = model.hidden_dim
    H, W = feat_sizes[-1]
    device = current_vision_feats[-1].device
    tpos_sign_mul = -1 if track_in_reverse else 1
    to_cat_memory, to_cat_memory_pos_embed = [], []
    cond_outputs = output_dict["cond_frame_outputs"]
    selected_cond, unselected_cond = select_closest_cond_frames(frame_idx, cond_outputs, model.max_cond_frames_in_attn)
    t_pos_and_prevs: list[tuple[int, Any]] = [(0, out) for out in selected_cond.values()]
    n = model.num_maskmem
    mem = call.memory[-(n - 1):] if n > 1 else []
    for j, g in enumerate(mem):  # the most recent gets t_pos = num_maskmem - 1, as SAM2's last frame
        out = output_dict["non_cond_frame_outputs"].get(g, None)
        if out is None:
            out = unselected_cond.get(g, None)
        t_pos_and_prevs.append((n - len(mem) + j, out))
    for t_pos, prev in t_pos_and_prevs:
        if prev is None:
            continue
        feats = prev["maskmem_features"].to(device, non_blocking=True)
        to_cat_memory.append(feats.flatten(2).permute(2, 0, 1))
        enc = prev["maskmem_pos_enc"][-1].to(device).flatten(2).permute(2, 0, 1)
        to_cat_memory_pos_embed.append(enc + model.maskmem_tpos_enc[n - t_pos - 1])
    num_obj_ptr_tokens = 0
    if model.use_obj_ptrs_in_encoder:
        max_ptrs = min(num_frames, model.max_obj_ptrs_in_encoder)
        if not model.training and model.only_obj_ptrs_in_the_past_for_eval:
            ptr_cond = {t: o for t, o in selected_cond.items()
                        if (t >= frame_idx if track_in_reverse else t <= frame_idx)}
        else:
            ptr_cond = selected_cond
        pos_and_ptrs = [(((frame_idx - t) * tpos_sign_mul if model.use_signed_tpos_enc_to_obj_ptrs
                          else abs(frame_idx - t)), o["obj_ptr"]) for t, o in ptr_cond.items()]
        for t_diff in range(1, max_ptrs):
            t = frame_idx + t_diff if track_in_reverse else frame_idx - t_diff
            if t < 0 or (num_frames is not None and t >= num_frames):
                break
            o = output_dict["non_cond_frame_outputs"].get(t, unselected_cond.get(t, None))
            if o is not None:
                pos_and_ptrs.append((t_diff, o["obj_ptr"]))
        if pos_and_ptrs:
            pos_list, ptrs_list = zip(*pos_and_ptrs)
            obj_ptrs = torch.stack(ptrs_list, dim=0)
            if model.add_tpos_enc_to_obj_ptrs:
                t_diff_max = max_ptrs - 1
                tpos_dim = C if model.proj_tpos_enc_in_obj_ptrs else model.mem_dim
                obj_pos = torch.tensor(pos_list).to(device=device, non_blocking=True)
                obj_pos = get_1d_sine_pe(obj_pos / t_diff_max, dim=tpos_dim)
                obj_pos = model.obj_ptr_tpos_proj(obj_pos)
                obj_pos = obj_pos.unsqueeze(1).expand(-1, B, model.mem_dim)
            else:
                obj_pos = obj_ptrs.new_zeros(len(pos_list), B, model.mem_dim)
            if model.mem_dim < C:
                obj_ptrs = obj_ptrs.reshape(-1, B, C // model.mem_dim, model.mem_dim)
                obj_ptrs = obj_ptrs.permute(0, 2, 1, 3).flatten(0, 1)
                obj_pos = obj_pos.repeat_interleave(C // model.mem_dim, dim=0)
            to_cat_memory.append(obj_ptrs)
            to_cat_memory_pos_embed.append(obj_pos)
            num_obj_ptr_tokens = obj_ptrs.shape[0]
    memory = torch.cat(to_cat_memory, dim=0)
    memory_pos_embed = torch.cat(to_cat_memory_pos_embed, dim=0)
    pix = model.memory_attention(curr=current_vision_feats, curr_pos=current_vision_pos_embeds,
                                 memory=memory, memory_pos=memory_pos_embed, num_obj_ptr_tokens=num_obj_ptr_tokens)
    return pix.permute(1, 2, 0).view(B, C, H, W)
