"""Open the tour notebook in a real browser (Debian's Chromium driven by Playwright), run every cell, check
that a widget and an image output rendered, and that the widget's view changes when one of its controls
does; then, for every other notebook that holds a widget, run it up to its last widget and do the same
control check on every widget it shows. Screenshots are saved under artifacts/."""
import json
import os
import re
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
_MAKES_WIDGET = re.compile(r"\bwidgets\.\w+\(")
# the notebooks that hold a widget, but the tour, which its own test runs whole
WIDGET_NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
                          if p.name != "00_tour.ipynb" and _MAKES_WIDGET.search(p.read_text()))


def _write_cleared(src: Path, dst: Path, up_to_last_widget: bool) -> None:
    """A copy of notebook ``src`` with its outputs cleared (so what a test finds was produced in the browser),
    cut after its last cell that builds (and shows) a widget if ``up_to_last_widget``."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    if up_to_last_widget:
        end = max(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and _MAKES_WIDGET.search(c.source))
        nb.cells = nb.cells[: end + 1]
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbformat.write(nb, dst)


def _code_cells(path: Path) -> list[str]:
    """The sources of the code cells of notebook ``path`` up to its last one that builds a widget."""
    import nbformat

    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    return cells[: max(i for i, c in enumerate(cells) if _MAKES_WIDGET.search(c)) + 1]


def _launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, headless=True,
                             args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                                   "--disable-background-networking", "--disable-component-update", "--disable-sync"])


# what the widget shows: its pictures and its text (a change of control must change one of them)
_VIEW_JS = """() => Array.from(document.querySelectorAll('.jp-OutputArea-output .jupyter-widgets'))
    .map(e => e.innerText + Array.from(e.querySelectorAll('img')).map(i => i.src.length + ':' + i.src.slice(-64)).join('|'))
    .join('#')"""
_KERNEL_IDLE = ".jp-Notebook-ExecutionIndicator[data-status='idle']"
# the last code cell has run: its execution count is filled in
_LAST_CELL_RAN = ("(() => { const p = document.querySelectorAll('.jp-CodeCell .jp-InputPrompt');"
                  " return p.length && /\\[\\d+\\]/.test(p[p.length - 1].textContent); })()")
# a cell's own outputs that show a widget (not the output areas that some widgets hold inside)
_WIDGET_OUTPUTS = ".jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output:has(.jupyter-widgets)"



def _run_all(page, tries: int = 3) -> None:
    """Run > Run All Cells from the menu bar, by exact labels (a bare ``text=Run`` also matches notebook text),
    and see a cell start; a click that a late layout swallowed is tried again."""
    started = "document.querySelectorAll('.jp-InputArea-prompt').length && Array.from(document.querySelectorAll(" \
              "'.jp-InputArea-prompt')).some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))"
    for attempt in range(tries):
        page.locator(".jp-Notebook .jp-Cell").first.click()            # the notebook must be the current widget
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).first.click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).first.click()
        try:
            page.wait_for_function(f"() => {started}", timeout=30_000)
            return
        except Exception:
            if attempt == tries - 1:
                raise
            page.keyboard.press("Escape")


def _open(page, url: str) -> None:
    """Load a notebook page and wait until its kernel is idle (Run All sent earlier may be lost)."""
    page.goto(url, timeout=90_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    page.wait_for_selector(_KERNEL_IDLE, state="attached", timeout=90_000)


def _settled_view(page, timeout: float = 120) -> str:
    """The widgets' view once the kernel is idle (no widget callback still computing) and the view has
    stopped changing (three equal readings 0.4 s apart), so that a later change is the control's doing."""
    seen, deadline = [], time.time() + timeout
    page.wait_for_selector(_KERNEL_IDLE, state="attached", timeout=timeout * 1000)
    while time.time() < deadline:
        seen.append(page.evaluate(_VIEW_JS))
        if len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]:
            break
        time.sleep(0.4)
    return seen[-1]


def _change_a_control(page, out) -> str:
    """Change one control of the widget shown in output area ``out`` (a drop-down, else a slider, else a
    button), wait until the widgets' view differs from before, and name the control."""
    before = _settled_view(page)
    out.scroll_into_view_if_needed()
    if out.locator(".widget-dropdown select").count():
        select = out.locator(".widget-dropdown select").first
        n, current = select.evaluate("s => [s.options.length, s.selectedIndex]")
        select.select_option(index=(current + 1) % n)
        control = "drop-down"
    elif out.locator(".widget-slider .noUi-handle, .widget-slider .ui-slider-handle").count():
        handle = out.locator(".widget-slider .noUi-handle, .widget-slider .ui-slider-handle").first
        handle.click()
        handle.press("ArrowRight")
        control = "slider"
    else:
        out.locator(".widget-button").last.click()
        control = "button"
    page.wait_for_function(f"(() => ({_VIEW_JS})() !== {json.dumps(before)})()", timeout=240_000)
    return control


def _change_every_widget(page) -> list[str]:
    """``_change_a_control`` on every widget the notebook's cells show, in order; the controls changed."""
    outs = page.locator(_WIDGET_OUTPUTS)
    return [_change_a_control(page, outs.nth(i)) for i in range(outs.count())]


@pytest.fixture(scope="module")
def chromium():
    """One headless Chromium for the module; each test opens its own page."""
    from playwright.sync_api import sync_playwright

    p = sync_playwright().start()
    browser = _launch(p)
    yield browser
    browser.close()
    p.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: run the README's test command (make test), which installs it")
    port, token = free_port(), "seedx-browser"
    # work on a copy so the committed notebook (and its outputs) stay untouched
    work = tmp_path_factory.mktemp("nb")
    _write_cleared(ROOT / "notebooks" / "00_tour.ipynb", work / "00_tour.ipynb", up_to_last_widget=False)
    for nb in WIDGET_NOTEBOOKS:
        _write_cleared(nb, work / f"widget_{nb.name}", up_to_last_widget=True)
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


def test_tour_runs_in_chromium_and_renders_a_widget_and_images(lab, chromium):
    url, token = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _open(page, f"{url}/lab/tree/00_tour.ipynb?token={token}")
        assert page.locator(".jp-OutputArea-output img").count() == 0
        _run_all(page)
        # a live widget (the tiling viewer's drop-down) and image outputs must appear
        page.wait_for_selector(".jp-OutputArea-output .widget-dropdown select, .jp-OutputArea-output .jupyter-widgets",
                               timeout=240_000)
        page.wait_for_function("document.querySelectorAll('.jp-OutputArea-output img').length >= 3", timeout=240_000)
        page.wait_for_function(_LAST_CELL_RAN, timeout=300_000)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
        assert not any("Traceback" in e or "Error" in e for e in errors), errors
        n_img = page.locator(".jp-OutputArea-output img").count()
        n_widget = page.locator(".jp-OutputArea-output .jupyter-widgets").count()
        controls = _change_every_widget(page)
    finally:
        page.screenshot(path=str(ARTIFACTS / "00_tour.png"), full_page=False)
        page.close()
    assert n_widget >= 1 and n_img >= 3 and controls == ["drop-down"]


@pytest.mark.parametrize("nb", WIDGET_NOTEBOOKS, ids=lambda p: p.stem)
def test_every_widget_answers_a_control_in_chromium(lab, chromium, nb):
    url, token = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    try:
        # a workspace of its own, reset: JupyterLab would otherwise reopen the earlier tests' notebooks,
        # and Run All could go to one of them
        _open(page, f"{url}/lab/workspaces/{nb.stem.replace('_', '-')}/tree/widget_{nb.name}?token={token}&reset")
        _run_all(page)
        page.wait_for_function(_LAST_CELL_RAN, timeout=300_000)
        controls = _change_every_widget(page)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
        assert not any("Traceback" in e for e in errors), errors
    finally:
        page.screenshot(path=str(ARTIFACTS / f"{nb.stem}_widget.png"), full_page=False)
        page.close()
    # every cell that builds a widget shows at least one (notebook 11 shows one per arm)
    assert len(controls) >= sum(bool(_MAKES_WIDGET.search(c)) for c in _code_cells(nb)), controls
    assert set(controls) <= {"drop-down", "slider", "button"}
