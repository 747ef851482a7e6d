"""Notebooks run top to bottom (they are thin drivers: a failure here is an API drift)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA

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
