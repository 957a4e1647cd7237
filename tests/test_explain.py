"""``nmfseg explain``: NMF component maps on the input's grid; Global, Local and Swin, any rank."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import cli
from nmfseg.data.formats import load_case, open_dataset
from nmfseg.data.preprocess import preprocess_case
from nmfseg.mixers.nmf import factor_maps
from nmfseg.models import create_model
from nmfseg.phantoms.toy import make_toy_dataset
from nmfseg.training.checkpoint import atomic_save

pytestmark = pytest.mark.slow

TINY = dict(channels=(4, 8, 16), head_dim=4, window_size=4, deep_supr_num=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 2-step Swin Factorizer, untrained Local (rank 2) and Global networks, toy cases."""
    root = tmp_path_factory.mktemp("explain")
    data = make_toy_dataset(root / "Toy", "isles22", n_cases=4, shape=(28, 30, 26), seed=1)
    result = cli(
        "train", data, "--model", "swin_factorizer_isles", "--fold", 0, "--out", root / "runs",
        "--steps", 2, "--patch-size", 16, "--n-folds", 2, "--workers", 0, "--val-every", 2,
        "--model-arg", "channels=4,8,16", "--model-arg", "deep_supr_num=1", "--seed", 3,
        "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = {"swin": root / "runs" / data.name / "swin_factorizer_isles"}
    scheme = open_dataset(data).scheme
    config = {"patch_size": [16, 16, 16], "dataset": {"scheme": scheme.to_dict()}}
    for kind, extra in (("local", {"rank": 2}), ("global", {}), ("segresnet_brats", {})):
        name = "segresnet_brats" if kind == "segresnet_brats" else f"{kind}_factorizer_isles"
        seg = dict(init_filters=8, in_channels=2, out_channels=1)
        kwargs = seg if kind == "segresnet_brats" else {**TINY, **extra}
        torch.manual_seed(0)
        net = create_model(name, **kwargs)
        ckpt = {"model_name": name, "model_kwargs": kwargs, "config": config}
        atomic_save({**ckpt, "model": net.state_dict()}, root / kind / "checkpoint_final.pt")
        runs[kind] = root / kind / "checkpoint_final.pt"
    return data, runs


def _explain(model, case, out, *options):
    return cli("explain", "-m", model, "-i", case, "-o", out, "--device", "cpu", "-q", *options)


@pytest.mark.parametrize(("kind", "rank"), [("swin", 1), ("local", 2), ("global", 1)])
def test_one_map_per_layer_head_component_on_the_input_grid(setup, tmp_path, kind, rank):
    data, runs = setup
    case = open_dataset(data).cases[0]
    res = _explain(runs[kind], data / case.case_id, tmp_path, "--layers", "all")
    assert res.exit_code == 0, res.output

    manifest = json.loads((tmp_path / "components.json").read_text())
    entries = manifest["components"]
    heads = [1, 2, 4, 2, 1]  # channels 4, 8, 16 (bridge), 8, 4 over head_dim 4
    expected = [(lay, h, r) for lay, n in enumerate(heads) for h in range(n) for r in range(rank)]
    assert [(e["layer"], e["head"], e["component"]) for e in entries] == expected
    assert [e["stage"] for e in entries if e["head"] == e["component"] == 0] == [
        "encoder", "encoder", "bridge", "decoder", "decoder"]  # fmt: skip
    assert {e["matricize"] for e in entries} == {kind}
    assert {e["views"] for e in entries} == ({2} if kind == "swin" else {1})
    files = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert files == sorted(e["file"].split("/")[1] for e in entries)

    image = nib.load(case.image_paths[0])
    _, _, crop = preprocess_case(load_case(case).image)
    outside = np.ones(image.shape, bool)
    outside[crop.slices] = False
    for entry in entries:
        img = nib.load(tmp_path / entry["file"])
        maps = np.asarray(img.dataobj)
        assert maps.shape == image.shape and maps.dtype == np.float32
        np.testing.assert_allclose(img.affine, image.affine)
        assert np.isfinite(maps).all() and (maps >= 0).all() and maps.max() > 0
        assert not maps[outside].any()  # the crop is undone: zero outside the nonzero box
        assert (entry["min"], entry["max"]) == pytest.approx((maps.min(), maps.max()))
    assert (tmp_path / "components.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_maps_are_the_recorded_factors_resampled_to_the_input(setup, tmp_path):
    """A case smaller than the window is one window: the maps are exactly the dematricized
    factors of one forward pass (both Swin views combined), up-sampled and put back."""
    _, runs = setup
    small = make_toy_dataset(tmp_path / "small", "isles22", n_cases=1, shape=(14, 13, 12))
    case = open_dataset(small).cases[0]
    res = _explain(runs["swin"], small, tmp_path / "out", "--layers", "0,2,4", "--max-maps", 3)
    assert res.exit_code == 0, res.output

    from nmfseg.models import load_model

    net, _ = load_model(runs["swin"] / "fold_0" / "checkpoint_final.pt", "cpu")
    x, _, crop = preprocess_case(load_case(case).image)
    pads = [16 - s for s in x.shape[1:]]
    flat = [p for d in reversed(pads) for p in (d // 2, d - d // 2)]  # MONAI: half before
    with net.eval().record_factors() as records, torch.no_grad():
        net(F.pad(torch.from_numpy(x)[None], flat))
    inside = tuple(slice(d // 2, d // 2 + s) for d, s in zip(pads, x.shape[1:], strict=True))
    for record in records:
        if record.layer not in (0, 2, 4):
            continue
        maps = factor_maps(record)[None]
        if record.level:
            maps = F.interpolate(maps, scale_factor=2**record.level, mode="trilinear")
        maps = maps[0][(slice(None), *inside)]
        for head in range(record.heads):
            name = f"layer{record.layer:02d}_head{head:02d}_comp0.nii.gz"
            written = np.asarray(nib.load(tmp_path / "out" / "maps" / name).dataobj)
            np.testing.assert_allclose(written[crop.slices], maps[head].numpy(), atol=1e-5)
        if record.geometry.partitions == 2:  # the shifted partition counts
            half = record.v.clone()
            half[half.shape[0] // 2 :] = 0
            regular = factor_maps(type(record)(**{**record.__dict__, "v": half}))
            assert (regular - factor_maps(record)).abs().max() > 1e-4


def test_rerun_reuses_the_layers_on_disk(setup, tmp_path):
    data, runs = setup
    case = data / open_dataset(data).cases[1].case_id
    assert _explain(runs["global"], case, tmp_path, "--layers", "first,last").exit_code == 0
    maps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "maps").iterdir()}
    (tmp_path / "maps" / "layer04_head00_comp0.nii.gz").unlink()
    res = _explain(runs["global"], case, tmp_path, "--layers", "first,last")
    assert res.exit_code == 0 and "(1 layer(s) reused)" in res.output
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "maps").iterdir()}
    assert after["layer00_head00_comp0.nii.gz"] == maps["layer00_head00_comp0.nii.gz"]
    assert after.keys() == maps.keys()


def test_ground_truth_option_and_dataset_of_one_case(setup, tmp_path):
    data, runs = setup
    case = open_dataset(data).cases[2]
    single = make_toy_dataset(tmp_path / "one", "isles22", n_cases=1, shape=(20, 18, 16))
    res = _explain(runs["local"], single, tmp_path / "a", "--gt", case.label_path)
    assert res.exit_code == 1 and "has shape (28, 30, 26) but the image has (20, 18, 16)" in (
        res.output
    )
    res = _explain(runs["local"], data / case.case_id, tmp_path / "b", "--gt", case.label_path)
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "b" / "components.json").read_text())
    assert manifest["ground_truth"] == str(case.label_path.resolve())
    label = np.asarray(nib.load(case.label_path).dataobj)
    assert label[..., manifest["slice"]].sum() == label.sum(axis=(0, 1)).max()


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("segresnet_brats", (), "the network segresnet_brats has no NMF layers; explain shows "
         "the NMF components of Factorizers"),
        ("swin", ("--layers", "9"), "--layers '9': there is no NMF layer 9; the model has 5 (0-4)"),
        ("swin", ("--layers", "none"), "--layers 'none': choose at least one NMF layer"),
        ("swin", ("--layers", "deep"), "--layers 'deep': not a layer list"),
        ("swin", ("--fold", "1"), "no fold_1 (available: fold_0)"),
        ("local", ("--fold", "0"), "--fold needs a run folder with fold_K folders"),
        ("swin", ("--overlap", "2"), "--overlap '2': must be a number in [0, 1)"),
        ("swin", ("--max-maps", "0"), "--max-maps '0': must be an integer >= 1"),
        ("dataset", (), "is a isles22 dataset of 4 cases (sub-strokecase0001, "),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(setup, tmp_path, kind, options, message):
    data, runs = setup
    model = runs["swin" if kind == "dataset" else kind]
    case = data if kind == "dataset" else data / open_dataset(data).cases[0].case_id
    res = _explain(model, case, tmp_path / "out", *options)
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


#: (maps per layer row, images per row, the row titles and the figure title drawn): a row
#: that shows fewer maps than its layer has says how many; one colour bar for the maps.
PANELS = [
    ([4, 16, 4], 8, ["layer 0, encoder\nfull resolution\nhead 0",
                     "layer 1, bridge (8 of 16 maps)\n1/2 resolution\nhead 0",
                     "layer 2, decoder\nfull resolution\nhead 0"],
     "a row shows at most 8 maps of its layer"),
    ([2, 2], 8, ["layer 0, encoder\nfull resolution\nhead 0",
                 "layer 1, bridge\n1/2 resolution\nhead 0"], None),
]  # fmt: skip


@pytest.mark.parametrize(("maps", "columns", "titles", "note"), PANELS)
def test_the_panel_says_what_it_leaves_out_and_has_a_colour_bar(
    maps, columns, titles, note, tmp_path, monkeypatch
):
    from contextlib import contextmanager

    from nmfseg.analysis import figures
    from nmfseg.analysis.explain import resolution

    drawn, real = [], figures.figure

    @contextmanager
    def recorded(path, size, **options):
        with real(path, size, **options) as fig:
            yield fig
        drawn.append((fig, fig.texts[0].get_text() if fig.texts else None))  # the suptitle

    monkeypatch.setattr(figures, "figure", recorded)
    image = np.random.default_rng(0).random((6, 5))
    stages = ("encoder", "bridge", "decoder")
    rows = [
        (f"layer {i}, {stages[i]}\n{resolution(i % 2)}", [(f"head {h}", image) for h in range(n)])
        for i, n in enumerate(maps)
    ]
    figures.component_panel(tmp_path / "p.png", [("dwi", image), ("adc", image)], None, rows,
                            image, max_columns=columns, title="model")  # fmt: skip
    fig, title = drawn[0]
    per_row = len(fig.axes[:-1]) // (1 + len(maps))
    first = [fig.axes[(1 + r) * per_row].get_title() for r in range(len(maps))]
    assert first == titles
    assert fig.axes[-1].get_ylabel() == "map / its maximum in the slice"  # the colour bar
    assert title == ("model" if note is None else f"model\n{note}")
