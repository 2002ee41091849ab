"""`gridflex backtest` end to end, as a site engineer runs it: real 2024 prices, the files it
writes, the side inputs (dispatch, fixed-price contract, capacity prices, 4CP system load) and
the warnings about gaps and duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adapters.signals.canonical_file import write_canonical_prices
from tests.backtest.helpers import RT_2024, prices_2024, run_backtest


def _system_load(path: Path) -> dict[str, pd.Timestamp]:
    """A made-up 15-minute ERCOT load, June-September, with each month's peak where we say."""
    prices = prices_2024()
    start = prices["interval_start_utc"]
    summer = prices[(start >= "2024-06-01T05:00Z") & (start < "2024-10-01T05:00Z")]
    load = pd.DataFrame({"interval_start_utc": summer["interval_start_utc"],
                         "system_load_mw": 60_000.0})  # fmt: skip
    month = summer["interval_start_utc"].dt.tz_convert("America/Chicago").dt.month
    peaks = {}
    for m in (6, 7, 8, 9):
        rows = summer[month == m]
        # August: the year's most expensive summer interval (curtailed); others: the cheapest
        at = rows["price_usd_per_mwh"].idxmax() if m == 8 else rows["price_usd_per_mwh"].idxmin()
        load.loc[at, "system_load_mw"] = 85_000.0 + m
        peaks[f"2024-{m:02d}"] = prices.loc[at, "interval_start_utc"]
    load.assign(
        interval_start_utc=load["interval_start_utc"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    ).to_csv(path, index=False)
    return peaks


def test_what_if_year_with_contract_capacity_dispatch_and_4cp(tmp_path: Path) -> None:
    dispatch = tmp_path / "events.csv"
    dispatch.write_text(
        "event_id,kind,kw,start,end,program\n"
        "ers-1,limit,2500,2024-01-16T13:00:00-06:00,2024-01-16T15:00:00-06:00,ERS\n"
    )
    capacity = tmp_path / "capacity.csv"
    hours = pd.date_range("2024-01-01T06:00Z", "2025-01-01T05:00Z", freq="h")
    capacity.write_text(
        "interval_start_utc,price_usd_per_mw_h\n"
        + "".join(f"{h:%Y-%m-%dT%H:%M:%SZ},2.5\n" for h in hours)
    )
    load = tmp_path / "load.csv"
    peaks = _system_load(load)
    out = tmp_path / "out"
    done = run_backtest(
        "--prices", RT_2024, "--load-mw", "10", "--breakeven", "60", "--out", out,
        "--dispatch", dispatch, "--contract-mw", "10", "--contract-price", "40",
        "--capacity-prices", capacity, "--capacity-mw", "4",
        "--system-load", load, "--fourcp-usd-per-kw-year", "50",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "net benefit of flexibility" in done.stdout
    assert "2024-11" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["intervals"] == 35_136
    assert summary["dispatch_events"] == 1
    for key in ("energy_mwh", "curtailed_mwh", "curtailed_hours", "curtailment_events",
                "energy_cost_usd", "baseline_energy_cost_usd", "revenue_usd",
                "baseline_revenue_usd", "net_benefit_usd", "power_credits_usd"):  # fmt: skip
        assert isinstance(summary[key], int | float), key
    # paid only while the site ran at least the 4 MW it committed: the hours curtailed below
    # it (by price, by the dispatch) could not have delivered the reserve sold
    offered = 4 * 2.5 * 8784
    withheld = summary["capacity_withheld_usd"]
    assert summary["capacity_payments_usd"] + withheld == pytest.approx(offered)
    assert withheld == pytest.approx(4 * 2.5 * summary["capacity_undeliverable_hours"])
    assert 0 < summary["capacity_undeliverable_hours"] <= summary["curtailed_hours"]
    net = (summary["revenue_usd"] - summary["energy_cost_usd"]) - (
        summary["baseline_revenue_usd"] - summary["baseline_energy_cost_usd"]
    )
    assert summary["net_benefit_usd"] == pytest.approx(net, abs=1e-3)
    assert len(summary["months"]) == 12

    fourcp = summary["fourcp"]
    by_month = {m["month"]: m for m in fourcp["months"]}
    assert list(by_month) == ["2024-06", "2024-07", "2024-08", "2024-09"]
    for month, at in peaks.items():
        assert by_month[month]["peak_interval_utc"] == at.isoformat()
    assert by_month["2024-08"]["curtailed"] is True
    assert by_month["2024-08"]["avoided_usd"] == pytest.approx(50 * 10_000 / 4)
    assert by_month["2024-06"]["curtailed"] is False
    assert fourcp["avoided_usd"] == pytest.approx(50 * 10_000 / 4)

    decisions = pd.read_csv(out / "decisions.csv")
    assert len(decisions) == 35_136
    assert list(decisions.columns[:4]) == [
        "interval_start_utc", "interval_start_local", "price_usd_per_mwh", "site_kw",
    ]  # fmt: skip
    # an afternoon of prices under the 60 $/MWh breakeven: the dispatch is what binds
    jan16 = decisions[decisions["interval_start_utc"] == "2024-01-16T19:30:00Z"].iloc[0]
    assert jan16["rule_load"] == "dispatch"
    assert "grid dispatch ers-1 (ERS)" in jan16["reason"]
    # decided without foresight: on the price published before each interval
    above = decisions["decided_on_usd_per_mwh"] > 60
    assert (decisions["decided_on_usd_per_mwh"].iloc[1:].to_numpy()
            == decisions["price_usd_per_mwh"].iloc[:-1].to_numpy()).all()  # fmt: skip
    assert (decisions.loc[above & (decisions["rule_load"] == "economics"), "site_kw"] == 0).all()
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the event as a program settles it: 7.5 MW asked below the 10 MW baseline for 2 h; the
    # what-if load is one 10 MW block, so all of it went (20 MWh delivered), no shortfall; no
    # capacity payment while the site ran under its 4 MW commitment
    (event,) = summary["events"]
    assert (event["event_id"], event["intervals"]) == ("ers-1", 8)
    assert event["asked_mwh"] == pytest.approx(15.0)
    assert event["delivered_mwh"] == pytest.approx(20.0)
    assert (event["shortfall_mwh"], event["penalty_usd"], event["payment_usd"]) == (0, 0, 0)
    assert "dispatch events, as a program settles them" in done.stdout


def test_gaps_and_duplicates_are_warned_about_and_dst_days_count_right(tmp_path: Path) -> None:
    prices = prices_2024()
    local = prices["interval_start_utc"].dt.tz_convert("America/Chicago")
    week = prices[(local >= "2024-11-01") & (local < "2024-11-08")].copy()
    assert len(week) == 7 * 96 + 4  # the fall-back day has 100 intervals
    gapped = pd.concat([week.drop(week.index[10:14]), week.iloc[[20]]])  # 1 h gap, 1 duplicate
    path = tmp_path / "week.csv"
    write_canonical_prices(gapped, path)
    out = tmp_path / "out"
    done = run_backtest(
        "--prices", path, "--load-mw", "5", "--breakeven", "30", "--out", out, "--no-plot"
    )
    assert done.returncode == 0, done.stderr
    assert "1 duplicate interval(s) dropped" in done.stderr
    assert "4 interval(s) missing in 1 gap(s)" in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["intervals"] == 7 * 96 + 4
    assert len(summary["warnings"]) == 2
    assert not (out / "plot.png").exists()
    decisions = pd.read_csv(out / "decisions.csv")
    # the gap's intervals hold the last published price
    held = decisions["price_usd_per_mwh"].iloc[10:14].to_numpy()
    assert np.all(held == week["price_usd_per_mwh"].iloc[9])
    fall_back = decisions["interval_start_local"].str.startswith("2024-11-03T01:")
    assert fall_back.sum() == 8  # 01:00-01:45 CDT, then again CST
    assert set(decisions.loc[fall_back, "interval_start_local"].str[-6:]) == {"-05:00", "-06:00"}


def test_site_file_with_bad_dispatch_rows_reports_each(tmp_path: Path) -> None:
    dispatch = tmp_path / "events.csv"
    dispatch.write_text(
        "event_id,kind,kw,start,end,program\n"
        "a,curtail,100,2024-01-01T00:00:00Z,,x\n"
        "b,limit,100,2024-01-01T00:00:00,,x\n"
    )
    done = run_backtest("--config", Path(__file__).parents[2] / "deploy/examples/small-site.yaml",
                "--prices", RT_2024, "--dispatch", dispatch, "--out", tmp_path / "out")  # fmt: skip
    assert done.returncode == 2
    assert "events.csv:2: kind 'curtail' is not limit or shed" in done.stderr
    assert "events.csv:3: start '2024-01-01T00:00:00' needs a UTC offset" in done.stderr


@pytest.mark.parametrize("bad", ["NaN", "inf", "-1e308", "abc"])
def test_a_price_that_is_no_number_is_refused_with_its_line(tmp_path: Path, bad: str) -> None:
    prices = prices_2024().iloc[:96].copy()
    path = tmp_path / "day.csv"
    write_canonical_prices(prices, path)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("price_usd_per_mwh")
    row = lines[8].split(",")  # the 8th interval: line 9 of the file
    row[column] = bad
    lines[8] = ",".join(row)
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    done = run_backtest(
        "--prices", path, "--load-mw", "5", "--breakeven", "30", "--out", out, "--no-plot"
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "line 9" in done.stderr
    assert bad.lower() in done.stderr.lower()  # pandas reads "NaN" as nan
    assert not (out / "summary.json").exists()


def test_a_site_file_backtest_needs_no_secrets_and_its_tables_survive_a_pipe(
    tmp_path: Path,
) -> None:
    """The 50 MW example names MQTT secrets and drivers a replay never uses; piped (as here),
    the tables are plain ASCII, every column of every month whole, the labels in words."""
    out = tmp_path / "out"
    site = Path(__file__).parents[2] / "deploy/examples/west-50mw.yaml"
    done = run_backtest(
        "--config", site, "--prices", RT_2024, "--out", out, "--no-plot", secrets=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.isascii(), "box-drawing or ellipsis characters in piped output"
    for label in ("energy cost running everything", "net benefit of flexibility"):
        assert label in done.stdout
    assert "_usd" not in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 2024-")]
    assert len(rows) == 12
    for line, (month, m) in zip(rows, summary["months"].items(), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == month
        assert len(cells) == 7
        assert cells[-1] == f"{m['total_benefit_usd']:,.0f}"


@pytest.mark.parametrize(
    ("given", "says"),
    [("load=10", None), ("miners=10", "CLASS one of load"), ("load=soon", "MINUTES a number")],
)
def test_a_restart_cost_is_given_per_class_and_reported(
    tmp_path: Path, given: str, says: str | None
) -> None:
    out = tmp_path / "out"
    done = run_backtest("--prices", RT_2024, "--load-mw", "10", "--breakeven", "60",
                        "--restart-minutes", given, "--out", out, "--no-plot")  # fmt: skip
    if says is not None:
        assert done.returncode == 2
        assert "--restart-minutes" in done.stderr
        assert says in done.stderr
        return
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["restart_cost_usd"] > 0


def test_a_shortfall_in_a_deployment_is_charged_at_the_penalty_rate(tmp_path: Path) -> None:
    """The 50 MW example under a limit below its protected and critical load: the kW over the
    ceiling in each interval of the event, at $1,000/MWh, come off the total."""
    dispatch = tmp_path / "events.csv"
    dispatch.write_text(
        "event_id,kind,kw,start,end,program\n"
        "deep-1,limit,0,2024-03-05T10:00:00-06:00,2024-03-05T11:00:00-06:00,ERS\n"
    )
    site = Path(__file__).parents[2] / "deploy/examples/west-50mw.yaml"
    runs = {}
    for rate in ("0", "1000"):
        out = tmp_path / f"out-{rate}"
        done = run_backtest("--config", site, "--prices", RT_2024, "--dispatch", dispatch,
                            "--penalty-usd-per-mwh", rate, "--start", "2024-03-01",
                            "--end", "2024-03-10", "--out", out, "--no-plot",
                            secrets=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        runs[rate] = json.loads((out / "summary.json").read_text())
    decisions = pd.read_csv(tmp_path / "out-1000" / "decisions.csv")
    start = pd.to_datetime(decisions["interval_start_utc"])
    inside = (start >= "2024-03-05T16:00Z") & (start < "2024-03-05T17:00Z")
    over_mwh = float((decisions.loc[inside, "site_kw"] * 0.25).sum() / 1000)
    (event,) = runs["1000"]["events"]
    assert over_mwh > 0
    assert event["shortfall_mwh"] == pytest.approx(over_mwh, rel=1e-6)
    assert event["penalty_usd"] == pytest.approx(1000 * over_mwh, abs=0.01)
    assert runs["1000"]["penalties_usd"] == event["penalty_usd"]
    assert runs["0"]["total_benefit_usd"] - runs["1000"]["total_benefit_usd"] == pytest.approx(
        event["penalty_usd"], abs=0.01
    )
