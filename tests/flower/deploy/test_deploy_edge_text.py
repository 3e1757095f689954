"""A deployed device trains the Transformer on its own text, from `fedlab data split`'s file (no network)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedlab.core.config import config_from_dict
from fedlab.data.export import write_client_files
from fedlab.data.federated import build_federated_data
from fedlab.flower.records import ARRAYS, CONFIG
from fedlab.training.models import get_weights, model_for

from . import edge_messages
from .edge_messages import device

task_identity = pytest.fixture(autouse=True)(edge_messages.task_identity)

TEXT = config_from_dict(
    {
        "run": {"rounds": 2},
        "data": {"dataset": "stdlib", "num_clients": 2, "context_length": 16, "text_max_bytes": 2000},
        "model": {"kind": "transformer", "hidden": 16, "heads": 2},
        "train": {"batch_size": 16, "lr": 0.01, "optimizer": "adam", "finetune": "lora", "lora_rank": 2},
        "dp": {"mode": "dpsgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5},
    }
)


def test_a_device_fine_tunes_lora_adapters_on_its_own_text_file(tmp_path):
    data = build_federated_data(TEXT.data, seed=0)
    path = write_client_files(data, tmp_path / "split")[0]
    weights = get_weights(model_for(TEXT, feature_shape=(16,), num_classes=256))
    round_config = ConfigRecord({"round-seed": 11, "server-round": 1})
    message = Message(
        content=RecordDict({ARRAYS: ArrayRecord(weights), CONFIG: round_config}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )
    client, context = device(
        TEXT, path, tmp_path / "state", max_epsilon=50.0, num_classes=256, feature_shape="16"
    )
    reply = client.train(message, context)
    assert not reply.has_error(), reply.error
    update = [a.numpy() for a in reply.content.array_records[ARRAYS].values()]
    assert [u.shape for u in update] == [w.shape for w in weights]  # the adapters only
    assert any(np.abs(u).sum() > 0 for u in update)
