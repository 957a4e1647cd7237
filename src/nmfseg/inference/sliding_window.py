"""Sliding-window prediction with optional flip test-time augmentation (paper §4.2, "Inference").

The volume is tiled with windows of the training patch size and 50% overlap (MONAI
:func:`~monai.inferers.sliding_window_inference`); the logits of overlapping windows are
blended with a Gaussian importance map (``mode="gaussian"``, σ = 0.125 × window, as in
nnU-Net), so voxels near a window's border count less than those at its centre. A volume
smaller than the window along some axis is zero-padded to the window and the padding is
cut off again, never rejected. The activation (sigmoid for region outputs) is applied to
the blended logits, and with ``tta=True`` the probabilities are averaged over all ``2**d``
combinations of flips along the ``d`` spatial axes (8 in 3D).

The function is model-agnostic: any module or callable that maps ``(B, C, *patch)`` to
logits ``(B, R, *patch)`` works. A module runs in ``eval()`` mode and is handed back in the
mode it came in (so a training loop can validate mid-run); a callable that returns a list of
deep-supervision outputs contributes its first, full-resolution one.

Examples::

    >>> import torch
    >>> from nmfseg.inference.sliding_window import sliding_window_predict
    >>> model = torch.nn.Conv3d(2, 3, kernel_size=1)
    >>> probs = sliding_window_predict(model, torch.randn(2, 20, 9, 13), patch_size=(8, 8, 8))
    >>> probs.shape, bool(((probs >= 0) & (probs <= 1)).all())
    (torch.Size([3, 20, 9, 13]), True)
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["flip_combinations", "sliding_window_predict"]


def flip_combinations(spatial_dims: int) -> list[tuple[int, ...]]:
    """All subsets of the spatial axes of a ``(B, C, *spatial)`` tensor, as ``torch.flip`` dims.

    The first entry is the identity ``()``; there are ``2**spatial_dims`` in all.

    Examples::

        >>> flip_combinations(2)
        [(), (2,), (3,), (2, 3)]
    """
    axes = range(2, 2 + spatial_dims)
    return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]


@contextmanager
def _eval_mode(model: object) -> Iterator[None]:
    """Run a module in ``eval()`` mode and give it back in the mode it had."""
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()  # type: ignore[union-attr]
    try:
        yield
    finally:
        if was_training:
            model.train()  # type: ignore[union-attr]


def sliding_window_predict(
    model: nn.Module | Callable[[Tensor], Tensor],
    image: Tensor | np.ndarray,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    tta: bool = False,
    *,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    activation: Callable[[Tensor], Tensor] | None = torch.sigmoid,
    device: torch.device | str | None = None,
    out_device: torch.device | str = "cpu",
    progress: bool = False,
) -> Tensor:
    """Predict a whole volume window by window and return its probabilities.

    Args:
        model: network mapping ``(B, C, *patch)`` to logits ``(B, R, *patch)``. An
            ``nn.Module`` runs in ``eval()`` mode (its previous mode is restored afterwards);
            gradients are never recorded.
        image: one image ``(C, *spatial)`` (NumPy or torch), already preprocessed.
        patch_size: window size, one value per spatial axis (the training patch size).
        overlap: fraction of a window shared with its neighbour along each axis.
        tta: average over all flip combinations of the spatial axes (8 in 3D, 4 in 2D).
        mode: window blending, ``"gaussian"`` or ``"constant"``.
        sw_batch_size: windows per forward pass.
        activation: applied to the blended logits (``None`` returns blended logits; with
            ``tta`` those are then averaged instead of probabilities).
        device: where the model runs; defaults to the device of the model's parameters.
        out_device: where the stitched volume is accumulated (CPU keeps GPU memory
            independent of the volume size).
        progress: show MONAI's per-window progress bar.

    Returns:
        Float32 tensor ``(R, *spatial)`` on ``out_device``.

    Raises:
        ValueError: ``image`` is not ``(C, *spatial)`` with one spatial axis per
            ``patch_size`` entry, or ``overlap`` is outside ``[0, 1)``.
    """
    patch_size = tuple(int(p) for p in patch_size)
    x = _image_tensor(image, patch_size)
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    device = _run_device(model, device)
    x = x.to(device=device, dtype=torch.float32).unsqueeze(0)
    blend = _window_blender(
        model, patch_size, overlap, mode, sw_batch_size, device, out_device, progress
    )
    flips = flip_combinations(len(patch_size)) if tta else [()]
    total: Tensor | None = None
    with _eval_mode(model), torch.inference_mode():
        for dims in flips:
            out = _predict_flipped(blend, x, dims, activation)
            total = out if total is None else total + out
    assert total is not None
    return (total / len(flips))[0].float().as_subclass(Tensor)


def _image_tensor(image: Tensor | np.ndarray, patch_size: tuple[int, ...]) -> Tensor:
    """``image`` as a tensor, checked to be ``(C, *spatial)`` with one axis per window axis."""
    if isinstance(image, np.ndarray) and not image.flags.writeable:
        image = np.array(image)  # read-only / memory-mapped: torch wants a writable buffer
    x = torch.as_tensor(image)
    if x.ndim != len(patch_size) + 1:
        raise ValueError(
            f"image must be (C, *spatial) with {len(patch_size)} spatial axes to match "
            f"patch_size {patch_size}, got shape {tuple(x.shape)}."
        )
    return x


def _run_device(model: object, device: torch.device | str | None) -> torch.device:
    """Where the model runs: ``device``, else where a module's parameters (or buffers) are,
    else the CPU."""
    if isinstance(model, nn.Module) and device is None:
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return torch.device(device if device is not None else "cpu")


def _first_output(model: nn.Module | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """The model as MONAI's predictor: float32 logits, the full-resolution deep-supervision
    output when it returns a list."""

    def predictor(patch: Tensor) -> Tensor:
        out = model(patch)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.float()

    return predictor


def _window_blender(
    model: nn.Module | Callable[[Tensor], Tensor],
    patch_size: tuple[int, ...],
    overlap: float,
    mode: str,
    sw_batch_size: int,
    device: torch.device,
    out_device: torch.device | str,
    progress: bool,
) -> Callable[[Tensor], Tensor]:
    """``(1, C, *spatial) -> (1, R, *spatial)`` blended logits: MONAI's sliding window with
    the volume zero-padded to the window where it is smaller."""
    from monai.inferers import sliding_window_inference

    return functools.partial(
        sliding_window_inference,
        roi_size=patch_size,
        sw_batch_size=sw_batch_size,
        predictor=_first_output(model),
        overlap=overlap,
        mode=mode,
        padding_mode="constant",
        cval=0.0,
        sw_device=device,
        device=out_device,
        progress=progress,
    )


def _predict_flipped(
    blend: Callable[[Tensor], Tensor],
    x: Tensor,
    dims: tuple[int, ...],
    activation: Callable[[Tensor], Tensor] | None,
) -> Tensor:
    """The activated blended logits of ``x`` flipped along ``dims``, flipped back."""
    inp = torch.flip(x, dims) if dims else x
    logits = torch.as_tensor(blend(inp))  # MetaTensor -> Tensor
    out = activation(logits) if activation is not None else logits
    return torch.flip(out, dims) if dims else out
