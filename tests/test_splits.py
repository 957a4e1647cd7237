"""Deterministic k-fold splits: disjoint, covering, balanced, ISLES'22 stratified by volume."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from nmfseg.cli import app
from nmfseg.data.formats import open_dataset, write_case, write_dataset_metadata
from nmfseg.data.splits import (
    default_splits_path,
    load_splits,
    make_splits,
    save_splits,
    select_fold,
)
from nmfseg.errors import ConfigError, DataError
from nmfseg.phantoms.toy import make_toy_dataset, toy_affine

SHAPE = (16, 16, 16)
runner = CliRunner()


def _assert_partition(splits, ids, n_folds):
    assert len(splits) == n_folds
    vals = [c for s in splits for c in s["val"]]
    assert sorted(vals) == sorted(ids)  # every case validated exactly once
    sizes = [len(s["val"]) for s in splits]
    assert max(sizes) - min(sizes) <= 1
    for s in splits:
        assert not set(s["train"]) & set(s["val"])
        assert sorted(s["train"] + s["val"]) == sorted(ids)
        assert s["train"] == sorted(s["train"]) and s["val"] == sorted(s["val"])


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    root = tmp_path_factory.mktemp("b") / "brats"
    return open_dataset(make_toy_dataset(root, "brats2023", n_cases=11, shape=SHAPE))


@pytest.fixture(scope="module")
def isles(tmp_path_factory):
    """12 ISLES'22 cases with known lesion volumes (k^3 voxels, in a shuffled order)."""
    root = tmp_path_factory.mktemp("i") / "isles"
    sides = np.random.default_rng(7).permutation(np.arange(1, 13))
    for i, side in enumerate(sides):
        image = np.ones((2, *SHAPE), np.float32)
        label = np.zeros(SHAPE, np.uint8)
        label[:side, :side, :side] = 1
        write_case("isles22", root, f"sub-strokecase{i + 1:04d}", image, label, toy_affine())
    write_dataset_metadata("isles22", root)
    return open_dataset(root)


@pytest.mark.parametrize("n_folds", [2, 3, 5])
def test_shuffle_splits_partition_and_determinism(brats, n_folds):
    a = make_splits(brats, n_folds, seed=0)
    _assert_partition(a, brats.case_ids, n_folds)
    assert a == make_splits(brats, n_folds, seed=0)
    assert a != make_splits(brats, n_folds, seed=1)


def test_isles_is_stratified_by_lesion_volume(isles):
    # independent volumes: count mask voxels with nibabel
    volumes = {
        c.case_id: float(np.asarray(nib.load(c.label_path).dataobj).sum()) for c in isles.cases
    }
    ordered = sorted(volumes, key=volumes.get)
    for seed in range(4):
        splits = make_splits(isles, 5, seed=seed)
        _assert_partition(splits, isles.case_ids, 5)
        fold_of = {c: k for k, s in enumerate(splits) for c in s["val"]}
        for start in range(0, len(ordered), 5):  # each group of 5 by volume: 5 distinct folds
            group = ordered[start : start + 5]
            assert len({fold_of[c] for c in group}) == len(group), (seed, group)
        smallest, middle = set(ordered[:5]), set(ordered[5:10])
        for s in splits:  # every fold validates one small and one medium lesion
            assert len(set(s["val"]) & smallest) == 1 and len(set(s["val"]) & middle) == 1
    # seeds change which fold gets which case, not the stratification
    assert make_splits(isles, 5, seed=0) != make_splits(isles, 5, seed=1)
    shuffled = make_splits(isles, 5, seed=0, stratify=False)
    _assert_partition(shuffled, isles.case_ids, 5)


def test_stratified_needs_labels(tmp_path):
    root = make_toy_dataset(tmp_path, "isles22", n_cases=5, shape=SHAPE, with_labels=False)
    with pytest.raises(DataError, match="has no labels"):
        make_splits(open_dataset(root), 5)


def test_bad_fold_counts(brats):
    with pytest.raises(ConfigError, match="cannot make 12 folds from 11"):
        make_splits(brats, 12)
    with pytest.raises(ConfigError, match="cannot make 1 folds"):
        make_splits(brats, 1)


def test_select_fold(brats):
    splits = make_splits(brats, 5)
    assert select_fold(splits, 4) == splits[4]
    assert select_fold(splits, "2") == splits[2]
    every = select_fold(splits, "all")
    assert every["train"] == every["val"] == sorted(brats.case_ids)
    for bad in (5, -1):
        with pytest.raises(ConfigError, match=rf"--fold {bad} is out of range.*5 folds \(0-4\)"):
            select_fold(splits, bad)
    with pytest.raises(ConfigError, match="integer or 'all'"):
        select_fold(splits, "first")


def test_save_and_load(brats, tmp_path):
    path = tmp_path / "splits.json"
    splits = make_splits(brats, 3, seed=2)
    save_splits(splits, path)
    assert json.loads(path.read_text()) == splits  # nnU-Net splits_final.json shape
    assert load_splits(path, brats) == splits
    assert load_splits(path) == splits


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{broken", "cannot read JSON"),
        ("[]", "non-empty list"),
        ('[{"train": ["a"]}]', "fold 0 must be"),
        ('[{"train": ["a"], "val": ["a"]}]', "in both train and val"),
        ('[{"train": ["nobody"], "val": []}]', "not in the dataset"),
    ],
)
def test_bad_splits_files(brats, tmp_path, content, match):
    path = tmp_path / "splits.json"
    path.write_text(content)
    with pytest.raises(DataError, match=match) as info:
        load_splits(path, brats)
    assert str(path) in str(info.value)


def test_split_cli(tmp_path):
    root = make_toy_dataset(tmp_path / "isles", "isles22", n_cases=6, shape=SHAPE)
    result = runner.invoke(app, ["split", str(root), "--n-folds", "3", "--seed", "4"])
    assert result.exit_code == 0, result.output
    path = default_splits_path(open_dataset(root))
    assert path == root / "splits.json"
    assert (
        "stratified by lesion volume" in result.stdout and "fold 2: 4 train, 2 val" in result.stdout
    )
    assert json.loads(path.read_text()) == make_splits(open_dataset(root), 3, seed=4)
    # same again: fine; different seed: refused without --force, file untouched
    assert runner.invoke(app, ["split", str(root), "--n-folds", "3", "--seed", "4"]).exit_code == 0
    before = path.read_text()
    result = runner.invoke(app, ["split", str(root), "--folds", "3", "--seed", "5"])
    assert result.exit_code == 1 and "pass --force" in result.stderr
    assert path.read_text() == before
    result = runner.invoke(app, ["split", str(root), "--n-folds", "3", "--seed", "5", "--force"])
    assert result.exit_code == 0 and path.read_text() != before

    out = tmp_path / "elsewhere" / "s.json"
    assert runner.invoke(app, ["split", str(root), "-o", str(out)]).exit_code == 0
    assert len(json.loads(out.read_text())) == 5
    result = runner.invoke(app, ["split", str(root), "--n-folds", "7"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"nmfseg: error: cannot make 7 folds from 6 case(s) in {root}: "
        "need 2 <= folds <= number of cases"
    )
    assert "Traceback" not in result.output
