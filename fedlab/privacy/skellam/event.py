"""The privacy event of the Skellam mechanism: ``steps`` Poisson-subsampled rounds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedlab.privacy.skellam._checks import as_float, as_int, require
from fedlab.privacy.skellam.params import SkellamParams
from fedlab.privacy.skellam.rdp import SKELLAM_RDP_ORDERS, poisson_subsampled_rdp, skellam_rdp

__all__ = ["SkellamEvent"]


@dataclass(frozen=True, kw_only=True)
class SkellamEvent:
    """``steps`` rounds of the Poisson-subsampled distributed Skellam mechanism.

    Attributes:
        params: The mechanism parameters of every round.
        sample_rate: Poisson sampling probability of a client per round, in (0, 1].
        steps: Number of identical rounds, >= 1.
        num_survivors: Noise shares in each released sum (default ``params.min_survivors``,
            the worst case any released round can have).

    """

    params: SkellamParams
    sample_rate: float
    steps: int
    num_survivors: int | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.params, SkellamParams):
            raise ValueError(f"params must be SkellamParams; got {type(self.params).__name__}")
        rate = as_float("sample_rate", self.sample_rate)
        steps = as_int("steps", self.steps)
        survivors = self.params.min_survivors if self.num_survivors is None else self.num_survivors
        survivors = as_int("num_survivors", survivors)
        require(0.0 < rate <= 1.0, f"sample_rate must be in (0, 1]; got {rate!r}")
        require(steps >= 1, f"steps must be >= 1; got {steps!r}")
        require(survivors >= 1, f"num_survivors must be >= 1; got {survivors!r}")
        object.__setattr__(self, "sample_rate", rate)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "num_survivors", survivors)

    def rdp(self, orders: npt.ArrayLike = SKELLAM_RDP_ORDERS) -> npt.NDArray[np.float64]:
        """Returns the RDP of all ``steps`` rounds at ``orders`` (amplified, composed)."""

        def base(alphas: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            return skellam_rdp(self.params, orders=alphas, num_survivors=self.num_survivors)

        return self.steps * poisson_subsampled_rdp(base, sample_rate=self.sample_rate, orders=orders)

    def to_dict(self) -> dict[str, Any]:
        """Returns the event as a JSON-serializable dict."""
        return {
            "params": self.params.to_dict(),
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "num_survivors": self.num_survivors,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SkellamEvent:
        """Rebuilds an event from :meth:`to_dict` output.

        Raises:
            ValueError: If keys are missing or extra, or a value is invalid.

        """
        keys = {"params", "sample_rate", "steps", "num_survivors"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise ValueError(f"a SkellamEvent needs exactly the keys {sorted(keys)}; got {data!r}")
        return cls(
            params=SkellamParams.from_dict(data["params"]),
            sample_rate=data["sample_rate"],
            steps=data["steps"],
            num_survivors=data["num_survivors"],
        )
