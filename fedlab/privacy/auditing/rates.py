"""Threshold attacks with Clopper-Pearson intervals (Jagielski, Ullman & Oprea 2020): epsilon lower bounds."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from fedlab.privacy.auditing._checks import check_confidence, check_delta_closed, check_int, check_scores


@dataclass(frozen=True, kw_only=True)
class CanaryBound:
    """The outcome of :func:`canary_epsilon_lower_bound`.

    Attributes:
        epsilon_lower_bound: Epsilon ruled out at ``confidence`` (0.0 if none).
        threshold: The threshold t of the best rule "inserted iff statistic >= t"
            (None when the bound is 0).
        true_positives: Inserted canaries with statistic >= t (0 when the bound is 0).
        positives: Number of inserted canaries.
        false_positives: Held-out canaries with statistic >= t (0 when the bound is 0).
        negatives: Number of held-out canaries.
        delta: The delta of the (epsilon, delta) claims tested.
        confidence: Confidence of the bound, simultaneously over all thresholds.

    """

    epsilon_lower_bound: float
    threshold: float | None
    true_positives: int
    positives: int
    false_positives: int
    negatives: int
    delta: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """Returns the result as a JSON-serializable dict.

        Returns:
            A dict with one key per attribute.

        """
        return asdict(self)


def clopper_pearson(*, successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Returns the exact two-sided Clopper-Pearson interval for a binomial proportion.

    Each end leaves probability ``(1 - confidence) / 2`` outside: the lower end is
    the ``(1 - confidence) / 2`` quantile of Beta(k, n - k + 1) (0 when k = 0), the
    upper end the ``(1 + confidence) / 2`` quantile of Beta(k + 1, n - k) (1 when
    k = n). This is the interval of ``scipy.stats.binomtest(k, n).proportion_ci(
    method="exact")``.

    Args:
        successes: Number of successes k, 0 <= k <= n.
        trials: Number of trials n, >= 1.
        confidence: Coverage probability of the interval, in (0, 1).

    Returns:
        ``(lower, upper)``.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> low, high = clopper_pearson(successes=1, trials=10, confidence=0.95)
        >>> round(low, 4), round(high, 4)
        (0.0025, 0.445)

    """
    k = check_int("successes", successes, minimum=0)
    n = check_int("trials", trials, minimum=1)
    if k > n:
        raise ValueError(f"successes must be <= trials ({n}); got {k}")
    check_confidence(confidence)
    tail = (1.0 - float(confidence)) / 2.0
    low = float(_cp_lower(np.array([k]), n, tail)[0])
    high = float(_cp_upper(np.array([k]), n, tail)[0])
    return low, high


def epsilon_lower_bound_from_rates(
    *,
    true_positives: int,
    positives: int,
    false_positives: int,
    negatives: int,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """Returns the epsilon lower bound of one membership test from its confusion counts.

    An (epsilon, delta)-DP algorithm satisfies TPR <= e^epsilon FPR + delta and
    TNR <= e^epsilon FNR + delta for every test (Kairouz, Oh & Viswanath 2015).
    With TPR_lo the Clopper-Pearson lower bound of the true-positive rate and
    FPR_hi the upper bound of the false-positive rate, each one-sided at
    ``(1 - confidence) / 2`` (Bonferroni; the ends of :func:`clopper_pearson`'s
    interval at ``confidence``), the result is

        max(0, ln((TPR_lo - delta) / FPR_hi), ln((1 - FPR_hi - delta) / (1 - TPR_lo))),

    a term counting only where its numerator is positive (Jagielski, Ullman &
    Oprea 2020). It is valid when the test is fixed in advance and the positive
    and negative trials are independent runs of the algorithm.

    Args:
        true_positives: Positive trials the test flagged, 0 <= tp <= positives.
        positives: Number of positive trials (canary included), >= 1.
        false_positives: Negative trials the test flagged, 0 <= fp <= negatives.
        negatives: Number of negative trials (canary excluded), >= 1.
        delta: Delta of the claims tested, in [0, 1).
        confidence: Probability that the bound does not exceed the true epsilon, in (0, 1).

    Returns:
        The epsilon lower bound (0.0 if none).

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> round(epsilon_lower_bound_from_rates(true_positives=900, positives=1000, false_positives=10,
        ...                                      negatives=1000, delta=1e-5), 4)
        3.872
        >>> epsilon_lower_bound_from_rates(true_positives=500, positives=1000, false_positives=500,
        ...                                negatives=1000, delta=1e-5)
        0.0

    """
    pos = check_int("positives", positives, minimum=1)
    neg = check_int("negatives", negatives, minimum=1)
    tp = check_int("true_positives", true_positives, minimum=0)
    fp = check_int("false_positives", false_positives, minimum=0)
    if tp > pos:
        raise ValueError(f"true_positives must be <= positives ({pos}); got {tp}")
    if fp > neg:
        raise ValueError(f"false_positives must be <= negatives ({neg}); got {fp}")
    check_delta_closed(delta)
    check_confidence(confidence)
    tail = (1.0 - float(confidence)) / 2.0
    eps = _rate_bounds(np.array([tp]), pos, np.array([fp]), neg, float(delta), tail, tail)
    return float(eps[0])


def canary_epsilon_lower_bound(
    *, inserted: ArrayLike, held_out: ArrayLike, delta: float, confidence: float = 0.95
) -> CanaryBound:
    """Returns the best threshold-attack epsilon lower bound over all thresholds.

    For every threshold t of the rule "inserted iff statistic >= t" (every
    distinct value observed) the bound of :func:`epsilon_lower_bound_from_rates`
    is computed with one-sided Clopper-Pearson levels ``(1 - confidence) / (2 n_in)``
    for the true-positive rate and ``(1 - confidence) / (2 n_out)`` for the
    false-positive rate, and the largest is returned. With these levels the
    intervals hold for all thresholds at once with probability >= ``confidence``:
    the rates are monotone in t, so for each possible count k the event "some
    threshold with count k has its rate outside the interval for k" has
    probability at most the level, and a union over the n counts (Bonferroni)
    covers every threshold. The threshold may therefore be chosen after seeing
    the data. Inserted canaries are expected to score higher. Each statistic is
    treated as an independent trial (see the module docstring).

    Args:
        inserted: Statistics of canaries that took part (e.g. cosines), 1-D, finite, non-empty.
        held_out: Statistics of canaries that did not, 1-D, finite, non-empty.
        delta: Delta of the claims tested, in [0, 1).
        confidence: Probability that the bound does not exceed the true epsilon, in (0, 1).

    Returns:
        The bound, its threshold and the counts at that threshold.

    Raises:
        ValueError: If an argument is invalid.

    Example:
        >>> result = canary_epsilon_lower_bound(inserted=np.linspace(1.0, 2.0, 500),
        ...                                     held_out=np.linspace(-1.0, 0.99, 500), delta=1e-5)
        >>> result.threshold, result.true_positives, result.false_positives
        (1.0, 500, 0)
        >>> round(result.epsilon_lower_bound, 3)
        3.912

    """
    pos_values = np.sort(check_scores("inserted", inserted))
    neg_values = np.sort(check_scores("held_out", held_out))
    check_delta_closed(delta)
    check_confidence(confidence)
    n_pos, n_neg = pos_values.size, neg_values.size
    alpha = 1.0 - float(confidence)
    thresholds = np.unique(np.concatenate([pos_values, neg_values]))
    tp = n_pos - np.searchsorted(pos_values, thresholds, side="left")
    fp = n_neg - np.searchsorted(neg_values, thresholds, side="left")
    eps = _rate_bounds(tp, n_pos, fp, n_neg, float(delta), alpha / (2 * n_pos), alpha / (2 * n_neg))
    best = int(np.argmax(eps))
    found = bool(eps[best] > 0.0)
    return CanaryBound(
        epsilon_lower_bound=float(eps[best]),
        threshold=float(thresholds[best]) if found else None,
        true_positives=int(tp[best]) if found else 0,
        positives=n_pos,
        false_positives=int(fp[best]) if found else 0,
        negatives=n_neg,
        delta=float(delta),
        confidence=float(confidence),
    )


def _cp_lower(k: NDArray[np.integer[Any]], n: int, tail: float) -> NDArray[np.float64]:
    """One-sided Clopper-Pearson lower bounds at level ``tail`` (vectorized over k)."""
    a = np.maximum(k, 1)
    low = stats.beta.ppf(tail, a, n - a + 1)
    return np.asarray(np.where(k == 0, 0.0, low), dtype=np.float64)


def _cp_upper(k: NDArray[np.integer[Any]], n: int, tail: float) -> NDArray[np.float64]:
    """One-sided Clopper-Pearson upper bounds at level ``tail`` (vectorized over k)."""
    b = np.minimum(k, n - 1)
    high = stats.beta.isf(tail, b + 1, n - b)
    return np.asarray(np.where(k == n, 1.0, high), dtype=np.float64)


def _rate_bounds(
    tp: NDArray[np.integer[Any]],
    positives: int,
    fp: NDArray[np.integer[Any]],
    negatives: int,
    delta: float,
    tail_pos: float,
    tail_neg: float,
) -> NDArray[np.float64]:
    tpr_lo = _cp_lower(tp, positives, tail_pos)
    fpr_hi = _cp_upper(fp, negatives, tail_neg)
    # fpr_hi > 0 and tpr_lo < 1 always: the upper end of a one-sided interval is positive.
    with np.errstate(divide="ignore", invalid="ignore"):
        forward = np.where(tpr_lo > delta, np.log(np.maximum(tpr_lo - delta, 1e-300)) - np.log(fpr_hi), 0.0)
        tnr_lo = 1.0 - fpr_hi
        backward = np.where(
            tnr_lo > delta, np.log(np.maximum(tnr_lo - delta, 1e-300)) - np.log1p(-tpr_lo), 0.0
        )
    return np.asarray(np.maximum(np.maximum(forward, backward), 0.0), dtype=np.float64)
