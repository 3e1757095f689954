"""F1: the server replays a client's DP-SGD from everything it knows and must fail.

The adversary is the server (or anyone holding ``config.json``): it knows the config and its run
seed, the round seed it sent, the client's id, the global weights, the client's accountant history
and, in the worst case, the client's data. If the client's Poisson sampling and noise were derived
from those, the server could rerun the client's training and subtract the noise (epsilon infinite
against the server). Outside ``fedlab simulate`` they come from a secret the client never sends.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedlab.algorithms.federation import round_seed
from fedlab.algorithms.runs import secure_settings
from fedlab.algorithms.secure_fedavg import secure_round
from fedlab.core.config import config_from_dict
from fedlab.data.federated import build_federated_data
from fedlab.flower.client import FedlabClient, PartitionDataSource
from fedlab.flower.edge import EdgeClient, EdgeDataSource
from fedlab.flower.records import arrays_record, train_report_from_content
from fedlab.secagg.crypto import seeded_source
from fedlab.training.client_runtime import ClientRuntime
from fedlab.training.models import build_model, get_weights

ROUND = 1


@pytest.fixture(autouse=True)
def task_identity():
    """Flower's Message needs the process's task identity, as a SuperNode sets it."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def dpsgd_config(**extra):
    # Poisson batches (q = 32 / n) and noise z = 1: both random draws the server must not predict.
    raw = {
        "run": {"seed": 0, "rounds": 3},
        "data": {"dataset": "digits", "num_clients": 4},
        "model": {"kind": "logreg"},
        "train": {"batch_size": 32, "local_epochs": 1, "lr": 0.5},
        "dp": {"mode": "dpsgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0},
    }
    for name, values in extra.items():
        raw[name] = {**raw.get(name, {}), **values}
    return config_from_dict(raw)


def initial_weights(config, feature_shape=(1, 8, 8)):
    model = build_model(config.model.kind, feature_shape=feature_shape, num_classes=10, seed=0)
    return get_weights(model)


def train_message(weights, seed):
    config = ConfigRecord({"round-seed": seed, "server-round": ROUND})
    content = RecordDict({"arrays": arrays_record(weights), "config": config})
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def server_replay(config, data, weights, seed):
    """What the server computes: the client's own training, from what the server knows."""
    report, _ = ClientRuntime().train(config, data, weights, history=(), round_seed=seed)
    return np.concatenate([a.ravel() for a in report.update.arrays])


def flat(report):
    return np.concatenate([a.ravel() for a in report.update.arrays])


def assert_not_replayed(client_update, replayed):
    gap = float(np.max(np.abs(client_update - replayed)))
    # With the noise seeded from what the server knows, the replay matched to ~1e-8.
    assert gap > 1e-3, f"the server rebuilt the client's update to {gap:.2e}: its noise is not secret"


def test_the_deployed_client_app_update_cannot_be_replayed_by_the_server():
    config = dpsgd_config()
    source = PartitionDataSource(config)
    client = FedlabClient(source)  # the ClientApp of `flwr run` and of devices: not `fedlab simulate`
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 2, "num-partitions": 4}, state=RecordDict(),
        run_config={},
    )  # fmt: skip
    weights, seed = initial_weights(config), round_seed(config.run.seed, ROUND)
    reply = client.train(train_message(weights, seed), context)
    update = flat(train_report_from_content(reply.content))
    assert_not_replayed(update, server_replay(config, source.data(context), weights, seed))


def test_the_edge_client_update_cannot_be_replayed_by_the_server(tmp_path):
    config = dpsgd_config()
    fed = build_federated_data(config.data, seed=0)
    part = fed.client(1)
    table = tmp_path / "device.csv"
    header = ",".join(f"f{i}" for i in range(64)) + ",label\n"
    rows = "\n".join(
        ",".join(f"{v:.6f}" for v in x.ravel()) + f",{int(label)}"
        for x, label in zip(part.x, part.y, strict=True)
    )
    table.write_text(header + rows + "\n")
    node_config = {
        "data-path": str(table), "state-dir": str(tmp_path / "state"), "device-id": "pi-1",
        "max-epsilon": 0.0, "feature-shape": "1,8,8", "num-classes": 10,
    }  # fmt: skip
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
    client = EdgeClient(EdgeDataSource(lambda _ctx: config))
    weights, seed = initial_weights(config), round_seed(config.run.seed, ROUND)
    reply = client.train(train_message(weights, seed), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    update = flat(train_report_from_content(reply.content))
    data = EdgeDataSource(lambda _ctx: config).data(context)
    assert_not_replayed(update, server_replay(config, data, weights, seed))


def test_dpsgd_under_secure_aggregation_cannot_be_replayed_by_the_server():
    from tests.algorithms.secure_local_transport import LocalSecureTransport

    config = dpsgd_config(secagg={"enabled": True, "bits": 32, "clip_range": 1.0, "weighting": "uniform"})
    transport = LocalSecureTransport(config, seeded=False)  # devices: keys, masks and noise unseeded
    weights = initial_weights(config)
    settings = secure_settings(config, num_clients=4, dim=sum(w.size for w in weights))
    sampled = transport.available_clients()
    outcome = secure_round(
        transport, settings, round_num=ROUND, sampled=sampled, weights=weights,
        source=seeded_source(b"server"),
    )  # fmt: skip
    assert outcome.mean_delta is not None
    secure_mean = np.concatenate([a.ravel() for a in outcome.mean_delta])
    seed = round_seed(config.run.seed, ROUND)
    replayed = [server_replay(config, transport.data(cid), weights, seed) for cid in sampled]
    # The server knows every input but the noise: replaying all clients gives it the noiseless sum.
    assert_not_replayed(secure_mean, np.mean(replayed, axis=0))


def test_a_dp_client_refuses_to_evaluate_models_on_its_local_data():
    # A server could query the local loss of models of its choice: a membership oracle.
    from fedlab.flower.client import EVALUATE_REFUSED

    config = dpsgd_config()
    client = FedlabClient(PartitionDataSource(config))
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 4}, state=RecordDict(),
        run_config={},
    )  # fmt: skip
    content = RecordDict({"arrays": arrays_record(initial_weights(config)), "config": ConfigRecord({})})
    msg = Message(content=content, dst_node_id=1, message_type=MessageType.EVALUATE)
    reply = client.evaluate(msg, context)
    assert reply.has_error() and reply.error.code == EVALUATE_REFUSED
    plain = FedlabClient(PartitionDataSource(config.replace(dp=config.dp.__class__(mode="none"))))
    answered = plain.evaluate(msg, context)
    assert not answered.has_error() and "loss" in answered.content.metric_records["metrics"]
