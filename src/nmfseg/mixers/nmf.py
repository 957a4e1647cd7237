"""The Wrapped NMF token mixer of a Factorizer block (paper §3.4, eq. 6, Fig. 2b).

``WrappedNMF(x) = Dropout(PointwiseConv(Dematricize(NMF(ReLU(Matricize(PointwiseConv(x)))))))``:
the input projection has no bias, the output projection has one (as in the official code).
Registered as mixer ``"nmf"``. The projections, the matricize, their checks and the rank
bound are those of every NMF-family mixer (:class:`~nmfseg.mixers.wrapped.WrappedMixer`).

Two inference-time controls (paper §4.5) live here, with functions that apply them to every
NMF layer of any network (:func:`nmf_layers`, :func:`set_nmf`):

- ``enabled = False`` short-circuits the NMF layer: its output is replaced by its input, the
  ReLU'd matrices. Dematricize is the exact inverse of Matricize (for Swin, the average of
  two exact inverses of the same values), so the short-circuited subblock is computed as
  ``PointwiseConv(ReLU(PointwiseConv(x)))`` without building the matrices at all.
- ``recorder``: when a list, every forward appends an :class:`NMFRecord` with the factors
  ``(u, v)`` and what is needed to dematricize them; :func:`factor_maps` turns a record into
  spatial maps (paper Fig. 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from nmfseg.layers.args import check_positive
from nmfseg.mixers._registry import register_mixer
from nmfseg.mixers.wrapped import NO_BETTER_RANK, WrappedMixer
from nmfseg.nmf import NMF, SOLVERS, MatricizeGeometry, matricized_rank1
from nmfseg.nmf.windows import is_reshape
from nmfseg.routes import FusedFlag, Route, takes

__all__ = [
    "NMFRecord",
    "WrappedNMF",
    "factor_maps",
    "nmf_layers",
    "nmf_state",
    "rank_problem",
    "restore_nmf",
    "set_nmf",
]


@dataclass
class NMFRecord:
    """The factors one NMF layer computed in one forward pass.

    Attributes:
        layer: Index of the layer in :func:`nmf_layers` of its network (``-1`` if standalone).
        u: Channel factor ``(B', head_dim, R)``.
        v: Spatial factor ``(B', N, R)``.
        geometry: Where every matrix and column came from
            (:class:`~nmfseg.nmf.MatricizeGeometry`: kind, input shape, windows).
        matricize: The matricize module that produced the matrices (used to dematricize).
        level: Resolution level of the layer in its network (feature maps at ``1 / 2**level``
            of the input), or ``None`` if standalone.
        size: Spatial size to crop dematricized maps to (the unpadded stage size), or
            ``None`` to keep the matricized feature map's size.
    """

    layer: int
    u: Tensor
    v: Tensor
    geometry: MatricizeGeometry
    matricize: nn.Module
    level: int | None = None
    size: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape ``(B, C, *spatial)`` of the feature map that was matricized."""
        g = self.geometry
        return (g.batch_size, g.channels, *g.spatial_size)

    @property
    def head_dim(self) -> int:
        return self.geometry.head_dim

    @property
    def heads(self) -> int:
        return self.geometry.heads

    @property
    def rank(self) -> int:
        return self.u.shape[-1]


def factor_maps(record: NMFRecord, batch_index: int = 0) -> Tensor:
    """Dematricize the spatial factor of a record into maps of shape ``(heads·R, *spatial)``.

    Component ``r`` of head ``h`` is map ``h·R + r``. Each component is scaled by the norm of
    its channel factor (``u v^T = (u/‖u‖)(‖u‖ v)^T``), so maps from different windows of
    Local/Swin matricize share one scale. For Swin matricize the regular and shifted-window
    maps are averaged, as the SW dematricize does with features.

    Args:
        record: One entry recorded by ``Factorizer.record_factors()``.
        batch_index: Which sample of the batch.

    Returns:
        A float tensor ``(heads·R, *spatial)`` with ``spatial = record.size`` (or the
        matricized feature map's size when ``size`` is ``None``).

    Examples::

        >>> layer = WrappedNMF(8, spatial_dims=2, matricize="local", head_dim=4, window_size=4)
        >>> layer.recorder = []
        >>> _ = layer(torch.randn(1, 8, 10, 12))
        >>> factor_maps(layer.recorder[0]).shape
        torch.Size([2, 10, 12])
    """
    b = record.geometry.batch_size
    if not 0 <= batch_index < b:
        raise ValueError(f"batch_index should be in [0, {b}), got {batch_index}.")
    u, v = record.u.float(), record.v.float()
    scaled = v * torch.linalg.vector_norm(u, dim=-2, keepdim=True)  # (B', N, R)
    maps = record.matricize.dematricize_factor(scaled, record.geometry)  # (B, heads, R, *S)
    out = maps[batch_index].flatten(0, 1)  # (heads·R, *S), head-major
    if record.size is not None:
        out = out[(slice(None), *(slice(0, s) for s in record.size))]
    return out


class WrappedNMF(FusedFlag, WrappedMixer):
    """Pointwise conv → matricize → ReLU → NMF → dematricize → pointwise conv → dropout.

    Args:
        channels: Number of input and output channels (a multiple of ``head_dim``).
        spatial_dims: 2 or 3.
        matricize: ``"global"``, ``"local"`` or ``"swin"`` (shifted window).
        head_dim: Channels per matrix (rows ``E``).
        window_size: Window of Local/Swin matricize (ignored by Global).
        rank: NMF rank ``R``.
        iters: NMF outer iterations ``T``.
        solver: ``"hals"`` or ``"mu"``.
        grad_iters: Backpropagate through the last ``grad_iters`` iterations only.
        dropout: Dropout probability on the output.

    Examples::

        >>> layer = WrappedNMF(16, spatial_dims=3, matricize="swin", head_dim=8, window_size=4)
        >>> layer(torch.randn(1, 16, 8, 8, 8)).shape
        torch.Size([1, 16, 8, 8, 8])
    """

    ROUTES = frozenset({Route.RECOMPUTE})

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        matricize: str = "swin",
        head_dim: int = 8,
        window_size: int | Sequence[int] = 8,
        rank: int = 1,
        iters: int = 5,
        solver: str = "hals",
        grad_iters: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(channels, spatial_dims, matricize, head_dim, window_size, rank, dropout)
        _check_settings(iters, None, solver)
        if grad_iters is not None and (not isinstance(grad_iters, int) or grad_iters < 0):
            raise ValueError(
                f"grad_iters should be None or a non-negative int, got {grad_iters!r}."
            )
        self.nmf = NMF(rank=rank, iters=iters, solver=solver, grad_iters=grad_iters)
        self.enabled = True
        self.layer_index = -1
        self.level: int | None = None
        self.recorder: list[NMFRecord] | None = None
        self.routes = self.ROUTES  # Swin or Local rank 1: matricized_rank1 (see _one_node)

    def _one_node(self, z: Tensor, geometry: MatricizeGeometry) -> bool:
        """Whether the layer takes :func:`~nmfseg.nmf.matricized_rank1`, which works on a few
        heads of one partition at a time and, in training, is one autograd node that keeps ``z``
        for backward instead of the matrices: Swin or Local, rank 1 with the default
        init, no recorder, the route ``recompute`` allowed and its predicate true
        (:func:`~nmfseg.routes.recompute_applies`: float32/64 outside autocast, not under
        ``torch.compile``, in inference only on the CPU)."""
        nmf = self.nmf
        return (
            takes(self, Route.RECOMPUTE, z)
            and self.recorder is None
            and not is_reshape(geometry)  # Swin or Local (Global matricize is a reshape)
            and isinstance(nmf, NMF)  # not a module put in its place
            and nmf.uses_rank1_path()
            and nmf.grad_iters != 0
        )

    def mix(self, z: Tensor) -> Tensor:
        """ReLU, matricize, NMF reconstruction, dematricize (or only the ReLU if disabled)."""
        if not self.enabled:
            return torch.relu(z)
        geometry = self.matricize.geometry(z.shape)
        if self._one_node(z, geometry):
            return matricized_rank1(z, geometry, self.nmf.iters, self.nmf.grad_iters)
        if torch.is_grad_enabled():  # ReLU after the copy: its saved output is the NMF's input
            m = torch.relu(self.matricize(z))
        else:  # inference: once per voxel, not once per partition (matricize pads with zeros)
            m = self.matricize(torch.relu(z))
        if self.recorder is None:
            m = self.nmf(m)
        else:
            u, v = self.nmf.factorize(m)
            m = u @ v.mT
            record = NMFRecord(
                self.layer_index, u.detach(), v.detach(), geometry, self.matricize, self.level
            )
            self.recorder.append(record)
        return self.matricize.inverse(m, geometry)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, enabled={self.enabled}"


register_mixer("nmf")(WrappedNMF)


def nmf_layers(model: nn.Module) -> list[WrappedNMF]:
    """The Wrapped NMF layers of ``model``, in the order of ``model.modules()``."""
    return [m for m in model.modules() if isinstance(m, WrappedNMF)]


def _check_settings(iters: int | None, rank: int | None, solver: str | None) -> None:
    """Raise ``ValueError`` naming the first NMF setting out of range (``None``: not given),
    for :class:`WrappedNMF` and :func:`set_nmf` alike."""
    if solver is not None and solver not in SOLVERS:
        raise ValueError(f"solver should be one of {SOLVERS}, got {solver!r}.")
    if rank is not None:
        check_positive(rank=rank)
    if iters is not None and (not isinstance(iters, int) or iters < 0):
        raise ValueError(f"iters should be a non-negative int, got {iters!r}.")


def _spans(indices: Sequence[int]) -> str:
    """``0-3,7`` for ``[0, 1, 2, 3, 7]``."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def rank_problem(layers: Sequence[WrappedNMF], rank: int) -> str | None:
    """Why ``rank`` is too large for the NMF ``layers`` of a network, or ``None`` if it is not.

    The limit of a layer is :attr:`WrappedNMF.max_rank`, ``min(rows, columns)`` of its
    matrices; when the layers' limits differ the text gives each, with its layers.

    Examples::

        >>> layers = [WrappedNMF(8, head_dim=4, window_size=4), WrappedNMF(16, head_dim=8)]
        >>> rank_problem(layers, 4) is None
        True
        >>> print(rank_problem(layers[:1], 64))
        at most 4: its matrices have head_dim=4 rows and 64 columns (a 4x4x4 window),
        and a rank above min(rows, columns) of a matrix cannot describe it better
        >>> print(rank_problem(layers, 64))
        at most 4 for NMF layer 0 (head_dim=4 rows, 4x4x4 windows), 8 for NMF layer 1
        (head_dim=8 rows, 8x8x8 windows); a rank above min(rows, columns) of a matrix
        cannot describe it better
    """
    if all(rank <= layer.max_rank for layer in layers):
        return None
    groups: dict[tuple[int, str], list[int]] = {}
    for index, layer in enumerate(layers):
        window = layer.window
        shape = f"head_dim={layer.head_dim} rows"
        if window is not None:
            shape += f", {'x'.join(map(str, window))} windows"
        groups.setdefault((layer.max_rank, shape), []).append(index)
    if len(groups) == 1:
        return f"at most {layers[0].max_rank}: {layers[0].rank_limit()}"
    parts = [
        f"{limit} for NMF layer{'s' if len(idx) > 1 else ''} {_spans(idx)} ({shape})"
        for (limit, shape), idx in sorted(groups.items(), key=lambda kv: kv[1][0])
    ]
    return f"at most {', '.join(parts)}; {NO_BETTER_RANK}"


def nmf_state(model: nn.Module) -> list[tuple[int, int, str]]:
    """``(iters, rank, solver)`` of every NMF layer of ``model``, for :func:`restore_nmf`.

    Examples::

        >>> from nmfseg.models import create_model
        >>> net = create_model("swin_factorizer_isles", channels=(8, 16, 32, 64, 128))
        >>> state = nmf_state(net)
        >>> set_nmf(net, iters=1, solver="mu")
        >>> restore_nmf(net, state)
        >>> nmf_state(net) == state
        True
    """
    return [(layer.nmf.iters, layer.nmf.rank, layer.nmf.solver) for layer in nmf_layers(model)]


def restore_nmf(model: nn.Module, state: Sequence[tuple[int, int, str]]) -> None:
    """Put back the per-layer NMF settings :func:`nmf_state` read (layer by layer, so
    layers trained with different settings get their own back).

    Raises:
        ValueError: ``state`` is not one entry per NMF layer of ``model``.
    """
    layers = nmf_layers(model)
    if len(state) != len(layers):
        raise ValueError(f"state has {len(state)} entries for {len(layers)} NMF layers.")
    for layer, (iters, rank, solver) in zip(layers, state, strict=True):
        layer.nmf.iters, layer.nmf.rank, layer.nmf.solver = iters, rank, solver


def set_nmf(
    model: nn.Module,
    iters: int | None = None,
    rank: int | None = None,
    solver: str | None = None,
    enabled: Sequence[int] | Literal["all"] | None = None,
) -> None:
    """Change every NMF layer of ``model`` at inference time, without retraining (§4.5).

    Args:
        model: Any network with :class:`WrappedNMF` layers.
        iters: New number of outer iterations (``None``: unchanged).
        rank: New rank (``None``: unchanged).
        solver: New solver, ``"hals"`` or ``"mu"`` (``None``: unchanged).
        enabled: Indices (into :func:`nmf_layers`) of the layers to keep; every other layer
            is short-circuited (its output replaced by its input). ``"all"`` enables every
            layer again; ``None`` leaves the choice unchanged.

    Raises:
        ValueError: A value out of range (the message names it), or a rank above what a
            layer's matrices allow (:func:`rank_problem`); nothing is changed then.
    """
    layers = nmf_layers(model)
    _check_settings(iters, rank, solver)
    problem = None if rank is None else rank_problem(layers, rank)
    if problem:
        raise ValueError(f"rank={rank} is too large for this network's NMF layers: {problem}.")
    if isinstance(enabled, str) and enabled != "all":
        raise ValueError(f"enabled should be 'all' or a list of indices, got {enabled!r}.")
    if enabled is None:
        keep = {i for i, layer in enumerate(layers) if layer.enabled}
    elif enabled == "all":
        keep = set(range(len(layers)))
    else:
        keep = set(enabled)
    bad = sorted(i for i in keep if not (isinstance(i, int) and 0 <= i < len(layers)))
    if bad:
        raise ValueError(
            f"enabled should hold NMF layer indices in [0, {len(layers) - 1}], got {bad}."
        )
    for index, layer in enumerate(layers):
        if iters is not None:
            layer.nmf.iters = iters
        if rank is not None:
            layer.nmf.rank = rank
        if solver is not None:
            layer.nmf.solver = solver
        layer.enabled = index in keep
