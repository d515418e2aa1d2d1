"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one intra-op thread: faster than two threads fighting over a busy
    2-core machine (OpenMP spin-waiting makes that several times slower), and restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
