"""Write ``tests/data/store_schema1.sqlite``: an annotation store as dl-utils wrote it before store
schema 2 (the free ``Instance.prompts`` dict, CVAT sync records in both record formats).

It MUST be run against a pre-schema-2 tree (commit 54927c0 or older), whose ``Instance`` still
takes ``prompts=`` and whose store writes schema 1; the code of this tree refuses to::

    git worktree add /tmp/v1tree 54927c0
    PYTHONPATH=/tmp/v1tree .venv/bin/python tests/data/make_store_schema1.py tests/data/store_schema1.sqlite
    git worktree remove /tmp/v1tree

Why a file and not a store built by today's code: the migration must be proven on what old code
really wrote. Every instance carries the exact ``prompts`` dict one producer of the old code wrote
(each copied from that producer and named in ``PRODUCERS``), built here directly so no model is
needed. The CVAT sync records hold the unit hashes the OLD push planning (``plan_units``) computed
for these instances: the test checks today's planning computes the same, so a re-push after the
migration sends nothing. The planning inputs (tasks, jobs, label ids, host) are kept in the meta
entry ``fixture.push_plan`` so the test plans with exactly the same ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from dl_utils.annotations import Instance, Label, MediaInfo, ShapeType, Source
from dl_utils.store import SCHEMA_VERSION, AnnotationStore

W, H = 64, 48
MODEL = "sam2.1_hiera_tiny"
DETECTOR = "grounding-dino-tiny"
CAPTION = "red car . person ."
HOST = "https://cvat.example"
PLAN = {
    "host": HOST,
    "label_ids": {"car": 101, "person": 102, "bed": 103, "object": 104},
    # two tasks of the same video, two jobs overlapping on task frames 2..3
    "tasks": [
        {"id": 7, "shape": "mask", "record_version": 2, "jobs": [[11, 0, 3], [12, 2, 5]]},
        {"id": 8, "shape": "box", "record_version": 1, "jobs": [[21, 0, 3], [22, 2, 5]]},
    ],
}


def rect(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y1:y2, x1:x2] = True
    return m


def disk(cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return np.hypot(x - cx, y - cy) <= r


EMPTY = np.zeros((H, W), bool)

# (frame, object) -> (producer, instance); the producer names the old code the prompts dict is from
PRODUCERS: dict[tuple[int, int], str] = {}


def main(out: Path) -> None:
    if SCHEMA_VERSION != 1:
        sys.exit(f"this tree writes store schema {SCHEMA_VERSION}; run the script on a pre-schema-2 tree"
                 " (see its docstring)")
    media = MediaInfo("clip.mp4", W, H, list(range(6)), fps=25.0, stop=5)
    store = AnnotationStore.create(out, media, overwrite=True)
    store.set_labels([Label("car", "#ff0000"), Label("person", "#00ff00"), Label("bed", "#0000ff"),
                      Label("object")])
    for label in ("car", "person", "bed", "car", "object", "person"):
        store.add_object(label)
    frames: dict[int, list[Instance]] = {}

    def put(frame: int, producer: str, inst: Instance) -> None:
        PRODUCERS[(frame, inst.object_id)] = producer
        frames.setdefault(frame, []).append(inst)

    # --- samal.py: _Prompt.record (predict), with "mask": "previous" when refining
    m = disk(20, 20, 8)
    put(0, "samal _Prompt.record (points)", Instance(1, mask=m, score=0.93, source=Source.SEMI_AUTO, prompts={
        "points": [[20.0, 20.0, 1], [40.5, 30.25, 0]], "multimask": True, "model": MODEL}))
    put(1, "samal _Prompt.record (refine: mask previous)", Instance(1, mask=disk(21, 20, 8), score=0.9,
        source=Source.SEMI_AUTO, prompts={"points": [[21.0, 20.0, 1]], "mask": "previous",
                                          "multimask": False, "model": MODEL}))
    # --- sam2al/session.py: add_points (refined), propagate forward (visible, then lost), add_box, backward
    put(0, "sam2al add_points", Instance(2, mask=rect(30, 10, 50, 40), score=0.88, source=Source.SEMI_AUTO,
        keyframe=True, prompts={"points": [[40.0, 25.0, 1]], "refined": True, "model": MODEL,
                                "object_score": 9.25, "area": 600}))
    put(1, "sam2al propagate (forward)", Instance(2, mask=rect(31, 10, 51, 40), score=0.85, source=Source.AUTO,
        prompts={"model": MODEL, "direction": "forward", "object_score": 8.5, "area": 600}))
    put(2, "sam2al propagate (forward, lost)", Instance(2, mask=EMPTY, score=None, source=Source.AUTO,
        prompts={"model": MODEL, "direction": "forward", "object_score": -3.0, "area": 0}))
    put(3, "sam2al add_box", Instance(2, mask=rect(28, 12, 48, 40), score=0.91, source=Source.SEMI_AUTO,
        keyframe=True, prompts={"box": [28.0, 12.0, 48.0, 40.0], "model": MODEL, "object_score": 10.0,
                                "area": 560}))
    put(4, "sam2al propagate (backward)", Instance(2, mask=rect(27, 12, 47, 40), score=0.8, source=Source.AUTO,
        prompts={"model": MODEL, "direction": "backward", "object_score": 7.0, "area": 560}))
    # --- sam2al add_mask; cvat/pull.py marker (an edited shape, and one a person deleted)
    put(0, "sam2al add_mask", Instance(3, mask=rect(2, 30, 20, 46), score=None, source=Source.MANUAL,
        keyframe=True, prompts={"mask": "given", "model": MODEL, "object_score": 11.5, "area": 288}))
    put(1, "cvat pull (marker)", Instance(3, mask=rect(3, 30, 21, 46), source=Source.MANUAL, keyframe=True,
        prompts={"cvat": {"host": HOST, "task": 7, "shapes": [41, 44], "tracks": []}}))
    put(2, "cvat pull (marker, deleted)", Instance(3, mask=EMPTY, source=Source.MANUAL, keyframe=True,
        prompts={"cvat": {"host": "https://other.example", "task": 3, "shapes": [], "tracks": [5]}}))
    # --- samal predict_boxes (detector score); dinoal pipeline.segment_detections merge;
    #     dinoal detections.record (box only, with the detector); dinoal/video.py keyframe boxes
    put(0, "samal predict_boxes", Instance(4, mask=rect(5, 5, 15, 12), score=0.77, source=Source.AUTO, prompts={
        "box": [5.0, 5.0, 15.0, 12.0], "multimask": False, "model": MODEL, "detector_score": 0.61}))
    put(1, "dinoal pipeline.segment_detections", Instance(4, mask=rect(6, 5, 16, 12), score=0.79,
        source=Source.AUTO, prompts={"box": [6.0, 5.0, 16.0, 12.0], "multimask": False, "model": MODEL,
                                     "detector_score": 0.64, "text": "red car", "label": "car",
                                     "prompt": CAPTION}))
    put(2, "dinoal detections.record", Instance(4, box=(6.0, 6.0, 17.0, 13.0), score=0.66, source=Source.AUTO,
        shape=ShapeType.BOX, prompts={"text": "red car", "label": "car", "prompt": CAPTION,
                                      "box": [6.0, 6.0, 17.0, 13.0], "detector_score": 0.66,
                                      "detector": DETECTOR}))
    put(3, "dinoal video (keyframe)", Instance(4, box=(7.0, 6.0, 18.0, 13.0), score=0.7, source=Source.AUTO,
        keyframe=True, shape=ShapeType.BOX, prompts={"text": CAPTION, "label": "car"}))
    # --- samal segment_everything
    put(0, "samal segment_everything", Instance(5, mask=disk(50, 8, 5), score=0.96, source=Source.AUTO, prompts={
        "point": [50.0, 8.0], "stability_score": 0.975, "crop_box": [0.0, 0.0, 64.0, 48.0], "model": MODEL,
        "mode": "segment_everything"}))
    # --- formats imports (CVAT XML / COCO): no prompts; a polygon, a box and a mask
    ring = [10.0, 40.0, 30.0, 40.0, 20.0, 47.0]
    from dl_utils.cv_utils import polygons_to_mask

    put(0, "formats import (polygon)", Instance(6, mask=polygons_to_mask([ring], H, W), polygon=[ring],
        shape=ShapeType.POLYGON, source=Source.MANUAL, keyframe=True))
    put(1, "formats import (box)", Instance(6, box=(40.0, 30.0, 60.0, 45.0), shape=ShapeType.BOX,
        source=Source.MANUAL, keyframe=True))
    put(5, "formats import (mask)", Instance(6, mask=disk(45, 35, 6), source=Source.SEMI_AUTO, score=0.5))

    run = store.begin_run("propagate", {"model": MODEL, "objects": [2]})
    for f in sorted(frames):
        store.write_frame(f, frames[f], run_id=run if f in (1, 2, 4) else None)
    store.finish_run(run, "done")
    store.finish_run(store.begin_run("import", {"file": "clip.xml"}), "done")
    store.set_meta("fixture.producers", {f"{f}:{o}": p for (f, o), p in sorted(PRODUCERS.items())})
    store.set_meta("fixture.push_plan", PLAN)
    write_sync_records(store)
    store.close()
    _settle(out)
    with AnnotationStore.open(out) as store:
        store.set_meta("fixture.standin_push", standin_push(out))
    _settle(out)


def write_sync_records(store: AnnotationStore) -> None:
    """The records a push of the old code would leave, its unit hashes from its own planning."""
    from dl_utils.cvat.push import plan_units
    from dl_utils.cvat.tasks import JobInfo, TaskInfo

    media = store.media
    assert media is not None
    server_id = 1000
    for t in PLAN["tasks"]:
        task = TaskInfo(t["id"], "clip", media, [JobInfo(*j) for j in t["jobs"]], mode="interpolation")
        units, skipped = plan_units(store, task, PLAN["label_ids"], host=HOST, shape=t["shape"])
        assert units, t
        recs: dict[str, object] = {}
        for n, (key, u) in enumerate(sorted(units.items())):
            server_id += 1
            held = n == 1  # one unit a person edited in CVAT: push leaves it alone
            if t["record_version"] == 1:
                recs[key] = [u.kind, u.job, None if held else server_id, u.hash, None, int(held)]
            else:
                recs[key] = {"kind": u.kind, "job": u.job, "server_id": None if held else server_id,
                             "sent_hash": u.hash, "server_hash": None, "held": held}
        store.set_meta(f"cvat.push:{HOST}:task:{t['id']}", {
            "version": t["record_version"], "host": HOST, "task": t["id"], "dirty": False, "units": recs})


def standin_push(path: Path) -> dict[str, object]:
    """The sync records the OLD push leaves after pushing a copy of the store to a fresh CVAT
    stand-in (its id counters start at 1, so the same steps give the same ids): masks to one task,
    box tracks to another, both cut into jobs of 4 frames. The host is written as ``<HOST>`` (the
    stand-in's port changes per run); the test repeats the steps with today's code and compares."""
    import json
    import shutil
    import tempfile

    from dl_utils.cvat import create_task_for_store, push

    from tests.cvat_standin.server import StandinServer
    from tests.test_cvat import conn_for, write_clip

    tmp = Path(tempfile.mkdtemp())
    copy = tmp / "copy.sqlite"
    shutil.copyfile(path, copy)
    srv = StandinServer().start()
    try:
        conn = conn_for(srv)
        with AnnotationStore.open(copy) as st:
            media = st.media
            assert media is not None
            st.set_media(MediaInfo(**{**media.to_dict(), "path": write_clip(tmp / "clip.mp4", 6)}))
            masks = create_task_for_store(conn, st, segment_size=4, poll_interval=0.01)
            boxes = create_task_for_store(conn, st, segment_size=4, poll_interval=0.01)
            push(st, conn, masks.id)
            push(st, conn, boxes.id, shape="box")
            out = {name: json.loads(json.dumps(st.get_meta(f"cvat.push:{conn.host}:task:{t.id}"))
                                    .replace(conn.host, "<HOST>"))
                   for name, t in (("masks", masks), ("boxes", boxes))}
        conn.close()
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _settle(path: Path) -> None:
    """One self-contained file (no -wal beside it) so the fixture is a single committed file."""
    import sqlite3

    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("VACUUM")
    finally:
        conn.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: PYTHONPATH=<pre-schema-2 tree> python make_store_schema1.py OUT.sqlite")
    main(Path(sys.argv[1]))
