"""``nmfseg export``: one fold of a trained run as an ONNX model, verified against PyTorch.

:func:`export_onnx` loads one fold's network in eval mode with the inference-time NMF
switches applied (:class:`~nmfseg.inference.predictor.Predictor`, paper §4.5), traces its
export form (:func:`~nmfseg.export.traceable.export_form`: every size computed in the graph,
the NMF iterations unrolled) with PyTorch's TorchScript-based ONNX exporter, and accepts the
result only if onnxruntime (CPU) reproduces PyTorch's logits to ``tolerance`` on two inputs
of other batch and spatial sizes than the traced one (:data:`CHECK_SHAPES`). A network the
exporter cannot translate, or whose trace fixed a size (a Python branch on a shape), is
refused in one line that names the operator or the source line.

Why this exporter: the ``torch.export``-based one (``dynamo=True``) reasons about every size
symbolically, and the matricize geometry (windows clamped to the stage size, padded,
shifted) gives it over a thousand shape guards; some become runtime assertions that refuse
a batch of one, and the export takes minutes. The trace records the export form's shape
arithmetic as graph operations instead, in seconds. Three ATen operators the trace-based
exporter cannot translate (correctly) get a translation
(:mod:`~nmfseg.export.symbolics`).

The run's inference settings travel with the model (:func:`inference_metadata`): in the
ONNX ``metadata_props`` under the key :data:`METADATA_KEY` (one JSON object) and in a
sidecar ``<name>.json``; both files are written together, atomically
(:class:`~nmfseg.fileio.StagedFiles`).
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nmfseg import __version__
from nmfseg.errors import ConfigError, DataError, NmfsegError
from nmfseg.export.symbolics import registered_symbolics
from nmfseg.export.traceable import export_form
from nmfseg.fileio import StagedFiles, check_writable
from nmfseg.inference.ensemble import find_checkpoints, load_ensemble
from nmfseg.inference.predictor import Predictor
from nmfseg.inference.settings import InferenceSettings

__all__ = [
    "CHECK_SHAPES",
    "EXTRA_HINT",
    "FORMAT",
    "INPUT",
    "METADATA_KEY",
    "OPSETS",
    "OUTPUT",
    "ROUNDING",
    "TOLERANCE",
    "ExportResult",
    "check_onnx_path",
    "export_onnx",
    "inference_metadata",
    "network_to_onnx",
    "require",
    "sidecar_path",
    "verify_onnx",
]

#: The line printed when onnx / onnxruntime are not installed.
EXTRA_HINT = "nmfseg export needs the optional dependencies: pip install 'nmfseg[export]'"
FORMAT = "nmfseg-onnx"
FORMAT_VERSION = 1
METADATA_KEY = "nmfseg"
INPUT, OUTPUT = "image", "logits"
DEFAULT_OPSET = 17
#: The opsets the TorchScript-based exporter writes that have what the networks need
#: (Resize with computed sizes, Pad with computed pads).
OPSETS = range(11, 21)
#: Largest ``max |onnxruntime - torch|`` of the logits an export is accepted with.
TOLERANCE = 1e-4
#: Largest ``max |onnxruntime - torch|`` per unit of the logits' magnitude that is float32
#: rounding (summation order, fused kernels) rather than a different computation.
ROUNDING = 1e-4
#: ``(batch, *spatial)`` of the verification inputs (3D; a 2D network takes the first two).
CHECK_SHAPES = ((1, 32, 32, 32), (2, 48, 32, 40))


def require(*modules: str, hint: str = EXTRA_HINT) -> None:
    """Raise the one line ``hint`` (:data:`EXTRA_HINT`) unless every module can be imported.

    Examples::

        >>> require("json")
    """
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            raise NmfsegError(hint) from None


def sidecar_path(onnx_path: str | Path) -> Path:
    """The JSON file written beside an exported model: ``model.onnx`` -> ``model.json``.

    Examples::

        >>> sidecar_path("out/model.onnx").as_posix()
        'out/model.json'
    """
    return Path(onnx_path).with_suffix(".json")


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: The ONNX file.
        sidecar: The JSON file beside it (the same metadata).
        metadata: The inference metadata (:func:`inference_metadata`).
        checks: ``(input shape, max |onnxruntime - torch|)`` of every verification.
    """

    path: Path
    sidecar: Path
    metadata: dict[str, Any]
    checks: list[tuple[tuple[int, ...], float]] = field(default_factory=list)


# ---------------------------------------------------------------------- the exporter
def _where(warning: warnings.WarningMessage) -> str:
    path = Path(warning.filename).as_posix()
    for marker in ("/site-packages/", "/src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{warning.lineno}"


def _fixed_size_lines(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """Source lines where the trace turned a tensor (a size) into a Python value."""
    out = []
    for w in caught:
        text = str(w.message)
        if issubclass(w.category, torch.jit.TracerWarning) and text.startswith("Converting"):
            where = _where(w)
            if not where.startswith("torch/") and where not in out:
                out.append(where)
    return out


def network_to_onnx(
    network: nn.Module, example: torch.Tensor, opset: int = DEFAULT_OPSET
) -> tuple[bytes, list[str]]:
    """The serialized ONNX model of a network's export form, traced at ``example``.

    Returns:
        The model's bytes, and the source lines where the trace fixed a size (candidates
        for a failed verification).

    Raises:
        NmfsegError: The exporter cannot translate the network (the line names the
            operator) or refuses ``opset``.
    """
    form = export_form(network)
    spatial = {2 + i: name for i, name in enumerate("xyz"[: example.dim() - 2])}
    axes = {0: "batch", **spatial}
    buffer = io.BytesIO()
    with registered_symbolics(), warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                form,
                (example,),
                buffer,
                dynamo=False,
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_axes={INPUT: axes, OUTPUT: axes},
                opset_version=opset,
            )
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as err:
            raise NmfsegError(f"cannot translate {_name(network)} to ONNX: {_first(err)}") from None
    return buffer.getvalue(), _fixed_size_lines(caught)


def _first(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


def _name(network: nn.Module) -> str:
    config = getattr(network, "model_config", None)
    return str(getattr(config, "name", "") or type(network).__name__)


def _session(model: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def verify_onnx(
    model: bytes,
    network: nn.Module,
    shapes: Sequence[Sequence[int]],
    tolerance: float = TOLERANCE,
    fixed: Sequence[str] = (),
    seed: int = 0,
) -> list[tuple[tuple[int, ...], float]]:
    """Run the model with onnxruntime (CPU) beside ``network`` on seeded random inputs.

    Args:
        model: The serialized ONNX model.
        network: The PyTorch network (eval mode) it was exported from.
        shapes: Input shapes ``(B, C, *spatial)``.
        tolerance: Largest accepted ``max |onnxruntime - torch|``.
        fixed: Source lines where the trace fixed a size (named when a check fails).
        seed: Seed of the inputs (standard normal, like z-scored images).

    Returns:
        ``(shape, max abs difference)`` of every check.

    Raises:
        NmfsegError: onnxruntime cannot run the model or differs by more than ``tolerance``.
    """
    session = _session(model)
    generator = torch.Generator().manual_seed(seed)
    hint = f"; the trace fixed a size at {fixed[0]}" if fixed else ""
    out: list[tuple[tuple[int, ...], float]] = []
    for shape in shapes:
        shape = tuple(int(s) for s in shape)
        x = torch.randn(shape, generator=generator)
        text = "x".join(map(str, shape))
        with torch.no_grad():
            expected = network(x).float().numpy()
        try:
            got = session.run([OUTPUT], {INPUT: x.numpy()})[0]
        except Exception as err:  # onnxruntime raises its own exception types
            raise NmfsegError(
                f"{_name(network)} cannot be exported for any input size: onnxruntime "
                f"fails at {text} ({_first(err)}){hint}"
            ) from None
        if got.shape != expected.shape:
            raise NmfsegError(
                f"{_name(network)} cannot be exported for any input size: at {text} onnxruntime "
                f"gives logits of shape {got.shape}, PyTorch {expected.shape}{hint}"
            )
        diff = float(abs(got - expected).max())
        if not diff <= tolerance:
            raise NmfsegError(_difference(network, diff, tolerance, text, expected, hint))
        out.append((shape, diff))
    return out


def _difference(
    network: nn.Module, diff: float, tolerance: float, text: str, expected: Any, hint: str
) -> str:
    """Why a check failed: float rounding (the difference is at the level float32 reaches on
    logits of this size) or a real difference (then the line the trace fixed a size at).

    Examples::

        >>> import numpy as np
        >>> net = torch.nn.Identity()
        >>> _difference(net, 2.4e-7, 1e-30, "1x2x32x32x32", np.ones(3) * 5, "")
        ... # doctest: +NORMALIZE_WHITESPACE
        'Identity: max |onnxruntime - torch| of the logits is 2.4e-07 at 1x2x32x32x32, above
        --tolerance 1e-30; that is float32 rounding (logits up to 5): use --tolerance 1e-06
        or more (default 0.0001)'
    """
    scale = float(np.abs(expected).max()) if np.size(expected) else 0.0
    rounding = ROUNDING * max(scale, 1.0)
    if diff <= rounding:
        floor = 10 ** math.ceil(math.log10(max(diff, 1e-12) * 2))
        return (
            f"{_name(network)}: max |onnxruntime - torch| of the logits is {diff:.2g} at "
            f"{text}, above --tolerance {tolerance:g}; that is float32 rounding (logits up "
            f"to {scale:.3g}): use --tolerance {floor:.0e} or more (default {TOLERANCE:g})"
        )
    return (
        f"{_name(network)} cannot be exported for any input size: max |onnxruntime - torch| "
        f"of the logits is {diff:.2g} at {text}, above --tolerance {tolerance:g} and beyond "
        f"float32 rounding ({rounding:.1g} for logits up to {scale:.3g}){hint}"
    )


# ---------------------------------------------------------------------- runs
def inference_metadata(predictor: Predictor, source: Path, checkpoint: str) -> dict[str, Any]:
    """What the sliding window of ``nmfseg predict --engine onnxruntime`` needs, and the origin.

    Examples::

        >>> from nmfseg.inference.ensemble import Ensemble
        >>> ens = Ensemble([torch.nn.Conv3d(2, 1, 1)], [], (8, 8, 8), 2, 1)
        >>> meta = inference_metadata(Predictor(ens), Path("fold_0/checkpoint_final.pt"), "final")
        >>> meta["patch_size"], meta["threshold"], meta["nmf"]
        ([8, 8, 8], 0.5, None)
    """
    ens = predictor.ensemble
    settings = predictor.resolved_settings()
    nmf = {key[4:]: settings[key] for key in ("nmf_iters", "nmf_rank", "nmf_solver", "nmf_layers")}
    fold = source.parent.name if re.match(r"^fold_(\d+|all)$", source.parent.name) else None
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nmfseg_version": __version__,
        "torch_version": torch.__version__,
        "model": predictor.model_name,
        "source": {"checkpoint": str(source.resolve()), "fold": fold, "which": checkpoint},
        "input": {"name": INPUT, "channels": ens.in_channels, "channel_names": list(ens.channels)},
        "output": {
            "name": OUTPUT,
            "channels": ens.out_channels,
            "regions": list(ens.regions),
            "activation": "sigmoid",
        },
        "scheme": ens.scheme.to_dict() if ens.scheme is not None else None,
        "size_multiple": int(getattr(ens.models[0], "size_multiple", 1)),
        "patch_size": list(settings["patch_size"]),
        "overlap": settings["overlap"],
        "blend": settings["blend"],
        "sw_batch_size": settings["sw_batch_size"],
        "threshold": settings["threshold"],
        "nmf": nmf if nmf["iters"] is not None else None,
        "preprocessing": ens.preprocessing.to_dict(),
    }


def one_checkpoint(
    model: str | Path, fold: str | None, checkpoint: str, holder: str = "an ONNX file"
) -> Path:
    """The checkpoint of the one fold an export holds (``holder``: what it is written into).

    Raises:
        ConfigError: ``model`` holds several folds and ``fold`` names none of them.
    """
    paths = find_checkpoints(model, [fold] if fold is not None else None, checkpoint)
    if len(paths) > 1:
        names = ", ".join(p.parent.name for p in paths)
        raise ConfigError(
            f"{model} holds {len(paths)} folds ({names}); {holder} holds one network: "
            "choose one with --fold K"
        )
    return paths[0]


def check_onnx_path(out: str | Path, overwrite: bool = False) -> Path:
    """``out`` as a path, once it is known to end in ``.onnx``, to be new (or ``overwrite``)
    and to be writable, with its sidecar JSON.

    Raises:
        ConfigError: Another ending.
        DataError: The model or its sidecar exists (without ``overwrite``) or is a folder, or
            the folder cannot be written (see :func:`~nmfseg.fileio.check_writable`).

    Examples::

        >>> check_onnx_path("model.pt")
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: -o model.pt: the file name of an ONNX model ends in .onnx
    """
    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"-o {out}: the file name of an ONNX model ends in .onnx")
    for path in (out, sidecar_path(out)):
        if path.is_dir():
            raise DataError(path, "is a folder; the exported model and its .json are files")
        if path.exists() and not overwrite:
            raise DataError(path, "exists; add --overwrite to replace the model and its .json")
    check_writable(out.parent, what="ONNX model")
    return out


def export_onnx(
    model: str | Path,
    out: str | Path,
    *,
    fold: str | int | None = None,
    checkpoint: str = "final",
    settings: InferenceSettings | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = TOLERANCE,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export one fold of a trained run to ``out`` (and ``out``'s sidecar JSON), verified.

    Args:
        model: Run folder, fold folder or checkpoint file (as ``nmfseg predict -r``).
        out: The ``.onnx`` file to write.
        fold: The fold of a run folder (needed when it has several).
        checkpoint: ``final``, ``best`` or ``last``.
        settings: The NMF switches to bake in (``nmf_iters``, ``nmf_rank``, ``nmf_solver``,
            ``nmf_layers``); the sliding-window settings recorded are the run's.
        opset: ONNX opset version.
        tolerance: Largest accepted ``max |onnxruntime - torch|`` of the logits.
        overwrite: Replace an existing ``out`` and its sidecar (else refused).
        echo: Called with one line per step (progress).

    Raises:
        NmfsegError: Missing optional dependencies (:data:`EXTRA_HINT`), a bad option, a
            run that cannot be loaded, or a network that cannot be exported (one line).

    Examples::

        >>> run = "RUN_DIR/Task01_BrainTumour/swin_factorizer_brats"
        >>> export_onnx(run, "model.onnx", fold=0).checks  # doctest: +SKIP
        [((1, 4, 32, 32, 32), 2.4e-07), ((2, 4, 48, 32, 40), 4.8e-07)]
    """
    say = echo or (lambda line: None)
    require("onnx", "onnxruntime")
    if opset not in OPSETS:
        raise ConfigError(f"--opset {opset}: choose an opset from {OPSETS[0]} to {OPSETS[-1]}")
    out = check_onnx_path(out, overwrite)
    source = one_checkpoint(model, None if fold is None else str(fold), checkpoint)
    predictor = Predictor(load_ensemble(source, None, checkpoint, "cpu"), settings)
    network = predictor.ensemble.models[0]
    metadata = inference_metadata(predictor, source, checkpoint)
    channels, m = predictor.ensemble.in_channels, metadata["size_multiple"]
    dims = len(metadata["patch_size"])
    example = torch.randn(2, channels, *(2 * m, 3 * m, 2 * m)[:dims])
    say(f"export: tracing {metadata['model']} ({source}) at {_shape(example.shape)}")
    onnx_bytes, fixed = network_to_onnx(network, example, opset)
    shapes = [(s[0], channels, *s[1 : 1 + dims]) for s in CHECK_SHAPES]
    checks = verify_onnx(onnx_bytes, network, shapes, tolerance, fixed)
    for shape, diff in checks:
        say(f"export: verified at {_shape(shape)}: max |onnxruntime - torch| = {diff:.2g}")
    metadata.update(
        exporter="torch.onnx.export (TorchScript trace)",
        opset=opset,
        dynamic_axes=["batch", *"xyz"[:dims]],
        verified=[{"shape": list(s), "max_abs_diff": d} for s, d in checks],
        tolerance=tolerance,
    )
    data = _with_metadata(onnx_bytes, metadata)
    sidecar = sidecar_path(out)
    with StagedFiles(out.parent) as staged:  # both files appear together, or neither
        staged.write_bytes(out.name, data)
        staged.write_text(sidecar.name, json.dumps(metadata, indent=2) + "\n")
        staged.commit()
    return ExportResult(out, sidecar, metadata, checks)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _with_metadata(model: bytes, metadata: dict[str, Any]) -> bytes:
    import onnx

    proto = onnx.load_from_string(model)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    proto.doc_string = (
        f"{metadata['model']} exported by nmfseg {__version__}: input {INPUT} (B, C, *spatial), "
        f"preprocessed as nmfseg does (crop to nonzero, z-score); output {OUTPUT} (B, R, "
        "*spatial), sigmoid for probabilities. Sliding-window settings: metadata 'nmfseg'."
    )
    return proto.SerializeToString()
