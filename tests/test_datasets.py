"""dl_utils.datasets and the stratified split: whole videos on one side, class shares within tolerance
on an unbalanced set, seeded determinism, statistics equal to a direct count, remap keeps all else.

Stores are made in the test (no media files needed: splitting, counting and remapping read labels
and masks, never pixels).
"""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from dl_utils.annotations import Instance, Label, MediaInfo, Provenance
from dl_utils.classes import ClassTable
from dl_utils.datasets.counts import group_counts, split_stores
from dl_utils.datasets.groups import frame_groups
from dl_utils.datasets.remap import RemapOptions, remap_store
from dl_utils.datasets.stats import AREA_EDGES, dataset_stats
from dl_utils.errors import InputError, OutputError
from dl_utils.splits import GroupCounts, Split, SplitOptions, split_groups, stratified_split
from dl_utils.store import AnnotationStore

#: 4 classes whose instance counts per video are 1:5:20:100, present in fewer videos the rarer they are
FREQ = {"rare": (1, 0.35), "few": (5, 0.5), "common": (20, 0.8), "dominant": (100, 1.0)}
W, H = 40, 30


def video_store(path: Path, name: str, counts: dict[str, int], frames: int | None = None,
                masks: bool = False) -> Path:
    """A store of a video ``name`` with ``counts[c]`` instances of class ``c`` (one object per class,
    on frames 0, 1, ...): boxes, or masks of varied areas with ``masks``."""
    n = frames or max([1, *counts.values()]) + 2
    media = MediaInfo(name=name, width=W, height=H, frames=list(range(n)), path=f"videos/{name}")
    rows: dict[int, list[Instance]] = {}
    with AnnotationStore.create(path, media) as st:
        for c, k in counts.items():
            o = st.add_object(c)
            for f in range(k):
                if masks:
                    m = np.zeros((H, W), bool)
                    side = 1 + (f * 7 + o.id * 3) % 25
                    m[: min(side, H), : side] = True
                    rows.setdefault(f, []).append(Instance(o.id, mask=m))
                else:
                    rows.setdefault(f, []).append(Instance(o.id, box=(1.0, 1.0, 5.0 + f % 9, 6.0)))
        st.write_frames(sorted(rows.items()))
    return path


def unbalanced_set(folder: Path, n: int = 40, seed: int = 0) -> list[Path]:
    """``n`` video stores, 4 classes at 1:5:20:100, the rare ones in few videos."""
    rng = random.Random(seed)
    out = []
    for v in range(n):
        counts = {c: max(1, round(f * rng.uniform(0.3, 3.0))) for c, (f, p) in FREQ.items() if rng.random() < p}
        out.append(video_store(folder / f"v{v:02d}.sqlite", f"v{v:02d}.mp4", counts, frames=rng.randint(310, 400)))
    return out


@pytest.fixture(scope="module")
def forty(tmp_path_factory):
    return unbalanced_set(tmp_path_factory.mktemp("forty"))


# ----------------------------------------------------------------------------- splits
def test_whole_videos_on_one_side_and_class_shares_within_tolerance(forty):
    for seed in (0, 1, 2):
        opts = SplitOptions((0.8, 0.1, 0.1), seed=seed, tolerance=0.05)
        rep = split_stores(forty, opts, progress=False)
        s = rep.split
        assert s.test and s.ratios == (0.8, 0.1, 0.1) and s.seed == seed
        # every frame of every store: its video's group is on exactly one side
        for p in forty:
            with AnnotationStore.open(p, readonly=True) as st:
                sides = {s.side(g) for g in frame_groups(st).values()}
            assert len(sides) == 1 and None not in sides
        assert not (set(s.train) & set(s.val) or set(s.train) & set(s.test) or set(s.val) & set(s.test))
        # the report's shares are the real ones, recounted here from the stores
        counts = group_counts(forty, progress=False)
        for cls in rep.classes:
            per = [sum(counts[g].instances.get(cls.name, 0) for g in s.groups(side)) for side in ("train", "val", "test")]
            assert list(cls.counts) == per and cls.instances == sum(per)
            for share, target in zip(cls.shares, (0.8, 0.1, 0.1)):
                assert abs(share - target) <= 0.05 + 1e-9, (seed, cls)
        assert rep.misses() == [] and {c.name for c in rep.classes} == set(FREQ)
        total = {c: sum(g.instances.get(c, 0) for g in counts.values()) for c in FREQ}
        assert total["dominant"] > 50 * total["rare"]  # the set is as unbalanced as intended


def test_seeded_deterministic_and_input_order_free(forty):
    opts = SplitOptions((0.7, 0.2, 0.1), seed=5)
    a = split_stores(forty, opts, progress=False)
    b = split_stores(list(reversed(forty)), opts, progress=False)
    assert a.split == b.split and a.to_json() == b.to_json()
    c = split_stores(forty, SplitOptions((0.7, 0.2, 0.1), seed=6), progress=False)
    assert c.split != a.split  # the seed matters


def test_a_class_in_too_few_videos_is_reported_with_why():
    groups = {f"v{i}.mp4": GroupCounts(100, {"car": 50 + i}) for i in range(10)}
    groups["v0.mp4"] = GroupCounts(100, {"car": 50, "zebra": 7})
    groups["v1.mp4"] = GroupCounts(100, {"car": 51, "zebra": 3})
    rep = stratified_split(groups, SplitOptions((0.8, 0.1, 0.1), tolerance=0.05))
    (miss,) = rep.misses()
    assert miss.name == "zebra" and miss.groups == 2
    assert "too few groups: 2 group(s) hold its 10 instance(s), fewer than the 3 sides" in miss.why
    assert "zebra: too few groups" in rep.table() and "1 class(es) miss the tolerance" in rep.table()
    car = next(c for c in rep.classes if c.name == "car")
    assert car.within and car.why is None
    # one video holding most of a class: the step size is the reason
    groups["v2.mp4"] = GroupCounts(100, {"car": 52, "yak": 90})
    groups["v3.mp4"] = GroupCounts(100, {"car": 53, "yak": 5})
    groups["v4.mp4"] = GroupCounts(100, {"car": 54, "yak": 5})
    yak = next(c for c in stratified_split(groups, SplitOptions((0.8, 0.1, 0.1))).classes if c.name == "yak")
    assert not yak.within and "the largest holds 90%" in yak.why


def test_two_sides_and_groups_without_classes_follow_split_groups():
    names = [f"g{i}" for i in range(30)]
    # no class counts at all: exactly the fine-tuning split (seeded hash order)
    plain = stratified_split({g: GroupCounts() for g in names}, SplitOptions((0.75, 0.25), seed=4))
    assert plain.split == split_groups(names, val_fraction=0.25, seed=4)
    three = stratified_split({g: GroupCounts() for g in names}, SplitOptions((0.6, 0.2, 0.2), seed=4))
    assert [len(three.split.groups(s)) for s in ("train", "val", "test")] == [18, 6, 6]
    # a zero side stays empty; each non-zero side gets a group even when rounding says none
    z = stratified_split({g: GroupCounts(1, {"a": 1}) for g in names[:3]}, SplitOptions((0.9, 0.0, 0.1)))
    assert z.split.val == () and len(z.split.test) == 1 and len(z.split.train) == 2


def test_bad_ratios_and_too_few_groups_are_one_line_errors():
    from dl_utils.splits import parse_ratios

    assert parse_ratios("0.8, 0.1,0.1") == (0.8, 0.1, 0.1) and parse_ratios("0.8,0.2") == (0.8, 0.2)
    for text, msg in [("0.8,0.1", "sum to 0.9, not 1"), ("0.8,0.3,-0.1", "negative"), ("1", "1 value"),
                      ("0.5,0.2,0.2,0.1", "4 value"), ("a,b", "not numbers"), ("0,1", "train share above 0"),
                      ("1,0,0", "at least one other side"), ("0.8,nan,0.2", "not finite")]:
        with pytest.raises(InputError, match=msg) as e:
            parse_ratios(text)
        assert "\n" not in str(e.value)
    assert parse_ratios("0.7,0.2,0.1000000001") == (0.7, 0.2, 0.1000000001)  # within 1e-6
    with pytest.raises(InputError, match="2 videos \\(groups\\) cannot fill 3 sides \\(train, val and test\\)"):
        stratified_split({"a.mp4": GroupCounts(), "b.mp4": GroupCounts()}, SplitOptions((0.8, 0.1, 0.1)))
    with pytest.raises(InputError, match="tolerance"):
        SplitOptions((0.8, 0.2), tolerance=1.5)


def test_large_image_set_is_split_in_seconds():
    rng = random.Random(3)
    groups = {f"shots/{i}.jpg": GroupCounts(1, {f"c{c}": rng.randint(1, 3) for c in range(12)
                                                 if rng.random() < 0.4 / (c + 1)}) for i in range(3000)}
    import time

    t = time.perf_counter()
    rep = stratified_split(groups, SplitOptions((0.8, 0.1, 0.1), by="item", tolerance=0.02))
    assert time.perf_counter() - t < 20  # a shared, loaded machine: typically under 2 s
    assert rep.misses() == []


def test_finetune_trains_on_train_and_validates_on_val_only():
    """A split with a test side: fine-tuning holds the test groups out (known, never used)."""
    from dl_utils.finetune.data import FrameRef, MaskDataset, MaskSample
    from dl_utils.finetune.train import TrainOptions, _split_for

    def sample(g: str) -> MaskSample:
        return MaskSample(FrameRef(media=g, frame=0, group=g, name=g), 1, "x", np.ones((4, 4), bool), "keyframe")

    data = MaskDataset([sample(g) for g in ("a", "b", "c", "d")], ("s",), "reviewed", "group", None)
    split = Split(train=("a", "b"), val=("c",), seed=0, val_fraction=0.1, by="group", test=("d",))
    got, train, val = _split_for(data, split, TrainOptions())
    assert got == split and train.groups() == ["a", "b"] and val.groups() == ["c"]
    with pytest.raises(InputError, match="in neither side of the given split"):
        _split_for(data, Split(train=("a", "b"), val=("c",), seed=0, val_fraction=0.1, by="group"), TrainOptions())


# ----------------------------------------------------------------------------- stats
def _direct_count(paths, split):
    """Everything dataset_stats reports, counted here from the raw instances."""
    out: dict[str, dict] = {}
    for p in paths:
        with AnnotationStore.open(p, readonly=True) as st:
            media = st.media
            groups = frame_groups(st)
            names = {o.id: o.label for o in st.objects()}
            for f in media.frames:
                side = split.side(groups[f]) if split else "all"
                d = out.setdefault(side or "unassigned", {"images": set(), "annotated": set(), "groups": set(),
                                                          "inst": {}, "hist": [0] * (len(AREA_EDGES) - 1)})
                d["images"].add((groups[f], f))
                d["groups"].add(groups[f])
                w, h = media.size_of(f)
                for inst in st.read_frame(f):
                    # masks counted here; the one polygon is the 11 x 8 pixel rectangle its vertices
                    # (pixel centres, inclusive) span
                    area = int(inst.mask.sum()) if inst.mask is not None else 88 if inst.polygon else inst.area
                    if inst.is_empty or area == 0:
                        continue
                    d["annotated"].add((groups[f], f))
                    d["inst"][names[inst.object_id]] = d["inst"].get(names[inst.object_id], 0) + 1
                    frac = area / (w * h)
                    b = int(np.searchsorted(np.asarray(AREA_EDGES), frac, side="right")) - 1
                    d["hist"][min(max(b, 0), len(AREA_EDGES) - 2)] += 1
    return out


def test_stats_equal_a_direct_count(tmp_path):
    paths = [video_store(tmp_path / f"m{i}.sqlite", f"m{i}.mp4", {"cat": 3 + i, "dog": 10 - i}, masks=True)
             for i in range(5)]
    # an image set of mixed sizes: each image its own group; an empty instance and a polygon
    (tmp_path / "shots").mkdir()
    media = MediaInfo(name="shots", width=W, height=H, frames=[0, 1, 2], frame_names=["a.png", "b.png", "c.png"],
                      path=str(tmp_path / "shots"), frame_sizes=[(W, H), (20, 10), (W, H)])
    with AnnotationStore.create(tmp_path / "img.sqlite", media) as st:
        o = st.add_object("cat")
        p = st.add_object("dog")
        m = np.zeros((10, 20), bool)
        m[2:5, 3:9] = True
        st.write_frames([(0, [Instance(o.id, polygon=[[2.0, 2.0, 12.0, 2.0, 12.0, 9.0, 2.0, 9.0]])]),
                         (1, [Instance(o.id, mask=m), Instance(p.id, mask=np.zeros((10, 20), bool))])])
    paths.append(tmp_path / "img.sqlite")
    split = split_stores(paths, SplitOptions((0.6, 0.2, 0.2), seed=1), progress=False).split
    for sp in (None, split, Split(train=split.train, val=split.val, seed=0, val_fraction=0.2, by="group")):
        stats = dataset_stats(paths, split=sp, progress=False)
        want = _direct_count(paths, sp)
        assert [s.name for s in stats.sides] == (
            ["all"] if sp is None else ["train", "val", "test"] if sp.test else ["train", "val", "unassigned"])
        for s in stats.sides:
            d = want.get(s.name)
            assert d is not None, s.name
            assert s.images == len(d["images"]) and s.annotated_images == len(d["annotated"])
            assert s.groups == len(d["groups"]) and dict(s.instances) == d["inst"]
            assert s.area_hist == d["hist"]
    all_ = dataset_stats(paths, progress=False).side("all")
    longest = [max(3 + i, 10 - i) for i in range(5)]  # frames with an instance per video
    assert all_.images == sum(n + 2 for n in longest) + 3
    assert all_.annotated_images == sum(longest) + 2  # image c.png has none, b.png's dog is empty
    assert all_.instances["cat"] == sum(3 + i for i in range(5)) + 2  # the polygon and the image mask
    assert all_.instances["dog"] == sum(10 - i for i in range(5)) and all_.groups == 5 + 3
    # the split's counts (masks not decoded) agree: empty instances are left out there too
    counts = group_counts(paths, progress=False)
    assert {c: sum(g.instances.get(c, 0) for g in counts.values()) for c in ("cat", "dog")} == dict(all_.instances)
    assert sum(g.frames for g in counts.values()) == all_.images
    text = dataset_stats(paths, split=split, progress=False).table()
    assert "annotated images" in text and "cat" in text and "train" in text.splitlines()[0]


def test_stats_chart_is_a_png_written_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    from dl_utils.datasets.stats import write_chart

    paths = [video_store(tmp_path / f"m{i}.sqlite", f"m{i}.mp4", {"cat": 4, "dog": 2}, masks=True) for i in range(3)]
    out = tmp_path / "charts" / "stats.png"
    out.parent.mkdir()
    write_chart(dataset_stats(paths, progress=False), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(out.parent)) == ["stats.png"]  # no temporary file left
    with pytest.raises(OutputError, match="folder"):
        write_chart(dataset_stats(paths, progress=False), out.parent)


# ----------------------------------------------------------------------------- remap
TABLE = [
    {"name": "vehicle"},
    {"name": "car", "superclass": "vehicle", "synonyms": "automobile"},
    {"name": "truck", "superclass": "vehicle", "synonyms": "lorry"},
    {"name": "person", "synonyms": "pedestrian"},
]


def _dump(path: Path) -> dict:
    """Every table of a store as rows, for 'nothing else changed' comparisons."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {n: con.execute(f"SELECT * FROM {n}").fetchall() for n in names}
    finally:
        con.close()


def _remap_store(path: Path) -> Path:
    media = MediaInfo(name="road.mp4", width=W, height=H, frames=list(range(4)), path="road.mp4")
    with AnnotationStore.create(path, media) as st:
        st.set_labels([Label("Automobile", "#ff0000", attributes=("parked",)), Label("lorry"), Label("person")])
        a = st.add_object("Automobile", attributes={"plate": "X"})
        b = st.add_object("trucks")
        c = st.add_object("pedestrian")
        run = st.begin_run("import", {"file": "x.xml"})
        m = np.zeros((H, W), bool)
        m[3:9, 4:20] = True
        st.write_frames([(f, [Instance(a.id, mask=m, provenance=Provenance(engine="import"), label="auto"),
                              Instance(b.id, box=(1.0, 2.0, 8.0, 9.0)), Instance(c.id, polygon=[[1, 1, 9, 1, 9, 9]])])
                         for f in range(4)], run_id=run)
        st.finish_run(run)
        st.set_meta("note", {"kept": True})
    return path


def test_remap_renames_labels_and_keeps_everything_else(tmp_path):
    table = ClassTable.from_records(TABLE)
    src = _remap_store(tmp_path / "road.sqlite")
    before = _dump(src)
    res = remap_store(src, table, out=tmp_path / "new.sqlite")
    assert res.plan.changes == {"Automobile": "car", "lorry": "truck", "trucks": "truck", "pedestrian": "person"}
    assert _dump(src) == before  # --out: the source is untouched
    after = _dump(tmp_path / "new.sqlite")
    with AnnotationStore.open(tmp_path / "new.sqlite", readonly=True) as st:
        assert [o.label for o in st.objects()] == ["car", "truck", "person"]
        assert st.objects()[0].attributes == {"plate": "X"}
        labels = {lb.name: lb for lb in st.labels()}
        assert list(labels) == ["car", "truck", "person"]
        assert labels["car"].superclass == "vehicle" and labels["car"].attributes == ("parked",)
        assert labels["car"].color == table["car"].color  # the table's colour
        runs = st.runs()
        assert [r["kind"] for r in runs] == ["import", "remap"]
        assert runs[1]["params"]["changed"]["Automobile"] == "car"
        assert st.read_frame(0)[0].label == "auto"  # the detector's phrase is kept as provenance
    # everything but labels, objects' labels and the new run: the same rows
    for t in before:
        if t in ("labels", "objects", "runs", "sqlite_sequence"):
            continue
        assert after[t] == before[t], t
    assert [r[0] for r in after["objects"]] == [r[0] for r in before["objects"]]
    assert [r[2:] for r in after["objects"]] == [r[2:] for r in before["objects"]]
    assert after["runs"][0] == before["runs"][0]


def test_remap_to_superclass_in_place_through_a_symlink(tmp_path):
    table = ClassTable.from_records(TABLE)
    src = _remap_store(tmp_path / "road.sqlite")
    os.chmod(src, 0o640)
    link = tmp_path / "link.sqlite"
    link.symlink_to(src.name)
    before = _dump(src)
    res = remap_store(link, table, options=RemapOptions(to="superclass"))
    assert link.is_symlink() and res.out == link  # written through: the link still points at the store
    assert oct(src.stat().st_mode & 0o777) == oct(0o640)
    with AnnotationStore.open(src, readonly=True) as st:
        assert [o.label for o in st.objects()] == ["vehicle", "vehicle", "person"]
        assert [lb.name for lb in st.labels()] == ["vehicle", "person"]
    assert _dump(src)["instances"] == before["instances"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging file left
    # nothing left to change: the store is not rewritten
    mtime = src.stat().st_mtime_ns
    assert remap_store(src, table, options=RemapOptions(to="superclass")).out is None
    assert src.stat().st_mtime_ns == mtime


def test_remap_unknown_labels_refused_or_dropped(tmp_path):
    table = ClassTable.from_records(TABLE[:3])  # no person
    src = _remap_store(tmp_path / "road.sqlite")
    before = _dump(src)
    with pytest.raises(InputError) as e:
        remap_store(src, table)
    msg = str(e.value)
    assert "'person', 'pedestrian' are not in the class table" in msg and str(src) in msg and "\n" not in msg
    assert "--drop-unknown" in msg and _dump(src) == before
    dry = remap_store(src, table, options=RemapOptions(drop_unknown=True), dry_run=True)
    assert dry.out is None and dry.plan.dropped_objects == [3] and _dump(src) == before
    remap_store(src, table, options=RemapOptions(drop_unknown=True))
    with AnnotationStore.open(src, readonly=True) as st:
        assert [o.label for o in st.objects()] == ["car", "truck"]
        assert all(i.object_id != 3 for f in st.frames() for i in st.read_frame(f))
    taken = tmp_path / "x.sqlite"
    taken.write_bytes(b"keep")
    with pytest.raises(OutputError, match="already exists"):
        remap_store(src, table, out=taken)
    assert taken.read_bytes() == b"keep"
    with pytest.raises(InputError, match="does not exist"):
        remap_store(tmp_path / "missing.sqlite", table)
    with pytest.raises(InputError, match="--to"):
        RemapOptions(to="parent")


def test_remap_in_place_refused_while_a_run_writes(tmp_path):
    table = ClassTable.from_records(TABLE)
    src = _remap_store(tmp_path / "road.sqlite")
    with AnnotationStore.open(src) as st:
        run = st.begin_run("propagate", {})  # this process is alive: the run is still going
    before = _dump(src)
    with pytest.raises(InputError, match=f"a propagate run \\(id {run}, pid {os.getpid()}\\) is still writing"):
        remap_store(src, table)
    assert _dump(src) == before
    assert remap_store(src, table, out=tmp_path / "copy.sqlite").out == tmp_path / "copy.sqlite"  # a copy is fine
    assert remap_store(src, table, dry_run=True).out is None
