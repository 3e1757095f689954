"""Canary examples for auditing DP-SGD, and what an auditor computes from a model with them.

A *Dirac canary* is an input that is zero except one coordinate j, set to ``magnitude``, with a
label y. The coordinates are the quietest of the training data (:func:`quiet_coordinates`: the
fewest non-zero values; digits has ten that at most 0.5% of images use), so for a model whose
first layer is linear the canary's gradient lies where real examples' gradients (almost) do not:
in the first layer's column j. Canaries that share a coordinate differ by their label.

An auditor scores canaries (higher: more likely trained on) by their loss on a released model
(:func:`canary_losses`, black box), or by how far a client's update moved along each canary's
gradient (:func:`canary_directions`, white box). An auditor that knows the run seed can also
rebuild the DP-SGD noise a *seeded* client drew (:func:`seeded_noise_sum`) and remove it; a
client that draws its noise from a secret leaves nothing to rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.func import functional_call, grad, vmap

from fedlab.data.types import ArrayDataset
from fedlab.training.models import weight_tensors


@dataclass(frozen=True)
class Canaries:
    """Canary examples: ``x`` of shape ``(m, *feature_shape)`` and labels ``y``, with their coordinate.

    Attributes:
        x: Inputs, float32.
        y: Labels, int64.
        coordinate: The flattened input coordinate each canary sets.
    """

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    coordinate: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: npt.ArrayLike) -> Canaries:
        """The canaries at ``indices``."""
        index = np.asarray(indices, dtype=np.int64)
        return Canaries(self.x[index], self.y[index], self.coordinate[index])


def quiet_coordinates(data: ArrayDataset, count: int) -> list[int]:
    """The ``count`` flattened input coordinates that the fewest examples set to a non-zero value.

    >>> x = np.array([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]])
    >>> quiet_coordinates(ArrayDataset(x, np.array([0, 1]), num_classes=2), 2)
    [0, 2]
    """
    flat = data.x.reshape(len(data), -1)
    used = np.count_nonzero(flat, axis=0)
    order = np.lexsort((np.arange(used.size), used))
    return [int(j) for j in order[:count]]


def make_canaries(
    *,
    feature_shape: tuple[int, ...],
    coordinates: Sequence[int],
    num_classes: int,
    count: int,
    magnitude: float,
) -> Canaries:
    """``count`` Dirac canaries: coordinate ``coordinates[i % K]``, label ``(i // K) % num_classes``.

    The first ``K * num_classes`` canaries are distinct (coordinate, label) pairs; beyond that they
    repeat.

    >>> c = make_canaries(feature_shape=(2, 2), coordinates=[0, 3], num_classes=2, count=3, magnitude=5.0)
    >>> c.x.reshape(3, -1).tolist(), c.y.tolist()
    ([[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0], [5.0, 0.0, 0.0, 0.0]], [0, 0, 1])
    """
    if count < 1 or not coordinates:
        raise ValueError("need at least one canary and one coordinate")
    k = len(coordinates)
    coordinate = np.array([coordinates[i % k] for i in range(count)], dtype=np.int64)
    x = np.zeros((count, int(np.prod(feature_shape))), dtype=np.float32)
    x[np.arange(count), coordinate] = magnitude
    y = np.array([(i // k) % num_classes for i in range(count)], dtype=np.int64)
    return Canaries(x.reshape((count, *feature_shape)), y, coordinate)


def _parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained parameters by name: the space a run's updates live in (LoRA: the adapters)."""
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if list(params) != list(weight_tensors(model)):
        raise ValueError("canary directions need a model whose weights are exactly its trained parameters")
    return params


def canary_losses(model: nn.Module, canaries: Canaries) -> npt.NDArray[np.float64]:
    """Each canary's cross-entropy loss on ``model`` (eval mode, no gradient)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(canaries.x))
        losses = F.cross_entropy(logits, torch.from_numpy(canaries.y), reduction="none")
    model.train(was_training)
    return losses.double().numpy()


def canary_directions(
    model: nn.Module, canaries: Canaries, *, first_layer_only: bool = True
) -> npt.NDArray[np.float64]:
    """Each canary's unit loss gradient at ``model``, flattened in ``state_dict`` order: ``(m, d)``.

    The gradient is over the trained parameters only (under LoRA, the adapters: what an update holds).

    With ``first_layer_only`` every other tensor's part is zeroed: a Dirac canary's gradient on
    the input layer's weights is where real examples' gradients are (almost) zero, while on later
    layers and biases it shares directions with them.
    """
    params = _parameters(model)

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, p, (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    was_training = model.training
    model.eval()
    grads = vmap(grad(loss), in_dims=(None, 0, 0))(
        params, torch.from_numpy(canaries.x), torch.from_numpy(canaries.y)
    )
    model.train(was_training)
    parts = [grads[name].reshape(len(canaries), -1) for name in params]
    if first_layer_only:
        parts = [parts[0], *(torch.zeros_like(p) for p in parts[1:])]
    flat = torch.cat(parts, dim=1).double().numpy()
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    result: npt.NDArray[np.float64] = flat / np.where(norms > 0, norms, 1.0)
    return result


def seeded_noise_sum(
    shapes: Sequence[tuple[int, ...]], *, noise_seed: int, std: float, steps: int
) -> npt.NDArray[np.float64]:
    """The sum over ``steps`` DP-SGD steps of the noise Opacus draws from a generator seeded ``noise_seed``.

    Opacus draws ``torch.normal(0, std, size=p.shape, generator=g)`` for each parameter in order at
    every step (without ``secure_mode``); this replays those draws on the CPU and returns their sum,
    flattened in the same order.
    """
    generator = torch.Generator().manual_seed(noise_seed)
    totals = [torch.zeros(shape, dtype=torch.float64) for shape in shapes]
    if std > 0:
        for _ in range(steps):
            for total in totals:
                total += torch.normal(0.0, std, size=tuple(total.shape), generator=generator).double()
    return torch.cat([t.reshape(-1) for t in totals]).numpy()
