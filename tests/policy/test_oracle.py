"""decide() against the exact optimum of bench/oracle_model.py (a mixed-integer program solved
by HiGHS) on random small sites under a ceiling: the same feasibility, never above the ceiling,
and on every site no more than 1 % of the optimum's value given up. 300 sites here, 2,000 in
test-slow (`python bench/oracle.py` prints the distribution).

The program is written from the site (bench/oracle_model.py), not from decide(): what decide()
reaches it reaches by its own search (pack.py, a branch and bound over how many of each kind of
device run, on sites where at most 64 devices may move)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.oracle_model import Outcome, judge, random_case


def _outcomes(sites: int, seed: int) -> list[Outcome]:
    rng = np.random.default_rng(seed)
    return [judge(random_case(rng)) for _ in range(sites)]


def _check(outcomes: list[Outcome]) -> None:
    feasible = [o for o in outcomes if o.feasible]
    for o in outcomes:
        if o.feasible:
            assert o.decide_kw <= o.ceiling_kw + 1e-6, o
        else:  # nothing can bring it under: decide() says so
            assert o.shortfall_kw > 0.0, o
    loss = np.array([o.loss for o in feasible])
    assert len(loss) > 0.8 * len(outcomes)
    worst = max(feasible, key=lambda o: o.loss)
    assert worst.loss <= 0.01, (np.percentile(loss, [50, 90, 99]), worst)


def test_decide_is_near_the_exact_optimum_on_300_random_sites() -> None:
    _check(_outcomes(300, seed=7))


@pytest.mark.slow
def test_decide_is_near_the_exact_optimum_on_2000_random_sites() -> None:
    _check(_outcomes(2_000, seed=11))
