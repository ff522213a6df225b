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
