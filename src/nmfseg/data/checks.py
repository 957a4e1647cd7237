"""Dataset integrity checks (``nmfseg check-data``), like nnU-Net's --verify_dataset_integrity.

Every case is read file by file and checked for: files present and readable (a truncated
``.nii.gz`` is caught), the expected number of channels (an MSD 4D file with 3 volumes, a
missing BraTS modality), every channel and the label on the same grid (shape equal, affine
equal to :data:`~nmfseg.data.nifti.AFFINE_ATOL` mm), no NaN/Inf, integer label values
that the scheme allows. For MSD and nnU-Net folders also: ``numTraining`` matches, no
stray or out-of-range channel files, no label without an image.

Besides the problems, the report profiles the dataset as the pipeline will see it: the voxel
sizes of its cases (:class:`SpacingSpread`: range per axis, how many distinct, how many
anisotropic) and each channel with the normalization nmfseg gives it
(:func:`~nmfseg.data.normalization.norm_scheme_for`).

The checks of a case are :func:`~nmfseg.data.formats.read_case`'s, the routine behind
:func:`~nmfseg.data.formats.load_case`: where loading stops at the first problem, the checks
collect every problem of every case, each naming the case and the file. The checks of the folder
as a whole are its format's (:meth:`~nmfseg.data.formats.DatasetFormat.dataset_problems`).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nmfseg.data.formats import Case, Dataset, Problem, get_format, read_case
from nmfseg.data.formats.base import DATASET
from nmfseg.data.nifti import image_spacing, load_nifti
from nmfseg.data.normalization import norm_scheme_for
from nmfseg.data.schemes import DatasetScheme
from nmfseg.errors import DataError

__all__ = [
    "ANISOTROPY",
    "CheckReport",
    "Problem",
    "SpacingSpread",
    "case_spacing",
    "check_case",
    "check_dataset",
]

#: A case is anisotropic when its largest voxel side exceeds its smallest this many times
#: (nnU-Net's threshold for treating the slice axis apart).
ANISOTROPY = 3.0


def _mm(value: float) -> str:
    """A spacing in mm, short: ``0.703``, ``5``."""
    return f"{value:.4g}"


@dataclass(frozen=True)
class SpacingSpread:
    """The voxel sizes of a dataset's cases (mm, ``(x, y, z)`` per case).

    Examples::

        >>> spread = SpacingSpread(((0.7, 0.7, 5.0), (0.9, 0.9, 1.0), (0.9, 0.9, 1.0)))
        >>> spread.distinct, spread.anisotropic, spread.median.tolist()
        (2, 1, [0.9, 0.9, 1.0])
        >>> for part in spread.summary().split("; "):
        ...     print(part)
        spacing (mm, min/median/max): x 0.7/0.9/0.9, y 0.7/0.9/0.9, z 1/1/5
        2 distinct in 3 case(s), 1 anisotropic (max/min > 3)
    """

    spacings: tuple[tuple[float, ...], ...]  # three per case, or two for 2D images

    @property
    def min(self) -> np.ndarray:
        """Smallest spacing per axis."""
        return np.min(self.spacings, axis=0)

    @property
    def median(self) -> np.ndarray:
        """Median spacing per axis."""
        return np.median(self.spacings, axis=0)

    @property
    def max(self) -> np.ndarray:
        """Largest spacing per axis."""
        return np.max(self.spacings, axis=0)

    @property
    def distinct(self) -> int:
        """Number of different spacings (to 1e-4 mm)."""
        return len({tuple(round(v, 4) for v in s) for s in self.spacings})

    @property
    def anisotropic(self) -> int:
        """Number of cases whose largest spacing exceeds :data:`ANISOTROPY` x the smallest."""
        return sum(max(s) > ANISOTROPY * min(s) for s in self.spacings)

    def summary(self) -> str:
        """One line: the range per axis (or the one spacing), distinct and anisotropic counts."""
        n = len(self.spacings)
        tail = f"{self.anisotropic} anisotropic (max/min > {ANISOTROPY:g})"
        if self.distinct == 1:
            size = " x ".join(_mm(v) for v in self.spacings[0])
            return f"spacing (mm): {size} in all {n} case(s), 1 distinct, {tail}"
        axes = ", ".join(
            f"{a} {_mm(lo)}/{_mm(mid)}/{_mm(hi)}"
            for a, lo, mid, hi in zip(
                "xyz"[: len(self.min)], self.min, self.median, self.max, strict=True
            )
        )
        return (
            f"spacing (mm, min/median/max): {axes}; {self.distinct} distinct in {n} case(s), {tail}"
        )

    def describe(self) -> str:
        """Deprecated name of :meth:`summary`."""
        warnings.warn(
            "SpacingSpread.describe is deprecated; use SpacingSpread.summary",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.summary()

    def to_dict(self) -> dict[str, object]:
        """A JSON-friendly summary."""
        return {
            "min": self.min.tolist(),
            "median": self.median.tolist(),
            "max": self.max.tolist(),
            "distinct": self.distinct,
            "anisotropic": self.anisotropic,
            "cases": len(self.spacings),
        }


def case_spacing(case: Case) -> tuple[float, ...] | None:
    """The voxel size (mm) in the header of a case's first image, one value per spatial axis
    (two for a 2D image: :func:`~nmfseg.data.nifti.image_spacing`); None if unreadable."""
    if not case.image_paths:
        return None
    try:
        return image_spacing(load_nifti(case.image_paths[0]).header)
    except DataError:
        return None


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`."""

    dataset: Dataset
    problems: list[Problem] = field(default_factory=list)
    spacings: dict[str, tuple[float, ...]] = field(default_factory=dict)

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

    @property
    def spacing(self) -> SpacingSpread | None:
        """The spread of the cases' voxel sizes (cases with a readable header, of the first
        one's dimensions); None if none."""
        values = list(self.spacings.values())
        return (
            SpacingSpread(tuple(v for v in values if len(v) == len(values[0]))) if values else None
        )

    @property
    def normalization(self) -> dict[str, str]:
        """Each channel -> the normalization nmfseg gives it (``ct``, ``zscore_nonzero`` ...)."""
        return {c: norm_scheme_for(c) for c in self.dataset.scheme.channels}

    def profile(self) -> list[str]:
        """The profile lines ``nmfseg check-data`` prints: spacings, then channels.

        Examples::

            >>> import tempfile
            >>> from nmfseg.data.formats import open_dataset
            >>> from nmfseg.phantoms.toy import make_toy_dataset
            >>> root = make_toy_dataset(Path(tempfile.mkdtemp()), "isles22", n_cases=2)
            >>> print("\\n".join(check_dataset(open_dataset(root)).profile()))
            spacing (mm): 1.2 x 1 x 1.5 in all 2 case(s), 1 distinct, 0 anisotropic (max/min > 3)
            channels -> normalization: dwi -> zscore_nonzero, adc -> zscore_nonzero
        """
        spread = self.spacing
        lines = [spread.summary() if spread is not None else "spacing: no readable image"]
        pairs = ", ".join(f"{c} -> {n}" for c, n in self.normalization.items())
        return [*lines, f"channels -> normalization: {pairs}"]


def check_case(case: Case, scheme: DatasetScheme | None = None) -> list[Problem]:
    """Every problem of one case (an empty list if it is fine).

    Examples::

        >>> import tempfile
        >>> from nmfseg.data.formats import open_dataset
        >>> from nmfseg.phantoms.toy import make_toy_dataset
        >>> ds = open_dataset(make_toy_dataset(Path(tempfile.mkdtemp()), "brats2021", n_cases=1))
        >>> ds.cases[0].image_paths[1].unlink()
        >>> [p.problem for p in check_case(ds.cases[0])]
        ['missing t1 image (file not found)']
    """
    problems: list[Problem] = []

    def report(where: Path | str | None, problem: str) -> None:
        problems.append(Problem(case.case_id, Path(where) if where else None, problem))

    read_case(case, scheme, report, keep=False)
    return problems


def check_dataset(dataset: Dataset, progress: bool | None = None) -> CheckReport:
    """Check every case of a dataset and the folder itself.

    Args:
        dataset: From :func:`~nmfseg.data.formats.open_dataset`.
        progress: Show a tqdm bar on stderr; None shows it only on a terminal.

    Examples::

        >>> import tempfile
        >>> from nmfseg.data.formats import open_dataset
        >>> from nmfseg.phantoms.toy import make_toy_dataset
        >>> root = make_toy_dataset(Path(tempfile.mkdtemp()), "isles22")
        >>> report = check_dataset(open_dataset(root))
        >>> report.ok, report.n_ok
        (True, 4)
    """
    problems = [] if dataset.cases else [Problem(DATASET, dataset.root, "no cases found")]
    report = CheckReport(dataset, problems + get_format(dataset.fmt).dataset_problems(dataset))
    disable = None if progress is None else not progress
    cases = tqdm(
        dataset.cases, desc="check-data", unit="case", disable=disable, leave=False, file=sys.stderr
    )
    for case in cases:
        report.problems.extend(check_case(case, dataset.scheme))
        if (spacing := case_spacing(case)) is not None:
            report.spacings[case.case_id] = spacing
    dims = {case_id: len(v) for case_id, v in report.spacings.items()}
    if len(set(dims.values())) > 1:
        first = next(iter(dims))
        other = next(c for c, d in dims.items() if d != dims[first])
        problem = f"mixes 2D and 3D images ({first}: {dims[first]}D, {other}: {dims[other]}D)"
        report.problems.append(Problem(DATASET, None, problem))
    return report
