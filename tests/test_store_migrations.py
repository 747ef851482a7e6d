"""Store schema migrations, proven on a file the old code wrote.

``tests/data/store_schema1.sqlite`` was written by dl-utils before store schema 2 (commit 54927c0)
with ``tests/data/make_store_schema1.py``: instances carrying the exact ``prompts`` dict each old
producer wrote, runs, labels, and CVAT sync records in the version-1 list format and in version 2,
their unit hashes computed by the old push planning. Opening a copy writable migrates it to schema
2; opening it read-only reads it in place and writes nothing; a store written before the change
pushes the same after it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from dl_utils.annotations import Clicks, CvatOrigin, Instance, MediaInfo, Provenance, split_legacy_prompts
from dl_utils.errors import StoreError, StoreVersionError
from dl_utils.store import SCHEMA_VERSION, AnnotationStore

FIXTURE = Path(__file__).parent / "data" / "store_schema1.sqlite"
HOST = "https://cvat.example"
MODEL = "sam2.1_hiera_tiny"
CAPTION = "red car . person ."
# every column but the old prompts: what the migration must carry over byte for byte
KEPT = ("frame, object_id, shape, x1, y1, x2, y2, mask_h, mask_w, rle, rle_box, polygon, area, score, source,"
        " keyframe, run_id, updated")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def v1_copy(tmp_path) -> Path:
    p = tmp_path / "old.sqlite"
    shutil.copyfile(FIXTURE, p)
    return p


def all_instances(store: AnnotationStore) -> dict[tuple[int, int], Instance]:
    return {(f, i.object_id): i for f, insts in store.iter_frames() for i in insts}


def test_fixture_is_what_the_old_code_wrote():
    assert raw(FIXTURE, "PRAGMA user_version") == [(1,)]
    cols = [r[1] for r in raw(FIXTURE, "PRAGMA table_info(instances)")]
    assert "prompts" in cols and "clicks" not in cols
    assert FIXTURE.stat().st_size < 300_000
    assert not Path(str(FIXTURE) + "-wal").exists()


def test_writable_open_migrates_to_the_current_schema(v1_copy, tmp_path):
    old_rows = raw(v1_copy, f"SELECT {KEPT}, prompts FROM instances ORDER BY frame, object_id")
    old_meta = dict(raw(v1_copy, "SELECT key, value FROM meta"))
    with AnnotationStore.open(v1_copy) as st:
        assert st.schema_version == SCHEMA_VERSION == 2
        assert st.summary()["schema_version"] == 2
        insts = all_instances(st)
        runs = st.runs()
    # the file has exactly a new store's schema, every old column value kept
    fresh = AnnotationStore.create(tmp_path / "new.sqlite")
    fresh.close()
    schema = "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    assert raw(v1_copy, schema) == raw(tmp_path / "new.sqlite", schema)
    assert raw(v1_copy, f"SELECT {KEPT} FROM instances ORDER BY frame, object_id") == [r[:-1] for r in old_rows]
    # typed fields: what the one legacy converter makes of each old dict
    assert len(insts) == len(old_rows) == 18
    for row in old_rows:
        inst = insts[(row[0], row[1])]
        want = split_legacy_prompts(json.loads(row[-1]) if row[-1] else None)
        assert (inst.label, inst.clicks, inst.provenance) == want, (row[0], row[1])
    # meta other than the sync records is untouched; runs read as before
    new_meta = dict(raw(v1_copy, "SELECT key, value FROM meta"))
    assert {k: v for k, v in new_meta.items() if not k.startswith("cvat.push:")} == {
        k: v for k, v in old_meta.items() if not k.startswith("cvat.push:")}
    assert [(r["kind"], r["status"]) for r in runs] == [("propagate", "done"), ("import", "done")]


def test_each_old_producer_becomes_typed_fields(v1_copy):
    with AnnotationStore.open(v1_copy) as st:
        insts = all_instances(st)
        producers = st.get_meta("fixture.producers")
    assert len(producers) == len(insts)
    i = insts[(0, 1)]  # samal _Prompt.record
    assert i.clicks == Clicks(points=((20, 20, 1), (40.5, 30.25, 0)), multimask=True)
    assert i.provenance == Provenance(model=MODEL) and i.label is None
    assert insts[(1, 1)].clicks == Clicks(points=((21, 20, 1),), mask="previous", multimask=False)
    i = insts[(0, 2)]  # sam2al add_points
    assert i.clicks == Clicks(points=((40, 25, 1),), refined=True)
    assert i.provenance == Provenance(model=MODEL, object_score=9.25, area=600)
    i = insts[(1, 2)]  # sam2al propagation
    assert i.clicks is None
    assert i.provenance == Provenance(engine="sam2-video", model=MODEL, direction="forward", object_score=8.5,
                                      area=600)
    assert insts[(4, 2)].provenance.direction == "backward" and insts[(2, 2)].provenance.area == 0
    assert insts[(3, 2)].clicks == Clicks(box=(28, 12, 48, 40))
    assert insts[(0, 3)].clicks == Clicks(mask="given")  # sam2al add_mask
    i = insts[(1, 3)]  # cvat pull marker
    assert i.provenance == Provenance(engine="cvat", cvat=CvatOrigin(HOST, 7, (41, 44)))
    assert i.provenance.from_person and i.clicks is None
    assert insts[(2, 3)].provenance.cvat == CvatOrigin("https://other.example", 3, (), (5,))
    i = insts[(0, 4)]  # samal predict_boxes
    assert i.clicks == Clicks(box=(5, 5, 15, 12), multimask=False)
    assert i.provenance == Provenance(model=MODEL, detector_score=0.61)
    i = insts[(1, 4)]  # dinoal segment_detections
    assert i.label == "car"
    assert i.provenance == Provenance(model=MODEL, detector_score=0.64, caption=CAPTION, phrase="red car")
    i = insts[(2, 4)]  # dinoal detections.record
    assert i.label == "car" and i.provenance.detector == "grounding-dino-tiny"
    assert (i.provenance.caption, i.provenance.phrase) == (CAPTION, "red car")
    i = insts[(3, 4)]  # dinoal video keyframe: the caption was kept as "text"
    assert i.label == "car" and i.provenance == Provenance(caption=CAPTION) and i.clicks is None
    i = insts[(0, 5)]  # segment_everything
    assert i.provenance.engine == "sam2-image" and i.provenance.model == MODEL
    assert dict(i.provenance.extra) == {"point": [50.0, 8.0], "stability_score": 0.975,
                                        "crop_box": [0.0, 0.0, 64.0, 48.0], "mode": "segment_everything"}
    for f in (0, 1, 5):  # formats imports wrote no prompts
        assert (insts[(f, 6)].clicks, insts[(f, 6)].provenance, insts[(f, 6)].label) == (None, None, None)


def test_readonly_open_reads_in_place_and_writes_nothing(v1_copy):
    before = sha(v1_copy)
    with AnnotationStore.open(v1_copy, readonly=True) as ro:
        assert ro.schema_version == 1 and ro.summary()["schema_version"] == 1
        old = all_instances(ro)
        by_object = {o.id: ro.read_object(o.id) for o in ro.objects()}
        from dl_utils.cvat.records import SyncState

        v1_record = SyncState.load(ro, HOST, 8)  # still in the list format: read by the records' check
        with pytest.raises(StoreError, match="read-only"):
            ro.set_meta("x", 1)
    assert sha(v1_copy) == before
    assert raw(v1_copy, "PRAGMA user_version") == [(1,)]
    assert v1_record is not None and len(v1_record.units) > 0
    with AnnotationStore.open(v1_copy) as st:  # the same instances, migrated
        new = all_instances(st)
        assert SyncState.load(st, HOST, 8) == v1_record
    assert old.keys() == new.keys()
    for key, a in old.items():
        b = new[key]
        assert by_object[key[1]][key[0]].provenance == a.provenance
        assert np.array_equal(a.mask, b.mask) if a.mask is not None else b.mask is None, key
        assert (a.box, a.polygon, a.score, a.source, a.shape, a.keyframe, a.label, a.clicks, a.provenance) == (
            b.box, b.polygon, b.score, b.source, b.shape, b.keyframe, b.label, b.clicks, b.provenance), key


def test_store_info_shows_the_schema_version(v1_copy, capsys):
    from dl_utils.cli import main

    assert main(["store", "info", str(v1_copy)]) == 0
    assert json.loads(capsys.readouterr().out)["schema_version"] == 1
    AnnotationStore.open(v1_copy).close()
    assert main(["store", "info", str(v1_copy)]) == 0
    assert json.loads(capsys.readouterr().out)["schema_version"] == 2


def test_sync_records_become_version_2_in_the_same_migration(v1_copy):
    old = {k: json.loads(v) for k, v in raw(v1_copy, "SELECT key, value FROM meta WHERE key LIKE 'cvat.push:%'")}
    assert sorted(r["version"] for r in old.values()) == [1, 2]
    with AnnotationStore.open(v1_copy) as st:
        for key, rec in old.items():
            new = st.get_meta(key)
            assert new["version"] == 2 and {k: new[k] for k in ("host", "task", "dirty")} == {
                k: rec[k] for k in ("host", "task", "dirty")}
            assert new["units"].keys() == rec["units"].keys()
            for k, u in rec["units"].items():
                if rec["version"] == 1:
                    kind, job, sid, h, sh, held = u
                    u = {"kind": kind, "job": job, "server_id": sid, "sent_hash": h, "server_hash": sh,
                         "held": bool(held)}
                assert new["units"][k] == u, (key, k)


def test_a_failed_migration_leaves_the_old_store_as_it_was(v1_copy):
    conn = sqlite3.connect(v1_copy)
    conn.execute("UPDATE instances SET prompts = '{broken' WHERE frame = 3 AND object_id = 4")
    conn.commit()
    conn.close()
    before = raw(v1_copy, "SELECT * FROM instances ORDER BY frame, object_id")
    with pytest.raises(StoreError, match=r"old.sqlite: frame 3, object 4: the stored prompts are not JSON"):
        AnnotationStore.open(v1_copy)
    assert raw(v1_copy, "PRAGMA user_version") == [(1,)]
    assert raw(v1_copy, "SELECT * FROM instances ORDER BY frame, object_id") == before


def test_newer_schema_is_refused_naming_file_and_versions(v1_copy):
    conn = sqlite3.connect(v1_copy)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    for readonly in (False, True):
        with pytest.raises(StoreVersionError) as e:
            AnnotationStore.open(v1_copy, readonly=readonly)
        msg = str(e.value)
        assert "old.sqlite" in msg and str(SCHEMA_VERSION + 1) in msg and f"({SCHEMA_VERSION})" in msg
        assert "upgrade dl-utils" in msg


def plan_of(store: AnnotationStore):
    """(task, record, units) per task of the fixture's push plan, planned by today's push code."""
    from dl_utils.cvat.push import plan_units
    from dl_utils.cvat.records import SyncState
    from dl_utils.cvat.tasks import JobInfo, TaskInfo

    plan = store.get_meta("fixture.push_plan")
    media = store.media
    for t in plan["tasks"]:
        task = TaskInfo(t["id"], "clip", media, [JobInfo(*j) for j in t["jobs"]], mode="interpolation")
        units, skipped = plan_units(store, task, plan["label_ids"], host=plan["host"], shape=t["shape"])
        yield t, SyncState.load(store, plan["host"], t["id"]), units, skipped


def test_a_store_written_before_the_change_pushes_the_same_after_it(v1_copy):
    """The unit hashes today's planning computes for the migrated store are the hashes the old code
    sent and recorded: a re-push finds every unit unchanged and sends nothing."""
    with AnnotationStore.open(v1_copy) as st:
        seen = 0
        for t, state, units, skipped in plan_of(st):
            assert state is not None and set(units) == set(state.units), t["id"]
            for key, u in units.items():
                r = state.units[key]
                assert (u.kind, u.job, u.hash) == (r.kind, r.job, r.sent_hash), (t["id"], key)
            seen += len(units)
            # the instance pulled from task 7 of this host is people's: never pushed back to it
            assert skipped == (1 if t["id"] == 7 else 0)
            if t["id"] == 7:
                assert "m:1:3" not in units and "m:1:3:j12" not in units
        assert seen > 20


def test_migrated_store_replans_like_the_readonly_view(v1_copy):
    """Reading the v1 file in place plans the same units as the migrated file (one converter)."""
    with AnnotationStore.open(v1_copy, readonly=True) as ro:
        before = [(t["id"], {k: u.hash for k, u in units.items()}) for t, _s, units, _n in plan_of(ro)]
    with AnnotationStore.open(v1_copy) as st:
        after = [(t["id"], {k: u.hash for k, u in units.items()}) for t, _s, units, _n in plan_of(st)]
    assert before == after


def test_staged_append_to_an_old_store_migrates_the_copy(v1_copy):
    from dl_utils.store import staged_store

    media = MediaInfo("clip.mp4", 64, 48, list(range(6)), fps=25.0, stop=5)
    with staged_store(v1_copy, keep_existing=True, media=media) as st:
        assert st.schema_version == 2
    assert raw(v1_copy, "PRAGMA user_version") == [(2,)]


def test_a_migrated_store_pushes_to_cvat_as_the_old_code_did(v1_copy, tmp_path):
    """The same steps the fixture script ran with the old code (a fresh stand-in, a task for masks
    and one for box tracks, jobs of 4 frames), run on the migrated store with today's code: the
    records are the old ones (same server ids, sent hashes, jobs), and a re-push sends nothing."""
    from dl_utils.cvat import create_task_for_store, push

    from tests.cvat_standin.server import StandinServer
    from tests.test_cvat import conn_for, patches, write_clip

    srv = StandinServer().start()  # its own: id counters from 1, as when the fixture was made
    try:
        conn = conn_for(srv)
        with AnnotationStore.open(v1_copy) as st:
            captured = st.get_meta("fixture.standin_push")
            st.set_media(MediaInfo(**{**st.media.to_dict(), "path": write_clip(tmp_path / "clip.mp4", 6)}))
            masks = create_task_for_store(conn, st, segment_size=4, poll_interval=0.01)
            boxes = create_task_for_store(conn, st, segment_size=4, poll_interval=0.01)
            push(st, conn, masks.id)
            push(st, conn, boxes.id, shape="box")
            for name, t in (("masks", masks), ("boxes", boxes)):
                got = json.loads(json.dumps(st.get_meta(f"cvat.push:{conn.host}:task:{t.id}"))
                                 .replace(conn.host, "<HOST>"))
                assert got == captured[name], name
            mark = len(srv.log)
            for t, shape in ((masks, "mask"), (boxes, "box")):
                rep = push(st, conn, t.id, shape=shape)
                assert rep.created == rep.updated == rep.deleted == 0 and rep.unchanged, shape
            assert patches(srv, mark) == []
        conn.close()
    finally:
        srv.stop()
