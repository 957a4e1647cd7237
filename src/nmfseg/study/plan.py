"""The plan of a study: its (model, fold) jobs, their settings and commands, and what is done.

:func:`plan_study` turns the options of ``nmfseg study`` (:class:`StudyOptions`) into a
:class:`StudyPlan`, checking everything before anything is written: the model names, the fold
spec against the number of folds, every ``[MODEL:]KEY=VALUE`` setting, and every (model, fold)
run through :func:`~nmfseg.training.setup.prepare_run` (the network is built with its
arguments, the config validated, a run already on disk compared with the options).

Where a study keeps its files (``OUT`` is ``--out``)::

    OUT/runs/<dataset>/<model>/fold_K/   the training run (what `nmfseg train -o OUT/runs` writes)
    OUT/predictions/<model>/fold_K/      CASE.nii.gz of the fold's validation cases
    OUT/reports/<model>/fold_K/          metrics.csv and summary.json of those predictions

What is done is decided from these files alone, so a study killed anywhere continues where it
stopped, and runs and predictions made by the printed commands (``--print-jobs``,
:func:`~nmfseg.study.run.job_lines`) are found: a run is finished when it has
``checkpoint_final.pt`` and ``validation/summary.json``; a prediction is current when its
file is newer than the fold's ``checkpoint_final.pt``; a report is current when its
``summary.json`` names that checkpoint (size and modification time) and the fold's
validation cases. Every file is written atomically.

Examples::

    >>> parse_folds("0-2,4", 5)
    [0, 1, 2, 4]
    >>> parse_setting("segresnet_brats:init_filters=8", "--model-arg", ["segresnet_brats"])
    StudySetting(key='init_filters', text='8', model='segresnet_brats', option='--model-arg')
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nmfseg.errors import ConfigError, DataError
from nmfseg.evaluation.matching import find_predictions
from nmfseg.fileio import read_json
from nmfseg.models import list_models, model_info
from nmfseg.models._registry import PAPER_DATASETS
from nmfseg.text import parse_folds as parse_fold_list
from nmfseg.training.config import parse_value
from nmfseg.training.options import BY_KEY, BY_OPTION
from nmfseg.training.setup import prepare_run

__all__ = [
    "CHECKPOINT",
    "MANIFEST",
    "STAGES",
    "Job",
    "StudyOptions",
    "StudyPlan",
    "StudySetting",
    "checkpoint_stamp",
    "flops_input",
    "parse_folds",
    "parse_setting",
    "plan_study",
    "predictions_to_make",
    "report_is_current",
    "training_done",
]

#: Checkpoint every fold is predicted with: the end of training, never one picked on the
#: validation cases that are then scored (``best`` would be chosen on the test data).
CHECKPOINT = "final"
MANIFEST = "study.json"
STAGES = ("train", "predict", "evaluate")


@dataclass(frozen=True)
class StudySetting:
    """One ``KEY=VALUE`` as typed, for every model (``model`` None) or for one model."""

    key: str
    text: str
    model: str | None = None
    option: str = "--set"

    @property
    def value(self) -> Any:
        """The parsed value (``8,16`` is a list; a device name stays text)."""
        return self.text if self.key == "device" else parse_value(self.text, self.option)

    @property
    def source(self) -> str:
        """How the user gave it, for error messages (``--set segresnet_brats:optimizer.lr``)."""
        if self.option != "--set" and self.option != "--model-arg":
            return self.option
        return f"{self.option} {self.model + ':' if self.model else ''}{self.key}"


def parse_setting(text: str, option: str, models: list[str]) -> StudySetting:
    """``[MODEL:]KEY=VALUE`` -> :class:`StudySetting`; MODEL must be one of ``models``.

    Raises:
        ConfigError: no ``=``, an empty key, or an unknown model.
    """
    head, sep, value = text.partition("=")
    model, colon, key = head.strip().rpartition(":")
    if not sep or not key.strip():
        raise ConfigError(f"{option} {text!r}: expected [MODEL:]KEY=VALUE")
    if colon and model not in models:
        raise ConfigError(
            f"{option} {text!r}: {model!r} is not one of --models ({', '.join(models)})"
        )
    return StudySetting(key.strip(), value.strip(), model or None, option)


def parse_folds(spec: str | None, n_folds: int) -> list[int]:
    """Fold ids of a study from ``0-4``, ``0,2,3`` or ``1`` (:func:`nmfseg.text.parse_folds`,
    the grammar of every ``--folds``), each in ``0 .. n_folds - 1``; None means every fold.

    Raises:
        ConfigError: not a fold list, ``all`` (the ``fold_all`` model trained on the cases
            a study validates on), or a fold outside ``0 .. n_folds - 1``.
    """
    if spec is None or not spec.strip():
        return list(range(n_folds))
    folds = parse_fold_list(spec)
    if "all" in folds:
        raise ConfigError(
            f"--folds {spec!r}: a study compares models on each fold's validation cases, which "
            "the fold_all model trained on; give fold numbers (0-4), or no --folds for every fold"
        )
    wrong = [k for k in folds if int(k) >= n_folds]
    if wrong:
        raise ConfigError(
            f"--folds {spec!r}: fold {wrong[0]} is out of range: there are {n_folds} folds "
            f"(0-{n_folds - 1}); --n-folds sets how many"
        )
    return [int(k) for k in folds]


@dataclass
class StudyOptions:
    """What ``nmfseg study`` was asked to do (strings as typed; checked by :func:`plan_study`).

    Attributes:
        data_dir: labelled dataset folder in any supported format.
        out: the study folder.
        models: registered network names.
        folds: fold spec (``0-4``, ``0,2``); None for every fold.
        reference: model the others are tested against (default: the first).
        config_file: a YAML of training config keys for every model (as ``nmfseg train``).
        train: training settings in order: ``(option, text)`` with option ``--steps``,
            ``--patch-size``, ``--n-folds``, ``--seed``, ``--workers``, ``--device`` and
            text the value, or option ``--set`` and text ``[MODEL:]KEY=VALUE``.
        model_args: network arguments ``[MODEL:]KEY=VALUE``.
        fmt: dataset format (detected when None).
    """

    data_dir: Path
    out: Path
    models: list[str]
    folds: str | None = None
    reference: str | None = None
    config_file: Path | None = None
    train: list[tuple[str, str]] = field(default_factory=list)
    model_args: list[str] = field(default_factory=list)
    fmt: str | None = None


@dataclass
class Job:
    """One (model, fold): its settings, where its files go, its validation cases."""

    model: str
    fold: int
    settings: list[StudySetting]
    arg_settings: list[StudySetting]
    fold_dir: Path
    pred_dir: Path
    report_dir: Path
    val_ids: list[str] = field(default_factory=list)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    patch_size: list[int] = field(default_factory=list)
    flops_input: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        """``segresnet_brats fold 0``."""
        return f"{self.model} fold {self.fold}"

    def run_options(self) -> dict[str, Any]:
        """``overrides``, ``model_args`` and ``sources`` for
        :func:`~nmfseg.training.setup.prepare_run`."""
        return {
            "overrides": {s.key: s.value for s in self.settings},
            "model_args": {s.key: s.value for s in self.arg_settings},
            "sources": {s.key: s.source for s in self.settings},
        }

    @property
    def device(self) -> str | None:
        """The ``device`` setting, also used to predict (None: CUDA when available)."""
        return next((s.text for s in self.settings if s.key == "device"), None)


@dataclass
class StudyPlan:
    """A checked study: its options, dataset, folds and jobs (model-major order)."""

    options: StudyOptions
    dataset_name: str
    regions: list[str]
    n_folds: int
    folds: list[int]
    reference: str
    jobs: list[Job]

    @property
    def out(self) -> Path:
        """The study folder."""
        return self.options.out

    @property
    def models(self) -> list[str]:
        """The models, in table order."""
        return list(self.options.models)


def _effective(settings: list[StudySetting], model: str) -> list[StudySetting]:
    """The settings that apply to ``model``: all-model ones first, the last of a key wins."""
    chosen: dict[str, StudySetting] = {}
    for s in [s for s in settings if s.model is None] + [s for s in settings if s.model == model]:
        chosen.pop(s.key, None)
        chosen[s.key] = s
    return list(chosen.values())


def _check_models(options: StudyOptions) -> None:
    models = options.models
    if not models:
        raise ConfigError("--models: name at least one network (see nmfseg.list_models())")
    known = list_models()
    for name in models:
        if name not in known:
            raise ConfigError(f"--models {name!r}: unknown network; choose from {', '.join(known)}")
    twice = sorted({m for m in models if models.count(m) > 1})
    if twice:
        raise ConfigError(f"--models names {', '.join(twice)} more than once")
    if options.reference is not None and options.reference not in models:
        raise ConfigError(
            f"--reference {options.reference!r} is not one of --models ({', '.join(models)})"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "nmfseg study runs in one process; for several GPUs print the jobs with "
            "--print-jobs and run each 'nmfseg train' line under torchrun"
        )
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder; --out names the study folder")
    if options.config_file is not None and not Path(options.config_file).is_file():
        raise ConfigError(f"--config {options.config_file}: no such file")


def _settings(options: StudyOptions) -> tuple[list[StudySetting], list[StudySetting]]:
    train = []
    for option, text in options.train:
        if option == "--set":
            train.append(parse_setting(text, "--set", options.models))
        else:
            train.append(StudySetting(BY_OPTION[option].key, text.strip(), None, option))
    args = [parse_setting(t, "--model-arg", options.models) for t in options.model_args]
    # flags before --set items, as `nmfseg train` applies them
    train.sort(key=lambda s: s.option == "--set")
    return train, args


def _job(
    options: StudyOptions,
    model: str,
    fold: int,
    train: list[StudySetting],
    args: list[StudySetting],
) -> tuple[Job, dict[str, Any]]:
    """The job of (model, fold), checked by ``prepare_run``; and the run's dataset facts."""
    out = Path(options.out)
    job = Job(
        model=model,
        fold=fold,
        settings=_effective(train, model),
        arg_settings=_effective(args, model),
        fold_dir=Path(),
        pred_dir=out / "predictions" / model / f"fold_{fold}",
        report_dir=out / "reports" / model / f"fold_{fold}",
    )
    run = prepare_run(
        options.data_dir,
        model,
        fold,
        out / "runs",
        config_file=options.config_file,
        resume=True,
        fmt=options.fmt,
        **job.run_options(),
    )
    job.fold_dir = run.fold_dir
    job.val_ids = list(run.val_ids)
    job.model_kwargs = dict(run.config["model"]["kwargs"])
    job.patch_size = list(run.config["patch_size"])
    job.flops_input = flops_input(model, job.model_kwargs, job.patch_size)
    facts = {
        "n_folds": int(run.config["n_folds"]),
        "regions": list(run.config["dataset"]["regions"]),
        "dataset": run.dataset.name,
    }
    return job, facts


def flops_input(model: str, kwargs: dict[str, Any], patch: list[int]) -> tuple[int, ...]:
    """The input a network's FLOPs are counted at: the paper's input of the data it was
    built for (``(1, 4, 128, 128, 128)`` for BraTS' channels and regions, ``(1, 2, 64, 64,
    64)`` for ISLES'22's), whatever its preset; its training patch for other data.

    Examples::

        >>> kwargs = {"in_channels": 4, "out_channels": 3}
        >>> flops_input("swin_factorizer_isles", kwargs, [64, 64, 64])  # on BraTS data
        (1, 4, 128, 128, 128)
        >>> flops_input("swin_factorizer_isles", {"in_channels": 1, "out_channels": 2}, [96] * 3)
        (1, 1, 96, 96, 96)
    """
    counts = (int(kwargs.get("in_channels", 1)), int(kwargs.get("out_channels", 1)))
    size = next(
        (tuple(paper["patch_size"]) for paper in PAPER_DATASETS.values()
         if (paper["in_channels"], paper["out_channels"]) == counts),
        None,
    )  # fmt: skip
    if size is None:
        info = model_info(model)
        preset = (info.in_channels, info.out_channels) == counts and info.patch_size
        size = tuple(preset or patch)
    return (1, counts[0], *size)


def plan_study(options: StudyOptions) -> StudyPlan:
    """Check every option and every (model, fold) run; write nothing.

    Raises:
        ConfigError / DataError: one line naming the option or file and the problem.
    """
    options = dataclasses.replace(
        options,
        data_dir=Path(options.data_dir).expanduser(),
        out=Path(options.out).expanduser(),
        config_file=None if options.config_file is None else Path(options.config_file),
    )
    _check_models(options)
    train, args = _settings(options)
    first, facts = _job(options, options.models[0], 0, train, args)
    folds = parse_folds(options.folds, facts["n_folds"])
    jobs = []
    for model in options.models:
        for fold in folds:
            same = model == first.model and fold == first.fold
            jobs.append(first if same else _job(options, model, fold, train, args)[0])
    return StudyPlan(
        options=options,
        dataset_name=facts["dataset"],
        regions=facts["regions"],
        n_folds=facts["n_folds"],
        folds=folds,
        reference=options.reference or options.models[0],
        jobs=jobs,
    )


# --------------------------------------------------------------------------- commands


def train_command(plan: StudyPlan, job: Job) -> list[str]:
    """The self-contained ``nmfseg train`` command of a job (absolute paths, ``--resume``)."""
    o = plan.options
    argv = ["nmfseg", "train", "-d", str(Path(o.data_dir).resolve()), "--model", job.model]
    argv += ["--fold", str(job.fold), "--out", str((Path(o.out) / "runs").resolve())]
    if o.fmt:
        argv += ["--format", o.fmt]
    if o.config_file is not None:
        argv += ["--config", str(Path(o.config_file).resolve())]
    for s in job.settings:
        flag = BY_KEY[s.key].option if s.key in BY_KEY else None
        argv += [flag, s.text] if flag else ["--set", f"{s.key}={s.text}"]
    for s in job.arg_settings:
        argv += ["--model-arg", f"{s.key}={s.text}"]
    return [*argv, "--resume"]


def predict_command(plan: StudyPlan, job: Job) -> list[str]:
    """The ``nmfseg predict`` command of a job: the whole dataset with the fold's final
    checkpoint (the study scores the fold's validation cases among them)."""
    argv = ["nmfseg", "predict", "-r", str(job.fold_dir.resolve())]
    argv += ["-i", str(Path(plan.options.data_dir).resolve())]
    argv += ["-o", str(job.pred_dir.resolve()), "--checkpoint", CHECKPOINT, "--overwrite"]
    return argv + (["--device", job.device] if job.device else [])


# --------------------------------------------------------------------------- state on disk


def checkpoint_stamp(job: Job) -> dict[str, Any] | None:
    """Size and modification time of the job's ``checkpoint_final.pt`` (None if absent)."""
    path = job.fold_dir / f"checkpoint_{CHECKPOINT}.pt"
    try:
        st = path.stat()
    except OSError:
        return None
    return {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def training_done(job: Job) -> bool:
    """The run has its final checkpoint and its validation summary."""
    return (
        checkpoint_stamp(job) is not None
        and (job.fold_dir / "validation" / "summary.json").is_file()
    )


def predictions_to_make(job: Job) -> list[str]:
    """Validation cases whose prediction is missing or older than the final checkpoint."""
    stamp = checkpoint_stamp(job)
    if stamp is None or not job.pred_dir.is_dir():
        return list(job.val_ids)
    found = find_predictions(job.pred_dir)
    return [
        cid
        for cid in job.val_ids
        if cid not in found or found[cid].stat().st_mtime_ns < stamp["mtime_ns"]
    ]


def report_is_current(job: Job) -> bool:
    """The report exists and was made from the current checkpoint's predictions."""
    from_summary = _report_stamp(job.report_dir / "summary.json")
    stamp = checkpoint_stamp(job)
    return stamp is not None and from_summary == {"checkpoint": stamp, "cases": job.val_ids}


def _report_stamp(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return read_json(path).get("study")
    except DataError:
        return None
