#!/usr/bin/env python
"""Cost of DP noise from a cryptographically secure stream: fedlab's SecureRandom vs torch and Opacus.

Three peers produce the same thing in the same invocation: one float32 CPU tensor of d Gaussian
values with std 1.0, the noise DP-SGD adds to a model of d parameters.

- ``torch_normal``: ``torch.normal(0, 1, size=(d,), generator=g)``, what Opacus draws without
  ``secure_mode`` (one draw per value from torch's seeded CPU generator; not a CSPRNG).
- ``opacus_secure_mode``: Opacus' own ``_generate_noise(std=1.0, reference=torch.zeros(d),
  generator=g, secure_mode=True)``: four draws per value summed and halved (the floating-point
  attack mitigation), from the same seeded generator. Real Opacus secure mode draws from
  ``torchcsprng``'s ``/dev/urandom`` generator instead (not installed here), so this is the
  arithmetic of the mitigation without the cost of a secure source.
- ``fedlab_secure``: ``torch.from_numpy(SecureRandom(key).normal(0.0, 1.0, size=d)).to(torch.float32)``:
  a ChaCha20 keystream, Box–Muller in float64, the same four-sum mitigation, then the conversion
  to a float32 tensor (all of it timed, the key schedule included).

Each time is the median over ``--repeats`` calls (``time.perf_counter``), after one untimed warm-up
call per peer; the three peers take turns within every repeat. ``torch.set_num_threads(1)``: one
core for every peer. ``ratio_fedlab_over_*`` is fedlab's median over the peer's (above 1: fedlab is
slower). ``sample_std`` is each peer's standard deviation over its last tensor (a check that all
three produce the same noise level). Timings depend on machine load: ``workload`` records the
1-minute load average before and after.

Prints one JSON line per d. A benchmark, not a test: ``--quick`` (d = 10^4, 3 repeats) only keeps
it working in CI.

    python benchmarks/secure_noise.py [--quick] [--repeats N] [--sizes D ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from opacus.optimizers.optimizer import _generate_noise

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fedlab.privacy.secure_random import SecureRandom  # noqa: E402

FULL_SIZES = (10**4, 10**5, 10**6)
QUICK_SIZES = (10**4,)
FULL_REPEATS = 21
QUICK_REPEATS = 3
STD = 1.0
KEY = bytes(range(32))
PEERS = ("torch_normal", "opacus_secure_mode", "fedlab_secure")


def make_peers(d: int) -> dict[str, Callable[[], torch.Tensor]]:
    """The three ways to produce one float32 noise tensor of ``d`` values with std ``STD``."""
    g = torch.Generator().manual_seed(0)
    reference = torch.zeros(d)

    def torch_normal() -> torch.Tensor:
        return torch.normal(0.0, STD, size=(d,), generator=g)

    def opacus_secure_mode() -> torch.Tensor:
        noise: torch.Tensor = _generate_noise(std=STD, reference=reference, generator=g, secure_mode=True)
        return noise

    def fedlab_secure() -> torch.Tensor:
        return torch.from_numpy(SecureRandom(KEY).normal(0.0, STD, size=d)).to(torch.float32)

    return {
        "torch_normal": torch_normal,
        "opacus_secure_mode": opacus_secure_mode,
        "fedlab_secure": fedlab_secure,
    }


def measure(d: int, repeats: int) -> dict[str, Any]:
    """Median milliseconds per peer for one tensor of ``d`` values, and each peer's sample std."""
    peers = make_peers(d)
    last = {name: fn() for name, fn in peers.items()}  # warm-up, untimed
    times: dict[str, list[float]] = {name: [] for name in PEERS}
    for r in range(repeats):
        for name in PEERS[r % 3 :] + PEERS[: r % 3]:  # take turns: no peer always runs first
            start = time.perf_counter()
            last[name] = peers[name]()
            times[name].append(time.perf_counter() - start)
    for name, tensor in last.items():
        if tensor.dtype != torch.float32 or tensor.shape != (d,):
            raise RuntimeError(f"{name} produced {tensor.dtype} {tuple(tensor.shape)}")
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    return {
        "benchmark": "secure_noise",
        "d": d,
        "torch_normal_ms": round(ms["torch_normal"], 4),
        "opacus_secure_mode_ms": round(ms["opacus_secure_mode"], 4),
        "fedlab_secure_ms": round(ms["fedlab_secure"], 4),
        "ratio_fedlab_over_torch": round(ms["fedlab_secure"] / ms["torch_normal"], 3),
        "ratio_fedlab_over_opacus_secure": round(ms["fedlab_secure"] / ms["opacus_secure_mode"], 3),
        "sample_std": {name: round(float(tensor.std()), 4) for name, tensor in last.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="d = 10^4 only, 3 repeats (CI)")
    parser.add_argument("--repeats", type=int, help=f"timed calls per peer (default {FULL_REPEATS})")
    parser.add_argument("--sizes", type=int, nargs="*", help="tensor sizes d (default 1e4 1e5 1e6)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sizes = args.sizes or list(QUICK_SIZES if args.quick else FULL_SIZES)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    for d in sizes:
        load_before = os.getloadavg()[0]
        record = measure(d, repeats)
        record["workload"] = {
            "mode": "quick" if args.quick else "full",
            "repeats": repeats,
            "std": STD,
            "dtype": "float32",
            "torch_threads": torch.get_num_threads(),
            "loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "torch": torch.__version__,
        }
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
