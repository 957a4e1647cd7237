"""``nmfseg export --format monai-bundle``: one fold of a run as a MONAI bundle.

:func:`export_bundle` writes a folder that follows MONAI's bundle specification and runs
with MONAI's own runner (``python -m monai.bundle run --config_file configs/inference.json
--meta_file configs/metadata.json --dataset_dir IN --output_dir OUT``):

================================ ==========================================================
file                             what it holds
================================ ==========================================================
``configs/metadata.json``        versions, ``network_data_format`` (input channels, output
                                 regions in ``channel_def``), the run's validation Dice
                                 (:func:`~.bundle_meta.run_metrics`; left out if none)
``configs/inference.json``       :func:`~.bundle_config.inference_config`: preprocessing,
                                 ``SlidingWindowInferer`` with the run's window, overlap
                                 and blending, sigmoid, the inverse of the preprocessing,
                                 threshold, regions -> labels, ``SaveImaged``
``configs/logging.conf``         the logging the runner applies
``models/model.pt``              the network's state dict (MONAI's ``CheckpointLoader``)
``models/model.ts``              TorchScript (a trace of the export form), when verified
``docs/README.md``               inputs, outputs, commands, the run's numbers
================================ ==========================================================

``network_def`` builds the network through nmfseg's registry (``nmfseg.create_model`` with
the run's arguments), so running a bundle needs nmfseg, MONAI with ``fire`` and
pytorch-ignite (MONAI's evaluator and checkpoint loader); writing one needs none of
``fire`` and ignite. Before anything is written, the network the config builds is loaded
with ``model.pt`` and compared with the run's, and the TorchScript model (if any) is
checked at other input sizes. The bundle is written into a temporary folder beside
``out`` and renamed into place; an existing ``out`` is refused unless ``overwrite``.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nmfseg.errors import ConfigError, DataError
from nmfseg.export.bundle_config import inference_config
from nmfseg.export.bundle_meta import bundle_metadata, bundle_readme, logging_conf, run_metrics
from nmfseg.export.onnx import CHECK_SHAPES, TOLERANCE, one_checkpoint
from nmfseg.export.traceable import export_form
from nmfseg.fileio import check_writable
from nmfseg.inference.ensemble import load_ensemble
from nmfseg.models.checkpoint import read_checkpoint
from nmfseg.routes import Route, restrict_routes

__all__ = ["BundleResult", "check_bundle_path", "export_bundle"]


@dataclass
class BundleResult:
    """What :func:`export_bundle` wrote.

    Attributes:
        path: The bundle folder.
        metadata: ``configs/metadata.json``.
        config: ``configs/inference.json``.
        torchscript: Whether ``models/model.ts`` was written.
        torchscript_note: Why not, or how it was verified.
        metrics_note: Where the validation metrics come from, or why there are none.
    """

    path: Path
    metadata: dict[str, Any]
    config: dict[str, Any]
    torchscript: bool
    torchscript_note: str
    metrics_note: str


# ---------------------------------------------------------------------- checks
def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


def _example(network: nn.Module, channels: int, dims: int, batch: int = 1) -> torch.Tensor:
    m = int(getattr(network, "size_multiple", 1))
    return torch.randn(batch, channels, *(2 * m, 3 * m, 2 * m)[:dims])


def _check_network_def(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor], network: nn.Module, dims: int
) -> None:
    """Build ``network_def`` as MONAI does, load ``state`` strictly, compare with ``network``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser({"network_def": config["network_def"]})
    try:
        built = parser.get_parsed_content("network_def", instantiate=True)
        built.load_state_dict(state, strict=True)
    except Exception as err:  # MONAI wraps the constructor's errors in its own
        raise ConfigError(f"the bundle's network_def does not rebuild the run's network: "
                          f"{_first_line(err)}") from None  # fmt: skip
    built.eval()
    x = _example(network, int(network.in_channels), dims)
    with torch.no_grad():
        diff = float((built(x) - network(x)).abs().max())
    if not diff <= 1e-5:
        raise ConfigError(f"the bundle's network_def differs from the run's network by {diff:.2g}")


def _torchscript(network: nn.Module, dims: int, tolerance: float) -> tuple[Any, str]:
    """A trace of the network's export form, saved, loaded back and checked at other sizes
    against the network; or ``None`` and why not."""
    channels = int(network.in_channels)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            form = export_form(network)
            restrict_routes(form, {Route.TRACED})  # the loop: rank-1 is a Python Function
            traced = torch.jit.trace(form, _example(network, channels, dims, 2), check_trace=False)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
            buffer.seek(0)
            loaded = torch.jit.load(buffer)
    except Exception as err:  # the tracer and the serializer raise many types
        reason = _first_line(err).split(". ")[0]
        return None, f"not written: TorchScript cannot hold this network ({reason})"
    generator = torch.Generator().manual_seed(0)
    checked = []
    for batch, *spatial in CHECK_SHAPES:
        x = torch.randn(batch, channels, *spatial[:dims], generator=generator)
        text = "x".join(map(str, x.shape))
        try:
            with torch.no_grad():
                got, expected = loaded(x), network(x)
        except Exception as err:
            return None, f"not written: the TorchScript model fails at {text} ({_first_line(err)})"
        diff = float((got - expected).abs().max()) if got.shape == expected.shape else np.inf
        if not diff <= tolerance:
            return None, (
                f"not written: the TorchScript model differs from PyTorch by {diff:.2g} "
                f"(> {tolerance:g}) at {text}"
            )
        checked.append(f"{text}: {diff:.1g}")
    return loaded, (
        "written: torch.jit.trace of the network's export form (every size computed in the "
        f"graph, the NMF as its iteration loop), max |TorchScript - PyTorch| {'; '.join(checked)}"
    )


# ---------------------------------------------------------------------- writing
def check_bundle_path(out: str | Path, overwrite: bool = False) -> Path:
    """``out`` as a path, once it is known that a bundle may be written there.

    Raises:
        DataError: ``out`` is a file, exists and ``overwrite`` is off, or its folder cannot
            be written.

    Examples::

        >>> import tempfile
        >>> check_bundle_path(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        nmfseg.errors.DataError: /...: exists; add --overwrite to replace the folder
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(out, "is a file; a MONAI bundle is a folder")
    if out.exists() and not overwrite:
        raise DataError(out, "exists; add --overwrite to replace the folder")
    check_writable(out.resolve().parent, what="MONAI bundle")
    return out


def _fresh(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}.{tag}-{secrets.token_hex(4)}"


def _write_folder(out: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` into a new folder beside ``out`` and rename it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh(out, "partial")
    tmp.mkdir()  # the mode of a plain mkdir, umask respected
    old = None
    try:
        for name, data in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if out.exists():
            old = _fresh(out, "old")
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def export_bundle(
    model: str | Path,
    out: str | Path,
    *,
    fold: str | int | None = None,
    checkpoint: str = "final",
    overwrite: bool = False,
    tolerance: float = TOLERANCE,
    echo: Callable[[str], None] | None = None,
) -> BundleResult:
    """Export one fold of a trained run as a MONAI bundle folder ``out``.

    Args:
        model: Run folder, fold folder or checkpoint file (as ``nmfseg predict -r``).
        out: The bundle folder to write.
        fold: The fold of a run folder (needed when it has several).
        checkpoint: ``final``, ``best`` or ``last``.
        overwrite: Replace an existing ``out``.
        tolerance: Largest accepted ``max |TorchScript - PyTorch|`` of the logits.
        echo: Called with one line per step (progress).

    Raises:
        NmfsegError: ``out`` exists (without ``overwrite``), a run that cannot be loaded, or
            a run a bundle cannot express (one line).

    Examples::

        >>> run = "RUN_DIR/Task01_BrainTumour/swin_factorizer_brats"
        >>> export_bundle(run, "bundle", fold=0).torchscript  # doctest: +SKIP
        True
    """
    say = echo or (lambda line: None)
    out = check_bundle_path(out, overwrite)
    source = one_checkpoint(
        model, None if fold is None else str(fold), checkpoint, "a MONAI bundle"
    )
    ckpt = read_checkpoint(source)
    ensemble = load_ensemble(source, None, checkpoint, "cpu")
    network = ensemble.models[0]
    dims = len(ensemble.patch_size)
    config = inference_config(ckpt["model_name"], ckpt["model_kwargs"], ensemble)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    say(f"bundle: {ckpt['model_name']} ({source}): checking the network the config builds")
    _check_network_def(config, state, network, dims)
    metrics = run_metrics(source, ckpt)
    say(f"bundle: metrics: {metrics[1]}")
    traced, ts_note = _torchscript(network, dims, tolerance)
    say(f"bundle: models/model.ts {ts_note}")
    metadata = bundle_metadata(ensemble, ckpt["model_name"], source, ckpt, metrics, ts_note)
    weights = io.BytesIO()
    torch.save(state, weights)
    files = {
        "configs/metadata.json": _json(metadata),
        "configs/inference.json": _json(config),
        "configs/logging.conf": logging_conf().encode(),
        "models/model.pt": weights.getvalue(),
        "docs/README.md": bundle_readme(metadata, config).encode(),
    }
    if traced is not None:
        from monai.data import save_net_with_metadata

        stream = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.save is deprecated
            save_net_with_metadata(
                traced, stream, include_config_vals=False, meta_values=metadata,
                more_extra_files={"inference.json": files["configs/inference.json"]},
            )  # fmt: skip
        files["models/model.ts"] = stream.getvalue()
    _write_folder(out, files)
    return BundleResult(out, metadata, config, traced is not None, ts_note, metrics[1])
