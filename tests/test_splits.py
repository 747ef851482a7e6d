"""dl_utils.splits: whole groups on one side, seeded, order-independent, saved atomically."""

from __future__ import annotations

import json
import os

import pytest

from dl_utils.errors import InputError
from dl_utils.splits import Split, split_groups


def test_whole_groups_deterministic_and_order_independent():
    groups = [f"videos/clip{i:02d}.mp4" for i in range(20)]
    a = split_groups(groups * 3, val_fraction=0.2, seed=7)
    b = split_groups(list(reversed(groups)), val_fraction=0.2, seed=7)
    assert a == b
    assert len(a.val) == 4 and len(a.train) == 16
    assert not set(a.train) & set(a.val)
    assert set(a.train) | set(a.val) == set(groups)
    assert a.by == "group" and a.seed == 7 and a.val_fraction == 0.2
    assert split_groups(groups, val_fraction=0.2, seed=8).val != a.val  # the seed matters


def test_adding_a_group_moves_no_other_group():
    groups = [f"g{i}" for i in range(40)]
    a = split_groups(groups, val_fraction=0.25, seed=1)
    b = split_groups(groups + ["new"], val_fraction=0.25, seed=1)
    moved = [g for g in groups if a.side(g) != b.side(g)]
    assert len(moved) <= 1  # at most the boundary group (the val count may change by one)


def test_small_sets_keep_both_sides():
    s = split_groups(["a", "b"], val_fraction=0.01)
    assert len(s.val) == 1 and len(s.train) == 1
    s = split_groups(["a", "b", "c"], val_fraction=0.99)
    assert len(s.val) == 2 and len(s.train) == 1


def test_refusals_say_what_to_do():
    with pytest.raises(InputError, match="1 video \\(group\\) cannot fill 2 sides.*add more videos"):
        split_groups(["only.mp4"])
    with pytest.raises(InputError, match="add more annotated images"):
        split_groups(["a.png"], by="item")
    with pytest.raises(InputError, match="between 0 and 1"):
        split_groups(["a", "b"], val_fraction=0.0)
    with pytest.raises(InputError, match="by="):
        split_groups(["a", "b"], by="video")
    with pytest.raises(InputError, match="both sides"):
        Split(train=("a",), val=("a",), seed=0, val_fraction=0.5, by="group")


def test_json_round_trip_and_atomic_save(tmp_path):
    s = split_groups([f"i{k}.png" for k in range(10)], by="item", seed=3, val_fraction=0.3)
    assert Split.from_json(json.loads(json.dumps(s.to_json()))) == s
    p = s.save(tmp_path / "sub" / "split.json")
    assert Split.load(p) == s
    assert sorted(os.listdir(tmp_path / "sub")) == ["split.json"]  # no temporary file left
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="bad.json"):
        Split.load(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text('{"train": 1}')
    with pytest.raises(InputError, match="bad2.json.*not a split record"):
        Split.load(tmp_path / "bad2.json")
    with pytest.raises(InputError, match="missing.json"):
        Split.load(tmp_path / "missing.json")


# ------------------------------------------------------------------ test side, group keys (issue 19)
def test_three_sides_and_old_records_load():
    s = Split(train=("a", "b"), val=("c",), seed=1, val_fraction=0.1, by="group", test=("d",),
              ratios=(0.8, 0.1, 0.1))
    assert [s.side(g) for g in "abcde"] == ["train", "train", "val", "test", None]
    assert s.groups("test") == ("d",)
    assert Split.from_json(json.loads(json.dumps(s.to_json()))) == s
    with pytest.raises(InputError, match="'c' is on both sides \\(val and test\\)"):
        Split(train=("a",), val=("c",), seed=0, val_fraction=0.5, by="group", test=("c",))
    # a record written before test sides existed: no "test"/"ratios" keys, and a two-sided split
    # writes none, so a fine-tune run's identity (which holds the record) is unchanged
    old = {"train": ["a"], "val": ["b"], "seed": 0, "val_fraction": 0.5, "by": "group"}
    two = Split.from_json(old)
    assert two.test == () and two.ratios == () and two.to_json() == old


def test_group_key_is_the_frame_group_rule(tmp_path):
    from pathlib import Path

    from dl_utils.annotations import MediaInfo
    from dl_utils.datasets.groups import frame_groups
    from dl_utils.splits import group_key
    from dl_utils.store import AnnotationStore

    assert group_key("v/clip.mp4") == "v/clip.mp4"
    assert group_key("shots", "a.png") == str(Path("shots") / "a.png")
    (tmp_path / "shots").mkdir()
    video = MediaInfo(name="clip.mp4", width=8, height=6, frames=[0, 1, 2], path="clip.mp4")
    images = MediaInfo(name="shots", width=8, height=6, frames=[0, 1], frame_names=["a.png", "b.png"],
                       path=str(tmp_path / "shots"))
    with AnnotationStore.create(tmp_path / "v.sqlite", video) as st:
        # the video is not beside the store: the recorded path names the group
        assert frame_groups(st) == {0: "clip.mp4", 1: "clip.mp4", 2: "clip.mp4"}
        (tmp_path / "clip.mp4").write_bytes(b"")  # now beside the store: finetune's path
        assert set(frame_groups(st).values()) == {str(tmp_path / "clip.mp4")}
        with pytest.raises(InputError, match="is a video; by='item'.*--by group"):
            frame_groups(st, by="item")
    with AnnotationStore.create(tmp_path / "i.sqlite", images) as st:
        want = {0: group_key(tmp_path / "shots", "a.png"), 1: group_key(tmp_path / "shots", "b.png")}
        assert frame_groups(st) == frame_groups(st, by="item") == want


def test_save_writes_through_a_symlink_and_refuses_a_folder(tmp_path):
    from dl_utils.errors import OutputError

    s = Split(train=("a",), val=("b",), seed=0, val_fraction=0.5, by="group")
    real = tmp_path / "real.json"
    real.write_text("{}")
    os.chmod(real, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real.name)
    assert s.save(link) == link
    assert link.is_symlink() and Split.load(real) == s and oct(real.stat().st_mode & 0o777) == oct(0o640)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OutputError, match="dir.json is a folder"):
        s.save(tmp_path / "dir.json")
    (tmp_path / "dangling.json").symlink_to("nowhere.json")
    with pytest.raises(OutputError, match="which does not exist"):
        s.save(tmp_path / "dangling.json")


def test_frame_groups_without_a_media_path_or_with_one_image_file(tmp_path):
    from dl_utils.annotations import MediaInfo
    from dl_utils.datasets.groups import frame_groups, media_key
    from dl_utils.store import AnnotationStore

    bare = MediaInfo(name="coco", width=8, height=6, frames=[0, 1], frame_names=["a.jpg", "b.jpg"])
    with AnnotationStore.create(tmp_path / "bare.sqlite", bare) as st:
        # no media path: the store stands for its media, its images named inside it
        assert media_key(st) == str(tmp_path / "bare.sqlite")
        assert frame_groups(st) == {0: str(tmp_path / "bare.sqlite" / "a.jpg"), 1: str(tmp_path / "bare.sqlite" / "b.jpg")}
    (tmp_path / "one.png").write_bytes(b"")
    single = MediaInfo(name="one.png", width=8, height=6, frames=[0], frame_names=["one.png"],
                       path=str(tmp_path / "one.png"))
    with AnnotationStore.create(tmp_path / "one.sqlite", single) as st:
        assert frame_groups(st) == {0: str(tmp_path / "one.png")}  # an image file: its own path
    with AnnotationStore.create(tmp_path / "none.sqlite") as st:
        with pytest.raises(InputError, match="none.sqlite: the store has no media record"):
            frame_groups(st)
