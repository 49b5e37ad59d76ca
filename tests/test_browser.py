"""Open the tour notebook in a real browser (Debian's Chromium driven by Playwright), run every cell,
and check that a widget and an image output rendered. A screenshot is saved under artifacts/."""
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from _servers import free_port, stop

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"



@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: run the README's test command (make test), which installs it")
    port, token = free_port(), "seedx-browser"
    # work on a copy so the committed notebook (and its outputs) stay untouched
    work = tmp_path_factory.mktemp("nb")
    shutil.copy(ROOT / "notebooks" / "00_tour.ipynb", work / "00_tour.ipynb")
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(work / ".jupyter"))
    venv_bin = Path(os.sys.executable).parent
    proc = subprocess.Popen([str(venv_bin / "jupyter"), "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.token={token}", "--ServerApp.port_retries=0", "--ServerApp.allow_root=True",
                             f"--ServerApp.root_dir={work}", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api?token={token}", timeout=3)
            break
        except OSError:
            assert proc.poll() is None, "jupyter lab exited early"
            time.sleep(1)
    else:
        pytest.fail("JupyterLab did not start")
    yield f"http://127.0.0.1:{port}", token
    stop(proc)


def test_tour_runs_in_chromium_and_renders_a_widget_and_images(lab):
    from playwright.sync_api import sync_playwright

    url, token = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                                          "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/lab/tree/00_tour.ipynb?token={token}", timeout=90_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle'], .jp-Toolbar-kernelStatus", timeout=90_000)
            time.sleep(3)                                            # let the kernel settle
            # clear the saved outputs first, so what we find below was produced in this browser run
            page.click("text=Edit")
            page.click("text=Clear Outputs of All Cells")
            assert page.locator(".jp-OutputArea-output img").count() == 0
            page.click("text=Run")
            page.click("text=Run All Cells")
            # a live widget (the tiling viewer's drop-down) and image outputs must appear
            page.wait_for_selector(".jp-OutputArea-output .widget-dropdown select, .jp-OutputArea-output .jupyter-widgets",
                                   timeout=240_000)
            page.wait_for_function("document.querySelectorAll('.jp-OutputArea-output img').length >= 3", timeout=240_000)
            # wait until the last code cell has run (its execution count is filled in)
            page.wait_for_function(
                "(() => { const p = document.querySelectorAll('.jp-CodeCell .jp-InputPrompt');"
                " return p.length && /\\[\\d+\\]/.test(p[p.length - 1].textContent); })()", timeout=300_000)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
            assert not any("Traceback" in e or "Error" in e for e in errors), errors
            n_img = page.locator(".jp-OutputArea-output img").count()
            n_widget = page.locator(".jp-OutputArea-output .jupyter-widgets").count()
        finally:
            page.screenshot(path=str(ARTIFACTS / "00_tour.png"), full_page=False)
            browser.close()
    assert n_widget >= 1 and n_img >= 3
