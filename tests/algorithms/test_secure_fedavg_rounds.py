"""Secure FedAvg rounds on digits with real clients: sums, dropouts at every stage, aborts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from fedlab.algorithms.federation import round_seed
from fedlab.algorithms.runs import secure_settings
from fedlab.algorithms.secure_fedavg import fixed_point_codec, secure_round
from fedlab.algorithms.secure_loop import run_secure_fedavg
from fedlab.algorithms.secure_messages import MaskedReply, StageCall
from fedlab.core.config import RunConfig, config_from_dict
from fedlab.core.errors import ConfigError
from fedlab.secagg.crypto import seeded_source
from fedlab.secagg.errors import ProtocolError, Stage
from fedlab.secagg.messages import UnmaskRequest
from fedlab.training.client_runtime import ClientRuntime
from fedlab.training.models import build_model, get_weights

from .secure_local_transport import LocalSecureTransport, MemoryRecorder

NUM_CLIENTS = 6


def make_config(**sections: Mapping[str, Any]) -> RunConfig:
    raw: dict[str, Any] = {
        "run": {"name": "secagg-test", "seed": 3, "rounds": 2},
        "data": {"dataset": "digits", "num_clients": NUM_CLIENTS},
        "model": {"kind": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.1},
        # Equal weights, so that the secure mean is compared with the plain mean of the deltas
        # (example weighting against plain FedAvg: tests/sim/test_inline_secagg.py).
        "secagg": {
            "enabled": True,
            "bits": 32,
            "clip_range": 1.0,
            "min_survivors": 0.5,
            "weighting": "uniform",
        },
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return config_from_dict(raw)


def initial_weights(transport: LocalSecureTransport) -> list[np.ndarray]:
    fed = transport.federated
    model = build_model(
        "logreg", feature_shape=fed.feature_shape, num_classes=fed.num_classes, hidden=64, seed=3
    )
    return get_weights(model)


def plain_deltas(
    config: RunConfig,
    transport: LocalSecureTransport,
    weights: Sequence[np.ndarray],
    round_num: int,
    ids: Sequence[str],
) -> dict[str, list[np.ndarray]]:
    """The deltas the same clients compute without secure aggregation (fresh runtime, same seeds)."""
    runtime = ClientRuntime()
    out = {}
    for cid in ids:
        report, _ = runtime.train(
            config,
            transport.data(cid),
            weights,
            history=(),
            round_seed=round_seed(config.run.seed, round_num),
        )
        out[cid] = [np.asarray(a, dtype=np.float64) for a in report.update.arrays]
    return out


def plain_mean(deltas: Mapping[str, list[np.ndarray]], ids: Sequence[str]) -> list[np.ndarray]:
    return [np.mean([deltas[c][i] for c in ids], axis=0) for i in range(len(next(iter(deltas.values()))))]


def step_bound(config: RunConfig, sampled: int) -> float:
    """Per-coordinate bound on |secure mean - plain mean|: one quantization step (1 / scale)."""
    settings = secure_settings(config, num_clients=NUM_CLIENTS, dim=650)
    codec = fixed_point_codec(bits=settings.bits, clip=settings.clip_range, max_summands=sampled)
    return 1.0 / codec.scale


def run_one_round(
    config: RunConfig, dropouts: Mapping[Stage, set[str]] | None = None
) -> tuple[LocalSecureTransport, list[np.ndarray], Any]:
    transport = LocalSecureTransport(config, dropouts={1: dropouts or {}})
    weights = initial_weights(transport)
    settings = secure_settings(config, num_clients=NUM_CLIENTS, dim=650)
    sampled = transport.available_clients()
    outcome = secure_round(
        transport, settings, round_num=1, sampled=sampled, weights=weights, source=seeded_source(b"server")
    )
    return transport, weights, outcome


def test_secure_mean_equals_plain_fedavg_within_quantization() -> None:
    config = make_config()
    transport, weights, outcome = run_one_round(config)
    assert outcome.mean_delta is not None, outcome.extra
    ids = transport.available_clients()
    expected = plain_mean(plain_deltas(config, transport, weights, 1, ids), ids)
    bound = step_bound(config, len(ids))
    for got, want in zip(outcome.mean_delta, expected, strict=True):
        assert np.max(np.abs(got - want)) <= bound + 1e-12
        assert np.max(np.abs(want)) > 100 * bound  # the comparison is not vacuous
    assert outcome.extra["included"] == NUM_CLIENTS
    assert outcome.extra["denominator"] == NUM_CLIENTS


@pytest.mark.parametrize("stage", list(Stage))
def test_one_dropout_at_each_stage_is_tolerated(stage: Stage) -> None:
    config = make_config()
    transport, weights, outcome = run_one_round(config, {stage: {"2"}})
    assert outcome.mean_delta is not None, outcome.extra
    ids = transport.available_clients()
    # A client lost at unmasking already sent its masked input: it is still in the sum.
    included = ids if stage == Stage.UNMASK else [c for c in ids if c != "2"]
    assert sorted(r.client_id for r in outcome.reports) == sorted(included)
    expected = plain_mean(plain_deltas(config, transport, weights, 1, included), included)
    bound = step_bound(config, len(ids))
    for got, want in zip(outcome.mean_delta, expected, strict=True):
        assert np.max(np.abs(got - want)) <= bound + 1e-12


@pytest.mark.parametrize("stage", list(Stage))
def test_too_many_dropouts_abort_cleanly(stage: Stage) -> None:
    config = make_config()
    transport, _, outcome = run_one_round(config, {stage: {"0", "1", "2", "3"}})
    assert outcome.mean_delta is None
    assert outcome.reports == ()
    assert outcome.extra["aborted"] in {s.name for s in Stage}
    assert outcome.extra["abort_reason"]
    # Nothing was unmasked: no client revealed any share when the round aborted before stage 3.
    if stage < Stage.UNMASK:
        assert not [m for (_, s, _, m) in transport.carried if s == Stage.UNMASK]


def test_random_dropouts_never_give_a_wrong_model() -> None:
    config = make_config(run={"rounds": 8}, secagg={"simulate_dropout": 0.45, "min_survivors": 0.6})
    transport = LocalSecureTransport(config)
    recorder = MemoryRecorder()
    start = initial_weights(transport)
    settings = secure_settings(config, num_clients=NUM_CLIENTS, dim=650)
    run_secure_fedavg(
        transport=transport, recorder=recorder, initial_weights=start, settings=settings,
        source=seeded_source(b"server"), sample_rng=np.random.default_rng(0),
    )  # fmt: skip
    previous = start
    outcomes = []
    for round_num, weights, reports, extra, federation in recorder.released:
        assert federation == []  # no DP: nothing for the federation ledger
        if "aborted" in extra:
            outcomes.append("aborted")
            assert reports == ()
            for w, p in zip(weights, previous, strict=True):
                np.testing.assert_array_equal(w, p)
            continue
        outcomes.append("released")
        included = [r.client_id for r in reports]
        deltas = plain_deltas(config, transport, previous, round_num, included)
        expected = plain_mean(deltas, included)
        bound = step_bound(config, NUM_CLIENTS)
        for w, p, d in zip(weights, previous, expected, strict=True):
            assert np.max(np.abs(w.astype(np.float64) - (p.astype(np.float64) + d))) <= bound + 1e-5
        previous = weights
    assert "aborted" in outcomes and "released" in outcomes, outcomes


def test_unmask_request_replayed_on_the_same_state_is_refused() -> None:
    config = make_config()
    transport, _, outcome = run_one_round(config)
    assert outcome.mean_delta is not None
    assert transport.states == {}  # every client forgot its round after answering stage 3
    # A second unmask request finds no state: refused instead of revealing the other share.
    call = StageCall(
        Stage.UNMASK,
        1,
        round_seed(config.run.seed, 1),
        UnmaskRequest(1, 0, frozenset(), frozenset({1, 2, 3})),
    )
    with pytest.raises(ProtocolError, match="no secure-aggregation state"):
        transport.client.answer(config, transport.data("0"), call, state=None)


def test_overflowing_fixed_point_config_is_refused_with_one_line() -> None:
    config = make_config(secagg={"bits": 8})
    with pytest.raises(ConfigError) as info:
        secure_settings(config, num_clients=500, dim=650)
    assert "\n" not in str(info.value) and str(info.value).startswith("secagg.bits:")


def test_server_only_ever_receives_uniform_masked_vectors() -> None:
    config = make_config()
    transport, _, outcome = run_one_round(config)
    assert outcome.mean_delta is not None
    masked = [m for (_, s, _, m) in transport.carried if s == Stage.MASKED_INPUT]
    assert len(masked) == NUM_CLIENTS and all(isinstance(m, MaskedReply) for m in masked)
    kinds = {type(m).__name__ for (_, _, _, m) in transport.carried}
    assert kinds == {"KeyAdvert", "EncryptedShares", "MaskedReply", "UnmaskResponse"}
    for reply in masked:
        assert isinstance(reply, MaskedReply)
        vector = np.asarray(reply.masked.vector, dtype=np.uint64)
        bins = np.bincount((vector >> np.uint64(28)).astype(np.int64), minlength=16)  # top 4 of 32 bits
        expected = len(vector) / 16
        chi2 = float(np.sum((bins - expected) ** 2 / expected))
        assert chi2 < 37.7, chi2  # 15 degrees of freedom, p = 0.001
    # Plain encodings of small deltas would sit near 0 or near 2^32 (centred): the masked ones do not.
    mid = [
        np.mean((np.asarray(m.masked.vector) > 2**30) & (np.asarray(m.masked.vector) < 3 * 2**30))
        for m in masked
        if isinstance(m, MaskedReply)
    ]
    assert all(0.35 < f < 0.65 for f in mid), mid
