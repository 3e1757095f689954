"""fedlab's DP-SGD on your own model, optimizer and data loader (a ``PrivacyEngine``-like facade).

:class:`PrivateTraining` does what Opacus' ``PrivacyEngine.make_private`` does: the model gets
per-sample gradients (``GradSampleModule``), the optimizer clips each one to ``max_grad_norm`` and
adds Gaussian noise of standard deviation z*C to their sum (``DPOptimizer``, mean reduction over the
expected batch size), and the data loader draws Poisson batches (each example independently with
probability q = batch_size/n; ``n // batch_size`` batches per epoch, empty ones included). The
difference is fedlab's randomness: the batches and the noise come from ChaCha20 streams keyed by a
secret drawn from ``os.urandom`` for each :meth:`PrivateTraining.make_private` call (the floating-point
mitigation of Opacus' ``secure_mode`` included), never from a seed that the server or the config
knows. Every optimizer step is added to the accountant history (continued from ``history``, merged
as Opacus merges steps), and ``on_step`` sees the history after each step, so a caller can persist
it as it grows.

Guarantee: (epsilon, delta) for adding or removing one example of the loader's dataset, for
everything the trained model reveals, against anyone who sees it (the server included), as long as
the model is trained only through the private optimizer on the private loader's batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_collate

from fedlab.privacy.events import GaussianEvent
from fedlab.training.accounting import epsilon_from_history, history_after_steps
from fedlab.training.randomness import RoundStreams, StreamDPOptimizer, fresh_secret
from fedlab.training.specs import poisson_sample_rate

HistoryHook = Callable[[tuple[GaussianEvent, ...]], None]
"""Called with the whole accountant history after every private optimizer step."""


class _PoissonBatches:
    """A ``batch_sampler``: every epoch ``steps`` Poisson batches of indices from the secret streams."""

    def __init__(self, streams: RoundStreams, num_examples: int, sample_rate: float, steps: int) -> None:
        self._streams = streams
        self._num_examples = num_examples
        self._sample_rate = sample_rate
        self._steps = steps

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._streams.poisson_batches(
            self._num_examples, sample_rate=self._sample_rate, steps=self._steps
        )
        for batch in batches:
            yield batch.tolist()

    def __len__(self) -> int:
        return self._steps


class PrivateTraining:
    """DP-SGD parameters and accountant history; :meth:`make_private` turns a training loop private.

    Args:
        noise_multiplier: z, the noise standard deviation over the clip norm (> 0).
        max_grad_norm: C, the per-sample gradient clip norm (> 0).
        history: The accountant history of earlier training of the same data (empty: none).
        accountant: The Opacus accountant :meth:`epsilon` uses (``rdp`` or ``prv``).
        on_step: Called with the whole history after every step (for example, to persist it).

    Raises:
        ValueError: On a non-positive z or C.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(64, 3), torch.randint(0, 2, (64,)))
        >>> model = nn.Linear(3, 2)
        >>> private = PrivateTraining(noise_multiplier=1.0, max_grad_norm=1.0)
        >>> model, optimizer, loader = private.make_private(
        ...     model, torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(data, batch_size=16))
        >>> for x, y in loader:
        ...     optimizer.zero_grad()
        ...     nn.functional.cross_entropy(model(x), y).backward()
        ...     optimizer.step()
        >>> private.history
        (GaussianEvent(noise_multiplier=1.0, sample_rate=0.25, steps=4),)
        >>> 0 < private.epsilon(delta=1e-5) < 100
        True
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        history: Sequence[GaussianEvent] = (),
        accountant: str = "rdp",
        on_step: HistoryHook | None = None,
    ) -> None:
        if not (noise_multiplier > 0.0 and max_grad_norm > 0.0):
            raise ValueError(
                f"noise_multiplier and max_grad_norm must be > 0; got {noise_multiplier!r}, {max_grad_norm!r}"
            )
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.accountant = accountant
        self._history = tuple(history)
        self._on_step = on_step

    @property
    def history(self) -> tuple[GaussianEvent, ...]:
        """Every DP-SGD step taken so far (``history`` given at construction first)."""
        return self._history

    def epsilon(self, *, delta: float) -> float:
        """The epsilon at ``delta`` of the whole history (0 before any step)."""
        if not self._history:
            return 0.0
        return max(0.0, epsilon_from_history(self._history, delta=delta, accountant=self.accountant))

    def make_private(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, data_loader: DataLoader[Any]
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader[Any]]:
        """The private model, optimizer and data loader to train with (fresh secret randomness).

        The model is wrapped for per-sample gradients (it must pass Opacus' validator, and be
        wrapped once: build a new model each round). The loader keeps the dataset and the collate
        function of ``data_loader`` and its ``batch_size`` as the expected batch size.

        Raises:
            ValueError: If the model has layers Opacus cannot train privately (BatchNorm, ...),
                or the loader has no ``batch_size`` or one larger than its dataset.
        """
        errors = ModuleValidator.validate(module, strict=False)
        if errors:
            raise ValueError(f"the model cannot be trained with DP-SGD: {errors[0]}")
        dataset = data_loader.dataset
        num_examples = len(dataset)  # type: ignore[arg-type]
        batch_size = data_loader.batch_size
        if batch_size is None:
            raise ValueError("the data loader needs a batch_size (the expected Poisson batch size)")
        sample_rate = poisson_sample_rate(num_examples, batch_size)
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        streams = RoundStreams(device)
        streams.start_secret(fresh_secret())
        model = GradSampleModule(module, batch_first=True, loss_reduction="mean")
        private = StreamDPOptimizer(
            optimizer,
            streams=streams,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=batch_size,
            loss_reduction="mean",
        )
        private.attach_step_hook(lambda _: self._stepped(sample_rate))
        first = dataset[0]
        items = first if isinstance(first, tuple | list) else (first,)
        loader = DataLoader(
            dataset,
            batch_sampler=_PoissonBatches(streams, num_examples, sample_rate, num_examples // batch_size),
            collate_fn=wrap_collate_with_empty(
                collate_fn=data_loader.collate_fn or default_collate,
                sample_empty_shapes=[(0, *shape_safe(x)) for x in items],
                dtypes=[dtype_safe(x) for x in items],
            ),
            num_workers=data_loader.num_workers,
        )
        return model, cast(torch.optim.Optimizer, private), loader

    def _stepped(self, sample_rate: float) -> None:
        self._history = history_after_steps(
            self._history, noise_multiplier=self.noise_multiplier, sample_rate=sample_rate, steps=1
        )
        if self._on_step is not None:
            self._on_step(self._history)
