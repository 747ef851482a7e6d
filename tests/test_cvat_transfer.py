"""dl_utils.cvat.transfer (export-dataset, backup, restore) against the stand-in CVAT server.

The stand-in (tests/cvat_standin/transfer.py) speaks CVAT's background-request protocol: 202 with
an rq_id, /api/requests polled through queued and started, result_url downloads with ranges, TUS
uploads of backups. These tests check what a user relies on: the file at --out is the server's
bytes or nothing, a backup restores to the same task, failures are one line naming the task.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dl_utils.annotations import Label
from dl_utils.cv_utils import encode_cvat_rle
from dl_utils.cvat import RetryPolicy, connect
from dl_utils.cvat.tasks import create_task
from dl_utils.cvat.transfer import (TransferOptions, backup_task, backup_tasks, check_format,
                                    export_dataset, list_formats, restore_task)
from dl_utils.errors import CvatError, InputError
from tests.cvat_standin.fixtures import cvat_server  # noqa: F401
from tests.cvat_standin.transfer import transfer_state

FAST = TransferOptions(poll_interval=0.0, progress=False)
SIZES = [(40, 30), (52, 36), (40, 30), (33, 41)]


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def conn_for(server, retries: int = 3):
    return connect(server.url, token=server.token, prompt=False,
                   retry=RetryPolicy(retries=retries, base_delay=0.0), sleep=Sleeps())


def _images(folder: Path, sizes=SIZES) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (w, h) in enumerate(sizes):
        arr = (np.random.default_rng(i).random((h, w, 3)) * 255).astype(np.uint8)
        p = folder / f"img_{i:02d}.png"
        Image.fromarray(arr).save(p)
        out.append(p)
    return out


def _annotate(conn, task_id: int) -> None:
    """Shapes of every kind the task may hold (box, polygon, mask) and a rectangle track."""
    labels = {lb["name"]: lb["id"] for lb in conn.get_paginated("/api/labels", {"task_id": task_id},
                                                                 what="labels")}
    m = np.zeros((30, 40), bool)  # frame 2 of the image task (and of a video task's frames)
    m[4:10, 3:8] = True
    m[6, 5] = False
    shapes = [
        {"type": "rectangle", "frame": 0, "label_id": labels["car"], "points": [1, 2, 10, 12],
         "source": "auto", "score": 0.75},
        {"type": "polygon", "frame": 1, "label_id": labels["person"], "points": [2, 2, 12, 3, 7, 9]},
        {"type": "mask", "frame": 2, "label_id": labels["car"], "points": encode_cvat_rle(m)},
    ]
    tracks = [{"frame": 0, "label_id": labels["person"], "shapes": [
        {"type": "rectangle", "frame": 0, "points": [0, 0, 5, 5]},
        {"type": "rectangle", "frame": 2, "points": [2, 2, 8, 8]},
        {"type": "rectangle", "frame": 3, "points": [2, 2, 8, 8], "outside": True}]}]
    conn.request("PATCH", f"/api/tasks/{task_id}/annotations", query={"action": "create"},
                 body={"shapes": shapes, "tracks": tracks, "tags": []}, what="annotate")


def _task(conn, tmp_path: Path, name: str = "street cam", **kw) -> int:
    files = _images(tmp_path / f"imgs_{name.replace(' ', '_')}")
    info = create_task(conn, name, files, labels=[Label("car", "#ff0000"), Label("person", "#00ff00")],
                       poll_interval=0.0, **kw)
    _annotate(conn, info.id)
    return info.id


@pytest.fixture
def server(cvat_server):  # noqa: F811
    ts = transfer_state(cvat_server)
    ts.polls = (2, 2)  # two 'queued' and two 'started' answers before the outcome
    return cvat_server


@pytest.fixture
def conn(server):
    c = conn_for(server)
    yield c
    c.close()


def content(conn, task_id: int) -> dict:
    """What 'the same task' means: name, labels, media and annotations without server ids."""
    t = conn.request("GET", f"/api/tasks/{task_id}", what="t")
    meta = conn.request("GET", f"/api/tasks/{task_id}/data/meta", what="m")
    labels = conn.get_paginated("/api/labels", {"task_id": task_id}, what="l")
    names = {lb["id"]: lb["name"] for lb in labels}
    ann = conn.request("GET", f"/api/tasks/{task_id}/annotations", what="a")

    def clean(x):
        x = {k: v for k, v in x.items() if k not in ("id",)}
        if "label_id" in x:
            x["label"] = names[x.pop("label_id")]
        if "shapes" in x:
            x["shapes"] = [clean(s) for s in x["shapes"]]
        return x

    return {"name": t["name"], "size": meta["size"], "start": meta["start_frame"],
            "stop": meta["stop_frame"], "filter": meta["frame_filter"],
            "frames": [(f["name"], f["width"], f["height"]) for f in meta["frames"]],
            "labels": sorted((lb["name"], lb["color"], lb["type"]) for lb in labels),
            "jobs": [(j["start_frame"], j["stop_frame"]) for j in
                     conn.get_paginated("/api/jobs", {"task_id": task_id}, what="j")],
            "shapes": sorted(json.dumps(clean(s), sort_keys=True) for s in ann["shapes"]),
            "tracks": sorted(json.dumps(clean(s), sort_keys=True) for s in ann["tracks"])}


# ====================================================================================== export
@pytest.mark.parametrize("kind", ["task", "project"])
def test_export_polls_and_downloads_the_server_s_bytes(server, conn, tmp_path, kind):
    pid = conn.request("POST", "/api/projects", body={"name": "P", "labels": [
        {"name": "car", "color": "#ff0000"}, {"name": "person", "color": "#00ff00"}]}, what="p")["id"]
    tid = _task(conn, tmp_path, project_id=pid) if kind == "project" else _task(conn, tmp_path)
    out = tmp_path / "out" / "coco.zip"
    seen = []
    opts = TransferOptions(poll_interval=0.0, progress=False, on_progress=lambda d, t: seen.append((d, t)))
    got = export_dataset(conn, **{kind: pid if kind == "project" else tid}, format="COCO 1.0", out=out,
                         with_images=True, options=opts)
    assert got == out and out.is_file()
    # the file is exactly what the server made for that request
    rq = next(r for r in server.state.requests.values() if r.get("transfer"))
    assert rq["status"] == "finished" and out.read_bytes() == rq["result"]
    assert seen[-1] == (len(rq["result"]), len(rq["result"]))
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
    prefix = f"task_{tid}/" if kind == "project" else ""
    assert prefix + "annotations.json" in names and prefix + "images/img_00.png" in names
    # the request was polled through queued and started (2 + 2 polls) before finishing
    polls = [e for e in server.log if e.path.startswith("/api/requests/action=export")]
    assert len(polls) == 5
    post = next(e for e in server.log if e.method == "POST" and e.path.endswith("/dataset/export"))
    assert post.path == f"/api/{kind}s/{pid if kind == 'project' else tid}/dataset/export"
    assert post.query["format"] == "COCO 1.0" and post.query["save_images"] == "true"
    assert not list(out.parent.glob(".*part*"))  # no temporary file left


def test_annotations_only_export_and_list_formats(server, conn, tmp_path):
    tid = _task(conn, tmp_path)
    names = [f.name for f in list_formats(conn)]
    assert "COCO 1.0" in names and "CVAT for images 1.1" in names
    out = export_dataset(conn, task=tid, format="CVAT for images 1.1", out=tmp_path / "a.zip", options=FAST)
    with zipfile.ZipFile(out) as z:
        assert z.namelist() == ["annotations.json"]
        doc = json.loads(z.read("annotations.json"))
    assert len(doc["annotations"]["shapes"]) == 3 and len(doc["annotations"]["tracks"]) == 1


def test_unknown_format_is_one_line_listing_the_server_s_formats(server, conn, tmp_path):
    tid = _task(conn, tmp_path)
    n = len(server.log)
    with pytest.raises(InputError) as e:
        export_dataset(conn, task=tid, format="COCO", out=tmp_path / "x.zip", options=FAST)
    msg = str(e.value)
    assert "\n" not in msg and "'COCO'" in msg and "'COCO 1.0'" in msg and "'YOLO 1.1'" in msg
    assert "did you mean 'COCO 1.0'" in msg
    assert not any(e.method == "POST" for e in server.log[n:])  # nothing was started
    transfer_state(server).disabled_formats.add("MOT 1.1")
    with pytest.raises(InputError, match="'MOT 1.1' is disabled"):
        check_format(conn, "MOT 1.1")
    # the server itself refuses an unknown format as CVAT does (400, a list body)
    from dl_utils.cvat.transfer import _send

    with pytest.raises(CvatError, match="Unknown format specified for the request"):
        _send(conn, "POST", f"/api/tasks/{tid}/dataset/export", query={"format": "nope"}, what="raw")


def test_unknown_task_and_project(server, conn, tmp_path):
    with pytest.raises(CvatError, match="task 999 .*does not exist") as e:
        export_dataset(conn, task=999, format="COCO 1.0", out=tmp_path / "x.zip", options=FAST)
    assert "\n" not in str(e.value)
    with pytest.raises(CvatError, match="project 77 .*does not exist"):
        export_dataset(conn, project=77, format="COCO 1.0", out=tmp_path / "x.zip", options=FAST)
    with pytest.raises(InputError, match="exactly one"):
        export_dataset(conn, format="COCO 1.0", out=tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


def test_a_running_export_is_joined_not_started_twice(server, conn, tmp_path):
    from dl_utils.cvat.transfer import _start_request

    tid = _task(conn, tmp_path)
    q = {"format": "COCO 1.0", "save_images": "false"}
    first = _start_request(conn, f"/api/tasks/{tid}/dataset/export", q, "export")
    again = _start_request(conn, f"/api/tasks/{tid}/dataset/export", q, "export")  # CVAT: 409 + rq_id
    assert again == first
    assert [e.status for e in server.log if e.path.endswith("/dataset/export")] == [202, 409]
    out = export_dataset(conn, task=tid, format="COCO 1.0", out=tmp_path / "x.zip", options=FAST)
    assert out.read_bytes() == server.state.requests[first]["result"]


def test_a_server_without_the_export_api_is_named(server, conn, tmp_path, monkeypatch):
    tid = _task(conn, tmp_path)
    server.faults.fail_matching("POST", r"/api/tasks/\d+/dataset/export", status=404)
    with pytest.raises(CvatError, match="has no POST /api/tasks/.*/dataset/export endpoint.*2.32"):
        export_dataset(conn, task=tid, format="COCO 1.0", out=tmp_path / "x.zip", options=FAST)


def test_failed_request_is_one_line_naming_the_task_and_the_server_s_message(server, conn, tmp_path):
    tid = _task(conn, tmp_path)
    out = tmp_path / "x.zip"
    out.write_bytes(b"an earlier export")
    transfer_state(server).fail_next = "Traceback (most recent call last):\n  ...\nOSError: disk full on worker"
    with pytest.raises(CvatError) as e:
        export_dataset(conn, task=tid, format="COCO 1.0", out=out, options=FAST)
    msg = str(e.value)
    assert "\n" not in msg and f"task {tid}" in msg and "failed on the server: OSError: disk full on worker" in msg
    assert "Traceback" not in msg
    assert out.read_bytes() == b"an earlier export"  # the user's file is untouched
    transfer_state(server).fail_next = "Backup of the task failed: no space"
    with pytest.raises(CvatError, match=f"backup of task {tid} .*failed on the server: Backup of the task"):
        backup_task(conn, tid, tmp_path / "b.zip", options=FAST)
    assert not (tmp_path / "b.zip").exists()


def test_interrupted_download_leaves_nothing_at_out_and_the_next_run_resumes(server, conn, tmp_path,
                                                                            monkeypatch):
    from dl_utils.cvat import transfer as tr

    tid = _task(conn, tmp_path)
    monkeypatch.setattr(tr, "DOWNLOAD_CHUNK", 4096)
    out = tmp_path / "ds.zip"

    def stop(done, total):
        if done >= 8192:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_dataset(conn, task=tid, format="COCO 1.0", out=out, with_images=True,
                       options=TransferOptions(poll_interval=0.0, progress=False, on_progress=stop))
    assert not out.exists()
    part = tmp_path / ".ds.zip.part"
    assert part.exists() and part.stat().st_size == 8192
    # the next run asks again; the server's file is the same (same ETag): only the rest is sent
    n = len(server.log)
    export_dataset(conn, task=tid, format="COCO 1.0", out=out, with_images=True, options=FAST)
    rq = next(r for r in server.state.requests.values() if r.get("transfer"))
    assert out.read_bytes() == rq["result"]
    dl = [e for e in server.log[n:] if e.path.endswith("/dataset/download")]
    assert len(dl) == 1 and dl[0].status == 206 and dl[0].bytes_out == len(rq["result"]) - 8192
    assert not part.exists() and not (tmp_path / ".ds.zip.part.json").exists()


def test_a_connection_broken_mid_download_resumes_in_the_same_run(server, conn, tmp_path, monkeypatch):
    import urllib3

    from dl_utils.cvat import transfer as tr

    tid = _task(conn, tmp_path)
    monkeypatch.setattr(tr, "DOWNLOAD_CHUNK", 2048)
    real_stream = urllib3.response.HTTPResponse.stream
    broken = []

    def stream(self, amt=None, decode_content=None):
        for i, chunk in enumerate(real_stream(self, amt, decode_content)):
            if i == 2 and not broken:  # the connection dies after 4 KiB of the first answer
                broken.append(True)
                raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
            yield chunk

    monkeypatch.setattr(urllib3.response.HTTPResponse, "stream", stream)
    out = tmp_path / "ds.zip"
    n = len(server.log)
    export_dataset(conn, task=tid, format="COCO 1.0", out=out, with_images=True, options=FAST)
    rq = next(r for r in server.state.requests.values() if r.get("transfer"))
    assert broken and out.read_bytes() == rq["result"]
    dl = [e for e in server.log[n:] if e.path.endswith("/dataset/download")]
    assert [e.status for e in dl] == [200, 206]
    assert dl[1].bytes_out == len(rq["result"]) - 4096 and conn.stats.retries >= 1


def test_resume_restarts_cleanly_when_the_server_sends_the_whole_file(server, conn, tmp_path):
    tid = _task(conn, tmp_path)
    out = tmp_path / "ds.zip"
    (tmp_path / ".ds.zip.part").write_bytes(b"x" * 100)  # from another run whose file differs
    (tmp_path / ".ds.zip.part.json").write_text(json.dumps(
        {"url": f"/api/tasks/{tid}/dataset/download?rq_id=zzz", "etag": '"other"', "length": 999}))
    export_dataset(conn, task=tid, format="COCO 1.0", out=out, options=FAST)
    rq = next(r for r in server.state.requests.values() if r.get("transfer"))
    assert out.read_bytes() == rq["result"]
    transfer_state(server).ranges = False  # a server without ranges: a new full download
    export_dataset(conn, task=tid, format="COCO 1.0", out=out, options=FAST)
    assert out.read_bytes() == rq["result"]


def test_dropped_connections_are_retried(server, conn, tmp_path):
    tid = _task(conn, tmp_path)
    out = tmp_path / "ds.zip"
    server.faults.fail_matching("GET", r"/api/requests/.*", skip=1, status=503)
    server.faults.fail_matching("GET", r"/api/tasks/\d+/dataset/download", status=502)
    export_dataset(conn, task=tid, format="COCO 1.0", out=out, options=FAST)
    rq = next(r for r in server.state.requests.values() if r.get("transfer"))
    assert out.read_bytes() == rq["result"] and conn.stats.retries >= 2


def test_out_that_is_a_folder_is_refused_before_any_request(server, conn, tmp_path):
    from dl_utils.errors import OutputError

    tid = _task(conn, tmp_path)
    (tmp_path / "d").mkdir()
    n = len(server.log)
    with pytest.raises(OutputError, match="is a folder"):
        export_dataset(conn, task=tid, format="COCO 1.0", out=tmp_path / "d", options=FAST)
    assert len(server.log) == n


# ====================================================================================== backup
def test_backup_restore_round_trip(server, conn, tmp_path):
    tid = _task(conn, tmp_path, segment_size=2)
    before = content(conn, tid)
    assert len(before["jobs"]) == 2 and len(before["shapes"]) == 3
    path = backup_task(conn, tid, tmp_path / "bk.zip", options=FAST)
    with zipfile.ZipFile(path) as z:
        assert {"task.json", "annotations.json", "data/img_00.png"} <= set(z.namelist())
    new = restore_task(conn, path, options=FAST)
    assert new != tid and new in server.state.tasks
    assert content(conn, new) == before
    # the restore went through CVAT's TUS upload
    tus = [e.method for e in server.log if e.path.startswith("/api/tasks/backup")]
    assert tus[:2] == ["POST", "POST"] and "PATCH" in tus and tus[-1] == "POST"


def test_backup_restore_round_trip_of_a_video_task_with_a_step(server, conn, tmp_path):
    from dl_utils.video_utils import write_video

    from tests.conftest import synthetic_frame

    video = tmp_path / "clip.mp4"
    write_video(video, (synthetic_frame(i, 32, 48) for i in range(12)), fps=25, crf=30, preset="ultrafast")
    info = create_task(conn, "clip", [video], labels=[Label("car"), Label("person")], start=1, step=2,
                       poll_interval=0.0)
    _annotate(conn, info.id)
    before = content(conn, info.id)
    assert before["start"] == 1 and before["filter"] == "step=2"
    new = restore_task(conn, backup_task(conn, info.id, tmp_path, options=FAST), options=FAST)
    assert content(conn, new) == before


def test_backup_of_many_tasks_is_idempotent_and_resumable(server, conn, tmp_path):
    a, b = _task(conn, tmp_path, "cam a"), _task(conn, tmp_path, "cam b")
    out = tmp_path / "backups"
    rep = backup_tasks(conn, [a, b], out, options=FAST)
    assert sorted(rep.written) == [a, b] and not rep.skipped
    assert sorted(p.name for p in out.iterdir()) == [f"task_{a}_cam_a.zip", f"task_{b}_cam_b.zip"]
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    n = len(server.log)
    rep = backup_tasks(conn, [a, b], out, options=FAST)
    assert sorted(rep.skipped) == [a, b] and not rep.written
    assert not any(e.method == "POST" for e in server.log[n:])  # nothing asked of the server
    # a zip cut short (a run killed while renaming is impossible, but a copy may be) is redone
    (out / f"task_{b}_cam_b.zip").write_bytes(first[f"task_{b}_cam_b.zip"][:50])
    rep = backup_tasks(conn, [a, b], out, options=FAST)
    assert list(rep.written) == [b] and list(rep.skipped) == [a]
    assert (out / f"task_{b}_cam_b.zip").read_bytes() == first[f"task_{b}_cam_b.zip"]
    rep = backup_tasks(conn, [a], out, force=True, options=FAST)
    assert list(rep.written) == [a]


def test_backup_of_a_task_without_data_is_refused_by_the_server(server, conn):
    tid = conn.request("POST", "/api/tasks", body={"name": "empty", "labels": [{"name": "car"}]}, what="t")["id"]
    with pytest.raises(CvatError, match="Backup of a task without data is not allowed"):
        backup_task(conn, tid, Path("/nonexistent-never-written.zip"), options=FAST)


def test_restore_survives_failed_upload_chunks(server, conn, tmp_path, monkeypatch):
    from dl_utils.cvat import transfer as tr

    tid = _task(conn, tmp_path)
    path = backup_task(conn, tid, tmp_path, options=FAST)
    before = content(conn, tid)
    monkeypatch.setattr(tr, "UPLOAD_CHUNK", 1000)
    # the second chunk is stored but its answer is lost; the fourth is refused by a 503
    server.faults.fail_matching("PATCH", r"/api/tasks/backup/.*", skip=1, status=500, applied=True)
    server.faults.fail_matching("PATCH", r"/api/tasks/backup/.*", skip=3, status=503)
    new = restore_task(conn, path, options=FAST)
    assert content(conn, new) == before
    log = [e for e in server.log if e.path.startswith("/api/tasks/backup/")]
    assert any(e.method == "HEAD" for e in log)  # the offset was asked after the lost answer
    stored = sum(e.bytes_in for e in log if e.method == "PATCH" and e.status == 204) + 1000
    assert stored == path.stat().st_size  # every byte stored once (the lost answer's 1000 too)


def test_restore_checks_the_file_first(server, conn, tmp_path):
    n = len(server.log)
    bad = tmp_path / "notzip.zip"
    bad.write_bytes(b"hello")
    with pytest.raises(InputError, match="not a zip"):
        restore_task(conn, bad)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "x")
    with pytest.raises(InputError, match="no task.json"):
        restore_task(conn, other)
    with pytest.raises(InputError, match="does not exist"):
        restore_task(conn, tmp_path / "missing.zip")
    assert len(server.log) == n


def test_restore_of_a_broken_backup_fails_with_the_server_s_message(server, conn, tmp_path):
    bk = tmp_path / "broken.zip"
    with zipfile.ZipFile(bk, "w") as z:
        z.writestr("task.json", json.dumps({"version": "9.9", "name": "x"}))
    with pytest.raises(CvatError, match="restore of broken.zip .*failed on the server: Unsupported backup version"):
        restore_task(conn, bk, options=FAST)
    assert not server.state.tasks


def test_restore_into_a_project(server, conn, tmp_path):
    tid = _task(conn, tmp_path)
    path = backup_task(conn, tid, tmp_path, options=FAST)
    pid = conn.request("POST", "/api/projects", body={"name": "P", "labels": [
        {"name": "car", "color": "#ff0000"}, {"name": "person", "color": "#00ff00"}]}, what="p")["id"]
    new = restore_task(conn, path, project_id=pid, options=FAST)
    t = conn.request("GET", f"/api/tasks/{new}", what="t")
    assert t["project_id"] == pid
    with pytest.raises(CvatError, match="project 555 .*does not exist"):
        restore_task(conn, path, project_id=555, options=FAST)


# ====================================================================================== CLI
def test_cli_export_backup_restore(server, tmp_path, monkeypatch, capsys):
    from dl_utils.cli import main

    monkeypatch.setenv("CVAT_ACCESS_TOKEN", server.token)
    c = conn_for(server)
    tid = _task(c, tmp_path)
    c.close()
    transfer_state(server).polls = (0, 0)
    host = ["--host", server.url, "--poll", "0.01"]
    assert main(["cvat", "export-dataset", "--list-formats", "--host", server.url]) == 0
    assert "COCO 1.0" in capsys.readouterr().out.splitlines()
    out = tmp_path / "coco.zip"
    assert main(["cvat", "export-dataset", "--task", str(tid), "--format", "COCO 1.0", "--out", str(out),
                 "--dry-run", *host]) == 0
    assert "would export task" in capsys.readouterr().out and not out.exists()
    assert main(["cvat", "export-dataset", "--task", str(tid), "--format", "COCO 1.0", "--out", str(out),
                 "--with-images", *host]) == 0
    assert out.is_file() and f"exported task {tid}" in capsys.readouterr().out
    bdir = tmp_path / "bk"
    assert main(["cvat", "backup", "--task", str(tid), "--out", str(bdir) + "/", "--json", *host]) == 0
    rep = json.loads(capsys.readouterr().out)
    zip_path = Path(rep["written"][str(tid)])
    assert zip_path.is_file()
    assert main(["cvat", "backup", "--task", str(tid), "--out", str(bdir), *host]) == 0
    assert "already backed up" in capsys.readouterr().out
    assert main(["cvat", "restore", str(zip_path), "--json", *host]) == 0
    res = json.loads(capsys.readouterr().out)
    new = res["tasks"][str(zip_path)]
    assert isinstance(new, int) and new != tid and new in server.state.tasks
    assert main(["cvat", "restore", str(zip_path), "--dry-run", *host]) == 0
    assert "would restore" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["cvat", "export-dataset", "--task", str(tid), "--format", "coco", "--out", str(out),
                 *host]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dl-utils: error: unknown export format 'coco' (did you mean 'COCO 1.0'?)")
    assert "\n" not in err


def test_cvat_sdk_s_own_client_speaks_the_stand_in_s_protocol(server, conn, tmp_path):
    """cvat-sdk's export, backup and create_from_backup (its models validate every answer) work
    against the stand-in, and give the same bytes and task as ours: the shapes are CVAT's."""
    tid = _task(conn, tmp_path)
    task = conn.client.tasks.retrieve(tid)
    sdk_zip = task.export_dataset("COCO 1.0", tmp_path / "sdk.zip", include_images=True,
                                  status_check_period=0)
    ours = export_dataset(conn, task=tid, format="COCO 1.0", out=tmp_path / "ours.zip", with_images=True,
                          options=FAST)
    assert Path(sdk_zip).read_bytes() == ours.read_bytes()
    bk = task.download_backup(tmp_path / "sdk_backup.zip", status_check_period=0)
    restored = conn.client.tasks.create_from_backup(bk, status_check_period=0)
    assert content(conn, restored.id) == content(conn, tid)
