"""FedProx's Synthetic(alpha, beta) federated data, generated lazily per client.

Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020). Client
``k`` draws ``u_k ~ N(0, alpha)`` and ``B_k ~ N(0, beta)`` (standard deviations, as in
the FedProx generator); ``W_k`` (``dim x num_classes``) and ``b_k`` with entries
``~ N(u_k, 1)``; ``v_k`` with entries ``~ N(B_k, 1)``. Its examples are
``x ~ N(v_k, Sigma)`` with ``Sigma`` diagonal, ``Sigma_jj = j^-1.2`` (``j`` from 1), and
``y = argmax(softmax(x W_k + b_k))``. The IID variant (FedProx's Synthetic-IID) shares
one ``W, b`` with entries ``~ N(0, 1)`` and ``v = 0`` among all clients; ``alpha`` and
``beta`` are then unused.

In the non-IID variant ``u_k`` adds the same amount to every class score, so it cancels in the
argmax: each client labels with its own independent random linear model, whatever ``alpha`` and
``beta``. A global model can therefore only fit the clients it trained on, and is at chance on
clients it never saw (tested). Under user-level DP, which limits what the model keeps of any one
client, use the IID variant to measure utility.

Nothing is generated up front except one integer array of client sizes and the small
central test set: client ``k``'s data is a pure function of ``(seed, k)``, so a
federation of 10^6 clients costs a few megabytes. Independent random streams come
from ``numpy.random.SeedSequence(seed, spawn_key=(purpose, k))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedlab.core.errors import DataError
from fedlab.data.types import ArrayDataset, check_client_index

# Purposes of the independent random streams (first element of the spawn key).
_SIZES = 0
_SHARED_MODEL = 1
_CLIENT_MODEL = 2
_TRAIN_SAMPLES = 3
_TEST_SAMPLES = 4

_COVARIANCE_EXPONENT = -1.2


@dataclass(frozen=True, eq=False)
class LinearModel:
    """One client's data-generating model: ``x ~ N(mean, Sigma)``, ``y = argmax(x W + b)``."""

    weights: NDArray[np.float64]
    bias: NDArray[np.float64]
    mean: NDArray[np.float64]

    def sample(self, rng: np.random.Generator, n: int) -> ArrayDataset:
        """Draw ``n`` labelled examples with the diagonal covariance ``Sigma_jj = j^-1.2``.

        Args:
            rng: Source of the feature noise.
            n: Number of examples.

        """
        dim = self.mean.shape[0]
        std = np.arange(1, dim + 1, dtype=np.float64) ** (_COVARIANCE_EXPONENT / 2)
        x = self.mean + rng.standard_normal((n, dim)) * std
        y = np.argmax(x @ self.weights + self.bias, axis=1)
        return ArrayDataset(x.astype(np.float32), y.astype(np.int64), num_classes=self.bias.shape[0])


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def client_model(*, alpha: float, beta: float, seed: int, k: int, dim: int, num_classes: int) -> LinearModel:
    """Return non-IID client ``k``'s model, a pure function of ``(seed, k)``.

    Args:
        alpha: Standard deviation of the client's weight offset ``u_k``.
        beta: Standard deviation of the client's feature-mean offset ``B_k``.
        seed: Federation seed (>= 0).
        k: Client index.
        dim: Feature dimension.
        num_classes: Number of classes.

    """
    rng = _rng(seed, _CLIENT_MODEL, k)
    u = rng.normal(0.0, alpha)
    offset = rng.normal(0.0, beta)
    weights = rng.normal(u, 1.0, (dim, num_classes))
    bias = rng.normal(u, 1.0, num_classes)
    mean = rng.normal(offset, 1.0, dim)
    return LinearModel(weights, bias, mean)


def shared_model(*, seed: int, dim: int, num_classes: int) -> LinearModel:
    """Return the model every client shares in the IID variant (``W, b ~ N(0, 1)``, ``v = 0``)."""
    rng = _rng(seed, _SHARED_MODEL)
    weights = rng.normal(0.0, 1.0, (dim, num_classes))
    bias = rng.normal(0.0, 1.0, num_classes)
    return LinearModel(weights, bias, np.zeros(dim))


def lognormal_sizes(
    rng: np.random.Generator, *, num_clients: int, mean_samples: int, sigma: float, min_samples: int
) -> NDArray[np.int64]:
    """Draw client sizes from a lognormal with mean ``mean_samples``, floored at ``min_samples``.

    >>> s = lognormal_sizes(np.random.default_rng(0), num_clients=5, mean_samples=100,
    ...                     sigma=1.0, min_samples=10)
    >>> s.dtype, bool((s >= 10).all())
    (dtype('int64'), True)
    """
    mu = math.log(mean_samples) - sigma**2 / 2
    raw = rng.lognormal(mu, sigma, num_clients)
    return np.maximum(raw.astype(np.int64), min_samples)


@dataclass(frozen=True, eq=False)
class SyntheticFederatedData:
    """Synthetic(alpha, beta) with natural per-client partitions; see the module docstring.

    Build it with :func:`make_synthetic`. ``client(k)`` regenerates client ``k``'s
    model and examples from ``(seed, k)`` on every call, so it does not depend on
    which other clients were materialized.
    """

    alpha: float
    beta: float
    seed: int
    iid: bool
    dim: int
    num_classes: int
    sizes: NDArray[np.int64]
    test: ArrayDataset

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return int(self.sizes.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example's features, ``(dim,)``."""
        return (self.dim,)

    def model(self, k: int) -> LinearModel:
        """Return the model that generates client ``k``'s data (shared when ``iid``)."""
        check_client_index(k, self.num_clients)
        if self.iid:
            return shared_model(seed=self.seed, dim=self.dim, num_classes=self.num_classes)
        return client_model(
            alpha=self.alpha, beta=self.beta, seed=self.seed, k=k, dim=self.dim, num_classes=self.num_classes
        )

    def client(self, i: int) -> ArrayDataset:
        """Generate client ``i``'s training examples (deterministic in ``(seed, i)``)."""
        return self.model(i).sample(_rng(self.seed, _TRAIN_SAMPLES, i), self.client_size(i))

    def client_size(self, i: int) -> int:
        """Return client ``i``'s number of training examples without generating them."""
        check_client_index(i, self.num_clients)
        return int(self.sizes[i])

    def client_sizes(self) -> NDArray[np.int64]:
        """Return every client's number of training examples (a read-only view)."""
        view = self.sizes.view()
        view.flags.writeable = False
        return view


def _check_synthetic_args(
    *, alpha: float, beta: float, num_clients: int, mean_samples: int, seed: int
) -> None:
    for key, value in (("data.synthetic_alpha", alpha), ("data.synthetic_beta", beta)):
        if not value >= 0.0:
            raise DataError(f"{key}: must be >= 0; got {value!r}")
    if num_clients < 1:
        raise DataError(f"data.num_clients: must be >= 1; got {num_clients}")
    if mean_samples < 1:
        raise DataError(f"data.synthetic_mean_samples: must be >= 1; got {mean_samples}")
    if seed < 0:
        raise DataError(f"run.seed: must be >= 0 for synthetic data; got {seed}")


def _synthetic_test_set(
    *,
    alpha: float,
    beta: float,
    seed: int,
    iid: bool,
    dim: int,
    num_classes: int,
    clients: int,
    per_client: int,
) -> ArrayDataset:
    parts: list[ArrayDataset] = []
    for k in range(clients):
        model = (
            shared_model(seed=seed, dim=dim, num_classes=num_classes)
            if iid
            else client_model(alpha=alpha, beta=beta, seed=seed, k=k, dim=dim, num_classes=num_classes)
        )
        parts.append(model.sample(_rng(seed, _TEST_SAMPLES, k), per_client))
    x = np.concatenate([p.x for p in parts])
    y = np.concatenate([p.y for p in parts])
    return ArrayDataset(x, y, num_classes=num_classes)


def make_synthetic(
    *,
    alpha: float,
    beta: float,
    num_clients: int,
    mean_samples: int,
    seed: int,
    iid: bool = False,
    dim: int = 60,
    num_classes: int = 10,
    min_samples: int = 10,
    size_sigma: float = 1.0,
    test_clients: int = 50,
    test_samples_per_client: int = 20,
) -> SyntheticFederatedData:
    """Build FedProx's Synthetic(alpha, beta) federation without generating any client.

    Client sizes are ``max(min_samples, floor(s))`` with ``s`` lognormal of mean
    ``mean_samples`` and log-standard-deviation ``size_sigma``. The central test set
    holds ``test_samples_per_client`` fresh examples (a stream separate from the
    training examples) from each of clients ``0 .. min(num_clients, test_clients) - 1``,
    drawn from those clients' own models.

    Args:
        alpha: Spread of the clients' models (``u_k ~ N(0, alpha)``), >= 0.
        beta: Spread of the clients' feature means (``B_k ~ N(0, beta)``), >= 0.
        num_clients: Number of clients (10^6 is fine).
        mean_samples: Mean client size before flooring at ``min_samples``.
        seed: Seed of every random draw (>= 0).
        iid: Use the IID variant (one shared model; ``alpha`` and ``beta`` unused).
        dim: Feature dimension.
        num_classes: Number of classes.
        min_samples: Smallest client size.
        size_sigma: Log-standard-deviation of the client sizes.
        test_clients: How many of the first clients contribute to the test set.
        test_samples_per_client: Test examples drawn from each of those clients.

    Raises:
        DataError: If an argument is out of range.

    """
    _check_synthetic_args(
        alpha=alpha, beta=beta, num_clients=num_clients, mean_samples=mean_samples, seed=seed
    )
    if dim < 1 or num_classes < 2 or min_samples < 1 or test_clients < 1 or test_samples_per_client < 1:
        raise DataError("data: synthetic dim, min_samples and test sizes must be >= 1 and num_classes >= 2")
    sizes = lognormal_sizes(
        _rng(seed, _SIZES),
        num_clients=num_clients,
        mean_samples=mean_samples,
        sigma=size_sigma,
        min_samples=min_samples,
    )
    test = _synthetic_test_set(
        alpha=alpha,
        beta=beta,
        seed=seed,
        iid=iid,
        dim=dim,
        num_classes=num_classes,
        clients=min(num_clients, test_clients),
        per_client=test_samples_per_client,
    )
    return SyntheticFederatedData(alpha, beta, seed, iid, dim, num_classes, sizes, test)
