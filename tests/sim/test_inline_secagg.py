"""Secure aggregation on the inline backend: the same rounds as the bytes-carrying transport."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedlab.algorithms.runs import run_configured
from fedlab.core.config import RunConfig, config_from_dict
from fedlab.core.metrics import SilentObserver
from fedlab.sim.inline import simulate_inline
from fedlab.training.models import build_model, get_weights
from fedlab.training.recorder import LEDGER_FILE, METRICS_FILE, RunRecorder
from tests.algorithms.secure_local_transport import LocalSecureTransport

NUM_CLIENTS = 12


def config(**sections: dict[str, Any]) -> RunConfig:
    raw: dict[str, Any] = {
        "run": {"name": "inline-secagg", "seed": 3, "rounds": 3},
        "data": {"dataset": "digits", "num_clients": NUM_CLIENTS},
        "model": {"kind": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.5},
        # record_participation: these tests compare who took part, which a run withholds by default.
        "dp": {
            "mode": "distributed",
            "target_epsilon": 8.0,
            "delta": 1e-5,
            "clip_norm": 1.0,
            "record_participation": True,
        },
        "simulation": {"backend": "inline", "workers": 0},
        "secagg": {"enabled": True, "bits": 20, "min_survivors": 0.6, "simulate_dropout": 0.25},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return config_from_dict(raw)


def weights_of(run_dir: Path) -> list[np.ndarray]:
    with np.load(run_dir / "model.npz") as model:
        return [model[k] for k in sorted(model.files, key=lambda k: int(k.split("_")[-1]))]


def ledger(run_dir: Path) -> list[tuple[int, float]]:
    with sqlite3.connect(run_dir / LEDGER_FILE) as db:
        return db.execute(
            "SELECT round, epsilon FROM federation_spend WHERE mechanism = 'skellam-ddp' ORDER BY round"
        ).fetchall()


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


def run_with_bytes_transport(cfg: RunConfig, run_dir: Path) -> None:
    """The same run through the stage handler Flower clients use, every message as bytes."""
    transport = LocalSecureTransport(cfg)
    fed = transport.federated
    model = build_model(
        cfg.model.kind, feature_shape=fed.feature_shape, num_classes=fed.num_classes,
        hidden=cfg.model.hidden, seed=cfg.run.seed,
    )  # fmt: skip
    recorder = RunRecorder(
        run_dir=run_dir, config=cfg, model=model, test_set=fed.test, observer=SilentObserver()
    )
    outcome = run_configured(
        cfg,
        transport=transport,
        recorder=recorder,
        initial_weights=get_weights(model),
        num_clients=NUM_CLIENTS,
    )
    recorder.finish(stopped_because=outcome.stopped_because)


def test_inline_secure_rounds_equal_the_bytes_transport_with_protocol_dropouts(tmp_path: Path) -> None:
    cfg = config()
    simulate_inline(cfg, tmp_path / "inline", SilentObserver())
    run_with_bytes_transport(cfg, tmp_path / "bytes")
    inline, carried = metrics(tmp_path / "inline"), metrics(tmp_path / "bytes")
    # Same cohorts, same protocol dropouts, same survivors, same model, same spend.
    keys = ("sampled", "included", "failures", "neighbours", "threshold", "aborted")
    assert [{k: m.get(k) for k in keys} for m in inline] == [{k: m.get(k) for k in keys} for m in carried]
    assert sum(m["failures"] for m in inline) > 0  # simulate_dropout took clients out
    assert any(m.get("included", 0) < m["sampled"] for m in inline)
    for a, b in zip(weights_of(tmp_path / "inline"), weights_of(tmp_path / "bytes"), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    spent, spent_bytes = ledger(tmp_path / "inline"), ledger(tmp_path / "bytes")
    released = [m["round"] for m in inline if "aborted" not in m]
    assert [r for r, _ in spent] == [r for r, _ in spent_bytes] == released  # aborted rounds spend nothing
    assert [e for _, e in spent] == pytest.approx([e for _, e in spent_bytes], rel=1e-12)


def test_device_dropouts_leave_the_protocol_at_the_masked_input_stage(tmp_path: Path) -> None:
    cfg = config(
        secagg={"simulate_dropout": 0.0, "min_survivors": 0.4},
        simulation={"dropout": 0.25},
        dp={"mode": "none"},
        server={"fraction_train": 1.0},
    )
    simulate_inline(cfg, tmp_path / "run", SilentObserver())
    rounds = metrics(tmp_path / "run")
    assert [r["round"] for r in rounds] == [1, 2, 3]
    released = [r for r in rounds if "aborted" not in r]
    # The devices that dropped never trained, so they sent no masked input; the rest were unmasked.
    assert released and all(r["included"] == r["sampled"] - r["failures"] for r in released)
    assert any(r["failures"] > 0 for r in released)
    assert all(r["clients"] == r["included"] for r in released)
    # Too many dropouts around one survivor abort the round cleanly: a reason, no model update.
    for r in rounds:
        if "aborted" in r:
            assert r["abort_reason"] and r["clients"] == 0


def test_no_secret_state_outlives_its_round() -> None:
    from fedlab.algorithms.secure_messages import StageRequest
    from fedlab.data.federated import build_federated_data
    from fedlab.secagg.errors import Stage
    from fedlab.sim.devices import profiles_from_config
    from fedlab.sim.inline import InlineTransport
    from fedlab.sim.secure_inline import InlineSecureTransport
    from fedlab.sim.worker import ClientService
    from tests.algorithms.test_secure_fedavg_rounds import MemoryRecorder

    # Dropouts at random stages, and a high bar for survivors: some rounds abort mid-protocol.
    cfg = config(
        run={"rounds": 6},
        server={"fraction_train": 0.6},
        secagg={"simulate_dropout": 0.3, "min_survivors": 0.75},
    )
    data = build_federated_data(cfg.data, seed=cfg.run.seed)
    profiles = profiles_from_config(cfg.simulation, num_clients=data.num_clients, seed=cfg.run.seed)
    inline = InlineTransport(cfg, data, service=ClientService(cfg, data), pool=None, profiles=profiles)
    held: list[tuple[Stage, int, int]] = []

    class Watched(InlineSecureTransport):
        def stage(self, request: StageRequest) -> Any:
            replies = super().stage(request)
            held.append((request.stage, self.held_states, len(replies.replies)))
            return replies

    secure = Watched(cfg, inline)
    model = build_model(
        "logreg", feature_shape=data.feature_shape, num_classes=data.num_classes, hidden=8, seed=3
    )
    recorder = MemoryRecorder()
    run_configured(
        cfg, transport=secure, recorder=recorder, initial_weights=get_weights(model), num_clients=NUM_CLIENTS
    )
    aborted = [round_num for round_num, _, _, extra, _ in recorder.released if "aborted" in extra]
    assert aborted and aborted[0] < 6  # a round aborted mid-protocol and another round followed
    # A new round starts from nothing: after stage 0 exactly the clients that advertised hold keys,
    # whatever an aborted round left behind; after an unmask stage nobody holds anything.
    assert all(count == replied for stage, count, replied in held if stage == Stage.ADVERTISE_KEYS)
    assert all(count == 0 for stage, count, _ in held if stage == Stage.UNMASK)


def test_plain_secure_rounds_report_how_many_values_the_clients_clipped(tmp_path: Path) -> None:
    # A clip range far below the deltas clips most coordinates; an ample one clips none. The count
    # reaches the server only as one more slot of the secure sum, and both transports agree on it.
    tight = config(
        dp={"mode": "none"},
        secagg={"clip_range": 1e-4, "bits": 32, "simulate_dropout": 0.25},
        run={"rounds": 2},
    )
    simulate_inline(tight, tmp_path / "tight", SilentObserver())
    run_with_bytes_transport(tight, tmp_path / "bytes")
    ample = config(dp={"mode": "none"}, secagg={"clip_range": 10.0, "bits": 32}, run={"rounds": 2})
    simulate_inline(ample, tmp_path / "ample", SilentObserver())
    dim = sum(w.size for w in weights_of(tmp_path / "ample"))
    tight_rounds, ample_rounds = metrics(tmp_path / "tight"), metrics(tmp_path / "ample")
    assert [m["clipped_values"] for m in tight_rounds] == [
        m["clipped_values"] for m in metrics(tmp_path / "bytes")
    ]
    for m in tight_rounds:
        assert m["included"] * dim // 4 < m["clipped_values"] <= m["included"] * dim
    assert [m["clipped_values"] for m in ample_rounds] == [0, 0]


def test_example_weighted_secure_fedavg_trains_the_plain_fedavg_model(tmp_path: Path) -> None:
    # Unequal clients (Dirichlet split), every client sampled, no dropouts, a clip range the deltas
    # never reach and a weight cap above every client's size: SecAgg+ weighted by examples must
    # give plain FedAvg's model up to the fixed-point quantization; equal weights must not.
    sections: dict[str, dict[str, Any]] = {
        "run": {"rounds": 2},
        "data": {"partitioner": "dirichlet"},
        "dp": {"mode": "none"},
        "server": {"fraction_train": 1.0},
        "secagg": {"clip_range": 4.0, "bits": 40, "simulate_dropout": 0.0, "max_weight": 2000},
    }
    simulate_inline(config(**sections), tmp_path / "secure", SilentObserver())
    plain = {**sections, "secagg": {"enabled": False}}
    simulate_inline(config(**plain), tmp_path / "plain", SilentObserver())
    uniform = {**sections, "secagg": {**sections["secagg"], "weighting": "uniform"}}
    simulate_inline(config(**uniform), tmp_path / "uniform", SilentObserver())
    secure, reference = weights_of(tmp_path / "secure"), weights_of(tmp_path / "plain")
    equal = weights_of(tmp_path / "uniform")
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(secure, reference, strict=True)) < 1e-5
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(equal, reference, strict=True)) > 1e-3
    sizes_differ = [m["denominator"] for m in metrics(tmp_path / "secure")]
    assert all(0.0 < d < NUM_CLIENTS for d in sizes_differ)  # sum of min(n_k, cap) / cap
    assert [m["denominator"] for m in metrics(tmp_path / "uniform")] == [NUM_CLIENTS, NUM_CLIENTS]
