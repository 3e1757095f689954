"""Releasing a round's global model, in the order that keeps privacy state safe.

:class:`RunRecorder` is transport-free: the Flower ServerApp and any in-process
simulator use it the same way. For each round it

1. commits the round's privacy spending to the ledger (one SQLite transaction),
2. only then releases the new global model: evaluates it centrally, writes the
   metrics line and the model file, and tells the observer.

A crash between 1 and 2 loses a release, never a spend: the ledger may hold a round
whose model was never written, but never a released model whose spending is missing. With the
spending, step 1 commits a :class:`~fedlab.core.checkpoint.Checkpoint` (the round's weights and
metrics line, the loop's state, the tracked parts' states), so a recorder opened with
``resume=True`` (:mod:`fedlab.training.run_resume`) writes that release again and the run goes on
after the round.

Under user-level DP (``dp.mode`` central or distributed) the run directory must not tell who
took part: the epsilon covers the released models, not a record of participation. Unless
``dp.record_participation`` is set, the ledger gets no per-client rows, ``metrics.jsonl`` no
counts of clients (sampled, aggregated, failed, dropped, rejected) and the summary no client
list; the observer (the operator's console) still sees the counts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fedlab.core.checkpoint import Checkpoint
from fedlab.core.clients import client_sort_key
from fedlab.core.config import RunConfig
from fedlab.core.errors import LedgerError
from fedlab.core.metrics import RoundMetrics, RoundObserver, append_metrics
from fedlab.core.reports import TrainReport
from fedlab.data.text import TEXT_DATASETS
from fedlab.data.types import ArrayDataset
from fedlab.privacy.events import GaussianEvent
from fedlab.privacy.ledger import ClientSpend, FederationSpend, PrivacyLedger
from fedlab.training.accounting import epsilon_from_history, history_after_steps
from fedlab.training.local import evaluate
from fedlab.training.models import set_weights
from fedlab.training.run_resume import histories_from_rows, open_for_resume, repair_metrics

LEDGER_FILE = "ledger.sqlite"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.npz"
CONFIG_FILE = "config.json"
FAILED = "failed: "
"""How ``stopped_because`` of a run that could not go on begins (then its reason, one line)."""


def save_model(path: Path, weights: Sequence[np.ndarray]) -> None:
    """Write ``weights`` to ``path`` as fedlab's ``model.npz`` (positional arrays), replacing it whole.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save_model(Path(tmp) / "model.npz", [np.zeros(2, np.float32)])
    ...     np.load(Path(tmp) / "model.npz").files
    ['arr_0']
    """
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, *weights)
    os.replace(tmp, path)


def _write_json_atomically(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default), encoding="utf-8")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


PUBLIC_ROUND_VALUES = frozenset(
    {
        "clip_norm", "noise_std", "fraction_clipped", "denominator", "aborted", "abort_reason",
        "started_at", "perplexity", "update_bytes",
    }
)  # fmt: skip
"""Round values that reveal nothing about participation: all ``metrics.jsonl`` keeps of a round's
extra values under user-level DP (the noised ``fraction_clipped``, public settings, aborts, whose
effect the released model shows anyway, the released model's test perplexity, the float32 bytes of
one client's update, a function of the configured model)."""
_LARGEST_LOG = 700.0
"""Test losses above this report the perplexity of this loss (``exp`` overflows near 710)."""


class Resumable(Protocol):
    """A part of a run whose state goes into each round's checkpoint (e.g. a simulator's clock)."""

    def state_dict(self) -> dict[str, Any]:
        """The part's state after the round (JSON)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back a state from :meth:`state_dict`."""
        ...


class RunRecorder:
    """Keeps a run directory: ledger, metrics, model and summary.

    Args:
        run_dir: The run's directory (created; must not already hold a ledger), or with
            ``resume`` the directory of the run to go on with.
        config: The validated run configuration (with ``resume``: the run's own).
        model: A model of the run's architecture, used for central evaluation.
        test_set: The held-out central test set.
        observer: Receives each released round (progress bar, logs).
        resume: Reopen the run in ``run_dir`` after its last committed round (:attr:`resumed`).

    Raises:
        ConfigError: With ``resume``, if ``config`` differs from the run's.
        LedgerError: With ``resume``, if the ledger or its checkpoint cannot be used.

    """

    def __init__(
        self,
        *,
        run_dir: Path,
        config: RunConfig,
        model: torch.nn.Module,
        test_set: ArrayDataset,
        observer: RoundObserver,
        resume: bool = False,
    ) -> None:
        self.run_dir = run_dir
        self._config = config
        self._model = model
        self._test = test_set
        self._observer = observer
        self._epsilons: dict[str, float] = {}
        self._hide_participation = config.dp.user_level and not config.dp.record_participation
        self._user_epsilons: dict[str, float] = {}
        self._noise_multiplier = 0.0
        self._history: list[RoundMetrics] = []
        self._parts: dict[str, Resumable] = {}
        self._ledger_histories: dict[str, tuple[GaussianEvent, ...]] | None = None
        self._seconds_before = 0.0
        self._started = time.perf_counter()
        self.resumed: Checkpoint | None = None
        """A resumed run's checkpoint of its last committed round (None: fresh, or none committed)."""
        if resume:
            self._ledger, self.resumed = open_for_resume(run_dir, config, LEDGER_FILE)
            self._restore()
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        config_json = json.dumps(config.to_dict(), sort_keys=True)
        (run_dir / CONFIG_FILE).write_text(config_json, encoding="utf-8")
        self._ledger = PrivacyLedger.create(
            run_dir / LEDGER_FILE, run_name=config.run.name, delta=config.dp.delta, config_json=config_json
        )

    def _restore(self) -> None:
        """Take back the committed rounds: epsilons from the ledger, the last release from its checkpoint."""
        self._epsilons = {c.client_id: c.epsilon for c in self._ledger.client_totals()}
        self._user_epsilons = {f.mechanism: f.epsilon for f in self._ledger.federation_totals()}
        self._history = repair_metrics(self.run_dir / METRICS_FILE, self.resumed)
        if self.resumed is not None:
            own = self.resumed.state.get("recorder", {})
            self._noise_multiplier = float(own.get("noise_multiplier", 0.0))
            self._seconds_before = float(own.get("seconds", 0.0))
            save_model(self.run_dir / MODEL_FILE, self.resumed.weights)

    def track(self, name: str, part: Resumable) -> None:
        """Commit ``part``'s state with every round; on a resumed run, give it back its state first.

        Raises:
            LedgerError: If the resumed checkpoint holds no state for ``name``.
        """
        if self.resumed is not None:
            parts = self.resumed.state.get("parts", {})
            if name not in parts:
                raise LedgerError(f"checkpoint: no state of {name!r}")
            part.load_state_dict(parts[name])
        self._parts[name] = part

    def client_histories(self) -> dict[str, tuple[GaussianEvent, ...]]:
        """Each client's DP-SGD accountant history as committed in the ledger (empty on a fresh run)."""
        return histories_from_rows(self._ledger.client_rows())

    def account_from_ledger(self) -> None:
        """From now on, charge each report's epsilon on the client's committed ledger history.

        For clients whose own history did not survive the interruption (a Flower ClientApp keeps it
        in its context state, which a new run starts empty): a report then counts at least the
        epsilon of every round the ledger holds for that client plus this round's steps.
        """
        self._ledger_histories = self.client_histories()

    def _charged(self, report: TrainReport) -> TrainReport:
        """``report`` with its epsilon raised to what its ledger history plus this round give."""
        if self._ledger_histories is None or report.noise_multiplier <= 0.0:
            return report
        history = history_after_steps(
            self._ledger_histories.get(report.client_id, ()),
            noise_multiplier=report.noise_multiplier,
            sample_rate=report.sample_rate,
            steps=report.steps,
        )
        self._ledger_histories[report.client_id] = history
        dp = self._config.dp
        epsilon = epsilon_from_history(history, delta=dp.delta, accountant=dp.resolved_accountant)
        return dataclasses.replace(report, epsilon=max(report.epsilon, epsilon))

    def start(self) -> None:
        """Tell the observer the run begins."""
        self._observer.on_start(self._config.run.rounds)

    def release_round(
        self,
        round_num: int,
        weights: Sequence[np.ndarray],
        reports: Sequence[TrainReport],
        *,
        seconds: float,
        extra: Mapping[str, float | int | str] | None = None,
        federation: Sequence[FederationSpend] = (),
        state: Mapping[str, Any] | None = None,
    ) -> RoundMetrics:
        """Commit the round's privacy spending and checkpoint, then release and record its model.

        ``federation`` holds the server's own releases this round (user-level DP); its
        epsilon is every client's user-level epsilon, so it is what ``epsilon_max`` and
        ``epsilon_mean`` report under central DP. ``state`` is the round loop's state after the
        round, committed in the checkpoint.
        """
        reports = [self._charged(r) for r in reports]
        self._note_noise(reports, federation)
        for r in reports:
            self._epsilons[r.client_id] = max(r.epsilon, self._epsilons.get(r.client_id, 0.0))
        for f in federation:
            self._user_epsilons[f.mechanism] = max(self._user_epsilons.get(f.mechanism, 0.0), f.epsilon)
        set_weights(self._model, weights)
        loss, accuracy = evaluate(
            self._model, self._test.x, self._test.y, batch_size=self._config.train.eval_batch_size
        )
        extra = {**(extra or {}), "update_bytes": sum(4 * np.asarray(w).size for w in weights)}
        if self._config.data.dataset in TEXT_DATASETS:
            extra["perplexity"] = math.exp(min(loss, _LARGEST_LOG))
        metrics = self._round_metrics(round_num, loss, accuracy, reports, seconds, extra)
        written = self._for_run_dir(metrics)
        checkpoint = Checkpoint(
            round_num=round_num,
            weights=tuple(np.asarray(w, dtype=np.float32) for w in weights),
            state={
                "loop": dict(state or {}),
                "parts": {name: part.state_dict() for name, part in self._parts.items()},
                "metrics": json.loads(written.to_json()),
                "recorder": {"noise_multiplier": self._noise_multiplier, "seconds": self._seconds()},
            },
        )
        self._commit_spending(round_num, reports, federation, checkpoint.to_bytes())
        save_model(self.run_dir / MODEL_FILE, weights)
        append_metrics(self.run_dir / METRICS_FILE, written)
        self._history.append(metrics)
        self._observer.on_round(metrics)
        return metrics

    def _seconds(self) -> float:
        """Seconds the run has taken, over every resumption."""
        return self._seconds_before + time.perf_counter() - self._started

    def _user_epsilon(self) -> float:
        """The user-level epsilon: the largest over the server's mechanisms (0 before any release)."""
        return max(self._user_epsilons.values(), default=0.0)

    def _for_run_dir(self, metrics: RoundMetrics) -> RoundMetrics:
        """The metrics as written to the run directory (participation withheld under user-level DP)."""
        if not self._hide_participation:
            return metrics
        public = {k: v for k, v in metrics.extra.items() if k in PUBLIC_ROUND_VALUES}
        return dataclasses.replace(metrics, clients=None, extra=public)

    def _note_noise(self, reports: Sequence[TrainReport], federation: Sequence[FederationSpend]) -> None:
        """Remember the round's noise multiplier: the server's, else the clients' mean."""
        if federation:
            self._noise_multiplier = max(f.noise_multiplier for f in federation)
        elif reports:
            self._noise_multiplier = float(np.mean([r.noise_multiplier for r in reports]))

    def _commit_spending(
        self,
        round_num: int,
        reports: Sequence[TrainReport],
        federation: Sequence[FederationSpend],
        checkpoint: bytes,
    ) -> None:
        spends = [
            ClientSpend(
                client_id=r.client_id,
                noise_multiplier=r.noise_multiplier,
                sample_rate=r.sample_rate,
                steps=max(r.steps, 1),
                epsilon=r.epsilon,
            )
            for r in ([] if self._hide_participation else reports)
        ]
        self._ledger.commit_round(round_num, spends, federation, checkpoint=checkpoint)

    def _round_metrics(
        self,
        round_num: int,
        loss: float,
        accuracy: float,
        reports: Sequence[TrainReport],
        seconds: float,
        extra: Mapping[str, float | int | str],
    ) -> RoundMetrics:
        total = sum(r.update.num_examples for r in reports)
        train_loss = sum(r.train_loss * r.update.num_examples for r in reports) / total if total else math.nan
        eps = [self._user_epsilon()] if self._config.dp.user_level else list(self._epsilons.values())
        return RoundMetrics(
            round=round_num,
            accuracy=accuracy,
            loss=loss,
            train_loss=train_loss,
            epsilon_max=max(eps) if eps else math.nan,
            epsilon_mean=float(np.mean(eps)) if eps else math.nan,
            clients=len(reports),
            seconds=seconds,
            extra=extra,
        )

    def _epsilon_summary(self) -> dict[str, Any]:
        """Per-client (sample-level) epsilons, or the user-level one (by mechanism) under user-level DP."""
        local = {
            k: _finite_or_none(v)
            for k, v in sorted(self._epsilons.items(), key=lambda item: client_sort_key(item[0]))
        }
        if self._config.dp.user_level:
            user = self._user_epsilon()
            return {
                "epsilon_max": user,
                "epsilon_mean": user,
                "epsilon_user": user,
                "epsilon_by_mechanism": dict(sorted(self._user_epsilons.items())),
                "client_epsilons": {} if self._hide_participation else dict.fromkeys(local, user),
            }
        values = list(self._epsilons.values())
        return {
            "epsilon_max": _finite_or_none(max(values, default=math.inf)),
            "epsilon_mean": _finite_or_none(float(np.mean(values))) if values else None,
            "epsilon_user": None,
            "client_epsilons": local,
        }

    def finish(self, *, stopped_because: str = "completed all rounds") -> dict[str, Any]:
        """Write ``summary.json``, close the ledger and return the summary."""
        last = self._history[-1] if self._history else None
        summary: dict[str, Any] = {
            "run_name": self._config.run.name,
            "rounds_completed": len(self._history),
            "rounds_planned": self._config.run.rounds,
            "stopped_because": stopped_because,
            "accuracy": last.accuracy if last else None,
            "loss": last.loss if last else None,
            "best_accuracy": max((m.accuracy for m in self._history), default=None),
            "dp_mode": self._config.dp.mode,
            "noise_multiplier": self._noise_multiplier,
            "delta": self._config.dp.delta if self._config.dp.enabled else None,
            **self._epsilon_summary(),
            "seconds": self._seconds(),
            "run_dir": str(self.run_dir),
        }
        _write_json_atomically(self.run_dir / SUMMARY_FILE, summary)
        self._ledger.close()
        self._observer.on_finish(summary)
        return summary
