"""Build SAM2 networks from the sam2 package's own configs: devices, precision, strict weights.

Both engines (images in :mod:`dl_utils.samal`, videos in ``sam2al``) build their networks here, so the
rules live in one place:

* the **real hydra config** of the installed ``sam2`` package is composed with the same overrides as
  ``sam2.build_sam.build_sam2`` / ``build_sam2_video_predictor`` (so results match upstream);
* ``image_size`` can be reduced (tests and CPU use 256); everything derived from it follows: the model
  derives its prompt-encoder grid itself, the memory-attention RoPE tables are sized here and
  :func:`make_image_predictor` fixes ``SAM2ImagePredictor._bb_feat_sizes`` (hard-coded for 1024
  upstream);
* checkpoints load **strictly** (every key, every shape); the first good load records the file's
  sha256 and later loads check it (:mod:`dl_utils.models`);
* device ``cuda`` → ``mps`` → ``cpu``; bf16 autocast on CUDA, fp32 elsewhere, overridable.

torch and sam2 are imported inside the functions so importing this module never fails without them.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .errors import InputError, ModelError
from .models import (
    DEFAULT_MODEL,
    OFFICIAL_EXTRA_KEYS,
    ModelSpec,
    check_sha256,
    clean_official_state_dict,
    harmless_warnings_hidden,
    why_unreadable,
    is_registry_download,
    find_spec,
    get_spec,
    record_sha256,
    resolve_checkpoint,
    state_dict_mismatch,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

# The overrides upstream's builders add (sam2/build_sam.py, apply_postprocessing=True).
POSTPROCESSING_OVERRIDES = (
    # dynamically fall back to multi-mask if the single mask is not stable
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
)
VIDEO_POSTPROCESSING_OVERRIDES = POSTPROCESSING_OVERRIDES + (
    # masks from clicks enter the memory encoder binarised, exactly as the user saw them
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    # fill small holes in the low-res masks before upscaling
    "++model.fill_hole_area=8",
)

_MISSING_EXTRAS = (
    "SAM2 needs torch and the sam2 package: pip install 'dl-utils[sam2]' "
    "(or: pip install torch torchvision && SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2)"
)


def require_sam2() -> None:
    """Raise :class:`ModelError` with the install command when torch or sam2 is missing."""
    try:
        import sam2  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise ModelError(f"{_MISSING_EXTRAS} ({e})") from None


# ----------------------------------------------------------------------------- device / precision
def pick_device(device: "str | torch.device | None" = None) -> "torch.device":
    """The device to run on: the one asked for, else cuda → mps → cpu.

    ``DL_UTILS_DEVICE`` in the environment overrides the automatic choice (not an explicit one).
    """
    require_sam2()
    import torch

    device = device if device is not None else os.environ.get("DL_UTILS_DEVICE") or None
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device {device!r} is not a torch device ({e}); use 'cuda', 'mps' or 'cpu'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for but CUDA is not available here; use device='cpu'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError(f"device {device!r} asked for but MPS is not available here; use device='cpu'")
    return dev


_DTYPES = {
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "fp32": "float32", "float32": "float32", "float": "float32",
}
#: the precisions SAM2 runs in, as ``--precision`` spells them
PRECISIONS = ("fp32", "bf16", "fp16")


def precision_name(dtype: Any) -> str | None:
    """``"bfloat16"`` for ``torch.bfloat16``: the compute precision as Provenance keeps it."""
    return None if dtype is None else str(dtype).replace("torch.", "")


def precision_label(dtype: Any) -> str | None:
    """The ``--precision`` name (``"bf16"``) of a compute dtype (``torch.bfloat16``, or the
    provenance's ``"bfloat16"``): what the commands' JSON summaries report. None for None."""
    name = precision_name(dtype)
    return None if name is None else {_DTYPES[p]: p for p in PRECISIONS}.get(name, name)


def resolve_dtype(device: "torch.device", dtype: "str | torch.dtype | None" = None) -> "torch.dtype":
    """Compute precision: bf16 on CUDA, fp32 elsewhere, unless ``dtype`` says otherwise.

    ``dtype`` is a name (``fp32``/``bf16``/``fp16`` and their long forms, as ``--precision`` takes
    them) or one of the three torch dtypes; anything else (``int8``, ``float64``...) is refused
    here rather than deep inside autocast.
    """
    import torch

    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    key = _DTYPES.get(str(dtype).lower().replace("torch.", ""))
    if key is None:
        raise InputError(
            f"dtype {dtype!r} is not a precision SAM2 runs in: use fp32, bf16 or fp16 (--precision; "
            "bf16 is the CUDA default, fp32 the CPU default)"
        )
    return getattr(torch, key)


@contextlib.contextmanager
def autocast_context(device: "str | torch.device", dtype: "str | torch.dtype | None" = None) -> Iterator[None]:
    """The autocast context SAM2 runs under: bf16 on CUDA, plain fp32 on CPU/MPS by default.

    An explicit low-precision ``dtype`` turns autocast on for any device; ``fp32`` turns it off on
    ``device`` (also inside an enclosing autocast: the mode asked for is the mode that runs, and the
    provenance says so).

    Autocast's cache of cast weights is cleared on entry and exit. torch clears it only when the
    outermost autocast exits, and looks cast weights up by tensor alone, whatever dtype they were
    cast to: while some other code holds an autocast open for good (SAM 3's tracker enters one at
    construction and never leaves it), a bf16 call's cached weights were served to the next fp16
    call of the same network ("Input type (c10::Half) and bias type (c10::BFloat16) should be the
    same"). The cache is per thread; clearing it costs one re-cast of the weights per call.
    """
    import torch

    dev = torch.device(device)
    dt = resolve_dtype(dev, dtype)
    low = dt != torch.float32
    if not low and dev.type not in ("cuda", "cpu"):
        yield  # no autocast to turn off on MPS and the like
        return
    torch.clear_autocast_cache()
    try:
        with torch.autocast(device_type=dev.type, dtype=dt if low else None, enabled=low):
            yield
    finally:
        torch.clear_autocast_cache()


def is_compiled(model: Any) -> bool:
    """Whether ``model`` runs upstream's compiled path: the ``vos_optimized`` video predictor, or an
    image encoder built with ``compile_image_encoder`` (what ``build_sam2_model(compile=True)`` makes)."""
    if any(c.__name__ == "SAM2VideoPredictorVOS" for c in type(model).__mro__):
        return True
    return bool(getattr(model, "dl_utils_compiled", False))


# ----------------------------------------------------------------------------- config
def _compose(config: str, overrides: list[str]):
    """Compose a config of the installed sam2 package (hydra, exactly as upstream does)."""
    require_sam2()
    import sam2  # noqa: F401  (initialises hydra's global config module "sam2")
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    try:
        cfg = compose(config_name=config, overrides=overrides)
    except Exception as first:  # another library re-initialised hydra with its own config module
        try:
            GlobalHydra.instance().clear()
            initialize_config_module("sam2", version_base="1.2")
            cfg = compose(config_name=config, overrides=overrides)
        except Exception:
            raise ModelError(
                f"cannot compose SAM2 config {config!r} with overrides {overrides} ({first}); "
                "check the config name (see `dl-utils models list`) and the sam2 installation"
            ) from None
    OmegaConf.resolve(cfg)
    return cfg


def size_overrides(image_size: int) -> list[str]:
    """Hydra overrides for a non-default input resolution (and what must follow it)."""
    if not isinstance(image_size, int) or image_size < 64 or image_size % 32:
        raise InputError(
            f"image_size={image_size!r}: SAM2 needs a multiple of 32 (the backbone's coarsest stride), "
            "at least 64; 1024 is the trained size, 512/256 trade accuracy for speed"
        )
    s = image_size // 16  # stride-16 grid the memory attention works on
    return [
        f"++model.image_size={image_size}",
        # RoPE tables are built at init for the 1024 grid; sized here so they fit from the start
        # (upstream would rebuild them lazily at the first call with the same values)
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{s},{s}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{s},{s}]",
    ]


def bb_feat_sizes(image_size: int) -> list[tuple[int, int]]:
    """Backbone feature sizes at strides 4, 8, 16 (upstream hard-codes the 1024 values)."""
    s = int(image_size)
    return [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]


# ----------------------------------------------------------------------------- checkpoints
_SIZE_BY_BLOCKS = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}


def guess_model(state_dict: dict[str, Any]) -> str | None:
    """Name the registry model a SAM2 state dict most likely belongs to (for error messages)."""
    try:
        dim = int(state_dict["image_encoder.trunk.patch_embed.proj.weight"].shape[0])
    except (KeyError, AttributeError, IndexError):
        return None
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))}
    size = _SIZE_BY_BLOCKS.get((dim, len(blocks)))
    if size is None:
        return None
    prefix = "sam2.1" if "no_obj_embed_spatial" in state_dict else "sam2"
    return f"{prefix}_hiera_{size}"


_HOW_TO_GET = (
    "a SAM2 checkpoint is a PyTorch file {'model': state_dict} such as sam2.1_hiera_tiny.pt: get one with "
    "`dl-utils models download tiny` (or base+, large, ...) and leave --checkpoint out, or pass the .pt "
    "file you downloaded from the SAM2 release"
)


def _load_state_dict(path: Path, name: str | None = None) -> dict[str, Any]:
    import torch

    ours = is_registry_download(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if ours:  # our own download: damaged, fetch it again
            redo = f"`dl-utils models download {name} --force`" if name else "the download again"
            raise ModelError(
                f"cannot read checkpoint {path} ({why}); the downloaded file is damaged: run {redo}"
            ) from None
        raise ModelError(f"{path} is not a SAM2 checkpoint: {why_unreadable(path, e)}; {_HOW_TO_GET}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        found = (f"a dict with keys {sorted(map(str, ckpt))[:5]}" if isinstance(ckpt, dict)
                 else f"a {type(ckpt).__name__}")
        raise ModelError(
            f"{path} is not a SAM2 checkpoint: it holds {found}, not a 'model' state dict; official files "
            "are {'model': state_dict} (save yours as {'model': model.state_dict()}); " + _HOW_TO_GET
        )
    return ckpt["model"]


def _check_compatible(model: Any, sd: dict[str, Any], path: Path, config: str) -> None:
    """Raise a readable :class:`ModelError` when ``sd`` cannot load strictly into ``model``."""
    parts = state_dict_mismatch(model, sd, ignore=tuple(OFFICIAL_EXTRA_KEYS["sam2"]))[3]
    if not parts:
        return
    guess = guess_model(sd)
    hint = (
        f"it looks like {guess}: pass model={guess!r} (CLI: --model {guess})"
        if guess
        else "pick the model (config) the checkpoint was trained with"
    )
    raise ModelError(f"checkpoint {path} does not match config {config}: {'; '.join(parts)}; {hint}")


def load_checkpoint(model: Any, path: str | os.PathLike[str], *, config: str = "?", name: str | None = None) -> str:
    """Strictly load an official ``{'model': state_dict}`` file into ``model``; return its sha256.

    The sha256 is checked against ``<file>.sha256`` when recorded, and recorded after the first
    successful load otherwise.
    """
    path = Path(path)
    digest = check_sha256(path, name=name)
    sd, _dropped = clean_official_state_dict("sam2", model, _load_state_dict(path, name))
    _check_compatible(model, sd, path, config)
    model.load_state_dict(sd, strict=True)
    if digest is None:
        digest = record_sha256(path) or ""
    return digest


# ----------------------------------------------------------------------------- building
def _config_for(model: str) -> tuple[str, ModelSpec | None]:
    if model.endswith(".yaml"):
        spec = find_spec(model)
        return (spec.config if spec else model), spec
    spec = get_spec(model)
    return spec.config, spec


def build_sam2_model(
    model: str = DEFAULT_MODEL,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    device: "str | torch.device | None" = None,
    random_weights: bool = False,
    seed: int = 0,
    mode: str = "eval",
    video: bool = False,
    vos_optimized: bool = False,
    compile: bool = False,
    apply_postprocessing: bool = True,
    hydra_overrides: Iterable[str] = (),
    download: bool = False,
):
    """Build a SAM2 network (``SAM2Base``, or ``SAM2VideoPredictor`` with ``video=True``).

    ``model`` is a registry name/alias, a Hugging Face id or a sam2 config name (``configs/...yaml``);
    it picks the config. ``checkpoint`` (a file) overrides where the weights come from; without it the
    registry/HF file is used (fetched first with ``download=True``). ``random_weights=True`` skips the
    weights and seeds the initialisation with ``seed`` (tests, benchmarks) without touching the global
    RNG. The returned module carries ``dl_utils_name``, ``dl_utils_checkpoint`` and ``dl_utils_sha256``
    (used e.g. in embedding-cache keys).

    ``compile=True`` is upstream's compiled path: for ``video=True`` the ``vos_optimized`` predictor
    (``SAM2VideoPredictorVOS``: image encoder, memory attention, memory encoder, prompt encoder and
    mask decoder under ``torch.compile``), for the image model ``compile_image_encoder``. The first
    forward passes compile (minutes); ``vos_optimized=True`` is the same as ``compile=True`` on video.
    """
    require_sam2()
    import torch
    from hydra.utils import instantiate

    config, spec = _config_for(str(model))
    name = spec.name if spec else str(model)
    if video:
        overrides = ["++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor"]
        if vos_optimized or compile:
            overrides = [
                "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictorVOS",
                "++model.compile_image_encoder=True",
            ]
        if apply_postprocessing:
            overrides += list(VIDEO_POSTPROCESSING_OVERRIDES)
    else:
        overrides = list(POSTPROCESSING_OVERRIDES) if apply_postprocessing else []
        if compile:
            overrides.append("++model.compile_image_encoder=True")
    if image_size is not None:
        overrides += size_overrides(image_size)
    overrides += list(hydra_overrides)

    ckpt_path: Path | None = None
    if not random_weights:
        if checkpoint is not None:
            ckpt_path = resolve_checkpoint(Path(checkpoint))
        elif spec is not None:
            hf = str(model).strip() if str(model).strip() == spec.hf_id else spec.name
            ckpt_path = resolve_checkpoint(hf, download=download)
        else:
            raise ModelError(
                f"config {model} has no registry checkpoint: pass checkpoint=FILE (CLI: --checkpoint FILE)"
            )
    dev = pick_device(device)
    cfg = _compose(config, overrides)
    with harmless_warnings_hidden():  # torch.jit.script deprecation inside sam2
        if random_weights:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = instantiate(cfg.model, _recursive_=True)
        else:
            net = instantiate(cfg.model, _recursive_=True)
    digest = None
    if ckpt_path is not None:
        digest = load_checkpoint(net, ckpt_path, config=config, name=spec.name if spec else None)
    net = net.to(dev)
    if mode == "eval":
        net.eval()
    elif mode == "train":
        net.train()
    else:
        raise InputError(f"mode={mode!r}: use 'eval' or 'train'")
    net.dl_utils_name = name
    net.dl_utils_checkpoint = str(ckpt_path) if ckpt_path else None
    net.dl_utils_sha256 = digest or (f"random-{seed}" if random_weights else None)
    net.dl_utils_compiled = bool(compile or (video and vos_optimized))
    return net


def verify_checkpoint(model: str, checkpoint: str | os.PathLike[str] | None = None) -> str:
    """Strict-load a checkpoint on the CPU once (records/checks its sha256); return the digest.

    What ``dl-utils models download`` runs after a download when torch is installed, so a bad file
    is reported at download time rather than at the first annotation session.
    """
    net = build_sam2_model(model, checkpoint, device="cpu")
    digest = net.dl_utils_sha256 or ""
    del net
    return digest


def make_image_predictor(sam_model: Any, *, predictor_cls: Any = None, **kwargs: Any):
    """A ``SAM2ImagePredictor`` (or subclass) whose feature sizes follow the model's image size."""
    require_sam2()
    if predictor_cls is None:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        predictor_cls = SAM2ImagePredictor
    with harmless_warnings_hidden():  # torch.jit.script deprecation in SAM2Transforms
        pred = predictor_cls(sam_model, **kwargs)
    pred._bb_feat_sizes = bb_feat_sizes(sam_model.image_size)
    return pred


__all__ = [
    "PRECISIONS",
    "autocast_context",
    "precision_label",
    "precision_name",
    "is_compiled",
    "bb_feat_sizes",
    "build_sam2_model",
    "guess_model",
    "load_checkpoint",
    "make_image_predictor",
    "pick_device",
    "require_sam2",
    "resolve_dtype",
    "size_overrides",
    "verify_checkpoint",
]
