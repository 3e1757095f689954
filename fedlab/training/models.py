"""The models clients train, and moving their weights in and out as numpy arrays.

Every model here is accepted unchanged by Opacus' ``ModuleValidator`` (no BatchNorm:
the CNN normalises with GroupNorm) and gets its per-sample gradients from Opacus'
hooks. Models are built on the ``meta`` device and initialised from an explicit
``torch.Generator``, so building one neither reads nor advances torch's global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from opacus.grad_sample import AbstractGradSampleModule
from torch import nn

from fedlab.core.choices import MODELS, ModelKind

_CNN_MIN_SIDE = 4
_CNN_POOLED_SIDE = 4


def build_model(
    kind: ModelKind | str,
    *,
    feature_shape: tuple[int, ...],
    num_classes: int,
    hidden: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Build a freshly initialised classifier.

    Args:
        kind: ``"logreg"`` (flatten + linear), ``"mlp"`` (flatten, two hidden ReLU
            layers of width ``hidden``, linear output) or ``"cnn"`` (two conv blocks
            with GroupNorm, then a ``hidden``-wide ReLU layer; images only).
        feature_shape: Shape of one example, without the batch dimension. For
            ``"cnn"`` it must be ``(channels, height, width)`` with height and width
            at least 4 (e.g. ``(1, 8, 8)`` for the digits data set).
        num_classes: Number of output classes (logits).
        hidden: Width of the hidden layers (``mlp``, ``cnn``).
        seed: Seed of the initialisation; equal seeds give equal weights.

    Returns:
        The model on the CPU, in training mode.

    Raises:
        ValueError: On an unknown kind, non-positive sizes, or a non-image shape for
            ``"cnn"``.

    Examples:
        >>> m = build_model("logreg", feature_shape=(4,), num_classes=3, seed=1)
        >>> [tuple(w.shape) for w in get_weights(m)]
        [(3, 4), (3,)]

    """
    _check_sizes(feature_shape, num_classes=num_classes, hidden=hidden)
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODELS)}")
    with torch.device("meta"):
        skeleton = _layers(
            ModelKind(kind), feature_shape=feature_shape, num_classes=num_classes, hidden=hidden
        )
    model = skeleton.to_empty(device="cpu")
    _initialise(model, torch.Generator().manual_seed(seed))
    return model.train()


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Return float32 copies of the model's tensors in ``state_dict`` order.

    Works on a plain module and on one wrapped by Opacus (``GradSampleModule``);
    both give the same arrays in the same order.

    Example:
        >>> [a.shape for a in get_weights(torch.nn.Linear(3, 2))]
        [(2, 3), (2,)]
    """
    return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in _state(model).values()]


def set_weights(model: nn.Module, arrays: Sequence[np.ndarray]) -> None:
    """Copy ``arrays`` into the model's tensors in place (``state_dict`` order).

    The parameter objects are kept, so optimizers and Opacus wrappers built on the
    model stay valid.

    Args:
        model: A plain module or one wrapped by Opacus.
        arrays: One array per ``state_dict`` entry, with matching shapes.

    Raises:
        ValueError: If the number of arrays or any shape differs; the message names
            the offending tensor.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> set_weights(model, [np.ones((2, 3), np.float32), np.zeros(2, np.float32)])
        >>> float(model.weight.sum())
        6.0
    """
    state = _state(model)
    if len(arrays) != len(state):
        raise ValueError(f"expected {len(state)} arrays (one per model tensor), got {len(arrays)}")
    for (name, tensor), array in zip(state.items(), arrays, strict=True):
        if tuple(array.shape) != tuple(tensor.shape):
            raise ValueError(
                f"shape mismatch for tensor {name!r}: model has {tuple(tensor.shape)}, "
                f"array has {tuple(array.shape)}"
            )
    with torch.no_grad():
        for tensor, array in zip(state.values(), arrays, strict=True):
            tensor.copy_(torch.tensor(np.asarray(array), dtype=tensor.dtype))


def unwrap(model: nn.Module) -> nn.Module:
    """Return the plain module inside an Opacus ``GradSampleModule`` (or ``model`` itself).

    Unlike Opacus' ``to_standard_module()`` this leaves the wrapper's hooks in place.
    """
    if isinstance(model, AbstractGradSampleModule):
        inner: nn.Module = model._module
        return inner
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(unwrap(model).state_dict())


def _check_sizes(feature_shape: tuple[int, ...], *, num_classes: int, hidden: int) -> None:
    if not feature_shape or any(d < 1 for d in feature_shape):
        raise ValueError(f"feature_shape must be non-empty with positive sizes; got {feature_shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2; got {num_classes}")
    if hidden < 1:
        raise ValueError(f"hidden must be >= 1; got {hidden}")


def _layers(kind: ModelKind, *, feature_shape: tuple[int, ...], num_classes: int, hidden: int) -> nn.Module:
    inputs = math.prod(feature_shape)
    match kind:
        case ModelKind.LOGREG:
            return nn.Sequential(nn.Flatten(), nn.Linear(inputs, num_classes))
        case ModelKind.MLP:
            return nn.Sequential(
                nn.Flatten(),
                nn.Linear(inputs, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, num_classes),
            )
        case ModelKind.CNN:
            return _cnn_layers(feature_shape, num_classes=num_classes, hidden=hidden)


def _cnn_layers(feature_shape: tuple[int, ...], *, num_classes: int, hidden: int) -> nn.Module:
    if len(feature_shape) != 3 or min(feature_shape[1:]) < _CNN_MIN_SIDE:
        raise ValueError(
            "cnn needs image features shaped (channels, height, width) with height and width "
            f">= {_CNN_MIN_SIDE}; got {feature_shape}"
        )
    channels = feature_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 16, kernel_size=3, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.GroupNorm(8, 32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(_CNN_POOLED_SIDE),
        nn.Flatten(),
        nn.Linear(32 * _CNN_POOLED_SIDE**2, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def _initialise(model: nn.Module, generator: torch.Generator) -> None:
    """Initialise like PyTorch's defaults, but drawing from ``generator``."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            _init_affine(module.weight, module.bias, generator)
        elif isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(f"no initialiser for {type(module).__name__}")


def _init_affine(weight: torch.Tensor, bias: torch.Tensor | None, generator: torch.Generator) -> None:
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        bound = 1.0 / math.sqrt(weight[0].numel())
        nn.init.uniform_(bias, -bound, bound, generator=generator)
