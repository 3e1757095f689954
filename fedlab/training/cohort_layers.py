"""Clipped per-example gradient sums of a whole cohort, layer by layer, in a few batched products.

A cohort's clients share an architecture but not their parameters, which are stacked along a
leading client axis. The forward pass runs every client's batch through its own parameters at
once (batched matrix products; convolutions as ``unfold`` then a product), one backward pass
gives the loss gradients at every layer's output (``delta``), and each example's parameter
gradient follows from its layer input and its ``delta``:

* ``Linear`` (``z = a W^T + b``): ``delta a^T`` and ``delta``; the squared norm is
  ``|delta|^2 (|a|^2 + 1)`` without forming the gradient (ghost norm);
* ``Conv2d``: ``sum_l delta_l u_l^T`` over the output positions ``l`` of the unfolded input ``u``,
  and ``sum_l delta_l``;
* ``GroupNorm``: ``sum_hw delta * xhat`` and ``sum_hw delta`` per channel (``xhat``: the
  normalised input).

Each example's total norm gives Opacus' clip factor ``min(1, C / (norm + 1e-6))``, and the clipped
sums over each client's batch are again batched products. ``ReLU``, ``MaxPool2d``,
``AdaptiveAvgPool2d`` and ``Flatten`` act on each example alone and carry no parameters.
It serves ``nn.Sequential`` models of these layers (fedlab's logreg, MLP and GroupNorm CNN);
:func:`unsupported_reason` says why any other model is not served.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

Params = dict[str, torch.Tensor]

CLIP_STABILITY = 1e-6
"""Opacus' ``per_sample_clip_factor = C / (norm + 1e-6)``."""

_STATELESS = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the cohort layers cannot train ``model`` (None: they can).

    >>> unsupported_reason(nn.Sequential(nn.Flatten(), nn.Linear(4, 2))) is None
    True
    >>> unsupported_reason(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.Tanh()))
    'layer 2 is a Tanh'
    """
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        return f"the model is a {type(model).__name__}, not a non-empty nn.Sequential"
    if any(True for _ in model.buffers()):
        return "the model has buffers"
    for name, layer in model.named_children():
        problem = _layer_problem(layer)
        if problem:
            return f"layer {name} {problem}"
    return None


def example_bytes(model: nn.Sequential, feature_shape: tuple[int, ...]) -> int:
    """A generous estimate of what one example costs in :func:`cohort_grads`, in bytes (float32).

    Four copies of every layer's output, each convolution's unfolded input and its per-example
    weight gradient.

    >>> example_bytes(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (4,)) == 4 * 4 * (4 + 2)
    True
    """
    first = next(model.parameters())
    floats = 0
    with torch.no_grad():
        h = torch.zeros((1, *feature_shape), dtype=first.dtype, device=first.device)
        for layer in model:
            if isinstance(layer, nn.Conv2d):
                floats += layer.weight.numel() + layer.weight[0].numel() * h[0, 0].numel()
            h = layer(h)
            floats += 4 * h.numel()
    return 4 * floats


def _layer_problem(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear | nn.Conv2d) and layer.bias is None:
        return f"is a {type(layer).__name__} without bias"
    if isinstance(layer, nn.Conv2d) and (
        layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str)
    ):
        return "is a grouped, non-zero-padded or 'same'-padded Conv2d"
    if isinstance(layer, nn.GroupNorm) and not layer.affine:
        return "is a GroupNorm without affine parameters"
    if isinstance(layer, nn.Flatten) and (layer.start_dim, layer.end_dim) != (1, -1):
        return "is a Flatten of other than all feature dimensions"
    if not isinstance(layer, (nn.Linear, nn.Conv2d, nn.GroupNorm, *_STATELESS)):
        return f"is a {type(layer).__name__}"
    return ""


@dataclass
class _Record:
    """What one parameter layer keeps from the forward pass for its per-example gradients."""

    name: str
    layer: nn.Module
    inputs: torch.Tensor  # Linear: a (C,B,in); Conv2d: u (C,B,K,L); GroupNorm: xhat (C,B,ch,HW)
    output: torch.Tensor  # requires grad; its gradient is delta


def cohort_grads(
    model: nn.Sequential,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None,
) -> tuple[Params, torch.Tensor]:
    """Every client's per-example gradients, each clipped to ``clip`` (or not), summed over its batch.

    Args:
        model: A supported ``Sequential`` (:func:`unsupported_reason`); only its layout is used.
        params: Its parameters stacked along a leading client axis (``name -> (clients, ...)``).
        x: ``(clients, width, *feature_shape)`` padded batches.
        y: ``(clients, width)`` labels.
        mask: ``(clients, width)`` 1.0 for the batch's examples, 0.0 for padding.
        clip: Clip each example's gradient to this L2 norm (over all parameters); None: no clipping.

    Returns:
        ``name -> (clients, ...)``, the sums over each client's batch, and the ``(clients, width)``
        per-example losses (detached).

    """
    clients, width = mask.shape
    mask = mask.to(next(iter(params.values())))
    with torch.enable_grad():
        records: list[_Record] = []
        # The input requires grad so that every layer's output does (the parameters do not).
        h = x.reshape(clients * width, *x.shape[2:]).detach().requires_grad_()
        for name, layer in model.named_children():
            h = _forward(name, layer, params, h, clients, records)
        losses = F.cross_entropy(h, y.reshape(-1), reduction="none").reshape(clients, width)
        deltas = torch.autograd.grad((losses * mask).sum(), [r.output for r in records])
    pieces = [_example_grads(r, d.detach()) for r, d in zip(records, deltas, strict=True)]
    factor = mask
    if clip is not None:
        squared = sum(_squared_norm(r, piece) for r, piece in zip(records, pieces, strict=True))
        assert isinstance(squared, torch.Tensor)
        factor = (clip / (squared.sqrt() + CLIP_STABILITY)).clamp(max=1.0) * mask
    grads: Params = {}
    for record, piece in zip(records, pieces, strict=True):
        grads.update(_clipped_sums(record, piece, factor))
    return grads, losses.detach()


def _forward(
    name: str, layer: nn.Module, params: Params, h: torch.Tensor, clients: int, records: list[_Record]
) -> torch.Tensor:
    """One layer on the folded ``(clients * width, ...)`` batch; parameter layers record themselves."""
    if isinstance(layer, nn.Linear):
        a = h.reshape(clients, -1, h.shape[-1])
        z = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), a, params[f"{name}.weight"].transpose(1, 2))
        records.append(_Record(name, layer, a.detach(), z))
        return z.reshape(-1, z.shape[-1])
    if isinstance(layer, nn.Conv2d):
        return _conv_forward(name, layer, params, h, clients, records)
    if isinstance(layer, nn.GroupNorm):
        xhat = F.group_norm(h, layer.num_groups, eps=layer.eps)
        folded = xhat.reshape(clients, -1, xhat.shape[1], xhat[0, 0].numel())
        out = folded * params[f"{name}.weight"][:, None, :, None] + params[f"{name}.bias"][:, None, :, None]
        records.append(_Record(name, layer, folded.detach(), out))
        return out.reshape(h.shape)
    if isinstance(layer, nn.ReLU):
        return torch.relu(h)
    if isinstance(layer, nn.MaxPool2d):
        return F.max_pool2d(
            h, layer.kernel_size, layer.stride, layer.padding, layer.dilation, ceil_mode=layer.ceil_mode
        )
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        return F.adaptive_avg_pool2d(h, layer.output_size)
    if isinstance(layer, nn.Flatten):
        return h.flatten(start_dim=1)
    raise TypeError(f"layer {name} is a {type(layer).__name__}")  # unsupported_reason says so first


def _conv_forward(
    name: str, layer: nn.Conv2d, params: Params, h: torch.Tensor, clients: int, records: list[_Record]
) -> torch.Tensor:
    kernel, dilation, padding, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
    assert not isinstance(padding, str)
    u = F.unfold(h, kernel, dilation=dilation, padding=padding, stride=stride)  # (CB, K, L)
    side = [
        (h.shape[2 + i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in (0, 1)
    ]
    u = u.reshape(clients, -1, u.shape[1], u.shape[2])  # (C, B, K, L)
    weight = params[f"{name}.weight"].flatten(start_dim=2)  # (C, Cout, K)
    z = torch.einsum("cok,cbkl->cbol", weight, u) + params[f"{name}.bias"][:, None, :, None]
    records.append(_Record(name, layer, u.detach(), z))
    return z.reshape(-1, z.shape[2], *side)


def _example_grads(record: _Record, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-example ``(weight, bias)`` gradients, or for Linear their ingredients ``(delta, a)``."""
    if isinstance(record.layer, nn.Linear):
        return delta, record.inputs
    if isinstance(record.layer, nn.Conv2d):
        return torch.einsum("cbol,cbkl->cbok", delta, record.inputs), delta.sum(dim=3)
    return (delta * record.inputs).sum(dim=3), delta.sum(dim=3)  # GroupNorm


def _squared_norm(record: _Record, piece: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    first, second = piece
    if isinstance(record.layer, nn.Linear):  # ghost norm: |delta|^2 (|a|^2 + 1)
        return first.pow(2).sum(dim=2) * (second.pow(2).sum(dim=2) + 1.0)
    return first.flatten(start_dim=2).pow(2).sum(dim=2) + second.pow(2).sum(dim=2)


def _clipped_sums(record: _Record, piece: tuple[torch.Tensor, torch.Tensor], factor: torch.Tensor) -> Params:
    first, second = piece
    name, layer = record.name, record.layer
    if isinstance(layer, nn.Linear):
        weighted = first * factor.unsqueeze(2)
        return {
            f"{name}.weight": torch.bmm(weighted.transpose(1, 2), second),
            f"{name}.bias": weighted.sum(1),
        }
    weight = torch.einsum("cb,cb...->c...", factor, first)
    if isinstance(layer, nn.Conv2d):
        weight = weight.reshape(weight.shape[0], *layer.weight.shape)
    return {f"{name}.weight": weight, f"{name}.bias": torch.einsum("cb,cb...->c...", factor, second)}
