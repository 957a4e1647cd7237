"""Execution routes: which implementation of an operation runs, and in which precision
(floor 0: imports only torch and the standard library).

========================= ===================================================================
module                    what it holds
========================= ===================================================================
:mod:`~.precision`        autocast off for the NMF and the custom kernels, forward and backward
========================= ===================================================================
"""

from nmfseg.routes.precision import (
    autocast_off,
    autocast_on,
    backward_without_autocast,
    work_dtype,
)

__all__ = ["autocast_off", "autocast_on", "backward_without_autocast", "work_dtype"]
