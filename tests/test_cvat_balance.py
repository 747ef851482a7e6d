"""``dl-utils cvat balance``: the planner on synthetic counts, and plan / apply / resume against the
stand-in CVAT server (moves are PATCH project_id; nothing is ever deleted)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dl_utils.errors import CvatError, InputError

pytest.importorskip("cvat_sdk")

from tests.cvat_standin.fixtures import cvat_server  # noqa: E402,F401  (the fixture)

from dl_utils.cvat import RetryPolicy, connect  # noqa: E402
from dl_utils.cvat.balance import (BalanceOptions, TaskCounts, balance, count_annotations,  # noqa: E402
                                   plan_moves, project_totals)
from dl_utils.cvat.projects import CreateTasksOptions, create_tasks  # noqa: E402


# ------------------------------------------------------------------------------------ planner
def synthetic(seed: int = 0, n: int = 40) -> list[TaskCounts]:
    """An unbalanced pool: every task starts in project 1, class sizes vary a lot per task."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        counts = {"car": int(rng.integers(0, 60)), "person": int(rng.integers(0, 20))}
        if i % 4 == 0:
            counts["bike"] = int(rng.integers(1, 10))
        out.append(TaskCounts(100 + i, f"video{i:02d}", 1, counts))
    return out


def shares(tasks, moves, projects, mode="move"):
    where = {t.id: [t.project_id] for t in tasks}
    for m in moves:
        where[m.task_id] = [m.target] if mode == "move" else where[m.task_id] + [m.target]
    classes = sorted({c for t in tasks for c in t.counts})
    tot = project_totals(tasks, projects, classes, where)
    return {c: [tot[p][c] / sum(tot[q][c] for q in projects) for p in projects] for c in classes}


def test_plan_brings_shares_toward_the_ratios_and_is_deterministic():
    tasks = synthetic()
    ratios = (0.8, 0.1, 0.1)
    moves = plan_moves(tasks, (1, 2, 3), ratios)
    assert moves == plan_moves(list(reversed(tasks)), (1, 2, 3), ratios)  # order does not matter
    assert all(m.source == 1 and m.target in (2, 3) for m in moves)
    got = shares(tasks, moves, (1, 2, 3))
    for c, s in got.items():  # whole tasks only: 'bike' is in just 10 tasks
        assert max(abs(a - b) for a, b in zip(s, ratios)) < (0.1 if c == "bike" else 0.03), (c, s)
    # a local optimum: planning again from the result finds nothing
    moved = {m.task_id: m.target for m in moves}
    after = [TaskCounts(t.id, t.name, moved.get(t.id, t.project_id), t.counts) for t in tasks]
    assert plan_moves(after, (1, 2, 3), ratios) == []


def test_plan_copy_mode_keeps_originals_and_copies_once():
    tasks = synthetic(1, 20)
    moves = plan_moves(tasks, (1, 2), (0.5, 0.5), mode="copy")
    assert moves and len({m.task_id for m in moves}) == len(moves)
    got = shares(tasks, moves, (1, 2), mode="copy")
    before = shares(tasks, [], (1, 2))
    assert all(abs(got[c][1] - 0.5) < abs(before[c][1] - 0.5) for c in got)


def test_options_refuse_bad_ratios_and_projects():
    with pytest.raises(InputError, match="sum to 1"):
        BalanceOptions((1, 2), (0.8, 0.3))
    with pytest.raises(InputError, match="one ratio per project"):
        BalanceOptions((1, 2, 3), (0.5, 0.5))
    with pytest.raises(InputError, match="named twice"):
        BalanceOptions((1, 1), (0.5, 0.5))
    with pytest.raises(InputError, match="mode"):
        BalanceOptions((1, 2), (0.5, 0.5), mode="swap")


def test_count_annotations_counts_shapes_and_tracks_not_tags():
    data = {"shapes": [{"label_id": 1}, {"label_id": 1}, {"label_id": 2}],
            "tracks": [{"label_id": 2, "shapes": [{}, {}, {}]}], "tags": [{"label_id": 1}]}
    assert count_annotations(data, {1: "car", 2: "person"}) == {"car": 2, "person": 2}


# ------------------------------------------------------------------------------------ server
def conn_for(server, retries: int = 2):
    return connect(server.url, token=server.token, prompt=False,
                   retry=RetryPolicy(retries=retries, base_delay=0.0), sleep=lambda s: None)


LABELS = ("car", "person")


def make_project(conn, name, labels=LABELS):
    return int(conn.request("POST", "/api/projects", body={"name": name, "labels": [
        {"name": n} for n in labels]})["id"])


def rect(label_id: int, frame: int, k: int) -> dict:
    return {"type": "rectangle", "frame": frame, "label_id": label_id, "group": 0, "source": "manual",
            "occluded": False, "outside": False, "z_order": 0, "rotation": 0.0,
            "points": [1.0 + k % 5, 1.0, 6.0, 6.0], "attributes": []}


def seed(conn, server, tmp_path, counts: list[dict[str, int]], project_names=("train", "val", "test"),
         labels=LABELS) -> tuple[tuple[int, ...], dict[str, int]]:
    """Projects, and in the first one a task of one image per entry with those instance counts."""
    pids = tuple(make_project(conn, n, labels) for n in project_names)
    folders = []
    for i in range(len(counts)):
        d = tmp_path / f"v{i:02d}"
        d.mkdir()
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(d / "f.png")
        folders.append(d)
    rep = create_tasks(conn, pids[0], folders, CreateTasksOptions(poll_interval=0.01), progress=False)
    ids = {c["name"]: c["task"] for c in rep.created}
    lab = {lb["name"]: lb["id"] for lb in server.state.labels.values() if lb.get("project_id") == pids[0]}
    for i, cnt in enumerate(counts):
        shapes = [rect(lab[c], 0, k) for c, n in sorted(cnt.items()) for k in range(n)]
        conn.request("PUT", f"/api/tasks/{ids[f'v{i:02d}']}/annotations",
                     body={"version": 0, "tags": [], "shapes": shapes, "tracks": []})
    return pids, ids


COUNTS = [{"car": 8, "person": 2}, {"car": 1}, {"car": 1, "person": 1}, {"car": 6, "person": 5},
          {"person": 2}, {"car": 2}, {"car": 3, "person": 1}, {"car": 7, "person": 4},
          {"car": 1, "person": 1}, {"person": 3}]


def where(server) -> dict[str, int]:
    return {t["name"]: t["project_id"] for t in server.state.tasks.values()}


def test_apply_moves_tasks_and_a_rerun_changes_nothing(cvat_server, tmp_path):
    conn = conn_for(cvat_server)
    pids, ids = seed(conn, cvat_server, tmp_path, COUNTS)
    opts = BalanceOptions(pids, (0.6, 0.2, 0.2), cache_dir=tmp_path / "cache")
    plan = balance(conn, opts, progress=False)  # plan only
    assert plan.moves and all(m.source == pids[0] for m in plan.moves)
    assert set(where(cvat_server).values()) == {pids[0]}  # nothing moved
    assert not [e for e in cvat_server.log if e.method == "PATCH"]
    before_gap = plan.error(plan.before())
    assert plan.error(plan.expected()) < before_gap
    text = str(plan)
    assert "car" in text and "-> " in text and "largest share gap" in text

    # the annotations of the moved tasks follow them onto the target project's labels
    applied = balance(conn, opts, progress=False, apply=True)
    assert [a["result"] for a in applied.applied] == ["moved"] * len(plan.moves)
    assert applied.after_read == plan.expected()
    loc = where(cvat_server)
    for m in plan.moves:
        assert loc[m.name] == m.target
        ann = conn.request("GET", f"/api/tasks/{m.task_id}/annotations")
        target_labels = {lb["id"] for lb in cvat_server.state.labels.values() if lb.get("project_id") == m.target}
        assert {s["label_id"] for s in ann["shapes"]} <= target_labels
    mark = len(cvat_server.log)
    again = balance(conn, opts, progress=False, apply=True)
    assert again.moves == [] and where(cvat_server) == loc
    assert not [e for e in cvat_server.log[mark:] if e.method != "GET"]
    assert not [e for e in cvat_server.log if e.method == "DELETE"]


def test_interrupted_apply_resumes(cvat_server, tmp_path):
    conn = conn_for(cvat_server, retries=0)
    pids, ids = seed(conn, cvat_server, tmp_path, COUNTS)
    opts = BalanceOptions(pids, (0.6, 0.2, 0.2), cache_dir=tmp_path / "cache")
    planned = balance(conn, opts, progress=False).moves
    assert len(planned) >= 2
    # the second move fails (server error, not retried with --retries 0)
    cvat_server.faults.fail_matching("PATCH", r"/api/tasks/\d+", skip=1, status=500)
    with pytest.raises(CvatError, match="run the same command again"):
        balance(conn, opts, progress=False, apply=True)
    loc = where(cvat_server)
    assert loc[planned[0].name] == planned[0].target and loc[planned[1].name] == pids[0]
    done = balance(conn, opts, progress=False, apply=True)
    assert done.resumed and done.moves == planned
    assert [a["result"] for a in done.applied][0] == "already in the target project"
    assert all(where(cvat_server)[m.name] == m.target for m in planned)
    assert not [e for e in cvat_server.log if e.method == "DELETE"]
    assert balance(conn, opts, progress=False, apply=True).moves == []


def test_a_saved_plan_the_server_no_longer_fits_is_planned_anew(cvat_server, tmp_path):
    conn = conn_for(cvat_server, retries=0)
    pids, ids = seed(conn, cvat_server, tmp_path, COUNTS)
    opts = BalanceOptions(pids, (0.6, 0.2, 0.2), cache_dir=tmp_path / "cache")
    cvat_server.faults.fail_matching("PATCH", r"/api/tasks/\d+", skip=1, status=500)
    with pytest.raises(CvatError):
        balance(conn, opts, progress=False, apply=True)
    planned = balance(conn, opts, progress=False).moves  # what is left to do
    # someone moves a task the saved plan still has to move into a fourth project
    extra = make_project(conn, "elsewhere")
    conn.request("PATCH", f"/api/tasks/{planned[-1].task_id}", body={"project_id": extra})
    res = balance(conn, opts, progress=False, apply=True)
    assert not res.resumed and planned[-1].task_id not in {m.task_id for m in res.moves}
    assert balance(conn, opts, progress=False, apply=True).moves == []
    # a plan step that finds its task elsewhere stops, names it, and drops the saved plan
    from dl_utils.cvat.balance import Move, StalePlanError, _move_one

    with pytest.raises(StalePlanError, match=rf"task {planned[-1].task_id} .* is now in project {extra}"):
        _move_one(conn, Move(planned[-1].task_id, planned[-1].name, pids[0], pids[1]))
    assert not [e for e in cvat_server.log if e.method == "DELETE"]


def test_missing_labels_stop_before_anything_moves(cvat_server, tmp_path):
    conn = conn_for(cvat_server)
    pids = (make_project(conn, "train"), make_project(conn, "val", labels=("car",)))
    # tasks only with cars, yet CVAT needs every label of the source project in the target
    folders = []
    for i in range(2):
        d = tmp_path / f"v{i}"
        d.mkdir()
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(d / "f.png")
        folders.append(d)
    rep = create_tasks(conn, pids[0], folders, CreateTasksOptions(poll_interval=0.01), progress=False)
    car = next(lb["id"] for lb in cvat_server.state.labels.values()
               if lb.get("project_id") == pids[0] and lb["name"] == "car")
    for c in rep.created:
        conn.request("PUT", f"/api/tasks/{c['task']}/annotations",
                     body={"version": 0, "tags": [], "tracks": [], "shapes": [rect(car, 0, 0)]})
    tid = rep.created[0]["task"]
    opts = BalanceOptions(pids, (0.5, 0.5), cache_dir=tmp_path / "cache")
    # the stand-in refuses the move as CVAT does
    with pytest.raises(CvatError, match="must be mapped to the target project"):
        conn.request("PATCH", f"/api/tasks/{tid}", body={"project_id": pids[1]})
    mark = len(cvat_server.log)
    with pytest.raises(CvatError, match=rf"project {pids[1]} \('val'\) lacks the label\(s\) 'person'.*--create-labels"):
        balance(conn, opts, progress=False, apply=True)
    assert not [e for e in cvat_server.log[mark:] if e.method != "GET"]
    assert set(where(cvat_server).values()) == {pids[0]}
    plan = balance(conn, BalanceOptions(pids, (0.5, 0.5), create_labels=True, cache_dir=tmp_path / "cache"),
                   progress=False, apply=True)
    assert sorted(where(cvat_server).values()) == sorted(pids)
    assert any("label 'person'" in a["result"] for a in plan.applied)
    assert not [e for e in cvat_server.log if e.method == "DELETE"]


def test_counts_are_cached(cvat_server, tmp_path):
    conn = conn_for(cvat_server)
    pids, ids = seed(conn, cvat_server, tmp_path, COUNTS[:3], project_names=("a", "b"))
    opts = BalanceOptions(pids, (0.5, 0.5), cache_dir=tmp_path / "cache")
    balance(conn, opts, progress=False)
    mark = len(cvat_server.log)
    balance(conn, opts, progress=False)
    assert not [e for e in cvat_server.log[mark:] if e.path.endswith("/annotations")]
    # a changed task is read again
    lab = next(lb["id"] for lb in cvat_server.state.labels.values() if lb.get("project_id") == pids[0])
    conn.request("PATCH", f"/api/tasks/{ids['v00']}/annotations", query={"action": "create"},
                 body={"version": 0, "tags": [], "tracks": [], "shapes": [rect(lab, 0, 1)]})
    mark = len(cvat_server.log)
    balance(conn, opts, progress=False)
    assert [e.path for e in cvat_server.log[mark:] if e.path.endswith("/annotations")] == \
        [f"/api/tasks/{ids['v00']}/annotations"]


def test_cli_balance_plan_then_apply(cvat_server, tmp_path, monkeypatch, capsys):
    from dl_utils.cli import main

    monkeypatch.setenv("CVAT_HOST", cvat_server.url)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", cvat_server.token)
    conn = conn_for(cvat_server)
    pids, _ = seed(conn, cvat_server, tmp_path, COUNTS)
    base = ["cvat", "balance", "--projects", ",".join(map(str, pids)), "--ratios", "0.6,0.2,0.2",
            "--cache-dir", str(tmp_path / "cache"), "--no-prompt"]
    assert main(base + ["--apply", "--dry-run"]) == 0  # --dry-run wins
    out = capsys.readouterr().out
    assert "move task" in out and "plan only" in out
    assert set(where(cvat_server).values()) == {pids[0]}
    assert main(base + ["--apply", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["applied_now"] and res["moves"] and res["gap_after"] < res["gap_before"]
    assert {where(cvat_server)[m["name"]] for m in res["moves"]} <= set(pids[1:])
    assert main(base) == 0
    assert "nothing to move" in capsys.readouterr().out
    assert main(["cvat", "balance", "--projects", "1,2", "--ratios", "0.5,0.6", "--no-prompt"]) != 0
    assert "sum to 1" in capsys.readouterr().err
    assert not [e for e in cvat_server.log if e.method == "DELETE"]


def test_copy_mode_backs_up_and_restores_into_the_target(cvat_server, tmp_path):
    pytest.importorskip("dl_utils.cvat.transfer")
    conn = conn_for(cvat_server)
    pids, ids = seed(conn, cvat_server, tmp_path, COUNTS[:6], project_names=("pool", "val"))
    opts = BalanceOptions(pids, (0.5, 0.5), mode="copy", cache_dir=tmp_path / "cache")
    plan = balance(conn, opts, progress=False, apply=True)
    assert plan.moves and all(a["result"].startswith("copied as task") for a in plan.applied)
    by_project: dict[int, list[str]] = {}
    for t in cvat_server.state.tasks.values():
        by_project.setdefault(t["project_id"], []).append(t["name"])
    assert sorted(by_project[pids[0]]) == sorted(ids)  # the originals stay
    assert sorted(by_project[pids[1]]) == sorted(m.name for m in plan.moves)
    assert plan.after_read == plan.expected()
    mark = len(cvat_server.log)
    again = balance(conn, opts, progress=False, apply=True)
    assert again.moves == [] and not [e for e in cvat_server.log[mark:] if e.method != "GET"]
    assert not [e for e in cvat_server.log if e.method == "DELETE"]


def test_standin_task_move_follows_cvat_rules(cvat_server):
    """TaskWriteSerializer.validate / update (cvat/apps/engine/serializers.py), as the stand-in has it."""
    conn = conn_for(cvat_server)
    a = int(conn.request("POST", "/api/projects", body={"name": "a", "labels": [
        {"name": "car", "attributes": [{"name": "color", "input_type": "select", "mutable": False,
                                        "default_value": "red", "values": ["red", "blue"]}]}]})["id"])
    b = int(conn.request("POST", "/api/projects", body={"name": "b", "labels": [
        {"name": "car", "attributes": [{"name": "color", "input_type": "text", "mutable": False,
                                        "default_value": "", "values": []}]}]})["id"])
    task = conn.request("POST", "/api/tasks", body={"name": "t", "project_id": a})
    with pytest.raises(CvatError, match=r'does not have .{1,2}car.{1,2} label with .{1,2}color.{1,2} attribute'):
        conn.request("PATCH", f"/api/tasks/{task['id']}", body={"project_id": b})
    with pytest.raises(CvatError, match="Cannot find project with ID 999"):
        conn.request("PATCH", f"/api/tasks/{task['id']}", body={"project_id": 999})
    with pytest.raises(CvatError, match="cannot be taken out"):
        conn.request("PATCH", f"/api/tasks/{task['id']}", body={"project_id": None})
    assert conn.request("GET", f"/api/tasks/{task['id']}")["project_id"] == a
    # a task with its own labels moves into a project holding those names; its labels go
    own = conn.request("POST", "/api/tasks", body={"name": "own", "labels": [{"name": "car"}]})
    c = int(conn.request("POST", "/api/projects", body={"name": "c", "labels": [{"name": "car"},
                                                                                   {"name": "bus"}]})["id"])
    assert conn.request("PATCH", f"/api/tasks/{own['id']}", body={"project_id": c})["project_id"] == c
    names = sorted(lb["name"] for lb in conn.get_paginated("/api/labels", {"task_id": own["id"]}, what="l"))
    assert names == ["bus", "car"]
    assert not [lb for lb in cvat_server.state.labels.values() if lb.get("task_id") == own["id"]]
