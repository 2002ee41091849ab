"""The site file: examples load, every problem is reported at once, secrets stay hidden."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agent.config import ConfigFileError, load_config, parse_config
from agent.domain.fleet import Priority
from tests.helpers.config_cases import BROKEN, ENV, EXAMPLES, EXPECTED_PROBLEMS

MINIMAL = """
site: {id: t}
classes:
  s19: {priority: interruptible, economics: {kind: fixed, value_usd_per_mwh: 60}}
devices:
  - {id: m, kind: miner, class: s19, rated_kw: 3.2}
"""


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads(path: Path) -> None:
    config = load_config(path, env=ENV)
    fleet = config.fleet()
    assert len(fleet) == sum(d.count for d in config.devices)
    assert set(config.device_drivers()) <= set(fleet.device_ids)


def test_the_50_mw_example_is_a_50_mw_site() -> None:
    config = load_config(Path("deploy/examples/west-50mw.yaml"), env=ENV)
    fleet = config.fleet()
    assert 49_000 <= fleet.rated_kw.sum() <= 52_000
    assert len(fleet) > 10_000
    drivers = config.device_drivers()
    # group members get their own addresses: outlet 24 of the first PDU, then the next PDU
    first, last_outlet, next_pdu = (drivers[f"hall1-pdu-{k:04d}"] for k in (1, 24, 25))
    assert (first.host, first.channel) == ("10.10.1.10", 1)  # type: ignore[union-attr]
    assert (last_outlet.host, last_outlet.channel) == ("10.10.1.10", 24)  # type: ignore[union-attr]
    assert (next_pdu.host, next_pdu.channel) == ("10.10.1.11", 1)  # type: ignore[union-attr]
    assert drivers["s19xp-2000"].host == "10.20.7.217"  # type: ignore[union-attr]


MINING_WITH_FEE = (
    "{kind: mining, hashprice_usd_per_ph_day: 48, efficiency_j_per_th: 20, pool_fee_pct: 2}"
)


@pytest.mark.parametrize(
    ("economics", "breakeven"),
    [
        ("{kind: fixed, value_usd_per_mwh: 78.2}", 78.2),
        # 1 PH/s at 20 J/TH draws 20 kW = 0.48 MWh/day; $48/PH/day -> $100/MWh
        ("{kind: mining, hashprice_usd_per_ph_day: 48, efficiency_j_per_th: 20}", 100.0),
        (MINING_WITH_FEE, 98.0),
        # $2.00 per GPU-hour at 1,000 W -> $2,000/MWh
        ("{kind: inference, revenue_usd_per_gpu_hour: 2.0, watts_per_gpu: 1000}", 2000.0),
    ],
)
def test_breakeven_prices(economics: str, breakeven: float) -> None:
    text = MINIMAL.replace("{kind: fixed, value_usd_per_mwh: 60}", economics)
    config = parse_config(text)
    assert config.classes["s19"].breakeven_usd_per_mwh() == pytest.approx(breakeven)


def test_a_critical_class_has_no_breakeven() -> None:
    text = MINIMAL.replace("devices:", "  ctl: {priority: critical}\ndevices:")
    config = parse_config(text)
    assert config.classes["ctl"].priority is Priority.CRITICAL
    assert math.isinf(config.classes["ctl"].breakeven_usd_per_mwh())


def test_a_broken_file_reports_every_problem_at_once_with_line_and_path() -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(BROKEN, file="site.yaml", env={})
    issues = caught.value.issues
    found = [(i.line, i.path, i.message) for i in issues]
    for line, path, text in EXPECTED_PROBLEMS:
        assert any(n == line and p == path and text in m for n, p, m in found), (path, found)
    assert len(issues) == len(EXPECTED_PROBLEMS)
    assert all(str(i).startswith("site.yaml:") for i in issues)


def test_environment_variables_fill_secrets_which_are_never_shown() -> None:
    text = (
        MINIMAL
        + "mqtt: {username: gf, password: '${PW}', hmac_secret: 'x-${PW}-${PW}-${PW}-${PW}'}\n"
    )
    config = parse_config(text, env={"PW": "hunter2"})
    assert config.mqtt is not None
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(config)
    assert "hunter2" not in config.model_dump_json()


def test_a_bad_secret_value_is_reported_without_its_value() -> None:
    text = MINIMAL + "mqtt: {password: [not, a, string]}\n"
    with pytest.raises(ConfigFileError) as caught:
        parse_config(text, env={})
    assert [i.value for i in caught.value.issues if i.path.startswith("mqtt.password")] == [
        "<hidden>"
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("site: [", "not YAML"),
        ("- just a list", "must be a mapping"),
        ("site: {id: t}\n", "classes: Field required"),
    ],
)
def test_unusable_files_get_a_clear_error(text: str, problem: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(text, file="f.yaml")
    assert problem in str(caught.value)


def test_a_missing_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="No such file"):
        load_config(tmp_path / "absent.yaml")


FOLLOWERS = """\
site: {id: s}
classes:
  s19: {priority: interruptible, economics: {kind: fixed, value_usd_per_mwh: 60}}
  empty: {priority: interruptible, economics: {kind: fixed, value_usd_per_mwh: 60}}
  fans: {priority: flexible, follows: s19}
  loop: {priority: flexible, follows: loop}
  chain: {priority: flexible, follows: fans}
  idle: {priority: flexible, follows: empty}
  paid: {priority: flexible, follows: s19, economics: {kind: fixed, value_usd_per_mwh: 9}}
devices:
  - {id: m, kind: miner, class: s19, rated_kw: 3}
"""


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("classes.loop.follows", "a class cannot follow itself"),
        ("classes.chain.follows", "fans follows s19 itself"),
        ("classes.idle.follows", "that class has no devices"),
        ("classes.paid.economics", "has no economics of its own"),
    ],
)
def test_followers_that_cannot_follow_are_refused(path: str, text: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(FOLLOWERS, file="site.yaml", env={})
    assert any(i.path == path and text in i.message for i in caught.value.issues), (
        caught.value.issues
    )
    assert not any(i.path == "classes.fans.follows" for i in caught.value.issues)


@pytest.mark.parametrize(("market", "stale_s", "warned"),
                         [("rt15", 1020, True), ("rt15", 1800, False), ("sced5", 300, True),
                          ("dam", 7200, False)])  # fmt: skip
def test_a_staleness_shorter_than_the_feeds_rhythm_is_warned_about(
    market: str, stale_s: int, warned: bool
) -> None:
    text = MINIMAL + f"prices: {{market: {market}}}\npolicy: {{price_stale_after_s: {stale_s}}}\n"
    warnings = parse_config(text).warnings()
    assert bool(warnings) is warned
    if warned:
        assert "price_stale_after_s" in warnings[0]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("sparkplug: {group_id: texas}\n", "sparkplug: Sparkplug B runs on the site's MQTT broker"),
        ("mqtt: {}\nsparkplug: {group_id: 'a/b'}\n", "sparkplug.group_id"),
        ("mqtt: {}\nsparkplug: {group_id: t, primary_host_id: 'x#'}\n",
         "sparkplug.primary_host_id"),
        ("mqtt: {}\nsparkplug: {group_id: t, report_every_s: 0}\n", "sparkplug.report_every_s"),
    ],
)  # fmt: skip
def test_a_sparkplug_section_needs_mqtt_and_valid_ids(extra: str, problem: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(MINIMAL + extra, env={})
    assert any(problem in str(issue) for issue in caught.value.issues), caught.value.issues


def test_openadr_prices_and_another_price_source_are_refused_together() -> None:
    text = MINIMAL + (
        "openadr: {vtn_url: 'http://vtn', ven_name: v, allow_plain_http: true, "
        "price_signals: true}\n"
    )
    with pytest.raises(ConfigFileError) as caught:
        parse_config(text, env={})
    assert any("openadr.price_signals" in str(i) and "prices.source" in str(i)
               for i in caught.value.issues)  # fmt: skip
    config = parse_config(text + "prices: {source: none}\n", env={})
    assert config.openadr is not None
    assert config.openadr.price_signals
