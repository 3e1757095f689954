"""Sending messages over a Flower Grid and collecting the replies, with nodes that drop and rejoin."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

POLL_SECONDS = 0.5
"""How often :func:`exchange` asks the Grid for replies (``send_and_receive`` waits 3 s)."""


LOST = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE)
"""Errors the SuperLink or the Grid give for a reply that was lost, not one the node sent: its
session expired before it replied, or it died while uploading the reply."""


def _lost(reply: Message) -> bool:
    """Whether the reply stands for a lost one (see :data:`LOST`)."""
    return reply.has_error() and reply.error.code in LOST


def _activations(grid: Grid) -> dict[int, str]:
    """Each connected node's last activation time, as the SuperLink reports it."""
    return {int(node.node_id): str(node.last_activated_at) for node in grid.get_nodes()}


def exchange(
    grid: Grid,
    build: Callable[[Sequence[int]], list[Message]],
    nodes: Sequence[int],
    *,
    timeout: float,
    poll: float = POLL_SECONDS,
) -> dict[int, Message]:
    """Send each node its message (``build(nodes)``) and collect the replies within ``timeout`` s.

    Like ``Grid.send_and_receive``, and a node may crash and rejoin (a restarted device rejoins
    with the same node id, in a new session). A node's message is lost with the session it was
    sent to: the SuperLink answers "node unavailable" when that session expired before it replied,
    the Grid answers "message unavailable" when the node died while uploading its reply, and
    neither comes when the device rejoined between two polls. Whenever the SuperLink reports a
    node in a session newer than the one its message went to, the message is built and sent to
    it again, until the timeout (a reply its old session still sends is not read). A node that
    does not come back keeps the lost-reply error as its reply; a node that does not answer in
    time has no reply. Replies are read once more at the timeout, so a reply that arrived while
    the Grid was busy (pulling a lost upload can take minutes) is not dropped.

    Returns:
        The replies keyed by the node each message was sent to (a SuperLink error names the
        SuperLink as its sender, not the node); the nodes that did not answer are absent.
    """
    deadline = time.monotonic() + timeout
    waiting: dict[str, int] = {}  # message id -> node
    session: dict[int, str] = {}  # node -> its activation when its message was pushed
    lost: dict[int, Message] = {}  # node -> the error standing for its lost reply
    answered: dict[int, Message] = {}

    def push(targets: Sequence[int], activations: dict[int, str]) -> None:
        if not targets:
            return
        messages = build(targets)
        pushed = set(grid.push_messages(messages))  # the Grid sets each message's id as it pushes
        for message in messages:
            if message.metadata.message_id in pushed:
                node = message.metadata.dst_node_id
                waiting[message.metadata.message_id] = node
                session[node] = activations.get(node, "")

    def pull() -> None:
        for reply in grid.pull_messages(list(waiting)):
            node = waiting.pop(reply.metadata.reply_to_message_id, None)
            if node is None:
                continue
            if _lost(reply):
                lost[node] = reply
            else:
                answered[node] = reply
                lost.pop(node, None)

    push(nodes, _activations(grid))
    while True:
        if waiting:
            pull()
        if (not waiting and not lost) or time.monotonic() >= deadline:
            break
        activations = _activations(grid)
        returning = [node for node in lost if node not in waiting.values()]
        for message_id, node in list(waiting.items()):
            if node in activations and activations[node] != session[node]:
                del waiting[message_id]  # taken by a session that is gone: never answered
                returning.append(node)
        push([n for n in returning if n in activations and activations[n] != session[n]], activations)
        time.sleep(poll)
    if waiting:
        pull()  # what arrived while the last pull was busy
    return {**lost, **answered}
