"""Frames on demand: what SAM2's ``inference_state["images"]`` indexes, decoded when asked for."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FrameIndexError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..video_utils import FrameSource

# SAM2's own normalisation (sam2.utils.misc.load_video_frames defaults)
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


def pin_transfers(device: Any, pin_memory: bool | None = None) -> bool:
    """Whether host-to-device frame copies go through pinned memory: ``pin_memory`` when given,
    else on exactly for CUDA devices (the only ones with page-locked DMA transfers)."""
    import torch

    dev = torch.device(device)
    if pin_memory is None:
        return dev.type == "cuda"
    if pin_memory and dev.type != "cuda":
        raise InputError(
            f"pin_memory=True needs a CUDA device, the frames go to {dev}; leave pin_memory out "
            "(it is on for CUDA) or set it False"
        )
    return bool(pin_memory)


class LazyFrames:
    """Stand-in for the ``(N, 3, S, S)`` tensor upstream's ``init_state`` loads up front.

    ``frames[i]`` decodes kept frame ``i`` of a :class:`~dl_utils.video_utils.FrameSource`, resizes
    it to ``S x S`` with PIL's default filter and normalises it with SAM2's mean/std, the same
    operations in the same order and precision as ``sam2.utils.misc._load_img_as_tensor`` +
    ``load_video_frames_from_jpg_images``, so a frame read here equals upstream's bit for bit.

    Resized ``uint8`` frames are kept in an LRU of ``cache_frames`` entries. Walking forwards, the
    next frame is decoded in a background thread while SAM2 works on the current one (``prefetch``);
    walking backwards (``i`` right after ``i + 1``) reads the ``chunk`` frames ending at ``i`` in
    ascending order, so a backward pass costs one seek per chunk instead of one per frame.

    ``pin_memory`` (default: on when ``device`` is CUDA, off otherwise): each normalised frame is
    copied into page-locked host memory and sent with ``non_blocking=True``, so the host-to-device
    copy is a DMA queued on the current CUDA stream rather than a blocking staged copy; the kernels
    that read the frame are queued after it on the same stream, so they see the whole frame, and
    torch's caching host allocator keeps the pinned buffer until the copy has run. Pinning means
    nothing without CUDA: ``pin_memory=True`` on another device is an :class:`InputError`.
    """

    def __init__(self, source: FrameSource, image_size: int, device: Any = "cpu", *,
                 cache_frames: int = 16, chunk: int = 16, prefetch: bool = True,
                 pin_memory: bool | None = None):
        import torch

        self.source = source
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.pin_memory = pin_transfers(self.device, pin_memory)
        self.cache_frames = max(1, int(cache_frames))
        self.chunk = max(1, min(int(chunk), self.cache_frames))
        self.prefetch = bool(prefetch)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._mean = torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
        self._std = torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
        self._last: int | None = None
        self._lock = threading.RLock()  # callers may index from several threads
        self._src_lock = threading.Lock()  # a FrameSource decoder is not thread-safe
        self._pool: Any = None
        self._pending: dict[int, Any] = {}
        self.decoded = 0  # frames decoded so far (tests and benchmarks read it)
        self._ahead: _Ahead | None = None
        self._ahead_tensors = True

    def __len__(self) -> int:
        return len(self.source)

    def _decode(self, i: int) -> np.ndarray:
        from PIL import Image

        with self._src_lock:
            rgb = self.source[i]
        # exactly upstream's `np.array(Image.open(p).convert("RGB").resize((S, S)))`
        return np.array(Image.fromarray(rgb).convert("RGB").resize((self.image_size, self.image_size)))

    def _put(self, i: int, arr: np.ndarray) -> None:
        self._cache[i] = arr
        self.decoded += 1
        while len(self._cache) > self.cache_frames:
            self._cache.popitem(last=False)

    def _take(self, i: int) -> None:
        fut = self._pending.pop(i, None)
        self._put(i, fut.result() if fut is not None else self._decode(i))

    def _schedule(self, j: int) -> None:
        for k in [k for k, f in self._pending.items() if f.done() and k != j]:
            del self._pending[k]  # prefetched but never asked for (the access pattern changed)
        if j >= len(self) or j in self._cache or j in self._pending or self._pending:
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="dl_utils-frames")
        self._pending[j] = self._pool.submit(self._decode, j)

    def resized(self, i: int, *, prefetch: bool = True) -> np.ndarray:
        """Kept frame ``i`` resized to ``S x S`` RGB ``uint8`` (cached)."""
        i = int(i)
        with self._lock:
            backward = self._last is not None and i == self._last - 1
            if i not in self._cache:
                if backward and self.chunk > 1:
                    for j in range(max(0, i - self.chunk + 1), i + 1):  # ascending: one seek
                        if j not in self._cache:
                            self._take(j)
                else:
                    self._take(i)
            self._cache.move_to_end(i)
            self._last = i
            arr = self._cache[i]
            if prefetch and self.prefetch and not backward:
                self._schedule(i + 1)
            return arr

    def close(self) -> None:
        """Stop the prefetch threads (frames decode again on demand)."""
        self.stop_ahead()
        with self._lock:
            for fut in self._pending.values():
                fut.cancel()
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _tensor(self, i: int, prefetch: bool = True) -> torch.Tensor:
        import torch

        arr = self.resized(i, prefetch=prefetch) / 255.0  # float64, as upstream
        img = torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).contiguous()
        img -= self._mean
        img /= self._std
        if self.pin_memory:
            return img.pin_memory().to(self.device, non_blocking=True)
        return img.to(self.device)

    def __getitem__(self, i: int) -> torch.Tensor:
        n = len(self)
        i = int(i)
        if not 0 <= i < n:
            raise FrameIndexError(f"{self.source.name}: frame index {i} is outside 0..{n - 1}")
        ahead = self._ahead
        if ahead is not None and self._ahead_tensors:
            got = ahead.take(i)
            if got is not None:
                return got
        return self._tensor(i)

    # ------------------------------------------------------------------ pipelined passes
    def start_ahead(self, order: Sequence[int], depth: int = 4,
                    prepare: Callable[[int], Any] | None = None) -> None:
        """Prepare the frames of ``order`` (a pass's frame indices, in pass order) on a background
        thread, at most ``depth`` prepared frames ahead of the consumer.

        A propagation pass knows its frames in advance: decoding, resizing, normalising and the
        copy to the device then run while the network works on the current frame, and the main
        thread finds each frame ready. Memory stays flat (``depth`` prepared frames). A frame asked
        for out of plan decodes on demand as before; frames of the plan the consumer skips are
        dropped when a later one is asked for. An error while preparing a frame is raised, with its
        own type, where that frame is asked for.

        ``prepare(i)`` replaces the default preparation (the tensor ``frames[i]`` returns); what it
        returns is collected with :meth:`take_ahead` (the session prepares the image encoder's
        features there, see :meth:`VideoSession._features`).
        """
        self.stop_ahead()
        self._ahead_tensors = prepare is None
        self._ahead = _Ahead(prepare or (lambda i: self._tensor(i, prefetch=False)),
                             [int(i) for i in order], max(1, int(depth)))

    def take_ahead(self, i: int) -> Any:
        """What :meth:`start_ahead`'s ``prepare`` made for frame ``i`` (waits for it); None when
        ``i`` is not ahead in the plan (then prepare it in the caller)."""
        ahead = self._ahead
        return None if ahead is None else ahead.take(int(i))

    def stop_ahead(self) -> None:
        """Stop the background preparation (waits for the thread; nothing is left running)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.stop()

    def cache_info(self) -> dict[str, int]:
        return {"cached": len(self._cache), "max": self.cache_frames, "decoded": self.decoded}


class _Ahead:
    """The background thread of :meth:`LazyFrames.start_ahead`: a bounded window of ready frames.

    ``ready`` maps a plan position to its tensor (or the exception preparing it raised); the
    producer waits while ``depth`` frames are ready and unconsumed, so it never runs further ahead.
    """

    def __init__(self, prepare: Callable[[int], Any], order: list[int], depth: int):
        self.prepare = prepare
        self.order = order
        self.pos = {i: k for k, i in enumerate(order)}  # an index appears once in a pass
        self.depth = depth
        self.cond = threading.Condition()
        self.ready: dict[int, Any] = {}
        self.next_in = 0  # plan position the producer prepares next
        self.cursor = 0  # plan position the consumer may still ask for
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="dl_utils-sam2al-decode", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.stopped and self.next_in - self.cursor >= self.depth:
                    self.cond.wait()
                if self.stopped or self.next_in >= len(self.order):
                    return
                k = self.next_in = max(self.next_in, self.cursor)
            i = self.order[k]
            try:
                item: Any = self.prepare(i)
            except BaseException as e:  # handed to the consumer, raised there with its type
                item = _Failed(e)
            with self.cond:
                if k >= self.cursor:
                    self.ready[k] = item
                self.next_in = k + 1
                self.cond.notify_all()
                if isinstance(item, _Failed):
                    return

    def take(self, i: int) -> Any:
        """The prepared tensor of frame ``i``, or None when ``i`` is not ahead in the plan."""
        k = self.pos.get(i)
        with self.cond:
            if k is None or k < self.cursor:
                return None
            for old in [p for p in self.ready if p < k]:
                del self.ready[old]  # skipped frames
            self.cursor = k
            self.cond.notify_all()
            while k not in self.ready and not self.stopped:
                if self.next_in > k:  # the producer passed k (it started past the cursor): not ready
                    break
                if not self.thread.is_alive():
                    break
                self.cond.wait(0.5)
            item = self.ready.pop(k, None)
            self.cursor = k + 1
            self.cond.notify_all()
        if isinstance(item, _Failed):
            raise item.error
        return item

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.ready.clear()
            self.cond.notify_all()
        self.thread.join()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error
