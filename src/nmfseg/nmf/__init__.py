"""The NMF core: differentiable NMF and matricize, the parts of paper §3.4 (imports only torch).

========================= ===================================================================
module                    what it holds
========================= ===================================================================
:mod:`~.solvers`          :func:`nmf`, :func:`nmf_reconstruct` and the :class:`NMF` module
:mod:`~.steps`            the general solvers (MU, HALS; any rank) and the default init
:mod:`~.rank1`            the exact rank-1 fast path (Gram-space power iteration)
:mod:`~.matricize`        Global / Local / Shifted-Window matricize modules, exact inverses
:mod:`~.windows`          :class:`MatricizeGeometry` and the data movement behind matricize
========================= ===================================================================

Examples::

    >>> import torch
    >>> from nmfseg.nmf import NMF, SWMatricize
    >>> sw = SWMatricize(head_dim=4, window_size=4)
    >>> x = torch.rand(1, 8, 9, 10, 11)
    >>> y = sw.inverse(NMF(rank=1, iters=5)(sw(x)), x.shape)  # one NMF token mixing
    >>> y.shape
    torch.Size([1, 8, 9, 10, 11])
"""

from nmfseg.nmf.matricize import (
    MATRICIZE_KINDS,
    GlobalMatricize,
    LocalMatricize,
    SWMatricize,
    build_matricize,
)
from nmfseg.nmf.recompute import matricized_rank1
from nmfseg.nmf.solvers import NMF, SOLVERS, nmf, nmf_flops, nmf_reconstruct
from nmfseg.nmf.steps import default_init
from nmfseg.nmf.windows import MatricizeGeometry

__all__ = [
    "MATRICIZE_KINDS",
    "NMF",
    "SOLVERS",
    "GlobalMatricize",
    "LocalMatricize",
    "MatricizeGeometry",
    "SWMatricize",
    "build_matricize",
    "default_init",
    "matricized_rank1",
    "nmf",
    "nmf_flops",
    "nmf_reconstruct",
]
