"""A Flower user's app with fedlab's SecAgg+ on Flower's simulation engine: ``python -m ... OUT``.

The ClientApp is the user's (named numpy arrays; its "training" adds a step that depends only on
its partition, so the secure mean has a known answer) with ``SecAggMod``; the ServerApp's ``main``
calls ``SecAggWorkflow`` and writes the result to ``OUT/result.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedlab.flower import SecAggMod, SecAggWorkflow

NODES = 4
ROUNDS = 2


def step_of(partition: int) -> dict[str, np.ndarray]:
    """What partition ``partition`` adds to the model every round."""
    return {
        "w": np.array([0.01 * (partition + 1), -0.02], dtype=np.float32),
        "b": np.array([0.05 * partition]),
    }


def initial() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32)), "b": Array(np.array([1.0]))})


client_app = ClientApp(mods=[SecAggMod()])


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    step = step_of(int(context.node_config["partition-id"]))
    new = ArrayRecord({k: Array(np.asarray(a.numpy() + step[k])) for k, a in arrays.items()})
    metrics = MetricRecord({"num-examples": 10, "private-loss": 0.5})
    return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)


def server_app(out: Path) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result = SecAggWorkflow(num_rounds=ROUNDS, min_nodes=NODES, timeout=120, train_config={"lr": 0.1})(
            grid, initial()
        )
        summary = {
            "arrays": {k: a.numpy().tolist() for k, a in result.arrays.items()},
            "dtypes": {k: str(a.numpy().dtype) for k, a in result.arrays.items()},
            "released": result.rounds_released,
            "aborted": result.rounds_aborted,
            "history": [dict(row) for row in result.history],
        }
        (out / "result.json").write_text(json.dumps(summary))

    return app


if __name__ == "__main__":
    target = Path(sys.argv[1])
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(
        server_app=server_app(target),
        client_app=client_app,
        num_supernodes=NODES,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "include_dashboard": False},
        },
    )
