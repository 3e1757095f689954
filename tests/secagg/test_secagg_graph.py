"""The SecAgg+ neighbour graph: k-regular, symmetric, seeded; complete for k = n - 1."""

import pytest

from fedlab.secagg.crypto import seeded_source
from fedlab.secagg.graph import effective_degree, neighbour_graph, suggest_neighbours, suggest_threshold

SEED = seeded_source(b"graph")(32)


@pytest.mark.parametrize(("n", "k"), [(2, 1), (10, 4), (10, 3), (11, 3), (50, 12), (100, 20), (7, 6), (8, 7)])
def test_graph_is_regular_symmetric_and_loop_free(n, k):
    ids = [3 * i + 5 for i in range(n)]
    graph = neighbour_graph(ids, neighbours=k, seed=SEED)
    degree = effective_degree(n, k)
    assert set(graph) == set(ids)
    for u, neighbours in graph.items():
        assert len(neighbours) == degree and u not in neighbours
        assert all(u in graph[v] for v in neighbours)


@pytest.mark.parametrize("n", [2, 5, 6, 9])
def test_k_of_n_minus_one_is_classic_secagg(n):
    graph = neighbour_graph(range(n), neighbours=n - 1, seed=SEED)
    assert all(graph[u] == set(range(n)) - {u} for u in range(n))
    assert neighbour_graph(range(n), neighbours=10 * n, seed=SEED) == graph


def test_the_graph_depends_on_the_full_seed_only():
    ids = range(40)
    graph = neighbour_graph(ids, neighbours=6, seed=SEED)
    assert neighbour_graph(list(reversed(ids)), neighbours=6, seed=SEED) == graph
    flipped = bytes([SEED[0], *SEED[1:31], SEED[31] ^ 1])
    assert neighbour_graph(ids, neighbours=6, seed=flipped) != graph
    with pytest.raises(ValueError):
        neighbour_graph(ids, neighbours=6, seed=SEED[:16])


def test_neighbours_are_spread_over_the_ids_not_just_adjacent_ones():
    graph = neighbour_graph(range(200), neighbours=10, seed=SEED)
    adjacent = sum(1 for u in graph for v in graph[u] if abs(u - v) <= 5)
    assert adjacent < 0.2 * sum(len(v) for v in graph.values())


def test_suggested_degree_grows_logarithmically_and_threshold_is_a_majority():
    assert [suggest_neighbours(n) for n in (10, 100, 1000, 10_000)] == [9, 20, 30, 40]
    for k in range(1, 50):
        t = suggest_threshold(k)
        assert (2 * t > k and t <= k) or k == 1
    with pytest.raises(ValueError):
        suggest_neighbours(1)


def test_duplicate_ids_are_refused():
    with pytest.raises(ValueError):
        neighbour_graph([1, 1, 2], neighbours=1, seed=SEED)


def test_no_client_ever_gets_more_than_k_neighbours():
    """Clients refuse a roster longer than the announced k: the honest graph never builds one."""
    for n in range(2, 26):
        for k in range(1, 28):
            graph = neighbour_graph(range(n), neighbours=k, seed=SEED)
            degrees = {len(v) for v in graph.values()}
            assert degrees == {effective_degree(n, k)}
            expected = min(k, n - 1) - (1 if min(k, n - 1) % 2 == 1 and n % 2 == 1 else 0)
            assert effective_degree(n, k) == expected <= k
