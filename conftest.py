"""How `make test` spreads the suite over pytest-xdist's workers (``-n 2 --dist loadfile``: one worker per
core, each file on one worker, so a notebook's cells share one kernel and a test file's module fixtures are
built once). Files go to workers in collection order as workers free up, so the long ones (the notebooks,
then the browser test) are put first and the many short test files fill the gaps at the end. Without xdist
pytest's order is kept.
"""
import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if getattr(config, "workerinput", None) is None:        # not an xdist worker
        return
    rank = {".ipynb": 0, "test_browser.py": 1}
    items.sort(key=lambda it: rank.get(it.path.suffix, rank.get(it.path.name, 2)))   # stable: files stay in order
