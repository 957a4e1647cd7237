"""Predict a dataset folder or a single case and write one NIfTI label map per case.

For every case: the same preprocessing as training (crop to the nonzero box, channel-wise
z-score on nonzero voxels), sliding-window inference with the training patch size and 50%
overlap (Gaussian blending), sigmoid, mean of the probabilities over the folds (and over the
8 flips with TTA), threshold ``p >= 0.5`` (the config's ``validation.threshold``), undo the
crop, regions → labels in the **input dataset's own label scheme** (BraTS: ET inside TC
inside WT → 1/2/4 or 1/2/3), and ``OUT/CASE.nii.gz`` written atomically with the original
shape, affine and header (qform and sform codes kept), like nnU-Net.

With ``save_probabilities`` a ``OUT/CASE_probabilities.npz`` is written next to it (NumPy
compressed, like nnU-Net's ``.npz``), holding ``probabilities`` (float16, ``(R, X, Y, Z)`` in
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
    >>> tmp = Path(tempfile.mkdtemp())
    >>> root = make_toy_dataset(tmp / "isles", "isles22", n_cases=2, shape=(12, 10, 9))
    >>> ens = Ensemble([torch.nn.Conv3d(2, 1, 1)], [], (8, 8, 8), 2, 1)
    >>> result = predict_folder(ens, root, tmp / "pred", progress=False)
    >>> sorted(p.name for p in result.written), result.failed
    (['sub-strokecase0001.nii.gz', 'sub-strokecase0002.nii.gz'], {})
"""

from __future__ import annotations

import dataclasses
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nmfseg.data.formats import Case, Dataset, case_output_name, load_case, open_input
from nmfseg.data.nifti import write_label
from nmfseg.data.schemes import DatasetScheme, regions_to_labels
from nmfseg.errors import DataError, NmfsegError
from nmfseg.fileio import atomic_open
from nmfseg.inference.ensemble import Ensemble, load_ensemble

__all__ = [
    "PredictionResult",
    "describe",
    "output_scheme",
    "predict_folder",
    "probabilities_name",
    "save_probabilities",
]

_CASE_ERRORS = (NmfsegError, OSError, EOFError, ValueError, zlib.error)


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


def save_probabilities(
    path: Path, probabilities: np.ndarray, regions: Sequence[str], affine: np.ndarray
) -> None:
    """Write ``probabilities (R, X, Y, Z)`` as float16 into a compressed ``.npz``, atomically.

    Examples::

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "case_probabilities.npz"
        >>> save_probabilities(path, np.full((1, 2, 2, 2), 0.25), ["lesion"], np.eye(4))
        >>> saved = np.load(path)
        >>> saved["probabilities"].dtype, saved["regions"].tolist()
        (dtype('float16'), ['lesion'])
    """
    with atomic_open(path) as fh:
        np.savez_compressed(
            fh,
            probabilities=np.asarray(probabilities, dtype=np.float16),
            regions=np.asarray(list(regions), dtype=str),
            affine=np.asarray(affine, dtype=np.float64),
        )


def output_scheme(dataset: Dataset, ensemble: Ensemble) -> tuple[DatasetScheme, str]:
    """The scheme predictions are written in, and a note when it is not the dataset's own.

    The dataset's scheme is used when its regions are the model's (by name, or by count when
    the model does not record names); otherwise the model's training scheme, when known.

    Raises:
        DataError: the dataset's images do not have the model's channel count, or its regions
            cannot be written from the model's outputs.
    """
    ds = dataset.scheme
    first = dataset.cases[0].case_id if dataset.cases else "?"
    if ds.in_channels != ensemble.in_channels:
        expected = f" ({', '.join(ensemble.channels)})" if ensemble.channels else ""
        raise DataError(
            dataset.root,
            f"case {first} has {ds.in_channels} channels ({', '.join(ds.channels)}) but the "
            f"model expects {ensemble.in_channels}{expected}",
        )
    same = (
        ds.region_names == ensemble.regions
        if ensemble.regions
        else ds.out_channels == ensemble.out_channels
    )
    if same:
        return ds, ""
    model = ensemble.scheme
    if model is not None and model.out_channels == ensemble.out_channels:
        return model, (
            f"note: the model's regions ({', '.join(ensemble.regions)}) are not the dataset's "
            f"({', '.join(ds.region_names)}); writing labels in the model's {model.name} scheme"
        )
    raise DataError(
        dataset.root,
        f"the model predicts {ensemble.out_channels} region(s) "
        f"({', '.join(ensemble.regions) or 'unnamed'}) but the {dataset.fmt} labels need "
        f"{ds.out_channels} ({', '.join(ds.region_names)})",
    )


def _echo(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _predict_one(
    ensemble: Ensemble,
    case: Case,
    scheme: DatasetScheme,
    out_path: Path,
    prob_path: Path | None,
    tta: bool,
) -> None:
    # Labels are not needed to predict: a case with a broken label file is still predicted.
    data = load_case(dataclasses.replace(case, label_path=None))
    probs = ensemble.predict(data.image, tta=tta, where=case.case_id)
    labels = regions_to_labels(probs >= ensemble.threshold, scheme)
    # The label file is written last: it exists only when the whole case is done. If it
    # cannot be written, the probabilities written just before are removed again.
    if prob_path is not None:
        save_probabilities(prob_path, probs, scheme.region_names, data.affine)
    try:
        write_label(out_path, labels, data.header, affine=data.affine)
    except BaseException:
        if prob_path is not None:
            prob_path.unlink(missing_ok=True)
        raise


def predict_folder(
    model: str | Path | Ensemble,
    input: str | Path,
    output: str | Path,
    *,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "final",
    tta: bool = False,
    device: str | torch.device | None = None,
    save_probabilities: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> PredictionResult:
    """Predict every case of a dataset folder (or one case) into ``output``.

    Args:
        model: run folder, fold folder or checkpoint file (see
            :func:`~nmfseg.inference.ensemble.find_checkpoints`), or a loaded
            :class:`~nmfseg.inference.ensemble.Ensemble`.
        input: dataset folder in any supported format (labels optional) or a single case.
        output: folder for ``CASE.nii.gz`` (created if needed).
        folds: folds of a run folder to ensemble (default: all that exist).
        checkpoint: ``final``, ``best`` or ``last``.
        tta: average over all 8 flip combinations.
        device: ``cpu`` or ``cuda`` (default: CUDA when available).
        save_probabilities: also write ``CASE_probabilities.npz``.
        overwrite: redo cases whose outputs exist (otherwise they are skipped).
        progress: tqdm progress bar over the cases.

    Returns:
        A :class:`PredictionResult`; failed cases are listed there (and reported on
        stderr as they happen), not raised.

    Raises:
        NmfsegError: a problem that concerns every case (model, input, channel count).
    """
    ensemble = (
        model if isinstance(model, Ensemble) else load_ensemble(model, folds, checkpoint, device)
    )
    dataset = open_input(input, scheme=ensemble.scheme)
    if not dataset.cases:
        raise DataError(input, f"no cases found in this {dataset.fmt} dataset")
    scheme, note = output_scheme(dataset, ensemble)
    if note:
        _echo(note)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise DataError(output, "exists and is not a folder; give an output folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(output, f"cannot create the output folder ({err.strerror})") from None
    result = PredictionResult(output_scheme=scheme)
    bar = tqdm(dataset.cases, desc="predict", unit="case", disable=not progress, file=sys.stderr)
    for case in bar:
        bar.set_postfix_str(case.case_id)
        out_path = output / case_output_name(case)
        prob_path = output / probabilities_name(out_path.name) if save_probabilities else None
        done = out_path.is_file() and (prob_path is None or prob_path.is_file())
        if done and not overwrite:
            result.skipped.append(case.case_id)
            continue
        try:
            _predict_one(ensemble, case, scheme, out_path, prob_path, tta)
        except _CASE_ERRORS as err:
            problem = str(err).splitlines()[0] if str(err) else type(err).__name__
            result.failed[case.case_id] = problem
            _echo(f"nmfseg: skipped case {case.case_id}: {problem}")
            continue
        result.written.append(out_path)
    return result


def describe(result: PredictionResult, output: str | Path) -> str:
    """One-line summary of a :class:`PredictionResult` for the CLI.

    Examples::

        >>> describe(PredictionResult(written=[Path("a.nii.gz")], skipped=["b"]), "out")
        'wrote 1 prediction(s) to out; 1 already there (pass --overwrite to redo them)'
    """
    parts = [f"wrote {len(result.written)} prediction(s) to {output}"]
    if result.skipped:
        parts.append(f"{len(result.skipped)} already there (pass --overwrite to redo them)")
    if result.failed:
        parts.append(f"{len(result.failed)} failed")
    return "; ".join(parts)
