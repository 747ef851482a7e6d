"""``dl-utils finetune`` / ``evaluate`` and how a fine-tuned checkpoint is found again.

The sidecar (``tuned.pt.json``) names the base model and input size, so ``--checkpoint tuned.pt``
alone works in ``segment``, ``detect --segment``, ``annotate``, the widget and the auto-annotation
function; ``models list`` shows the local fine-tuned checkpoints. SAM2 runs with random weights
(nothing can be downloaded in tests), built from the real tiny config at 256 px.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import pytest

from dl_utils.cli import build_parser, main
from dl_utils.errors import InputError, ModelError
from dl_utils.models import (
    FINETUNE_FORMAT,
    finetuned_info,
    list_finetuned,
    register_finetuned,
    resolve_finetuned,
    sha256_file,
)

ROOT = Path(__file__).resolve().parent.parent
TINY = "sam2.1_hiera_tiny"
HAVE_FINETUNE = importlib.util.find_spec("dl_utils.finetune.train") is not None
HAVE_EVALUATE = importlib.util.find_spec("dl_utils.finetune.evaluate") is not None


@pytest.fixture(autouse=True)
def _models_dir(tmp_path, monkeypatch):
    """Registry and registry checkpoints in the test's folder, never the user's cache."""
    d = tmp_path / "models"
    d.mkdir()
    monkeypatch.setenv("DL_UTILS_MODELS", str(d))
    return d


def write_sidecar(ckpt: Path, base: str = TINY, image_size: int | None = 256, **extra: object) -> Path:
    """A sidecar as ``dl-utils finetune`` writes it (the fields loading and listing read)."""
    doc = {"format": FINETUNE_FORMAT, "version": 1, "base_model": base, "image_size": image_size,
           "steps": 3, "iou_before": 0.5, "iou_after": 0.6, **extra}
    side = Path(str(ckpt) + ".json")
    side.write_text(json.dumps(doc))
    return side


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    full.pop("DL_UTILS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dl_utils", *args], capture_output=True, text=True, env=full,
                          timeout=600)


# ----------------------------------------------------------------------------- the options
def _help(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[command].format_help()  # type: ignore[attr-defined]


def test_finetune_help_lists_every_option_with_its_default():
    text = _help("finetune")
    for flag in ("--model", "--checkpoint", "--image-size", "--out", "--folder", "--select", "--device"):
        assert flag in text, flag
    if not HAVE_FINETUNE:
        pytest.skip("dl_utils.finetune.train (TrainOptions) has not landed yet")
    from dataclasses import is_dataclass

    from dl_utils.finetune.train import TrainOptions

    for f in fields(TrainOptions):
        if f.name in ("image_size", "device", "select"):  # --image-size, --device: the base's; --select: data's
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        if is_dataclass(default):  # the click sampling: one option per field
            for g in fields(default):
                assert f"--{f.name}-{g.name}".replace("_", "-") in text, (f.name, g.name)
        elif f.name == "cache_max_bytes":
            assert "--cache-max-gb" in text
        else:
            assert "--" + f.name.replace("_", "-") in text, f.name
    for flag in ("--steps", "--batch-size", "--lr", "--accumulate", "--val-fraction", "--seed",
                 "--checkpoint-every", "--cache-dir", "--cache-max-gb", "--train-memory", "--restart"):
        assert flag in text, flag
    steps = next(f for f in fields(TrainOptions) if f.name == "steps")
    assert steps.default is not MISSING and f"default: {steps.default}" in " ".join(text.split())


def test_evaluate_help_and_required_checkpoint(capsys):
    text = _help("evaluate")
    for flag in ("--checkpoint", "--folder", "--select", "--split", "--sheet", "--json"):
        assert flag in text, flag
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["evaluate", "a.sqlite"])
    assert e.value.code == 2 and "--checkpoint" in capsys.readouterr().err


def test_options_reach_train_options(tmp_path):
    """Each option lands in its TrainOptions field (GiB -> bytes, the click sampling, --select, the size)."""
    if not HAVE_FINETUNE:
        pytest.skip("dl_utils.finetune.train (TrainOptions) has not landed yet")
    from dl_utils.drivers.finetune import train_options
    from dl_utils.drivers.options import SamOptions

    args = build_parser().parse_args([
        "finetune", "a.sqlite", "--out", str(tmp_path / "t.pt"), "--steps", "7", "--batch-size", "3",
        "--lr", "0.001", "--accumulate", "2", "--val-fraction", "0.3", "--seed", "5", "--checkpoint-every", "4",
        "--cache-dir", str(tmp_path / "c"), "--cache-max-gb", "0.5", "--select", "all", "--image-size", "512",
        "--sampling-points", "2", "4", "--no-amp", "--restart"])
    o = train_options(args, SamOptions.from_args(args, command="segment"))
    assert (o.steps, o.batch_size, o.lr, o.accumulate, o.val_fraction, o.seed, o.checkpoint_every) == (
        7, 3, 0.001, 2, 0.3, 5, 4)
    assert o.cache_dir == str(tmp_path / "c") and o.cache_max_bytes == 1 << 29 and o.select == "all"
    assert o.image_size == 512 and o.sampling.points == (2, 4) and o.amp is False and args.restart
    default = train_options(build_parser().parse_args(["finetune", "--out", "t.pt"]), SamOptions())
    from dl_utils.finetune.train import TrainOptions

    assert default == TrainOptions()


def test_finetune_without_data_is_one_line_error(tmp_path, capsys):
    if not HAVE_FINETUNE:
        pytest.skip("dl_utils.finetune has not landed yet")
    assert main(["finetune", "--out", str(tmp_path / "t.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "STORE" in err[0] and "--folder" in err[0]
    assert main(["finetune", str(tmp_path / "nope.sqlite"), "--out", str(tmp_path / "t.pt")]) == 1
    assert "nope.sqlite" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the sidecar, read in one place
def test_sidecar_fills_model_and_size_and_refuses_a_contradiction(tmp_path):
    ckpt = tmp_path / "tuned.pt"
    ckpt.write_bytes(b"weights")
    assert resolve_finetuned(None, ckpt, None) == (None, None)  # no sidecar: an official file
    write_sidecar(ckpt, base="sam2.1_hiera_small", image_size=512)
    info = finetuned_info(ckpt)
    assert info is not None and info.base_model == "sam2.1_hiera_small" and info.image_size == 512
    assert info.improved is True
    assert resolve_finetuned(None, ckpt, None) == ("sam2.1_hiera_small", 512)
    assert resolve_finetuned("small", str(ckpt), 1024) == ("small", 1024)  # an alias is the same model
    with pytest.raises(ModelError) as e:
        resolve_finetuned("sam2.1_hiera_tiny", ckpt, None)
    assert "sam2.1_hiera_tiny" in str(e.value) and "sam2.1_hiera_small" in str(e.value)
    assert "tuned.pt" in str(e.value)
    assert resolve_finetuned("large", None, None) == ("large", None)


def test_sidecar_that_is_not_ours_is_ignored_and_a_broken_one_is_named(tmp_path):
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights")
    side = Path(str(ckpt) + ".json")
    side.write_text(json.dumps({"something": "else"}))
    assert finetuned_info(ckpt) is None
    side.write_text("{not json")
    with pytest.raises(ModelError, match="w.pt.json"):
        finetuned_info(ckpt)
    side.write_text(json.dumps({"format": FINETUNE_FORMAT, "base_model": ""}))
    with pytest.raises(ModelError, match="base_model"):
        finetuned_info(ckpt)
    write_sidecar(ckpt, image_size="big")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="image_size"):
        finetuned_info(ckpt)


@pytest.mark.parametrize("command, flag", [("segment", "--checkpoint"), ("detect", "--sam-checkpoint"),
                                           ("annotate", "--sam-checkpoint")])
def test_every_command_takes_the_base_from_the_sidecar(tmp_path, command, flag):
    from dl_utils.drivers.options import SamOptions

    ckpt = tmp_path / "tuned.pt"
    ckpt.write_bytes(b"weights")
    write_sidecar(ckpt, base="sam2.1_hiera_small", image_size=512)
    head = {"segment": ["--prompts", "p.json"], "detect": ["--text", "car"], "annotate": ["--text", "car"]}[command]
    args = build_parser().parse_args([command, "x.mp4", "--out", "o.sqlite", *head, flag, str(ckpt)])
    sam = SamOptions.from_args(args, command=command)
    assert (sam.model_name, sam.image_size) == ("sam2.1_hiera_small", 512)
    model_flag = "--model" if command == "segment" else "--sam-model"
    args = build_parser().parse_args([command, "x.mp4", "--out", "o.sqlite", *head, flag, str(ckpt),
                                      model_flag, TINY])
    with pytest.raises(ModelError, match="sam2.1_hiera_small"):
        SamOptions.from_args(args, command=command)
    # without a checkpoint nothing changes: segment's default model is still the default
    args = build_parser().parse_args([command, "x.mp4", "--out", "o.sqlite", *head])
    assert SamOptions.from_args(args, command=command).model_name == TINY


def test_auto_annotation_and_library_calls_resolve_through_the_options(tmp_path):
    """``auto_annotation.create(sam2_checkpoint=...)`` and the drivers build ``SamOptions``: one reader."""
    from dl_utils.drivers.options import SamOptions

    ckpt = tmp_path / "tuned.pt"
    ckpt.write_bytes(b"weights")
    write_sidecar(ckpt, base="sam2.1_hiera_base_plus", image_size=None)
    s = SamOptions(checkpoint=str(ckpt), image_size=320)
    assert (s.model_name, s.image_size) == ("sam2.1_hiera_base_plus", 320)


def test_auto_annotation_function_takes_the_base_from_the_sidecar(tmp_path, monkeypatch):
    """``cvat-cli ... -p sam2_checkpoint=str:tuned.pt``: the SAM2 the function builds is the tuned one's base."""
    pytest.importorskip("cvat_sdk")
    from dl_utils import auto_annotation
    from dl_utils.drivers.options import DetectorOptions, SamOptions

    class Detector:
        def resolve_prompt(self, text):
            from dl_utils.dinoal.caption import parse_caption

            return parse_caption(text)

    built = []
    monkeypatch.setattr(DetectorOptions, "build", lambda self, table=None: Detector())
    monkeypatch.setattr(SamOptions, "image_segmenter", lambda self: built.append(self) or object())
    ckpt = tmp_path / "tuned.pt"
    ckpt.write_bytes(b"weights")
    write_sidecar(ckpt, base="sam2.1_hiera_small", image_size=512)
    auto_annotation.create("bed", sam2_checkpoint=str(ckpt))
    assert (built[0].model_name, built[0].image_size, built[0].checkpoint) == ("sam2.1_hiera_small", 512, str(ckpt))
    with pytest.raises(ModelError, match="sam2.1_hiera_small"):
        auto_annotation.create("bed", sam2="tiny", sam2_checkpoint=str(ckpt))


# ----------------------------------------------------------------------------- the local registry
def test_registry_and_models_list(tmp_path, _models_dir, capsys):
    ckpt = tmp_path / "tuned.pt"
    ckpt.write_bytes(b"weights")
    write_sidecar(ckpt, iou_before=0.412, iou_after=0.634)
    info = finetuned_info(ckpt)
    assert info is not None
    reg = register_finetuned(info, date="2026-12-07T08:00:00+00:00")
    assert reg == _models_dir / "finetuned.json"
    register_finetuned(info, date="2026-12-07T09:00:00+00:00")  # a rerun replaces its entry
    rows = list_finetuned()
    assert len(rows) == 1 and rows[0]["present"] and rows[0]["base_model"] == TINY
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "sam2.1_hiera_small" in out  # the registry table is still there
    line = next(ln for ln in out.splitlines() if str(ckpt.resolve()) in ln)
    assert TINY in line and "41.2% -> 63.4%" in line and "2026-12-07" in line and line.rstrip().endswith("ok")
    ckpt.unlink()
    assert main(["models", "list"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if str(ckpt.resolve()) in ln)
    assert line.rstrip().endswith("missing")
    assert main(["models", "list", "--json"]) == 0
    by_name = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    tuned = by_name[str(ckpt.resolve())]
    assert tuned["family"] == "sam2-finetuned" and tuned["present"] is False and TINY in by_name


def test_unreadable_registry_is_one_line_error(_models_dir, capsys):
    (_models_dir / "finetuned.json").write_text("[oops")
    assert main(["models", "list"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finetuned.json" in err[0]


# ----------------------------------------------------------------------------- tuned weights in the engines
def _tuned_random(tmp_path: Path, seed: int = 7, video: bool = True) -> Path:
    """An official-format file of tiny random weights (not the fixtures' seed) with a sidecar."""
    import torch

    from tests.sam2_fixtures import build_tiny

    ckpt = tmp_path / "tuned.pt"
    torch.save({"model": build_tiny(seed=seed, video=video).state_dict()}, ckpt)
    write_sidecar(ckpt, base=TINY, image_size=256)
    return ckpt


def test_segment_loads_a_tuned_checkpoint_without_model(bedroom_mp4, tmp_path):
    """``segment --checkpoint tuned.pt``: base model and 256 px from the sidecar, the tuned weights used."""
    from tests.sam2_fixtures import HAVE_SAM2, SKIP_REASON

    if not HAVE_SAM2:
        pytest.skip(SKIP_REASON)
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames, write_video

    clip = write_video(tmp_path / "clip.mp4", open_frames(bedroom_mp4, stop=3, resize=(320, 180)), fps=30,
                       preset="ultrafast")
    ckpt = _tuned_random(tmp_path)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"frame": 0, "object": 1, "label": "bed", "points": [[150, 120, 1]]}]))
    store = tmp_path / "seg.sqlite"
    env = {"DL_UTILS_MODELS": os.environ["DL_UTILS_MODELS"]}
    proc = run_cli("segment", str(clip), "--out", str(store), "--prompts", str(prompts), "--checkpoint", str(ckpt),
                   "--device", "cpu", env=env)
    assert proc.returncode == 0, proc.stderr
    with AnnotationStore.open(store, readonly=True) as st:
        insts = list(st.read_frame(0))
        assert insts and insts[0].provenance is not None
        assert insts[0].provenance.model == TINY
    # the tuned file was the one loaded, strictly: the first strict load records its digest beside it
    assert Path(str(ckpt) + ".sha256").read_text().split()[0] == sha256_file(ckpt)
    bad = run_cli("segment", str(clip), "--out", str(tmp_path / "b.sqlite"), "--prompts", str(prompts),
                  "--checkpoint", str(ckpt), "--model", "small", "--device", "cpu", env=env)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "small" in bad.stderr and TINY in bad.stderr and "tuned.pt" in bad.stderr


def test_widget_loads_a_tuned_checkpoint(tmp_path):
    """``Annotator(..., checkpoint=tuned.pt)``: the base model and size come from the sidecar."""
    from tests.sam2_fixtures import HAVE_SAM2, SKIP_REASON, test_image

    if not HAVE_SAM2:
        pytest.skip(SKIP_REASON)
    from dl_utils.cv_utils import save_image
    from dl_utils.ipy_utils import Annotator

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        save_image(folder / f"im{i}.png", test_image(seed=i))
    ckpt = _tuned_random(tmp_path, video=False)
    ann = Annotator(str(folder), str(tmp_path / "w.sqlite"), checkpoint=str(ckpt), device="cpu", widgets=False)
    engine = ann.controller.engine
    assert engine is not None
    net = engine.segmenter.model  # type: ignore[attr-defined]
    assert net.dl_utils_name == TINY and net.image_size == 256
    assert net.dl_utils_checkpoint == str(ckpt) and net.dl_utils_sha256 == sha256_file(ckpt)


def test_stores_and_a_folder_pair_make_one_dataset(tmp_path):
    """``finetune STORE --folder ROOT``: both sources in one dataset; a split file or a tuned checkpoint
    picks the val side for ``evaluate --split``."""
    if not HAVE_FINETUNE:
        pytest.skip("dl_utils.finetune has not landed yet")
    from dl_utils.cv_utils import save_image
    from dl_utils.drivers.finetune import _val_only, load_dataset
    from dl_utils.splits import Split

    store = _reviewed_store(tmp_path / "people.sqlite", frames=3)
    root = tmp_path / "pair"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(2):
        save_image(root / "images" / f"im{k}.png", np.full((40, 50, 3), 90, np.uint8))
        m = np.zeros((40, 50), np.uint8)
        m[10:30, 10:30] = 255
        save_image(root / "masks" / f"im{k}.png", m)
    both = load_dataset([store], root)
    assert len(both) == len(load_dataset([store], None)) + len(load_dataset([], root)) == 5
    groups = sorted(both.groups())
    Split(train=tuple(groups[1:]), val=(groups[0],), seed=0, val_fraction=0.5, by="item").save(tmp_path / "s.json")
    assert {s.ref.group for s in _val_only(both, tmp_path / "s.json")} == {groups[0]}
    ckpt = tmp_path / "t.pt"
    ckpt.write_bytes(b"w")
    write_sidecar(ckpt, split={"train": groups[1:], "val": groups[:1], "seed": 0, "val_fraction": 0.5,
                               "by": "item"})
    assert len(_val_only(both, ckpt)) == len(_val_only(both, tmp_path / "s.json"))


# ----------------------------------------------------------------------------- the loop, end to end
def _reviewed_store(path: Path, frames: int = 6, size: tuple[int, int] = (96, 128)) -> Path:
    """A store of people's masks (imported: they count as reviewed) of shapes on texture."""
    from dl_utils.annotations import Instance, Provenance
    from dl_utils.cv_utils import save_image
    from dl_utils.store import AnnotationStore

    h, w = size
    rng = np.random.default_rng(0)
    folder = path.parent / (path.stem + "_frames")
    folder.mkdir()
    masks = []
    y, x = np.mgrid[0:h, 0:w]
    for k in range(frames):
        img = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
        cx, cy, r = 30 + 10 * k, 40 + 3 * k, 14
        m = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        img[m] = (220, 40, 40)
        save_image(folder / f"f{k:03d}.png", img)
        masks.append(m)
    from dl_utils.video_utils import open_frames

    src = open_frames(str(folder))
    media = src.media_info()
    with AnnotationStore.create(path, media) as st:
        obj = st.add_object("disc")
        for n, m in zip(src.frame_numbers, masks):
            st.write_frame(n, [Instance(obj.id, mask=m, provenance=Provenance(engine="import"))])
    return path


@pytest.mark.skipif(not (HAVE_FINETUNE and HAVE_EVALUATE),
                    reason="waits for dl_utils.finetune (train, data) and dl_utils.finetune.evaluate")
def test_finetune_then_segment_models_list_and_evaluate(tmp_path, _models_dir):
    """The loop's commands: finetune a few steps -> tuned.pt + sidecar -> registered -> evaluate table."""
    from tests.sam2_fixtures import HAVE_SAM2, SKIP_REASON, build_tiny

    if not HAVE_SAM2:
        pytest.skip(SKIP_REASON)
    import torch

    torch.save({"model": build_tiny(video=True).state_dict()}, _models_dir / f"{TINY}.pt")  # "downloaded"
    store = _reviewed_store(tmp_path / "people.sqlite")
    out = tmp_path / "tuned.pt"
    env = {"DL_UTILS_MODELS": str(_models_dir)}
    proc = run_cli("finetune", str(store), "--model", TINY, "--image-size", "256", "--out", str(out),
                   "--steps", "4", "--batch-size", "2", "--val-fraction", "0.34", "--checkpoint-every", "2",
                   "--device", "cpu", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "val mean IoU: before" in proc.stdout
    assert ("better: +" in proc.stdout) != ("NOT better" in proc.stdout)
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["format"] == FINETUNE_FORMAT and side["base_model"] == TINY and side["image_size"] == 256
    assert side["sha256"] == sha256_file(out)
    sd = torch.load(out, map_location="cpu", weights_only=True)
    assert set(sd) == {"model"}
    again = run_cli("finetune", str(store), "--model", TINY, "--image-size", "256", "--out", str(out),
                    "--steps", "4", "--batch-size", "2", "--val-fraction", "0.34", "--checkpoint-every", "2",
                    "--device", "cpu", env=env)  # the same run again: resumes at its end, same weights
    assert again.returncode == 0, again.stderr
    assert "already trained" in again.stdout
    sd_again = torch.load(out, map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(sd_again[k], v) for k, v in sd["model"].items())
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["sha256"] == sha256_file(out)
    listed = run_cli("models", "list", env=env)
    assert listed.returncode == 0 and str(out.resolve()) in listed.stdout
    # segment with the tuned file alone: base model and 256 px from the sidecar, its weights in provenance
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"frame": 0, "object": 1, "label": "disc", "points": [[30, 40, 1]]}]))
    record = Path(str(out) + ".sha256")
    record.unlink()  # written again by the first strict load of tuned.pt: the proof that it was loaded
    seg = run_cli("segment", str(tmp_path / "people_frames"), "--out", str(tmp_path / "seg.sqlite"),
                  "--prompts", str(prompts), "--checkpoint", str(out), "--device", "cpu", env=env)
    assert seg.returncode == 0, seg.stderr
    from dl_utils.store import AnnotationStore

    with AnnotationStore.open(tmp_path / "seg.sqlite", readonly=True) as st:
        prov = next(iter(st.read_frame(st.frames()[0]))).provenance
        assert prov is not None and prov.model == TINY
    assert record.read_text().split()[0] == side["sha256"]
    # evaluate the base (a registry name) against the tuned file on the val side of the run's split
    ev = run_cli("evaluate", str(store), "--checkpoint", TINY, "--checkpoint", str(out), "--split", str(out),
                 "--device", "cpu", "--json", str(tmp_path / "ev.json"), env=env)
    assert ev.returncode == 0, ev.stderr
    assert TINY in ev.stdout and "tuned" in ev.stdout and "mean IoU" in ev.stdout
    assert json.loads((tmp_path / "ev.json").read_text())


def test_finetune_split_file_reaches_the_trainer(tmp_path, monkeypatch):
    """``finetune --split FILE`` trains with the saved split (a ``dataset split`` file with a test side);
    without it the trainer makes its own (``split=None``)."""
    if not HAVE_FINETUNE:
        pytest.skip("dl_utils.finetune.train has not landed yet")
    import dl_utils.drivers.finetune as drv
    import dl_utils.finetune.train as train
    from dl_utils.splits import Split

    split_file = Split(train=("a.mp4",), val=("b.mp4",), test=("c.mp4",), seed=3, val_fraction=0.25,
                       by="group").save(tmp_path / "split.json")
    seen: list[object] = []

    class _Stop(Exception):
        pass

    def fake_finetune(dataset, **kw):
        seen.append(kw["split"])
        raise _Stop

    monkeypatch.setattr(train, "finetune", fake_finetune)
    monkeypatch.setattr(drv, "load_dataset", lambda *a, **k: object())
    for extra, want in ((["--split", str(split_file)], Split.load(split_file)), ([], None)):
        args = build_parser().parse_args(["finetune", "x.sqlite", "--out", str(tmp_path / "t.pt"), *extra])
        with pytest.raises(_Stop):
            drv._run_finetune_cli(args)
        assert seen[-1] == want
    assert seen[0].test == ("c.mp4",)  # type: ignore[attr-defined]
    args = build_parser().parse_args(["finetune", "x.sqlite", "--out", str(tmp_path / "t.pt"),
                                      "--split", str(tmp_path / "missing.json")])
    with pytest.raises(InputError, match="missing.json"):
        drv._run_finetune_cli(args)
