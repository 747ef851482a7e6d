"""The CVAT sync records (``dl_utils.cvat.records``): format, version check, migration of old stores.

``tests/data/cvat_push_state_v1.json`` is the store meta that dl-utils wrote before the records
became dataclasses (``{"version": 1, ..., "units": {key: [kind, job, sid, hash, server_hash, held]}}``),
captured by running :func:`scenario` with that code against a fresh stand-in (its id counters start
at 1, so the same scenario gives the same server, job and label ids). A store carrying
it must open and push exactly as it did: nothing sent again, held units still held.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dl_utils.annotations import MediaInfo
from dl_utils.cv_utils import encode_cvat_rle
from dl_utils.cvat import create_task_for_store, pull, push
from tests.cvat_standin.fixtures import cvat_server  # noqa: F401  (fixture)
from tests.test_cvat import conn_for, make_store, patches, write_clip

FIXTURE = Path(__file__).parent / "data" / "cvat_push_state_v1.json"
HOST = "<HOST>"


def scenario(server, tmp_path: Path):
    """A store pushed to two tasks of a video with overlapping jobs: masks (one edited and one
    deleted by a person, so two units are held) and box tracks. Returns (store, conn, tasks, held)."""
    conn = conn_for(server)
    video = write_clip(tmp_path / "v.mp4", 24)
    st, _ = make_store(tmp_path / "v.sqlite", np.random.default_rng(1234), frames=list(range(24)),
                       n_obj=3, gap=())
    st.set_media(MediaInfo(**{**st.media.to_dict(), "path": video}))
    masks = create_task_for_store(conn, st, segment_size=10, poll_interval=0.01)  # overlap 5
    boxes = create_task_for_store(conn, st, segment_size=10, poll_interval=0.01)
    push(st, conn, masks.id)
    push(st, conn, boxes.id, shape="box")
    j0 = masks.jobs[0].id
    shapes = conn.request("GET", f"/api/jobs/{j0}/annotations", what="read")["shapes"]
    by = {(s["frame"], s["group"]): s for s in shapes}
    edited = dict(by[(1, 1)], source="manual")
    m = np.zeros((48, 64), bool)
    m[5:20, 5:30] = True
    edited["points"] = encode_cvat_rle(m)
    conn.request("PATCH", f"/api/jobs/{j0}/annotations", query={"action": "update"},
                 body={"version": 0, "tags": [], "tracks": [], "shapes": [edited]}, what="a person edits")
    conn.request("PATCH", f"/api/jobs/{j0}/annotations", query={"action": "delete"},
                 body={"version": 0, "tags": [], "tracks": [], "shapes": [by[(2, 3)]]},
                 what="a person deletes")
    held = push(st, conn, masks.id).held
    assert held == ["m:1:1", "m:2:3"], held
    return st, conn, [masks, boxes], held


def meta_keys(conn, tasks) -> list[str]:
    return [f"cvat.push:{conn.host}:task:{t.id}" for t in tasks]


def dump_meta(st, conn, tasks) -> dict:
    """The push records of the scenario, host replaced (the stand-in's port changes per run)."""
    out = {}
    for t, key in zip(tasks, meta_keys(conn, tasks)):
        out[f"task{tasks.index(t)}"] = json.loads(json.dumps(st.get_meta(key)).replace(conn.host, HOST))
    return out


def write_fixture_meta(st, conn, tasks, captured: dict) -> None:
    for t, key in zip(tasks, meta_keys(conn, tasks)):
        st.set_meta(key, json.loads(json.dumps(captured[f"task{tasks.index(t)}"]).replace(HOST, conn.host)))


def test_fixture_is_the_old_list_format():
    captured = json.loads(FIXTURE.read_text())
    for state in captured.values():
        assert state["version"] == 1 and state["dirty"] is False
        for key, rec in state["units"].items():
            assert isinstance(rec, list) and len(rec) == 6 and rec[0] in ("s", "t"), (key, rec)
    keys = set(captured["task0"]["units"])
    assert any(":j" in k for k in keys)  # overlap copies
    assert all(k.startswith("tb:") for k in captured["task1"]["units"])


def test_unit_keys_round_trip_and_name_their_parts():
    from dl_utils.cvat.records import UnitKey

    captured = json.loads(FIXTURE.read_text())
    for state in captured.values():
        for key in state["units"]:
            assert str(UnitKey.parse(key)) == key
    k = UnitKey.parse("p:7:3:2:j12")
    assert (k.shape, k.frame, k.object_id, k.ring, k.job, k.track) == ("polygon", 7, 3, 2, 12, False)
    assert str(k.base) == "p:7:3:2" and str(UnitKey.parse("m:5:1").copy_in(9)) == "m:5:1:j9"
    t = UnitKey.parse("tb:4:0:31")
    assert (t.shape, t.frame, t.object_id, t.job, t.track) == ("box", None, 4, 31, True)
    assert str(t.base) == "tb:4:0"
    assert str(UnitKey.track_unit("polygon", 2, 1, 8)) == "tp:2:1:8"
    assert str(UnitKey.shape_unit("box", 11, 6)) == "b:11:6"


@pytest.mark.parametrize("bad", ["x:1:2", "m:1", "m:a:2", "p:1:2", "m:1:2:k3", "tb:1"])
def test_unknown_unit_keys_are_refused(bad):
    from dl_utils.cvat.records import UnitKey
    from dl_utils.errors import CvatError

    with pytest.raises(CvatError, match="not one dl-utils writes"):
        UnitKey.parse(bad)


def test_v1_records_migrate_field_by_field():
    from dl_utils.cvat.records import RECORD_VERSION, SyncState

    captured = json.loads(FIXTURE.read_text())["task0"]
    st = SyncState.from_json(captured, "h", 1)
    for key, (kind, job, sid, h, sh, held) in captured["units"].items():
        r = st.units[key]
        assert (r.kind, r.job, r.server_id, r.sent_hash, r.server_hash, r.held) == (kind, job, sid, h, sh,
                                                                                      bool(held))
    d = st.to_json()
    assert d["version"] == RECORD_VERSION and set(d) == {"version", "host", "task", "dirty", "units"}
    assert set(d["units"]["m:2:3"]) == {"kind", "job", "server_id", "sent_hash", "server_hash", "held"}
    again = SyncState.from_json(json.loads(json.dumps(d)), "h", 1)
    assert again == st and again.units["m:2:3"].held and again.units["m:2:3"].server_id is None


@pytest.fixture
def fresh_server():
    """A stand-in of its own, its id counters from 1: the captured record names the server ids,
    job ids and label ids of a fresh server (the shared one keeps counting across tests)."""
    from tests.cvat_standin.server import StandinServer

    srv = StandinServer().start()
    try:
        yield srv
    finally:
        srv.stop()


def test_old_store_opens_and_pushes_the_same(fresh_server, tmp_path):
    cvat_server = fresh_server
    captured = json.loads(FIXTURE.read_text())
    st, conn, tasks, held = scenario(cvat_server, tmp_path)
    write_fixture_meta(st, conn, tasks, captured)
    st.close()
    from dl_utils.store import AnnotationStore

    with AnnotationStore.open(tmp_path / "v.sqlite") as st2:
        mark = len(cvat_server.log)
        rep = push(st2, conn, tasks[0].id)
        assert rep.held == held and rep.created == rep.updated == rep.deleted == 0
        rep = push(st2, conn, tasks[1].id, shape="box")
        assert rep.held == [] and rep.created == rep.updated == rep.deleted == 0 and rep.unchanged
        assert patches(cvat_server, mark) == []
        # the store now holds the current format, and still pushes the same
        for key in meta_keys(conn, tasks):
            assert st2.get_meta(key)["version"] == 2
        assert push(st2, conn, tasks[0].id).held == held
        assert patches(cvat_server, mark) == []
        # and a pull hands the held units over as before
        pull(st2, conn, tasks[0].id)
        assert push(st2, conn, tasks[0].id).held == []
    conn.close()


def test_newer_record_version_is_refused_with_upgrade_hint(cvat_server, tmp_path):
    from dl_utils.errors import CvatError

    captured = json.loads(FIXTURE.read_text())
    st, conn, tasks, _ = scenario(cvat_server, tmp_path)
    future = dict(captured["task0"], version=99)
    st.set_meta(meta_keys(conn, tasks)[0], json.loads(json.dumps(future).replace(HOST, conn.host)))
    mark = len(cvat_server.log)
    for op in (lambda: push(st, conn, tasks[0].id), lambda: pull(st, conn, tasks[0].id)):
        with pytest.raises(CvatError, match="upgrade dl-utils"):
            op()
    assert patches(cvat_server, mark) == []
    st.close()
    conn.close()


def test_the_sink_uses_no_private_names_of_other_modules():
    """dl_utils.cvat imports only public names from outside the package and calls no private
    method of another module's objects (the shared helpers are public where they live)."""
    import ast

    import dl_utils.cvat as pkg

    bad = []
    for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 or (
                    isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dl_utils.")
                    and not (node.module or "").startswith("dl_utils.cvat")):
                bad += [f"{path.name}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                attr = node.func.attr
                if attr.startswith("_") and not attr.startswith("__"):
                    owner = node.func.value
                    if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                        bad.append(f"{path.name}:{node.lineno} .{attr}()")
    assert bad == [], bad
