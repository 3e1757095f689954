"""The README's edge distributed-DP flow, in process: real EdgeClients under full SecAgg+ rounds.

Three devices, each with its own data CSV and budget directory and ``--max-epsilon 8``, answer every
SecAgg+ stage as ``train.secagg`` Messages; the server side is fedlab's own secure FedAvg loop with
``dp.mode = "distributed"``, ``target_epsilon = 8`` and q = 1. Every device must train every planned
round, hold one ``skellam-ddp`` charge per round whose epsilon equals the server ledger's, and refuse
one round more.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from fedlab.algorithms.runs import run_configured, secure_settings
from fedlab.algorithms.secure_fedavg import secure_round
from fedlab.algorithms.secure_messages import MaskedInputMessage, StageReplies, StageRequest
from fedlab.core.config import config_from_dict
from fedlab.flower.client_privacy import BUDGET_REFUSED
from fedlab.privacy.client_budget import ClientBudget
from fedlab.privacy.skellam import SkellamParams
from fedlab.secagg.errors import Stage
from tests.algorithms.secure_local_transport import MemoryRecorder

from . import edge_messages
from .conftest import write_partitions
from .edge_messages import EdgeSecureTransport, device, digits_weights

task_identity = pytest.fixture(autouse=True)(edge_messages.task_identity)

ROUNDS = 3
CONFIG = config_from_dict(
    {
        "run": {"rounds": ROUNDS, "seed": 0},
        "model": {"kind": "logreg"},
        "train": {"batch_size": 32, "local_epochs": 1, "lr": 0.5},
        "dp": {"mode": "distributed", "target_epsilon": 8.0, "delta": 1e-5, "clip_norm": 0.5},
        "server": {"fraction_train": 1.0},
        "secagg": {"enabled": True, "bits": 20},
    }
)


def test_edge_devices_train_every_distributed_dp_round_within_max_epsilon_8(tmp_path):
    data = write_partitions(tmp_path, 3)
    devices = {
        f"pi-{i}": device(CONFIG, path, tmp_path / f"state-{i}", node_id=i, max_epsilon=8.0)
        for i, path in enumerate(data, start=1)
    }
    transport = EdgeSecureTransport(devices)
    recorder = MemoryRecorder()
    weights = digits_weights(CONFIG)
    outcome = run_configured(
        CONFIG, transport=transport, recorder=recorder, initial_weights=weights, num_clients=len(devices),
        secure_noise=True,
    )  # fmt: skip
    assert transport.refusals == [], transport.refusals
    assert outcome.stopped_because == "completed all rounds"
    assert [r[0] for r in recorder.released] == list(range(1, ROUNDS + 1))
    assert not any("aborted" in r[3] for r in recorder.released)
    spent = [f for r in recorder.released for f in r[4]]
    ledger = [f.epsilon for f in spent if f.mechanism == "skellam-ddp"]
    assert len(ledger) == ROUNDS and ledger[-1] <= 8.0
    for i in range(1, len(devices) + 1):
        with ClientBudget.open(tmp_path / f"state-{i}" / "budget.sqlite") as budget:
            charges = budget.charges()
            assert [(c.server_round, c.mechanism) for c in charges] == [
                (r, "skellam-ddp") for r in range(1, ROUNDS + 1)
            ]
            assert [c.epsilon for c in charges] == pytest.approx(ledger, rel=1e-9)
            assert charges[-1].epsilon <= 8.0

    # One round more: every device refuses it at the key-advertising stage (over its budget).
    dim = int(sum(np.asarray(w).size for w in weights))
    settings = secure_settings(CONFIG, num_clients=len(devices), dim=dim)
    extra = secure_round(
        transport, settings, round_num=ROUNDS + 1, sampled=list(devices), weights=weights, source=os.urandom
    )
    assert extra.mean_delta is None
    refused = {(cid, stage, code) for r, stage, cid, code, _ in transport.refusals if r == ROUNDS + 1}
    assert refused == {(cid, Stage.ADVERTISE_KEYS, BUDGET_REFUSED) for cid in devices}
    for i in range(1, len(devices) + 1):
        with ClientBudget.open(tmp_path / f"state-{i}" / "budget.sqlite") as budget:
            assert len(budget.charges()) == ROUNDS
            assert [r.server_round for r in budget.refusals()] == [ROUNDS + 1]
            assert budget.refusals()[0].planned_epsilon > 8.0


class SwappingServer(EdgeSecureTransport):
    """Announces the calibrated encoding at stage 0, then asks for a far less noisy one at stage 2."""

    def stage(self, request: StageRequest) -> StageReplies:
        if request.stage == Stage.MASKED_INPUT:
            swapped = {
                cid: MaskedInputMessage(m.delivery, m.encoding.with_noise_multiplier(0.05))
                for cid, m in request.messages.items()
                if isinstance(m, MaskedInputMessage) and isinstance(m.encoding, SkellamParams)
            }
            request = dataclasses.replace(request, messages=swapped)
        return super().stage(request)


def test_a_device_refuses_a_stage_2_encoding_other_than_the_announced_one(tmp_path):
    data = write_partitions(tmp_path, 3)
    devices = {
        f"pi-{i}": device(CONFIG, path, tmp_path / f"state-{i}", node_id=i) for i, path in enumerate(data, 1)
    }  # no maximum: only the switch is refused
    transport = SwappingServer(devices)
    weights = digits_weights(CONFIG)
    dim = int(sum(np.asarray(w).size for w in weights))
    settings = secure_settings(CONFIG, num_clients=len(devices), dim=dim)
    outcome = secure_round(
        transport, settings, round_num=1, sampled=list(devices), weights=weights, source=os.urandom
    )
    assert outcome.mean_delta is None
    assert {(cid, stage) for _, stage, cid, _, _ in transport.refusals} == {
        (cid, Stage.MASKED_INPUT) for cid in devices
    }
    assert all("not the one stage 0 announced" in reason for *_, reason in transport.refusals)
    for i in range(1, len(devices) + 1):
        with ClientBudget.open(tmp_path / f"state-{i}" / "budget.sqlite") as budget:
            assert budget.releases() == []  # nothing was masked, nothing left the device
