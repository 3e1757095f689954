"""Turning a device setting (``train.device``) into a ``torch.device``."""

from __future__ import annotations

import torch


def resolve_device(spec: str) -> torch.device:
    """Return the torch device named by a ``train.device`` setting.

    Args:
        spec: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``.

    Raises:
        ValueError: On any other spec, or if CUDA is asked for but not available
            (or ``N`` is not a visible GPU).

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')

    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        return _cuda_device(spec)
    raise ValueError(f"unknown device {spec!r}; expected auto, cpu, cuda or cuda:N")


def _cuda_device(spec: str) -> torch.device:
    index_text = spec.partition(":")[2]
    if spec != "cuda" and not index_text.isdigit():
        raise ValueError(f"bad CUDA device {spec!r}; expected cuda or cuda:N with N a GPU index")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available on this machine; use cpu")
    count = torch.cuda.device_count()
    if index_text and int(index_text) >= count:
        raise ValueError(f"device {spec!r} requested but only {count} CUDA device(s) are visible")
    return torch.device(spec)
