"""One word per thing in every verb (issue 23): ``-m/--model`` a registered network,
``-r/--run`` a trained run, ``-d/--data`` a dataset, one ``--folds`` grammar; the older
spellings still work, hidden, and mean the same.

Each verb runs twice, canonical and old spelling, up to the library call that receives what
the options named; that call is recorded (and stops the verb), and both runs must record the
same arguments. One end-to-end pair (``predict -r`` and ``predict -m``) writes the same files.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer

from helpers import cli, train_tiny
from nmfseg.cli import app
from nmfseg.errors import ConfigError
from nmfseg.text import parse_folds

STOP = object()


@pytest.fixture
def record(monkeypatch):
    """``record(target, returns=STOP)`` replaces the function ``target`` (``module.name``) by
    one that appends its arguments to ``record.calls`` and returns ``returns`` (a callable:
    its result) or, by default, stops the command with ``nmfseg: error: recorded``."""
    calls: list[tuple[str, tuple, dict]] = []

    def patch(target: str, returns: Any = STOP) -> None:
        module, name = target.rsplit(".", 1)

        def fake(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, args, kwargs))
            if returns is STOP:
                raise ConfigError("recorded")
            return returns(*args, **kwargs) if callable(returns) else returns

        monkeypatch.setattr(importlib.import_module(module), name, fake)

    patch.calls = calls  # type: ignore[attr-defined]
    return patch


def _recorded(record, *args: Any) -> list:
    """The calls ``nmfseg ARGS`` made to the recorded functions (it must stop there)."""
    record.calls.clear()
    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == "nmfseg: error: recorded", result.output
    return list(record.calls)


# verb: (recorded functions, {name: returns}), the canonical and the old arguments; in the
# arguments, {d} is a dataset, {r} a run, {o} an output folder (none needs to exist)
PAIRS = {
    "check-data": (
        {"nmfseg.cli.data._open": STOP},
        ("check-data", "-d", "{d}"),
        ("check-data", "{d}"),
    ),
    "split": (
        {"nmfseg.cli.data._open": STOP},
        ("split", "-d", "{d}", "--n-folds", "3"),
        ("split", "{d}", "--folds", "3"),
    ),
    "train": (
        {"nmfseg.training.setup.prepare_run": STOP},
        ("train", "-d", "{d}", "-m", "unet_isles", "-o", "{o}", "--fold", "all"),
        ("train", "{d}", "--model", "unet_isles", "-o", "{o}", "--fold", "all"),
    ),
    "study": (
        {"nmfseg.study.plan.plan_study": STOP},
        ("study", "-d", "{d}", "-m", "a,b", "-o", "{o}", "--folds", "0-2,4"),
        ("study", "{d}", "--models", "a", "-m", "b", "-o", "{o}", "--folds", "0-2,4"),
    ),
    "evaluate": (
        {"nmfseg.evaluation.matching.find_ground_truth": STOP},
        ("evaluate", "--pred", "{o}", "-d", "{d}", "-o", "{o}/report"),
        ("evaluate", "--pred", "{o}", "--gt", "{d}", "-o", "{o}/report"),
    ),
    "nnunet-plans": (
        {"nmfseg.nnunet.require_nnunet": None, "nmfseg.nnunet.write_plans_variant": STOP},
        ("nnunet-plans", "-d", "501", "-m", "unetr_brats"),
        ("nnunet-plans", "501", "--model", "unetr_brats"),
    ),
    "predict": (
        {"nmfseg.cli.predict.model_for_engine": STOP},
        ("predict", "-r", "{r}", "-i", "{d}", "-o", "{o}", "--folds", "0-1,3", "--tta"),
        ("predict", "-m", "{r}", "-i", "{d}", "--output", "{o}", "--folds", "0", "1", "3",
         "--tta"),
    ),
    "explain": (
        {"nmfseg.cli.explain.one_fold": STOP},
        ("explain", "-r", "{r}", "-i", "{d}", "-o", "{o}", "--fold", "1"),
        ("explain", "--model", "{r}", "-i", "{d}", "-o", "{o}", "-f", "1"),
    ),
    "ablate": (
        {
            "nmfseg.analysis.runs.fold_checkpoint": (Path("fold_1/checkpoint_final.pt"), []),
            "nmfseg.data.formats.open_dataset": STOP,
        },
        ("ablate", "-r", "{r}", "-d", "{d}", "-o", "{o}", "--fold", "1"),
        ("ablate", "-m", "{r}", "--data", "{d}", "-o", "{o}", "--fold", "1"),
    ),
    "postprocess-search": (
        {
            "nmfseg.data.formats.open_dataset": "DATASET",
            "nmfseg.analysis.postprocess.postprocess_run": STOP,
        },
        ("postprocess-search", "-r", "{r}", "-d", "{d}", "--folds", "all,0"),
        ("postprocess-search", "--model", "{r}", "--data", "{d}", "--folds", "all", "0"),
    ),
    "export": (
        {"nmfseg.cli.export.one_fold": STOP},
        ("export", "-r", "{r}", "-o", "{o}/bundle", "--format", "monai-bundle", "--fold", "all"),
        ("export", "{r}", "-o", "{o}/bundle", "--format", "monai-bundle", "--fold", "all"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("verb", list(PAIRS))
def test_canonical_and_old_spelling_mean_the_same(verb, record, tmp_path):
    targets, canonical, old = PAIRS[verb]
    for target, returns in targets.items():
        record(target, returns)
    paths = dict(d=tmp_path / "Data", r=tmp_path / "runs" / "Data" / "net", o=tmp_path / "out")
    new = _recorded(record, *(a.format(**paths) for a in canonical))
    assert new == _recorded(record, *(a.format(**paths) for a in old))
    named = str(paths["d"]) if verb != "nnunet-plans" else "501"
    if verb in ("predict", "explain", "export"):
        named = str(paths["r"])
    assert named in repr(new), new  # the value reached the library, under either spelling


def test_what_the_spellings_carry(record, tmp_path):
    """The values the canonical spellings carry: the fold list, ``all`` as the fold_all
    model, the study's fold spec and model list."""
    record("nmfseg.cli.predict.model_for_engine")
    for given, folds in ((["0-1,3"], [0, 1, 3]), (["all"], ["all"]), ([], [])):
        option = ["--folds", *given] if given else []
        [(_, args, _)] = _recorded(record, "predict", "-r", "r", "-i", "i", "-o", "o", *option)
        assert args[3] == folds
    record("nmfseg.study.plan.plan_study")
    [(_, (options,), _)] = _recorded(
        record, "study", "-d", "d", "-m", "a,b", "-o", tmp_path, "--folds", "0 2"
    )
    assert (options.folds, options.models, options.data_dir) == ("0,2", ["a", "b"], Path("d"))


def test_network_lists_take_commas_or_repeats(record):
    """``-m`` names networks the same way in complexity, demo and study."""
    record("nmfseg.models.complexity.model_complexity", lambda name, size: SimpleNamespace(
        name=name, input_shape=(8, 8, 8), params=1e6, paper_params=None, flops=1e9,
        paper_gflops=None))  # fmt: skip
    commas = cli("complexity", "-m", "unet_isles,segresnet_brats")
    repeats = cli("complexity", "-m", "unet_isles", "--model", "segresnet_brats")
    assert commas.exit_code == 0, commas.output
    assert commas.output == repeats.output
    assert re.search(r"unet_isles.*\n.*segresnet_brats", commas.output), commas.output
    record("nmfseg.demo.run_demo")
    [(_, _, kwargs)] = _recorded(record, "demo", "-m", "a,b")
    assert kwargs["models"] == ["a", "b"]


@pytest.mark.parametrize(
    ("verb", "args"),
    [
        ("predict", ("predict", "-r", "r", "-i", "i", "-o", "o")),
        ("explain", ("explain", "-r", "r", "-i", "i", "-o", "o")),
        ("ablate", ("ablate", "-r", "r", "-d", "d", "-o", "o")),
        ("postprocess-search", ("postprocess-search", "-r", "r", "-d", "d")),
        ("export", ("export", "-r", "r", "-o", "o")),
        ("train", ("train", "-d", "d", "-m", "unet_isles", "-o", "o")),
    ],
)
def test_the_old_spelling_and_the_new_with_different_values_is_one_line(verb, args):
    old = {"export": ("other",), "train": ("other",)}.get(verb, ("-m", "other"))
    result = cli(*args, *old)
    assert result.exit_code == 1, result.output
    name = "-d/--data" if verb == "train" else "-r/--run"
    assert re.fullmatch(
        rf"nmfseg: error: \S+ is the old spelling of {name}; give only {name}\n", result.output
    ), result.output


@pytest.mark.parametrize(
    "args",
    [("predict", "-i", "i", "-o", "o"), ("export", "-o", "o"), ("check-data",)],
)
def test_a_missing_run_or_dataset_is_one_line(args):
    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert re.fullmatch(r"nmfseg: error: -(r/--run|d/--data) is required: .*\n", result.output)


BASE = {
    "predict": ("predict", "-r", "{t}/r", "-i", "{t}/i", "-o", "{t}/o", "--folds"),
    "postprocess-search": ("postprocess-search", "-r", "{t}/r", "-d", "{t}/d", "--folds"),
    "study": ("study", "-d", "{t}/d", "-m", "a", "-o", "{t}/o", "--folds"),
}


@pytest.mark.parametrize("verb", list(BASE))
@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("0-x", "expected fold numbers like 0-4 or 0,2,3, or all"),
        ("x", "expected fold numbers like 0-4 or 0,2,3, or all"),
        ("3-1", "the range 3-1 is empty"),
        ("1,,2", "an empty item in the comma list"),
        ("1,", "an empty item in the comma list"),
    ],
)
def test_bad_folds_are_one_line(verb, spec, problem, tmp_path):
    result = cli(*(a.format(t=tmp_path) for a in BASE[verb]), spec)
    assert result.exit_code == 1, result.output
    assert result.output == f"nmfseg: error: --folds {spec!r}: {problem}\n"
    assert not list(tmp_path.iterdir())


def test_a_study_refuses_the_fold_all_model(tmp_path):
    result = cli(*(a.format(t=tmp_path) for a in BASE["study"]), "0,all")
    assert result.exit_code == 1, result.output
    assert re.fullmatch(r"nmfseg: error: --folds '0,all': a study compares .*\n", result.output)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("export", "-r", "r", "-o", "{tmp}/m.onnx", "--fold", "0-1"),
         r"--fold '0-1': must be a fold number \(0, 1, ...\) or all"),
        (("explain", "-r", "r", "-i", "i", "-o", "{tmp}/x", "--fold", "all"),
         r"--fold 'all': must be a fold number \(0, 1, ...\)"),
    ],
)  # fmt: skip
def test_one_fold_is_one_word_of_the_same_grammar(args, line, tmp_path):
    result = cli(*(str(a).format(tmp=tmp_path) for a in args))
    assert result.exit_code == 1, result.output
    assert re.fullmatch(rf"nmfseg: error: {line}\n", result.output), result.output


def test_the_fold_grammar():
    assert parse_folds("0-2,4") == [0, 1, 2, 4]
    assert parse_folds("4, 1-2 all,1") == [4, 1, 2, "all"]
    assert parse_folds("all") == ["all"]  # the fold_all model, as train --fold all makes it
    for bad in ("", " ", "-1", "1-", "a-b", "ALL", "١"):
        with pytest.raises(ConfigError, match=r"^--folds "):
            parse_folds(bad)


@pytest.mark.parametrize(
    ("verb", "hidden"),
    [
        ("predict", ["--model", "--output"]),
        ("explain", ["--model"]),
        ("ablate", ["--model"]),
        ("postprocess-search", ["--model"]),
        ("evaluate", ["--gt"]),
        ("train", ["DATA_DIR"]),
        ("study", ["DATA_DIR"]),
        ("check-data", ["DATA_DIR"]),
        ("split", ["DATA_DIR"]),
        ("nnunet-plans", ["DATASET"]),
        ("export", ["RUN_DIR"]),
    ],
)
def test_old_spellings_are_hidden(verb, hidden):
    """The old spellings are declared hidden: not in --help, not in the usage line."""
    command = typer.main.get_command(app).commands[verb]
    found = {
        word: p
        for p in command.params
        for word in ((p.metavar,) if p.param_type_name == "argument" else p.opts)
        if word in hidden
    }
    assert set(found) == set(hidden)
    assert all(p.hidden for p in found.values())
    text = cli(verb, "--help").output
    assert text.splitlines()[0] == f"Usage: nmfseg {verb} [OPTIONS]", text


@pytest.mark.slow
def test_predict_with_run_and_with_old_model_writes_the_same(tmp_path):
    data, run = train_tiny(tmp_path)
    outputs = {}
    for flag in ("-r", "-m"):
        out = tmp_path / f"pred{flag}"
        result = cli("predict", flag, run, "-i", data, "-o", out, "--device", "cpu", "--quiet")
        assert result.exit_code == 0, result.output
        outputs[flag] = {p.name: p.read_bytes() for p in out.glob("*.nii.gz")}
    assert outputs["-r"] and outputs["-r"] == outputs["-m"]
