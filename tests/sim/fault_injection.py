"""Run ``fedlab`` and SIGKILL it at a chosen point of a chosen round (a fault-injection harness).

    python tests/sim/fault_injection.py KIND:ROUND[:OPS] -- fedlab arguments...

KIND is where the process dies in round ROUND (as the recorder numbers rounds):

* ``train``: after the round's clients were sampled, before any of them trained;
* ``commit``: inside the ledger's write transaction, after OPS SQLite VM steps (if the
  transaction ends first, right after it committed, before the release);
* ``model``: half-way through writing ``model.npz``'s temporary file;
* ``metrics``: half-way through the round's ``metrics.jsonl`` line.

The points are reached through the real code (the inline transport, the ledger, the recorder):
the harness only wraps them, so the run is the one ``fedlab simulate`` runs.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(kind: str, target: int, ops: int) -> None:
    import fedlab.sim.inline as inline
    import fedlab.training.recorder as recorder
    from fedlab.privacy.ledger import PrivacyLedger

    if kind == "train":
        train = inline.InlineTransport.train

        def dying_train(self: Any, plan: Any, weights: Any) -> Any:
            if plan.round_num == target:
                die()
            return train(self, plan, weights)

        inline.InlineTransport.train = dying_train  # type: ignore[method-assign]
    elif kind == "commit":
        commit = PrivacyLedger.commit_round

        def dying_commit(self: Any, round_num: int, *args: Any, **kwargs: Any) -> None:
            if round_num != target:
                return commit(self, round_num, *args, **kwargs)
            steps = [0]

            def step() -> int:
                steps[0] += 1
                if steps[0] >= ops:
                    die()
                return 0

            self._conn.set_progress_handler(step, 1)
            commit(self, round_num, *args, **kwargs)
            die()

        PrivacyLedger.commit_round = dying_commit  # type: ignore[method-assign]
    elif kind in ("model", "metrics"):
        release = recorder.RunRecorder.release_round
        current = [0]

        def numbered(self: Any, round_num: int, *args: Any, **kwargs: Any) -> Any:
            current[0] = round_num
            return release(self, round_num, *args, **kwargs)

        recorder.RunRecorder.release_round = numbered  # type: ignore[method-assign]
        if kind == "model":
            save = recorder.save_model

            def dying_save(path: Path, weights: Any) -> None:
                if current[0] == target:
                    tmp = path.with_suffix(".tmp.npz")
                    save(tmp, weights)
                    with tmp.open("r+b") as handle:
                        handle.truncate(tmp.stat().st_size // 2)
                    die()
                save(path, weights)

            recorder.save_model = dying_save
        else:
            append = recorder.append_metrics

            def dying_append(path: Path, metrics: Any) -> None:
                if current[0] == target:
                    line = metrics.to_json()
                    with path.open("a", encoding="utf-8") as handle:
                        handle.write(line[: len(line) // 2])
                        handle.flush()
                        os.fsync(handle.fileno())
                    die()
                append(path, metrics)

            recorder.append_metrics = dying_append
    elif kind != "none":
        raise SystemExit(f"unknown fault {kind!r}")


def main() -> None:
    spec, separator, *args = sys.argv[1:]
    if separator != "--":
        raise SystemExit("usage: fault_injection.py KIND:ROUND[:OPS] -- fedlab arguments")
    kind, round_text, *rest = spec.split(":")
    install(kind, int(round_text), int(rest[0]) if rest else 1)
    from fedlab.cli.main import main as fedlab_main

    sys.argv = ["fedlab", *args]
    fedlab_main()


if __name__ == "__main__":
    main()
