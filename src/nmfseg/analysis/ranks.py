"""The ranks the greedy-rank NMF layers chose on an image (paper §5), for ``nmfseg explain``.

A :class:`~nmfseg.mixers.greedy_nmf.GreedyWrappedNMF` layer gives every matrix (one head of
one window, of one Swin partition) the rank its content needs. :class:`RankCollector` counts
the ranks its layers chose during a sliding-window pass of :func:`~nmfseg.analysis.explain.
explain_case` (every window of the pass, every head and partition), and writes beside the
maps:

- ``ranks.json``: per layer its index, stage, level, matricize, ``max_rank`` and ``tol``,
  the number of matrices, how many took each rank ``0 .. max_rank``, their share and the
  mean rank;
- ``ranks.csv``: the same table, one row per layer.

:func:`rank_summary` is the one line ``nmfseg explain`` prints. Networks without greedy
layers write nothing.

Examples::

    >>> import torch
    >>> from nmfseg.models import Factorizer
    >>> net = Factorizer(channels=(8, 16), mixer="greedy_nmf",
    ...                  mixer_args={"max_rank": 3, "tol": 0.3}, head_dim=4,
    ...                  matricize="local", window_size=4, deep_supervision=False).eval()
    >>> ranks = RankCollector(net, [0, 2])
    >>> with ranks.collecting(), torch.no_grad():
    ...     _ = net(torch.randn(1, 1, 8, 8, 8))
    >>> [(t.layer, t.stage, t.matrices, len(t.counts)) for t in ranks.tables()]
    [(0, 'encoder', 16, 4), (2, 'decoder', 16, 4)]
    >>> rank_summary(ranks.tables()).startswith("greedy NMF ranks (share of windows x heads): ")
    True
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nmfseg.analysis.maps import layer_infos
from nmfseg.fileio import atomic_open, read_json, write_json
from nmfseg.mixers.greedy_nmf import GreedyWrappedNMF
from nmfseg.mixers.nmf import nmf_layers

__all__ = ["RANKS_CSV", "RANKS_JSON", "RankCollector", "RankTable", "rank_summary"]

RANKS_JSON = "ranks.json"
RANKS_CSV = "ranks.csv"


@dataclass
class RankTable:
    """The ranks one greedy NMF layer chose.

    Attributes:
        layer: Index among the network's NMF layers.
        stage: ``"encoder"``, ``"bridge"`` or ``"decoder"``.
        level: Resolution level (``1 / 2**level`` of the input).
        matricize: ``"global"``, ``"local"`` or ``"swin"``.
        max_rank: The layer's most components.
        tol: The relative residual at which a matrix stops.
        counts: Matrices that took rank ``0, 1, ..., max_rank``.
    """

    layer: int
    stage: str
    level: int
    matricize: str
    max_rank: int
    tol: float
    counts: list[int]

    @property
    def matrices(self) -> int:
        return sum(self.counts)

    @property
    def mean(self) -> float:
        """The mean rank (0 for no matrix)."""
        return sum(r * c for r, c in enumerate(self.counts)) / max(self.matrices, 1)

    @property
    def shares(self) -> list[float]:
        """The share of the matrices at each rank."""
        return [c / max(self.matrices, 1) for c in self.counts]

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "matrices": self.matrices,
            "shares": self.shares,
            "mean": self.mean,
        }


class RankCollector:
    """Counts the ranks the greedy NMF layers among ``layers`` choose while collecting.

    Args:
        model: A network (the greedy layers are found among its NMF layers).
        layers: Indices into its NMF layers (``nmf_layers``); others are not counted.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int]) -> None:
        all_layers = nmf_layers(model)
        infos = {info.index: info for info in layer_infos(model)}
        self.layers = {
            i: all_layers[i] for i in layers if isinstance(all_layers[i], GreedyWrappedNMF)
        }
        self.infos = infos
        self.logs: dict[int, list[Tensor]] = {}

    @property
    def collected(self) -> bool:
        return bool(self.logs)

    @contextmanager
    def collecting(self) -> Iterator[None]:
        """Count the ranks chosen in the forward passes inside (once: a network's every
        forward runs all its layers, so one sliding-window pass counts every layer)."""
        if self.collected or not self.layers:
            yield
            return
        logs = {i: [] for i in self.layers}
        for i, layer in self.layers.items():
            layer.nmf.rank_log = logs[i]
        try:
            yield
        finally:
            for layer in self.layers.values():
                layer.nmf.rank_log = None
        self.logs = logs

    def tables(self) -> list[RankTable]:
        """One :class:`RankTable` per collected layer, in layer order."""
        out = []
        for i in sorted(self.logs):
            layer, info = self.layers[i], self.infos[i]
            max_rank = layer.nmf.rank
            ranks = torch.cat([r.flatten() for r in self.logs[i]]) if self.logs[i] else None
            counts = (
                torch.bincount(ranks, minlength=max_rank + 1).tolist()
                if ranks is not None
                else [0] * (max_rank + 1)
            )
            tol = float(layer.nmf.tol)
            table = RankTable(i, info.stage, info.level, info.matricize, max_rank, tol, counts)
            out.append(table)
        return out

    def write(self, out: str | Path) -> list[dict[str, Any]]:
        """Write ``ranks.json`` and ``ranks.csv`` into ``out`` and return the entries.

        Without counts (no greedy layer chosen, or no pass ran because every layer's maps
        were reused) nothing is written, and the entries are those of an earlier
        ``ranks.json`` in ``out`` (the run whose maps were reused), else none.
        """
        out = Path(out)
        if not self.collected:
            old = out / RANKS_JSON
            return list(read_json(old).get("layers", [])) if self.layers and old.is_file() else []
        entries = [t.to_dict() for t in self.tables()]
        write_json(out / RANKS_JSON, {"layers": entries})
        width = max(len(e["counts"]) for e in entries)
        with atomic_open(out / RANKS_CSV, "w", newline="") as f:
            writer = csv.writer(f)
            head = ["layer", "stage", "level", "matricize", "max_rank", "tol", "matrices"]
            writer.writerow([*head, "mean", *(f"rank{r}" for r in range(width))])
            for e in entries:
                counts = e["counts"] + [0] * (width - len(e["counts"]))
                writer.writerow([*(e[k] for k in head), f"{e['mean']:.3f}", *counts])
        return entries


def rank_summary(tables: Sequence[RankTable | dict[str, Any]]) -> str:
    """One line: every layer's mean rank and the share of each rank it chose.

    Examples::

        >>> t = RankTable(0, "encoder", 0, "local", 3, 0.5, [0, 6, 3, 1])
        >>> print(rank_summary([t]))
        greedy NMF ranks (share of windows x heads): layer 0 (encoder, level 0) mean 1.50:
        1: 60%, 2: 30%, 3: 10%
    """
    parts = []
    for t in tables:
        e = t.to_dict() if isinstance(t, RankTable) else t
        shares = ", ".join(f"{r}: {s:.0%}" for r, s in enumerate(e["shares"]) if s > 0)
        where = f"{e['stage']}, level {e['level']}"
        parts.append(f"layer {e['layer']} ({where}) mean {e['mean']:.2f}: {shares}")
    return "greedy NMF ranks (share of windows x heads): " + "; ".join(parts)
