"""SAM 3 weights and tokenizer vocabulary: registry, download, checksums and resolution (no torch needed).

SAM 3 needs two files, and neither comes with ``pip install sam3``:

* ``sam3.pt``, the checkpoint (``detector.*`` and ``tracker.*`` keys), from the Hugging Face repo
  ``facebook/sam3`` (what ``sam3.model_builder.download_ckpt_from_hf`` fetches). The repo is **gated**:
  Meta's SAM License must be accepted on the repo page and the download must carry a token, so a plain
  download fails with HTTP 401/403; that failure is turned into one line saying what to do.
* ``bpe_simple_vocab_16e6.txt.gz``, the text tokenizer's BPE vocabulary. ``sam3`` 0.1.4's wheel leaves
  it out (the builder looks for it beside the package and fails with FileNotFoundError). It is OpenAI
  CLIP's file, byte for byte, so its sha256 is known and checked on every download.

Both land in :func:`dl_utils.models.models_dir` next to the SAM2 and GroundingDINO weights and are
resolved by :func:`sam3_files`, which the SAM 3 engine and the command line call. Checksums use the
registry's one mechanism (``<file>.sha256`` beside the file, :mod:`dl_utils.models`): Meta publishes no
digest for ``sam3.pt``, so the digest is recorded right after the download (compared first with the
sha256 the Hugging Face hub reports for the file when huggingface_hub left it in its download
metadata) and every later :func:`sam3_files` checks it.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import models as _models
from .errors import InputError, ModelError
from .models import ModelSpec, models_dir

SAM3_HF_REPO = "facebook/sam3"
SAM3_CHECKPOINT = "sam3.pt"
#: where the licence is accepted (the repo page shows the form)
SAM3_LICENSE_URL = "https://huggingface.co/facebook/sam3"

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
#: sha256 and size of CLIP's vocabulary (checked against two independent packagings of openai/CLIP)
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
BPE_SIZE = 1_356_917
#: tried in order: SAM 3's own copy (sam3/assets on main), then OpenAI CLIP's original
BPE_URLS = (
    "https://raw.githubusercontent.com/facebookresearch/sam3/main/sam3/assets/" + BPE_FILENAME,
    "https://raw.githubusercontent.com/openai/CLIP/main/clip/" + BPE_FILENAME,
)

SAM3_MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            name="sam3",
            family="sam3",
            config="",
            url=f"https://huggingface.co/{SAM3_HF_REPO}/resolve/main/{SAM3_CHECKPOINT}",
            filename=SAM3_CHECKPOINT,
            approx_mb=3450,  # ~848M parameters in float32; for `models list` only
            hf_id=SAM3_HF_REPO,
            description="SAM 3: text/box/point prompts on images and video (gated: Meta SAM License)",
        ),
        ModelSpec(
            name="sam3-bpe",
            family="sam3",
            config="",
            url=BPE_URLS[0],
            filename=BPE_FILENAME,
            size_bytes=BPE_SIZE,
            approx_mb=1,
            description="SAM 3 text tokenizer vocabulary (CLIP's BPE; missing from the sam3 0.1.4 wheel)",
        ),
    )
}
SAM3_ALIASES: dict[str, str] = {
    SAM3_HF_REPO: "sam3",
    SAM3_CHECKPOINT: "sam3",
    BPE_FILENAME: "sam3-bpe",
    "bpe": "sam3-bpe",
}
DEFAULT_SAM3 = "sam3"


@dataclass(frozen=True)
class Sam3Files:
    """What building SAM 3 needs: the checkpoint (loaded strictly later) and the tokenizer vocabulary."""

    checkpoint: Path
    bpe: Path


def find_sam3_spec(name: str) -> ModelSpec | None:
    """The spec of ``sam3`` / ``sam3-bpe`` (or an alias: ``facebook/sam3``, ``sam3.pt``); None when unknown."""
    key = str(name).strip()
    key = SAM3_ALIASES.get(key, SAM3_ALIASES.get(key.lower(), key.lower()))
    return SAM3_MODELS.get(key)


def sam3_checkpoint_path() -> Path:
    """Where the registry's ``sam3.pt`` is (or will be after download)."""
    return models_dir() / SAM3_CHECKPOINT


def bpe_path() -> Path:
    """Where the registry's tokenizer vocabulary is (or will be after download)."""
    return models_dir() / BPE_FILENAME


def _by_hand(dest: Path) -> str:
    return f"download {SAM3_CHECKPOINT} elsewhere and pass it with --model FILE or put it at {dest}"


def _how_to_get(dest: Path) -> str:
    return (
        f"accept Meta's SAM License at {SAM3_LICENSE_URL}, then pass a token (HF_TOKEN env var or "
        f"`huggingface-cli login`) and run `dl-utils models download sam3`, or {_by_hand(dest)}"
    )


# ----------------------------------------------------------------------------- listing
def list_sam3_models() -> list[dict[str, Any]]:
    """Rows shaped like :func:`dl_utils.models.list_models` for ``dl-utils models list``."""
    aliases: dict[str, list[str]] = {}
    for a, n in SAM3_ALIASES.items():
        if "/" not in a and "." not in a:
            aliases.setdefault(n, []).append(a)
    rows = []
    for spec in SAM3_MODELS.values():
        path = models_dir() / spec.filename
        present = path.is_file()
        try:
            sha = _models.recorded_sha256(path) if present else None
        except ModelError:
            sha = None
        size = _models._human(path.stat().st_size) if present else f"~{spec.approx_mb} MB"
        rows.append(_models.model_row(spec, aliases, path, present=present, sha=sha, size=size))
    return rows


# ----------------------------------------------------------------------------- download
def download_sam3(
    name: str = DEFAULT_SAM3,
    *,
    force: bool = False,
    progress: bool = True,
    url: str | None = None,
    token: str | None = None,
    bpe: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``sam3`` (checkpoint, and with ``bpe`` the vocabulary too) or ``sam3-bpe``; return the file.

    The checkpoint comes from Hugging Face (``token``: else huggingface_hub's own ``HF_TOKEN`` /
    stored login); ``url`` fetches it from a mirror instead, with the registry's resumable,
    size-checked HTTP download. Its sha256 is recorded beside it at once.
    """
    spec = find_sam3_spec(name)
    if spec is None:
        raise InputError(f"unknown SAM 3 registry name {name!r}; use one of {', '.join(SAM3_MODELS)}")
    if spec.name == "sam3-bpe":
        return download_bpe(force=force, progress=progress, url=url, timeout=timeout)
    dest = sam3_checkpoint_path()
    if force or not dest.is_file():
        if url is not None:
            _models.fetch_to(url, dest, spec, force=force, progress=progress, timeout=timeout)
        else:
            _download_hf_checkpoint(dest, force=force, token=token)
        _record_after_download(dest)
    if bpe:
        download_bpe(force=False, progress=progress, timeout=timeout)
    return dest


def download_bpe(*, force: bool = False, progress: bool = True, url: str | None = None,
                 timeout: float = 60.0) -> Path:
    """Fetch the tokenizer vocabulary (``url``, else :data:`BPE_URLS` in turn) and check its sha256."""
    dest = bpe_path()
    if dest.is_file() and not force:
        return dest
    spec = SAM3_MODELS["sam3-bpe"]
    errors = []
    for u in [url] if url else list(BPE_URLS):
        try:
            _models.fetch_to(u, dest, spec, force=force, progress=progress, timeout=timeout)
            break
        except ModelError as e:
            errors.append(str(e))
    else:
        raise ModelError(
            f"cannot download the SAM 3 tokenizer vocabulary {BPE_FILENAME} ({errors[-1]}); download it "
            f"from {' or '.join(BPE_URLS)} and pass it with --bpe FILE or put it at {dest}"
        )
    got = _models.sha256_file(dest)
    if got != BPE_SHA256:
        dest.unlink(missing_ok=True)
        raise ModelError(
            f"the downloaded {BPE_FILENAME} has sha256 {got[:12]}..., not CLIP's {BPE_SHA256[:12]}...: "
            f"the server sent another file, so it was deleted; download it from {BPE_URLS[1]} and pass --bpe FILE"
        )
    _models.record_sha256(dest, got)
    return dest


def _status(e: BaseException) -> int | None:
    code = getattr(getattr(e, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


def _download_hf_checkpoint(dest: Path, *, force: bool, token: str | None) -> None:
    """``hf_hub_download`` of ``facebook/sam3``'s ``sam3.pt`` into the models folder; one-line errors."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelError(
            f"fetching SAM 3 weights needs huggingface_hub: pip install 'dl-utils[sam3]' (or {_by_hand(dest)})"
        ) from None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        got = Path(hf_hub_download(repo_id=SAM3_HF_REPO, filename=SAM3_CHECKPOINT, local_dir=dest.parent,
                                   force_download=force, token=token))
    except Exception as e:  # noqa: BLE001  huggingface_hub raises many types (gated, offline, disk)
        names = {c.__name__ for c in type(e).__mro__}
        first = (str(e).splitlines() or [""])[0][:160]
        if "GatedRepoError" in names or _status(e) in (401, 403):
            raise ModelError(
                f"{SAM3_HF_REPO} is gated and refused the download (HTTP {_status(e) or '401/403'}): "
                + _how_to_get(dest)
            ) from None
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        if offline or names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}:
            why = "HF_HUB_OFFLINE is set" if offline else "no network"
            raise ModelError(
                f"cannot fetch {SAM3_CHECKPOINT} from Hugging Face repo {SAM3_HF_REPO} ({why}); run "
                f"`dl-utils models download sam3` where the network reaches huggingface.co, or {_by_hand(dest)}"
            ) from None
        if isinstance(e, OSError) and not names & {"HfHubHTTPError"}:
            raise ModelError(f"cannot write {dest} ({e.strerror or first}); set DL_UTILS_MODELS to a "
                             "writable folder with ~4 GB free") from None
        raise ModelError(
            f"cannot fetch {SAM3_CHECKPOINT} from Hugging Face repo {SAM3_HF_REPO} ({type(e).__name__}: "
            f"{first}); check the network, or {_by_hand(dest)}"
        ) from None
    if got != dest and got.is_file():  # a huggingface_hub that ignores local_dir: move it into place
        os.replace(got, dest)


def _hub_sha256(dest: Path) -> str | None:
    """The sha256 the hub gave for the file (the LFS etag huggingface_hub keeps beside a local_dir
    download), or None when that record is not there (another huggingface_hub layout, a mirror)."""
    meta = dest.parent / ".cache" / "huggingface" / "download" / (dest.name + ".metadata")
    try:
        etag = meta.read_text().splitlines()[1].strip().strip('"').lower()
    except (OSError, IndexError):
        return None
    return etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None


def _record_after_download(dest: Path) -> str:
    """Record ``dest``'s sha256 now; refuse (and delete) a file whose digest is not the hub's."""
    digest = _models.sha256_file(dest)
    want = _hub_sha256(dest)
    if want is not None and want != digest:
        dest.unlink(missing_ok=True)
        raise ModelError(
            f"the downloaded {dest.name} has sha256 {digest[:12]}..., the hub says {want[:12]}...: the "
            "file was damaged on the way and was deleted; run `dl-utils models download sam3` again"
        )
    _models.record_sha256(dest, digest)
    return digest


# ----------------------------------------------------------------------------- what a file is
#: markers in a torch zip's pickled key names -> the model the file belongs to (first match wins)
_FOREIGN_KEYS: tuple[tuple[tuple[bytes, ...], str, str], ...] = (
    ((b"detector_model.",), "a transformers-format SAM 3 file (keys detector_model.*)",
     "the sam3 package reads the original sam3.pt (keys detector.*, tracker.*)"),
    ((b"sam_mask_decoder.", b"image_encoder.trunk."), "a SAM2 checkpoint",
     "use it with the SAM2 backend (--model sam2.1_hiera_*)"),
    ((b"transformer.enc_out_bbox_embed", b"bert.embeddings", b"feat_map."), "a GroundingDINO checkpoint",
     "use it with dl-utils detect"),
    ((b"image_encoder.blocks.", b"mask_decoder.output_upscaling"), "a SAM (v1) checkpoint",
     "SAM 3 cannot load it"),
)


def foreign_checkpoint(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is obviously not SAM 3 weights (one clause), or None when it may be.

    Cheap: reads only the pickled key names of a torch zip file (no tensors, no torch) or the JSON
    header of a safetensors file; what passes is still loaded strictly later.
    """
    p = Path(path)
    what = _models.describe_file(p)
    if what.startswith("a safetensors file"):
        try:
            with open(p, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                head = f.read(min(n, 64 << 20))
            keys = " ".join(json.loads(head)).encode()
        except (OSError, ValueError):
            return None
    elif what.startswith("a zip archive"):
        try:
            with zipfile.ZipFile(p) as z:
                pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if pkl is None:
                    return f"it is {what}, not a PyTorch checkpoint"
                keys = z.read(pkl)
        except (OSError, zipfile.BadZipFile):
            return None  # a damaged file: the strict load names it
    elif what.startswith("a pickle"):
        return None  # the legacy torch format: only the strict load can tell
    else:
        return f"it is {what}, not a PyTorch checkpoint"
    if b"detector." in keys.replace(b"detector_model.", b""):
        return None
    for markers, kind, advice in _FOREIGN_KEYS:
        if any(m in keys for m in markers):
            return f"it is {kind}, not SAM 3 weights; {advice}"
    return None


# ----------------------------------------------------------------------------- resolution
def _bpe_in_package() -> Path | None:
    """The vocabulary where a sam3 release that ships it puts it (newer: sam3/assets; the builder's
    own default: beside the package), or None."""
    import importlib.util

    found = importlib.util.find_spec("sam3")
    if found is None or not found.origin:
        return None
    pkg = Path(found.origin).parent
    for p in (pkg / "assets" / BPE_FILENAME, pkg.parent / "assets" / BPE_FILENAME):
        if p.is_file():
            return p
    return None


def _check_bpe(p: Path, *, registry: bool) -> Path:
    if registry:
        recorded = _models.recorded_sha256(p)
        got = _models.sha256_file(p)  # 1.3 MB: checked against the known digest every time
        if got != BPE_SHA256:
            raise ModelError(
                f"{p} is not CLIP's {BPE_FILENAME} (sha256 {got[:12]}..., expected {BPE_SHA256[:12]}...): run "
                "`dl-utils models download sam3-bpe --force`"
            )
        if recorded is None:
            _models.record_sha256(p, got)
        return p
    try:
        with gzip.open(p, "rt", encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError, EOFError):
        first = ""
    if "bpe_simple_vocab_16e6" not in first:
        raise ModelError(
            f"--bpe {p} is not the SAM 3 tokenizer vocabulary {BPE_FILENAME} (it is "
            f"{_models.describe_file(p)}); download it from {BPE_URLS[1]}"
        )
    return p


def resolve_bpe(bpe: str | os.PathLike[str] | None = None, *, download: bool = False) -> Path:
    """The tokenizer vocabulary: ``bpe`` (a file), else the models folder's, else one an installed sam3
    ships, else (``download``) fetched; a missing one is a :class:`ModelError` saying how to get it."""
    if bpe is not None:
        p = Path(os.fspath(bpe)).expanduser()
        if not p.is_file():
            raise ModelError(f"--bpe {p} does not exist; download {BPE_FILENAME} from {BPE_URLS[1]}")
        return _check_bpe(p, registry=False)
    dest = bpe_path()
    if dest.is_file():
        return _check_bpe(dest, registry=True)
    shipped = _bpe_in_package()
    if shipped is not None:
        return shipped
    if download:
        return download_bpe()
    raise ModelError(
        f"the SAM 3 tokenizer vocabulary {BPE_FILENAME} (missing from the sam3 0.1.4 wheel) is not in "
        f"{dest.parent}; run `dl-utils models download sam3-bpe`, or download it from {BPE_URLS[0]} (or "
        f"CLIP's {BPE_URLS[1]}) and pass it with --bpe FILE"
    )


def sam3_files(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    bpe: str | os.PathLike[str] | None = None,
    download: bool = False,
    verify: bool = True,
) -> Sam3Files:
    """The SAM 3 checkpoint and tokenizer vocabulary to build with (``--model`` / ``--bpe``).

    ``name_or_path``: None or a registry name (``sam3``, ``facebook/sam3``) -> the downloaded
    ``sam3.pt``; a path -> that file. A file that is obviously another model (SAM2, GroundingDINO, an
    image...) is refused here in one line; anything else is loaded strictly later by the engine.
    ``verify`` checks the file against its recorded ``<file>.sha256`` (one read of ~3.4 GB; an engine
    whose loader checks it already passes False). ``download`` fetches what is missing.
    """
    text = DEFAULT_SAM3 if name_or_path is None else os.fspath(name_or_path).strip()
    p = Path(text).expanduser()
    spec = find_sam3_spec(text) if not p.is_file() else None
    if spec is not None and spec.name != "sam3":
        raise ModelError(f"{text!r} is the tokenizer vocabulary; pass it with --bpe and the checkpoint with --model")
    if spec is not None:
        ckpt = sam3_checkpoint_path()
        if not ckpt.is_file():
            if not download:
                part = ckpt.with_name(ckpt.name + ".part")
                extra = f" (a partial download {part.name} is there)" if part.exists() else ""
                raise ModelError(f"SAM 3 weights {SAM3_CHECKPOINT} not found in {ckpt.parent}{extra}; "
                                 + _how_to_get(ckpt))
            download_sam3(bpe=False)
        name: str | None = "sam3"
    elif p.is_file():
        ckpt, name = p, None
    elif p.is_dir():
        raise ModelError(f"SAM 3 checkpoint {p} is a folder; pass the {SAM3_CHECKPOINT} file inside it")
    elif text.endswith((".pt", ".pth", ".ckpt", ".bin", ".safetensors")) or os.sep in text:
        raise ModelError(f"SAM 3 checkpoint file {p} does not exist; check the path (or pass --model sam3)")
    else:
        raise ModelError(f"unknown SAM 3 model {text!r}; use sam3 (or {SAM3_HF_REPO}) or a checkpoint file")
    why = foreign_checkpoint(ckpt)
    if why is not None:
        raise ModelError(f"--model {ckpt}: {why}")
    if verify:
        _models.check_sha256(ckpt, name=name)
    return Sam3Files(checkpoint=ckpt, bpe=resolve_bpe(bpe, download=download))


__all__ = [
    "BPE_FILENAME",
    "BPE_SHA256",
    "BPE_URLS",
    "DEFAULT_SAM3",
    "SAM3_ALIASES",
    "SAM3_CHECKPOINT",
    "SAM3_HF_REPO",
    "SAM3_LICENSE_URL",
    "SAM3_MODELS",
    "Sam3Files",
    "bpe_path",
    "download_bpe",
    "download_sam3",
    "find_sam3_spec",
    "foreign_checkpoint",
    "list_sam3_models",
    "resolve_bpe",
    "sam3_checkpoint_path",
    "sam3_files",
]
