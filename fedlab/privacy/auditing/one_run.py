"""One-run auditing (Steinke, Nasr & Jagielski 2023): guesses on canaries, and the epsilon they rule out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

from fedlab.privacy.auditing._checks import (
    check_confidence,
    check_delta_closed,
    check_included,
    check_int,
    check_one_run_counts,
    check_scores,
    check_splits,
    power_splits,
)


@dataclass(frozen=True, kw_only=True)
class OneRunResult:
    """The outcome of :func:`one_run_audit`.

    Attributes:
        epsilon_lower_bound: Epsilon ruled out at ``confidence`` (0.0 if none).
        num_canaries: Number of canaries m.
        num_guesses: Guesses r = k+ + k- of the reported split.
        num_correct: Correct guesses v of the reported split.
        split: The reported split (k+, k-): top k+ guessed in, bottom k- out.
        delta: The delta of the (epsilon, delta) claims tested.
        confidence: Overall confidence of the reported bound.
        split_confidence: Confidence used for each split,
            ``1 - (1 - confidence) / num_splits`` (Bonferroni).
        num_splits: Number of splits tried.

    """

    epsilon_lower_bound: float
    num_canaries: int
    num_guesses: int
    num_correct: int
    split: tuple[int, int]
    delta: float
    confidence: float
    split_confidence: float
    num_splits: int

    def to_dict(self) -> dict[str, Any]:
        """Returns the result as a JSON-serializable dict (``split`` as a list).

        Returns:
            A dict with one key per attribute.

        """
        return {**asdict(self), "split": list(self.split)}


def one_run_p_value(
    *, num_canaries: int, num_guesses: int, num_correct: int, epsilon: float, delta: float
) -> float:
    """Returns the one-run bound on P[W >= v] for an (epsilon, delta)-DP algorithm.

    The (epsilon, delta) statement of Steinke, Nasr & Jagielski (2023): if the
    algorithm is (epsilon, delta)-DP with respect to adding or removing one
    canary, the m canaries are included independently with probability 1/2, and
    the auditor makes r guesses (abstaining on the other canaries) from the
    algorithm's output alone, then the number W of correct guesses satisfies

        P[W >= v] <= f(v) + 2 m delta * max_{i = 1..v} (f(v - i) - f(v)) / i,
        f(v) = P[Binomial(r, e^epsilon / (1 + e^epsilon)) >= v].

    With delta = 0 this is their pure-DP theorem, P[W >= v] <= f(v). This is
    the value their Appendix D procedure (``p_value_DP_audit``) and jax_privacy's
    ``epsilon_one_run`` compute. Tail and point probabilities come from
    :mod:`scipy.stats.binom`; the differences f(v - i) - f(v) are sums of point
    probabilities, so they suffer no cancellation. The result is capped at 1.

    Args:
        num_canaries: Number of canaries m, >= 1.
        num_guesses: Number of guesses r (canaries not abstained on), 0 <= r <= m.
        num_correct: Number of correct guesses v, 0 <= v <= r.
        epsilon: Epsilon of the claim tested, finite and >= 0.
        delta: Delta of the claim tested, in [0, 1).

    Returns:
        The bound on the probability of at least ``num_correct`` correct guesses.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> round(one_run_p_value(num_canaries=10, num_guesses=10, num_correct=10, epsilon=0.0, delta=0.0), 6)
        0.000977
        >>> one_run_p_value(num_canaries=10, num_guesses=10, num_correct=0, epsilon=1.0, delta=0.0)
        1.0

    """
    m, r, v = check_one_run_counts(num_canaries, num_guesses, num_correct)
    if not (math.isfinite(epsilon) and epsilon >= 0.0):
        raise ValueError(f"epsilon must be finite and >= 0; got {epsilon!r}")
    check_delta_closed(delta)
    return _one_run_p_value(m, r, v, float(epsilon), float(delta))


def one_run_epsilon_lower_bound(
    *, num_canaries: int, num_guesses: int, num_correct: int, delta: float, confidence: float = 0.95
) -> float:
    """Returns the largest epsilon that ``num_correct`` correct guesses rule out.

    The claim "the algorithm is (epsilon, delta)-DP" is rejected when the
    observed v has :func:`one_run_p_value` below ``1 - confidence``; the result is
    the crossing point of that p-value with ``1 - confidence``, found by bisection
    on epsilon to 1e-12 relative, and returned from the rejected side. This is the
    procedure of Steinke, Nasr & Jagielski (2023), Appendix D (``get_eps_audit``).

    Args:
        num_canaries: Number of canaries m, >= 1.
        num_guesses: Number of guesses r, 0 <= r <= m.
        num_correct: Number of correct guesses v, 0 <= v <= r.
        delta: Delta of the claims tested, in [0, 1).
        confidence: Probability that the bound does not exceed the true epsilon, in (0, 1).

    Returns:
        The epsilon lower bound (0.0 if even epsilon = 0 is not rejected).

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> round(one_run_epsilon_lower_bound(num_canaries=10, num_guesses=10, num_correct=10, delta=0.0), 4)
        1.0519
        >>> round(one_run_epsilon_lower_bound(num_canaries=1000, num_guesses=1000, num_correct=880,
        ...                                   delta=1e-5), 3)
        1.829
        >>> one_run_epsilon_lower_bound(num_canaries=1000, num_guesses=100, num_correct=50, delta=1e-5)
        0.0

    """
    m, r, v = check_one_run_counts(num_canaries, num_guesses, num_correct)
    check_delta_closed(delta)
    check_confidence(confidence)
    return _one_run_epsilon(m, r, v, float(delta), 1.0 - float(confidence))


def one_run_guesses(scores: ArrayLike, *, num_positive: int, num_negative: int) -> NDArray[np.int8]:
    """Returns the one-run guesses: +1 for the top scores, -1 for the bottom ones, 0 elsewhere.

    Higher scores mean "more likely included". Canaries are ranked by score,
    ties broken by position (the earlier canary ranks higher), so the guesses
    depend on the scores and the canaries' order only; the order must be fixed
    before the run (not sorted by membership) for the one-run bound to hold.

    Args:
        scores: One finite score per canary, 1-D, non-empty.
        num_positive: k+, the number of top-ranked canaries guessed included, >= 0.
        num_negative: k-, the number of bottom-ranked canaries guessed excluded, >= 0,
            with k+ + k- <= number of canaries.

    Returns:
        An int8 array of the scores' length with values in {+1, -1, 0}.

    Raises:
        ValueError: If the scores or counts are invalid.

    Example:
        >>> one_run_guesses([0.3, 2.0, -1.0, 0.5, -4.0], num_positive=2, num_negative=1).tolist()
        [0, 1, 0, 1, -1]

    """
    values = check_scores("scores", scores)
    m = values.size
    k_pos = check_int("num_positive", num_positive, minimum=0)
    k_neg = check_int("num_negative", num_negative, minimum=0)
    if k_pos + k_neg > m:
        raise ValueError(
            f"num_positive + num_negative must be <= {m} (the number of scores); got {k_pos + k_neg}"
        )
    order = np.lexsort((np.arange(m), -values))  # descending score, then ascending position
    guesses = np.zeros(m, dtype=np.int8)
    guesses[order[:k_pos]] = 1
    guesses[order[m - k_neg :]] = -1
    return guesses


def count_correct_guesses(guesses: ArrayLike, included: ArrayLike) -> int:
    """Returns the number of correct guesses: +1 on an included canary or -1 on an excluded one.

    Args:
        guesses: Values in {+1, -1, 0} (0 abstains), 1-D.
        included: True where the canary was included, same length as ``guesses``.

    Returns:
        The number of correct (non-abstaining) guesses.

    Raises:
        ValueError: If the arrays are invalid or of different lengths.

    Example:
        >>> count_correct_guesses([1, -1, 0, 1], [True, False, True, False])
        2

    """
    g = np.asarray(guesses)
    if g.ndim != 1 or g.size == 0:
        raise ValueError(f"guesses must be a non-empty 1-D array; got shape {g.shape}")
    if not np.all(np.isin(g, (-1, 0, 1))):
        raise ValueError("guesses must take values in {+1, -1, 0}")
    inc = check_included(included, g.size)
    return int(np.sum((g == 1) & inc) + np.sum((g == -1) & ~inc))


def one_run_audit(
    scores: ArrayLike,
    included: ArrayLike,
    *,
    delta: float,
    confidence: float = 0.95,
    guess_counts: Sequence[tuple[int, int]] | None = None,
) -> OneRunResult:
    """Runs the one-run audit over several (k+, k-) splits and reports the best bound.

    Each split is audited at confidence ``1 - (1 - confidence) / number_of_splits``
    (Bonferroni), so the reported maximum holds at ``confidence`` although the
    split is chosen after seeing the data. The default splits are k+ = k- = m/2,
    m/4, ..., m/64 (integer parts >= 1; (m, 0) when m = 1).

    Args:
        scores: One finite score per canary, higher meaning "more likely included".
        included: True where the canary was included (each independently with
            probability 1/2 before the run), same length as ``scores``.
        delta: Delta of the claims tested, in [0, 1).
        confidence: Overall confidence of the reported bound, in (0, 1).
        guess_counts: The (k+, k-) splits to try, each with k+ + k- <= m; fixed
            before looking at the scores.

    Returns:
        The best split's bound with its counts.

    Raises:
        ValueError: If an argument is invalid.

    Example:
        >>> scores = [2.0, 1.5, 1.2, 0.9, -0.1, -0.5, -1.0, -2.0] * 25
        >>> included = [True, True, True, False, True, False, False, False] * 25
        >>> result = one_run_audit(scores, included, delta=0.0, guess_counts=[(25, 25), (50, 50)])
        >>> result.split, result.num_correct, round(result.epsilon_lower_bound, 3)
        ((50, 50), 100, 3.281)

    """
    values = check_scores("scores", scores)
    m = values.size
    inc = check_included(included, m)
    check_delta_closed(delta)
    check_confidence(confidence)
    splits = power_splits(m, range(1, 7)) if guess_counts is None else check_splits(guess_counts, m)
    split_confidence = 1.0 - (1.0 - float(confidence)) / len(splits)
    best: tuple[float, int, int, tuple[int, int]] | None = None
    for k_pos, k_neg in splits:
        guesses = one_run_guesses(values, num_positive=k_pos, num_negative=k_neg)
        correct = count_correct_guesses(guesses, inc)
        bound = _one_run_epsilon(m, k_pos + k_neg, correct, float(delta), 1.0 - split_confidence)
        if best is None or bound > best[0]:
            best = (bound, k_pos + k_neg, correct, (k_pos, k_neg))
    assert best is not None  # splits is non-empty
    return OneRunResult(
        epsilon_lower_bound=best[0],
        num_canaries=m,
        num_guesses=best[1],
        num_correct=best[2],
        split=best[3],
        delta=float(delta),
        confidence=float(confidence),
        split_confidence=split_confidence,
        num_splits=len(splits),
    )


def _one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    if v == 0:
        return 1.0
    q = float(special.expit(epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[Binomial(r, q) >= v]
    if delta == 0.0:
        return min(tail, 1.0)
    # f(v - i) - f(v) = P[v - i <= Binomial(r, q) <= v - 1], for i = 1..v.
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    slope = float(np.max(below / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * slope, 1.0)


def _one_run_epsilon(m: int, r: int, v: int, delta: float, alpha: float) -> float:
    if _one_run_p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while _one_run_p_value(m, r, v, hi, delta) < alpha:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _one_run_p_value(m, r, v, mid, delta) < alpha:
            lo = mid
        else:
            hi = mid
    return lo
