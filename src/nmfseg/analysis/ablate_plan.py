"""The settings ``nmfseg ablate`` measures: the sweeps of paper Fig. 8 as a list of changes.

:func:`plan_settings` lists every :class:`AblationSetting` of the chosen sweeps of
:data:`SWEEPS` (layers kept, one layer removed, iterations, rank and solver);
:func:`parse_sweeps` and :func:`parse_int_list` read them from the command line. Running
them is :func:`nmfseg.analysis.ablate.run_ablation`.

Examples::

    >>> [s.key for s in plan_settings(3, ["layers", "rank"], ranks=[2], solvers=["mu"])]
    ['keep=0', 'keep=1', 'keep=2', 'keep=3', 'rank=2,mu']
    >>> plan_settings(3, ["layers"])[1].options(3)
    '--nmf-layers 0'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nmfseg.errors import ConfigError
from nmfseg.inference.settings import OPTIONS, format_layers
from nmfseg.nmf import SOLVERS
from nmfseg.text import is_number

__all__ = ["SWEEPS", "AblationSetting", "parse_int_list", "parse_sweeps", "plan_settings"]

SWEEPS = ("layers", "remove", "iters", "rank")


def parse_int_list(text: str | Sequence[int], option: str, low: int) -> list[int]:
    """Integers from ``1-20``, ``1,2,5`` or ``3`` (all ``>= low``); ConfigError naming ``option``.

    Examples::

        >>> parse_int_list("1-3,8", "--iters", 0)
        [1, 2, 3, 8]
    """
    if not isinstance(text, str):
        values = list(text)
    else:
        values = []
        for part in text.replace(" ", "").split(","):
            lo, dash, hi = part.partition("-")
            if not (is_number(lo) and (not dash or is_number(hi))) or (dash and int(hi) < int(lo)):
                raise ConfigError(f"{option} {text!r}: use a range 1-20 or a list 1,2,5")
            values += range(int(lo), int(hi if dash else lo) + 1)
    bad = [v for v in values if not isinstance(v, int) or v < low]
    if bad:
        raise ConfigError(f"{option} {text!r}: every value must be an integer >= {low}")
    return sorted(set(values))


def parse_sweeps(text: str | Sequence[str]) -> list[str]:
    """Sweep names from ``layers,iters`` or ``all``, in the order of :data:`SWEEPS`.

    Examples::

        >>> parse_sweeps("rank,layers"), parse_sweeps("all") == list(SWEEPS)
        (['layers', 'rank'], True)
    """
    names = text.replace(" ", "").lower().split(",") if isinstance(text, str) else list(text)
    if names == ["all"]:
        return list(SWEEPS)
    unknown = [n for n in names if n not in SWEEPS]
    if unknown or not names:
        raise ConfigError(f"--sweeps {text!r}: choose from {', '.join(SWEEPS)} or all")
    return [s for s in SWEEPS if s in names]


@dataclass(frozen=True)
class AblationSetting:
    """One inference-time change of the NMF layers.

    Attributes:
        sweep: ``reference`` or one of :data:`SWEEPS`.
        key: Unique name in its CSV (``keep=3``, ``remove=4``, ``iters=2``, ``rank=3,mu``).
        value: The plotted value (layers kept, layer removed, ``T`` or ``R``).
        layers: NMF layers that run (``None``: all).
        iters: NMF iterations (``None``: as trained).
        rank: NMF rank (``None``: as trained).
        solver: NMF solver (``None``: as trained).
    """

    sweep: str
    key: str
    value: int = 0
    layers: tuple[int, ...] | None = None
    iters: int | None = None
    rank: int | None = None
    solver: str | None = None

    def changes(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`Predictor.configure`."""
        return {"nmf_layers": self.layers, "nmf_iters": self.iters,
                "nmf_rank": self.rank, "nmf_solver": self.solver}  # fmt: skip

    def options(self, n_layers: int) -> str:
        """The ``nmfseg predict`` options that deploy this setting."""
        parts = []
        if self.layers is not None:
            parts.append(f"{OPTIONS['nmf_layers']} {format_layers(self.layers, n_layers)}")
        for name in ("nmf_iters", "nmf_rank", "nmf_solver"):
            value = self.changes()[name]
            if value is not None:
                parts.append(f"{OPTIONS[name]} {value}")
        return " ".join(parts)


def plan_settings(
    n_layers: int,
    sweeps: Sequence[str] = SWEEPS,
    iters: Sequence[int] = range(1, 21),
    ranks: Sequence[int] = range(1, 9),
    solvers: Sequence[str] = SOLVERS,
) -> list[AblationSetting]:
    """Every setting of the chosen sweeps for a network with ``n_layers`` NMF layers."""
    plan = []
    if "layers" in sweeps:
        plan += [
            AblationSetting("layers", f"keep={k}", k, tuple(range(k))) for k in range(n_layers + 1)
        ]
    if "remove" in sweeps:
        every = range(n_layers)
        plan += [
            AblationSetting("remove", f"remove={i}", i, tuple(j for j in every if j != i))
            for i in every
        ]
    if "iters" in sweeps:
        plan += [AblationSetting("iters", f"iters={t}", t, iters=t) for t in iters]
    if "rank" in sweeps:
        plan += [
            AblationSetting("rank", f"rank={r},{s}", r, rank=r, solver=s)
            for s in solvers
            for r in ranks
        ]
    return plan
