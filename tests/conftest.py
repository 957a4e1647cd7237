"""Fixtures for every test module (helpers to import are in ``helpers.py``).

- Every test runs on one intra-op thread: the tests are many small operations, and with
  ``-n 2`` workers on a 2-core machine spinning OpenMP threads cost more than they
  parallelize.
- ``@pytest.mark.slow`` marks end-to-end tests (trainings, the demo, subprocesses):
  ``pytest -m "not slow"`` is the inner loop.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
