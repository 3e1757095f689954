"""Telling the nodes that the run ended, so that ``fedlab client`` stops instead of retrying.

The ServerApp's last message to every connected node is a query carrying the ``run-end`` config
record (why the run stopped). A device's ClientApp writes ``run-ended.json`` into its state
directory before it acknowledges; ``fedlab client`` sees the file, stops its SuperNode and exits 0.
A simulation node only acknowledges. The message carries nothing a node could not already see: the
run is over and its reason (``summary.json``'s ``stopped_because``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

LOG = logging.getLogger("fedlab.server")

RUN_END = "run-end"
"""The config record of the run-end query; its ``stopped-because`` says why the run stopped."""
RUN_ENDED_FILE = "run-ended.json"
"""The file a device writes into its state directory when it is told that the run ended."""
ANNOUNCE_SECONDS = 15.0
"""The longest the server waits for the nodes to acknowledge the end of the run."""


def run_end_content(stopped_because: str) -> RecordDict:
    """The content of the run-end query.

    >>> run_end_reason(run_end_content("completed"))
    'completed'
    """
    return RecordDict({RUN_END: ConfigRecord({"stopped-because": stopped_because})})


def run_end_reason(content: RecordDict) -> str | None:
    """Why the run stopped, if ``content`` is a run-end query; None for any other message.

    >>> run_end_reason(RecordDict()) is None
    True
    """
    record = content.config_records.get(RUN_END)
    if record is None:
        return None
    reason = record.get("stopped-because")
    return reason if isinstance(reason, str) else "ended"


def announce_run_end(grid: Grid, stopped_because: str, *, timeout: float = ANNOUNCE_SECONDS) -> int:
    """Send every connected node the run-end query; return how many acknowledged within ``timeout`` s."""
    nodes = list(grid.get_node_ids())
    if not nodes:
        return 0
    content = run_end_content(stopped_because)
    messages = [Message(content=content, dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    replies = grid.send_and_receive(messages, timeout=timeout)
    acknowledged = sum(1 for reply in replies if not reply.has_error())
    LOG.info("told %d of %d connected nodes that the run ended", acknowledged, len(nodes))
    return acknowledged


def write_run_ended(state_dir: Path, *, run_id: int, stopped_because: str) -> Path:
    """Record in a device's state directory that run ``run_id`` ended (replacing the file whole).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = write_run_ended(Path(tmp), run_id=7, stopped_because="completed")
    ...     read_run_ended(Path(tmp))
    'completed'
    """
    path = state_dir / RUN_ENDED_FILE
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"run_id": run_id, "stopped_because": stopped_because}))
    partial.replace(path)
    return path


def read_run_ended(state_dir: Path) -> str | None:
    """Why the run ended, if the device was told (a file it cannot read counts as told: "ended").

    >>> read_run_ended(Path("/nonexistent")) is None
    True
    """
    path = state_dir / RUN_ENDED_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "ended"
    reason = raw.get("stopped_because") if isinstance(raw, dict) else None
    return reason if isinstance(reason, str) else "ended"


def clear_run_ended(state_dir: Path) -> None:
    """Forget an earlier run's end (``fedlab client`` does this before it joins)."""
    (state_dir / RUN_ENDED_FILE).unlink(missing_ok=True)
