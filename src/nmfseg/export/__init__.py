"""Deployment: trained networks as ONNX models, and onnxruntime as a prediction engine.

``nmfseg export`` (:func:`~nmfseg.export.onnx.export_onnx`) writes one fold of a run as an
ONNX model with dynamic batch and spatial size, verified against PyTorch with onnxruntime,
and the run's inference settings in its metadata. ``nmfseg predict --engine onnxruntime``
(:func:`~nmfseg.export.runtime.load_onnx_ensemble`) predicts with it through the same
sliding window, TTA and writing as the PyTorch engine.

==================== =====================================================================
module               what it holds
==================== =====================================================================
:mod:`~.traceable`   the export form of a network: every size computed in the graph
:mod:`~.onnx`        tracing, the verification, the metadata, writing the files
:mod:`~.symbolics`   translations the trace-based ONNX exporter lacks (frac, mT, movedim)
:mod:`~.runtime`     :class:`~nmfseg.export.runtime.OnnxNetwork` and the ensemble of one
==================== =====================================================================

``onnx`` and ``onnxruntime`` are optional (``pip install 'nmfseg[export]'``) and imported
only when used; without them both commands say so in one line.
"""

from nmfseg.export.onnx import EXTRA_HINT, ExportResult, export_onnx, require
from nmfseg.export.runtime import OnnxNetwork, check_onnx_settings, load_onnx_ensemble
from nmfseg.export.traceable import export_form

__all__ = [
    "EXTRA_HINT",
    "ExportResult",
    "OnnxNetwork",
    "check_onnx_settings",
    "export_form",
    "export_onnx",
    "load_onnx_ensemble",
    "require",
]
