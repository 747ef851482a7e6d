"""dl_utils.cvat against the stand-in CVAT server through the real cvat-sdk, plus offline pieces.

Server tests use the ``cvat_server`` fixture of tests/cvat_standin (state, fault injection, request
log). Offline tests cover what needs no server: credentials, redaction, retry delays, the wire
hashes, the push plan's numbering.
"""

from __future__ import annotations

import io
import json
import logging
from contextlib import redirect_stderr

import numpy as np
import pytest

from dl_utils.annotations import Instance, Label, MediaInfo, ShapeType, Source
from dl_utils.cv_utils import encode_cvat_rle
from dl_utils.errors import CvatError, InputError
from dl_utils.store import AnnotationStore
from dl_utils.cvat import connection as cconn
from dl_utils.cvat._wire import shape_hash, shape_payload, track_hash, track_payload, track_shape
from dl_utils.cvat.connection import RetryPolicy, normalize_host, redact, resolve_credentials
from dl_utils.cvat.push import plan_units
from dl_utils.cvat.tasks import JobInfo, TaskInfo, check_task_media

H, W = 48, 64
FRAMES = list(range(3, 3 + 2 * 12, 2))  # start 3, step 2: 12 frames -> task frames 0..11


def blob(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    ang = np.arctan2(y - cy, x - cx)
    k = rng.uniform(0.1, 0.3, size=3)
    rad = r * (1 + k[0] * np.sin(3 * ang + k[1] * 10) + k[2] * np.cos(5 * ang))
    return np.hypot(x - cx, y - cy) <= rad


def make_store(path, rng, *, frames=FRAMES, n_obj=3, gap=(4, 5)) -> tuple[AnnotationStore, dict]:
    """Objects 1..n_obj with irregular masks (holes on some frames), object 2 absent on ``gap``."""
    media = MediaInfo(name="clip.mp4", width=W, height=H, frames=list(frames), start=frames[0],
                      stop=frames[-1], step=frames[1] - frames[0] if len(frames) > 1 else 1)
    st = AnnotationStore.create(path, media)
    st.set_labels([Label("car", "#ff0000"), Label("person", "#00ff00")])
    exp: dict[tuple[int, int], np.ndarray] = {}
    for o in range(1, n_obj + 1):
        st.add_object("car" if o % 2 else "person", id=o)
    for k, f in enumerate(frames):
        insts = []
        for o in range(1, n_obj + 1):
            if o == 2 and k in gap:
                insts.append(Instance(o, mask=np.zeros((H, W), bool)))
                continue
            m = blob(rng, 10 + 2 * k + 12 * (o - 1) % 40, 12 + 8 * o % 30, 5 + o)
            if k % 3 == 0:
                m &= ~blob(rng, 10 + 2 * k + 12 * (o - 1) % 40, 12 + 8 * o % 30, 1.5)
            src = Source.SEMI_AUTO if (o == 1 and k == 0) else Source.AUTO
            insts.append(Instance(o, mask=m, score=0.5 + k / 100, source=src))
            exp[(f, o)] = m
        st.write_frame(f, insts)
    return st, exp


# ======================================================================================= offline
class TestCredentials:
    def test_arguments_env_and_token_wins(self):
        env = {"CVAT_HOST": "cvat.example.com:8080/", "CVAT_ACCESS_TOKEN": "tok-env-123456",
               "CVAT_USERNAME": "ann", "CVAT_PASSWORD": "pw-secret-999", "CVAT_ORG": "team"}
        c = resolve_credentials(env=env, prompt=False)
        assert (c.host, c.token, c.user, c.password, c.org) == (
            "http://cvat.example.com:8080", "tok-env-123456", None, None, "team")
        c2 = resolve_credentials("https://h.io", user="bob", password="pw-arg-4242", org="",
                                 env=env, prompt=False)
        assert (c2.host, c2.token, c2.user, c2.password, c2.org) == (
            "https://h.io", None, "bob", "pw-arg-4242", "")
        env2 = {k: v for k, v in env.items() if k != "CVAT_ACCESS_TOKEN"}
        c3 = resolve_credentials(env=env2, prompt=False)
        assert (c3.user, c3.password) == ("ann", "pw-secret-999")
        for secret in ("tok-env-123456", "pw-secret-999", "pw-arg-4242"):
            assert secret not in repr(c) + repr(c2) + repr(c3)

    def test_prompt_and_no_prompt(self):
        asked = []

        def fake_getpass(msg):
            asked.append(msg)
            return "prompted-token-777"

        c = resolve_credentials("h.io", env={}, prompt=True, getpass_fn=fake_getpass)
        assert c.token == "prompted-token-777" and len(asked) == 1 and "h.io" in asked[0]
        c = resolve_credentials("h.io", user="ann", env={}, prompt=True, getpass_fn=lambda m: "pw-typed-1")
        assert (c.user, c.password) == ("ann", "pw-typed-1")
        with pytest.raises(CvatError, match="CVAT_ACCESS_TOKEN"):
            resolve_credentials("h.io", env={}, prompt=False)
        with pytest.raises(CvatError, match="CVAT_HOST"):
            resolve_credentials(env={}, prompt=False)

    def test_host_rules(self):
        assert normalize_host("https://cvat.io/") == "https://cvat.io"
        assert normalize_host("localhost:8080") == "http://localhost:8080"
        with pytest.raises(InputError, match="user name or password"):
            normalize_host("https://me:hunter2-pass@cvat.io")
        assert "hunter2-pass" not in redact("x hunter2-pass y")
        with pytest.raises(InputError, match="http"):
            normalize_host("ftp://cvat.io")

    def test_redact_messages_and_logs(self, caplog):
        resolve_credentials("h.io", token="tok-abcdef-SECRET", env={}, prompt=False)
        assert redact("Bearer tok-abcdef-SECRET failed") == "Bearer *** failed"
        with caplog.at_level(logging.INFO, logger="dl_utils.cvat"):
            logging.getLogger("dl_utils.cvat").info("header %s", "tok-abcdef-SECRET")
        assert "tok-abcdef-SECRET" not in caplog.text and "***" in caplog.text
        assert "tok-abcdef-SECRET" not in str(cconn.cvat_error("got tok-abcdef-SECRET"))


def test_retry_policy_delays():
    p = RetryPolicy(retries=4, base_delay=0.5, max_delay=3.0, max_retry_after=10)
    assert [p.delay(a) for a in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert p.delay(0, retry_after=7) == 7 and p.delay(3, retry_after=99) == 10
    assert cconn._parse_retry_after("2") == 2.0
    assert cconn._parse_retry_after(None) is None
    assert 0 <= cconn._parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 1


def test_hashes_survive_server_float_formatting():
    """What we send and what a server returns (floats, ids, missing optional fields) hash alike."""
    pts = encode_cvat_rle(blob(np.random.default_rng(0), 30, 20, 8))
    sent = shape_payload("mask", 4, 7, 3, "auto", pts, 0.93)
    back = dict(sent, id=99, points=[float(v) for v in pts], score=1.0, group=3, elements=[])
    assert shape_hash(sent) == shape_hash(back)
    assert shape_hash(sent) != shape_hash(dict(back, points=[float(v) for v in pts[:-1]] + [pts[-1] + 1]))
    assert shape_hash(sent) != shape_hash(dict(back, source="manual"))
    tr = track_payload(2, 5, 1, "auto", [track_shape("polygon", 2, [1.5, 2, 3, 4, 5, 6]),
                                         track_shape("polygon", 3, [1.5, 2, 3, 4, 5, 6], outside=True)])
    tb = dict(tr, id=5, shapes=[dict(s, id=i) for i, s in enumerate(reversed(tr["shapes"]))])
    assert track_hash(tr) == track_hash(tb)


def test_plan_numbering_jobs_and_groups(tmp_path, rng):
    """Store frames 3,5,7.. become task frames 0,1,2..; shapes go to the job holding the frame."""
    st, exp = make_store(tmp_path / "s.sqlite", rng)
    task = TaskInfo(1, "clip", st.media, [JobInfo(10, 0, 5), JobInfo(11, 6, 11)], mode="interpolation")
    units, skipped = plan_units(st, task, {"car": 1, "person": 2}, host="h", shape="mask")
    assert skipped == 0 and len(units) == len(exp)
    for (f, o), m in exp.items():
        d = json.loads(units[f"m:{f}:{o}"].body)
        i = FRAMES.index(f)
        assert d["frame"] == i and d["group"] == o and d["points"] == encode_cvat_rle(m)
        assert units[f"m:{f}:{o}"].job == (10 if i <= 5 else 11)
        assert d["source"] == ("semi-auto" if (o, i) == (1, 0) else "auto")
    boxes, _ = plan_units(st, task, {"car": 1, "person": 2}, host="h", shape="box")
    # object 2 is missing on task frames 4, 5: its job-10 track ends with outside at 4, and job 11's
    tr = json.loads(boxes["tb:2:0:10"].body)
    assert [(s["frame"], s["outside"]) for s in tr["shapes"]] == [(0, False), (1, False), (2, False),
                                                                   (3, False), (4, True)]
    assert json.loads(boxes["tb:2:0:11"].body)["shapes"][0]["frame"] == 6
    st.close()


def test_check_task_media_names_both_sides(rng, tmp_path):
    st, _ = make_store(tmp_path / "s.sqlite", rng)
    other = MediaInfo(name="task", width=W, height=H, frames=list(range(0, 12)), start=0, stop=11, step=1)
    task = TaskInfo(5, "task", other, [JobInfo(1, 0, 11)], widths=((W, H),))
    with pytest.raises(CvatError, match=r"start=3 step=2 in .* but start=0 step=1 in task 5"):
        check_task_media(st.media, task, "job.sqlite")
    small = MediaInfo(name="task", width=W, height=H, frames=FRAMES[:5], start=3, stop=11, step=2)
    with pytest.raises(CvatError, match="12 frames in job.sqlite but 5 in task 5"):
        check_task_media(st.media, TaskInfo(5, "t", small, [JobInfo(1, 0, 4)], widths=((W, H),)),
                         "job.sqlite")
    same = MediaInfo(name="task", width=W, height=H, frames=FRAMES, start=3, stop=FRAMES[-1], step=2)
    smaller = MediaInfo(name="task", width=32, height=24, frames=FRAMES, start=3, stop=FRAMES[-1], step=2)
    with pytest.raises(CvatError, match=r"12 frame\(s\) differ in size, first task frame 0: 64x48 in"
                       r" job.sqlite but 32x24 in task 5"):
        check_task_media(st.media, TaskInfo(5, "t", smaller, [JobInfo(1, 0, 11)]), "job.sqlite")
    check_task_media(st.media, TaskInfo(5, "t", same, [JobInfo(1, 0, 11)], widths=((W, H),)))
    st.close()


def test_cli_parser_has_every_command_with_dry_run():
    import argparse

    from dl_utils.drivers.cvat import add_cvat_arguments

    p = argparse.ArgumentParser()
    add_cvat_arguments(p.add_subparsers(dest="command"))
    for argv in (["cvat", "labels", "--task", "3", "--classes", "c.csv", "--dry-run"],
                 ["cvat", "create-task", "s.sqlite", "--dry-run"],
                 ["cvat", "push", "s.sqlite", "--task", "3", "--shape", "polygon", "--dry-run"],
                 ["cvat", "pull", "s.sqlite", "--task", "3", "--dry-run"]):
        a = p.parse_args(argv)
        assert a.dry_run and callable(a.func)
    with pytest.raises(SystemExit), redirect_stderr(io.StringIO()):
        p.parse_args(["cvat", "push", "s.sqlite", "--task", "3", "--token", "x"])  # no token option


def test_package_imports_no_engine():
    import subprocess
    import sys

    code = ("import sys, dl_utils.cvat, dl_utils.auto_annotation;"
            "bad=[m for m in sys.modules if m.split('.')[0] in ('torch','sam2','groundingdino')"
            " or m.startswith(('dl_utils.samal','dl_utils.sam2al','dl_utils.dinoal'))];print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cvat_commands_import_no_model_library():
    """The ``dl-utils cvat`` commands sit in the drivers layer, which may import the engine packages
    (their torch-free parts, through the options objects), but never torch, SAM2 or GroundingDINO."""
    import subprocess
    import sys

    code = ("import sys, dl_utils.drivers.cvat;"
            "bad=[m for m in sys.modules if m.split('.')[0] in ('torch','sam2','groundingdino','cvat_sdk')];"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ======================================================================================= server
# The stand-in's fixture and its API (tests/cvat_standin, written alongside this module).
from tests.cvat_standin.fixtures import cvat_server  # noqa: E402,F401
from tests.dino_fixtures import hf_model_dir, requires_tf  # noqa: E402,F401  (fixture)
from tests.sam2_fixtures import requires_sam2, tiny_sam2  # noqa: E402,F401  (fixture)

from dl_utils.cvat import connect, create_task_for_store, pull, push, read_task, sync_labels  # noqa: E402
from dl_utils.cvat.push import push_state  # noqa: E402

SECRET = "tok-Very-Secret-0123456789"


class Sleeps(list):
    """A fake sleep: records the waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def token_of(server) -> str:
    return server.token


def fail_at(server, k: int, kind: str, **kw) -> None:
    """Make the server's k-th request (0-based, counted from now) fail as ``kind``."""
    getattr(server.faults, {"500": "fail_at", "drop": "drop_at", "429": "rate_limit_at"}[kind])(k, **kw)


def n_requests(server) -> int:
    return len(server.log)


def patches(server, since: int = 0) -> list:
    return [e for e in server.log[since:] if e.method == "PATCH" and "annotations" in e.path]


def conn_for(server, *, retries: int = 3, sleep=None):
    from dl_utils.cvat import RetryPolicy

    return connect(server.url, token=token_of(server), prompt=False,
                   retry=RetryPolicy(retries=retries, base_delay=0.0),
                   sleep=sleep if sleep is not None else Sleeps())


def write_clip(path, n: int) -> str:
    from dl_utils.video_utils import write_video

    from tests.conftest import synthetic_frame

    write_video(path, (synthetic_frame(i, H, W) for i in range(n)), fps=25, crf=30, preset="ultrafast")
    return str(path)


@pytest.fixture
def job(tmp_path, rng, cvat_server):
    """A store (frames 3..25 step 2, 3 objects) and a task made for it (two jobs of 6 frames, no
    overlap; tests of CVAT's default video overlap make their own tasks)."""
    video = write_clip(tmp_path / "clip.mp4", 27)
    st, exp = make_store(tmp_path / "job.sqlite", rng)
    st.set_media(MediaInfo(**{**st.media.to_dict(), "path": video}))
    conn = conn_for(cvat_server)
    task = create_task_for_store(conn, st, segment_size=6, overlap=0, poll_interval=0.01)
    yield st, exp, conn, task
    conn.close()
    st.close()


def server_annotations(conn, task_id: int) -> list:
    """Everything on the task, ids removed and sorted: what 'identical' means between two runs."""
    out = []
    for j in read_task(conn, task_id).jobs:
        data = conn.request("GET", f"/api/jobs/{j.id}/annotations", what="test read")
        for s in data["shapes"]:
            out.append(json.dumps({k: v for k, v in s.items() if k not in ("id",)}, sort_keys=True))
        for t in data["tracks"]:
            t = dict(t, shapes=[{k: v for k, v in s.items() if k != "id"} for s in t["shapes"]])
            out.append(json.dumps({k: v for k, v in t.items() if k != "id"}, sort_keys=True))
    return sorted(out)


def test_task_numbering_with_step(job, cvat_server):
    st, exp, conn, task = job
    assert (task.media.start, task.media.step, len(task.media.frames)) == (3, 2, 12)
    assert task.media.frames == FRAMES and len(task.jobs) == 2
    assert st.get_meta("cvat.tasks") == {conn.host: [task.id]}
    other = MediaInfo(name="x", width=W, height=H, frames=list(range(12)), start=0, stop=11, step=1)
    st2 = AnnotationStore.create(st.path.parent / "other.sqlite", other)
    with pytest.raises(CvatError, match=rf"start=0 step=1 in .* but start=3 step=2 in task {task.id}"):
        push(st2, conn, task.id)
    st2.close()


def test_push_pull_exact_round_trip(job, tmp_path):
    st, exp, conn, task = job
    rep = push(st, conn, task.id)
    assert (rep.created, rep.updated, rep.deleted) == (len(exp), 0, 0)
    back = AnnotationStore.create(tmp_path / "back.sqlite")
    prep = pull(back, conn, task.id)
    assert prep.foreign == len(exp) and prep.instances == len(exp)
    assert back.media.frames == FRAMES
    got = {}
    for f, insts in back.iter_frames():
        for inst in insts:
            got[(f, inst.object_id)] = inst
    assert set(got) == set(exp)  # object ids come back from the groups, frames as source numbers
    for key, m in exp.items():
        assert np.array_equal(got[key].mask, m), key
        assert got[key].source is (Source.SEMI_AUTO if key == (3, 1) else Source.AUTO)
    assert {o.id: o.label for o in back.objects()} == {1: "car", 2: "person", 3: "car"}
    back.close()


@pytest.mark.parametrize("shape", ["polygon", "box"])
def test_tracks_round_trip(job, tmp_path, shape):
    from dl_utils.formats._common import to_geometry

    st, exp, conn, task = job
    push(st, conn, task.id, shape=shape)
    tracks = []
    for j in task.jobs:
        tracks += conn.request("GET", f"/api/jobs/{j.id}/annotations", what="t")["tracks"]
    t2 = [t for t in tracks if t["group"] == 2 and t["frame"] < 6][0]  # object 2 leaves on frames 4, 5
    assert [(s["frame"], s["outside"]) for s in t2["shapes"]][-2:] == [(3, False), (4, True)]
    back = AnnotationStore.create(tmp_path / "back.sqlite")
    pull(back, conn, task.id)
    for (f, o), m in exp.items():
        inst = back.read_frame(f).by_object()[o]
        g = to_geometry(Instance(o, mask=m), H, W, shape)
        if shape == "box":
            assert inst.box == g.box and inst.shape is ShapeType.BOX
        else:
            assert inst.polygon == g.rings and inst.shape is ShapeType.POLYGON
    back.close()


def test_repush_sends_only_what_changed(job, cvat_server):
    st, exp, conn, task = job
    first = push(st, conn, task.id, max_request_bytes=4096)
    assert first.created == len(exp)
    before = server_annotations(conn, task.id)
    mark = n_requests(cvat_server)
    again = push(st, conn, task.id)
    assert (again.created, again.updated, again.deleted, again.unchanged) == (0, 0, 0, len(exp))
    assert patches(cvat_server, mark) == [] and server_annotations(conn, task.id) == before
    # change one mask, drop another, add a new object on one frame
    f = FRAMES[7]
    m = exp[(f, 1)].copy()
    m[0:3, 0:3] = True
    st.write_frame(f, [Instance(1, mask=m), Instance(3, mask=np.zeros((H, W), bool))])
    st.add_object("person", id=9)
    st.write_frame(FRAMES[0], [Instance(9, mask=exp[(FRAMES[0], 1)])])
    mark = n_requests(cvat_server)
    rep = push(st, conn, task.id)
    assert (rep.created, rep.updated, rep.deleted, rep.unchanged) == (1, 1, 1, len(exp) - 2)
    sent = patches(cvat_server, mark)
    assert [e.query.get("action") if isinstance(e.query, dict) else e.query for e in sent]  # 3 kinds
    assert len(sent) == 3
    assert sum(e.bytes for e in sent) < first.bytes_sent / 5
    back = AnnotationStore.create(st.path.parent / "b2.sqlite")
    pull(back, conn, task.id)
    assert np.array_equal(back.read_frame(f).by_object()[1].mask, m)
    assert 3 not in back.read_frame(f).by_object()
    assert np.array_equal(back.read_frame(FRAMES[0]).by_object()[9].mask, exp[(FRAMES[0], 1)])
    back.close()


def test_people_s_shapes_are_never_touched(job, cvat_server):
    st, exp, conn, task = job
    push(st, conn, task.id)
    state = push_state(st, conn.host, task.id).units
    j0 = task.jobs[0].id
    car = [lb for lb in conn.get_paginated("/api/labels", {"task_id": task.id}, what="l")
           if lb["name"] == "car"][0]["id"]
    human_mask = np.zeros((H, W), bool)
    human_mask[30:40, 5:20] = True
    drawn = conn.request("PATCH", f"/api/jobs/{j0}/annotations", query={"action": "create"},
                         body={"version": 0, "tags": [], "tracks": [], "shapes": [
                             {"type": "mask", "frame": 1, "label_id": car, "group": 0, "source": "manual",
                              "points": encode_cvat_rle(human_mask), "occluded": False, "z_order": 0,
                              "rotation": 0.0, "outside": False, "attributes": []}]},
                         what="a person draws")["shapes"][0]
    ours = conn.request("GET", f"/api/jobs/{j0}/annotations", what="read")["shapes"]
    by_id = {s["id"]: s for s in ours}
    edited = dict(by_id[state[f"m:{FRAMES[2]}:1"].server_id])
    edited_mask = exp[(FRAMES[2], 1)].copy()
    edited_mask[:, :10] = False
    edited.update(points=encode_cvat_rle(edited_mask), source="manual")
    conn.request("PATCH", f"/api/jobs/{j0}/annotations", query={"action": "update"},
                 body={"version": 0, "tags": [], "tracks": [], "shapes": [edited]}, what="a person edits")
    gone = by_id[state[f"m:{FRAMES[3]}:3"].server_id]
    conn.request("PATCH", f"/api/jobs/{j0}/annotations", query={"action": "delete"},
                 body={"version": 0, "tags": [], "tracks": [], "shapes": [gone]}, what="a person deletes")
    # the model runs again and changes every mask of the first job's frames
    for f in FRAMES[:6]:
        st.write_frame(f, [Instance(o, mask=np.roll(exp[(f, o)], 1, axis=0)) for o in (1, 3)])
    rep = push(st, conn, task.id)
    assert sorted(rep.held) == sorted([f"m:{FRAMES[2]}:1", f"m:{FRAMES[3]}:3"])
    now = {s["id"]: s for s in conn.request("GET", f"/api/jobs/{j0}/annotations", what="r")["shapes"]}
    assert now[drawn["id"]] == drawn  # untouched
    assert now[edited["id"]]["points"] == [float(v) for v in edited["points"]] or \
        now[edited["id"]]["points"] == edited["points"]
    assert gone["id"] not in now and not any(
        s["frame"] == 3 and s["group"] == 3 for s in now.values())  # not brought back
    # pull: the person's work becomes manual instances; a push afterwards sends none of it back
    prep = pull(st, conn, task.id)
    assert (prep.edited, prep.deleted) == (1, 1) and prep.foreign == 1
    inst = st.read_frame(FRAMES[2]).by_object()[1]
    assert inst.source is Source.MANUAL and inst.keyframe and np.array_equal(inst.mask, edited_mask)
    assert st.read_frame(FRAMES[3]).by_object()[3].is_empty
    new_obj = [o for o in st.objects() if o.id not in (1, 2, 3)]
    assert len(new_obj) == 1 and np.array_equal(
        st.read_frame(FRAMES[1]).by_object()[new_obj[0].id].mask, human_mask)
    mark = n_requests(cvat_server)
    rep = push(st, conn, task.id)
    assert (rep.created, rep.updated, rep.deleted) == (0, 0, 0) and patches(cvat_server, mark) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["500", "drop"])
def test_interrupted_push_at_every_request_ends_like_a_clean_one(job, cvat_server, tmp_path, kind):
    """A fault at request k of a push (no retries: the push fails), then the same push again."""
    _interrupt_at_every_request(*job, cvat_server, tmp_path, kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["500", "drop"])
def test_interrupted_push_with_job_overlaps(cvat_server, tmp_path, rng, kind):
    """The same with CVAT's default video overlap: the copies in later jobs reconcile too."""
    video = write_clip(tmp_path / "clip.mp4", 27)
    st, exp = make_store(tmp_path / "job.sqlite", rng)
    st.set_media(MediaInfo(**{**st.media.to_dict(), "path": video}))
    conn = conn_for(cvat_server)
    task = create_task_for_store(conn, st, segment_size=6, poll_interval=0.01)
    assert [(j.start, j.stop) for j in task.jobs] == [(0, 5), (3, 8), (6, 11)]
    jobs_at = task.jobs_of()
    units = sum(len(jobs_at[st.media.task_index(f)]) for f, _o in exp)  # a copy per job holding f
    _interrupt_at_every_request(st, exp, conn, task, cvat_server, tmp_path, kind, max_units=units)
    conn.close()


def _interrupt_at_every_request(st, exp, conn, task, cvat_server, tmp_path, kind, max_units=None):
    import shutil
    template = tmp_path / "template.sqlite"
    st.close()
    shutil.copy(st.path, template)
    for suffix in ("-wal", "-shm"):
        if (tmp_path / ("job.sqlite" + suffix)).exists():
            shutil.copy(tmp_path / ("job.sqlite" + suffix), tmp_path / ("template.sqlite" + suffix))

    def fresh_store(name: str) -> AnnotationStore:
        p = tmp_path / name
        shutil.copy(template, p)
        return AnnotationStore.open(p)

    def clear() -> None:
        conn.request("DELETE", f"/api/tasks/{task.id}/annotations", what="clear")

    small = 3000  # several PATCH batches per push
    s0 = fresh_store("clean.sqlite")
    mark = n_requests(cvat_server)
    push(s0, conn, task.id, max_request_bytes=small)
    n = n_requests(cvat_server) - mark
    clean = server_annotations(conn, task.id)
    assert len(patches(cvat_server, mark)) >= 3 and n >= 8
    s0.close()
    for k in range(n):
        clear()
        s = fresh_store(f"k{k}.sqlite")
        c0 = conn_for(cvat_server, retries=0)
        fail_at(cvat_server, k, kind)
        with pytest.raises(CvatError):
            push(s, c0, task.id, max_request_bytes=small)
        cvat_server.faults.clear()
        rep = push(s, conn, task.id, max_request_bytes=small)
        assert server_annotations(conn, task.id) == clean, f"fault {kind} at request {k}"
        mark = n_requests(cvat_server)
        again = push(s, conn, task.id, max_request_bytes=small)
        assert (again.created, again.updated, again.deleted) == (0, 0, 0), k
        assert patches(cvat_server, mark) == []
        assert rep.created + rep.adopted <= (max_units or len(exp))
        c0.close()
        s.close()


@pytest.mark.parametrize("kind", ["500", "drop", "429"])
def test_retries_finish_the_push(job, cvat_server, kind):
    st, exp, conn, task = job
    sleeps = Sleeps()
    c = conn_for(cvat_server, retries=2, sleep=sleeps)
    mark = n_requests(cvat_server)
    n_before_patch = 6  # task, meta, jobs, task (labels), labels, job annotations...: a PATCH soon after
    for k in (1, n_before_patch + 2):
        fail_at(cvat_server, k, kind)
    rep = push(st, c, task.id, max_request_bytes=3000)
    n_push = n_requests(cvat_server) - mark
    assert rep.created == len(exp) and rep.retries == 2
    if kind == "429":
        assert sleeps == [1.0, 1.0]  # Retry-After honoured
    else:
        assert sleeps == [0.0, 0.0]
    assert len(server_annotations(conn, task.id)) == len(exp)
    assert n_push == rep.requests
    c.close()


def test_no_secret_in_any_output(tmp_path, rng, cvat_server, capsys, caplog, monkeypatch):
    """Token in the environment; run every CLI command; the token appears nowhere."""
    from dl_utils.cli import build_parser  # noqa: F401 - the lead wires `cvat` in; test our parser
    import argparse

    from dl_utils.drivers.cvat import add_cvat_arguments

    token = token_of(cvat_server)
    monkeypatch.setenv("CVAT_HOST", cvat_server.url)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", token)
    video = write_clip(tmp_path / "clip.mp4", 27)
    st, _ = make_store(tmp_path / "job.sqlite", rng)
    st.set_media(MediaInfo(**{**st.media.to_dict(), "path": video}))
    st.close()
    p = argparse.ArgumentParser()
    add_cvat_arguments(p.add_subparsers(dest="command"))
    caplog.set_level(logging.DEBUG)

    def run(*argv: str) -> str:
        a = p.parse_args(["cvat", *argv])
        assert a.func(a) == 0
        return capsys.readouterr().out

    out = run("create-task", str(tmp_path / "job.sqlite"), "--dry-run")
    assert "would create task" in out
    out = run("create-task", str(tmp_path / "job.sqlite"), "--json")
    task_id = json.loads(out)["task"]
    out += run("labels", "--task", str(task_id), "--store", str(tmp_path / "job.sqlite"), "--dry-run")
    mark = n_requests(cvat_server)
    out += run("push", str(tmp_path / "job.sqlite"), "--task", str(task_id), "--dry-run")
    assert "would send" in out and patches(cvat_server, mark) == []
    out += run("push", str(tmp_path / "job.sqlite"), "--task", str(task_id))
    out += run("pull", str(tmp_path / "new.sqlite"), "--task", str(task_id))
    errors = []
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", token + "-wrong")
    with pytest.raises(CvatError) as ei:
        run("push", str(tmp_path / "job.sqlite"), "--task", str(task_id))
    errors.append(str(ei.value))
    assert "401" in errors[0] or "credentials" in errors[0]
    with AnnotationStore.open(tmp_path / "job.sqlite") as s:
        meta = json.dumps({k: s.get_meta(k) for k in ("cvat.tasks", f"cvat.push:{cvat_server.url}:task:{task_id}")})
    assert str(task_id) in meta
    conn = conn_for(cvat_server)
    text = "\n".join([out, capsys.readouterr().err, caplog.text, meta, repr(conn), *errors])
    conn.close()
    for secret in (token, token + "-wrong"):
        assert secret not in text
    raw = (tmp_path / "job.sqlite").read_bytes() + (tmp_path / "new.sqlite").read_bytes()
    assert token.encode() not in raw


def test_label_sync_and_conflicts(cvat_server, tmp_path):
    conn = conn_for(cvat_server)
    proj = conn.request("POST", "/api/projects", body={"name": "p", "labels": [
        {"name": "car", "color": "#ff0000", "type": "any", "attributes": []},
        {"name": "person", "color": "#00ff00", "type": "rectangle", "attributes": []}]}, what="project")
    mark = n_requests(cvat_server)
    wanted = [Label("car", "#123456"), Label("person", type="mask"), Label("dog", "#0000ff", type="mask")]
    dry = sync_labels(conn, wanted, project_id=proj["id"], dry_run=True)
    assert dry.created == ["dog"] and not [e for e in cvat_server.log[mark:] if e.method != "GET"]
    res = sync_labels(conn, wanted, project_id=proj["id"])
    assert res.created == ["dog"] and res.existing == ["car", "person"]
    assert res.conflicts == ["label 'person' is of type 'rectangle' in CVAT but 'mask' here"]
    assert res.color_differs and "car" in res.color_differs[0]
    labels = {lb["name"]: lb for lb in conn.get_paginated("/api/labels", {"project_id": proj["id"]}, what="l")}
    assert (labels["dog"]["color"], labels["dog"]["type"]) == ("#0000ff", "mask")
    assert labels["person"]["type"] == "rectangle"  # left as it was
    assert res.mapping == {n: labels[n]["id"] for n in ("car", "person", "dog")}
    with pytest.raises(CvatError, match="'person' is of type 'rectangle'"):
        res.check()
    again = sync_labels(conn, wanted, project_id=proj["id"])
    assert again.created == []
    conn.close()


def test_server_version_refused(cvat_server, monkeypatch):
    from dl_utils.cvat.connection import CvatConnection

    monkeypatch.setattr(CvatConnection, "request", lambda self, *a, **k: {"version": "2.1.0"})
    with pytest.raises(CvatError, match="runs CVAT 2.1.0, which dl_utils does not support"):
        conn_for(cvat_server)
    monkeypatch.setattr(CvatConnection, "request", lambda self, *a, **k: {"version": "3.0.1"})
    with pytest.raises(CvatError, match="does not support"):
        conn_for(cvat_server)


# ------------------------------------------------------------------------------- auto_annotation
class SquaresBackend:
    """GroundingDINO stand-in: every white square is a detection of the prompt's first phrase."""

    name = "squares"
    device = "cpu"

    def infer(self, images, prompt, *, box_threshold, text_threshold):
        import cv2

        from dl_utils.dinoal import Detections

        out = []
        for im in images:
            _, _, stats, _ = cv2.connectedComponentsWithStats((im[..., 0] > 200).astype(np.uint8))
            boxes = [[x, y, x + w, y + h] for x, y, w, h, a in stats[1:] if a >= 30]
            ps = np.zeros((len(boxes), len(prompt)), np.float32)
            ps[:, 0] = 0.9
            out.append(Detections(np.array(boxes, float).reshape(-1, 4), np.full(len(boxes), 0.9),
                                  phrases=[prompt.phrases[0]] * len(boxes), phrase_scores=ps,
                                  prompt=prompt.caption, image_size=im.shape[:2]))
        return out


class DiskSegmenter:
    """SAM2 stand-in: the disc inscribed in each box (ImageSegmenter's predict_boxes interface)."""

    def set_image(self, image, key=None, *, frame=None):
        self.hw = image.shape[:2]
        self.frame = frame
        return True

    def predict_boxes(self, boxes, object_ids=None, scores=None, *, batch_size=64):
        from dl_utils.annotations import Instances

        h, w = self.hw
        y, x = np.mgrid[0:h, 0:w]
        out = []
        for oid, (x1, y1, x2, y2) in zip(object_ids, np.asarray(boxes)):
            m = np.hypot(x - (x1 + x2) / 2, y - (y1 + y2) / 2) <= min(x2 - x1, y2 - y1) / 2
            out.append(Instance(oid, mask=m, score=0.8))
        return Instances(out, frame=self.frame)


def test_auto_annotation_with_cvat_sdk_driver(cvat_server, tmp_path):
    from PIL import Image
    from cvat_sdk.auto_annotation import annotate_task

    from dl_utils.cv_utils import decode_cvat_rle
    from dl_utils.auto_annotation import GroundedSamFunction
    from dl_utils.dinoal import GroundedDetector
    from dl_utils.cvat.tasks import create_task

    files, expected = [], []
    seg = DiskSegmenter()
    for i in range(3):
        img = np.zeros((H, W, 3), np.uint8)
        boxes = [(5 + 3 * i, 6, 19 + 3 * i, 20), (35, 20 + i, 55, 40 + i)]
        for x1, y1, x2, y2 in boxes:
            img[y1:y2, x1:x2] = 255
        p = tmp_path / f"img_{i}.png"
        Image.fromarray(img).save(p)
        files.append(p)
        seg.set_image(img)
        expected.append(sorted(encode_cvat_rle(inst.mask) for inst in seg.predict_boxes(boxes, [1, 2])))
    conn = conn_for(cvat_server)
    task = create_task(conn, "images", files, labels=[Label("car"), Label("person")], poll_interval=0.01)
    fn = GroundedSamFunction(GroundedDetector(SquaresBackend(), prompt="car. person"), DiskSegmenter(),
                             labels=["car", "person"], prompt="car. person")
    annotate_task(conn.client, task.id, fn)
    data = conn.request("GET", f"/api/tasks/{task.id}/annotations", what="read")
    car = [lb["id"] for lb in conn.get_paginated("/api/labels", {"task_id": task.id}, what="l")
           if lb["name"] == "car"][0]
    for i in range(3):
        shapes = [s for s in data["shapes"] if s["frame"] == i]
        assert all(s["type"] == "mask" and s["label_id"] == car and s["source"] == "auto" for s in shapes)
        got = sorted(encode_cvat_rle(decode_cvat_rle(s["points"], H, W)) for s in shapes)
        assert got == expected[i]
    # conv_mask_to_poly: the driver asks for polygons
    annotate_task(conn.client, task.id, fn, clear_existing=True, conv_mask_to_poly=True)
    data = conn.request("GET", f"/api/tasks/{task.id}/annotations", what="read")
    assert {s["type"] for s in data["shapes"]} == {"polygon"} and len(data["shapes"]) == 6
    conn.close()


@requires_sam2
@requires_tf
def test_cvat_cli_auto_annotate_runs_our_module(cvat_server, tmp_path, hf_model_dir, tiny_sam2):  # noqa: F811
    """``cvat-cli task auto-annotate --function-module dl_utils.auto_annotation``: the real cvat-cli,
    real (random-weight) models from files; the server gets exactly what the function returns here."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch
    from PIL import Image

    from dl_utils.auto_annotation import create
    from dl_utils.cv_utils import decode_cvat_rle
    from dl_utils.cvat.tasks import create_task
    from tests.dino_fixtures import scene

    cli = Path(sys.executable).parent / "cvat-cli"
    if not cli.exists():
        pytest.skip("cvat-cli is not installed (pip install cvat-cli)")
    ckpt = tmp_path / "sam.pt"
    torch.save({"model": tiny_sam2.state_dict()}, ckpt)
    files = []
    for i in range(2):
        p = tmp_path / f"im_{i}.png"
        Image.fromarray(scene(240, 320, seed=i)).save(p)
        files.append(p)
    conn = conn_for(cvat_server)
    task = create_task(conn, "auto", files, labels=[Label("car"), Label("person")], poll_interval=0.01)
    params = dict(text="car. person", backend="transformers", model=str(hf_model_dir),
                  sam2_checkpoint=str(ckpt), image_size=256, device="cpu", box_threshold=0.6)
    host, port = cvat_server.url.rsplit(":", 1)
    args = [str(cli), "--server-host", host, "--server-port", port, "task", "auto-annotate", str(task.id),
            "--function-module", "dl_utils.auto_annotation"]
    for k, v in params.items():
        args += ["-p", f"{k}={'int' if isinstance(v, int) else 'float' if isinstance(v, float) else 'str'}:{v}"]
    env = dict(os.environ, CVAT_ACCESS_TOKEN=cvat_server.token)
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert cvat_server.token not in r.stdout + r.stderr
    fn = create(**params)
    labels = {lb["id"]: lb["name"] for lb in conn.get_paginated("/api/labels", {"task_id": task.id}, what="l")}
    data = conn.request("GET", f"/api/tasks/{task.id}/annotations", what="read")
    total = 0
    for i, p in enumerate(files):
        want = sorted((fn.labels[s.label_id], tuple(s.points)) for s in fn.detect(None, Image.open(p)))
        got = sorted((labels[s["label_id"]], tuple(s["points"])) for s in data["shapes"] if s["frame"] == i)
        assert got == want, i
        total += len(got)
        for _, pts in got:
            assert decode_cvat_rle(list(pts), 240, 320).any()
    assert total > 0  # the random detector's threshold leaves some boxes
    conn.close()


# ======================================================================================= issue 13
def _raw_get(url: str, accept: str | None, token: str | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url)
    if accept is not None:
        req.add_header("Accept", accept)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_accept_header_negotiated_like_cvat(cvat_server):
    """CVAT renders application/vnd.cvat+json (and HTML) only: application/json is a 406, before auth."""
    url = cvat_server.url
    assert _raw_get(url + "/api/users/self", "application/json") == (
        406, {"detail": "Could not satisfy the request Accept header."})
    assert _raw_get(url + "/api/server/about", "application/json")[0] == 406
    assert _raw_get(url + "/api/server/about", "application/vnd.cvat+json; version=1.0") == (
        406, {"detail": 'Invalid version in "Accept" header.'})
    for ok in ("application/vnd.cvat+json", "application/vnd.cvat+json; version=2.0", "*/*", None,
               "application/json, application/*;q=0.5"):
        assert _raw_get(url + "/api/server/about", ok)[0] == 200, ok
    assert _raw_get(url + "/api/users/self", "application/vnd.cvat+json", cvat_server.token)[0] == 200
    # our client (raw JSON requests and the SDK calls) gets through, end to end
    assert cconn.ACCEPT == "application/vnd.cvat+json"
    conn = conn_for(cvat_server)
    assert conn.request("GET", "/api/users/self", what="t")["username"] == "admin"
    conn.close()


def test_token_with_crlf_from_env_works(cvat_server, monkeypatch, tmp_path):
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", cvat_server.token + "\r\n")
    monkeypatch.delenv("CVAT_USERNAME", raising=False)
    c = resolve_credentials(cvat_server.url, prompt=False)
    assert c.token == cvat_server.token
    conn = connect(cvat_server.url, prompt=False, retry=RetryPolicy(retries=0))
    assert conn.request("GET", "/api/users/self", what="t")["username"] == "admin"
    conn.close()
    # prompts and password variables are stripped too
    c = resolve_credentials("h.io", env={}, prompt=True, getpass_fn=lambda m: "  tok-typed-12345\n")
    assert c.token == "tok-typed-12345"
    c = resolve_credentials("h.io", env={"CVAT_USERNAME": "ann\r", "CVAT_PASSWORD": "pw-crlf-999\r\n"},
                            prompt=False)
    assert (c.user, c.password) == ("ann", "pw-crlf-999")
    # token and password files (docker secrets), written on Windows
    tf = tmp_path / "token.txt"
    tf.write_bytes(cvat_server.token.encode() + b"\r\n")
    monkeypatch.delenv("CVAT_ACCESS_TOKEN")
    monkeypatch.setenv("CVAT_ACCESS_TOKEN_FILE", str(tf))
    conn = connect(cvat_server.url, prompt=False, retry=RetryPolicy(retries=0))
    assert conn.request("GET", "/api/users/self", what="t")["username"] == "admin"
    conn.close()
    pf = tmp_path / "pw.txt"
    pf.write_text("admin-pass\n")
    c = resolve_credentials("h.io", env={"CVAT_USERNAME": "admin", "CVAT_PASSWORD_FILE": str(pf)}, prompt=False)
    assert c.password == "admin-pass"
    with pytest.raises(CvatError, match="CVAT_ACCESS_TOKEN_FILE=.*cannot be read"):
        resolve_credentials("h.io", env={"CVAT_ACCESS_TOKEN_FILE": str(tmp_path / "nope")}, prompt=False)


def test_token_with_inner_bad_character_is_a_typed_error_without_the_token(cvat_server, monkeypatch,
                                                                            tmp_path, rng):
    import argparse

    from dl_utils.drivers.cvat import add_cvat_arguments

    bad = "tok-Inner-" + "\x0b" + "Secret-987654321"
    monkeypatch.setenv("CVAT_HOST", cvat_server.url)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", bad)
    with pytest.raises(CvatError) as ei:
        connect(prompt=False, retry=RetryPolicy(retries=0))
    msg = str(ei.value)
    assert "CVAT_ACCESS_TOKEN" in msg and "position 11" in msg
    for piece in (bad, "tok-Inner-", "Secret-987654321", repr(bad)):
        assert piece not in msg
    st, _ = make_store(tmp_path / "s.sqlite", rng)
    st.close()
    p = argparse.ArgumentParser()
    add_cvat_arguments(p.add_subparsers(dest="command"))
    a = p.parse_args(["cvat", "push", str(tmp_path / "s.sqlite"), "--task", "1", "--no-prompt"])
    with pytest.raises(CvatError) as ei:
        a.func(a)
    assert bad not in str(ei.value) and "Secret-987654321" not in str(ei.value)
    # whatever an exception of the CVAT path says reaches the user scrubbed
    try:
        raise ValueError(f"Invalid header value b'Bearer {bad}\\r'")
    except ValueError as e:
        cconn._remember_secret(bad)
        assert bad not in str(cconn.scrub_exception(e)) and "Inner" not in str(e)


@pytest.mark.parametrize("host", ["not a url", "http://", "https://exa mple.com", "ftp://cvat.io",
                                  "http://cvat.io:99999", "cvat.example.com:abc", "mailto:x@y",
                                  "http://-bad-.com", "https://cvat.io/?q=1"])
def test_malformed_host_fails_at_once(host, cvat_server, monkeypatch):
    import time

    sent = []
    import urllib3

    real = urllib3.PoolManager.request

    def counting(self, *a, **kw):
        sent.append(a)
        return real(self, *a, **kw)

    monkeypatch.setattr(urllib3.PoolManager, "request", counting)
    waits = Sleeps()
    t0 = time.perf_counter()
    with pytest.raises(InputError) as ei:
        connect(host, token=cvat_server.token, prompt=False, sleep=waits)
    assert time.perf_counter() - t0 < 1.0 and waits == [] and sent == []
    msg = str(ei.value)
    assert repr(host) in msg and "https://cvat.example.com" in msg


def test_good_hosts_still_normalise():
    assert normalize_host("localhost:8080") == "http://localhost:8080"
    assert normalize_host(" https://cvat.example.com/ ") == "https://cvat.example.com"
    assert normalize_host("http://[::1]:8080") == "http://[::1]:8080"
    assert normalize_host("cvat_server:8080") == "http://cvat_server:8080"
    assert normalize_host("https://cvat.example.com/sub/") == "https://cvat.example.com/sub"


def test_held_count_stays_on_later_pushes(job, cvat_server):
    st, exp, conn, task = job
    push(st, conn, task.id)
    state = push_state(st, conn.host, task.id).units
    j0 = task.jobs[0].id
    by_id = {s["id"]: s for s in conn.request("GET", f"/api/jobs/{j0}/annotations", what="r")["shapes"]}
    edited = dict(by_id[state[f"m:{FRAMES[0]}:1"].server_id], source="manual")
    m = exp[(FRAMES[0], 1)].copy()
    m[:, :12] = False
    edited["points"] = encode_cvat_rle(m)
    conn.request("PATCH", f"/api/jobs/{j0}/annotations", query={"action": "update"},
                 body={"version": 0, "tags": [], "tracks": [], "shapes": [edited]}, what="edit")
    conn.request("PATCH", f"/api/jobs/{j0}/annotations", query={"action": "delete"},
                 body={"version": 0, "tags": [], "tracks": [],
                       "shapes": [by_id[state[f"m:{FRAMES[1]}:3"].server_id]]}, what="delete")
    want = sorted([f"m:{FRAMES[0]}:1", f"m:{FRAMES[1]}:3"])
    assert push(st, conn, task.id).held == want
    rep = push(st, conn, task.id)
    assert rep.held == want and rep.summary()["held"] == 2 and "2 held" in str(rep)
    assert push(st, conn, task.id, verify=False).held == want
    pull(st, conn, task.id)  # handed over: no longer ours, so no longer held
    assert push(st, conn, task.id).held == []


def test_default_job_overlap_like_cvat(cvat_server, tmp_path, rng):
    """Video tasks get CVAT's default overlap (5, at most segment_size // 2); image tasks none."""
    conn = conn_for(cvat_server)
    video = write_clip(tmp_path / "v.mp4", 40)
    st, _ = make_store(tmp_path / "v.sqlite", rng, frames=list(range(40)), n_obj=1)
    st.set_media(MediaInfo(**{**st.media.to_dict(), "path": video}))
    t = create_task_for_store(conn, st, segment_size=15, poll_interval=0.01)
    assert [(j.start, j.stop) for j in t.jobs] == [(0, 14), (10, 24), (20, 34), (30, 39)]
    assert conn.request("GET", f"/api/tasks/{t.id}", what="t")["overlap"] == 5
    t2 = create_task_for_store(conn, st, segment_size=6, poll_interval=0.01)
    assert [(j.start, j.stop) for j in t2.jobs][:2] == [(0, 5), (3, 8)]  # overlap 6 // 2 = 3
    t3 = create_task_for_store(conn, st, segment_size=15, overlap=0, poll_interval=0.01)
    assert [(j.start, j.stop) for j in t3.jobs] == [(0, 14), (15, 29), (30, 39)]
    t4 = create_task_for_store(conn, st, poll_interval=0.01)
    assert [(j.start, j.stop) for j in t4.jobs] == [(0, 39)]
    conn.close()
    st.close()


@pytest.mark.parametrize("shape", ["box", "polygon"])
def test_track_across_overlapping_jobs_is_one_track_in_cvat(cvat_server, tmp_path, rng, shape):
    """Every job holding a frame gets its shapes, so CVAT's task-level merge joins the tracks."""
    conn = conn_for(cvat_server)
    video = write_clip(tmp_path / "v.mp4", 24)
    st, exp = make_store(tmp_path / "v.sqlite", rng, frames=list(range(24)), n_obj=3, gap=())
    st.set_media(MediaInfo(**{**st.media.to_dict(), "path": video}))
    task = create_task_for_store(conn, st, segment_size=10, poll_interval=0.01)
    assert [(j.start, j.stop) for j in task.jobs] == [(0, 9), (5, 14), (10, 19), (15, 23)]
    push(st, conn, task.id, shape=shape)
    merged = conn.request("GET", f"/api/tasks/{task.id}/annotations", what="task view")
    groups = sorted(t["group"] for t in merged["tracks"])
    rings = sorted(int(o) for o, _ring in {tuple(k.split(":")[1:3]) for k in
                                            push_state(st, conn.host, task.id).units if k.startswith("t")})
    assert groups == rings and (shape == "polygon" or groups == [1, 2, 3]), groups  # no fragments
    shown = {o: {f for f in range(24) if not st.read_frame(f).by_object()[o].is_empty} for o in (1, 2, 3)}
    for t in merged["tracks"]:
        vis = sorted(s["frame"] for s in t["shapes"] if not s["outside"])
        assert shape == "polygon" or vis == sorted(shown[t["group"]])
    # each job's annotator sees the object on every frame of the job where it is
    for j in task.jobs:
        data = conn.request("GET", f"/api/jobs/{j.id}/annotations", what="job")
        for t in data["tracks"] if shape == "box" else []:
            assert {s["frame"] for s in t["shapes"] if not s["outside"]} == \
                {f for f in shown[t["group"]] if j.start <= f <= j.stop}
    # a pull into a new store gives one object per track, every frame once
    with AnnotationStore.create(tmp_path / "back.sqlite") as back:
        rep = pull(back, conn, task.id, include_own=True)
        assert sorted(o.id for o in back.objects()) == [1, 2, 3] and rep.objects_created == [1, 2, 3]
        for f in range(24):
            got = {o: i for o, i in back.read_frame(f).by_object().items() if not i.is_empty}
            assert sorted(got) == [o for o in (1, 2, 3) if f in shown[o]]
            for o in got:
                ref = st.read_frame(f).by_object()[o]
                if shape == "box":
                    from dl_utils.cv_utils import mask_to_box

                    assert np.allclose(got[o].box, mask_to_box(ref.mask), atol=1e-3)
                else:
                    assert len(got[o].polygon) == len(to_rings(ref))
    conn.close()
    st.close()


def to_rings(inst):
    from dl_utils.formats._common import to_geometry

    return to_geometry(inst, H, W, ShapeType.POLYGON).rings


def test_masks_in_job_overlaps_go_to_every_job_and_pull_once(cvat_server, tmp_path, rng):
    conn = conn_for(cvat_server)
    video = write_clip(tmp_path / "v.mp4", 24)
    st, exp = make_store(tmp_path / "v.sqlite", rng, frames=list(range(24)), n_obj=2)
    st.set_media(MediaInfo(**{**st.media.to_dict(), "path": video}))
    task = create_task_for_store(conn, st, segment_size=10, poll_interval=0.01)
    rep = push(st, conn, task.id)
    per_frame: dict[tuple[int, int], int] = {}
    for j in task.jobs:
        for s in conn.request("GET", f"/api/jobs/{j.id}/annotations", what="job")["shapes"]:
            assert j.start <= s["frame"] <= j.stop
            per_frame[(s["frame"], s["group"])] = per_frame.get((s["frame"], s["group"]), 0) + 1
    jobs_at = task.jobs_of()
    for (f, g), n in per_frame.items():
        assert n == len(jobs_at[f])  # in every job holding the frame
    assert rep.created == sum(per_frame.values())
    assert push(st, conn, task.id).created == 0  # idempotent with the copies
    with AnnotationStore.create(tmp_path / "back.sqlite") as back:
        prep = pull(back, conn, task.id, include_own=True)
        assert prep.shapes == len(per_frame)  # copies read once
        for (f, o), m in exp.items():
            insts = [i for i in back.read_frame(f) if i.object_id == o]
            assert len(insts) == 1 and np.array_equal(insts[0].mask, m)
    # a person edits the copy of a mask in the second job only: the pull takes the edit, not a union
    f = task.jobs[1].start
    j1 = task.jobs[1].id
    shapes = conn.request("GET", f"/api/jobs/{j1}/annotations", what="job")["shapes"]
    mine = [s for s in shapes if s["frame"] == f and s["group"] == 1][0]
    m = exp[(f, 1)].copy()
    m[:, : W // 2] = False
    conn.request("PATCH", f"/api/jobs/{j1}/annotations", query={"action": "update"},
                 body={"version": 0, "tags": [], "tracks": [],
                       "shapes": [dict(mine, points=encode_cvat_rle(m), source="manual")]}, what="edit")
    prep = pull(st, conn, task.id)
    assert prep.edited == 1 and prep.deleted == 0
    assert np.array_equal(st.read_frame(f).by_object()[1].mask, m)
    conn.close()
    st.close()


MIXED = [(64, 48), (80, 40), (50, 70), (64, 48), (33, 61)]


def mixed_folder(tmp_path, sizes=MIXED):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for i, (w, h) in enumerate(sizes):
        arr = (np.random.default_rng(i).random((h, w, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"img_{i:02d}.png")
    return d


def mixed_store(path, folder, rng):
    from dl_utils.video_utils import open_frames

    src = open_frames(folder)
    media = src.media_info()
    src.close()
    assert media.mixed_sizes
    st = AnnotationStore.create(path, media)
    st.set_labels([Label("car", "#ff0000"), Label("person", "#00ff00")])
    st.add_object("car", id=1)
    st.add_object("person", id=2)
    exp = {}
    for f in media.frames:
        w, h = media.size_of(f)
        insts = []
        for o in (1, 2):
            m = np.zeros((h, w), bool)
            y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            m[y0: y0 + h // 3, x0: x0 + w // 3] = True
            m[y0 + 2: y0 + 4, x0 + 2: x0 + 3] = False  # a hole: exact masks must keep it
            insts.append(Instance(o, mask=m, source=Source.AUTO))
            exp[(f, o)] = m
        st.write_frame(f, insts)
    return st, exp


@pytest.mark.parametrize("shape", ["mask", "polygon", "box"])
def test_mixed_size_image_task_end_to_end(cvat_server, tmp_path, rng, shape):
    folder = mixed_folder(tmp_path)
    st, exp = mixed_store(tmp_path / "m.sqlite", folder, rng)
    conn = conn_for(cvat_server)
    task = create_task_for_store(conn, st, poll_interval=0.01)
    assert task.media.sizes() == MIXED  # the server's per-image sizes (data meta frames[i])
    meta = conn.request("GET", f"/api/tasks/{task.id}/data/meta", what="meta")
    assert [(f["width"], f["height"]) for f in meta["frames"]] == MIXED
    rep = push(st, conn, task.id, shape=shape)
    assert rep.created == 2 * len(MIXED)
    with AnnotationStore.create(tmp_path / "back.sqlite") as back:
        pull(back, conn, task.id, include_own=True)
        assert back.media.sizes() == MIXED
        for (f, o), m in exp.items():
            got = back.read_frame(f).by_object()[o]
            assert got.mask.shape == m.shape
            if shape == "mask":
                assert np.array_equal(got.mask, m)
            elif shape == "box":
                from dl_utils.cv_utils import mask_to_box

                assert np.allclose(got.box, mask_to_box(m), atol=1e-3)
            else:
                ref = st.read_frame(f).by_object()[o]
                from dl_utils.formats._common import to_geometry

                w, h = st.media.size_of(f)
                rings = to_geometry(ref, h, w, ShapeType.POLYGON).rings
                assert [np.round(r, 3).tolist() for r in got.polygon] == \
                    [np.round(r, 3).tolist() for r in rings]
    assert push(st, conn, task.id, shape=shape).created == 0
    conn.close()
    st.close()


def test_create_task_checks_sizes_before_creating_and_cleans_up(cvat_server, tmp_path, rng, monkeypatch):
    from dl_utils.cvat import tasks as ctasks

    folder = mixed_folder(tmp_path)
    st, _ = mixed_store(tmp_path / "m.sqlite", folder, rng)
    conn = conn_for(cvat_server)
    # an image changed after the store was made: refused before anything exists on the server
    from PIL import Image

    Image.new("RGB", (99, 77)).save(folder / "img_02.png")
    with pytest.raises(InputError, match=r"img_02.png \(frame 2\) is 99x77 but the store has 50x70"):
        create_task_for_store(conn, st, poll_interval=0.01)
    assert cvat_server.state.tasks == {}
    assert not any(e.method == "POST" for e in cvat_server.log)
    # the server reads the data differently after all: the task made by this call is deleted again
    monkeypatch.setattr(ctasks, "_check_local_sizes", lambda media, files: None)
    with pytest.raises(CvatError) as ei:
        create_task_for_store(conn, st, poll_interval=0.01)
    msg = str(ei.value)
    assert "first task frame 2 (img_02.png): 50x70 in media" in msg and "99x77 in task" in msg
    assert "deleted again" in msg and "create-task" not in msg
    assert cvat_server.state.tasks == {}
    conn.close()
    st.close()


@pytest.mark.parametrize("problem", ["task", "token", "host", "frames", "label"])
def test_annotate_checks_cvat_before_any_model_loads(problem, cvat_server, tmp_path, rng, monkeypatch):
    import dl_utils.dinoal.detector as det_mod
    import dl_utils.sam2al as sam2al_mod
    from dl_utils.annotate import run_annotate

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the CVAT checks")

    monkeypatch.setattr(sam2al_mod, "VideoSession", no_model)
    monkeypatch.setattr(det_mod, "load_detector", no_model)
    video = write_clip(tmp_path / "clip.mp4", 12)
    conn = conn_for(cvat_server)
    from dl_utils.video_utils import open_frames

    src = open_frames(video)
    media = src.media_info()
    src.close()
    if problem == "frames":
        media = MediaInfo(**{**media.to_dict(), "frames": media.frames[:6], "stop": 5})
    with AnnotationStore.create(tmp_path / "for_task.sqlite", media) as s:
        s.set_labels([Label("car", "#ff0000")])
        s.add_object("car", id=1)
        s.set_media(MediaInfo(**{**s.media.to_dict(), "path": video}))
        task = create_task_for_store(conn, s, poll_interval=0.01)
    if problem == "label":
        lb = [x for x in conn.get_paginated("/api/labels", {"task_id": task.id}, what="l")][0]
        conn.request("PATCH", f"/api/labels/{lb['id']}", body={"type": "rectangle"}, what="l")
    conn.close()
    monkeypatch.setenv("CVAT_HOST", "not a url" if problem == "host" else cvat_server.url)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", cvat_server.token + ("-wrong" if problem == "token" else ""))
    task_id = task.id + 1000 if problem == "task" else task.id
    want = {"task": (CvatError, "404"), "token": (CvatError, "401"), "host": (InputError, "not a url"),
            "frames": (CvatError, "12 frames in .* but 6 in task"), "label": (CvatError, "'car' \\(type rectangle\\)")}
    err, pattern = want[problem]
    with pytest.raises(err, match=pattern):
        run_annotate(video, tmp_path / "out.sqlite", text="car", cvat_task=task_id, progress=False)
    assert not (tmp_path / "out.sqlite").exists()  # nothing made: not even the store


def test_old_uniform_store_against_mixed_task_gets_useful_advice(tmp_path):
    mixed = MediaInfo(name="imgs", width=64, height=48, frames=list(range(5)), start=0, stop=4, step=1,
                      frame_names=[f"img_{i:02d}.png" for i in range(5)], frame_sizes=MIXED)
    old = MediaInfo(name="imgs", width=64, height=48, frames=list(range(5)), start=0, stop=4, step=1,
                    frame_names=[f"img_{i:02d}.png" for i in range(5)])
    with pytest.raises(CvatError) as ei:
        check_task_media(old, TaskInfo(9, "imgs", mixed, [JobInfo(1, 0, 4)]), "old.sqlite")
    msg = str(ei.value)
    assert "first task frame 1 (img_01.png): 64x48 in old.sqlite but 80x40 in task 9" in msg
    assert "keeps one size" in msg and "create-task" not in msg and "cvat pull NEW.sqlite --task 9" in msg


def test_label_names_cvat_cannot_store_are_refused_first(cvat_server, tmp_path, rng):
    import urllib3

    long = "a" * 65

    r = urllib3.request("POST", cvat_server.url + "/api/tasks", retries=False,
                        body=json.dumps({"name": "t", "labels": [{"name": long}]}).encode(),
                        headers={"Authorization": f"Bearer {cvat_server.token}",
                                 "Content-Type": "application/json"})
    assert r.status == 400 and "64 characters" in r.data.decode()
    conn = conn_for(cvat_server)
    s, _ = make_store(tmp_path / "s.sqlite", rng, n_obj=1)
    s.set_labels([Label(long, "#ff0000")])
    s.add_object(long, id=9)
    mark = n_requests(cvat_server)
    with pytest.raises(InputError, match="65 characters; CVAT keeps at most 64"):
        create_task_for_store(conn, s, files=[__file__], poll_interval=0.01)
    with pytest.raises(InputError, match="at most 64"):
        sync_labels(conn, s, project_id=1)
    assert n_requests(cvat_server) == mark
    conn.close()
    s.close()


def test_unknown_host_name_fails_at_once():
    waits = Sleeps()
    with pytest.raises(CvatError, match="cannot be resolved; check --host"):
        connect("https://cvat.no-such-host.invalid", token="tok-some-123456", prompt=False, sleep=waits)
    assert waits == []  # not retried


def test_dry_runs_read_a_store_on_a_read_only_disk(tmp_path, rng, cvat_server, monkeypatch):
    """Issue 13: a valid store on a read-only file system was called damaged by push/pull. Every
    command that only reads the store (labels --store, each --dry-run) now opens it read-only."""
    from tests.test_io_safety import UNSHARE, in_namespace, parse_sections

    if UNSHARE is None:
        pytest.skip("cannot mount a tmpfs in a private namespace here")
    monkeypatch.setenv("CVAT_HOST", cvat_server.url)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", token_of(cvat_server))
    video = write_clip(tmp_path / "clip.mp4", 27)
    st, _ = make_store(tmp_path / "job.sqlite", rng)
    st.set_media(MediaInfo(**{**st.media.to_dict(), "path": video}))
    c = conn_for(cvat_server)
    task = create_task_for_store(c, st)
    push(st, c, task.id)
    c.close()
    st.close()
    cmd = "$PY -m dl_utils cvat"
    proc = in_namespace(
        "set -e; mkdir -p $T/m; mount -t tmpfs tmpfs $T/m; cp $T/job.sqlite $T/m/\n"
        "mount -o remount,ro $T/m\n"
        f'echo "== labels"; {cmd} labels --task {task.id} --store $T/m/job.sqlite --dry-run 2>&1 || true\n'
        f'echo "== create"; {cmd} create-task $T/m/job.sqlite --dry-run 2>&1 || true\n'
        f'echo "== push"; {cmd} push $T/m/job.sqlite --task {task.id} --dry-run 2>&1 || true\n'
        f'echo "== pull"; {cmd} pull $T/m/job.sqlite --task {task.id} --dry-run 2>&1 || true\n'
        f'echo "== write"; {cmd} push $T/m/job.sqlite --task {task.id} 2>&1 || true\n', tmp_path)
    sec = parse_sections(proc.stdout)
    assert set(sec) == {"labels", "create", "push", "pull", "write"}, proc.stdout + proc.stderr
    for name in ("labels", "create", "push", "pull"):
        assert "error" not in sec[name], (name, sec[name])
    assert "would create task" in sec["create"] and "would send" in sec["push"]
    assert "read-only" in sec["write"] and "copy it to a writable place" in sec["write"]
    assert "backup" not in proc.stdout
