"""nmfseg networks inside nnU-Net v2: the trainers against nnU-Net's own contract, plans
variants, results folders read back by nmfseg, the CLI's one-line errors, and (slow) the
whole pipeline: phantoms -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train with an nmfseg
trainer -> nnUNetv2_predict -> nmfseg evaluate / explain / Predictor.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import cli
from nmfseg.inference.nnunet_results import LabelProbabilities, nnunet_preprocessing
from nmfseg.models.nnunet_arch import build_nnunet_network, plans_architecture, round_patch
from nmfseg.nnunet import trainer_folder, write_plans_variant

nnunetv2 = pytest.importorskip("nnunetv2")

TRAINERS = [
    "nnUNetTrainerNmfseg",
    "nnUNetTrainerGlobalFactorizer",
    "nnUNetTrainerLocalFactorizer",
    "nnUNetTrainerSwinFactorizer",
    "nnUNetTrainerNmfseg_AdamWCosine",
    "nnUNetTrainerGlobalFactorizer_AdamWCosine",
    "nnUNetTrainerLocalFactorizer_AdamWCosine",
    "nnUNetTrainerSwinFactorizer_AdamWCosine",
]
TINY = {"channels": [8, 16, 32, 64, 128]}


def _plans(patch=(40, 48, 40), arch: dict | None = None, config: str = "3d_fullres") -> dict:
    """A plans dict as nnUNetv2_plan_and_preprocess writes it (the fields trainers read)."""
    dims = len(patch)
    default_arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 4},
        "_kw_requires_import": [],
    }
    return {
        "dataset_name": "Dataset999_Test",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0] * dims,
        "original_median_shape_after_transp": list(patch),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(range(dims)),
        "transpose_backward": list(range(dims)),
        "configurations": {
            config: {
                "data_identifier": f"nnUNetPlans_{config}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(patch),
                "median_image_size_in_voxels": list(patch),
                "spacing": [1.0] * dims,
                "normalization_schemes": ["ZScoreNormalization"] * 4,
                "use_mask_for_norm": [True] * 4,
                "pool_op_kernel_sizes": [[1] * dims] + [[2] * dims] * 3,
                "architecture": arch or default_arch,
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }


DATASET_JSON = {
    "channel_names": {"0": "FLAIR", "1": "T1", "2": "T1Gd", "3": "T2"},
    "labels": {"background": 0, "WT": [1, 2, 3], "TC": [2, 3], "ET": [3]},
    "regions_class_order": [1, 2, 3],
    "numTraining": 2,
    "file_ending": ".nii.gz",
}


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """nnU-Net's folders in tmp_path, nmfseg's trainer folder in nnUNet_extTrainer."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("nnUNet_extTrainer", str(trainer_folder()))
    return tmp_path


def _trainer(name: str, plans: dict, config: str = "3d_fullres"):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name(name)
    plans = copy.deepcopy(plans) | {"continue_training": False}
    return cls(plans, config, 0, DATASET_JSON, torch.device("cpu"))


# ----------------------------------------------------------------------- the lookup


@pytest.mark.parametrize("name", TRAINERS)
def test_nnunet_finds_each_trainer_in_the_printed_folder(nnunet_env, name, capsys):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import nmfseg.nnunet.trainers as trainers

    assert recursive_find_trainer_class_by_name(name) is getattr(trainers, name)


def test_nnunet_path_prints_the_folder_and_checks_the_environment(nnunet_env, monkeypatch):
    result = cli("nnunet-path", "--check")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(trainer_folder())
    monkeypatch.setenv("nnUNet_extTrainer", str(nnunet_env))
    result = cli("nnunet-path", "--check")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "nmfseg: error: nnUNet_extTrainer does not list nmfseg's trainer folder; run: export "
        f"nnUNet_extTrainer={trainer_folder()}"
    ]


# ----------------------------------------------------------- the trainers' contract


@pytest.mark.parametrize(
    ("name", "arch", "model"),
    [
        ("nnUNetTrainerSwinFactorizer", None, "swin_factorizer_brats"),
        ("nnUNetTrainerLocalFactorizer", None, "local_factorizer_brats"),
        (
            "nnUNetTrainerNmfseg",
            plans_architecture("global_factorizer_isles", TINY),
            "global_factorizer_isles",
        ),
    ],
)
def test_trainer_rounds_the_patch_and_names_the_network_in_the_saved_plans(
    nnunet_env, name, arch, model
):
    trainer = _trainer(name, _plans((40, 48, 40), arch))
    saved = trainer.plans_manager.plans["configurations"]["3d_fullres"]
    assert saved["patch_size"] == [48, 48, 48] == list(trainer.configuration_manager.patch_size)
    assert saved["architecture"]["network_class_name"] == f"nmfseg:{model}"
    assert trainer.enable_deep_supervision and trainer.num_outputs == 3
    assert trainer._get_deep_supervision_scales() == [[1.0] * 3, [0.5] * 3, [0.25] * 3]


def test_a_network_without_deep_supervision_trains_without_it(nnunet_env):
    arch = plans_architecture("segresnet_brats", {"init_filters": 8})
    trainer = _trainer("nnUNetTrainerNmfseg", _plans((30, 33, 31), arch))
    assert trainer.configuration_manager.patch_size == [32, 32, 32]  # SegResNet: multiple of 8
    assert not trainer.enable_deep_supervision
    assert trainer._get_deep_supervision_scales() is None


def test_generic_trainer_without_nmfseg_plans_is_one_line(nnunet_env):
    from nmfseg.errors import ConfigError

    with pytest.raises(ConfigError, match="write plans for an nmfseg network with nmfseg"):
        _trainer("nnUNetTrainerNmfseg", _plans())
    other = plans_architecture("unetr_brats", {})
    with pytest.raises(ConfigError, match="builds swin_factorizer_brats but the plans name"):
        _trainer("nnUNetTrainerSwinFactorizer", _plans(arch=other))


@pytest.mark.parametrize("patch", [(32, 48, 32), (64, 48)])
def test_deep_supervision_follows_nnunets_flag_and_its_targets(nnunet_env, patch):
    """The outputs match the targets nnU-Net's own transform makes for our scales, the
    list comes in eval() too while the flag is on (nnU-Net validates in eval), and the
    weights load into the network nnU-Net builds for prediction."""
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import (
        DownsampleSegForDSTransform,
    )
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    config = "2d" if len(patch) == 2 else "3d_fullres"
    arch = plans_architecture("swin_factorizer_brats", TINY)
    trainer = _trainer("nnUNetTrainerSwinFactorizer", _plans(patch, arch, config), config)
    cls = type(trainer)
    pm, cm = trainer.plans_manager, trainer.configuration_manager
    torch.manual_seed(0)
    net = cls.build_network_architecture(pm, cm, 4, 3, True)
    trainer.network = net
    net.eval()
    x = torch.randn(2, 4, *patch)
    with torch.no_grad():
        outs = net(x)
    assert isinstance(outs, list) and len(outs) == 3
    seg = torch.randint(0, 2, (3, *patch)).float()
    scales = trainer._get_deep_supervision_scales()
    targets = DownsampleSegForDSTransform(ds_scales=scales)(segmentation=seg)["segmentation"]
    assert [t.shape[1:] for t in targets] == [o.shape[2:] for o in outs]
    loss = DeepSupervisionWrapper(DC_and_BCE_loss({}, {"do_bg": True, "smooth": 1e-5}), [1, 0.5, 0])
    net.train()
    value = loss(net(x), [t[None].expand(2, -1, *t.shape[1:]) for t in targets])
    value.backward()
    assert torch.isfinite(value)
    trainer.set_deep_supervision_enabled(False)
    assert net(x).shape == (2, 3, *patch)
    pred = cls.build_network_architecture(pm, cm, 4, 3, False)
    pred.load_state_dict(net.state_dict())  # strict: the heads are there either way
    pred.eval()
    with torch.no_grad():
        torch.testing.assert_close(pred(x), net.eval()(x))


def test_paper_variant_uses_adamw_warmup_cosine_and_the_papers_weights(nnunet_env):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    arch = plans_architecture("swin_factorizer_brats", TINY)
    trainer = _trainer("nnUNetTrainerSwinFactorizer_AdamWCosine", _plans((32, 32, 32), arch))
    trainer.network = type(trainer).build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 4, 3, True
    )
    optimizer, scheduler = trainer.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == 1e-4 and optimizer.defaults["weight_decay"] == 1e-2
    lrs = []
    for epoch in (0, 19, 20, 510, 999):
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-4 / 20) and lrs[1] == pytest.approx(1e-4)
    assert lrs[3] == pytest.approx(0.5e-4, rel=0.01) and lrs[4] < 1e-8
    loss = trainer._build_loss()
    assert isinstance(loss, DeepSupervisionWrapper)
    np.testing.assert_allclose(loss.weight_factors, np.array([1, 0.5, 0.25]) / 1.75)


# ---------------------------------------------------------------------- plans variants


def test_plans_variant_for_any_registered_network(tmp_path):
    folder = tmp_path / "Dataset999_Test"
    folder.mkdir()
    plans = _plans((40, 50, 36))
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres"}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    path = write_plans_variant(folder, "unetr_brats", {"feature_size": 8})
    assert path.name == "nnUNetPlans_unetr_brats.json"
    variant = json.loads(path.read_text())
    config = variant["configurations"]["3d_fullres"]
    assert variant["plans_name"] == "nnUNetPlans_unetr_brats"
    assert config["patch_size"] == list(round_patch([40, 50, 36], 16)) == [48, 48, 32]
    assert config["data_identifier"] == "nnUNetPlans_3d_fullres"  # the preprocessed data
    assert config["architecture"] == plans_architecture("unetr_brats", {"feature_size": 8})
    assert variant["configurations"]["3d_cascade_fullres"] == {"inherits_from": "3d_fullres"}
    net = build_nnunet_network(config, 4, 3, False)
    assert net.model_config.kwargs["img_size"] == (48, 48, 32)


ERRORS = [
    (("nnunet-plans", "{pre}", "-m", "no_such_net"), r"unknown model 'no_such_net'"),
    (("nnunet-plans", "{tmp}/nothing", "-m", "unetr_brats"), r"nnUNet_preprocessed"),
    (
        ("nnunet-plans", "{pre}", "-m", "unetr_brats", "-p", "nnUNetResEncUNetMPlans"),
        r"nnUNetResEncUNetMPlans\.json: no such plans file",
    ),
    (("nnunet-plans", "{pre}", "-m", "unetr_brats", "--name", "a__b"), r"--name 'a__b'"),
    (
        ("nnunet-plans", "{pre}", "-m", "unetr_brats", "--name", "nnUNetPlans"),
        r"nnUNetPlans\.json exists; pass --overwrite",
    ),
    (
        ("nnunet-plans", "{pre}", "-m", "unetr_brats", "--model-arg", "feature_size"),
        r"--model-arg 'feature_size': expected KEY=VALUE",
    ),
    (
        ("nnunet-plans", "{pre}", "-m", "unetr_brats", "--model-arg", "bogus=1"),
        r"^nmfseg: error: --model-arg bogus: unetr_brats has no argument 'bogus'$",
    ),
]


@pytest.mark.parametrize(("args", "line"), ERRORS, ids=[" ".join(a[2:]) for a, _ in ERRORS])
def test_cli_errors_are_one_line(tmp_path, monkeypatch, args, line):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    pre = tmp_path / "Dataset999_Test"
    pre.mkdir()
    (pre / "nnUNetPlans.json").write_text(json.dumps(_plans()))
    result = cli(*(a.format(pre=pre, tmp=tmp_path) for a in args))
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nmfseg: error: "), result.output
    assert __import__("re").search(line, lines[0]), lines[0]


def test_missing_nnunet_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nnunetv2" else real(name)
    )
    for args in (("nnunet-path",), ("nnunet-plans", "1", "-m", "unetr_brats")):
        result = cli(*args)
        assert result.exit_code == 1
        assert result.output.strip() == (
            "nmfseg: error: nnU-Net v2 is not installed: pip install 'nmfseg[nnunet]' "
            "(nnunetv2 2.8)"
        )


# ------------------------------------------------------- results folders read back


def _results_folder(root: Path, trainer: str, arch: dict | None, meta: dict, seed: int = 0):
    """A results folder as nnUNetv2_train writes it, with a randomly initialized network."""
    folder = root / f"{trainer}__nnUNetPlans__3d_fullres"
    (folder / "fold_0" / "validation").mkdir(parents=True)
    plans = _plans((32, 32, 32), arch)
    plans["transpose_forward"] = [2, 0, 1]
    plans["transpose_backward"] = [1, 2, 0]
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["ZScoreNormalization"] * 2
    plans["configurations"]["3d_fullres"]["use_mask_for_norm"] = [True, False]
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(meta))
    weights = {}
    if arch is not None:
        torch.manual_seed(seed)
        n_out = 3 if "regions_class_order" in meta else len(meta["labels"])
        net = build_nnunet_network(plans["configurations"]["3d_fullres"], 2, n_out, True)
        weights = net.state_dict()
    ckpt = {
        "network_weights": weights,
        "trainer_name": trainer,
        "init_args": {"configuration": "3d_fullres", "fold": 0},
    }
    torch.save(ckpt, folder / "fold_0" / "checkpoint_final.pth")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)),
             folder / "fold_0" / "validation" / "CASE_002.nii.gz")  # fmt: skip
    return folder


LABELS_META = {
    "channel_names": {"0": "DWI", "1": "ADC"},
    "labels": {"background": 0, "lesion": 1, "core": 2},
    "file_ending": ".nii.gz",
}


def test_predictor_reads_an_nnunet_results_folder_with_nnunets_axes(tmp_path):
    from nmfseg import Predictor

    arch = plans_architecture("swin_factorizer_isles", TINY)
    folder = _results_folder(tmp_path, "nnUNetTrainerNmfseg", arch, LABELS_META)
    p = Predictor.from_run(folder, device="cpu")
    assert p.model_name == "swin_factorizer_isles" and p.has_nmf
    assert p.ensemble.config["split"]["val"] == ["CASE_002"]
    assert p.ensemble.config["nnunet"]["trainer"] == "nnUNetTrainerNmfseg"
    pre = p.ensemble.preprocessing
    assert pre.transpose == (0, 2, 1)  # nibabel (x,y,z) -> sitk (z,y,x) -> transpose_forward
    assert pre.schemes == ("zscore_nonzero", "zscore")
    assert isinstance(p.ensemble.models[0], LabelProbabilities)  # softmax over 3 labels
    rng = np.random.default_rng(0)
    image = np.zeros((2, 20, 18, 22), np.float32)
    image[:, 2:18, 3:15, 1:20] = rng.random((2, 16, 12, 19)) + 1
    probs = p.predict_array(image, output="probabilities", spacing=(1.0, 1.0, 1.0))
    assert probs.shape == (2, 20, 18, 22)
    # the same by hand (one window, so blending cannot differ): nnU-Net's axes, its
    # normalization, the softmax's foreground classes
    net = p.ensemble.models[0].net
    box = (slice(None), slice(2, 18), slice(3, 15), slice(1, 20))
    x = image[box].transpose(0, 1, 3, 2).copy()
    x[0] = np.where(x[0] != 0, (x[0] - x[0][x[0] != 0].mean()) / x[0][x[0] != 0].std(), 0)
    x[1] = (x[1] - x[1].mean()) / x[1].std()
    from nmfseg.inference.sliding_window import sliding_window_predict

    soft = sliding_window_predict(net, x, (32, 32, 32), 0.5, activation=lambda t: t.softmax(1))
    expected = np.zeros_like(probs)
    expected[box] = soft[1:].numpy().transpose(0, 1, 3, 2)
    np.testing.assert_allclose(probs, expected, atol=2e-5)


def test_explain_refuses_a_results_folder_of_nnunets_own_trainer(tmp_path):
    folder = _results_folder(tmp_path, "nnUNetTrainer", None, DATASET_JSON)
    image = tmp_path / "CASE_000_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), image)
    result = cli("explain", "-m", folder, "-i", image, "-o", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 1
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith(
            f"nmfseg: error: {folder}: trained with nnU-Net's nnUNetTrainer, not an nmfseg trainer"
        )
    )
    assert not (tmp_path / "out").exists()


def test_label_probabilities_are_the_softmax_of_the_foreground():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 4, 1)
    x = torch.randn(1, 2, 3, 4, 5)
    got = torch.sigmoid(LabelProbabilities(net)(x))
    torch.testing.assert_close(got, net(x).softmax(1)[:, 1:], atol=1e-6, rtol=1e-5)


def test_nnunet_preprocessing_reads_ct_statistics():
    plans = {
        "transpose_forward": [0, 1, 2],
        "foreground_intensity_properties_per_channel": {
            "0": {"percentile_00_5": -50.0, "percentile_99_5": 90.0, "mean": 40.0, "std": 12.0}
        },
    }
    config = {"spacing": [3.0, 0.8, 0.8], "normalization_schemes": ["CTNormalization"]}
    pre = nnunet_preprocessing(plans, config)
    assert pre.normalization[0].to_dict() == {
        "scheme": "ct", "lower": -50.0, "upper": 90.0, "mean": 40.0, "std": 12.0,
    }  # fmt: skip
    assert pre.target_spacing == (3.0, 0.8, 0.8) and pre.transpose == (2, 1, 0)


# ------------------------------------------------------------------ the whole pipeline

TINY_TRAINER = '''
import torch
from nmfseg.nnunet.trainers import nnUNetTrainerSwinFactorizer


class nnUNetTrainerSwinFactorizer_test(nnUNetTrainerSwinFactorizer):
    """A user's variant, as nnU-Net's docs describe them: a short run for a test."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        parent = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size
        rotation, dummy_2d, initial, _ = parent()
        self.inference_allowed_mirroring_axes = None  # no flips in the final validation
        return rotation, dummy_2d, initial, None
'''


def _run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_phantoms_through_nnunet_with_an_nmfseg_trainer(tmp_path):
    """Phantoms as an nnU-Net raw dataset -> plan and preprocess -> a short training of a
    small Swin Factorizer with an nmfseg trainer -> nnUNetv2_predict -> nmfseg evaluate; the
    results folder read back by nmfseg predicts what nnU-Net predicted, and explains."""
    bindir = Path(sys.executable).parent
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "test_trainers.py").write_text(TINY_TRAINER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    for name in ("raw", "preprocessed", "results"):
        env[f"nnUNet_{name}"] = str(tmp_path / name)
    nmfseg = str(bindir / "nmfseg")
    env["nnUNet_extTrainer"] = _run([nmfseg, "nnunet-path"], env, tmp_path).strip()
    env["nnUNet_extTrainer"] += os.pathsep + str(ext)
    env |= {"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": "2"}
    raw = tmp_path / "raw" / "Dataset501_Phantoms"
    _run([nmfseg, "synth", "brats", "-o", str(raw), "--format", "nnunet", "-n", "5",
          "--spacing", "4", "--no-progress"], env, tmp_path)  # fmt: skip
    _run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", "501", "-c", "3d_fullres",
          "--verify_dataset_integrity", "-np", "1", "-npfp", "1"],
         env | {"nnUNet_n_proc_DA": "1"}, tmp_path)  # its planner sets threads from it  # fmt: skip
    _run([nmfseg, "nnunet-plans", "501", "-m", "swin_factorizer_brats", "--model-arg",
          "channels=8,16,32,64,128", "--name", "nnUNetPlans_tiny"], env, tmp_path)  # fmt: skip
    trainer = "nnUNetTrainerSwinFactorizer_test"
    _run([str(bindir / "nnUNetv2_train"), "501", "3d_fullres", "0", "-tr", trainer,
          "-p", "nnUNetPlans_tiny", "-device", "cpu"], env, tmp_path)  # fmt: skip
    results = (
        tmp_path / "results" / "Dataset501_Phantoms" / f"{trainer}__nnUNetPlans_tiny__3d_fullres"
    )
    plans = json.loads((results / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert plans["architecture"]["network_class_name"] == "nmfseg:swin_factorizer_brats"
    assert all(p % 16 == 0 for p in plans["patch_size"])
    pred = tmp_path / "pred"
    _run([str(bindir / "nnUNetv2_predict"), "-i", str(raw / "imagesTr"), "-o", str(pred),
          "-d", "501", "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-p", "nnUNetPlans_tiny",
          "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env, tmp_path)  # fmt: skip
    report = tmp_path / "report"
    out = _run([nmfseg, "evaluate", "--pred", str(pred), "--gt", str(raw), "-o", str(report),
                "--no-plots"], env, tmp_path)  # fmt: skip
    summary = json.loads((report / "summary.json").read_text())
    assert summary["n_cases"] == 5 and summary["regions"] == ["WT", "TC", "ET"], out

    from nmfseg import Predictor

    p = Predictor.from_run(results, device="cpu")
    for case in ("BRATS_001", "BRATS_003"):
        files = [raw / "imagesTr" / f"{case}_{c:04d}.nii.gz" for c in range(4)]
        ours = np.asarray(p.predict_nifti(files).dataobj)
        theirs = np.asarray(nib.load(pred / f"{case}.nii.gz").dataobj)
        assert ours.shape == theirs.shape
        assert (ours == theirs).mean() >= 0.99  # nnU-Net resamples with splines, nmfseg linear
    result = cli("explain", "-m", results, "-i", raw / "imagesTr" / "BRATS_001_0000.nii.gz",
                 "-o", tmp_path / "explain", "--device", "cpu", "--layers", "0")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "explain" / "components.png").is_file()
