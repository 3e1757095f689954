"""Pre-training without DP on a public split: the checkpoint that ``model.init`` starts a run from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from fedlab.core.config import RunConfig
from fedlab.data.types import ArrayDataset
from fedlab.training.client_runtime import optim_spec
from fedlab.training.local import LocalTrainer, evaluate
from fedlab.training.models import get_weights, model_for, set_weights


@dataclass(frozen=True)
class Pretrained:
    """A pre-trained model: every tensor's array, and its loss and accuracy on a test set."""

    weights: list[np.ndarray]
    test_loss: float
    test_accuracy: float


def pretrain(config: RunConfig, public: ArrayDataset, test: ArrayDataset, *, epochs: int) -> Pretrained:
    """Train the run's model on ``public`` for ``epochs`` epochs without DP; evaluate it on ``test``.

    The model starts as a run's would (``model.init`` or the seeded initialisation), with every
    weight trained (``train.finetune`` does not apply); ``[train]`` sets the optimizer, learning
    rate and batch size. Pure function of its arguments (the batches come from ``run.seed``).

    Raises:
        ValueError: If ``epochs`` is below 1.

    >>> from fedlab.core.config import config_from_dict
    >>> config = config_from_dict({"model": {"kind": "logreg"}, "train": {"batch_size": 4}})
    >>> data = ArrayDataset(np.eye(8, dtype=np.float32), np.arange(8) % 2, num_classes=2)
    >>> result = pretrain(config, data, data, epochs=2)
    >>> [w.shape for w in result.weights], 0.0 <= result.test_accuracy <= 1.0
    ([(2, 8), (2,)], True)
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    full = dataclasses.replace(
        config, train=dataclasses.replace(config.train, finetune="full", local_epochs=epochs)
    )
    model = model_for(full, feature_shape=public.feature_shape, num_classes=public.num_classes)
    start = get_weights(model)
    trainer = LocalTrainer(
        model=model, x=public.x, y=public.y, optim=optim_spec(full), dp=None, device=torch.device("cpu"),
        seed=config.run.seed,
    )  # fmt: skip
    update = trainer.train_round(start, round_seed=config.run.seed)
    weights = [np.add(w, d, dtype=np.float32) for w, d in zip(start, update.update.arrays, strict=True)]
    set_weights(model, weights)
    loss, accuracy = evaluate(model, test.x, test.y, batch_size=config.train.eval_batch_size)
    return Pretrained(weights=weights, test_loss=loss, test_accuracy=accuracy)
