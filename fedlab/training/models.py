"""The models clients train, and moving their weights in and out as numpy arrays.

Every model here is accepted unchanged by Opacus' ``ModuleValidator`` (no BatchNorm:
the CNN normalises with GroupNorm) and gets its per-sample gradients from Opacus'
hooks. Models are built on the ``meta`` device and initialised from an explicit
``torch.Generator``, so building one neither reads nor advances torch's global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from opacus.grad_sample import AbstractGradSampleModule
from opacus.layers import DPLSTM
from torch import nn

from fedlab.core.choices import MODELS, ModelKind
from fedlab.core.config import RunConfig
from fedlab.data.text import TEXT_DATASETS, vocab_size
from fedlab.training.finetune import add_lora, load_checkpoint
from fedlab.training.sequence_models import LstmModel, TransformerModel, init_embedding

_CNN_MIN_SIDE = 4
_CNN_POOLED_SIDE = 4


def build_model(
    kind: ModelKind | str,
    *,
    feature_shape: tuple[int, ...],
    num_classes: int,
    hidden: int = 64,
    seed: int = 0,
    vocab: int = 0,
    layers: int = 1,
    heads: int = 4,
) -> nn.Module:
    """Build a freshly initialised classifier.

    Args:
        kind: ``"logreg"`` (flatten + linear), ``"mlp"`` (flatten, two hidden ReLU
            layers of width ``hidden``, linear output), ``"cnn"`` (two conv blocks
            with GroupNorm, then a ``hidden``-wide ReLU layer; images only), ``"lstm"``
            or ``"transformer"`` (:mod:`fedlab.training.sequence_models`).
        feature_shape: Shape of one example, without the batch dimension. For
            ``"cnn"`` it must be ``(channels, height, width)`` with height and width
            at least 4 (e.g. ``(1, 8, 8)`` for the digits data set).
        num_classes: Number of output classes (logits).
        hidden: Width of the hidden layers (``mlp``, ``cnn``, the LSTM's state, the
            Transformer's width).
        seed: Seed of the initialisation; equal seeds give equal weights.
        vocab: Sequence models only: the inputs are token ids below ``vocab`` (0: real-valued
            features).
        layers: The LSTM's layers or the Transformer's blocks.
        heads: The Transformer's attention heads.

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
            ModelKind(kind),
            feature_shape=feature_shape,
            num_classes=num_classes,
            hidden=hidden,
            sequence={"vocab": vocab, "layers": layers, "heads": heads},
        )
    model = skeleton.to_empty(device="cpu")
    _initialise(model, torch.Generator().manual_seed(seed))
    return model.train()


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Return float32 copies of the model's tensors in ``state_dict`` order (frozen ones left out).

    Works on a plain module and on one wrapped by Opacus (``GradSampleModule``);
    both give the same arrays in the same order.

    Example:
        >>> [a.shape for a in get_weights(torch.nn.Linear(3, 2))]
        [(2, 3), (2,)]
    """
    return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in weight_tensors(model).values()]


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
    state = weight_tensors(model)
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


def weight_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A run's weights of ``model`` by ``state_dict`` name: every tensor but frozen parameters.

    Frozen parameters (a LoRA base) are fixed by the configuration, so they never travel.

    >>> model = torch.nn.Linear(3, 2)
    >>> _ = model.bias.requires_grad_(False)
    >>> list(weight_tensors(model))
    ['weight']
    """
    state = unwrap(model).state_dict(keep_vars=True)
    return {
        name: tensor.detach()
        for name, tensor in state.items()
        if not (isinstance(tensor, nn.Parameter) and not tensor.requires_grad)
    }


def _check_sizes(feature_shape: tuple[int, ...], *, num_classes: int, hidden: int) -> None:
    if not feature_shape or any(d < 1 for d in feature_shape):
        raise ValueError(f"feature_shape must be non-empty with positive sizes; got {feature_shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2; got {num_classes}")
    if hidden < 1:
        raise ValueError(f"hidden must be >= 1; got {hidden}")


def model_for(config: RunConfig, *, feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The run's fresh model (``[model]``, seeded by ``run.seed``) for examples of ``feature_shape``.

    Token ids are the inputs of a text data set (``data.dataset`` ``text`` or ``stdlib``). The
    weights come from ``model.init`` when set; ``train.finetune = "lora"`` then freezes them and
    adds adapters (:mod:`fedlab.training.finetune`).

    Raises:
        ConfigError: If ``model.init`` cannot be read or does not fit the model.

    >>> from fedlab.core.config import config_from_dict
    >>> config = config_from_dict({"model": {"kind": "lstm", "hidden": 8}, "data": {"dataset": "stdlib"}})
    >>> type(model_for(config, feature_shape=(32,), num_classes=256).embed).__name__
    'Embedding'
    """
    text = config.data.dataset in TEXT_DATASETS
    model = build_model(
        config.model.kind,
        feature_shape=feature_shape,
        num_classes=num_classes,
        hidden=config.model.hidden,
        seed=config.run.seed,
        vocab=vocab_size(config.data.text_level) if text else 0,
        layers=config.model.layers,
        heads=config.model.heads,
    )
    if config.model.init:
        load_checkpoint(model, Path(config.model.init))
    if config.train.finetune == "lora":
        add_lora(model, rank=config.train.lora_rank, generator=torch.Generator().manual_seed(config.run.seed))
    return model


def _layers(
    kind: ModelKind,
    *,
    feature_shape: tuple[int, ...],
    num_classes: int,
    hidden: int,
    sequence: dict[str, int],
) -> nn.Module:
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
        case ModelKind.LSTM:
            return LstmModel(
                feature_shape, num_classes=num_classes, vocab=sequence["vocab"], hidden=hidden,
                layers=sequence["layers"],
            )  # fmt: skip
        case ModelKind.TRANSFORMER:
            return TransformerModel(feature_shape, num_classes=num_classes, hidden=hidden, **sequence)


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
        elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init_embedding(module.weight, generator)
        elif isinstance(module, DPLSTM):
            continue  # its parameters are its cells' Linear layers (initialised as such)
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(f"no initialiser for {type(module).__name__}")


def _init_affine(weight: torch.Tensor, bias: torch.Tensor | None, generator: torch.Generator) -> None:
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        bound = 1.0 / math.sqrt(weight[0].numel())
        nn.init.uniform_(bias, -bound, bound, generator=generator)
