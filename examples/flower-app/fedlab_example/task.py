"""The user's own model and data loading: nothing here knows about fedlab."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

TEST_SIZE = 297


class Net(nn.Module):
    """A small MLP for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores."""
        return self.layers(x)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    bunch = load_digits()
    order = np.random.default_rng(0).permutation(len(bunch.target))
    x = torch.tensor(bunch.data[order] / 16.0, dtype=torch.float32)
    return x, torch.tensor(bunch.target[order], dtype=torch.long)


def load_partition(partition_id: int, num_partitions: int, batch_size: int = 32) -> DataLoader:
    """The training digits of partition ``partition_id``."""
    x, y = _digits()
    x, y = x[TEST_SIZE:], y[TEST_SIZE:]
    part = slice(partition_id, None, num_partitions)
    return DataLoader(TensorDataset(x[part], y[part]), batch_size=batch_size, shuffle=True)


def load_test() -> DataLoader:
    """The server's held-out digits."""
    x, y = _digits()
    return DataLoader(TensorDataset(x[:TEST_SIZE], y[:TEST_SIZE]), batch_size=128)


def train(model: nn.Module, loader: DataLoader, epochs: int, lr: float) -> float:
    """Plain SGD; the mean training loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return float(np.mean(losses))


def test(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """Loss and accuracy."""
    model.eval()
    correct, loss, count = 0, 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
            correct += int((out.argmax(1) == y).sum())
            count += len(y)
    return loss / count, correct / count
