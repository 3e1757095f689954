"""One-run f-DP auditing (Mahloujifar, Melis & Chaudhuri 2025): the guesses a trade-off allows.

The game is the one-run game of :mod:`fedlab.privacy.auditing.one_run`: m canaries, each included
independently with probability 1/2; from the output alone the auditor makes exactly n guesses
(included / excluded) and abstains on the rest; W counts the correct guesses. If the mechanism is
f-DP for adding or removing any one canary, with a symmetric f, then W cannot be large too often.

**Why** (our derivation of their bound). Write ``inv`` for the trade-off's inverse
(:class:`~fedlab.privacy.auditing.tradeoffs.Tradeoff`), convex and increasing. Pick a canary I
uniformly at random. Given the other canaries' memberships, the output is f-DP in I's, and
"W counted without I is at least i - 1" is a function of the output and the other memberships;
so (convexity of ``inv`` twice: over the two guess values, and over I and the other memberships)

    P[I guessed wrong and W >= i - 1] >= inv(P[I guessed right and W >= i]),   i = 1..n.

With q_j = P[W = j], the right-hand probability is r_i = sum_{j>=i} j q_j / m and the left-hand
one is h_{i-1} = sum_{j>=i-1} (n - j) q_j / m, and r_0 + h_0 = n / m.

**The test.** Suppose P[W >= c] >= alpha. Moving the mass above c down to c, and the mass beyond
alpha from c to c - 1, keeps every constraint with i <= c and the total mass. So some distribution
with q_c = alpha, nothing above c, total mass 1, meets the constraints for i = 1..c. The least mass
below c that does so is found greedily from i = c down (adding mass at j raises r_j and h_j, and
an exchange argument shows that putting more than needed at j never saves mass below j):
``h_{i-1} = max(h_i, inv(r_i))``, ``r_{i-1} = r_i + (i-1)/(n-i+1) (h_{i-1} - h_i)``, from
``r_c = alpha c / m``, ``h_c = alpha (n - c) / m``. If that least total already exceeds 1, that is
``r_0 + h_0 > n / m``, then P[W >= c] < alpha for every f-DP mechanism and the claim "f-DP" is
rejected at level alpha (:func:`fdp_rejects`).

**The bound.** Against a family of claims ordered by a noise scale s (s = 1 as claimed, larger s
more private; :class:`MechanismFamily`), :func:`fdp_audit` finds the smallest rejected scale and
reports that member's epsilon. Rejecting s = 1 rejects the claimed trade-off itself, for any
mechanism; the epsilon of a smaller rejected scale is a lower bound for mechanisms of the family's
shape (as in Mahloujifar et al., who use the Gaussian family).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from numpy.typing import ArrayLike

from fedlab.privacy.auditing._checks import (
    check_confidence,
    check_included,
    check_one_run_counts,
    check_scores,
    check_splits,
    power_splits,
)
from fedlab.privacy.auditing.one_run import (
    count_correct_guesses,
    one_run_guesses,
)
from fedlab.privacy.auditing.tradeoffs import Tradeoff

_MARGIN = 1e-9
"""Relative margin by which the least total mass must exceed 1 to reject (rounding)."""

_LARGEST_SCALE = 64.0
"""Largest noise scale tried; a run that even this does not reject gets a lower bound of 0."""


class MechanismFamily(Protocol):
    """Claims indexed by a noise scale: s = 1 is the claimed mechanism, larger s more private."""

    def tradeoff(self, noise_scale: float) -> Tradeoff:
        """Returns the trade-off of the member with noise scaled by ``noise_scale``."""
        ...

    def epsilon(self, noise_scale: float) -> float:
        """Returns that member's epsilon at the audit's delta."""
        ...


@dataclass(frozen=True, kw_only=True)
class FdpResult:
    """The outcome of :func:`fdp_audit`.

    Attributes:
        epsilon_lower_bound: Epsilon of the smallest rejected noise scale (0.0 if none).
        noise_scale: That scale (``inf`` if none was rejected).
        claim_rejected: Whether the claimed trade-off (scale 1) is rejected.
        num_canaries: Number of canaries m.
        num_guesses: Guesses n of the split that rejects the smallest scale.
        num_correct: Correct guesses c of that split.
        split: That split (k+, k-).
        confidence: Overall confidence.
        split_confidence: Confidence of each split (Bonferroni over ``num_splits``).
        num_splits: Number of splits tried.

    """

    epsilon_lower_bound: float
    noise_scale: float
    claim_rejected: bool
    num_canaries: int
    num_guesses: int
    num_correct: int
    split: tuple[int, int]
    confidence: float
    split_confidence: float
    num_splits: int

    def to_dict(self) -> dict[str, Any]:
        """Returns the result as a JSON-serializable dict (``split`` as a list, no infinity).

        Returns:
            A dict with one key per attribute; ``noise_scale`` is None when no scale was rejected.

        """
        data = {**asdict(self), "split": list(self.split)}
        if not math.isfinite(self.noise_scale):
            data["noise_scale"] = None
        return data


def fdp_rejects(
    tradeoff: Tradeoff, *, num_canaries: int, num_guesses: int, num_correct: int, alpha: float
) -> bool:
    """Returns True when every f-DP mechanism has P[W >= num_correct] < ``alpha``.

    The greedy recursion of the module docstring, with exactly ``num_guesses`` guesses.

    Args:
        tradeoff: The claimed trade-off (its inverse).
        num_canaries: Number of canaries m, >= 1.
        num_guesses: Number of guesses n, 0 <= n <= m.
        num_correct: Observed correct guesses c, 0 <= c <= n.
        alpha: Level, in (0, 1].

    Returns:
        Whether c correct guesses reject the trade-off at level ``alpha``.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> from fedlab.privacy.auditing.tradeoffs import GaussianTradeoff
        >>> fdp_rejects(GaussianTradeoff(0.5), num_canaries=1000, num_guesses=100, num_correct=95, alpha=0.05)
        True
        >>> fdp_rejects(GaussianTradeoff(0.5), num_canaries=1000, num_guesses=100, num_correct=60, alpha=0.05)
        False

    """
    m, n, c = check_one_run_counts(num_canaries, num_guesses, num_correct)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1]; got {alpha!r}")
    return _least_mass(tradeoff, m, n, c, float(alpha)) > 1.0 + _MARGIN


def fdp_p_value(tradeoff: Tradeoff, *, num_canaries: int, num_guesses: int, num_correct: int) -> float:
    """Returns a bound on P[W >= num_correct] for every f-DP mechanism (1.0 if none below 1).

    The least level at which :func:`fdp_rejects` rejects, by bisection on log(alpha) to 1e-6
    relative, returned from the rejected side.

    Args:
        tradeoff: The claimed trade-off.
        num_canaries: Number of canaries m, >= 1.
        num_guesses: Number of guesses n, 0 <= n <= m.
        num_correct: Observed correct guesses c, 0 <= c <= n.

    Returns:
        The bound, in (0, 1].

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> from fedlab.privacy.auditing.tradeoffs import GaussianTradeoff
        >>> fdp_p_value(GaussianTradeoff(0.0), num_canaries=10, num_guesses=10, num_correct=0)
        1.0

    """
    m, n, c = check_one_run_counts(num_canaries, num_guesses, num_correct)

    def rejected(alpha: float) -> bool:
        return _least_mass(tradeoff, m, n, c, alpha) > 1.0 + _MARGIN

    if c == 0 or not rejected(1.0):
        return 1.0
    lo, hi = 1e-300, 1.0  # lo: not rejected (the least mass shrinks to 0 with alpha)
    if rejected(lo):
        return lo
    while math.log(hi) - math.log(lo) > 1e-6:
        mid = math.sqrt(lo * hi)
        if rejected(mid):
            hi = mid
        else:
            lo = mid
    return hi


def fdp_audit(
    scores: ArrayLike,
    included: ArrayLike,
    *,
    family: MechanismFamily,
    confidence: float = 0.95,
    guess_counts: Sequence[tuple[int, int]] | None = None,
) -> FdpResult:
    """Finds the smallest noise scale whose trade-off the canaries reject, and its epsilon.

    The guesses are those of :func:`~fedlab.privacy.auditing.one_run_guesses` for each split
    (default: k+ = k- = m/4, m/16, m/64, m/256: an f-DP bound often gains most from the few most
    confident guesses), each tested at level ``(1 - confidence) / splits``;
    a scale is rejected when any split rejects it. Rejection grows with the scale (a larger scale
    claims more), so the smallest rejected scale is found by bisection to 0.5% relative, from the
    rejected side, between 1/64 and 64.

    Args:
        scores: One finite score per canary, higher meaning "more likely included".
        included: True where the canary was included (independently with probability 1/2).
        family: The claims, indexed by noise scale.
        confidence: Overall confidence, in (0, 1).
        guess_counts: The (k+, k-) splits, fixed before looking at the scores.

    Returns:
        The result for the smallest rejected scale.

    Raises:
        ValueError: If an argument is invalid.

    Example:
        >>> import numpy as np
        >>> from fedlab.privacy.auditing.tradeoffs import GaussianTradeoff
        >>> class Gdp:  # mu = 1 as claimed; noise scale s gives mu = 1 / s
        ...     def tradeoff(self, s): return GaussianTradeoff(1.0 / s)
        ...     def epsilon(self, s): return 1.0 / s  # any decreasing summary
        >>> rng = np.random.default_rng(0)
        >>> included = rng.random(2000) < 0.5
        >>> scores = rng.normal(2.0 * included, 1.0)  # 2-GDP canaries
        >>> result = fdp_audit(scores, included, family=Gdp())
        >>> result.claim_rejected, 1.0 < result.epsilon_lower_bound < 2.0
        (True, True)

    """
    values = check_scores("scores", scores)
    m = values.size
    inc = check_included(included, m)
    check_confidence(confidence)
    splits = power_splits(m, (2, 4, 6, 8)) if guess_counts is None else check_splits(guess_counts, m)
    alpha = (1.0 - float(confidence)) / len(splits)
    guesses = [one_run_guesses(values, num_positive=k_pos, num_negative=k_neg) for k_pos, k_neg in splits]
    counts = [(sum(split), count_correct_guesses(g, inc)) for split, g in zip(splits, guesses, strict=True)]

    def rejecting(scale: float) -> int | None:
        tradeoff = family.tradeoff(scale)
        for index, (n, c) in enumerate(counts):
            if c > 0 and _least_mass(tradeoff, m, n, c, alpha) > 1.0 + _MARGIN:
                return index
        return None

    hit = rejecting(1.0)
    claim_rejected = hit is not None
    lo, hi = (1.0 / _LARGEST_SCALE, 1.0) if claim_rejected else (1.0, _LARGEST_SCALE)
    if not claim_rejected:
        hit = rejecting(hi)
    if hit is None:
        return _result(family, math.inf, False, m, (0, 0), (0, 0), confidence, alpha, len(splits))
    if claim_rejected and (low_hit := rejecting(lo)) is not None:
        hi, hit = lo, low_hit
    else:
        while hi / lo > 1.005:
            mid = math.sqrt(lo * hi)
            found = rejecting(mid)
            if found is None:
                lo = mid
            else:
                hi, hit = mid, found
    return _result(family, hi, claim_rejected, m, counts[hit], splits[hit], confidence, alpha, len(splits))


def _result(
    family: MechanismFamily,
    scale: float,
    claim_rejected: bool,
    m: int,
    count: tuple[int, int],
    split: tuple[int, int],
    confidence: float,
    alpha: float,
    num_splits: int,
) -> FdpResult:
    return FdpResult(
        epsilon_lower_bound=0.0 if not math.isfinite(scale) else float(family.epsilon(scale)),
        noise_scale=scale,
        claim_rejected=claim_rejected,
        num_canaries=m,
        num_guesses=count[0],
        num_correct=count[1],
        split=split,
        confidence=float(confidence),
        split_confidence=1.0 - alpha,
        num_splits=num_splits,
    )


def _least_mass(tradeoff: Tradeoff, m: int, n: int, c: int, alpha: float) -> float:
    """The least total probability of a W-distribution with P[W = c] = alpha meeting the constraints."""
    if c == 0:
        return alpha  # no constraint involves W >= 0 alone
    r, h = alpha * c / m, alpha * (n - c) / m
    for i in range(c, 0, -1):  # from (r_i, h_i) to (r_{i-1}, h_{i-1})
        h_next = max(h, tradeoff.inverse(r))
        r += (i - 1) / (n - i + 1) * (h_next - h)
        h = h_next
    return (r + h) * m / n
