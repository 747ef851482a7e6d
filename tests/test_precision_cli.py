"""``--precision fp32|bf16|fp16`` and ``--compile`` on every SAM2 command, the batch and the widget.

What is proved here (CPU, the tiny random-weight SAM2 from a checkpoint file, as a user passes
``--checkpoint``/``--sam-checkpoint``): the options parse on ``segment``, ``annotate``, ``detect`` and
``batch`` (argparse refuses another choice), :class:`~dl_utils.drivers.options.SamOptions` refuses a
bad value in one line, and the chosen precision reaches the engine each path builds: the video
session (``segment``, ``annotate`` on video, ``detect --segment`` on video), the image segmenter
(``annotate``/``detect --segment`` on images), the batch workers' cached network (its cache key
included) and the widget's ``load_model``; the store's provenance and the JSON summaries name it.
``--compile`` is checked with ``torch.compile`` replaced by the identity (building upstream's
``vos_optimized`` predictor is then cheap; what it compiles is upstream's business): the network
built is the compiled class (:func:`~dl_utils.sam2_loader.is_compiled`), and a CPU run says on
stderr, in one line, that compiling there is slow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dl_utils.errors import InputError
from tests.conftest import synthetic_frame
from tests.sam2_fixtures import requires_sam2, tiny_sam2_video  # noqa: F401  (fixture)

CLICK = [{"frame": 0, "object": 1, "label": "square", "points": [[20, 20, 1], [100, 80, 0]]}]
SAM = ["--image-size", "256", "--device", "cpu"]


# ----------------------------------------------------------------------------- parsing (no models)
def _parse(argv: list[str]) -> argparse.Namespace:
    from dl_utils.cli import build_parser

    return build_parser().parse_args(argv)


COMMANDS = {
    "segment": (["segment", "v.mp4", "--out", "s.sqlite", "--prompts", "p.json"], "segment"),
    "annotate": (["annotate", "v.mp4", "--out", "s.sqlite", "--points", "p.json"], "annotate"),
    "detect": (["detect", "v.mp4", "--out", "s.sqlite", "--text", "car", "--segment"], "detect"),
    "batch": (["batch", "v.mp4", "--out", "stores", "--text", "car"], "annotate"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_sam2_command_parses_precision_and_compile(name):
    from dl_utils.drivers.options import SamOptions

    argv, command = COMMANDS[name]
    plain = SamOptions.from_args(_parse(argv), command=command)
    assert plain.precision is None and plain.compile is False  # the device's default, eager
    for p in ("fp32", "bf16", "fp16"):
        got = SamOptions.from_args(_parse(argv + ["--precision", p, "--compile"]), command=command)
        assert got.precision == p and got.compile is True
        assert got.session_kwargs()["dtype"] == p and got.session_kwargs()["compile"] is True


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_argparse_refuses_another_precision(name, capsys):
    argv, _ = COMMANDS[name]
    with pytest.raises(SystemExit) as e:
        _parse(argv + ["--precision", "fp64"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--precision" in err and "invalid choice: 'fp64'" in err and "'fp32', 'bf16', 'fp16'" in err


def test_help_says_the_default_and_what_compile_costs():
    from dl_utils.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in COMMANDS:
        text = " ".join(sub.choices[name].format_help().split())
        assert "default bf16 on CUDA, fp32 on CPU" in text, name
        assert "the first pass compiles (minutes)" in text and "pays off on long videos on a GPU" in text, name
    detect_help = " ".join(sub.choices["detect"].format_help().split())
    assert "--segment: SAM2 compute precision" in detect_help and "--segment: run SAM2 under torch.compile" in detect_help
    # finetune shares the SAM2 model options but keeps its own --compile (the training step's) and --amp
    finetune = sub.choices["finetune"].format_help()
    assert "--precision" not in finetune and "torch.compile the decoder" in finetune
    from dl_utils.drivers.options import SamOptions

    tuned = _parse(["finetune", "s.sqlite", "--out", "t.pt", "--compile"])  # the training step's --compile
    assert tuned.compile is True and SamOptions.from_args(tuned, command="segment").compile is False


def test_sam_options_refuse_a_bad_precision_in_one_line():
    from dl_utils.drivers.options import PRECISIONS, SamOptions, check_precision, precision_label

    assert PRECISIONS == ("fp32", "bf16", "fp16")
    for bad in ("fp64", "bfloat16", 16, ""):
        with pytest.raises(InputError) as e:
            SamOptions(precision=bad)
        msg = str(e.value)
        assert "\n" not in msg and "--precision" in msg and "fp32, bf16, fp16" in msg
    with pytest.raises(InputError, match=r"compile='yes': use True \(--compile\) or False"):
        SamOptions(compile="yes")  # type: ignore[arg-type]
    assert SamOptions(precision=" BF16 ").precision == "bf16" and check_precision(None) is None
    s = SamOptions(precision="fp16", compile=True)
    assert s.engine_kwargs() == {"dtype": "fp16", "compile": True}
    assert {k: s.session_kwargs()[k] for k in ("dtype", "compile")} == {"dtype": "fp16", "compile": True}
    assert precision_label("torch.bfloat16") == "bf16" and precision_label("float16") == "fp16"
    assert precision_label(None) is None


@requires_sam2
def test_the_cpu_note_names_each_slow_gpu_mode():
    """Off CUDA, --compile and --precision fp16 work but are slow: one stderr line names each asked for."""
    from dl_utils.drivers.options import SamOptions

    assert SamOptions(device="cpu").compile_note() is None
    assert SamOptions(device="cpu", precision="bf16").compile_note() is None
    fp16 = SamOptions(device="cpu", precision="fp16").compile_note()
    assert fp16 is not None and "--precision fp16 on cpu" in fp16 and "--compile" not in fp16
    both = SamOptions(device="cpu", precision="fp16", compile=True).compile_note()
    assert both is not None and "--compile on cpu" in both and "fp16" in both and "\n" not in both


def test_the_batch_cache_key_tells_precisions_and_compiled_networks_apart():
    from dl_utils.batch.options import BatchOptions
    from dl_utils.drivers.options import SamOptions

    keys = {BatchOptions(sam=SamOptions(precision=p, compile=c)).cache_key()
            for p in (None, "fp32", "bf16", "fp16") for c in (False, True)}
    assert len(keys) == 8
    # the tracker mode is a per-session setting over the same network: not in the key
    assert BatchOptions(sam=SamOptions(force=True)).cache_key() == BatchOptions().cache_key()


def test_the_options_pickle_to_workers_with_their_gpu_modes():
    import pickle

    from dl_utils.batch.options import BatchOptions
    from dl_utils.drivers.options import SamOptions

    o = BatchOptions(sam=SamOptions(precision="fp16", compile=True))
    back = pickle.loads(pickle.dumps(o))
    assert back.sam.precision == "fp16" and back.sam.compile is True and back.cache_key() == o.cache_key()


# ----------------------------------------------------------------------------- the engines (tiny SAM2)
@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_sam2_video):  # noqa: F811
    """A 2-frame clip, its first frame as an image folder, a click on frame 0, and the tiny checkpoint
    (low precision runs slowly on a CPU: the media are as small as the checks allow)."""
    import torch
    from PIL import Image

    from dl_utils.video_utils import write_video

    root = tmp_path_factory.mktemp("precision")
    ckpt = root / "sam.pt"
    torch.save({"model": tiny_sam2_video.state_dict()}, ckpt)
    clip = Path(write_video(root / "clip.mp4", (synthetic_frame(i) for i in range(2)), fps=30, preset="ultrafast"))
    images = root / "imgs"
    images.mkdir()
    Image.fromarray(synthetic_frame(0)).save(images / "0000.png")
    points = root / "points.json"
    points.write_text(json.dumps(CLICK))
    return {"root": root, "ckpt": ckpt, "clip": clip, "images": images, "points": points}


def _precisions(store_path: Path) -> set[str | None]:
    """The precision every stored instance's provenance records."""
    from dl_utils.store import AnnotationStore

    with AnnotationStore.open(store_path, readonly=True) as st:
        return {inst.provenance.precision if inst.provenance is not None else None
                for obj in st.objects() for inst in st.read_object(obj.id, decode=False).values()}


def _run_cli(argv: list[str], capsys, spy: "_Spy", out: Path, precision: str, stored: str) -> None:
    """Run one command; the engine got ``precision`` (not compiled), the JSON summary names it and
    every stored instance records ``stored``."""
    from dl_utils.cli import main

    assert main([*argv, "--out", str(out), *SAM, "--precision", precision]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert spy.calls[-1]["dtype"] == precision and spy.calls[-1]["compile"] is False
    assert summary["sam2"] == {"model": "sam2.1_hiera_tiny", "precision": precision, "compile": False}
    assert _precisions(out) == {stored}


class _Spy:
    """Records the keywords a SAM2 engine class is built with, then builds the real one."""

    def __init__(self, monkeypatch, module, name: str):
        self.calls: list[dict] = []
        real = getattr(module, name)

        def build(*args, **kwargs):
            self.calls.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, build)


@requires_sam2
def test_segment_cli_bf16_reaches_the_session_the_store_and_the_summary(data, tmp_path, capsys, monkeypatch):
    import dl_utils.drivers.segment as seg

    spy = _Spy(monkeypatch, seg, "VideoSession")
    _run_cli(["segment", str(data["clip"]), "--prompts", str(data["points"]), "--checkpoint", str(data["ckpt"])],
             capsys, spy, tmp_path / "s.sqlite", "bf16", "bfloat16")


@requires_sam2
def test_segment_default_precision_on_cpu_is_fp32(data, tmp_path):
    from dl_utils.drivers.segment import run_segment

    s = run_segment(data["clip"], tmp_path / "s.sqlite", data["points"], checkpoint=data["ckpt"], image_size=256,
                    device="cpu", progress=False)
    assert s["sam2"]["precision"] == "fp32" and _precisions(tmp_path / "s.sqlite") == {"float32"}


@requires_sam2
def test_segment_compile_builds_the_vos_predictor_and_says_so_on_a_cpu(data, tmp_path, capsys, monkeypatch):
    import torch

    from dl_utils.cli import main

    monkeypatch.setattr(torch, "compile", lambda model=None, **kw: model if model is not None else (lambda m: m))
    out = tmp_path / "s.sqlite"
    assert main(["segment", str(data["clip"]), "--out", str(out), "--prompts", str(data["points"]),
                 "--checkpoint", str(data["ckpt"]), *SAM, "--compile"]) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert summary["sam2"] == {"model": "sam2.1_hiera_tiny", "precision": "fp32", "compile": True}
    notes = [line for line in cap.err.splitlines() if "--compile on cpu" in line]
    assert len(notes) == 1 and "first pass compiles" in notes[0] and "long videos on a GPU" in notes[0]
    assert "Compiling all components for VOS setting" in cap.err  # upstream's print kept off the JSON stdout
    assert _precisions(out) == {"float32"}


@requires_sam2
def test_a_given_network_that_is_not_compiled_is_refused_with_compile(data, tmp_path, tiny_sam2_video):  # noqa: F811
    from dl_utils.drivers.segment import run_segment

    with pytest.raises(InputError, match="compile=True only applies when the network is built here") as e:
        run_segment(data["clip"], tmp_path / "s.sqlite", data["points"], sam_model=tiny_sam2_video, compile=True,
                    progress=False)
    assert "\n" not in str(e.value)


@requires_sam2
def test_annotate_and_detect_refuse_compile_with_networks_built_eagerly(data, tmp_path, tiny_sam2_video):  # noqa: F811
    from dl_utils.drivers.annotate import run_annotate
    from dl_utils.drivers.detect import run_detect
    from dl_utils.samal import ImageSegmenter
    from tests.sam2_fixtures import build_tiny

    with pytest.raises(InputError, match="sam_video_model= built eagerly") as e:
        run_annotate(data["clip"], tmp_path / "a.sqlite", points=data["points"], sam_video_model=tiny_sam2_video,
                     compile=True, progress=False)
    assert "\n" not in str(e.value)
    seg = ImageSegmenter(build_tiny())
    with pytest.raises(InputError, match="segmenter= built eagerly"):
        run_detect(data["images"], tmp_path / "d.sqlite", "square", segment=True, detector=_BoxDetector(),
                   segmenter=seg, compile=True, progress=False)
    assert not (tmp_path / "a.sqlite").exists() and not (tmp_path / "d.sqlite").exists()  # before any store


@requires_sam2
def test_annotate_video_and_images_take_the_precision(data, tmp_path, capsys, monkeypatch):
    """Video: the session gets ``--precision`` (fp32 given explicitly: bf16 on video is the segment
    test's, and slow on a CPU); images: fp16 reaches the segmenter and the store."""
    import dl_utils.samal as samal
    import dl_utils.sam2al as sam2al

    video = _Spy(monkeypatch, sam2al, "VideoSession")  # run.open_session imports it from dl_utils.sam2al
    image = _Spy(monkeypatch, samal, "ImageSegmenter")  # SamOptions.image_segmenter imports it from dl_utils.samal
    _run_cli(["annotate", str(data["clip"]), "--points", str(data["points"]), "--sam-checkpoint", str(data["ckpt"]),
              "--direction", "forward"], capsys, video, tmp_path / "v.sqlite", "fp32", "float32")
    _run_cli(["annotate", str(data["images"]), "--points", str(data["points"]), "--sam-checkpoint", str(data["ckpt"])],
             capsys, image, tmp_path / "i.sqlite", "fp16", "float16")


class _BoxDetector:
    """A detector standing in for GroundingDINO: one "square" box per image."""

    name = "box-standin"

    def detect(self, image, prompt=None):
        from dl_utils.dinoal.detections import Detections

        return Detections(boxes=np.array([[10.0, 10.0, 60.0, 50.0]]), scores=[0.9], phrases=["square"],
                          labels=["square"], caption=str(getattr(prompt, "text", prompt) or ""))

    def detect_batch(self, images, prompt=None):
        return [self.detect(im, prompt) for im in images]


@requires_sam2
def test_detect_segment_images_and_tracked_video_take_the_precision(data, tmp_path, monkeypatch):
    """Images: bf16 reaches the segmenter and the store; tracked video: the session gets the
    precision (fp32 given explicitly, low precision on video being slow on a CPU)."""
    import dl_utils.sam2al as sam2al
    from dl_utils.drivers.detect import run_detect

    s = run_detect(data["images"], tmp_path / "i.sqlite", "square", segment=True, detector=_BoxDetector(),
                   sam_checkpoint=data["ckpt"], image_size=256, device="cpu", precision="bf16", progress=False)
    assert s["sam2"] == {"model": "sam2.1_hiera_tiny", "precision": "bf16", "compile": False}
    assert _precisions(tmp_path / "i.sqlite") == {"bfloat16"}
    video = _Spy(monkeypatch, sam2al, "VideoSession")
    s = run_detect(data["clip"], tmp_path / "v.sqlite", "square", segment=True, detector=_BoxDetector(),
                   sam_checkpoint=data["ckpt"], image_size=256, device="cpu", precision="fp32", progress=False)
    assert s["tracked"] and video.calls[0]["dtype"] == "fp32" and s["sam2"]["precision"] == "fp32"
    assert _precisions(tmp_path / "v.sqlite") == {"float32"}


@requires_sam2
def test_detect_cli_parses_the_flags_into_the_driver(data, tmp_path, monkeypatch, capsys):
    import dl_utils.drivers.detect as det
    from dl_utils.cli import main

    seen = {}

    def fake(source, out, text, *, segment, detector_options, sam, track, numbering):
        seen.update(segment=segment, sam=sam)
        return {"store": str(out)}

    monkeypatch.setattr(det, "detect", fake)
    assert main(["detect", str(data["images"]), "--out", str(tmp_path / "d.sqlite"), "--text", "square",
                 "--segment", "--precision", "fp16", "--compile", "--device", "cpu"]) == 0
    assert seen["segment"] and seen["sam"].precision == "fp16" and seen["sam"].compile is True
    err = capsys.readouterr().err
    assert sum("--compile on cpu" in line for line in err.splitlines()) == 1


@requires_sam2
def test_batch_worker_builds_compiled_networks_per_key_and_records_the_precision(data, tmp_path, monkeypatch):
    import torch

    from dl_utils.batch import worker
    from dl_utils.batch.options import BatchOptions
    from dl_utils.batch.plan import plan_from_inputs
    from dl_utils.drivers.options import SamOptions
    from dl_utils.sam2_loader import is_compiled

    monkeypatch.setattr(torch, "compile", lambda model=None, **kw: model if model is not None else (lambda m: m))
    monkeypatch.setattr(worker, "_MODELS", {})
    eager = BatchOptions(sam=SamOptions(checkpoint=data["ckpt"], image_size=256, device="cpu", precision="bf16"))
    compiled = BatchOptions(sam=SamOptions(checkpoint=data["ckpt"], image_size=256, device="cpu", precision="bf16",
                                           compile=True))
    a = worker.models_for(eager, video=True, text=False)["sam_video_model"]
    b = worker.models_for(compiled, video=True, text=False)["sam_video_model"]
    assert not is_compiled(a) and is_compiled(b) and len(worker._MODELS) == 2
    assert worker.models_for(compiled, video=True, text=False)["sam_video_model"] is b  # reused, not rebuilt
    seg = worker.models_for(compiled, video=False, text=False)["segmenter"]
    assert seg.dtype == torch.bfloat16 and is_compiled(seg.model)

    src = dataclasses.replace(plan_from_inputs([str(data["clip"])])[0], points=data["points"])
    r = worker.run_source(src, compiled, tmp_path / "work", tmp_path / "out")
    assert r.status == "done", r.error
    assert _precisions(Path(r.store)) == {"bfloat16"}


@requires_sam2
def test_batch_cli_takes_the_flags_and_says_the_cpu_compile_note_once(data, tmp_path, monkeypatch, capsys):
    import dl_utils.batch.run as batch_run
    from dl_utils.cli import main

    seen = {}

    def fake(sources, options, out, **kw):
        seen["options"] = options
        return []

    monkeypatch.setattr(batch_run, "run_batch", fake)
    assert main(["batch", str(data["clip"]), "--points-dir", str(data["root"]), "--out", str(tmp_path / "o"),
                 "--precision", "fp16", "--compile", "--device", "cpu"]) == 0
    assert seen["options"].sam.precision == "fp16" and seen["options"].sam.compile is True
    err = capsys.readouterr().err
    assert sum("--compile on cpu" in line for line in err.splitlines()) == 1


# ----------------------------------------------------------------------------- the widget
@requires_sam2
def test_widget_load_model_takes_precision_and_compile(data, tmp_path, tiny_sam2_video, monkeypatch):  # noqa: F811
    import torch

    from dl_utils.ipy_utils import Annotator
    from dl_utils.sam2_loader import is_compiled

    ann = Annotator(str(data["clip"]), tmp_path / "v.sqlite", widgets=False, checkpoint=data["ckpt"],
                    image_size=256, device="cpu", precision="fp16")
    assert ann.session is not None and ann.session.dtype == torch.float16
    assert ann.controller.messages[-1] == ("info", "SAM2 ready (sam2.1_hiera_tiny, fp16)")  # the status line

    monkeypatch.setattr(torch, "compile", lambda model=None, **kw: model if model is not None else (lambda m: m))
    imgs = Annotator(str(data["images"]), tmp_path / "i.sqlite", widgets=False)
    assert imgs.load_model(checkpoint=data["ckpt"], image_size=256, device="cpu", precision="bf16", compile=True)
    seg = imgs.engine.segmenter  # type: ignore[union-attr]
    assert seg.dtype == torch.bfloat16 and is_compiled(seg.model)
    assert imgs.precision == "bf16" and imgs.compile is True  # the default of later loads
    assert imgs.controller.messages[-1][1] == "SAM2 ready (image model, bf16, compiled: the first pass compiles)"

    # a network the user built, not compiled, with compile=True: refused in one line, the widget stays usable
    again = Annotator(str(data["clip"]), tmp_path / "w.sqlite", widgets=False)
    assert not again.load_model(sam_model=tiny_sam2_video, compile=True)
    assert again.session is None
    with pytest.raises(InputError, match="compile=True only applies when the network is built here"):
        again.controller.load_model(None, tiny_sam2_video, None, None, compile=True)
    with pytest.raises(InputError, match="--precision 'fp8'"):
        again.controller.load_model(None, tiny_sam2_video, None, None, precision="fp8")
