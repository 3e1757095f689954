"""The ``[data]``, ``[model]`` and ``[train]`` sections of a run config: what is learned, and how.

Parsed and checked like every section (:mod:`fedlab.core.config` builds them); each bad value is a
:class:`~fedlab.core.errors.ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedlab.core.choices import (
    DATASETS,
    FINETUNE_MODES,
    MODELS,
    OPTIMIZERS,
    PARTITIONERS,
    TEXT_LEVELS,
    ModelKind,
    check_choice,
    check_min,
    check_open_unit,
    config_error,
    path_exists,
)


@dataclass(frozen=True)
class DataSection:
    """Which data set, how it is split among clients and held out for testing.

    ``text`` (a folder, ``path``) and ``stdlib`` (the running Python's standard library source)
    are split naturally, a client per file or subfolder (module or package): each example is
    ``context_length`` tokens (``text_level``: bytes or characters) labelled with the next one,
    a window every ``text_stride`` tokens over at most ``text_max_bytes`` bytes per client.
    ``hub``: ``hub_name`` through Flower Datasets (:mod:`fedlab.data.hub`).
    """

    dataset: str = "digits"
    path: str = ""
    label_column: str = "label"
    partitioner: str = "iid"
    num_clients: int = 10
    dirichlet_alpha: float = 0.5
    shards_per_client: int = 2
    min_partition_size: int = 10
    test_fraction: float = 0.2
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0
    synthetic_mean_samples: int = 100
    context_length: int = 32
    text_stride: int = 16
    text_level: str = "byte"
    text_max_bytes: int = 20_000
    hub_name: str = ""
    hub_split: str = "train"
    hub_test_split: str = "test"
    hub_feature: str = "image"
    hub_label: str = "label"

    def __post_init__(self) -> None:
        check_choice("data.dataset", self.dataset, DATASETS)
        check_choice("data.partitioner", self.partitioner, PARTITIONERS)
        check_min("data.num_clients", self.num_clients, 1)
        check_min("data.dirichlet_alpha", self.dirichlet_alpha, 0.0, inclusive=False)
        check_min("data.shards_per_client", self.shards_per_client, 1)
        check_min("data.min_partition_size", self.min_partition_size, 1)
        check_open_unit("data.test_fraction", self.test_fraction)
        check_min("data.synthetic_alpha", self.synthetic_alpha, 0.0)
        check_min("data.synthetic_beta", self.synthetic_beta, 0.0)
        check_min("data.synthetic_mean_samples", self.synthetic_mean_samples, 1)
        check_min("data.context_length", self.context_length, 1)
        check_min("data.text_stride", self.text_stride, 1)
        check_choice("data.text_level", self.text_level, TEXT_LEVELS)
        check_min("data.text_max_bytes", self.text_max_bytes, 2)
        if self.dataset == "hub" and not self.hub_name:
            raise config_error("data.hub_name", "required when data.dataset = 'hub'")
        if self.dataset in ("files", "text"):
            if not self.path:
                raise config_error("data.path", f"required when data.dataset = {self.dataset!r}")
            if not path_exists(self.path):
                raise config_error("data.path", f"does not exist: {self.path[:200]}")


@dataclass(frozen=True)
class ModelSection:
    """The neural network every client trains.

    ``hidden`` is the width of the hidden layers (the LSTM's state, the Transformer's model
    width); ``layers`` the LSTM's stacked layers or the Transformer's blocks; ``heads`` the
    Transformer's attention heads (``hidden`` must be a multiple of it); ``init`` a checkpoint
    to start from (:mod:`fedlab.training.finetune`; empty: a seeded initialisation).
    """

    kind: ModelKind = ModelKind.CNN
    hidden: int = 64
    layers: int = 1
    heads: int = 4
    init: str = ""

    def __post_init__(self) -> None:
        check_choice("model.kind", self.kind, MODELS)
        object.__setattr__(self, "kind", ModelKind(self.kind))  # the TOML string, resolved
        check_min("model.hidden", self.hidden, 1)
        check_min("model.layers", self.layers, 1)
        check_min("model.heads", self.heads, 1)
        if self.init and not path_exists(self.init):
            raise config_error("model.init", f"does not exist: {self.init[:200]}")
        if self.kind == ModelKind.TRANSFORMER and self.hidden % self.heads:
            raise config_error(
                "model.hidden", f"must be a multiple of model.heads ({self.heads}); got {self.hidden}"
            )


@dataclass(frozen=True)
class TrainSection:
    """Local training on each client.

    ``finetune``: ``full`` trains every weight; ``lora`` only low-rank adapters of rank
    ``lora_rank`` on every ``Linear`` layer (:mod:`fedlab.training.finetune`).
    """

    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    optimizer: str = "sgd"
    device: str = "auto"
    eval_batch_size: int = 512
    finetune: str = "full"
    lora_rank: int = 4

    def __post_init__(self) -> None:
        check_min("train.local_epochs", self.local_epochs, 1)
        check_min("train.batch_size", self.batch_size, 1)
        check_min("train.lr", self.lr, 0.0, inclusive=False)
        if not 0.0 <= self.momentum < 1.0:
            raise config_error("train.momentum", f"must be in [0, 1); got {self.momentum!r}")
        check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise config_error("train.device", f"must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        check_min("train.eval_batch_size", self.eval_batch_size, 1)
        check_choice("train.finetune", self.finetune, FINETUNE_MODES)
        check_min("train.lora_rank", self.lora_rank, 1)
