"""Sequence models: an LSTM (Opacus' ``DPLSTM``) and a small causal Transformer.

Both read an example as a sequence and predict from its last position: token ids (float32 ids of a
``vocab``-sized vocabulary, embedded) for next-token prediction, or real-valued features for
classification (``(T, F)`` as T steps of F features, an image ``(C, H, W)`` as H rows of ``C * W``,
a vector ``(F,)`` as F steps of one). Every layer with weights is one Opacus computes per-sample
gradients for (``Embedding``, ``Linear``, ``LayerNorm``, ``DPLSTM``'s cells), so Opacus'
``ModuleValidator`` accepts both models unchanged. The Transformer's attention is built from
``Linear`` layers around ``scaled_dot_product_attention`` with a causal mask: position ``t`` sees
positions ``<= t`` only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from opacus.layers import DPLSTM
from torch import nn

_MLP_WIDTH = 4


def sequence_shape(feature_shape: tuple[int, ...], *, vocab: int) -> tuple[int, int]:
    """``(steps, features per step)`` of an example of ``feature_shape`` (features 0: token ids).

    >>> sequence_shape((32,), vocab=256), sequence_shape((1, 8, 8), vocab=0), sequence_shape((5,), vocab=0)
    ((32, 0), (8, 8), (5, 1))
    """
    if vocab:
        if len(feature_shape) != 1:
            raise ValueError(f"token inputs must be one sequence of ids; got feature shape {feature_shape}")
        return feature_shape[0], 0
    if len(feature_shape) == 1:
        return feature_shape[0], 1
    if len(feature_shape) == 2:  # (T, F)
        return feature_shape[0], feature_shape[1]
    if len(feature_shape) == 3:  # (C, H, W)
        return feature_shape[1], feature_shape[0] * feature_shape[2]
    raise ValueError(f"sequence models take (F,), (T, F) or (C, H, W) features; got {feature_shape}")


def _as_steps(x: torch.Tensor, steps: int, features: int) -> torch.Tensor:
    """Real-valued examples as ``(batch, steps, features)``."""
    if x.dim() == 4:  # (B, C, H, W) -> (B, H, C * W)
        x = x.permute(0, 2, 1, 3)
    return x.reshape(x.shape[0], steps, features)


class LstmModel(nn.Module):
    """Embedding (tokens) or raw steps, a ``DPLSTM``, and a linear head on the last step.

    >>> model = LstmModel((8,), num_classes=5, vocab=5, hidden=4, layers=1)
    >>> tuple(model(torch.zeros(2, 8)).shape)
    (2, 5)
    """

    def __init__(
        self, feature_shape: tuple[int, ...], *, num_classes: int, vocab: int, hidden: int, layers: int
    ) -> None:
        super().__init__()
        self.steps, self.features = sequence_shape(feature_shape, vocab=vocab)
        self.embed = nn.Embedding(vocab, hidden) if vocab else None
        self.lstm = DPLSTM(hidden if vocab else self.features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` of the position after the sequence."""
        inputs = self.embed(x.long()) if self.embed is not None else _as_steps(x, self.steps, self.features)
        out, _ = self.lstm(inputs)
        return self.head(out[:, -1])  # type: ignore[no-any-return]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which each position attends to itself and earlier ones.

    >>> attention = CausalSelfAttention(8, heads=2)
    >>> tuple(attention(torch.zeros(3, 5, 8)).shape)
    (3, 5, 8)
    """

    def __init__(self, width: int, *, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over ``x`` of shape ``(batch, steps, width)``."""
        batch, steps, width = x.shape
        q, k, v = (
            t.reshape(batch, steps, self.heads, width // self.heads).transpose(1, 2)
            for t in self.qkv(x).split(width, dim=-1)
        )
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(attended.transpose(1, 2).reshape(batch, steps, width))  # type: ignore[no-any-return]


class Block(nn.Module):
    """A pre-norm Transformer block: causal attention and a GELU MLP, each with a residual."""

    def __init__(self, width: int, *, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads=heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, _MLP_WIDTH * width), nn.GELU(), nn.Linear(_MLP_WIDTH * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus attention, plus the MLP; the shape is kept."""
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))  # type: ignore[no-any-return]


class TransformerModel(nn.Module):
    """Token (or step) and position embeddings, causal blocks, and a linear head on the last position.

    >>> model = TransformerModel((6,), num_classes=7, vocab=7, hidden=8, layers=1, heads=2)
    >>> tuple(model(torch.zeros(2, 6)).shape)
    (2, 7)
    """

    def __init__(
        self,
        feature_shape: tuple[int, ...],
        *,
        num_classes: int,
        vocab: int,
        hidden: int,
        layers: int,
        heads: int,
    ) -> None:
        super().__init__()
        self.steps, self.features = sequence_shape(feature_shape, vocab=vocab)
        self.embed: nn.Module = nn.Embedding(vocab, hidden) if vocab else nn.Linear(self.features, hidden)
        self.tokens = vocab > 0
        self.position = nn.Embedding(self.steps, hidden)
        self.blocks = nn.Sequential(*(Block(hidden, heads=heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` of the position after the sequence."""
        h = self.embed(x.long()) if self.tokens else self.embed(_as_steps(x, self.steps, self.features))
        positions = torch.arange(self.steps, device=x.device).expand(x.shape[0], self.steps)
        h = self.blocks(h + self.position(positions))
        return self.head(self.norm(h[:, -1]))  # type: ignore[no-any-return]


def init_embedding(weight: torch.Tensor, generator: torch.Generator) -> None:
    """Draw an embedding table from N(0, 1/width), from ``generator``."""
    nn.init.normal_(weight, 0.0, 1.0 / math.sqrt(weight.shape[1]), generator=generator)
