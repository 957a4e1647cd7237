"""Which fold of a trained run ``explain`` and ``ablate`` use, and which cases it validated on.

Both commands study one network: ``-r`` names a run folder (then ``--fold K`` picks
``fold_K``), a fold folder or a checkpoint file. ``ablate`` evaluates on the fold's own
validation cases, which the trainer records in the checkpoint's config (``split.val``).

Examples::

    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp()) / "Toy" / "swin_factorizer_isles"
    >>> for k in (0, 1):
    ...     (run / f"fold_{k}").mkdir(parents=True)
    ...     (run / f"fold_{k}" / "checkpoint_final.pt").touch()
    >>> path, others = fold_checkpoint(run, None)
    >>> path.parent.name, others
    ('fold_0', ['fold_1'])
    >>> fold_checkpoint(run, 1)[0].parent.name
    'fold_1'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nmfseg.data.formats import Dataset
from nmfseg.errors import ConfigError, DataError
from nmfseg.inference.ensemble import find_checkpoints

__all__ = ["fold_checkpoint", "validation_ids"]


def fold_checkpoint(
    model: str | Path, fold: int | str | None, checkpoint: str = "final"
) -> tuple[Path, list[str]]:
    """The checkpoint of one fold, and the other folds the run has.

    Args:
        model: Run folder, fold folder or checkpoint file.
        fold: The fold of a run folder (``None``: its first fold).
        checkpoint: ``final``, ``best`` or ``last``.

    Raises:
        ConfigError: ``fold`` given for a fold folder or a checkpoint file.
        DataError: No such model or fold (see :func:`find_checkpoints`).
    """
    path = Path(model)
    is_run = path.is_dir() and any(
        p.is_dir() and p.name.startswith("fold_") for p in path.iterdir()
    )
    if fold is not None and path.exists() and not is_run:
        raise ConfigError(f"--fold needs a run folder with fold_K folders, not {path}")
    paths = find_checkpoints(path, [fold] if fold is not None else None, checkpoint)
    return paths[0], [p.parent.name for p in paths[1:]]


def validation_ids(config: dict[str, Any], dataset: Dataset, where: str | Path) -> list[str]:
    """The validation case ids of the run, checked against ``dataset``.

    Raises:
        DataError: The config records no validation cases, or ``dataset`` lacks some of them
            or their labels.
    """
    split = config.get("split") if isinstance(config.get("split"), dict) else {}
    ids = split.get("val") if split else None
    if not ids:
        raise DataError(where, "the run's config records no validation cases (split.val)")
    known = set(dataset.case_ids)
    missing = [i for i in ids if i not in known]
    if missing:
        raise DataError(
            dataset.root,
            f"has no case {missing[0]} of the fold's validation set ({len(missing)} of "
            f"{len(ids)} missing); give the dataset the model was trained on",
        )
    unlabelled = [i for i in ids if dataset.get(i).label_path is None]
    if unlabelled:
        raise DataError(dataset.root, f"case {unlabelled[0]} has no label; ablate needs labels")
    return list(ids)
