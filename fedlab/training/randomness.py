"""Where one client's round of training draws its randomness: Poisson batches, shuffles, DP noise.

A trainer holds one :class:`RoundStreams` and starts it every round from one of two sources:

* **seeded** (:meth:`RoundStreams.start_seeded`, ``fedlab simulate`` only): torch generators
  seeded from the client seed and the round seed. Reproducible, and therefore known to whoever
  knows both seeds: the simulator, the server, anyone holding the run's ``config.json``. They can
  rebuild the client's batches and noise and subtract the noise from its update.
* **secret** (:meth:`RoundStreams.start_secret`, every deployment path): ChaCha20 streams
  (:class:`~fedlab.privacy.secure_random.SecureRandom`) keyed by a secret the client draws from
  ``os.urandom`` for the round (:func:`fresh_secret`) and never sends. Neither the server nor the
  config determines them, so the server cannot replay the client's training; the Gaussian noise
  carries the floating-point mitigation of Opacus' ``secure_mode`` (sum of four draws over two).

Stops (secret source): a server, or anyone holding the config, reproducing a client's DP-SGD
sampling or noise. Does not stop: timing side channels of the noise computation, or an attacker
reading the client's memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from fedlab.privacy.secure_random import SecureRandom

SECRET_BYTES = 32
"""Length of a client's per-round secret."""


def fresh_secret() -> bytes:
    """A new per-round client secret: 32 bytes from ``os.urandom``.

    >>> len(fresh_secret()), fresh_secret() != fresh_secret()
    (32, True)
    """
    return os.urandom(SECRET_BYTES)


def round_seeds(seed: int, round_seed: int) -> tuple[int, int]:
    """Derive independent 64-bit seeds for Poisson sampling and for DP noise (seeded rounds).

    >>> a, b = round_seeds(0, 1)
    >>> a != b and (a, b) == round_seeds(0, 1)
    True
    """
    sampling, noise = np.random.SeedSequence([seed, round_seed]).generate_state(2, dtype=np.uint64)
    return int(sampling), int(noise)


class RoundStreams:
    """A trainer's randomness, restarted every round from a seed pair or from a client secret.

    Args:
        device: Where the model's gradients live (Opacus draws seeded noise there).

    Example:
        >>> streams = RoundStreams(torch.device("cpu"))
        >>> streams.start_seeded(seed=1, round_seed=2)
        >>> [b.tolist() for b in streams.shuffled_batches(4, 2)] == [
        ...     b.tolist() for b in (streams.start_seeded(seed=1, round_seed=2) or
        ...                          streams.shuffled_batches(4, 2))]
        True
        >>> streams.start_secret(fresh_secret())
        >>> streams.secret_noise is not None
        True
    """

    def __init__(self, device: torch.device) -> None:
        self.noise_generator = torch.Generator(device=device)  # Opacus draws seeded noise with it
        self._sampling_generator = torch.Generator()  # Opacus' sampler draws on the CPU
        self._secret_sampling: SecureRandom | None = None
        self.secret_noise: SecureRandom | None = None
        """The noise stream of a secret round (None in a seeded round: Opacus' generator draws)."""

    def start_seeded(self, *, seed: int, round_seed: int) -> None:
        """Start a reproducible round (simulation): every draw follows from the two seeds."""
        sampling_seed, noise_seed = round_seeds(seed, round_seed)
        self._sampling_generator.manual_seed(sampling_seed)
        self.noise_generator.manual_seed(noise_seed)
        self._secret_sampling = None
        self.secret_noise = None

    def start_secret(self, secret: bytes) -> None:
        """Start a round whose draws come from ``secret`` (at least 32 bytes) and nothing else."""
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"a client secret has at least {SECRET_BYTES} bytes; got {len(secret)}")
        self._secret_sampling = SecureRandom.derive(secret, "fedlab/client-round/sampling")
        self.secret_noise = SecureRandom.derive(secret, "fedlab/client-round/noise")

    def gaussian(self, std: float, like: torch.Tensor) -> torch.Tensor:
        """One parameter's DP-SGD noise, N(0, std^2) shaped, typed and placed as ``like``.

        The draw a :class:`StreamDPOptimizer` adds to that parameter: seeded rounds draw
        with the torch generator exactly as Opacus' ``DPOptimizer`` does (no draw when
        ``std`` is 0); secret rounds draw from the ChaCha20 noise stream, with the
        floating-point mitigation. Trainers that call it once per parameter per step,
        in parameter order, reproduce the optimizer's noise.

        >>> a, b = RoundStreams(torch.device("cpu")), RoundStreams(torch.device("cpu"))
        >>> a.start_seeded(seed=1, round_seed=2); b.start_seeded(seed=1, round_seed=2)
        >>> bool((a.gaussian(1.0, torch.zeros(3)) == b.gaussian(1.0, torch.zeros(3))).all())
        True
        """
        if self.secret_noise is not None:
            draw = torch.from_numpy(self.secret_noise.normal(0.0, std, size=tuple(like.shape)))
            return draw.to(dtype=like.dtype, device=like.device)
        if std == 0:
            return torch.zeros_like(like)
        return torch.normal(
            0.0,
            std,
            size=tuple(like.shape),
            device=like.device,
            generator=self.noise_generator,
            dtype=like.dtype,
        )

    def poisson_batches(self, num_examples: int, *, sample_rate: float, steps: int) -> Iterator[torch.Tensor]:
        """``steps`` Poisson batches: each example independently with probability ``sample_rate``."""
        if self._secret_sampling is not None:
            for _ in range(steps):
                chosen = self._secret_sampling.random(num_examples) < sample_rate
                yield torch.from_numpy(np.flatnonzero(chosen).astype(np.int64))
            return
        sampler = UniformWithReplacementSampler(
            num_samples=num_examples, sample_rate=sample_rate, generator=self._sampling_generator, steps=steps
        )
        for chosen in sampler:
            yield torch.tensor(chosen, dtype=torch.long)

    def shuffled_batches(self, num_examples: int, batch_size: int) -> tuple[torch.Tensor, ...]:
        """One epoch of minibatches over a random permutation of the examples (no DP)."""
        if self._secret_sampling is not None:
            order = np.argsort(self._secret_sampling.random(num_examples), kind="stable")
            return torch.split(torch.from_numpy(order.astype(np.int64)), batch_size)
        return torch.split(torch.randperm(num_examples, generator=self._sampling_generator), batch_size)


def start_streams(streams: RoundStreams, *, seed: int, round_seed: int | None, secret: bytes | None) -> None:
    """Start a round's streams from ``round_seed`` (with the client ``seed``) or from ``secret``.

    Raises:
        ValueError: If neither or both are given, or ``round_seed`` is negative.
    """
    if (round_seed is None) == (secret is None):
        raise ValueError("give exactly one of round_seed (simulation) and secret (deployment)")
    if secret is not None:
        streams.start_secret(secret)
        return
    assert round_seed is not None
    if round_seed < 0:
        raise ValueError(f"round_seed must be >= 0; got {round_seed}")
    streams.start_seeded(seed=seed, round_seed=round_seed)


def epoch_batches(
    streams: RoundStreams,
    num_examples: int,
    batch_size: int,
    sample_rate: float | None,
    *,
    public_size: int | None = None,
) -> Iterable[torch.Tensor]:
    """One epoch's batches over ``num_examples`` examples: Poisson under DP, else shuffled minibatches.

    Under DP the epoch is ``public_size // batch_size`` steps (``public_size``: ``num_examples``).
    """
    if sample_rate is None:
        return streams.shuffled_batches(num_examples, batch_size)
    steps = (num_examples if public_size is None else public_size) // batch_size
    return streams.poisson_batches(num_examples, sample_rate=sample_rate, steps=steps)


class StreamDPOptimizer(DPOptimizer):  # type: ignore[misc]
    """Opacus' ``DPOptimizer`` drawing its Gaussian noise from the trainer's round streams.

    In a seeded round Opacus draws the noise with the streams' torch generator, exactly as
    ``DPOptimizer`` does. In a secret round each step's noise is
    ``streams.secret_noise.normal(0, z * C)`` (ChaCha20, floating-point mitigation), and
    ``secure_mode`` is set, so no draw comes from a generator anyone else can seed.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, streams: RoundStreams, **kwargs: object) -> None:
        super().__init__(optimizer, generator=streams.noise_generator, **kwargs)
        self._streams = streams

    def add_noise(self) -> None:
        """Add the step's noise to the clipped, summed gradients (Opacus' step 2)."""
        source = self._streams.secret_noise
        self.secure_mode = source is not None
        if source is None:
            super().add_noise()
            return
        std = float(self.noise_multiplier * self.max_grad_norm)
        for p in self.params:
            summed = p.summed_grad
            p.grad = (summed + self._streams.gaussian(std, summed)).view_as(p)
