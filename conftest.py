"""How `make test` spreads the suite over pytest-xdist's workers (``-n 2 --dist loadfile
--no-loadscope-reorder``: one worker per core, each file on one worker, so a notebook's cells share one kernel
and a test file's module fixtures are built once). A worker takes the next file in collection order when it
is nearly done with its last, so the order below is longest first: the files that took longest in a
profiled run (``pytest --durations=0``, see docs/experiments.md), then the other notebooks, then the many
short test files, which fill the gaps at the end. Without xdist pytest's order is kept.
"""
import pytest

LONGEST_FIRST = ("test_browser.py", "test_train.py", "08_train_your_own.ipynb", "11_typea_vs_typeb3.ipynb",
                 "test_benchmarks_equalities.py", "06_output_resampler_and_detokenizer.ipynb", "test_distributed.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if getattr(config, "workerinput", None) is None:        # not an xdist worker
        return

    def rank(it):
        name = it.path.name
        if name in LONGEST_FIRST:
            return LONGEST_FIRST.index(name)
        return len(LONGEST_FIRST) + (0 if it.path.suffix == ".ipynb" else 1)

    items.sort(key=rank)                                     # stable: a file's items stay together and in order
