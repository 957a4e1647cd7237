"""The embedded default job, ``make demo`` / ``nmfseg demo``: phantoms, check, train,
predict, evaluate, report.

- :mod:`~nmfseg.demo.run`: :func:`run_demo`, every step resumable.
- :mod:`~nmfseg.demo.config`: the demo's settings (``configs/demo.yaml``).
- :mod:`~nmfseg.demo.report`: the figures and ``report.md``.
"""

from nmfseg.demo.config import load_demo_config
from nmfseg.demo.run import DemoResult, run_demo

__all__ = ["DemoResult", "load_demo_config", "run_demo"]
