"""SAM2 model registry, weights download and checksum bookkeeping.

Kept free of torch so ``dl-utils models list`` / ``download`` work on a machine without the model
extras: this module only knows names, URLs, files and hashes. Building a network from a checkpoint is
:mod:`dl_utils.sam2_loader`'s job.

A checkpoint can come from three places, resolved by :func:`resolve_checkpoint`:

* a local file path;
* a registry name (``sam2.1_hiera_tiny``, alias ``tiny``...): the file of that name in
  :func:`models_dir`, fetched from the official URL by :func:`download`;
* a Hugging Face model id (``facebook/sam2.1-hiera-tiny``): fetched with ``huggingface_hub`` into the same
  folder (same file name as the official download, so either route fills the same slot).

Integrity: :func:`download` checks the byte count (the registry's or the server's); the first
successful *strict* load records the file's sha256 in ``<file>.sha256`` (``sha256sum -c`` format) and
every later load checks it, so a file that changed on disk is caught before it silently gives bad masks.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, ModelError

OFFICIAL_BASE_21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
OFFICIAL_BASE_20 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One downloadable SAM2 checkpoint and the config it belongs to."""

    name: str
    family: str = "sam2"
    config: str  # hydra config name inside the installed ``sam2`` package
    url: str
    filename: str
    # Exact byte count when known. The official server publishes no checksums and the sizes could not
    # be confirmed offline, so these are None and the download is checked against the server's own
    # Content-Length / Content-Range total instead (plus the strict load and the recorded sha256).
    size_bytes: int | None = None
    approx_mb: int = 0  # for ``models list`` only
    hf_id: str | None = None
    description: str = ""


def _spec(version: str, size: str, short: str, mb: int, desc: str) -> ModelSpec:
    stem = f"{'sam2.1' if version == '2.1' else 'sam2'}_hiera_{size}"
    cfg_dir = "sam2.1" if version == "2.1" else "sam2"
    base = OFFICIAL_BASE_21 if version == "2.1" else OFFICIAL_BASE_20
    hf_size = size.replace("_", "-")
    return ModelSpec(
        name=stem,
        config=f"configs/{cfg_dir}/{stem.replace('_' + size, '_' + short)}.yaml",
        url=base + stem + ".pt",
        filename=stem + ".pt",
        approx_mb=mb,
        hf_id=f"facebook/{'sam2.1' if version == '2.1' else 'sam2'}-hiera-{hf_size}",
        description=desc,
    )


_SIZES = [
    ("tiny", "t", 149, "fastest; ~39M params, good for CPU and quick pre-annotation"),
    ("small", "s", 176, "~46M params, a little better than tiny at similar speed"),
    ("base_plus", "b+", 309, "~81M params, the usual GPU default"),
    ("large", "l", 857, "~224M params, best masks, needs a GPU"),
]

MODELS: dict[str, ModelSpec] = {}
for _ver, _tag in (("2.1", "SAM 2.1"), ("2.0", "SAM 2")):
    for _size, _short, _mb, _desc in _SIZES:
        _s = _spec(_ver, _size, _short, _mb, f"{_tag} {_size.replace('_plus', '+')}: {_desc}")
        MODELS[_s.name] = _s

#: Short names; they always mean SAM 2.1 (the better release of the same sizes).
ALIASES: dict[str, str] = {
    "tiny": "sam2.1_hiera_tiny",
    "t": "sam2.1_hiera_tiny",
    "small": "sam2.1_hiera_small",
    "s": "sam2.1_hiera_small",
    "base+": "sam2.1_hiera_base_plus",
    "base_plus": "sam2.1_hiera_base_plus",
    "b+": "sam2.1_hiera_base_plus",
    "large": "sam2.1_hiera_large",
    "l": "sam2.1_hiera_large",
}

DEFAULT_MODEL = "sam2.1_hiera_tiny"
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def models_dir() -> Path:
    """Where registry checkpoints live: ``$DL_UTILS_MODELS`` or ``~/.cache/dl_utils/models``."""
    env = os.environ.get("DL_UTILS_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dl_utils" / "models"


def find_spec(name: str) -> ModelSpec | None:
    """The spec for a registry name, alias or known Hugging Face id; None when unknown."""
    key = name.strip()
    key = ALIASES.get(key.lower(), key)
    if key in MODELS:
        return MODELS[key]
    for spec in MODELS.values():
        if spec.hf_id == key or spec.config == key or spec.filename == key:
            return spec
    return None


def get_spec(name: str) -> ModelSpec:
    """Like :func:`find_spec` but raises :class:`ModelError` listing the known names."""
    spec = find_spec(name)
    if spec is None:
        raise ModelError(
            f"unknown SAM2 model {name!r}; use one of {', '.join(MODELS)} (or the aliases "
            f"{', '.join(ALIASES)}), a Hugging Face id such as facebook/sam2.1-hiera-tiny, "
            "or pass a checkpoint file"
        )
    return spec


def checkpoint_path(name: str) -> Path:
    """Where the registry checkpoint ``name`` is (or will be after download)."""
    return models_dir() / get_spec(name).filename


# ----------------------------------------------------------------------------- checksums
def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _sha_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: str | os.PathLike[str]) -> str | None:
    """The digest recorded next to ``path`` by :func:`record_sha256`, or None."""
    p = _sha_path(Path(path))
    try:
        text = p.read_text().strip()
    except OSError:
        return None
    digest = text.split()[0].lower() if text else ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ModelError(
            f"{p} is not a sha256 record (expected '<64 hex digits>  {Path(path).name}'); "
            "delete it and the next load records a fresh one"
        )
    return digest


def record_sha256(path: str | os.PathLike[str], digest: str | None = None) -> str | None:
    """Write ``<file>.sha256`` (sha256sum format). Returns the digest, None if the folder is read-only."""
    path = Path(path)
    digest = digest or sha256_file(path)
    try:
        tmp = _sha_path(path).with_suffix(".sha256.tmp")
        tmp.write_text(f"{digest}  {path.name}\n")
        os.replace(tmp, _sha_path(path))
    except OSError:
        return None  # a read-only folder (a shared cache, a mounted volume): nothing to record into
    return digest


def check_sha256(path: str | os.PathLike[str], *, name: str | None = None) -> str | None:
    """Check ``path`` against its recorded digest; return the digest, or None when none is recorded.

    Raises :class:`ModelError` saying how to recover when the file changed since it was recorded.
    """
    path = Path(path)
    want = recorded_sha256(path)
    if want is None:
        return None
    got = sha256_file(path)
    if got != want:
        how = (
            f"run `dl-utils models download {name} --force`"
            if name
            else "download it again"
        )
        raise ModelError(
            f"checkpoint {path} changed since it was first loaded (sha256 {got[:12]}..., recorded "
            f"{want[:12]}... in {_sha_path(path).name}): the file is corrupted or was replaced; {how}, "
            f"or delete {_sha_path(path)} if you replaced the file on purpose"
        )
    return got


# ----------------------------------------------------------------------------- listing
def _human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def model_row(spec: ModelSpec, aliases: dict[str, list[str]], path: Path, *, present: bool,
              sha: str | None, size: str, partial: bool | None = None) -> dict[str, Any]:
    """One row of ``dl-utils models list`` (SAM2 and GroundingDINO share the shape)."""
    if partial is None:
        partial = path.with_name(path.name + ".part").is_file()
    return {
        "name": spec.name,
        "family": spec.family,
        "aliases": aliases.get(spec.name, []),
        "size": size,
        "downloaded": present,
        "partial": partial,
        "verified": sha is not None,
        "sha256": sha,
        "path": str(path),
        "url": spec.url,
        "hf_id": spec.hf_id,
        "config": spec.config,
        "description": spec.description,
    }


# ----------------------------------------------------------------------------- library warnings
#: Warnings libraries raise on every import/build/forward that say nothing a user can act on
#: (deprecations inside upstream code): ``(category, message regex, module regex)``. Hidden at the
#: call sites with :func:`harmless_warnings_hidden`; shown again with ``dl-utils --debug`` or
#: ``DL_UTILS_DEBUG=1``. Any other warning still shows.
HARMLESS_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # groundingdino imports timm.models.layers (timm >= 0.9 moved it to timm.layers)
    (FutureWarning, r"Importing from timm\.models\.layers is deprecated", r"timm\."),
    # groundingdino's deformable attention / Swin: torch deprecations in its code
    (UserWarning, r"torch\.meshgrid: in an upcoming release", ""),
    (FutureWarning, r".*torch\.cuda\.amp\.autocast", ""),
    (UserWarning, r".*use_reentrant", ""),
    (UserWarning, r"None of the inputs have requires_grad=True", ""),
    # BERT's get_extended_attention_mask(device=...) called by groundingdino
    (FutureWarning, r"The `device` argument is deprecated", ""),
    # sam2: torch.jit.script deprecation in its transforms
    (FutureWarning, r".*torch\.jit\.script", ""),
)
_SHOW_ALL_WARNINGS = [False]


@contextlib.contextmanager
def harmless_warnings_hidden() -> Iterator[None]:
    """Hide :data:`HARMLESS_WARNINGS` inside the block (unless debugging); others still show."""
    with warnings.catch_warnings():
        if not (_SHOW_ALL_WARNINGS[0] or os.environ.get("DL_UTILS_DEBUG")):
            for category, message, module in HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield


@contextlib.contextmanager
def cli_warnings(debug: bool = False) -> Iterator[None]:
    """For a ``dl-utils`` command: the remaining warnings (ours, and any a library raises that is not
    known to be harmless) print as one line ``dl-utils: warning: ...`` instead of Python's two-line
    ``file:line: UserWarning: ...`` form; ``debug`` shows everything in Python's form."""
    import sys

    with warnings.catch_warnings():
        _SHOW_ALL_WARNINGS[0], before = bool(debug), _SHOW_ALL_WARNINGS[0]
        if not (debug or os.environ.get("DL_UTILS_DEBUG")):
            def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
                text = " ".join(str(message).split())
                print(f"dl-utils: warning: {text}", file=file or sys.stderr, flush=True)

            warnings.showwarning = show
        try:
            yield
        finally:
            _SHOW_ALL_WARNINGS[0] = before


# ----------------------------------------------------------------------------- what a file is
_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x80", "a pickle"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (b"RIFF", "a RIFF file (WAV/AVI/WebP)"),
)


def describe_file(path: str | os.PathLike[str]) -> str:
    """A few words on what a file looks like (for "this is not a checkpoint" messages)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return f"a file that cannot be read ({e.strerror or e})"
    if size == 0:
        return "an empty file"
    what = next((w for m, w in _MAGIC if head.startswith(m)), None)
    if head[4:8] == b"ftyp":
        what = "an MP4/MOV video"
    if what is None and len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        what = "a safetensors file"
    if what is None:
        try:
            text = head.decode("utf-8").lstrip()
        except UnicodeDecodeError:
            text = None
        if text is not None:
            what = ("an HTML page (a download that got an error page?)" if text[:15].lower().startswith(("<!doctype", "<html"))
                    else "a JSON/text file" if text[:1] in "{[" else "a text file")
        else:
            what = f"binary data starting with {head[:8].hex(' ')}"
    return f"{what} of {_human(size)}"


def why_unreadable(path: str | os.PathLike[str], error: BaseException) -> str:
    """"it is a JPEG image of 12.0 KiB" (torch's own reason only for files that look like torch files)."""
    what = describe_file(path)
    if what.startswith(("a zip archive", "a pickle")):
        first = str(error).splitlines()[0] if str(error) else ""
        return f"it is {what} that PyTorch cannot load, truncated or damaged ({type(error).__name__}: {first[:200]})"
    return f"it is {what}"


def is_registry_download(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a file :func:`download` (or the GroundingDINO download) put in :func:`models_dir`.

    Only such files may be called damaged and re-downloaded; a file the user gave is never
    advised to be deleted.
    """
    p = Path(path)
    try:
        in_dir = p.resolve().parent == models_dir().resolve()
    except OSError:
        return False
    if not in_dir:
        return False
    names = {s.filename for s in MODELS.values()}
    try:
        from .dino_models import DINO_MODELS

        names |= {s.filename for s in DINO_MODELS.values()}
        from .sam3_weights import SAM3_MODELS

        names |= {s.filename for s in SAM3_MODELS.values()}
    except ImportError:  # pragma: no cover
        pass
    return p.name in names


# ----------------------------------------------------------------------------- official file layouts
#: THE list of keys that official weight files carry and the released model code does not define.
#: They are accepted and dropped on load; any other unexpected key, and every missing key, is refused.
#: family -> {key: why the file has it}. Sources: upstream's loaders and issue threads (SAM2's
#: ``sam2.build_sam._load_checkpoint`` loads strictly, so its files hold exactly the model's keys;
#: GroundingDINO's ``util.inference.load_model`` loads ``clean_state_dict(ckpt["model"])`` with
#: ``strict=False``, which reports these two as unexpected: IDEA-Research/GroundingDINO#271).
#: Listed in docs/models.md ("Keys dropped on purpose"); keep both in step.
OFFICIAL_EXTRA_KEYS: dict[str, dict[str, str]] = {
    "sam2": {},
    "groundingdino": {
        "label_enc.weight": "the training-time denoising label embedding (DN queries); inference never reads it",
        "bert.embeddings.position_ids": "a BERT buffer transformers < 4.31 saved; newer ones rebuild it",
    },
}
#: Prefixes every key of an official file carries (DistributedDataParallel's ``module.``), removed
#: before comparing, as upstream's ``clean_state_dict`` does.
OFFICIAL_KEY_PREFIXES: dict[str, tuple[str, ...]] = {"sam2": (), "groundingdino": ("module.",)}


def clean_official_state_dict(family: str, model: Any, sd: dict[str, Any]
                              ) -> tuple[dict[str, Any], list[str]]:
    """Strip the family's key prefixes and drop its known extra keys the model does not define.

    Returns ``(state_dict, dropped keys)``; what is left must then match the model exactly.
    """
    prefixes = OFFICIAL_KEY_PREFIXES.get(family, ())
    out: dict[str, Any] = {}
    for k, v in sd.items():
        for pre in prefixes:
            if k.startswith(pre):
                k = k[len(pre):]
                break
        out[k] = v
    own = model.state_dict().keys()
    dropped = sorted(k for k in OFFICIAL_EXTRA_KEYS.get(family, {}) if k in out and k not in own)
    for k in dropped:
        del out[k]
    return out, dropped


def state_dict_mismatch(model: Any, sd: dict[str, Any], *, ignore: tuple[str, ...] = ()
                        ) -> tuple[list[str], list[str], list[str], list[str]]:
    """``(missing, unexpected, shape mismatches, readable parts)`` between a module and a state dict.

    Shared by the SAM2 and GroundingDINO loaders so both name the same things the same way;
    ``ignore``: unexpected keys that do not matter (pass ``OFFICIAL_EXTRA_KEYS[family]``, or clean
    the dict first with :func:`clean_official_state_dict`).
    """
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(getattr(v, "shape", ())) for k, v in sd.items()}
    missing = sorted(own.keys() - theirs.keys())
    unexpected = sorted(k for k in theirs.keys() - own.keys() if k not in ignore)
    shapes = sorted(k for k in own.keys() & theirs.keys() if own[k] != theirs[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: file {theirs[k]} vs model {own[k]})")
    return missing, unexpected, shapes, parts


def list_models() -> list[dict[str, Any]]:
    """One row per registry model: what it is, whether its weights are here, whether verified."""
    rows = []
    aliases: dict[str, list[str]] = {}
    for a, n in ALIASES.items():
        aliases.setdefault(n, []).append(a)
    d = models_dir()
    for spec in MODELS.values():
        path = d / spec.filename
        present = path.is_file()
        try:
            sha = recorded_sha256(path) if present else None
        except ModelError:
            sha = None
        size = _human(path.stat().st_size) if present else f"~{spec.approx_mb} MB"
        rows.append(model_row(spec, aliases, path, present=present, sha=sha, size=size))
    return rows


def format_model_table(rows: list[dict[str, Any]] | None = None) -> str:
    """``dl-utils models list`` output: a plain fixed-width table plus where the files live."""
    rows = list_models() if rows is None else rows
    head = ("name", "family", "aliases", "size", "status")
    body = []
    for r in rows:
        status = (
            ("verified" if r["verified"] else "downloaded")
            if r["downloaded"]
            else ("partial" if r["partial"] else "-")
        )
        body.append((r["name"], r.get("family", "sam2"), ",".join(r["aliases"]), r["size"], status))
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body]]
    lines.append(f"\nfolder: {models_dir()}  (set DL_UTILS_MODELS to change)")
    lines.append("get one: dl-utils models download NAME   (verified = sha256 recorded at first load)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- download
def _manual_hint(spec: ModelSpec, dest: Path) -> str:
    return f"download {spec.url} by hand and save it as {dest}"


def download(
    name: str,
    *,
    force: bool = False,
    progress: bool = True,
    url: str | None = None,
    source: str = "official",
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Fetch a checkpoint into :func:`models_dir` and return its path.

    ``name`` is a registry name, an alias or a Hugging Face id. ``source="hf"`` takes a registry
    model from its Hugging Face mirror instead of the official URL; ``url`` overrides the address
    (a mirror). An interrupted download leaves ``<file>.part``; the next call resumes it with an HTTP
    ``Range`` request. The byte count is checked before the file takes its final name (atomic rename),
    so the final name never holds a partial file.
    """
    if source not in ("official", "hf"):
        raise InputError(f"download source {source!r}: use 'official' or 'hf'")
    text = name.strip()
    spec = find_spec(text)
    if spec is None:
        if not _HF_ID.match(text):
            get_spec(text)  # raises the "unknown model" error listing the known names
        return _download_hf(text, None, force=force)
    dest = models_dir() / spec.filename
    if dest.is_file() and not force:
        if spec.size_bytes is not None and dest.stat().st_size != spec.size_bytes:
            raise ModelError(
                f"{dest} has {dest.stat().st_size} bytes, expected {spec.size_bytes}; "
                f"run `dl-utils models download {spec.name} --force` to fetch it again"
            )
        return dest
    if url is None and (source == "hf" or text == spec.hf_id):
        return _download_hf(spec.hf_id, spec, force=force)  # type: ignore[arg-type]
    fetch_to(url or spec.url, dest, spec, force=force, progress=progress, timeout=timeout, chunk_size=chunk_size)
    return dest


def fetch_to(url: str, dest: Path, spec: ModelSpec, *, force: bool = False, progress: bool = True,
             timeout: float = 60.0, chunk_size: int = 1 << 20) -> None:
    """The registry's resumable HTTP download of ``url`` into ``<dest>.part``, then the atomic rename
    (every family's files: SAM2, GroundingDINO, SAM 3). The old digest record goes with the old file:
    a new file's digest is recorded again at its first strict load or by the caller."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(
            f"cannot create the models folder {dest.parent} ({e}); set DL_UTILS_MODELS to a writable folder"
        ) from None
    part = dest.with_name(dest.name + ".part")
    if force:
        part.unlink(missing_ok=True)
    _http_download(url, part, spec=spec, dest=dest, progress=progress, timeout=timeout, chunk_size=chunk_size)
    _sha_path(dest).unlink(missing_ok=True)
    os.replace(part, dest)


_download_checkpoint = download  # resolve_checkpoint's ``download`` flag shadows the function


@dataclass(frozen=True)
class _Resume:
    """Where the server's answer continues the part file, and the file's full size when it says."""

    have: int  # bytes of the part file that are kept (0: the server sends the whole file)
    total: int | None
    mode: str  # "ab": append to the part file, "wb": start it over


def _http_download(
    url: str,
    part: Path,
    *,
    spec: ModelSpec,
    dest: Path,
    progress: bool,
    timeout: float,
    chunk_size: int,
) -> None:
    """Resume/stream ``url`` into ``part`` until it holds exactly the expected number of bytes.

    Hand-written on urllib rather than a download library because the contract (resume with
    ``Range``, refuse a size mismatch, never leave a partial file under the final name) is short and
    the registry must work with the standard library alone.
    """
    have = part.stat().st_size if part.exists() else 0
    hint = _manual_hint(spec, dest)
    resp = _open_download(url, part, have, spec=spec, hint=hint, timeout=timeout)
    if resp is None:  # the part file is already complete
        return
    with resp:
        resume = _resume_point(resp, url, part, have, spec)
        expected = spec.size_bytes if spec.size_bytes is not None else resume.total
        if spec.size_bytes is not None and resume.total is not None and resume.total != spec.size_bytes:
            raise ModelError(
                f"{url} has {resume.total} bytes but {spec.name} should have {spec.size_bytes}; the"
                f" server holds a different file, {hint} after checking it"
            )
        _stream_to_part(
            resp, part, resume, expected, url=url, spec=spec, dest=dest, progress=progress,
            chunk_size=chunk_size,
        )
    _check_part_size(part, expected, url=url, spec=spec, hint=hint)


def _open_download(
    url: str, part: Path, have: int, *, spec: ModelSpec, hint: str, timeout: float
) -> Any | None:
    """The server's response, asking for the bytes after the ``have`` already in ``part``.

    None when the server says the part already holds the whole file (HTTP 416 with a matching size).
    """
    headers = {"User-Agent": "dl_utils-model-download"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part already holds every byte the server has
            total = _total_from_content_range(e.headers.get("Content-Range"))
            if total is not None and total == have and spec.size_bytes in (None, have):
                return None
            part.unlink(missing_ok=True)
            raise ModelError(
                f"the partial download {part} does not fit the file on the server; it was deleted, "
                f"run `dl-utils models download {spec.name}` again"
            ) from None
        raise ModelError(f"downloading {url} failed: HTTP {e.code} {e.reason}; {hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise ModelError(
            f"cannot download {url} ({reason}): no network or the server is unreachable; "
            f"{hint}, or retry `dl-utils models download {spec.name}` (it resumes)"
        ) from None


def _resume_point(resp: Any, url: str, part: Path, have: int, spec: ModelSpec) -> _Resume:
    """Append only when the server honoured the ``Range`` at exactly our byte (206), else restart."""
    if have and resp.status == 206:
        start = _start_from_content_range(resp.headers.get("Content-Range"))
        total = _total_from_content_range(resp.headers.get("Content-Range"))
        if start != have:
            part.unlink(missing_ok=True)
            raise ModelError(
                f"the server resumed {url} at byte {start}, not {have}; the partial file was "
                f"deleted, run `dl-utils models download {spec.name}` again"
            )
        return _Resume(have, total, "ab")
    # 200: the server sent the whole file (it ignored or we sent no Range)
    length = resp.headers.get("Content-Length")
    return _Resume(0, int(length) if length and length.isdigit() else None, "wb")


def _stream_to_part(
    resp: Any,
    part: Path,
    resume: _Resume,
    expected: int | None,
    *,
    url: str,
    spec: ModelSpec,
    dest: Path,
    progress: bool,
    chunk_size: int,
) -> None:
    """Copy the response body into ``part`` block by block, with a progress bar."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=expected, initial=resume.have, unit="B", unit_scale=True, unit_divisor=1024,
        desc=dest.name, disable=None if progress else True,
    )
    try:
        with open(part, resume.mode) as f, bar:
            while True:
                block = resp.read(chunk_size)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
    except (OSError, http.client.HTTPException) as e:
        raise ModelError(
            f"the download of {url} was interrupted after {part.stat().st_size} bytes ({e}); "
            f"run `dl-utils models download {spec.name}` again to resume"
        ) from None


def _check_part_size(
    part: Path, expected: int | None, *, url: str, spec: ModelSpec, hint: str
) -> None:
    """A short part may be resumed and is kept; a long one can never become right and is deleted."""
    got = part.stat().st_size
    if expected is not None and got != expected:
        if got > expected:
            part.unlink(missing_ok=True)
            raise ModelError(
                f"{url} sent {got} bytes, more than the expected {expected}; the file was deleted, "
                f"{hint}"
            )
        raise ModelError(
            f"the download of {url} stopped at {got} of {expected} bytes; run "
            f"`dl-utils models download {spec.name}` again to resume"
        )


def _start_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _total_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes (?:\d+-\d+|\*)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def _hf_filename(repo_id: str, spec: ModelSpec | None) -> str:
    if spec is not None:
        return spec.filename
    # facebook/sam2.1-hiera-tiny -> sam2.1_hiera_tiny.pt (the layout of the official HF repos)
    return repo_id.split("/", 1)[1].replace("-", "_") + ".pt"


def _download_hf(repo_id: str, spec: ModelSpec | None, *, force: bool, local_only: bool = False) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelError(
            f"fetching {repo_id} from Hugging Face needs huggingface_hub: pip install huggingface_hub "
            f"(or download the checkpoint yourself and pass --checkpoint FILE)"
        ) from None
    filename = _hf_filename(repo_id, spec)
    dest_dir = models_dir()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        path = Path(
            hf_hub_download(
                repo_id=repo_id,
                filename=filename,
                local_dir=dest_dir,
                force_download=force,
                local_files_only=local_only,
            )
        )
    except Exception as e:  # huggingface_hub raises many types (offline, 404, auth, disk)
        if local_only:
            raise ModelError(
                f"SAM2 weights {filename} for {repo_id} not found in {dest_dir}; run "
                f"`dl-utils models download {repo_id}` (or pass --checkpoint FILE)"
            ) from None
        raise ModelError(
            f"cannot fetch {filename} from Hugging Face repo {repo_id} ({type(e).__name__}: {e}); "
            f"check the id and the network, or download the file by hand into {dest_dir}"
        ) from None
    if force:
        _sha_path(path).unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------- resolution
def resolve_checkpoint(name_or_path: str | os.PathLike[str], *, download: bool = False) -> Path:
    """Turn a file path, registry name/alias or Hugging Face id into an existing checkpoint file.

    With ``download=True`` a missing registry / HF checkpoint is fetched; otherwise a missing one
    raises :class:`ModelError` naming the file, the folder and the command that gets it.
    """
    if isinstance(name_or_path, os.PathLike):
        p = Path(name_or_path)
        if p.is_file():
            return p
        raise ModelError(f"checkpoint file {p} does not exist; check the path (or pass a model name)")
    text = str(name_or_path).strip()
    p = Path(text).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        raise ModelError(f"checkpoint {p} is a folder; pass the .pt file inside it")
    spec = find_spec(text)
    is_hf = spec is None and _HF_ID.match(text) is not None and not text.endswith((".pt", ".pth"))
    if spec is None and not is_hf:
        if text.endswith((".pt", ".pth", ".ckpt", ".bin")) or os.sep in text:
            raise ModelError(f"checkpoint file {p} does not exist; check the path (or pass a model name)")
        get_spec(text)  # unknown name -> ModelError listing the known ones
    if spec is not None:
        dest = models_dir() / spec.filename
        if dest.is_file():
            return dest
        if download:
            return _download_checkpoint(text)
        part = dest.with_name(dest.name + ".part")
        extra = f" (a partial download {part.name} is there; the command resumes it)" if part.exists() else ""
        raise ModelError(
            f"SAM2 weights {spec.filename} not found in {dest.parent}{extra}; run "
            f"`dl-utils models download {spec.name}` (or pass --checkpoint FILE)"
        )
    # an unregistered Hugging Face id: the local cache first, the network only when allowed
    if download:
        return _download_hf(text, None, force=False)
    return _download_hf(text, None, force=False, local_only=True)


# ----------------------------------------------------------------------------- fine-tuned checkpoints
#: ``format`` of the JSON that ``dl-utils finetune`` writes beside a tuned checkpoint (``tuned.pt.json``)
FINETUNE_FORMAT = "dl-utils-finetune"
#: the local registry of fine-tuned checkpoints, in :func:`models_dir`
FINETUNED_REGISTRY = "finetuned.json"


@dataclass(frozen=True)
class FinetunedInfo:
    """What the sidecar of a fine-tuned checkpoint says (the fields loading and listing need)."""

    path: Path  # the checkpoint
    sidecar: Path
    base_model: str
    image_size: int | None = None
    iou_before: float | None = None
    iou_after: float | None = None
    steps: int | None = None
    sha256: str | None = None

    @property
    def improved(self) -> bool | None:
        """Whether val IoU went up (None when the sidecar has no before/after figures)."""
        if self.iou_before is None or self.iou_after is None:
            return None
        return self.iou_after > self.iou_before


def sidecar_path(checkpoint: str | os.PathLike[str]) -> Path:
    """``tuned.pt`` -> ``tuned.pt.json``: the suffix is appended, so ``tuned.pt`` and ``tuned.pth``
    never share one."""
    return Path(os.fspath(checkpoint) + ".json")


def _number(doc: dict[str, Any], key: str, kind: type, sidecar: Path) -> Any:
    v = doc.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise ModelError(f"{sidecar}: field {key!r} is {v!r}, not a number; fix or delete the field "
                         "(or run `dl-utils finetune` again to rewrite the file)")
    return kind(v)


def finetuned_info(path: str | os.PathLike[str]) -> FinetunedInfo | None:
    """The sidecar of a fine-tuned checkpoint, or None when ``path`` has none (an official file).

    The one reader of the sidecar: SAM2's options, the widget, the auto-annotation function and
    ``models list`` all take the base model and input size from here, so a tuned file loads with
    ``--checkpoint tuned.pt`` alone. A JSON beside the file that is not ours is ignored; one that
    says it is ours but cannot be used is a :class:`ModelError` naming the file and the field.
    """
    import json

    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        doc = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read the fine-tune sidecar {sidecar} ({e}); restore it, or delete it "
                         "and pass --model NAME --image-size N with the checkpoint") from None
    if not isinstance(doc, dict) or doc.get("format") != FINETUNE_FORMAT:
        return None
    base = doc.get("base_model")
    if not isinstance(base, str) or not base.strip():
        raise ModelError(f"{sidecar}: field 'base_model' is {base!r}; it must name the SAM2 model the "
                         "checkpoint was tuned from (e.g. sam2.1_hiera_small)")
    sha = doc.get("sha256")
    return FinetunedInfo(
        path=Path(path), sidecar=sidecar, base_model=base.strip(),
        image_size=_number(doc, "image_size", int, sidecar), iou_before=_number(doc, "iou_before", float, sidecar),
        iou_after=_number(doc, "iou_after", float, sidecar), steps=_number(doc, "steps", int, sidecar),
        sha256=sha if isinstance(sha, str) else None,
    )


def _canonical(name: str) -> str:
    spec = find_spec(name)
    return spec.name if spec is not None else name.strip()


def resolve_finetuned(model: str | None, checkpoint: str | os.PathLike[str] | None,
                      image_size: int | None) -> tuple[str | None, int | None]:
    """``(model, image_size)`` to build for ``checkpoint``: a fine-tuned file's base model and input
    size fill what was not given; a given model that contradicts the sidecar is refused.

    Anything but an existing file with a dl-utils sidecar passes through unchanged.
    """
    if checkpoint is None or not Path(os.fspath(checkpoint)).is_file():
        return model, image_size
    info = finetuned_info(checkpoint)
    if info is None:
        return model, image_size
    if model is not None and _canonical(str(model)) != _canonical(info.base_model):
        raise ModelError(
            f"model {model!r} does not match checkpoint {info.path}: its sidecar {info.sidecar.name} says it "
            f"was fine-tuned from {info.base_model}; leave the model out (it is taken from the sidecar) or "
            f"pass {info.base_model}"
        )
    return (model if model is not None else info.base_model,
            image_size if image_size is not None else info.image_size)


def finetuned_registry() -> Path:
    """The local list of fine-tuned checkpoints ``dl-utils models list`` shows."""
    return models_dir() / FINETUNED_REGISTRY


def _read_registry(path: Path) -> list[dict[str, Any]]:
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read the fine-tuned registry {path} ({e}); delete it (the checkpoints "
                         "stay; register them again with their next `dl-utils finetune` run)") from None
    entries = doc.get("checkpoints") if isinstance(doc, dict) else None
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("path"), str)] if isinstance(
        entries, list) else []


def register_finetuned(info: FinetunedInfo, *, date: str | None = None) -> Path:
    """Add (or replace, by absolute path) ``info`` in :func:`finetuned_registry`; returns the registry.

    Written to a temporary file and renamed, so a crash never leaves a half-written list.
    """
    import datetime
    import json

    reg = finetuned_registry()
    key = str(info.path.resolve())
    entries = [e for e in _read_registry(reg) if e["path"] != key]
    entries.append({
        "path": key, "base_model": info.base_model, "image_size": info.image_size,
        "date": date or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "steps": info.steps, "iou_before": info.iou_before, "iou_after": info.iou_after,
    })
    try:
        reg.parent.mkdir(parents=True, exist_ok=True)
        tmp = reg.with_name(reg.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"checkpoints": entries}, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, reg)
    except OSError as e:
        raise ModelError(f"cannot write the fine-tuned registry {reg} ({e.strerror or e}); set "
                         "DL_UTILS_MODELS to a writable folder (the checkpoint itself was written)") from None
    return reg


def list_finetuned() -> list[dict[str, Any]]:
    """The registered fine-tuned checkpoints, newest last, each with ``present`` (False: the file is gone)."""
    rows = []
    for e in _read_registry(finetuned_registry()):
        rows.append({**e, "present": Path(e["path"]).is_file()})
    return rows


def _iou(v: Any) -> str:
    return f"{100 * float(v):.1f}%" if isinstance(v, (int, float)) else "?"


def format_finetuned_table(rows: list[dict[str, Any]]) -> str:
    """The second table of ``dl-utils models list``: local fine-tuned checkpoints."""
    if not rows:
        return "fine-tuned: none yet (dl-utils finetune STORE... --out tuned.pt)"
    head = ("fine-tuned checkpoint", "base", "date", "val IoU before -> after", "status")
    body = [(r["path"], str(r.get("base_model")), str(r.get("date") or "?")[:10],
             f"{_iou(r.get('iou_before'))} -> {_iou(r.get('iou_after'))}",
             "ok" if r.get("present") else "missing") for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])


__all__ = [
    "FINETUNE_FORMAT",
    "FINETUNED_REGISTRY",
    "FinetunedInfo",
    "finetuned_info",
    "finetuned_registry",
    "format_finetuned_table",
    "list_finetuned",
    "register_finetuned",
    "resolve_finetuned",
    "sidecar_path",
    "ALIASES",
    "OFFICIAL_EXTRA_KEYS",
    "OFFICIAL_KEY_PREFIXES",
    "clean_official_state_dict",
    "HARMLESS_WARNINGS",
    "cli_warnings",
    "harmless_warnings_hidden",
    "describe_file",
    "why_unreadable",
    "is_registry_download",
    "model_row",
    "state_dict_mismatch",
    "DEFAULT_MODEL",
    "MODELS",
    "ModelSpec",
    "check_sha256",
    "checkpoint_path",
    "download",
    "find_spec",
    "format_model_table",
    "get_spec",
    "list_models",
    "models_dir",
    "record_sha256",
    "recorded_sha256",
    "resolve_checkpoint",
    "sha256_file",
]
