"""Sending messages over a Flower Grid and collecting the replies, with nodes that drop and rejoin."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

POLL_SECONDS = 0.5
"""How often :func:`exchange` asks the Grid for replies (``send_and_receive`` waits 3 s)."""


def _node_lost(reply: Message) -> bool:
    """Whether the SuperLink answered for the node: its session expired before it replied."""
    return reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE


def exchange(
    grid: Grid,
    build: Callable[[Sequence[int]], list[Message]],
    nodes: Sequence[int],
    *,
    timeout: float,
    poll: float = POLL_SECONDS,
) -> dict[int, Message]:
    """Send each node its message (``build(nodes)``) and collect the replies within ``timeout`` s.

    Like ``Grid.send_and_receive``, and a node may rejoin: when a node's session expires before
    it replied (a crashed or disconnected device: the SuperLink answers "node unavailable"), its
    message is built and sent again as soon as the node is online again (a restarted device
    rejoins with the same node id), until the timeout. A node that does not come back keeps the
    SuperLink's error as its reply; a node that does not answer in time has no reply.

    Returns:
        The replies keyed by the node each message was sent to (a SuperLink error names the
        SuperLink as its sender, not the node); the nodes that did not answer are absent.
    """
    deadline = time.monotonic() + timeout
    waiting: dict[str, int] = {}  # message id -> node
    lost: dict[int, Message] = {}  # node -> the SuperLink's "node unavailable" reply
    answered: dict[int, Message] = {}

    def push(targets: Sequence[int]) -> None:
        messages = build(targets)
        pushed = set(grid.push_messages(messages))  # the Grid sets each message's id as it pushes
        for message in messages:
            if message.metadata.message_id in pushed:
                waiting[message.metadata.message_id] = message.metadata.dst_node_id

    push(nodes)
    while time.monotonic() < deadline:
        returning = [node for node in lost if node not in waiting.values()]
        if returning:
            online = set(grid.get_node_ids())
            push([node for node in returning if node in online])
        if waiting:
            for reply in grid.pull_messages(list(waiting)):
                node = waiting.pop(reply.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                if _node_lost(reply):
                    lost[node] = reply
                else:
                    answered[node] = reply
                    lost.pop(node, None)
        if not waiting and not lost:
            break
        time.sleep(poll)
    return {**lost, **answered}
