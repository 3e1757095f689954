"""Per-example clipping for stacks of linear layers without per-example gradients (ghost norms).

For a linear layer ``z = a W^T + b`` the gradient of example i's loss is ``delta_i a_i^T`` (and
``delta_i`` for the bias), with ``delta_i = dL_i / dz_i``. Its squared norm is
``|delta_i|^2 (|a_i|^2 + 1)``, and the clipped sum over a batch is one matrix product,
``sum_i c_i delta_i a_i^T``. So a cohort of clients (a leading axis) gets Opacus' clipped sums
from one forward pass, one backward pass to the layer outputs and a few batched products,
never materialising a per-example gradient. It serves the models that are a ``Sequential`` of
``Flatten``, ``Linear`` and ``ReLU`` (fedlab's logreg and MLP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

Params = dict[str, torch.Tensor]

CLIP_STABILITY = 1e-6
"""Opacus' ``per_sample_clip_factor = C / (norm + 1e-6)``."""


def is_linear_stack(model: nn.Module) -> bool:
    """Whether ``model`` is a ``Sequential`` of ``Flatten`` (first), ``Linear`` and ``ReLU`` only.

    >>> is_linear_stack(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    True
    >>> is_linear_stack(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.Tanh()))
    False
    """
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        return False
    layers = list(model)
    return (
        isinstance(layers[0], nn.Flatten)
        and all(isinstance(m, nn.Linear | nn.ReLU) for m in layers[1:])
        and all(m.bias is not None for m in layers if isinstance(m, nn.Linear))
    )


def linear_stack_grads(
    model: nn.Sequential,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None,
) -> Params:
    """The summed per-example gradients of every client's batch, each clipped to ``clip`` (or not).

    Args:
        model: A linear stack (:func:`is_linear_stack`); only its layout is used.
        params: Its parameters stacked along a leading client axis (``name -> (clients, ...)``).
        x: ``(clients, width, *feature_shape)`` padded batches.
        y: ``(clients, width)`` labels.
        mask: ``(clients, width)`` 1.0 for the batch's examples, 0.0 for padding.
        clip: Clip each example's gradient to this L2 norm (over all parameters); None: no clipping.

    Returns:
        ``name -> (clients, ...)``: the sum over each client's batch.

    """
    with torch.enable_grad():
        acts, outs, names = [], [], []
        a = x.flatten(start_dim=2)
        for name, module in model.named_children():
            if isinstance(module, nn.Linear):
                weight = params[f"{name}.weight"].detach().requires_grad_()
                z = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), a, weight.transpose(1, 2))
                acts.append(a.detach())
                outs.append(z)
                names.append(name)
                a = z
            elif isinstance(module, nn.ReLU):
                a = torch.relu(a)
        clients, width, classes = a.shape
        losses = F.cross_entropy(a.reshape(-1, classes), y.reshape(-1), reduction="none").reshape(
            clients, width
        )
        deltas = torch.autograd.grad((losses * mask).sum(), outs)
    factor = mask
    if clip is not None:
        squared = sum(
            d.pow(2).sum(dim=2) * (act.pow(2).sum(dim=2) + 1.0) for d, act in zip(deltas, acts, strict=True)
        )
        assert isinstance(squared, torch.Tensor)
        factor = (clip / (squared.sqrt() + CLIP_STABILITY)).clamp(max=1.0) * mask
    grads: Params = {}
    for name, d, act in zip(names, deltas, acts, strict=True):
        weighted = d * factor.unsqueeze(2)
        grads[f"{name}.weight"] = torch.bmm(weighted.transpose(1, 2), act)
        grads[f"{name}.bias"] = weighted.sum(dim=1)
    return grads
