"""Shared fixtures of the LightningModule tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tests share two cores with other work: one thread each keeps them fast and deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
