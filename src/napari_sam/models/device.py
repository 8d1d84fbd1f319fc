"""Choosing the torch device (and the dtype) the model runs on."""

from __future__ import annotations

import torch

__all__ = ["available_devices", "default_dtype", "resolve_device"]

#: Device types that need hardware; anything else torch knows is refused except these two.
_ALWAYS_AVAILABLE = ("cpu", "meta")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Device names usable on this machine, best first, e.g. ``["cuda:0", "cuda:1", "cpu"]``."""
    names = []
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn a user's device choice into a :class:`torch.device` that exists on this machine.

    Parameters
    ----------
    device : str or torch.device, optional
        ``None`` or ``"auto"`` picks the best available device: CUDA, then Apple's MPS, then
        the CPU. Otherwise anything :class:`torch.device` accepts (``"cpu"``, ``"cuda"``,
        ``"cuda:1"``, ``"mps"``), checked against the hardware.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        The name is not a device, or the device is not available here (no CUDA, no GPU of that
        index, no MPS). The message lists the devices that are.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")

    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device.strip().lower())
        except (RuntimeError, ValueError):
            raise ValueError(
                f"{device!r} is not a device name; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' "
                f"(available here: {', '.join(available_devices())})"
            ) from None
    else:
        raise TypeError(
            f"device must be a str, a torch.device or None, got {type(device).__name__}"
        )

    available = ", ".join(available_devices())
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(dev)!r} was requested but CUDA is not available (this torch build "
                f"has CUDA {torch.version.cuda or 'none'}; no usable GPU was found). "
                f"Available devices: {available}"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(dev)!r} was requested but there are only "
                f"{torch.cuda.device_count()} CUDA device(s). Available devices: {available}"
            )
    elif dev.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"device 'mps' was requested but Apple's MPS backend is not available. "
                f"Available devices: {available}"
            )
    elif dev.type not in _ALWAYS_AVAILABLE:
        raise ValueError(
            f"device type {dev.type!r} is not supported; available devices: {available}"
        )
    return dev


def default_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """The floating-point dtype for the model's weights and inputs on ``device``.

    Always ``torch.float32`` for now: SAM was validated in it, every backend supports it (MPS
    has no float64), and half precision is a separate, explicit choice. The argument is there
    so that a device-dependent choice does not change the signature.

    Parameters
    ----------
    device : str or torch.device, optional
        The device the model runs on (not checked here).
    """
    return torch.float32
