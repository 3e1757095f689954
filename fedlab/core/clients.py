"""Client identities: stable strings (a partition index in simulation, a device name in deployment)."""

from __future__ import annotations


def client_sort_key(client_id: str) -> tuple[int, int, str]:
    """Order client ids numerically when they are numbers, else by name after all numbers.

    >>> sorted(["10", "b", "2", "a"], key=client_sort_key)
    ['2', '10', 'a', 'b']
    """
    return (0, int(client_id), "") if client_id.isdigit() else (1, 0, client_id)
