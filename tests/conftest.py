"""Fixtures shared by the test files.

``model``: the random stand-in ``build_model(0).eval()`` (seedx-tiny's shapes, untrained), built once per
session. Each module that asks for it also gets the global torch RNG as ``build_model(0)`` leaves it, so
a file sees the same random numbers as when it built its own copy. Tests must not change the model
for good (monkeypatch and removed hooks are fine). A file that needs another model defines its own
``model`` fixture, which overrides this one.

``shipped``: the shipped checkpoint ``load("seedx-tiny")``, loaded once per session.

Every test leaves torch's thread count as it found it (the trainers give it back after a run; this holds the
other tests to it): under ``make test`` (one thread per worker, two workers on two cores) a worker left on two
threads runs every later test two threads against the other worker, several times slower.
"""
import pytest
import torch


@pytest.fixture(scope="session")
def _untrained():
    from seedx_lab.training import build_model

    m = build_model(0).eval()
    return m, torch.get_rng_state()


@pytest.fixture(scope="module")
def model(_untrained):
    m, rng = _untrained
    torch.set_rng_state(rng)
    return m


@pytest.fixture(scope="session")
def shipped():
    from seedx_lab import load

    return load("seedx-tiny")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
