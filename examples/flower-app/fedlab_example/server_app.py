"""The ServerApp: Flower's FedAvg, wrapped in fedlab's user-level DP-FedAvg with a privacy ledger."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedlab.flower import FedlabDpFedAvg
from fedlab_example.task import Net, load_test, test

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the rounds; write the ledger, the accuracy and epsilon to out-dir."""
    config = context.run_config
    out = Path(str(config["out-dir"]))
    out.mkdir(parents=True, exist_ok=True)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = Net()
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(model, load_test())
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    strategy = FedlabDpFedAvg(
        FedAvg(fraction_evaluate=0.0),  # evaluate on the server's held-out data only
        noise_multiplier=float(config["noise-multiplier"]),
        clipping_norm=float(config["clipping-norm"]),
        sample_rate=float(config["sample-rate"]),
        population_size=int(config["population-size"]),
        delta=float(config["delta"]),
        client_clipping=True,  # the clients' clipping_mod clips; the server rejects what is over C
        ledger=out / "ledger.sqlite",
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(Net().state_dict()),
        train_config=ConfigRecord({"lr": float(config["lr"])}),
        num_rounds=int(config["num-server-rounds"]),
        evaluate_fn=evaluate,
    )
    torch.save(result.arrays.to_torch_state_dict(), out / "final_model.pt")
    accuracy = {r: float(m["accuracy"]) for r, m in result.evaluate_metrics_serverapp.items()}
    clients = {r: int(m["clients"]) for r, m in result.train_metrics_clientapp.items()}
    rejected = {r: int(m["rejected"]) for r, m in result.train_metrics_clientapp.items()}
    summary = {
        "epsilon": strategy.epsilon,
        "delta": strategy.delta,
        "accuracy": accuracy,
        "clients": clients,
        "rejected": rejected,
    }
    (out / "result.json").write_text(json.dumps(summary))
