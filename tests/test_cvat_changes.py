"""The pull report's ``changes``: how much people changed the pushed pre-annotation (issue 15 item 6).

Against the CVAT stand-in through the real cvat-sdk: push a store, change shapes on the server the
way a person would (edit, delete, draw, add to an object), pull, and check every number exactly
against IoUs computed here by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dl_utils.cv_utils import box_to_mask, encode_cvat_rle, mask_iou
from dl_utils.cvat import pull, push
from dl_utils.cvat.changes import CellChange, format_changes, summarize
from dl_utils.cvat.push import push_state
from tests.cvat_standin.fixtures import cvat_server  # noqa: F401  (fixture)
from tests.test_cvat import FRAMES, H, W, job  # noqa: F401  (job is a fixture)


def _label_id(conn, task_id: int, name: str) -> int:
    return [lb for lb in conn.get_paginated("/api/labels", {"task_id": task_id}, what="l")
            if lb["name"] == name][0]["id"]


def _patch(conn, job_id: int, action: str, shapes: list) -> list:
    return conn.request("PATCH", f"/api/jobs/{job_id}/annotations", query={"action": action},
                        body={"version": 0, "tags": [], "tracks": [], "shapes": shapes},
                        what=f"a person: {action}")["shapes"]


def _new_mask(frame: int, label_id: int, mask: np.ndarray, group: int = 0) -> dict:
    return {"type": "mask", "frame": frame, "label_id": label_id, "group": group, "source": "manual",
            "points": encode_cvat_rle(mask), "occluded": False, "z_order": 0, "rotation": 0.0,
            "outside": False, "attributes": []}


def test_summarize_counts_and_means():
    cells = [CellChange(1, 1, "car", "unchanged", 1.0), CellChange(2, 1, "car", "edited", 0.5),
             CellChange(3, 2, "person", "deleted", 0.0), CellChange(4, 5, "car", "added")]
    s = summarize(cells)
    assert s["overall"] == {"unchanged": 1, "edited": 1, "deleted": 1, "added": 1,
                            "mean_iou": 0.5, "mean_iou_edited": 0.5}
    assert s["labels"]["car"]["mean_iou"] == 0.75 and s["labels"]["person"]["mean_iou"] == 0.0
    assert s["objects"][-1] == {"object": 5, "label": "car", "unchanged": 0, "edited": 0, "deleted": 0,
                                "added": 1, "mean_iou": None, "mean_iou_edited": None}
    table = format_changes(s)
    assert table.splitlines()[0].split()[:2] == ["label", "unchanged"] and "all" in table
    assert summarize([]) == {"overall": {"unchanged": 0, "edited": 0, "deleted": 0, "added": 0,
                                         "mean_iou": None, "mean_iou_edited": None},
                             "labels": {}, "objects": []}


def test_pull_reports_what_people_changed(job):  # noqa: F811
    st, exp, conn, task = job
    push(st, conn, task.id)
    units = push_state(st, conn.host, task.id).units
    j0 = task.jobs[0].id
    car, person = _label_id(conn, task.id, "car"), _label_id(conn, task.id, "person")
    by_id = {s["id"]: s for s in conn.request("GET", f"/api/jobs/{j0}/annotations", what="r")["shapes"]}
    # edit: object 1 on FRAMES[2] loses its left 10 columns
    edited = dict(by_id[units[f"m:{FRAMES[2]}:1"].server_id])
    edited_mask = exp[(FRAMES[2], 1)].copy()
    edited_mask[:, :10] = False
    edited.update(points=encode_cvat_rle(edited_mask), source="manual")
    _patch(conn, j0, "update", [edited])
    # delete: object 3 on FRAMES[3]
    _patch(conn, j0, "delete", [by_id[units[f"m:{FRAMES[3]}:3"].server_id]])
    # draw: a new car on task frame 1; object 2 where the model saw nothing (task frame 4: a gap);
    # and a second piece of object 3 on task frame 0, next to our mask (the instance is the union)
    drawn = np.zeros((H, W), bool)
    drawn[30:40, 5:20] = True
    extra = np.zeros((H, W), bool)
    extra[0:4, 50:60] = True
    _patch(conn, j0, "create", [_new_mask(1, car, drawn), _new_mask(4, person, drawn, group=2),
                                _new_mask(0, car, extra, group=3)])

    dry = pull(st, conn, task.id, dry_run=True)
    rep = pull(st, conn, task.id)
    assert dry.changes == rep.changes  # measured before the write, so a dry run says the same
    c = rep.changes
    iou_edit = mask_iou(exp[(FRAMES[2], 1)], edited_mask)
    iou_union = mask_iou(exp[(FRAMES[0], 3)], exp[(FRAMES[0], 3)] | extra)
    assert 0 < iou_edit < 1 and 0 < iou_union < 1
    n = len(exp)
    assert c["overall"] == {
        "unchanged": n - 3, "edited": 2, "deleted": 1, "added": 2,
        "mean_iou": round((n - 3 + iou_edit + iou_union) / n, 6),
        "mean_iou_edited": round((iou_edit + iou_union) / 2, 6)}
    objs = {o["object"]: o for o in c["objects"]}
    new_id = [o.id for o in st.objects() if o.id not in (1, 2, 3)][0]
    assert objs[1]["edited"] == 1 and objs[1]["mean_iou_edited"] == round(iou_edit, 6)
    assert (objs[3]["edited"], objs[3]["deleted"]) == (1, 1)
    assert objs[3]["mean_iou"] == round((sum(1 for f, o in exp if o == 3) - 2 + iou_union) /
                                        sum(1 for f, o in exp if o == 3), 6)
    assert (objs[2]["added"], objs[2]["unchanged"]) == (1, sum(1 for f, o in exp if o == 2))
    assert objs[new_id] == {"object": new_id, "label": "car", "unchanged": 0, "edited": 0, "deleted": 0,
                            "added": 1, "mean_iou": None, "mean_iou_edited": None}
    assert c["labels"]["person"]["added"] == 1 and c["labels"]["car"]["deleted"] == 1
    json.dumps(rep.summary())  # JSON-able as the CLI prints it
    text = str(rep)
    assert text.splitlines()[0].startswith(f"task {task.id}: read") and "what people changed" in text
    assert f"{round((iou_edit + iou_union) / 2, 3):.3f}" in text.splitlines()[-1]


@pytest.mark.parametrize("rasterize", [True, False])
def test_box_tracks_compare_as_pushed(job, rasterize):  # noqa: F811
    """A box push loses the mask's shape: that is not a person's change, so an edited track's
    untouched keyframes measure IoU 1 and only the moved box measures less."""
    st, exp, conn, task = job
    push(st, conn, task.id, shape="box")
    j0 = task.jobs[0].id
    tracks = conn.request("GET", f"/api/jobs/{j0}/annotations", what="r")["tracks"]
    t1 = [t for t in tracks if t["group"] == 1][0]
    old = [float(v) for v in t1["shapes"][2]["points"]]
    new = [old[0], old[1], old[2] + 5, old[3]]
    t1["shapes"][2]["points"] = new
    conn.request("PATCH", f"/api/jobs/{j0}/annotations", query={"action": "update"},
                 body={"version": 0, "tags": [], "shapes": [], "tracks": [t1]}, what="a person moves a box")
    rep = pull(st, conn, task.id, rasterize=rasterize)
    keyframes = [s for s in t1["shapes"] if not s["outside"]]
    moved = mask_iou(box_to_mask(old, H, W), box_to_mask(new, H, W))
    o1 = {o["object"]: o for o in rep.changes["objects"]}[1]
    assert (o1["edited"], o1["deleted"], o1["added"]) == (len(keyframes), 0, 0)
    assert o1["mean_iou_edited"] == round((len(keyframes) - 1 + moved) / len(keyframes), 6)
    assert rep.changes["overall"]["unchanged"] == len(exp) - len(keyframes)  # object 1 in job 2 too
