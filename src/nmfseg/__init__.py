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

from typing import Any

__version__ = "0.1.0"

__all__ = ["NMF", "__version__", "create_model", "list_models", "nmf"]


def __getattr__(name: str) -> Any:
    # Lazy exports keep `import nmfseg` (and `nmfseg --help`) fast.
    if name in ("nmf", "NMF"):
        from nmfseg import nmf as _nmf

        return getattr(_nmf, name)
    if name in ("create_model", "list_models", "register_model"):
        from nmfseg.models import _registry

        return getattr(_registry, name)
    raise AttributeError(f"module 'nmfseg' has no attribute {name!r}")
