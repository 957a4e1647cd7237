"""``nmfseg ablate``: inference-time NMF ablations on a fold's validation cases (paper Fig. 8)."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest
import torch

from helpers import cli, train_tiny
from nmfseg.analysis import ablate as ablate_module
from nmfseg.data.preprocess import CropRecord
from nmfseg.models import create_model
from nmfseg.phantoms.toy import make_toy_dataset
from nmfseg.training.checkpoint import atomic_save

pytestmark = pytest.mark.slow

MODEL = "swin_factorizer_isles"
QUICK = ("--iters", "1-2", "--ranks", "1-2", "--repeats", "1")  # every sweep, few values


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(dataset, run folder)`` of a 2-step Swin Factorizer, fold 1 of 2 (2 validation cases)."""
    return train_tiny(tmp_path_factory.mktemp("ablate"))


def _ablate(run, data, out, *options):
    return cli("ablate", "-m", run, "--data", data, "-o", out, "--device", "cpu", "-q", *options)


def _rows(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_setting_is_a_row_with_dice_and_time_and_the_panels(trained, tmp_path):
    data, run = trained
    res = _ablate(run, data, tmp_path, "--iters", "1-2", "--ranks", "1-2", "--repeats", "2")
    assert res.exit_code == 0, res.output
    progress = [line for line in res.output.splitlines() if line.startswith("[ablate] ")]
    assert re.fullmatch(  # the estimate comes first, in one line
        r"\[ablate\] about [\d.]+ (s|min|h): 18 settings x 2 case\(s\) x 2 repeat\(s\), each "
        r"pass beside one of the unmodified model \([\d.]+ s per pass, measured\)",
        progress[0],
    )
    assert len(progress) == 19 and progress[1].startswith("[ablate] 1/18 reference reference:")
    assert re.search(r"^(fastest within 1 Dice point of the unmodified model: |no setting within "
                     r"1 Dice point is faster)", res.output, re.M)  # fmt: skip

    keys = {
        "reference": ["reference"],
        "layers": [f"keep={k}" for k in range(6)],
        "remove": [f"remove={i}" for i in range(5)],
        "iters": ["iters=1", "iters=2"],
        "rank": ["rank=1,hals", "rank=2,hals", "rank=1,mu", "rank=2,mu"],
    }
    rows = {sweep: _rows(tmp_path / f"{sweep}.csv") for sweep in keys}
    assert {sweep: [r["key"] for r in found] for sweep, found in rows.items()} == keys
    reference = rows["reference"][0]
    for found in rows.values():
        for row in found:
            assert 0 <= float(row["dice_lesion"]) <= 1 and row["dice_mean"] == row["dice_lesion"]
            assert float(row["seconds"]) >= 0 and row["n_cases"] == "2"
    layers = {r["key"]: r for r in rows["layers"]}
    assert layers["keep=0"]["options"] == "--nmf-layers none"
    assert layers["keep=0"]["nmf_layers"] == "none" and layers["keep=2"]["nmf_layers"] == "0-1"
    assert layers["keep=5"]["note"] == "as trained (= reference)"  # not run twice
    assert layers["keep=5"]["dice_mean"] == reference["dice_mean"]
    assert rows["remove"][2]["options"] == "--nmf-layers 0-1,3-4"
    assert rows["rank"][2]["options"] == "--nmf-rank 1 --nmf-solver mu"
    assert rows["iters"][0]["nmf_iters"] == "1" and rows["iters"][1]["options"] == "--nmf-iters 2"

    fastest = _rows(tmp_path / "fastest.csv")
    assert "reference" in [r["key"] for r in fastest]
    floor = float(reference["dice_mean"]) - 0.01
    assert all(float(r["dice_mean"]) >= floor for r in fastest)
    assert (tmp_path / "fastest.md").read_text().startswith("# Fastest settings within 1 Dice")
    assert (tmp_path / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tmp_path / "ablate.json").read_text())
    assert record["fold"] == 1 and len(record["cases"]) == 2 and record["repeats"] == 2
    assert "each keeping the fastest of 2" in (tmp_path / "fastest.md").read_text()
    assert all(float(r["speedup"]) > 0 for r in fastest)
    assert float(reference["speedup"]) == 1.0


def _row(key, speedup, reference_seconds, dice="0.80", note=""):
    return {"key": key, "options": f"--{key}", "speedup": speedup, "dice_mean": dice,
            "reference_seconds_per_case": reference_seconds, "note": note}  # fmt: skip


#: (speed-ups and the unmodified model's times beside them, the closing line's start):
#: a speed-up is named only when it is beyond the spread of the unmodified model's times.
NOISE_CASES = [
    ("a busy machine: 3.27x within a ten-fold spread",
     [("keep=2", 3.27, 1.0), ("keep=3", 1.1, 10.0), ("iters=1", 0.9, 2.0), ("iters=2", 1.0, 9.0)],
     r"^no setting within 1 Dice point is faster beyond the timing noise: the unmodified "
     r"model's own time varied [\d.]+x between settings, and the fastest measured, keep=2 "
     r"\(3.27x\), is within it"),
    ("an idle machine: 1.8x beyond a 2% spread",
     [("keep=2", 1.8, 1.0), ("keep=3", 1.1, 1.01), ("iters=1", 0.9, 1.02), ("iters=2", 1.0, 1.0)],
     r"^fastest within 1 Dice point of the unmodified model: keep=2 \(--keep=2\), 1.80x "
     r"\(timing noise 1.0\dx\), mean Dice 80.0 vs 80.0$"),
    ("too few settings to measure the noise: named",
     [("iters=1", 1.5, 1.0), ("iters=2", 1.2, 1.5)],
     r"^fastest within 1 Dice point of the unmodified model: iters=1 \(--iters=1\), 1.50x, "),
    ("nothing faster", [("keep=2", 0.5, 1.0), ("keep=3", 0.7, 1.0), ("keep=4", 0.9, 1.1)],
     r"^no setting within 1 Dice point is faster than the unmodified model$"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "rows", "line"), NOISE_CASES, ids=[c[0] for c in NOISE_CASES])
def test_a_speedup_within_the_timing_noise_is_not_named(name, rows, line, tmp_path):
    from nmfseg.analysis.ablate_report import (
        fastest_line,
        fastest_rows,
        timing_noise,
        write_fastest,
    )

    reference = {**_row("reference", 1.0, 1.0), "options": "", "seconds_per_case": 1.0}
    timed = [{**_row(*r), "seconds_per_case": r[2] / r[1], "dice_lesion": 0.8} for r in rows]
    fastest = fastest_rows({**reference, "dice_lesion": 0.8}, timed)
    noise = timing_noise(timed)
    assert re.search(line, fastest_line(fastest, reference, noise))
    write_fastest(tmp_path, fastest, reference, ["lesion"], 1, noise)
    table = (tmp_path / "fastest.md").read_text()
    assert fastest_line(fastest, reference, noise) in table
    beyond = {r["key"]: r["beyond_noise"] for r in _rows(tmp_path / "fastest.csv")}
    assert beyond["reference"] == "no"


def test_a_setting_is_timed_beside_the_unmodified_model_fastest_pass_each(monkeypatch):
    """Passes alternate setting / unmodified; each keeps its fastest (noise only slows down)."""
    probs = np.zeros((1, 2, 2, 2), np.float32)
    probs[0, 0] = 1.0  # half the box predicted
    # case 1: setting 3, 1, 2 / reference 4, 6, 5; case 2: setting 5, 4, 6 / reference 8, 9, 7
    passes = iter([3.0, 4.0, 1.0, 6.0, 2.0, 5.0, 5.0, 8.0, 4.0, 9.0, 6.0, 7.0])
    monkeypatch.setattr(ablate_module, "_timed", lambda predictor, x: (probs, next(passes)))
    crop = CropRecord(shape=(2, 2, 2), start=(0, 0, 0), stop=(2, 2, 2))
    truth = np.zeros((1, 2, 2, 2), bool)
    truth[0, 0] = True
    configured = []
    predictor = type(
        "P", (), {"threshold": 0.5, "configure": lambda _, **c: configured.append(c)}
    )()
    cases = iter([(None, crop, truth), (None, crop, truth)])
    row = ablate_module._evaluate(predictor, cases, 2, ["lesion"], 3, {"nmf_iters": 1})
    assert row["seconds"] == 5.0 and row["seconds_per_case"] == 2.5  # min(3,1,2) + min(5,4,6)
    assert row["reference_seconds_per_case"] == 5.5 and row["speedup"] == 11.0 / 5.0  # 4 + 7
    assert row["dice_lesion"] == 1.0 and row["n_cases"] == 2
    assert len(configured) == 12 and configured[-1] == {"nmf_iters": 1}  # left as the setting
    assert configured[0]["nmf_iters"] is None  # the unmodified model: every switch as trained


def test_an_interrupted_ablation_resumes_and_other_settings_are_refused(trained, tmp_path):
    data, run = trained
    assert _ablate(run, data, tmp_path, "--sweeps", "layers,iters", *QUICK).exit_code == 0
    iters = tmp_path / "iters.csv"
    lines = iters.read_text().splitlines()
    iters.write_text("\n".join(lines[:-1]) + "\n")  # as if killed before the last setting
    before = (tmp_path / "layers.csv").stat().st_mtime_ns
    res = _ablate(run, data, tmp_path, "--sweeps", "layers,iters", *QUICK)
    assert res.exit_code == 0, res.output
    assert "[ablate] 8 of 9 settings already in" in res.output
    progress = [line for line in res.output.splitlines() if line.startswith("[ablate] 1/")]
    assert len(progress) == 1 and "iters iters=2" in progress[0]
    assert [r["key"] for r in _rows(iters)] == ["iters=1", "iters=2"]
    assert (tmp_path / "layers.csv").stat().st_mtime_ns == before
    assert not (tmp_path / "rank.csv").exists()

    res = _ablate(run, data, tmp_path, "--sweeps", "iters", "--overlap", "0.25", *QUICK)
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"nmfseg: error: {tmp_path} holds an ablation with different settings (see ablate.json); "
        "choose another -o, or delete the folder to start again"
    ]
    res = _ablate(run, data, tmp_path, "--sweeps", "iters", *QUICK[:-1], "3")
    assert res.exit_code == 1 and "holds an ablation with different repeats" in res.output


@pytest.fixture(scope="module")
def others(trained, tmp_path_factory):
    """A run with two folds, a SegResNet checkpoint and a dataset of other cases."""
    _, run = trained
    root = tmp_path_factory.mktemp("others")
    two = root / "two"
    for k in (0, 1):
        shutil.copytree(run / "fold_1", two / f"fold_{k}")
    torch.manual_seed(0)
    kwargs = dict(init_filters=8, in_channels=2, out_channels=1)
    config = {"patch_size": [16, 16, 16], "dataset": {"scheme": "isles22"}, "split": {
        "val": ["sub-strokecase0001"]}}  # fmt: skip
    ckpt = {"model_name": "segresnet_brats", "model_kwargs": kwargs, "config": config}
    net = create_model("segresnet_brats", **kwargs)
    atomic_save({**ckpt, "model": net.state_dict()}, root / "seg" / "checkpoint_final.pt")
    other = make_toy_dataset(root / "Other", "isles22", n_cases=1, shape=(20, 18, 16), seed=5)
    return {"two": two, "seg": root / "seg", "other": other}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--sweeps", "speed"), "--sweeps 'speed': choose from layers, remove, iters, rank or all"),
        (("--iters", "5-1"), "--iters '5-1': use a range 1-20 or a list 1,2,5"),
        (("--ranks", "0-2"), "--ranks '0-2': every value must be an integer >= 1"),
        (("--solvers", "hals,als"), "--solvers 'hals,als': choose from hals, mu"),
        (("--fold", "x"), "--fold 'x': must be a fold number (0, 1, ...)"),
        (("--fold", "3"), "no fold_3 (available: fold_1)"),
        (("--threshold", "1"), "--threshold '1': must be a number in (0, 1)"),
        (("-m", "two"), "has fold_0, fold_1; choose the fold to ablate"),
        (("-m", "seg"), "the network segresnet_brats has no NMF layers; ablate changes the NMF"),
        (("--data", "other"), "has no case sub-strokecase0002 of the fold's validation set"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(trained, others, tmp_path, change, message):
    data, run = trained
    option, value = change
    args = {"-m": run, "--data": data}
    extra: tuple = ()
    if option in args:
        args[option] = others[value]
    else:
        extra = change
    res = cli("ablate", "-m", args["-m"], "--data", args["--data"], "-o", tmp_path / "out",
              "--device", "cpu", "-q", *extra)  # fmt: skip
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.output, res.output
    assert not (tmp_path / "out").exists()
