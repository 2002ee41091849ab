"""`gridflex backtest` over the full 2024 real-time year for the 50 MW example site, whole process
(a subprocess: imports, config, replay, summary.json, decisions.csv, plot.png): one JSON line.

Baseline in the same run: the plain replay, decide() on all ~12,800 devices at every interval
(what a naive backtest does), timed in-process on a slice of the year and extrapolated to
35,136 intervals (it would take ~40 s to run whole). Target: the whole process in <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRICES = ROOT / "agent/data/ercot_rt_spp_15min_hb_hubavg_2024.csv.gz"
SITE = ROOT / "deploy/examples/west-50mw.yaml"
# the site file names these secrets; the HMAC key must be 32 bytes or more, as on a real site
ENV = {"GRIDFLEX_MQTT_PASSWORD": "bench", "GRIDFLEX_DISPATCH_HMAC": "bench-" + "k" * 32}
RUNS = 5
BASELINE_SLICE = 1_500  # intervals (the first ~15.6 days of 2024)
# --quick (make test): one run over one week, the baseline timed on a day
QUICK_RANGE = ("2024-05-01", "2024-05-08")
QUICK_SLICE = 96


def whole_process(out: Path, span: tuple[str, str] | None) -> float:
    command = [str(Path(sys.executable).parent / "gridflex"), "backtest", "--config", str(SITE),
               "--prices", str(PRICES), "--out", str(out)]  # fmt: skip
    if span is not None:
        command += ["--start", span[0], "--end", span[1]]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, **ENV})
    return time.perf_counter() - started


def baseline_per_interval_s(slice_intervals: int) -> tuple[float, int]:
    os.environ.update(ENV)
    sys.path.insert(0, str(ROOT))
    from adapters.signals.canonical_file import load_canonical_prices
    from agent.backtest import intervals_from_prices, replay_plain
    from agent.backtest.replay import Intervals
    from agent.config import load_config

    config = load_config(SITE)
    fleet, policy = config.fleet(), config.decision_policy()
    year, _ = intervals_from_prices(load_canonical_prices(PRICES))
    cut = slice(0, slice_intervals)
    part = Intervals(year.start_ns[cut], year.end_ns[cut], year.price_usd_per_mwh[cut],
                     year.price_start_ns[cut], year.price_end_ns[cut])  # fmt: skip
    started = time.perf_counter()
    replay_plain(fleet, policy, part)
    return (time.perf_counter() - started) / slice_intervals, len(fleet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run over a week, for make test")
    quick = parser.parse_args().quick
    runs, span, slice_intervals = (
        (1, QUICK_RANGE, QUICK_SLICE) if quick else (RUNS, None, BASELINE_SLICE)
    )
    with tempfile.TemporaryDirectory() as tmp:
        times = [whole_process(Path(tmp) / f"run{k}", span) for k in range(runs)]
        summary = json.loads((Path(tmp) / "run0" / "summary.json").read_text())
    per_interval_s, devices = baseline_per_interval_s(slice_intervals)
    intervals = int(summary["intervals"])
    baseline_s = per_interval_s * intervals
    print(json.dumps({
        "bench": "backtest",
        "quick": quick,
        "site": summary["site"],
        "devices": devices,
        "intervals": intervals,
        "decide_calls": summary["decide_calls"],
        "whole_process_s_median": round(statistics.median(times), 3),
        "whole_process_s_min": round(min(times), 3),
        "whole_process_s_runs": [round(t, 3) for t in times],
        "target_s": 2.0 if not quick else None,
        "baseline_plain_decide_s_extrapolated": round(baseline_s, 2),
        "baseline_note": f"decide() on every device at every interval, in-process, timed on the "
                         f"first {slice_intervals} intervals and scaled to {intervals}",
        "speedup_vs_baseline": round(baseline_s / statistics.median(times), 1),
        "cpu_count": os.cpu_count(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
