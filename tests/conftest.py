"""Shared test options: ``--runslow`` enables tests marked slow (paper scale)."""

import os

import pytest

os.environ.setdefault("DDE_BACKEND", "pytorch")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: float64 oracle comparisons and timings do not depend
    on how BLAS splits its sums over threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
