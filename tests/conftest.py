"""Fixtures for every test module (helpers to import are in ``helpers.py``).

- Every test runs on one intra-op thread: the tests are many small operations, and with
  ``-n 2`` workers on a 2-core machine spinning OpenMP threads cost more than they
  parallelize. ``OMP_NUM_THREADS=1`` is set too, so a training run in the test process
  keeps one thread (``nmfseg.training.cores`` would otherwise compute on every core less the
  data workers) and a subprocess computes on the same count as the test process, which
  bitwise comparisons of the two need; a test of the thread policy itself removes it.
- ``@pytest.mark.slow`` marks end-to-end tests (trainings, the demo, subprocesses):
  ``pytest -m "not slow"`` is the inner loop.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
