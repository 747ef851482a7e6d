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
    with pytest.raises(InputError, match="by='item'.*or add more videos"):
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
