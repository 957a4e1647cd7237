"""Which device a command runs on: ``--device cpu | cuda | cuda:N``, default CUDA when visible."""

from __future__ import annotations

import torch

from nmfseg.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """The device to run on.

    ``None`` is CUDA when available, else the CPU; ``"cuda"`` is the GPU of this process
    (``cuda:LOCAL_RANK`` under ``torchrun``).

    Raises:
        ConfigError: Not a device, a device type other than cpu/cuda, CUDA on a machine
            without it, or a GPU index the machine does not have.

    Examples::

        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("tpu")
        Traceback (most recent call last):
        ...
        nmfseg.errors.ConfigError: --device 'tpu': not a device (use cpu, cuda or cuda:N)
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {device!r}: not a device (use cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: only cpu and cuda are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine")
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)"
            )
    return dev
