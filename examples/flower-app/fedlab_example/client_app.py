"""The ClientApp: the user's training loop, with fedlab's two mods (the only fedlab lines)."""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlab.flower import DeviceBudgetMod, clipping_mod
from fedlab_example.task import Net, load_partition, train


def budget_file(context: Context) -> Path:
    """Each simulated device keeps its own budget file (a real device: one fixed path)."""
    out = Path(str(context.run_config["out-dir"]))
    return out / f"device-{context.node_config['partition-id']}-budget.sqlite"


device_budget = DeviceBudgetMod(budget_file, max_epsilon=20.0, delta=1e-5)
app = ClientApp(mods=[device_budget, clipping_mod])  # the budget decides on the clipped reply


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    """Train the received model on this client's digits."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loader = load_partition(
        int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    )
    loss = train(model, loader, int(context.run_config["local-epochs"]), float(msg.content["config"]["lr"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(loader.dataset)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)
