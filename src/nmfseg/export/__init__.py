"""Deployment: trained networks as ONNX models or MONAI bundles; onnxruntime and OpenVINO as
prediction engines.

``nmfseg export`` (:func:`~nmfseg.export.onnx.export_onnx`) writes one fold of a run as an
ONNX model with dynamic batch and spatial size, verified against PyTorch with onnxruntime,
and the run's inference settings in its metadata. ``nmfseg predict --engine onnxruntime``
(:func:`~nmfseg.export.runtime.load_onnx_ensemble`) predicts with it through the same
sliding window, TTA and writing as the PyTorch engine. ``nmfseg export --format
monai-bundle`` (:func:`~nmfseg.export.bundle.export_bundle`) writes one fold as a MONAI
bundle folder that ``python -m monai.bundle run`` predicts with.

============================ ====================================================================
module                       what it holds
============================ ====================================================================
:mod:`~.traceable`           the export form of a network: every size computed in the graph
:mod:`~.onnx`                tracing, the verification, the metadata, writing the files
:mod:`~.symbolics`           translations the trace-based ONNX exporter lacks (frac, mT, movedim)
:mod:`~.runtime`             :class:`~nmfseg.export.runtime.OnnxNetwork` and the ensemble of one
:mod:`~.openvino`            the OpenVINO engine: the exported model compiled at its window
:mod:`~.channels_last`       the export form of a Factorizer block, channels last
:mod:`~.bundle`              a MONAI bundle: the checks, TorchScript, writing the folder
:mod:`~.bundle_config`       its ``configs/inference.json`` (the preprocessing translated)
:mod:`~.bundle_meta`         its ``configs/metadata.json`` (the run's metrics), README
:mod:`~.bundle_transforms`   what a bundle run imports: regions -> labels, the cases
============================ ====================================================================

``onnx`` and ``onnxruntime`` are optional (``pip install 'nmfseg[export]'``), as is OpenVINO
(``nmfseg[openvino]``, ``predict --engine openvino``); each is imported only when used, and
without it the command says so in one line.
"""

from nmfseg.export.bundle import BundleResult, export_bundle
from nmfseg.export.onnx import EXTRA_HINT, ExportResult, export_onnx, require
from nmfseg.export.runtime import OnnxNetwork, check_onnx_settings, load_onnx_ensemble
from nmfseg.export.traceable import export_form

__all__ = [
    "EXTRA_HINT",
    "BundleResult",
    "ExportResult",
    "OnnxNetwork",
    "check_onnx_settings",
    "export_bundle",
    "export_form",
    "export_onnx",
    "load_onnx_ensemble",
    "require",
]
