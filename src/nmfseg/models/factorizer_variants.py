"""Factorizers with the NMF variants the paper leaves to future work (§5, issue #24).

Each preset is a paper preset (:mod:`nmfseg.models.factorizer`) with another registered
mixer in every NMF subblock, built by :class:`~nmfseg.models.factorizer.Factorizer` itself
(``mixer=``, ``mixer_args=``): same skeleton, widths, heads, windows, MLP, position
embedding, dropout and deep supervision, and the same parameters (the mixers keep the
Wrapped NMF's two projections); only the token mixing differs.

================================= ============================ ==================================
preset                            mixer                        what it factorizes
================================= ============================ ==================================
``factorizer_brats_semi_nmf``     ``semi_nmf``                 Semi-NMF (Ding et al. 2010), no
                                                               ReLU: mixed-sign channel factor,
                                                               nonnegative map (Swin)
``factorizer_brats_convex_nmf``   ``convex_nmf``               Convex-NMF, no ReLU, the channels
                                                               as data points (Swin)
``local_greedy_factorizer_brats`` ``greedy_nmf``               rank per window: rank-one
                                                               components until the residual is
                                                               at most ``tol`` (0.5), at most 4
``local_global_factorizer_brats`` ``local_global_nmf``         one objective: a global rank-one
                                                               term per head plus a local one
                                                               per window
================================= ============================ ==================================

The greedy and local + global mixers are :class:`~nmfseg.mixers.nmf.WrappedNMF` subclasses,
so ``set_nmf``, ``record_factors``, ``nmfseg explain`` (with the ranks the greedy layers
chose) and ``nmfseg ablate`` work on them as on the paper's networks. Semi-NMF and
Convex-NMF take mixed-sign matrices and have no ReLU and no nonnegative factors to record:
their names follow ``factorizer_brats_no_nmf`` (Table 3), outside the ``*_factorizer_*``
names that promise Wrapped NMF layers.

Examples::

    >>> import torch
    >>> from nmfseg.models import create_model
    >>> net = create_model("local_greedy_factorizer_brats", channels=(8, 16, 32, 64, 128))
    >>> _ = net.eval()
    >>> net(torch.randn(1, 4, 20, 18, 17)).shape
    torch.Size([1, 3, 20, 18, 17])
    >>> type(net.nmf_layers()[0]).__name__, net.nmf_layers()[0].nmf.rank
    ('GreedyWrappedNMF', 4)
    >>> net = create_model("factorizer_brats_semi_nmf", channels=(8, 16, 32, 64, 128))
    >>> type(net.encoder[0].block.mixer).__name__, net.nmf_layers()
    ('WrappedSemiNMF', [])
"""

from __future__ import annotations

from typing import Any

from nmfseg.models._registry import PAPER_DATASETS, ModelConfig, model_info, register_model
from nmfseg.models.factorizer import Factorizer

__all__: list[str] = []

#: preset -> (paper preset it varies, mixer, mixer arguments, description)
_VARIANTS: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "factorizer_brats_semi_nmf": (
        "swin_factorizer_brats", "semi_nmf", {},
        "Swin Factorizer with Semi-NMF instead of ReLU + NMF (Ding et al. 2010, paper §5)",
    ),
    "factorizer_brats_convex_nmf": (
        "swin_factorizer_brats", "convex_nmf", {},
        "Swin Factorizer with Convex-NMF instead of ReLU + NMF (Ding et al. 2010, paper §5)",
    ),
    "local_greedy_factorizer_brats": (
        "local_factorizer_brats", "greedy_nmf", {"max_rank": 4, "tol": 0.5},
        "Local Factorizer with greedy-rank NMF (rank per window, at most 4, paper §5)",
    ),
    "local_global_factorizer_brats": (
        "local_factorizer_brats", "local_global_nmf", {"rank": 2},
        "Local Factorizer with local + global NMF (one objective, paper §5)",
    ),
}  # fmt: skip

for _name, (_base, _mixer, _args, _text) in _VARIANTS.items():
    register_model(
        ModelConfig(
            name=_name,
            builder=Factorizer,
            kwargs={**model_info(_base).kwargs, "mixer": _mixer, "mixer_args": _args},
            description=f"{_text}, BraTS preset",
            **PAPER_DATASETS["brats"],
        )
    )
