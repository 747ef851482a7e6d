"""Streaming multi-object SAM2 video sessions: prompts anywhere, propagation into the store.

:class:`VideoSession` drives upstream's ``SAM2VideoPredictor`` (its per-frame inference, memory
encoder and memory attention are called as they are, so masks equal upstream's bit for bit) and
adds what an annotation tool needs around it:

* **frames on demand**: ``inference_state["images"]`` is a :class:`LazyFrames` that decodes and
  preprocesses one frame when SAM2 indexes it (exactly as upstream's JPEG loader does), with a small
  LRU; no JPEG dump, no whole video in memory;
* **flat memory**: after every propagated frame the per-object outputs memory attention can no longer
  read are dropped (conditioning frames are kept); every result is in the store first;
* **the store is the ledger**: each propagated frame is written as produced (one transaction per
  frame), prompts are recorded on their keyframes, and ``propagate`` computes only what is missing,
  so corrections, cancel and resume all reduce to "fill the gaps";
* **corrections**: a prompt on frame k locks k (a conditioning frame) and deletes only the results
  that depended on the old k: forward results up to the next locked frame, backward results down to
  the previous one; the next ``propagate`` recomputes just those;
* upstream's CPU dtype crash (sam2 #308/#577) cannot happen (see :func:`make_engine`) and
  every frame of a range reads back as ``Instances`` (no KeyError, sam2 #418).

See docs/sam2al.md for the session model and the parity method. Modules: ``frames`` (LazyFrames),
``engine`` (the network view), ``session`` (VideoSession), ``pipeline`` (the writer thread of a
pipelined pass, :class:`Pipeline`), ``samurai`` (the SAMURAI tracker mode:
``VideoSession(tracker="samurai")``, docs/sam2al_samurai.md), ``review``, ``segment`` (PROMPTS.json: validation and applying it to a session); the
``dl-utils segment`` driver is :mod:`dl_utils.drivers.segment`.
"""

from .engine import make_engine
from .frames import IMG_MEAN, IMG_STD, LazyFrames
from .pipeline import Pipeline
from .review import ReviewItem, review_frames
from .segment import apply_prompts, load_prompts
from .samurai import TRACKERS, BoxKalmanFilter, MotionTrack, SamuraiConfig
from .session import DIRECTIONS, VideoSession

__all__ = [
    "DIRECTIONS",
    "TRACKERS",
    "BoxKalmanFilter",
    "MotionTrack",
    "SamuraiConfig",
    "IMG_MEAN",
    "IMG_STD",
    "LazyFrames",
    "Pipeline",
    "ReviewItem",
    "VideoSession",
    "apply_prompts",
    "load_prompts",
    "make_engine",
    "review_frames",
]
