"""Shared test setup: the hypothesis profile and the ``needs_data`` marker."""

import os

import pytest
from hypothesis import settings

# Loaded before any test module is imported, so every property test starts from it;
# a test that needs another number of examples says so with its own @settings.
# 60 examples keep the property tests to minutes; no deadline, because an engine
# call's time follows the machine's load and thread pool, not the drawn input.
settings.register_profile("stidi", max_examples=60, deadline=None)
settings.load_profile("stidi")


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked ``needs_data`` when $STIDI_RS_DATA is not set."""
    if os.environ.get("STIDI_RS_DATA"):
        return
    skip = pytest.mark.skip(
        reason="needs MNIST/Fashion-MNIST: STIDI_RS_DATA is not set "
        "(e.g. export STIDI_RS_DATA=../shared/datasets, see README)"
    )
    for item in items:
        if item.get_closest_marker("needs_data"):
            item.add_marker(skip)
