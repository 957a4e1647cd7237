"""Bad input, end to end: one table of CLI cases, each asserting the exit status, the one
line that names the file or option, and that nothing partial is left behind.

Adding a case is one :class:`Case` line in :data:`CASES`. Arguments are format strings over
the paths of the :func:`world` fixture: ``{data}`` (a 4-case toy ISLES'22 dataset), ``{run}``
(a 2-step run trained on it), ``{runs}`` (a results root holding two runs), ``{tmp}`` (a
fresh folder per case), and datasets with one defect each: ``{nnisles}`` (nnU-Net, ISLES'22
channels), ``{nn2d}`` (a 2D image), ``{nnmissing}`` / ``{msdmissing}`` (a case's files
missing). Unwritable locations are under ``/sys``, which refuses writes even to root.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import typer

from helpers import cli, train_tiny
from nmfseg.cli import app
from nmfseg.cli._options import NMF, SETTING_OPTIONS, WINDOW, with_settings
from nmfseg.data.schemes import SCHEMES
from nmfseg.phantoms.toy import make_toy_dataset

UNWRITABLE = "/sys/fs/nmfseg-test"


@dataclass(frozen=True)
class Case:
    """``nmfseg ARGS`` must exit with ``code`` and print a line matching ``line``; the paths
    in ``absent`` (format strings too) must not exist afterwards."""

    name: str
    args: tuple[str, ...]
    line: str
    code: int = 1
    absent: tuple[str, ...] = ()


TRAIN = (
    "train",
    "{data}",
    "--model",
    "swin_factorizer_isles",
    "--n-folds",
    "2",
    "--steps",
    "2",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--quiet",
    "--out",
    "{tmp}/runs",
)
PREDICT = ("predict", "-m", "{run}", "-i", "{data}", "--device", "cpu", "--quiet")
#: What a rank above min(rows, columns) of the run's NMF matrices is told (issue 21).
RANK_LIMIT = (
    r"swin_factorizer_isles allows at most 4: its matrices have head_dim=4 rows and 64 columns "
    r"\(a 4x4x4 window\), and a rank above min\(rows, columns\) of a matrix cannot describe it "
    r"better$"
)

CASES = [
    # operating-system errors: one line naming the path, before any expensive work
    Case("train read-only out", (*TRAIN[:-1], UNWRITABLE + "/runs"),
         r"^nmfseg: error: /sys/fs/nmfseg-test/runs/.*cannot write the training run here: "
         r"/sys/fs: Permission denied$"),
    Case("evaluate read-only out",
         ("evaluate", "--pred", "{foreign}", "--gt", "{data}", "-o", UNWRITABLE),
         r"^nmfseg: error: /sys/fs/nmfseg-test: cannot write the report here: .*denied$"),
    Case("split read-only out", ("split", "{data}", "--out", UNWRITABLE + "/splits.json"),
         r"^nmfseg: error: /sys/fs/nmfseg-test\S*: cannot write the splits file here: "
         r".*Permission denied$"),
    Case("predict read-only out", (*PREDICT, "-o", UNWRITABLE),
         r"^nmfseg: error: /sys/fs/nmfseg-test: cannot write the predictions here: .*denied$"),
    # options accepted and then failing
    Case("patch of the wrong dimensionality", (*TRAIN, "--patch-size", "32,32"),
         r"^nmfseg: error: --patch-size 32,32: 2 sizes for 3D images; give 3 sizes",
         absent=("{tmp}/runs",)),
    Case("patch below the down-sampling factor", (*TRAIN, "--patch-size", "7"),
         r"^nmfseg: error: --patch-size 7,7,7: below the network's down-sampling factor 16; "
         r"use multiples of 16", absent=("{tmp}/runs",)),
    Case("train --amp", (*TRAIN, "--amp", "fp8"),
         r"^nmfseg: error: --amp: must be bf16 or none, got 'fp8'$", absent=("{tmp}/runs",)),
    Case("predict --amp", (*PREDICT, "-o", "{tmp}/pred", "--amp", "fp8"),
         r"^nmfseg: error: --amp 'fp8': must be bf16 or none$", absent=("{tmp}/pred",)),
    Case("evaluate --format", ("evaluate", "--pred", "{foreign}", "--gt", "{data}",
                               "-o", "{tmp}/report", "--format", "foo"),
         r"^nmfseg: error: --format 'foo': not a dataset format; choose from .*isles22",
         absent=("{tmp}/report",)),
    Case("evaluate --scheme (old spelling)", ("evaluate", "--pred", "{foreign}", "--gt",
                                              "{data}", "-o", "{tmp}/report", "--scheme", "foo"),
         r"^nmfseg: error: --format 'foo': not a dataset format", absent=("{tmp}/report",)),
    Case("grad checkpointing of a network without stages",
         (*TRAIN, "--model", "segresnet_brats", "--grad-checkpointing"),
         r"^nmfseg: error: --grad-checkpointing: segresnet_brats cannot recompute its stages",
         absent=("{tmp}/runs",)),
    Case("train --format", (*TRAIN, "--format", "foo"),
         r"^nmfseg: error: --format 'foo': not a dataset format", absent=("{tmp}/runs",)),
    # data problems
    Case("2D and 3D files in a case", ("check-data", "{nn2d}"),
         r"toy_001_0001.nii.gz: is a 3D volume .*toy_001_0000.nii.gz a 2D image"),
    Case("dataset.json case without files", ("check-data", "{msdmissing}"),
         r"BRATS_002.*listed in dataset.json.*(missing|not found)"),
    Case("nnU-Net numTraining above the cases found", ("check-data", "{nnmissing}"),
         r"dataset.json: numTraining is 2 but 1 training cases were found"),
    # guards
    Case("predict into the input's labels", ("predict", "-m", "{run}", "-i", "{nnisles}", "-o",
                                             "{nnisles}/labelsTr", "--overwrite", "--device",
                                             "cpu"),
         r"^nmfseg: error: .*NnIsles/labelsTr: holds the ground-truth labels of the input.*"
         r"--write-into-labels"),
    Case("predict into another run's outputs", (*PREDICT, "-o", "{foreign}"),
         r"^nmfseg: error: .*\{foreign_name\}.*predict\.json.*--overwrite"),
    Case("predict from a root of two runs", ("predict", "-m", "{runs}", "-i", "{data}", "-o",
                                             "{tmp}/pred", "--device", "cpu"),
         r"^nmfseg: error: .*holds 2 runs.*swin_factorizer_isles", absent=("{tmp}/pred",)),
    # numeric options: one line in the project's words, not click's usage box
    Case("ablate --repeats 0", ("ablate", "-m", "{run}", "--data", "{data}", "-o", "{tmp}/abl",
                                "--repeats", "0"),
         r"^nmfseg: error: --repeats '0': must be an integer >= 1$", absent=("{tmp}/abl",)),
    Case("ablate --repeats x", ("ablate", "-m", "{run}", "--data", "{data}", "-o", "{tmp}/abl",
                                "--repeats", "x"),
         r"^nmfseg: error: --repeats 'x': must be an integer >= 1$", absent=("{tmp}/abl",)),
    # the shared prediction settings, checked the same in every verb that takes them
    Case("ablate --overlap 1", ("ablate", "-m", "{run}", "--data", "{data}", "-o", "{tmp}/abl",
                                "--overlap", "1"),
         r"^nmfseg: error: --overlap '1': must be a number in \[0, 1\)$", absent=("{tmp}/abl",)),
    Case("explain --blend", ("explain", "-m", "{run}", "-i", "{data}", "-o", "{tmp}/exp",
                             "--blend", "linear"),
         r"^nmfseg: error: --blend 'linear': must be gaussian or constant$",
         absent=("{tmp}/exp",)),
    Case("export --nmf-rank 0", ("export", "{run}", "-o", "{tmp}/m.onnx", "--nmf-rank", "0"),
         r"^nmfseg: error: --nmf-rank '0': must be an integer >= 1$", absent=("{tmp}/m.onnx",)),
    Case("export --fold x", ("export", "{run}", "-o", "{tmp}/m.onnx", "--fold", "x"),
         r"^nmfseg: error: --fold 'x': must be a fold number \(0, 1, ...\) or all$",
         absent=("{tmp}/m.onnx",)),
    Case("postprocess-search --min-gain -1", ("postprocess-search", "-m", "{run}", "--data",
                                              "{data}", "--min-gain", "-1"),
         r"^nmfseg: error: --min-gain '-1': must be a number >= 0$"),
    # issue 21 (A): NMF rank, Predictor and nmf() preconditions, presets on other data
    Case("predict --nmf-rank 5000", (*PREDICT, "-o", "{tmp}/pred", "--nmf-rank", "5000"),
         r"^nmfseg: error: --nmf-rank 5000: " + RANK_LIMIT, absent=("{tmp}/pred",)),
    Case("predict --nmf-rank 64 on 4x4x4 windows",
         (*PREDICT, "-o", "{tmp}/pred", "--nmf-rank", "64"),
         r"^nmfseg: error: --nmf-rank 64: " + RANK_LIMIT, absent=("{tmp}/pred",)),
    Case("ablate --ranks 5000, before any case",
         ("ablate", "-m", "{run}", "-d", "{data}", "-o", "{tmp}/abl", "--ranks", "5000"),
         r"^nmfseg: error: --ranks 5000: " + RANK_LIMIT, absent=("{tmp}/abl",)),
    Case("ablate --ranks 5-64 --sweeps rank",
         ("ablate", "-m", "{run}", "-d", "{data}", "-o", "{tmp}/abl", "--ranks", "5-64",
          "--sweeps", "rank"),
         r"^nmfseg: error: --ranks 5-64: " + RANK_LIMIT, absent=("{tmp}/abl",)),
    Case("export --nmf-rank 5", ("export", "{run}", "-o", "{tmp}/m.onnx", "--nmf-rank", "5"),
         r"^nmfseg: error: --nmf-rank 5: " + RANK_LIMIT, absent=("{tmp}/m.onnx",)),
    Case("train --model-arg rank=5000, before reading a case",
         (*TRAIN, "--model-arg", "rank=5000"),
         r"^nmfseg: error: .*rank=5000 is above 4: its matrices have head_dim=4 rows and 64 "
         r"columns \(a 4x4x4 window\)", absent=("{tmp}/runs",)),
    # issue 21 (B): post-processing, lists, .onnx where a run is expected, predict.json
    Case("train --model-arg with a gap", (*TRAIN, "--model-arg", "channels=4,,16"),
         r"^nmfseg: error: --model-arg channels '4,,16': an empty item in the comma list$",
         absent=("{tmp}/runs",)),
    Case("train --patch-size with a gap", (*TRAIN, "--patch-size", "16,,16"),
         r"^nmfseg: error: --patch-size '16,,16': an empty item in the comma list$",
         absent=("{tmp}/runs",)),
    Case("predict --postprocess none with a rule",
         (*PREDICT, "-o", "{tmp}/pred", "--postprocess", "none", "--postprocess", "largest:lesion"),
         r"^nmfseg: error: --postprocess none --postprocess largest:lesion: 'none' cannot be "
         r"combined with a rule", absent=("{tmp}/pred",)),
    Case("predict --postprocess with a gap",
         (*PREDICT, "-o", "{tmp}/pred", "--postprocess", "largest:lesion,,lesion"),
         r"^nmfseg: error: --postprocess 'largest:lesion,,lesion': an empty item in the comma "
         r"list$", absent=("{tmp}/pred",)),
    Case("predict --postprocess auto without postprocess-search",
         (*PREDICT, "-o", "{tmp}/pred", "--postprocess", "auto"),
         r"^nmfseg: error: --postprocess auto: no postprocessing\.json next to the model's "
         r"folds; run nmfseg postprocess-search first$", absent=("{tmp}/pred",)),
    Case("predict --folds with a gap", (*PREDICT, "-o", "{tmp}/pred", "--folds", "1,,1"),
         r"^nmfseg: error: --folds '1,,1': an empty item in the comma list$",
         absent=("{tmp}/pred",)),
    Case("postprocess-search --min-gain 2", ("postprocess-search", "-m", "{run}", "--data",
                                             "{data}", "--min-gain", "2"),
         r"^nmfseg: error: --min-gain 2: must be a number in \[0, 1\)"),
    Case("postprocess-search --folds with a gap", ("postprocess-search", "-m", "{run}",
                                                   "--data", "{data}", "--folds", "1,"),
         r"^nmfseg: error: --folds '1,': an empty item in the comma list$"),
    Case("train --model-arg bogus", (*TRAIN, "--model-arg", "bogus=1"),
         r"^nmfseg: error: --model-arg bogus: swin_factorizer_isles has no argument 'bogus'$",
         absent=("{tmp}/runs",)),
    Case("study --models with a gap", ("study", "{data}", "-o", "{tmp}/study", "--models",
                                       "swin_factorizer_isles,,unet_isles"),
         r"^nmfseg: error: --models 'swin_factorizer_isles,,unet_isles': an empty item in the "
         r"comma list$", absent=("{tmp}/study",)),
    Case("compare -o a file", ("compare", "{run}", "{run}", "-o",
                               "{run}/fold_1/checkpoint_final.pt"),
         r"^nmfseg: error: .*checkpoint_final\.pt: cannot write the comparison here: .*is a file$"),
    Case("compare --names with a gap", ("compare", "{run}", "{run}", "--names", "a,,b"),
         r"^nmfseg: error: --names 'a,,b': an empty item in the comma list$"),
    # issue 21 (C): export, explain and the first hour on a CPU
    Case("explain read-only out, before loading the model",
         ("explain", "-m", "{run}", "-i", "{data}", "-o", UNWRITABLE),
         r"^nmfseg: error: /sys/fs/nmfseg-test: cannot write the component maps here: "
         r"/sys/fs: Permission denied$"),
    Case("explain -o a file", ("explain", "-m", "{run}", "-i", "{data}", "-o",
                               "{data}/dataset_description.json"),
         r"^nmfseg: error: .*dataset_description.json: cannot write the component maps here: "
         r".*dataset_description.json is a file$"),
    Case("export read-only out", ("export", "{run}", "-o", UNWRITABLE + "/m.onnx"),
         r"^nmfseg: error: /sys/fs/nmfseg-test: cannot write the ONNX model here: .*denied$"),
    Case("export whose sidecar would replace a file",
         ("export", "{run}", "-o", "{data}/dataset_description.onnx"),
         r"^nmfseg: error: .*dataset_description.json: exists; add --overwrite to replace "
         r"the model and its .json$", absent=("{data}/dataset_description.onnx",)),
    Case("export --tolerance below float32 rounding",
         ("export", "{run}", "-o", "{tmp}/m.onnx", "--tolerance", "1e-30", "--quiet"),
         r"^nmfseg: error: swin_factorizer_isles: max \|onnxruntime - torch\| of the logits is "
         r"\S+ at 1x2x32x32x32, above --tolerance 1e-30; that is float32 rounding \(logits up "
         r"to \S+\): use --tolerance 1e-\d\d or more \(default 0.0001\)$",
         absent=("{tmp}/m.onnx", "{tmp}/m.json")),
]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """The datasets and runs the cases refer to (built once; trained under umask 022)."""
    root = tmp_path_factory.mktemp("world")
    old = os.umask(0o022)
    try:
        data, run = train_tiny(root)
    finally:
        os.umask(old)
    runs = root / "two_runs"
    shutil.copytree(run, runs / data.name / run.name)
    shutil.copytree(run, runs / data.name / "copy_of_the_run")
    foreign = root / "foreign"  # CASE.nii.gz files another tool wrote, no predict.json
    foreign.mkdir()
    for label in sorted((data / "labelsTr").iterdir()) if (data / "labelsTr").is_dir() else []:
        shutil.copy(label, foreign / label.name)
    if not any(foreign.iterdir()):  # ISLES'22 layout: derivatives/SUBJECT/.../*_msk.nii.gz
        for i, mask in enumerate(sorted(data.rglob("*_msk.nii.gz"))):
            shutil.copy(mask, foreign / f"sub-strokecase{i + 1:04d}.nii.gz")

    nnisles = make_toy_dataset(
        root / "NnIsles", "nnunet", n_cases=2, shape=(28, 30, 26), scheme=SCHEMES["isles22"]
    )
    nn2d = make_toy_dataset(root / "Nn2D", "nnunet", n_cases=2, shape=(20, 20, 20), seed=2)
    image = nn2d / "imagesTr" / "toy_001_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20), np.float32), np.eye(4)), image)
    nnmissing = make_toy_dataset(root / "NnMissing", "nnunet", n_cases=2, shape=(20, 20, 20))
    for f in nnmissing.glob("*/toy_002*.nii.gz"):
        f.unlink()
    msdmissing = make_toy_dataset(root / "MsdMissing", "msd_brats", n_cases=2, shape=(20,) * 3)
    for f in msdmissing.glob("*/BRATS_002.nii.gz"):
        f.unlink()
    return dict(
        data=str(data),
        run=str(run),
        runs=str(runs),
        foreign=str(foreign),
        foreign_name=foreign.name,
        nn2d=str(nn2d),
        nnisles=str(nnisles),
        msdmissing=str(msdmissing),
        nnmissing=str(nnmissing),
    )


@pytest.mark.parametrize(
    ("verb", "settings"),
    [
        ("predict", list(SETTING_OPTIONS)),
        ("ablate", [*WINDOW, "threshold", "amp"]),
        ("explain", list(WINDOW)),
        ("export", list(NMF)),
    ],
)
def test_each_verb_takes_its_settings_once(verb, settings):
    """Every verb that predicts lists the settings it takes, spelt one way, in --help."""
    flags = {n: SETTING_OPTIONS[n].param_decls[0] for n in SETTING_OPTIONS}
    text = cli(verb, "--help").output
    for name, flag in flags.items():
        assert (re.search(rf"(^|\s){flag}\b", text) is not None) == (name in settings), flag


def test_with_settings_refuses_what_is_not_a_setting():
    with pytest.raises(TypeError, match="not a prediction setting: patch_size"):
        with_settings("overlap", "patch_size")
    with pytest.raises(TypeError, match="no 'settings' parameter"):
        with_settings("overlap")(lambda overlap=None: overlap)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, world, tmp_path):
    paths = {**world, "tmp": str(tmp_path)}
    result = cli(*[a.format(**paths) for a in case.args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == case.code, result.output
    pattern = case.line.replace(r"\{foreign_name\}", re.escape(world["foreign_name"]))
    assert any(re.search(pattern, line) for line in lines), result.output
    assert "Traceback" not in result.output
    for path in case.absent:
        assert not Path(path.format(**paths)).exists(), f"{path} was left behind"
    assert not list(tmp_path.rglob("*.tmp*")), "a temporary file was left behind"


def test_disk_full_during_checkpoint_keeps_the_previous_one(world, tmp_path, monkeypatch):
    """A full disk at the second checkpoint write: one line with the space needed, the
    previous checkpoint intact, no temporary file."""
    import nmfseg.fileio as fileio

    real, writes = fileio._fsync, []

    def fsync(path: Path) -> None:
        writes.append(path)
        if "checkpoint_last" in path.name and sum("checkpoint_last" in p.name for p in writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path)

    monkeypatch.setattr(fileio, "_fsync", fsync)
    result = cli(
        *[a.format(data=world["data"], tmp=tmp_path) for a in TRAIN],
        "--model-arg",
        "channels=4,8,16",
        "--model-arg",
        "deep_supr_num=1",
        "--patch-size",
        "16",
        "--steps",
        "4",
        "--val-every",
        "1",
        "--checkpoint-every",
        "1",
    )
    assert result.exit_code == 1, result.output
    assert re.search(
        r"checkpoint_last\.pt: No space left on device: the file needs about "
        r"[\d.]+ [KMG]B; .* the previous file is kept",
        result.output,
    ), result.output
    assert "Traceback" not in result.output
    fold = next(tmp_path.glob("runs/*/*/fold_0"))
    assert (fold / "checkpoint_last.pt").is_file()
    assert not [p for p in fold.iterdir() if ".tmp" in p.name]


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def read_only(tmp_path):
    """Make a folder read-only for real: ``chmod`` for a user, a read-only bind mount for
    root (which ignores permissions); skipped where neither is possible."""
    mounted: list[Path] = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            for p in [folder, *folder.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
        elif shutil.which("mount") and _mount("--bind", str(folder), str(folder)):
            mounted.append(folder)
            if not _mount("-o", "remount,ro,bind", str(folder)):
                pytest.skip("cannot remount read-only here")
        else:
            pytest.skip("root without mount privileges cannot make a read-only folder")

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True)
    for p in [tmp_path, *tmp_path.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs mount privileges; skipped elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small file system needs root")
    if not _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)):
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", str(disk)], capture_output=True)


def test_train_refuses_a_disk_too_small_before_any_work(world, small_disk):
    """Checkpoints that cannot fit on the disk: refused before preprocessing starts."""
    args = [a.format(data=world["data"], tmp=small_disk) for a in TRAIN]
    result = cli(*args, "--patch-size", "32")
    assert result.exit_code == 1, result.output
    assert re.search(
        r"not enough space for the training run: about [\d.]+ MB needed, "
        r"[\d.]+ MB free$",
        result.output.strip(),
    ), result.output
    assert not list(small_disk.iterdir())


def test_split_into_a_read_only_dataset(read_only, tmp_path):
    data = make_toy_dataset(tmp_path / "Toy", "isles22", n_cases=4, shape=(20, 20, 20))
    read_only(data)
    result = cli("split", data, "--n-folds", 2)
    assert result.exit_code == 1, result.output
    assert re.fullmatch(
        rf"nmfseg: error: {re.escape(str(data))}.*(Read-only file system|Permission denied)\n",
        result.output,
    ), result.output
    assert not (data / "splits.json").exists()


def test_postprocess_search_in_a_read_only_run_fails_before_predicting(
    world, read_only, tmp_path, monkeypatch
):
    """The run folder that will hold postprocessing.json is checked before any case."""
    import nmfseg.analysis.postprocess as postprocess

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    read_only(run)

    def predicted(*args, **kwargs):
        raise AssertionError("a case was predicted")

    monkeypatch.setattr(postprocess, "_fold_pairs", predicted)
    result = cli("postprocess-search", "-m", run, "--data", world["data"], "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert re.fullmatch(
        rf"nmfseg: error: {re.escape(str(run))}: cannot write the post-processing file here: "
        r".*(Read-only file system|Permission denied)\n",
        result.output,
    ), result.output
    assert not (run / "postprocessing.json").exists()


def test_outputs_are_readable_by_others(world):
    """Under umask 022 every file of a run is 0644, like a plain open() makes it."""
    files = [p for p in Path(world["run"]).rglob("*") if p.is_file()]
    assert any(p.name.startswith("checkpoint_") for p in files)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


def test_default_workers_are_left_to_the_trainer():
    """``workers: null`` stays null in the checked config: the trainer picks the number for
    the device (``nmfseg.training.cores``, tested in ``tests/test_cores.py``)."""
    from nmfseg.training.config import load_recipe, validate_config

    assert load_recipe("default")["workers"] is None
    assert validate_config(load_recipe("default"))["workers"] is None
    assert validate_config({**load_recipe("default"), "workers": 2})["workers"] == 2


def _commands(group: typer.Typer) -> list[str]:
    return sorted(
        c.name or c.callback.__name__.replace("_", "-") for c in group.registered_commands
    )


@pytest.mark.parametrize("command", _commands(app))
def test_help_text(command):
    """No ``<bool>`` metavar, no ``{...}`` in the usage line, and --amp in its error's words."""
    result = cli(command, "--help")
    assert result.exit_code == 0, result.output
    usage = result.output.splitlines()[0]
    assert usage.startswith(f"Usage: nmfseg {command} [OPTIONS]"), usage
    assert "{" not in usage and "<" not in usage, usage
    assert "<bool>" not in result.output, result.output
    if "--amp" in result.output:
        assert "bf16 or none" in " ".join(result.output.split()), result.output


def _parsers():
    from nmfseg.analysis.ablate_plan import parse_int_list
    from nmfseg.cli._common import parse_number
    from nmfseg.inference.settings import parse_layers
    from nmfseg.text import parse_folds

    return {
        "--nmf-layers": lambda t: parse_layers(t, 9),
        "ablate --iters": lambda t: parse_int_list(t, "--iters", 0),
        "--steps": lambda t: parse_number(t, "--steps", int),
        "--folds": parse_folds,
    }


@pytest.mark.parametrize("option", list(_parsers()))
@pytest.mark.parametrize("text", ["²", "1-²", "٣"])
def test_digits_int_cannot_read_are_refused_in_a_line(option, text):
    """``str.isdigit`` takes ``²`` and ``٣``; ``int`` refuses the first and reads the second:
    every number a user types is checked by ``nmfseg.text.is_number`` (ASCII digits)."""
    from nmfseg.errors import ConfigError
    from nmfseg.inference.postprocess import PostProcessing

    with pytest.raises(ConfigError):
        _parsers()[option](text)
    with pytest.raises(ConfigError, match="needs a voxel count"):
        PostProcessing.parse([f"min-size:ET={text}"], ("WT", "TC", "ET"))
