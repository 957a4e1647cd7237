"""Prediction: sliding-window inference, flip TTA, fold ensembles, writing NIfTI outputs.

Examples::

    >>> import torch
    >>> from nmfseg.inference import sliding_window_predict
    >>> sliding_window_predict(torch.nn.Conv3d(1, 2, 1), torch.zeros(1, 5, 6, 7), (8, 8, 8)).shape
    torch.Size([2, 5, 6, 7])
"""

from nmfseg.inference.ensemble import Ensemble, find_checkpoints, load_ensemble, predict_case
from nmfseg.inference.sliding_window import flip_combinations, sliding_window_predict

__all__ = [
    "Ensemble",
    "find_checkpoints",
    "flip_combinations",
    "load_ensemble",
    "predict_case",
    "sliding_window_predict",
]
