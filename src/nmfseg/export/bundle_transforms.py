"""What a MONAI bundle written by ``nmfseg export --format monai-bundle`` runs from nmfseg.

A bundle's ``configs/inference.json`` names these with ``_target_`` (or calls them in a
``$`` expression), so MONAI's own runner (``python -m monai.bundle run``) predicts with the
same label conversion and reads the same input folders as ``nmfseg predict``:

- :class:`RegionsToLabelsd`: thresholded region masks ``(R, *spatial)`` -> the dataset's
  label map ``(1, *spatial)`` (:func:`~nmfseg.data.schemes.regions_to_labels`: BraTS regions
  painted WT, TC, ET), keeping the image's metadata (affine) for ``SaveImaged``.
- :class:`NormalizeChannelsd`: nmfseg's per-channel normalization, for the runs whose
  channels are normalized differently (one MONAI transform treats all channels alike).
- :func:`datalist`: the cases of an input folder in any format nmfseg reads (one
  ``{"image": ...}`` per case: a 4D file, or the per-channel files in the model's channel
  order), or every NIfTI file of a plain folder.

This module imports MONAI at its top: only a bundle run (and the tests) import it, never
``nmfseg export`` itself.

Examples::

    >>> import torch
    >>> from nmfseg.data.schemes import SCHEMES
    >>> to_labels = RegionsToLabelsd("pred", SCHEMES["brats2021"].to_dict())
    >>> et, tc, wt = [0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]
    >>> to_labels({"pred": torch.tensor([et, tc, wt], dtype=torch.float32)})["pred"].tolist()
    [[0, 1, 2, 4]]
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

from nmfseg.data.formats import open_input
from nmfseg.data.nifti import nifti_files
from nmfseg.data.normalization import ChannelNorm, normalize_channels
from nmfseg.data.schemes import DatasetScheme, regions_to_labels
from nmfseg.errors import DataError

__all__ = ["NormalizeChannelsd", "RegionsToLabelsd", "datalist"]

logger = logging.getLogger(__name__)


def _scheme(scheme: DatasetScheme | Mapping[str, Any]) -> DatasetScheme:
    return scheme if isinstance(scheme, DatasetScheme) else DatasetScheme.from_dict(scheme)


class RegionsToLabelsd(MapTransform):
    """Region masks ``(R, *spatial)`` -> a label map ``(1, *spatial)`` in a scheme's labels.

    Args:
        keys: The keys of the masks (nonzero means inside the region), regions in the order
            of ``scheme["regions"]``.
        scheme: The dataset's :class:`~nmfseg.data.schemes.DatasetScheme`, or its
            :meth:`~nmfseg.data.schemes.DatasetScheme.to_dict` (what a bundle config holds).
        allow_missing_keys: Skip keys that are absent instead of raising.

    The label map is uint8 (int16 when a label exceeds 255); a ``MetaTensor`` input keeps
    its metadata, so ``SaveImaged`` writes it in the input's geometry.
    """

    def __init__(
        self,
        keys: KeysCollection,
        scheme: DatasetScheme | Mapping[str, Any],
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scheme = _scheme(scheme)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            regions = d[key]
            if isinstance(regions, torch.Tensor):
                array = regions.detach().cpu().numpy()
            else:
                array = np.asarray(regions)
            labels = regions_to_labels(array, self.scheme)[None]
            dtype = torch.from_numpy(labels[:0]).dtype
            d[key] = convert_to_dst_type(labels, regions, dtype=dtype)[0]
        return d


def datalist(
    dataset_dir: str | Path, scheme: DatasetScheme | Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The cases of ``dataset_dir`` as MONAI data dicts ``{"image": path or [paths]}``.

    A folder (or case) in a format nmfseg reads (:func:`~nmfseg.data.formats.open_input`:
    MSD, nnU-Net, BraTS 2021/2023, ISLES'22) gives its cases, per-channel files in the
    model's channel order; any other folder gives each of its NIfTI files as one case (a 4D
    file, channels last). A folder that does not exist gives no case and a warning.

    Args:
        dataset_dir: The input folder (or one case).
        scheme: The model's scheme (its channel order), as a dict or a scheme.

    Examples::

        >>> import tempfile
        >>> from nmfseg.phantoms.toy import make_toy_dataset
        >>> root = make_toy_dataset(Path(tempfile.mkdtemp()), "isles22", n_cases=1)
        >>> [Path(p).name for p in datalist(root)[0]["image"]]
        ['sub-strokecase0001_ses-0001_dwi.nii.gz', 'sub-strokecase0001_ses-0001_adc.nii.gz']
    """
    root = Path(dataset_dir).expanduser()
    if not root.exists():
        logger.warning("dataset_dir %s does not exist: no case to predict", root)
        return []
    try:
        dataset = open_input(root, scheme=_scheme(scheme) if scheme is not None else None)
    except DataError:
        files = nifti_files(root) if root.is_dir() else [root]
        return [{"image": str(p)} for p in files]
    out: list[dict[str, Any]] = []
    for case in dataset.cases:
        paths = [str(p) for p in case.image_paths]
        out.append({"image": paths if len(paths) > 1 else paths[0]})
    return out


class NormalizeChannelsd(MapTransform):
    """Each channel of ``(C, *spatial)`` normalized by its own
    :class:`~nmfseg.data.normalization.ChannelNorm` (nmfseg's code: float64 statistics).

    What a bundle uses when the channels' normalizations differ (one MONAI transform
    normalizes every channel the same way).

    Args:
        keys: The keys of the images.
        normalization: One ``ChannelNorm`` (or its ``to_dict()``) per channel.
        allow_missing_keys: Skip keys that are absent instead of raising.

    Examples::

        >>> norm = NormalizeChannelsd("image", [{"scheme": "zscore_nonzero"}, {"scheme": "none"}])
        >>> image = torch.tensor([[[0.0, 1.0, 3.0]], [[1.0, 1.0, 4.0]]])
        >>> norm({"image": image})["image"].tolist()
        [[[0.0, -1.0, 1.0]], [[1.0, 1.0, 4.0]]]
    """

    def __init__(
        self,
        keys: KeysCollection,
        normalization: Sequence[ChannelNorm | Mapping[str, Any]],
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.norms = tuple(
            n if isinstance(n, ChannelNorm) else ChannelNorm.from_dict(n) for n in normalization
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if isinstance(image, torch.Tensor):
                array = image.detach().cpu().numpy()
            else:
                array = np.asarray(image)
            out = normalize_channels(array, self.norms)
            d[key] = convert_to_dst_type(out, image, dtype=torch.float32)[0]
        return d
