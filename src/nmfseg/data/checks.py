"""Dataset integrity checks (``nmfseg check-data``), like nnU-Net's --verify_dataset_integrity.

Every case is read file by file and checked for: files present and readable (a truncated
``.nii.gz`` is caught), the expected number of channels (an MSD 4D file with 3 volumes, a
missing BraTS modality), every channel and the label on the same grid (shape equal, affine
equal to :data:`~nmfseg.data.nifti.AFFINE_ATOL` mm), no NaN/Inf, integer label values
that the scheme allows. For MSD and nnU-Net folders also: ``numTraining`` matches, no
stray or out-of-range channel files, no label without an image.

Unlike :func:`~nmfseg.data.formats.load_case`, which stops at the first problem, the checks
collect every problem of every case, each naming the case and the file.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nmfseg.data.formats import _CHANNEL_FILE, Case, Dataset, _json_base
from nmfseg.data.nifti import (
    check_label_values,
    compare_geometry,
    load_nifti,
    nifti_files,
    nonfinite_count,
    read_nifti,
    squeeze_3d,
    strip_nifti_ending,
)
from nmfseg.data.schemes import DatasetScheme
from nmfseg.errors import DataError
from nmfseg.fileio import read_json

__all__ = ["CheckReport", "Problem", "check_case", "check_dataset"]

DATASET = "<dataset>"  # case id of problems that belong to no single case


@dataclass
class Problem:
    """One problem: the case, the file (None if no single file), what is wrong."""

    case_id: str
    path: Path | None
    problem: str

    def describe(self, root: Path | None = None) -> str:
        """``CASE: FILE: problem`` with FILE relative to ``root`` when inside it."""
        where = self.path
        if where is not None and root is not None:
            with contextlib.suppress(ValueError):
                where = Path(where).relative_to(root)
        return (
            f"{self.case_id}: {where}: {self.problem}"
            if where
            else f"{self.case_id}: {self.problem}"
        )


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`."""

    dataset: Dataset
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if no problem was found."""
        return not self.problems

    @property
    def bad_cases(self) -> list[str]:
        """Ids of cases with at least one problem, in dataset order."""
        bad = {p.case_id for p in self.problems}
        return [c for c in self.dataset.case_ids if c in bad]

    @property
    def n_ok(self) -> int:
        """Number of cases without any problem."""
        return len(self.dataset.cases) - len(self.bad_cases)


def _check_images(case: Case, scheme: DatasetScheme, add) -> tuple[object, Path] | None:
    """Check the image files; return the reference (first) image and its path."""
    n = scheme.in_channels
    if len(case.image_paths) == 1 and n > 1:  # MSD: one 4D file, channels last
        path = case.image_paths[0]
        try:
            shape = load_nifti(path).shape
            if len(shape) != 4 or shape[-1] != n:
                found = shape[-1] if len(shape) == 4 else 1
                add(path, f"has {found} channel(s), expected {n} ({', '.join(scheme.channels)})")
            data, img = read_nifti(path)
        except DataError as err:
            add(err.where, err.problem)
            return None
        if bad := nonfinite_count(data):
            add(path, f"contains {bad} NaN/Inf voxel(s)")
        return img, path
    if len(case.image_paths) != n:
        add(None, f"has {len(case.image_paths)} image files, expected {n}")
    ref = None
    for channel, path in zip(scheme.channels, case.image_paths, strict=False):
        try:
            data, img = read_nifti(path)
            data = squeeze_3d(data, path)
        except DataError as err:
            problem = err.problem
            if problem == "file not found":
                problem = f"missing {channel} image (file not found)"
            add(err.where, problem)
            continue
        if ref is None:
            ref = (img, path)
        elif problem := compare_geometry(img, ref[0], ref[1], data.shape):
            add(path, problem)
        if bad := nonfinite_count(data):
            add(path, f"contains {bad} NaN/Inf voxel(s)")
    return ref


def check_case(case: Case, scheme: DatasetScheme | None = None) -> list[Problem]:
    """Every problem of one case (an empty list if it is fine).

    Examples::

        >>> import tempfile
        >>> from nmfseg.data.formats import open_dataset
        >>> from nmfseg.data.toy import make_toy_dataset
        >>> ds = open_dataset(make_toy_dataset(Path(tempfile.mkdtemp()), "brats2021", n_cases=1))
        >>> ds.cases[0].image_paths[1].unlink()
        >>> [p.problem for p in check_case(ds.cases[0])]
        ['missing t1 image (file not found)']
    """
    scheme = scheme if scheme is not None else case.scheme
    if scheme is None:
        raise ValueError(f"case {case.case_id!r} has no scheme; pass scheme=")
    problems: list[Problem] = []

    def add(path: Path | str | None, problem: str) -> None:
        problems.append(Problem(case.case_id, Path(path) if path else None, problem))

    ref = _check_images(case, scheme, add)
    if case.label_path is None:
        return problems
    try:
        raw, img = read_nifti(case.label_path, dtype=None)
        raw = squeeze_3d(raw, case.label_path)
    except DataError as err:
        problem = (
            "missing label (file not found)" if err.problem == "file not found" else err.problem
        )
        add(err.where, problem)
        return problems
    if ref is not None and (problem := compare_geometry(img, ref[0], ref[1], raw.shape)):
        add(case.label_path, problem)
    label, problem = check_label_values(raw, scheme)
    if label is None:
        add(case.label_path, problem)
    return problems


def _dataset_problems(dataset: Dataset) -> list[Problem]:
    """Problems of the folder itself: no cases, numTraining, stray or orphan files."""
    problems: list[Problem] = []
    if not dataset.cases:
        problems.append(Problem(DATASET, dataset.root, "no cases found"))
    base = _json_base(dataset.root)
    if dataset.fmt not in ("msd_brats", "nnunet") or base is None:
        return problems
    root, images_name = base
    images = root / images_name
    ids = set(dataset.case_ids)
    if images_name == "imagesTr":
        meta = read_json(root / "dataset.json")
        expected = meta.get("numTraining")
        found = len(dataset.cases)
        if expected is not None and expected != found:
            problems.append(
                Problem(
                    DATASET,
                    root / "dataset.json",
                    f"numTraining is {expected} but {found} training cases were found",
                )
            )
    if dataset.fmt == "nnunet":
        n = dataset.scheme.in_channels
        for path in nifti_files(images):
            match = _CHANNEL_FILE.match(path.name)
            if match is None:
                problems.append(Problem(DATASET, path, "not named CASE_XXXX (channel index)"))
            elif int(match["channel"]) >= n:
                problems.append(
                    Problem(
                        match["case"],
                        path,
                        f"channel {match['channel']} but dataset.json has {n} channel(s)",
                    )
                )
    if dataset.has_labels:
        labels = next(iter(c.label_path for c in dataset.cases if c.label_path), None)
        for path in nifti_files(labels.parent) if labels is not None else []:
            if strip_nifti_ending(path.name) not in ids:
                problems.append(Problem(DATASET, path, "label file without images"))
    return problems


def check_dataset(dataset: Dataset, progress: bool | None = None) -> CheckReport:
    """Check every case of a dataset and the folder itself.

    Args:
        dataset: from :func:`~nmfseg.data.formats.open_dataset`.
        progress: show a tqdm bar on stderr; None shows it only on a terminal.

    Examples::

        >>> import tempfile
        >>> from nmfseg.data.formats import open_dataset
        >>> from nmfseg.data.toy import make_toy_dataset
        >>> root = make_toy_dataset(Path(tempfile.mkdtemp()), "isles22")
        >>> report = check_dataset(open_dataset(root))
        >>> report.ok, report.n_ok
        (True, 4)
    """
    from tqdm import tqdm

    report = CheckReport(dataset, _dataset_problems(dataset))
    disable = None if progress is None else not progress
    cases = tqdm(
        dataset.cases, desc="check-data", unit="case", disable=disable, leave=False, file=sys.stderr
    )
    for case in cases:
        report.problems.extend(check_case(case, dataset.scheme))
    return report
