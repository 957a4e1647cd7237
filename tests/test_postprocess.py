"""Post-processing of region masks (largest component, small components, the BraTS ET rule),
its search on validation cases, and predict --postprocess."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from helpers import cli, train_tiny
from nmfseg.analysis.postprocess import search_postprocessing
from nmfseg.data.schemes import SCHEMES
from nmfseg.errors import ConfigError
from nmfseg.inference.postprocess import PostProcessing

BRATS = SCHEMES["brats2021"]  # regions ET, TC, WT; labels ET 4, NCR 1, ED 2


def _tumour(shape=(16, 16, 16)) -> np.ndarray:
    regions = np.zeros((3, *shape), bool)
    regions[2, 2:10, 2:10, 2:10] = True  # WT
    regions[1, 3:8, 3:8, 3:8] = True  # TC
    regions[0, 4:7, 4:7, 4:7] = True  # ET (27 voxels)
    return regions


def test_largest_component_of_an_outer_region_cleans_the_regions_inside_it():
    regions = _tumour()
    regions[:, 13:15, 13:15, 13:15] = True  # a second, small tumour with ET in it
    out = PostProcessing(largest=("WT",)).apply(regions, BRATS)
    assert not out[:, 13:, 13:, 13:].any()  # gone from WT and from TC and ET inside it
    assert np.array_equal(out[:, :12, :12, :12], regions[:, :12, :12, :12])


def test_small_et_components_become_necrosis():
    regions = _tumour()
    regions[:, 12, 12, 12] = True  # one-voxel tumour speck (ET, TC, WT)
    out = PostProcessing(min_size={"ET": 5}).apply(regions, BRATS)
    assert out[0].sum() == 27 and not out[0, 12, 12, 12]
    assert out[1, 12, 12, 12] and out[2, 12, 12, 12]  # still tumour core: NCR
    assert PostProcessing().apply(regions, BRATS).sum() == regions.sum()
    kept = PostProcessing(min_size={"ET": 27}).apply(regions, BRATS)  # 27 voxels: kept
    assert np.array_equal(kept[0, 4:7, 4:7, 4:7], regions[0, 4:7, 4:7, 4:7])


def test_words_round_trip_and_bad_words_name_the_option():
    pp = PostProcessing.parse(["largest:WT,TC", "min-size:ET=200"], BRATS.region_names)
    assert pp == PostProcessing(("WT", "TC"), {"ET": 200})
    assert PostProcessing.parse(pp.words(), BRATS.region_names) == pp
    assert PostProcessing.from_dict(json.loads(json.dumps(pp.to_dict()))) == pp
    assert PostProcessing.parse(["none"], BRATS.region_names).empty
    for words, message in (
        (["largest:XX"], "no region 'XX'; the model's regions are ET, TC, WT"),
        (["min-size:ET"], "needs a voxel count"),
        (["biggest:WT"], "expected none, largest:REGION"),
    ):
        with pytest.raises(ConfigError, match=f"--postprocess .*{message}"):
            PostProcessing.parse(words, BRATS.region_names)


def test_search_keeps_only_what_raises_the_mean_dice():
    truth = _tumour()
    with_speck = truth.copy()
    with_speck[:, 13, 13, 13] = True  # a false speck in every region
    no_et = truth.copy()
    no_et[0] = False
    no_et[1] = truth[2] & truth[1]
    false_et = no_et.copy()
    false_et[0, 6, 6, 6] = True  # one false ET voxel where there is no ET: Dice 0 -> 1
    pairs = [(with_speck, truth), (false_et, no_et)]
    chosen, scores = search_postprocessing(pairs, BRATS, thresholds=(2, 50))
    assert "WT" in chosen.largest and scores["chosen"] > scores["none"]
    perfect, scores = search_postprocessing([(truth, truth)], BRATS)
    assert perfect.empty and scores["none"] == scores["chosen"] == 1.0


def test_a_gain_below_min_gain_changes_nothing():
    """A speck outside a large tumour costs WT Dice ~0.001: kept at min_gain 0, not at 0.01."""
    truth = np.zeros((3, 24, 24, 24), bool)
    truth[:, 2:20, 2:20, 2:20] = True
    pred = truth.copy()
    pred[:, 22, 22, 22] = True
    base = search_postprocessing([(pred, truth)], BRATS, thresholds=(2,), min_gain=0.0)[1]
    gain = base["chosen"] - base["none"]
    assert 0 < gain < 0.01
    chosen, scores = search_postprocessing([(pred, truth)], BRATS, thresholds=(2,), min_gain=0.01)
    assert chosen.empty and scores["chosen"] == scores["none"]


@pytest.mark.slow
def test_search_writes_the_run_setting_and_predict_applies_it(tmp_path):
    data, run = train_tiny(tmp_path)
    result = cli("postprocess-search", "-m", run, "--data", data, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "postprocessing.json").read_text())
    assert saved["n_cases"] == 2 and saved["regions"] == ["lesion"]
    assert saved["mean_dice"]["chosen"] >= saved["mean_dice"]["none"]
    # the printed options work as they are: --postprocess repeated for each rule
    assert " ".join(f"--postprocess {w}" for w in saved["words"]) in result.output
    for spec in (("auto",), ("largest:lesion",)):
        out = tmp_path / f"pred_{spec[0].split(':')[0]}"
        res = cli("predict", "-m", run, "-i", data, "-o", out, "--device", "cpu", "-q",
                  *[w for s in spec for w in ("--postprocess", s)])  # fmt: skip
        assert res.exit_code == 0, res.output
        record = json.loads((out / "predict.json").read_text())
        assert record["settings"]["postprocess"] == (
            saved["words"] if spec == ("auto",) else ["largest:lesion"]
        )
    for case in (tmp_path / "pred_largest").glob("*.nii.gz"):
        lesion = np.asarray(nib.load(case).dataobj) > 0
        assert ndimage.label(lesion, np.ones((3, 3, 3)))[1] <= 1  # one component at most
    bad = cli(
        "predict", "-m", run, "-i", data, "-o", tmp_path / "bad", "--postprocess", "largest:WT"
    )
    assert bad.exit_code == 1 and "no region 'WT'" in bad.output
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------ issue 21: what the rules are read from

GAP = "an empty item in the comma list"


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["none", "largest:WT"], "--postprocess none --postprocess largest:WT: 'none' cannot"),
        (["largest:WT", "none"], "--postprocess none --postprocess largest:WT: 'none' cannot"),
        (["largest:WT,,TC"], f"--postprocess 'largest:WT,,TC': {GAP}"),
        (["largest:WT,"], f"--postprocess 'largest:WT,': {GAP}"),
        (["min-size:,ET=5"], f"--postprocess 'min-size:,ET=5': {GAP}"),
        (["largest:"], "--postprocess 'largest:': expected none, largest:REGION"),
        (["min-size:ET=-3"], "--postprocess 'min-size:ET=-3': 'ET=-3' needs a voxel count"),
        (["min-size:ET=0"], "--postprocess 'min-size:ET=0': 'ET=0' needs a voxel count >= 1"),
    ],
)
def test_bad_words_are_refused_naming_the_option(words, message):
    with pytest.raises(ConfigError) as err:
        PostProcessing.parse(words, BRATS.region_names)
    assert str(err.value).startswith(message), str(err.value)


def test_words_none_alone_and_spaces_are_fine():
    assert PostProcessing.parse(["none", "none"], BRATS.region_names).empty
    pp = PostProcessing.parse(["largest: WT , TC"], BRATS.region_names)
    assert pp.largest == ("WT", "TC")


def _brats_run(tmp_path, saved=None):
    """A one-fold BraTS-like ensemble whose run folder holds ``postprocessing.json``."""
    import torch

    from nmfseg.inference.ensemble import Ensemble

    run = tmp_path / "run"
    (run / "fold_0").mkdir(parents=True)
    if saved is not None:
        text = saved if isinstance(saved, str) else json.dumps(saved)
        (run / "postprocessing.json").write_text(text)
    net = torch.nn.Conv3d(4, 3, 1)
    ckpt = run / "fold_0" / "checkpoint_final.pt"
    return Ensemble([net], [ckpt], (8, 8, 8), 4, 3, regions=BRATS.region_names, scheme=BRATS)


ISLES_FILE = {"postprocess": {"largest": ["lesion"], "min_size": {}}, "regions": ["lesion"]}


@pytest.mark.parametrize(
    ("saved", "message"),
    [
        ({}, "no 'postprocess' entry: not written by nmfseg postprocess-search"),
        ({"postprocess": 5}, "postprocess: expected {'largest': [...], 'min_size': {...}}, got 5"),
        ({"postprocess": {"largest": "WT"}}, "largest: expected a list of region names, got 'WT'"),
        ({"postprocess": {"min_size": {"ET": -3}}}, "min_size: expected region -> voxel count"),
        ({"postprocess": {"min_size": {"ET": 2.5}}}, "min_size: expected region -> voxel count"),
        ({"postprocess": {"min_size": {"ET": True}}}, "min_size: expected region -> voxel count"),
        ({"postprocess": {"largest": ["W"]}}, "postprocess: no region 'W'; the model's regions"),
        ({"postprocess": {"biggest": ["WT"]}}, "biggest: not a post-processing rule"),
        (ISLES_FILE, "made for a model of regions lesion, but this model predicts ET, TC, WT"),
        ({**ISLES_FILE, "postprocess": {}}, "made for a model of regions lesion"),
        ({"postprocess": {}, "regions": "ET"}, "regions: expected a list of region names"),
        ("[1, 2]", "must hold a JSON object"),
        ("{", "cannot read JSON"),
    ],
)
def test_a_bad_postprocessing_json_is_one_error_naming_it(tmp_path, saved, message):
    """--postprocess auto reads the file as strictly as the command line's words."""
    from nmfseg.errors import DataError
    from nmfseg.inference.predictor import Predictor
    from nmfseg.inference.settings import InferenceSettings

    ens = _brats_run(tmp_path, saved)
    with pytest.raises(DataError) as err:
        Predictor(ens, InferenceSettings(postprocess="auto"))
    assert err.value.where == str(tmp_path / "run" / "postprocessing.json")
    assert message in err.value.problem, err.value.problem


def test_a_good_postprocessing_json_is_applied(tmp_path):
    from nmfseg.inference.predictor import Predictor
    from nmfseg.inference.settings import InferenceSettings

    saved = {
        "postprocess": {"largest": ["WT"], "min_size": {"ET": 50}},
        "regions": BRATS.region_names,
    }
    predictor = Predictor(_brats_run(tmp_path, saved), InferenceSettings(postprocess="auto"))
    assert predictor.postprocessing == PostProcessing(("WT",), {"ET": 50})
    with pytest.raises(ConfigError, match=r"no postprocessing\.json next to the model's folds"):
        Predictor(_brats_run(tmp_path / "none"), InferenceSettings(postprocess="auto"))


def test_auto_with_an_onnx_model_says_what_to_pass(tmp_path):
    """An exported model carries no post-processing: the error gives the run's rules."""
    import dataclasses

    from nmfseg.inference.predictor import Predictor
    from nmfseg.inference.settings import InferenceSettings

    saved = {"postprocess": {"largest": ["WT"], "min_size": {"ET": 50}}}
    run = _brats_run(tmp_path, saved)
    export = {"source": {"checkpoint": str(run.sources[0])}}
    onnx = dataclasses.replace(run, sources=[tmp_path / "model.onnx"], config={"export": export})
    with pytest.raises(ConfigError) as err:
        Predictor(onnx, InferenceSettings(postprocess="auto"))
    assert str(err.value) == (
        "--postprocess auto: an ONNX model does not carry its run's post-processing; pass "
        "--postprocess largest:WT --postprocess min-size:ET=50 "
        f"(from {tmp_path / 'run' / 'postprocessing.json'})"
    )
    gone = dataclasses.replace(onnx, config={"export": {"source": {}}})
    with pytest.raises(ConfigError, match=r"pass --postprocess with the rules .* of its run$"):
        Predictor(gone, InferenceSettings(postprocess="auto"))


@pytest.mark.parametrize(
    ("min_gain", "message"),
    [
        (2, "--min-gain 2: must be a number in [0, 1)"),
        (1.0, "--min-gain 1: must be a number in [0, 1)"),
        (-0.1, "--min-gain -0.1: must be a number in [0, 1)"),
        (float("nan"), "--min-gain nan: must be a number in [0, 1)"),
        ("0.1", "--min-gain '0.1': must be a number in [0, 1)"),
    ],
)
def test_min_gain_is_a_possible_rise_of_the_dice(min_gain, message):
    truth = _tumour()
    with pytest.raises(ConfigError) as err:
        search_postprocessing([(truth, truth)], BRATS, min_gain=min_gain)
    assert str(err.value).startswith(message)
    with pytest.raises(ConfigError, match="component sizes are integers >= 1"):
        search_postprocessing([(truth, truth)], BRATS, thresholds=(0,))


def test_split_list_is_the_one_rule_for_comma_lists():
    from nmfseg.text import split_list

    assert split_list("a, b", "--x") == ["a", "b"]
    for text in ("a,,b", ",a", "a,", "", " , "):
        with pytest.raises(ConfigError, match=f"^--x {text!r}: {GAP}$"):
            split_list(text, "--x")
