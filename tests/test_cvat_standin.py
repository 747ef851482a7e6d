"""The stand-in CVAT server (tests/cvat_standin) driven by the real cvat-sdk client.

What the dl_utils.cvat tests rely on is checked here on its own: auth, server about, projects and
labels, task creation from a video and from images (numbering with start/stop/step, data meta,
jobs, frames and chunks), annotation PUT/PATCH/GET on tasks and jobs, CVAT-like validation errors,
every fault kind and the command line entry point.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import urllib3
from PIL import Image

from dl_utils.cv_utils import decode_cvat_rle, encode_cvat_rle
from tests.conftest import ROOT, synthetic_frame
from tests.cvat_standin.fixtures import cvat_server  # noqa: F401
from tests.cvat_standin.validate import mask_problem

cvat_sdk = pytest.importorskip("cvat_sdk")
from cvat_sdk import models  # noqa: E402
from cvat_sdk.api_client.exceptions import ApiException  # noqa: E402
from cvat_sdk.core.client import AccessTokenCredentials, Client, Config, PasswordCredentials  # noqa: E402
from cvat_sdk.core.proxies.tasks import ResourceType  # noqa: E402

H, W = 48, 64


def sdk_client(server, *, token: bool = True, urllib3_retries: bool = False) -> Client:
    c = Client(server.url, config=Config(status_check_period=0.01), check_server_version=False)
    if not urllib3_retries:  # as dl_utils does: let faults reach the caller
        c.api_client.rest_client.pool_manager.connection_pool_kw["retries"] = False
    if token:
        c.login(AccessTokenCredentials(server.token))
    return c


def raw(server, method: str, path: str, body=None, *, token: str | None = "default", query=None):
    """One plain HTTP request: (status, parsed JSON or bytes, headers)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {server.token if token == 'default' else token}"
    url = server.url + path
    if query:
        from urllib.parse import urlencode

        url += "?" + urlencode(query)
    r = urllib3.request(method, url, body=None if body is None else json.dumps(body).encode(),
                        headers=headers, retries=False)
    try:
        data = json.loads(r.data) if r.data else None
    except ValueError:
        data = r.data
    return r.status, data, r.headers


def write_video(path: Path, n: int) -> Path:
    from dl_utils.video_utils import write_video as wv

    wv(path, (synthetic_frame(i, H, W) for i in range(n)), fps=25, crf=30, preset="ultrafast")
    return path


def make_task(client: Client, files, *, labels=("car", "person"), segment_size=None, overlap=None,
              **params):
    spec = {"name": "t", "labels": [{"name": n, "type": "any"} for n in labels]}
    if segment_size:
        spec["segment_size"] = segment_size
    if overlap is not None:
        spec["overlap"] = overlap
    task = client.tasks.create(spec)
    task.upload_data([str(f) for f in files], resource_type=ResourceType.LOCAL, params=params,
                     status_check_period=0.01)
    return task


@pytest.fixture
def video_task(cvat_server, tmp_path):
    """20-frame video, task frames = source 2, 5, 8, 11, 14 (start 2, stop 15, step 3), jobs of 2
    without overlap (CVAT's default for videos would be 1 here: min(5, 2 // 2))."""
    client = sdk_client(cvat_server)
    video = write_video(tmp_path / "clip.mp4", 20)
    task = make_task(client, [video], segment_size=2, overlap=0, start_frame=2, stop_frame=15,
                     frame_step=3)
    yield client, task, video
    client.close()


# ------------------------------------------------------------------------------------ auth, about
def test_login_with_password_and_token(cvat_server):
    c = Client(cvat_server.url, check_server_version=False)
    c.login(PasswordCredentials("admin", "admin-pass"))
    me, _ = c.api_client.users_api.retrieve_self()
    assert me.username == "admin"
    project = c.projects.create({"name": "p", "labels": [{"name": "a"}]})  # POST with session + CSRF
    assert project.name == "p"
    c.logout()
    with pytest.raises(ApiException) as ei:
        c.login(PasswordCredentials("admin", "wrong"))
    assert ei.value.status == 400
    c.close()
    c = sdk_client(cvat_server)
    assert c.api_client.users_api.retrieve_self()[0].username == "admin"
    c.close()
    assert raw(cvat_server, "GET", "/api/users/self", token=None)[0] == 401
    status, body, _ = raw(cvat_server, "GET", "/api/users/self", token="not-the-token")
    assert (status, body) == (401, {"detail": "Invalid token."})
    # a session without the CSRF header may read but not write, as in Django
    status, body, hdrs = raw(cvat_server, "POST", "/api/auth/login", {"username": "admin",
                                                                       "password": "admin-pass"}, token=None)
    assert status == 200 and body["key"]
    sid = [p.split("=")[1] for p in hdrs.get("Set-Cookie").replace(",", ";").split(";")
           if p.strip().startswith("sessionid=")][0]
    cookie = {"Cookie": f"sessionid={sid}"}
    assert urllib3.request("GET", cvat_server.url + "/api/users/self", headers=cookie).status == 200
    assert urllib3.request("POST", cvat_server.url + "/api/projects", headers=cookie,
                           body=b'{"name":"x"}').status == 403
    r = urllib3.request("GET", cvat_server.url + "/api/users/self",
                        headers={"Authorization": f"Token {body['key']}"})
    assert r.status == 200


def test_about_version_is_configurable(cvat_server):
    c = Client(cvat_server.url, check_server_version=False)
    assert str(c.get_server_version()) == "2.24.0"
    cvat_server.state.version = "2.31.1"
    assert str(c.get_server_version()) == "2.31.1"
    c.close()


# ------------------------------------------------------------------------------------ projects, labels
def test_project_labels_and_pagination(cvat_server):
    c = sdk_client(cvat_server)
    names = [f"l{i:02d}" for i in range(12)]
    p = c.projects.create({"name": "p", "labels": [
        {"name": n, "color": "#ff0000" if i == 0 else "#00ff00", "type": "mask" if i % 2 else "any",
         "attributes": []} for i, n in enumerate(names)]})
    got = p.get_labels()  # cvat-sdk pages through /api/labels (page_size 10 here)
    assert [lb.name for lb in got] == names
    assert [lb.type for lb in got][:2] == ["any", "mask"] and got[0].color == "#ff0000"
    page2 = raw(cvat_server, "GET", "/api/labels", query={"project_id": p.id, "page": 2, "page_size": 5})[1]
    assert page2["count"] == 12 and [r["name"] for r in page2["results"]] == names[5:10]
    assert page2["next"] and page2["previous"]
    # a task in the project uses the project's labels and may not have its own
    t = c.tasks.create({"name": "t", "project_id": p.id})
    assert [lb.name for lb in t.get_labels()] == names
    st, body, _ = raw(cvat_server, "PATCH", f"/api/tasks/{t.id}", {"labels": [{"name": "x"}]})
    assert st == 400 and "labels" in body
    # PATCH labels adds; a duplicate name is refused
    st, body, _ = raw(cvat_server, "PATCH", f"/api/projects/{p.id}", {"labels": [{"name": "dog", "type": "mask"}]})
    assert st == 200
    assert raw(cvat_server, "PATCH", f"/api/projects/{p.id}", {"labels": [{"name": "dog"}]})[0] == 400
    st, body, _ = raw(cvat_server, "POST", "/api/tasks", {"name": "no labels"})
    assert st == 400 and "non_field_errors" in body
    c.close()


# ------------------------------------------------------------------------------------ tasks, media
def test_video_task_numbering_meta_jobs_frames(video_task, cvat_server):
    from dl_utils.video_utils import open_frames

    client, task, video = video_task
    task.fetch()
    assert (task.size, task.mode, task.data_original_chunk_type) == (5, "interpolation", "video")
    meta = task.get_meta()
    assert (meta.start_frame, meta.stop_frame, meta.frame_filter, meta.size) == (2, 14, "step=3", 5)
    assert [(f.width, f.height, f.name) for f in meta.frames] == [(W, H, "clip.mp4")]
    jobs = sorted(task.get_jobs(), key=lambda j: j.start_frame)
    assert [(j.start_frame, j.stop_frame) for j in jobs] == [(0, 1), (2, 3), (4, 4)]
    with open_frames(video) as src:
        for i, n in enumerate([2, 5, 8, 11, 14]):
            img = np.asarray(Image.open(task.get_frame(i, quality="original")))
            assert np.array_equal(img, src.get_frame(n)), i  # exactly the decoded source frame
    status, body, _ = raw(cvat_server, "GET", f"/api/tasks/{task.id}/data",
                          query={"type": "frame", "number": 5, "quality": "original"})
    assert status == 400 and "doesn't belong" in body["detail"]


def test_image_task_order_frames_and_chunks(cvat_server, tmp_path):
    c = sdk_client(cvat_server)
    files = []
    for i, name in enumerate(["b.png", "a.png", "c.png"]):
        p = tmp_path / name
        Image.fromarray(synthetic_frame(i, H + i, W)).save(p)
        files.append(p)
    task = make_task(c, files, sorting_method="predefined", chunk_size=2)
    meta = task.get_meta()
    assert [f.name for f in meta.frames] == ["b.png", "a.png", "c.png"]  # upload order kept
    assert [(f.width, f.height) for f in meta.frames] == [(W, H), (W, H + 1), (W, H + 2)]
    for i, p in enumerate(files):
        assert task.get_frame(i, quality="original").read() == p.read_bytes()
    buf = io.BytesIO()
    task.download_chunk(1, buf, quality="original")
    with zipfile.ZipFile(buf) as z:
        assert [z.read(n) for n in z.namelist()] == [files[2].read_bytes()]
    lex = make_task(c, files)  # default: lexicographical
    assert [f.name for f in lex.get_meta().frames] == ["a.png", "b.png", "c.png"]
    c.close()


# ------------------------------------------------------------------------------------ annotations
def blob(cx, cy, r, h=H, w=W):
    y, x = np.mgrid[0:h, 0:w]
    return np.hypot(x - cx, y - cy) <= r


def label_ids(client, task):
    return {lb.name: lb.id for lb in task.get_labels()}


def test_annotations_put_patch_get(video_task, cvat_server):
    client, task, _ = video_task
    lid = label_ids(client, task)
    m0, m1 = blob(20, 20, 7), blob(40, 25, 9) & ~blob(40, 25, 3)
    shapes = [
        models.LabeledShapeRequest(type="mask", frame=0, label_id=lid["car"], points=encode_cvat_rle(m0),
                                   group=1, source="auto"),
        models.LabeledShapeRequest(type="mask", frame=3, label_id=lid["car"], points=encode_cvat_rle(m1),
                                   group=2, source="semi-auto"),
        models.LabeledShapeRequest(type="polygon", frame=2, label_id=lid["person"],
                                   points=[1.5, 2, 30, 2, 30, 40]),
        models.LabeledShapeRequest(type="rectangle", frame=4, label_id=lid["person"], points=[1, 2, 3, 4]),
    ]
    track = models.LabeledTrackRequest(frame=0, label_id=lid["car"], shapes=[
        models.TrackedShapeRequest(type="rectangle", frame=0, points=[1, 1, 9, 9]),
        models.TrackedShapeRequest(type="rectangle", frame=1, points=[2, 2, 10, 10], outside=True)])
    client.tasks.api.update_annotations(task.id, labeled_data_request=models.LabeledDataRequest(
        shapes=shapes, tracks=[track]))
    data = task.get_annotations()  # parsed by cvat-sdk's models: every required field is there
    assert data.version >= 1 and len(data.shapes) == 4 and len(data.tracks) == 1
    by_frame = {s.frame: s for s in data.shapes}
    assert np.array_equal(decode_cvat_rle(by_frame[0].points, H, W), m0)
    assert np.array_equal(decode_cvat_rle(by_frame[3].points, H, W), m1)
    assert (by_frame[3].source, by_frame[3].group, by_frame[2].points) == ("semi-auto", 2, [1.5, 2, 30, 2, 30, 40])
    assert [(s.frame, s.outside) for s in data.tracks[0].shapes] == [(0, False), (1, True)]
    # jobs see only their own frames; PATCH on a job returns what it created, with server ids
    jobs = sorted(task.get_jobs(), key=lambda j: j.start_frame)
    j1 = raw(cvat_server, "GET", f"/api/jobs/{jobs[1].id}/annotations")[1]
    assert sorted(s["frame"] for s in j1["shapes"]) == [2, 3] and j1["tracks"] == []
    v0 = j1["version"]
    new = {"type": "polygon", "frame": 2, "label_id": lid["car"], "points": [0, 0, 5, 0, 5, 5]}
    st, created, _ = raw(cvat_server, "PATCH", f"/api/jobs/{jobs[1].id}/annotations",
                         {"shapes": [new]}, query={"action": "create"})
    assert st == 200 and len(created["shapes"]) == 1 and created["version"] == v0 + 1
    sid = created["shapes"][0]["id"]
    assert sid not in {s.id for s in data.shapes}
    upd = dict(created["shapes"][0], points=[0, 0, 6, 0, 6, 6])
    st, body, _ = raw(cvat_server, "PATCH", f"/api/jobs/{jobs[1].id}/annotations", {"shapes": [upd]},
                      query={"action": "update"})
    assert st == 200 and body["shapes"][0]["points"] == [0, 0, 6, 0, 6, 6] and body["shapes"][0]["id"] == sid
    st, body, _ = raw(cvat_server, "PATCH", f"/api/jobs/{jobs[1].id}/annotations", {"shapes": [upd]},
                      query={"action": "delete"})
    assert st == 200
    after = raw(cvat_server, "GET", f"/api/tasks/{task.id}/annotations")[1]
    assert sid not in {s["id"] for s in after["shapes"]} and len(after["shapes"]) == 4
    # a shape of another job cannot be updated through this one
    other = [s for s in after["shapes"] if s["frame"] == 0][0]
    st, body, _ = raw(cvat_server, "PATCH", f"/api/jobs/{jobs[1].id}/annotations", {"shapes": [other]},
                      query={"action": "update"})
    assert st == 400 and "outside job" in body["shapes"]["0"]["frame"][0]
    st, body, _ = raw(cvat_server, "PATCH", f"/api/jobs/{jobs[1].id}/annotations",
                      {"shapes": [dict(other, frame=2)]}, query={"action": "update"})
    assert st == 400 and f"no shape with id {other['id']} in job" in body["shapes"]["0"]["id"][0]
    assert raw(cvat_server, "DELETE", f"/api/tasks/{task.id}/annotations")[0] == 204
    assert task.get_annotations().shapes == []


@pytest.mark.parametrize("case, field, words", [
    ("rle_length", "points", "sum to"),
    ("mask_outside", "points", "outside the 64x48 frame"),
    ("frame_outside_task", "frame", "outside task"),
    ("frame_outside_job", "frame", "outside job"),
    ("unknown_label", "label_id", "does not belong"),
    ("bad_type", "type", "not a valid choice"),
    ("short_polygon", "points", "polygon needs"),
    ("rectangle_3", "points", "4 points"),
    ("bad_source", "source", "not a valid choice"),
    ("negative_frame", "frame", "greater than or equal to 0"),
    ("track_shape_outside", "shapes[1].frame", "outside task"),
])
def test_validation_errors_name_the_field(video_task, cvat_server, case, field, words):
    client, task, _ = video_task
    lid = label_ids(client, task)["car"]
    good = encode_cvat_rle(blob(20, 20, 5))
    s = {"type": "mask", "frame": 1, "label_id": lid, "points": good}
    target = f"/api/tasks/{task.id}/annotations"
    section = "shapes"
    if case == "rle_length":
        s["points"] = good[:-5] + [good[-5] + 1] + good[-4:]
    elif case == "mask_outside":
        s["points"] = good[:-4] + [good[-4] + 40, good[-3], good[-2] + 40, good[-1]]
    elif case == "frame_outside_task":
        s["frame"] = 5
    elif case == "frame_outside_job":
        job = sorted(task.get_jobs(), key=lambda j: j.start_frame)[0]
        target = f"/api/jobs/{job.id}/annotations"
        s["frame"] = 2
        words = f"outside job {job.id}"
    elif case == "unknown_label":
        s["label_id"] = lid + 1000
    elif case == "bad_type":
        s["type"] = "circle"
    elif case == "short_polygon":
        s.update(type="polygon", points=[0, 0, 1, 1])
    elif case == "rectangle_3":
        s.update(type="rectangle", points=[0, 0, 1])
    elif case == "bad_source":
        s["source"] = "robot"
    elif case == "negative_frame":
        s["frame"] = -1
    elif case == "track_shape_outside":
        section = "tracks"
        s = {"frame": 0, "label_id": lid, "shapes": [
            {"type": "rectangle", "frame": 0, "points": [0, 0, 5, 5]},
            {"type": "rectangle", "frame": 7, "points": [0, 0, 5, 5]}]}
    before = len(cvat_server.state.log)
    status, body, _ = raw(cvat_server, "PATCH", target, {section: [s]}, query={"action": "create"})
    assert status == 400, body
    msgs = body[section]["0"][field]
    assert any(words in m for m in msgs), msgs
    assert cvat_server.log[before].status == 400
    assert raw(cvat_server, "GET", f"/api/tasks/{task.id}/annotations")[1]["shapes"] == []  # nothing stored


def test_mask_check_agrees_with_the_codec():
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = rng.random((H, W)) > 0.7
        pts = encode_cvat_rle(m)
        assert mask_problem(pts, W, H) is None
        assert np.array_equal(decode_cvat_rle(pts, H, W), m)
        assert mask_problem(pts[:-5] + [pts[-5] + 1] + pts[-4:], W, H) is not None
    assert "outside" in mask_problem([1, 0, 0, W, 0], W, H)


# ------------------------------------------------------------------------------------ faults
def test_faults_each_kind(cvat_server):
    c = sdk_client(cvat_server)
    api = c.api_client.server_api
    mark = len(cvat_server.log)
    cvat_server.faults.fail_at(0)
    with pytest.raises(ApiException) as ei:
        api.retrieve_about()
    assert ei.value.status == 500
    cvat_server.faults.rate_limit_at(0, retry_after=1)
    with pytest.raises(ApiException) as ei:
        api.retrieve_about()
    assert ei.value.status == 429 and ei.value.headers["Retry-After"] == "1"
    cvat_server.faults.drop_at(0)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        api.retrieve_about()
    assert api.retrieve_about()[0].version == "2.24.0"
    assert [(e.method, e.path, e.status) for e in cvat_server.log[mark:]] == [
        ("GET", "/api/server/about", 500), ("GET", "/api/server/about", 429),
        ("GET", "/api/server/about", None), ("GET", "/api/server/about", 200)]
    assert cvat_server.log[-1].bytes_out > 0 and cvat_server.log[-2].bytes_out == 0
    # applied faults: the change is made, the client hears of a failure
    n = len(c.projects.list())
    cvat_server.faults.drop_at(0, applied=True)
    with pytest.raises(urllib3.exceptions.HTTPError):
        c.projects.create({"name": "dropped", "labels": [{"name": "a"}]})
    cvat_server.faults.fail_at(0, status=502, applied=True)
    with pytest.raises(ApiException) as ei:
        c.projects.create({"name": "failed", "labels": [{"name": "a"}]})
    assert ei.value.status == 502
    cvat_server.faults.fail_at(0)  # not applied
    with pytest.raises(ApiException):
        c.projects.create({"name": "refused", "labels": [{"name": "a"}]})
    cvat_server.faults.drop_at(0, applied=False)
    with pytest.raises(urllib3.exceptions.HTTPError):
        c.projects.create({"name": "lost", "labels": [{"name": "a"}]})
    assert sorted(p.name for p in c.projects.list())[n:] == ["dropped", "failed"]
    # several at once, counted from the call; log entries carry query and sizes
    mark = len(cvat_server.log)
    cvat_server.faults.fail_at(1)
    cvat_server.faults.fail_at(3, status=503)
    statuses = [raw(cvat_server, "GET", "/api/projects", query={"page_size": 1})[0] for _ in range(5)]
    assert statuses == [200, 500, 200, 503, 200]
    assert cvat_server.log[mark].query == {"page_size": "1"} and cvat_server.log[mark].path == "/api/projects"
    cvat_server.faults.slow(0.2)
    t0 = time.perf_counter()
    api.retrieve_about()
    assert time.perf_counter() - t0 >= 0.2
    cvat_server.faults.clear()
    assert cvat_server.faults.pending == {} and cvat_server.faults.delay == 0
    cvat_server.faults.fail_at(5)
    cvat_server.reset()
    assert cvat_server.faults.pending == {} and cvat_server.log == [] and cvat_server.state.tasks == {}
    c.close()


def test_request_bytes_are_logged(video_task, cvat_server):
    client, task, _ = video_task
    lid = label_ids(client, task)["car"]
    body = {"shapes": [{"type": "rectangle", "frame": 0, "label_id": lid, "points": [0, 0, 4, 4]}]}
    mark = len(cvat_server.log)
    raw(cvat_server, "PATCH", f"/api/tasks/{task.id}/annotations", body, query={"action": "create"})
    e = cvat_server.log[mark]
    assert (e.method, e.path, e.query, e.status) == ("PATCH", f"/api/tasks/{task.id}/annotations",
                                                     {"action": "create"}, 200)
    assert e.bytes_in == e.bytes == len(json.dumps(body).encode()) and e.bytes_out > 0


# ------------------------------------------------------------------------------------ command line
def test_module_starts_and_serves():
    proc = subprocess.Popen([sys.executable, "-m", "tests.cvat_standin", "--port", "0", "--token",
                             "tok-cli-123456"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = line.split()[-1]
        assert url.startswith("http://127.0.0.1:")
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert lines == [f"CVAT_HOST={url}", "CVAT_ACCESS_TOKEN=tok-cli-123456"]
        r = urllib3.request("GET", url + "/api/server/about", retries=False)
        assert r.status == 200 and json.loads(r.data)["version"] == "2.24.0"
        r = urllib3.request("GET", url + "/api/users/self", headers={"Authorization": "Bearer tok-cli-123456"})
        assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(10)


# ------------------------------------------------------------------------------------ issue 13: as strict as CVAT
def test_content_negotiation_and_version(cvat_server):
    for accept, status in (("application/json", 406), ("application/vnd.cvat+json", 200), ("*/*", 200),
                           ("text/html", 200), ("application/vnd.cvat+json; version=1.0", 406),
                           ("application/xml, text/plain", 406)):
        r = urllib3.request("GET", cvat_server.url + "/api/users/self", retries=False,
                            headers={"Accept": accept, "Authorization": f"Bearer {cvat_server.token}"})
        assert r.status == status, accept
    r = urllib3.request("GET", cvat_server.url + "/api/users/self", headers={"Accept": "application/json"},
                        retries=False)
    assert r.status == 406  # negotiation comes before authentication in DRF


def test_label_type_attributes_and_tracks_rules(cvat_server, tmp_path):
    client = sdk_client(cvat_server)
    video = write_video(tmp_path / "clip.mp4", 8)
    task = client.tasks.create({"name": "t", "overlap": 0, "labels": [
        {"name": "box", "type": "rectangle", "attributes": [
            {"name": "color", "mutable": False, "input_type": "text", "default_value": "", "values": []},
            {"name": "moving", "mutable": True, "input_type": "text", "default_value": "", "values": []}]},
        {"name": "any", "type": "any"}]})
    task.upload_data([str(video)], resource_type=ResourceType.LOCAL, params={}, status_check_period=0.01)
    labels = raw(cvat_server, "GET", "/api/labels", query={"task_id": task.id})[1]["results"]
    lid = {lb["name"]: lb for lb in labels}
    box, anyl = lid["box"]["id"], lid["any"]["id"]
    immut, mut = [a["id"] for a in lid["box"]["attributes"]]
    m = np.zeros((H, W), bool)
    m[2:5, 3:9] = True

    def patch(body):
        full = {"version": 0, "tags": [], "shapes": [], "tracks": [], **body}
        return raw(cvat_server, "PATCH", f"/api/tasks/{task.id}/annotations", full,
                   query={"action": "create"})

    st, body, _ = patch({"shapes": [{"type": "mask", "frame": 0, "label_id": box,
                                     "points": encode_cvat_rle(m)}]})
    assert st == 400 and "has type 'rectangle' and cannot take a mask shape" in json.dumps(body)
    assert patch({"shapes": [{"type": "mask", "frame": 0, "label_id": anyl,
                              "points": encode_cvat_rle(m)}]})[0] == 200
    st, body, _ = patch({"shapes": [{"type": "rectangle", "frame": 0, "label_id": box, "points": [1, 1, 5, 5],
                                     "attributes": [{"spec_id": 999, "value": "x"}]}]})
    assert st == 400 and "spec_id `999` is invalid" in json.dumps(body)
    track = {"frame": 0, "label_id": box, "attributes": [{"spec_id": mut, "value": "x"}],
             "shapes": [{"type": "rectangle", "frame": 0, "points": [1, 1, 5, 5]}]}
    st, body, _ = patch({"tracks": [track]})  # a mutable spec on the track itself: refused
    assert st == 400 and f"spec_id `{mut}` is invalid" in json.dumps(body)
    track["attributes"] = [{"spec_id": immut, "value": "red"}]
    track["shapes"][0]["attributes"] = [{"spec_id": mut, "value": "yes"}]
    assert patch({"tracks": [track]})[0] == 200
    st, body, _ = patch({"tracks": [{"frame": 0, "label_id": anyl, "shapes": []}]})
    assert st == 400 and "at least one shape" in json.dumps(body)
    st, body, _ = patch({"tracks": [{"frame": 0, "label_id": anyl, "shapes": [
        {"type": "mask", "frame": 0, "points": encode_cvat_rle(m)}]}]})
    assert st == 400 and "masks cannot be tracked" in json.dumps(body)
    # a track whose frame is before its first shape gets an outside shape there (not refused)
    st, body, _ = patch({"tracks": [{"frame": 1, "label_id": anyl, "shapes": [
        {"type": "rectangle", "frame": 3, "points": [1, 1, 5, 5]}]}]})
    assert st == 200
    got = body["tracks"][0]
    assert got["frame"] == 1 and [(s["frame"], s["outside"]) for s in got["shapes"]] == [(1, True), (3, False)]
    client.close()


def test_task_level_writes_reach_every_overlapping_job(cvat_server, tmp_path):
    client = sdk_client(cvat_server)
    video = write_video(tmp_path / "clip.mp4", 20)
    task = make_task(client, [video], segment_size=10)  # CVAT's default video overlap: 5
    jobs = sorted(raw(cvat_server, "GET", "/api/jobs", query={"task_id": task.id})[1]["results"],
                  key=lambda j: j["start_frame"])
    assert [(j["start_frame"], j["stop_frame"]) for j in jobs] == [(0, 9), (5, 14), (10, 19)]
    lid = label_ids(client, task)["car"]
    body = {"version": 0, "tags": [], "shapes": [
        {"type": "rectangle", "frame": 7, "label_id": lid, "points": [1, 1, 5, 5]}], "tracks": [
        {"frame": 2, "label_id": lid, "shapes": [
            {"type": "rectangle", "frame": 2, "points": [0, 0, 4, 4]},
            {"type": "rectangle", "frame": 12, "points": [10, 0, 14, 4]},
            {"type": "rectangle", "frame": 13, "points": [10, 0, 14, 4], "outside": True}]}]}
    assert raw(cvat_server, "PATCH", f"/api/tasks/{task.id}/annotations", body,
               query={"action": "create"})[0] == 200
    per_job = [raw(cvat_server, "GET", f"/api/jobs/{j['id']}/annotations")[1] for j in jobs]
    assert [[s["frame"] for s in d["shapes"]] for d in per_job] == [[7], [7], []]
    frames = [[(s["frame"], s["outside"]) for s in d["tracks"][0]["shapes"]] if d["tracks"] else []
              for d in per_job]
    assert frames[0] == [(2, False), (9, False)]  # cut at the job's end, interpolated there
    assert frames[1] == [(5, False), (12, False), (13, True)]
    assert frames[2] == [(10, False), (12, False), (13, True)]
    # the task view merges them back into one track (CVAT's merge across overlaps)
    merged = raw(cvat_server, "GET", f"/api/tasks/{task.id}/annotations")[1]
    assert len(merged["tracks"]) == 1 and len(merged["shapes"]) == 1  # identical rectangles: IoU 1
    m = np.zeros((H, W), bool)
    m[2:5, 3:9] = True
    mask = {"type": "mask", "frame": 6, "label_id": lid, "points": encode_cvat_rle(m)}
    raw(cvat_server, "PATCH", f"/api/tasks/{task.id}/annotations",
        {"version": 0, "tags": [], "shapes": [mask], "tracks": []}, query={"action": "create"})
    merged = raw(cvat_server, "GET", f"/api/tasks/{task.id}/annotations")[1]
    assert [s["frame"] for s in merged["shapes"] if s["type"] == "mask"] == [6, 6]  # CVAT never merges masks
    client.close()


def test_data_parameters_checked_like_cvat(cvat_server, tmp_path):
    share = tmp_path
    cvat_server.state.share_root = share
    write_video(share / "v.mp4", 6)
    st, task, _ = raw(cvat_server, "POST", "/api/tasks", {"name": "t", "labels": [{"name": "a"}]})
    assert st == 201
    tid = task["id"]
    for params, field, words in (({}, "image_quality", "required"),
                                 ({"image_quality": 70, "frame_filter": "every=2"}, "frame_filter", "Invalid"),
                                 ({"image_quality": 70, "chunk_size": 0}, "chunk_size", "positive"),
                                 ({"image_quality": 101}, "image_quality", "less than or equal to 100"),
                                 ({"image_quality": 70, "start_frame": 4, "stop_frame": 2}, "stop_frame",
                                  "more or equal")):
        st, body, _ = raw(cvat_server, "POST", f"/api/tasks/{tid}/data", {"server_files": ["v.mp4"], **params})
        assert st == 400 and words in json.dumps(body[field]), (params, body)
    st, body, _ = raw(cvat_server, "POST", f"/api/tasks/{tid}/data",
                      {"server_files": ["v.mp4"], "image_quality": 70, "frame_filter": "step=2"})
    assert st == 202
