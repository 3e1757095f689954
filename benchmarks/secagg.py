#!/usr/bin/env python
"""Secure aggregation cost: fedlab SecAgg+ vs plain summation vs Flower's legacy SecAgg+, in-process.

Three peers sum the same N float vectors of length d in the same invocation:

- ``plain``: the server adds the float32 vectors with numpy (no protection; the floor).
- ``fedlab``: :mod:`fedlab.secagg` (X25519, HKDF, AES-GCM shares, ChaCha20 masks, Shamir over
  2^521 - 1). The benchmark calls the eight pure stage functions itself, in the order of
  :func:`fedlab.secagg.driver.simulate_round` (no dropouts), so that server and client CPU are
  timed apart. Client work includes the fixed-point encoding (stochastic rounding), server work the
  decoding of the sum.
- ``flower``: Flower 1.41's legacy SecAgg+, its own code end to end: the four stage methods of
  ``flwr.server.workflow.SecAggPlusWorkflow`` (server) against ``flwr.client.mod.secaggplus_mod``
  (client), with a ``LegacyContext``. Only the transport is ours: an in-process Grid whose
  ``send_and_receive`` deep-copies each message (standing in for serialization; not timed) and
  hands it to the client's mod with a per-node ``Context``; no network, no Ray. The "training" the
  mod calls at stage 2 returns the client's vector as a ``FitRes`` (its time is excluded), the
  global model sent at stage 2 is one scalar (its broadcast is not secure-aggregation work), and
  the strategy's ``aggregate_fit`` returns the unmasked mean as is.

Same parameters for both protocols: modulus 2^32, per-coordinate clip 1.0, k neighbours and
threshold t from :meth:`fedlab.secagg.messages.SecAggParams.for_clients` (k = O(log N),
t = k // 2 + 1). Flower's graph includes the node itself, so it gets ``num_shares = k + 1`` (each
node then has k neighbours plus its own share) and ``reconstruction_threshold = t``; its
quantization range is 2^22 (its default), ``max_weight = 1`` with ``num_examples = 1``.

Measured per round: ``server_cpu_s`` (``time.process_time`` around the server stages; client and
transport time subtracted for Flower), ``client_cpu_s`` (mean CPU per client over its four
stages), ``total_cpu_s`` (server plus all N clients), ``bytes_up_per_client`` (payload a client
sends over the four stages: byte fields, 8 per integer id, array ``nbytes``; fedlab vectors are
uint64, Flower's int64 in ``.npy`` form) and ``wall_s`` of the whole round. fedlab also reports
``bytes_up_wire_per_client``: the length of its real wire replies (JSON header, binary vector)
(:func:`fedlab.algorithms.secure_wire.reply_bytes`) for one client. Every peer's mean is checked
against numpy's (``max_abs_error``).

The end-to-end part runs ``fedlab simulate``'s inline backend itself (:func:`simulate_inline`),
100 clients, all sampled, an MLP with hidden width 280 (about 10^5 parameters: 98,570 on
Synthetic's 60 features, 99,690 on digits' 64), one local epoch (SGD lr 0.05, no DP), with
``secagg.enabled`` off and on and nothing else changed; every client trains in this process
(``workers = 0``), so both rounds run on one core. Round wall times are the loops' own per-round
seconds from ``metrics.jsonl``; the first round of each run is discarded. SecAgg+ adds a fixed cost
per client (two X25519 agreements and one keystream of the vector per neighbour, the encoding), so
the ratio depends on how much local work a client does; three workloads show it
(:data:`E2E_WORKLOADS`): the acceptance one is McMahan et al. 2017's MNIST federation (100 clients
of 600 examples, B = 10), with FedProx's Synthetic-IID standing in for MNIST (no dataset hub
here); then the same clients at B = 50; then digits at 14 examples per client, where training is
almost free and the ratio shows the protocol's own floor.

Prints one JSON line per grid point, one per vector length with the fedlab server-cost scaling,
one with the acceptance figures and one for the end-to-end round. A benchmark, not a test:
``--quick`` (N = 10, d = 10^4, a 10-client end-to-end round) only keeps it working in CI.

    python benchmarks/secagg.py [--quick] [--no-e2e]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fedlab.secagg import protocol  # noqa: E402
from fedlab.secagg.encoding import FixedPointCodec, decode_sum, encode  # noqa: E402
from fedlab.secagg.errors import Stage  # noqa: E402
from fedlab.secagg.messages import (  # noqa: E402
    ClientMasked,
    ClientShared,
    EncryptedShares,
    KeyAdvert,
    MaskedInput,
    SecAggParams,
    SecureSum,
    ShareDelivery,
    UnmaskResponse,
)

T = TypeVar("T")
Floats = npt.NDArray[np.float32]

MODULUS_BITS = 32
CLIP = 1.0
FLOWER_QUANTIZATION_RANGE = 2**22
FULL_CLIENTS = (10, 50, 100, 1000)
FULL_LENGTHS = (10**4, 10**5, 10**6)
FLOWER_MAX_CLIENTS = 100
ID_BYTES = 8
E2E_HIDDEN = 280
E2E_MAX_WEIGHT = 10_000
"""Above every client's size, so secure FedAvg weights exactly as plain FedAvg (same model)."""


@dataclass(frozen=True)
class Workload:
    """One end-to-end workload: the data section, the batch size and a label for the JSON line."""

    label: str
    data: Mapping[str, Any]
    batch_size: int


def _synthetic_iid(num_clients: int, mean_samples: int) -> dict[str, Any]:
    return {
        "dataset": "synthetic",
        "partitioner": "iid",
        "num_clients": num_clients,
        "synthetic_mean_samples": mean_samples,
    }


def _digits(num_clients: int) -> dict[str, Any]:
    return {"dataset": "digits", "partitioner": "iid", "num_clients": num_clients}


E2E_WORKLOADS = (
    Workload("FedAvg MNIST setting: Synthetic-IID, 600 examples per client on average, B=10",
             _synthetic_iid(100, 600), 10),
    Workload("the same clients, B=50", _synthetic_iid(100, 600), 50),
    Workload("digits, 14 examples per client, B=16 (almost no local work: the per-client floor)",
             _digits(100), 16),
)  # fmt: skip
"""The end-to-end workloads, the acceptance one first (McMahan et al. 2017's MNIST federation:
100 clients of 600 examples, one local epoch, B = 10)."""
QUICK_WORKLOAD = Workload("digits, 10 clients, B=16 (CI smoke run)", _digits(10), 16)


# --------------------------------------------------------------------------- measurements


@dataclass
class Cost:
    """One peer's cost of one secure (or plain) sum."""

    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    bytes_up_per_client: float = 0.0
    wall_s: float = 0.0
    max_abs_error: float = 0.0
    num_clients: int = 1
    server_stage_cpu_s: dict[str, float] = field(default_factory=dict)
    client_stage_cpu_s: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The JSON form (rounded)."""
        out: dict[str, Any] = {
            "server_cpu_s": round(self.server_cpu_s, 6),
            "client_cpu_s": round(self.client_cpu_s, 6),
            "total_cpu_s": round(self.total_cpu_s, 6),
            "bytes_up_per_client": round(self.bytes_up_per_client, 1),
            "wall_s": round(self.wall_s, 6),
            "max_abs_error": float(f"{self.max_abs_error:.3g}"),
        }
        if self.server_stage_cpu_s:
            out["server_stage_cpu_s"] = {k: round(v, 6) for k, v in self.server_stage_cpu_s.items()}
        if self.client_stage_cpu_s:
            out["client_stage_cpu_s"] = {k: round(v, 6) for k, v in self.client_stage_cpu_s.items()}
        out.update(self.extra)
        return out

    @property
    def total_cpu_s(self) -> float:
        """All CPU of the round: the server's plus every client's."""
        return self.server_cpu_s + self.num_clients * self.client_cpu_s


class CpuClock:
    """Accumulates process CPU time by label (``time.process_time`` counts every thread)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def run(self, label: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` and add its CPU time to ``label``."""
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            self.totals[label] = self.totals.get(label, 0.0) + time.process_time() - start


def make_inputs(num_clients: int, length: int, seed: int) -> list[Floats]:
    """N float32 vectors uniform in [-clip, clip] (a model update already inside the clip range)."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-CLIP, CLIP, length).astype(np.float32) for _ in range(num_clients)]


def exact_mean(inputs: Sequence[Floats]) -> npt.NDArray[np.float64]:
    """The float64 mean of the inputs (the reference every peer is checked against)."""
    total = np.zeros(inputs[0].shape[0], dtype=np.float64)
    for vector in inputs:
        total += vector
    return total / len(inputs)


def secagg_params(num_clients: int, length: int) -> SecAggParams:
    """fedlab's default SecAgg+ parameters for N clients: k = O(log N), t = k // 2 + 1, m = 2^32."""
    return SecAggParams.for_clients(
        num_clients,
        round_id=1,
        vector_length=length,
        modulus=2**MODULUS_BITS,
        graph_seed=os.urandom(32),
    )


# --------------------------------------------------------------------------- plain summation


def run_plain(inputs: Sequence[Floats], reference: npt.NDArray[np.float64], repeats: int = 3) -> Cost:
    """The server adds the float32 vectors with numpy (best of ``repeats``); clients do nothing."""
    best_cpu, best_wall, mean = math.inf, math.inf, reference
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        total = np.zeros(inputs[0].shape[0], dtype=np.float64)
        for vector in inputs:
            total += vector
        mean = total / len(inputs)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return Cost(
        server_cpu_s=best_cpu,
        bytes_up_per_client=float(inputs[0].nbytes),
        wall_s=best_wall,
        max_abs_error=float(np.max(np.abs(mean - reference))),
    )


# --------------------------------------------------------------------------- fedlab SecAgg+


def _fedlab_bytes(message: KeyAdvert | EncryptedShares | MaskedInput | UnmaskResponse) -> int:
    """Payload of a client -> server message: byte fields, ids (8 bytes each), array nbytes."""
    header = 2 * ID_BYTES  # round id, sender
    if isinstance(message, KeyAdvert):
        return header + len(message.keys.agreement) + len(message.keys.encryption)
    if isinstance(message, EncryptedShares):
        return header + sum(ID_BYTES + len(c) for c in message.ciphertexts.values())
    if isinstance(message, MaskedInput):
        return header + int(message.vector.nbytes)
    shares = [*message.self_mask_shares.values(), *message.mask_key_shares.values()]
    return header + sum(ID_BYTES + len(s) for s in shares)


def _fedlab_wire_bytes(
    message: KeyAdvert | EncryptedShares | MaskedInput | UnmaskResponse, stage: Stage
) -> int:
    """Length of fedlab's real JSON wire reply carrying ``message`` (no metadata)."""
    from fedlab.algorithms.secure_messages import MaskedReply, StageReply
    from fedlab.algorithms.secure_wire import reply_bytes

    reply = MaskedReply(message, num_examples=0) if isinstance(message, MaskedInput) else message
    return len(reply_bytes(StageReply(stage, message.round_id, reply)))


def run_fedlab(inputs: Sequence[Floats], reference: npt.NDArray[np.float64], params: SecAggParams) -> Cost:
    """One fedlab SecAgg+ round over the pure stage functions, timing server and clients apart."""
    import fedlab.algorithms.secure_client  # noqa: F401  (not inside the timed round)

    n, source = len(inputs), os.urandom
    codec = FixedPointCodec.for_sum(bits=MODULUS_BITS, clip=CLIP, max_summands=n)
    server, clients = CpuClock(), CpuClock()
    sent: dict[int, int] = dict.fromkeys(range(n), 0)
    wire: dict[str, int] = {}
    ids = list(range(n))
    wall = time.perf_counter()

    keys, adverts = {}, []
    for u in ids:
        keys[u], advert = clients.run("advertise", protocol.client_advertise, params, u, source)
        adverts.append(advert)
        sent[u] += _fedlab_bytes(advert)
    wire["advertise"] = _fedlab_wire_bytes(adverts[0], Stage.ADVERTISE_KEYS)
    roster, rosters = server.run("collect_adverts", protocol.server_collect_adverts, params, adverts)

    shared, encrypted = {}, []
    for u in ids:
        shared[u], message = clients.run(
            "share_keys", protocol.client_share_keys, keys[u], rosters[u], source
        )
        encrypted.append(message)
        sent[u] += _fedlab_bytes(message)
    wire["share_keys"] = _fedlab_wire_bytes(encrypted[0], Stage.SHARE_KEYS)
    del keys, rosters
    server_shared, deliveries = server.run("route_shares", protocol.server_route_shares, roster, encrypted)
    del encrypted

    def mask(
        state: ClientShared, delivery: ShareDelivery, vector: Floats
    ) -> tuple[ClientMasked, MaskedInput]:
        rng = np.random.default_rng(int.from_bytes(source(8), "little"))
        encoded = encode(vector, codec, rng=rng)
        return protocol.client_masked_input(state, delivery, encoded.values)

    masked_states, masked = {}, []
    for u in ids:
        masked_states[u], masked_input = clients.run(
            "masked_input", mask, shared[u], deliveries[u], inputs[u]
        )
        masked.append(masked_input)
        sent[u] += _fedlab_bytes(masked_input)
    wire["masked_input"] = _fedlab_wire_bytes(masked[0], Stage.MASKED_INPUT)
    del shared, deliveries
    collected, requests = server.run("collect_masked", protocol.server_collect_masked, server_shared, masked)
    del masked

    responses = []
    for u in ids:
        response = clients.run("unmask", protocol.client_unmask, masked_states[u], requests[u])
        responses.append(response)
        sent[u] += _fedlab_bytes(response)
    wire["unmask"] = _fedlab_wire_bytes(responses[0], Stage.UNMASK)
    del masked_states

    def unmask_and_decode() -> tuple[SecureSum, npt.NDArray[np.float64]]:
        summed = protocol.server_unmask(collected, responses)
        return summed, decode_sum(summed.total, codec, num_summands=len(summed.included)) / n

    summed, mean = server.run("unmask", unmask_and_decode)
    wall_s = time.perf_counter() - wall
    if len(summed.included) != n:
        raise RuntimeError(f"fedlab included {len(summed.included)} of {n} clients")
    return Cost(
        server_cpu_s=sum(server.totals.values()),
        client_cpu_s=sum(clients.totals.values()) / n,
        num_clients=n,
        bytes_up_per_client=statistics.fmean(sent.values()),
        wall_s=wall_s,
        max_abs_error=float(np.max(np.abs(mean - reference))),
        server_stage_cpu_s=server.totals,
        client_stage_cpu_s={k: v / n for k, v in clients.totals.items()},
        extra={
            "bytes_up_wire_per_client": sum(wire.values()),
            "quantization_bound": codec.quantization_bound(n) / n,
        },
    )


# --------------------------------------------------------------------------- Flower's legacy SecAgg+


def _config_bytes(value: Any) -> int:
    """Payload size of a ConfigRecord value: bytes/str length, 8 per number, lists summed."""
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, list | tuple):
        return sum(_config_bytes(v) for v in value)
    return 8


class _FlowerClient:
    """One Flower node: its Context and the vector its "training" returns at stage 2."""

    def __init__(self, node_id: int, vector: Floats) -> None:
        from flwr.app import Context, RecordDict

        self.node_id = node_id
        self.vector = vector
        self.context = Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={})
        self.bytes_up = 0


class InProcessGrid:
    """Enough of ``flwr.serverapp.Grid`` for ``SecAggPlusWorkflow``: runs ``secaggplus_mod`` in-process.

    ``excluded_cpu_s`` accumulates every CPU second spent inside :meth:`send_and_receive` (the
    transport's copies and the clients' work), which the server's stage time must not include.
    """

    def __init__(self, clients: Mapping[int, _FlowerClient]) -> None:
        self.clients = clients
        self.client_clock = CpuClock()
        self.excluded_cpu_s = 0.0
        self._train_cpu_s = 0.0

    def _train(self, msg: Any, ctxt: Any) -> Any:
        """The ClientApp behind the mod: returns this node's vector as a FitRes (time excluded)."""
        from flwr.app import Message
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
        from flwr.compat.common import recorddict_compat as compat

        start = time.process_time()
        client = self.clients[msg.metadata.dst_node_id]
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([client.vector]), 1, {})
        reply = Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)
        self._train_cpu_s += time.process_time() - start
        return reply

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        """Deliver each message to its node's ``secaggplus_mod``; return the replies."""
        from flwr.client.mod import secaggplus_mod
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

        del timeout
        start = time.process_time()
        replies = []
        for message in messages:
            delivered = copy.deepcopy(message)  # what serialization would give the client
            client = self.clients[delivered.metadata.dst_node_id]
            stage = str(delivered.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
            trained = self._train_cpu_s
            cpu = time.process_time()
            reply = secaggplus_mod(delivered, client.context, self._train)
            spent = time.process_time() - cpu - (self._train_cpu_s - trained)
            self.client_clock.totals[stage] = self.client_clock.totals.get(stage, 0.0) + spent
            config = reply.content.config_records[RECORD_KEY_CONFIGS]
            client.bytes_up += 2 * ID_BYTES + sum(len(k) + _config_bytes(v) for k, v in config.items())
            replies.append(copy.deepcopy(reply))
        self.excluded_cpu_s += time.process_time() - start
        return replies


def _flower_run(
    inputs: Sequence[Floats], params: SecAggParams
) -> tuple[Cost, npt.NDArray[np.float64], dict[str, Any]]:
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import Strategy
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.supercore.task_identity import TaskIdentity

    # What the ServerApp process would have set: messages take their run and source ids from it.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    class Proxy(ClientProxy):
        def __init__(self, node_id: int) -> None:
            super().__init__(str(node_id))
            self.node_id = node_id

        def get_properties(self, *a: Any, **k: Any) -> Any:
            raise NotImplementedError

        def get_parameters(self, *a: Any, **k: Any) -> Any:
            raise NotImplementedError

        def fit(self, *a: Any, **k: Any) -> Any:
            raise NotImplementedError

        def evaluate(self, *a: Any, **k: Any) -> Any:
            raise NotImplementedError

        def reconnect(self, *a: Any, **k: Any) -> Any:
            raise NotImplementedError

    class TakeMean(Strategy):
        """Samples every client; the workflow hands it the unmasked mean, which it keeps as is."""

        def initialize_parameters(self, client_manager: Any) -> Parameters | None:
            return None

        def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
            proxies = sorted(client_manager.all().values(), key=lambda p: p.node_id)
            return [(p, FitIns(parameters, {})) for p in proxies]

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            return results[0][1].parameters, {}

        def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
            return []

        def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> Any:
            return None, {}

        def evaluate(self, server_round: int, parameters: Parameters) -> Any:
            return None

    clients = {u + 1: _FlowerClient(u + 1, vector) for u, vector in enumerate(inputs)}
    manager = SimpleClientManager()
    for node_id in clients:
        manager.register(Proxy(node_id))
    base = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, strategy=TakeMean(), client_manager=manager)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({"current_round": 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([np.zeros(1, dtype=np.float32)]), keep_input=True
    )
    workflow = SecAggPlusWorkflow(
        num_shares=params.neighbours + 1,
        reconstruction_threshold=params.threshold,
        max_weight=1.0,
        clipping_range=CLIP,
        quantization_range=FLOWER_QUANTIZATION_RANGE,
        modulus_range=2**MODULUS_BITS,
    )
    # The workflow's own driving loop (SecAggPlusWorkflow.__call__), with each stage timed.
    grid = InProcessGrid(clients)
    state_cls = __import__(
        "flwr.server.workflow.secure_aggregation.secaggplus_workflow", fromlist=["WorkflowState"]
    ).WorkflowState
    state = state_cls()
    stages = {
        "setup": workflow.setup_stage,
        "share_keys": workflow.share_keys_stage,
        "collect_masked_vectors": workflow.collect_masked_vectors_stage,
        "unmask": workflow.unmask_stage,
    }
    server: dict[str, float] = {}
    wall = time.perf_counter()
    for name, stage in stages.items():
        excluded, cpu = grid.excluded_cpu_s, time.process_time()
        ok = stage(cast(Any, grid), context, state)
        server[name] = time.process_time() - cpu - (grid.excluded_cpu_s - excluded)
        if not ok:
            raise RuntimeError(f"Flower's SecAgg+ halted at stage {name}")
    wall_s = time.perf_counter() - wall
    result = parameters_to_ndarrays(
        compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
    )
    n = len(inputs)
    cost = Cost(
        server_cpu_s=sum(server.values()),
        client_cpu_s=sum(grid.client_clock.totals.values()) / n,
        num_clients=n,
        bytes_up_per_client=statistics.fmean(c.bytes_up for c in clients.values()),
        wall_s=wall_s,
        server_stage_cpu_s=server,
        client_stage_cpu_s={k: v / n for k, v in grid.client_clock.totals.items()},
    )
    settings = {
        "num_shares": workflow.num_shares,
        "reconstruction_threshold": workflow.reconstruction_threshold,
    }
    return cost, np.asarray(result[0], dtype=np.float64), settings


FLOWER_SCOPE = (
    "flwr 1.41 legacy SecAgg+ in full: SecAggPlusWorkflow.setup/share_keys/collect_masked_vectors/"
    "unmask_stage (server) and secaggplus_mod (client) with LegacyContext; in-process Grid "
    "(deepcopy transport, untimed), no network, no Ray; stage-2 training and the 1-scalar global "
    "model broadcast excluded"
)


def run_flower(inputs: Sequence[Floats], reference: npt.NDArray[np.float64], params: SecAggParams) -> Cost:
    """One round of Flower's legacy SecAgg+ on the same vectors, with the same k and t."""
    import flwr.client.mod
    import flwr.server.workflow  # noqa: F401  (importing flwr sets its logger to DEBUG)

    # Flower's stage code logs at DEBUG per node and stage: formatting and printing those lines is
    # not secure-aggregation work, so it is silenced, as a deployment at INFO would.
    logging.getLogger("flwr").setLevel(logging.WARNING)
    cost, mean, settings = _flower_run(inputs, params)
    cost.max_abs_error = float(np.max(np.abs(mean - reference)))
    cost.extra = {"flower_scope": FLOWER_SCOPE, **settings}
    return cost


# --------------------------------------------------------------------------- grid


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b > 0 else None


def measure_point(
    num_clients: int, length: int, *, with_flower: bool, flower_skip_reason: str | None, seed: int
) -> dict[str, Any]:
    """All peers at one (N, d); ratios fedlab / flower and fedlab / plain."""
    inputs = make_inputs(num_clients, length, seed)
    reference = exact_mean(inputs)
    params = secagg_params(num_clients, length)
    plain = run_plain(inputs, reference)
    fedlab = run_fedlab(inputs, reference, params)
    record: dict[str, Any] = {
        "benchmark": "secagg",
        "kind": "micro",
        "num_clients": num_clients,
        "vector_length": length,
        "neighbours": params.neighbours,
        "threshold": params.threshold,
        "modulus_bits": MODULUS_BITS,
        "plain": plain.record(),
        "fedlab": fedlab.record(),
    }
    if with_flower:
        flower = run_flower(inputs, reference, params)
        record["flower"] = flower.record()
        record["ratio_fedlab_flower"] = {
            "server_cpu": _ratio(fedlab.server_cpu_s, flower.server_cpu_s),
            "client_cpu": _ratio(fedlab.client_cpu_s, flower.client_cpu_s),
            "total_cpu": _ratio(fedlab.total_cpu_s, flower.total_cpu_s),
            "bytes_up": _ratio(fedlab.bytes_up_per_client, flower.bytes_up_per_client),
            "wall": _ratio(fedlab.wall_s, flower.wall_s),
        }
    else:
        record["flower"] = {"skipped": flower_skip_reason}
    record["ratio_fedlab_plain"] = {
        "server_cpu": _ratio(fedlab.server_cpu_s, plain.server_cpu_s),
        "bytes_up": _ratio(fedlab.bytes_up_per_client, plain.bytes_up_per_client),
        "wall": _ratio(fedlab.wall_s, plain.wall_s),
    }
    record["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return record


def fitted_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = np.log(np.asarray(xs, dtype=float)), np.log(np.asarray(ys, dtype=float))
    return float(np.polyfit(lx, ly, 1)[0])


def scaling_record(length: int, points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How fedlab's server CPU grows with N at one vector length, next to N log N."""
    ns = [int(p["num_clients"]) for p in points]
    server = [float(p["fedlab"]["server_cpu_s"]) for p in points]
    nlogn = [n * math.log2(n) for n in ns]
    successive = [
        {
            "from_n": ns[i],
            "to_n": ns[i + 1],
            "server_cpu_ratio": _ratio(server[i + 1], server[i]),
            "n_log_n_ratio": _ratio(nlogn[i + 1], nlogn[i]),
        }
        for i in range(len(ns) - 1)
    ]
    return {
        "benchmark": "secagg",
        "kind": "scaling",
        "vector_length": length,
        "num_clients": ns,
        "fedlab_server_cpu_s": [round(s, 6) for s in server],
        "server_cpu_per_n_log2_n_us": [round(1e6 * s / x, 3) for s, x in zip(server, nlogn, strict=True)],
        "successive": successive,
        "fitted_exponent": round(fitted_exponent(ns, server), 3) if len(ns) > 1 else None,
        "n_log_n_exponent_same_ns": round(fitted_exponent(ns, nlogn), 3) if len(ns) > 1 else None,
    }


# --------------------------------------------------------------------------- end to end


def _e2e_config(workload: Workload, hidden: int, *, rounds: int, secagg: bool) -> Any:
    from fedlab.core.config import config_from_dict

    return config_from_dict(
        {
            "run": {"name": "secagg-benchmark", "seed": 0, "rounds": rounds},
            "data": dict(workload.data),
            "model": {"kind": "mlp", "hidden": hidden},
            "train": {"local_epochs": 1, "batch_size": workload.batch_size, "lr": 0.05, "optimizer": "sgd"},
            "server": {"fraction_train": 1.0},
            "dp": {"mode": "none"},
            "simulation": {"backend": "inline", "workers": 0},
            "secagg": {
                "enabled": secagg,
                "bits": MODULUS_BITS,
                "clip_range": CLIP,
                "min_survivors": 0.7,
                "max_weight": E2E_MAX_WEIGHT,
            },
        }
    )


def _timed_rounds(config: Any, run_dir: Path) -> tuple[list[float], list[dict[str, Any]]]:
    """Run ``config`` with the inline backend; return each round's wall seconds and metrics line."""
    from fedlab.core.metrics import SilentObserver
    from fedlab.sim.inline import simulate_inline

    simulate_inline(config, run_dir, SilentObserver())
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [float(line["seconds"]) for line in lines], lines


def _examples(config: Any) -> int:
    """The training examples of all clients (every client is sampled every round)."""
    from fedlab.data.federated import build_federated_data

    data = build_federated_data(config.data, seed=config.run.seed)
    return sum(data.client_size(i) for i in range(config.data.num_clients))


def end_to_end(workload: Workload, hidden: int, *, rounds: int, repeats: int) -> dict[str, Any]:
    """Round wall time of ``fedlab simulate`` (inline backend) with secure aggregation off and on.

    Both runs are the real simulator on the same config except ``secagg.enabled``, trained in this
    process (``simulation.workers = 0``) so that every second of both rounds is on one core. Runs
    ``repeats`` times (off, then on) ``rounds`` rounds each; the first round of every run (trainers
    built, first optimizer step) is discarded and the medians of the rest compared.
    """
    import tempfile

    off_s: list[float] = []
    on_s: list[float] = []
    last: dict[str, Any] = {}
    accuracy: dict[bool, float | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for secagg, into in ((False, off_s), (True, on_s)):
                config = _e2e_config(workload, hidden, rounds=rounds, secagg=secagg)
                seconds, lines = _timed_rounds(config, Path(tmp) / f"{secagg}-{r}")
                into += seconds[1:]
                accuracy[secagg] = lines[-1].get("accuracy")
                if secagg:
                    last = lines[-1]
                    if any("aborted" in line for line in lines):
                        raise RuntimeError(f"a secure round aborted: {lines}")
        with np.load(Path(tmp) / "True-0" / "model.npz") as model:
            dim = int(sum(model[k].size for k in model.files))
    off_round, on_round = statistics.median(off_s), statistics.median(on_s)
    overhead = on_round / off_round - 1.0
    num_clients = int(workload.data["num_clients"])
    return {
        "benchmark": "secagg",
        "kind": "end_to_end",
        "workload": {
            "label": workload.label,
            "data": dict(workload.data),
            "num_clients": num_clients,
            "sampled_per_round": num_clients,
            "examples_per_round": _examples(config),
            "model": f"mlp hidden={hidden}",
            "parameters": dim,
            "local_epochs": 1,
            "batch_size": workload.batch_size,
            "backend": "inline, workers = 0 (fedlab simulate's round loop and transport, one core)",
            "neighbours": last.get("neighbours"),
            "threshold": last.get("threshold"),
            "rounds_timed": len(on_s),
        },
        "secagg_off_round_s": round(off_round, 4),
        "secagg_on_round_s": round(on_round, 4),
        "secagg_off_rounds_s": [round(s, 4) for s in off_s],
        "secagg_on_rounds_s": [round(s, 4) for s in on_s],
        "ratio_on_off": round(on_round / off_round, 4),
        "secagg_ms_per_client": round(1000 * (on_round - off_round) / num_clients, 3),
        "final_accuracy_off_on": [accuracy.get(False), accuracy.get(True)],
        "overhead_fraction": round(overhead, 4),
        "acceptance_overhead_at_most_50pct": overhead <= 0.5,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


# --------------------------------------------------------------------------- main


def acceptance_record(
    points: Sequence[Mapping[str, Any]], scaling: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The issue's benchmark acceptance figures, reported (never asserted)."""
    out: dict[str, Any] = {"benchmark": "secagg", "kind": "acceptance"}
    target = [
        p
        for p in points
        if p["num_clients"] == 100 and p["vector_length"] == 10**5 and "ratio_fedlab_flower" in p
    ]
    if target:
        p = target[0]
        flower_over_fedlab = p["flower"]["total_cpu_s"] / p["fedlab"]["total_cpu_s"]
        server_flower_over_fedlab = p["flower"]["server_cpu_s"] / p["fedlab"]["server_cpu_s"]
        client_flower_over_fedlab = p["flower"]["client_cpu_s"] / p["fedlab"]["client_cpu_s"]
        out["n100_d1e5"] = {
            "flower_over_fedlab_total_cpu": round(flower_over_fedlab, 3),
            "flower_over_fedlab_server_cpu": round(server_flower_over_fedlab, 3),
            "flower_over_fedlab_client_cpu": round(client_flower_over_fedlab, 3),
            "fedlab_at_least_5x_less_cpu": flower_over_fedlab >= 5.0,
        }
    big = [s for s in scaling if s["num_clients"] and max(s["num_clients"]) >= 1000]
    if big:
        out["server_scaling"] = {
            str(s["vector_length"]): {
                "fitted_exponent": s["fitted_exponent"],
                "n_log_n_exponent": s["n_log_n_exponent_same_ns"],
            }
            for s in big
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N=10, d=10^4, 10-client end-to-end round (CI)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end round")
    parser.add_argument("--no-micro", action="store_true", help="skip the per-round micro benchmark")
    parser.add_argument("--clients", type=int, nargs="*", help="N values (default 10 50 100 1000)")
    parser.add_argument("--lengths", type=int, nargs="*", help="vector lengths (default 1e4 1e5 1e6)")
    parser.add_argument("--flower-max-length", type=int, default=10**6, help="skip Flower above this length")
    parser.add_argument(
        "--fedlab-max-elements",
        type=int,
        default=2 * 10**8,
        help="skip points with N * d above this (fedlab holds every masked uint64 vector: 8 bytes each)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

    clients = args.clients or ([10] if args.quick else list(FULL_CLIENTS))
    lengths = args.lengths or ([10**4] if args.quick else list(FULL_LENGTHS))
    points: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    if not args.no_micro:
        for length in lengths:
            done: list[dict[str, Any]] = []
            for n in clients:
                if n * length > args.fedlab_max_elements:
                    skipped = {
                        "benchmark": "secagg",
                        "kind": "micro",
                        "num_clients": n,
                        "vector_length": length,
                        "skipped": f"N*d = {n * length} > --fedlab-max-elements {args.fedlab_max_elements} "
                        f"(about {16 * n * length / 2**30:.0f} GiB of inputs and masked vectors)",
                    }
                    print(json.dumps(skipped), flush=True)
                    continue
                reason = None
                if n > FLOWER_MAX_CLIENTS:
                    reason = f"Flower is compared up to N={FLOWER_MAX_CLIENTS} (the issue's grid)"
                elif length > args.flower_max_length:
                    reason = f"vector length above --flower-max-length {args.flower_max_length}"
                record = measure_point(
                    n, length, with_flower=reason is None, flower_skip_reason=reason, seed=args.seed
                )
                print(json.dumps(record), flush=True)
                done.append(record)
            if done:
                scaling.append(scaling_record(length, done))
                print(json.dumps(scaling[-1]), flush=True)
            points += done
        print(json.dumps(acceptance_record(points, scaling)), flush=True)
    if not args.no_e2e:
        # The first workload is the acceptance one; the others show how the ratio moves with the
        # amount of local work, since SecAgg+ adds a fixed cost per client (secagg_ms_per_client).
        runs = [(QUICK_WORKLOAD, 2, 1)] if args.quick else [(w, 3, 2) for w in E2E_WORKLOADS]
        for i, (workload, rounds, repeats) in enumerate(runs):
            record = end_to_end(workload, E2E_HIDDEN, rounds=rounds, repeats=repeats)
            record["primary"] = i == 0
            print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
