"""decide() against the exact optimum (a mixed-integer program, scipy's HiGHS) on random small
sites under a ceiling; prints one JSON line with the distribution of the value it gives up.

The sites and the program are in bench/oracle_model.py. Reported: how many sites, how many the
program could bring under the ceiling and whether decide() agreed (under it, or a shortfall
declared), the share of the optimum's value decide() loses (percentiles, max, and how many
sites lose more than 1 %), and the time of each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/oracle_model.py, run as a script from anywhere

from bench.oracle_model import judge, random_case  # noqa: E402

SITES, QUICK_SITES = 2_000, 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 sites (make test)")
    parser.add_argument("--sites", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sites = args.sites or (QUICK_SITES if args.quick else SITES)
    rng = np.random.default_rng(args.seed)
    losses: list[float] = []
    over = disagree = infeasible = 0
    oracle_s = 0.0
    for _ in range(sites):
        case = random_case(rng)
        began = time.perf_counter()
        outcome = judge(case)
        oracle_s += time.perf_counter() - began
        if not outcome.feasible:
            infeasible += 1
            disagree += outcome.shortfall_kw <= 0.0
            continue
        over += outcome.decide_kw > outcome.ceiling_kw + 1e-6
        losses.append(outcome.loss)
    loss = np.array(losses)
    pct = np.percentile(loss, [50, 90, 95, 99]) if len(loss) else np.zeros(4)
    print(json.dumps({
        "bench": "oracle",
        "quick": args.quick,
        "seed": args.seed,
        "sites": sites,
        "feasible": len(losses),
        "infeasible_without_declared_shortfall": int(disagree),
        "infeasible": infeasible,
        "over_ceiling_when_feasible": int(over),
        "value_loss_p50": round(float(pct[0]), 4),
        "value_loss_p90": round(float(pct[1]), 4),
        "value_loss_p95": round(float(pct[2]), 4),
        "value_loss_p99": round(float(pct[3]), 4),
        "value_loss_max": round(float(loss.max(initial=0.0)), 4),
        "sites_losing_over_1pct": int((loss > 0.01).sum()),
        "seconds": round(oracle_s, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
