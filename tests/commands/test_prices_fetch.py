"""`gridflex prices fetch` end to end: the real CLI against the loopback ERCOT server."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from agent.cli import main
from tests.adapters.signals.fake_ercot import (
    DAM_FILE,
    PASSWORD,
    RT_FILE,
    SUBSCRIPTION_KEY,
    USERNAME,
    FakeErcot,
    api_rows,
    serve,
)

ENV = {
    "ERCOT_API_USERNAME": USERNAME,
    "ERCOT_API_PASSWORD": PASSWORD,
    "ERCOT_API_SUBSCRIPTION_KEY": SUBSCRIPTION_KEY,
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeErcot]:
    with serve(FakeErcot(data={"rt15": api_rows("rt15"), "dam": api_rows("dam")})) as f:
        yield f


def _shipped_lines(path: Path, first: date, last: date) -> str:
    """The shipped file's header and its rows for operating days first..last, as text."""
    with gzip.open(path, "rt") as handle:
        header, *rows = handle.read().splitlines()
    frame = pd.read_csv(path, usecols=["delivery_date"])
    days = pd.to_datetime(frame["delivery_date"]).dt.date
    keep = [row for row, day in zip(rows, days, strict=True) if first <= day <= last]
    return "\n".join([header, *keep]) + "\n"


def _fetch(fake: FakeErcot, out: Path, *extra: str, env: dict[str, str] = ENV) -> Result:
    args = [
        "prices",
        "fetch",
        "--out",
        str(out),
        "--base-url",
        fake.url,
        "--auth-url",
        fake.auth_url,
    ]
    return CliRunner().invoke(main, [*args, *extra], env=env)


@pytest.mark.parametrize(
    ("first", "last", "page_size"),
    [
        (date(2024, 3, 9), date(2024, 3, 11), "50"),  # spring-forward: 92 intervals on the 10th
        (date(2024, 11, 2), date(2024, 11, 4), "70"),  # fall-back: 100 intervals on the 3rd
        (date(2024, 3, 1), date(2024, 3, 31), "500"),  # a full month, page by page
    ],
)
def test_round_trip_of_the_shipped_real_time_file(
    fake: FakeErcot, tmp_path: Path, first: date, last: date, page_size: str
) -> None:
    out = tmp_path / "rt.csv"
    result = _fetch(
        fake, out, "--start", first.isoformat(), "--end", last.isoformat(), "--page-size", page_size
    )
    assert result.exit_code == 0, result.output
    assert out.read_text() == _shipped_lines(RT_FILE, first, last)


def test_round_trip_of_day_ahead_prices_for_november(fake: FakeErcot, tmp_path: Path) -> None:
    out = tmp_path / "dam.csv"
    result = _fetch(fake, out, "--market", "dam", "--start", "2024-11-01", "--end", "2024-11-30")
    assert result.exit_code == 0, result.output
    assert out.read_text() == _shipped_lines(DAM_FILE, date(2024, 11, 1), date(2024, 11, 30))


def test_mis_source_needs_no_account(tmp_path: Path) -> None:
    day = date(2024, 11, 3)
    with serve(
        FakeErcot(data={"rt15": api_rows("rt15", (date(2024, 11, 1), date(2024, 11, 5)))})
    ) as f:
        out = tmp_path / "mis.csv"
        args = ["prices", "fetch", "--source", "ercot-mis", "--out", str(out), "--base-url", f.url]
        days = ["--start", "2024-11-03", "--end", "2024-11-03", "--max-requests-per-minute", "5000"]
        result = CliRunner().invoke(main, [*args, *days], env={})
    assert result.exit_code == 0, result.output
    assert out.read_text() == _shipped_lines(RT_FILE, day, day)


def test_bad_credentials_are_a_usage_error(fake: FakeErcot, tmp_path: Path) -> None:
    env = {**ENV, "ERCOT_API_PASSWORD": "wrong"}
    result = _fetch(
        fake, tmp_path / "x.csv", "--start", "2024-11-03", "--end", "2024-11-03", env=env
    )
    assert result.exit_code == 2
    assert "AADB2C90225" in result.output
    blank = dict.fromkeys(ENV, "")
    result = _fetch(
        fake, tmp_path / "x.csv", "--start", "2024-11-03", "--end", "2024-11-03", env=blank
    )
    assert result.exit_code == 2
    assert "ERCOT_API_USERNAME" in result.output
    assert not (tmp_path / "x.csv").exists()


def test_unknown_point_is_a_usage_error_and_empty_days_an_error(
    fake: FakeErcot, tmp_path: Path
) -> None:
    out = tmp_path / "x.csv"
    result = _fetch(
        fake,
        out,
        "--settlement-point",
        "hb_nowhere",
        "--start",
        "2024-11-03",
        "--end",
        "2024-11-03",
    )
    assert result.exit_code == 2
    assert "'HB_NOWHERE'" in result.output
    result = _fetch(fake, out, "--start", "2022-01-01", "--end", "2022-01-02")
    assert result.exit_code == 1
    assert "no rt15 prices for 2022-01-01..2022-01-02" in result.output
    result = _fetch(fake, out, "--start", "2024-11-05", "--end", "2024-11-03")
    assert result.exit_code == 2
    result = _fetch(
        fake,
        out,
        "--settlement-point",
        "HB HUB; rm",
        "--start",
        "2024-11-03",
        "--end",
        "2024-11-03",
    )
    assert result.exit_code == 2
