"""Factorizer variants (#24): the paper's Factorizer networks with another token mixer.

Sections, each self-contained: Semi-NMF and Convex-NMF (below); more mixers may follow.

Semi-NMF and Convex-NMF
-----------------------

Paper §5: "Semi-NMF and Convex-NMF, which work on mixed-signed data matrices and relax the
need for the ReLU activation function before factorization". The presets are the network of
``swin_factorizer_brats`` (:mod:`nmfseg.models.factorizer`: its widths, heads of 8 channels,
8³ Swin windows, rank 1 and 5 iterations, MLP, bridge position embedding, dropout, deep
supervision), read from that preset and built as the :class:`~nmfseg.models.unet.UNet`
skeleton it is, with the mixer of every block swapped (:func:`swapped_mixer_kwargs`). The
mixers have the Wrapped NMF's two projections, so the parameters are the same
(5,855,241); only the token mixing differs.

=============================== ============================================================
preset                          mixer (:mod:`nmfseg.mixers.semi_nmf`, no ReLU in front)
=============================== ============================================================
``factorizer_brats_semi_nmf``   ``"semi_nmf"``: Semi-NMF, a nonnegative spatial map per
                                component and a mixed-sign channel factor
``factorizer_brats_convex_nmf`` ``"convex_nmf"``: Convex-NMF with the channels as the data
                                points (the window's Gram matrix of the channels)
=============================== ============================================================

Their names follow ``factorizer_brats_no_nmf`` (Table 3), not ``swin_..._factorizer_brats``:
they are not :class:`~nmfseg.models.factorizer.Factorizer` instances (their mixers are no
Wrapped NMF: no ReLU, no NMF factors to record or ``set_nmf`` to switch), and the tests
take every ``*_factorizer_*`` preset for one. The rank and iterations are mixer arguments:
``create_model("factorizer_brats_semi_nmf", block_args={"mixer_args": {"iters": 3}})``.

Examples::

    >>> import torch
    >>> from nmfseg.models import create_model
    >>> net = create_model("factorizer_brats_semi_nmf", channels=(8, 16, 32, 64, 128)).eval()
    >>> net(torch.randn(1, 4, 20, 18, 17)).shape
    torch.Size([1, 3, 20, 18, 17])
    >>> type(net.encoder[0].block.mixer).__name__
    'WrappedSemiNMF'
"""

from __future__ import annotations

import inspect
from typing import Any

from nmfseg.mixers import semi_nmf as _semi_nmf  # noqa: F401  (registers its two mixers)
from nmfseg.models._registry import PAPER_DATASETS, ModelConfig, model_info, register_model
from nmfseg.models.factorizer import Factorizer
from nmfseg.models.unet import UNet

__all__ = ["swapped_mixer_kwargs"]

# --------------------------------------------------------------------------------------
# Semi-NMF and Convex-NMF: the Swin Factorizer of BraTS with the mixer swapped.

#: The Factorizer arguments that are the skeleton's (UNet's), and those that are its mixer's.
_SKELETON_ARGS = ("spatial_dims", "in_channels", "out_channels", "channels", "dropout",
                  "pos_embed", "pos_embed_grid", "deep_supervision", "deep_supr_num")  # fmt: skip
_MIXER_ARGS = ("matricize", "head_dim", "window_size", "rank", "iters")


def swapped_mixer_kwargs(
    preset: str, mixer: str, mixer_args: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The :class:`~nmfseg.models.unet.UNet` arguments of a registered Factorizer preset
    with ``mixer`` in every block.

    The preset's arguments, with the Factorizer's defaults for those it leaves out, give the
    skeleton, the MLP and the mixer's ``matricize``, ``head_dim``, ``window_size``, ``rank``
    and ``iters``; ``mixer_args`` are added to (or replace) the latter.

    Args:
        preset: A registered :class:`~nmfseg.models.factorizer.Factorizer` preset.
        mixer: A registered mixer that takes the five arguments above.
        mixer_args: Its other keyword arguments.

    Examples::

        >>> kw = swapped_mixer_kwargs("swin_factorizer_brats", "convex_nmf", {"rank": 2})
        >>> kw["block_args"]["mixer"], kw["block_args"]["mixer_args"]["rank"], kw["dropout"]
        ('convex_nmf', 2, 0.1)
    """
    defaults = {
        name: p.default
        for name, p in inspect.signature(Factorizer).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    kwargs = {**defaults, **model_info(preset).kwargs}
    block_args = {
        "mixer": mixer,
        "mixer_args": {**{k: kwargs[k] for k in _MIXER_ARGS}, **(mixer_args or {})},
        "mlp": kwargs["mlp"],
        "mlp_ratio": kwargs["mlp_ratio"],
    }
    skeleton = {k: kwargs[k] for k in _SKELETON_ARGS}
    return {**skeleton, "channels": list(skeleton["channels"]), "block_args": block_args}


_WITHOUT_RELU = {
    "factorizer_brats_semi_nmf": (
        "semi_nmf",
        "Swin Factorizer with Semi-NMF instead of ReLU + NMF (Ding et al. 2010, paper §5)",
    ),
    "factorizer_brats_convex_nmf": (
        "convex_nmf",
        "Swin Factorizer with Convex-NMF instead of ReLU + NMF (Ding et al. 2010, paper §5)",
    ),
}
for _name, (_mixer, _text) in _WITHOUT_RELU.items():
    register_model(
        ModelConfig(
            name=_name,
            builder=UNet,
            kwargs=swapped_mixer_kwargs("swin_factorizer_brats", _mixer),
            description=f"{_text}, BraTS preset",
            **PAPER_DATASETS["brats"],
        )
    )
