"""The checks :class:`~nmfseg.inference.predictor.Predictor` runs before any work: the image
arrays it is given and its NMF switches against the networks they change.

:func:`check_image` turns an array or tensor into a real-valued NumPy array of the right
number of axes, refusing empty, complex and non-numeric input in one line (a complex image
would otherwise lose its imaginary part silently in the float32 cast of the preprocessing).
:func:`check_nmf_settings` checks ``--nmf-*`` against every fold's network (a network without
NMF layers, a layer it lacks, a rank above what its matrices allow) before anything is
changed or computed; :func:`usable_ranks` does it for the rank sweep of ``nmfseg ablate``.

Examples::

    >>> import numpy as np
    >>> check_image(np.zeros((2, 4, 4, 4), np.int16), 3).dtype
    dtype('int16')
    >>> check_image(np.zeros((2, 0, 4, 4)), 3)
    Traceback (most recent call last):
    ...
    nmfseg.errors.DataError: image: is empty (shape (2, 0, 4, 4)); give a (C, *spatial) ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nmfseg.errors import ConfigError, DataError
from nmfseg.inference.settings import (
    NMF_SETTINGS,
    OPTIONS,
    InferenceSettings,
    format_layers,
    parse_layers,
)
from nmfseg.mixers.nmf import nmf_layers, rank_problem

__all__ = ["check_image", "check_nmf_settings", "usable_ranks"]


def check_image(image: Any, dims: int, where: str = "image") -> np.ndarray:
    """``image`` (a NumPy array, a torch tensor or nested lists) as a real NumPy array
    ``(C, *spatial)`` with ``dims`` spatial axes.

    Raises:
        DataError: naming ``where``: the wrong number of axes, no voxel or no channel,
            complex values, or values that are not numbers.

    Examples::

        >>> check_image(torch.ones(1, 2, 2, 2, dtype=torch.bfloat16), 3).dtype
        dtype('float32')
        >>> check_image(np.ones((2, 3, 3, 3), np.complex64), 3)
        Traceback (most recent call last):
        ...
        nmfseg.errors.DataError: image: has complex values (complex64); give real intensities, ...
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.is_floating_point() and image.dtype not in (torch.float32, torch.float64):
            image = image.float()  # bfloat16 has no NumPy dtype
        image = image.numpy()
    try:
        array = np.asarray(image)
    except ValueError as err:  # ragged nested lists
        raise DataError(where, f"is not a rectangular array of numbers ({err})") from None
    if array.dtype.kind == "c":
        raise DataError(
            where,
            f"has complex values ({array.dtype}); give real intensities, e.g. the magnitude "
            "np.abs(image)",
        )
    if array.dtype.kind not in "biuf":
        raise DataError(where, f"holds {array.dtype} values, not numbers")
    if array.ndim != dims + 1:
        raise DataError(
            where, f"expected (C, *spatial) with {dims} spatial axes, got shape {array.shape}"
        )
    if array.size == 0:
        raise DataError(
            where, f"is empty (shape {array.shape}); give a (C, *spatial) image with voxels"
        )
    return array


def check_nmf_settings(
    models: Sequence[nn.Module], settings: InferenceSettings, model_name: str
) -> list[list[int] | str | None]:
    """The NMF layers each network keeps (``"all"``; ``None`` for a network without NMF
    layers) once ``settings``' NMF switches are checked against every one of them.

    Raises:
        ConfigError: naming the option: an NMF switch for a network without NMF layers, a
            layer the network does not have, or a rank above what its NMF matrices allow
            (``min(rows, columns)``, :func:`~nmfseg.mixers.nmf.rank_problem`).
    """
    asked = [name for name in NMF_SETTINGS if getattr(settings, name) is not None]
    if asked and not all(nmf_layers(net) for net in models):
        raise ConfigError(
            f"{OPTIONS[asked[0]]}: the network {model_name} has no NMF layers "
            "(only Factorizers do); leave out the --nmf-* options"
        )
    keep: list[list[int] | str | None] = []
    for net in models:
        layers = nmf_layers(net)
        rank = settings.nmf_rank
        problem = rank_problem(layers, rank) if layers and rank is not None else None
        if problem:
            raise ConfigError(f"{OPTIONS['nmf_rank']} {rank}: {model_name} allows {problem}")
        if not layers:
            keep.append(None)
        elif settings.nmf_layers is None:
            keep.append("all")
        else:
            keep.append(parse_layers(settings.nmf_layers, len(layers)))
    return keep


def usable_ranks(
    models: Sequence[nn.Module],
    ranks: Sequence[int],
    model_name: str,
    note: Callable[[str], Any],
    option: str = "--ranks",
) -> list[int]:
    """The ``ranks`` that every network's NMF layers allow (a sweep's values, checked before
    its first setting runs); the others are left out with a ``note`` naming the limit.

    Raises:
        ConfigError: naming ``option``, when no rank is left.

    Examples::

        >>> from nmfseg.mixers.nmf import WrappedNMF
        >>> net = WrappedNMF(8, head_dim=4, window_size=4)
        >>> usable_ranks([net], [1, 2, 6, 7], "net", print)  # doctest: +ELLIPSIS
        note: leaving out --ranks 6-7: net allows at most 4: its matrices have head_dim=4 rows ...
        [1, 2]
        >>> usable_ranks([net], [5000], "net", print)
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: --ranks 5000: net allows at most 4: its matrices have ...
    """
    problems = {}
    for layers in (nmf_layers(net) for net in models):
        for rank in sorted(set(ranks) - set(problems)):
            problems[rank] = rank_problem(layers, rank) if layers else None
            if problems[rank] is None:
                del problems[rank]
    if not problems:
        return list(ranks)
    bad = sorted(problems)
    line = f"{option} {format_layers(bad, None)}: {model_name} allows {problems[bad[0]]}"
    if len(bad) == len(set(ranks)):
        raise ConfigError(line)
    note(f"note: leaving out {line}")
    return [r for r in ranks if r not in problems]
