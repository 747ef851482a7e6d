"""The annotator's background jobs: propagate, detect, push and SAM 3's refine and its undo, one at a time
(no widgets here).

A job runs in :class:`~.worker.Worker`'s thread and only emits messages; :meth:`JobRunner.on_message`
applies them on the kernel's thread, under the controller's lock, and tells the view through the
controller's listener. Detect goes through the drivers layer (:func:`dl_utils.drivers.run.run_into_store`),
the same path as ``dl-utils annotate`` and ``dl-utils detect``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..annotations import Clicks
from ..errors import DlUtilsError, InputError
from ..interactive import ImageClickEngine, PropagatingEngine
from .history import SAM3_REFINE, Action, Sam3Refine
from .worker import Emit, Worker, kernel_scheduler

if TYPE_CHECKING:  # pragma: no cover
    from ..store import AnnotationStore
    from ..video_utils import FrameSource
    from .controller import AnnotatorController

log = logging.getLogger("dl_utils.ipy_utils")

class DetectCancelled(KeyboardInterrupt):
    """Raised from SAM 3's per-frame callback when cancel was pressed.

    Why an exception: run_into_store builds SAM 3's video session itself, so the widget has no
    session to call ``cancel()`` on; the callback runs right after a frame is written, and a
    KeyboardInterrupt is what the session records as ``cancelled`` (what was written stays, a later
    Detect resumes). The job catches it; it never reaches the user."""


#: a job: runs in the worker thread with (emit, cancelled) and returns its summary
Job = Callable[[Emit, threading.Event], Any]


class JobRunner:
    """Starts the jobs, counts their frames and turns their end into a message (see the module doc)."""

    def __init__(self, controller: AnnotatorController):
        self.c = controller
        self.worker = Worker(self.on_message, kernel_scheduler())
        self.job: str | None = None
        self.job_summary: object = None
        self.pending_push: object = None
        self.progress = (0, 1)
        self._record: Action | None = None
        self._replay: tuple[Action, bool] | None = None
        self._undoable = False  # the failing refine is an undo step (the session recorded it)

    @property
    def busy(self) -> bool:
        return self.worker.busy

    def _start(self, name: str, job: Job, cancel: Callable[[], None] | None, total: int, *,
               record: Action | None = None, replay: tuple[Action, bool] | None = None,
               note: str = "Esc cancels; results appear as they come") -> None:
        """``record``: the undo action a fresh SAM 3 refine adds once it ends (done or cancelled: both
        changed frames); ``replay``: (the history action, undo?) an undo/redo job applies, put back
        where it was if the job fails."""
        self.c.not_busy(f"start {name}")
        self.job, self.job_summary = name, None
        self._record, self._replay, self._undoable = record, replay, False
        self.progress = (0, max(1, total))
        self.c.listener.job_started(max(1, total))
        self.worker.start(name, job, cancel)
        self.c.say(f"{name} running in the background ({note})")

    def propagate(self, direction: str) -> bool:
        engine = self.c.need_engine()
        source = self.c.source
        if not engine.can_propagate or not isinstance(engine, PropagatingEngine) or source is None:
            raise InputError("propagation needs a video: this is an image folder (each image is annotated alone)")
        if direction not in ("forward", "backward", "both"):
            raise InputError(f"direction {direction!r}: use forward, backward or both")
        keyframes = engine.keyframes()
        if not keyframes:
            raise InputError("no clicks yet: click on an object first, then propagate")
        locked = [source.index_of(f) for fs in keyframes.values() for f in fs]
        fwd, back = len(source) - 1 - min(locked), max(locked)
        total = {"forward": fwd, "backward": back, "both": fwd + back}[direction]

        def job(emit: Emit, cancelled: threading.Event) -> Any:
            return engine.propagate(direction, lambda f, insts: emit("frame", f))

        self._start(f"propagate {direction}", job, engine.cancel, total)
        return True

    def refine(self, caption: str, oid: int, frame: int, clicks: Clicks, text: str, *,
               redo: Action | None = None) -> bool:
        """Clicks on a SAM 3 object: :meth:`Sam3VideoSession.refine` through the caption's
        :class:`~dl_utils.sam3al.video.Sam3ClickEngine`, in the background (it re-tracks the object
        through the whole video: a propagation, not a click's instant answer). Progress per frame
        written; the clicks join the click book (and show) once it ended.

        Esc stops it between frames (the session's ``cancel``): the frames written are whole, the
        others keep what they had; refining again carries the clicks through the whole video, undo
        puts the written frames back. The refine is one undo action (:data:`~.history.SAM3_REFINE`,
        the clicked frame's clicks before and after), added when it ends; ``redo`` is that action
        when the history's redo runs it again (it is in the history already).

        Why the session is cancelled only once it wrote a frame (the callback forwards a cancel
        pressed earlier): a session's first refine, and the first after an undo, replays the
        finished text run inside ``refine``, and a cancel there would cut the replay short, not the
        refine."""
        c = self.c
        refining = threading.Event()  # the session is past its replay: its cancel stops the refine

        def job(emit: Emit, cancelled: threading.Event) -> Any:
            engine = c.sam3_engine(caption)
            store = engine.session.store
            last_run = max((int(r["id"]) for r in store.runs()), default=0)

            def each(f: int, insts: Any) -> None:
                emit("frame", f)
                refining.set()
                if cancelled.is_set():  # Esc before the first frame (or a race with it): stop here
                    engine.cancel()

            try:
                r = engine.session.refine(frame, oid, clicks, callback=each)
            except BaseException:
                # the session keeps a refine that failed after it began (its run) undoable: so does
                # the history, or the next undo would revert it in place of the one it names
                if any(int(x["id"]) > last_run and x["kind"] == "sam3-refine" for x in store.runs()):
                    emit("recorded", None)
                raise
            return {**r, "refined": (oid, frame, clicks)}

        def cancel() -> None:
            engine = c.sam3_engines.get(caption)
            if engine is not None and refining.is_set():
                engine.cancel()

        target = Sam3Refine(caption, int(oid), int(frame))
        record = None if redo is not None else Action(
            SAM3_REFINE, target, c.clicks.get(oid, frame), clicks,
            f"SAM 3 refine of object {oid} ({text} on frame {frame})")
        self._start("refine", job, cancel, len(c.source) if c.source is not None else 1,
                    record=record, replay=None if redo is None else (redo, False))
        c.say(f"refine running in the background: SAM 3 re-tracks object {oid} through the video from "
              f"the {text} on frame {frame} (Esc stops it after the current frame; undo reverts it)")
        return True

    def undo_refine(self, action: Action) -> bool:
        """Revert a SAM 3 refine (``action``, just taken off the history): the session's
        :meth:`~dl_utils.sam3al.video.Sam3ClickEngine.undo` puts back every store row the refine
        changed, in the background (it may be the whole video); the click book gets the clicked
        frame's clicks from before it when it finished.

        Why check ``can_undo`` first: the history and the session's own refine list must agree;
        refusing here keeps the action where it was and the store untouched."""
        t = action.target
        if not isinstance(t, Sam3Refine):
            raise InputError(f"undo: {action.text!r} is not a SAM 3 refine ({type(t).__name__} target)")
        engine = self.c.sam3_engines.get(t.caption)
        if engine is None or not engine.session.can_undo:
            raise InputError(f"object {t.object_id}, frame {t.frame}: SAM 3's session for {t.caption!r} has no "
                             "refine left to undo (undone outside the widget, or closed by a Detect); refine again "
                             "with the clicks you want")

        def job(emit: Emit, cancelled: threading.Event) -> Any:
            return {**engine.undo(), "undone": action}

        n = len(self.c.source) if self.c.source is not None else 1
        self._start("undo refine", job, None, n, replay=(action, True),
                    note=f"putting back the frames of {action.text}")
        return True

    def detect(self, text: str) -> bool:
        """The caption through the drivers' run_into_store: the tracker on video, the current image alone.

        With SAM 3 (:meth:`~.controller.AnnotatorController.text_backend`) SAM 3 alone finds, segments
        and tracks: see :meth:`_detect_sam3`."""
        sam3 = self.c.text_backend == "sam3"
        onnx = self.c.text_backend == "onnx"  # your own detector: empty text is every class it has
        engine = None if sam3 else self.c.need_engine()
        store, source = self.c.need_store(), self.c.source
        if (not text or not str(text).strip()) and not onnx:
            raise InputError("type what to find (e.g. 'car. person') before pressing detect")
        if sam3:
            assert source is not None  # a store is open, so is its source
            self.c.not_busy("start detect")  # a running refine uses them
            dropped = self.c.drop_sam3_engines()  # the run may change what their replayed state holds
            try:
                return self._detect_sam3(str(text), store, source)
            finally:  # gone also when this Detect is refused: said either way
                if dropped:
                    self.c.say(f"{dropped} SAM 3 refine{'s' if dropped != 1 else ''} left the undo history: "
                               "a new Detect closes the SAM 3 sessions that could undo them", "warn")
        assert engine is not None
        if self.c.detector is None:
            raise InputError("no detector: pass detector= (dl_utils.dinoal.load_detector(...)) to Annotator")
        assert source is not None  # a store is open, so is its source
        from ..dinoal.caption import parse_caption
        from ..drivers.options import DetectorOptions, TrackOptions
        from ..drivers.run import run_into_store

        detector, table, session = self.c.detector, self.c.classes, self.c.session
        options = None
        if onnx:  # the store records this backend and model (not GroundingDINO's defaults)
            given = self.c.detector_options
            options = given if given is not None and given.backend == "onnx" else \
                DetectorOptions(backend="onnx", model=getattr(detector, "name", None))
            typed = (str(text).strip() if text else "") or None
            caption = detector.resolve_caption(typed)  # type: ignore[attr-defined]
        else:
            caption = parse_caption(text)
        video = engine.can_propagate and session is not None
        frame, image = self.c.frame, self.c.image
        if not video and (frame is None or image is None):
            raise InputError("nothing is shown: open a video first")
        seg = engine.segmenter if isinstance(engine, ImageClickEngine) else None
        # one call for both paths: run_into_store picks the tracker (video, the widget's session) or the
        # image path (the shown image alone, the widget's segmenter) from track= and the source
        shown = {} if video or frame is None or image is None else {frame: image}

        def job(emit: Emit, cancelled: threading.Event) -> Any:
            res = run_into_store(source, store, prompt=caption, detector=detector, table=table,
                                 detector_options=options,
                                 track=TrackOptions(track=video), progress=False, session=session,
                                 callback=lambda f, insts: emit("frame", f), frames=list(shown),
                                 images=shown, segmenter=seg, segment=video or seg is not None)
            for f in shown:  # the image path reports no frames itself
                emit("frame", f)
            return res["text"]

        self._start("detect", job, session.cancel if video and session is not None else None,
                    len(source) if video else 1)
        return True

    def _detect_sam3(self, text: str, store: AnnotationStore, source: FrameSource) -> bool:
        """SAM 3 through run_into_store: on a video with a SAM 3 video model, its session over the whole
        source (progress per frame; cancel stops after the current frame), with the exemplar box drawn
        on the shown frame ("more like this one") as the session's prompt there, so what it finds is
        tracked through the whole video (forward then backward from that frame); else the shown image
        with SAM 3's image model, and with the exemplar boxes drawn on it. No SAM2."""
        from ..dinoal.caption import parse_caption
        from ..drivers.options import TrackOptions
        from ..drivers.run import run_into_store

        options = self.c.sam3_options()
        caption, table, frame, image = parse_caption(text), self.c.classes, self.c.frame, self.c.image
        exs = list(self.c.exemplars.get(frame, [])) if frame is not None else []
        video_model = self.c.sam3_video_model
        video = source.kind == "video" and video_model is not None
        if exs and len(caption) > 1:
            raise InputError(f"exemplar boxes show one concept but {caption.text!r} has {len(caption)} phrases; "
                             "type one phrase (what the boxes show), or clear the exemplars (Esc)")
        if video and len(exs) > 1:  # sam3's video add_prompt takes one box on its prompt frame
            raise InputError(f"{len(exs)} exemplar boxes on frame {frame}: SAM 3's video model takes one; "
                             "clear them (Esc) and draw one")
        if not video:
            if self.c.detector is None:
                raise InputError(("exemplar boxes run on the shown image with SAM 3's image model" if exs else
                                  "this source has no frames for SAM 3's video model; SAM 3 on images needs its "
                                  "image model") + ": pass detector=DetectorOptions(backend='sam3')"
                                 ".sam3_detector(model) to Annotator")
            if frame is None or image is None:
                raise InputError("nothing is shown: open a video first")
        detector = self.c.detector

        if video:
            def job(emit: Emit, cancelled: threading.Event) -> Any:
                def each(f: int, insts: Any) -> None:
                    emit("frame", f)
                    if cancelled.is_set():
                        raise DetectCancelled

                try:
                    res = run_into_store(source, store, prompt=caption, detector_options=options, table=table,
                                         track=TrackOptions(track=True), progress=False, callback=each,
                                         sam3_video_model=video_model,
                                         exemplars={frame: exs} if exs and frame is not None else None)
                except DetectCancelled:
                    return {"status": "cancelled", "engine": "sam3"}
                return {**res["text"], "exemplars": (frame, exs)} if exs else res["text"]

            self._start("detect", job, None, len(source))
            if exs:
                self.c.say(f"detect tracking the exemplar box on frame {frame} through the video (SAM 3)")
            return True

        assert frame is not None and image is not None
        shown = {frame: image}

        def image_job(emit: Emit, cancelled: threading.Event) -> Any:
            res = run_into_store(source, store, prompt=caption, detector=detector, detector_options=options,
                                 table=table, track=TrackOptions(track=False), progress=False, frames=[frame],
                                 images=shown, exemplars={frame: exs} if exs else None)
            emit("frame", frame)  # the image path reports no frames itself
            return {**res["text"], "exemplars": (frame, exs)} if exs else res["text"]

        self._start("detect", image_job, None, 1)
        if exs:
            n = len(exs)
            self.c.say(f"detect running on frame {frame} with {n} exemplar box{'es' if n != 1 else ''} "
                       f"(SAM 3: more like {'these' if n != 1 else 'this one'})")
        return True

    def push(self, dry_run: bool) -> bool:
        store = self.c.need_store()
        if self.c.cvat is None:
            raise InputError("no CVAT task: pass cvat=(dl_utils.cvat.connect(...), task_id) to Annotator")
        try:
            from ..cvat import push
        except ImportError as e:
            raise InputError(f"CVAT support is not available ({e}); install dl_utils with its cvat extra") from None
        if not dry_run and self.pending_push is None:
            raise InputError("press 'push to CVAT' first: it shows what would change, then confirm")
        conn, task_id = self.c.cvat

        def job(emit: Emit, cancelled: threading.Event) -> Any:
            return push(store, conn, int(task_id), dry_run=dry_run)

        self._start("push dry run" if dry_run else "push", job, None, 1)
        return True

    def cancel(self) -> bool:
        with self.c.lock:
            if self.job == "undo refine":  # running, or ended and not yet applied: either way, not stoppable
                self.c.say("undo refine cannot be stopped half-way (it puts the refined frames back together); "
                           "it ends on its own", "warn")
                return False
            if not self.worker.cancel():
                self.c.say("nothing is running", "warn")
                return False
            self.c.say(f"cancelling {self.job}: finishing the current frame")
            return True

    def on_message(self, name: str, kind: str, payload: Any) -> None:
        """Messages from the job thread, applied on the kernel's thread (see worker.py)."""
        with self.c.lock:
            if kind == "frame":
                done, total = self.progress
                self.progress = (done + 1, total)
                self.c.listener.job_progress(done + 1)
                if payload == self.c.frame:
                    self.c.listener.masks_changed()
            elif kind == "recorded":  # a failed refine the session can undo: one step, kept
                if self._record is not None:
                    self.c.history.push(self._record)
                self._record, self._replay, self._undoable = None, None, True
            elif kind == "done":
                self._finish(name, payload)
            elif kind == "error":
                self._failed(name, payload)

    def _failed(self, name: str, e: BaseException) -> None:
        self.job = None
        replay, self._record, self._replay = self._replay, None, None
        if replay is not None:  # the undo/redo did not happen: its action goes back where it was
            self.c.history.rollback(replay[0], undone=replay[1])
        self.c.listener.job_ended("danger")
        msg = str(e) if isinstance(e, DlUtilsError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, DlUtilsError):
            log.error("%s failed", name, exc_info=(type(e), e, e.__traceback__))
        if name.startswith("push"):
            self.pending_push = None
            msg = f"CVAT push failed (is the server reachable?): {msg}"
        undoable, self._undoable = self._undoable, False
        self.c.say(f"{name} failed: {msg}; results written so far are kept"
                   + (" (undo reverts them)" if undoable else ""), "error")
        self.c.listener.objects_changed()
        self.c.show_frame(self.c.frame)

    def _finish(self, name: str, result: Any) -> None:
        self.job, self.job_summary = None, result
        if name.startswith("push"):
            dry = name == "push dry run"
            self.pending_push = result if dry else None
            self.c.listener.job_ended("success")
            self.c.listener.push_summary("dry run" if dry else "pushed", str(result), dry)
            self.c.say(f"CVAT dry run: {result}; press 'confirm push' to send it" if dry
                       else f"pushed to CVAT: {result}")
            return
        status = result.get("status", "done") if isinstance(result, dict) else "done"
        record, replay, self._record, self._replay = self._record, self._replay, None, None
        used = result.get("exemplars") if isinstance(result, dict) else None
        if used is not None:  # Detect consumed them; the ones drawn meanwhile stay
            self.c.consume_exemplars(*used)
        refined = result.get("refined") if isinstance(result, dict) else None
        if refined is not None:  # the clicks SAM 3 refined with: shown, and the next click adds to them
            oid, frame, clicks = refined
            self.c.clicks.set(oid, frame, clicks)
            if record is not None:  # done or cancelled, it changed frames: one undo step
                self.c.history.push(record)
        undone = result.get("undone") if isinstance(result, dict) else None
        if isinstance(undone, Action):
            self._finish_undo(undone, result)
        elif refined is not None:
            self._finish_refine(result, redo=replay is not None)
        elif status == "cancelled":
            self.c.listener.job_ended("warning")
            self.c.say(f"{name} cancelled; {self.progress[0]} frames written so far are kept", "warn")
        else:
            self.c.listener.job_ended("success")
            self.c.say(f"{name} finished: {self.progress[0]} frames written")
        self.c.listener.objects_changed()
        self.c.show_frame(self.c.frame)

    def _finish_refine(self, r: dict[str, Any], *, redo: bool) -> None:
        """The refine's own count (the clicked frame is reported twice, so the progress is not it)."""
        n = int(r.get("frames_written", self.progress[0]))
        oid, frame = r.get("object"), r.get("frame")
        if r.get("status") == "cancelled":
            self.c.listener.job_ended("warning")
            self.c.say(f"refine cancelled; {n} frames written are kept; refine again (or undo) to complete", "warn")
        else:
            self.c.listener.job_ended("success")
            self.c.say(f"{'redid SAM 3 refine' if redo else 'refine finished'} of object {oid} on frame {frame}: "
                       f"{n} frames written")

    def _finish_undo(self, action: Action, r: dict[str, Any]) -> None:
        """The rows are back; so are the clicked frame's clicks from before the refine."""
        t = action.target
        assert isinstance(t, Sam3Refine)
        self.c.clicks.set(t.object_id, t.frame, action.before if isinstance(action.before, Clicks) else None)
        n = int(r.get("frames_restored", 0))
        self.c.listener.job_progress(self.progress[1])  # one step: the rows come back in one go
        self.c.listener.job_ended("success")
        if (r.get("object"), r.get("frame")) != (t.object_id, t.frame):  # the history and the session disagree
            log.warning("undo %r reverted SAM 3's refine of object %s on frame %s", action.text, r.get("object"),
                        r.get("frame"))
            self.c.say(f"undid SAM 3's refine of object {r.get('object')} on frame {r.get('frame')}, not "
                       f"{action.text}: {n} frames restored; check the object", "warn")
            return
        self.c.say(f"undid {action.text}: {n} frames restored")


__all__ = ["DetectCancelled", "Job", "JobRunner"]
