"""``dl-utils cvat projects | tasks | create-tasks`` against the stand-in CVAT server."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cvat_sdk")

from tests.cvat_standin.fixtures import cvat_server  # noqa: E402,F401  (the fixture)

from dl_utils.cvat import RetryPolicy, connect  # noqa: E402
from dl_utils.cvat.projects import (CreateTasksOptions, create_tasks, format_projects,  # noqa: E402
                                    format_tasks, list_projects, list_tasks, resolve_sources)
from dl_utils.errors import CvatError, InputError  # noqa: E402

FAST = dict(poll_interval=0.01)


def conn_for(server, retries: int = 2):
    return connect(server.url, token=server.token, prompt=False,
                   retry=RetryPolicy(retries=retries, base_delay=0.0), sleep=lambda s: None)


def image_folder(root, name: str, n: int = 2, size=(12, 10)):
    d = root / name
    d.mkdir(parents=True)
    rng = np.random.default_rng(len(name))
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(d / f"f{i + 1}.png")
    return d


def make_project(conn, name: str = "p", labels=("car", "person")) -> int:
    body = {"name": name, "labels": [{"name": n} for n in labels]}
    return int(conn.request("POST", "/api/projects", body=body)["id"])


@pytest.fixture
def env(cvat_server, monkeypatch):
    monkeypatch.setenv("CVAT_HOST", cvat_server.url)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", cvat_server.token)
    return cvat_server


def test_create_tasks_twice_makes_no_duplicates(cvat_server, tmp_path):
    conn = conn_for(cvat_server)
    pid = make_project(conn)
    srcs = [image_folder(tmp_path, "shot_a", 11), image_folder(tmp_path, "shot_b", 2)]
    rep = create_tasks(conn, pid, srcs, CreateTasksOptions(**FAST), progress=False)
    assert [c["name"] for c in rep.created] == ["shot_a", "shot_b"] and not rep.skipped
    assert [c["frames"] for c in rep.created] == [11, 2]
    # the server holds the images in natural order (f2 before f10), in the project
    ids = {c["name"]: c["task"] for c in rep.created}
    meta = conn.request("GET", f"/api/tasks/{ids['shot_a']}/data/meta")
    assert [f["name"] for f in meta["frames"]] == [f"f{i}.png" for i in range(1, 12)]
    assert all(cvat_server.state.tasks[i]["project_id"] == pid for i in ids.values())
    n_tasks = len(cvat_server.state.tasks)
    again = create_tasks(conn, pid, srcs + [image_folder(tmp_path, "shot_c", 1)],
                         CreateTasksOptions(**FAST), progress=False)
    assert [s["name"] for s in again.skipped] == ["shot_a", "shot_b"]
    assert [s["task"] for s in again.skipped] == [ids["shot_a"], ids["shot_b"]]
    assert [c["name"] for c in again.created] == ["shot_c"]
    assert len(cvat_server.state.tasks) == n_tasks + 1
    names = [t["name"] for t in cvat_server.state.tasks.values()]
    assert sorted(names) == ["shot_a", "shot_b", "shot_c"]


def test_create_tasks_dry_run_changes_nothing(cvat_server, tmp_path):
    conn = conn_for(cvat_server)
    pid = make_project(conn)
    src = image_folder(tmp_path, "a")
    mark = len(cvat_server.log)
    rep = create_tasks(conn, pid, [src], CreateTasksOptions(dry_run=True), progress=False)
    assert rep.planned == [{"name": "a", "source": str(src), "kind": "images", "files": 2}]
    assert not cvat_server.state.tasks
    assert all(e.method == "GET" for e in cvat_server.log[mark:])
    assert "would create task 'a'" in str(rep)


def test_create_tasks_resumes_after_a_failure(cvat_server, tmp_path):
    conn = conn_for(cvat_server, retries=0)
    pid = make_project(conn)
    srcs = [image_folder(tmp_path, n) for n in ("a", "b", "c")]
    # the second task's creation is refused (a 4xx is not retried): a, then the error
    cvat_server.faults.fail_matching("POST", r"/api/tasks", skip=1, status=400)
    with pytest.raises(CvatError, match=r"creating task 'b'.*1 task\(s\) were made before it.*run the same"):
        create_tasks(conn, pid, srcs, CreateTasksOptions(**FAST), progress=False)
    assert [t["name"] for t in cvat_server.state.tasks.values()] == ["a"]
    rep = create_tasks(conn, pid, srcs, CreateTasksOptions(**FAST), progress=False)
    assert [s["name"] for s in rep.skipped] == ["a"] and [c["name"] for c in rep.created] == ["b", "c"]
    assert sorted(t["name"] for t in cvat_server.state.tasks.values()) == ["a", "b", "c"]


def test_create_tasks_from_the_share_and_name_template(cvat_server, tmp_path, monkeypatch):
    share = tmp_path / "share"
    image_folder(share / "day1", "cam0", 2)
    image_folder(share / "day1", "cam1", 3)
    monkeypatch.setattr(cvat_server.state, "share_root", share)
    conn = conn_for(cvat_server)
    pid = make_project(conn)
    opts = CreateTasksOptions(resource="share", name_template="{parent}-{stem}", **FAST)
    rep = create_tasks(conn, pid, ["day1/cam0/", "day1/cam1"], opts, progress=False)
    assert [(c["name"], c["frames"]) for c in rep.created] == [("day1-cam0", 2), ("day1-cam1", 3)]
    # the share folder was sent as a server path, nothing uploaded
    data_posts = [e for e in cvat_server.log if e.method == "POST" and e.path.rstrip("/").endswith("/data")]
    assert data_posts and all(e.bytes_in < 2000 for e in data_posts)


def test_sources_are_checked_before_anything_is_made(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="holds no images"):
        resolve_sources([tmp_path / "empty"], CreateTasksOptions())
    with pytest.raises(InputError, match="is not a video"):
        resolve_sources([tmp_path / "notes.txt"], CreateTasksOptions())
    with pytest.raises(InputError, match="does not exist"):
        resolve_sources([tmp_path / "missing"], CreateTasksOptions())
    a = image_folder(tmp_path / "x", "cam")
    b = image_folder(tmp_path / "y", "cam")
    with pytest.raises(InputError, match=r"would both make task 'cam'.*--name-template"):
        resolve_sources([a, b], CreateTasksOptions())
    assert [s.name for s in resolve_sources([a, b], CreateTasksOptions(name_template="{parent}_{stem}"))] \
        == ["x_cam", "y_cam"]
    with pytest.raises(InputError, match="name-template"):
        resolve_sources([a], CreateTasksOptions(name_template="{nope}"))
    v = tmp_path / "clip.mp4"
    v.write_bytes(b"")
    assert resolve_sources([v], CreateTasksOptions())[0].name == "clip"


def test_listings_page_and_count_jobs_by_state(cvat_server, tmp_path):
    conn = conn_for(cvat_server)
    pid = make_project(conn, "train")
    other = make_project(conn, "val", labels=("car",))
    # 12 tasks: more than the server's default page of 10, so listing has to page
    srcs = [image_folder(tmp_path, f"s{i:02d}", 4) for i in range(12)]
    create_tasks(conn, pid, srcs, CreateTasksOptions(segment_size=2, **FAST), progress=False)
    create_tasks(conn, other, [image_folder(tmp_path, "v0", 2)], CreateTasksOptions(**FAST), progress=False)
    st = cvat_server.state
    first = min(t["id"] for t in st.tasks.values() if t["project_id"] == pid)
    jobs = st.task_jobs(first)
    assert len(jobs) == 2
    jobs[0].update(stage="acceptance", state="completed")
    jobs[1].update(stage="validation", state="in progress")
    tasks = list_tasks(conn, pid)
    assert [t.name for t in tasks] == [f"s{i:02d}" for i in range(12)]
    t0 = tasks[0]
    assert (t0.size, t0.progress.jobs, t0.progress.frames_done) == (4, 2, 2)
    assert t0.progress.by_state == {"completed": 1, "in progress": 1}
    assert t0.progress.by_stage == {"acceptance": 1, "validation": 1}
    assert t0.labels == ["car", "person"]
    assert tasks[1].progress.by_state == {"new": 2}
    # the task JSON's job summary follows CVAT (completed = completed in acceptance)
    tj = conn.request("GET", f"/api/tasks/{first}")
    assert tj["jobs"]["completed"] == 1 and tj["jobs"]["validation"] == 1
    projects = {p.id: p for p in list_projects(conn)}
    assert (projects[pid].tasks, projects[pid].size, projects[pid].progress.jobs) == (12, 48, 24)
    assert projects[pid].progress.by_state == {"new": 22, "completed": 1, "in progress": 1}
    assert projects[other].labels == ["car"] and projects[other].tasks == 1
    assert "train" in format_projects(list(projects.values()))
    assert "1 completed" in format_tasks(tasks)
    # paging: the task list was read in more than one page
    pages = [e.query.get("page") for e in cvat_server.log if e.path == "/api/tasks" and e.method == "GET"]
    assert pages
    with pytest.raises(CvatError, match=r"project 999 does not exist"):
        list_tasks(conn, 999)


def test_cli_projects_tasks_create_tasks(env, tmp_path, capsys):
    from dl_utils.cli import main

    conn = conn_for(env)
    pid = make_project(conn, "pool")
    srcs = [str(image_folder(tmp_path, "a")), str(image_folder(tmp_path, "b"))]
    base = ["--no-prompt", "--retries", "0"]
    assert main(["cvat", "create-tasks", "--project", str(pid), *srcs, "--dry-run", *base]) == 0
    assert "would create task 'a'" in capsys.readouterr().out and not env.state.tasks
    assert main(["cvat", "create-tasks", "--project", str(pid), *srcs, "--json", *base]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in out["created"]] == ["a", "b"]
    assert main(["cvat", "create-tasks", "--project", str(pid), *srcs, *base]) == 0
    assert "skipped 'a'" in capsys.readouterr().out
    assert main(["cvat", "tasks", "--project", str(pid), "--json", *base]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["size"], r["jobs"]) for r in rows] == [("a", 2, 1), ("b", 2, 1)]
    assert main(["cvat", "projects", *base]) == 0
    out = capsys.readouterr().out
    assert "pool" in out and "2 new" in out
    assert main(["cvat", "projects", "--json", *base]) == 0
    assert json.loads(capsys.readouterr().out)[0]["tasks"] == 2
    assert env.token not in out


def test_one_task_per_video_and_per_folder(cvat_server, tmp_path):
    from dl_utils.video_utils import write_video

    clip = tmp_path / "clip01.mp4"
    write_video(clip, (np.full((16, 24, 3), 10 * i, np.uint8) for i in range(6)), fps=25, crf=30,
                preset="ultrafast")
    conn = conn_for(cvat_server)
    pid = make_project(conn)
    rep = create_tasks(conn, pid, [clip, image_folder(tmp_path, "stills", 2)],
                       CreateTasksOptions(**FAST), progress=False)
    got = {c["name"]: c for c in rep.created}
    assert sorted(got) == ["clip01", "stills"] and got["clip01"]["frames"] == 6
    assert cvat_server.state.tasks[got["clip01"]["task"]]["mode"] == "interpolation"
    assert cvat_server.state.tasks[got["stills"]["task"]]["mode"] == "annotation"
