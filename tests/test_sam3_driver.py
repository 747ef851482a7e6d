"""``--backend sam3`` on the driver path (dl_utils.drivers.run.run_into_store, detect, annotate, the CLI).

With the tiny random-weight SAM 3 models of tests/sam3_fixtures.py injected, the store holds exactly
what the engines give when called directly (masks bit for bit): Sam3ImageEngine on a 3-image set,
Sam3VideoSession on a short clip cut from bedroom.mp4. A store keeps the backend of its first text
run and refuses another; unknown labels, an empty text and a missing checkpoint are one-line errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from tests.conftest import shared_file
from tests.sam3_fixtures import (  # noqa: F401
    requires_sam3,
    tiny_sam3_image_model,
    tiny_sam3_video_model,
)
from tests.test_cli import assert_one_line_error, run_cli

# random weights score every query around 0.2-0.3: these keep some detections and drop others
IMAGE_THRESHOLD = 0.25
VIDEO_THRESHOLD = 0.2
CAPTION = "bed. lamp"
VIDEO_CAPTION = "bed"  # one phrase: the phrases' lockstep is tests/test_sam3al_video.py's (time)
N_FRAMES = 4
SIZE = (128, 72)


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small RGB images (different sizes) in a folder."""
    import cv2

    d = tmp_path_factory.mktemp("sam3images")
    for i, name in enumerate(("truck.jpg", "cars.jpg", "groceries.jpg")):
        bgr = cv2.imread(str(shared_file(name)))
        w = 160 - 16 * i
        h = round(bgr.shape[0] * w / bgr.shape[1])
        cv2.imwrite(str(d / f"{i}.png"), cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA))
    return d


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short, small video cut from bedroom.mp4 with cv2."""
    import cv2

    src = shared_file("bedroom.mp4")
    out = tmp_path_factory.mktemp("sam3clip") / "clip.mp4"
    cap = cv2.VideoCapture(str(src))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, SIZE)
    try:
        for _ in range(N_FRAMES):
            ok, f = cap.read()
            assert ok
            cap.read()  # every other frame: more motion
            writer.write(cv2.resize(f, SIZE, interpolation=cv2.INTER_AREA))
    finally:
        writer.release()
        cap.release()
    return out


@contextlib.contextmanager
def video_on_cpu(model: Any) -> Iterator[None]:
    """sam3's CPU placement patches (tests only, as tests/test_sam3al_video.py runs it), and a
    new-object threshold random weights can pass (restored after: the model is session-wide)."""
    from tests.test_sam3al_video import sam3_cpu_run

    with sam3_cpu_run(), mock.patch.object(model, "new_det_thresh", VIDEO_THRESHOLD):
        yield


def opts(**kw: Any) -> Any:
    from dl_utils.drivers.options import DetectorOptions

    return DetectorOptions(backend="sam3", **kw)


def instances(store: Any, frame: int) -> list[Any]:
    return sorted(store.read_frame(frame), key=lambda x: x.object_id)


# ----------------------------------------------------------------------------- images
@requires_sam3
def test_images_store_what_the_engine_gives(tiny_sam3_image_model: Any, images: Path,  # noqa: F811
                                            tmp_path: Path) -> None:
    from dl_utils.dinoal.caption import parse_caption
    from dl_utils.drivers.run import BACKEND_KEY, run_into_store
    from dl_utils.sam3al.image import Sam3ImageEngine
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames

    engine = Sam3ImageEngine(tiny_sam3_image_model, score_threshold=IMAGE_THRESHOLD)
    with open_frames(images) as src, AnnotationStore.open_or_create(tmp_path / "s.sqlite", src.media_info()) as st:
        with mock.patch("dl_utils.drivers.options.SamOptions.image_segmenter",
                        side_effect=AssertionError("no SAM2 with --backend sam3")):
            res = run_into_store(src, st, prompt=parse_caption(CAPTION),
                                 detector_options=opts(box_threshold=IMAGE_THRESHOLD),
                                 sam3_model=tiny_sam3_image_model, ledger=True, progress=False)
        assert not res["tracked"] and res["text"]["status"] == "done" and res["text"]["frames"] == 3
        total = 0
        for i, frame in enumerate(src.frame_numbers):
            want = engine.segment(src[i], CAPTION)
            got = instances(st, frame)
            assert len(got) == len(want)
            total += len(want)
            for k, inst in enumerate(got):
                assert np.array_equal(inst.mask, want.masks[k])
                assert inst.score == pytest.approx(float(want.scores[k]))
                assert inst.label == want.labels[k]
                assert inst.provenance.engine == "sam3" and inst.provenance.phrase == want.phrases[k]
        assert total > 0 and res["text"]["detections"] == total  # the comparison means something
        assert st.get_meta(BACKEND_KEY) == {"backend": "sam3", "model": "sam3"}


@requires_sam3
def test_image_ledger_keeps_exemplars(tiny_sam3_image_model: Any, images: Path,  # noqa: F811
                                      tmp_path: Path) -> None:
    """The ledger records the boxes each image was detected with: the same boxes again is "done"
    (nothing added), other boxes (or boxes on an image detected without any) a one-line refusal."""
    from dl_utils.dinoal.caption import parse_caption
    from dl_utils.drivers.run import STEPS_KEY, run_into_store
    from dl_utils.errors import InputError
    from dl_utils.sam3al.prompts import Exemplar
    from dl_utils.video_utils import open_frames

    def run(src: Any, st: Any, exs: Any) -> dict[str, Any]:
        return run_into_store(src, st, prompt=parse_caption("bed"),
                              detector_options=opts(box_threshold=IMAGE_THRESHOLD), sam3_model=tiny_sam3_image_model, ledger=True, progress=False, exemplars=exs)

    with open_frames(images) as src, AnnotationStore_open(tmp_path / "s.sqlite", src.media_info()) as st:
        f0, f1 = src.frame_numbers[0], src.frame_numbers[1]
        box = {f0: [Exemplar((10, 10, 60, 50), phrase="bed")]}
        first = run(src, st, box)
        assert first["text"]["frames"] == 3
        recorded = st.get_meta(STEPS_KEY)["text"]["exemplars"]
        assert recorded == {str(f0): [[f0, 10.0, 10.0, 60.0, 50.0, True, "bed"]]}
        n = st.count_instances()
        again = run(src, st, {f0: [Exemplar((10.0, 10.0, 60.0, 50.0), True, "bed")]})
        assert again["text"]["frames"] == 0 and st.count_instances() == n  # same boxes: nothing redone
        with pytest.raises(InputError, match=f"image {f0} is already annotated with 'bed.' with other exemplar"):
            run(src, st, {f0: [Exemplar((12, 10, 60, 50), phrase="bed")]})
        with pytest.raises(InputError, match=f"image {f1} is already annotated .* without exemplar boxes"):
            run(src, st, {f1: [Exemplar((12, 10, 60, 50), phrase="bed")]})
        assert st.count_instances() == n  # refused before anything was written


def AnnotationStore_open(path: Path, media: Any) -> Any:
    from dl_utils.store import AnnotationStore

    return AnnotationStore.open_or_create(path, media)


@requires_sam3
def test_backend_switch_is_refused(tiny_sam3_image_model: Any, images: Path, tmp_path: Path) -> None:  # noqa: F811
    from dl_utils.drivers.annotate import annotate
    from dl_utils.drivers.detect import detect
    from dl_utils.drivers.options import DetectorOptions
    from dl_utils.errors import InputError

    out = tmp_path / "s.sqlite"
    s = detect(images, out, "bed", detector_options=opts(box_threshold=IMAGE_THRESHOLD),
               sam3_model=tiny_sam3_image_model, progress=False)
    assert s["segmented"] and s["frames"] == 3
    built = mock.Mock(side_effect=AssertionError("refused before any model is built"))
    with mock.patch.object(DetectorOptions, "build", built):
        for run in (lambda: detect(images, out, "bed", detector_options=DetectorOptions(), progress=False),
                    lambda: annotate(images, out, text="bed", detector_options=DetectorOptions(), progress=False)):
            with pytest.raises(InputError) as e:
                run()
            msg = str(e.value)
            assert "\n" not in msg
            assert msg == f"{out} was annotated with backend sam3; use a new --out for backend groundingdino"
    # the same backend goes on (a second detect adds to the store)
    s2 = detect(images, out, "bed", detector_options=opts(box_threshold=IMAGE_THRESHOLD),
                sam3_model=tiny_sam3_image_model, progress=False)
    assert s2["frames"] == 3


@requires_sam3
def test_unknown_label_and_empty_text_are_one_line(tiny_sam3_image_model: Any, images: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    from dl_utils.classes import UnknownClassError
    from dl_utils.drivers.detect import detect
    from dl_utils.errors import InputError

    table = tmp_path / "classes.csv"
    table.write_text("name,id,color\nbed,1,#ff0000\n")
    with pytest.raises(UnknownClassError) as e:
        detect(images, tmp_path / "a.sqlite", "unicorn", detector_options=opts(classes=str(table)),
               sam3_model=tiny_sam3_image_model, progress=False)
    assert "unicorn" in str(e.value) and "\n" not in str(e.value)
    for text in ("", " . "):
        with pytest.raises(InputError) as e2:
            detect(images, tmp_path / "b.sqlite", text, detector_options=opts(), sam3_model=tiny_sam3_image_model,
                   progress=False)
        assert "\n" not in str(e2.value)
    with pytest.raises(InputError, match="--text-encoder applies to the groundingdino backend"):
        detect(images, tmp_path / "c.sqlite", "bed", detector_options=opts(text_encoder="bert"), progress=False)
    assert not (tmp_path / "b.sqlite").exists() and not (tmp_path / "c.sqlite").exists()


# ----------------------------------------------------------------------------- video
@requires_sam3
def test_video_stores_what_the_session_gives(tiny_sam3_video_model: Any, clip: Path,  # noqa: F811
                                             tmp_path: Path) -> None:
    from dl_utils.dinoal.caption import parse_caption
    from dl_utils.drivers.options import TrackOptions
    from dl_utils.drivers.run import BACKEND_KEY, run_into_store
    from dl_utils.errors import InputError
    from dl_utils.sam3al.video import Sam3VideoOptions, Sam3VideoSession
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames

    model = tiny_sam3_video_model
    with open_frames(clip) as src, video_on_cpu(model):
        assert src.kind == "video"
        media = src.media_info()
        with AnnotationStore.open_or_create(tmp_path / "ref.sqlite", media) as ref:
            sess = Sam3VideoSession(model, src, ref, VIDEO_CAPTION, on_unknown="error", model_name="sam3",
                                    options=Sam3VideoOptions(score_threshold_detection=VIDEO_THRESHOLD))
            try:
                direct = sess.propagate()
            finally:
                sess.close()
            want = {f: instances(ref, f) for f in media.frames}
        seen: list[int] = []
        with AnnotationStore.open_or_create(tmp_path / "s.sqlite", media) as st:
            with mock.patch("dl_utils.drivers.run.open_session",
                            side_effect=AssertionError("no SAM2 session with --backend sam3")):
                res = run_into_store(src, st, prompt=parse_caption(VIDEO_CAPTION), ledger=True, progress=False,
                                     detector_options=opts(box_threshold=VIDEO_THRESHOLD),
                                     sam3_video_model=model, callback=lambda f, _: seen.append(f))
            text = res["text"]
            assert res["tracked"] and text["status"] == "done" and text["engine"] == "sam3"
            assert text["frames"] == N_FRAMES == len(seen) and text["detections"] == direct["instances_written"]
            assert text["objects"] == direct["objects"] and len(text["objects"]) > 0
            n = 0
            for f in media.frames:
                got = instances(st, f)
                assert [x.object_id for x in got] == [x.object_id for x in want[f]]
                for a, b in zip(got, want[f]):
                    assert np.array_equal(a.mask, b.mask) and a.score == b.score and a.label == b.label
                    assert a.provenance.extra["sam3_id"] == b.provenance.extra["sam3_id"]
                    n += 1
            assert n > 0
            assert st.get_meta(BACKEND_KEY)["backend"] == "sam3"
            # finished: a second run is skipped by the ledger
            again = run_into_store(src, st, prompt=parse_caption(VIDEO_CAPTION), ledger=True, progress=False,
                                   detector_options=opts(box_threshold=VIDEO_THRESHOLD), sam3_video_model=model)
            assert again["text"]["status"] == "already done"
            # ... but not with exemplar boxes it was not run with: skipping would drop them silently
            from dl_utils.sam3al.prompts import Exemplar

            with pytest.raises(InputError, match="already annotated with 'bed.' without exemplar boxes"):
                run_into_store(src, st, prompt=parse_caption(VIDEO_CAPTION), ledger=True, progress=False,
                               detector_options=opts(box_threshold=VIDEO_THRESHOLD), sam3_video_model=model,
                               exemplars={media.frames[0]: [Exemplar((4, 4, 40, 30))]})
            # clicks with SAM 3 on video, --every: one-line refusals before anything runs
            click = {"frame": media.frames[0], "object": 99, "label": "bed", "points": [[10, 10, 1]], "box": None}
            with pytest.raises(InputError, match="is not an object SAM 3 made"):
                run_into_store(src, st, prompt=parse_caption(CAPTION), clicks=[click], progress=False,
                               detector_options=opts(), sam3_video_model=model)
            with pytest.raises(InputError, match="SAM 3 detects on every frame"):
                run_into_store(src, st, prompt=parse_caption(CAPTION), progress=False, detector_options=opts(),
                               track=TrackOptions(every=5), sam3_video_model=model)


# ----------------------------------------------------------------------------- options and CLI
def test_options_sam3() -> None:
    import argparse
    import pickle

    from dl_utils.batch.options import BatchOptions
    from dl_utils.drivers.options import DetectorOptions, EngineDefault
    from dl_utils.errors import InputError

    p = argparse.ArgumentParser()
    DetectorOptions.add_arguments(p, command="annotate")
    o = DetectorOptions.from_args(p.parse_args(["--backend", "sam3", "--bpe", "v.txt.gz"]))
    assert o.backend == "sam3" and str(o.bpe) == "v.txt.gz" and o.model_label == "sam3"
    assert isinstance(o.box_threshold, EngineDefault) and o.sam3_score_threshold() is None
    typed = DetectorOptions.from_args(p.parse_args(["--backend", "sam3", "--box-threshold", "0.35"]))
    assert typed.sam3_score_threshold() == 0.35
    assert BatchOptions(detector=o).cache_key() != BatchOptions(detector=typed).cache_key()
    back = pickle.loads(pickle.dumps(o))  # batch ships the options to workers
    assert isinstance(back.box_threshold, EngineDefault) and back.box_threshold == o.box_threshold
    with pytest.raises(InputError, match="--bpe is the sam3 backend's"):
        DetectorOptions(bpe="v.txt.gz").check_sam3()
    with pytest.raises(InputError, match="--detector-size applies to the groundingdino backend"):
        DetectorOptions(backend="sam3", detector_size=640).check_sam3()


def test_cli_accepts_backend_sam3(tmp_path: Path) -> None:
    for cmd in ("detect", "annotate", "batch"):
        proc = run_cli(cmd, "--help")
        assert proc.returncode == 0 and "sam3" in proc.stdout and "--bpe" in proc.stdout, cmd
    img = tmp_path / "imgs"
    img.mkdir()
    import cv2

    cv2.imwrite(str(img / "0.png"), np.zeros((16, 16, 3), np.uint8))
    proc = run_cli("detect", str(img), "--text", "bed", "--out", str(tmp_path / "s.sqlite"),
                   "--backend", "sam3", "--model", "/nonexistent")
    assert_one_line_error(proc, "/nonexistent", "does not exist")
    assert not (tmp_path / "s.sqlite").exists()


# ----------------------------------------------------------------------------- auto-annotation and batch
@requires_sam3
def test_auto_annotation_sends_sam3_masks(tiny_sam3_image_model: Any, images: Path) -> None:  # noqa: F811
    from PIL import Image

    from dl_utils.auto_annotation import GroundedSamFunction
    from dl_utils.cv_utils import encode_cvat_rle
    from dl_utils.sam3al.image import Sam3ImageEngine

    det = opts(box_threshold=IMAGE_THRESHOLD).sam3_detector(tiny_sam3_image_model)
    fn = GroundedSamFunction(det, None, labels=["bed", "lamp"], prompt=CAPTION, shape="mask", masks=True)
    rgb = np.array(Image.open(images / "0.png").convert("RGB"))
    shapes = fn.detect(None, Image.fromarray(rgb))
    want = Sam3ImageEngine(tiny_sam3_image_model, score_threshold=IMAGE_THRESHOLD).segment(rgb, CAPTION)
    kept = [k for k in range(len(want)) if want.masks[k].any()]
    assert len(shapes) == len(kept) > 0
    for s, k in zip(shapes, kept):
        assert s.type.value == "mask" and list(s.points) == [float(v) for v in encode_cvat_rle(want.masks[k])]


def test_auto_annotation_sam3_missing_model_is_one_line() -> None:
    from dl_utils.auto_annotation import create
    from dl_utils.errors import ModelError

    with pytest.raises(ModelError) as e:
        create("bed", backend="sam3", model="/nonexistent/sam3.pt")
    assert "/nonexistent/sam3.pt" in str(e.value) and "\n" not in str(e.value)


def test_batch_workers_build_sam3_alone(tmp_path: Path) -> None:
    from dl_utils.batch import worker
    from dl_utils.batch.options import BatchOptions
    from dl_utils.batch.plan import BatchSource
    from dl_utils.drivers.options import DetectorOptions, SamOptions
    from dl_utils.drivers.run import BACKEND_KEY, mark
    from dl_utils.store import AnnotationStore

    o = BatchOptions(detector=DetectorOptions(backend="sam3"))
    with mock.patch.object(DetectorOptions, "build_sam3", side_effect=lambda kind="image": f"sam3-{kind}"), \
            mock.patch.object(SamOptions, "image_segmenter", side_effect=lambda: "sam2-images"), \
            mock.patch.dict(worker._MODELS, clear=True), \
            mock.patch("dl_utils.sam2_loader.build_sam2_model", side_effect=AssertionError("no SAM2 video")):
        assert worker.models_for(o, video=True, text=True, points=False) == {"sam3_video_model": "sam3-video"}
        assert worker.models_for(o, video=False, text=True, points=False) == {"sam3_model": "sam3-image"}
        assert worker.models_for(o, video=False, text=True, points=True) == {"sam3_model": "sam3-image",
                                                                              "segmenter": "sam2-images"}
        assert worker.models_for(o, video=True, text=True, points=True) == {"sam3_video_model": "sam3-video"}
        assert worker.models_for(o, video=True, text=False, points=True) == {"sam3_video_model": "sam3-video"}
    # a store finished by another backend is not skipped as done: the run refuses it and says why
    from dl_utils.annotations import MediaInfo

    path = tmp_path / "s.sqlite"
    with AnnotationStore.create(path, MediaInfo(name="s", width=8, height=8, frames=[0])) as st:
        mark(st, "text", status="done", prompt="bed.")
        st.set_meta(BACKEND_KEY, {"backend": "groundingdino", "model": "groundingdino"})
    src = BatchSource(source=tmp_path / "s", name="s", store_name="s.sqlite", text="bed")
    assert worker.store_done(path, src, "groundingdino") and worker.store_done(path, src)
    assert not worker.store_done(path, src, "sam3")


@requires_sam3
def test_models_built_from_files_without_injection(tiny_sam3_video_model: Any, images: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    """``--model FILE --bpe FILE``: DetectorOptions.build_sam3 resolves the files, builds and loads
    strictly (at the tiny spec here: OFFICIAL patched), and detect runs on what it built."""
    import torch

    from dl_utils.drivers.detect import detect
    from dl_utils.sam3al.image import Sam3ImageEngine
    from dl_utils.store import AnnotationStore
    from dl_utils.video_utils import open_frames
    from tests.sam3_fixtures import tiny_bpe_path, tiny_spec

    ckpt = tmp_path / "sam3_tiny.pt"
    torch.save({"model": tiny_sam3_video_model.state_dict()}, ckpt)  # the release's layout
    o = opts(model=str(ckpt), bpe=str(tiny_bpe_path()), device="cpu", box_threshold=IMAGE_THRESHOLD)
    # the tiny spec for OFFICIAL, and the tiny vocabulary passes the check of the real one's size
    with mock.patch("dl_utils.sam3al.build.OFFICIAL", tiny_spec()), \
            mock.patch("dl_utils.sam3_weights._check_bpe", lambda p, **kw: p):
        video = o.build_sam3("video")
        want = tiny_sam3_video_model.state_dict()
        assert all(torch.equal(v, want[k]) for k, v in video.state_dict().items())
        image = o.build_sam3("image")
        out = tmp_path / "s.sqlite"
        s = detect(images, out, "bed", detector_options=o, progress=False)
    assert s["frames"] == 3 and s["segmented"]
    engine = Sam3ImageEngine(image, score_threshold=IMAGE_THRESHOLD)
    with open_frames(images) as src, AnnotationStore.open(out) as st:
        for i, f in enumerate(src.frame_numbers):
            d = engine.segment(src[i], "bed")
            got = instances(st, f)
            assert len(got) == len(d) and all(np.array_equal(g.mask, d.masks[k]) for k, g in enumerate(got))
            assert all(g.provenance.detector == str(ckpt) for g in got)
