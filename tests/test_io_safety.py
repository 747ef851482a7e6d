"""Issue 13: what users' mistakes and hostile environments do to stores and exports.

Each test reproduces one finding: a failed import that deleted the store, in-place PNG exports,
symlinks/devices/folders as ``--out``, a store on a read-only file system, a full disk, a damaged
store, a closed pipe, and runs killed with SIGKILL.

Read-only file systems and full disks are real where the test process may create a private mount
namespace (``unshare -m``, root or user namespaces: a tmpfs there vanishes with the process, nothing
leaks into the machine); elsewhere those tests skip, and monkeypatched twins of them still run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dl_utils.annotations import Instance, MediaInfo
from dl_utils.cli import main
from dl_utils.errors import OutputError, StoreError
from dl_utils.formats import export_store
from dl_utils.store import AnnotationStore, staged_store
from tests.test_cli import ROOT, assert_one_line_error, make_store, run_cli

PY = sys.executable


def export_xml(store: Path, out: Path) -> Path:
    assert main(["export", str(store), "--format", "cvat-video", "--out", str(out)]) == 0
    return out


def count(path: Path) -> int:
    with AnnotationStore.open(path, readonly=True) as st:
        return st.count_instances()


def names(folder: Path) -> list[str]:
    """Entries of a folder, less the -wal/-shm files that readers of a WAL store leave."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm")))


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------ private mount namespace
def _unshare_cmd() -> list[str] | None:
    if shutil.which("unshare") is None:
        return None
    for cmd in (["unshare", "-m", "--propagation", "private"], ["unshare", "-rm", "--propagation", "private"]):
        try:
            ok = subprocess.run(cmd + ["sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"
                                       " && umount $d && rmdir $d"], capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if ok.returncode == 0:
            return cmd
    return None


UNSHARE = _unshare_cmd()
needs_mounts = pytest.mark.skipif(UNSHARE is None, reason="cannot mount a tmpfs in a private namespace here")


def in_namespace(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a bash script in a private mount namespace (its mounts disappear with it)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PY=PY, T=str(tmp_path))
    env.pop("DL_UTILS_DEBUG", None)
    return subprocess.run([*UNSHARE, "bash", "-c", script], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def parse_sections(stdout: str) -> dict[str, str]:
    """Sections the scripts print as '== name' followed by lines."""
    out: dict[str, list[str]] = {}
    cur = None
    for line in stdout.splitlines():
        if line.startswith("== "):
            cur = line[3:].strip()
            out[cur] = []
        elif cur is not None:
            out[cur].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


# ================================================================== 1. import never deletes a store
@pytest.mark.parametrize("bad", [
    "<annotations><version>1.1</version><track id='0'",               # truncated XML
    "<annotations><version>1.1</version><image id='0' width='64' height='48'>"
    "<box label='car' xtl='5000' ytl='1' xbr='-300' ybr='5'/></image></annotations>",  # refused box
])
def test_failed_import_with_overwrite_keeps_the_existing_store(tmp_path, bad):
    st = tmp_path / "s.sqlite"
    make_store(st)
    before = st.read_bytes()
    (tmp_path / "bad.xml").write_text(bad)
    proc = run_cli("import", str(tmp_path / "bad.xml"), "--out", str(st), "--overwrite")
    assert_one_line_error(proc, "bad.xml")
    assert names(tmp_path) == ["bad.xml", "s.sqlite"]  # no temp left
    assert st.read_bytes() == before and count(st) == 16


def test_failed_append_keeps_the_store_as_it_was(tmp_path):
    """A file whose 70th frame is bad: nothing of the first frames is appended either."""
    st = tmp_path / "s.sqlite"
    make_store(st)
    xml = export_xml(st, tmp_path / "ok.xml")
    text = xml.read_text().replace("</annotations>", "<track id='99' label='car'><box frame='5'"
                                   " keyframe='1' outside='0' xtl='9' ytl='1' xbr='2' ybr='5'/></track>"
                                   "</annotations>")
    (tmp_path / "bad.xml").write_text(text)
    with AnnotationStore.open(st) as s:
        s.delete_instances()
    proc = run_cli("import", str(tmp_path / "bad.xml"), "--out", str(st), "--append")
    assert_one_line_error(proc, "bad.xml", "inverted")
    assert count(st) == 0


def test_overwrite_and_append_replace_the_store_whole(tmp_path):
    st = tmp_path / "s.sqlite"
    make_store(st)
    xml = export_xml(st, tmp_path / "a.xml")
    assert main(["import", str(xml), "--out", str(st), "--overwrite"]) == 0
    assert count(st) == 14  # empty instances are not exported
    with AnnotationStore.open(st) as s:  # a writer left -wal behind: must not reach the new store
        s.add_object("extra")
    assert main(["import", str(xml), "--out", str(st), "--append"]) == 0
    with AnnotationStore.open(st, readonly=True) as s:
        s.check()
        assert len(s.objects()) == 5 and s.count_instances() == 28
    assert not Path(str(st) + "-wal").exists()
    assert names(tmp_path) == ["a.xml", "s.sqlite"]


def test_import_killed_mid_way_leaves_old_store_and_next_import_cleans_up(tmp_path):
    st = tmp_path / "s.sqlite"
    make_store(st)
    before = st.read_bytes()
    xml = export_xml(st, tmp_path / "a.xml")
    code = (
        "import os, signal, sys\n"
        "import dl_utils.formats._common as c\n"
        "orig = c.write_objects\n"
        "def boom(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "c.write_objects = boom\n"
        "import dl_utils.formats.cvat_xml as x; x.write_objects = boom\n"
        "from dl_utils.cli import main\n"
        f"main(['import', {str(xml)!r}, '--out', {str(st)!r}, '--overwrite'])\n"
    )
    proc = subprocess.run([PY, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == -signal.SIGKILL
    assert st.read_bytes() == before
    assert any(".import-" in p.name for p in tmp_path.iterdir())  # the killed import's temp file
    assert main(["import", str(xml), "--out", str(st), "--overwrite"]) == 0
    assert names(tmp_path) == ["a.xml", "s.sqlite"]


def test_staged_store_disk_full_is_a_store_error_and_keeps_the_old_store(tmp_path, monkeypatch):
    st = tmp_path / "s.sqlite"
    make_store(st)
    before = st.read_bytes()

    class Full:  # the connection as SQLite behaves when the disk fills during a write
        def __init__(self, c):
            self.c = c

        def execute(self, sql, *a):
            return self.c.execute(sql, *a)

        def executemany(self, sql, *a):
            raise sqlite3.OperationalError("database or disk is full")

        def close(self):
            self.c.close()

    with pytest.raises(StoreError, match=r"s.sqlite: no space left on the device.*free space on /"):
        with staged_store(st, media=MediaInfo(name="v", width=64, height=48, frames=[3])) as s:
            s.add_object("car")
            s._conn = Full(s._conn)
            s.write_frame(3, [Instance(1, mask=np.zeros((48, 64), bool))])
    assert st.read_bytes() == before and names(tmp_path) == ["s.sqlite"]


@needs_mounts
def test_import_on_a_full_disk_real_tmpfs(tmp_path):
    """A 160 KiB tmpfs: the import runs out of space; one line naming the file and the mount."""
    big = noisy_store(tmp_path / "big.sqlite", n=8)
    export_xml(big, tmp_path / "big.xml")
    proc = in_namespace(
        'set -e; mkdir -p $T/m; mount -t tmpfs -o size=160k tmpfs $T/m\n'
        '$PY -m dl_utils import $T/big.xml --out $T/m/s.sqlite; echo "rc=$?"\n'
        'ls -a $T/m\n', tmp_path)
    assert proc.returncode != 0 or "rc=1" in proc.stdout
    assert_one_line_error(proc, "s.sqlite", "no space left", f"free space on {tmp_path / 'm'}")
    assert "s.sqlite" not in proc.stdout  # no half store left behind


# ================================================================== 2. exports: atomic, no surprises
def test_png_masks_export_replaces_stale_object_folders(tmp_path):
    st = tmp_path / "s.sqlite"
    make_store(st)
    out = tmp_path / "masks"
    assert main(["export", str(st), "--format", "png-masks", "--out", str(out)]) == 0
    assert (out / "002_person").is_dir()
    with AnnotationStore.open(st) as s:
        s.delete_object(2)
    assert main(["export", str(st), "--format", "png-masks", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["001_car", "ids", "objects.json"]
    assert names(tmp_path) == ["masks", "s.sqlite"]


def test_png_masks_export_killed_mid_way_keeps_the_previous_export(tmp_path):
    st = tmp_path / "s.sqlite"
    make_store(st)
    out = tmp_path / "masks"
    assert main(["export", str(st), "--format", "png-masks", "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code = (
        "import os, signal\n"
        "import dl_utils.formats.png_masks as pm\n"
        "orig = pm._write\n"
        "n = [0]\n"
        "def w(path, data):\n"
        "    n[0] += 1\n"
        "    if n[0] == 7:\n"
        "        path.write_bytes(data[: len(data) // 2])  # a half PNG, then the kill\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    orig(path, data)\n"
        "pm._write = w\n"
        "from dl_utils.cli import main\n"
        f"main(['export', {str(st)!r}, '--format', 'png-masks', '--out', {str(out)!r}])\n"
    )
    proc = subprocess.run([PY, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == -signal.SIGKILL
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # old export whole
    for p in out.rglob("*.png"):
        assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED) is not None, p
    # the next export removes the killed one's temporary folder
    assert main(["export", str(st), "--format", "png-masks", "--out", str(out)]) == 0
    assert names(tmp_path) == ["masks", "s.sqlite"]


def test_png_masks_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    st = tmp_path / "s.sqlite"
    make_store(st)
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    proc = run_cli("export", str(st), "--format", "png-masks", "--out", str(home))
    assert_one_line_error(proc, str(home), "new or empty folder")
    assert listing(home) == ["thesis.tex"]
    # an export folder where someone added a file: refused too, nothing removed
    out = tmp_path / "masks"
    assert main(["export", str(st), "--format", "png-masks", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli("export", str(st), "--format", "png-masks", "--out", str(out)), "masks")
    assert (out / "notes.txt").read_text() == "mine"


def test_png_masks_through_a_symlinked_folder(tmp_path):
    st = tmp_path / "s.sqlite"
    make_store(st)
    real = tmp_path / "disk" / "masks"
    real.mkdir(parents=True)
    link = tmp_path / "masks"
    link.symlink_to(real)
    for _ in range(2):
        assert main(["export", str(st), "--format", "png-masks", "--out", str(link)]) == 0
    assert link.is_symlink() and (real / "objects.json").is_file()


@pytest.mark.parametrize("fmt", ["cvat-video", "cvat-images", "coco"])
def test_file_export_onto_a_symlink_writes_through(tmp_path, fmt):
    st = tmp_path / "s.sqlite"
    make_store(st)
    target = tmp_path / "real.out"
    target.write_text("old")
    link = tmp_path / "link.out"
    link.symlink_to(target)
    assert main(["export", str(st), "--format", fmt, "--out", str(link)]) == 0
    assert link.is_symlink() and target.read_text() != "old" and len(target.read_text()) > 100
    dangling = tmp_path / "dangling.out"
    dangling.symlink_to(tmp_path / "nowhere" / "x.out")
    assert_one_line_error(run_cli("export", str(st), "--format", fmt, "--out", str(dangling)),
                          "dangling.out", "does not exist")


@pytest.mark.parametrize("fmt", ["cvat-video", "coco"])
def test_file_export_refuses_a_device_and_a_folder(tmp_path, fmt):
    """Never aimed at the real /dev/null: the code before the fix replaced it with a regular file
    (for the whole machine). A FIFO and, where allowed (root), a private copy of the null device
    in tmp_path stand in for it."""
    st = tmp_path / "s.sqlite"
    make_store(st)
    specials = []
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    specials.append(fifo)
    dev = tmp_path / "null"
    try:
        os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # S_IFCHR: the null device
        specials.append(dev)
    except (PermissionError, OSError):
        pass
    for sp in specials:
        assert_one_line_error(run_cli("export", str(st), "--format", fmt, "--out", str(sp)),
                              str(sp), "not a regular file")
        assert sp.is_fifo() or sp.is_char_device()
    for sp in specials:
        sp.unlink()
    folder = tmp_path / "outdir"
    folder.mkdir()
    assert_one_line_error(run_cli("export", str(st), "--format", fmt, "--out", str(folder)),
                          "outdir", "is a folder")
    assert listing(folder) == [] and names(tmp_path) == ["outdir", "s.sqlite"]


def test_file_export_failure_leaves_old_file_and_no_part(tmp_path, monkeypatch):
    st = tmp_path / "s.sqlite"
    make_store(st)
    out = tmp_path / "a.json"
    out.write_text("previous")
    import dl_utils.formats.coco as coco

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(coco.json, "dumps", lambda *a, **k: "x" * 10)
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", full)
    with AnnotationStore.open(st, readonly=True) as s, pytest.raises(OutputError, match="no space left"):
        export_store(s, "coco", out)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert out.read_text() == "previous"
    assert names(tmp_path) == ["a.json", "s.sqlite"]


def noisy_store(path: Path, n: int = 4, h: int = 240, w: int = 320) -> Path:
    """Masks of random noise: exports of a few hundred KiB (fills a small tmpfs)."""
    rng = np.random.default_rng(3)
    media = MediaInfo(name="noise", width=w, height=h, frames=list(range(n)))
    with AnnotationStore.create(path, media) as st:
        o = st.add_object("car").id
        for f in range(n):
            st.write_frame(f, [Instance(o, mask=rng.random((h, w)) < 0.5)])
    return path


@needs_mounts
def test_exports_on_full_and_read_only_file_systems(tmp_path):
    big = noisy_store(tmp_path / "big.sqlite")
    proc = in_namespace(
        'mkdir -p $T/full $T/ro; mount -t tmpfs -o size=64k tmpfs $T/full\n'
        'mount -t tmpfs -o size=1m,ro tmpfs $T/ro\n'
        'for f in cvat-video coco png-masks; do\n'
        '  echo "== full $f"; $PY -m dl_utils export $T/big.sqlite --format $f --out $T/full/out.$f 2>&1;'
        ' echo "rc=$?"; ls -a $T/full\n'
        '  echo "== ro $f"; $PY -m dl_utils export $T/big.sqlite --format $f --out $T/ro/out.$f 2>&1; echo "rc=$?"\n'
        'done\n', tmp_path)
    sec = parse_sections(proc.stdout)
    for f in ("cvat-video", "coco", "png-masks"):
        full, ro = sec[f"full {f}"], sec[f"ro {f}"]
        assert "rc=1" in full and "dl-utils: error: cannot write" in full and "no space left" in full, full
        assert f"free space on {tmp_path / 'full'}" in full, full
        assert "internal error" not in full and full.split("rc=1")[1].split() == [".", ".."], full
        assert "rc=1" in ro and "the file system is read-only" in ro and "internal error" not in ro, ro


def test_frames_split_disk_full_names_the_file_and_the_mount(tmp_path, bedroom_mp4, monkeypatch):
    import av

    import dl_utils.video_utils.split as split
    from dl_utils.errors import MediaError

    real_open = av.open

    def full_open(name, mode="r", *a, **k):
        if mode == "w":
            raise av.error.OSError(errno.ENOSPC, "No space left on device", name)
        return real_open(name, mode, *a, **k)

    monkeypatch.setattr(split.av, "open", full_open)
    with pytest.raises(MediaError, match=r"cannot write .*part001.mp4: no space left on the device;"
                                         r" free space on /"):
        with pytest.warns(UserWarning, match="1 part"):  # bedroom.mp4 has one keyframe
            split.split_video(bedroom_mp4, tmp_path / "parts", parts=2)
    assert list((tmp_path / "parts").iterdir()) == []


@needs_mounts
def test_frames_split_on_a_full_disk_real_tmpfs(tmp_path, bedroom_mp4):
    proc = in_namespace(
        f'mkdir -p $T/m; mount -t tmpfs -o size=200k tmpfs $T/m\n'
        f'$PY -m dl_utils frames split {bedroom_mp4} --parts 2 --out $T/m/parts; echo "rc=$?"; ls -a $T/m/parts\n',
        tmp_path)
    assert "rc=1" in proc.stdout and proc.stdout.split("rc=1")[1].split() == [".", ".."], proc.stdout
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("dl-utils: error")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith("dl-utils: error: cannot write ") and "no space left on the device" in errors[0]
    assert f"free space on {tmp_path / 'm'}" in errors[0]


# ================================================================== 3. read-only stores
@needs_mounts
def test_store_on_a_read_only_file_system_is_readable(tmp_path):
    make_store(tmp_path / "job.sqlite")
    proc = in_namespace(
        'set -e; mkdir -p $T/m; mount -t tmpfs tmpfs $T/m; cp $T/job.sqlite $T/m/\n'
        '$PY -c "from dl_utils.store import AnnotationStore as A; A.open(\'$T/m/job.sqlite\').close()"\n'
        'mount -o remount,ro $T/m\n'
        'echo "== info"; $PY -m dl_utils store info $T/m/job.sqlite 2>&1 || true\n'
        'echo "== export"; $PY -m dl_utils export $T/m/job.sqlite --format coco --out $T/c.json 2>&1 || true\n'
        'echo "== write"; $PY -m dl_utils import $T/c.json --out $T/m/job.sqlite --append 2>&1 || true\n'
        'echo "== open"; $PY -c "from dl_utils.store import AnnotationStore as A; A.open(\'$T/m/job.sqlite\')"'
        ' 2>&1 | tail -1 || true\n', tmp_path)
    sec = parse_sections(proc.stdout)
    assert json.loads(sec["info"])["instances"] == 16, proc.stdout + proc.stderr
    assert "exported" in sec["export"] and (tmp_path / "c.json").is_file()
    assert "read-only" in sec["write"] and "restore it from a backup" not in proc.stdout
    assert "StoreError" in sec["open"] and "is read-only" in sec["open"] and "copy it to a writable place" in sec["open"]


def test_store_in_a_folder_where_the_shm_cannot_be_created(tmp_path, monkeypatch):
    """What a read-only folder does to ``mode=ro`` (the -shm cannot be created): read immutable."""
    p = tmp_path / "job.sqlite"
    make_store(p)
    real = sqlite3.connect

    def connect(db, *a, **k):
        if isinstance(db, str) and "mode=ro" in db and "immutable=1" not in db:
            raise sqlite3.OperationalError("unable to open database file")
        return real(db, *a, **k)

    monkeypatch.setattr(sqlite3, "connect", connect)
    with AnnotationStore.open(p, readonly=True) as st:
        assert st.immutable and st.count_instances() == 16
    # unmerged commits in a -wal that cannot be read there: say so, do not read stale data
    w = AnnotationStore.open(p)
    monkeypatch.setattr(sqlite3, "connect", real)
    w._conn.execute("PRAGMA wal_autocheckpoint = 0")
    w.add_object("late")
    monkeypatch.setattr(sqlite3, "connect", connect)
    with pytest.raises(StoreError, match="-wal.*commits not yet merged.*copy the store"):
        AnnotationStore.open(p, readonly=True)
    w.close()


def test_writable_open_of_a_read_only_store_names_the_cure(tmp_path, monkeypatch):
    p = tmp_path / "job.sqlite"
    make_store(p)
    real = sqlite3.connect

    class RO:
        def __init__(self, c):
            self.c = c

        def execute(self, sql, *a):
            if "journal_mode" in sql:
                raise sqlite3.OperationalError("attempt to write a readonly database")
            return self.c.execute(sql, *a)

        def close(self):
            self.c.close()

    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: RO(real(*a, **k)))
    with pytest.raises(StoreError, match=r"job.sqlite is read-only .*copy it to a writable place"):
        AnnotationStore.open(p)


# ================================================================== 4. damaged stores, pipes
def test_store_with_overwritten_pages_is_called_damaged(tmp_path):
    p = tmp_path / "job.sqlite"
    make_store(p, n=40)
    with open(p, "r+b") as f:  # keep the header page, overwrite the rest with garbage
        f.seek(4096)
        f.write(np.random.default_rng(0).integers(0, 256, p.stat().st_size - 4096, np.uint8).tobytes())
    for args in (["store", "info", str(p)], ["export", str(p), "--format", "coco", "--out", str(tmp_path / "c.json")]):
        assert_one_line_error(run_cli(*args), "job.sqlite is damaged", "restore it from a backup")


def test_store_info_into_a_closed_pipe_exits_quietly(tmp_path):
    p = tmp_path / "job.sqlite"
    make_store(p, n=40)
    r, w = os.pipe()
    os.close(r)  # the reader (`head`) is gone before we write anything
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([PY, "-m", "dl_utils", "store", "info", str(p)], stdout=w, stderr=subprocess.PIPE,
                          text=True, env=env, cwd=ROOT, timeout=120)
    os.close(w)
    assert proc.stderr == "" and proc.returncode == 141
    # and through a real `head`
    sh = subprocess.run(f"{PY} -m dl_utils store info {p} | head -1", shell=True, capture_output=True,
                        text=True, env=env, cwd=ROOT, timeout=120)
    assert sh.stdout == "{\n" and sh.stderr == ""


# ================================================================== 5. runs of killed processes
def test_run_of_a_sigkilled_writer_is_reported_interrupted(tmp_path):
    p = tmp_path / "job.sqlite"
    AnnotationStore.create(p, MediaInfo(name="v", width=8, height=6, frames=list(range(10)))).close()
    code = ("import sys, time\nfrom dl_utils.store import AnnotationStore\n"
            f"s = AnnotationStore.open({str(p)!r}); s.begin_run('propagate', {{'x': 1}})\n"
            "print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout.readline().strip() == "ready"
        with AnnotationStore.open(p, readonly=True) as st:
            (run,) = st.runs()
            assert run["status"] == "running" and run["writer"]["pid"] == proc.pid
            assert run["params"] == {"x": 1}
        os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.2)  # not yet reaped: a zombie is not a live writer either
        with AnnotationStore.open(p, readonly=True) as st:
            assert st.runs()[0]["status"] == "interrupted"
    finally:
        proc.kill()
        proc.wait()
    proc2 = run_cli("store", "info", str(p))
    info = json.loads(proc2.stdout)
    assert [r["status"] for r in info["runs"]] == ["interrupted"]
    with AnnotationStore.open(p, readonly=True) as st:
        assert st.runs(status="interrupted")[0]["kind"] == "propagate" and st.runs(status="running") == []


def test_run_of_another_host_or_a_reused_pid(tmp_path):
    import socket

    with AnnotationStore.create(tmp_path / "s.sqlite") as st:
        st.begin_run("a")
        params = {"_writer": {"pid": os.getpid(), "host": "elsewhere", "proc_start": 1, "boot_id": None}}
        st._conn.execute("INSERT INTO runs (kind, params, status, started) VALUES ('b', ?, 'running', 0)",
                         (json.dumps(params),))
        params["_writer"]["host"] = socket.gethostname()  # this pid, but another process start: reused
        st._conn.execute("INSERT INTO runs (kind, params, status, started) VALUES ('c', ?, 'running', 0)",
                         (json.dumps(params),))
        st._conn.execute("INSERT INTO runs (kind, params, status, started) VALUES ('old', '{}', 'running', 0)")
        params["_writer"].update(pid=2**22 + 12345, pid_ns=1)  # a dead pid, but another container's
        st._conn.execute("INSERT INTO runs (kind, params, status, started) VALUES ('ns', ?, 'running', 0)",
                         (json.dumps(params),))
        assert [(r["kind"], r["status"]) for r in st.runs()] == [
            ("a", "running"), ("b", "running"), ("c", "interrupted"), ("old", "running"), ("ns", "running")]


def test_broken_pipe_of_a_socket_is_still_reported(monkeypatch, capsys):
    """Only a closed stdout is quiet; a BrokenPipeError from elsewhere is an internal error."""
    import dl_utils.cli as cli

    def boom(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_store_info", boom)
    monkeypatch.delenv("DL_UTILS_DEBUG", raising=False)
    assert cli.main(["store", "info", "x.sqlite"]) == 2
    assert "internal error: BrokenPipeError" in capsys.readouterr().err


def test_import_out_a_folder_or_through_a_symlink(tmp_path):
    st = tmp_path / "s.sqlite"
    make_store(st)
    xml = export_xml(st, tmp_path / "a.xml")
    (tmp_path / "dir").mkdir()
    assert_one_line_error(run_cli("import", str(xml), "--out", str(tmp_path / "dir"), "--overwrite"),
                          "dir is a folder", "give a file path")
    assert listing(tmp_path / "dir") == []
    real = tmp_path / "data" / "real.sqlite"
    real.parent.mkdir()
    link = tmp_path / "link.sqlite"
    link.symlink_to(real)
    assert main(["import", str(xml), "--out", str(link)]) == 0
    assert link.is_symlink() and count(real) == 14


def test_store_info_shows_mixed_sizes(tmp_path):
    m = MediaInfo(name="photos", width=800, height=534, frames=[0, 1],
                  frame_sizes=[(800, 534), (2250, 1500)])
    AnnotationStore.create(tmp_path / "m.sqlite", m).close()
    info = json.loads(run_cli("store", "info", str(tmp_path / "m.sqlite")).stdout)
    assert info["size"] == "mixed sizes: 2 sizes from 800x534 to 2250x1500 (first image 800x534)"


def test_file_export_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    st = tmp_path / "s.sqlite"
    make_store(st)
    out = tmp_path / "a.json"
    assert main(["export", str(st), "--format", "coco", "--out", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()
    out.chmod(0o640)
    assert main(["export", str(st), "--format", "coco", "--out", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o640


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_store_with_a_garbled_mask_blob_names_frame_and_object(tmp_path):
    p = tmp_path / "job.sqlite"
    make_store(p)
    with sqlite3.connect(p) as c:
        c.execute("UPDATE instances SET rle = X'00112233' WHERE frame = 5 AND object_id = 1")
    assert_one_line_error(run_cli("export", str(p), "--format", "coco", "--out", str(tmp_path / "c.json")),
                          "job.sqlite: frame 5, object 1: stored mask is damaged")


def test_folder_export_refusal_names_the_first_foreign_entry(tmp_path):
    """A folder that holds an earlier export plus a file the export never wrote is refused, and the
    message names that file (so the user knows what is in the way)."""
    from dl_utils.errors import OutputError
    from dl_utils.formats._common import atomic_folder

    out = tmp_path / "ds"
    out.mkdir()
    (out / ".marker").write_text("")
    (out / "labels").mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"first: .*notes\.txt"):
        with atomic_folder(out, marker=".marker", own={"labels"}, own_dir=re.compile(r"^x$")):
            pass
    assert (out / "notes.txt").read_text() == "mine"
