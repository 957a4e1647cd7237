"""The preprocessing plan of a training run, from its training cases (nnU-Net v2's rules)."""

from __future__ import annotations

from typing import Any

from nmfseg.data.formats import Case, Dataset, load_case
from nmfseg.data.nifti import image_spacing, load_nifti, spatial_shape
from nmfseg.data.normalization import (
    ChannelNorm,
    Preprocessing,
    ct_norm,
    norm_scheme_for,
    sample_foreground,
)
from nmfseg.data.resample import target_spacing_for
from nmfseg.errors import DataError

__all__ = ["FOREGROUND_SEED", "header_geometry", "plan_preprocessing"]

FOREGROUND_SEED = 1234  # the seed of every case's foreground sample (nnU-Net's)


def header_geometry(case: Case) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Voxel size (as :func:`~nmfseg.data.formats.load_case` reads it) and spatial shape of a
    case, from its first image's header only."""
    header = load_nifti(case.image_paths[0]).header
    return image_spacing(header), spatial_shape(header.get_data_shape())


def plan_preprocessing(dataset: Dataset, case_ids: list[str]) -> Preprocessing:
    """The preprocessing of a run, planned from its training cases (nnU-Net v2's rules).

    Each channel's normalization comes from its name
    (:func:`~nmfseg.data.normalization.norm_scheme_for`); a ``CT`` channel's clip range,
    mean and standard deviation from at most
    :data:`~nmfseg.data.normalization.FOREGROUND_SAMPLES` foreground voxels (label > 0) drawn
    from each training case with a fixed seed (so the cases are read once, here). The target
    spacing is :func:`~nmfseg.data.resample.target_spacing_for` of the cases' voxel sizes and
    stored shapes: ``None`` (no resampling) when they all share one. The axes are never
    transposed.

    Raises:
        DataError: a CT channel and no foreground voxel in any training case.
    """
    scheme = dataset.scheme
    names = [norm_scheme_for(c) for c in scheme.channels]
    ct = [i for i, n in enumerate(names) if n == "ct"]
    spacings, shapes = [], []
    samples: list[list[Any]] = [[] for _ in ct]
    for case_id in case_ids:
        case = dataset.get(case_id)
        if ct:
            data = load_case(case, scheme)
            spacings.append(data.spacing)
            shapes.append(data.image.shape[1:])
            fg = sample_foreground(data.image[ct], data.label, seed=FOREGROUND_SEED)
            for k in range(len(ct)):
                samples[k].append(fg[k])
        else:
            spacing, shape = header_geometry(case)
            spacings.append(spacing)
            shapes.append(shape)
    odd = [(c, s) for c, s in zip(case_ids, shapes, strict=True) if len(s) != len(shapes[0])]
    if odd:
        raise DataError(
            dataset.root,
            f"mixes 2D and 3D images ({case_ids[0]}: {shapes[0]}, {odd[0][0]}: {odd[0][1]})",
        )
    norms = [ChannelNorm(n) if n != "ct" else None for n in names]
    for k, i in enumerate(ct):
        try:
            norms[i] = ct_norm(samples[k])
        except ValueError:
            raise DataError(
                dataset.root,
                f"channel {scheme.channels[i]}: the training cases have no foreground voxel "
                "(label > 0) to compute the CT intensity statistics from",
            ) from None
    return Preprocessing(tuple(norms), target_spacing_for(spacings, shapes))  # type: ignore[arg-type]
