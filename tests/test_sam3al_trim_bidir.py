"""Memory trimming of SAM 3 runs prompted on frame k > 0 (exemplars on a middle frame; issue 17).

Such a run is sam3's forward pass from k then its backward pass from k. Trimming keeps, during the
forward pass, what later forward frames read plus what the backward pass will read around k, and
during the backward pass what earlier frames read (the mirrored rule, sam3.video._tracker_keep).
Proofs: the trimmed run writes exactly the untrimmed run's store, and the state's peak per-frame
entries do not grow with the clip. The tracker's object-pointer window is narrowed on the shared
model for these runs (16 -> 4, both sides alike: the comparison is between sam3's own runs), so a
short clip is already many windows long and the test stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.sam3_fixtures import tiny_sam3_video_model  # noqa: F401
from tests.test_sam3al_video import DATA, SIZE, THRESH, pytestmark, stored  # noqa: F401

K = 3
BOX = (10.0, 20.0, 60.0, 60.0)


def write_clip(folder: Path, n: int) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(DATA))
    for i in range(n):
        ok, f = cap.read()
        assert ok
        cv2.imwrite(str(folder / f"{i}.png"), cv2.resize(f, SIZE, interpolation=cv2.INTER_AREA))
    cap.release()
    return folder


def run(model: Any, folder: Path, db: Path, trim: bool) -> tuple[dict[int, Any], dict[str, int], Any]:
    from dl_utils.sam3al.prompts import Exemplar
    from dl_utils.sam3al.video import Sam3VideoOptions, Sam3VideoSession

    s = Sam3VideoSession(model, str(folder), str(db), "person", exemplars=[Exemplar(BOX, frame=K)],
                         options=Sam3VideoOptions(**THRESH, trim_memory=trim))
    per_state: list[int] = []
    note = s._note_memory

    def note_each() -> None:  # also the largest single tracker state (objects may differ by clip)
        note()
        for ph in s.phrases:
            per_state.extend(len(ts["output_dict"]["non_cond_frame_outputs"])
                             for ts in ph.state.get("tracker_inference_states", []))
    s._note_memory = note_each  # type: ignore[method-assign]
    assert s.propagate()["status"] == "done"
    out = stored(s.store, "person"), dict(s.peak_memory), max(per_state, default=0)
    s.close()
    return out


def test_trimmed_bidirectional_run_is_exact_and_flat(tiny_sam3_video_model: Any, tmp_path: Path) -> None:  # noqa: F811
    from unittest import mock

    model = tiny_sam3_video_model
    with mock.patch.object(model.tracker, "max_obj_ptrs_in_encoder", 4):
        long = write_clip(tmp_path / "long", 24)
        trimmed, peak, state_peak = run(model, long, tmp_path / "t.db", True)
        full, peak_full, state_full = run(model, long, tmp_path / "f.db", False)
        short = write_clip(tmp_path / "short", 14)  # past the windows around k and the end (4 + 5 frames)
        _, peak_short, state_short = run(model, short, tmp_path / "s.db", True)
    assert sum(len(v[0]) for v in full.values()) > 0, "tune THRESH: no output"
    for f in full:
        assert trimmed[f][0] == full[f][0] and trimmed[f][1] == full[f][1], f
        assert np.array_equal(trimmed[f][2], full[f][2]), f
    assert state_peak < state_full
    assert state_peak == state_short  # flat: the clip grew by 10 frames, the largest tracker state did not
    assert peak["tracker_non_cond_outputs"] < peak_full["tracker_non_cond_outputs"]
    assert peak["tracker_frames_tracked"] < peak_full["tracker_frames_tracked"] == 24
    # what remains of sam3's cache is its hot-start look-ahead (frames computed before they are
    # yielded), bounded by its delay (15 frames), not by the clip
    assert peak["cached_frame_outputs"] <= 15 < peak_full["cached_frame_outputs"]
