"""The Python inference API: load a trained run once, then predict arrays, NIfTI images, cases.

:class:`Predictor` is the one prediction path of nmfseg (``nmfseg predict`` through
:func:`~nmfseg.inference.predict.predict_folder`, ``explain``, ``ablate``), like nnU-Net's
``nnUNetPredictor``: ``from_run`` loads a run's folds; ``predict_case`` (a case on disk,
optionally writing its files), ``predict_nifti``, ``predict_array`` and
``predict_preprocessed`` predict. :class:`InferenceSettings`: sliding window, flip TTA,
threshold, bf16, ``torch.compile`` and the Factorizer's NMF switches of §4.5
(:func:`~nmfseg.mixers.nmf.set_nmf`); one left at ``None`` is what the run validated with.

Every prediction is training's validation: the run's preprocessing (crop to the nonzero box,
resampling to its target spacing if any, each channel's normalization:
:class:`~nmfseg.data.normalization.Preprocessing`), sliding window, sigmoid, mean over flips
and folds, back to the input's grid, threshold. The voxel size comes from the NIfTI header
or ``spacing=`` (``predict_array``; needed only by runs that resample).

Examples::

    >>> import tempfile, numpy as np, nibabel as nib, torch
    >>> from pathlib import Path
    >>> from nmfseg.models import create_model
    >>> kwargs = dict(channels=(4, 8), head_dim=4, window_size=2, deep_supervision=False)
    >>> net = create_model("swin_factorizer_isles", **kwargs)
    >>> run = Path(tempfile.mkdtemp()) / "run"
    >>> (run / "fold_0").mkdir(parents=True)
    >>> config = {"patch_size": [8, 8, 8], "dataset": {"scheme": "isles22"}}
    >>> torch.save({"model_name": "swin_factorizer_isles", "model_kwargs": kwargs,
    ...             "model": net.state_dict(), "config": config},
    ...            run / "fold_0" / "checkpoint_final.pt")
    >>> p = Predictor.from_run(run, device="cpu", nmf_iters=2)
    >>> image = np.zeros((2, 10, 9, 8), np.float32)
    >>> image[:, 2:8, 2:7, 1:7] = np.random.default_rng(0).random((2, 6, 5, 6)) + 1
    >>> p.predict_array(image, output="probabilities").shape
    (1, 10, 9, 8)
    >>> labels = p.predict_nifti(nib.Nifti1Image(np.moveaxis(image, 0, -1), np.eye(4)))
    >>> labels.shape, labels.get_data_dtype()
    ((10, 9, 8), dtype('uint8'))
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import nn

from nmfseg.data.formats import Case, Dataset, load_case, open_case
from nmfseg.data.nifti import label_dtype, new_nifti, save_nifti
from nmfseg.data.preprocess import preprocess_case, restore
from nmfseg.data.schemes import DatasetScheme, regions_to_labels
from nmfseg.errors import ConfigError, DataError
from nmfseg.inference.checks import check_image, check_nmf_settings, usable_ranks
from nmfseg.inference.ensemble import Ensemble, load_ensemble, output_scheme
from nmfseg.inference.images import nifti_channels, save_probabilities
from nmfseg.inference.postprocess import PostProcessing, saved_postprocessing
from nmfseg.inference.settings import NMF_SETTINGS, InferenceSettings, parse_layers
from nmfseg.inference.sliding_window import sliding_window_predict
from nmfseg.mixers.nmf import nmf_layers, nmf_state, restore_nmf, set_nmf
from nmfseg.text import parse_folds

__all__ = ["InferenceSettings", "Predictor", "parse_layers", "save_probabilities"]


class Predictor:
    """A trained model loaded once, predicting like ``nmfseg predict``.

    Build it with :meth:`from_run` (a run folder, a fold folder or a checkpoint file) or
    from an already loaded :class:`~nmfseg.inference.ensemble.Ensemble`. Settings are
    :class:`InferenceSettings`, given as an object or as keyword arguments; change them
    later with :meth:`configure` (the NMF switches always start again from the trained
    settings, so calls do not accumulate).

    Args:
        ensemble: The loaded folds.
        settings: Inference settings (or give them as keyword arguments).
        progress: Show MONAI's per-window progress bar.
        **options: Fields of :class:`InferenceSettings`.

    Raises:
        ConfigError: A bad setting, an NMF switch for a network without NMF layers, an NMF
            layer the network does not have, or an NMF rank above what the layers' matrices
            allow (each message names the option).

    Examples::

        >>> ens = Ensemble([torch.nn.Conv3d(1, 1, 1)], [], (8, 8, 8), 1, 1)
        >>> Predictor(ens, overlap=0.25).overlap
        0.25
        >>> Predictor(ens, nmf_iters=2)
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: --nmf-iters: the network Conv3d has no NMF layers ...
    """

    def __init__(
        self,
        ensemble: Ensemble,
        settings: InferenceSettings | None = None,
        *,
        progress: bool = False,
        **options: Any,
    ) -> None:
        if settings is not None and options:
            raise TypeError("give the settings either as an InferenceSettings or as keywords")
        self.ensemble = ensemble
        self.progress = progress
        self._trained = [nmf_state(m) for m in ensemble.models]
        self._compiled: list[nn.Module] | None = None
        self.settings = InferenceSettings()
        self.configure(settings if settings is not None else InferenceSettings(**options))

    @classmethod
    def from_run(
        cls,
        model: str | Path,
        folds: str | int | Sequence[int | str] | None = None,
        checkpoint: str = "final",
        device: str | torch.device | None = None,
        *,
        settings: InferenceSettings | None = None,
        progress: bool = False,
        **options: Any,
    ) -> Predictor:
        """Load the folds of a trained run (:func:`~nmfseg.inference.ensemble.find_checkpoints`).

        Args:
            model: Run folder ``RUN_DIR/<dataset>/<model>``, fold folder or checkpoint file.
            folds: The folds of a run folder, read as ``--folds`` reads them: ``None``
                (default), every numbered ``fold_K``, as nnU-Net ensembles; a fold list as
                typed (:func:`~nmfseg.text.parse_folds`: ``"0-2,4"``, and ``"all"``, the
                ``fold_all`` model trained on every case, never "every fold"); one fold
                number; or a sequence such as ``[0, 1]`` or ``["all"]``.
            checkpoint: ``final``, ``best`` or ``last``.
            device: ``cpu``, ``cuda`` or ``cuda:N`` (default: CUDA when available).
            settings: Inference settings (or give them as keyword arguments).
            progress: Show the per-window progress bar.
            **options: Fields of :class:`InferenceSettings`.
        """
        if settings is not None and options:
            raise TypeError("give the settings either as an InferenceSettings or as keywords")
        if settings is None:
            settings = InferenceSettings(**options)  # bad values fail before loading anything
        ensemble = load_ensemble(model, _fold_list(folds), checkpoint, device)
        return cls(ensemble, settings, progress=progress)

    # ------------------------------------------------------------------ settings
    def configure(self, settings: InferenceSettings | None = None, **changes: Any) -> None:
        """Apply new settings: a whole :class:`InferenceSettings`, or changes to the current.

        Examples::

            >>> p = Predictor(Ensemble([torch.nn.Conv3d(1, 1, 1)], [], (8, 8, 8), 1, 1))
            >>> p.configure(threshold=0.3, blend="constant")
            >>> p.threshold, p.blend
            (0.3, 'constant')
        """
        new = settings if settings is not None else self.settings.replace(**changes)
        keep = check_nmf_settings(self.ensemble.models, new, self.model_name)
        for net, trained, enabled in zip(self.ensemble.models, self._trained, keep, strict=True):
            if enabled is None:  # no NMF layers
                continue
            restore_nmf(net, trained)  # the switches start from the trained settings
            set_nmf(net, new.nmf_iters, new.nmf_rank, new.nmf_solver, enabled)
        if new.compile and self._compiled is None:
            self._compiled = [torch.compile(net) for net in self.ensemble.models]
        self.postprocessing = self._postprocessing(new.postprocess)
        self.settings = new

    def usable_ranks(self, ranks: Sequence[int], note: Callable[[str], Any]) -> list[int]:
        """The NMF ranks of a sweep that every fold's layers allow, the others left out with a
        ``note``; ``ConfigError`` naming ``--ranks`` when none is left
        (:func:`~nmfseg.inference.checks.usable_ranks`)."""
        return usable_ranks(self.ensemble.models, ranks, self.model_name, note)

    def _postprocessing(self, spec: Any) -> PostProcessing | None:
        """The post-processing of ``settings.postprocess`` (``auto``: the run's saved one)."""
        if spec is None or isinstance(spec, PostProcessing):
            return spec
        scheme = self.ensemble.scheme
        regions = self.ensemble.regions or (scheme.region_names if scheme else ())
        if tuple(spec) == ("auto",):  # checked like the words; an ONNX model has none
            export = self.ensemble.config.get("export")
            return saved_postprocessing(self.ensemble.sources, regions, export)
        return PostProcessing.parse(list(spec), regions)

    @property
    def networks(self) -> list[nn.Module]:
        """The networks that predict (compiled with ``compile=True``)."""
        if self.settings.compile and self._compiled is not None:
            return self._compiled
        return list(self.ensemble.models)

    @property
    def has_nmf(self) -> bool:
        """Whether every fold's network has NMF layers (a Factorizer)."""
        return all(nmf_layers(net) for net in self.ensemble.models)

    @property
    def model_name(self) -> str:
        """The registered name of the network (its class name if it has none)."""
        model = self.ensemble.config.get("model")
        if isinstance(model, dict) and model.get("name"):
            return str(model["name"])
        if isinstance(model, str):
            return model
        if not self.ensemble.models:
            return "?"
        registered = getattr(self.ensemble.models[0], "model_config", None)
        return str(getattr(registered, "name", "") or type(self.ensemble.models[0]).__name__)

    @property
    def overlap(self) -> float:
        """Sliding-window overlap in use."""
        s = self.settings.overlap
        return float(s if s is not None else self.ensemble.overlap)

    @property
    def sw_batch_size(self) -> int:
        """Windows per forward pass in use."""
        s = self.settings.sw_batch_size
        return int(s if s is not None else self.ensemble.sw_batch_size)

    @property
    def blend(self) -> str:
        """Window blending in use."""
        return self.settings.blend or self.ensemble.mode

    @property
    def threshold(self) -> float:
        """Probability threshold in use."""
        s = self.settings.threshold
        return float(s if s is not None else self.ensemble.threshold)

    @property
    def patch_size(self) -> tuple[int, ...]:
        """Sliding-window size (the training patch size)."""
        return tuple(self.ensemble.patch_size)

    @property
    def device(self) -> torch.device:
        """Where the networks run."""
        return self.ensemble.device

    def resolved_settings(self) -> dict[str, Any]:
        """The settings in use, resolved (what ``predict.json`` records).

        Examples::

            >>> p = Predictor(Ensemble([torch.nn.Conv3d(1, 1, 1)], [], (8, 8, 8), 1, 1))
            >>> p.resolved_settings()["overlap"], p.resolved_settings()["nmf_iters"]
            (0.5, None)
        """
        layers = nmf_layers(self.ensemble.models[0]) if self.ensemble.models else []
        nmf_settings: dict[str, Any] = dict.fromkeys(NMF_SETTINGS)
        if layers:
            first = layers[0].nmf
            enabled = [i for i, layer in enumerate(layers) if layer.enabled]
            nmf_settings = {
                "nmf_iters": first.iters,
                "nmf_rank": first.rank,
                "nmf_solver": first.solver,
                "nmf_layers": "all" if len(enabled) == len(layers) else enabled,
            }
        elif self.ensemble.models:  # an exported network's NMF settings are fixed in it
            nmf_settings.update(getattr(self.ensemble.models[0], "nmf_settings", None) or {})
        return {
            "patch_size": list(self.patch_size),
            "tta": self.settings.tta,
            "overlap": self.overlap,
            "sw_batch_size": self.sw_batch_size,
            "blend": self.blend,
            "threshold": self.threshold,
            "amp": self.settings.amp,
            "compile": self.settings.compile,
            **nmf_settings,
            "postprocess": self.postprocessing.words() if self.postprocessing else ["none"],
            "device": str(self.device),
        }

    def describe(self) -> dict[str, Any]:
        """Deprecated name of :meth:`resolved_settings`."""
        warnings.warn(
            "Predictor.describe is deprecated; use Predictor.resolved_settings",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.resolved_settings()

    def _autocast(self) -> Any:
        if self.settings.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # ------------------------------------------------------------------ prediction
    def predict_preprocessed(self, image: np.ndarray) -> np.ndarray:
        """Float32 probabilities ``(R, *spatial)`` of an image already preprocessed.

        The network part of every prediction (what ``nmfseg ablate`` times): one sliding
        window per fold (over every flip with ``tta``), the folds' probabilities averaged.
        """
        networks, tta = self.networks, self.settings.tta
        if not networks:
            raise ValueError("a Predictor needs at least one network.")
        total = None
        with self._autocast():
            for net in networks:
                probs = sliding_window_predict(
                    net,
                    image,
                    self.patch_size,
                    self.overlap,
                    tta,
                    mode=self.blend,
                    sw_batch_size=self.sw_batch_size,
                    device=self.device,
                    progress=self.progress,
                )
                total = probs if total is None else total + probs
            return (total / len(networks)).numpy().astype(np.float32, copy=False)

    def probabilities(
        self, image: np.ndarray, where: str = "image", spacing: Sequence[float] | None = None
    ) -> np.ndarray:
        """Float32 probabilities ``(R, X, Y, Z)`` of a raw image ``(C, X, Y, Z)``, in its grid.

        The run's preprocessing (:func:`~nmfseg.data.preprocess.preprocess_case`),
        :meth:`predict_preprocessed`, and back into the image's grid
        (:func:`~nmfseg.data.preprocess.restore`: trilinear, 0 outside the nonzero box).

        Args:
            image: the raw image, channels first.
            where: its name in error messages.
            spacing: its voxel size in mm (needed when the run resamples its cases).

        Raises:
            DataError: naming ``where``: wrong channel count, NaN/Inf voxels, no ``spacing``
                for a run that resamples.
        """
        image = np.asarray(image)
        for net in self.networks:
            expected = getattr(net, "in_channels", None)
            if expected is not None and image.shape[0] != expected:
                raise DataError(
                    where, f"image has {image.shape[0]} channels but the model expects {expected}"
                )
        pre = self.ensemble.preprocessing
        with self._autocast():
            x, _, record = preprocess_case(image, where=where, spacing=spacing, preprocessing=pre)
            probs = self.predict_preprocessed(x)
            return restore(probs, record, fill=0.0, mode="bilinear").astype(np.float32, copy=False)

    def to_labels(self, probabilities: np.ndarray, scheme: DatasetScheme | None = None) -> Any:
        """Threshold probabilities and write them as a label map of ``scheme``.

        Raises:
            ConfigError: No scheme given and the model's config names none.
        """
        scheme = scheme if scheme is not None else self.ensemble.scheme
        if scheme is None:
            raise ConfigError(
                "the model's config names no label scheme; pass scheme= (e.g. "
                "nmfseg.data.schemes.SCHEMES['isles22'])"
            )
        return regions_to_labels(self.to_regions(probabilities, scheme), scheme)

    def to_regions(self, probabilities: np.ndarray, scheme: DatasetScheme | None = None) -> Any:
        """Thresholded (and post-processed) region masks ``(R, ...)`` of probabilities."""
        regions = np.asarray(probabilities) >= self.threshold
        scheme = scheme if scheme is not None else self.ensemble.scheme
        if self.postprocessing is not None and scheme is not None:
            regions = self.postprocessing.apply(regions, scheme)
        return regions

    def predict_array(
        self,
        image: np.ndarray | torch.Tensor,
        output: str = "labels",
        scheme: DatasetScheme | None = None,
        spacing: Sequence[float] | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Predict a raw image ``(C, X, Y, Z)`` given as a NumPy array or a torch tensor.

        Args:
            image: The raw (not normalized) image, channels first in the model's order.
            output: ``"labels"`` (a label map of ``scheme``), ``"regions"`` (``(R, ...)``
                uint8 masks) or ``"probabilities"`` (``(R, ...)`` float32).
            scheme: Label scheme of ``"labels"`` (default: the model's training scheme).
            spacing: The image's voxel size in mm; needed when the run resamples its cases
                to a target spacing (its ``dataset.preprocessing``), ignored otherwise.

        Returns:
            The same kind of array as ``image`` (a tensor comes back on the CPU).
        """
        if output not in ("labels", "regions", "probabilities"):
            raise ConfigError(f"output {output!r}: choose labels, regions or probabilities")
        is_tensor = isinstance(image, torch.Tensor)
        array = check_image(image, len(self.patch_size))
        probs = self.probabilities(array, spacing=spacing)
        if output == "probabilities":
            out = probs
        elif output == "regions":
            out = self.to_regions(probs, scheme).astype(np.uint8)
        else:
            out = self.to_labels(probs, scheme)
        return torch.from_numpy(np.ascontiguousarray(out)) if is_tensor else out

    def predict_nifti(
        self,
        image: Any,
        scheme: DatasetScheme | None = None,
    ) -> nib.Nifti1Image:
        """Label map of a NIfTI image in memory, with the image's own affine and header.

        Args:
            image: A nibabel image (4D channels last, or 3D for a one-channel model), a path
                to one, or a sequence of 3D/2D images or paths (one per channel, model order).
            scheme: Label scheme of the output (default: the model's).

        Raises:
            DataError: Images of different shapes, or a channel count the model does not take.
        """
        array, ref, spacing = nifti_channels(image)
        labels = np.asarray(self.predict_array(array, "labels", scheme, spacing))
        return new_nifti(labels.astype(label_dtype(labels)), ref.affine, ref.header)

    def predict_case(
        self,
        case: Case | str | Path,
        scheme: DatasetScheme | None = None,
        *,
        output: str | Path | None = None,
        probabilities: str | Path | None = None,
    ) -> nib.Nifti1Image:
        """Label map of a case on disk (a :class:`~nmfseg.data.formats.Case`, or a case folder
        or file that ``nmfseg predict`` takes); its label file is not read.

        Args:
            case: The case.
            scheme: Label scheme of the output (default: the case's own when its regions are
                the model's, else the model's: :func:`~nmfseg.inference.ensemble.output_scheme`).
            output: Also write the label map there, atomically and last (what
                :func:`~nmfseg.inference.predict.predict_folder` does for every case).
            probabilities: Also write the probabilities there first
                (:func:`save_probabilities`); removed if the label map cannot be written.
        """
        case = open_case(case, scheme=self.ensemble.scheme) if not isinstance(case, Case) else case
        data = load_case(dataclasses.replace(case, label_path=None))
        if scheme is None and case.scheme is not None:
            one = Dataset(Path(case.image_paths[0]).parent, case.fmt, case.scheme, [case], False)
            scheme, _ = output_scheme(one, self.ensemble)
        probs = self.probabilities(data.image, case.case_id, data.spacing)
        labels = self.to_labels(probs, scheme)
        image = new_nifti(labels.astype(label_dtype(labels)), data.affine, data.header)
        if probabilities is not None:  # to_labels found a scheme
            regions = (scheme or self.ensemble.scheme).region_names  # type: ignore[union-attr]
            save_probabilities(Path(probabilities), probs, regions, data.affine)
        try:
            if output is not None:
                save_nifti(image, Path(output))
        except BaseException:
            if probabilities is not None:
                Path(probabilities).unlink(missing_ok=True)
            raise
        return image


def _fold_list(folds: str | int | Sequence[int | str] | None) -> list[int | str] | None:
    """``folds`` of :meth:`Predictor.from_run` as :func:`~nmfseg.inference.ensemble.
    find_checkpoints` takes them (``None``: every numbered fold).

    Examples::

        >>> _fold_list(None), _fold_list("0-1,all"), _fold_list(2), _fold_list((1, "all"))
        (None, [0, 1, 'all'], [2], [1, 'all'])
    """
    if folds is None:
        return None
    if isinstance(folds, str):
        return parse_folds(folds)
    if isinstance(folds, int):
        return [folds]
    return list(folds)
