"""No input can hurt the site: poison messages, stored state that cannot load, replays, ownership,
a clock ahead of ours. The real intake with a real store; each case is what an attacker with
access to the site's broker sent."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.app.assembly import MemoryOutbox, Service, assemble
from agent.config import parse_config
from agent.errors import ConfigError
from agent.service.intake import sign
from agent.service.messages import DispatchAck, GridAck, OverrideAck
from agent.service.ratelimit import TopicRateLimit
from tests.service.site import FakeClock, site_config

KEY = b"site-key-of-at-least-thirty-two-bytes"


def _service(tmp: Path, clock: FakeClock, mqtt: str = "") -> Service:
    config = site_config(tmp / "db.sqlite3", 1502, mqtt=mqtt)
    return assemble(config, clock=clock, drivers={})  # intake and store only: no device IO


def _acks(service: Service) -> list[Any]:
    assert isinstance(service.outbox, MemoryOutbox)
    return [m for t, m in service.outbox.sent if t.endswith("/ack")]


def _handlers(service: Service) -> dict[str, Any]:
    return {"dispatch": service.intake.dispatch, "override": service.intake.override,
            "emergency": service.grid.emergency, "4cp": service.grid.peak_warning}  # fmt: skip


def _deep(levels: int) -> bytes:
    return ('{"event_id": ' + "[" * levels + "]" * levels + "}").encode()


POISON = [
    (b'{"level": "eea2", "issued_at": "%s", "expires_at": "9999-12-31T23:59:59-05:00"}',
     "emergency", "expires_at out of range"),
    (b'{"active": true, "issued_at": "%s", "expires_at": "9999-12-31T23:59:59+00:00"}',
     "4cp", "expires_at out of range"),
    (b'{"event_id": "e", "kind": "limit", "target_kw": 10, "issued_at": "%s", '
     b'"end": "9999-12-31T23:59:59-05:00"}', "dispatch", "end out of range"),
    (b'{"override_id": "o", "action": "off", "class": "miners", "issued_by": "x", '
     b'"issued_at": "%s", "expires_at": "9999-12-31T23:59:59-05:00"}', "override", "out of range"),
    (_deep(5000), "dispatch", "nested deeper"),
    (_deep(100), "override", "nested deeper"),
    (b'{"event_id": "e", "kind": "limit", "target_kw": 1' + b"0" * 400 + b', "issued_at": "%s"}',
     "dispatch", "digits"),
    (b'{"event_id": "e\\ud800", "kind": "limit", "target_kw": 1, "issued_at": "%s"}',
     "dispatch", "surrogate"),
    (b'{"level": "eea1", "issued_at": "%s", "source": "a\\u0000b"}', "emergency", "NUL"),
    (b'{"event_id": "e", "kind": "limit", "target_kw": NaN, "issued_at": "%s"}',
     "dispatch", "NaN"),
    (b'{"event_id": "' + b"x" * 70_000 + b'"}', "dispatch", "too large"),
]  # fmt: skip


@pytest.mark.parametrize(("template", "topic", "fragment"), POISON)
def test_poison_messages_are_rejected_with_a_reason_and_restart_still_works(
    tmp_path: Path, template: bytes, topic: str, fragment: str
) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock)
    payload = template.replace(b"%s", clock.now.isoformat().encode(), 1)
    assert _handlers(service)[topic](payload) == "rejected"
    ack = _acks(service)[-1]
    assert ack.status == "rejected"
    assert fragment in ack.reason, ack.reason
    service.store.close()
    again = _service(tmp_path, clock)  # nothing stored can stop the next start
    assert again.snapshot.emergency == (None, None)
    again.store.close()


def test_stored_rows_that_cannot_load_are_quarantined_audited_and_skipped(tmp_path: Path) -> None:
    clock = FakeClock()
    first = _service(tmp_path, clock)
    event = {"event_id": "good", "kind": "limit", "target_kw": 100.0,
             "issued_at": clock.now.isoformat()}  # fmt: skip
    assert first.intake.dispatch(json.dumps(event).encode()) == "accepted"
    first.store.close()
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:  # what a bug or a hand edit leaves
        db.execute("INSERT INTO events VALUES ('bad', '{\"event_id\": \"bad\"}', 'active', 'x')")
        db.execute("INSERT INTO state VALUES ('grid/emergency', '{\"message\": {\"level\": "
                   "\"eea3\", \"issued_at\": \"9999-12-31T23:59:59-05:00\"}}')")  # fmt: skip
        db.execute("INSERT INTO state VALUES ('engine', 'not json')")
    again = _service(tmp_path, clock)
    assert [e.event_id for e in again.events.live] == ["good"]
    assert again.snapshot.emergency == (None, None)
    again.store.flush()
    quarantined = {r.subject for r in again.store.audit_since(clock.now - timedelta(days=1))
                   if r.kind == "quarantined"}  # fmt: skip
    assert quarantined == {"bad", "grid/emergency", "engine"}
    again.store.close()
    third = _service(tmp_path, clock)  # set aside once, not met again
    third.store.flush()
    rows = third.store.audit_since(clock.now - timedelta(days=1))
    assert sum(r.kind == "quarantined" for r in rows) == 3
    third.store.close()


def _signed(body: dict[str, Any], key: bytes = KEY) -> bytes:
    """Signed for the test site (`ta`) and the topic the message is for."""
    topic = "override" if "override_id" in body else "dispatch"
    return json.dumps({**body, "signature": sign(body, key, f"ta:{topic}")}).encode()


def _in_force(service: Service, clock: FakeClock) -> list[str]:
    return [k for k, o in service.snapshot.overrides.items() if o.is_active(clock.now)]


def test_a_signed_message_is_applied_once_even_after_a_clear_and_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    mqtt = f"mqtt: {{hmac_secret: {KEY.decode()}}}"
    service = _service(tmp_path, clock, mqtt)
    base = {"override_id": "o-1", "class": "miners", "issued_by": "eve",
            "issued_at": clock.now.isoformat()}  # fmt: skip
    off = _signed({**base, "action": "off", "message_id": "m-off",
                   "expires_at": (clock.now + timedelta(hours=1)).isoformat()})  # fmt: skip
    clear = _signed({**base, "action": "clear", "message_id": "m-clear"})
    assert service.intake.override(off) == "accepted"
    assert service.intake.override(clear) == "cleared"
    assert service.intake.override(off) == "duplicate"  # the captured "off", replayed
    assert not _in_force(service, clock)
    service.store.close()
    again = _service(tmp_path, clock, mqtt)  # the memory of message ids is durable
    assert again.intake.override(off) == "duplicate"
    assert not _in_force(again, clock)
    again.store.close()


def test_short_or_empty_keys_are_refused() -> None:
    for key in ("''", "short"):
        with pytest.raises(ConfigError, match="at least 32 bytes"):
            parse_config(f"site: {{id: k}}\nclasses: {{c: {{priority: critical}}}}\n"
                         f"devices: [{{id: d, class: c, rated_kw: 1}}]\n"
                         f"mqtt: {{hmac_secret: {key}}}\n", env={})  # fmt: skip


def test_each_sender_has_its_own_key_and_only_the_owner_releases_an_event(tmp_path: Path) -> None:
    clock = FakeClock()
    qse, scada = b"q" * 32, b"s" * 32
    mqtt = f"mqtt: {{hmac_keys: {{qse: {qse.decode()}, scada: {scada.decode()}}}}}"
    service = _service(tmp_path, clock, mqtt)
    now = clock.now.isoformat()
    limit = {"event_id": "ev", "kind": "limit", "target_kw": 100.0, "issued_at": now}
    assert service.intake.dispatch(_signed({**limit, "key_id": "qse", "message_id": "1"},
                                           scada)) == "rejected"  # fmt: skip
    assert "bad signature" in _acks(service)[-1].reason
    assert service.intake.dispatch(_signed({**limit, "key_id": "qse", "message_id": "2"},
                                           qse)) == "accepted"  # fmt: skip
    release = {"event_id": "ev", "kind": "release", "issued_at": now, "key_id": "scada"}
    assert service.intake.dispatch(_signed({**release, "message_id": "3"}, scada)) == "rejected"
    assert "belongs to mqtt/qse" in _acks(service)[-1].reason
    conflicting = {**limit, "target_kw": 5.0, "key_id": "qse", "message_id": "4"}
    assert service.intake.dispatch(_signed(conflicting, qse)) == "rejected"
    assert "conflicting" in _acks(service)[-1].reason
    assert [e.requested_kw for e in service.events.live] == [100.0]
    qse_release = {**release, "key_id": "qse", "message_id": "5"}
    assert service.intake.dispatch(_signed(qse_release, qse)) == "released"
    service.store.close()


def test_mqtt_cannot_release_an_openadr_event(tmp_path: Path) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock)
    now = clock.now.isoformat()
    event = {"event_id": "adr-1", "kind": "limit", "target_kw": 100.0, "issued_at": now}
    assert service.intake.dispatch(json.dumps(event).encode(), source="openadr") == "accepted"
    release = {"event_id": "adr-1", "kind": "release", "issued_at": now}
    assert service.intake.dispatch(json.dumps(release).encode()) == "rejected"
    assert [e.event_id for e in service.events.live] == ["adr-1"]
    service.store.close()


def test_a_message_dated_ahead_of_our_clock_cannot_block_the_next_one(tmp_path: Path) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock)

    def emergency(level: str, ahead_s: float) -> bytes:
        at = (clock.now + timedelta(seconds=ahead_s)).isoformat()
        return json.dumps({"level": level, "issued_at": at}).encode()

    assert service.grid.emergency(emergency("eea1", 29)) == "rejected"  # beyond the 5 s skew
    assert "in the future" in _acks(service)[-1].reason
    assert service.grid.emergency(emergency("eea1", 4)) == "accepted"  # inside it
    clock.leap(1)
    assert service.grid.emergency(emergency("eea3", 0)) == "accepted"  # received after it
    held, _ = service.snapshot.emergency
    assert held is not None
    assert held.level.value == "eea3"
    service.store.close()


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip
FIELDS = ["event_id", "kind", "target_kw", "shed_kw", "start", "end", "issued_at", "override_id",
          "action", "class", "device_id", "limit_kw", "expires_at", "issued_by", "level",
          "active", "source", "message_id", "key_id", "signature"]  # fmt: skip


NASTY = [{"expires_at": "9999-12-31T23:59:59-05:00"}, {"target_kw": 10**400},
         {"event_id": "\ud800"}, {"issued_at": "0001-01-01T00:00:00+14:00"}]  # fmt: skip


@st.composite
def attacks(draw: st.DrawFn) -> tuple[str, bytes]:
    topic = draw(st.sampled_from(["dispatch", "override", "emergency", "4cp"]))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return topic, draw(st.binary(max_size=300))
    if kind == 1:
        return topic, json.dumps(draw(JSONISH)).encode()
    body = draw(st.dictionaries(st.sampled_from(FIELDS), JSONISH, max_size=8))
    if kind == 3:
        body.update(draw(st.sampled_from(NASTY)))
    try:
        return topic, json.dumps(body).encode("utf-8", "surrogatepass")
    except ValueError:
        return topic, b"{}"


def test_fuzz_every_topic_gets_one_ack_and_a_rejected_message_changes_nothing(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    service = _service(tmp_path, clock)
    handlers = _handlers(service)

    def state() -> tuple[Any, ...]:
        snap = service.snapshot
        return (tuple(sorted(snap.overrides)), snap.emergency, snap.peak_warning,
                tuple(e.event_id for e in service.events.live))  # fmt: skip

    @given(case=attacks())
    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    def one(case: tuple[str, bytes]) -> None:
        topic, payload = case
        before, acks_before = state(), len(_acks(service))
        outcome = handlers[topic](payload)
        acks = _acks(service)[acks_before:]
        if outcome == "duplicate":
            return
        assert len(acks) == 1, (outcome, acks)
        assert isinstance(acks[0], DispatchAck | OverrideAck | GridAck)
        if outcome == "rejected":
            assert acks[0].reason
            assert state() == before

    one()
    service.store.close()


def test_a_flooded_topic_is_held_to_its_rate_and_the_other_topics_are_not() -> None:
    now = [0.0]
    limit = TopicRateLimit(per_s=20, burst=100, monotonic=lambda: now[0])
    taken = sum(limit.allow("dispatch") for _ in range(1000))  # a flood, all at once
    assert taken == 100  # the burst
    assert limit.allow("override")  # another topic has its own bucket
    now[0] += 1.0
    assert sum(limit.allow("dispatch") for _ in range(100)) == 20  # then the rate


@pytest.mark.parametrize(
    ("class_name", "device_id", "where"),
    [("c", "pdu\\nWARNING forged", "devices[0].id"),
     ("c\\nINFO forged", "d", "classes")],
)  # fmt: skip
def test_names_that_reach_the_logs_cannot_carry_a_newline(
    class_name: str, device_id: str, where: str
) -> None:
    device = f'{{id: "{device_id}", kind: other, class: "{class_name}", rated_kw: 1}}'
    text = f'site: {{id: s}}\nclasses: {{"{class_name}": {{priority: critical}}}}\n'
    text += f"devices: [{device}]\n"
    with pytest.raises(ConfigError, match=re.escape(where)):
        parse_config(text, env={})


def test_metrics_listen_on_loopback_unless_told_otherwise() -> None:
    config = site_config(Path("/tmp/unused.sqlite3"), 1502)
    assert config.service.metrics_host == "127.0.0.1"
