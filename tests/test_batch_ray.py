"""``dl-utils batch --executor ray``: real local Ray, tiny random-weight SAM2, synthetic clips.

Each store must equal what ``dl-utils annotate`` writes for the clip alone with the same torch thread
count (bit-exact masks); a re-run is a no-op; a worker killed with SIGKILL mid-video is replaced and
the source finishes in its one store; a two-node cluster (``ray.cluster_utils.Cluster``) shares the
output folder. Skips with the reason when Ray (or torch/sam2) is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dl_utils.errors import InputError
from tests.conftest import synthetic_frame
from tests.sam2_fixtures import requires_sam2, tiny_sam2_video  # noqa: F401  (fixture)

HAVE_RAY = importlib.util.find_spec("ray") is not None
requires_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed: pip install 'dl-utils[ray]'")
pytestmark = [requires_ray, requires_sam2]

CLICK = [{"frame": 1, "object": 1, "label": "square", "points": [[20, 20, 1], [100, 80, 0]]}]
THREADS = 1


def _clip(path: Path, n: int, shift: int = 0) -> Path:
    from dl_utils.video_utils import write_video

    return Path(write_video(path, (synthetic_frame(i + shift) for i in range(n)), fps=30, preset="ultrafast"))


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_sam2_video):  # noqa: F811
    """Three 4-frame clips and one 24-frame clip, a clicks file each, the tiny checkpoint."""
    import torch

    root = tmp_path_factory.mktemp("ray_batch")
    ckpt = root / "sam.pt"
    torch.save({"model": tiny_sam2_video.state_dict()}, ckpt)
    clips = [_clip(root / "clips" / f"c{i}.mp4", 4, shift=i) for i in range(3)]
    clips.append(_clip(root / "clips" / "long.mp4", 24, shift=7))
    pts = root / "clicks.json"
    pts.write_text(json.dumps(CLICK))
    return {"root": root, "ckpt": ckpt, "clips": clips, "points": pts}


def test_address_that_does_not_answer_is_one_line_error(data, tmp_path):
    import ray

    from dl_utils.batch.ray_executor import RayExecutor

    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process")
    with pytest.raises(InputError, match=r"ray://127\.0\.0\.1:1 does not answer") as e:
        RayExecutor(address="ray://127.0.0.1:1").connect()
    assert "\n" not in str(e.value)


def _sources(data, clips=None):
    from dl_utils.batch.plan import BatchSource

    return [BatchSource(source=c, name=c.name, store_name=c.stem + ".sqlite", points=data["points"])
            for c in (clips or data["clips"])]


def _options(data):
    from dl_utils.batch.options import BatchOptions
    from dl_utils.drivers.options import SamOptions

    return BatchOptions(sam=SamOptions(checkpoint=data["ckpt"], image_size=256, device="cpu"))


@pytest.fixture(scope="module")
def reference(data):
    """What ``dl-utils annotate CLIP --points ... --sam-checkpoint ...`` writes, clip by clip, with
    THREADS torch threads (the same as each Ray worker)."""
    import torch

    from dl_utils.drivers.annotate import annotate
    from dl_utils.drivers.options import SamOptions

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        out = {}
        for c in data["clips"]:
            out[c.name] = data["root"] / "ref" / (c.stem + ".sqlite")
            out[c.name].parent.mkdir(exist_ok=True)
            annotate(c, out[c.name], points=data["points"], progress=False,
                     sam=SamOptions(checkpoint=data["ckpt"], image_size=256, device="cpu"))
    finally:
        torch.set_num_threads(before)
    return out


def _masks(path: Path) -> dict[tuple[int, int], bytes]:
    from dl_utils.store import AnnotationStore

    with AnnotationStore.open(path, readonly=True) as st:
        return {(f, inst.object_id): np.packbits(inst.mask).tobytes() + str(inst.mask.shape).encode()
                for f in st.frames() for inst in st.read_frame(f)}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


class Collect:
    def __init__(self):
        self.results, self.frames = [], 0

    def on_result(self, r):
        self.results.append(r)

    def on_frames(self, n):
        self.frames += n

    def by_name(self):
        return {r.name: r for r in self.results}


def _run(ex, data, out, sources=None, attempts=3) -> Collect:
    c = Collect()
    ex.run(sources or _sources(data), _options(data), out, attempts=attempts, on_result=c.on_result,
           on_frames=c.on_frames)
    return c


def test_ray_stores_equal_annotate_and_rerun_is_a_no_op(local_ray, data, reference, tmp_path):
    from dl_utils.batch.ray_executor import RayExecutor

    out = tmp_path / "out"
    out.mkdir()
    ex = RayExecutor(workers=2, threads=THREADS)
    first = _run(ex, data, out)
    assert sorted(first.by_name()) == sorted(c.name for c in data["clips"])
    assert all(r.status == "done" and r.attempt == 1 for r in first.results), first.results
    assert len({r.worker for r in first.results}) == 2  # both actors worked
    assert first.frames == sum(r.frames for r in first.results) > 0
    for name, ref in reference.items():
        got = _masks(out / (Path(name).stem + ".sqlite"))
        assert got and got == _masks(ref), name
    second = _run(ex, data, out)
    assert [r.status for r in second.results] == ["skipped"] * len(data["clips"])
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(n).stem + ".sqlite" for n in reference)


def test_sigkilled_worker_is_replaced_and_the_source_finishes_once(local_ray, data, reference, tmp_path):
    """SIGKILL the actor running the long clip mid-video: a fresh actor resumes it; one store, one result."""
    from dl_utils.batch.ray_executor import RayExecutor

    out = tmp_path / "out"
    out.mkdir()
    long = [c for c in data["clips"] if c.name == "long.mp4"]
    ex = RayExecutor(workers=1, threads=THREADS)
    c, killed = Collect(), []

    def kill_mid_video():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if ex.actors and c.frames > 0:  # the long clip has started writing frames
                os.kill(local_ray.get(ex.actors[0].pid.remote(), timeout=10), signal.SIGKILL)
                killed.append(True)
            time.sleep(0.05)

    t = threading.Thread(target=kill_mid_video, daemon=True)
    t.start()
    ex.run(_sources(data, long), _options(data), out, attempts=3, on_result=c.on_result, on_frames=c.on_frames)
    t.join(5)
    res = c
    assert killed, "the worker was never killed"
    assert len(res.results) == 1
    r = res.results[0]
    assert r.status == "done" and r.attempt == 2, r
    assert sorted(p.name for p in out.iterdir()) == ["long.sqlite"]
    assert _masks(out / "long.sqlite") == _masks(reference["long.mp4"])


def test_gpu_request_on_a_cpu_cluster_is_one_line_error(local_ray, data, tmp_path):
    from dl_utils.batch.ray_executor import RayExecutor

    ex = RayExecutor(gpus_per_worker=0.5)
    with pytest.raises(InputError, match="has no GPU") as e:
        _run(ex, data, tmp_path)
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_missing_ray_names_the_extra(monkeypatch):
    import builtins

    from dl_utils.batch import ray_executor

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(InputError, match=r"pip install 'dl-utils\[ray\]'"):
        ray_executor.import_ray()


def test_two_node_cluster_shares_the_output_folder(data, reference, tmp_path):
    """``ray.cluster_utils.Cluster``: two nodes, one CPU each; both work, the stores match annotate."""
    import ray
    from ray.cluster_utils import Cluster

    from dl_utils.batch.ray_executor import RayExecutor

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        out = tmp_path / "out"
        out.mkdir()
        ex = RayExecutor(threads=THREADS)
        assert ex.pool_size(ray, 10) == 2
        short = [c for c in data["clips"] if c.name != "long.mp4"]
        res = _run(ex, data, out, sources=_sources(data, short))
        assert all(r.status == "done" for r in res.results) and len(res.results) == len(short)
        assert len({r.worker for r in res.results}) == 2  # one actor per node, both took a source
        for c in short:
            assert _masks(out / (c.stem + ".sqlite")) == _masks(reference[c.name])
    finally:
        ray.shutdown()
        cluster.shutdown()
