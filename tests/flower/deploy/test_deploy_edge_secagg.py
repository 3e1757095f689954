"""A device's budget rule under secure aggregation, on the edge ClientApp handler (no network)."""

from __future__ import annotations

import pandas as pd
import pytest

from fedlab.core.config import config_from_dict
from fedlab.flower.client_privacy import BUDGET_REFUSED
from fedlab.flower.secure_client import SECAGG_STATE
from fedlab.flower.secure_transport import SECAGG
from fedlab.privacy.client_budget import ChargeRow, ClientBudget, ReleaseRow
from fedlab.privacy.skellam import SkellamParams
from fedlab.secagg.encoding import FixedPointCodec

from . import edge_messages
from .conftest import per_round_epsilons, write_partitions
from .edge_messages import RUN_ID, advertise_message, device

task_identity = pytest.fixture(autouse=True)(edge_messages.task_identity)

CONFIG = config_from_dict(
    {
        "run": {"rounds": 3},
        "train": {"batch_size": 32, "local_epochs": 1, "lr": 0.5},
        "dp": {"mode": "dpsgd", "noise_multiplier": 1.0, "max_grad_norm": 2.0, "delta": 1e-5},
        "secagg": {"enabled": True},
    }
)
CODEC = FixedPointCodec.for_sum(bits=32, clip=1.0, max_summands=3)


def test_a_device_over_budget_refuses_to_join_a_secure_round(tmp_path):
    data = write_partitions(tmp_path, 3)[0]
    eps = per_round_epsilons(len(pd.read_csv(data)), 1)
    client, context = device(CONFIG, data, tmp_path / "state", max_epsilon=eps[0] / 2)
    reply = client.secagg(advertise_message(1, CODEC), context)
    assert reply.has_error() and reply.error.code == BUDGET_REFUSED
    assert "refuses round 1" in reply.error.reason
    assert SECAGG_STATE not in context.state.config_records
    with ClientBudget.open(tmp_path / "state" / "budget.sqlite") as budget:
        assert [r.server_round for r in budget.refusals()] == [1] and budget.releases() == []
        assert budget.refusals()[0].planned_epsilon == pytest.approx(eps[0])


def test_a_device_joins_a_secure_round_within_budget_but_never_a_released_one(tmp_path):
    data = write_partitions(tmp_path, 3)[0]
    client, context = device(CONFIG, data, tmp_path / "state")  # max epsilon 0: no limit
    reply = client.secagg(advertise_message(1, CODEC), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert isinstance(reply.content.config_records[SECAGG]["reply"], bytes)
    assert SECAGG_STATE in context.state.config_records  # its secret keys, kept on the device
    with ClientBudget.open(tmp_path / "state" / "budget.sqlite") as budget:
        budget.commit_release(
            ReleaseRow(run_id=RUN_ID, server_round=2, mechanism="dpsgd"),
            ChargeRow(
                run_id=RUN_ID, server_round=2, mechanism="dpsgd", epsilon=2.5,
                params={"noise_multiplier": 1.0, "sample_rate": 0.05, "steps": 18},
            ),
        )  # fmt: skip
    again = client.secagg(advertise_message(2, CODEC), context)
    assert again.has_error() and "refuses round 2: already released" in again.error.reason
    assert SECAGG_STATE not in context.state.config_records


def test_a_distributed_dp_device_needs_the_encoding_at_stage_0(tmp_path):
    data = write_partitions(tmp_path, 3)[0]
    ddp = config_from_dict(
        {
            "run": {"rounds": 3},
            "dp": {"mode": "distributed", "noise_multiplier": 1.0, "delta": 1e-5},
            "secagg": {"enabled": True, "bits": 20},
        }
    )
    client, context = device(ddp, data, tmp_path / "state", max_epsilon=8.0)
    missing = client.secagg(advertise_message(1), context)  # a server that does not say
    assert missing.has_error() and missing.error.code == BUDGET_REFUSED
    assert "Skellam encoding" in missing.error.reason
    params = SkellamParams(clip=1.0, noise_multiplier=1.0, num_clients=3, min_survivors=3, bits=20, dim=650)
    assert not client.secagg(advertise_message(1, params, length=params.padded_dim), context).has_error()
    weak = params.with_noise_multiplier(0.05)  # far too little noise for the device's maximum
    reply = client.secagg(advertise_message(2, weak, length=weak.padded_dim), context)
    assert reply.has_error() and "max epsilon 8" in reply.error.reason
