"""02_distributed in a real browser: JupyterLab on 127.0.0.1 (random free port, a token), headless Debian
Chromium driven by Playwright (no browser download), Run All, then what a user sees:

* the dashboard appears;
* its live loss plot gains points while the first run trains (the plotly graph's own data, read in the page);
* moving the slice viewer's slider (keyboard on the slider handle) changes the image.

Screenshots go to a temporary directory; ``make screenshots`` (``GMMKIT_SCREENSHOTS=docs/screenshots``) also
copies the final ones there for the README. A plain ``make test`` leaves the tracked files alone.
"""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PARAMETERS = {"workers": 2, "dataset": "phantoms", "phantoms": 72, "val_size": 8, "components": 4, "batch_size": 8,
              "epochs": 6,
              "target_loss": None, "out": "runs/dashboard", "run_examples": True}
LAB_SETTINGS = {
    # every cell attached to the page, so widgets far down still render and can be read
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    # no news or update checks: the test never leaves 127.0.0.1
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
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
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"), "IPYTHONDIR": str(tmp_path / "ipython"),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(tmp_path / "jupyter.log", "w")
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={work}", "--ServerApp.disable_check_xsrf=False",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
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
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


# JavaScript run in the page: the dashboard's loss plot and the viewer's slice figure are plotly graph divs,
# whose `data` holds exactly what is drawn.
VAL_POINTS = """() => {
  const g = document.querySelector('.gmmkit-dashboard .js-plotly-plot');
  if (!g || !g.data) return -1;
  return g.data.filter(t => (t.name || '').endsWith(' val')).reduce((n, t) => n + (t.x ? t.x.length : 0), 0);
}"""
SLICE_TITLE = """() => {
  const g = document.querySelector('.gmmkit-dashboard .gmmkit-slice-viewer .js-plotly-plot');
  return g && g.layout && g.layout.title ? (g.layout.title.text || '') : '';
}"""
ALL_CELLS_RAN = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
  return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p));
}"""


def test_dashboard_runs_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    shots = lab["tmp"] / "screenshots"
    shots.mkdir()
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(lab["tmp"] / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        page = browser.pages[0] if browser.pages else browser.new_page()
        try:
            page.set_default_timeout(120_000)
            page.goto(lab["url"])
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook")
            page.wait_for_function("() => document.body.innerText.includes('| Idle')", timeout=180_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu .lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()

            dashboard = page.locator(".gmmkit-dashboard")
            dashboard.wait_for(state="visible", timeout=300_000)

            # the live plot while the first run trains
            counts, t0, status_mid_run = [], time.monotonic(), ""
            while time.monotonic() - t0 < 300:
                n = page.evaluate(VAL_POINTS)
                if not counts or n != counts[-1]:
                    counts.append(n)
                    if n >= 3 and not status_mid_run:  # mid-run: the status line follows the epochs too
                        status_mid_run = dashboard.locator(".gmmkit-status").inner_text()
                        dashboard.scroll_into_view_if_needed()
                        dashboard.screenshot(path=str(shots / "dashboard-training.png"))
                if n >= PARAMETERS["epochs"]:
                    break
                time.sleep(0.1)
            growing = [c for c in counts if c > 0]
            assert len(growing) >= 3 and growing == sorted(growing), f"plot points seen: {counts}"
            assert f"/{PARAMETERS['epochs']}" in status_mid_run and "epoch" in status_mid_run, status_mid_run

            page.wait_for_function(ALL_CELLS_RAN, timeout=400_000)
            page.wait_for_function("() => document.body.innerText.includes('| Idle')")
            assert "#3 strong n=1" in dashboard.locator(".gmmkit-runs").inner_text()
            page.wait_for_function(f"() => ({SLICE_TITLE})().includes('slice')", timeout=120_000)
            dashboard.scroll_into_view_if_needed()
            dashboard.screenshot(path=str(shots / "dashboard.png"))

            # the slice viewer: keyboard on the slider handle, as a user would
            viewer = dashboard.locator(".gmmkit-slice-viewer")
            figure = viewer.locator(".js-plotly-plot").first
            figure.scroll_into_view_if_needed()
            before_title = page.evaluate(SLICE_TITLE)
            before_png = figure.screenshot(path=str(shots / "slices-before.png"))
            handle = viewer.locator(".gmmkit-slice-slider .noUi-handle").first
            handle.click()
            for _ in range(4):
                page.keyboard.press("ArrowLeft")
            page.wait_for_function(f"() => ({SLICE_TITLE})() !== {json.dumps(before_title)}", timeout=60_000)
            time.sleep(1.0)  # let plotly finish drawing
            after_png = figure.screenshot(path=str(shots / "slices-after.png"))
            after_title = page.evaluate(SLICE_TITLE)
            assert after_title != before_title and "slice" in after_title
            assert after_png != before_png, "moving the slider did not change the image"
            viewer.scroll_into_view_if_needed()
            viewer.screenshot(path=str(shots / "slice_viewer.png"))
        except Exception:
            page.screenshot(path=str(shots / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    if os.environ.get("GMMKIT_SCREENSHOTS"):
        final = Path(os.environ["GMMKIT_SCREENSHOTS"])
        final.mkdir(parents=True, exist_ok=True)
        for name in ("dashboard-training.png", "dashboard.png", "slice_viewer.png"):
            shutil.copy(shots / name, final / name)
