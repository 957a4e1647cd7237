"""Translations the TorchScript-based ONNX exporter lacks, for the operators the networks use.

``aten::frac`` (the NMF's deterministic initialization) and ``aten::mT`` (the rank-1 NMF)
have none, and PyTorch's ``aten::movedim`` writes negative dims into ``Transpose``
(the channel LayerNorm and pointwise convolutions). :func:`registered_symbolics` registers
ours for every opset (``torch.onnx.register_custom_op_symbolic``) for the duration of an
export and removes them again; the verification of ``nmfseg export`` checks the result
against PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from nmfseg.errors import NmfsegError

__all__ = ["registered_symbolics"]


def _frac(g: Any, x: Any) -> Any:
    # x - trunc(x), with trunc(x) = sign(x) * floor(|x|) (ONNX has no Trunc)
    whole = g.op("Mul", g.op("Sign", x), g.op("Floor", g.op("Abs", x)))
    return g.op("Sub", x, whole)


def _rank(x: Any) -> int:
    rank = x.type().dim()
    if rank is None:
        raise NmfsegError("the exporter does not know the rank of a transposed tensor")
    return int(rank)


def _matrix_transpose(g: Any, x: Any) -> Any:
    perm = list(range(_rank(x)))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return g.op("Transpose", x, perm_i=perm)


def _const_ints(value: Any) -> list[int]:
    from torch.onnx import symbolic_helper

    return [int(v) for v in torch.as_tensor(symbolic_helper._maybe_get_const(value, "t")).flatten()]


def _movedim(g: Any, x: Any, source: Any, destination: Any) -> Any:
    # PyTorch's own translation writes negative dims into Transpose's perm.
    rank = _rank(x)
    src = [s % rank for s in _const_ints(source)]
    dst = [d % rank for d in _const_ints(destination)]
    perm: list[int | None] = [None] * rank
    for s, d in zip(src, dst, strict=True):
        perm[d] = s
    rest = iter(i for i in range(rank) if i not in src)
    return g.op("Transpose", x, perm_i=[p if p is not None else next(rest) for p in perm])


_SYMBOLICS = {"frac": _frac, "mT": _matrix_transpose, "movedim": _movedim}


@contextmanager
def registered_symbolics() -> Iterator[None]:
    """Inside the block, the exporter translates ``aten::frac``, ``aten::mT`` and
    ``aten::movedim`` with the functions of this module (PyTorch's own afterwards).

    Examples::

        >>> import io, warnings
        >>> class Frac(torch.nn.Module):
        ...     def forward(self, x):
        ...         return torch.frac(x)
        >>> buffer = io.BytesIO()
        >>> with registered_symbolics(), warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")  # the exporter's deprecation warning
        ...     torch.onnx.export(Frac(), (torch.randn(3),), buffer, dynamo=False)
        >>> buffer.tell() > 0
        True
    """
    for name, fn in _SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(f"aten::{name}", fn, 9)
    try:
        yield
    finally:
        for name in _SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(f"aten::{name}", 9)
