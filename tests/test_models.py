"""Model registry, downloads, checksums, strict checkpoint loading and the SAM2 builder."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from dl_utils import models
from dl_utils.errors import InputError, ModelError
from tests.sam2_fixtures import (  # noqa: F401  (fixtures)
    HAVE_SAM2,
    SKIP_REASON,
    TEST_IMAGE_SIZE,
    raw_image_predictor,
    requires_sam2,
    test_image,
    tiny_sam2,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _models_dir(tmp_path, monkeypatch):
    """Every test gets an empty models folder and no network route to Hugging Face."""
    d = tmp_path / "models"
    monkeypatch.setenv("DL_UTILS_MODELS", str(d))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return d


# ----------------------------------------------------------------------------- registry
def test_import_does_not_need_torch():
    code = (
        "import sys, dl_utils.models, dl_utils.sam2_loader, dl_utils.samal; "
        "print('torch' in sys.modules, 'sam2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_registry_names_and_aliases():
    sizes = ["tiny", "small", "base_plus", "large"]
    assert list(models.MODELS) == [f"sam2.1_hiera_{s}" for s in sizes] + [f"sam2_hiera_{s}" for s in sizes]
    assert models.get_spec("tiny").name == "sam2.1_hiera_tiny"
    assert models.get_spec("base+").name == "sam2.1_hiera_base_plus"
    assert models.get_spec("L").name == "sam2.1_hiera_large"
    assert models.get_spec("facebook/sam2-hiera-small").name == "sam2_hiera_small"
    spec = models.get_spec("sam2.1_hiera_tiny")
    assert spec.url == "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    assert models.get_spec("sam2_hiera_large").url == (
        "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt"
    )
    with pytest.raises(ModelError, match="unknown SAM2 model 'huge'.*sam2.1_hiera_tiny"):
        models.get_spec("huge")


@requires_sam2
def test_registry_matches_upstream_hf_table_and_configs():
    import sam2
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    assert {s.hf_id: (s.config, s.filename) for s in models.MODELS.values()} == HF_MODEL_ID_TO_FILENAMES
    pkg = Path(sam2.__file__).parent
    for spec in models.MODELS.values():
        assert (pkg / spec.config).is_file(), spec.config


def test_models_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DL_UTILS_MODELS", str(tmp_path / "x"))
    assert models.models_dir() == tmp_path / "x"
    monkeypatch.delenv("DL_UTILS_MODELS")
    assert models.models_dir() == Path.home() / ".cache" / "dl_utils" / "models"


def test_list_models_reports_files_and_verification(_models_dir):
    rows = {r["name"]: r for r in models.list_models()}
    assert len(rows) == 8 and not any(r["downloaded"] for r in rows.values())
    assert rows["sam2.1_hiera_tiny"]["aliases"] == ["tiny", "t"]
    _models_dir.mkdir()
    f = _models_dir / "sam2.1_hiera_tiny.pt"
    f.write_bytes(b"x" * 2048)
    (_models_dir / "sam2_hiera_large.pt.part").write_bytes(b"x")
    rows = {r["name"]: r for r in models.list_models()}
    assert rows["sam2.1_hiera_tiny"]["downloaded"] and not rows["sam2.1_hiera_tiny"]["verified"]
    assert rows["sam2.1_hiera_tiny"]["size"] == "2.0 KiB"
    assert rows["sam2_hiera_large"]["partial"] and not rows["sam2_hiera_large"]["downloaded"]
    digest = models.record_sha256(f)
    rows = {r["name"]: r for r in models.list_models()}
    assert rows["sam2.1_hiera_tiny"]["verified"] and rows["sam2.1_hiera_tiny"]["sha256"] == digest
    table = models.format_model_table()
    line = next(ln for ln in table.splitlines() if ln.startswith("sam2.1_hiera_tiny"))
    assert line.split()[-1] == "verified"
    assert next(ln for ln in table.splitlines() if ln.startswith("sam2_hiera_large")).split()[-1] == "partial"
    assert str(_models_dir) in table


# ----------------------------------------------------------------------------- resolution
def test_missing_weights_offline_names_file_and_command(_models_dir):
    for name in ("sam2.1_hiera_tiny", "tiny", "facebook/sam2.1-hiera-tiny"):
        with pytest.raises(ModelError) as e:
            models.resolve_checkpoint(name)
        msg = str(e.value)
        assert "sam2.1_hiera_tiny.pt not found in" in msg and str(_models_dir) in msg
        assert "dl-utils models download sam2.1_hiera_tiny" in msg and "--checkpoint FILE" in msg


def test_resolve_paths_names_and_hf_ids(_models_dir, tmp_path):
    own = tmp_path / "mine.pt"
    own.write_bytes(b"w")
    assert models.resolve_checkpoint(str(own)) == own
    assert models.resolve_checkpoint(own) == own
    with pytest.raises(ModelError, match="checkpoint file .*nope.pt does not exist"):
        models.resolve_checkpoint(str(tmp_path / "nope.pt"))
    with pytest.raises(ModelError, match="is a folder"):
        models.resolve_checkpoint(str(tmp_path))
    with pytest.raises(ModelError, match="unknown SAM2 model"):
        models.resolve_checkpoint("sam3_giant")
    _models_dir.mkdir()
    (_models_dir / "sam2_hiera_small.pt").write_bytes(b"w")
    for name in ("sam2_hiera_small", "facebook/sam2-hiera-small"):
        assert models.resolve_checkpoint(name) == _models_dir / "sam2_hiera_small.pt"
    (_models_dir / "sam2.1_hiera_large.pt.part").write_bytes(b"w")
    with pytest.raises(ModelError, match="partial download sam2.1_hiera_large.pt.part"):
        models.resolve_checkpoint("large")


def test_unregistered_hf_id_offline():
    pytest.importorskip("huggingface_hub")
    with pytest.raises(ModelError, match="someone/sam2-custom.*dl-utils models download someone/sam2-custom"):
        models.resolve_checkpoint("someone/sam2-custom")


# ----------------------------------------------------------------------------- download
BLOB = np.random.default_rng(7).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


class _Server:
    """A local HTTP server for one fake checkpoint: Range support, optional cut-off, request log."""

    def __init__(self, blob: bytes, *, ranges: bool = True):
        self.blob, self.ranges = blob, ranges
        self.cut_after: int | None = None  # bytes to send before dropping the connection (once)
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def do_GET(self):
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if self.path != "/sam2.1_hiera_tiny.pt":
                    self.send_error(404)
                    return
                data, start = server.blob, 0
                rng = self.headers.get("Range")
                if rng and server.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[: server.cut_after])
                    server.cut_after = None
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/sam2.1_hiera_tiny.pt"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server(BLOB)
    yield s
    s.close()


def test_download_interrupted_then_resumed(server, _models_dir):
    server.cut_after = 100_000
    with pytest.raises(ModelError, match=r"(stopped at 100000 of 300000 bytes|interrupted).*again to resume"):
        models.download("tiny", url=server.url, progress=False, chunk_size=8192)
    part = _models_dir / "sam2.1_hiera_tiny.pt.part"
    dest = _models_dir / "sam2.1_hiera_tiny.pt"
    assert part.stat().st_size == 100_000 and not dest.exists()
    assert models.download("tiny", url=server.url, progress=False) == dest
    assert server.requests[-1]["range"] == "bytes=100000-"
    assert dest.read_bytes() == BLOB and not part.exists()
    # already there: no request at all
    n = len(server.requests)
    assert models.download("sam2.1_hiera_tiny", url=server.url, progress=False) == dest
    assert len(server.requests) == n
    # force: fetched again from scratch, old sha256 record dropped
    models.record_sha256(dest)
    models.download("tiny", url=server.url, progress=False, force=True)
    assert server.requests[-1]["range"] is None
    assert models.recorded_sha256(dest) is None and dest.read_bytes() == BLOB


def test_download_resume_when_server_ignores_range(_models_dir):
    s = _Server(BLOB, ranges=False)
    try:
        _models_dir.mkdir()
        (_models_dir / "sam2.1_hiera_tiny.pt.part").write_bytes(BLOB[:5000])
        path = models.download("tiny", url=s.url, progress=False)
        assert s.requests[-1]["range"] == "bytes=5000-"  # asked, got a 200: restarted cleanly
        assert path.read_bytes() == BLOB
    finally:
        s.close()


def test_download_part_already_complete(server, _models_dir):
    _models_dir.mkdir()
    (_models_dir / "sam2.1_hiera_tiny.pt.part").write_bytes(BLOB)
    path = models.download("tiny", url=server.url, progress=False)
    assert path.read_bytes() == BLOB  # the 416 answer told us the part held every byte


def test_download_size_check(server, _models_dir, monkeypatch):
    spec = models.MODELS["sam2.1_hiera_tiny"]
    monkeypatch.setitem(models.MODELS, spec.name, dataclasses.replace(spec, size_bytes=len(BLOB) + 1))
    with pytest.raises(ModelError, match=f"has {len(BLOB)} bytes but sam2.1_hiera_tiny should have {len(BLOB) + 1}"):
        models.download("tiny", url=server.url, progress=False)
    assert not (_models_dir / "sam2.1_hiera_tiny.pt").exists()
    monkeypatch.setitem(models.MODELS, spec.name, dataclasses.replace(spec, size_bytes=len(BLOB)))
    assert models.download("tiny", url=server.url, progress=False).stat().st_size == len(BLOB)


def test_download_network_errors(server, _models_dir):
    with pytest.raises(ModelError, match=r"HTTP 404.*by hand and save it as .*sam2.1_hiera_tiny.pt"):
        models.download("tiny", url=server.url.replace(".pt", ".bin"), progress=False)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ModelError, match=r"cannot download .*unreachable.*sam2.1_hiera_tiny.pt"):
        models.download("tiny", url=f"http://127.0.0.1:{port}/x.pt", progress=False, timeout=5)
    with pytest.raises(InputError, match="download source"):
        models.download("tiny", source="ftp")


def test_download_hf_route_offline():
    pytest.importorskip("huggingface_hub")
    with pytest.raises(ModelError, match="cannot fetch sam2.1_hiera_tiny.pt from Hugging Face repo facebook/sam2.1-hiera-tiny"):
        models.download("facebook/sam2.1-hiera-tiny", progress=False)


# ----------------------------------------------------------------------------- sha256
def test_sha256_record_and_mismatch(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(BLOB)
    assert models.check_sha256(f) is None  # nothing recorded yet
    digest = models.record_sha256(f)
    assert digest == hashlib.sha256(BLOB).hexdigest()
    assert (tmp_path / "w.pt.sha256").read_text() == f"{digest}  w.pt\n"  # sha256sum -c format
    assert models.check_sha256(f) == digest
    f.write_bytes(BLOB[:-1] + b"\x00" if BLOB[-1] else BLOB[:-1] + b"\x01")
    with pytest.raises(ModelError, match=r"changed since it was first loaded.*dl-utils models download tiny --force"):
        models.check_sha256(f, name="tiny")
    (tmp_path / "w.pt.sha256").write_text("garbage\n")
    with pytest.raises(ModelError, match="not a sha256 record"):
        models.check_sha256(f)


# ----------------------------------------------------------------------------- torch side
@requires_sam2
def test_pick_device_and_precision(monkeypatch):
    import contextlib

    import torch

    from dl_utils.sam2_loader import autocast_context, pick_device, resolve_dtype

    monkeypatch.delenv("DL_UTILS_DEVICE", raising=False)
    want = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert pick_device().type == want
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("DL_UTILS_DEVICE", "cpu")
    assert pick_device().type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available.*device='cpu'"):
            pick_device("cuda")
    with pytest.raises(InputError, match="not a torch device"):
        pick_device("gpu0")
    assert resolve_dtype(torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype(torch.device("cpu")) == torch.float32
    assert resolve_dtype(torch.device("cuda"), "fp32") == torch.float32
    with autocast_context("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context("cpu", "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
        with autocast_context("cpu", "fp32"):  # fp32 is fp32 inside an enclosing autocast too
            assert not torch.is_autocast_enabled("cpu")
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(InputError, match="dtype 'int8'"):
        resolve_dtype(torch.device("cpu"), "int8")


@requires_sam2
def test_image_size_validation():
    from dl_utils.sam2_loader import bb_feat_sizes, size_overrides

    for bad in (100, 0, 32, 1000):
        with pytest.raises(InputError, match="multiple of 32"):
            size_overrides(bad)
    assert bb_feat_sizes(256) == [(64, 64), (32, 32), (16, 16)]
    assert bb_feat_sizes(1024) == [(256, 256), (128, 128), (64, 64)]  # upstream's hard-coded values


@requires_sam2
@pytest.mark.parametrize("video", [False, True])
def test_builder_equals_upstream_builder(video):
    """Same config, overrides and seed as sam2.build_sam: identical class, settings and weights."""
    import torch
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    from dl_utils.sam2_loader import build_sam2_model, size_overrides

    ours = build_sam2_model("tiny", image_size=256, device="cpu", random_weights=True, seed=3, video=video)
    builder = build_sam2_video_predictor if video else build_sam2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        theirs = builder(
            "configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu", hydra_overrides_extra=size_overrides(256)
        )
    assert type(ours) is type(theirs)
    assert type(ours).__name__ == ("SAM2VideoPredictor" if video else "SAM2Base")
    assert ours.image_size == theirs.image_size == 256
    assert ours.sam_image_embedding_size == 16
    if video:
        assert ours.binarize_mask_from_pts_for_mem_enc is True and ours.fill_hole_area == 8
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not ours.training and ours.dl_utils_name == "sam2.1_hiera_tiny"
    assert ours.dl_utils_sha256 == "random-3" and ours.dl_utils_checkpoint is None


@requires_sam2
def test_builder_without_weights_offline(_models_dir):
    from dl_utils.sam2_loader import build_sam2_model

    with pytest.raises(ModelError, match="sam2.1_hiera_base_plus.pt not found.*dl-utils models download sam2.1_hiera_base_plus"):
        build_sam2_model("base+", device="cpu")
    with pytest.raises(ModelError, match="config configs/x.yaml has no registry checkpoint"):
        build_sam2_model("configs/x.yaml", device="cpu")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The random tiny network saved in the official format {'model': state_dict} (~150 MB)."""
    if not HAVE_SAM2:
        pytest.skip(SKIP_REASON)
    import torch

    from tests.sam2_fixtures import build_tiny

    path = tmp_path_factory.mktemp("ckpt") / "tiny_random.pt"
    torch.save({"model": build_tiny().state_dict()}, path)
    return path


@requires_sam2
@pytest.mark.slow
def test_checkpoint_round_trip_sha_and_strictness(tiny_checkpoint, tiny_sam2, tmp_path):
    import shutil

    import torch

    from dl_utils.sam2_loader import build_sam2_model

    sha_file = tiny_checkpoint.with_name(tiny_checkpoint.name + ".sha256")
    sha_file.unlink(missing_ok=True)
    loaded = build_sam2_model("tiny", checkpoint=tiny_checkpoint, image_size=TEST_IMAGE_SIZE, device="cpu")
    digest = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert loaded.dl_utils_sha256 == digest and sha_file.read_text().split()[0] == digest
    a, b = loaded.state_dict(), tiny_sam2.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    img = test_image()
    outs = []
    for m in (loaded, tiny_sam2):
        p = raw_image_predictor(m)
        p.set_image(img)
        outs.append(p.predict(np.array([[40.0, 50.0]]), np.array([1]), return_logits=True))
    for x, y in zip(*outs):
        assert np.array_equal(x, y)
    # a second load checks the recorded digest and passes
    assert build_sam2_model("tiny", checkpoint=tiny_checkpoint, image_size=256, device="cpu").dl_utils_sha256 == digest

    # what `dl-utils models download` runs afterwards: a strict load at the default size, by name
    from dl_utils.sam2_loader import verify_checkpoint

    models.models_dir().mkdir(parents=True)
    (models.models_dir() / "sam2.1_hiera_tiny.pt").symlink_to(tiny_checkpoint)
    assert verify_checkpoint("tiny") == digest
    assert models.list_models()[0]["verified"]

    # the SAM 2.0 config does not fit a SAM 2.1 file: strict load refuses, naming both and guessing right
    with pytest.raises(ModelError) as e:
        build_sam2_model("sam2_hiera_tiny", checkpoint=tiny_checkpoint, image_size=256, device="cpu")
    msg = str(e.value)
    assert str(tiny_checkpoint) in msg and "configs/sam2/sam2_hiera_t.yaml" in msg
    assert "unexpected keys" in msg and "it looks like sam2.1_hiera_tiny" in msg
    with pytest.raises(ModelError, match=r"does not match config configs/sam2.1/sam2.1_hiera_s.yaml: \d+ missing keys"):
        build_sam2_model("small", checkpoint=tiny_checkpoint, image_size=256, device="cpu")

    # the file changes after its digest was recorded: refused before loading
    changed = tmp_path / "changed.pt"
    shutil.copyfile(tiny_checkpoint, changed)
    models.record_sha256(changed, digest)
    with open(changed, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="changed since it was first loaded"):
        build_sam2_model("tiny", checkpoint=changed, image_size=256, device="cpu")


@requires_sam2
def test_bad_checkpoint_files(tmp_path):
    import torch

    from dl_utils.sam2_loader import build_sam2_model

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError, match=r"junk.pt is not a SAM2 checkpoint: it is a text file.*"
                                         r"dl-utils models download tiny") as e:
        build_sam2_model("tiny", checkpoint=junk, image_size=256, device="cpu")
    assert "delete" not in str(e.value)
    assert not junk.with_name("junk.pt.sha256").exists()  # nothing recorded for a failed load
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    with pytest.raises(ModelError, match=r"not a SAM2 checkpoint: it holds a dict with keys \['state_dict'\], "
                                         r"not a 'model' state dict"):
        build_sam2_model("tiny", checkpoint=other, image_size=256, device="cpu")
    with pytest.raises(ModelError, match="checkpoint file .*missing.pt does not exist"):
        build_sam2_model("tiny", checkpoint=tmp_path / "missing.pt", image_size=256, device="cpu")


@requires_sam2
def test_segment_checkpoint_that_is_a_photo_is_never_called_damaged(tmp_path, _models_dir, capsys):
    """`segment --checkpoint precious.jpg`: says what the file is and how to get a checkpoint, no "delete"."""
    from dl_utils.cli import main

    photo = tmp_path / "precious.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(2000))
    prompts = tmp_path / "p.json"
    prompts.write_text('[{"frame": 0, "object": 1, "label": "car", "points": [[5, 5, 1]]}]')
    frames = tmp_path / "frames"
    frames.mkdir()
    from dl_utils.cv_utils import save_image

    save_image(frames / "a.png", np.zeros((32, 32, 3), np.uint8))
    assert main(["segment", str(frames), "--out", str(tmp_path / "s.sqlite"), "--prompts", str(prompts),
                 "--checkpoint", str(photo), "--image-size", "256", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "precious.jpg is not a SAM2 checkpoint: it is a JPEG image" in err
    assert "dl-utils models download tiny" in err and "delete" not in err
    assert photo.read_bytes().startswith(b"\xff\xd8")
    # one of our own downloads that is damaged: re-download it (that is safe, it came from us)
    _models_dir.mkdir()
    ours = _models_dir / "sam2.1_hiera_tiny.pt"
    ours.write_bytes(b"PK\x03\x04 truncated")
    assert main(["segment", str(frames), "--out", str(tmp_path / "s2.sqlite"), "--prompts", str(prompts),
                 "--model", "tiny", "--image-size", "256", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "damaged" in err and "dl-utils models download sam2.1_hiera_tiny --force" in err


# ----------------------------------------------------------------------------- command line
def test_cli_models_list_and_download(server, _models_dir, capsys):
    """``dl-utils models list`` / ``models download NAME``: the commands issue 4 names."""
    import json

    from dl_utils.cli import main

    assert main(["models", "list"]) == 0
    table = capsys.readouterr().out
    assert "sam2.1_hiera_tiny" in table and "sam2_hiera_large" in table and str(_models_dir) in table
    assert main(["models", "download", "tiny", "--url", server.url, "--no-verify"]) == 0
    dest = Path(capsys.readouterr().out.strip())
    assert dest == _models_dir / "sam2.1_hiera_tiny.pt" and dest.read_bytes() == BLOB
    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["sam2.1_hiera_tiny"]["downloaded"] and not rows["sam2.1_hiera_small"]["downloaded"]


@requires_sam2
def test_cli_models_download_rejects_a_file_that_is_not_a_checkpoint(server, _models_dir, capsys):
    """The strict load after download reports a bad file at once, in one line, exit code 1."""
    from dl_utils.cli import main

    assert main(["models", "download", "tiny", "--url", server.url]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dl-utils: error: ") and "sam2.1_hiera_tiny.pt" in err[0]


@requires_sam2
def test_cli_models_download_verifies_a_good_checkpoint(tiny_checkpoint, _models_dir, capsys):
    """A real (random-weight) checkpoint served over HTTP downloads, strict-loads and records sha256."""
    from dl_utils.cli import main

    s = _Server(Path(tiny_checkpoint).read_bytes())
    try:
        assert main(["models", "download", "tiny", "--url", s.url]) == 0
    finally:
        s.close()
    out = capsys.readouterr().out
    digest = hashlib.sha256(Path(tiny_checkpoint).read_bytes()).hexdigest()
    assert f"strict load OK, sha256 {digest}" in out
    assert models.recorded_sha256(_models_dir / "sam2.1_hiera_tiny.pt") == digest


def test_cli_models_download_unknown_name_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "dl_utils", "models", "download", "no-such-model"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-model" in lines[0] and "sam2.1_hiera_tiny" in lines[0]
