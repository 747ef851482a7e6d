"""The fine-tuning feature cache (dl_utils.finetune.features): keys, fp16 memmaps, LRU cap, safety.

Fake ``compute`` functions with counters stand in for the image encoder, so these run in well under
a second each; one test checks the cached features against a real (tiny, random-weight) SAM2.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from dl_utils.errors import InputError, OutputError
from dl_utils.finetune import features as fmod
from dl_utils.finetune.features import FeatureCache, FrameFeatures, predictor_compute
from tests.sam2_fixtures import requires_sam2, test_image, tiny_sam2  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


class Encoder:
    """A stand-in image encoder: features derived from the pixels, calls counted."""

    def __init__(self, c: int = 8, hw: int = 4) -> None:
        self.calls = 0
        self.c, self.hw = c, hw

    def __call__(self, image: np.ndarray) -> FrameFeatures:
        self.calls += 1
        v = float(image.astype(np.float64).mean()) / 255.0
        rng = np.random.default_rng(int(v * 1e6))
        c, s = self.c, self.hw
        return FrameFeatures(
            image_embed=(rng.standard_normal((c, s, s)) + v).astype(np.float32),
            high_res_feats=(rng.standard_normal((c // 4, 4 * s, 4 * s)).astype(np.float32),
                            rng.standard_normal((c // 2, 2 * s, 2 * s)).astype(np.float32)),
            orig_hw=(int(image.shape[0]), int(image.shape[1])),
        )


def frame(n: int, h: int = 24, w: int = 32) -> np.ndarray:
    """Distinct content per ``n`` (a stamp in the first pixels)."""
    img = np.full((h, w, 3), 100, np.uint8)
    img.reshape(-1)[:8] = np.frombuffer(int(n).to_bytes(8, "little"), np.uint8)
    return img


def entry_folders(root: Path) -> list[Path]:
    return [p for p in root.glob("??/*") if p.is_dir()]


def test_hit_and_miss_counting_no_compute_on_hit(tmp_path: Path) -> None:
    enc = Encoder()
    cache = FeatureCache(tmp_path, model_key="tiny@256/abc")
    a = cache.get(frame(1), enc)
    b = cache.get(frame(1), enc)
    assert enc.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    assert cache.entries == 1 and cache.bytes >= a.nbytes > 0
    np.testing.assert_array_equal(a.image_embed, b.image_embed)
    cache.get(frame(2), enc)
    assert enc.calls == 2 and cache.misses == 2 and cache.entries == 2
    assert frame(1) in cache and frame(3) not in cache


def test_lookup_by_key_skips_decoding_and_hashing(tmp_path: Path) -> None:
    enc = Encoder()
    cache = FeatureCache(tmp_path, model_key="m")
    k = cache.key(frame(1))
    assert cache.lookup(k) is None and (cache.hits, cache.misses) == (0, 0)
    first = cache.get(frame(1), enc, key=k)
    got = cache.lookup(k)
    assert got is not None and isinstance(got.image_embed, np.memmap) and cache.hits == 1
    np.testing.assert_array_equal(got.image_embed, first.image_embed)
    cache.get(frame(1), enc, key=k)
    assert enc.calls == 1 and cache.hits == 2


def test_key_depends_on_model_content_shape_and_dtype(tmp_path: Path) -> None:
    c1 = FeatureCache(tmp_path, model_key="tiny/aaa")
    c2 = FeatureCache(tmp_path, model_key="tiny/bbb")
    img = frame(1)
    assert c1.key(img) == c1.key(img.copy())  # same pixels from another store: one entry
    assert c1.key(img) != c2.key(img)
    assert c1.key(img) != c1.key(frame(2))
    assert c1.key(img) != c1.key(img.reshape(32, 24, 3))
    assert c1.key(img) != c1.key(img.view(np.int8))
    assert c1.key(np.asfortranarray(img)) == c1.key(img)  # layout is not content
    enc = Encoder()
    c1.get(img, enc)
    c2.get(img, enc)  # another model never reuses the features
    assert enc.calls == 2 and len(entry_folders(tmp_path)) == 2


def test_fp16_round_trip_memory_mapped(tmp_path: Path) -> None:
    enc = Encoder()
    want = enc(frame(5))
    cache = FeatureCache(tmp_path, model_key="m")
    got = cache.get(frame(5), enc)
    for g, w in zip((got.image_embed, *got.high_res_feats), (want.image_embed, *want.high_res_feats)):
        assert g.dtype == np.float16 and g.shape == w.shape
        assert isinstance(g, np.memmap) and Path(g.filename).is_relative_to(tmp_path)
        assert not g.flags.writeable
        np.testing.assert_allclose(g.astype(np.float32), w, rtol=1e-3, atol=1e-3)
    assert got.orig_hw == (24, 32)
    again = FeatureCache(tmp_path, model_key="m").get(frame(5), enc)  # from disk in a new instance
    assert isinstance(again.image_embed, np.memmap)
    np.testing.assert_array_equal(again.image_embed, got.image_embed)


def test_to_torch_has_the_predictor_layout() -> None:
    torch = pytest.importorskip("torch")
    f = Encoder()(frame(1))
    t = f.to_torch("cpu")
    assert t["image_embed"].shape == (1, 8, 4, 4) and t["image_embed"].dtype == torch.float32
    assert [x.shape for x in t["high_res_feats"]] == [(1, 2, 16, 16), (1, 4, 8, 8)]
    back = FrameFeatures.from_torch(t, f.orig_hw)
    assert back.image_embed.dtype == np.float16 and back.orig_hw == f.orig_hw
    np.testing.assert_allclose(back.image_embed, f.image_embed, atol=1e-2)
    assert f.to_torch("cpu", torch.float16)["image_embed"].dtype == torch.float16
    with pytest.raises(InputError, match="batch axis"):
        FrameFeatures(np.zeros((1, 2, 3, 4)), (), (1, 1))


def test_lru_eviction_under_a_cap_and_a_hit_refreshes(tmp_path: Path) -> None:
    enc = Encoder()
    probe = FeatureCache(tmp_path / "probe", model_key="m")
    probe.get(frame(0), enc)
    size = probe.bytes
    cache = FeatureCache(tmp_path / "c", model_key="m", max_bytes=int(3.5 * size))
    for n in (1, 2, 3):
        cache.get(frame(n), enc)
    cache.get(frame(1), enc)  # 1 is now the most recently used; 2 the least
    cache.get(frame(4), enc)
    assert cache.entries == 3 and cache.bytes <= cache.max_bytes and cache.evicted == 1
    assert frame(2) not in cache and all(frame(n) in cache for n in (1, 3, 4))
    # Recency is on disk: a new instance (a new process) evicts in the same order.
    other = FeatureCache(tmp_path / "c", model_key="m", max_bytes=int(3.5 * size))
    other.get(frame(3), enc)  # hit: 1 is now the least recently used
    other.get(frame(5), enc)
    assert frame(1) not in other and all(frame(n) in other for n in (3, 4, 5))


def test_cap_smaller_than_one_frame_is_an_input_error(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, model_key="m", max_bytes=100)
    with pytest.raises(InputError, match="raise max_bytes"):
        cache.get(frame(1), Encoder())
    with pytest.raises(InputError):
        FeatureCache(tmp_path, model_key="")


def test_failure_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fmod._write_array
    written: list[Path] = []

    def boom(path: Path, array: np.ndarray, durable: bool = False) -> None:
        if written:
            raise KeyboardInterrupt
        written.append(path)
        real(path, array, durable)

    monkeypatch.setattr(fmod, "_write_array", boom)
    cache = FeatureCache(tmp_path, model_key="m")
    with pytest.raises(KeyboardInterrupt):
        cache.get(frame(1), Encoder())
    assert entry_folders(tmp_path) == [] and list((tmp_path / ".tmp").iterdir()) == []
    assert cache.entries == 0


CRASH = """
import os, sys
import numpy as np
from dl_utils.finetune import features as fmod
real = fmod._write_array
def die(path, array, durable=False):
    real(path, array, durable)
    os._exit(3)  # the process dies half-way through the entry: no cleanup runs
fmod._write_array = die
sys.path.insert(0, {tests!r})
from test_finetune_features import Encoder, frame
fmod.FeatureCache({root!r}, model_key="m").get(frame(1), Encoder())
"""


def test_a_crash_mid_write_leaves_no_entry_that_reads_as_valid(tmp_path: Path) -> None:
    code = CRASH.format(tests=str(ROOT / "tests"), root=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert entry_folders(tmp_path) == []  # the half entry is only under .tmp/
    enc = Encoder()
    cache = FeatureCache(tmp_path, model_key="m")
    assert cache.entries == 0 and frame(1) not in cache
    got = cache.get(frame(1), enc)
    assert enc.calls == 1 and cache.misses == 1 and got.image_embed.shape == (8, 4, 4)


def test_disk_full_is_a_typed_error_and_the_partial_entry_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fmod._write_array
    calls = []

    def full(path: Path, array: np.ndarray, durable: bool = False) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, array, durable)

    monkeypatch.setattr(fmod, "_write_array", full)
    cache = FeatureCache(tmp_path / "feats", model_key="m")
    with pytest.raises(OutputError) as info:
        cache.get(frame(1), Encoder())
    msg = str(info.value)
    assert str(tmp_path / "feats") in msg and "no space left" in msg
    assert "--cache-dir" in msg and "cap" in msg and "free space" in msg
    assert entry_folders(tmp_path / "feats") == []
    assert list((tmp_path / "feats" / ".tmp").iterdir()) == []
    monkeypatch.setattr(fmod, "_write_array", real)  # space freed: the next call works
    assert cache.get(frame(1), Encoder()).image_embed.dtype == np.float16


@pytest.mark.parametrize("damage", ["truncate_array", "truncate_header", "bad_meta", "missing_array"])
def test_damaged_entry_is_recomputed(tmp_path: Path, damage: str) -> None:
    enc = Encoder()
    cache = FeatureCache(tmp_path, model_key="m")
    good = np.array(cache.get(frame(1), enc).high_res_feats[0])
    (folder,) = entry_folders(tmp_path)
    target = folder / "high_res_0.npy"
    if damage == "truncate_array":
        os.truncate(target, target.stat().st_size - 100)
    elif damage == "truncate_header":
        os.truncate(target, 10)
    elif damage == "bad_meta":
        (folder / "meta.json").write_text('{"version": 1, "mod')
    else:
        target.unlink()
    got = cache.get(frame(1), enc)
    assert enc.calls == 2 and cache.corrupted == 1 and cache.misses == 2 and cache.hits == 0
    np.testing.assert_array_equal(got.high_res_feats[0], good)
    assert cache.get(frame(1), enc) is not None and cache.hits == 1


def test_two_instances_share_a_root(tmp_path: Path) -> None:
    enc = Encoder()
    a = FeatureCache(tmp_path, model_key="m")
    b = FeatureCache(tmp_path, model_key="m")
    fa = a.get(frame(1), enc)
    fb = b.get(frame(1), enc)  # written by a: a hit for b
    assert enc.calls == 1 and b.hits == 1
    np.testing.assert_array_equal(fa.image_embed, fb.image_embed)
    b.clear()  # a still holds fa: its memmaps stay readable after the files go
    assert float(np.abs(fa.image_embed.astype(np.float32)).sum()) > 0
    assert a.get(frame(1), enc).image_embed.shape == (8, 4, 4) and enc.calls == 2  # recomputed


def test_concurrent_writers_of_the_same_frames(tmp_path: Path) -> None:
    caches = [FeatureCache(tmp_path, model_key="m") for _ in range(2)]
    errors: list[BaseException] = []
    results: dict[tuple[int, int], np.ndarray] = {}

    def work(i: int) -> None:
        try:
            for n in range(6):
                results[(i, n)] = np.array(caches[i % 2].get(frame(n), Encoder()).image_embed)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for n in range(6):
        for i in range(1, 4):
            np.testing.assert_array_equal(results[(i, n)], results[(0, n)])
    assert len(entry_folders(tmp_path)) == 6
    assert [p for p in (tmp_path / ".tmp").iterdir()] == []


def test_durable_writes_read_back_the_same(tmp_path: Path) -> None:
    enc = Encoder()
    fast = FeatureCache(tmp_path / "a", model_key="m").get(frame(1), enc)
    safe = FeatureCache(tmp_path / "b", model_key="m", durable=True).get(frame(1), enc)
    np.testing.assert_array_equal(fast.image_embed, safe.image_embed)


def test_clear_removes_everything(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, model_key="m")
    for n in range(3):
        cache.get(frame(n), Encoder())
    cache.clear()
    assert cache.entries == 0 and cache.bytes == 0 and entry_folders(tmp_path) == []
    assert FeatureCache(tmp_path, model_key="m").entries == 0


def test_the_cache_holds_no_arrays(tmp_path: Path) -> None:
    """Iterating many frames must not keep them in RAM: the object keeps only a small index."""
    cache = FeatureCache(tmp_path, model_key="m")
    for n in range(20):
        cache.get(frame(n), Encoder())
    held = [v for v in vars(cache).values() if isinstance(v, np.ndarray)]
    held += [v for e in cache._index.values() for v in vars(e).values() if isinstance(v, np.ndarray)]
    assert held == [] and cache.entries == 20


@requires_sam2
def test_cached_features_drive_the_predictor_like_set_image(tmp_path: Path, tiny_sam2) -> None:  # noqa: F811
    from tests.sam2_fixtures import raw_image_predictor

    img = test_image(120, 160)
    pred = raw_image_predictor(tiny_sam2)
    cache = FeatureCache(tmp_path, model_key="sam2.1_hiera_tiny@256/random0")
    feats = cache.get(img, predictor_compute(pred))
    assert feats.orig_hw == (120, 160) and len(feats.high_res_feats) == 2
    want = pred._features
    got = feats.to_torch("cpu")
    assert got["image_embed"].shape == want["image_embed"].shape
    pairs = zip([got["image_embed"], *got["high_res_feats"]], [want["image_embed"], *want["high_res_feats"]])
    for g, w in pairs:
        assert g.shape == w.shape
        assert float((g - w).abs().max()) <= 1e-2 * max(1.0, float(w.abs().max()))
    pt, lb = np.array([[80.0, 60.0]]), np.array([1])
    _, _, low_want = pred.predict(pt, lb, multimask_output=False)
    other = raw_image_predictor(tiny_sam2)
    other._features, other._orig_hw, other._is_image_set = got, [feats.orig_hw], True
    _, _, low_got = other.predict(pt, lb, multimask_output=False)
    np.testing.assert_allclose(low_got, low_want, atol=0.05 * max(1.0, float(np.abs(low_want).max())))
