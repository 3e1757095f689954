"""Releasing a round's global model, in the order that keeps privacy state safe.

:class:`RunRecorder` is transport-free: the Flower ServerApp and any in-process
simulator use it the same way. For each round it

1. commits the round's privacy spending to the ledger (one SQLite transaction),
2. only then releases the new global model: evaluates it centrally, writes the
   metrics line and the model file, and tells the observer.

A crash between 1 and 2 loses a release, never a spend: the ledger may hold a round
whose model was never written, but never a released model whose spending is missing.

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
from typing import Any

import numpy as np
import torch

from fedlab.core.clients import client_sort_key
from fedlab.core.config import RunConfig
from fedlab.core.metrics import RoundMetrics, RoundObserver, append_metrics
from fedlab.core.reports import TrainReport
from fedlab.data.types import ArrayDataset
from fedlab.privacy.ledger import ClientSpend, FederationSpend, PrivacyLedger
from fedlab.training.local import evaluate
from fedlab.training.models import set_weights

LEDGER_FILE = "ledger.sqlite"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.npz"
CONFIG_FILE = "config.json"


def _save_model_atomically(path: Path, weights: Sequence[np.ndarray]) -> None:
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
    {"clip_norm", "noise_std", "fraction_clipped", "denominator", "aborted", "abort_reason", "started_at"}
)
"""Round values that reveal nothing about participation: all ``metrics.jsonl`` keeps of a round's
extra values under user-level DP (the noised ``fraction_clipped``, public settings, aborts, whose
effect the released model shows anyway)."""


class RunRecorder:
    """Keeps a run directory: ledger, metrics, model and summary.

    Args:
        run_dir: The run's directory (created; must not already hold a ledger).
        config: The validated run configuration.
        model: A model of the run's architecture, used for central evaluation.
        test_set: The held-out central test set.
        observer: Receives each released round (progress bar, logs).

    """

    def __init__(
        self,
        *,
        run_dir: Path,
        config: RunConfig,
        model: torch.nn.Module,
        test_set: ArrayDataset,
        observer: RoundObserver,
    ) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self._config = config
        self._model = model
        self._test = test_set
        self._observer = observer
        config_json = json.dumps(config.to_dict(), sort_keys=True)
        (run_dir / CONFIG_FILE).write_text(config_json, encoding="utf-8")
        self._ledger = PrivacyLedger.create(
            run_dir / LEDGER_FILE, run_name=config.run.name, delta=config.dp.delta, config_json=config_json
        )
        self._epsilons: dict[str, float] = {}
        self._hide_participation = config.dp.user_level and not config.dp.record_participation
        self._user_epsilons: dict[str, float] = {}
        self._noise_multiplier = 0.0
        self._history: list[RoundMetrics] = []
        self._started = time.perf_counter()

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
    ) -> RoundMetrics:
        """Commit the round's privacy spending, then release and record its model.

        ``federation`` holds the server's own releases this round (user-level DP); its
        epsilon is every client's user-level epsilon, so it is what ``epsilon_max`` and
        ``epsilon_mean`` report under central DP.
        """
        self._commit_spending(round_num, reports, federation)
        self._note_noise(reports, federation)
        for r in reports:
            self._epsilons[r.client_id] = max(r.epsilon, self._epsilons.get(r.client_id, 0.0))
        for f in federation:
            self._user_epsilons[f.mechanism] = max(self._user_epsilons.get(f.mechanism, 0.0), f.epsilon)
        set_weights(self._model, weights)
        loss, accuracy = evaluate(
            self._model, self._test.x, self._test.y, batch_size=self._config.train.eval_batch_size
        )
        _save_model_atomically(self.run_dir / MODEL_FILE, weights)
        metrics = self._round_metrics(round_num, loss, accuracy, reports, seconds, extra or {})
        append_metrics(self.run_dir / METRICS_FILE, self._for_run_dir(metrics))
        self._history.append(metrics)
        self._observer.on_round(metrics)
        return metrics

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
        self, round_num: int, reports: Sequence[TrainReport], federation: Sequence[FederationSpend]
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
        self._ledger.commit_round(round_num, spends, federation)

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
            "seconds": time.perf_counter() - self._started,
            "run_dir": str(self.run_dir),
        }
        _write_json_atomically(self.run_dir / SUMMARY_FILE, summary)
        self._ledger.close()
        self._observer.on_finish(summary)
        return summary
