"""bench/hybrid.py takes a site's own traces and prints its one JSON line with every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_the_bench_runs_on_trace_files_and_prints_its_figures(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    arrivals = np.sort(rng.uniform(0, 86_400, 20_000))
    inference = tmp_path / "inference.csv"
    work = rng.exponential(30, 20_000)
    rows = "".join(f"{a:.3f},{w:.2f}\n" for a, w in zip(arrivals, work, strict=True))
    inference.write_text("arrival_s,gpu_s\n" + rows)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("arrival_s,gpus,gpu_hours\n0,8,16\n3600,2,1\n7200,16,4\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/hybrid.py"), "--days", "1",
         "--inference-trace", str(inference), "--jobs-trace", str(jobs)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.strip().splitlines()
    figures = json.loads(line)
    assert figures["traces"] == "files"
    assert (figures["requests"], figures["jobs"]) == (20_000, 3)
    for key in ("queue_time_ratio", "jct_ratio", "queue_time_ratio_vs_static",
                "jct_ratio_vs_static", "inference_p99_wait_s", "margin_usd",
                "dispatch_compliance", "slo_breaches_outside_flex", "jobs_unfinished"):  # fmt: skip
        assert key in figures, key
    assert figures["seeds"] == [101]  # trace files: one run, whatever --seeds says
    for policy in ("gridflex", "reactive", "static"):
        assert figures["dispatch_compliance"][policy] == 1.0, policy
        assert figures["jobs_unfinished"][policy] == 0, policy  # 3 small jobs finish
    assert figures["jct_ratio"]["seeds"] == 1
    assert "jct_ratio_ceiling" in figures
    assert "queue_time_ratio_ceiling" in figures
    # the three-hour dispatch that needs GPU caps: every policy holds a 25 % cut of the GPU
    # draw inference alone would take, every minute of it
    for policy in ("gridflex", "reactive", "static", "ceiling"):
        cut = figures["gpu_cut"][policy]
        assert cut["compliance"] == 1.0, policy
        assert cut["least_cut_pct"] >= 25.0 - 0.05, policy


def test_a_trace_without_its_columns_is_refused_with_their_names(tmp_path: Path) -> None:
    bad = tmp_path / "inference.csv"
    bad.write_text("t,work\n1,2\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/hybrid.py"), "--days", "1", "--inference-trace",
         str(bad)], capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "arrival_s,gpu_s" in done.stderr
