"""The route table: which implementation of an operation runs, and the one switch.

An operation of nmfseg (a block's LayerNorm + projection, its MLP subblock, a Swin NMF layer's
matricize -> NMF -> dematricize, the rank-1 NMF itself) has one plain ``forward``, written
module by module, and may have faster implementations that compute the same values and
gradients: the *routes*. A module that has some declares them in its class attribute
``ROUTES`` and keeps the ones it may take now in its attribute ``routes`` (all of them by
default); it asks :func:`takes` before each call, which adds the route's predicate (the
device, dtype, autocast and grad-mode conditions under which it applies). :func:`set_routes`
and :func:`use_routes` are the one switch, for a whole network or one module.

==================== ===================================================================
route                when it applies
==================== ===================================================================
``plain``            always: the modules one after the other
``cpu_fused``        a float32/float64 CPU tensor, CPU autocast off (:func:`cpu_fused_applies`);
                     under CPU autocast a block whose mixer computes in float32 leaves
                     autocast to take it (:func:`cpu_autocast_leaves`)
``recompute``        float32/float64 outside autocast, not under ``torch.compile``, in
                     training on any device, in inference on the CPU
                     (:func:`recompute_applies`)
``rank1``            the exact rank-1 NMF in Gram space instead of the loop of iterations:
                     every input (whether the settings allow it is the solver's question)
``traced``           never by itself: :func:`nmfseg.export.export_form` builds it
==================== ===================================================================

Examples::

    >>> from torch import nn
    >>> class Double(nn.Module):
    ...     ROUTES = frozenset({Route.CPU_FUSED})
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.routes = self.ROUTES
    ...     def forward(self, x):
    ...         return x.mul(2) if takes(self, Route.CPU_FUSED, x) else x + x
    >>> m = nn.Sequential(Double())
    >>> takes(m[0], Route.CPU_FUSED, torch.ones(2))
    True
    >>> with use_routes(m, {Route.PLAIN}):
    ...     takes(m[0], Route.CPU_FUSED, torch.ones(2))
    False
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from nmfseg.routes.precision import autocast_on

__all__ = [
    "ROUTE_TABLE",
    "Route",
    "allows",
    "cpu_autocast_leaves",
    "cpu_fused_applies",
    "recompute_applies",
    "restrict_routes",
    "routable",
    "set_routes",
    "takes",
    "use_routes",
]


class Route(str, enum.Enum):
    """The execution routes of nmfseg (see the module docstring)."""

    PLAIN = "plain"
    CPU_FUSED = "cpu_fused"
    RECOMPUTE = "recompute"
    RANK1 = "rank1"
    TRACED = "traced"


def cpu_fused_applies(x: Tensor) -> bool:
    """Whether the fused CPU kernels apply to ``x``: a float32/float64 CPU tensor, CPU
    autocast off.

    Examples::

        >>> cpu_fused_applies(torch.ones(2)), cpu_fused_applies(torch.ones(2).half())
        (True, False)
    """
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
    )


def cpu_autocast_leaves(x: Tensor) -> bool:
    """Whether ``x`` is on the CPU under CPU autocast, where a block whose mixer computes in
    float32 anyway leaves autocast and takes the fused kernels (faster than bf16 modules)."""
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


def recompute_applies(z: Tensor) -> bool:
    """Whether the one-node NMF (``nmfseg.nmf.matricized_rank1``) applies to ``z``:
    float32/float64 outside autocast, not under ``torch.compile`` (a graph of the parts, not
    of the pieces), in training on any device, in inference only on the CPU (where the
    pieces stay in cache)."""
    return (
        not torch.compiler.is_compiling()
        and (torch.is_grad_enabled() or z.device.type == "cpu")
        and z.dtype in (torch.float32, torch.float64)
        and not autocast_on(z)
    )


def _always(x: Tensor) -> bool:
    return True


def _never(x: Tensor) -> bool:
    return False


ROUTE_TABLE: dict[Route, Callable[[Tensor], bool]] = {
    Route.PLAIN: _always,
    Route.CPU_FUSED: cpu_fused_applies,
    Route.RECOMPUTE: recompute_applies,
    Route.RANK1: _always,
    Route.TRACED: _never,
}
"""Each route's predicate on the operation's input."""


def allows(module: nn.Module, route: Route) -> bool:
    """Whether ``module`` may take ``route`` now (the switch, without the predicate)."""
    return route in module.routes


def takes(module: nn.Module, route: Route, x: Tensor) -> bool:
    """Whether ``module`` takes ``route`` on input ``x``: the switch allows it and the
    route's predicate holds (:data:`ROUTE_TABLE`)."""
    return route in module.routes and ROUTE_TABLE[route](x)


def routable(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` (itself included) that have routes besides ``plain``."""
    return [m for m in model.modules() if isinstance(getattr(type(m), "ROUTES", None), frozenset)]


def set_routes(model: nn.Module, allowed: Iterable[Route | str]) -> None:
    """Let every module of ``model`` take exactly the routes in ``allowed`` that it has
    (``{"plain"}``: the module-by-module path everywhere; ``Route``: every route)."""
    chosen = frozenset(Route(r) for r in allowed)
    for m in routable(model):
        m.routes = type(m).ROUTES & chosen


def restrict_routes(model: nn.Module, allowed: Iterable[Route | str]) -> None:
    """Forbid every route not in ``allowed`` on every module of ``model``, leaving the
    others as they are (a route that was off stays off)."""
    chosen = frozenset(Route(r) for r in allowed)
    for m in routable(model):
        m.routes = m.routes & chosen


@contextmanager
def use_routes(model: nn.Module, allowed: Iterable[Route | str]) -> Iterator[None]:
    """:func:`set_routes` inside a ``with`` block; the previous routes are restored after."""
    modules = routable(model)
    previous = [m.routes for m in modules]
    set_routes(model, allowed)
    try:
        yield
    finally:
        for m, routes in zip(modules, previous, strict=True):
            m.routes = routes


_FUSED_ROUTES = frozenset({Route.CPU_FUSED, Route.RECOMPUTE})


class FusedFlag:
    """The boolean ``fused`` attribute of nmfseg 0.1's routable modules, kept working: reading
    it says whether the module may take its fused routes (``cpu_fused``, ``recompute``);
    setting it switches them, with a ``DeprecationWarning`` (use :func:`use_routes`).

    Examples::

        >>> import warnings
        >>> class Block(FusedFlag, nn.Module):
        ...     ROUTES = frozenset({Route.CPU_FUSED})
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.routes = self.ROUTES
        >>> block = Block()
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     block.fused = False
        >>> block.routes == frozenset(), block.fused
        (True, False)
    """

    ROUTES: frozenset[Route]
    routes: frozenset[Route]

    @property
    def fused(self) -> bool:
        return bool(self.routes & _FUSED_ROUTES)

    @fused.setter
    def fused(self, value: bool) -> None:
        warnings.warn(
            "setting .fused is deprecated; use nmfseg.routes.use_routes(model, ...) or "
            "set_routes", DeprecationWarning, stacklevel=2,
        )  # fmt: skip
        on = type(self).ROUTES & _FUSED_ROUTES if value else frozenset()
        self.routes = (self.routes - _FUSED_ROUTES) | on
