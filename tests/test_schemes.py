"""The scheme table: channels, labels and regions of every format, and nnU-Net dataset.json.

Label maps are spelled out here from the datasets' documentation, independently of
``nmfseg.data.schemes``, so a wrong entry in the scheme table fails these tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import NNUNET_BRATS_JSON
from nmfseg.data.schemes import (
    SCHEMES,
    DatasetScheme,
    labels_to_regions,
    regions_to_labels,
    scheme_from_nnunet_json,
    scheme_to_nnunet_json,
)
from nmfseg.errors import DataError

# From the issue / dataset documentation: label -> set of regions containing it.
REGIONS_OF_LABEL = {
    "msd_brats": {1: {"WT"}, 2: {"TC", "WT"}, 3: {"ET", "TC", "WT"}},
    "brats2021": {1: {"TC", "WT"}, 2: {"WT"}, 4: {"ET", "TC", "WT"}},
    "brats2023": {1: {"TC", "WT"}, 2: {"WT"}, 3: {"ET", "TC", "WT"}},
    "isles22": {1: {"lesion"}},
    "nnunet": {
        1: {"whole tumor"},
        2: {"whole tumor", "tumor core"},
        3: {"whole tumor", "tumor core", "enhancing tumor"},
    },
}


# --------------------------------------------------------------------------- schemes


def test_scheme_table_channels_and_labels():
    assert SCHEMES["msd_brats"].channels == ("FLAIR", "T1w", "t1gd", "T2w")
    assert SCHEMES["brats2021"].channels == ("flair", "t1", "t1ce", "t2")
    assert SCHEMES["brats2023"].channels == ("t2f", "t1n", "t1c", "t2w")
    assert SCHEMES["isles22"].channels == ("dwi", "adc")
    assert SCHEMES["msd_brats"].labels == (0, 1, 2, 3)
    assert SCHEMES["brats2021"].labels == (0, 1, 2, 4)
    assert SCHEMES["brats2023"].labels == (0, 1, 2, 3)
    assert SCHEMES["isles22"].labels == (0, 1)
    for name in ("msd_brats", "brats2021", "brats2023"):
        assert tuple(SCHEMES[name].regions) == ("ET", "TC", "WT")


@pytest.mark.parametrize("name", list(REGIONS_OF_LABEL))
def test_labels_to_regions_matches_documented_maps(name):
    scheme = SCHEMES[name]
    label = np.array([[0, *REGIONS_OF_LABEL[name]]])  # (1, L) spatial
    regions = labels_to_regions(label, scheme)
    assert regions.dtype == np.uint8 and regions.shape == (len(scheme.regions), *label.shape)
    for r, region in enumerate(scheme.regions):
        expected = [0] + [int(region in REGIONS_OF_LABEL[name][v]) for v in REGIONS_OF_LABEL[name]]
        assert regions[r, 0].tolist() == expected, (name, region)


@pytest.mark.parametrize("name", list(REGIONS_OF_LABEL))
def test_label_region_round_trips(name):
    scheme = SCHEMES[name]
    rng = np.random.default_rng(1)
    label = rng.choice(np.array(scheme.labels), size=(9, 10, 11))
    regions = labels_to_regions(label, scheme)
    back = regions_to_labels(regions.astype(bool), scheme)
    np.testing.assert_array_equal(back, label)
    np.testing.assert_array_equal(labels_to_regions(back, scheme), regions)


def test_regions_to_labels_brats_nesting_rules():
    # voxels: WT only, TC not ET, ET, ET predicted outside WT (painted last: still ET)
    et = np.array([0, 0, 1, 1], bool)
    tc = np.array([0, 1, 1, 0], bool)
    wt = np.array([1, 1, 1, 0], bool)
    regions = np.stack([et, tc, wt])
    assert regions_to_labels(regions, SCHEMES["msd_brats"]).tolist() == [1, 2, 3, 3]
    assert regions_to_labels(regions, SCHEMES["brats2021"]).tolist() == [2, 1, 4, 4]
    assert regions_to_labels(regions, SCHEMES["brats2023"]).tolist() == [2, 1, 3, 3]
    isles = regions_to_labels(np.array([[0, 1, 1]]), SCHEMES["isles22"])
    assert isles.tolist() == [0, 1, 1] and isles.dtype == np.uint8
    with pytest.raises(ValueError, match="3 region masks"):
        regions_to_labels(np.zeros((2, 4), bool), SCHEMES["brats2021"])


def test_nnunet_region_based_json():
    scheme = scheme_from_nnunet_json(NNUNET_BRATS_JSON)
    assert scheme.channels == ("T1", "T1ce", "T2", "Flair")
    assert scheme.regions == {
        "whole tumor": (1, 2, 3),
        "tumor core": (2, 3),
        "enhancing tumor": (3,),
    }
    assert scheme.labels == (0, 1, 2, 3)
    # nnU-Net paints regions in regions_class_order: WT -> 1, TC -> 2, ET -> 3
    wt, tc, et = [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0]
    assert regions_to_labels(np.array([wt, tc, et]), scheme).tolist() == [1, 2, 3, 0]
    assert scheme_from_nnunet_json(scheme_to_nnunet_json(scheme)) == scheme


def test_nnunet_plain_json_and_ignore_label():
    meta = {
        "channel_names": {"1": "ADC", "0": "T2"},  # keys out of order on purpose
        "labels": {"background": 0, "PZ": 1, "TZ": 2, "ignore": 3},
    }
    scheme = scheme_from_nnunet_json(meta)
    assert scheme.channels == ("T2", "ADC")
    assert scheme.regions == {"PZ": (1,), "TZ": (2,)}
    assert scheme.labels == (0, 1, 2, 3) and scheme.ignore_label == 3
    label = np.array([0, 1, 2, 3])
    assert labels_to_regions(label, scheme).tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]
    assert scheme_to_nnunet_json(scheme)["labels"] == meta["labels"]


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"labels": {"background": 0, "a": 1}}, "channel_names"),
        ({"channel_names": {"0": "CT"}, "labels": {"a": 1}}, "background"),
        ({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": [1, 2]}}, "regions_class"),
        ({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": "x"}}, "non-integer"),
        ({"channel_names": {"0": "CT", "2": "MR"}, "labels": {"background": 0, "a": 1}}, "0..1"),
    ],
)
def test_nnunet_bad_json_is_a_data_error(meta, match):
    with pytest.raises(DataError, match=match) as info:
        scheme_from_nnunet_json(meta, "/data/Dataset001/dataset.json")
    assert "Dataset001/dataset.json" in str(info.value)


def test_scheme_dict_round_trip_and_validation():
    for scheme in SCHEMES.values():
        assert DatasetScheme.from_dict(json.loads(json.dumps(scheme.to_dict()))) == scheme
    with pytest.raises(ValueError, match="not one of its labels"):
        DatasetScheme("x", ("a",), (0, 1, 2), {"r": (1,)}, {"r": 2})
    with pytest.raises(ValueError, match="include 0"):
        DatasetScheme("x", ("a",), (1,), {"r": (1,)}, {"r": 1})
