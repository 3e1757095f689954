"""fedlab's SecAgg+ client as a ClientApp mod: any ``@app.train`` function behind secure aggregation.

:class:`SecAggMod` answers the ``train`` messages that hold a ``secagg`` record (sent by
:class:`~fedlab.flower.secagg_workflow.SecAggWorkflow`); every other message goes to the app as
usual. At the masked-input stage it hands the app's train function an ordinary train message (the
global model as ``arrays``, the workflow's train config as ``config``), takes the model the function
returns, and sends only the masked delta (new minus global) and the example count: the function's
metrics never leave the device. Keys, seeds and masks come from ``os.urandom``; the secret state
between stages lives in the client's ``context.state`` and is deleted after unmasking.

What it protects, against whom: the server (and anyone reading the SuperLink) learns only the sum
of at least the workflow's surviving clients' deltas, as :mod:`fedlab.secagg` describes (honest but
curious server, up to t-1 colluding neighbours). Not differential privacy by itself: the sum is
exact. A device also running fedlab's DP-SGD (:func:`~fedlab.flower.private_training`) or its budget
(:class:`~fedlab.flower.DeviceBudgetMod`, listed after this mod) keeps those guarantees.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedlab.algorithms.secure_client import SecureClient
from fedlab.algorithms.secure_encoding import ClientPolicy
from fedlab.core.reports import TrainReport
from fedlab.core.update import Update
from fedlab.flower.secure_client import (
    answer_stage,
    secagg_refusal,
    secagg_reply,
    stage_call,
    stored_stage_state,
)
from fedlab.flower.secure_transport import ARRAYS, SECAGG, TRAIN_CONFIG, WEIGHT_CAP
from fedlab.privacy.events import GaussianEvent
from fedlab.secagg.errors import SecAggError, Stage

NUM_EXAMPLES = "num-examples"
"""The reply metric the app's train function reports its example count in (Flower's convention)."""

CallNext = Callable[[Message, Context], Message]


class SecAggMod:
    """Answers fedlab's SecAgg+ stages in any ClientApp (``ClientApp(mods=[SecAggMod()])``).

    Args:
        bits: The modulus 2^bits; a round announcing another is refused.
        clip_range: Each coordinate of the delta is clipped to [-clip_range, clip_range] before
            fixed-point encoding; a round announcing another is refused.

    The weighting is the workflow's: each stage message announces the example-weight cap (0:
    uniform), and the delta is scaled by min(examples, cap) / cap at most 1 (the clip range still
    bounds it).

    Raises:
        ValueError: On bits outside [8, 62] or a clip range that is not positive and finite.

    Example:
        >>> from flwr.clientapp import ClientApp
        >>> app = ClientApp(mods=[SecAggMod(bits=32, clip_range=1.0)])
    """

    def __init__(self, *, bits: int = 32, clip_range: float = 1.0) -> None:
        if not 8 <= bits <= 62:
            raise ValueError(f"SecAgg+ bits must be in [8, 62], not {bits}")
        if not (clip_range > 0.0 and math.isfinite(clip_range)):
            raise ValueError(f"SecAgg+ clip_range must be positive and finite, not {clip_range}")
        self._bits, self._clip_range = bits, clip_range
        self._client = SecureClient()

    def __call__(self, msg: Message, context: Context, call_next: CallNext) -> Message:
        """Answer a SecAgg+ stage message; pass any other message to ``call_next``."""
        if msg.metadata.message_type != MessageType.TRAIN or SECAGG not in msg.content.config_records:
            return call_next(msg, context)
        client_id = str(context.node_id)
        try:
            call = stage_call(msg)
            training = None
            if call.stage == Stage.MASKED_INPUT and ARRAYS in msg.content.array_records:
                training = _app_training(msg, context, call_next, client_id)
            cap = msg.content.config_records[SECAGG][WEIGHT_CAP]
            if not isinstance(cap, int) or cap < 0:
                raise ValueError(f"the announced {WEIGHT_CAP} is not a count")
            policy = ClientPolicy(bits=self._bits, clip_range=self._clip_range, weight_cap=cap or None)
            answer = answer_stage(
                self._client,
                policy,
                client_id,
                call,
                state=stored_stage_state(context),
                training=training,
            )
        except (KeyError, ValueError, TypeError, SecAggError) as exc:
            return secagg_refusal(msg, context, exc)
        return secagg_reply(msg, context, answer)


def _app_training(
    msg: Message, context: Context, call_next: CallNext, client_id: str
) -> Callable[[], tuple[TrainReport, tuple[GaussianEvent, ...]]]:
    """Train with the app's own function on the stage's global model: its delta and example count."""
    global_arrays = msg.content.array_records[ARRAYS]
    config = msg.content.config_records.get(TRAIN_CONFIG, ConfigRecord())

    def training() -> tuple[TrainReport, tuple[GaussianEvent, ...]]:
        content = RecordDict({ARRAYS: global_arrays, TRAIN_CONFIG: config})
        train_msg = Message(metadata=msg.metadata, content=content)  # type: ignore[call-overload]  # as received
        reply = call_next(train_msg, context)
        if reply.has_error():
            raise ValueError(f"the train function refused: {reply.error.reason}")
        update = delta_of(reply.content, global_arrays)
        # No loss, epsilon or DP-SGD settings go to the server: only the masked delta and the count.
        return TrainReport(client_id, update, math.nan, math.inf, 0.0, 1.0, 0), ()

    return training


def delta_of(content: RecordDict, global_arrays: ArrayRecord) -> Update:
    """The train reply's model minus the global model, with the reply's example count.

    Raises:
        ValueError: If the reply holds not exactly one array record, other names or shapes than
            the global model, non-finite values, or no non-negative integer ``num-examples``.

    Example:
        >>> import numpy as np
        >>> from flwr.app import Array, MetricRecord
        >>> old = ArrayRecord({"w": Array(np.zeros(2))})
        >>> reply = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(2))}),
        ...                     "metrics": MetricRecord({"num-examples": 5})})
        >>> update = delta_of(reply, old)
        >>> update.arrays[0].tolist(), update.num_examples
        ([1.0, 1.0], 5)
    """
    records = list(content.array_records.values())
    if len(records) != 1:
        raise ValueError(f"the train reply holds {len(records)} array records, not 1")
    new = records[0]
    if list(new.keys()) != list(global_arrays.keys()):
        raise ValueError("the train reply's arrays are not named as the global model's")
    deltas = []
    for name, array in global_arrays.items():
        before, after = array.numpy(), new[name].numpy()
        if after.shape != before.shape:
            raise ValueError(f"array {name!r} has shape {after.shape}, the global model {before.shape}")
        delta = after.astype(np.float64) - before.astype(np.float64)
        if not np.all(np.isfinite(delta)):
            raise ValueError(f"array {name!r} holds non-finite values")
        deltas.append(delta)
    counts = [m[NUM_EXAMPLES] for m in content.metric_records.values() if NUM_EXAMPLES in m]
    if len(counts) != 1 or not isinstance(counts[0], int) or counts[0] < 0:
        raise ValueError(f"the train reply has no single non-negative integer {NUM_EXAMPLES!r} metric")
    return Update(arrays=tuple(deltas), num_examples=counts[0])
