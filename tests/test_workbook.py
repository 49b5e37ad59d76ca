"""The workbook itself: the README's lab command starts JupyterLab; notebook pairs are in sync."""
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import jupytext
import pytest
from _servers import free_port, stop

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"



def test_readme_opens_with_the_two_commands():
    lines = [ln.strip() for ln in (ROOT / "README.md").read_text().splitlines()]
    fence = lines.index("```bash")
    cmds = [ln.split("#")[0].strip() for ln in lines[fence + 1: lines.index("```", fence + 1)]]
    assert cmds == ["make lab", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_lab_starts_jupyterlab_on_notebooks():
    port = free_port()
    args = f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --ServerApp.token=seedx --ServerApp.port_retries=0"
    proc = subprocess.Popen(["make", "-s", "lab", f"LAB_ARGS={args}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, last = time.time() + 120, None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token=seedx", timeout=5) as r:
                    listing = json.load(r)
                break
            except OSError as e:
                last = e
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                time.sleep(1)
        else:
            pytest.fail(f"JupyterLab did not answer on port {port}: {last}")
        names = {item["name"] for item in listing["content"]}
        assert "00_tour.ipynb" in names or "01_anyres.ipynb" in names   # served from notebooks/
    finally:
        stop(proc)


def _sources(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("py", sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")), ids=lambda p: p.stem)
def test_notebook_pair_in_sync(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{py.name} has no paired {ipynb.name}"
    a = jupytext.read(py)
    b = jupytext.read(ipynb)
    assert _sources(a) == _sources(b), f"{py.name} and {ipynb.name} differ: run `jupytext --sync {py}`"
    # the .ipynb carries executed outputs for nbval to compare against
    code = [c for c in b.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), f"{ipynb.name} is not fully executed"


def test_every_ipynb_has_a_py():
    for nb in NOTEBOOKS.glob("*.ipynb"):
        assert nb.with_suffix(".py").exists(), f"{nb.name} has no paired .py"
