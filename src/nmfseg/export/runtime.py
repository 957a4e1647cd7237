"""The onnxruntime engine of ``nmfseg predict``: an exported model as an ensemble of one.

:class:`OnnxNetwork` runs a model written by ``nmfseg export`` with onnxruntime and is
called like the PyTorch network it came from (a ``(B, C, *patch)`` tensor in, logits out),
so the sliding window, flip TTA, thresholding and writing of
:class:`~nmfseg.inference.predictor.Predictor` and
:func:`~nmfseg.inference.predict.predict_folder` run unchanged.
:func:`load_onnx_ensemble` builds the :class:`~nmfseg.inference.ensemble.Ensemble` from
the metadata stored in the model (patch size, channels, regions, label scheme, overlap,
blending, windows per batch, threshold, the NMF settings it was exported with, and the
run's preprocessing when the model has it; one exported before nmfseg stored it is
preprocessed with the paper's rule, as it was trained).

The NMF settings, bf16 autocast, ``torch.compile`` and the choice of folds are fixed when a
model is exported; :func:`check_onnx_settings` refuses them in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nmfseg.data.normalization import Preprocessing
from nmfseg.data.schemes import DatasetScheme
from nmfseg.errors import ConfigError, DataError
from nmfseg.export.onnx import FORMAT, INPUT, METADATA_KEY, OUTPUT, require
from nmfseg.inference.ensemble import Ensemble
from nmfseg.inference.settings import NMF_SETTINGS, OPTIONS, InferenceSettings

__all__ = [
    "OnnxNetwork",
    "check_onnx_settings",
    "ensemble_from_metadata",
    "find_onnx",
    "load_onnx_ensemble",
    "metadata_from_text",
    "read_metadata",
]


def find_onnx(path: str | Path) -> Path:
    """The ``.onnx`` file named by ``path``: the file itself, or the only one in a folder.

    Raises:
        DataError: No such file, or a folder with none or several ``.onnx`` files.

    Examples::

        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / "model.onnx").touch()
        >>> find_onnx(folder).name
        'model.onnx'
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(path, "no such ONNX model (expected a .onnx file or a folder with one)")
    found = sorted(path.glob("*.onnx"))
    if len(found) != 1:
        what = "no .onnx file" if not found else f"{len(found)} .onnx files; name one with -r"
        raise DataError(path, f"holds {what}")
    return found[0]


def _session(path: Path, device: str | None) -> Any:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device is not None and device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                f"--device {device}: this onnxruntime runs on the CPU only (install "
                "onnxruntime-gpu for CUDA), or use --device cpu"
            )
        index = device.partition(":")[2] or "0"
        providers = [("CUDAExecutionProvider", {"device_id": int(index)}), *providers]
    elif device not in (None, "cpu"):
        raise ConfigError(f"--device {device!r}: choose cpu, cuda or cuda:N")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types
        line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(path, f"onnxruntime cannot load this model ({line[:200]})") from None


def read_metadata(session: Any, path: str | Path) -> dict[str, Any]:
    """The inference metadata ``nmfseg export`` stored in a model's ``metadata_props``.

    Raises:
        DataError: The model was not written by ``nmfseg export``.
    """
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    return metadata_from_text(text, path)


def metadata_from_text(text: str | None, path: str | Path) -> dict[str, Any]:
    """The inference metadata of :func:`read_metadata` from its stored JSON text.

    Raises:
        DataError: No text, or not the metadata of ``nmfseg export``.
    """
    try:
        meta = json.loads(text) if text else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(path, "not a model written by nmfseg export (no nmfseg metadata)")
    return meta


class OnnxNetwork(nn.Module):
    """An exported network run by onnxruntime, called like the PyTorch network.

    It has no parameters (so the sliding window feeds it CPU tensors) and no NMF layers
    (its NMF settings are fixed: :attr:`nmf_settings`).

    Args:
        session: An ``onnxruntime.InferenceSession`` of a model from ``nmfseg export``.
        metadata: The model's inference metadata (:func:`read_metadata`).
    """

    def __init__(self, session: Any, metadata: dict[str, Any]) -> None:
        super().__init__()
        self.session = session
        self.metadata = metadata
        self.in_channels = int(metadata["input"]["channels"])
        self.out_channels = int(metadata["output"]["channels"])
        self.size_multiple = int(metadata.get("size_multiple", 1))
        nmf = metadata.get("nmf") or {}
        self.nmf_settings = {key: nmf.get(key[4:]) for key in NMF_SETTINGS}

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, R, *spatial)`` of ``x (B, C, *spatial)`` (computed on the CPU)."""
        image = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        logits = self.session.run([OUTPUT], {INPUT: image})[0]
        return torch.from_numpy(logits).to(x.device)

    def extra_repr(self) -> str:
        return f"model={self.metadata.get('model')!r}, in_channels={self.in_channels}"


def load_onnx_ensemble(model: str | Path, device: str | None = None) -> Ensemble:
    """An :class:`~nmfseg.inference.ensemble.Ensemble` of one exported model.

    Args:
        model: A ``.onnx`` file from ``nmfseg export`` or a folder holding one.
        device: ``cpu`` (default) or ``cuda[:N]`` (needs onnxruntime-gpu); the sliding
            window itself runs on the CPU.

    Raises:
        NmfsegError: onnxruntime is not installed (one line), or the model cannot be used.
    """
    require("onnxruntime")
    path = find_onnx(model)
    session = _session(path, device)
    meta = read_metadata(session, path)
    return ensemble_from_metadata(OnnxNetwork(session, meta), path, meta)


def ensemble_from_metadata(net: nn.Module, path: Path, meta: dict[str, Any]) -> Ensemble:
    """The ensemble of one exported network ``net`` (any engine) with the patch, channels,
    regions, label scheme, window settings and preprocessing its metadata holds."""
    scheme = DatasetScheme.from_dict(meta["scheme"]) if meta.get("scheme") else None
    pre = meta.get("preprocessing")
    if pre is not None:
        pre = Preprocessing.from_dict(pre, where=f"{path}: metadata preprocessing")
    return Ensemble(
        models=[net],
        sources=[path],
        patch_size=tuple(int(p) for p in meta["patch_size"]),
        in_channels=int(meta["input"]["channels"]),
        out_channels=int(meta["output"]["channels"]),
        channels=tuple(meta["input"].get("channel_names") or ()),
        regions=tuple(meta["output"].get("regions") or ()),
        scheme=scheme,
        overlap=float(meta["overlap"]),
        mode=str(meta["blend"]),
        sw_batch_size=int(meta["sw_batch_size"]),
        threshold=float(meta["threshold"]),
        config={"model": {"name": meta.get("model")}, "export": meta},
        device=torch.device("cpu"),
        preprocessing=pre,
    )


def check_onnx_settings(settings: InferenceSettings, engine: str = "onnxruntime") -> None:
    """Refuse the settings an exported model cannot change, naming the option.

    Examples::

        >>> check_onnx_settings(InferenceSettings(overlap=0.25, tta=True))
        >>> check_onnx_settings(InferenceSettings(nmf_iters=2))
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: --nmf-iters: the NMF settings of an ONNX model are fixed ...
    """
    for name in NMF_SETTINGS:
        if getattr(settings, name) is not None:
            raise ConfigError(
                f"{OPTIONS[name]}: the NMF settings of an ONNX model are fixed when it is "
                f"exported; export it again with nmfseg export {OPTIONS[name]}"
            )
    if settings.compile:
        raise ConfigError("--compile: only with --engine torch")
    if settings.amp != "none" and not (engine == "openvino" and settings.amp == "bf16"):
        raise ConfigError(
            f"--amp {settings.amp}: not with --engine {engine} (an ONNX model runs in float32 "
            "there; bf16 with --engine torch or openvino)"
        )
