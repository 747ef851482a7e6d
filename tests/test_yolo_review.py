"""A user's review of the training-data tools (issue 19 parts 1-2): each test here is a sharp edge
found by walking split -> stats -> remap -> export -> import -> export as a CV engineer would, and
fails on the code before its fix.

Stores are made in the test; media files are made only where pixels are read (tiny synthetic clips).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dl_utils.annotations import Instance, MediaInfo
from dl_utils.datasets.groups import frame_groups
from dl_utils.datasets.stats import dataset_stats
from dl_utils.finetune.data import from_stores
from dl_utils.formats._dataset import sides_of
from dl_utils.splits import GroupSet, Split, media_group
from dl_utils.store import AnnotationStore

W, H = 32, 24


def _store(path: Path, media_path: str, *, images: tuple[str, ...] = (), frames: int = 3) -> Path:
    """A store whose media path is recorded as ``media_path`` (a video, or an image set of
    ``images``), one mask instance on every frame."""
    n = len(images) or frames
    media = MediaInfo(name=Path(media_path).name or "media", width=W, height=H, frames=list(range(n)),
                      path=media_path, frame_names=list(images) if images else None)
    m = np.zeros((H, W), bool)
    m[4:12, 5:20] = True
    with AnnotationStore.create(path, media) as st:
        o = st.add_object("car")
        st.write_frames([(f, [Instance(o.id, mask=m)]) for f in range(n)])
    return path


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """proj/stores/a.sqlite beside its video clip.mp4 (media moved with the store), proj/stores/b.sqlite
    beside its image folder photos/, proj/stores/c.sqlite whose video videos/far.mp4 is nowhere."""
    stores = tmp_path / "proj" / "stores"
    (stores / "photos").mkdir(parents=True)
    (stores / "clip.mp4").write_bytes(b"")  # groups need the file to exist, not its pixels
    for name in ("x.jpg", "y.jpg"):
        (stores / "photos" / name).write_bytes(b"")
    _store(stores / "a.sqlite", "clip.mp4")
    _store(stores / "b.sqlite", "photos", images=("x.jpg", "y.jpg"))
    _store(stores / "c.sqlite", "videos/far.mp4")
    return tmp_path


def _groups_from(cwd: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> dict[int, str]:
    monkeypatch.chdir(cwd)
    with AnnotationStore.open(os.path.relpath(store, cwd), readonly=True) as st:
        return frame_groups(st)


def test_group_names_do_not_depend_on_the_working_folder(project: Path, monkeypatch):
    """The same store typed from three folders names the same groups (before: 'stores/clip.mp4'
    from proj, 'clip.mp4' from proj/stores: two groups for one video, a split made in one folder
    refused by an export run in another)."""
    stores = project / "proj" / "stores"
    for name in ("a", "b", "c"):
        seen = [_groups_from(cwd, stores / f"{name}.sqlite", monkeypatch)
                for cwd in (project, project / "proj", stores)]
        assert seen[0] == seen[1] == seen[2], name
    assert set(_groups_from(project, stores / "a.sqlite", monkeypatch).values()) == {str(stores / "clip.mp4")}
    assert sorted(_groups_from(project, stores / "b.sqlite", monkeypatch).values()) == [
        str(stores / "photos" / "x.jpg"), str(stores / "photos" / "y.jpg")]
    # a relative path found nowhere names its group as recorded: the same string from every folder
    assert set(_groups_from(project, stores / "c.sqlite", monkeypatch).values()) == {"videos/far.mp4"}
    # fine-tuning names its samples' groups by the same rule, from any folder
    for cwd in (project, stores):
        monkeypatch.chdir(cwd)
        data = from_stores([os.path.relpath(stores / n, cwd) for n in ("a.sqlite", "b.sqlite")], select="all")
        assert data.groups() == sorted([str(stores / "clip.mp4"), str(stores / "photos" / "x.jpg"),
                                        str(stores / "photos" / "y.jpg")])


def test_media_group_rule():
    """Absolute: itself; beside the store: absolute there; else as recorded; no path: the store."""
    assert media_group("/data/v/../a.mp4", "s.sqlite") == "/data/a.mp4"
    assert media_group("./videos//a.mp4", "/nowhere/s.sqlite") == "videos/a.mp4"
    assert media_group("", "stores/s.sqlite") == os.path.abspath("stores/s.sqlite")
    assert media_group(None, "/x/s.sqlite") == "/x/s.sqlite"


def test_a_split_made_by_the_old_rule_still_selects_its_groups(project: Path, monkeypatch):
    """A split file (or a fine-tuned checkpoint's sidecar) written before group names were absolute
    holds them relative to the folder it was made in; used from that folder it still selects
    every frame: Split.side, the exports' sides, stats and fine-tuning's subset all find them."""
    proj, stores = project / "proj", project / "proj" / "stores"
    old = Split(train=("stores/clip.mp4", "stores/photos/x.jpg"), val=("./stores/photos/y.jpg",),
                seed=0, val_fraction=0.5, by="group")
    monkeypatch.chdir(proj)
    assert old.side(str(stores / "clip.mp4")) == "train"
    assert old.side(str(stores / "photos" / "y.jpg")) == "val"
    assert old.side(str(stores / "photos" / "z.jpg")) is None
    with AnnotationStore.open("stores/a.sqlite", readonly=True) as st:
        assert set(sides_of(st, old).values()) == {"train"}
    with AnnotationStore.open("stores/b.sqlite", readonly=True) as st:
        assert sides_of(st, old) == {0: "train", 1: "val"}
    stats = dataset_stats(["stores/a.sqlite", "stores/b.sqlite"], split=old, progress=False)
    assert {sd.name: sd.images for sd in stats.sides} == {"train": 4, "val": 1}  # nothing 'unassigned'
    data = from_stores(["stores/a.sqlite", "stores/b.sqlite"], select="all")
    assert len(data.subset(old.train)) == 4 and len(data.subset(old.val)) == 1
    # the same through a checkpoint's sidecar, as finetune --split / evaluate --split read it
    from dl_utils.drivers.finetune import load_split
    from dl_utils.models import FINETUNE_FORMAT

    sidecar = proj / "tuned.pt.json"
    sidecar.write_text(json.dumps({"format": FINETUNE_FORMAT, "split": old.to_json()}))
    assert load_split(sidecar).side(str(stores / "clip.mp4")) == "train"
    # the old rule was relative to a folder: from another one the old names are other paths
    monkeypatch.chdir(project)
    assert old.side(str(stores / "clip.mp4")) is None


def test_group_set_matches_old_and_new_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = GroupSet(["v/a.mp4", str(tmp_path / "b.mp4")])
    assert "v/a.mp4" in names and str(tmp_path / "v" / "a.mp4") in names and "v/./a.mp4" in names
    assert str(tmp_path / "b.mp4") in names and "b.mp4" not in names and 3 not in names


def test_exact_names_win_and_an_ambiguous_spelling_answers_for_neither(tmp_path, monkeypatch):
    """A split edited by hand may hold one video twice ('v/a.mp4' on train, its absolute spelling on
    val): each exact name keeps its side; a spelling two relative names share is no one's."""
    monkeypatch.chdir(tmp_path)
    a = str(tmp_path / "v" / "a.mp4")
    sp = Split(train=("v/a.mp4",), val=(a,), seed=0, val_fraction=0.5, by="group")
    assert sp.side("v/a.mp4") == "train" and sp.side(a) == "val"
    assert sp.side("v/./a.mp4") == "train" and sp.side(str(tmp_path / "v" / "." / "a.mp4")) == "val"
    two = Split(train=("v/a.mp4",), val=("w/../v/a.mp4",), seed=0, val_fraction=0.5, by="group")
    assert two.side("v/a.mp4") == "train" and two.side("w/../v/a.mp4") == "val"
    assert two.side(a) is None


# ------------------------------------------------------------------ the YOLO loop on real pictures
from .test_formats_yolo import clips, fails, make_store, pictures  # noqa: E402,F401  (fixtures)


@pytest.fixture()
def dataset(tmp_path: Path, clips, pictures) -> Path:
    """A yolo-seg export of a clip's store and the photos' store, all under train."""
    from dl_utils.cli import main

    stores = [make_store(tmp_path / "a.sqlite", clips[0]), make_store(tmp_path / "p.sqlite", pictures)]
    assert main(["export", *map(str, stores), "--format", "yolo-seg", "--out", str(tmp_path / "ds")]) == 0
    return tmp_path / "ds"


def test_import_takes_the_data_yaml_ultralytics_is_given(dataset: Path, tmp_path: Path, capsys):
    """`dl-utils import ds/data.yaml` (what `yolo train data=` names) imports the dataset (before:
    'cannot tell the format of data.yaml'); importing again over the store names the one option a
    YOLO import takes (before: it also offered --append, which the import then refused)."""
    from dl_utils.cli import main

    assert main(["import", str(dataset / "data.yaml"), "--out", str(tmp_path / "y.sqlite")]) == 0
    assert main(["import", str(dataset), "--out", str(tmp_path / "f.sqlite")]) == 0
    with AnnotationStore.open(tmp_path / "y.sqlite", readonly=True) as y, \
            AnnotationStore.open(tmp_path / "f.sqlite", readonly=True) as f:
        assert {**y.summary(), "path": ""} == {**f.summary(), "path": ""} and y.media == f.media
    err = fails(["import", str(dataset / "data.yaml"), "--out", str(tmp_path / "y.sqlite")], capsys)
    assert "pass --overwrite to replace it" in err and "--append" not in err
    assert main(["import", str(dataset / "data.yaml"), "--out", str(tmp_path / "y.sqlite"), "--overwrite"]) == 0


def test_options_that_do_not_apply_are_named_in_good_grammar(dataset: Path, tmp_path: Path, capsys):
    from dl_utils.cli import main

    store = str(tmp_path / "a.sqlite")
    err = fails(["export", store, "--format", "yolo-seg", "--out", str(tmp_path / "o"), "--shape", "box"], capsys)
    assert err.endswith("--shape does not apply to --format yolo-seg")
    err = fails(["export", store, "--format", "yolo-detect", "--out", str(tmp_path / "o"), "--shape", "box",
                 "--start", "1"], capsys)
    assert err.endswith("--shape, --start do not apply to --format yolo-detect")
    assert main(["export", store, "--format", "yolo-seg", "--out", str(tmp_path / "o2")]) == 0


def test_fine_tuning_groups_an_imported_dataset_as_the_dataset_tools_do(dataset: Path, tmp_path: Path):
    """An imported YOLO dataset's media is a glob (images/*/*): each picture is its own group for
    `dataset split` (frame_groups), and now for fine-tuning too (before: all its pictures were one
    group there, so a split file from `dataset split` matched none of fine-tuning's groups)."""
    from dl_utils.formats import import_yolo

    with AnnotationStore.create(tmp_path / "imp.sqlite") as st:
        import_yolo(dataset, st)
    with AnnotationStore.open(tmp_path / "imp.sqlite", readonly=True) as st:
        groups = set(frame_groups(st).values())
        n = len(st.media.frames)
    assert len(groups) == n > 3
    assert set(from_stores([tmp_path / "imp.sqlite"], select="all").groups()) == groups


def test_an_interrupted_export_keeps_the_earlier_dataset(dataset: Path, tmp_path: Path, monkeypatch):
    """Ctrl-C in the middle of a re-export (after the first store's pictures are written): the
    dataset at --out is the earlier one, byte for byte, and nothing is left beside it."""
    import dl_utils.formats.yolo as yolo
    from dl_utils.cli import main

    before = {p.relative_to(dataset): p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    real, calls = yolo._export_store, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(yolo, "_export_store", interrupted)
    assert main(["export", str(tmp_path / "a.sqlite"), str(tmp_path / "p.sqlite"), "--format", "yolo-detect",
                 "--out", str(dataset)]) == 130  # the CLI's exit status for Ctrl-C
    assert len(calls) == 2
    assert {p.relative_to(dataset): p.read_bytes() for p in dataset.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ds")) == []


# ------------------------------------------------------------------ messages
def test_too_few_videos_for_two_sides_does_not_suggest_two_sides(tmp_path: Path, capsys):
    """One video and --ratios 0.8,0.2: the hint was 'or give fewer sides (e.g. --ratios 0.8,0.2)',
    the ratios just given; two sides is the least, so only 'add more videos' is said. With three
    sides, fewer sides is still offered."""
    one = _store(tmp_path / "one.sqlite", "videos/one.mp4")
    two = _store(tmp_path / "two.sqlite", "videos/two.mp4")
    err = fails(["dataset", "split", str(one), "--ratios", "0.8,0.2", "--dry-run"], capsys)
    assert "1 video (group) cannot fill 2 sides (train and val)" in err
    assert err.endswith("add more videos") and "fewer sides" not in err
    err = fails(["dataset", "split", str(one), str(two), "--ratios", "0.8,0.1,0.1", "--dry-run"], capsys)
    assert err.endswith("add more videos, or give fewer sides (e.g. --ratios 0.8,0.2)")


def test_a_chart_path_that_is_a_folder_is_refused_before_counting(tmp_path: Path, capsys, monkeypatch):
    """--png FOLDER: was refused only after every store was read, as 'give a file path for --out
    (e.g. .../annotations.xml)' (another option, another kind of file); now at once, naming --png."""
    pytest.importorskip("matplotlib")
    import dl_utils.datasets.stats as stats

    store = _store(tmp_path / "one.sqlite", "videos/one.mp4")

    def not_now(*a, **k):
        raise AssertionError("the stores were read before the chart path was checked")

    monkeypatch.setattr(stats, "dataset_stats", not_now)
    err = fails(["dataset", "stats", str(store), "--png", str(tmp_path)], capsys)
    assert err == (f"dl-utils: error: --png {tmp_path} is a folder; give a file path for the chart, e.g."
                   f" {tmp_path / 'stats.png'}")


def test_a_store_without_a_media_record_is_refused_in_words_for_the_command_line(tmp_path: Path, capsys):
    """Before: 'has no media info (size, frame numbers); set it with store.set_media(...)' (advice
    for a Python caller) from `dl-utils export --format yolo-*`."""
    AnnotationStore.create(tmp_path / "bare.sqlite").close()
    for fmt in ("yolo-seg", "yolo-detect"):
        err = fails(["export", str(tmp_path / "bare.sqlite"), "--format", fmt, "--out", str(tmp_path / "o")], capsys)
        assert "bare.sqlite: the store has no media record" in err and "set_media" not in err
        assert "annotate, import or pull into it first" in err
    assert not (tmp_path / "o").exists()


def test_a_coco_split_side_of_several_stores_imports_back(tmp_path: Path, clips, capsys):
    """Two videos' frames on one side: their images carry 'frame' 0, 2, 4 each (where they came
    from, with 'store'), which the COCO import took as this file's frame numbers and refused ('two
    images have the same frame number'); it now numbers such a file by position, as any COCO file."""
    from dl_utils.cli import main

    stores = [make_store(tmp_path / "a.sqlite", clips[0]), make_store(tmp_path / "b.sqlite", clips[1])]
    assert main(["export", *map(str, stores), "--format", "coco", "--split", str(_all_train(stores, tmp_path)),
                 "--out", str(tmp_path / "coco")]) == 0
    doc = json.loads((tmp_path / "coco/annotations/instances_train.json").read_text())
    assert len({im["frame"] for im in doc["images"]}) < len(doc["images"])  # the case: frames repeat
    assert main(["import", str(tmp_path / "coco/annotations/instances_train.json"),
                 "--out", str(tmp_path / "back.sqlite")]) == 0
    with AnnotationStore.open(tmp_path / "back.sqlite", readonly=True) as st:
        by_id = sorted(doc["images"], key=lambda im: im["id"])
        assert st.media.frames == list(range(len(by_id)))
        assert st.media.frame_names == [im["file_name"] for im in by_id]
        assert sum(1 for _, insts in st.iter_frames(decode=False) for i in insts if not i.is_empty) == len(
            doc["annotations"])


def _all_train(stores: list[Path], tmp_path: Path) -> Path:
    groups: list[str] = []
    for p in stores:
        with AnnotationStore.open(p, readonly=True) as s:
            groups += sorted(set(frame_groups(s).values()))
    Split(train=tuple(groups), val=(), seed=0, val_fraction=0.0, by="group").save(tmp_path / "split.json")
    return tmp_path / "split.json"


# ------------------------------------------------------------------ re-running dataset split
def _videos(tmp_path: Path, n: int = 8) -> list[str]:
    return [str(_store(tmp_path / f"v{i}.sqlite", f"videos/v{i}.mp4", frames=2 + i)) for i in range(n)]


def test_split_out_that_is_not_a_split_is_never_replaced(tmp_path: Path, capsys):
    """`--out classes.csv` (a slip of the tab key) replaced the class table with a split; now any
    existing file that is not a split is refused, untouched."""
    table = tmp_path / "classes.csv"
    table.write_text("name\ncar\n")
    err = fails(["dataset", "split", *_videos(tmp_path), "--ratios", "0.8,0.2", "--out", str(table)], capsys)
    assert err == f"dl-utils: error: --out {table} exists and is not a split file; give a new path (or the" \
                  " split file to replace), e.g. split.json"
    assert table.read_text() == "name\ncar\n"


def test_a_split_rewritten_with_other_sides_says_which_groups_left_train(tmp_path: Path, capsys):
    """Re-splitting onto the same file (another seed, more stores) silently moved groups between
    sides: a model trained on the old split then scores frames it trained on. The same split
    rewritten says nothing; a changed one says how many groups moved and how many left train."""
    from dl_utils.cli import main

    stores, out = _videos(tmp_path), str(tmp_path / "split.json")
    assert main(["dataset", "split", *stores, "--ratios", "0.6,0.2,0.2", "--out", out]) == 0
    first = Split.load(out)
    capsys.readouterr()
    assert main(["dataset", "split", *stores, "--ratios", "0.6,0.2,0.2", "--out", out]) == 0
    assert "note:" not in capsys.readouterr().err and Split.load(out) == first
    # the file as an earlier split made it (before more stores, or with another seed): two of
    # today's train groups were on val and test, and today's val and test groups were train
    earlier = Split(train=first.val + first.test + first.train[2:], val=first.train[:1], test=first.train[1:2],
                    seed=0, val_fraction=0.2, by="group", ratios=(0.6, 0.2, 0.2))
    earlier.save(out)
    assert main(["dataset", "split", *stores, "--ratios", "0.6,0.2,0.2", "--dry-run"]) == 0
    assert main(["dataset", "split", *stores, "--ratios", "0.6,0.2,0.2", "--out", out, "--dry-run"]) == 0
    assert f"note: {out} would change: " in capsys.readouterr().err and Split.load(out) == earlier
    assert main(["dataset", "split", *stores, "--ratios", "0.6,0.2,0.2", "--out", out]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    new = Split.load(out)
    assert new == first
    moved = [g for g in new.train + new.val + new.test if earlier.side(g) != new.side(g)]
    left = [g for g in earlier.train if new.side(g) != "train"]
    assert len(moved) == len(first.val + first.test) + 2 and len(left) == len(first.val + first.test)
    assert err[-1].startswith(f"note: {out} changed: {len(moved)} group(s) on another side than before (e.g. ")
    assert f"; {len(left)} left train: a model trained on the earlier split has seen their frames" in err[-1]


def test_a_dataset_moved_elsewhere_still_loads_in_ultralytics(dataset: Path, tmp_path: Path, monkeypatch):
    """data.yaml held `path: <absolute out>`; copied to a training machine (another folder) the
    dataset failed Ultralytics' check ('images not found, missing path .../ds/images/...'). Without
    `path` Ultralytics resolves the sides against data.yaml's folder, wherever it is."""
    import shutil

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics-settings"))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    pytest.importorskip("ultralytics")
    from ultralytics.data.utils import check_det_dataset

    moved = tmp_path / "elsewhere" / "ds"
    shutil.copytree(dataset, moved)
    shutil.rmtree(dataset)
    data = check_det_dataset(str(moved / "data.yaml"), autodownload=False)
    assert Path(data["train"]) == (moved / "images" / "train").resolve()
    assert len(list(Path(data["train"]).iterdir())) == 6
    # and dl-utils reads it back from there too
    from dl_utils.formats import import_yolo

    with AnnotationStore.create(tmp_path / "back.sqlite") as st:
        assert import_yolo(moved, st)["images"] == 6


def test_one_store_given_twice_is_refused_everywhere(dataset: Path, tmp_path: Path, capsys, monkeypatch):
    """`stores/*.sqlite stores/a.sqlite` (overlapping globs) exported every picture twice (a_..., and
    a_..._2) and doubled every count of split and stats; now each tool names the store given twice."""
    monkeypatch.chdir(tmp_path)
    a, also = "a.sqlite", "./x/../a.sqlite"
    (tmp_path / "x").mkdir()
    Split(train=tuple(sorted(set(_groups_from(tmp_path, tmp_path / a, monkeypatch).values()))), val=(),
          seed=0, val_fraction=0.0, by="group").save(tmp_path / "split.json")
    for args in (["export", a, also, "--format", "yolo-seg", "--out", "o"],
                 ["export", a, also, "--format", "yolo-detect", "--out", "o", "--dry-run"],
                 ["export", a, also, "--format", "coco", "--split", "split.json", "--out", "o"],
                 ["dataset", "split", a, "p.sqlite", also, "--ratios", "0.5,0.5", "--dry-run"],
                 ["dataset", "stats", a, also]):
        err = fails(args, capsys)
        assert err == ("dl-utils: error: store ./x/../a.sqlite is given twice (also as a.sqlite); give each store"
                       " once, else its frames are counted and exported twice"), args
    assert not (tmp_path / "o").exists()
    # the library refuses it too (an API caller's list)
    from dl_utils.errors import InputError
    from dl_utils.formats import YoloOptions, export_coco_splits, export_yolo, plan_yolo

    with AnnotationStore.open(a, readonly=True) as s1, AnnotationStore.open(also, readonly=True) as s2:
        for call in (lambda: export_yolo([s1, s2], "o"), lambda: plan_yolo([s1, s2], YoloOptions()),
                     lambda: export_coco_splits([s1, s2], "o", split=Split.load("split.json"))):
            with pytest.raises(InputError, match="is given twice"):
                call()
    assert not (tmp_path / "o").exists()


def test_a_roboflow_layout_imports_as_ultralytics_reads_it(dataset: Path, tmp_path: Path, monkeypatch):
    """Roboflow's YOLO export: train/images, valid/images, test/images beside a data.yaml whose sides
    are '../train/images' ... Ultralytics reads them (it drops a '../' that leads nowhere); the import
    said 'data.yaml names no image folder that exists'. Now every side imports, rows equal."""
    import shutil

    import yaml

    rf = tmp_path / "rf"
    pictures = sorted((dataset / "images" / "train").iterdir())
    for side, pics in (("train", pictures[:3]), ("valid", pictures[3:5]), ("test", pictures[5:])):
        for kind in ("images", "labels"):
            (rf / side / kind).mkdir(parents=True)
        for pic in pics:
            shutil.copy(pic, rf / side / "images" / pic.name)
            shutil.copy(dataset / "labels" / "train" / f"{pic.stem}.txt", rf / side / "labels" / f"{pic.stem}.txt")
    names = yaml.safe_load((dataset / "data.yaml").read_text())["names"]
    (rf / "data.yaml").write_text(yaml.safe_dump({"train": "../train/images", "val": "../valid/images",
                                                  "test": "../test/images", "nc": len(names),
                                                  "names": [names[i] for i in range(len(names))]}))
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics-settings"))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    try:  # the cross-check with Ultralytics' own reader, where it is installed
        from ultralytics.data.utils import check_det_dataset
    except ImportError:
        pass
    else:
        found = check_det_dataset(str(rf / "data.yaml"), autodownload=False)
        assert Path(found["val"]) == (rf / "valid/images").resolve()
    from dl_utils.formats import import_yolo

    with AnnotationStore.create(tmp_path / "all.sqlite") as st:
        summary = import_yolo(rf, st)
        assert summary["images"] == len(pictures) and summary["sides"] == ["test", "train", "val"]
        files = sorted(st.media.frame_names or [])
    assert files == sorted(f"{side}/images/{p.name}" for side, ps in (("train", pictures[:3]), ("valid", pictures[3:5]),
                                                                       ("test", pictures[5:])) for p in ps)
    with AnnotationStore.create(tmp_path / "val.sqlite") as st:
        assert import_yolo(rf / "data.yaml", st, split="val")["images"] == 2
    out = tmp_path / "again"
    with AnnotationStore.open(tmp_path / "all.sqlite", readonly=True) as st:
        from dl_utils.formats import YoloOptions, export_yolo

        export_yolo([st], out, YoloOptions(task="segment"))
    rows = sorted(line for f in (rf).rglob("labels/*.txt") for line in f.read_text().splitlines())
    assert sorted(line for f in out.rglob("labels/*/*.txt") for line in f.read_text().splitlines()) == rows


def test_a_side_given_as_an_image_list_is_named(dataset: Path, tmp_path: Path):
    """`train: train.txt` (Ultralytics' image-list form) was 'names no image folder that exists'
    (which looks like a wrong path); now the message says it is a list and what to do."""
    import yaml

    from dl_utils.errors import FormatError
    from dl_utils.formats import import_yolo

    doc = yaml.safe_load((dataset / "data.yaml").read_text())
    listed = "".join(f"./images/train/{p.name}\n" for p in (dataset / "images/train").iterdir())
    (dataset / "train.txt").write_text(listed)
    (dataset / "data.yaml").write_text(yaml.safe_dump({**doc, "train": "train.txt", "val": "train.txt"}))
    with AnnotationStore.create(tmp_path / "x.sqlite") as st, pytest.raises(FormatError) as e:
        import_yolo(dataset, st)
    assert str(e.value) == (f"{dataset}: side train is the image list train.txt, not a folder; the import reads"
                            " image folders: move that side's images into a folder (images/<side>/) or import"
                            " the other sides with --split")


def test_a_split_file_travels_with_its_project(project: Path, tmp_path: Path, monkeypatch):
    """Group names of media beside their stores are absolute (the same from every folder); written
    as they are, a split.json committed with the project would match nothing in a clone at another
    path. Saved, names inside the split file's folder are written './relative' and resolved against
    the file's folder when loaded: the copy's split selects the copy's groups."""
    import shutil

    proj = project / "proj"
    monkeypatch.chdir(proj)
    with AnnotationStore.open("stores/a.sqlite", readonly=True) as st:
        group = set(frame_groups(st).values()).pop()
    with AnnotationStore.open("stores/c.sqlite", readonly=True) as st:
        far = set(frame_groups(st).values()).pop()  # a relative name: written and read as it is
    split = Split(train=(group, "/elsewhere/v.mp4"), val=(far,), seed=0, val_fraction=0.5, by="group")
    split.save(proj / "split.json")
    doc = json.loads((proj / "split.json").read_text())
    assert doc["train"] == ["./stores/clip.mp4", "/elsewhere/v.mp4"] and doc["val"] == ["videos/far.mp4"]
    assert Split.load(proj / "split.json") == split  # the same split where it was made
    clone = tmp_path / "clone"
    shutil.copytree(proj, clone)
    monkeypatch.chdir(tmp_path)
    moved = Split.load(clone / "split.json")
    with AnnotationStore.open(clone / "stores" / "a.sqlite", readonly=True) as st:
        assert {moved.side(g) for g in frame_groups(st).values()} == {"train"}
        assert set(frame_groups(st).values()) == {str(clone / "stores" / "clip.mp4")}
    assert moved.side("videos/far.mp4") == "val"
