"""Distributed DP under secure aggregation: the Skellam mechanism (Agarwal, Kairouz, Liu 2021).

Each client adds a small share of integer noise to its own quantized update, so
that the *sum* the secure aggregation reveals is already private: nobody, the
server included, ever sees a less-noisy sum. One round, in named steps:

Client (:func:`encode_client`)
    1. flatten the update to d values and :func:`~fedlab.privacy.rotation.rotate`
       it (randomized Walsh-Hadamard, public per-round seed, padded to d');
    2. :func:`clip_l2` to norm c;
    3. multiply by the scale s (:attr:`SkellamParams.scale`);
    4. :func:`conditional_stochastic_round`: unbiased rounding, resampled while
       the rounded norm exceeds :attr:`SkellamParams.rounded_norm_bound`;
    5. :func:`skellam_noise`: add Poisson(lam) - Poisson(lam) per coordinate;
    6. :func:`reduce_mod` 2^bits; the residues go to secure aggregation.

Server (:func:`decode_sum`, :func:`decode_mean`)
    :func:`centre` the modular sum to [-2^(b-1), 2^(b-1)), divide by s,
    :func:`~fedlab.privacy.rotation.unrotate`, crop to d; the mean divides by the
    fixed expected cohort size n (never by the realised number of survivors,
    which depends on who was sampled).

Accounting (:func:`skellam_rdp`, :func:`poisson_subsampled_rdp`,
:class:`SkellamEvent`, :class:`SkellamAccountant`,
:func:`calibrate_skellam_noise_multiplier`): the Skellam RDP bound per round
with the rounding-inflated sensitivities, amplified by Poisson subsampling with
the general bound of Zhu & Wang (2019), composed over rounds (RDP adds), and
converted to (epsilon, delta) with the improved conversion of ``dp_accounting``
(Balle et al. 2020). At 16 bits the mechanism costs well under 1% epsilon over
the Gaussian at the same noise; with subsampling (q < 1) the generic
amplification bound, not the mechanism, costs up to about 25% epsilon over the
exact subsampled-Gaussian accountant (see :func:`poisson_subsampled_rdp`).

Threat model. It protects every client's update against an honest-but-curious
server under zero-out adjacency (the server knows who took part; the client's
update is replaced by zero, its noise share stays), and anyone after it,
*provided* the secure aggregation reveals only the modular sum and at least
``min_survivors`` clients' noise shares are in it. Under add/remove adjacency a
client's absence also removes its noise share, which the accounting here does
not cover: :mod:`fedlab.privacy.skellam_release` tops the noise up before a sum
is released and accounts both adjacencies. It does **not** protect:

- when fewer than ``min_survivors`` clients survive (the total noise is then
  below the calibrated level): the server must check :func:`noise_is_sufficient`
  and abort the round, releasing nothing;
- against clients colluding with the server that withhold their noise share:
  count only clients you trust to add noise in ``min_survivors``;
- against poisoning: a malicious client can send any residues; secure aggregation
  hides its input, so nothing here bounds it;
- against side channels: noise and rounding draw from the ``numpy.random.Generator``
  passed in. In deployment pass one seeded from a cryptographically secure source,
  e.g. ``np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32))))``;
  PCG64 itself is not a CSPRNG and numpy's Poisson sampler is not constant-time,
  so an attacker timing the client can learn about the noise it drew.

Modular wrap-around (a coordinate of the sum leaving [-2^(b-1), 2^(b-1))) only
costs accuracy, never privacy: decoding is post-processing of the private sum.

Modules: :mod:`~fedlab.privacy.skellam.params` (:class:`SkellamParams`),
:mod:`~fedlab.privacy.skellam.encoding` (client steps),
:mod:`~fedlab.privacy.skellam.decoding` (server steps),
:mod:`~fedlab.privacy.skellam.rdp` (Rényi DP of a round, subsampling),
:mod:`~fedlab.privacy.skellam.event` (:class:`SkellamEvent`),
:mod:`~fedlab.privacy.skellam.accountant` (:class:`SkellamAccountant`),
:mod:`~fedlab.privacy.skellam.calibration` (noise calibration); their shared
argument checks are in the private ``_checks`` module. Every public name is
re-exported here.
"""

from __future__ import annotations

from fedlab.privacy.skellam.accountant import SkellamAccountant
from fedlab.privacy.skellam.calibration import calibrate_skellam_noise_multiplier
from fedlab.privacy.skellam.decoding import centre, decode_mean, decode_sum
from fedlab.privacy.skellam.encoding import (
    MAX_ROUNDING_ATTEMPTS,
    ClientEncoding,
    clip_l2,
    conditional_stochastic_round,
    encode_client,
    reduce_mod,
    skellam_noise,
)
from fedlab.privacy.skellam.event import SkellamEvent
from fedlab.privacy.skellam.params import DEFAULT_BETA, DEFAULT_K, SkellamParams, noise_is_sufficient
from fedlab.privacy.skellam.rdp import SKELLAM_RDP_ORDERS, poisson_subsampled_rdp, skellam_rdp

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_K",
    "MAX_ROUNDING_ATTEMPTS",
    "SKELLAM_RDP_ORDERS",
    "ClientEncoding",
    "SkellamAccountant",
    "SkellamEvent",
    "SkellamParams",
    "calibrate_skellam_noise_multiplier",
    "centre",
    "clip_l2",
    "conditional_stochastic_round",
    "decode_mean",
    "decode_sum",
    "encode_client",
    "noise_is_sufficient",
    "poisson_subsampled_rdp",
    "reduce_mod",
    "skellam_noise",
    "skellam_rdp",
]
