"""Readers, writers, detection and toy data, for all five on-disk formats.

File names and label maps are spelled out here independently of ``nmfseg.data`` (from the
datasets' documentation), so a wrong entry in the scheme table or a writer that puts a
channel in the wrong file fails these tests.
"""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from helpers import NNUNET_BRATS_JSON
from nmfseg.data.formats import (
    case_output_name,
    detect_format,
    get_format,
    list_formats,
    load_case,
    open_case,
    open_dataset,
    open_input,
    write_case,
    write_dataset_metadata,
)
from nmfseg.data.nifti import write_label
from nmfseg.data.schemes import (
    SCHEMES,
    scheme_from_nnunet_json,
)
from nmfseg.errors import ConfigError, DataError
from nmfseg.phantoms.toy import make_toy_case, make_toy_dataset, toy_affine

SHAPE = (24, 28, 30)  # odd, different sizes per axis: catches transposed axes

# The real on-disk layout of case "ID", per format: image files in the model's channel order.
REAL_FILES = {
    "msd_brats": ["imagesTr/ID.nii.gz"],  # one 4D file: FLAIR, T1w, t1gd, T2w (channels last)
    "brats2021": [f"ID/ID_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")],
    "brats2023": [f"ID/ID-{m}.nii.gz" for m in ("t2f", "t1n", "t1c", "t2w")],
    "isles22": [f"ID/ses-0001/dwi/ID_ses-0001_{m}.nii.gz" for m in ("dwi", "adc")],
    "nnunet": [f"imagesTr/ID_{i:04d}.nii.gz" for i in range(4)],
}
REAL_LABEL = {
    "msd_brats": "labelsTr/ID.nii.gz",
    "brats2021": "ID/ID_seg.nii.gz",
    "brats2023": "ID/ID-seg.nii.gz",
    "isles22": "derivatives/ID/ses-0001/ID_ses-0001_msk.nii.gz",
    "nnunet": "labelsTr/ID.nii.gz",
}
CASE_IDS = {
    "msd_brats": "BRATS_007",
    "brats2021": "BraTS2021_00042",
    "brats2023": "BraTS-GLI-00042-001",
    "isles22": "sub-strokecase0042",
    "nnunet": "BraTS2021_00042",
}


def _channel_image(n_channels: int) -> np.ndarray:
    """Channel c is 10 * (c + 1) in a box, 0 around it."""
    image = np.zeros((n_channels, *SHAPE), np.float32)
    for c in range(n_channels):
        image[c, 3:-3, 4:-4, 5:-5] = 10.0 * (c + 1)
    return image


# --------------------------------------------------------------------------- writers/readers


@pytest.mark.parametrize("fmt", list_formats())
def test_write_case_uses_real_layout_and_channel_order(tmp_path, fmt):
    scheme = SCHEMES[fmt]
    case_id = CASE_IDS[fmt]
    image = _channel_image(scheme.in_channels)
    label = np.zeros(SHAPE, np.uint8)
    label[5:9, 6:10, 7:12] = max(scheme.labels)
    affine = toy_affine()
    write_case(fmt, tmp_path, case_id, image, label, affine)
    write_dataset_metadata(fmt, tmp_path)

    files = [tmp_path / f.replace("ID", case_id) for f in REAL_FILES[fmt]]
    if fmt == "msd_brats":
        data = np.asarray(nib.load(files[0]).dataobj)
        assert data.shape == (*SHAPE, 4)  # channels last
        assert [float(data[12, 14, 15, c]) for c in range(4)] == [10.0, 20.0, 30.0, 40.0]
    else:
        for c, path in enumerate(files):
            img = nib.load(path)
            assert img.shape == SHAPE and np.allclose(img.affine, affine, atol=1e-5)
            assert float(img.dataobj[12, 14, 15]) == 10.0 * (c + 1), path.name
    seg = nib.load(tmp_path / REAL_LABEL[fmt].replace("ID", case_id))
    assert seg.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(seg.dataobj), label)

    ds = open_dataset(tmp_path)
    assert ds.fmt == fmt and ds.case_ids == [case_id] and ds.has_labels
    data = load_case(ds.cases[0])
    assert data.image.dtype == np.float32 and data.image.shape == (scheme.in_channels, *SHAPE)
    for c in range(scheme.in_channels):
        assert float(data.image[c, 12, 14, 15]) == 10.0 * (c + 1)
        assert float(data.image[c, 0, 0, 0]) == 0.0
    np.testing.assert_array_equal(data.label, label)
    np.testing.assert_allclose(data.affine, affine, atol=1e-5)
    assert data.spacing == (1.2, 1.0, 1.5) and data.shape == SHAPE


@pytest.mark.parametrize("fmt", list_formats())
def test_toy_dataset_round_trip(tmp_path, fmt):
    root = make_toy_dataset(tmp_path / fmt, fmt, n_cases=3, shape=SHAPE, seed=3)
    assert detect_format(root) == fmt
    ds = open_dataset(root)
    assert ds.case_ids == [get_format(fmt).case_id(i, "toy") for i in range(3)]
    assert len(ds) == 3 and ds.has_labels and ds.scheme.name == fmt
    for case in ds.cases:
        data = load_case(case)
        assert data.image.shape == (ds.scheme.in_channels, *SHAPE)
        assert set(np.unique(data.label).tolist()) <= set(ds.scheme.labels)
        assert data.label.any()
        nonzero = np.argwhere(data.image.any(0))  # brain box strictly inside the volume
        assert nonzero.min() > 0 and (nonzero.max(0) < np.array(SHAPE) - 1).all()
        # the label is inside the brain; every foreground label has its own contrast
        assert not data.label[~data.image.any(0)].any()
        means = {v: data.image[:, data.label == v].mean(1) for v in np.unique(data.label)}
        for a in means:
            for b in means:
                if a < b:
                    assert np.abs(means[a] - means[b]).max() > 30
        np.testing.assert_allclose(data.affine, toy_affine(), atol=1e-5)


def test_toy_dataset_is_deterministic(tmp_path):
    a = make_toy_case(SCHEMES["brats2021"], SHAPE, np.random.default_rng([0, 1]))
    b = make_toy_case(SCHEMES["brats2021"], SHAPE, np.random.default_rng([0, 1]))
    c = make_toy_case(SCHEMES["brats2021"], SHAPE, np.random.default_rng([1, 1]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    r1 = make_toy_dataset(tmp_path / "a", "isles22", n_cases=2, shape=SHAPE, seed=5)
    r2 = make_toy_dataset(tmp_path / "b", "isles22", n_cases=2, shape=SHAPE, seed=5)
    for x, y in zip(open_dataset(r1).cases, open_dataset(r2).cases, strict=True):
        np.testing.assert_array_equal(load_case(x).image, load_case(y).image)
    # all four BraTS labels appear in a toy case (nested ET in TC in WT)
    assert set(np.unique(a[1]).tolist()) == {0, 1, 2, 4}


def test_unlabelled_dataset(tmp_path):
    for fmt in list_formats():
        root = make_toy_dataset(tmp_path / fmt, fmt, n_cases=2, shape=SHAPE, with_labels=False)
        ds = open_dataset(root)
        assert not ds.has_labels and all(c.label_path is None for c in ds.cases), fmt
        assert load_case(ds.cases[0]).label is None


def test_metadata_files(tmp_path):
    msd = make_toy_dataset(tmp_path / "msd", "msd_brats", n_cases=2, shape=SHAPE)
    meta = json.loads((msd / "dataset.json").read_text())
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["labels"]["1"] == "edema" and meta["numTraining"] == 2
    assert meta["training"][0] == {
        "image": "./imagesTr/BRATS_001.nii.gz",
        "label": "./labelsTr/BRATS_001.nii.gz",
    }
    nn = make_toy_dataset(tmp_path / "nn", "nnunet", n_cases=2, shape=SHAPE)
    meta = json.loads((nn / "dataset.json").read_text())
    for key in ("channel_names", "labels", "regions_class_order", "file_ending"):
        assert meta[key] == NNUNET_BRATS_JSON[key]
    assert meta["numTraining"] == 2
    isles = make_toy_dataset(tmp_path / "isles", "isles22", n_cases=1, shape=SHAPE)
    assert json.loads((isles / "dataset_description.json").read_text())["BIDSVersion"]
    assert (isles / "derivatives" / "dataset_description.json").is_file()


def test_nnunet_plain_scheme_toy_dataset(tmp_path):
    scheme = scheme_from_nnunet_json(
        {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "PZ": 1, "TZ": 2}}
    )
    root = make_toy_dataset(tmp_path, "nnunet", n_cases=2, shape=SHAPE, scheme=scheme)
    ds = open_dataset(root)
    assert ds.scheme == scheme
    data = load_case(ds.cases[0])
    assert data.image.shape == (2, *SHAPE) and set(np.unique(data.label).tolist()) == {0, 1, 2}


# --------------------------------------------------------------------------- detection


def test_detection_of_images_folders_and_rawdata(tmp_path):
    msd = make_toy_dataset(tmp_path / "Task01_BrainTumour", "msd_brats", n_cases=2, shape=SHAPE)
    ds = open_dataset(msd / "imagesTr")
    assert ds.fmt == "msd_brats" and ds.has_labels and ds.name == "Task01_BrainTumour"

    nn = make_toy_dataset(tmp_path / "Dataset137", "nnunet", n_cases=2, shape=SHAPE)
    bare = tmp_path / "bare"
    bare.mkdir()
    for p in (nn / "imagesTr").iterdir():
        (bare / p.name).write_bytes(p.read_bytes())
    with pytest.raises(DataError, match="pass the scheme") as info:
        open_dataset(bare)
    assert str(bare) in str(info.value)
    ds = open_dataset(bare, scheme=SCHEMES["nnunet"])
    assert ds.fmt == "nnunet" and ds.case_ids == ["toy_001", "toy_002"] and not ds.has_labels
    assert load_case(ds.cases[1]).image.shape == (4, *SHAPE)

    msd_bare = tmp_path / "msd_bare"
    msd_bare.mkdir()
    for p in (msd / "imagesTr").iterdir():
        (msd_bare / p.name).write_bytes(p.read_bytes())
    assert open_dataset(msd_bare).fmt == "msd_brats"

    isles = make_toy_dataset(tmp_path / "ISLES-2022", "isles22", n_cases=2, shape=SHAPE)
    (isles / "rawdata").mkdir()
    for sub in isles.glob("sub-*"):
        sub.rename(isles / "rawdata" / sub.name)
    ds = open_dataset(isles)
    assert ds.fmt == "isles22" and len(ds) == 2 and ds.has_labels
    assert load_case(ds.cases[0]).label.any()


def test_detection_failures_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        DataError, match=r"no dataset format found \(looked for .*dataset\.json"
    ) as info:
        open_dataset(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    make_toy_dataset(tmp_path / "outer" / "BraTS2021_Training", "brats2021", 1, SHAPE)
    with pytest.raises(DataError, match=r"did you mean .*BraTS2021_Training"):
        open_dataset(tmp_path / "outer")
    (tmp_path / "f.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="is a file"):
        open_dataset(tmp_path / "f.nii.gz")
    with pytest.raises(ConfigError, match="unknown dataset format"):
        open_dataset(tmp_path / "empty", fmt="brats2019")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read JSON"):
        open_dataset(tmp_path / "bad")


def test_msd_other_task_is_refused(tmp_path):
    root = make_toy_dataset(tmp_path, "msd_brats", n_cases=1, shape=SHAPE)
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"] = {"0": "CT"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="not MSD Task01_BrainTumour"):
        open_dataset(root)


# --------------------------------------------------------------------------- single cases


@pytest.mark.parametrize("fmt", list_formats())
def test_open_case_and_open_input(tmp_path, fmt):
    root = make_toy_dataset(tmp_path, fmt, n_cases=2, shape=SHAPE)
    ds = open_dataset(root)
    case = ds.cases[1]
    single = {
        "msd_brats": case.image_paths[0],
        "brats2021": case.image_paths[0].parent,
        "brats2023": case.image_paths[0].parent,
        "isles22": root / case.case_id,
        "nnunet": case.image_paths[-1],  # any channel file of the case
    }[fmt]
    opened = open_case(single)
    assert opened.case_id == case.case_id and opened.fmt == fmt
    assert opened.image_paths == case.image_paths and opened.label_path == case.label_path
    np.testing.assert_array_equal(load_case(opened).image, load_case(case).image)
    one = open_input(single)
    assert len(one) == 1 and one.fmt == fmt and one.scheme == ds.scheme
    assert len(open_input(root)) == 2
    assert case_output_name(case) == f"{case.case_id}.nii.gz"


def test_open_case_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        open_case(tmp_path / "missing")
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="not a case folder"):
        open_case(tmp_path / "x")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="not a NIfTI"):
        open_case(tmp_path / "x.txt")


# --------------------------------------------------------------------------- load errors


def _bad_case(tmp_path, fmt="brats2021"):
    root = make_toy_dataset(tmp_path / fmt, fmt, n_cases=1, shape=SHAPE)
    return open_dataset(root).cases[0]


def test_load_case_errors_name_the_file(tmp_path):
    case = _bad_case(tmp_path / "missing")
    case.image_paths[2].unlink()
    with pytest.raises(DataError, match="file not found") as info:
        load_case(case)
    assert info.value.where == str(case.image_paths[2])

    case = _bad_case(tmp_path / "trunc")
    raw = case.image_paths[1].read_bytes()
    case.image_paths[1].write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="corrupt") as info:
        load_case(case)
    assert info.value.where == str(case.image_paths[1])

    case = _bad_case(tmp_path / "garbage")
    case.image_paths[0].write_bytes(gzip.compress(b"not a nifti" * 10))
    with pytest.raises(DataError, match="NIfTI") as info:
        load_case(case)
    assert info.value.where == str(case.image_paths[0])

    case = _bad_case(tmp_path / "shape")
    nib.save(nib.Nifti1Image(np.ones((24, 28, 29), np.float32), toy_affine()), case.image_paths[3])
    with pytest.raises(DataError, match=r"shape \(24, 28, 29\) differs") as info:
        load_case(case)
    assert info.value.where == str(case.image_paths[3])

    case = _bad_case(tmp_path / "affine")
    moved = toy_affine()
    moved[0, 3] += 2.0
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), moved), case.label_path)
    with pytest.raises(DataError, match="affine differs") as info:
        load_case(case)
    assert info.value.where == str(case.label_path)

    case = _bad_case(tmp_path / "nan")
    data = np.ones(SHAPE, np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, toy_affine()), case.image_paths[1])
    with pytest.raises(DataError, match="1 NaN/Inf"):
        load_case(case)

    case = _bad_case(tmp_path / "label")
    seg = np.zeros(SHAPE, np.uint8)
    seg[3, 3, 3] = 3  # BraTS 2021 has no label 3
    nib.save(nib.Nifti1Image(seg, toy_affine()), case.label_path)
    with pytest.raises(DataError, match=r"label values \[3\] are not in the brats2021"):
        load_case(case)

    case = _bad_case(tmp_path / "msd", "msd_brats")
    img = nib.load(case.image_paths[0])
    three = np.asarray(img.dataobj)[..., :3]
    nib.save(nib.Nifti1Image(three, img.affine), case.image_paths[0])
    with pytest.raises(DataError, match=r"has 3 channel\(s\), expected 4") as info:
        load_case(case)
    assert info.value.where == str(case.image_paths[0])


def test_float_labels_are_accepted_when_integral(tmp_path):
    case = _bad_case(tmp_path)
    seg = np.asarray(nib.load(case.label_path).dataobj).astype(np.float64)
    nib.save(nib.Nifti1Image(seg, toy_affine()), case.label_path)
    np.testing.assert_array_equal(load_case(case).label, seg.astype(np.int16))
    seg[0, 0, 0] = 0.5
    nib.save(nib.Nifti1Image(seg, toy_affine()), case.label_path)
    with pytest.raises(DataError, match="non-integer"):
        load_case(case)


# --------------------------------------------------------------------------- writing labels


def test_write_label_with_msd_header(tmp_path):
    root = make_toy_dataset(tmp_path / "msd", "msd_brats", n_cases=1, shape=SHAPE)
    data = load_case(open_dataset(root).cases[0])
    out = tmp_path / "pred" / "BRATS_001.nii.gz"
    write_label(out, data.label, data.header)
    img = nib.load(out)
    assert img.shape == SHAPE and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, data.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), data.label)
    assert sorted(p.name for p in out.parent.iterdir()) == ["BRATS_001.nii.gz"]  # no temp left
    big = np.zeros(SHAPE, np.int32)
    big[0, 0, 0] = 300
    write_label(out, big, data.header)
    assert nib.load(out).get_data_dtype() == np.int16
    with pytest.raises(ValueError, match="3D"):
        write_label(out, np.zeros((1, *SHAPE)), data.header)


def test_write_case_validates_input(tmp_path):
    with pytest.raises(ValueError, match="C=4"):
        write_case("brats2023", tmp_path, "BraTS-GLI-00000-000", np.zeros((3, *SHAPE)))
    with pytest.raises(ValueError, match="label shape"):
        write_case("isles22", tmp_path, "sub-x", np.zeros((2, *SHAPE)), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="sub-"):
        write_case("isles22", tmp_path, "strokecase1", np.zeros((2, *SHAPE)))
    with pytest.raises(ConfigError, match="unknown dataset format 'brats2019'; registered"):
        write_case("brats2019", tmp_path, "x", np.zeros((4, *SHAPE)))


def test_open_case_test_images_do_not_take_training_labels(tmp_path):
    root = make_toy_dataset(tmp_path, "msd_brats", n_cases=1, shape=SHAPE)
    (root / "imagesTs").mkdir()
    test_image = root / "imagesTs" / "BRATS_001.nii.gz"
    test_image.write_bytes((root / "imagesTr" / "BRATS_001.nii.gz").read_bytes())
    assert open_case(test_image).label_path is None
    assert open_case(root / "imagesTr" / "BRATS_001.nii.gz").label_path is not None
    ds = open_dataset(root / "imagesTs")
    assert ds.case_ids == ["BRATS_001"] and not ds.has_labels


@pytest.mark.parametrize("fmt", ["msd_brats", "nnunet"])
def test_decathlon_test_folder_takes_its_own_labels(tmp_path, fmt):
    """``imagesTs`` pairs with ``labelsTs`` (never ``labelsTr``), opened from either folder."""
    root = make_toy_dataset(tmp_path, fmt, n_cases=2, shape=SHAPE)
    for tr, ts in (("imagesTr", "imagesTs"), ("labelsTr", "labelsTs")):
        (root / ts).mkdir()
        for path in sorted((root / tr).iterdir())[: 1 if tr == "labelsTr" else None]:
            (root / ts / path.name).write_bytes(path.read_bytes())
    ds = open_dataset(root / "imagesTs")
    assert ds.fmt == fmt and len(ds) == 2 and ds.has_labels
    labels = [c.label_path for c in ds.cases]
    assert [p.parent.name for p in labels] == ["labelsTs"] * 2
    assert labels[0].is_file() and not labels[1].is_file()  # check-data reports the second
    assert [p.parent.name for c in open_dataset(root).cases for p in c.image_paths] == (
        ["imagesTr"] * len(REAL_FILES[fmt]) * 2
    )


@pytest.mark.parametrize("fmt", ["msd_brats", "nnunet"])
def test_decathlon_without_images_folder(tmp_path, fmt):
    root = make_toy_dataset(tmp_path, fmt, n_cases=1, shape=SHAPE)
    for path in (root / "imagesTr").iterdir():
        path.unlink()
    (root / "imagesTr").rmdir()
    with pytest.raises(DataError, match=r"imagesTr: images folder not found"):
        get_format(fmt).open(root)
