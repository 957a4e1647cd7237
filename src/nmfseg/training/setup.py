"""Everything a training run needs, resolved and checked before anything is written.

:func:`prepare_run` turns the command line into a :class:`TrainingRun`: the dataset (opened
and checked for labels), the resolved config (recipe + YAML + overrides, validated), the
fold's train/validation case ids, the network (built, so bad ``--model-arg`` values fail
here) and the fold folder ``OUT/<dataset>/<model>/fold_K``. Any user error is raised here
as a one-line :class:`~nmfseg.errors.NmfsegError`, before a single file is created.

Resuming: with ``resume=True`` and a ``checkpoint_last.pt`` in the fold folder, the config
stored in the checkpoint is used, so the run continues exactly as it began. The command
may repeat the options it was started with (the same command plus ``--resume`` works), but
an option whose value differs from the stored one is refused, except the runtime options
(:data:`RUNTIME_KEYS`: device, workers, amp, compile, deterministic, grad_checkpointing),
which may change.
Without ``--resume``, a fold folder that already holds checkpoints is refused.

The preprocessing (:class:`~nmfseg.data.normalization.Preprocessing`) is planned here from
the fold's training cases (:func:`~nmfseg.training.planning.plan_preprocessing`: the
normalization of each channel from its name, the CT statistics of the training foreground,
the target spacing when the cases' spacings differ) and stored as
``config["dataset"]["preprocessing"]``; training, validation and prediction all read it from
there.

Folds come from ``splits.json``: the dataset folder's own file if it has one (e.g. written
by ``nmfseg split``), else ``OUT/<dataset>/splits.json``, created on first use with the
data layer's deterministic (ISLES'22: volume-stratified) splits, seed 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmfseg.data.formats import Dataset, open_dataset
from nmfseg.data.normalization import (
    Preprocessing,
)
from nmfseg.data.splits import default_splits_path, load_splits, make_splits, select_fold
from nmfseg.errors import ConfigError, DataError
from nmfseg.fileio import check_writable
from nmfseg.models import create_model, list_models, model_info
from nmfseg.models._registry import PAPER_DATASETS
from nmfseg.models.checkpoint import read_checkpoint
from nmfseg.text import is_number
from nmfseg.training.config import (
    apply_overrides,
    flatten_config,
    load_recipe,
    load_yaml,
    merge_config,
    validate_config,
)
from nmfseg.training.data import TAG_INIT, derive_seed
from nmfseg.training.planning import header_geometry, plan_preprocessing

__all__ = ["RUNTIME_KEYS", "TrainingRun", "plan_preprocessing", "prepare_run"]

RUNTIME_KEYS = ("device", "workers", "amp", "compile", "deterministic", "grad_checkpointing")
SPLITS_SEED = 0


@dataclass
class TrainingRun:
    """A checked, ready-to-start training run (nothing written yet)."""

    config: dict[str, Any]
    dataset: Dataset
    fold_dir: Path
    train_ids: list[str]
    val_ids: list[str]
    model: nn.Module
    splits_path: Path
    new_splits: list[dict[str, list[str]]] | None = None
    resume_from: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def dataset_dir(self) -> Path:
        """``OUT/<dataset>``: shared by models and folds (splits, preprocessed cache)."""
        return self.fold_dir.parent.parent


def _check_labels(dataset: Dataset) -> None:
    """Refuse a dataset with no cases, no labels or a missing label file."""
    if not dataset.cases:
        raise DataError(dataset.root, "no cases found")
    if not dataset.has_labels:
        raise DataError(dataset.root, "has no labels; training needs a labelled dataset")
    missing = [c for c in dataset.cases if c.label_path is None or not Path(c.label_path).is_file()]
    if missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more case(s))" if len(missing) > 1 else ""
        where = first.label_path or first.case_id
        raise DataError(where, f"label file of case {first.case_id} is missing{more}")


def _resolve_config(
    dataset: Dataset,
    model_name: str,
    config_file: str | Path | None,
    overrides: dict[str, Any],
    model_args: dict[str, Any],
    sources: dict[str, str],
) -> tuple[dict[str, Any], list[str]]:
    """The recipe + YAML + overrides, checked; and notes on the values changed (warm-up)."""
    notes: list[str] = []
    dims = model_args.get("spatial_dims", model_info(model_name).spatial_dims)
    dims = dims if dims in (2, 3) else 3  # a bad --model-arg spatial_dims fails at the build
    cfg = load_recipe("2d" if dims == 2 else dataset.scheme.recipe)  # dataset recipes are 3D
    if config_file is not None:
        cfg = merge_config(cfg, load_yaml(config_file), where=f"--config {config_file}")
    cfg = apply_overrides(cfg, overrides)
    cfg["model_args"] = {**cfg.get("model_args", {}), **model_args}
    patch = cfg["patch_size"]
    if isinstance(patch, int) and not isinstance(patch, bool):  # one size: a square or a cube
        cfg["patch_size"] = [patch] * dims
    if cfg["patch_size"] is None:
        preset = model_info(model_name).patch_size
        cfg["patch_size"] = list(preset) if preset and len(preset) == dims else [128] * dims
    cfg = validate_config(cfg, sources)
    steps, warmup = cfg["steps"], cfg["scheduler"]["warmup_steps"]
    if warmup >= steps:
        if "scheduler.warmup_steps" in overrides:
            raise ConfigError(
                f"{sources.get('scheduler.warmup_steps', 'scheduler.warmup_steps')}: warm-up "
                f"({warmup} steps) must be shorter than the run ({steps} steps)"
            )
        cfg["scheduler"]["warmup_steps"] = steps // 50
        notes.append(
            f"warm-up of {warmup} steps is not shorter than the {steps}-step run; using "
            f"{steps // 50} (2% of the steps, the paper's ratio); set --warmup-steps to choose"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg["batch_size"] % world:
        raise ConfigError(
            f"{sources.get('batch_size', 'batch_size')}: the global batch of "
            f"{cfg['batch_size']} cannot be split evenly over {world} processes"
        )
    return cfg, notes


def _build_model(name: str, cfg: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The network for the dataset's channels and regions (seeded), and its keyword arguments."""
    kwargs = dict(cfg["model_args"])
    channels = len(cfg["dataset"]["channels"])
    regions = len(cfg["dataset"]["regions"])
    for key, value in (("in_channels", channels), ("out_channels", regions)):
        if key in kwargs and kwargs[key] != value:
            raise ConfigError(
                f"--model-arg {key}={kwargs[key]}: the dataset needs {key}={value} "
                f"({', '.join(cfg['dataset']['channels' if key == 'in_channels' else 'regions'])})"
            )
        kwargs[key] = value
    torch.manual_seed(derive_seed(cfg["seed"], TAG_INIT))
    try:
        model = create_model(name, **kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--model-arg: {name}: {err}") from None
    return model, kwargs


def preset_note(model_name: str, data: dict[str, Any]) -> list[str]:
    """A note when a paper preset is built for a dataset of other channels or regions.

    A preset (``swin_factorizer_isles``: 2 channels -> 1 region) is built with the dataset's
    channels and regions, so it trains on any dataset (an nnU-Net CT folder has no preset of
    its own), and the run's ``model.kwargs`` records the real ``in_channels`` and
    ``out_channels``; the note says so and names the preset made for that data, if any.

    Examples::

        >>> data = {"channels": ["flair", "t1", "t1ce", "t2"], "regions": ["ET", "TC", "WT"]}
        >>> print(preset_note("swin_factorizer_isles", data)[0])
        swin_factorizer_isles is the ISLES22 preset (2 channels -> 1 region); it is built for
        this dataset's 4 channels (flair, t1, t1ce, t2) -> 3 regions (ET, TC, WT), and its
        #params and FLOPs are those of that network; swin_factorizer_brats is the preset for
        such data
        >>> preset_note("swin_factorizer_brats", data)
        []
    """
    info = model_info(model_name)
    channels, regions = list(data["channels"]), list(data["regions"])
    if info.dataset is None or (info.in_channels, info.out_channels) == (
        len(channels),
        len(regions),
    ):
        return []
    family = model_name.rsplit("_", 1)[0]
    other = [
        f"{family}_{key}"
        for key, paper in PAPER_DATASETS.items()
        if (paper["in_channels"], paper["out_channels"]) == (len(channels), len(regions))
        and f"{family}_{key}" in list_models()
        and model_info(f"{family}_{key}").spatial_dims == info.spatial_dims
    ]
    hint = f"; {other[0]} is the preset for such data" if other else ""
    return [
        f"{model_name} is the {info.dataset} preset ({info.in_channels} channels -> "
        f"{info.out_channels} region{'s' if info.out_channels > 1 else ''}); it is built for "
        f"this dataset's {len(channels)} channels ({', '.join(channels)}) -> {len(regions)} "
        f"region{'s' if len(regions) > 1 else ''} ({', '.join(regions)}), and its #params and "
        f"FLOPs are those of that network{hint}"
    ]


def _check_dims(dataset: Dataset, case_id: str, model: nn.Module, model_name: str) -> None:
    """Refuse a network whose spatial dims are not those of the images (from one header)."""
    dims = getattr(model, "spatial_dims", 3)
    case = dataset.get(case_id)
    _, shape = header_geometry(case)
    if len(shape) != dims:
        presets = {2: "swin_factorizer_2d", 3: "swin_factorizer_brats"}
        raise ConfigError(
            f"--model {model_name}: a {dims}D network, but {dataset.name} holds {len(shape)}D "
            f"images ({case_id}: {'x'.join(map(str, shape))}); train a {len(shape)}D network, "
            f"e.g. {presets.get(len(shape), '')} (or --model-arg spatial_dims={len(shape)})"
        )


def _check_patch(patch: list[int], model: nn.Module, sources: dict[str, str]) -> list[str]:
    """Refuse a patch the network cannot use; notes for a wasteful one.

    A patch has one size per spatial axis of the network; a size below the network's
    down-sampling factor would leave less than one voxel in its deepest level.
    """
    label = sources.get("patch_size", "patch_size")
    dims = getattr(model, "spatial_dims", 3)
    if len(patch) != dims:
        raise ConfigError(
            f"{label} {','.join(map(str, patch))}: {len(patch)} sizes for {dims}D images; "
            f"give {dims} sizes (or one for a cube)"
        )
    factor = int(getattr(model, "size_multiple", 1))
    if min(patch) < factor:
        raise ConfigError(
            f"{label} {','.join(map(str, patch))}: below the network's down-sampling factor "
            f"{factor}; use multiples of {factor} (e.g. {factor} or {2 * factor})"
        )
    odd = [p for p in patch if p % factor]
    if not odd:
        return []
    near = sorted({f for p in odd for f in (p // factor * factor, -(-p // factor) * factor)})
    return [
        f"{label} {','.join(map(str, patch))} is not a multiple of the network's down-sampling "
        f"factor {factor}: every patch is zero-padded to one; {' or '.join(map(str, near))} "
        "would waste nothing"
    ]


def _splits(
    dataset: Dataset, dataset_dir: Path, n_folds: int, fold: str
) -> tuple[Path, list[dict[str, list[str]]] | None, dict[str, list[str]]]:
    """The splits file, the splits if new (to be written), and the fold's train/val ids."""
    new = None
    path = default_splits_path(dataset)
    if not path.is_file():
        path = dataset_dir / "splits.json"
    if path.is_file():
        splits = load_splits(path, dataset)
        if fold != "all" and len(splits) != n_folds:
            raise ConfigError(
                f"{path} has {len(splits)} folds but n_folds is {n_folds}; "
                f"pass --n-folds {len(splits)} or delete the file"
            )
    else:
        splits = new = make_splits(dataset, n_folds, SPLITS_SEED)
    split = select_fold(splits, fold)
    if not split["train"] or not split["val"]:
        raise DataError(path, f"fold {fold} has no training or no validation cases")
    return path, new, split


def prepare_run(
    data_dir: str | Path,
    model_name: str,
    fold: str | int,
    out: str | Path,
    *,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    model_args: dict[str, Any] | None = None,
    sources: dict[str, str] | None = None,
    resume: bool = False,
    fmt: str | None = None,
) -> TrainingRun:
    """Check and resolve a training run; writes nothing.

    Args:
        data_dir: dataset folder in any supported format (must be labelled).
        model_name: a registered network (``nmfseg.list_models()``).
        fold: fold index (``0 .. n_folds - 1``) or ``"all"``.
        out: results root; the run goes to ``out/<dataset>/<model>/fold_<fold>``.
        config_file: optional YAML with config keys overriding the dataset's recipe.
        overrides: dotted config keys -> values (``{"steps": 100, "optimizer.lr": 3e-4}``).
        model_args: keyword arguments for the network (``{"channels": [8, 16, 32, 64, 128]}``).
        sources: config key -> option name, for error messages.
        resume: continue from ``checkpoint_last.pt`` if the fold folder has one.
        fmt: dataset format (detected when None).

    Raises:
        ConfigError / DataError: one line naming the option or file and the problem.
    """

    overrides, model_args, sources = (
        dict(overrides or {}),
        dict(model_args or {}),
        dict(sources or {}),
    )
    fold = _check_model_and_fold(model_name, fold)
    dataset = open_dataset(data_dir, fmt)
    _check_labels(dataset)
    fold_dir = Path(out).expanduser() / dataset.name / model_name / f"fold_{fold}"
    cfg, more = _resolve_config(dataset, model_name, config_file, overrides, model_args, sources)
    last = fold_dir / "checkpoint_last.pt"
    resume_from = last if resume and last.is_file() else None
    if resume_from is None:
        notes = _start_new_run(cfg, dataset, fold_dir, fold, resume) + more
    else:
        cfg = _config_for_resume(
            resume_from, cfg, model_name, config_file, overrides, model_args, sources
        )
        notes = []
    model, checks = _checked_model(model_name, cfg, sources)
    notes += checks
    splits_path, new_splits, split = _splits(dataset, fold_dir.parent.parent, cfg["n_folds"], fold)
    _check_dims(dataset, split["train"][0], model, model_name)
    _record_split(cfg, splits_path, split, fold, resumed=resume_from is not None)
    _set_preprocessing(cfg, dataset, split["train"], resumed=resume_from is not None)
    _check_space(fold_dir, model)
    return TrainingRun(
        config=cfg,
        dataset=dataset,
        fold_dir=fold_dir,
        train_ids=list(split["train"]),
        val_ids=list(split["val"]),
        model=model,
        splits_path=splits_path,
        new_splits=new_splits,
        resume_from=resume_from,
        notes=notes,
    )


def _check_model_and_fold(model_name: str, fold: str | int) -> str:
    """Refuse an unknown network or a fold that is neither a number nor 'all'; the fold as text."""
    if model_name not in list_models():
        raise ConfigError(
            f"--model {model_name!r}: unknown network; choose one of {', '.join(list_models())}"
        )
    fold = str(fold)
    if fold != "all" and not is_number(fold):
        raise ConfigError(f"--fold {fold!r}: must be a fold number (0, 1, ...) or 'all'")
    return fold


def _start_new_run(
    cfg: dict[str, Any], dataset: Dataset, fold_dir: Path, fold: str, resume: bool
) -> list[str]:
    """Refuse a fold folder with a run or a fold out of range; record the dataset and fold."""
    if not resume and any(fold_dir.glob("checkpoint_*.pt")):
        raise ConfigError(
            f"{fold_dir} already holds a training run; pass --resume to continue it, "
            "or choose another --out (or delete the folder) to start again"
        )
    notes = [f"no checkpoint_last.pt in {fold_dir}; starting a new run"] if resume else []
    if fold != "all" and int(fold) >= cfg["n_folds"]:
        raise ConfigError(
            f"--fold {fold} is out of range: there are {cfg['n_folds']} folds "
            f"(0-{cfg['n_folds'] - 1}) or 'all'"
        )
    scheme = dataset.scheme
    cfg["dataset"] = {
        "name": dataset.name,
        "root": str(Path(dataset.root).resolve()),
        "format": dataset.fmt,
        "scheme": scheme.to_dict(),
        "channels": list(scheme.channels),
        "regions": list(scheme.regions),
    }
    cfg["fold"] = int(fold) if is_number(fold) else fold
    return notes


def _checked_model(
    model_name: str, cfg: dict[str, Any], sources: dict[str, str]
) -> tuple[nn.Module, list[str]]:
    """Build the network; refuse a patch or grad checkpointing it cannot use; its notes."""
    # built before any case is read, so a bad --model-arg fails at once
    model, kwargs = _build_model(model_name, cfg)
    cfg["model"] = {"name": model_name, "kwargs": kwargs}
    notes = _check_patch(cfg["patch_size"], model, sources)
    notes += preset_note(model_name, cfg["dataset"])
    if cfg["grad_checkpointing"] and not hasattr(model, "set_grad_checkpointing"):
        raise ConfigError(
            f"{sources.get('grad_checkpointing', 'grad_checkpointing')}: {model_name} cannot "
            "recompute its stages in backward; leave it off"
        )
    return model, notes


def _record_split(
    cfg: dict[str, Any], path: Path, split: dict[str, list[str]], fold: str, resumed: bool
) -> None:
    """Refuse a resumed fold whose validation cases changed; store the split in the config."""
    if resumed and cfg.get("split", {}).get("val") not in (None, split["val"]):
        raise DataError(path, f"fold {fold} changed since the run began; cannot resume")
    cfg["split"] = {"file": str(path.resolve()), "val": list(split["val"])}


def _set_preprocessing(
    cfg: dict[str, Any], dataset: Dataset, train_ids: list[str], resumed: bool
) -> None:
    """Plan a new run's preprocessing into the config; check a resumed run's."""
    if not resumed:
        cfg["dataset"]["preprocessing"] = plan_preprocessing(dataset, train_ids).to_dict()
    else:  # a run of an older nmfseg has none (the default); a broken one fails here
        Preprocessing.from_config(cfg)


def _check_space(fold_dir: Path, model: nn.Module) -> None:
    """Refuse a fold folder without room for three checkpoints of weights and AdamW's moments."""
    need = 3 * 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    check_writable(fold_dir, need_bytes=need, what="training run")


def _config_for_resume(
    path: Path,
    new: dict[str, Any],
    model_name: str,
    config_file: str | Path | None,
    overrides: dict[str, Any],
    model_args: dict[str, Any],
    sources: dict[str, str],
) -> dict[str, Any]:
    """The stored config, after checking that the given options (resolved into ``new``)
    and the network do not contradict it."""
    stored = read_checkpoint(path)["config"]
    given = dict.fromkeys(overrides)
    if config_file is not None:
        given.update(dict.fromkeys(flatten_config(load_yaml(config_file))))
    flat_new, flat_old = flatten_config(new), flatten_config(stored)
    differ = [
        sources.get(k, k)
        for k in given
        if k not in RUNTIME_KEYS and k != "model_args" and flat_new.get(k) != flat_old.get(k)
    ]
    differ += [
        f"--model-arg {k}"
        for k, v in new["model_args"].items()
        if k in model_args and stored.get("model_args", {}).get(k) != v
    ]
    if differ:
        raise ConfigError(
            f"{', '.join(differ)}: differs from the run being resumed; it continues with the "
            f"config in {path.parent / 'config.yaml'} (only {', '.join(RUNTIME_KEYS)} may change)"
        )
    cfg = dict(stored)
    # runtime keys given now, or newer than the run (its nmfseg did not know them)
    cfg.update({k: new[k] for k in RUNTIME_KEYS if k in overrides or k not in cfg})
    if cfg["model"]["name"] != model_name:
        raise ConfigError(f"--resume: {path} was trained with {cfg['model']['name']}")
    return cfg
