"""Notebooks run top to bottom (they are thin drivers: a failure here is an API drift)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, SHARED_DATA
from tests.cvat_standin.fixtures import cvat_server  # noqa: F401  (fixture)

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def run_notebook(name: str, tmp_path: Path) -> "nbformat.NotebookNode":
    """Execute a copy laid out like the repo (notebooks/ beside ../shared/data), never in the tree."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"sample media folder {SHARED_DATA} is absent")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED_DATA.resolve())
    nb_dir = tmp_path / "repo" / "notebooks"
    nb_dir.mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / name, nb_dir / name)
    nb = nbformat.read(nb_dir / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(nb_dir)}})
    client.execute()
    return nb


def test_00_frames_store_exports(tmp_path):
    nb = run_notebook("00_frames_store_exports.ipynb", tmp_path)
    work = tmp_path / "repo" / "notebooks" / "work" / "00_spine"
    assert (work / "job.sqlite").is_file()
    assert (work / "sheet.png").is_file()
    assert (work / "annotations.xml").is_file() and (work / "coco.json").is_file()
    assert any((work / "masks").rglob("mask_*.png"))
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for o in outputs)


def test_02_text_prompt(tmp_path, monkeypatch):
    """Random-weight models chosen by DL_UTILS_NB_TEST; asserts on the store the notebook leaves."""
    from tests.dino_fixtures import HAVE_TF, SKIP_TF, make_hf_model_dir
    from tests.sam2_fixtures import HAVE_SAM2, SKIP_REASON

    if not (HAVE_TF and HAVE_SAM2):
        pytest.skip(SKIP_TF if not HAVE_TF else SKIP_REASON)
    from dl_utils.store import AnnotationStore

    monkeypatch.setenv("DL_UTILS_NB_TEST", "1")
    monkeypatch.setenv("DL_UTILS_NB_DINO", str(make_hf_model_dir(tmp_path / "gd")))
    nb = run_notebook("02_text_prompt.ipynb", tmp_path)
    work = tmp_path / "repo" / "notebooks" / "work" / "02_text_prompt"
    with AnnotationStore.open(work / "text.sqlite", readonly=True) as st:
        objects = st.objects()
        assert objects and {o.label for o in objects} <= {"person", "dog", "cat"}
        assert st.frames() == list(range(12))  # every frame of the range tracked
        keyframes = st.get_meta("dinoal.keyframes")
        assert keyframes[0] == 0 and {4, 8} <= set(keyframes)
    assert (work / "annotations.xml").is_file() and (work / "coco.json").is_file()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs) == 2


def test_notebooks_in_git_carry_no_outputs():
    """Outputs are stripped in git (they could hold secrets, paths, large images)."""
    names = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert {"00_frames_store_exports.ipynb", "01_click_to_masks.ipynb", "02_text_prompt.ipynb",
            "03_cvat_round_trip.ipynb", "04_learn_from_corrections.ipynb"} <= set(names)
    for name in names:
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, name


def test_01_click_to_masks(tmp_path, monkeypatch):
    """The widget driven from code in a real kernel; asserts on the store and files it leaves."""
    from tests.sam2_fixtures import HAVE_SAM2, SKIP_REASON

    if not HAVE_SAM2:
        pytest.skip(SKIP_REASON)
    pytest.importorskip("ipycanvas")
    from dl_utils.store import AnnotationStore

    monkeypatch.setenv("DL_UTILS_NB_TEST", "1")
    nb = run_notebook("01_click_to_masks.ipynb", tmp_path)
    work = tmp_path / "repo" / "notebooks" / "work" / "01_click_to_masks"
    with AnnotationStore.open(work / "clicks.sqlite", readonly=True) as st:
        assert [(o.id, o.label) for o in st.objects()] == [(1, "bed")]
        assert st.frames() == list(range(8)) and st.frames_done(1) == list(range(8))
        key = st.read_frame(0).by_object()[1]
        assert key.keyframe and key.prompts["points"] == [[480, 400, 1], [150, 80, 0]]
    assert (work / "annotations.xml").is_file() and (work / "coco.json").is_file()
    assert any((work / "masks").rglob("*.png"))
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs) == 2
    # the widget itself was displayed (a widget view in the outputs)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_03_cvat_round_trip(tmp_path, monkeypatch, cvat_server):
    """Against the CVAT stand-in: asserts on the server's state and the store; no secret in any output."""
    import json

    from tests.sam2_fixtures import HAVE_SAM2, SKIP_REASON

    if not HAVE_SAM2:
        pytest.skip(SKIP_REASON)
    from dl_utils.cv_utils import decode_cvat_rle
    from dl_utils.store import AnnotationStore

    monkeypatch.setenv("DL_UTILS_NB_TEST", "1")
    monkeypatch.setenv("CVAT_HOST", cvat_server.url)
    monkeypatch.setenv("CVAT_ACCESS_TOKEN", cvat_server.token)
    nb = run_notebook("03_cvat_round_trip.ipynb", tmp_path)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert cvat_server.token not in json.dumps(outputs)
    assert cvat_server.token not in json.dumps(nb)
    work = tmp_path / "repo" / "notebooks" / "work" / "03_cvat_round_trip"
    tasks = list(cvat_server.state.tasks.values())
    assert len(tasks) == 1
    task_id = tasks[0]["id"]
    shapes = [s for j, a in cvat_server.state.annotations.items()
              if cvat_server.state.jobs[j]["task_id"] == task_id for s in a.shapes.values()]
    assert {s["type"] for s in shapes} == {"mask"} and {s["group"] for s in shapes} == {1, 2}
    assert len(shapes) == 2 * 8  # two objects on every frame of the clip, nothing duplicated by the re-push
    fixed = next(s for s in shapes if s["frame"] == 3 and s["group"] == 1)
    assert fixed["source"] == "manual"  # the annotator's shape was left alone by the second push
    with AnnotationStore.open(work / "round_trip.sqlite", readonly=True) as st:
        inst = st.read_frame(3).by_object()[1]
        assert inst.keyframe and inst.mask[250:500, 250:750].all() and inst.mask.sum() == 250 * 500
        assert np.array_equal(decode_cvat_rle(fixed["points"], *inst.mask.shape), inst.mask)
        # every other shape on the server is the store's mask, bit for bit
        for s in shapes:
            m = st.read_frame(s["frame"]).by_object()[s["group"]].mask
            assert np.array_equal(decode_cvat_rle(s["points"], *m.shape), m), (s["frame"], s["group"])


def test_04_learn_from_corrections(tmp_path, monkeypatch):
    """The loop without a server: stand-in corrections, a few steps of tiny random SAM2 at 256 px, the
    before/after table and sheet, the next video annotated with the tuned checkpoint alone."""
    import json

    from tests.sam2_fixtures import HAVE_SAM2, SKIP_REASON

    if not HAVE_SAM2:
        pytest.skip(SKIP_REASON)
    from dl_utils.store import AnnotationStore

    models = tmp_path / "models"
    monkeypatch.setenv("DL_UTILS_NB_TEST", "1")
    monkeypatch.setenv("DL_UTILS_MODELS", str(models))  # random weights and the registry stay here
    monkeypatch.delenv("CVAT_HOST", raising=False)
    nb = run_notebook("04_learn_from_corrections.ipynb", tmp_path)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    work = tmp_path / "repo" / "notebooks" / "work" / "04_learn_from_corrections"
    side = json.loads((work / "tuned.pt.json").read_text())
    assert side["format"] == "dl-utils-finetune" and side["base_model"] == "sam2.1_hiera_tiny"
    assert side["image_size"] == 256 and (work / "tuned.pt").is_file()
    registry = json.loads((models / "finetuned.json").read_text())
    assert [e["path"] for e in registry["checkpoints"]] == [str((work / "tuned.pt").resolve())]
    text = json.dumps(outputs)
    assert "val mean IoU: before" in text and "sam2.1_hiera_tiny" in text
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    with AnnotationStore.open(work / "next.sqlite", readonly=True) as st:
        assert {o.label for o in st.objects()} == {"bed", "lamp"} and st.frames()
    assert (work / "next_annotations.xml").is_file()
