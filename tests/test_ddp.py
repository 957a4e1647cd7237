"""DDP: ``torchrun --nproc_per_node 2 -m nmfseg train ...`` on CPU (gloo) keeps replicas equal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nmfseg.models import create_model
from nmfseg.models.checkpoint import read_checkpoint as load_checkpoint
from nmfseg.phantoms.toy import make_toy_dataset
from nmfseg.training.data import TAG_INIT, derive_seed

# Runs the real CLI (`nmfseg train ...`) in every torchrun process; the wrapper only keeps a
# copy of the weights each process ends with, so the test can compare the replicas.
LAUNCHER = textwrap.dedent(
    """
    import os, sys, torch
    import nmfseg.training.trainer as trainer
    from nmfseg.cli import app

    run_training = trainer.run_training

    def keep_weights(run, progress=True):
        model = run_training(run, progress)
        rank = int(os.environ["RANK"])
        torch.save(model.state_dict(), os.path.join(os.environ["DUMP_DIR"], f"rank{rank}.pt"))
        return model

    trainer.run_training = keep_weights
    app(sys.argv[1:], prog_name="nmfseg")
    """
)

pytestmark = pytest.mark.slow  # fresh interpreters / processes


def test_two_gloo_processes_train_identical_replicas(tmp_path: Path):
    data = make_toy_dataset(tmp_path / "ToyDDP", "isles22", n_cases=4, shape=(18, 18, 18))
    out, dump = tmp_path / "runs", tmp_path / "dump"
    dump.mkdir()
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(launcher), "train", str(data), "--model", "swin_factorizer_isles", "--fold", "0",
        "--out", str(out), "--steps", "3", "--patch-size", "16", "--n-folds", "2",
        "--workers", "0", "--val-every", "3", "--device", "cpu", "--quiet",
        "--model-arg", "channels=4,8,16,32,64",
    ]  # fmt: skip
    env = {**os.environ, "DUMP_DIR": str(dump), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("validation Dice") == 1  # rank 0 reports, rank 1 stays quiet

    w0 = torch.load(dump / "rank0.pt", weights_only=True)
    w1 = torch.load(dump / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    fold = out / "ToyDDP" / "swin_factorizer_isles" / "fold_0"
    ckpt = load_checkpoint(fold / "checkpoint_final.pt")
    assert ckpt["step"] == 3
    assert all(torch.equal(ckpt["model"][k], w0[k]) for k in w0)
    # Training moved the weights away from the (seeded) initialisation all ranks started from.
    torch.manual_seed(derive_seed(ckpt["config"]["seed"], TAG_INIT))
    init = create_model("swin_factorizer_isles", **ckpt["model_kwargs"]).state_dict()
    assert any(not torch.equal(init[k], w0[k]) for k in w0)
    assert (fold / "validation" / "summary.json").is_file()
    assert not list(fold.glob(".*.tmp"))
