"""GroundingDINO weights and text encoders: registry, download and resolution (no torch needed).

Two backends read different files:

* ``groundingdino`` (the original code, ``groundingdino-py``): one ``.pth`` file ``{"model":
  state_dict}`` for a config shipped inside the package (``GroundingDINO_SwinT_OGC.py``...) plus a
  BERT **text encoder folder** (``config.json``, ``vocab.txt``, weights) that the package loads with
  ``BertModel.from_pretrained(folder)``. Upstream passes the hub id ``bert-base-uncased`` and so
  needs the network whenever it builds; here the folder is always a local path.
* ``transformers`` (``GroundingDinoForObjectDetection``): a folder written by ``save_pretrained``
  (model and processor), or a Hugging Face id fetched into such a folder.

Everything lands in :func:`dl_utils.models.models_dir` next to the SAM2 checkpoints, and the download
machinery (resumable HTTP with size checks, Hugging Face fetches, sha256 records) is the one of
:mod:`dl_utils.models`, called rather than copied. Missing files raise :class:`ModelError` naming the
file and the ``dl-utils models download NAME`` command that gets it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import models as _models
from .errors import InputError, ModelError
from .models import ModelSpec, models_dir

GD_RELEASE = "https://github.com/IDEA-Research/GroundingDINO/releases/download/"

#: Families: ``groundingdino`` = one .pth file for the original code; ``text-encoder`` and
#: ``transformers`` = a Hugging Face repo mirrored into a folder of ``models_dir()``.
DINO_MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            name="groundingdino-swint-ogc",
            family="groundingdino",
            config="GroundingDINO_SwinT_OGC.py",
            url=GD_RELEASE + "v0.1.0-alpha/groundingdino_swint_ogc.pth",
            filename="groundingdino_swint_ogc.pth",
            approx_mb=662,
            hf_id="ShilongLiu/GroundingDINO",
            description="GroundingDINO Swin-T (O365, GoldG, Cap4M): the original weights, backend groundingdino",
        ),
        ModelSpec(
            name="groundingdino-swinb-cogcoor",
            family="groundingdino",
            config="GroundingDINO_SwinB_cfg.py",
            url=GD_RELEASE + "v0.1.0-alpha2/groundingdino_swinb_cogcoor.pth",
            filename="groundingdino_swinb_cogcoor.pth",
            approx_mb=895,
            hf_id="ShilongLiu/GroundingDINO",
            description="GroundingDINO Swin-B (COCO, O365, GoldG, Cap4M, OpenImage, ODinW, RefCOCO)",
        ),
        ModelSpec(
            name="bert-base-uncased",
            family="text-encoder",
            config="",
            url="https://huggingface.co/google-bert/bert-base-uncased",
            filename="bert-base-uncased",  # a folder
            approx_mb=420,
            hf_id="google-bert/bert-base-uncased",
            description="BERT text encoder + tokenizer that the groundingdino backend builds on",
        ),
        ModelSpec(
            name="grounding-dino-tiny",
            family="transformers",
            config="",
            url="https://huggingface.co/IDEA-Research/grounding-dino-tiny",
            filename="grounding-dino-tiny",
            approx_mb=690,
            hf_id="IDEA-Research/grounding-dino-tiny",
            description="transformers port of Swin-T OGC (model + processor), backend transformers",
        ),
        ModelSpec(
            name="grounding-dino-base",
            family="transformers",
            config="",
            url="https://huggingface.co/IDEA-Research/grounding-dino-base",
            filename="grounding-dino-base",
            approx_mb=935,
            hf_id="IDEA-Research/grounding-dino-base",
            description="transformers port of Swin-B, backend transformers",
        ),
    )
}

DINO_ALIASES: dict[str, str] = {
    "swint-ogc": "groundingdino-swint-ogc",
    "groundingdino": "groundingdino-swint-ogc",
    "swinb": "groundingdino-swinb-cogcoor",
    "bert": "bert-base-uncased",
    "google-bert/bert-base-uncased": "bert-base-uncased",
    "tiny": "grounding-dino-tiny",
    "base": "grounding-dino-base",
}

DEFAULT_GROUNDINGDINO = "groundingdino-swint-ogc"
DEFAULT_TEXT_ENCODER = "bert-base-uncased"
DEFAULT_TRANSFORMERS = "grounding-dino-tiny"

# what a Hugging Face snapshot needs (tokenizer + config + safetensors weights; no TF/flax/onnx copies)
_HF_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model"]
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TRANSFORMERS_MODEL_TYPE = "grounding-dino"


def find_dino_spec(name: str) -> ModelSpec | None:
    """The spec of a registry name, alias or Hugging Face id; None when unknown."""
    key = str(name).strip()
    key = DINO_ALIASES.get(key.lower(), key)
    if key in DINO_MODELS:
        return DINO_MODELS[key]
    for spec in DINO_MODELS.values():
        if spec.family != "groundingdino" and spec.hf_id == key:
            return spec
        if spec.family == "groundingdino" and spec.filename == key:
            return spec
    if key == "bert-base-uncased":
        return DINO_MODELS["bert-base-uncased"]
    return None


def dino_model_path(name: str) -> Path:
    """Where a registry entry lives (a file for ``groundingdino``, a folder otherwise)."""
    spec = find_dino_spec(name)
    if spec is None:
        raise ModelError(f"unknown GroundingDINO model {name!r}; use one of {', '.join(DINO_MODELS)}")
    return models_dir() / spec.filename


def config_path(config: str) -> Path:
    """The config file shipped inside the installed ``groundingdino`` package (or a given file)."""
    p = Path(config)
    if p.is_file():
        return p
    try:
        import groundingdino
    except ImportError:
        raise ModelError(
            "the groundingdino backend needs groundingdino-py: pip install 'groundingdino-py==0.4.0' "
            "'transformers>=4.57,<4.58' (or use --backend transformers)"
        ) from None
    q = Path(groundingdino.__file__).parent / "config" / config
    if not q.is_file():
        known = sorted(x.name for x in q.parent.glob("*.py") if not x.name.startswith("_"))
        raise ModelError(f"GroundingDINO config {config!r} not found in {q.parent}; use one of {known}")
    return q


# ----------------------------------------------------------------------------- listing
def list_dino_models() -> list[dict[str, Any]]:
    """Rows shaped like :func:`dl_utils.models.list_models` for ``dl-utils models list``."""
    rows = []
    aliases: dict[str, list[str]] = {}
    for a, n in DINO_ALIASES.items():
        if "/" not in a:
            aliases.setdefault(n, []).append(a)
    for spec in DINO_MODELS.values():
        path = models_dir() / spec.filename
        is_file = spec.family == "groundingdino"
        present = path.is_file() if is_file else (path / "config.json").is_file()
        sha = None
        if present and is_file:
            try:
                sha = _models.recorded_sha256(path)
            except ModelError:
                sha = None
        rows.append(_models.model_row(spec, aliases, path, present=present, sha=sha, size=f"~{spec.approx_mb} MB",
                                      partial=is_file and path.with_name(path.name + ".part").is_file()))
    return rows


# ----------------------------------------------------------------------------- download
def download_dino(
    name: str,
    *,
    force: bool = False,
    progress: bool = True,
    url: str | None = None,
    source: str = "official",
    text_encoder: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch a registry entry into :func:`models_dir`; return the file or folder.

    ``groundingdino-*`` weights come from the official release URL (``source="hf"``: the
    ShilongLiu/GroundingDINO mirror; ``url``: any mirror) through :mod:`dl_utils.models`'s resumable,
    size-checked download; with ``text_encoder=True`` the BERT folder they need is fetched too.
    Folder entries (text encoder, transformers ports) are mirrored from Hugging Face.
    """
    if source not in ("official", "hf"):
        raise InputError(f"download source {source!r}: use 'official' or 'hf'")
    spec = find_dino_spec(name)
    if spec is None:
        if _HF_ID.match(str(name).strip()):  # any transformers GroundingDINO repo
            return _snapshot(str(name).strip(), models_dir() / _slug(name), force=force)
        raise ModelError(
            f"unknown GroundingDINO model {name!r}; use one of {', '.join(DINO_MODELS)} or a Hugging "
            "Face id such as IDEA-Research/grounding-dino-tiny"
        )
    if spec.family != "groundingdino":
        return _snapshot(spec.hf_id or spec.name, models_dir() / spec.filename, force=force)
    dest = models_dir() / spec.filename
    if not dest.is_file() or force:
        if source == "hf" and url is None:
            _models._download_hf(spec.hf_id, spec, force=force)  # type: ignore[arg-type]
        else:
            _models.fetch_to(url or spec.url, dest, spec, force=force, progress=progress, timeout=timeout)
    if text_encoder:
        download_dino(DEFAULT_TEXT_ENCODER, force=False, progress=progress)
    return dest


def _slug(repo_id: str) -> str:
    return str(repo_id).strip().replace("/", "--")


def _snapshot(repo_id: str, dest: Path, *, force: bool = False, local_only: bool = False) -> Path:
    """Mirror a Hugging Face repo's config, tokenizer and safetensors weights into ``dest``."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelError(
            f"fetching {repo_id} needs huggingface_hub: pip install huggingface_hub (or save the model "
            f"with save_pretrained into {dest} yourself)"
        ) from None
    if (dest / "config.json").is_file() and not force:
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        path = snapshot_download(
            repo_id, local_dir=dest, allow_patterns=_HF_PATTERNS, force_download=force,
            local_files_only=local_only,
        )
    except Exception as e:  # noqa: BLE001  huggingface_hub raises many types (offline, 404, auth, disk)
        raise ModelError(
            f"cannot fetch {repo_id} from Hugging Face ({type(e).__name__}: {str(e).splitlines()[0]}); "
            f"check the id and the network, or put a save_pretrained copy into {dest}"
        ) from None
    return Path(path)


# ----------------------------------------------------------------------------- resolution
def looks_like_transformers_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == TRANSFORMERS_MODEL_TYPE
    except (OSError, ValueError):
        return False


def resolve_groundingdino_weights(
    model: str | os.PathLike[str] | None = None, *, download: bool = False
) -> tuple[Path, ModelSpec | None]:
    """A ``.pth`` file for the groundingdino backend, and its registry spec when it has one.

    ``model``: a file, a registry name (default ``groundingdino-swint-ogc``) or an ``http(s)://``
    URL (fetched once into :func:`models_dir`; giving a URL is taken as the permission to fetch).
    """
    text = DEFAULT_GROUNDINGDINO if model is None else os.fspath(model).strip()
    if re.match(r"^https?://", text):
        name = Path(urlparse(text).path).name or "groundingdino.pth"
        dest = models_dir() / name
        spec = find_dino_spec(name)
        if not dest.is_file():
            adhoc = spec or ModelSpec(name=name, family="groundingdino", config="GroundingDINO_SwinT_OGC.py",
                                      url=text, filename=name)
            _models.fetch_to(text, dest, adhoc, force=False, progress=True, timeout=60.0)
        return dest, spec
    p = Path(text).expanduser()
    if p.is_file():
        return p, find_dino_spec(p.name)
    if p.is_dir():
        if looks_like_transformers_dir(p):
            raise ModelError(
                f"{p} is a transformers GroundingDINO folder (save_pretrained); use --backend "
                "transformers with it, or give the groundingdino backend an original .pth file"
            )
        raise ModelError(f"{p} is a folder; pass the GroundingDINO .pth weights file inside it")
    spec = find_dino_spec(text)
    if spec is None:
        if _HF_ID.match(text):
            raise ModelError(
                f"{text!r} looks like a Hugging Face id: those are transformers ports; use --backend "
                f"transformers --model {text}, or give the groundingdino backend a .pth file, a URL or "
                f"one of {', '.join(k for k, s in DINO_MODELS.items() if s.family == 'groundingdino')}"
            )
        raise ModelError(
            f"GroundingDINO weights {text!r}: no such file and not a registry name; use a .pth file, a "
            f"URL or one of {', '.join(k for k, s in DINO_MODELS.items() if s.family == 'groundingdino')}"
        )
    if spec.family != "groundingdino":
        raise ModelError(
            f"{spec.name} is a {spec.family} entry, not original GroundingDINO weights; "
            + ("use --backend transformers with it" if spec.family == "transformers"
               else "pass it as the text encoder (--text-encoder)")
        )
    dest = models_dir() / spec.filename
    if dest.is_file():
        return dest, spec
    if download:
        return download_dino(spec.name, text_encoder=False), spec
    part = dest.with_name(dest.name + ".part")
    extra = f" (a partial download {part.name} is there; the command resumes it)" if part.exists() else ""
    raise ModelError(
        f"GroundingDINO weights {dest.name} not found in {dest.parent}{extra}; run `dl-utils models "
        f"download {spec.name}` (needs the network once), or pass a .pth file"
    )


def resolve_text_encoder(text_encoder: str | os.PathLike[str] | None = None, *, download: bool = False) -> Path:
    """A local BERT folder (config + tokenizer + weights) for the groundingdino backend.

    ``None`` means ``bert-base-uncased`` from :func:`models_dir`. A folder must hold ``config.json``
    and a tokenizer (``vocab.txt`` or ``tokenizer.json``); weights are needed by ``from_pretrained``
    even though the GroundingDINO checkpoint overwrites them.
    """
    text = DEFAULT_TEXT_ENCODER if text_encoder is None else os.fspath(text_encoder).strip()
    p = Path(text).expanduser()
    if not p.exists():
        spec = find_dino_spec(text)
        if spec is None or spec.family != "text-encoder":
            raise ModelError(
                f"text encoder {text!r} is not a folder; pass the folder of a BERT model saved with "
                f"save_pretrained, or run `dl-utils models download {DEFAULT_TEXT_ENCODER}` and leave "
                "--text-encoder out"
            )
        p = models_dir() / spec.filename
        if not (p / "config.json").is_file():
            if download:
                p = download_dino(spec.name)
            else:
                raise ModelError(
                    f"text encoder {spec.name} not found in {p.parent} (GroundingDINO needs it to read "
                    f"prompts); run `dl-utils models download {spec.name}` once, or pass "
                    "--text-encoder FOLDER"
                )
    if not p.is_dir():
        raise ModelError(f"text encoder {p} is a file; pass the folder that holds config.json and vocab.txt")
    lacking = [n for n in ("config.json",) if not (p / n).is_file()]
    if not ((p / "vocab.txt").is_file() or (p / "tokenizer.json").is_file()):
        lacking.append("vocab.txt (or tokenizer.json)")
    if lacking:
        raise ModelError(
            f"text encoder folder {p} lacks {', '.join(lacking)}; save the model and its tokenizer "
            f"there with save_pretrained, or run `dl-utils models download {DEFAULT_TEXT_ENCODER}`"
        )
    try:
        model_type = json.loads((p / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise ModelError(f"text encoder config {p / 'config.json'} cannot be read ({e}); save it again") from None
    if model_type not in (None, "bert"):
        raise ModelError(
            f"text encoder {p} is a {model_type!r} model; the groundingdino backend needs a BERT "
            f"model (run `dl-utils models download {DEFAULT_TEXT_ENCODER}`)"
        )
    return p


def resolve_transformers_model(model: str | os.PathLike[str] | None = None, *, download: bool = False) -> Path:
    """A local ``save_pretrained`` folder for the transformers backend.

    ``model``: a folder, a registry name (default ``grounding-dino-tiny``) or a Hugging Face id
    (looked up in :func:`models_dir`, then in the Hugging Face cache; fetched with ``download``).
    """
    text = DEFAULT_TRANSFORMERS if model is None else os.fspath(model).strip()
    p = Path(text).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelError(
                f"{p} has no config.json; pass a folder written by model.save_pretrained and "
                "processor.save_pretrained"
            )
        if not looks_like_transformers_dir(p):
            raise ModelError(
                f"{p} holds a {_model_type(p)!r} model, not GroundingDINO (model_type "
                f"{TRANSFORMERS_MODEL_TYPE!r}); pass a GroundingDinoForObjectDetection folder"
            )
        return p
    if p.is_file():
        raise ModelError(
            f"{p} is a file: the transformers backend loads a save_pretrained folder or a Hugging Face id"
            + ("; a .pth file is original GroundingDINO weights: use --backend groundingdino"
               if p.suffix in (".pth", ".pt") else "")
        )
    spec = find_dino_spec(text)
    if spec is not None and spec.family != "transformers":
        raise ModelError(
            f"{spec.name} is a {spec.family} entry; the transformers backend needs a port such as "
            + ("grounding-dino-tiny (or use --backend groundingdino with it)" if spec.family == "groundingdino"
               else "grounding-dino-tiny")
        )
    if spec is None and not _HF_ID.match(text):
        raise ModelError(
            f"transformers model {text!r}: no such folder and not a Hugging Face id; use a folder, an id "
            f"such as IDEA-Research/grounding-dino-tiny or one of "
            f"{', '.join(k for k, s in DINO_MODELS.items() if s.family == 'transformers')}"
        )
    repo = spec.hf_id if spec is not None else text
    dest = models_dir() / (spec.filename if spec is not None else _slug(text))
    if (dest / "config.json").is_file():
        return dest
    if download:
        return _snapshot(repo, dest)  # type: ignore[arg-type]
    cached = _hf_cached(repo)  # type: ignore[arg-type]
    if cached is not None:
        return cached
    name = spec.name if spec is not None else text
    raise ModelError(
        f"transformers model {repo} not found in {dest.parent} nor in the Hugging Face cache; run "
        f"`dl-utils models download {name}` (needs the network once), or pass a save_pretrained folder"
    )


def _hf_cached(repo: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        p = Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # noqa: BLE001  not cached / no huggingface_hub: the caller reports what to do
        return None
    return p if (p / "config.json").is_file() else None


def _model_type(p: Path) -> str | None:
    try:
        return json.loads((p / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


__all__ = [
    "DEFAULT_GROUNDINGDINO",
    "DEFAULT_TEXT_ENCODER",
    "DEFAULT_TRANSFORMERS",
    "DINO_ALIASES",
    "DINO_MODELS",
    "config_path",
    "dino_model_path",
    "download_dino",
    "find_dino_spec",
    "list_dino_models",
    "looks_like_transformers_dir",
    "resolve_groundingdino_weights",
    "resolve_text_encoder",
    "resolve_transformers_model",
]
