"""A disk cache of SAM2 image-encoder features, so fine-tuning pays the encoder once per frame.

Fine-tuning trains only the prompt encoder and the mask decoder; the image encoder is frozen, so its
output for a frame never changes while the weights stay the same. The widely copied recipe re-runs the
encoder on every step (most of a step's time); here each frame's features are computed once, stored
in fp16 and read back memory-mapped on every later epoch.

Why it is built this way:

* **Key** = sha256 of the model key, the image's shape and dtype and its bytes: the same frame reached
  from two stores is one entry, and features of another model (or other weights: callers put the
  weights' sha256 in ``model_key``) are never reused.
* **One folder per entry** (``<root>/<k[:2]>/<k>/``: ``image_embed.npy``, ``high_res_<i>.npy``,
  ``meta.json``), written into ``<root>/.tmp/`` and renamed into place in one step. A folder is there
  whole or not at all, so a crash mid-write or two processes sharing a root never read half an entry;
  two writers of one frame race on the rename and the loser drops its copy.
* **Read memory-mapped** (``np.load(mmap_mode="r")``): iterating 10,000 frames keeps only the frames
  in use in RAM; the object keeps no arrays, only a small index (key -> bytes, last use).
* **Size cap, least recently used first**: at 1024 px a frame is about 8 MB in fp16 (16 MB in fp32),
  so 10,000 frames need a cap. Recency is the mtime of ``meta.json``, set on every hit, so it
  survives the process and is shared by every process on the root. An entry is removed by renaming
  it out of the way first, so a reader sees it whole or gone (gone: a recompute, never a crash).
* **Damaged entries** (a truncated file, a bad ``meta.json``) are detected when read, removed and
  recomputed.
* **Disk full** while writing removes the partial entry and raises :class:`OutputError` naming the
  cache folder and the ways out (free space, lower the cap, another ``--cache-dir``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import InputError, OutputError, mount_point

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META = "meta.json"
EMBED = "image_embed.npy"
TMP = ".tmp"
# A folder under .tmp/ older than this is a leftover of a crashed writer (a live write takes seconds).
STALE_TMP_SECONDS = 3600.0


_NUMPY_DTYPES = {"torch.float32": np.float32, "torch.float16": np.float16, "torch.float64": np.float64}


@dataclass(frozen=True)
class FrameFeatures:
    """One frame's image-encoder output, what ``SAM2ImagePredictor.set_image`` keeps in ``_features``.

    Arrays have no batch axis and are fp16 when they come from the cache (memory-mapped, read-only);
    :meth:`to_torch` adds the batch axis back and converts for the decoder.
    """

    image_embed: np.ndarray  # (C, h, w) float16
    high_res_feats: tuple[np.ndarray, ...]  # float16, SAM2's two high-res levels, (C_i, h_i, w_i)
    orig_hw: tuple[int, int]  # the frame's (height, width) before SAM2's resize

    def __post_init__(self) -> None:
        if np.ndim(self.image_embed) != 3 or any(np.ndim(a) != 3 for a in self.high_res_feats):
            shapes = [np.shape(self.image_embed)] + [np.shape(a) for a in self.high_res_feats]
            raise InputError(
                f"FrameFeatures wants (C, h, w) arrays without a batch axis, got shapes {shapes};"
                " drop the batch axis (FrameFeatures.from_torch does)"
            )

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays (what the entry costs on disk, less the small headers)."""
        return int(self.image_embed.nbytes + sum(a.nbytes for a in self.high_res_feats))

    def to_torch(
        self, device: "str | torch.device" = "cpu", dtype: "torch.dtype | None" = None
    ) -> dict[str, Any]:
        """``{"image_embed": (1,C,h,w), "high_res_feats": [(1,C_i,h_i,w_i), ...]}`` on ``device``.

        The layout ``SAM2ImagePredictor._features`` has, so a predictor (or the decoder call in the
        training step) can use cached features as if ``set_image`` had run. ``dtype`` defaults to
        float32: the decoder trains in fp32, fp16 is only the storage format.
        """
        import torch

        dt = torch.float32 if dtype is None else dtype
        dev = torch.device(device)
        # On the CPU numpy converts fp16 several times faster than torch; to a GPU the fp16 bytes
        # travel (half the transfer) and the GPU converts. np.array copies out of the read-only
        # memmap (torch.from_numpy warns on read-only arrays).
        np_dt = _NUMPY_DTYPES.get(str(dt)) if dev.type == "cpu" else None

        def one(a: np.ndarray) -> "torch.Tensor":
            if np_dt is not None:
                return torch.from_numpy(np.array(a, dtype=np_dt)).unsqueeze(0)
            return torch.from_numpy(np.array(a)).to(device=dev).to(dtype=dt).unsqueeze(0)

        return {"image_embed": one(self.image_embed), "high_res_feats": [one(a) for a in self.high_res_feats]}

    @classmethod
    def from_torch(cls, features: Mapping[str, Any], orig_hw: Sequence[int]) -> "FrameFeatures":
        """From a predictor's ``_features`` (batch of one), as fp16 numpy arrays."""

        def one(t: Any) -> np.ndarray:
            if t.dim() != 4 or t.shape[0] != 1:
                raise InputError(f"expected a (1, C, h, w) feature tensor, got {tuple(t.shape)}")
            return np.ascontiguousarray(t[0].detach().float().cpu().numpy().astype(np.float16))

        return cls(
            image_embed=one(features["image_embed"]),
            high_res_feats=tuple(one(t) for t in features["high_res_feats"]),
            orig_hw=(int(orig_hw[0]), int(orig_hw[1])),
        )


def predictor_compute(predictor: Any) -> Callable[[np.ndarray], FrameFeatures]:
    """A ``compute`` for :meth:`FeatureCache.get` that runs a ``SAM2ImagePredictor``'s encoder.

    ``set_image`` is the upstream preprocessing (resize, normalise, no_mem_embed), so cached features
    equal what the predictor would have used.
    """

    def compute(image: np.ndarray) -> FrameFeatures:
        predictor.set_image(image)
        return FrameFeatures.from_torch(predictor._features, predictor._orig_hw[0])

    return compute


def _write_array(path: Path, array: np.ndarray, durable: bool = False) -> None:
    """Write one fp16 ``.npy`` file (a module function so tests can make it fail)."""
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array, dtype=np.float16), allow_pickle=False)
        if durable:
            f.flush()
            os.fsync(f.fileno())


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class _IndexEntry:
    nbytes: int
    used_ns: int


class FeatureCache:
    """Image-encoder features on disk under ``root``, keyed by model and frame content, LRU-capped.

    ``get(image, compute)`` returns the cached features (memory-mapped, no ``compute`` call) or runs
    ``compute(image)``, stores its result and returns it read back from disk. Several instances and
    processes may share ``root``; the worst a race costs is a recompute.

    ``durable=True`` fsyncs every file before the rename (about twice the write time). Without it a
    power cut can leave a renamed entry whose files are empty or short (ext4 and XFS order data
    before the rename's metadata, so not garbage); the header and size check on read catches that
    and the entry is recomputed, so the default skips the fsync.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, model_key: str, max_bytes: int = 8 << 30, durable: bool = False
    ):
        if not model_key:
            raise InputError("FeatureCache needs a model_key (model name + weights sha256): features of "
                             "different weights must not share entries")
        if max_bytes <= 0:
            raise InputError(f"FeatureCache max_bytes must be positive, got {max_bytes}")
        self.root = Path(root)
        self.model_key = model_key
        self.max_bytes = int(max_bytes)
        self.durable = durable
        self.hits = 0
        self.misses = 0
        self.corrupted = 0  # damaged entries found, removed and recomputed
        self.evicted = 0
        self._lock = threading.Lock()
        self._last_ns = 0
        self._index: dict[str, _IndexEntry] = {}
        self._total = 0  # sum of the index's nbytes, kept as it changes (a put must not sum 10,000 entries)
        try:
            (self.root / TMP).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._os_error(e) from None
        self._rescan()

    # ------------------------------------------------------------------ public
    @property
    def bytes(self) -> int:
        """Bytes of the entries this instance knows of (rescanned from disk whenever it evicts)."""
        return self._total

    @property
    def entries(self) -> int:
        """Number of entries this instance knows of."""
        return len(self._index)

    def key(self, image: np.ndarray) -> str:
        """The entry name for ``image`` under this model: hex sha256 of model, shape, dtype, bytes."""
        arr = np.ascontiguousarray(image)
        h = hashlib.sha256()
        head = f"dl_utils.features/{FORMAT_VERSION}\0{self.model_key}\0{arr.shape}\0{arr.dtype.str}\0"
        h.update(head.encode())
        h.update(arr.data.cast("B") if arr.ndim and arr.size else arr.tobytes())
        return h.hexdigest()

    def get(
        self, image: np.ndarray, compute: Callable[[np.ndarray], FrameFeatures], *, key: str | None = None
    ) -> FrameFeatures:
        """The features of ``image``: from disk on a hit, else ``compute(image)`` stored first.

        ``key`` is ``self.key(image)`` when the caller has it already (it skips hashing the pixels
        again); a wrong key stores the features under the wrong frame, so pass only what ``key``
        returned for this image.
        """
        key = self.key(image) if key is None else key
        found = self.lookup(key)
        if found is not None:
            return found
        self.misses += 1
        feats = compute(image)
        if not isinstance(feats, FrameFeatures):
            raise InputError(f"the compute function given to FeatureCache.get returned "
                             f"{type(feats).__name__}, not FrameFeatures")
        return self._store(key, np.asarray(image), feats)

    def lookup(self, key: str) -> FrameFeatures | None:
        """The entry ``key`` (from :meth:`key`) memory-mapped and counted as a hit, or None.

        For a training loop that remembers each frame's key (a 64-character string) instead of the
        arrays: a later epoch maps the entry without decoding or hashing the frame, and nothing
        stays in RAM between steps. None (not counted as a miss) means: decode the frame and
        :meth:`get` it.
        """
        found = self._load(key)
        if found is None:
            return None
        self.hits += 1
        known = self._index.get(key) or _scan_entry(self._entry_dir(key))
        self._touch(key, known.nbytes if known is not None else found.nbytes)
        return found

    def __contains__(self, image: object) -> bool:
        return isinstance(image, np.ndarray) and (self._entry_dir(self.key(image)) / META).is_file()

    def clear(self) -> None:
        """Remove every entry (of every model) under ``root``; the folder itself stays."""
        with self._lock:
            for shard in self._shards():
                self._discard(shard)
            for leftover in (self.root / TMP).glob("*"):
                if leftover.name.startswith("trash-"):
                    _remove_tree(leftover)
            self._index.clear()
            self._total = 0

    def info(self) -> dict[str, int]:
        """Counters and size, for logs and benchmarks."""
        return {"hits": self.hits, "misses": self.misses, "corrupted": self.corrupted,
                "evicted": self.evicted, "entries": self.entries, "bytes": self.bytes,
                "max_bytes": self.max_bytes}

    # ------------------------------------------------------------------ reading
    def _entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def _load(self, key: str) -> FrameFeatures | None:
        """The entry memory-mapped, or None when absent; a damaged entry is removed (None)."""
        folder = self._entry_dir(key)
        try:
            meta = json.loads((folder / META).read_text())
        except FileNotFoundError:
            self._drop(key)
            return None
        except (OSError, ValueError) as e:
            self._damaged(key, f"meta.json unreadable ({e})")
            return None
        try:
            return self._map(folder, meta)
        except FileNotFoundError as e:
            if not (folder / META).is_file():  # removed whole by another process while we opened it
                self._drop(key)
                return None
            self._damaged(key, f"a file is missing ({e.filename})")
            return None
        except (OSError, ValueError, EOFError, KeyError, TypeError, IndexError) as e:
            self._damaged(key, str(e))
            return None

    def _map(self, folder: Path, meta: dict[str, Any]) -> FrameFeatures:
        """Open the arrays memory-mapped and check them against ``meta.json`` (a cheap header and
        size check: a truncated file fails here, in ``np.load``, before any training uses it)."""
        if meta.get("version") != FORMAT_VERSION or meta.get("model_key") != self.model_key:
            raise ValueError(
                f"meta.json is for version {meta.get('version')} / model {meta.get('model_key')!r}")
        names = [EMBED] + [f"high_res_{i}.npy" for i in range(int(meta["n_high_res"]))]
        arrays = []
        for name, shape in zip(names, meta["shapes"], strict=True):
            arr = np.load(folder / name, mmap_mode="r", allow_pickle=False)
            if arr.dtype != np.float16 or list(arr.shape) != list(shape):
                raise ValueError(f"{name} holds {arr.dtype} {arr.shape}, meta.json says float16 {shape}")
            arrays.append(arr)
        h, w = meta["orig_hw"]
        return FrameFeatures(
            image_embed=arrays[0], high_res_feats=tuple(arrays[1:]), orig_hw=(int(h), int(w)))

    def _damaged(self, key: str, why: str) -> None:
        self.corrupted += 1
        log.warning("feature cache entry %s is damaged (%s); removing it and recomputing",
                    self._entry_dir(key), why)
        self._discard(self._entry_dir(key))
        self._drop(key)

    def _touch(self, key: str, nbytes: int) -> None:
        """Mark ``key`` as just used, on disk (meta.json's mtime) so other processes see it too."""
        now = self._now_ns()
        try:
            os.utime(self._entry_dir(key) / META, ns=(now, now))
        except OSError:
            pass  # evicted meanwhile, or a read-only cache: recency is a hint, not a promise
        self._drop(key)
        self._index[key] = _IndexEntry(nbytes, now)
        self._total += nbytes

    def _drop(self, key: str) -> None:
        old = self._index.pop(key, None)
        if old is not None:
            self._total -= old.nbytes

    def _now_ns(self) -> int:
        """Strictly increasing within the process, so two hits in one clock tick keep their order."""
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return self._last_ns

    # ------------------------------------------------------------------ writing
    def _store(self, key: str, image: np.ndarray, feats: FrameFeatures) -> FrameFeatures:
        """Write the entry (temp folder, then one rename), make room under the cap, read it back."""
        nbytes = feats.nbytes
        if nbytes > self.max_bytes:
            raise InputError(
                f"the feature cache cap ({self.max_bytes} bytes) is smaller than one frame's features "
                f"({nbytes} bytes) in {self.root}: raise max_bytes (the cache size option)")
        self._write_entry(key, image, feats)
        scanned = _scan_entry(self._entry_dir(key))  # the size on disk, headers included
        self._touch(key, scanned.nbytes if scanned is not None else nbytes)
        if self.bytes > self.max_bytes:
            self._evict(keep=key)
        loaded = self._load(key)
        if loaded is not None:
            return loaded
        # Removed by another process between the rename and here: the computed arrays are still good.
        return _as_fp16(feats)

    def _write_entry(self, key: str, image: np.ndarray, feats: FrameFeatures) -> None:
        tmp = self.root / TMP / f"{key[:16]}-{uuid.uuid4().hex}"
        meta = {
            "version": FORMAT_VERSION,
            "model_key": self.model_key,
            "image_shape": list(image.shape),
            "image_dtype": image.dtype.str,
            "orig_hw": [int(feats.orig_hw[0]), int(feats.orig_hw[1])],
            "n_high_res": len(feats.high_res_feats),
            "shapes": [list(feats.image_embed.shape)] + [list(a.shape) for a in feats.high_res_feats],
        }
        try:
            tmp.mkdir(parents=True)
            _write_array(tmp / EMBED, feats.image_embed, self.durable)
            for i, a in enumerate(feats.high_res_feats):
                _write_array(tmp / f"high_res_{i}.npy", a, self.durable)
            with open(tmp / META, "w") as f:  # last: a folder with meta.json has all its arrays
                json.dump(meta, f)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
            self._publish(tmp, self._entry_dir(key))
        except OSError as e:
            _remove_tree(tmp)
            raise self._os_error(e) from None
        except BaseException:
            _remove_tree(tmp)
            raise

    def _publish(self, tmp: Path, final: Path) -> None:
        """Rename the finished folder into place; if another writer got there first keep theirs."""
        for _ in range(3):
            try:
                final.parent.mkdir(exist_ok=True)
                os.rename(tmp, final)
                return
            except FileNotFoundError:  # the shard folder was removed by a clear() meanwhile: retry
                continue
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and (final / META).is_file():
                    _remove_tree(tmp)  # same key = same content: their copy is as good as ours
                    return
                raise
        raise OSError(errno.ENOENT, "the cache folder keeps disappearing (cleared by another process?)")

    def _os_error(self, e: OSError) -> OutputError:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            cap_gb = self.max_bytes / 2**30
            return OutputError(
                f"cannot write the feature cache in {self.root}: no space left on the device; free space"
                f" on {mount_point(self.root)}, lower the cache cap (--cache-max-gb, now {cap_gb:.1f})"
                " or put the cache on a bigger disk with --cache-dir (the partial entry was removed)")
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return OutputError(
                f"cannot write the feature cache in {self.root}: {e.strerror}; choose a writable folder"
                " with --cache-dir")
        return OutputError(f"cannot write the feature cache in {self.root}: {e.strerror or e}")

    # ------------------------------------------------------------------ size cap
    def _evict(self, keep: str) -> None:
        """Remove least recently used entries until under the cap.

        The index is rescanned from disk first, so entries and hits of other processes on the same
        root count; removal goes down to 90 % of the cap so the next writes do not rescan each time.
        """
        with self._lock:
            self._rescan()
            total = self.bytes
            if total <= self.max_bytes:
                return
            target = int(self.max_bytes * 0.9)
            for key, entry in sorted(self._index.items(), key=lambda kv: kv[1].used_ns):
                if total <= target:
                    break
                if key == keep:
                    continue
                self._discard(self._entry_dir(key))
                self._drop(key)
                total -= entry.nbytes
                self.evicted += 1

    def _discard(self, folder: Path) -> None:
        """Rename out of the way (atomic: readers see the entry whole or gone), then delete."""
        trash = self.root / TMP / f"trash-{uuid.uuid4().hex}"
        try:
            os.rename(folder, trash)
        except OSError:
            return  # already gone (another process evicted it)
        _remove_tree(trash)

    def _shards(self) -> Iterator[Path]:
        try:
            with os.scandir(self.root) as it:
                for d in it:
                    if d.is_dir() and len(d.name) == 2 and d.name != TMP:
                        yield Path(d.path)
        except FileNotFoundError:
            return

    def _rescan(self) -> None:
        """Rebuild the index from the folders on disk (sizes, last use), drop stale temp folders."""
        index: dict[str, _IndexEntry] = {}
        for shard in list(self._shards()):
            try:
                with os.scandir(shard) as it:
                    folders = [Path(d.path) for d in it if d.is_dir()]
            except FileNotFoundError:
                continue
            for folder in folders:
                entry = _scan_entry(folder)
                if entry is not None:
                    index[folder.name] = entry
        self._index = index
        self._total = sum(e.nbytes for e in index.values())
        self._drop_stale_tmp()

    def _drop_stale_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_SECONDS
        try:
            with os.scandir(self.root / TMP) as it:
                for d in it:
                    try:
                        if d.name.startswith("trash-") or d.stat().st_mtime < cutoff:
                            _remove_tree(Path(d.path))
                    except OSError:
                        continue
        except FileNotFoundError:
            return


def _scan_entry(folder: Path) -> _IndexEntry | None:
    """Size and last use of one entry folder, or None if it is not a finished entry."""
    try:
        used = (folder / META).stat().st_mtime_ns
        with os.scandir(folder) as it:
            nbytes = sum(d.stat().st_size for d in it if d.name != META)
    except OSError:
        return None
    return _IndexEntry(nbytes, used)


def _as_fp16(feats: FrameFeatures) -> FrameFeatures:
    return FrameFeatures(
        image_embed=np.asarray(feats.image_embed, dtype=np.float16),
        high_res_feats=tuple(np.asarray(a, dtype=np.float16) for a in feats.high_res_feats),
        orig_hw=feats.orig_hw,
    )


__all__ = ["FeatureCache", "FrameFeatures", "predictor_compute"]
