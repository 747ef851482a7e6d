"""``dl-utils batch`` with the local executor: planning, the one-source worker, the process pool.

Tiny random-weight SAM2 from a checkpoint file (as a user passes ``--sam-checkpoint``), synthetic
clips made here, clicks only (no detector). Each store must equal what ``dl-utils annotate`` writes
for the clip alone with the same torch thread count (bit-exact masks); a re-run is a no-op; a broken
source is reported with its one-line error while the others finish, after its retries.
"""

from __future__ import annotations

import dataclasses

import json
from pathlib import Path

import numpy as np
import pytest

from dl_utils.batch.plan import BatchSource, plan_from_inputs, plan_from_manifest
from dl_utils.errors import InputError
from tests.conftest import synthetic_frame
from tests.cvat_standin.fixtures import cvat_server  # noqa: F401  (fixture)
from tests.sam2_fixtures import requires_sam2, tiny_sam2_video  # noqa: F401  (fixture)

CLICK = [{"frame": 1, "object": 1, "label": "square", "points": [[20, 20, 1], [100, 80, 0]]}]
THREADS = 1


# ----------------------------------------------------------------------------- planning (no models)
def _tree(root: Path) -> Path:
    for rel in ("a/clip.mp4", "b/clip.mp4", "b/clip.avi", "c/deep/x.mkv"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    (root / "imgs").mkdir()
    (root / "imgs" / "0001.jpg").write_bytes(b"")
    return root


def test_plan_names_are_relative_and_never_collide(tmp_path):
    root = _tree(tmp_path / "in")
    plan = plan_from_inputs([str(root)], text="car")
    names = {s.name: s.store_name for s in plan}
    assert names == {"a/clip.mp4": "a/clip.mp4.sqlite", "b/clip.avi": "b/clip.avi.sqlite",
                     "b/clip.mp4": "b/clip.mp4.sqlite", "c/deep/x.mkv": "c/deep/x.mkv.sqlite",
                     "imgs": "imgs.sqlite"}
    assert all(s.text == "car" and s.points is None for s in plan)
    glob = plan_from_inputs([str(root / "*" / "clip.mp4")])
    assert [s.name for s in glob] == ["a/clip.mp4", "b/clip.mp4"]
    assert [s.name for s in plan_from_inputs([str(root / "imgs")])] == ["imgs"]  # an image folder: one source
    with pytest.raises(InputError, match="no such file"):
        plan_from_inputs([str(root / "missing.mp4")])


def test_points_dir_matches_the_same_relative_names(tmp_path):
    root = _tree(tmp_path / "in")
    pts = tmp_path / "pts"
    (pts / "a").mkdir(parents=True)
    (pts / "b").mkdir()
    (pts / "a" / "clip.json").write_text("[]")  # a/clip.mp4 -> a/clip.json (suffix dropped)
    (pts / "b" / "clip.mp4.json").write_text("[]")  # b/clip.mp4 -> the full name wins
    plan = {s.name: s.points for s in plan_from_inputs([str(root)], points_dir=pts)}
    assert plan["a/clip.mp4"] == pts / "a" / "clip.json"
    assert plan["b/clip.mp4"] == pts / "b" / "clip.mp4.json"
    assert plan["c/deep/x.mkv"] is None


def test_manifest_csv_jsonl_and_its_errors(tmp_path):
    root = _tree(tmp_path)
    (tmp_path / "p.json").write_text("[]")
    csv = tmp_path / "m.csv"
    csv.write_text("source,text,points,out,cvat_task\na/clip.mp4,car,p.json,,12\nb/clip.mp4,person,,bb.sqlite,\n")
    rows = plan_from_manifest(csv)
    assert rows[0] == BatchSource(source=root / "a/clip.mp4", name="a/clip.mp4", store_name="a/clip.mp4.sqlite",
                                  text="car", points=tmp_path / "p.json", cvat_task=12)
    assert rows[1].store_name == "bb.sqlite" and rows[1].text == "person" and rows[1].points is None
    jl = tmp_path / "m.jsonl"
    jl.write_text(json.dumps({"source": "imgs", "text": "box"}) + "\n")
    assert plan_from_manifest(jl)[0].store_name == "imgs.sqlite"
    bad = {"unknown column colour": "source,colour\na/clip.mp4,red\n",
           r"row 2: source .*nope.mp4: no such file": "source\na/clip.mp4\nnope.mp4\n",
           r"row 2: .*both write the store x.sqlite": "source,out\na/clip.mp4,x.sqlite\nb/clip.mp4,x.sqlite\n",
           r"row 1: points .*: no such file": "source,points\na/clip.mp4,none.json\n",
           r"row 1: cvat_task 'x'": "source,cvat_task\na/clip.mp4,x\n"}
    for i, (msg, text) in enumerate(bad.items()):
        m = tmp_path / f"bad{i}.csv"
        m.write_text(text)
        with pytest.raises(InputError, match=msg):
            plan_from_manifest(m)


def test_summary_table():
    from dl_utils.batch.run import format_summary
    from dl_utils.batch.worker import SourceResult

    t = format_summary([SourceResult("a.mp4", "a.sqlite", "done", 2, 8, 1.25),
                        SourceResult("b.mp4", "b.sqlite", "failed", error="MediaError: cannot open b.mp4", attempt=3)])
    assert "a.mp4" in t and "MediaError: cannot open b.mp4" in t and t.splitlines()[-1] == "1 done, 1 failed"


# ----------------------------------------------------------------------------- running (tiny SAM2)
def _clip(path: Path, n: int, shift: int = 0) -> Path:
    from dl_utils.video_utils import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(write_video(path, (synthetic_frame(i + shift) for i in range(n)), fps=30, preset="ultrafast"))


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_sam2_video):  # noqa: F811
    """Three 4-frame clips (two named clip.mp4 in different folders), a clicks file for each through
    --points-dir, and the tiny checkpoint."""
    import torch

    root = tmp_path_factory.mktemp("batch")
    ckpt = root / "sam.pt"
    torch.save({"model": tiny_sam2_video.state_dict()}, ckpt)
    clips = [_clip(root / "in" / rel, 4, shift=i) for i, rel in enumerate(("a/clip.mp4", "b/clip.mp4", "c.mp4"))]
    for c in clips:
        p = root / "pts" / c.relative_to(root / "in").with_suffix(".json")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(CLICK))
    return {"root": root, "ckpt": ckpt, "clips": clips}


def _options(data):
    from dl_utils.batch.options import BatchOptions
    from dl_utils.drivers.options import SamOptions

    return BatchOptions(sam=SamOptions(checkpoint=data["ckpt"], image_size=256, device="cpu"))


def _masks(path: Path) -> dict[tuple[int, int], bytes]:
    from dl_utils.store import AnnotationStore

    with AnnotationStore.open(path, readonly=True) as st:
        return {(f, inst.object_id): np.packbits(inst.mask).tobytes() + str(inst.mask.shape).encode()
                for f in st.frames() for inst in st.read_frame(f)}


@requires_sam2
def test_local_pool_equals_annotate_rerun_is_a_no_op_and_failures_are_reported(data, tmp_path):
    import torch

    from dl_utils.batch.executors import LocalExecutor
    from dl_utils.batch.run import SUMMARY, run_batch
    from dl_utils.drivers.annotate import annotate
    from dl_utils.drivers.options import SamOptions

    broken = data["root"] / "in" / "d" / "broken.mp4"
    broken.parent.mkdir(exist_ok=True)
    broken.write_bytes(b"not a video")
    plan = plan_from_inputs([str(data["root"] / "in")], points_dir=data["root"] / "pts")
    assert [s.name for s in plan] == ["a/clip.mp4", "b/clip.mp4", "c.mp4", "d/broken.mp4"]
    out = tmp_path / "out"
    ex = LocalExecutor(workers=2, threads=THREADS)
    res = {r.name: r for r in run_batch(plan, _options(data), out, executor=ex, attempts=2, progress=False)}
    assert {n: r.status for n, r in res.items()} == {"a/clip.mp4": "done", "b/clip.mp4": "done",
                                                     "c.mp4": "done", "d/broken.mp4": "failed"}
    bad = res["d/broken.mp4"]
    assert bad.attempt == 2 and "broken.mp4" in (bad.error or "") and "\n" not in (bad.error or "")
    assert not (out / "d" / "broken.mp4.sqlite").exists()
    assert all(res[n].frames == 4 and res[n].objects == 1 for n in ("a/clip.mp4", "b/clip.mp4", "c.mp4"))
    assert len((out / SUMMARY).read_text().splitlines()) == 4

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:  # the reference: dl-utils annotate on each clip alone
        for s in plan[:3]:
            ref = tmp_path / "ref" / s.store_name
            annotate(s.source, ref, points=s.points, progress=False,
                     sam=SamOptions(checkpoint=data["ckpt"], image_size=256, device="cpu"))
            assert _masks(out / s.store_name) == _masks(ref), s.name
    finally:
        torch.set_num_threads(before)

    again = {r.name: r for r in run_batch(plan[:3], _options(data), out, executor=LocalExecutor(1, THREADS),
                                          attempts=1, progress=False)}
    assert {r.status for r in again.values()} == {"skipped"}
    assert all(r.frames == 4 for r in again.values())


@requires_sam2
def test_run_source_resumes_a_half_done_store_and_publishes_whole(data, tmp_path):
    from dl_utils.batch.worker import run_source, store_done

    src = BatchSource(source=data["clips"][2], name="c.mp4", store_name="c.mp4.sqlite",
                      points=data["root"] / "pts" / "c.json")
    out, work = tmp_path / "out", tmp_path / "work"
    seen: list[int] = []
    r = run_source(src, _options(data), work, out, on_frames=seen.append, threads=THREADS)
    assert r.status == "done" and store_done(out / "c.mp4.sqlite", src) and sum(seen) == 4
    assert sorted(p.name for p in out.iterdir()) == ["c.mp4.sqlite"]  # no -wal, no temp left beside it
    assert not any(work.rglob("*.sqlite*"))
    assert run_source(src, _options(data), work, out).status == "skipped"
    nothing = BatchSource(source=data["clips"][2], name="c.mp4", store_name="n.sqlite")
    failed = run_source(nothing, _options(data), work, out)
    assert failed.status == "failed" and failed.error and failed.error.startswith("InputError: nothing to annotate")


# ----------------------------------------------------------------------------- the command
def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    from dl_utils.cli import main

    root = _tree(tmp_path / "in")
    m = tmp_path / "m.csv"
    m.write_text("source,colour\nin/a/clip.mp4,red\n")
    cases = [(["batch", str(root), "--out", str(tmp_path / "o")], "nothing to annotate"),
             (["batch", "--out", str(tmp_path / "o"), "--text", "car"], "nothing to annotate"),
             (["batch", "--manifest", str(m), "--out", str(tmp_path / "o")], "row 1: unknown column colour"),
             (["batch", str(root), "--text", "car", "--out", str(tmp_path / "o"), "--workers", "0"], "--workers 0")]
    for argv, msg in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()  # nothing written


@requires_sam2
def test_cli_runs_the_batch_and_prints_the_table(data, tmp_path, capsys):
    from dl_utils.cli import main

    out = tmp_path / "out"
    argv = ["batch", str(data["clips"][2]), "--points-dir", str(data["root"] / "pts"), "--out", str(out),
            "--sam-checkpoint", str(data["ckpt"]), "--image-size", "256", "--device", "cpu", "--threads", "1",
            "--verbose"]
    assert main(argv) == 0  # c.mp4 -> pts/c.json
    cap = capsys.readouterr()
    assert "c.mp4" in cap.out and "1 done" in cap.out
    assert "c.mp4 done (try 1, 4 frames" in cap.err
    line = json.loads((out / "summary.jsonl").read_text())
    assert line["status"] == "done" and line["frames"] == 4 and (out / "c.mp4.sqlite").is_file()


@requires_sam2
def test_cvat_project_one_task_per_source_and_a_rerun_pushes_nothing(data, tmp_path, cvat_server):  # noqa: F811
    from dl_utils.batch.executors import LocalExecutor
    from dl_utils.batch.run import run_batch
    from dl_utils.cvat import connect
    from dl_utils.drivers.batch import CvatProject

    conn = connect(cvat_server.url, token=cvat_server.token, prompt=False)
    proj = conn.request("POST", "/api/projects", body={"name": "p", "labels": [
        {"name": "square", "color": "#ff0000", "type": "any", "attributes": []}]}, what="project")
    plan = plan_from_inputs([str(data["clips"][0]), str(data["clips"][2])], points_dir=data["root"] / "pts")
    out = tmp_path / "out"
    step = CvatProject(proj["id"], connection=conn)
    first = run_batch(plan, _options(data), out, executor=LocalExecutor(1, THREADS), progress=False, finish=step)
    assert {r.status for r in first} == {"done"}, [r.error for r in first]
    tasks = cvat_server.state.tasks
    assert len(tasks) == 2 and {t["project_id"] for t in tasks.values()} == {proj["id"]}
    shapes = [sh for a in cvat_server.state.annotations.values() for sh in a.shapes.values()]
    assert len(shapes) == 8  # 4 frames x 1 object x 2 sources
    mark = len(cvat_server.log)
    again = run_batch(plan, _options(data), out, executor=LocalExecutor(1, THREADS), progress=False, finish=step)
    assert {r.status for r in again} == {"skipped"} and len(cvat_server.state.tasks) == 2
    assert not [e for e in cvat_server.log[mark:] if e.method != "GET"]
    conn.close()


@requires_sam2
def test_a_killed_worker_is_replaced_and_its_source_finishes_in_one_store(data, tmp_path):
    import multiprocessing
    import os
    import signal

    from dl_utils.batch.executors import LocalExecutor
    from dl_utils.batch.run import run_batch

    long = _clip(data["root"] / "long" / "long.mp4", 24, shift=5)
    (data["root"] / "pts" / "long.json").write_text(json.dumps(CLICK))
    plan = plan_from_inputs([str(long)], points_dir=data["root"] / "pts")
    killed: list[int] = []

    class KillOnFirstFrames(LocalExecutor):
        def run(self, sources, options, out_dir, *, attempts, on_result, on_frames):
            def frames(n):
                if not killed:
                    for child in multiprocessing.active_children():
                        killed.append(child.pid)
                        os.kill(child.pid, signal.SIGKILL)
                on_frames(n)

            super().run(sources, options, out_dir, attempts=attempts, on_result=on_result, on_frames=frames)

    out = tmp_path / "out"
    [r] = run_batch(plan, _options(data), out, executor=KillOnFirstFrames(1, THREADS), attempts=3, progress=False)
    assert killed and r.status == "done" and r.attempt == 2 and r.frames == 24, r
    assert sorted(p.name for p in out.iterdir()) == ["long.mp4.sqlite", "summary.jsonl"]


@requires_sam2
def test_ctrl_c_stops_keeps_what_was_done_and_a_rerun_finishes(data, tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while the second source runs: exit
    130, the finished source is in the summary, the running one publishes what it committed, and a
    re-run skips the first and completes the second in its one store."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import shutil

    here = data["root"] / "ctrlc"  # its own folder (others plan all of in/): names c.mp4, long.mp4
    here.mkdir(exist_ok=True)
    short = Path(shutil.copy(data["clips"][2], here / "c.mp4"))
    long = _clip(here / "long.mp4", 40, shift=7)
    (data["root"] / "pts" / "long.json").write_text(json.dumps(CLICK))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "dl_utils", "batch", str(short), str(long), "--points-dir",
            str(data["root"] / "pts"), "--out", str(out), "--sam-checkpoint", str(data["ckpt"]),
            "--image-size", "256", "--device", "cpu", "--threads", "1", "--workers", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    summary = out / "summary.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if summary.is_file() and summary.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    time.sleep(3)  # into the long clip
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    done = [json.loads(line) for line in summary.read_text().splitlines()]
    assert [(d["name"], d["status"]) for d in done] == [("c.mp4", "done")]
    leftovers = sorted(p.name for p in out.iterdir())
    assert leftovers in (["c.mp4.sqlite", "summary.jsonl"], ["c.mp4.sqlite", "long.mp4.sqlite", "summary.jsonl"])
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    last = [json.loads(line) for line in summary.read_text().splitlines()][-2:]
    assert {(d["name"], d["status"]) for d in last} == {("c.mp4", "skipped"), ("long.mp4", "done")}
    assert {(f, o) for f, o in _masks(out / "long.mp4.sqlite")} == {(f, 1) for f in range(1, 40)} | {(0, 1)}


def _put_progress(n: int) -> int:
    from dl_utils.batch.executors import _STATE

    _STATE["queue"].put(n)
    return n


def test_a_progress_queue_left_locked_by_a_killed_worker_does_not_hang_the_pool():
    """A worker SIGKILLed while writing progress leaves the queue's shared write lock held for good;
    the workers that share that queue must still exit (CI once hung 75 minutes on this)."""
    import multiprocessing
    import time

    from dl_utils.batch.executors import _Pool

    ctx = multiprocessing.get_context("spawn")
    seen: list[int] = []
    pool = _Pool(ctx, 1, 1, ctx.Value("i", 0), 0, seen.append)
    assert pool.progress._wlock.acquire(timeout=5)  # as a dead writer would leave it
    assert pool.submit(_put_progress, 7).result(timeout=120) == 7
    t0 = time.monotonic()
    pool.close(grace=30)
    assert time.monotonic() - t0 < 30 and not multiprocessing.active_children()


@requires_sam2
def test_batch_workers_number_frames_as_annotate_does(data, tmp_path):
    """--first-frame on dl-utils batch reaches the workers (BatchOptions.numbering): the store of a
    source holds the same frame numbers and masks as dl-utils annotate with the same flag."""
    import torch

    from dl_utils.batch.executors import LocalExecutor
    from dl_utils.batch.run import run_batch
    from dl_utils.drivers.annotate import annotate
    from dl_utils.drivers.options import SamOptions, SourceOptions
    from dl_utils.store import AnnotationStore

    clip = data["clips"][2]
    pts = tmp_path / "pts" / "c.json"
    pts.parent.mkdir()
    pts.write_text(json.dumps([{**CLICK[0], "frame": 1001 + CLICK[0]["frame"]}]))
    plan = plan_from_inputs([str(clip)], points_dir=tmp_path / "pts")
    numbering = SourceOptions(first_frame=1001)
    opts = dataclasses.replace(_options(data), numbering=numbering)
    [r] = run_batch(plan, opts, tmp_path / "out", executor=LocalExecutor(1, THREADS), attempts=1, progress=False)
    assert r.status == "done" and r.frames == 4, r.error
    with AnnotationStore.open(tmp_path / "out" / plan[0].store_name, readonly=True) as st:
        assert st.media.frames == [1001, 1002, 1003, 1004] and st.media.first_frame == 1001
        assert st.frames() == [1001, 1002, 1003, 1004]
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        ref = tmp_path / "ref.sqlite"
        annotate(plan[0].source, ref, points=plan[0].points, progress=False, numbering=numbering,
                 sam=SamOptions(checkpoint=data["ckpt"], image_size=256, device="cpu"))
    finally:
        torch.set_num_threads(before)
    assert _masks(tmp_path / "out" / plan[0].store_name) == _masks(ref)
