"""dl_utils.formats.mattes: matte sequences for compositors (patterns, values read back, dilate and
feather measured, EXR, empty frames, the --json summary, the CLI, and files that are not ours)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dl_utils.annotations import Instance, MediaInfo
from dl_utils.cli import main
from dl_utils.errors import InputError, OutputError
from dl_utils.formats import EXPORT_FORMATS, export_store
from dl_utils.formats.mattes import MANIFEST, MatteOptions, MattePattern, disk, export_mattes, make_matte
from dl_utils.store import AnnotationStore

ROOT = Path(__file__).resolve().parent.parent
H, W = 60, 80
FRAMES = list(range(1001, 1007))  # shot numbers, as a plate is numbered


def square(y: int, x: int, s: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y : y + s, x : x + s] = True
    return m


@pytest.fixture
def shot(tmp_path):
    """Objects 1 car (mask, frames 1002-1004), 2 person (box, 1003), 3 car (polygon, 1004).

    Frames 1001, 1005 and 1006 have no mask for anyone. Returns (path, expected masks per object).
    """
    path = tmp_path / "shot.sqlite"
    media = MediaInfo(name="shot", width=W, height=H, frames=FRAMES, start=1001, stop=1006)
    exp: dict[int, dict[int, np.ndarray]] = {1: {}, 2: {}, 3: {}}
    with AnnotationStore.create(path, media) as st:
        car = st.add_object("car")
        person = st.add_object("person")
        car2 = st.add_object("car")
        for k, f in enumerate((1002, 1003, 1004)):
            m = square(10, 5 + 4 * k, 20)
            insts = [Instance(car.id, mask=m)]
            exp[car.id][f] = m
            if f == 1003:
                insts.append(Instance(person.id, box=(50.0, 30.0, 70.0, 50.0)))
                exp[person.id][f] = square(30, 50, 20)
            if f == 1004:
                ring = [40.0, 5.0, 60.0, 5.0, 60.0, 25.0, 40.0, 25.0]
                insts.append(Instance(car2.id, mask=square(5, 40, 20), polygon=[ring]))
                exp[car2.id][f] = square(5, 40, 20)
            st.write_frame(f, insts)
        st.write_frame(1005, [Instance(car.id, mask=np.zeros((H, W), bool))])  # processed, not visible
    return path, exp


def export(src: Path, out: Path, **opts):
    with AnnotationStore.open(src, readonly=True) as st:
        return export_mattes(st, out, **opts)


def read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def listing(folder: Path) -> list[str]:
    """The files in ``folder`` (recursively) but the manifest, which tests look at by name."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


# ---------------------------------------------------------------------------------------- patterns
@pytest.mark.parametrize("text, frame, name, width", [
    ("mask_%04d.png", 1001, "mask_1001.png", 4),
    ("mask_%d.png", 7, "mask_7.png", 0),
    ("mask.####.png", 42, "mask.0042.png", 4),
    ("m#.png", 1001, "m1001.png", 1),  # padding is a minimum, as printf and Nuke do
    ("%06d.png", 1001, "001001.png", 6),
    ("100%%_{{x}}_%04d.png", 3, "100%_{x}_0003.png", 4),
])
def test_frame_fields(text, frame, name, width):
    p = MattePattern.parse(text)
    assert p.render(frame) == name and p.frame_width == width
    assert not p.has_object and not p.has_label


def test_hashes_and_printf_are_one_pattern():
    assert MattePattern.parse("a_####.png").canonical == MattePattern.parse("a_%04d.png").canonical == "a_%04d.png"
    p = MattePattern.parse("{label}/obj{object}.%04d.exr", exr=True)
    assert p.has_object and p.has_label
    assert p.render(1001, 3, "traffic light") == "traffic_light/obj3.1001.exr"
    assert p.render(None, 3, "car") == "car/obj3.%04d.exr"
    assert p.canonical == "{label}/obj{object}.%04d.exr"


@pytest.mark.parametrize("text, needles", [
    ("mask.png", ["no frame field", "%04d", "####"]),
    ("mask_%04d_%04d.png", ["2 frame fields"]),
    ("a_####_%d.png", ["2 frame fields"]),
    ("mask_{frame}_%04d.png", ["unknown field {frame}", "{object}", "{label}"]),
    ("mask_%s_%04d.png", ["'%s_' is not a field", "%%"]),
    ("mask_%4d.png", ["is not a field", "%04d"]),
    ("mask_{_%04d.png", ["is not a field", "{{"]),
    ("/abs/mask_%04d.png", ["inside --out"]),
    ("../up/mask_%04d.png", ["inside --out"]),
    ("mask_%04d.jpg", ["must end in .png"]),
    ("mask_%04d.exr", ["must end in .png", "--exr"]),
    ("sub/.%04d.png", ["hidden"]),
    ("", ["empty"]),
])
def test_bad_patterns(text, needles):
    with pytest.raises(InputError) as e:
        MattePattern.parse(text)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_exr_pattern_must_end_in_exr():
    with pytest.raises(InputError, match=r"must end in \.exr"):
        MattePattern.parse("m_%04d.png", exr=True)


@pytest.mark.parametrize("opts, needle", [
    (dict(bit_depth=12), "--bit-depth 12: use 8 or 16"),
    (dict(bit_depth=32), "use 8 or 16"),
    (dict(dilate=-1), "--dilate -1"),
    (dict(feather=-2), "--feather -2"),
    (dict(exr=True, bit_depth=8), "half floats"),
    (dict(pattern="x.png"), "no frame field"),
    (dict(pattern="x_{nope}_%04d.png", objects=[1]), "unknown field"),
    (dict(), "add {object} to the pattern, or pass --combine, or --objects ID"),
    (dict(combine=True, pattern="{object}_%04d.png"), "drop --combine"),
    (dict(objects=[9]), "object id(s) [9]"),
    (dict(objects=[1], start=2000), "no frame of"),
    (dict(objects=[1], dilate=81), "--dilate 81 is more than the frame's larger side (80 px"),
    (dict(objects=[1], feather=500), "--feather 500 is more than"),
])
def test_bad_input_writes_nothing(shot, tmp_path, opts, needle):
    src, _ = shot
    out = tmp_path / "mattes"
    with pytest.raises(InputError) as e:
        export(src, out, **opts)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


def test_labels_that_collide_as_file_names(tmp_path):
    media = MediaInfo(name="c", width=8, height=8, frames=[1])
    with AnnotationStore.create(tmp_path / "c.sqlite", media) as st:
        st.add_object("a b")
        st.add_object("a/b")
        with pytest.raises(InputError, match=r"gives a_b_1\.png to both label 'a b'.*add \{object\}"):
            export_mattes(st, tmp_path / "o", pattern="{label}_%d.png")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------- sequences
def test_per_object_sequences_8bit(shot, tmp_path):
    src, exp = shot
    out = tmp_path / "m"
    res = export(src, out, pattern="obj{object}/mask_%04d.png")
    assert listing(out) == sorted(f"obj{o}/mask_{f}.png" for o in (1, 2, 3) for f in FRAMES)
    for oid in (1, 2, 3):
        for f in FRAMES:  # every frame of the range, black where the object has no mask
            img = read(out / f"obj{oid}" / f"mask_{f}.png")
            assert img.dtype == np.uint8 and img.shape == (H, W)
            ref = exp[oid].get(f, np.zeros((H, W), bool))
            assert np.array_equal(img, ref.astype(np.uint8) * 255), (oid, f)
    seq = {s.group.object: s for s in res.sequences}
    assert seq[2].empty == [1001, 1002, 1004, 1005, 1006] and seq[2].frames == FRAMES


def test_combine_16bit(shot, tmp_path):
    src, exp = shot
    out = tmp_path / "m"
    export(src, out, pattern="all.####.png", combine=True, bit_depth=16)
    for f in FRAMES:
        img = read(out / f"all.{f}.png")
        assert img.dtype == np.uint16
        ref = np.zeros((H, W), bool)
        for o in exp.values():
            ref |= o.get(f, np.zeros((H, W), bool))
        assert set(np.unique(img)) <= {0, 65535}
        assert np.array_equal(img == 65535, ref), f


def test_per_label_unions_objects_of_a_label(shot, tmp_path):
    src, exp = shot
    out = tmp_path / "m"
    export(src, out, pattern="{label}_%04d.png")
    assert listing(out) == sorted(f"{lb}_{f}.png" for lb in ("car", "person") for f in FRAMES)
    car = read(out / "car_1004.png") == 255
    assert np.array_equal(car, exp[1][1004] | exp[3][1004])


def test_one_object_needs_no_field(shot, tmp_path):
    src, exp = shot
    out = tmp_path / "m"
    res = export(src, out, objects=[2])  # default pattern mask_%04d.png
    assert listing(out) == [f"mask_{f}.png" for f in FRAMES]
    assert np.array_equal(read(out / "mask_1003.png") == 255, exp[2][1003])
    assert res.sequences[0].group.object == 2


def test_frame_range_and_gaps(tmp_path):
    media = MediaInfo(name="gappy", width=16, height=8, frames=[1001, 1002, 1005, 1009],
                      frame_names=["s.1001.png", "s.1002.png", "s.1005.png", "s.1009.png"])
    with AnnotationStore.create(tmp_path / "g.sqlite", media) as st:
        o = st.add_object("x")
        st.write_frame(1005, [Instance(o.id, mask=np.ones((8, 16), bool))])
        export_mattes(st, tmp_path / "all")
        export_mattes(st, tmp_path / "part", start=1002, stop=1005)
    assert listing(tmp_path / "all") == ["mask_1001.png", "mask_1002.png", "mask_1005.png", "mask_1009.png"]
    assert listing(tmp_path / "part") == ["mask_1002.png", "mask_1005.png"]


def test_skip_empty(shot, tmp_path):
    src, _ = shot
    out = tmp_path / "m"
    res = export(src, out, pattern="{object}_%04d.png", skip_empty=True)
    assert listing(out) == ["1_1002.png", "1_1003.png", "1_1004.png", "2_1003.png", "3_1004.png"]
    seq = {s.group.object: s for s in res.sequences}
    assert seq[1].frames == [1002, 1003, 1004] and seq[1].empty == [1001, 1005, 1006]


# ---------------------------------------------------------------------------------------- dilate, feather
def test_dilate_grows_by_the_expected_ring():
    s, d = 20, 4
    m = square(20, 30, s)
    grown = make_matte(m, MatteOptions(dilate=d))
    assert grown.dtype == np.float32 and set(np.unique(grown)) <= {0.0, 1.0}
    g = grown > 0
    assert g[m].all()
    ys, xs = np.nonzero(g)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20 - d, 20 + s - 1 + d, 30 - d, 30 + s - 1 + d)
    ring = g.sum() - m.sum()
    # the four sides plus four rounded corners: the disk's pixels off its two axes
    assert ring == 4 * s * d + disk(d).sum() - (4 * d + 1)
    assert abs(ring - (4 * s * d + np.pi * d * d)) / ring < 0.06  # the continuous ring, near enough
    # exact: a pixel is in the grown matte iff a mask pixel lies within d of it
    dist = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    assert np.array_equal(g, dist <= d)


def test_feather_ramp_width_and_values():
    f = 5
    m = square(15, 20, 30)
    soft = make_matte(m, MatteOptions(feather=f))
    # distance of each pixel to the edge: inside -> to the background, outside -> to the mask
    inside = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    far_in, far_out = inside > f, outside > f
    assert far_in.any() and far_out.any()
    assert (soft[far_in] == 1.0).all() and (soft[far_out] == 0.0).all()
    edge = soft[15 + 15, 20 - 1 : 20 + 1]  # across the left edge, mid-height
    assert ((edge > 0) & (edge < 1)).all()
    assert abs(soft.sum() - m.sum()) / m.sum() < 0.01  # centred on the edge: area kept
    # --dilate N --feather N: the original mask stays fully opaque, the fringe lies outside it
    both = make_matte(m, MatteOptions(dilate=f, feather=f))
    assert (both[m] == 1.0).all() and ((both > 0) & (both < 1)).sum() > 0


def test_feathered_files_8_and_16_bit(shot, tmp_path):
    src, exp = shot
    for depth, top in ((8, 255), (16, 65535)):
        out = tmp_path / f"m{depth}"
        export(src, out, objects=[1], bit_depth=depth, feather=3, dilate=3)
        img = read(out / "mask_1003.png")
        assert img.dtype == (np.uint16 if depth == 16 else np.uint8)
        soft = (img > 0) & (img < top)
        assert soft.any() and (img[exp[1][1003]] == top).all()
        assert (img > 0).sum() > exp[1][1003].sum()
        ref = np.rint(make_matte(exp[1][1003], MatteOptions(bit_depth=depth, dilate=3, feather=3)) * top)
        assert np.array_equal(img, ref.astype(img.dtype))
        assert not read(out / "mask_1001.png").any()


# ---------------------------------------------------------------------------------------- EXR
def test_exr_channel_and_values(shot, tmp_path):
    OpenEXR = pytest.importorskip("OpenEXR")
    src, exp = shot
    out = tmp_path / "exr"
    res = export(src, out, objects=[1], exr=True, feather=2)
    assert res.summary()["bit_depth"] == 16 and res.summary()["channel"] == "A"
    assert listing(out) == [f"mask_{f}.exr" for f in FRAMES]
    f = OpenEXR.File(str(out / "mask_1003.exr"))
    ch = f.channels()
    assert list(ch) == ["A"]
    px = ch["A"].pixels
    assert px.dtype == np.float16 and px.shape == (H, W)
    ref = make_matte(exp[1][1003], MatteOptions(feather=2)).astype(np.float16)
    assert np.array_equal(px, ref)
    assert ((px > 0) & (px < 1)).any() and px.max() == 1.0
    black = OpenEXR.File(str(out / "mask_1001.exr")).channels()["A"].pixels
    assert black.shape == (H, W) and not black.any()
    hard = export(src, tmp_path / "hard", objects=[1], exr=True, pattern="h.####.exr")
    px = OpenEXR.File(hard.sequences[0].files[2].as_posix()).channels()["A"].pixels
    assert np.array_equal(px, exp[1][1003].astype(np.float16))


def test_exr_without_openexr_is_one_line(shot, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "OpenEXR", None)  # import OpenEXR -> ImportError
    with pytest.raises(InputError, match=r"--exr needs the openexr package: pip install openexr"):
        export(shot[0], tmp_path / "o", objects=[1], exr=True)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------- safety
def test_foreign_files_are_not_clobbered(shot, tmp_path):
    src, _ = shot
    out = tmp_path / "m"
    out.mkdir()
    (out / "mask_1003.png").write_bytes(b"the comp's own matte")
    (out / "plate_1003.exr").write_bytes(b"unrelated")
    with pytest.raises(OutputError, match=r"1 file\(s\) in .* first mask_1003\.png; pass --force"):
        export(src, out, objects=[1])
    assert listing(out) == ["mask_1003.png", "plate_1003.exr"] and not (out / MANIFEST).exists()
    export(src, out, objects=[1], force=True)
    assert read(out / "mask_1003.png").any()
    assert (out / "plate_1003.exr").read_bytes() == b"unrelated"  # beside the sequence, never touched


def test_own_files_are_replaced_and_stale_ones_removed(shot, tmp_path):
    src, exp = shot
    out = tmp_path / "m"
    export(src, out, objects=[1])
    (out / "notes.txt").write_text("keep")
    export(src, out, objects=[1], pattern="other_%04d.png")  # a second sequence in the same folder
    res = export(src, out, objects=[1], start=1002, stop=1004)  # again, shorter: 1001, 1005, 1006 go
    assert [p.name for p in res.removed] == ["mask_1001.png", "mask_1005.png", "mask_1006.png"]
    assert listing(out) == sorted(["notes.txt"] + [f"mask_{f}.png" for f in (1002, 1003, 1004)]
                                  + [f"other_{f}.png" for f in FRAMES])
    res = export(src, out, objects=[1], pattern="other_####.png", skip_empty=True)  # same pattern
    assert sorted(p.name for p in res.removed) == ["other_1001.png", "other_1005.png", "other_1006.png"]


def test_edited_matte_is_the_users(shot, tmp_path):
    src, _ = shot
    out = tmp_path / "m"
    export(src, out, objects=[1])
    (out / "mask_1002.png").write_bytes(b"painted by hand")  # a roto fix: another size and mtime
    with pytest.raises(OutputError, match="edited since.*mask_1002.png"):
        export(src, out, objects=[1])
    assert (out / "mask_1002.png").read_bytes() == b"painted by hand"
    # a shorter range does not delete it as stale either: it is the user's now
    export(src, out, objects=[1], start=1003)
    assert (out / "mask_1002.png").read_bytes() == b"painted by hand"


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_symlink_device_or_folder_in_the_way_is_refused_even_with_force(shot, tmp_path, kind):
    src, _ = shot
    out = tmp_path / "m"
    out.mkdir()
    target = tmp_path / "precious.png"
    target.write_bytes(b"precious")
    p = out / "mask_1004.png"
    if kind == "symlink":
        p.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(p)
    else:
        p.mkdir()
    with pytest.raises(OutputError, match=r"mask_1004\.png is a .*never replaces one \(not even with --force\)"):
        export(src, out, objects=[1], force=True)
    assert target.read_bytes() == b"precious"
    assert sorted(e.name for e in out.iterdir()) == ["mask_1004.png"]


def test_out_that_is_a_file_is_refused(shot, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file; mattes are written into a folder"):
        export(shot[0], f, objects=[1])


def test_killed_export_leftovers(shot, tmp_path):
    """A killed run leaves temp files and 'pending' names: the next run cleans the first and owns the second."""
    src, _ = shot
    out = tmp_path / "m"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    temp = out / f".mask_1001.png.part-{dead}-abc123"
    temp.write_bytes(b"half")
    other = out / f".notes.txt.part-{dead}-abc123"  # not a matte's temporary file: kept
    other.write_bytes(b"someone else's")
    (out / "mask_1002.png").write_bytes(b"written by the killed run")
    (out / MANIFEST).write_text(json.dumps({"files": {}, "pending": {"mask_1002.png": "mask_%04d.png"}}))
    export(src, out, objects=[1])
    assert not temp.exists() and other.exists() and read(out / "mask_1002.png").any()
    doc = json.loads((out / MANIFEST).read_text())
    assert doc["pending"] == {} and sorted(doc["files"]) == [f"mask_{f}.png" for f in FRAMES]


def test_export_store_dispatch(shot, tmp_path):
    assert "mattes" in EXPORT_FORMATS
    with AnnotationStore.open(shot[0], readonly=True) as st:
        assert export_store(st, "mattes", tmp_path / "m", combine=True) == tmp_path / "m"
        with pytest.raises(InputError, match="do not apply to mattes"):
            export_store(st, "mattes", tmp_path / "m2", shape="box")
    assert len(listing(tmp_path / "m")) == len(FRAMES) and (tmp_path / "m" / MANIFEST).is_file()


# ---------------------------------------------------------------------------------------- CLI
def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DL_UTILS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dl_utils", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_json_summary(shot, tmp_path, capsys):
    src, _ = shot
    out = tmp_path / "mattes"
    code = main(["export", str(src), "--format", "mattes", "--out", str(out), "--pattern",
                 "{label}_{object}.####.png", "--bit-depth", "16", "--dilate", "1", "--feather", "2",
                 "--start", "1002", "--stop", "1005", "--objects", "1,2", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)  # stdout is the JSON object and nothing else
    assert doc["pattern"] == str(out / "{label}_{object}.%04d.png")
    assert (doc["first_frame"], doc["last_frame"], doc["frames"]) == (1002, 1005, 4)
    assert doc["file_count"] == 8 == len(doc["files"]) and all(Path(p).is_file() for p in doc["files"])
    assert [s["pattern"] for s in doc["sequences"]] == [str(out / "car_1.%04d.png"), str(out / "person_2.%04d.png")]
    assert doc["sequences"][1]["empty_frames"] == [1002, 1004, 1005]
    assert doc["objects"] == [{"id": 1, "label": "car"}, {"id": 2, "label": "person"}]
    assert (doc["bit_depth"], doc["exr"], doc["channel"], doc["dilate"], doc["feather"]) == (16, False, None, 1, 2)
    assert doc["combine"] is False and doc["skip_empty"] is False and doc["removed"] == []


def test_cli_end_to_end_subprocess(shot, tmp_path):
    src, exp = shot
    out = tmp_path / "comp" / "mattes"
    proc = run_cli("export", str(src), "--format", "mattes", "--out", str(out), "--pattern",
                   "matte.####.exr", "--exr", "--combine", "--skip-empty", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [Path(p).name for p in doc["files"]] == ["matte.1002.exr", "matte.1003.exr", "matte.1004.exr"]
    assert doc["exr"] is True and doc["channel"] == "A" and doc["bit_depth"] == 16
    proc = run_cli("export", str(src), "--format", "mattes", "--out", str(out), "--combine")
    assert proc.returncode == 0 and "mattes ->" in proc.stdout and "6 files" in proc.stdout


@pytest.mark.parametrize("args, needles", [
    (["--pattern", "mask.png"], ["no frame field"]),
    (["--bit-depth", "10"], ["--bit-depth 10: use 8 or 16"]),
    (["--dilate", "-3", "--combine"], ["--dilate -3"]),
    (["--feather", "-1", "--combine"], ["--feather -1"]),
    (["--pattern", "m_{shot}_%04d.png"], ["unknown field {shot}"]),
    ([], ["add {object}", "--combine", "--objects ID"]),
    (["--objects", "1,x"], ["--objects '1,x'"]),
])
def test_cli_bad_input_one_line(shot, tmp_path, args, needles):
    src, _ = shot
    out = tmp_path / "o"
    proc = run_cli("export", str(src), "--format", "mattes", "--out", str(out), *args)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dl-utils: error: "), proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not out.exists()


def test_cli_matte_options_refused_for_other_formats(shot, tmp_path, capsys):
    src, _ = shot
    code = main(["export", str(src), "--format", "coco", "--out", str(tmp_path / "c.json"), "--combine",
                 "--dilate", "2"])
    assert code == 1
    assert "--combine, --dilate apply to --format mattes only, not coco" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
    # --objects/--start/--stop reach every format
    assert main(["export", str(src), "--format", "coco", "--out", str(tmp_path / "c.json"),
                 "--objects", "2", "--start", "1003", "--stop", "1003"]) == 0
    doc = json.loads((tmp_path / "c.json").read_text())
    assert len(doc["images"]) == 1 and [a["category_id"] for a in doc["annotations"]] == [
        next(c["id"] for c in doc["categories"] if c["name"] == "person")]


def test_interrupted_export_keeps_what_it_wrote(shot, tmp_path, monkeypatch):
    """A failure mid-way (here the third file) leaves the files written so far recorded as ours."""
    import dl_utils.formats.mattes as mattes

    src, _ = shot
    out = tmp_path / "m"
    real = mattes._Writer.write
    calls = []

    def failing(self, path, matte, size):
        calls.append(path.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(self, path, matte, size)

    monkeypatch.setattr(mattes._Writer, "write", failing)
    with pytest.raises(KeyboardInterrupt):
        export(src, out, objects=[1])
    assert listing(out) == ["mask_1001.png", "mask_1002.png"]
    doc = json.loads((out / MANIFEST).read_text())
    assert sorted(doc["files"]) == ["mask_1001.png", "mask_1002.png"] and doc["pending"] == {}
    monkeypatch.setattr(mattes._Writer, "write", real)
    export(src, out, objects=[1])  # the rerun replaces them without --force
    assert listing(out) == [f"mask_{f}.png" for f in FRAMES]


@pytest.mark.parametrize("where", ["interior", "top-left border", "right border", "two pieces"])
def test_matte_on_the_masks_box_equals_the_whole_frame(where):
    """make_matte works on the mask's grown box only: the same values as on the whole frame."""
    from dl_utils.formats.mattes import _matte_of, matte_pixels

    m = {"interior": square(20, 30, 12), "top-left border": square(0, 0, 15),
         "right border": square(25, W - 10, 10),
         "two pieces": square(2, 3, 5) | square(45, 60, 8)}[where]
    for opts in (MatteOptions(dilate=3), MatteOptions(feather=4), MatteOptions(dilate=2, feather=6),
                 MatteOptions(bit_depth=16, dilate=1), MatteOptions(exr=True, bit_depth=16, feather=3)):
        whole = _matte_of(m, opts)  # OpenCV's filter sums in another order on another size: float noise
        assert np.allclose(make_matte(m, opts), whole, rtol=0, atol=1e-5), (where, opts)
        top = 1.0 if opts.exr else opts.max_value
        px = matte_pixels(m, opts)
        ref = whole.astype(np.float16) if opts.exr else np.rint(whole * top)
        assert np.abs(px.astype(np.float64) - ref).max() <= (1e-3 if opts.exr else 1), (where, opts)
    assert not make_matte(np.zeros((H, W), bool), MatteOptions(dilate=2, feather=2)).any()


def test_replaced_matte_keeps_its_permissions(shot, tmp_path):
    src, _ = shot
    out = tmp_path / "m"
    export(src, out, objects=[1])
    os.chmod(out / "mask_1003.png", 0o640)
    st = (out / "mask_1003.png").stat()
    doc = json.loads((out / MANIFEST).read_text())  # chmod changes ctime, not size or mtime: still ours
    assert doc["files"]["mask_1003.png"]["mtime_ns"] == st.st_mtime_ns
    export(src, out, objects=[1], exr=False, bit_depth=16)
    assert (out / "mask_1003.png").stat().st_mode & 0o777 == 0o640
    assert read(out / "mask_1003.png").dtype == np.uint16
