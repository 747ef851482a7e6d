"""``--tracker sam2|samurai``, ``--samurai KEY=VALUE`` and ``--force`` on the commands (issue 18, wiring).

The options live in :class:`~dl_utils.drivers.options.SamOptions`; every SAM2 video session the
drivers, the batch workers and the widget open takes them from there. Checked here: the options are on
``segment``, ``annotate``, ``detect`` and ``batch``; bad names and parameters are one-line errors
before anything is written; ``--tracker samurai`` with ``--backend sam3`` is refused; ``segment
--tracker samurai`` writes what a ``VideoSession(tracker="samurai")`` called directly writes (bit for
bit) and records the mode; switching tracker on that store is refused naming ``--out``/``--force``,
and ``--force`` recomputes; ``annotate``, ``detect --segment`` (the grounded tracker's session), a
batch worker and the widget open their sessions in the mode asked for. Tiny random-weight SAM2 on CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from dl_utils.cli import build_parser, main
from dl_utils.drivers.options import SamOptions, parse_samurai
from dl_utils.errors import InputError
from dl_utils.sam2al.samurai import SamuraiConfig
from tests.conftest import synthetic_frame
from tests.sam2_fixtures import requires_sam2

COMMANDS = ("segment", "annotate", "detect", "batch")
TRACKER_META = "sam2al.tracker"
CLICK = [{"frame": 1, "object": 1, "label": "square", "points": [[40, 40, 1], [100, 80, 0]]}]
#: SAMURAI with a filter that turns stable at once, so its motion score is used on this short clip
PARAMS = ["kf_score_weight=0.5", "stable_frames_threshold=1"]


def _sub(command: str) -> argparse.ArgumentParser:
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    for n in needles:
        assert n in err, err
    return err


# ----------------------------------------------------------------------------- options, no models
@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_the_tracker_options(command):
    text = _sub(command).format_help()
    for opt in ("--tracker {sam2,samurai}", "--samurai KEY=VALUE", "--force"):
        assert opt in text, (command, opt)
    assert "kf_score_weight" in text  # the keys are listed


def test_parsed_options_reach_sam_options():
    p = build_parser()
    a = p.parse_args(["annotate", "x.mp4", "--out", "o.sqlite", "--tracker", "samurai",
                      "--samurai", "kf_score_weight=0.15", "--samurai", "stable_frames_threshold=3",
                      "--samurai", "memory_bank_obj_score_threshold=-inf", "--force"])
    s = SamOptions.from_args(a, command="annotate")
    assert s.tracker == "samurai" and s.force is True
    assert s.samurai == SamuraiConfig(kf_score_weight=0.15, stable_frames_threshold=3,
                                      memory_bank_obj_score_threshold=-np.inf)
    assert s.session_kwargs() == {"tracker": "samurai", "samurai": s.samurai, "force": True,
                                  "dtype": None, "compile": False}  # issue 20: --precision, --compile
    d = SamOptions.from_args(p.parse_args(["segment", "x.mp4", "--out", "o", "--prompts", "p.json"]))
    assert (d.tracker, d.samurai, d.force) == ("sam2", None, False)  # the default stays SAM2's
    assert SamOptions(tracker="samurai", samurai={"kf_score_weight": 0.1}).samurai == SamuraiConfig(kf_score_weight=0.1)


@pytest.mark.parametrize("kw, needles", [
    ({"tracker": "kalman"}, ["tracker='kalman'", "sam2, samurai"]),
    ({"samurai": SamuraiConfig()}, ["--tracker samurai"]),  # parameters without the mode
    ({"tracker": "samurai", "samurai": {"kf_score_weight": 2}}, ["kf_score_weight=2", "[0, 1]"]),
    ({"tracker": "samurai", "samurai": {"nope": 1}}, ["['nope']", "kf_score_weight"]),
    ({"tracker": "samurai", "samurai": "kf=1"}, ["SamuraiConfig"]),
])
def test_bad_library_options_are_one_line_errors(kw, needles):
    with pytest.raises(InputError) as e:
        SamOptions(**kw)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)


@pytest.mark.parametrize("items, needles", [
    (["kf_score_weight=1.5"], ["kf_score_weight=1.5", "out of range", "[0, 1]"]),
    (["stable_frames_threshold=0"], ["stable_frames_threshold=0", ">= 1"]),
    (["stable_frames_threshold=2.5"], ["stable_frames_threshold=2.5", "integer"]),
    (["kf_score_weight=high"], ["kf_score_weight=high", "number"]),
    (["colour=1"], ["colour", "unknown", "kf_score_weight", "std_weight_velocity"]),
    (["kf_score_weight"], ["KEY=VALUE"]),
])
def test_bad_samurai_items_are_one_line_errors(items, needles):
    with pytest.raises(InputError) as e:
        parse_samurai(items)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)


def test_cli_refuses_bad_tracker_input_before_writing(tmp_path, capsys):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(CLICK))
    out = tmp_path / "o.sqlite"
    base = ["segment", str(tmp_path / "clip.mp4"), "--out", str(out), "--prompts", str(prompts)]
    with pytest.raises(SystemExit) as e:  # argparse names the choices
        main(base + ["--tracker", "kalman"])
    assert e.value.code == 2 and "invalid choice: 'kalman'" in capsys.readouterr().err
    cases = [(["--tracker", "samurai", "--samurai", "kf_score_weight=-1"], ["kf_score_weight=-1", "[0, 1]"]),
             (["--tracker", "samurai", "--samurai", "colour=red"], ["colour", "unknown"]),
             (["--samurai", "kf_score_weight=0.2"], ["--tracker samurai"])]
    for extra, needles in cases:
        assert main(base + extra) == 1
        _one_line(capsys, "dl-utils: error:", *needles)
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["detect", "{clip}", "--text", "car", "--out", "{out}", "--segment"],
    ["annotate", "{clip}", "--text", "car", "--out", "{out}"],
    ["batch", "{clip}", "--text", "car", "--out", "{out}"],
])
def test_samurai_with_the_sam3_backend_is_refused_first(argv, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")  # never opened: the refusal comes first
    out = tmp_path / "out"
    argv = [a.format(clip=clip, out=out) for a in argv] + ["--backend", "sam3", "--tracker", "samurai"]
    assert main(argv) == 1
    _one_line(capsys, "--tracker samurai", "--backend sam3")
    assert not out.exists()
    from dl_utils.drivers.run import run_into_store

    with pytest.raises(InputError, match="SAM 3's own tracker"):  # the library path refuses it too
        from dl_utils.drivers.options import DetectorOptions

        run_into_store(None, None, detector_options=DetectorOptions(backend="sam3"),
                       sam=SamOptions(tracker="samurai"))


def test_auto_annotation_refuses_samurai_and_unknown_names():
    from dl_utils import auto_annotation

    with pytest.raises(InputError, match="one frame at a time"):
        auto_annotation.create(text="car", tracker="samurai")
    with pytest.raises(InputError, match="sam2, samurai"):
        auto_annotation.create(text="car", tracker="kalman")


# ----------------------------------------------------------------------------- with the tiny SAM2
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 5-frame clip (a moving square), its clicks, and the tiny checkpoint as a user passes it."""
    import torch

    from dl_utils.video_utils import write_video
    from tests.sam2_fixtures import build_tiny

    root = tmp_path_factory.mktemp("tracker")
    ckpt = root / "sam.pt"
    torch.save({"model": build_tiny(video=True).state_dict()}, ckpt)
    clip = Path(write_video(root / "clip.mp4", (synthetic_frame(i) for i in range(5)), fps=30, preset="ultrafast"))
    prompts = root / "p.json"
    prompts.write_text(json.dumps(CLICK))
    return {"root": root, "ckpt": ckpt, "clip": clip, "prompts": prompts}


def _masks(path: Path) -> dict[tuple[int, int], bytes]:
    from dl_utils.store import AnnotationStore

    with AnnotationStore.open(path, readonly=True) as st:
        return {(f, inst.object_id): np.packbits(inst.mask).tobytes() + str(inst.mask.shape).encode()
                for f in st.frames() for inst in st.read_frame(f)}


def _meta(path: Path) -> object:
    from dl_utils.store import AnnotationStore

    with AnnotationStore.open(path, readonly=True) as st:
        return st.get_meta(TRACKER_META)


@requires_sam2
def test_segment_samurai_equals_the_session_and_switching_needs_force(data, tmp_path, capsys):
    import torch

    from dl_utils.sam2al import VideoSession, apply_prompts, load_prompts
    from tests.sam2_fixtures import build_tiny

    torch.set_num_threads(1)
    out = tmp_path / "seg.sqlite"
    base = ["segment", str(data["clip"]), "--out", str(out), "--prompts", str(data["prompts"]),
            "--checkpoint", str(data["ckpt"]), "--image-size", "256", "--device", "cpu"]
    argv = base + ["--tracker", "samurai"] + [x for p in PARAMS for x in ("--samurai", p)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tracker"] == "samurai" and summary["frames_written"] == 3
    cfg = SamuraiConfig(kf_score_weight=0.5, stable_frames_threshold=1)
    assert _meta(out) == {"tracker": "samurai", "samurai": cfg.to_dict()}

    direct = tmp_path / "direct.sqlite"  # the library called directly on the same input
    s = VideoSession(data["clip"], direct, sam_model=build_tiny(video=True), tracker="samurai", samurai=cfg)
    try:
        apply_prompts(s, load_prompts(data["prompts"]))
        s.propagate("forward", progress=False)
    finally:
        s.close()
    assert _masks(out) == _masks(direct) and len(_masks(out)) == 4

    before = _masks(out)
    assert main(base) == 1  # the default tracker on SAMURAI's store
    _one_line(capsys, "tracker='samurai'", "--out", "--force")
    assert main(base + ["--dry-run"]) == 1  # the plan refuses what the run would
    _one_line(capsys, "--tracker samurai", "--out", "--force")
    assert _masks(out) == before and _meta(out)["tracker"] == "samurai"
    assert main(base + ["--force"]) == 0  # SAMURAI's results dropped and recomputed by SAM2
    again = json.loads(capsys.readouterr().out)
    assert again["tracker"] == "sam2" and again["frames_written"] == 3
    assert _meta(out) == {"tracker": "sam2"}
    assert main(base) == 0 and json.loads(capsys.readouterr().out)["frames_written"] == 0  # resumes


@requires_sam2
def test_annotate_detect_segment_batch_and_widget_open_samurai_sessions(data, tmp_path, capsys, monkeypatch):
    import torch

    import dl_utils.sam2al as sam2al
    from dl_utils.batch.options import BatchOptions
    from dl_utils.batch.plan import BatchSource
    from dl_utils.batch.worker import run_source, store_done
    from dl_utils.drivers.detect import run_detect
    from tests.sam2_fixtures import build_tiny

    torch.set_num_threads(1)
    opened: list[tuple[str, object, bool]] = []
    real = sam2al.VideoSession.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        opened.append((self.tracker, self.samurai, kw.get("force", False)))

    monkeypatch.setattr(sam2al.VideoSession, "__init__", spy)
    cfg = SamuraiConfig(kf_score_weight=0.5, stable_frames_threshold=1)
    sam_args = ["--sam-checkpoint", str(data["ckpt"]), "--image-size", "256", "--device", "cpu"]

    # annotate: clicks through the driver's own session (a checkpoint file, as the CLI builds it)
    ann = tmp_path / "ann.sqlite"
    assert main(["annotate", str(data["clip"]), "--out", str(ann), "--points", str(data["prompts"]),
                 "--direction", "forward", "--tracker", "samurai", *sum((["--samurai", p] for p in PARAMS), []),
                 *sam_args]) == 0
    capsys.readouterr()
    assert opened[-1] == ("samurai", cfg, False) and _meta(ann)["tracker"] == "samurai"
    assert main(["annotate", str(data["clip"]), "--out", str(ann), "--points", str(data["prompts"]),
                 *sam_args]) == 1  # refused before a model loads
    _one_line(capsys, "--tracker samurai", "--out", "--force")
    assert len(opened) == 1

    # detect --segment on video: the grounded tracker's session
    class Squares:
        name = "squares"

        def detect(self, image, prompt=None):
            from dl_utils.dinoal.detector import Detections

            ys, xs = np.nonzero((image[..., 0] > 200) & (image[..., 1] > 200) & (image[..., 2] > 200))
            boxes = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]] if len(xs) else []
            return Detections(boxes=np.array(boxes, float).reshape(-1, 4), scores=[0.9] * len(boxes),
                              phrases=["square"] * len(boxes), labels=["square"] * len(boxes),
                              caption=str(prompt or ""))

    det = tmp_path / "det.sqlite"
    s = run_detect(data["clip"], det, "square", segment=True, every=4, detector=Squares(),
                   sam_video_model=build_tiny(video=True), progress=False, tracker="samurai",
                   samurai={"kf_score_weight": 0.5})
    assert s["tracked"] and s["objects"] >= 1
    assert opened[-1][:2] == ("samurai", SamuraiConfig(kf_score_weight=0.5)) and _meta(det)["tracker"] == "samurai"
    with pytest.raises(InputError, match="--force"):
        run_detect(data["clip"], det, "square", segment=True, every=4, detector=Squares(),
                   sam_video_model=build_tiny(video=True), progress=False)

    # a batch worker: BatchOptions.sam carries the mode to the source's session
    src = BatchSource(source=data["clip"], name="clip.mp4", store_name="clip.mp4.sqlite",
                      points=data["prompts"])
    sam = SamOptions(checkpoint=data["ckpt"], image_size=256, device="cpu", direction="forward",
                     tracker="samurai", samurai=cfg)
    out = tmp_path / "batch"
    r = run_source(src, BatchOptions(sam=sam), tmp_path / "work", out)
    assert r.status == "done", r.error
    assert opened[-1] == ("samurai", cfg, False) and _meta(out / "clip.mp4.sqlite")["tracker"] == "samurai"
    assert _masks(out / "clip.mp4.sqlite") == _masks(ann)  # the batch store equals annotate's
    assert not store_done(out / "clip.mp4.sqlite", src, tracker="sam2")  # another tracker: not "done"
    plain = BatchOptions(sam=SamOptions(checkpoint=data["ckpt"], image_size=256, device="cpu", direction="forward"))
    r = run_source(src, plain, tmp_path / "work", out)  # refused, said in the summary, not "skipped"
    assert r.status == "failed" and "--force" in (r.error or "")

    # the widget: Annotator(tracker=..., samurai=...) builds its session in that mode
    from dl_utils.ipy_utils import Annotator

    w = tmp_path / "widget.sqlite"
    a = Annotator(data["clip"], w, sam_model=build_tiny(video=True), tracker="samurai",
                  samurai={"kf_score_weight": 0.5}, widgets=False)
    assert a.session is not None and a.session.tracker == "samurai"
    assert a.session.samurai == SamuraiConfig(kf_score_weight=0.5)
    a.session.close()
    b = Annotator(data["clip"], ann, sam_model=build_tiny(video=True), widgets=False)  # SAM2 on SAMURAI's store
    assert b.session is None  # refused: the status line says why (guard)
    assert b.load_model(sam_model=build_tiny(video=True), force=True) and b.session.tracker == "sam2"
    b.session.close()
