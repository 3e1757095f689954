"""A client stores the steps it took and reports their epsilon, which matches dp_accounting."""

from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedlab.algorithms.federation import round_seed
from fedlab.core.config import load_config
from fedlab.flower.client import FedlabClient, PartitionDataSource, load_history
from fedlab.flower.records import arrays_record, train_report_from_content
from fedlab.training.models import build_model, get_weights

REPO = Path(__file__).resolve().parents[2]


def train_message(weights, round_num):
    content = RecordDict(
        {"arrays": arrays_record(weights), "config": ConfigRecord({"round-seed": round_seed(0, round_num)})}
    )
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def dp_accounting_epsilon(history, delta, orders):
    accountant = dp_accounting.rdp.RdpAccountant(orders)
    for step in history:
        event = dp_accounting.PoissonSampledDpEvent(
            step.sample_rate, dp_accounting.GaussianDpEvent(step.noise_multiplier)
        )
        accountant.compose(event, step.steps)
    return accountant.get_epsilon(delta)


@pytest.fixture(scope="module", autouse=True)
def task_identity():
    """Flower's Message needs the process's task identity, as a SuperNode or ServerApp sets it."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture(scope="module")
def three_rounds(task_identity):
    config = load_config(REPO / "simulations" / "digits-dp.toml", ["run.rounds=3"])
    client = FedlabClient(PartitionDataSource(config))
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 3, "num-partitions": 10},
        state=RecordDict(),
        run_config={},
    )
    model = build_model(
        config.model.kind, feature_shape=(1, 8, 8), num_classes=10, hidden=config.model.hidden
    )
    weights = get_weights(model)
    reports = []
    for r in (1, 2, 3):
        reply = client.train(train_message(weights, r), context)
        report = train_report_from_content(reply.content)
        weights = [w + d for w, d in zip(weights, report.update.arrays, strict=True)]
        reports.append(report)
    return config, context, reports


def test_the_stored_history_is_the_steps_the_client_took(three_rounds):
    # DP-SGD with Poisson rate q = B / n and n // B steps per epoch, from the partition's size.
    config, context, reports = three_rounds
    history = load_history(context.state)
    n, batch = reports[0].update.num_examples, config.train.batch_size
    per_round = config.train.local_epochs * (n // batch)
    assert [r.steps for r in reports] == [per_round] * 3
    assert sum(h.steps for h in history) == 3 * per_round
    assert all(h.sample_rate == pytest.approx(batch / n, rel=1e-12) for h in history)
    assert all(h.noise_multiplier == reports[0].noise_multiplier > 0 for h in history)
    assert reports[0].epsilon < reports[1].epsilon < reports[2].epsilon <= 8.0


def test_reported_epsilon_within_one_percent_of_dp_accounting(three_rounds):
    config, context, reports = three_rounds
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))  # Opacus' default RDP orders
    independent = dp_accounting_epsilon(load_history(context.state), config.dp.delta, orders)
    assert reports[-1].epsilon == pytest.approx(independent, rel=0.01)


def test_trainer_is_built_once_and_reused(three_rounds):
    config, _, _ = three_rounds
    source = PartitionDataSource(config)
    client = FedlabClient(source)
    weights = get_weights(build_model(config.model.kind, feature_shape=(1, 8, 8), num_classes=10, hidden=64))
    context = Context(run_id=1, node_id=2, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    client.train(train_message(weights, 1), context)
    first = client.runtime.trainer(config, source.data(context))
    client.train(train_message(weights, 2), context)
    assert client.runtime.trainer(config, source.data(context)) is first
    assert np.isfinite(first.epsilon(()))


def test_a_pickled_client_is_the_same_instance_in_its_process(three_rounds):
    import pickle

    config, _, _ = three_rounds
    client = FedlabClient(PartitionDataSource(config))
    assert pickle.loads(pickle.dumps(client)) is pickle.loads(pickle.dumps(client))
