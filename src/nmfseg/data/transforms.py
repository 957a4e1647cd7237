"""Training patches and augmentations (paper §4.2 and Appendix A), built on MONAI.

A training sample is a random patch of a preprocessed case (:func:`random_patch`), then
the seven augmentations of Appendix A, in this order (:func:`build_augmentation`):

==================  =====  ===========================================================
transform           p      parameters (MONAI class)
==================  =====  ===========================================================
affine              0.15   rotation ~ U(-30°, 30°) about each axis, scale ~ U(0.7, 1.3)
                           per axis (``RandAffined``; image and regions, bilinear)
flip                0.5    each spatial axis independently (``RandFlipd`` per axis)
Gaussian noise      0.15   additive, *variance* ~ U(0, 0.1) (:class:`RandGaussianNoiseVarianced`)
Gaussian smoothing  0.15   sigma ~ U(0.5, 1.5) per axis, each channel filtered on its own
                           (``RandGaussianSmoothd``)
scale intensity     0.15   ``v * s`` with s ~ U(0.7, 1.3) (``RandScaleIntensityd``)
shift intensity     0.15   ``v + o`` with o ~ U(-0.1, 0.1) (``RandShiftIntensityd``)
adjust contrast     0.15   gamma ~ U(0.7, 1.5) (``RandAdjustContrastd``)
==================  =====  ===========================================================

Two MONAI conventions are translated here so that the config holds the paper's numbers:

* ``RandGaussianNoise(std=a)`` draws the *standard deviation* from U(0, a); the paper draws
  the *variance* from U(0, 0.1). :class:`RandGaussianNoiseVarianced` draws the variance and
  uses its square root as the standard deviation.
* ``RandScaleIntensity(factors=(a, b))`` computes ``v * (1 + f)`` with f ~ U(a, b); the
  config's ``factor: [0.7, 1.3]`` (the paper's ``s``) becomes ``factors=(-0.3, 0.3)``.

Likewise ``RandAffine(scale_range=r)`` uses ``1 + U(-r, r)`` and takes radians; the
config's ``scale`` and ``rotate_deg`` ranges are converted. The affine resamples the
regions bilinearly like the image (zero padding outside the patch, matching the zero
background of the z-scored image) and :func:`augment` thresholds them back to ``{0, 1}``
at 0.5, so image and regions stay aligned. Intensity transforms touch the image only.

Randomness never comes from a global stream: :func:`augment` seeds every transform from
one integer, so a sample is a pure function of its seed (see :mod:`nmfseg.training.data`).

Examples::

    >>> import numpy as np, torch
    >>> from nmfseg.training.config import load_recipe
    >>> from nmfseg.data.transforms import augment, build_augmentation, random_patch
    >>> rng = np.random.default_rng(0)
    >>> image, regions = rng.standard_normal((4, 20, 18, 9)), rng.random((3, 20, 18, 9)) > 0.7
    >>> x, y = random_patch(image, regions, (16, 16, 16), rng)
    >>> x.shape, y.shape
    ((4, 16, 16, 16), (3, 16, 16, 16))
    >>> pipeline = build_augmentation(load_recipe("brats")["augmentation"])
    >>> x, y = augment(pipeline, x, y, seed=7)
    >>> x.dtype, y.dtype, y.shape
    (torch.float32, torch.uint8, torch.Size([3, 16, 16, 16]))
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from torch import Tensor

__all__ = [
    "AUGMENTATION_ORDER",
    "RandGaussianNoiseVarianced",
    "augment",
    "build_augmentation",
    "random_patch",
]

# Appendix A, in the order the transforms are applied (keys of the config section).
AUGMENTATION_ORDER = (
    "affine",
    "flip",
    "noise",
    "smooth",
    "scale_intensity",
    "shift_intensity",
    "contrast",
)


class RandGaussianNoiseVarianced(RandomizableTransform, MapTransform):
    """Additive white Gaussian noise whose *variance* is drawn from ``U(variance)``.

    With probability ``prob`` one variance ``s2 ~ U(low, high)`` is drawn per call and every
    voxel of every channel gets independent ``N(0, s2)`` noise (paper, Appendix A, item 3).

    Args:
        keys: keys of the images to corrupt.
        prob: probability of applying the noise.
        variance: ``(low, high)`` range of the variance.

    Examples::

        >>> import torch
        >>> t = RandGaussianNoiseVarianced("image", prob=1.0, variance=(0.09, 0.09))
        >>> _ = t.set_random_state(0)
        >>> out = t({"image": torch.zeros(1, 40, 40, 40)})["image"]
        >>> round(float(out.var()), 2)
        0.09
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable],
        prob: float = 0.15,
        variance: Sequence[float] = (0.0, 0.1),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        low, high = (float(v) for v in variance)
        if not 0 <= low <= high:
            raise ValueError(f"variance must be a range 0 <= low <= high, got {variance}.")
        self.variance = (low, high)
        self.sampled_variance: float = 0.0

    def randomize(self, data: Any = None) -> None:
        """Decide whether to apply the noise and draw its variance."""
        super().randomize(None)
        if self._do_transform:
            self.sampled_variance = float(self.R.uniform(*self.variance))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        std = math.sqrt(self.sampled_variance)
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key])
            noise = self.R.normal(0.0, std, size=tuple(img.shape)).astype(np.float32)
            d[key] = img + torch.from_numpy(noise).to(img.device, img.dtype)
        return d


def build_augmentation(aug: Mapping[str, Mapping[str, Any]], spatial_dims: int = 3) -> Compose:
    """The Appendix A pipeline on ``{"image": (C, *patch), "label": (R, *patch)}`` dicts.

    Args:
        aug: the ``augmentation`` section of a training config (see ``configs/brats.yaml``):
            ``prob`` and the paper's ranges for each transform of :data:`AUGMENTATION_ORDER`.
        spatial_dims: 2 or 3.

    Returns:
        A MONAI ``Compose``; use :func:`augment` to run it with a seed and get the regions
        back as ``{0, 1}``.
    """
    unknown = set(aug) - set(AUGMENTATION_ORDER)
    if unknown:
        raise ValueError(f"unknown augmentation(s) {sorted(unknown)}; known: {AUGMENTATION_ORDER}")
    both, img = ["image", "label"], ["image"]
    a = aug["affine"]
    rot = [math.radians(float(v)) for v in a["rotate_deg"]]
    scale = [float(v) - 1.0 for v in a["scale"]]
    n_rot = 3 if spatial_dims == 3 else 1
    transforms: list[Any] = [
        RandAffined(
            both,
            prob=float(a["prob"]),
            rotate_range=[tuple(rot)] * n_rot,
            scale_range=[tuple(scale)] * spatial_dims,
            mode=("bilinear", "bilinear"),
            padding_mode="zeros",
        )
    ]
    transforms += [
        RandFlipd(both, prob=float(aug["flip"]["prob"]), spatial_axis=axis)
        for axis in range(spatial_dims)
    ]
    transforms.append(
        RandGaussianNoiseVarianced(
            img, prob=float(aug["noise"]["prob"]), variance=aug["noise"]["variance"]
        )
    )
    sigma = tuple(float(v) for v in aug["smooth"]["sigma"])
    transforms.append(
        RandGaussianSmoothd(
            img, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=float(aug["smooth"]["prob"])
        )
    )
    factor = tuple(float(v) - 1.0 for v in aug["scale_intensity"]["factor"])
    transforms.append(
        RandScaleIntensityd(img, factors=factor, prob=float(aug["scale_intensity"]["prob"]))
    )
    offset = tuple(float(v) for v in aug["shift_intensity"]["offset"])
    transforms.append(
        RandShiftIntensityd(img, offsets=offset, prob=float(aug["shift_intensity"]["prob"]))
    )
    gamma = tuple(float(v) for v in aug["contrast"]["gamma"])
    transforms.append(RandAdjustContrastd(img, gamma=gamma, prob=float(aug["contrast"]["prob"])))
    return Compose(transforms)


def augment(
    pipeline: Compose, image: np.ndarray | Tensor, regions: np.ndarray | Tensor, seed: int
) -> tuple[Tensor, Tensor]:
    """Run ``pipeline`` on one patch with every transform seeded from ``seed``.

    Args:
        pipeline: from :func:`build_augmentation`.
        image: ``(C, *patch)`` float image.
        regions: ``(R, *patch)`` binary regions.
        seed: the sample's seed; the same seed gives the same output, in any process.

    Returns:
        ``(image float32, regions uint8 in {0, 1})`` as plain tensors.
    """
    from monai.utils import convert_to_tensor

    pipeline.set_random_state(seed=int(seed) % (2**32))
    data = {
        "image": torch.as_tensor(np.asarray(image, dtype=np.float32)),
        "label": torch.as_tensor(np.asarray(regions, dtype=np.float32)),
    }
    out = pipeline(data)
    x = convert_to_tensor(out["image"], track_meta=False, dtype=torch.float32)
    y = convert_to_tensor(out["label"], track_meta=False) >= 0.5
    return x.contiguous(), y.to(torch.uint8).contiguous()


def random_patch(
    image: np.ndarray,
    regions: np.ndarray,
    patch_size: Sequence[int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one uniformly random patch out of a case, zero-padding axes shorter than the patch.

    An axis shorter than the patch is padded with zeros on both sides (the extra voxel,
    if odd, after) to the patch size; then a start is drawn uniformly among all positions
    where the patch fits. Works on memory-mapped arrays (only the patch is read).

    Args:
        image: ``(C, *spatial)`` preprocessed image (background is 0).
        regions: ``(R, *spatial)`` binary regions.
        patch_size: one size per spatial axis.
        rng: NumPy generator that draws the position.

    Returns:
        ``(image patch float32, regions patch uint8)``, each ``(*, *patch_size)``.

    Examples::

        >>> import numpy as np
        >>> img = np.ones((1, 4, 10, 3), np.float32)
        >>> x, y = random_patch(img, np.ones((1, 4, 10, 3), np.uint8), (6, 6, 6),
        ...                     np.random.default_rng(0))
        >>> x.shape, float(x.sum()) == 4 * 6 * 3
        ((1, 6, 6, 6), True)
    """
    spatial = tuple(int(s) for s in image.shape[1:])
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != len(spatial):
        raise ValueError(f"patch_size {patch} does not match the image's spatial shape {spatial}.")
    if tuple(regions.shape[1:]) != spatial:
        raise ValueError(f"regions {regions.shape} and image {image.shape} differ spatially.")
    starts = [int(rng.integers(0, max(n - p, 0) + 1)) for n, p in zip(spatial, patch, strict=True)]
    window = tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
    x = np.asarray(image[(slice(None), *window)], dtype=np.float32)
    y = np.asarray(regions[(slice(None), *window)], dtype=np.uint8)
    if x.shape[1:] != patch:
        short = zip(x.shape[1:], patch, strict=True)
        pad = [(0, 0)] + [((p - n) // 2, p - n - (p - n) // 2) for n, p in short]
        x = np.pad(x, pad)
        y = np.pad(y, pad)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)
