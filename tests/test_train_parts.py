"""The pieces of a training run, without one: the shipped recipes and the recipe a dataset
and a preset choose, finding checkpoints, the RNG state, the LR schedule, ``progress.png``.

``nmfseg train`` end to end is ``tests/test_train.py``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from nmfseg.errors import DataError
from nmfseg.models import load_model
from nmfseg.models.checkpoint import CHECKPOINT_NAMES, find_checkpoint
from nmfseg.phantoms.toy import make_toy_dataset
from nmfseg.training.checkpoint import atomic_save, capture_rng_state, restore_rng_state
from nmfseg.training.config import load_recipe, validate_config
from nmfseg.training.setup import prepare_run
from nmfseg.training.trainer import WarmupCosine

PAPER_AUGMENTATION = {
    "affine": {"prob": 0.15, "rotate_deg": [-30.0, 30.0], "scale": [0.7, 1.3]},
    "flip": {"prob": 0.5},
    "noise": {"prob": 0.15, "variance": [0.0, 0.1]},
    "smooth": {"prob": 0.15, "sigma": [0.5, 1.5]},
    "scale_intensity": {"prob": 0.15, "factor": [0.7, 1.3]},
    "shift_intensity": {"prob": 0.15, "offset": [-0.1, 0.1]},
    "contrast": {"prob": 0.15, "gamma": [0.7, 1.5]},
}


@pytest.mark.parametrize(("recipe", "patch"), [("brats", 128), ("isles", 64), ("default", None)])
def test_shipped_recipes_hold_the_paper_values(recipe, patch):
    cfg = validate_config(load_recipe(recipe))
    assert cfg["patch_size"] == (None if patch is None else [patch] * 3)
    assert (cfg["batch_size"], cfg["steps"], cfg["scheduler"]["warmup_steps"]) == (2, 100000, 2000)
    assert cfg["optimizer"]["lr"] == 1e-4 and cfg["optimizer"]["weight_decay"] == 1e-2
    assert cfg["loss"] == {"dice_eps": 1e-5, "ds_weights": [1.0, 0.5, 0.25], "ds_target": "nearest"}
    assert cfg["augmentation"] == PAPER_AUGMENTATION
    assert cfg["validation"]["overlap"] == 0.5 and cfg["validation"]["threshold"] == 0.5
    assert cfg["amp"] is None and cfg["compile"] is False


def test_recipe_follows_the_scheme_and_the_preset_patch(tmp_path):
    from nmfseg.data.schemes import SCHEMES
    from nmfseg.models import model_info

    assert [SCHEMES[s].recipe for s in SCHEMES] == [
        "brats", "brats", "brats", "isles", "default"
    ]  # fmt: skip
    nnunet = make_toy_dataset(tmp_path / "Dataset001_Toy", "nnunet", n_cases=5, shape=(12,) * 3)
    run = prepare_run(
        nnunet, "swin_factorizer_brats", 0, tmp_path / "runs",
        overrides={"steps": 10}, model_args={"channels": [8, 16, 32, 64, 128]},
    )  # fmt: skip
    assert run.config["patch_size"] == list(model_info("swin_factorizer_brats").patch_size)
    assert run.config["scheduler"]["warmup_steps"] == 0 and run.notes  # 2000 >= 10 steps
    assert not (tmp_path / "runs").exists()  # preparing writes nothing


def test_find_checkpoint_prefers_final_then_best_then_last(tmp_path):
    for step, name in enumerate(CHECKPOINT_NAMES[::-1]):
        atomic_save({"step": step}, tmp_path / name)
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporary files
    for name in CHECKPOINT_NAMES:
        assert find_checkpoint(tmp_path) == tmp_path / name
        (tmp_path / name).unlink()
    with pytest.raises(DataError, match="no checkpoint"):
        find_checkpoint(tmp_path)
    (tmp_path / "checkpoint_last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot load checkpoint"):
        load_model(tmp_path)


def test_rng_state_round_trip():
    import random

    state = capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(torch.load(_save(state), weights_only=True))
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def _save(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_warmup_cosine_schedule():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(warmup=4, total=20))
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4])  # linear warm-up
    assert lrs[4] == pytest.approx(1e-4) and all(np.diff(lrs[4:]) < 0)  # then cosine down
    assert lrs[12] == pytest.approx(0.5e-4)  # half-way through the cosine
    assert 0 < lrs[-1] < 1e-6


#: (log rows, what the loss panel shows): a short run's one loss point is drawn as a dot, no
#: loss at all is said in words; step ticks are whole numbers.
PROGRESS_ROWS = [
    ([{"step": 1, "loss": 1.5, "lr": 1e-4, "time": 0.3},
      {"step": 2, "lr": 2e-4, "time": 0.6, "val_dice": 0.5, "val_dice_lesion": 0.5}], "dot"),
    ([{"step": 2, "lr": 1e-4, "time": 0.6, "val_dice": 0.5}], "text"),
    ([{"step": s, "loss": 1.0 / s, "lr": 1e-4, "time": s} for s in range(1, 4)], "dot"),
    ([{"step": s, "loss": 1.0 / s, "lr": 1e-4, "time": s} for s in range(1, 200)], "line"),
]  # fmt: skip


@pytest.mark.parametrize(("rows", "shown"), PROGRESS_ROWS)
def test_progress_png_of_a_short_run(rows, shown, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from nmfseg.training.progress import plot_progress

    figures = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig),
                                                                 real(fig, *a, **k)))  # fmt: skip
    plot_progress(rows, tmp_path / "progress.png")
    assert (tmp_path / "progress.png").read_bytes()[:4] == b"\x89PNG"
    ax_loss, _, ax_lr = figures[0].axes
    if shown == "text":
        assert [t.get_text() for t in ax_loss.texts] == ["no training loss logged yet"]
    else:
        (line,) = ax_loss.get_lines()
        assert (line.get_marker() == ".") == (shown == "dot")
    ticks = [t for t in ax_lr.get_xticks() if ax_lr.get_xlim()[0] <= t <= ax_lr.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
