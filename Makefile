# The two commands a new user needs (see README): `make lab` and `make test`.
# Both create and reuse a local virtual environment in .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.seedx-installed

.PHONY: lab test venv clean-venv browser

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch is pinned first so that no CUDA build is pulled in on a CPU machine
	$(PY) -m pip install --disable-pip-version-check -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m pip install --disable-pip-version-check -q -e '.[lab,test]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c 'import seedx_lab, torch, transformers, diffusers, nbval, jupytext, jupyterlab, hypothesis, xdist'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# The browser test drives Debian's Chromium (no browser download by Playwright).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null; }; }
	@command -v chromium >/dev/null 2>&1 || { echo "could not install chromium (apt-get install chromium)"; exit 1; }

# extra options for JupyterLab, e.g. `make lab LAB_ARGS="--no-browser --port 8899"`
LAB_ARGS ?=
# allow_root only when actually running as root (e.g. in a container); a normal user never needs it
ROOT_ARGS := $(shell [ "$$(id -u)" = 0 ] && echo --ServerApp.allow_root=True)
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks $(ROOT_ARGS) $(LAB_ARGS)

# two pytest-xdist workers, one per core, each file on one worker (conftest.py orders the long files first);
# one torch thread each, since two workers already fill both cores
test: $(STAMP) browser
	OMP_NUM_THREADS=1 $(PY) -m pytest tests notebooks -n 2 --dist loadfile --no-loadscope-reorder --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider

clean-venv:
	rm -rf $(VENV)
