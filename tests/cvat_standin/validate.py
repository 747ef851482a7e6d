"""Annotation payload validation, as CVAT's serializers (DRF) and annotation manager do it.

Two stages, like the server: field checks of ``LabeledDataSerializer`` (types, choices, required
fields, DRF's messages), then checks against the task (label ids, frame range of the task or job,
number of points per shape type, mask RLE length and box inside the frame, ids on update/delete).
Errors are 400 answers with a DRF-style body naming the list, the item index and the field, e.g.
``{"shapes": {"3": {"points": ["..."]}}}``. (DRF lists an empty ``{}`` for every valid item; the
stand-in names only the failing ones so a message about item 900 of 1000 stays readable.)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

SHAPE_TYPES = ("rectangle", "polygon", "polyline", "points", "ellipse", "cuboid", "mask", "skeleton")
SOURCES = ("manual", "auto", "semi-auto", "file", "consensus")
LABEL_TYPES = ("any", "cuboid", "ellipse", "mask", "points", "polygon", "polyline", "rectangle",
               "skeleton", "tag")

REQUIRED = "This field is required."
NOT_INT = "A valid integer is required."
NOT_NUMBER = "A valid number is required."
NOT_BOOL = "Must be a valid boolean."
MIN0 = "Ensure this value is greater than or equal to 0."


class ApiError(Exception):
    """An HTTP error answer: status and a JSON body."""

    def __init__(self, status: int, body: Any):
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


def bad_request(body: Any) -> ApiError:
    return ApiError(400, body)


class Errors:
    """Collects errors per list, item index and field."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def add(self, section: str, index: int | None, fld: str, msg: str) -> None:
        if index is None:  # an error about the whole list
            self.data.setdefault(section, []).append(msg)
            return
        self.data.setdefault(section, {}).setdefault(str(index), {}).setdefault(fld, []).append(msg)

    def raise_if_any(self) -> None:
        if self.data:
            raise bad_request(self.data)


# ------------------------------------------------------------------------------------------ fields
def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    return None


def _float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def _bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if v in (0, 1, "0", "1", "true", "false", "True", "False"):
        return v in (1, "1", "true", "True")
    return None


class _Item:
    """Field parsing of one list item, errors going to ``errs`` under ``section``/``index``."""

    def __init__(self, raw: Any, errs: Errors, section: str, index: int):
        self.raw = raw if isinstance(raw, dict) else {}
        self.errs, self.section, self.index = errs, section, index
        self.ok = isinstance(raw, dict)
        if not self.ok:
            errs.add(section, index, "non_field_errors",
                     f"Invalid data. Expected a dictionary, but got {type(raw).__name__}.")

    def err(self, fld: str, msg: str) -> None:
        self.ok = False
        self.errs.add(self.section, self.index, fld, msg)

    def int(self, fld: str, *, default: Any = REQUIRED, minimum: int | None = None,
            nullable: bool = False) -> Any:
        if fld not in self.raw:
            if default is REQUIRED:
                self.err(fld, REQUIRED)
                return None
            return default
        v = self.raw[fld]
        if v is None and nullable:
            return None
        iv = _int(v)
        if iv is None:
            self.err(fld, NOT_INT)
            return None
        if minimum is not None and iv < minimum:
            self.err(fld, f"Ensure this value is greater than or equal to {minimum}.")
        return iv

    def float(self, fld: str, default: float, lo: float | None = None, hi: float | None = None) -> float:
        if fld not in self.raw or self.raw[fld] is None:
            return default
        f = _float(self.raw[fld])
        if f is None:
            self.err(fld, NOT_NUMBER)
            return default
        if lo is not None and f < lo:
            self.err(fld, f"Ensure this value is greater than or equal to {lo:g}.")
        if hi is not None and f > hi:
            self.err(fld, f"Ensure this value is less than or equal to {hi:g}.")
        return f

    def bool(self, fld: str, default: bool = False) -> bool:
        if fld not in self.raw:
            return default
        b = _bool(self.raw[fld])
        if b is None:
            self.err(fld, NOT_BOOL)
            return default
        return b

    def choice(self, fld: str, choices: Iterable[str], default: Any = REQUIRED) -> Any:
        if fld not in self.raw:
            if default is REQUIRED:
                self.err(fld, REQUIRED)
                return None
            return default
        v = self.raw[fld]
        if not isinstance(v, str) or v not in choices:
            self.err(fld, f'"{v}" is not a valid choice.')
            return None
        return v

    def attributes(self) -> list[dict]:
        raw = self.raw.get("attributes", [])
        out = []
        if not isinstance(raw, list):
            self.err("attributes", f'Expected a list of items but got type "{type(raw).__name__}".')
            return out
        for a in raw:
            if not isinstance(a, dict) or _int(a.get("spec_id")) is None or "value" not in a:
                self.err("attributes", "Each attribute needs an integer spec_id and a value.")
                continue
            value = str(a["value"])
            if len(value) > 4096:
                self.err("attributes", "Ensure this field has no more than 4096 characters.")
            out.append({"spec_id": _int(a["spec_id"]), "value": value})
        return out

    def points(self) -> list[float]:
        raw = self.raw.get("points", [])
        if not isinstance(raw, list):
            self.err("points", f'Expected a list of items but got type "{type(raw).__name__}".')
            return []
        bad = [i for i, v in enumerate(raw) if isinstance(v, bool) or not isinstance(v, (int, float))
               or not math.isfinite(v)]
        if bad:
            self.err("points", f"item {bad[0]}: Value must be a float or an integer")
            return []
        return [float(v) for v in raw]


def _shape_fields(it: _Item, *, tracked: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"id": it.int("id", default=None, nullable=True)}
    d["type"] = it.choice("type", SHAPE_TYPES)
    d["frame"] = it.int("frame", minimum=0)
    d["occluded"] = it.bool("occluded")
    d["outside"] = it.bool("outside")
    d["z_order"] = it.int("z_order", default=0) or 0
    d["rotation"] = it.float("rotation", 0.0, 0.0, 360.0)
    d["points"] = it.points()
    d["attributes"] = it.attributes()
    return d


def _annotation_fields(it: _Item) -> dict[str, Any]:
    return {
        "id": it.int("id", default=None, nullable=True),
        "frame": it.int("frame", minimum=0),
        "label_id": it.int("label_id", minimum=0),
        "group": it.int("group", default=None, minimum=0, nullable=True),
        "source": it.choice("source", SOURCES, default="manual"),
    }


def parse_shape(raw: Any, errs: Errors, section: str, index: int, *, element: bool = False) -> dict | None:
    it = _Item(raw, errs, section, index)
    if not it.ok:
        return None
    d = _annotation_fields(it)
    d.update(_shape_fields(it, tracked=False))
    d["score"] = it.float("score", 1.0, 0.0, 1.0)
    els = []
    if not element:
        raw_els = it.raw.get("elements") or []
        if not isinstance(raw_els, list):
            it.err("elements", "Expected a list of items.")
            raw_els = []
        for k, e in enumerate(raw_els):
            el = parse_shape(e, errs, f"{section}[{index}].elements", k, element=True)
            if el is not None:
                els.append(el)
        d["elements"] = els
    return d if it.ok else None


def parse_track(raw: Any, errs: Errors, section: str, index: int, *, element: bool = False) -> dict | None:
    it = _Item(raw, errs, section, index)
    if not it.ok:
        return None
    d = _annotation_fields(it)
    d["attributes"] = it.attributes()
    shapes = it.raw.get("shapes")
    if not isinstance(shapes, list):
        it.err("shapes", REQUIRED if shapes is None else "Expected a list of items.")
        shapes = []
    parsed = []
    for k, s in enumerate(shapes):
        si = _Item(s, errs, f"{section}[{index}].shapes", k)
        if not si.ok:
            it.ok = False
            continue
        sd = _shape_fields(si, tracked=True)
        if not si.ok:
            it.ok = False
        parsed.append(sd)
    d["shapes"] = parsed
    els = []
    if not element:
        for k, e in enumerate(it.raw.get("elements") or []):
            el = parse_track(e, errs, f"{section}[{index}].elements", k, element=True)
            if el is not None:
                els.append(el)
        d["elements"] = els
    return d if it.ok else None


def parse_tag(raw: Any, errs: Errors, section: str, index: int) -> dict | None:
    it = _Item(raw, errs, section, index)
    if not it.ok:
        return None
    d = _annotation_fields(it)
    d["attributes"] = it.attributes()
    return d if it.ok else None


def parse_labeled_data(body: Any) -> dict[str, Any]:
    """Stage 1: ``LabeledDataSerializer`` field validation. Returns normalised tags/shapes/tracks."""
    if not isinstance(body, dict):
        raise bad_request({"non_field_errors": [
            f"Invalid data. Expected a dictionary, but got {type(body).__name__}."]})
    errs = Errors()
    out: dict[str, Any] = {"version": _int(body.get("version", 0)) or 0}
    for section, parse in (("tags", parse_tag), ("shapes", parse_shape), ("tracks", parse_track)):
        raw = body.get(section, [])
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            errs.add(section, None, "", f'Expected a list of items but got type "{type(raw).__name__}".')
            continue
        items = []
        for i, r in enumerate(raw):
            p = parse(r, errs, section, i)
            if p is not None:
                items.append(p)
        out[section] = items
    errs.raise_if_any()
    return out


# ------------------------------------------------------------------------------------------ points
def mask_problem(points: list[float], width: int, height: int) -> str | None:
    """Why ``points`` is not a CVAT mask of a ``width`` x ``height`` frame (None when it is).

    CVAT's mask points are RLE runs (alternating background / foreground, starting with
    background) of the box's pixels in row order, followed by the box ``[left, top, right, bottom]``
    (inclusive). The runs must cover the box exactly and the box must lie in the frame.
    """
    if len(points) < 5:
        return f"a mask needs RLE runs and 4 box values, got {len(points)} values"
    if any(not float(v).is_integer() for v in points):
        return "mask RLE runs and box must be integers"
    *runs, left, top, right, bottom = (int(v) for v in points)
    if any(r < 0 for r in runs):
        return "mask RLE holds a negative run length"
    if not (left <= right and top <= bottom):
        return f"mask box [{left}, {top}, {right}, {bottom}] is empty (right < left or bottom < top)"
    if not (0 <= left and 0 <= top and right < width and bottom < height):
        return (f"mask box [{left}, {top}, {right}, {bottom}] lies outside the {width}x{height}"
                " frame")
    area = (right - left + 1) * (bottom - top + 1)
    total = sum(runs)
    if total != area:
        return (f"mask RLE runs sum to {total} but the box [{left}, {top}, {right}, {bottom}]"
                f" holds {area} pixels")
    return None


def points_problem(shape_type: str, points: list[float], size: tuple[int, int] | None,
                   has_elements: bool = False) -> str | None:
    n = len(points)
    if shape_type == "mask":
        if size is None:
            return None
        return mask_problem(points, size[0], size[1])
    if shape_type in ("rectangle", "ellipse"):
        return None if n == 4 else f"a {shape_type} needs 4 points values, got {n}"
    if shape_type == "polygon":
        return None if n >= 6 and n % 2 == 0 else \
            f"a polygon needs at least 3 points (6 values, an even number), got {n} values"
    if shape_type == "polyline":
        return None if n >= 4 and n % 2 == 0 else \
            f"a polyline needs at least 2 points (4 values, an even number), got {n} values"
    if shape_type == "points":
        return None if n >= 2 and n % 2 == 0 else f"points need an even number >= 2 of values, got {n}"
    if shape_type == "cuboid":
        return None if n == 16 else f"a cuboid needs 16 points values, got {n}"
    if shape_type == "skeleton":
        return None if has_elements else "a skeleton needs its elements"
    return None


# ------------------------------------------------------------------------------------------ semantics
def label_accepts(label_type: str, shape_type: str | None) -> bool:
    """Whether a label of ``label_type`` may carry a shape of ``shape_type`` (``None``: a tag).

    CVAT's label types (cvat/apps/engine/models.py ``LabelType``) name the one shape type a label is
    for; ``any`` takes every type. The UI enforces it; the stand-in refuses it on the API too (where
    the server's own check is not certain, the stand-in is the stricter one).
    """
    if label_type in ("any", None, ""):
        return True
    if shape_type is None:
        return label_type == "tag"
    return label_type == shape_type


def check_against_task(
    data: dict[str, Any],
    *,
    frame_range: tuple[int, int],
    where: str,
    label_ids: set[int],
    size_of: Callable[[int], tuple[int, int] | None],
    labels: dict[int, dict] | None = None,
) -> None:
    """Stage 2: labels of the task (existence, type, attribute specs), frames in the task / job
    range, points per shape type."""
    lo, hi = frame_range
    errs = Errors()
    labels = labels or {}

    def type_ok(section: str, i: int, lid: int, shape_type: str | None, fld: str = "type") -> None:
        lb = labels.get(lid)
        if lb is not None and not label_accepts(lb.get("type"), shape_type):
            what = "a tag" if shape_type is None else f"a {shape_type} shape"
            errs.add(section, i, fld, f"label {lid} ({lb.get('name')!r}) has type {lb.get('type')!r}"
                     f" and cannot take {what}")

    def attrs_ok(section: str, i: int, lid: int, attrs: list[dict], kind: str, fld: str = "attributes") -> None:
        # cvat/apps/dataset_manager/task.py _validate_attribute_for_existence: the spec must be one
        # of the label's; track attributes immutable specs, tracked-shape attributes mutable ones
        lb = labels.get(lid)
        if lb is None:
            return
        specs = {a["id"]: a for a in lb.get("attributes") or []}
        for a in attrs:
            spec = specs.get(a["spec_id"])
            if spec is None or (kind == "immutable" and spec.get("mutable")) or (
                    kind == "mutable" and not spec.get("mutable")):
                errs.add(section, i, fld, f"spec_id `{a['spec_id']}` is invalid")

    def frame_ok(section: str, i: int, f: int, fld: str = "frame") -> bool:
        if not lo <= f <= hi:
            errs.add(section, i, fld, f"frame {f} is outside {where} (frames {lo}..{hi})")
            return False
        return True

    def label_ok(section: str, i: int, lid: int) -> None:
        if lid not in label_ids:
            errs.add(section, i, "label_id", f"label {lid} does not belong to {where}; its labels are"
                     f" {sorted(label_ids)}")

    for i, t in enumerate(data.get("tags", [])):
        frame_ok("tags", i, t["frame"])
        label_ok("tags", i, t["label_id"])
        type_ok("tags", i, t["label_id"], None, "label_id")
        attrs_ok("tags", i, t["label_id"], t.get("attributes") or [], "all")
    for i, s in enumerate(data.get("shapes", [])):
        ok = frame_ok("shapes", i, s["frame"])
        label_ok("shapes", i, s["label_id"])
        type_ok("shapes", i, s["label_id"], s["type"])
        attrs_ok("shapes", i, s["label_id"], s.get("attributes") or [], "all")
        msg = points_problem(s["type"], s["points"], size_of(s["frame"]) if ok else None,
                             bool(s.get("elements")))
        if msg:
            errs.add("shapes", i, "points", msg)
        for k, e in enumerate(s.get("elements") or []):
            m = points_problem(e["type"], e["points"], size_of(e["frame"]) if ok else None)
            if m:
                errs.add("shapes", i, f"elements[{k}].points", m)
    for i, t in enumerate(data.get("tracks", [])):
        frame_ok("tracks", i, t["frame"])
        label_ok("tracks", i, t["label_id"])
        attrs_ok("tracks", i, t["label_id"], t.get("attributes") or [], "immutable")
        if not t["shapes"] and not t.get("elements"):
            errs.add("tracks", i, "shapes", "a track needs at least one shape")
        for k, sh in enumerate(t["shapes"]):
            type_ok("tracks", i, t["label_id"], sh["type"], f"shapes[{k}].type")
            attrs_ok("tracks", i, t["label_id"], sh.get("attributes") or [], "mutable",
                     f"shapes[{k}].attributes")
        if t["shapes"] and all(sh["type"] == "mask" for sh in t["shapes"]):
            errs.add("tracks", i, "shapes", "masks cannot be tracked (CVAT has no mask tracks);"
                     " send them as shapes")
        types = {s["type"] for s in t["shapes"]}
        if len(types) > 1:
            errs.add("tracks", i, "shapes", f"a track's shapes must share one type, got {sorted(types)}")
        frames = [s["frame"] for s in t["shapes"]]
        if len(set(frames)) != len(frames):
            errs.add("tracks", i, "shapes", "a track has two shapes on one frame")
        # a track frame different from its first shape's is corrected when stored (as CVAT's
        # _correct_frame_of_tracked_shapes does), not refused
        for k, s in enumerate(t["shapes"]):
            if not frame_ok("tracks", i, s["frame"], f"shapes[{k}].frame"):
                continue
            msg = points_problem(s["type"], s["points"], size_of(s["frame"]), bool(t.get("elements")))
            if msg:
                errs.add("tracks", i, f"shapes[{k}].points", msg)
    errs.raise_if_any()


__all__ = ["ApiError", "Errors", "LABEL_TYPES", "SHAPE_TYPES", "SOURCES", "bad_request",
           "check_against_task", "mask_problem", "parse_labeled_data", "points_problem"]
