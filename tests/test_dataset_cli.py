"""``dl-utils dataset split | stats | remap`` through ``dl_utils.cli.main``: the exact option names,
what is printed, what is written, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dl_utils.cli import main
from dl_utils.classes import ClassTable
from dl_utils.splits import Split
from dl_utils.store import AnnotationStore
from tests.test_datasets import TABLE, _dump, _remap_store, unbalanced_set


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return [str(p) for p in unbalanced_set(tmp_path_factory.mktemp("cli"), n=12, seed=1)]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dl-utils: error: "), err
    return err


def test_split_writes_the_split_and_prints_the_class_table(stores, tmp_path, capsys):
    out = tmp_path / "split.json"
    assert main(["dataset", "split", *stores, "--ratios", "0.8,0.1,0.1", "--seed", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train 80%" in text and "val 10%" in text and "test 10%" in text and f"split written to {out}" in text
    for cls in ("rare", "few", "common", "dominant"):
        assert any(line.startswith(cls) for line in text.splitlines())
    s = Split.load(out)
    assert s.seed == 3 and s.ratios == (0.8, 0.1, 0.1) and s.test
    assert len(s.train) + len(s.val) + len(s.test) == 12
    # --json and --dry-run: the same split, nothing written
    again = tmp_path / "again.json"
    assert main(["dataset", "split", *stores, "--ratios", "0.8,0.1,0.1", "--seed", "3", "--out", str(again),
                 "--dry-run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert not again.exists() and doc["dry_run"] is True and doc["out"] is None
    assert Split.from_json(doc["split"]) == s and doc["sides"] == ["train", "val", "test"]
    assert {c["name"] for c in doc["classes"]} == {"rare", "few", "common", "dominant"}
    # two sides, item-free stores: --by item is refused for videos
    assert main(["dataset", "split", *stores, "--ratios", "0.8,0.2", "--out", str(tmp_path / "two.json")]) == 0
    assert Split.load(tmp_path / "two.json").test == ()
    capsys.readouterr()
    assert main(["dataset", "split", *stores, "--ratios", "0.8,0.2", "--by", "item", "--dry-run"]) == 1
    assert "is a video; by='item'" in _err_line(capsys)


@pytest.mark.parametrize("ratios, msg", [
    ("0.8,0.1,0.2", "sum to 1.1, not 1"),
    ("0.9,-0.1,0.2", "negative"),
    ("0.8;0.2", "not numbers"),
])
def test_split_bad_ratios_are_one_line(stores, tmp_path, capsys, ratios, msg):
    assert main(["dataset", "split", *stores, "--ratios", ratios, "--out", str(tmp_path / "s.json")]) == 1
    assert msg in _err_line(capsys) and not (tmp_path / "s.json").exists()


def test_split_refusals(stores, tmp_path, capsys):
    assert main(["dataset", "split", stores[0], stores[1], "--ratios", "0.8,0.1,0.1", "--out", "x.json"]) == 1
    assert "2 videos (groups) cannot fill 3 sides" in _err_line(capsys)
    assert main(["dataset", "split", *stores, "--ratios", "0.8,0.2"]) == 1
    assert "give --out SPLIT.json" in _err_line(capsys)
    assert main(["dataset", "split", str(tmp_path / "nope.sqlite"), "--ratios", "0.8,0.2", "--dry-run"]) == 1
    assert "nope.sqlite does not exist" in _err_line(capsys)


def test_stats_table_json_and_png(stores, tmp_path, capsys):
    split = tmp_path / "split.json"
    assert main(["dataset", "split", *stores, "--ratios", "0.6,0.2,0.2", "--out", str(split)]) == 0
    capsys.readouterr()
    assert main(["dataset", "stats", *stores, "--split", str(split), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["sides"]) == ["train", "val", "test"] and doc["split"] == str(split)
    s = Split.load(split)
    assert [doc["sides"][k]["groups"] for k in ("train", "val", "test")] == [len(s.train), len(s.val), len(s.test)]
    total = sum(v["instances_total"] for v in doc["sides"].values())
    assert main(["dataset", "stats", *stores, "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert list(whole["sides"]) == ["all"] and whole["sides"]["all"]["instances_total"] == total
    pytest.importorskip("matplotlib")  # the chart is optional: matplotlib is not a core dependency
    png = tmp_path / "chart.png"
    assert main(["dataset", "stats", *stores, "--split", str(split), "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert "annotated images" in text and f"chart written to {png}" in text
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_stats_png_refused_without_matplotlib(stores, tmp_path, capsys, monkeypatch):
    from dl_utils.datasets import stats

    monkeypatch.setattr(stats, "have_matplotlib", lambda: False)
    assert main(["dataset", "stats", *stores, "--png", str(tmp_path / "c.png")]) == 1
    assert "--png needs matplotlib" in _err_line(capsys) and not (tmp_path / "c.png").exists()


def test_remap_dry_run_out_and_in_place(tmp_path, capsys):
    table = tmp_path / "classes.csv"
    ClassTable.from_records(TABLE).to_csv(table)
    src = _remap_store(tmp_path / "road.sqlite")
    before = _dump(src)
    assert main(["dataset", "remap", str(src), "--classes", str(table), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "Automobile" in text and "-> car" in text and "dry run: nothing written" in text and _dump(src) == before
    new = tmp_path / "new.sqlite"
    assert main(["dataset", "remap", str(src), "--classes", str(table), "--out", str(new), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["changed"]["pedestrian"] == "person" and doc["out"] == str(new) and _dump(src) == before
    assert main(["dataset", "remap", str(src), "--classes", str(table), "--to", "superclass"]) == 0
    assert "rewritten in place" in capsys.readouterr().out
    with AnnotationStore.open(src, readonly=True) as st:
        assert sorted({o.label for o in st.objects()}) == ["person", "vehicle"]
    ClassTable.from_records(TABLE[:2]).to_csv(table)
    assert main(["dataset", "remap", str(new), "--classes", str(table)]) == 1
    assert "'truck', 'person' are not in the class table" in _err_line(capsys)


def test_dataset_help_runs_as_a_program():
    r = subprocess.run([sys.executable, "-m", "dl_utils", "dataset", "split", "--help"], capture_output=True,
                       text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 0 and "--ratios" in r.stdout and "--tolerance" in r.stdout and "--by" in r.stdout


def test_mixed_stores_split_by_item_for_images(tmp_path, capsys):
    """An image set split by image: every image is its own group (video stores would be refused)."""
    from dl_utils.annotations import Instance, MediaInfo

    names = [f"{k}.png" for k in range(8)]
    media = MediaInfo(name="shots", width=20, height=10, frames=list(range(8)), frame_names=names,
                      path=str(tmp_path / "shots"))
    with AnnotationStore.create(tmp_path / "img.sqlite", media) as st:
        o = st.add_object("cat")
        st.write_frames([(f, [Instance(o.id, box=(1.0, 1.0, 4.0, 4.0))]) for f in range(8)])
    out = tmp_path / "s.json"
    assert main(["dataset", "split", str(tmp_path / "img.sqlite"), "--ratios", "0.5,0.25,0.25", "--by", "item",
                 "--out", str(out)]) == 0
    s = Split.load(out)
    assert s.by == "item" and (len(s.train), len(s.val), len(s.test)) == (4, 2, 2)
