"""Dataset integrity checks (``nmfseg check-data``), like nnU-Net's --verify_dataset_integrity.

Every case is read file by file and checked for: files present and readable (a truncated
``.nii.gz`` is caught), the expected number of channels (an MSD 4D file with 3 volumes, a
missing BraTS modality), every channel and the label on the same grid (shape equal, affine
equal to :data:`~nmfseg.data.nifti.AFFINE_ATOL` mm), no NaN/Inf, integer label values
that the scheme allows. For MSD and nnU-Net folders also: ``numTraining`` matches, no
stray or out-of-range channel files, no label without an image.

The checks of a case are :func:`~nmfseg.data.formats.read_case`'s, the routine behind
:func:`~nmfseg.data.formats.load_case`: where loading stops at the first problem, the checks
collect every problem of every case, each naming the case and the file. The checks of the folder
as a whole are its format's (:meth:`~nmfseg.data.formats.DatasetFormat.dataset_problems`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from nmfseg.data.formats import Case, Dataset, Problem, get_format, read_case
from nmfseg.data.formats.base import DATASET
from nmfseg.data.schemes import DatasetScheme

__all__ = ["CheckReport", "Problem", "check_case", "check_dataset"]


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
    return report
