"""Token mixers by name: what a :class:`~nmfseg.blocks.MixerBlock` puts before its MLP.

==================== =======================================================================
name                 mixer
==================== =======================================================================
``nmf``              :class:`~nmfseg.mixers.nmf.WrappedNMF`, the Factorizer's (paper §3.4)
``favor``            :class:`~nmfseg.mixers.favor.FAVORAttention`, the Performer baseline's
``none``             no mixer: the block is its MLP only (the paper's "no NMF" ablation)
``semi_nmf``         :class:`~nmfseg.mixers.semi_nmf.WrappedSemiNMF`: Semi-NMF, no ReLU (§5)
``convex_nmf``       :class:`~nmfseg.mixers.semi_nmf.WrappedConvexNMF`: Convex-NMF, no ReLU
``greedy_nmf``       :class:`~nmfseg.mixers.greedy_nmf.GreedyWrappedNMF`: the rank of every
                     window chosen greedily (§5)
``local_global_nmf`` :class:`~nmfseg.mixers.local_global.LocalGlobalNMF`: one objective
                     with a global and a local term (§5)
==================== =======================================================================

and the exact attention of two baselines (:mod:`nmfseg.mixers.attention`): ``attention``
(TransBTS's multi-head self-attention over all voxels) and ``volume_attention`` (nnFormer's
windowed LV-MSA with relative position bias, or GV-MSA).

A new mixer is one module file that registers a constructor
``fn(channels, spatial_dims, dropout, **kwargs) -> nn.Module`` with :func:`register_mixer`
(best a :class:`~nmfseg.mixers.base.ProjectedMixer`, which blocks fuse on CPU), plus a model
preset that names it. Names keep checkpoints plain data: a network stores ``mixer="nmf"``,
never a class.

Examples::

    >>> from nmfseg.mixers import create_mixer, list_mixers
    >>> list_mixers()  # doctest: +NORMALIZE_WHITESPACE
    ['attention', 'convex_nmf', 'favor', 'greedy_nmf', 'local_global_nmf', 'nmf', 'none',
     'semi_nmf', 'volume_attention']
    >>> create_mixer("nmf", 16, spatial_dims=3, matricize="swin", window_size=4).kind
    'swin'
    >>> create_mixer("none", 16) is None
    True
"""

from __future__ import annotations

from nmfseg.mixers import (  # noqa: F401  (register their mixers)
    attention,
    favor,
    greedy_nmf,
    local_global,
    nmf,
    semi_nmf,
)
from nmfseg.mixers._registry import (
    create_mixer,
    list_mixers,
    register_mixer,
    temporarily_registered_mixer,
)

__all__ = ["create_mixer", "list_mixers", "register_mixer", "temporarily_registered_mixer"]
