"""A device's budget rule under secure aggregation, on the edge ClientApp handler (no network)."""

from __future__ import annotations

import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedlab.algorithms.secure_fedavg import SetupMessage, StageRequest
from fedlab.core.config import RunConfig, config_from_dict
from fedlab.flower.client import SECAGG_STATE
from fedlab.flower.edge import BUDGET_REFUSED, EdgeClient, EdgeDataSource
from fedlab.flower.secure_transport import MESSAGE_TYPE, SECAGG, encode_call
from fedlab.privacy.client_budget import ClientBudget, SpendRow
from fedlab.secagg.errors import Stage
from fedlab.secagg.messages import SecAggParams

from .conftest import per_round_epsilons, write_partitions

CONFIG = config_from_dict(
    {
        "run": {"rounds": 3},
        "train": {"batch_size": 32, "local_epochs": 1, "lr": 0.5},
        "dp": {"mode": "dpsgd", "noise_multiplier": 1.0, "max_grad_norm": 2.0, "delta": 1e-5},
        "secagg": {"enabled": True},
    }
)
RUN_ID = 7


@pytest.fixture(autouse=True)
def task_identity():
    """Flower's Message needs the process's task identity, as a SuperNode sets it."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def config_of(_: Context) -> RunConfig:
    return CONFIG


def advertise_message(round_num: int) -> Message:
    params = SecAggParams(round_num, 10, 2**32, 2, 2, bytes(32), 3)
    request = StageRequest(round_num, 5, Stage.ADVERTISE_KEYS, {})
    content = RecordDict({SECAGG: ConfigRecord({"call": encode_call(request, SetupMessage(params, 0))})})
    return Message(content=content, dst_node_id=1, message_type=MESSAGE_TYPE)


def device(tmp_path, max_epsilon: float) -> tuple[EdgeClient, Context]:
    data = write_partitions(tmp_path, 3)[0]
    node_config = {
        "data-path": str(data),
        "state-dir": str(tmp_path / "state"),
        "device-id": "pi-1",
        "max-epsilon": max_epsilon,
    }
    context = Context(run_id=RUN_ID, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
    return EdgeClient(EdgeDataSource(config_of)), context


def test_a_device_over_budget_refuses_to_join_a_secure_round(tmp_path):
    eps = per_round_epsilons(len(pd.read_csv(write_partitions(tmp_path, 3)[0])), 1)
    client, context = device(tmp_path, max_epsilon=eps[0] / 2)
    reply = client.secagg(advertise_message(1), context)
    assert reply.has_error() and reply.error.code == BUDGET_REFUSED
    assert "refuses round 1" in reply.error.reason
    assert SECAGG_STATE not in context.state.config_records
    with ClientBudget.open(tmp_path / "state" / "budget.sqlite") as budget:
        assert [r.server_round for r in budget.refusals()] == [1] and budget.spends() == []


def test_a_device_joins_a_secure_round_within_budget_but_never_a_released_one(tmp_path):
    client, context = device(tmp_path, max_epsilon=0.0)  # 0: no limit
    reply = client.secagg(advertise_message(1), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert isinstance(reply.content.config_records[SECAGG]["reply"], bytes)
    assert SECAGG_STATE in context.state.config_records  # its secret keys, kept on the device
    with ClientBudget.open(tmp_path / "state" / "budget.sqlite") as budget:
        row = SpendRow(
            run_id=RUN_ID, server_round=2, noise_multiplier=1.0, sample_rate=0.05, steps=18, epsilon=2.5
        )
        budget.commit_spend(row)
    again = client.secagg(advertise_message(2), context)
    assert again.has_error() and "already released round 2" in again.error.reason
