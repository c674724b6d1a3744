"""Shared fixtures of the LightningModule tests."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this folder runs on one torch thread (the fixture of tests/conftest.py)."""
