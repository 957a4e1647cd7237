"""Factorizers with the NMF variants of paper §5: greedy rank and local + global (not in the paper).

The presets are the Local Factorizer of BraTS (``local_factorizer_brats``: its widths,
heads, 8³ windows, MLP, position embedding and dropout) with another NMF mixer in every
block:

================================= ===========================================================
preset                            NMF subblock
================================= ===========================================================
``local_greedy_factorizer_brats`` ``greedy_nmf`` (:mod:`nmfseg.mixers.greedy_nmf`): every
                                  window takes rank-one components until its relative
                                  residual is at most ``tol`` (0.5), at most ``max_rank`` (4)
``local_global_factorizer_brats`` ``local_global_nmf`` (:mod:`nmfseg.mixers.local_global`):
                                  a global rank-one term shared by a head's windows plus a
                                  local rank-one term per window, one objective
================================= ===========================================================

Both have the Local Factorizer's parameters exactly (the mixers differ only in what their
NMF computes). :class:`MixerFactorizer` builds them: a
:class:`~nmfseg.models.factorizer.Factorizer` whose NMF subblocks are another registered
mixer that is a :class:`~nmfseg.mixers.nmf.WrappedNMF`, so ``set_nmf``,
``record_factors``, ``nmfseg explain`` and ``nmfseg ablate`` work on it as on the paper's.

Examples::

    >>> import torch
    >>> from nmfseg.models import create_model
    >>> net = create_model("local_greedy_factorizer_brats", channels=(8, 16, 32, 64, 128))
    >>> _ = net.eval()
    >>> net(torch.randn(1, 4, 20, 18, 17)).shape
    torch.Size([1, 3, 20, 18, 17])
    >>> type(net.nmf_layers()[0]).__name__, net.nmf_layers()[0].nmf.rank
    ('GreedyWrappedNMF', 4)
"""

from __future__ import annotations

from typing import Any

from nmfseg.mixers import create_mixer
from nmfseg.mixers import greedy_nmf as _greedy  # noqa: F401  (registers "greedy_nmf")
from nmfseg.mixers import local_global as _local_global  # noqa: F401  (registers its mixer)
from nmfseg.mixers.nmf import WrappedNMF
from nmfseg.models._registry import PAPER_DATASETS, ModelConfig, model_info, register_model
from nmfseg.models.factorizer import Factorizer

__all__ = ["MixerFactorizer"]


class MixerFactorizer(Factorizer):
    """A :class:`~nmfseg.models.factorizer.Factorizer` whose NMF subblocks are ``mixer``.

    The network is built as a Factorizer; then every block's Wrapped NMF is replaced by the
    registered ``mixer`` (a :class:`~nmfseg.mixers.nmf.WrappedNMF` subclass), built for the
    same channels with the Factorizer's ``matricize``, ``head_dim``, ``window_size``,
    ``iters``, ``grad_iters`` and dropout, and ``mixer_args`` besides. It takes the
    replaced layer's place among the NMF layers (``layer_index``, ``level``). ``rank`` and
    ``solver`` of the Factorizer are not passed on: a mixer's own rank is in
    ``mixer_args``.

    Args:
        mixer: A registered mixer whose modules are Wrapped NMFs (``"greedy_nmf"``,
            ``"local_global_nmf"``).
        mixer_args: Its other keyword arguments (e.g. ``{"max_rank": 4, "tol": 0.5}``).
        **kwargs: The :class:`~nmfseg.models.factorizer.Factorizer`'s arguments.

    Raises:
        ValueError: ``mixer`` builds no Wrapped NMF, or an argument is out of range.

    Examples::

        >>> net = MixerFactorizer("local_global_nmf", channels=(8, 16), head_dim=4,
        ...                       matricize="local", window_size=4, deep_supervision=False)
        >>> [(type(m).__name__, m.layer_index, m.level) for m in net.nmf_layers()]
        [('LocalGlobalNMF', 0, 0), ('LocalGlobalNMF', 1, 1), ('LocalGlobalNMF', 2, 0)]
    """

    def __init__(
        self, mixer: str = "greedy_nmf", mixer_args: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        for _, stage in self.levels():
            block = stage.block
            old = getattr(block, "mixer", None)
            if not isinstance(old, WrappedNMF):  # nmf=False: no NMF subblock to replace
                continue
            new = create_mixer(
                mixer, old.channels, spatial_dims=old.spatial_dims, dropout=old.dropout.p,
                matricize=old.kind, head_dim=old.head_dim,
                window_size=old.matricize.window_size, iters=old.nmf.iters,
                grad_iters=old.nmf.grad_iters, **(mixer_args or {}),
            )  # fmt: skip
            if not isinstance(new, WrappedNMF):
                raise ValueError(f"mixer {mixer!r} is no Wrapped NMF; a Factorizer needs one.")
            new.layer_index, new.level = old.layer_index, old.level
            block.mixer = new


# The Local Factorizer of BraTS (models/factorizer.py), another NMF in every block.
_LOCAL_BRATS = dict(model_info("local_factorizer_brats").kwargs)
_VARIANTS = {
    "local_greedy_factorizer_brats": (
        "greedy_nmf",
        {"max_rank": 4, "tol": 0.5},
        "Local Factorizer with greedy-rank NMF (rank per window, at most 4, paper §5)",
    ),
    "local_global_factorizer_brats": (
        "local_global_nmf",
        {"rank": 2},
        "Local Factorizer with local + global NMF (one objective, paper §5)",
    ),
}
for _name, (_mixer, _args, _text) in _VARIANTS.items():
    register_model(
        ModelConfig(
            name=_name,
            builder=MixerFactorizer,
            kwargs={**_LOCAL_BRATS, "mixer": _mixer, "mixer_args": _args},
            description=f"{_text}, BraTS preset",
            **PAPER_DATASETS["brats"],
        )
    )
