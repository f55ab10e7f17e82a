"""02_distributed in a real browser: JupyterLab on 127.0.0.1 (random free port, a token), headless Debian
Chromium driven by Playwright (no browser download), Run All, then what a user sees and does:

* the dashboard appears; its live loss plot gains points while the first run trains (the plotly graph's own
  data, read in the page), and the rank panel names both ranks;
* a click on a runs-table header sorts the table;
* the slice viewer: a slider moves a plane; a window preset changes the picture; a click in the axial plane
  moves the crosshair in the coronal and sagittal planes; the epoch slider changes the estimate.

Screenshots go to a temporary directory; ``make screenshots`` (``GMMKIT_SCREENSHOTS=docs/screenshots``) also
copies the final ones there for the README. A plain ``make test`` leaves the tracked files alone.
"""

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PARAMETERS = {
    "workers": 2,
    "dataset": "phantoms",
    "phantoms": 72,
    "val_size": 8,
    "components": 4,
    "batch_size": 8,
    "epochs": 6,
    "target_loss": None,
    "out": "runs/dashboard",
    "run_examples": True,
}
LAB_SETTINGS = {
    # every cell attached to the page, so widgets far down still render and can be read
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # no news or update checks: the test never leaves 127.0.0.1
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}

pytestmark = [pytest.mark.browser, pytest.mark.mpi]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a tiny-parameter copy of 02_distributed; yields its URL."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    from papermill.iorw import load_notebook_node  # gives every cell a tags list, as papermill expects
    from papermill.parameterize import parameterize_notebook

    work = tmp_path / "lab"
    work.mkdir()
    nb = load_notebook_node(str(ROOT / "notebooks" / "02_distributed.ipynb"))
    nbformat.write(parameterize_notebook(nb, PARAMETERS), work / "02_distributed.ipynb")
    settings = tmp_path / "lab-settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log = open(tmp_path / "jupyter.log", "w")
    server = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "jupyter"),
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--port-retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={work}",
            "--ServerApp.disable_check_xsrf=False",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start; log:\n{(tmp_path / 'jupyter.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": f"{base}/lab/tree/02_distributed.ipynb?token={token}", "work": work, "tmp": tmp_path}
    finally:
        # the server, its kernels and what they started (the notebook's ipcluster: controller, mpiexec,
        # engines), which outlive a failed test's kernel otherwise
        try:
            family = psutil.Process(server.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        for proc in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(family, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        log.close()


# JavaScript run in the page: the dashboard's loss plot and the viewer's planes figure are plotly graph divs,
# whose `data` and `layout` hold exactly what is drawn; every trace of the planes carries its panel in `meta`.
VAL_POINTS = """() => {
  const g = document.querySelector('.gmmkit-dashboard .js-plotly-plot');
  if (!g || !g.data) return -1;
  return g.data.filter(t => (t.name || '').endsWith(' val')).reduce((n, t) => n + (t.x ? t.x.length : 0), 0);
}"""
PLANES = "document.querySelector('.gmmkit-dashboard .gmmkit-slice-viewer .js-plotly-plot')"
SLICE_TITLE = f"""() => {{
  const g = {PLANES};
  return g && g.layout && g.layout.title ? (g.layout.title.text || '') : '';
}}"""
TRACE = f"""([kind, plane, image]) => {{
  const g = {PLANES};
  const t = g && g.data && g.data.find(t => t.meta && t.meta.kind === kind && t.meta.plane === plane
                                          && (!image || t.meta.image === image));
  return t ? JSON.stringify([t.x, t.y, t.z]) : '';
}}"""
GREYS = (
    f"() => {{ const g = {PLANES}; "
    "return g && g.layout.coloraxis ? [g.layout.coloraxis.cmin, g.layout.coloraxis.cmax] : []; }"
)
# page coordinates of voxel (row, col) in the axial input panel (the figure's first axes, x and y)
AXIAL_POINT = f"""([row, col]) => {{
  const g = {PLANES}, box = g.getBoundingClientRect(), xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis;
  return [box.left + xa._offset + xa.l2p(col), box.top + ya._offset + ya.l2p(row)];
}}"""
# every animation frame, the live plot's validation points and the status line, as one sample when either
# changed: what the page showed while the first run trained, whatever the test process was doing meanwhile
SAMPLE_LIVE = f"""() => {{
  window.gmmkitSeen = [];
  const look = () => {{
    const status = document.querySelector('.gmmkit-dashboard .gmmkit-status');
    const now = [({VAL_POINTS})(), status ? status.innerText : ''];
    const last = window.gmmkitSeen[window.gmmkitSeen.length - 1];
    if (!last || last[0] !== now[0] || last[1] !== now[1]) window.gmmkitSeen.push(now);
    requestAnimationFrame(look);
  }};
  requestAnimationFrame(look);
}}"""
FIRST_RUN = (
    "() => { const c = document.querySelector('.gmmkit-runs .gmmkit-cell-run'); return c ? c.textContent : ''; }"
)
ALL_CELLS_RAN = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
  return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p));
}"""


def state(page, script, arg=None) -> str:
    """What ``script`` returns in the page now, as JSON (to wait for it to change)."""
    return page.evaluate(f"(a) => JSON.stringify(({script})(a))", arg)


def changed(page, script, before: str, arg=None, timeout=60_000):
    """Wait until ``script`` returns something other than ``before`` (a :func:`state`); returns it."""
    page.wait_for_function(f"(a) => JSON.stringify(({script})(a)) !== {json.dumps(before)}", arg=arg, timeout=timeout)
    return page.evaluate(script, arg)


def redrawn(figure, before: bytes, what: str, timeout: float = 60) -> None:
    """Wait until the figure's picture differs from ``before`` (plotly draws after the data changed)."""
    deadline = time.monotonic() + timeout
    while figure.screenshot() == before:
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)


def shoot(page, top, bottom, path) -> None:
    """A screenshot of the page from the top of ``top`` to the bottom of ``bottom`` (scrolled to ``top``)."""
    top.evaluate("e => e.scrollIntoView({block: 'start'})")
    time.sleep(0.5)
    a, b = top.bounding_box(), bottom.bounding_box()
    y0, y1 = max(a["y"], 0), min(b["y"] + b["height"], page.viewport_size["height"])
    page.screenshot(
        path=str(path), clip={"x": a["x"], "y": y0, "width": max(a["width"], b["width"]), "height": y1 - y0}
    )


def test_dashboard_runs_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    shots = lab["tmp"] / "screenshots"
    shots.mkdir()
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(lab["tmp"] / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1300},
        )
        page = browser.pages[0] if browser.pages else browser.new_page()
        try:
            page.set_default_timeout(120_000)
            page.goto(lab["url"])
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook")
            page.wait_for_function("() => document.body.innerText.includes('| Idle')", timeout=180_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu .lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()

            dashboard = page.locator(".gmmkit-dashboard")
            page.evaluate(SAMPLE_LIVE)
            dashboard.wait_for(state="visible", timeout=300_000)

            # the live plot while the first run trains: its points, and the status line, as the page showed them
            epochs = PARAMETERS["epochs"]
            page.wait_for_function(f"() => ({VAL_POINTS})() >= 3", timeout=300_000)
            shoot(page, dashboard, dashboard.locator(".js-plotly-plot").first, shots / "dashboard-training.png")
            page.wait_for_function(f"() => window.gmmkitSeen.some(([n, _]) => n >= {epochs})", timeout=300_000)
            seen = page.evaluate("() => window.gmmkitSeen")
            seen = seen[: next(i for i, (n, _) in enumerate(seen) if n >= epochs) + 1]  # the first run's, not the next
            counts = [n for n, _ in seen if n > 0]
            assert counts == sorted(counts) and counts[-1] == epochs, f"plot points seen: {seen}"
            mid_run = [status for n, status in seen if 0 < n < epochs]  # points drawn before the run ended
            assert mid_run, f"the plot gained no point while the run trained: {seen}"
            # the status line follows the epochs too
            assert any(f"/{epochs}" in status and "epoch" in status for status in mid_run), seen

            page.wait_for_function(ALL_CELLS_RAN, timeout=400_000)
            page.wait_for_function("() => document.body.innerText.includes('| Idle')")
            # what the notebook printed and left: test_notebooks.py's checks of 02, made on this same execution
            # (it runs the notebook itself only where this test cannot run)
            printed = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
            assert f"max_epochs after {epochs} epochs" in printed, printed
            assert "status stopped; the run ended" in printed, printed
            folder = lab["work"] / "runs" / "dashboard"
            assert sorted(p.name for p in folder.iterdir()) == ["01-strong-n2", "02-lsr-n2", "03-strong-n1"]
            assert json.loads((folder / "02-lsr-n2" / "summary.json").read_text())["status"] == "stopped"
            runs = dashboard.locator(".gmmkit-runs")
            assert "#3 strong n=1" in runs.inner_text()
            # the runs table sorts on a header click: by n, the one-worker run comes first
            first = state(page, FIRST_RUN)
            assert first.startswith('"#1 ')
            runs.get_by_role("button", name="n", exact=True).click()
            assert changed(page, FIRST_RUN, first).startswith("#3 ")
            # one run in detail: the first one's two ranks, the slowest named
            dashboard.locator(".widget-dropdown", has_text="details of").locator("select").select_option(
                label="#1 strong n=2"
            )
            # each panel updates on its own: wait for each to show the selected run (the logs once showed run #3's)
            page.wait_for_function(
                "() => ['#1 strong n=2', 'rank 1'].every("
                "t => document.querySelector('.gmmkit-ranks').innerText.includes(t))"
            )
            ranks = dashboard.locator(".gmmkit-ranks").inner_text()
            assert "rank 0" in ranks and "slowest: rank" in ranks, ranks
            page.wait_for_function(
                "() => document.querySelector('.gmmkit-logs').innerText.includes('#1 strong n=2 rank 1 output')"
            )
            logs = dashboard.locator(".gmmkit-logs").inner_text()
            assert "#1 strong n=2 rank 0 output" in logs and "#3 strong n=1 rank" not in logs, logs
            shoot(page, runs, dashboard.locator(".gmmkit-logs"), shots / "dashboard-runs.png")

            # the slice viewer: keyboard on a slider handle, as a user would
            page.wait_for_function(f"() => ({SLICE_TITLE})().includes('crosshair')", timeout=120_000)
            viewer = dashboard.locator(".gmmkit-slice-viewer")
            figure = viewer.locator(".js-plotly-plot").first
            figure.scroll_into_view_if_needed()
            before_title = state(page, SLICE_TITLE)
            before_png = figure.screenshot()
            handle = viewer.locator(".gmmkit-slice-slider .noUi-handle").first
            handle.click()
            for _ in range(4):
                page.keyboard.press("ArrowLeft")
            assert "crosshair (axial " in changed(page, SLICE_TITLE, before_title)
            redrawn(figure, before_png, "moving the slider did not change the image")

            # a window preset changes the greys
            greys = state(page, GREYS)
            viewer.locator(".gmmkit-window button", has_text="mediastinum").click()
            assert changed(page, GREYS, greys) == [-125, 225]
            redrawn(figure, before_png, "the mediastinum window did not change the image")

            # a click in the axial plane moves the crosshair in the coronal and sagittal planes
            coronal = state(page, TRACE, ["crosshair", "coronal", "input"])
            sagittal = state(page, TRACE, ["crosshair", "sagittal", "input"])
            x, y = page.evaluate(AXIAL_POINT, [3, 12])
            page.mouse.click(x, y)
            changed(page, TRACE, coronal, ["crosshair", "coronal", "input"])
            assert state(page, TRACE, ["crosshair", "sagittal", "input"]) != sagittal
            title = page.evaluate(SLICE_TITLE)  # a click within 8 px of a Gaussian's centre snaps to it
            where = re.search(r"coronal (\d+), sagittal (\d+)", title)
            assert where and abs(int(where[1]) - 3) <= 1 and abs(int(where[2]) - 12) <= 1, title

            # the epoch slider: the same cube's estimate at the first epoch kept (0, the initial weights)
            estimate = state(page, TRACE, ["image", "axial", "estimate"])
            viewer.locator(".gmmkit-epoch-slider .noUi-handle").first.click()
            for _ in range(6):
                page.keyboard.press("ArrowLeft")
            page.wait_for_function(f"() => ({SLICE_TITLE})().includes('initial weights')")
            changed(page, TRACE, estimate, ["image", "axial", "estimate"])
            for _ in range(6):
                page.keyboard.press("ArrowRight")
            page.wait_for_function(f"() => ({SLICE_TITLE})().includes('epoch {PARAMETERS['epochs']}')")
            viewer.locator(".gmmkit-window button", has_text="lung").click()  # the README's picture: lungs
            page.wait_for_function(f"() => JSON.stringify(({GREYS})()) === '[-1350,150]'")
            page.mouse.move(0, 0)  # no hover label or tooltip in the picture
            time.sleep(1.0)
            shoot(page, viewer, viewer.locator(".gmmkit-components"), shots / "slice_viewer.png")
        except Exception:
            page.screenshot(path=str(shots / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    if os.environ.get("GMMKIT_SCREENSHOTS"):
        final = Path(os.environ["GMMKIT_SCREENSHOTS"])
        final.mkdir(parents=True, exist_ok=True)
        for name in ("dashboard-training.png", "dashboard-runs.png", "slice_viewer.png"):
            shutil.copy(shots / name, final / name)
