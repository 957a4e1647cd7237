"""nmfseg: Factorizer networks for 3D medical image segmentation.

Factorizers are U-shaped networks whose blocks replace self-attention with a
differentiable, linearly scaling Nonnegative Matrix Factorization (NMF) layer over
matricized feature maps (Ashtari et al., "Factorizer: A scalable interpretable approach
to context modeling for medical image segmentation", Medical Image Analysis, 2023).

Examples::

    >>> import torch, nmfseg
    >>> model = nmfseg.create_model("swin_factorizer_brats", channels=(8, 16, 32, 64, 128))
    >>> _ = model.eval()
    >>> model(torch.randn(1, 4, 24, 40, 32)).shape
    torch.Size([1, 3, 24, 40, 32])
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it. Resolved on first use, so that `import nmfseg`
# (and `nmfseg --help`) does not import torch.
_EXPORTS = {
    "NMF": "nmfseg.nmf",
    "Predictor": "nmfseg.inference.predictor",
    "create_model": "nmfseg.models",
    "list_models": "nmfseg.models",
    "load_model": "nmfseg.models",
    "model_info": "nmfseg.models",
    "register_model": "nmfseg.models",
}

__all__ = [
    "NMF",
    "Predictor",
    "__version__",
    "create_model",
    "list_models",
    "load_model",
    "model_info",
    "register_model",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # a subpackage, e.g. nmfseg.nmf
    raise AttributeError(f"module 'nmfseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
