"""The one real-browser test: JupyterLab + Debian's chromium (Playwright) run notebook 01 and click.

Everything else in the suite drives the widget from code; this proves the browser side: ipyevents
delivers the key and the click, the click lands on the right source pixel, and the canvas really
shows the new mask in the object's colour. Slow (about a minute) but always run.

The helpers (:func:`jupyter_lab`, :func:`open_browser`, :func:`open_notebook`...) are also used by
``bench/bench_widget.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT, SHARED_DATA

NOTEBOOK = "01_click_to_masks.ipynb"
CANVAS = ".dl-annotator-canvas"
WIDGET = ".dl-annotator"


# ------------------------------------------------------------------------------- helpers (shared)
def browser_skip_reason() -> str | None:
    """Why the browser test cannot run here, or None."""
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed (apt-get install chromium; ./run.sh test does it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; ./run.sh test does it)"
    try:
        import ipycanvas  # noqa: F401
        import ipyevents  # noqa: F401
        import jupyterlab  # noqa: F401
    except ImportError as e:
        return f"JupyterLab widgets are not installed ({e}); pip install -e '.[jupyter]'"
    return None


def wait_for(what: str, fn: Callable[[], Any], timeout: float, interval: float = 0.25,
             on_timeout: Callable[[], str] | None = None) -> Any:
    """Poll ``fn`` until it returns something truthy; fail saying what never happened."""
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > end:
            extra = on_timeout() if on_timeout else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running JupyterLab: ``url(path)`` adds the token; ``log()`` is its output so far."""

    def __init__(self, port: int, token: str, log_path: Path, proc: subprocess.Popen):
        self.port, self.token, self.log_path, self.proc = port, token, log_path, proc

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}{sep}token={self.token}"

    def api(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/{path.lstrip('/')}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            body = r.read()
        return json.loads(body) if body else None

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""


@contextlib.contextmanager
def jupyter_lab(root_dir: Path, work: Path, env: dict[str, str] | None = None,
                timeout: float = 60.0) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 (free port, random token) serving ``root_dir``; always stopped after.

    Settings and workspaces live under ``work`` so the user's own JupyterLab state never leaks in:
    notebook windowing is off (a windowed notebook detaches cells scrolled out of view, canvas
    included) and the news/update checks are off (no network here).
    """
    settings = work / "lab-settings"
    for ext, name, value in [
        ("notebook-extension", "tracker", {"windowingMode": "none"}),
        ("apputils-extension", "notification", {"fetchNews": "false", "checkForUpdates": False}),
    ]:
        d = settings / "@jupyterlab" / ext
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.jupyterlab-settings").write_text(json.dumps(value))
    (work / "workspaces").mkdir(parents=True, exist_ok=True)
    (work / "runtime").mkdir(parents=True, exist_ok=True)
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
           "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={settings}",
           f"--LabApp.workspaces_dir={work / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    full_env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                **(env or {})}
    log_path = work / "jupyterlab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=root_dir,
                                start_new_session=True)
    lab = Lab(port, token, log_path, proc)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{lab.log()}")
            try:
                return "version" in lab.api("")
            except OSError:
                return False

        wait_for("JupyterLab's /api", up, timeout, on_timeout=lambda: "\n" + lab.log())
        yield lab
    finally:
        _stop_lab(lab)


def _stop_lab(lab: Lab) -> None:
    """Shut kernels and server down; kill what is left (kernels run in their own sessions)."""
    children = []
    try:
        import psutil
    except ImportError:  # jupyter_server depends on it; without it, the REST shutdown below must do
        psutil = None
    if psutil is not None:
        with contextlib.suppress(psutil.Error):  # the server may be gone already
            children = psutil.Process(lab.proc.pid).children(recursive=True)
    if lab.proc.poll() is None:
        with contextlib.suppress(Exception):
            for k in lab.api("kernels"):
                lab.api(f"kernels/{k['id']}", method="DELETE")
        with contextlib.suppress(Exception):
            lab.api("shutdown", method="POST")
        try:
            lab.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(lab.proc.pid, signal.SIGKILL)
            lab.proc.wait(5)
    for c in children:
        with contextlib.suppress(Exception):
            c.kill()


@contextlib.contextmanager
def open_browser(width: int = 1500, height: int = 1100) -> Iterator[Any]:
    """A Playwright page in Debian's chromium (Playwright cannot download its own browsers here)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
            yield page
        finally:
            browser.close()


def layout_notebook(tmp: Path, name: str, source: Path | None = None) -> Path:
    """Copy a notebook as the repo lays it out (repo/notebooks beside shared/data); return its folder."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"sample media folder {SHARED_DATA} is absent")
    (tmp / "shared").mkdir(exist_ok=True)
    if not (tmp / "shared" / "data").exists():
        (tmp / "shared" / "data").symlink_to(SHARED_DATA.resolve())
    nb_dir = tmp / "repo" / "notebooks"
    nb_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(source or ROOT / "notebooks" / name, nb_dir / name)
    return nb_dir


def open_notebook(page: Any, lab: Lab, name: str, timeout: float = 60.0) -> None:
    """Open a notebook in JupyterLab and wait until its kernel is idle."""
    page.goto(lab.url(f"lab/tree/{name}"))
    js = """() => {
        const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
        return !!k && k.status === 'idle' && !!w.content && w.content.widgets.length > 0;
    }"""
    wait_for(f"{name} to open with an idle kernel", lambda: page.evaluate(js), timeout,
             on_timeout=lambda: "\n" + lab.log())


def run_all_cells(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def error_outputs(page: Any) -> str:
    """Text of error outputs in the page (to say why a notebook never finished)."""
    texts = page.eval_on_selector_all("[data-mime-type='application/vnd.jupyter.error'], "
                                      "[data-mime-type='application/vnd.jupyter.stderr']",
                                      "els => els.map(e => e.innerText)")
    return "\n".join(texts)[-3000:]


def screenshot(locator: Any) -> np.ndarray:
    """An element screenshot as an RGB array (CSS pixels at device scale 1)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB"))


def stable_screenshot(locator: Any, timeout: float = 10.0) -> np.ndarray:
    """Screenshot once two in a row agree: ipycanvas decodes images asynchronously after the message."""
    prev = screenshot(locator)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(0.15)
        cur = screenshot(locator)
        if cur.shape == prev.shape and np.array_equal(cur, prev):
            return cur
        prev = cur
    return prev


# ------------------------------------------------------------------------------------------ test
def _disk(shape: tuple[int, int], x: int, y: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (xx - x) ** 2 + (yy - y) ** 2 <= r * r


@pytest.mark.slow
@pytest.mark.media
@pytest.mark.timeout(240)
def test_click_in_real_browser(tmp_path):
    """Notebook 01 in JupyterLab; 'n' then a click on the canvas -> object 2 in the store and on screen.

    Artefacts (canvas before/after the click) stay in the test's tmp dir; with
    DL_UTILS_SAVE_SCREENSHOT=1 the whole widget is also saved as docs/img/annotator.png (the README's).
    """
    reason = browser_skip_reason()
    if reason:
        pytest.skip(reason)
    from tests.sam2_fixtures import HAVE_SAM2, SKIP_REASON

    if not HAVE_SAM2:
        pytest.skip(SKIP_REASON)
    import cv2

    from dl_utils.ipy_utils import Annotator
    from dl_utils.ipy_utils import geometry as geo
    from dl_utils.store import AnnotationStore

    nb_dir = layout_notebook(tmp_path, NOTEBOOK)
    work = nb_dir / "work" / "01_click_to_masks"
    store_path = work / "clicks.sqlite"
    defaults = Annotator.__init__.__kwdefaults__  # notebook 01 keeps the widget's default opacity and size
    alpha, max_size = defaults["alpha"], defaults["max_size"]

    with jupyter_lab(nb_dir, tmp_path / "lab", env={"DL_UTILS_NB_TEST": "1"}) as lab, open_browser() as page:
        open_notebook(page, lab, NOTEBOOK)
        run_all_cells(page)
        wait_for("notebook 01 to finish (its export annotations.xml)",
                 lambda: (work / "annotations.xml").is_file(), 150,
                 on_timeout=lambda: f"\nerrors in the page:\n{error_outputs(page)}\nlab log:\n{lab.log()}")
        canvas = page.locator(CANVAS)
        wait_for("the annotator canvas", lambda: canvas.count() == 1 and canvas.is_visible(), 30)
        canvas.scroll_into_view_if_needed()

        with AnnotationStore.open(store_path, readonly=True) as st:
            media = st.media
            assert [o.id for o in st.objects()] == [1]
            mask1 = st.read_frame(0).by_object()[1].mask
        view = geo.View(media.width, media.height, geo.fit_scale(media.width, media.height, *max_size))
        cw, ch = view.canvas_size

        # the click target: a source pixel well away from object 1 (its mask is arbitrary: random weights)
        dist1 = cv2.distanceTransform((~mask1).astype(np.uint8), cv2.DIST_L2, 5)
        candidates = [(200, 150), (760, 120), (120, 440), (820, 460), (480, 60), (300, 300)]
        sx, sy = max(candidates, key=lambda p: dist1[p[1], p[0]])  # first of the farthest

        # the canvas element as laid out (it may be CSS-scaled): display <-> page mapping by its box.
        # ipycanvas composites the MultiCanvas layers into this one <canvas> element.
        box = canvas.bounding_box()
        fx, fy = box["width"] / cw, box["height"] / ch
        dx, dy = geo.to_display(view, sx + 0.5, sy + 0.5)  # the centre of the source pixel
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.keyboard.press("n")

        def objects() -> list[int]:
            with AnnotationStore.open(store_path, readonly=True) as st:
                return [o.id for o in st.objects()]

        wait_for("key 'n' to create object 2", lambda: objects() == [1, 2], 20,
                 on_timeout=lambda: f" (objects: {objects()})")
        status = page.locator(f"{WIDGET} .widget-html-content").first
        wait_for("the status line to announce object 2", lambda: "object 2" in status.inner_text(), 10)
        before = stable_screenshot(canvas)

        page.mouse.click(box["x"] + dx * fx, box["y"] + dy * fy)

        def keyframe() -> Any:
            with AnnotationStore.open(store_path, readonly=True) as st:
                inst = st.read_frame(0).by_object().get(2)
                return (inst, st.get_object(2).color) if inst is not None and inst.keyframe else None

        inst, color = wait_for("the click to write object 2's keyframe on frame 0", keyframe, 30,
                               on_timeout=lambda: f"\nstatus: {status.inner_text()}\n{lab.log()}")
        assert len(inst.prompts["points"]) == 1, inst.prompts
        px, py, positive = (round(v) for v in inst.prompts["points"][0])
        assert positive == 1
        assert abs(px - sx) <= 1 and abs(py - sy) <= 1, (inst.prompts, (sx, sy))
        wait_for("the status line to report the click", lambda: "object 2, frame 0" in status.inner_text(), 10)
        after = stable_screenshot(canvas)
        from PIL import Image

        Image.fromarray(before).save(tmp_path / "canvas_before.png")
        Image.fromarray(after).save(tmp_path / "canvas_after.png")  # the test artefact
        if os.environ.get("DL_UTILS_SAVE_SCREENSHOT") == "1":
            out = ROOT / "docs" / "img" / "annotator.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(page.locator(WIDGET).screenshot())

    # Which pixels to check. The weights are random, so the mask is arbitrary and need not contain
    # the click. Take pixels of the stored mask that show the fill blend and nothing else: the click
    # pixel when it is inside, else mask pixels at least 4 px inside the mask (the 3 px contour of the
    # selected object is opaque), more than 12 px from the click (the marker ring, radius 6, is drawn
    # on top) and away from object 1 (where objects overlap, the later one replaces the earlier).
    mask2 = inst.mask
    assert mask2 is not None and mask2.any(), "SAM2 gave object 2 an empty mask: nothing to see on the canvas"
    k = np.ones((9, 9), np.uint8)
    inner = cv2.erode(mask2.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    ok = inner & ~(cv2.dilate(mask1.astype(np.uint8), k) > 0)
    ring_free = ok & ~_disk(mask2.shape, px, py, 12)
    ys, xs = np.nonzero(ring_free)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(xs), size=min(200, len(xs)), replace=False) if len(xs) else np.array([], int)
    pts = [(int(xs[i]), int(ys[i])) for i in pick]
    if ok[py, px] and mask2[py, px]:
        pts.insert(0, (px, py))  # the click pixel itself: the ring leaves its centre uncovered
    assert len(pts) >= 20, f"only {len(pts)} clean mask pixels to check (mask area {int(mask2.sum())})"

    col = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], np.float64)
    h, w = after.shape[:2]
    ox, oy = math.floor(box["x"]), math.floor(box["y"])  # the element screenshot's page origin

    def shot_px(x: int, y: int) -> tuple[int, int]:
        """Screenshot pixel showing source pixel (x, y): its display centre, through the CSS box."""
        cx, cy = geo.to_display(view, x + 0.5, y + 0.5)
        return (min(w - 1, math.floor(box["x"] + cx * fx) - ox), min(h - 1, math.floor(box["y"] + cy * fy) - oy))

    diffs = []
    for x, y in pts:
        u, v = shot_px(x, y)
        want = np.rint(before[v, u].astype(np.float64) * (1 - alpha) + col * alpha)
        diffs.append(np.abs(after[v, u].astype(np.float64) - want).max())
    diffs = np.array(diffs)
    assert np.mean(diffs <= 8) >= 0.9, (
        f"canvas pixels of object 2 do not show its colour {color} at opacity {alpha}: "
        f"per-pixel max channel error median {np.median(diffs):.1f}, "
        f"{np.mean(diffs <= 8):.0%} within 8 levels (screenshots in {tmp_path})")

    # and the overlay is only where the mask is: away from object 2 (and its ring) nothing changed.
    # (Random weights may leave too few such pixels to judge; the colour check above stands alone.)
    far2 = cv2.dilate(mask2.astype(np.uint8), np.ones((15, 15), np.uint8)) == 0
    far2 &= ~_disk(mask2.shape, px, py, 12)
    ys, xs = np.nonzero(far2)
    if len(xs) >= 50:
        pick = rng.choice(len(xs), size=min(2000, len(xs)), replace=False)
        changed = [np.abs(after[v, u].astype(int) - before[v, u].astype(int)).max() > 8
                   for u, v in (shot_px(int(xs[i]), int(ys[i])) for i in pick)]
        assert np.mean(changed) < 0.01, f"{np.mean(changed):.1%} of the pixels away from object 2 changed"
