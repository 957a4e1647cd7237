"""Dataset formats: one module per on-disk layout, behind one small protocol and a registry.

========== =============================================================================
format     layout (``ROOT/...``)
========== =============================================================================
brats2021  ``BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz``
brats2023  ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}.nii.gz``
isles22    ``sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_{dwi,adc}.nii.gz``,
           ``derivatives/sub-strokecase0001/ses-0001/sub-strokecase0001_ses-0001_msk.nii.gz``
msd_brats  ``dataset.json``, ``imagesTr/BRATS_001.nii.gz`` (4D, channels last),
           ``labelsTr/BRATS_001.nii.gz``
nnunet     ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``),
           ``imagesTr/CASE_0000.nii.gz`` (one file per channel), ``labelsTr/CASE.nii.gz``
========== =============================================================================

(in detection order). A new format is one module: a :class:`DatasetFormat` subclass (or a
:class:`DecathlonFormat` one, for a ``dataset.json`` beside ``imagesTr``/``labelsTr``)
registered with :func:`register_format`, plus its scheme in :mod:`nmfseg.data.schemes` when it
has a fixed one; every command (check-data, split, train, predict, evaluate, synth) then accepts it.

============================ ===============================================================
module                       what it holds
============================ ===============================================================
:mod:`~.base`                the protocol, the registry, ``Case`` / ``Dataset`` / ``CaseData``
:mod:`~.decathlon`           the ``dataset.json`` + ``imagesTr``/``labelsTr`` layout (MSD, nnU-Net)
:mod:`~.opening`             detect, open a dataset / a case, write a case and metadata
:mod:`~.reading`             :func:`read_case`: read and validate a case (load_case, checks)
:mod:`~.msd`, :mod:`~.nnunet`, :mod:`~.brats`, :mod:`~.isles`   the five formats
============================ ===============================================================
"""

from nmfseg.data.formats import brats, isles, msd, nnunet  # noqa: F401  (register them)
from nmfseg.data.formats.base import (
    FORMATS,
    Case,
    CaseData,
    Dataset,
    DatasetFormat,
    Problem,
    case_output_name,
    get_format,
    list_formats,
    register_format,
    temporarily_registered_format,
)
from nmfseg.data.formats.decathlon import DecathlonFormat
from nmfseg.data.formats.opening import (
    detect_format,
    open_case,
    open_dataset,
    open_input,
    write_case,
    write_dataset_metadata,
)
from nmfseg.data.formats.reading import load_case, read_case

__all__ = [
    "FORMATS",
    "Case",
    "CaseData",
    "Dataset",
    "DatasetFormat",
    "DecathlonFormat",
    "Problem",
    "case_output_name",
    "detect_format",
    "get_format",
    "list_formats",
    "load_case",
    "open_case",
    "open_dataset",
    "open_input",
    "read_case",
    "register_format",
    "temporarily_registered_format",
    "write_case",
    "write_dataset_metadata",
]
