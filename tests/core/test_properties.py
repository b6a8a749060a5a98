"""Hypothesis: DAG validation and backoff arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from orchwf import RetryPolicy, StepBuilder, ValidationError, WorkflowBuilder
from orchwf.dag import find_cycle


def noop(ctx, data):
    return None


@st.composite
def dags(draw):
    """(n, deps): step i may depend only on steps with a smaller index, so no cycle."""
    n = draw(st.integers(min_value=1, max_value=12))
    deps = []
    for i in range(n):
        chosen = draw(st.sets(st.integers(min_value=0, max_value=i - 1), max_size=i)) if i else set()
        deps.append(sorted(chosen))
    order = draw(st.permutations(range(n)))  # definition order need not be topological
    return n, deps, order


def build(n, deps, order):
    b = WorkflowBuilder("w", "W")
    for i in order:
        s = StepBuilder(f"s{i}", f"S{i}", noop)
        if deps[i]:
            s = s.with_dependencies(*[f"s{d}" for d in deps[i]])
        b.add_step(s.build())
    return b.build()


def ancestors(deps, i):
    seen, todo = set(), list(deps[i])
    while todo:
        j = todo.pop()
        if j not in seen:
            seen.add(j)
            todo.extend(deps[j])
    return seen


@settings(max_examples=150, deadline=None)
@given(dags())
def test_random_dags_validate(dag):
    n, deps, order = dag
    wf = build(n, deps, order)
    assert len(wf.steps) == n
    assert find_cycle(wf.steps) is None


@settings(max_examples=150, deadline=None)
@given(dags(), st.data())
def test_a_back_edge_makes_a_cycle_error_naming_the_cycle(dag, data):
    n, deps, order = dag
    candidates = [(i, j) for i in range(n) for j in ancestors(deps, i)]
    assume(candidates)
    i, j = data.draw(st.sampled_from(candidates))
    deps = [list(d) for d in deps]
    deps[j].append(i)  # j already runs before i; now j also waits for i
    with pytest.raises(ValidationError, match="cycle") as info:
        build(n, deps, order)
    path = str(info.value).split(": ", 1)[1].split(" -> ")
    assert len(path) >= 3 and path[0] == path[-1]
    nodes = [int(p[1:]) for p in path]
    assert len(set(nodes)) == len(nodes) - 1  # a simple cycle
    # run order: every step of the path depends on the one before it
    for a, b in zip(nodes, nodes[1:], strict=False):
        assert a in deps[b], (path, deps)
    # every cycle of the new graph goes through the back edge j -> i
    assert i in nodes and j in nodes


# -- backoff ------------------------------------------------------------------------------

intervals = st.floats(min_value=0.001, max_value=100, allow_nan=False)
multipliers = st.floats(min_value=1, max_value=10, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(intervals, multipliers, st.floats(min_value=0.001, max_value=1000), st.integers(min_value=1, max_value=40))
def test_backoff_formula_is_initial_times_multiplier_power_capped(initial, mult, cap, n):
    p = RetryPolicy(max_attempts=50, initial_interval=initial, multiplier=mult, max_interval=cap)
    expected = min(initial * mult ** (n - 1), cap)
    assert p.backoff(n) == pytest.approx(expected, rel=1e-9)
    assert p.backoff(n) <= cap


@settings(max_examples=300, deadline=None)
@given(intervals, multipliers, st.floats(min_value=0, max_value=1000), st.integers(min_value=1, max_value=40))
def test_backoff_is_monotone(initial, mult, cap, n):
    p = RetryPolicy(max_attempts=50, initial_interval=initial, multiplier=mult, max_interval=cap)
    assert p.backoff(n) <= p.backoff(n + 1)
    assert p.backoff(1) == pytest.approx(min(initial, cap) if cap > 0 else initial)


@settings(max_examples=100, deadline=None)
@given(intervals, multipliers, st.integers(min_value=1, max_value=30))
def test_max_interval_zero_means_uncapped(initial, mult, n):
    p = RetryPolicy(initial_interval=initial, multiplier=mult, max_interval=0)
    assert p.backoff(n) == pytest.approx(initial * mult ** (n - 1))


@settings(max_examples=200, deadline=None)
@given(intervals, multipliers, st.floats(min_value=0.001, max_value=1000), st.integers(min_value=1, max_value=30))
def test_jitter_stays_between_half_and_full_interval(initial, mult, cap, n):
    plain = RetryPolicy(initial_interval=initial, multiplier=mult, max_interval=cap).backoff(n)
    jittered = RetryPolicy(initial_interval=initial, multiplier=mult, max_interval=cap, jitter=True).backoff(n)
    assert plain / 2 <= jittered <= plain


def test_seed_default_backoff_sequence():
    p = RetryPolicy()
    assert [p.backoff(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_backoff_edges():
    assert RetryPolicy(initial_interval=0).backoff(5) == 0
    assert RetryPolicy().backoff(0) == 0
