"""fedlab's privacy for a ClientApp of your own: two mods and private training in ``@app.train``.

* :func:`clipping_mod` (central DP with :class:`~fedlab.flower.dp_strategy.FedlabDpFedAvg` and
  ``client_clipping=True``): clips the update a train reply carries (reply minus sent model) to
  the C of the train config, and reports the adaptive-clipping bit of the unclipped norm.
* :class:`DeviceBudgetMod`: the device's own privacy budget (a SQLite file on the device) decides
  whether a train reply leaves, by the rule of :func:`fedlab.training.device_budget.decide`, at the
  device's own delta and maximum epsilon, whatever the server says it spent. A round announcing
  central DP (the ``noise-multiplier``, ``sample-rate`` and ``rounds`` keys
  :class:`~fedlab.flower.dp_strategy.FedlabDpFedAvg` sends) is charged the whole run at its first
  round and is refused before training; any other round is charged the DP-SGD steps the ClientApp
  took (the history :func:`private_training` keeps in the context state), and a round that took
  none is a noiseless release. A refused round answers an error (code :data:`BUDGET_REFUSED`) with
  the one-line reason, instead of the update; every released round is committed to the file
  before the reply leaves.
* :func:`private_training`: :class:`~fedlab.training.private.PrivateTraining` whose accountant
  history continues the one in the client's context state and is written back after every step.

Who they protect against: the budget mod holds against a server that asks for more rounds, more
often, at a larger delta or with other settings than the device agreed to (see ``decide``); the
DP-SGD charge holds against the server itself, the central-DP charge only against readers of the
released models (the server sees updates in clear).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
)
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from fedlab.core.update import Update
from fedlab.flower.client import load_history, store_history
from fedlab.flower.dp_strategy import CLIP_NORM, NOISE_MULTIPLIER, UNCLIPPED
from fedlab.privacy.adaptive_clipping import clip_update
from fedlab.privacy.client_budget import ClientBudget
from fedlab.training.device_budget import (
    DEFAULT_DELTA,
    DP_FEDAVG,
    NOISELESS_CHARGE,
    Charge,
    DevicePolicy,
    RoundDecision,
    central_event,
    commit,
    decide,
    keep_refusal,
    taken_dpsgd_charge,
)
from fedlab.training.private import PrivateTraining

BUDGET_REFUSED = 4001
"""The Error code of a round the device's budget refuses (outside Flower's own codes)."""


def _round_values(msg: Message) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for record in msg.content.config_records.values():
        values.update(dict(record))
    return values


def _failed(msg: Message, reason: str) -> Message:
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def _single_arrays(msg: Message) -> tuple[str, ArrayRecord] | None:
    records = list(msg.content.array_records.items())
    return records[0] if len(records) == 1 else None


def clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip a train reply's update to the train config's C; report the adaptive-clipping bit.

    The update is the reply's model minus the model the message sent (one ArrayRecord each, same
    keys and shapes); it is scaled by min(1, C/norm) and the reply carries it added back to the sent
    model, with ``fedlab-unclipped`` = 1[norm <= C] - 1/2 in its metrics. Other messages pass.

    Example:
        >>> from flwr.clientapp import ClientApp
        >>> app = ClientApp(mods=[clipping_mod])
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    clip = _round_values(msg).get(CLIP_NORM)
    if isinstance(clip, bool) or not isinstance(clip, int | float) or not (math.isfinite(clip) and clip > 0):
        return _failed(msg, f"clipping_mod: the train config has no positive {CLIP_NORM!r}")
    sent = _single_arrays(msg)
    if sent is None:
        return _failed(msg, "clipping_mod: the train message must carry exactly one ArrayRecord")
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    local = _single_arrays(reply)
    if local is None or list(local[1].keys()) != list(sent[1].keys()):
        return _failed(msg, "clipping_mod: the reply must carry one ArrayRecord with the sent model's keys")
    key, record = local
    start = sent[1].to_numpy_ndarrays()
    trained = record.to_numpy_ndarrays()
    if any(np.shape(a) != np.shape(b) for a, b in zip(trained, start, strict=True)):
        return _failed(msg, "clipping_mod: the reply's arrays differ in shape from the sent model")
    pairs = zip(trained, start, strict=True)
    delta = Update(tuple(np.asarray(a, np.float64) - np.asarray(b, np.float64) for a, b in pairs), 0)
    try:
        clipped, bit = clip_update(delta, clip_norm=float(clip))
    except ValueError:
        return _failed(msg, "clipping_mod: the update is not finite")
    reply.content.array_records[key] = ArrayRecord(
        {
            name: Array(np.asarray(b + d, dtype=np.asarray(a).dtype))
            for name, a, b, d in zip(record.keys(), trained, start, clipped.arrays, strict=True)
        }
    )
    metrics = next(iter(reply.content.metric_records.values()), None)
    if metrics is None:
        reply.content["metrics"] = MetricRecord({UNCLIPPED: bit})
    else:
        metrics[UNCLIPPED] = bit
    return reply


class DeviceBudgetMod:
    """A ClientApp mod: the device's budget file decides whether a train reply leaves.

    Args:
        budget: The device's budget file (created on first use; keep it across runs), or a
            function of the Context giving it (simulation: one file per partition).
        max_epsilon: The most the device ever spends, at ``delta`` (``inf``: no limit).
        delta: The device's delta.
        allow_non_private: Whether a round without DP-SGD steps or central DP may be released.

    Raises:
        ValueError: On a delta outside (0, 0.1] or a non-positive ``max_epsilon``.

    Example:
        >>> import tempfile
        >>> from flwr.clientapp import ClientApp
        >>> budget = Path(tempfile.mkdtemp()) / "budget.sqlite"
        >>> app = ClientApp(mods=[DeviceBudgetMod(budget, max_epsilon=8.0, delta=1e-5)])
        >>> DeviceBudgetMod(budget, delta=0.5)
        Traceback (most recent call last):
        ...
        ValueError: delta must be in (0, 0.1]; got 0.5
    """

    def __init__(
        self,
        budget: Path | Callable[[Context], Path],
        *,
        max_epsilon: float = math.inf,
        delta: float = DEFAULT_DELTA,
        allow_non_private: bool = False,
    ) -> None:
        self.budget = budget
        self.policy = DevicePolicy(max_epsilon=max_epsilon, delta=delta, allow_non_private=allow_non_private)

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Train messages go through the device's rule; other messages pass."""
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        values = _round_values(msg)
        server_round = values.get("server-round")
        if not isinstance(server_round, int) or isinstance(server_round, bool) or server_round < 1:
            return self._refused(msg, "the train message carries no server-round")
        run_id = int(context.run_id)
        central = NOISE_MULTIPLIER in values
        path = self.budget(context) if callable(self.budget) else Path(self.budget)
        with ClientBudget.open(path) as budget:
            decision = None
            if central:
                try:
                    charge = Charge(mechanism=DP_FEDAVG, event=central_event(values))
                except ValueError as exc:
                    return self._refused(msg, str(exc))
                decision = self._decide(budget, charge, run_id, server_round, values)
                if decision.refusal is not None:
                    return self._refused(msg, decision.refusal, budget, decision, run_id, server_round)
            before = load_history(context.state)
            reply = call_next(msg, context)
            if reply.has_error():
                return reply
            if decision is None:
                taken = taken_dpsgd_charge(before=before, after=load_history(context.state))
                decision = self._decide(budget, taken or NOISELESS_CHARGE, run_id, server_round, values)
                if decision.refusal is not None:
                    return self._refused(msg, decision.refusal, budget, decision, run_id, server_round)
            commit(budget, decision, run_id=run_id, server_round=server_round)
        return reply

    def _decide(
        self, budget: ClientBudget, charge: Charge, run_id: int, server_round: int, values: dict[str, Any]
    ) -> RoundDecision:
        announced = values.get("delta")
        run_delta = float(announced) if isinstance(announced, float) else None
        return decide(
            budget, self.policy, run_id=run_id, server_round=server_round, charge=charge, run_delta=run_delta
        )

    def _refused(
        self,
        msg: Message,
        reason: str,
        budget: ClientBudget | None = None,
        decision: RoundDecision | None = None,
        run_id: int = 0,
        server_round: int = 0,
    ) -> Message:
        if budget is not None and decision is not None:
            keep_refusal(budget, decision, self.policy, run_id=run_id, server_round=server_round)
        return Message(
            Error(code=BUDGET_REFUSED, reason=f"the device refuses the round: {reason}"), reply_to=msg
        )


def private_training(
    context: Context, *, noise_multiplier: float, max_grad_norm: float, accountant: str = "rdp"
) -> PrivateTraining:
    """DP-SGD for ``@app.train`` whose history continues, and is kept in, ``context.state``.

    Args:
        context: The ClientApp's context (its state persists across rounds on the node).
        noise_multiplier: z.
        max_grad_norm: C, the per-sample clip norm.
        accountant: The Opacus accountant of :meth:`PrivateTraining.epsilon`.

    Example:
        >>> import torch
        >>> from flwr.app import RecordDict
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> context = Context(1, 1, {}, RecordDict(), {})
        >>> model = torch.nn.Linear(3, 2)
        >>> data = DataLoader(TensorDataset(torch.randn(40, 3), torch.randint(0, 2, (40,))), batch_size=10)
        >>> private = private_training(context, noise_multiplier=1.0, max_grad_norm=1.0)
        >>> model, optimizer, loader = private.make_private(
        ...     model, torch.optim.SGD(model.parameters(), lr=0.1), data)
        >>> for x, y in loader:
        ...     optimizer.zero_grad()
        ...     torch.nn.functional.cross_entropy(model(x), y).backward()
        ...     optimizer.step()
        >>> load_history(context.state)
        (GaussianEvent(noise_multiplier=1.0, sample_rate=0.25, steps=4),)
    """
    return PrivateTraining(
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        history=load_history(context.state),
        accountant=accountant,
        on_step=lambda history: store_history(context.state, history),
    )
