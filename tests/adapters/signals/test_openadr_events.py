"""OpenADR events to obligations, on events that went through openleadr's real XML round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from openleadr import objects
from openleadr.messaging import create_message, parse_message

from adapters.signals.openadr_events import (
    SiteNow,
    UnsupportedEventError,
    check_feasible,
    obligation_at,
    plan_event,
    price_signals,
    startafter_s,
)
from agent.config import ConfigFileError, OpenAdrConfig, parse_config
from agent.domain.signals import ObligationKind

T0 = datetime(2026, 7, 15, 20, 0, tzinfo=UTC)
FLOORS = {False: 50.0, True: 10.0}  # protected + critical load, critical load


def floor(include_protected: bool) -> float:
    return FLOORS[include_protected]


def config(**fields: Any) -> OpenAdrConfig:
    base: dict[str, Any] = {
        "vtn_url": "https://vtn.example/OpenADR2/Simple/2.0b",
        "ven_name": "site",
        "cert_file": "ven.pem",
        "key_file": "ven.key",
        "ca_file": "ca.pem",
        "simple_levels": {
            0: {"posture": "none"},
            1: {"shed_kw": 40},
            2: {"ceiling_kw": 120},
            3: {"posture": "curtail_protected"},
        },
    }
    return OpenAdrConfig.model_validate({**base, **fields})


def wire_event(
    payloads: list[float],
    *,
    signal_name: str = "SIMPLE",
    signal_type: str = "level",
    interval_s: float = 900,
    measurement: objects.Measurement | None = None,
    startafter: timedelta | None = None,
    ramp_up: timedelta | None = None,
    extra_signal: objects.EventSignal | None = None,
) -> dict[str, Any]:
    """Build an event as a VTN does, send it through XML, and parse it as the VEN sees it."""
    intervals = [
        objects.Interval(
            dtstart=T0 + timedelta(seconds=k * interval_s),
            duration=timedelta(seconds=interval_s),
            signal_payload=v,
            uid=k,
        )
        for k, v in enumerate(payloads)
    ]
    signals = [
        objects.EventSignal(
            intervals=intervals, signal_name=signal_name, signal_type=signal_type,
            signal_id="s1", measurement=measurement,
        )
    ]  # fmt: skip
    if extra_signal is not None:
        signals.insert(0, extra_signal)
    event = objects.Event(
        event_descriptor=objects.EventDescriptor(
            event_id="e1", modification_number=4, market_context="http://utility.example/cbp",
            event_status="far",
        ),
        active_period=objects.ActivePeriod(
            dtstart=T0, duration=timedelta(seconds=interval_s * len(payloads)),
            tolerance={"startafter": startafter} if startafter else None,
            ramp_up_period=ramp_up,
        ),
        event_signals=signals,
        targets=[objects.Target(ven_id="ven-1")],
    )  # fmt: skip
    message = create_message("oadrDistributeEvent", request_id="r1", vtn_id="VTN", events=[event])
    message_type, payload = parse_message(message)
    assert message_type == "oadrDistributeEvent"
    parsed: dict[str, Any] = payload["events"][0]
    return parsed


def test_simple_levels_map_to_ceiling_shed_and_posture_floors() -> None:
    cases = {
        1.0: (ObligationKind.SHED, 40.0),
        2.0: (ObligationKind.LIMIT, 120.0),
        3.0: (ObligationKind.LIMIT, 10.0),  # curtail_protected: only critical load is left
    }
    for level, (kind, kw) in cases.items():
        plan = plan_event(wire_event([level]), config(), floor)
        obligation, _ = obligation_at(plan, T0)
        assert obligation is not None, level
        assert (obligation.kind, obligation.kw) == (kind, kw), level
        assert obligation.event_id == "e1"
        assert obligation.program == "http://utility.example/cbp"
        assert obligation.end_utc == T0 + timedelta(minutes=15)


def test_level_0_asks_nothing_and_an_unmapped_level_is_refused() -> None:
    plan = plan_event(wire_event([0.0]), config(), floor)
    assert obligation_at(plan, T0) == (None, None)
    with pytest.raises(UnsupportedEventError, match="level 2 is not mapped"):
        plan_event(wire_event([2.0]), config(simple_levels={0: {"posture": "none"}}), floor)


def test_load_dispatch_setpoint_reads_the_item_base_scale() -> None:
    megawatts = objects.Measurement(
        name="powerReal", description="RealPower", unit="W", scale="M",
        power_attributes=objects.PowerAttributes(hertz=60, voltage=480, ac=True),
    )  # fmt: skip
    event = wire_event([0.2], signal_name="LOAD_DISPATCH", signal_type="setpoint",
                       measurement=megawatts)  # fmt: skip
    plan = plan_event(event, config(load_dispatch={"meaning": "ceiling"}), floor)
    obligation, _ = obligation_at(plan, T0)
    assert obligation is not None
    assert obligation.kind is ObligationKind.LIMIT
    assert obligation.kw == pytest.approx(200.0)

    bare = wire_event([75.0], signal_name="LOAD_CONTROL", signal_type="x-loadControlSetpoint")
    plan = plan_event(bare, config(load_control={"meaning": "shed", "unit": "kW"}), floor)
    obligation, _ = obligation_at(plan, T0)
    assert obligation is not None
    assert (obligation.kind, obligation.kw) == (ObligationKind.SHED, 75.0)


def test_the_detailed_signal_wins_over_the_simple_one_only_when_mapped() -> None:
    simple = objects.EventSignal(
        intervals=[objects.Interval(dtstart=T0, duration=timedelta(minutes=15),
                                    signal_payload=1.0, uid=0)],
        signal_name="SIMPLE", signal_type="level", signal_id="s0",
    )  # fmt: skip
    event = wire_event([130.0], signal_name="LOAD_DISPATCH", signal_type="setpoint",
                       extra_signal=simple)  # fmt: skip
    mapped = plan_event(event, config(load_dispatch={"meaning": "ceiling"}), floor)
    assert (mapped.signal, mapped.steps[0].kw) == ("LOAD_DISPATCH", 130.0)
    unmapped = plan_event(event, config(), floor)
    assert (unmapped.signal, unmapped.steps[0].kw) == ("SIMPLE", 40.0)


def test_an_unsupported_detailed_signal_falls_back_to_the_simple_one_beside_it() -> None:
    simple = objects.EventSignal(
        intervals=[objects.Interval(dtstart=T0, duration=timedelta(minutes=15),
                                    signal_payload=1.0, uid=0)],
        signal_name="SIMPLE", signal_type="level", signal_id="s0",
    )  # fmt: skip
    event = wire_event([0.5], signal_name="LOAD_DISPATCH", signal_type="multiplier",
                       extra_signal=simple)  # fmt: skip
    plan = plan_event(event, config(load_dispatch={"meaning": "ceiling"}), floor)
    assert (plan.signal, plan.steps[0].kw) == ("SIMPLE", 40.0)


def test_an_electricity_price_signal_becomes_prices_per_interval_in_usd_per_mwh() -> None:
    usd_per_kwh = objects.Measurement(name="currencyPerKWh", description="currencyPerKWh",
                                      unit="USD", scale="none")  # fmt: skip
    event = wire_event([0.045, 1.2], signal_name="ELECTRICITY_PRICE", signal_type="price",
                       measurement=usd_per_kwh)  # fmt: skip
    prices = price_signals(event, T0)
    assert [p.price_usd_per_mwh for p in prices] == pytest.approx([45.0, 1200.0])
    assert [p.interval_start_utc for p in prices] == [T0, T0 + timedelta(minutes=15)]
    assert prices[0].interval_end_utc == T0 + timedelta(minutes=15)
    assert prices[0].source == "openadr"
    relative = wire_event([0.1], signal_name="ELECTRICITY_PRICE", signal_type="priceRelative",
                          measurement=usd_per_kwh)  # fmt: skip
    with pytest.raises(UnsupportedEventError, match="priceRelative is not supported"):
        price_signals(relative, T0)
    euros = objects.Measurement(name="currencyPerKWh", description="currencyPerKWh", unit="EUR",
                                scale="none")  # fmt: skip
    with pytest.raises(UnsupportedEventError, match="is not USD per kWh"):
        price_signals(wire_event([0.1], signal_name="ENERGY_PRICE", signal_type="price",
                                 measurement=euros), T0)  # fmt: skip
    assert price_signals(wire_event([2.0]), T0) == []  # SIMPLE: no price


KW = objects.Measurement(name="powerReal", description="RealPower", unit="W", scale="k")


@pytest.mark.parametrize(
    ("signal_name", "signal_type", "value", "kind", "kw"),
    [
        ("LOAD_DISPATCH", "delta", -150.0, ObligationKind.SHED, 150.0),  # 150 kW less
        ("LOAD_DISPATCH", "delta", 40.0, None, 0.0),  # asks for more: not a restriction
        ("LOAD_CONTROL", "x-loadControlCapacity", 0.25, ObligationKind.LIMIT, 250.0),
        ("LOAD_CONTROL", "x-loadControlPercentOffset", -30.0, ObligationKind.SHED, 180.0),
        ("LOAD_CONTROL", "x-loadControlPercentOffset", 10.0, None, 0.0),
    ],
)  # fmt: skip
def test_relative_dispatch_signals_are_read_against_the_site(
    signal_name: str, signal_type: str, value: float, kind: ObligationKind | None, kw: float
) -> None:
    """A delta in kW, a fraction of capacity (1,000 kW here) and a percent of the load when the
    event was accepted (600 kW here)."""
    event = wire_event([value], signal_name=signal_name, signal_type=signal_type,
                       measurement=KW if signal_type == "delta" else None)  # fmt: skip
    mapping = {"meaning": "shed"}
    cfg = config(load_dispatch=mapping, load_control=mapping)
    plan = plan_event(event, cfg, floor, site=SiteNow(load_kw=600.0, capacity_kw=1000.0))
    step = plan.steps[0]
    assert (plan.signal, step.kind) == (signal_name, kind)
    assert step.kw == pytest.approx(kw)


def test_relative_signals_out_of_range_or_without_the_site_are_refused() -> None:
    mapping = {"meaning": "shed"}
    cfg = config(load_control=mapping)
    site = SiteNow(load_kw=600.0, capacity_kw=1000.0)
    capacity = wire_event([1.5], signal_name="LOAD_CONTROL", signal_type="x-loadControlCapacity")
    with pytest.raises(UnsupportedEventError, match="not a fraction 0-1"):
        plan_event(capacity, cfg, floor, site=site)
    offset = wire_event([-20.0], signal_name="LOAD_CONTROL",
                        signal_type="x-loadControlPercentOffset")  # fmt: skip
    with pytest.raises(UnsupportedEventError, match="needs the site's load"):
        plan_event(offset, cfg, floor)
    level = wire_event([1.0], signal_name="LOAD_CONTROL", signal_type="x-loadControlLevelOffset")
    with pytest.raises(UnsupportedEventError, match="x-loadControlLevelOffset is not supported"):
        plan_event(level, cfg, floor, site=site)


def test_unsupported_signal_types_are_refused_not_guessed() -> None:
    event = wire_event([0.5], signal_name="LOAD_DISPATCH", signal_type="multiplier")
    with pytest.raises(UnsupportedEventError, match="multiplier is not supported"):
        plan_event(event, config(load_dispatch={"meaning": "ceiling"}), floor)
    price = wire_event([120.0], signal_name="ELECTRICITY_PRICE", signal_type="price")
    with pytest.raises(UnsupportedEventError, match="no signal this site maps"):
        plan_event(price, config(), floor)


def test_randomization_shifts_the_whole_event_and_ramp_up_starts_it_early() -> None:
    event = wire_event([2.0], startafter=timedelta(minutes=5), ramp_up=timedelta(minutes=2))
    assert startafter_s(event) == 300.0
    plan = plan_event(event, config(), floor, offset_s=90.0)
    obligation, wake = obligation_at(plan, T0)
    assert obligation is not None
    assert obligation.start_utc == T0 + timedelta(seconds=90) - timedelta(minutes=2)
    assert obligation.end_utc == T0 + timedelta(seconds=90) + timedelta(minutes=15)
    assert wake == obligation.end_utc


def test_intervals_step_one_obligation_and_a_level_0_gap_lets_it_lapse() -> None:
    plan = plan_event(wire_event([1.0, 2.0, 0.0, 2.0], interval_s=600), config(), floor)
    table = [
        # now (min after T0), kind, kw, start (min), end (min), next wake (min)
        (-5, ObligationKind.SHED, 40.0, 0, 20, 10),
        (3, ObligationKind.SHED, 40.0, 0, 20, 10),
        (10, ObligationKind.LIMIT, 120.0, 0, 20, 20),
        (25, ObligationKind.LIMIT, 120.0, 30, 40, 40),
    ]
    for now_min, kind, kw, start_min, end_min, wake_min in table:
        obligation, wake = obligation_at(plan, T0 + timedelta(minutes=now_min))
        assert obligation is not None
        assert (obligation.kind, obligation.kw) == (kind, kw), now_min
        assert obligation.start_utc == T0 + timedelta(minutes=start_min), now_min
        assert obligation.end_utc == T0 + timedelta(minutes=end_min), now_min
        assert wake == T0 + timedelta(minutes=wake_min), now_min
    assert obligation_at(plan, T0 + timedelta(minutes=40)) == (None, None)


def test_feasibility_compares_each_step_with_the_floor_the_mapping_allows() -> None:
    assert check_feasible(plan_event(wire_event([2.0]), config(), floor), 250.0, floor) is None
    # curtail_protected may go down to the critical floor
    assert check_feasible(plan_event(wire_event([3.0]), config(), floor), 250.0, floor) is None
    # a 40 kW shed from a site already at 80 kW would need 40 kW: below the 50 kW kept
    reason = check_feasible(plan_event(wire_event([1.0]), config(), floor), 80.0, floor)
    assert reason is not None
    assert "ceiling 40.0 kW" in reason
    assert "below the 50.0 kW" in reason


def test_the_site_file_refuses_plain_http_unless_allowed_and_https_without_certificates() -> None:
    site = """
site: {id: s}
classes: {miners: {priority: interruptible, economics: {kind: fixed, value_usd_per_mwh: 80}}}
devices: [{id: m, kind: miner, class: miners, rated_kw: 3}]
openadr:
  vtn_url: %s
  ven_name: s
"""
    with pytest.raises(ConfigFileError, match="allow_plain_http"):
        parse_config(site % "http://127.0.0.1:8080/OpenADR2/Simple/2.0b")
    with pytest.raises(ConfigFileError, match="cert_file, key_file, ca_file"):
        parse_config(site % "https://vtn.example/OpenADR2/Simple/2.0b")
    allowed = parse_config(site % "http://127.0.0.1:8080/x" + "  allow_plain_http: true\n")
    assert allowed.openadr is not None
    assert allowed.openadr.simple_levels[0].posture == "none"
    with pytest.raises(ValueError, match="curtail_interruptible has no site-wide ceiling"):
        config(simple_levels={2: {"posture": "curtail_interruptible"}})
