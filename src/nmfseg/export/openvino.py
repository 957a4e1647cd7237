"""The OpenVINO engine of ``nmfseg predict``: an exported model compiled for the CPU at its window.

:class:`OpenVinoNetwork` runs a model written by ``nmfseg export`` with OpenVINO (the
optional extra ``nmfseg[openvino]``) and is called like the PyTorch network, so the sliding
window, flip TTA, thresholding and writing of :class:`~nmfseg.inference.predictor.Predictor`
run unchanged; :func:`load_openvino_ensemble` reads the same metadata as the onnxruntime
engine (:func:`~nmfseg.export.runtime.load_onnx_ensemble`).

The model is compiled once per input shape, with that shape fixed: the sliding window feeds
one shape (windows per batch × channels × the patch) nearly always, and a static shape lets
OpenVINO fold the graph's size arithmetic, the zero pads of sizes that are already a
multiple of the window and its shape-dependent slices. ``precision`` is OpenVINO's
``INFERENCE_PRECISION_HINT``: ``"f32"`` by default (set explicitly: on CPUs with AMX or
AVX-512 BF16 OpenVINO would otherwise choose bf16), or ``"bf16"`` (``predict --amp bf16``),
which runs matrix products and convolutions in bfloat16 with float32 accumulation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nmfseg.errors import ConfigError, DataError
from nmfseg.export.onnx import METADATA_KEY, require
from nmfseg.export.runtime import ensemble_from_metadata, find_onnx, metadata_from_text
from nmfseg.inference.ensemble import Ensemble

__all__ = ["PRECISIONS", "OpenVinoNetwork", "load_openvino_ensemble"]

HINT = "--engine openvino needs the optional dependencies: pip install 'nmfseg[openvino]'"

#: ``--amp`` → OpenVINO's inference precision.
PRECISIONS = {"none": "f32", "bf16": "bf16"}


class OpenVinoNetwork(nn.Module):
    """An exported network run by OpenVINO on the CPU, called like the PyTorch network.

    Args:
        model: The ``openvino.Model`` read from the ``.onnx`` file.
        metadata: The model's inference metadata
            (:func:`~nmfseg.export.runtime.read_metadata`).
        precision: ``"f32"`` or ``"bf16"`` (see the module docstring).
        threads: OpenVINO's inference threads (``None``: PyTorch's intra-op threads).
    """

    def __init__(
        self,
        model: Any,
        metadata: dict[str, Any],
        precision: str = "f32",
        threads: int | None = None,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS.values():
            raise ValueError(f"precision should be one of {sorted(set(PRECISIONS.values()))}.")
        self.model = model
        self.metadata = metadata
        self.precision = precision
        self.threads = threads or torch.get_num_threads()
        self.in_channels = int(metadata["input"]["channels"])
        self.out_channels = int(metadata["output"]["channels"])
        self.size_multiple = int(metadata.get("size_multiple", 1))
        self._compiled: dict[tuple[int, ...], Any] = {}

    def compiled(self, shape: tuple[int, ...]) -> Any:
        """The model compiled for inputs of exactly ``shape`` (cached)."""
        if shape not in self._compiled:
            import openvino as ov

            model = self.model.clone()
            model.reshape({model.inputs[0].any_name: list(shape)})
            config = {
                "INFERENCE_PRECISION_HINT": self.precision,
                "INFERENCE_NUM_THREADS": self.threads,
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
            }
            self._compiled[shape] = ov.Core().compile_model(model, "CPU", config)
        return self._compiled[shape]

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, R, *spatial)`` of ``x (B, C, *spatial)`` (computed on the CPU)."""
        image = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        compiled = self.compiled(tuple(image.shape))
        logits = compiled({0: image})[compiled.outputs[0]]
        return torch.from_numpy(np.array(logits, dtype=np.float32)).to(x.device)

    def extra_repr(self) -> str:
        return f"model={self.metadata.get('model')!r}, precision={self.precision!r}"


def _read(path: Path) -> tuple[Any, dict[str, Any]]:
    """The OpenVINO model of an ``.onnx`` file and the metadata ``nmfseg export`` stored, from
    one read: OpenVINO's ONNX reader keeps the model's ``metadata_props`` in the model's
    ``rt_info``, under ``framework``. The ONNX front end is asked by name: ``read_model``
    would offer a file it cannot parse to every other front end, whose parsers log to the
    process's stderr."""
    from openvino.frontend import FrontEndManager

    try:
        frontend = FrontEndManager().load_by_framework("onnx")
        model = frontend.convert(frontend.load(str(path)))
    except Exception as err:  # OpenVINO raises its own exception types
        # Its message has "Check ... failed at <source file>" and "FrontEnd API failed" lines.
        lines = [t.strip() for t in str(err).splitlines() if t.strip()]
        plain = [t for t in lines if not re.match(r"(Check |Exception from |FrontEnd API)", t)]
        line = (plain or lines or [type(err).__name__])[-1]
        raise DataError(path, f"OpenVINO cannot read this model ({line[:200]})") from None
    key = ["framework", METADATA_KEY]
    text = model.get_rt_info(key).astype(str) if model.has_rt_info(key) else None
    return model, metadata_from_text(text, path)


def load_openvino_ensemble(
    model: str | Path, device: str | None = None, amp: str = "none"
) -> Ensemble:
    """An :class:`~nmfseg.inference.ensemble.Ensemble` of one exported model run by OpenVINO.

    Args:
        model: A ``.onnx`` file from ``nmfseg export`` or a folder holding one.
        device: ``cpu`` or ``None`` (OpenVINO's CPU plugin; other devices are refused).
        amp: ``"none"`` (float32) or ``"bf16"``.

    Raises:
        NmfsegError: OpenVINO is not installed (one line naming the extra), the
            device or precision is not one this engine runs, or the model cannot be used.
    """
    require("openvino", hint=HINT)
    if device not in (None, "cpu"):
        raise ConfigError(f"--device {device}: the openvino engine runs on the CPU (--device cpu)")
    if amp not in PRECISIONS:
        raise ConfigError(f"--amp {amp}: the openvino engine runs {' or '.join(PRECISIONS)}")
    path = find_onnx(model)
    ov_model, meta = _read(path)
    return ensemble_from_metadata(OpenVinoNetwork(ov_model, meta, PRECISIONS[amp]), path, meta)
