"""Start from a checkpoint, and fine-tune all weights or only low-rank adapters (LoRA).

``model.init`` names a checkpoint: fedlab's own ``model.npz`` (the arrays of every model tensor in
``state_dict`` order, as a run or ``fedlab pretrain`` writes them) or a torch state dict
(``torch.save(model.state_dict(), PATH)``, read with ``weights_only=True``). Under
``train.finetune = "lora"`` every ``Linear`` layer keeps its checkpointed weights frozen and gains
a trainable low-rank path ``up(down(x))`` of rank ``train.lora_rank`` (Hu et al. 2021; ``up``
starts at zero, so the adapted model starts equal to the checkpoint); every other weight is
frozen. Only trainable tensors are a run's weights (:func:`~fedlab.training.models.get_weights`),
so only the adapters are trained, clipped, noised, aggregated and sent.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedlab.core.errors import ConfigError


class LoraLinear(nn.Module):
    """A frozen ``Linear`` plus a trainable rank-``rank`` path: ``base(x) + up(down(x))``.

    >>> layer = LoraLinear(nn.Linear(4, 3), rank=2)
    >>> [name for name, p in layer.named_parameters() if p.requires_grad]
    ['down.weight', 'up.weight']
    """

    def __init__(self, base: nn.Linear, *, rank: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        device = base.weight.device
        self.down = nn.Linear(base.in_features, rank, bias=False, device=device)
        self.up = nn.Linear(rank, base.out_features, bias=False, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen layer's output plus the adapter's."""
        return self.base(x) + self.up(self.down(x))  # type: ignore[no-any-return]


def add_lora(model: nn.Module, *, rank: int, generator: torch.Generator) -> nn.Module:
    """Freeze every weight of ``model`` and give each ``Linear`` layer a LoRA adapter (in place).

    ``down`` is drawn like a ``Linear`` layer's default initialisation from ``generator``; ``up``
    is zero, so the model computes what it computed before.

    Raises:
        ValueError: If ``rank`` is below 1.

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> x = torch.ones(1, 4)
    >>> before = model(x)
    >>> adapted = add_lora(model, rank=2, generator=torch.Generator().manual_seed(0))
    >>> torch.equal(before, adapted(x)), sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    (True, 44)
    """
    if rank < 1:
        raise ValueError(f"lora rank must be >= 1; got {rank}")
    model.requires_grad_(False)
    targets = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    for name, linear in targets:
        adapter = LoraLinear(linear, rank=rank)
        nn.init.kaiming_uniform_(adapter.down.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(adapter.up.weight)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, adapter)
    return model


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Copy the checkpoint at ``path`` into every tensor of ``model`` (in place).

    Raises:
        ConfigError: If the file cannot be read or does not fit the model (a missing,
            extra or differently shaped tensor); the message names ``model.init``.

    >>> import tempfile
    >>> source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     torch.save(source.state_dict(), Path(tmp) / "m.pt")
    ...     load_checkpoint(target, Path(tmp) / "m.pt")
    >>> torch.equal(source.weight, target.weight)
    True
    """
    state = model.state_dict()
    arrays = _read(path)
    if isinstance(arrays, list):
        if len(arrays) != len(state):
            raise _unfit(path, f"{len(arrays)} arrays for a model of {len(state)} tensors")
        named = dict(zip(state, arrays, strict=True))
    else:
        missing, extra = sorted(set(state) - set(arrays)), sorted(set(arrays) - set(state))
        if missing or extra:
            raise _unfit(path, f"missing tensors {missing[:3]}, unexpected {extra[:3]}")
        named = arrays
    for name, tensor in state.items():
        if tuple(named[name].shape) != tuple(tensor.shape):
            raise _unfit(
                path,
                f"tensor {name!r} is {tuple(named[name].shape)} there, {tuple(tensor.shape)} in the model",
            )
    with torch.no_grad():
        for name, tensor in state.items():
            tensor.copy_(torch.as_tensor(np.asarray(named[name]), dtype=tensor.dtype))


def _read(path: Path) -> list[np.ndarray] | dict[str, np.ndarray]:
    """The arrays of a ``.npz`` (positional) or the named tensors of a torch state dict."""
    try:
        if zipfile.is_zipfile(path) and path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                positional = [f"arr_{i}" for i in range(len(npz.files))]
                if sorted(npz.files) == sorted(positional):
                    return [npz[name] for name in positional]
                return {name: npz[name] for name in npz.files}
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (
        OSError,
        ValueError,
        KeyError,
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as exc:
        raise ConfigError(f"model.init: cannot read {path}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ConfigError(f"model.init: {path} is not a state dict of tensors")
    return {str(k): v.detach().cpu().numpy() for k, v in loaded.items()}


def _unfit(path: Path, why: str) -> ConfigError:
    return ConfigError(f"model.init: {path} does not fit the configured model: {why}")
