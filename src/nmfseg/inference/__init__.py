"""Prediction: sliding-window inference, flip TTA, fold ensembles, writing NIfTI outputs.

- :func:`sliding_window_predict`: one preprocessed image → probabilities (model-agnostic).
- :func:`load_ensemble`: the folds of a run folder, a fold folder or a checkpoint file.
- :class:`Predictor`: the one prediction path, a trained run loaded once (``from_run``);
  predicts cases on disk (``predict_case``, writing their files if asked), NIfTI images,
  arrays and preprocessed arrays with every setting of ``nmfseg predict``
  (:class:`InferenceSettings`, NMF switches included).
- :func:`predict_folder`: a dataset folder or one case → ``OUT/CASE.nii.gz`` (``nmfseg predict``).

Examples::

    >>> import torch
    >>> from nmfseg.inference import sliding_window_predict
    >>> sliding_window_predict(torch.nn.Conv3d(1, 2, 1), torch.zeros(1, 5, 6, 7), (8, 8, 8)).shape
    torch.Size([2, 5, 6, 7])
"""

from nmfseg.inference.ensemble import Ensemble, find_checkpoints, load_ensemble
from nmfseg.inference.predict import PredictionResult, predict_folder
from nmfseg.inference.predictor import Predictor
from nmfseg.inference.settings import InferenceSettings
from nmfseg.inference.sliding_window import flip_combinations, sliding_window_predict

__all__ = [
    "Ensemble",
    "InferenceSettings",
    "PredictionResult",
    "Predictor",
    "find_checkpoints",
    "flip_combinations",
    "load_ensemble",
    "predict_folder",
    "sliding_window_predict",
]
