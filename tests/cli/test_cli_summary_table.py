"""The run summary the CLI prints: user-level epsilon on one line, long per-client lists shortened."""

from __future__ import annotations

from fedlab.cli.main import _per_client


def test_per_client_epsilons_are_shortened_and_infinite_ones_named() -> None:
    epsilons: dict[str, float | None] = {str(i): 1.0 + i / 100 for i in range(20)}
    text = _per_client(epsilons)
    assert text.startswith("0: 1.00, 1: 1.01") and "11: 1.11" in text and "12: " not in text
    assert text.endswith("... (8 more in summary.json)")
    assert _per_client({"a": None, "b": 2.5}) == "a: inf, b: 2.50"
