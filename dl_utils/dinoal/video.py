"""A caption (text) → tracked objects through a video: GroundingDINO on keyframes, SAM2 between them.

Grounded-SAM-2 re-detects every 20 frames, matches by a fixed IoU and does not keep ids. Here:

* the detector runs on the first frame, every ``every`` frames, and whenever SAM2's quality signals
  drop (``tracking.KeyframePolicy``: low predicted IoU or object score, an area jump, a lost object);
* detections are matched to the tracked masks on that frame by optimal assignment on mask IoU
  (``tracking.TrackManager``); unmatched detections become new objects with fresh ids, prompted on the
  keyframe and propagated forward *and* backward (down to the previous keyframe, where the detector
  did not see them); a drifting match re-anchors its track with the detection box; an object lost by
  SAM2 and found again within ``max_gap`` frames gets its old id back and its gap is re-tracked
  backward; an object without support for longer ends (CVAT's ``outside`` after its last frame);
* everything is written to the store frame by frame by the SAM2 session, so Ctrl-C keeps the work.

The SAM2 pass is never restarted on a keyframe that changes nothing: the detector runs inside the
propagation callback, and only a decision that needs new prompts stops the pass (then it resumes
from that frame with SAM2's usual warm-up).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, cast


from ..annotations import Box, Instance, Instances, Provenance, Source
from ..errors import InputError
from ..tracking import KeyframePolicy, TrackerConfig, TrackManager
from .detections import Detections

if TYPE_CHECKING:
    from ..sam2al.session import VideoSession
    from ..store import StoreReaderWriter
    from ..tracking import Decision
    from .detector import Detector
    from .caption import Caption

#: store meta key: {object id: last visible frame} of the objects a tracker ended
ENDED_KEY = "dinoal.ended"
#: store meta key: the latest frames the detector ran on (a resumed run keeps their grid)
KEYFRAMES_KEY = "dinoal.keyframes"
KEEP_KEYFRAMES = 64
#: ``Provenance.tracker`` of the boxes :func:`track_boxes` links (keyframe boxes, no SAM2)
TRACKER_BOXES = "keyframe-boxes"
#: ``Provenance.tracker`` of the masks :class:`GroundedVideoTracker` writes (SAM2 tracks, keyframe
#: detections start, re-anchor and revive objects)
TRACKER_SAM2 = "sam2-keyframe-detections"


def _tracked_masks(instances: Instances) -> dict[int, Any]:
    """{object id: mask or None} as the matcher wants it (an empty mask means not visible)."""
    out: dict[int, Any] = {}
    for inst in instances:
        out[inst.object_id] = inst.mask if inst.mask is not None and inst.mask.any() else None
    return out


def _quality(instances: Instances) -> dict[int, Instance]:
    return {inst.object_id: inst for inst in instances}


class GroundedVideoTracker:
    """Detector + SAM2 session + track manager over one video; see the module docstring.

    ``session`` is a :class:`dl_utils.sam2al.VideoSession` on the video and store (build it with the
    SAM2 model you want); ``detector`` anything with ``detect(image, prompt) -> Detections``.
    ``manager`` defaults to a :class:`~dl_utils.tracking.TrackManager` whose ids start after the
    store's highest object id and whose keyframe policy re-detects every ``every`` frames; its knobs
    are ``config`` (a :class:`~dl_utils.tracking.TrackerConfig`, e.g. ``TrackOptions.tracker_config()``)
    and/or ``manager_options`` (the same knobs as keywords, which win).
    """

    def __init__(
        self,
        session: VideoSession,
        detector: Detector,
        prompt: str | Caption | None = None,
        *,
        every: int = 20,
        manager: TrackManager | None = None,
        config: TrackerConfig | None = None,
        **manager_options: Any,
    ):
        if int(every) < 1:
            raise InputError(f"every={every!r}: use 1 (every frame) or more")
        self.session = session
        self.store = session.store
        self.source = session.source
        self.detector = detector
        self.caption = prompt
        if manager is None:
            known = [o.id for o in self.store.objects()]
            first_id = max(known, default=0) + 1
            # frame counts in the manager are differences of source frame numbers
            step = max(1, int(self.source.media_info().step or 1))
            policy = KeyframePolicy(every=int(every) * step)
            manager = TrackManager(config, first_id=first_id, policy=policy, **manager_options)
        self.manager = manager
        self.keyframes: list[int] = []
        self.detections = 0
        # (frame, Decision, detections) waiting to be applied after the pass stops
        self._pending: tuple[int, Decision, Detections | None] | None = None
        self._deferred: dict[int, int] = {}  # clicked object id -> frame it joins the manager
        self._saved_keyframes: list[int] = list(self.store.get_meta(KEYFRAMES_KEY) or [])

    # ------------------------------------------------------------------ detection
    def _detect(self, frame: int) -> Detections:
        image = self.source[self.source.index_of(frame)]
        dets = self.detector.detect(image, self.caption)
        self.keyframes.append(frame)
        # the latest keyframes only (a resume needs the last one before it): a constant-size write
        # per keyframe, not one that grows with the video
        if int(frame) not in self._saved_keyframes:
            self._saved_keyframes = sorted(self._saved_keyframes + [int(frame)])[-KEEP_KEYFRAMES:]
            self.store.set_meta(KEYFRAMES_KEY, self._saved_keyframes)
        self.detections += len(dets)
        return dets

    def _apply(self, frame: int, decision: Decision, dets: Detections | None) -> list[tuple[int, int]]:
        """Turn a decision into SAM2 prompts; return the (object, down-to frame) backward jobs."""
        s = self.session
        back: list[tuple[int, int]] = []
        for e in decision.ended:
            if e.object_id in s.object_ids:
                s.remove_object(e.object_id, keep_results=True)
            # remembered in the store: a resumed run must not bring an ended object back
            ended = dict(self.store.get_meta(ENDED_KEY) or {})
            ended[str(e.object_id)] = e.last_frame
            self.store.set_meta(ENDED_KEY, ended)
            # frames after the last visible one were tracked as empty: drop them so the export
            # writes `outside` right after the last frame the object was seen. An object never seen
            # (a clicked object SAM2 never showed, ended after max_gap frames) has only empty
            # frames: nothing to drop.
            if e.last_frame is not None:
                self.store.delete_instances(object_id=e.object_id, start=e.last_frame + 1)
        for r in decision.reanchors:
            s.add_box(frame, r.object_id, r.box)
        for rv in decision.revived:
            # re-track the gap backward from the re-detection: drop the empty frames SAM2 wrote there
            lo = rv.back_to if rv.back_to is not None else frame
            if lo < frame:
                self.store.delete_instances(object_id=rv.object_id, start=lo, stop=frame - 1)
            s.add_box(frame, rv.object_id, rv.box)
            back.append((rv.object_id, lo))
        first = self.source.frame_numbers[0]
        caption = None if dets is None else dets.caption
        for n in decision.new:
            # the session writes the masks: tell it what made the object, so each carries it
            s.set_origin(n.object_id, Provenance(caption=caption, tracker=TRACKER_SAM2))
            s.add_box(frame, n.object_id, n.box, label=n.label or "object")
            back.append((n.object_id, first if n.back_to is None else n.back_to))
        return back

    # ------------------------------------------------------------------ run
    def run(
        self,
        *,
        start: int | None = None,
        stop: int | None = None,
        callback: Callable[[int, Instances], Any] | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Detect, track and match over ``start..stop`` (source frames, inclusive); return a summary."""
        t0 = time.perf_counter()
        numbers = list(self.source.frame_numbers)
        lo = numbers[0] if start is None else int(start)
        hi = numbers[-1] if stop is None else int(stop)
        if lo > hi:
            raise InputError(f"start={start} is after stop={stop}; give start <= stop (source frame numbers)")
        span = [n for n in numbers if lo <= n <= hi]
        if not span:
            raise InputError(f"no source frame lies in {lo}..{hi}; check start/stop against the video")
        s = self.session
        mgr = self.manager
        passes = 0

        # 0. objects the session already tracks (clicked ones, or an interrupted run being resumed):
        #    the manager takes them over and the forward pass starts where their results stop
        frame = self._adopt(span)
        if frame is not None:
            # the resume frame was written but maybe not seen by the tracker (stopped in between)
            self._pending = None
            self._observe(frame, s.result(frame))
            if self._pending is not None:
                f, dec, dets = self._pending
                passes += self._backward(f, self._apply(f, dec, dets), lo, progress)
        # 1. find the first objects: detect every `every` frames until something is there
        for n in span if frame is None else ():
            joined = self._join(n)
            key = mgr.should_redetect(n, None)
            if not key and not joined:
                continue
            dets = self._detect(n) if key else None
            dec = mgr.update(n, self._tracked(n), dets)
            if dec.new or mgr.live():
                frame = n
                passes += self._backward(n, self._apply(n, dec, dets), lo, progress)
                break
        if frame is None:
            return self._summary(t0, passes, "no objects found")

        # 2. forward passes; a keyframe that needs new prompts stops the pass, the prompts are
        #    applied, new/revived objects are tracked backward, and the forward pass resumes
        def on_frame(f: int, insts: Instances) -> None:
            if callback is not None:
                callback(f, insts)
            self._observe(f, insts)

        status = "done"
        while True:
            self._pending = None
            if not s.object_ids:
                break
            r = s.propagate("forward", start=frame, stop=hi, callback=on_frame, progress=progress)
            passes += 1
            if self._pending is None and r["status"] == "done":
                # frames the pass did not write (already in the store: clicked objects propagated
                # before, a resumed run) still get their keyframes, as they are
                for f in span:
                    if mgr.frame is not None and f <= mgr.frame:
                        continue
                    self._observe(f, s.result(f))
                    if self._pending is not None:
                        break
            if self._pending is None:
                status = r["status"]
                break
            frame, dec, dets = self._pending
            passes += self._backward(frame, self._apply(frame, dec, dets), lo, progress)
            self._pending = None
        return self._summary(t0, passes, status)

    def _observe(self, f: int, insts: Instances) -> None:
        """One frame of the forward pass: detect if it is a keyframe, decide, stop the pass if needed."""
        if self._pending is not None:
            return
        self._join(f)
        mgr = self.manager
        dets = self._detect(f) if mgr.should_redetect(f, _quality(insts)) else None
        dec = mgr.update(f, self._tracked(f), dets)
        if dec.changed:  # new prompts needed, or an object ended (also between keyframes)
            self._pending = (f, dec, dets)
            self.session.cancel()

    def _tracked(self, f: int) -> dict[int, Any]:
        """The session's masks on ``f`` for the objects the manager knows."""
        return {k: v for k, v in _tracked_masks(self.session.result(f)).items() if k in self.manager}

    def _join(self, f: int) -> bool:
        """Register the deferred (clicked) objects whose first result is on or before ``f``."""
        due = [oid for oid, first in self._deferred.items() if first <= f]
        labels = {o.id: o.label for o in self.store.objects()} if due else {}
        for oid in due:
            del self._deferred[oid]
            inst = self.session.result(f).by_object().get(oid)
            mask = inst.mask if inst is not None and inst.mask is not None and inst.mask.any() else None
            self.manager.add_track(labels.get(oid), f, object_id=oid, mask=mask)
        return bool(due)

    def _adopt(self, span: list[int]) -> int | None:
        """Register the session's objects with the manager; the frame to resume from, or None.

        Objects that ended in an earlier run (store meta ``dinoal.ended``) are dropped from the
        session again. The resume frame is the earliest, over the objects, of the last frame each
        has a result on (its prompt's frame at least): frames already in the store are not recomputed.
        """
        s, mgr = self.session, self.manager
        ended = {int(k) for k in (self.store.get_meta(ENDED_KEY) or {})}
        for oid in [o for o in s.object_ids if o in ended]:
            s.remove_object(oid, keep_results=True)
        todo = [o for o in s.object_ids if o not in mgr]
        if not todo:
            return None
        labels = {o.id: o.label for o in self.store.objects()}
        inside = set(span)
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for oid in todo:
            have = [f for f in self.store.frames_done(oid) if f in inside]
            have += [f for f in s.locked_frames(oid) if f in inside]
            if have:
                first[oid], last[oid] = min(have), max(have)
        if not last:
            return None
        if not self._saved_keyframes:
            # a fresh text run over clicked objects: detect from the start; each clicked object
            # joins the manager on the first frame it has a result on
            self._deferred = dict(first)
            return None
        resume = min(last.values())
        mgr.resume_after(max((k for k in self._saved_keyframes if k <= resume), default=None))
        for oid in todo:
            at = min(last.get(oid, resume), resume)
            inst = self.store.read_frame(at).by_object().get(oid)
            mask = inst.mask if inst is not None and inst.mask is not None and inst.mask.any() else None
            mgr.add_track(labels.get(oid), at, object_id=oid, mask=mask)
        return resume

    def _backward(self, frame: int, jobs: list[tuple[int, int]], lo: int, progress: bool) -> int:
        """One backward pass down to the lowest frame any new/revived object needs (others are done)."""
        down = [d for _, d in jobs if d < frame]
        if not down:
            return 0
        self.session.propagate("backward", start=max(min(down), lo), stop=frame, progress=progress)
        return 1

    def _summary(self, t0: float, passes: int, status: str) -> dict[str, Any]:
        tracks = self.manager.tracks
        return {
            "status": status,
            "keyframes": list(self.keyframes),
            "detections": self.detections,
            "objects": sorted(t.id for t in tracks),
            "ended": sorted(t.id for t in tracks if t.status.value == "ended"),
            "passes": passes,
            "seconds": round(time.perf_counter() - t0, 3),
        }


def track_boxes(
    source: Any,
    store: StoreReaderWriter,
    detector: Detector,
    prompt: str | Caption | None = None,
    *,
    every: int = 20,
    manager: TrackManager | None = None,
    start: int | None = None,
    stop: int | None = None,
    progress: bool = True,
    run_id: int | None = None,
    config: TrackerConfig | None = None,
    **manager_options: Any,
) -> dict[str, Any]:
    """Boxes only (no SAM2): detect every ``every`` frames and link the boxes into stable ids.

    Between keyframes an object is assumed where it was last detected, so this suits slow scenes
    and sparse keyframes for CVAT box tracks (CVAT interpolates between them); use
    :class:`GroundedVideoTracker` for masks.
    """
    from tqdm.auto import tqdm

    from ..cv_utils import box_to_mask

    media = source.media_info()
    h, w = media.height, media.width
    if manager is None:
        first_id = max((o.id for o in store.objects()), default=0) + 1
        manager = TrackManager(config, first_id=first_id, **manager_options)
    keep = [n for n in source.frame_numbers
            if (start is None or n >= start) and (stop is None or n <= stop)]
    keys = keep[:: int(every)]
    last: dict[int, tuple[float, ...]] = {}
    n_dets = 0
    for f in tqdm(keys, desc="detect", unit="keyframe", disable=None if progress else True):
        dets = detector.detect(source[source.index_of(f)], prompt)
        n_dets += len(dets)
        tracked = {oid: box_to_mask(box, h, w) for oid, box in last.items()}
        dec = manager.update(f, tracked, dets)
        insts = []
        for m in dec.matches:
            last[m.object_id] = tuple(float(v) for v in dets.boxes[m.det])
            insts.append((m.object_id, m.det))
        for r in list(dec.reanchors) + list(dec.revived):
            last[r.object_id] = tuple(float(v) for v in dets.boxes[r.det])
            insts.append((r.object_id, r.det))
        for nobj in dec.new:
            store.add_object(nobj.label or "object", id=nobj.object_id)
            last[nobj.object_id] = tuple(float(v) for v in dets.boxes[nobj.det])
            insts.append((nobj.object_id, nobj.det))
        for e in dec.ended:
            last.pop(e.object_id, None)
        # the caption and the tracker mode: why the box exists (the detector's engine: boxes only)
        linked = Provenance(engine=dets.engine, caption=dets.caption, tracker=TRACKER_BOXES)
        rows = [
            Instance(oid, box=cast(Box, tuple(float(v) for v in dets.boxes[j])), score=float(dets.scores[j]),
                     source=Source.AUTO, keyframe=True, label=dets.labels[j], provenance=linked)
            for oid, j in sorted(set(insts))
        ]
        store.write_frame(f, rows, run_id=run_id)
    return {
        "keyframes": keys,
        "detections": n_dets,
        "objects": sorted(t.id for t in manager.tracks),
        "ended": sorted(t.id for t in manager.tracks if t.status.value == "ended"),
    }


__all__ = ["TRACKER_BOXES", "TRACKER_SAM2", "GroundedVideoTracker", "track_boxes"]
