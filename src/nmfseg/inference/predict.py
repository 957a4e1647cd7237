"""Predict a dataset folder or a single case and write one NIfTI label map per case.

For every case, through :meth:`~nmfseg.inference.predictor.Predictor.predict_case`: the same
preprocessing as training (crop to the nonzero box, channel-wise z-score on nonzero voxels),
sliding-window inference with the training patch size and 50% overlap (Gaussian blending),
sigmoid, mean of the probabilities over the folds (and over the flips with TTA: 8 in 3D, 4 in
2D), threshold ``p >= 0.5`` (the config's ``validation.threshold``), undo the crop, regions →
labels in the **input dataset's own label scheme** (BraTS: ET inside TC inside WT → 1/2/4 or
1/2/3), and ``OUT/CASE.nii.gz`` written atomically with the original shape, affine and header
(qform and sform codes kept), like nnU-Net. Every one of those settings can be changed
(:class:`~nmfseg.inference.settings.InferenceSettings`, also the Factorizer's NMF switches),
and ``OUT/predict.json`` records them with the model's checkpoints, so a folder never mixes
the outputs of two models or settings.

With ``save_probabilities`` a ``OUT/CASE_probabilities.npz`` is written next to it
(:func:`~nmfseg.inference.predictor.save_probabilities`: NumPy compressed, like nnU-Net's
``.npz``), holding ``probabilities`` (float16, ``(R, X, Y, Z)`` in
the original grid, region order of ``regions``), ``regions`` (names) and ``affine``.

A case that cannot be predicted (unreadable or corrupt file, wrong geometry, NaN, wrong
channel count) is reported in one line and skipped; the others are still written. The
caller (``nmfseg predict``) exits non-zero at the end when any case failed. Problems that
concern every case (missing model, input that is not a dataset or case, a channel count or
region set that does not fit the model) stop before anything is written.

Examples::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from nmfseg.phantoms.toy import make_toy_dataset
    >>> from nmfseg.inference.ensemble import Ensemble
    >>> from nmfseg.inference.predict import predict_folder
    >>> from nmfseg.inference.predictor import Predictor
    >>> tmp = Path(tempfile.mkdtemp())
    >>> root = make_toy_dataset(tmp / "isles", "isles22", n_cases=2, shape=(12, 10, 9))
    >>> ens = Ensemble([torch.nn.Conv3d(2, 1, 1)], [], (8, 8, 8), 2, 1)
    >>> result = predict_folder(Predictor(ens), root, tmp / "pred", progress=False)
    >>> sorted(p.name for p in result.written), result.failed
    (['sub-strokecase0001.nii.gz', 'sub-strokecase0002.nii.gz'], {})
"""

from __future__ import annotations

import contextlib
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nmfseg import __version__
from nmfseg.data.formats import Case, Dataset, case_output_name, open_input
from nmfseg.data.schemes import DatasetScheme
from nmfseg.errors import ConfigError, DataError, NmfsegError
from nmfseg.fileio import check_writable, read_json, write_json
from nmfseg.inference.ensemble import output_scheme
from nmfseg.inference.predictor import Predictor

__all__ = [
    "SIDECAR",
    "PredictionResult",
    "predict_folder",
    "prediction_record",
    "probabilities_name",
    "summary_line",
]

_CASE_ERRORS = (NmfsegError, OSError, EOFError, ValueError, zlib.error)
#: The record of what made the predictions of a folder (:func:`prediction_record`).
SIDECAR = "predict.json"
#: Settings that may change between runs into one folder (they do not change the labels).
_FREE_SETTINGS = ("device", "compile")


@dataclass
class PredictionResult:
    """What :func:`predict_folder` did.

    Attributes:
        written: label files written, in case order.
        skipped: ids of cases whose outputs already existed (without ``overwrite``).
        failed: ``case id -> one-line problem`` of the cases that could not be predicted.
        output_scheme: the label scheme the outputs are written in.
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    output_scheme: DatasetScheme | None = None


def probabilities_name(label_name: str) -> str:
    """``CASE.nii.gz`` → ``CASE_probabilities.npz``.

    Examples::

        >>> probabilities_name("BraTS2021_00000.nii.gz")
        'BraTS2021_00000_probabilities.npz'
    """
    for ending in (".nii.gz", ".nii"):
        if label_name.endswith(ending):
            label_name = label_name[: -len(ending)]
    return f"{label_name}_probabilities.npz"


def _echo(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def prediction_record(
    predictor: Predictor, model: Any, input: str | Path, scheme: DatasetScheme
) -> dict[str, Any]:
    """What ``OUT/predict.json`` holds: the model, its checkpoints, the input and the settings.

    Examples::

        >>> import torch
        >>> from nmfseg.data.schemes import SCHEMES
        >>> from nmfseg.inference.ensemble import Ensemble
        >>> ens = Ensemble([torch.nn.Conv3d(2, 1, 1)], [], (8, 8, 8), 2, 1)
        >>> record = prediction_record(Predictor(ens), "run", "data", SCHEMES["isles22"])
        >>> record["settings"]["overlap"], record["output_scheme"]
        (0.5, 'isles22')
    """
    return {
        "nmfseg_version": __version__,
        "model": str(model) if isinstance(model, str | Path) else predictor.model_name,
        "checkpoints": [str(Path(p).resolve()) for p in predictor.ensemble.sources],
        "input": str(Path(input).resolve()),
        "output_scheme": scheme.name,
        "settings": predictor.resolved_settings(),
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What makes two records' predictions differ (device and compilation do not count)."""
    out = []
    if old.get("checkpoints") != new["checkpoints"]:
        out.append(f"model {old.get('model')!s}")
    if old.get("output_scheme") != new["output_scheme"]:
        out.append(f"labels {old.get('output_scheme')}")
    settings = old.get("settings") if isinstance(old.get("settings"), dict) else {}
    for key, value in new["settings"].items():
        if key not in _FREE_SETTINGS and settings.get(key) != value:
            out.append(f"{key} {settings.get(key)!r}")
    return out


def _output_bytes(dataset: Dataset, probabilities: bool) -> int:
    """A rough lower bound of the space the predictions take: a compressed label map is
    about a quarter of one compressed input channel; probabilities are about as big as it."""
    total, channels = 0, len(dataset.scheme.channels)
    for case in dataset.cases:
        with contextlib.suppress(OSError):  # one channel file, or a 4D file of every channel
            size = case.image_paths[0].stat().st_size
            total += size // channels if len(case.image_paths) == 1 else size
    return total // 4 + (total * len(dataset.scheme.regions) if probabilities else 0)


def _check_output(
    output: Path, record: dict[str, Any], overwrite: bool, dataset: Dataset, into_labels: bool
) -> None:
    """Refuse to write into the input's own label folder, or to add predictions of another
    model or settings (or of an unknown origin) to a folder."""
    if output.exists() and not output.is_dir():
        raise DataError(output, "exists and is not a folder; give an output folder")
    labels = {Path(c.label_path).parent.resolve() for c in dataset.cases if c.label_path}
    if not into_labels and output.resolve() in labels:
        raise DataError(
            output,
            "holds the ground-truth labels of the input; predictions would replace them: "
            "choose another -o (or pass --write-into-labels as well to do it anyway)",
        )
    sidecar = output / SIDECAR
    if overwrite:
        return
    if not sidecar.is_file():
        names = {case_output_name(c) for c in dataset.cases}
        if output.is_dir() and any((output / n).is_file() for n in names):
            raise ConfigError(
                f"{output} holds CASE.nii.gz files that no {SIDECAR} describes; pass "
                "--overwrite to replace them, or choose another -o"
            )
        return
    old = read_json(sidecar)
    differ = _differences(old, record)
    if differ and _holds_predictions(output):
        raise ConfigError(
            f"{output} holds predictions made with other settings ({'; '.join(differ)} in "
            f"{SIDECAR}); pass --overwrite to replace them, or choose another -o"
        )


def _holds_predictions(output: Path) -> bool:
    """Whether ``output`` holds label or probability files (a ``predict.json`` alone, left by
    a run that stopped before its first case, describes nothing and may be replaced)."""
    return any(
        p.name.endswith((".nii.gz", ".nii", ".npz")) and not p.name.startswith(".")
        for p in output.iterdir()
    )


def predict_folder(
    predictor: Predictor,
    input: str | Path,
    output: str | Path,
    *,
    save_probabilities: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    into_labels: bool = False,
    model: str | Path | None = None,
) -> PredictionResult:
    """Predict every case of a dataset folder (or one case) into ``output``.

    Writes ``OUT/CASE.nii.gz`` per case and, with the first of them, ``OUT/predict.json``
    (:func:`prediction_record`: model, checkpoints, input and every setting). A folder
    holding predictions whose ``predict.json`` records another model or other settings is
    refused unless ``overwrite`` (a ``predict.json`` with no predictions beside it is
    replaced); with the same ones, cases already written are skipped (an interrupted run
    resumes).

    Args:
        predictor: The loaded model and its settings
            (:meth:`~nmfseg.inference.predictor.Predictor.from_run`: folds, checkpoint,
            device, TTA, sliding window, NMF switches...).
        input: dataset folder in any supported format (labels optional) or a single case.
        output: folder for ``CASE.nii.gz`` (created if needed).
        save_probabilities: also write ``CASE_probabilities.npz``.
        overwrite: redo cases whose outputs exist (otherwise they are skipped).
        progress: tqdm progress bar over the cases.
        into_labels: allow ``output`` to be the input's own label folder (otherwise refused:
            the predictions would replace the ground truth).
        model: what ``-r`` named, recorded in ``predict.json`` (default: the network's name).

    Returns:
        A :class:`PredictionResult`; failed cases are listed there (and reported on
        stderr as they happen), not raised.

    Raises:
        NmfsegError: a problem that concerns every case (input, channel count, an output
            folder holding other predictions).
    """
    dataset = _open_dataset(input, predictor)
    scheme, note = output_scheme(dataset, predictor.ensemble)
    output = Path(output)
    record = prediction_record(predictor, model, input, scheme)
    _check_output(output, record, overwrite, dataset, into_labels)
    _prepare_output(output, dataset, save_probabilities, note)
    result = PredictionResult(output_scheme=scheme)
    for case in _progress(dataset.cases, progress):
        _predict_into(predictor, case, output, record, result, save_probabilities, overwrite)
    return result


def _open_dataset(input: str | Path, predictor: Predictor) -> Dataset:
    """The dataset (or the one case) at ``input``, refused when it holds no case."""
    dataset = open_input(input, scheme=predictor.ensemble.scheme)
    if not dataset.cases:
        raise DataError(input, f"no cases found in this {dataset.fmt} dataset")
    return dataset


def _prepare_output(output: Path, dataset: Dataset, probabilities: bool, note: str) -> None:
    """Say ``note`` (the output scheme is not the dataset's), check that the predictions
    fit on the disk and create the output folder."""
    if note:
        _echo(note)
    check_writable(output, _output_bytes(dataset, probabilities), "predictions")
    output.mkdir(parents=True, exist_ok=True)


def _progress(cases: list[Case], progress: bool) -> Iterator[Case]:
    """The cases, under a tqdm bar on stderr (each case's id shown while it is predicted)."""
    bar = tqdm(cases, desc="predict", unit="case", disable=not progress, file=sys.stderr)
    for case in bar:
        bar.set_postfix_str(case.case_id)
        yield case


def _predict_into(
    predictor: Predictor,
    case: Case,
    output: Path,
    record: dict[str, Any],
    result: PredictionResult,
    probabilities: bool,
    overwrite: bool,
) -> None:
    """Predict one case into ``output`` (:meth:`Predictor.predict_case`) and note it in
    ``result``: written, skipped (its files exist) or failed (its problem in one line); the
    first written case writes ``record`` as ``predict.json``."""
    out_path = output / case_output_name(case)
    prob_path = output / probabilities_name(out_path.name) if probabilities else None
    done = out_path.is_file() and (prob_path is None or prob_path.is_file())
    if done and not overwrite:
        result.skipped.append(case.case_id)
        return
    scheme = result.output_scheme
    try:
        predictor.predict_case(case, scheme, output=out_path, probabilities=prob_path)
    except _CASE_ERRORS as err:
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        result.failed[case.case_id] = problem
        _echo(f"nmfseg: skipped case {case.case_id}: {problem}")
        return
    if not result.written:  # with the first prediction: what made the folder's files
        write_json(output / SIDECAR, record)
    result.written.append(out_path)


def summary_line(result: PredictionResult, output: str | Path) -> str:
    """One-line summary of a :class:`PredictionResult` for the CLI.

    Examples::

        >>> summary_line(PredictionResult(written=[Path("a.nii.gz")], skipped=["b"]), "out")
        'wrote 1 prediction(s) to out; 1 already there (pass --overwrite to redo them)'
    """
    parts = [f"wrote {len(result.written)} prediction(s) to {output}"]
    if result.skipped:
        parts.append(f"{len(result.skipped)} already there (pass --overwrite to redo them)")
    if result.failed:
        parts.append(f"{len(result.failed)} failed")
    return "; ".join(parts)
