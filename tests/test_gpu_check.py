"""bench/gpu_check.sh, bench/gpu_check.py and bench/gpu_bundle.sh (issue 13: the GPU-ready check).

No GPU here: the check runs end to end on the CPU with tiny sizes, from the project's environment
(``--no-install``), so the suite stays offline and needs no bundle. The offline install from a real bundle
is tested only where one was built for this Python (``DL_UTILS_GPU_BUNDLE=DIR``, made with
``bench/gpu_bundle.sh --python 3.11 --out DIR``). shellcheck runs on both scripts in tests/test_scripts.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import bench_precision  # noqa: E402  (bench/ is not a package)
import gpu_check  # noqa: E402

CHECK = ROOT / "bench" / "gpu_check.sh"
BUNDLE = ROOT / "bench" / "gpu_bundle.sh"


def sh(*args: str, env: dict | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


# ---- gpu_check.py arguments ----

def test_defaults_run_every_section():
    a = gpu_check.parse_args([])
    assert a.sections == ["sam2", "detector", "grounded"]
    assert a.backends == ["groundingdino", "transformers"]
    assert a.device == "auto" and a.sam2_sizes is None and not a.quick and a.budget == 0
    assert a.modes == ["fp32", "bf16", "fp16", "compile"]


def test_sections_and_sizes_are_checked_and_kept_in_order():
    a = gpu_check.parse_args(["--sections", "grounded, sam2", "--sam2-sizes", "large,base+", "--quick",
                              "--device", "cpu", "--backends", "transformers", "--out", "x.json"])
    assert a.sections == ["sam2", "grounded"]  # documented order, whatever the command line's
    assert a.sam2_sizes == ["large", "base+"] and a.backends == ["transformers"]
    assert a.quick and a.device == "cpu" and a.out == "x.json"
    for bad in (["--sections", "sam2,gpu"], ["--sections", ","], ["--sam2-sizes", "huge"], ["--device", "tpu"],
                ["--backends", "yolo"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)


def test_modes_are_checked_and_run_fp32_first_compile_last(capsys):
    assert gpu_check.parse_args(["--modes", "compile, bf16,fp32"]).modes == ["fp32", "bf16", "compile"]
    for bad in ("fp8", "fp32,int8", ","):
        with pytest.raises(SystemExit) as e:
            gpu_check.main(["--modes", bad, "--device", "cpu"])
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --modes: int8: choose from fp32, bf16, fp16, compile" in err and "empty modes list" in err


def test_bench_precision_arguments():
    a = bench_precision.parse_args(["--modes", "fp16"])
    assert a.modes == ["fp32", "fp16"]  # fp32 always runs: the reference of the ratios and IoUs
    assert bench_precision.parse_args([]).modes == ["fp32", "bf16", "fp16"]
    assert bench_precision.parse_args(["--compile", "--modes", "bf16"]).modes == ["fp32", "bf16", "compile"]
    for bad in (["--modes", "compile"], ["--modes", "fp8"], ["--rounds", "0"], ["--frames", "1"]):
        with pytest.raises(SystemExit):
            bench_precision.parse_args(bad)


def test_mask_iou_counts_frames_empty_in_both_as_agreeing():
    z, a = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b = a.copy()
    b[:, :2] = False  # 4 of them
    got = bench_precision.mask_iou({0: a, 1: z, 2: a, 7: a}, {0: b, 1: z, 2: a})
    assert got == {"mean": round((0.5 + 1 + 1) / 3, 4), "min": 0.5, "frames": 3}
    assert bench_precision.mask_iou({1: a}, {2: a}) is None
    assert bench_precision.foreground({0: a, 1: z}) == 0.25
    assert bench_precision.first_line(RuntimeError("Unexpected floating ScalarType\n  at frame 3")) == (
        "RuntimeError: Unexpected floating ScalarType")


def test_paper_figures_are_the_sam2_readme_ones():
    p = gpu_check.PAPER
    assert p["a100_compiled_fps"] == {"tiny": 91.2, "small": 84.8, "base+": 64.1, "large": 39.5}
    assert p["a100_eager_fps"] == {"tiny": 47.2, "small": 43.3, "base+": 34.8, "large": 24.2}
    assert "facebookresearch/sam2 README.md" in p["source"] and "A100" in p["source"]
    assert set(gpu_check.SIZES) == set(p["a100_compiled_fps"])


# ---- gpu_check.sh ----

def fake_bundle(tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    (b / "wheels").mkdir(parents=True)
    (b / "requirements.txt").write_text("sam2==1.1.0\n")
    (b / "nodeps.txt").write_text("supervision==0.6.0\n")
    return b


def test_check_dry_run_installs_the_bundle_offline_then_runs(tmp_path):
    b = fake_bundle(tmp_path)
    r = sh(CHECK, "--dry-run", "--bundle", b, "--venv", tmp_path / "venv", "--sections", "sam2", "--quick",
           "--out", tmp_path / "gpu.json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.search(r"-m venv --without-pip .*venv$", lines[0].strip())
    pips = [ln for ln in lines if " -m pip install " in ln]
    assert len(pips) == 2 and all("--no-index" in ln and f"--find-links {b}/wheels" in ln for ln in pips)
    assert pips[0].strip().endswith(f"-r {b}/requirements.txt")
    assert "--no-deps" in pips[1] and pips[1].strip().endswith(f"-r {b}/nodeps.txt")
    run = lines[-1]
    assert f"{tmp_path}/venv/bin/python {ROOT}/bench/gpu_check.py --sections sam2 --quick --out {tmp_path}/gpu.json" in run
    budget = int(re.search(r"--budget (\d+)", run).group(1))
    assert 250 <= budget <= 300  # 345 s in all, less the step in flight


def test_check_dry_run_without_install_and_explicit_budget(tmp_path):
    r = sh(CHECK, "--dry-run", "--no-install", "--python", sys.executable, "--budget", "12", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    # --modes bf16 unless told: the one-command check keeps its 6 minutes (the modes' run names them)
    assert r.stdout.strip() == f"{sys.executable} {ROOT}/bench/gpu_check.py --budget 12 --device cpu --modes bf16"
    assert "pip" not in r.stdout


def test_check_passes_modes_through_and_lists_them():
    r = sh(CHECK, "--dry-run", "--no-install", "--python", sys.executable, "--sections", "sam2", "--modes",
           "bf16,compile", "--total", "1200")
    assert r.returncode == 0, r.stderr
    cmd = shlex.split(r.stdout)  # printf %q quotes the comma
    assert cmd[:6] == [sys.executable, f"{ROOT}/bench/gpu_check.py", "--sections", "sam2", "--modes", "bf16,compile"]
    assert cmd[6] == "--budget" and 1100 <= int(cmd[7]) <= 1155  # --total 1200, less the step in flight
    usage = sh(CHECK, "--help").stdout
    assert "--modes fp32,bf16,fp16,compile" in usage and "vos_optimized" in usage


@pytest.mark.parametrize("args,message", [
    (["--bundle", "/nonexistent/bundle"], "bundle folder not found"),
    (["--total", "soon"], "--total takes whole seconds"),
])
def test_check_refuses_bad_arguments(args, message):
    r = sh(CHECK, "--dry-run", *args)
    assert r.returncode == 2 and message in r.stderr


def test_check_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    r = sh(CHECK, "--dry-run", "--bundle", tmp_path)
    assert r.returncode == 2 and "is not a bundle" in r.stderr


def test_check_refuses_a_python_without_torch(tmp_path):
    py = tmp_path / "python3"
    py.write_text("#!/bin/sh\nexit 1\n")
    py.chmod(0o755)
    r = sh(CHECK, "--no-install", "--python", py)
    assert r.returncode == 2 and "has no torch" in r.stderr and "never installs one" in r.stderr


# ---- gpu_bundle.sh ----

def bundle_pins(*args: str) -> dict[str, list[str]]:
    r = sh(BUNDLE, "--dry-run", *args)
    assert r.returncode == 0, r.stderr
    parts: dict[str, list[str]] = {}
    key = None
    for line in r.stdout.splitlines():
        if line.startswith("# "):
            key = line[2:].split(" ")[0]
            parts.setdefault(key, [])
        elif line.strip():
            parts[key].append(line.strip())
    return parts


def test_bundle_dry_run_lists_the_pins_and_fetches_nothing():
    p = bundle_pins()
    req, nodeps, built = p["requirements.txt"], p["nodeps.txt"], p["built"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.]*", x) for x in req + nodeps)
    names = {x.split("==")[0].lower() for x in req}
    assert {"sam2", "hydra-core", "omegaconf", "iopath", "av", "pycocotools", "natsort", "transformers",
            "tokenizers", "huggingface_hub", "addict", "yapf"} <= names
    assert not names & {"torch", "torchvision", "numpy", "pillow"}  # the machine's torch stack is used
    assert "opencv-python-headless" not in names and "timm" not in names  # --with-fat / --complete only
    assert nodeps == ["groundingdino-py==0.4.0", "supervision==0.6.0"]
    assert "sam2==1.1.0" in built and "SAM2_BUILD_CUDA=0" in "\n".join(p["commands"])
    assert all("--no-deps --only-binary=:all: --python-version 3.12 --implementation cp" in c
               for c in p["commands"] if "download" in c)


def test_bundle_options_add_the_rest():
    p = bundle_pins("--complete", "--with-fat", "--python", "3.11,3.12")
    names = {x.split("==")[0].lower() for x in p["requirements.txt"]}
    assert {"timm", "pyyaml", "tqdm", "hf-xet", "pytest", "requests", "opencv-python-headless", "matplotlib"} <= names
    downloads = [c for c in p["commands"] if "download" in c]
    assert len(downloads) == 2 and "--python-version 3.11" in downloads[0]


def test_bundle_pins_are_the_tested_versions():
    """Each pin equals dockerPreAnnotation/constraints.txt (where listed) and the installed version."""
    p = bundle_pins("--complete", "--with-fat")
    constraints = {}
    for line in (ROOT / "dockerPreAnnotation" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            constraints[name.lower()] = version
    for pin in p["requirements.txt"] + p["nodeps.txt"]:
        name, version = pin.split("==")
        if name.lower() in constraints:
            assert constraints[name.lower()] == version, pin
        assert importlib.metadata.version(name).split("+")[0] == version, pin


@pytest.mark.parametrize("args,message", [(["--python", "3.10"], "Python >= 3.11"),
                                          (["--python", "three"], "versions like"),
                                          (["--bogus"], "unknown argument")])
def test_bundle_refuses_bad_arguments(args, message):
    r = sh(BUNDLE, "--dry-run", *args)
    assert r.returncode == 2 and message in r.stderr


# ---- end to end on the CPU ----

def check_json(path: Path, sections: list[str]) -> dict:
    res = json.loads(path.read_text())
    m = res["meta"]
    assert m["device"] == "cpu" and m["quick"] is True and m["torch"] and m["python"]
    assert "random weights" in m["weights"] and "do" in m["weights"]
    assert m["sections"] == sections and m["elapsed_s"] > 0
    assert res["errors"] == [] and res["skipped"] == []
    return res


@pytest.mark.slow
def test_quick_cpu_run_writes_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    r = sh(CHECK, "--no-install", "--python", sys.executable, "--device", "cpu", "--quick",
           "--sections", "sam2,detector,grounded", "--modes", "fp32,bf16", "--frames", "4", "--grounded-frames", "4",
           "--every", "2", "--backends", "groundingdino", "--threads", "2", "--budget", "0", "--out", out,
           timeout=900)  # no budget: on a loaded machine the default one skipped the last section
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = check_json(out, ["sam2", "detector", "grounded"])
    assert res["meta"]["modes"] == ["fp32", "bf16"]
    s = res["sam2"]
    assert s["frames"] == 4 and s["image_size"] == 256 and s["objects"] == 1 and s["paper"] == gpu_check.PAPER
    assert s["modes"] == ["fp32", "bf16"]
    assert s["mode_dtypes"] == {"fp32": "fp32 (no autocast)", "bf16": "bf16 autocast"}
    tiny = s["models"]["tiny"]
    assert tiny["model"] == "sam2.1_hiera_tiny" and tiny["weights"] == "random" and "random" in tiny["iou_weights"]
    assert list(tiny["modes"]) == ["fp32", "bf16"]  # the per-mode rows
    for mode, t in tiny["modes"].items():
        assert t["mode"] == mode and t["model"] == "sam2.1_hiera_tiny" and not t["compiled"]
        assert t["raw_fps"] > 0 and t["ours_fps"] > 0 and len(t["raw_s"]) == len(t["ours_s"]) == 1
        assert t["ratio"] == pytest.approx(statistics.median(t["raw_s"]) / statistics.median(t["ours_s"]), abs=1e-3)
        assert t["paper_a100_fps"] == 47.2 and t["paper_kind"] == "eager"
        assert 0 < t["ours_iou_vs_fp32"]["mean"] <= 1 and t["ours_iou_vs_fp32"]["frames"] == 4
        assert 0 < t["ours_iou_vs_raw"]["min"] <= 1
    fp32 = tiny["modes"]["fp32"]
    assert fp32["raw_iou_vs_fp32"]["min"] == 1.0  # the reference itself
    assert fp32["ours_iou_vs_raw"]["min"] == 1.0  # fp32: ours is upstream's computation, mask for mask
    assert 0 < fp32["fp32_foreground"] < 1  # the IoUs compare shapes, not empty frames
    d = res["detector"]["backends"]["groundingdino"]
    assert d["reference_ms"] > 0 and d["ours_ms"] > 0 and d["ratio"] > 0 and d["ours_batch_ms"] > 0
    g = res["grounded"]
    assert g["frames"] == 4 and [x["every"] for x in g["runs"]] == [2]
    run = g["runs"][0]
    assert run["total_s"] > 0 and set(run["stages_s"]) >= {"decode", "detect", "segment", "propagate", "store"}
    assert 0 <= run["detect_share"] <= 1 and g["raw_sam2"]["fps"] > 0 and g["detector_direct_ms_per_frame"] > 0
    text = r.stdout
    for needle in ("SAM 2.1 propagation", "ours/raw", "| tiny | fp32 |", "| tiny | bf16 |", "47.2 (eager)",
                   "| groundingdino |", "detect share", "speed does not depend on the weight values"):
        assert needle in text, needle


@pytest.mark.slow
def test_spent_budget_skips_and_says_so(tmp_path):
    out = tmp_path / "gpu.json"
    r = sh(CHECK, "--no-install", "--python", sys.executable, "--device", "cpu", "--quick", "--budget", "0.001",
           "--sections", "sam2,grounded", "--out", out, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [s["what"] for s in res["skipped"]] == ["sam2", "grounded"]
    assert all("time budget" in s["why"] for s in res["skipped"]) and "sam2" not in res
    assert "skipped: sam2 (time budget" in r.stdout


# ---- the offline install, where a bundle for this Python was built ----

IMAGE = """certifi charset-normalizer contourpy cuda-bindings cuda-pathfinder cuda-toolkit cycler filelock fonttools fsspec
hf-xet idna iniconfig jinja2 kiwisolver markupsafe matplotlib mpmath networkx numpy nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx
opencv-python-headless packaging pillow pip pluggy portalocker pygments pyparsing pytest python-dateutil pyyaml regex
requests safetensors scipy setuptools six sympy timm torch torchvision tqdm triton typing-extensions urllib3""".split()


def image_like_site(bundle: Path, farm: Path) -> Path:
    """This environment's packages that the lent GPU image also has (KINDS.md), minus the bundle's, as links."""
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    bundled = {norm(line.split("==")[0]) for f in ("requirements.txt", "nodeps.txt")
               for line in (bundle / f).read_text().splitlines() if line and not line.startswith("#")}
    keep = {norm(n) for n in IMAGE} - bundled
    site = Path(importlib.metadata.distribution("torch").locate_file(""))
    farm.mkdir()
    for dist in importlib.metadata.distributions(path=[str(site)]):
        if norm(dist.metadata["Name"]) in keep:
            for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
                if (site / top).exists() and not (farm / top).exists():
                    (farm / top).symlink_to(site / top)
    return farm


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DL_UTILS_GPU_BUNDLE"), reason="set DL_UTILS_GPU_BUNDLE to a bundle "
                    "made with bench/gpu_bundle.sh --python X.Y for this Python")
def test_offline_install_from_the_bundle(tmp_path):
    bundle = Path(os.environ["DL_UTILS_GPU_BUNDLE"])
    farm = image_like_site(bundle, tmp_path / "site")
    # the image's own, newer transformers/tokenizers/huggingface_hub (which break groundingdino-py): the
    # bundle's must shadow them, and they must stay untouched
    newer = tmp_path / "newer"
    for name, ver in (("transformers", "5.17.0"), ("tokenizers", "0.23.2"), ("huggingface_hub", "1.33.0")):
        (newer / f"{name}-{ver}.dist-info").mkdir(parents=True)
        (newer / f"{name}-{ver}.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n")
        (newer / f"{name}-{ver}.dist-info" / "RECORD").write_text(f"{name}/__init__.py,,\n")
        (newer / name).mkdir()
        (newer / name / "__init__.py").write_text(f"raise ImportError('the machine's {name} {ver} was imported')\n")
    before = sorted(p.name for p in newer.rglob("*"))
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    out = tmp_path / "gpu.json"
    r = sh(CHECK, "--bundle", bundle, "--python", base, "--base-site", farm, "--base-site", newer,
           "--venv", tmp_path / "venv", "--device", "cpu", "--quick", "--sections", "sam2,detector",
           "--backends", "groundingdino", "--frames", "4", "--threads", "2", "--out", out,
           env={"PIP_NO_INDEX": "1"}, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "installing the bundle" in r.stderr
    res = check_json(out, ["sam2", "detector"])
    assert res["meta"]["executable"] == str(tmp_path / "venv" / "bin" / "python")
    pk = res["meta"]["packages"]
    assert (pk["transformers"], pk["tokenizers"], pk["huggingface_hub"]) == ("4.57.6", "0.22.2", "0.36.2")
    assert pk["sam2"] == "1.1.0" and pk["groundingdino-py"] == "0.4.0"
    assert res["sam2"]["models"]["tiny"]["ours_fps"] > 0
    assert res["detector"]["backends"]["groundingdino"]["ours_ms"] > 0
    assert sorted(p.name for p in newer.rglob("*")) == before


# ---- the per-mode bookkeeping, with stand-in networks (the real passes run in the end-to-end test) ----

TIMES = {("raw", "fp32"): 2.0, ("ours", "fp32"): 2.5, ("raw", "bf16"): 1.0, ("ours", "bf16"): 0.8,
         ("ours", "fp16"): 4.0, ("raw", "compile"): 0.5, ("ours", "compile"): 0.4}
FP16_CRASH = "Unexpected floating ScalarType in at::autocast::prioritize"


class StandIn:
    """What the sections ask of a network: its parameters, and whether it is the compiled predictor."""

    def __init__(self, compiled: bool):
        self.dl_utils_compiled = compiled

    def parameters(self):
        import torch

        return [torch.zeros(2_000_000)]


def stand_in_passes(monkeypatch, calls: list) -> list:
    """bench_precision's build/raw_pass/ours_pass replaced: fixed seconds per (arm, mode), raw crashing in
    fp16 as upstream does, bf16 masks one column off the fp32 ones."""
    built = []

    def masks_for(mode):
        m = np.zeros((6, 6), bool)
        m[1:5, 1:5] = True
        if mode != "fp32":
            m[1:5, 4] = False  # 12 of 16 pixels: IoU 0.75 against fp32
        return {0: m, 1: m.copy()}

    def run(arm, mode, masks, total):
        calls.append((mode, arm))
        if (arm, mode) == ("raw", "fp16"):
            raise RuntimeError(FP16_CRASH + "\nat frame 1")
        if masks is not None:
            masks.update(masks_for(mode))
        if total is not None:
            total.append(TIMES[(arm, mode)] + 1)
        return TIMES[(arm, mode)]

    def build(name, size, device, mode, ckpt=None):
        built.append(mode)
        return StandIn(mode == "compile")

    monkeypatch.setattr(bench_precision, "build", build)
    monkeypatch.setattr(bench_precision, "raw_pass",
                        lambda model, folder, mode, masks=None, total=None: run("raw", mode, masks, total))
    monkeypatch.setattr(bench_precision, "ours_pass",
                        lambda model, folder, db, mode, masks=None, total=None: run("ours", mode, masks, total))
    return built


@pytest.mark.parametrize("budget", [0, 100])
def test_sam2_modes_record_a_raw_crash_and_measure_ours(monkeypatch, tmp_path, capsys, budget):
    import torch

    calls: list = []
    built = stand_in_passes(monkeypatch, calls)
    monkeypatch.setattr(gpu_check, "sam2_checkpoint", lambda name: None)
    args = gpu_check.parse_args(["--device", "cpu", "--quick", "--frames", "2", "--rounds", "2", "--sam2-sizes",
                                 "tiny", "--out", str(tmp_path / "gpu.json"), "--budget", str(budget)])
    args.sam2_sizes = ["tiny"]
    chk = gpu_check.Check(args)
    gpu_check.section_sam2(chk, torch.device("cpu"))
    res = json.loads((tmp_path / "gpu.json").read_text())  # saved after each figure
    assert chk.results["errors"] == []
    s = res["sam2"]
    assert s["modes"] == ["fp32", "bf16", "fp16", "compile"] and s["mode_dtypes"]["compile"].startswith("bf16")
    tiny = s["models"]["tiny"]
    assert tiny["weights"] == "random" and tiny["iou_weights"].startswith("random") and tiny["params_m"] == 2.0
    rows = tiny["modes"]
    fp32, bf16, fp16 = rows["fp32"], rows["bf16"], rows["fp16"]
    assert fp32["raw_fps"] == 1.0 and fp32["ours_fps"] == 0.8 and fp32["ratio"] == 0.8
    assert fp32["raw_s"] == [2.0, 2.0] and fp32["ours_end_to_end_s"] == 3.5
    assert fp32["paper_a100_fps"] == 47.2 and fp32["paper_kind"] == "eager"
    assert fp32["raw_vs_paper"] == round(1 / 47.2, 3)
    assert fp32["ours_iou_vs_fp32"] == fp32["raw_iou_vs_fp32"] == {"mean": 1.0, "min": 1.0, "frames": 2}
    assert bf16["ratio"] == 1.25 and bf16["ours_iou_vs_fp32"]["mean"] == 0.75 and bf16["ours_iou_vs_raw"]["mean"] == 1
    assert fp16["raw_error"] == "RuntimeError: " + FP16_CRASH  # the first line only
    assert "raw_fps" not in fp16 and "ratio" not in fp16 and fp16["ours_fps"] == 0.5
    assert fp16["ours_iou_vs_fp32"]["mean"] == 0.75 and "raw_iou_vs_fp32" not in fp16
    assert ("fp16", "raw") not in calls[calls.index(("fp16", "ours")):]  # the crash is not timed again
    out = capsys.readouterr().out
    assert "tiny   fp16    raw CRASHED" in out
    if budget:  # the compile mode needs COMPILE_RESERVE_S of the budget left to start
        assert "compile" not in rows and built == ["fp32"]
        assert res["skipped"] == [{"what": "sam2 tiny compile", "why": res["skipped"][0]["why"]}]
        assert "needs about 150 s" in res["skipped"][0]["why"]
    else:  # the eager network serves the three eager modes; the compiled one is built for compile
        assert built == ["fp32", "compile"] and res["skipped"] == []
        c = rows["compile"]
        assert c["compiled"] and c["paper_kind"] == "compiled" and c["paper_a100_fps"] == 91.2 and c["ratio"] == 1.25
        assert c["ours_iou_vs_fp32"]["mean"] == 0.75 and c["warmup_s"] >= 0
    chk.results["meta"] = {"gpu": {}, "torch": "x", "python": "y", "quick": True}
    gpu_check.summary(chk)
    table = capsys.readouterr().out
    assert "| tiny | fp16 | crashed (RuntimeError: Unexpected floating" in table
    assert ("| tiny | bf16 | 2.0 | 2.5 | **1.25x** | 47.2 (eager) | 0.04x | 0.7500 / 0.7500 | 1.0000 / 1.0000 "
            "| random |") in table


def test_bench_precision_interleaves_and_records_a_crash(monkeypatch, tmp_path, capsys):
    calls: list = []
    stand_in_passes(monkeypatch, calls)
    out = tmp_path / "precision.json"
    assert bench_precision.main(["--device", "cpu", "--frames", "2", "--rounds", "3", "--compile",
                                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["modes"] == ["fp32", "bf16", "fp16", "compile"] and res["rounds"] == 3 and res["weights"] == "random"
    pairs = [("fp32", "raw"), ("fp32", "ours"), ("bf16", "raw"), ("bf16", "ours"), ("fp16", "ours"),
             ("compile", "raw"), ("compile", "ours")]
    timed = calls[8:]  # after one warm-up per mode and arm (fp16 raw crashing there)
    assert calls[:8] == [("fp32", "raw"), ("fp32", "ours"), ("bf16", "raw"), ("bf16", "ours"), ("fp16", "raw"),
                         ("fp16", "ours"), ("compile", "raw"), ("compile", "ours")]
    assert timed == pairs + pairs[1:] + pairs[:1] + pairs[2:] + pairs[:2]  # every round each once, rotated
    r = res["rows"]
    assert r["fp32"]["ratio"] == 0.8 and r["fp32"]["ratio_per_round"] == [0.8] * 3 and r["fp32"]["raw_vs_fp32_raw"] == 1
    assert r["bf16"]["ratio"] == 1.25 and r["bf16"]["raw_vs_fp32_raw"] == 2 and r["bf16"]["ours_vs_fp32_raw"] == 2.5
    assert r["fp16"]["raw_error"] == "RuntimeError: " + FP16_CRASH and "ratio" not in r["fp16"]
    assert r["fp16"]["ours_vs_fp32_raw"] == 0.5 and r["fp16"]["ours_iou_vs_fp32"]["mean"] == 0.75
    assert r["compile"]["compiled"] and r["compile"]["dtype"] == "bf16" and r["compile"]["ours_vs_fp32_raw"] == 5
    text = capsys.readouterr().out
    assert r["bf16"]["end_to_end_ratio"] == 1.111 and r["bf16"]["raw_end_to_end_s"] == [2.0] * 3
    assert "| bf16 | 2.00 | 2.50 | **1.250x** | 1.111x | 2.000x | 2.500x | 0.7500 (min 0.7500) |" in text
    assert "| fp16 | crashed | 0.50 | - | - | - | 0.500x |" in text and "fp16 raw crashed: RuntimeError" in text
