"""What the server releases from a distributed-DP round, and against whom its epsilon holds.

Distributed DP (:mod:`fedlab.privacy.skellam`) has two adversaries, with two adjacencies; both
are user level (one client's whole contribution):

* **The server** (honest but curious) sees the unmasked sum and knows whose inputs are in it:
  secure aggregation hides inputs, not participation. So the guarantee against it is under
  **zero-out** adjacency: the client takes part either way (its noise share is in the sum), and
  its update is its own or zero. The sum holds at least ``min_survivors`` noise shares (rounds
  with fewer abort). Sampling gives no amplification against a party that knows who was sampled:
  :func:`server_view_event` is one unsubsampled Skellam round, and the run's epsilon composes
  every released round, so it covers a client that took part in all of them.
* **Readers of the released models** (anyone but the server) do not see who took part. Under
  **add/remove** adjacency a client's absence also removes its noise share, which changes the
  variance of the sum in every coordinate, a difference the Skellam bound does not cover. So the
  server tops the sum's noise up (:func:`top_up`) with the shares missing from
  ``num_clients`` (the encoding's cohort cap) before decoding: the released sum carries exactly
  ``num_clients`` shares whether any one client took part or not, and adding or removing a client
  moves only its mean. :func:`released_view_event` accounts that, with Poisson amplification at
  the sampling rate q.

The server-view epsilon is never below the released-view one (fewer shares, no amplification),
so it is the run's headline epsilon; both go to the ledger.

Stops: readers of released models learning about a client's participation from the noise level.
Does not stop: a server that skips the top-up (it only protects against others, and only an
honest server adds it), nor anything :mod:`fedlab.privacy.skellam` lists.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedlab.privacy.skellam import SkellamEvent, SkellamParams, decode_sum, reduce_mod, skellam_noise

SERVER_VIEW = "skellam-ddp"
"""Ledger mechanism of the server-view (zero-out, unsubsampled) accounting: the run's epsilon."""
RELEASED_VIEW = "skellam-ddp-released"
"""Ledger mechanism of the released-model (add/remove, Poisson-amplified) accounting."""


def top_up(
    total: npt.ArrayLike, params: SkellamParams, *, num_included: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Add the Skellam noise of the ``num_clients - num_included`` shares missing from the sum.

    A sum of independent Skellam shares of rate lam is Skellam of the summed rates, so the
    result carries exactly ``params.num_clients`` shares of noise, mod 2^bits.

    Args:
        total: The modular sum of the included clients' encodings, length d'.
        params: The round's mechanism parameters.
        num_included: How many clients' encodings (and noise shares) are in ``total``.
        rng: The server's generator (seeded from ``os.urandom`` in deployment).

    Raises:
        ValueError: If more clients are included than ``params.num_clients``, or none.

    Example:
        >>> p = SkellamParams(clip=1.0, noise_multiplier=1.0, num_clients=4, min_survivors=2,
        ...                   bits=16, dim=4)
        >>> top_up(np.zeros(4, dtype=np.int64), p, num_included=4, rng=np.random.default_rng(0)).tolist()
        [0, 0, 0, 0]
    """
    if not 1 <= num_included <= params.num_clients:
        raise ValueError(f"num_included must be in [1, {params.num_clients}]; got {num_included}")
    residues = np.asarray(total, dtype=np.int64)
    missing = params.num_clients - num_included
    noise = skellam_noise(residues.shape, lam=missing * params.local_lambda, rng=rng)
    return reduce_mod(residues + noise, bits=params.bits)


def released_sum(
    total: npt.ArrayLike,
    params: SkellamParams,
    *,
    num_included: int,
    seed: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.float64]:
    """The noisy sum the server releases: :func:`top_up`, then :func:`~fedlab.privacy.skellam.decode_sum`.

    Args:
        total: The modular sum of the included clients' encodings, length d'.
        params: The round's mechanism parameters.
        num_included: How many clients are in ``total``.
        seed: The public per-round rotation seed.
        rng: The server's generator for the top-up.
    """
    return decode_sum(top_up(total, params, num_included=num_included, rng=rng), params, seed=seed)


def server_view_event(params: SkellamParams, *, steps: int = 1) -> SkellamEvent:
    """``steps`` released rounds as the server sees them: zero-out, ``min_survivors`` shares, no sampling.

    >>> p = SkellamParams(clip=1.0, noise_multiplier=1.0, num_clients=10, min_survivors=7,
    ...                   bits=16, dim=8)
    >>> e = server_view_event(p)
    >>> e.sample_rate, e.num_survivors
    (1.0, 7)
    """
    return SkellamEvent(params=params, sample_rate=1.0, steps=steps)


def released_view_event(params: SkellamParams, *, sample_rate: float, steps: int = 1) -> SkellamEvent:
    """``steps`` released rounds as model readers see them: add/remove, ``num_clients`` shares, q.

    >>> p = SkellamParams(clip=1.0, noise_multiplier=1.0, num_clients=10, min_survivors=7,
    ...                   bits=16, dim=8)
    >>> e = released_view_event(p, sample_rate=0.5)
    >>> e.sample_rate, e.num_survivors
    (0.5, 10)
    """
    return SkellamEvent(params=params, sample_rate=sample_rate, steps=steps, num_survivors=params.num_clients)
