"""SAM 3 weights: registry rows, gated / offline download errors, checksums, ``sam3_files`` resolution.

No network and no real weights: Hugging Face is replaced by a stand-in ``hf_hub_download`` (or refused
by ``HF_HUB_OFFLINE``), HTTP downloads come from a local server, and checkpoints are tiny torch-format
zip files holding only the pickled key names the checks read.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import pickle
import threading
import zipfile
from pathlib import Path

import pytest

from dl_utils import sam3_weights as sw
from dl_utils.errors import ModelError


@pytest.fixture(autouse=True)
def models_dir(tmp_path, monkeypatch):
    d = tmp_path / "models"
    monkeypatch.setenv("DL_UTILS_MODELS", str(d))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return d


def torch_zip(path: Path, keys: list[str]) -> Path:
    """A file laid out like ``torch.save`` output (zip with ``archive/data.pkl``): enough for the key check."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"model": dict.fromkeys(keys, 0)}))
        z.writestr("archive/version", "3\n")
    return path


SAM3_KEYS = ["detector.backbone.vision_backbone.trunk.pos_embed", "tracker.sam_mask_decoder.iou_token.weight"]
BPE = gzip.compress(b'"bpe_simple_vocab_16e6.txt#version: 0.2\ni n\nt h\n')


class Server:
    """Serves ``files`` (path -> bytes) over HTTP on 127.0.0.1; anything else is a 404."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def bpe_server(monkeypatch):
    s = Server({"/bpe.gz": BPE, "/other.gz": gzip.compress(b"not it")})
    monkeypatch.setattr(sw, "BPE_SHA256", hashlib.sha256(BPE).hexdigest())
    monkeypatch.setattr(sw, "BPE_URLS", (s.base + "/missing.gz", s.base + "/bpe.gz"))
    monkeypatch.setitem(sw.SAM3_MODELS, "sam3-bpe",
                        __import__("dataclasses").replace(sw.SAM3_MODELS["sam3-bpe"], size_bytes=None))
    yield s
    s.close()


def fake_hub(blob: bytes, *, etag: str | None = None, calls: list | None = None):
    """A stand-in for ``huggingface_hub.hf_hub_download`` writing ``blob`` where the real one would."""

    def hf_hub_download(repo_id, filename, local_dir, force_download=False, token=None, **kw):
        if calls is not None:
            calls.append((repo_id, filename, token))
        dest = Path(local_dir) / filename
        dest.write_bytes(blob)
        meta = Path(local_dir) / ".cache" / "huggingface" / "download" / (filename + ".metadata")
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(f"abc123\n{etag or hashlib.sha256(blob).hexdigest()}\n0.0\n")
        return str(dest)

    return hf_hub_download


def gated_error(status: int):
    import requests
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    resp = requests.Response()
    resp.status_code = status
    resp.url = "https://huggingface.co/facebook/sam3/resolve/main/sam3.pt"
    cls = GatedRepoError if status == 401 else HfHubHTTPError
    return cls(f"{status} Client Error. Cannot access gated repo for url {resp.url}.", response=resp)


# ----------------------------------------------------------------------------- registry and listing
def test_registry_names():
    assert sw.find_sam3_spec("sam3").filename == "sam3.pt"
    assert sw.find_sam3_spec("facebook/sam3").name == "sam3" and sw.find_sam3_spec("SAM3").name == "sam3"
    assert sw.find_sam3_spec("bpe").filename == "bpe_simple_vocab_16e6.txt.gz"
    assert sw.find_sam3_spec("tiny") is None
    assert sw.SAM3_MODELS["sam3"].hf_id == "facebook/sam3"


def test_registry_matches_the_sam3_package():
    """The repo and file are what sam3's own download_ckpt_from_hf fetches."""
    pytest.importorskip("sam3")
    import inspect

    import sam3.model_builder as mb

    src = inspect.getsource(mb.download_ckpt_from_hf)
    assert '"facebook/sam3"' in src and '"sam3.pt"' in src


def test_models_list_shows_sam3(models_dir, capsys):
    from dl_utils.cli import main

    assert main(["models", "list"]) == 0
    table = capsys.readouterr().out
    assert any(line.split()[:2] == ["sam3", "sam3"] for line in table.splitlines())
    torch_zip(models_dir / "sam3.pt", SAM3_KEYS)
    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["sam3"]["family"] == "sam3" and rows["sam3"]["downloaded"]
    assert rows["sam3"]["hf_id"] == "facebook/sam3" and not rows["sam3-bpe"]["downloaded"]


# ----------------------------------------------------------------------------- download
@pytest.mark.parametrize("status", [401, 403])
def test_gated_download_is_one_line(monkeypatch, models_dir, status):
    import huggingface_hub

    def refuse(**kw):
        raise gated_error(status)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(ModelError) as e:
        sw.download_sam3(progress=False)
    msg = str(e.value)
    assert "\n" not in msg and f"HTTP {status}" in msg and "https://huggingface.co/facebook/sam3" in msg
    assert "HF_TOKEN" in msg and "huggingface-cli login" in msg and "--model FILE" in msg
    assert str(models_dir / "sam3.pt") in msg


def test_gated_download_through_the_cli(monkeypatch, capsys):
    import huggingface_hub

    from dl_utils.cli import main

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: (_ for _ in ()).throw(gated_error(401)))
    assert main(["models", "download", "sam3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dl-utils: error: ") and "SAM License" in err[0]


def test_offline_download_is_one_line(models_dir):
    pytest.importorskip("huggingface_hub")
    with pytest.raises(ModelError) as e:  # HF_HUB_OFFLINE=1: the real hf_hub_download refuses
        sw.download_sam3(progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE is set" in msg and "--model FILE" in msg
    assert not (models_dir / "sam3.pt").exists()


def test_download_records_sha256_and_gets_the_vocabulary(monkeypatch, models_dir, bpe_server):
    import huggingface_hub

    blob = torch_zip(models_dir.parent / "src.pt", SAM3_KEYS).read_bytes()
    calls: list = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub(blob, calls=calls))
    path = sw.download_sam3(progress=False)
    assert path == models_dir / "sam3.pt" and calls == [("facebook/sam3", "sam3.pt", None)]
    assert sw._models.recorded_sha256(path) == hashlib.sha256(blob).hexdigest()
    assert (models_dir / sw.BPE_FILENAME).read_bytes() == BPE  # the first URL is a 404: the second served
    files = sw.sam3_files("sam3")
    assert files == sw.Sam3Files(checkpoint=path, bpe=models_dir / sw.BPE_FILENAME)
    sw.download_sam3(progress=False)  # present: no second fetch
    assert len(calls) == 1


def test_download_refuses_a_file_that_is_not_the_hubs(monkeypatch, models_dir):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub(b"x" * 100, etag="0" * 64))
    with pytest.raises(ModelError, match="damaged on the way and was deleted"):
        sw.download_sam3(progress=False, bpe=False)
    assert not (models_dir / "sam3.pt").exists()


def test_download_from_a_mirror_url_through_the_cli(models_dir, bpe_server, capsys):
    from dl_utils.cli import main

    blob = torch_zip(models_dir.parent / "src.pt", SAM3_KEYS).read_bytes()
    bpe_server.files["/sam3.pt"] = blob
    assert main(["models", "download", "sam3", "--url", bpe_server.base + "/sam3.pt"]) == 0
    assert Path(capsys.readouterr().out.strip()) == models_dir / "sam3.pt"
    assert (models_dir / "sam3.pt").read_bytes() == blob
    assert sw._models.recorded_sha256(models_dir / "sam3.pt") == hashlib.sha256(blob).hexdigest()


def test_bpe_checksum_mismatch(models_dir, bpe_server):
    with pytest.raises(ModelError, match="not CLIP's.*deleted"):
        sw.download_bpe(url=bpe_server.base + "/other.gz", progress=False)
    assert not (models_dir / sw.BPE_FILENAME).exists()
    with pytest.raises(ModelError, match="cannot download the SAM 3 tokenizer.*--bpe FILE"):
        sw.download_bpe(url=bpe_server.base + "/missing.gz", progress=False)


# ----------------------------------------------------------------------------- checksums
def test_checkpoint_changed_after_download(monkeypatch, models_dir, tmp_path):
    import huggingface_hub

    blob = torch_zip(tmp_path / "src.pt", SAM3_KEYS).read_bytes()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub(blob))
    path = sw.download_sam3(progress=False, bpe=False)
    bpe = tmp_path / "vocab.gz"
    bpe.write_bytes(BPE)
    assert sw.sam3_files(None, bpe=bpe).checkpoint == path
    with open(path, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ModelError, match=r"changed since.*dl-utils models download sam3 --force"):
        sw.sam3_files("sam3", bpe=bpe)
    assert sw.sam3_files("sam3", bpe=bpe, verify=False).checkpoint == path  # the engine's loader checks


def test_registry_bpe_is_checked_against_clips_digest(models_dir, tmp_path):
    torch_zip(models_dir / "sam3.pt", SAM3_KEYS)
    (models_dir / sw.BPE_FILENAME).write_bytes(BPE)  # a stand-in: not CLIP's bytes
    with pytest.raises(ModelError, match="not CLIP's.*sam3-bpe --force"):
        sw.sam3_files("sam3")


# ----------------------------------------------------------------------------- resolution
def test_missing_registry_weights_say_how_to_get_them(models_dir):
    with pytest.raises(ModelError) as e:
        sw.sam3_files(None)
    msg = str(e.value)
    assert "\n" not in msg and "sam3.pt not found" in msg and "SAM License" in msg
    assert "dl-utils models download sam3" in msg and str(models_dir / "sam3.pt") in msg


def test_missing_vocabulary_says_how_to_get_it(models_dir):
    torch_zip(models_dir / "sam3.pt", SAM3_KEYS)
    with pytest.raises(ModelError, match=r"bpe_simple_vocab_16e6.txt.gz.*models download sam3-bpe.*--bpe FILE"):
        sw.sam3_files("sam3")


def test_paths_and_names(models_dir, tmp_path):
    bpe = tmp_path / "vocab.gz"
    bpe.write_bytes(BPE)
    mine = torch_zip(tmp_path / "my_sam3.pt", SAM3_KEYS)
    assert sw.sam3_files(str(mine), bpe=bpe) == sw.Sam3Files(checkpoint=mine, bpe=bpe)
    assert sw.sam3_files(mine, bpe=str(bpe)).checkpoint == mine
    with pytest.raises(ModelError, match="does not exist"):
        sw.sam3_files(str(tmp_path / "nope.pt"), bpe=bpe)
    with pytest.raises(ModelError, match="is a folder"):
        sw.sam3_files(str(tmp_path), bpe=bpe)
    with pytest.raises(ModelError, match="unknown SAM 3 model 'sam4'"):
        sw.sam3_files("sam4", bpe=bpe)
    with pytest.raises(ModelError, match="--bpe .* does not exist"):
        sw.sam3_files(mine, bpe=tmp_path / "none.gz")
    with pytest.raises(ModelError, match="not the SAM 3 tokenizer vocabulary"):
        sw.sam3_files(mine, bpe=mine)
    with pytest.raises(ModelError, match="tokenizer vocabulary; pass it with --bpe"):
        sw.sam3_files("sam3-bpe", bpe=bpe)


@pytest.mark.parametrize("keys,kind", [
    (["image_encoder.trunk.pos_embed", "sam_mask_decoder.iou_token.weight"], "a SAM2 checkpoint"),
    (["module.transformer.enc_out_bbox_embed.layers.0.weight", "module.bert.embeddings.word_embeddings.weight"],
     "a GroundingDINO checkpoint"),
    (["image_encoder.blocks.0.attn.qkv.weight", "mask_decoder.output_upscaling.0.weight"], "a SAM (v1) checkpoint"),
])
def test_another_models_file_is_refused_in_one_line(tmp_path, keys, kind):
    bpe = tmp_path / "vocab.gz"
    bpe.write_bytes(BPE)
    other = torch_zip(tmp_path / "other.pt", keys)
    with pytest.raises(ModelError) as e:
        sw.sam3_files(str(other), bpe=bpe)
    assert kind in str(e.value) and "not SAM 3 weights" in str(e.value) and "\n" not in str(e.value)


def test_non_checkpoints_are_refused(tmp_path):
    photo = tmp_path / "photo.pt"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 100)
    with pytest.raises(ModelError, match="JPEG image.*not a PyTorch checkpoint"):
        sw.sam3_files(str(photo), bpe=photo)
    st = tmp_path / "model.safetensors"
    header = json.dumps({"detector_model.vision_encoder.x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    st.write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\0" * 4)
    with pytest.raises(ModelError, match="transformers-format SAM 3 file"):
        sw.sam3_files(str(st), bpe=photo)
