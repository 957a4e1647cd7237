"""How ``nmfseg train`` shares the CPU's cores: the policy's numbers, ``OMP_NUM_THREADS``,
DDP, the line of a resume on other threads, and a tiny CPU run that computes on the threads
the policy gives and sets them back (conftest.py's ``OMP_NUM_THREADS=1`` removed where the
policy's own count is tested)."""

from __future__ import annotations

import pytest
import torch

from nmfseg.models.checkpoint import read_checkpoint
from nmfseg.phantoms.toy import make_toy_dataset
from nmfseg.training import cores
from nmfseg.training.cores import (
    CoreShare,
    omp_threads,
    share_cores,
    share_cores_here,
    thread_change,
)
from nmfseg.training.setup import prepare_run

# (cores, device, processes, workers given, threads given) -> (compute threads, workers)
POLICY = [
    # CPU: one worker per 4 cores of the process, at least one; every worker after the
    # first takes a core from the compute threads
    ((1, "cpu", 1, None, None), (1, 1)),
    ((2, "cpu", 1, None, None), (2, 1)),
    ((3, "cpu", 1, None, None), (3, 1)),
    ((4, "cpu", 1, None, None), (4, 1)),
    ((8, "cpu", 1, None, None), (7, 2)),
    ((16, "cpu", 1, None, None), (13, 4)),
    ((64, "cpu", 1, None, None), (61, 4)),  # at most 4 workers
    # workers given: the threads make room for all but the first, at least one thread
    ((2, "cpu", 1, 1, None), (2, 1)),
    ((2, "cpu", 1, 2, None), (1, 2)),
    ((8, "cpu", 1, 0, None), (8, 0)),
    ((8, "cpu", 1, 4, None), (5, 4)),
    # OMP_NUM_THREADS: the threads as given, the workers by the rule
    ((8, "cpu", 1, None, 2), (2, 2)),
    ((2, "cpu", 1, 1, 2), (2, 1)),
    # DDP on the CPU: the cores are divided among the processes first
    ((16, "cpu", 2, None, None), (7, 2)),
    ((8, "cpu", 2, None, None), (4, 1)),
    ((2, "cpu", 2, None, None), (1, 1)),
    ((2, "cpu", 4, None, None), (1, 1)),  # more processes than cores: one thread each
    ((16, "cpu", 4, None, 1), (1, 1)),  # torchrun's OMP_NUM_THREADS=1
    # CUDA: the process's cores, at least 1 and at most 4; torch's threads left alone
    ((1, "cuda", 1, None, None), (None, 1)),
    ((2, "cuda", 1, None, None), (None, 2)),
    ((16, "cuda", 1, None, None), (None, 4)),
    ((16, "cuda", 2, None, None), (None, 4)),
    ((16, "cuda", 8, None, None), (None, 2)),  # 8 ranks on 16 cores: 2 workers each
    ((2, "cuda", 4, None, None), (None, 1)),  # more ranks than cores: still one each
    ((16, "cuda", 1, 0, 3), (None, 0)),
]


@pytest.mark.parametrize(("given", "expected"), POLICY)
def test_the_policy_shares_the_cores(given, expected):
    share = share_cores(*given)
    assert (share.threads, share.workers) == expected
    per_process = max(1, given[0] // given[2])
    if given[3] is None:  # the default workers never take more than the process's cores
        assert share.workers <= min(4, per_process)
    if share.device == "cpu" and given[4] is None:  # nor do the threads, but keep one
        assert share.threads == max(1, per_process - max(0, share.workers - 1))


@pytest.mark.parametrize(
    "bad", [(0, "cpu"), (2, "cpu", 0), (2, "cpu", 1, -1), (2, "cpu", 1, None, 0), (2, "mps")]
)
def test_the_policy_refuses_impossible_counts(bad):
    with pytest.raises(ValueError):
        share_cores(*bad)


def test_the_split_is_said_in_one_line():
    assert str(share_cores(2, "cpu", workers=2)) == (
        "cpu: 1 compute thread + 2 data workers (2 cores)"
    )
    assert str(share_cores(8, "cpu", threads=1)) == (
        "cpu: 1 compute thread (OMP_NUM_THREADS) + 2 data workers (8 cores)"
    )
    assert str(share_cores(8, "cpu", processes=2)) == (
        "cpu: 4 compute threads + 1 data worker per process (2 processes on 8 cores)"
    )
    assert str(share_cores(8, "cuda")) == "cuda: 4 data workers (8 cores)"


@pytest.mark.parametrize(
    ("value", "threads"),
    [("1", 1), ("3", 3), (" 2 ", 2), ("4,2", 4), ("0", None), ("", None), ("x", None),
     ("²", None), ("٣", None), ("-1", None)],  # "²".isdigit() but int("²") raises
)  # fmt: skip
def test_omp_num_threads_is_read_as_torch_reads_it(value, threads):
    assert omp_threads({"OMP_NUM_THREADS": value}) == threads
    assert omp_threads({}) is None


def test_omp_num_threads_and_local_world_size_are_respected(monkeypatch):
    monkeypatch.setattr(cores, "cores_available", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert share_cores_here("cpu") == CoreShare("cpu", 2, 3, 8, 1, fixed=True)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert share_cores_here("cpu") == CoreShare("cpu", 2, 7, 8)
    assert share_cores_here("cpu", world_size=2) == CoreShare("cpu", 1, 4, 8, 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's: the processes on this machine
    assert share_cores_here("cpu", world_size=8) == CoreShare("cpu", 1, 2, 8, 4)
    assert share_cores_here(torch.device("cpu"), workers=2) == CoreShare("cpu", 2, 1, 8, 4)
    assert share_cores_here("cuda", world_size=8) == CoreShare("cuda", 2, None, 8, 4)
    for bad in ("²", "0", "x"):  # not a count: the run's world size
        monkeypatch.setenv("LOCAL_WORLD_SIZE", bad)
        assert share_cores_here("cpu", world_size=2) == CoreShare("cpu", 1, 4, 8, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "²")  # not a count: the policy's threads
    assert share_cores_here("cpu", world_size=2) == CoreShare("cpu", 1, 4, 8, 2)


def test_a_resume_on_other_threads_is_said_with_the_count_to_set():
    assert thread_change(3, 3, 1) is None
    assert thread_change(None, 2, 2) is None  # an older run on torch's count, the same now
    recorded = thread_change(2, 1, 8)
    assert recorded is not None and "\n" not in recorded
    assert recorded.startswith("resumed on 1 compute thread, but the run's steps so far ")
    assert recorded.endswith("set OMP_NUM_THREADS=2 to continue on 2")
    older = thread_change(None, 1, 2)  # begun before the policy: 2 threads beside 2 workers
    assert older is not None and "does not record them" in older
    assert older.endswith("set OMP_NUM_THREADS=2 to continue on 2")


def test_applied_sets_the_threads_and_then_the_callers_again():
    before = torch.get_num_threads()
    with share_cores(3, "cpu", threads=2).applied():
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), share_cores(3, "cpu", threads=2).applied():
        raise RuntimeError("a failed run sets them back too")
    assert torch.get_num_threads() == before
    with share_cores(8, "cuda").applied():  # on CUDA torch's count is left alone
        assert torch.get_num_threads() == before


@pytest.mark.slow
@pytest.mark.parametrize("progress", [False, True])
def test_a_cpu_run_computes_on_the_policys_threads(tmp_path, monkeypatch, capsys, progress):
    """A tiny run on the CPU with the default workers: the policy's compute threads during
    every step, the split said first (before the preprocessing bar when bars are shown), the
    caller's threads afterwards; through ``run_training`` and through ``Trainer.fit`` alone."""
    from nmfseg.training.distributed import init_distributed
    from nmfseg.training.trainer import Trainer, run_training

    monkeypatch.setattr(cores, "cores_available", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    seen: list[tuple[int, int]] = []

    class Watching(Trainer):
        def on_step_end(self, step, loss):
            seen.append((torch.get_num_threads(), self.share.workers))

    data = make_toy_dataset(tmp_path / "Toy", "isles22", n_cases=4, shape=(20, 20, 20))
    run = prepare_run(
        data, "segresnet_brats", 0, tmp_path / "runs",
        overrides={"steps": 2, "patch_size": [16, 16, 16], "n_folds": 2, "device": "cpu",
                   "val_every": 2},
        model_args={"init_filters": 8},
    )  # fmt: skip
    assert run.config["workers"] is None  # left to the trainer
    before = torch.get_num_threads()  # 1 (conftest.py)
    if progress:
        Watching(run, init_distributed("cpu"), progress=True).fit()
    else:
        run_training(run, progress=False, trainer=Watching)
    expected = share_cores(2, "cpu")
    assert seen == [(expected.threads, expected.workers)] * 2 == [(2, 1)] * 2
    assert torch.get_num_threads() == before
    first = capsys.readouterr().err.splitlines()[0]
    assert first == "nmfseg train: cpu: 2 compute threads + 1 data worker (2 cores)"
    assert read_checkpoint(run.fold_dir / "checkpoint_final.pt")["threads"] == 2
