"""Execution routes: which implementation of an operation runs, and in which precision
(floor 0: imports only torch and the standard library).

========================= ===================================================================
module                    what it holds
========================= ===================================================================
:mod:`~.table`            :class:`Route`, each route's predicate, the switch (:func:`use_routes`)
:mod:`~.precision`        autocast off for the NMF and the custom kernels, forward and backward
========================= ===================================================================
"""

from nmfseg.routes.precision import (
    autocast_off,
    autocast_on,
    backward_without_autocast,
    work_dtype,
)
from nmfseg.routes.table import (
    ROUTE_TABLE,
    FusedFlag,
    Route,
    allows,
    cpu_autocast_leaves,
    cpu_fused_applies,
    recompute_applies,
    restrict_routes,
    routable,
    set_routes,
    takes,
    use_routes,
)

__all__ = [
    "ROUTE_TABLE",
    "FusedFlag",
    "Route",
    "allows",
    "autocast_off",
    "autocast_on",
    "backward_without_autocast",
    "cpu_autocast_leaves",
    "cpu_fused_applies",
    "recompute_applies",
    "restrict_routes",
    "routable",
    "set_routes",
    "takes",
    "use_routes",
    "work_dtype",
]
