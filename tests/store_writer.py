"""Writer subprocess for the SIGKILL test: writes frames forever, reporting each committed frame.

Usage: python -m tests.store_writer STORE N_OBJECTS
Each frame holds N_OBJECTS instances whose masks encode (frame, object) so the parent can verify
every stored mask exactly. After each commit it prints the frame number (flushed): a frame printed
is a frame the store must hold after a kill.
"""

from __future__ import annotations

import sys

import numpy as np

from dl_utils.annotations import Instance, MediaInfo
from dl_utils.store import AnnotationStore

H, W = 120, 160


def expected_mask(frame: int, obj: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    x = (frame * 3 + obj * 17) % (W - 20)
    y = (frame * 2 + obj * 11) % (H - 20)
    m[y : y + 10 + obj, x : x + 12 + frame % 7] = True
    return m


def main() -> None:
    path, n_obj = sys.argv[1], int(sys.argv[2])
    media = MediaInfo(name="kill-test", width=W, height=H, frames=list(range(100000)))
    store = AnnotationStore.open_or_create(path, media)
    existing = {o.id for o in store.objects()}
    for k in range(1, n_obj + 1):
        if k not in existing:
            store.add_object("thing", id=k)
    done = store.frames()
    frame = (done[-1] + 1) if done else 0
    run = store.begin_run("kill-test")
    print("ready", flush=True)
    while True:
        store.write_frame(
            frame,
            [Instance(k, mask=expected_mask(frame, k), score=0.5) for k in range(1, n_obj + 1)],
            run_id=run,
        )
        print(frame, flush=True)
        frame += 1


if __name__ == "__main__":
    main()
