"""Every malformed message is rejected with a reason and never stops the service (hypothesis)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.app.assembly import MemoryOutbox, Service, assemble
from agent.service.intake import sign
from agent.service.messages import DispatchAck, GridAck, OverrideAck
from tests.service.site import FakeClock, site_config

CLOCK = FakeClock()
KEY = b"s3cret-key-of-thirty-two-bytes-or-more"


def _service(tmp: Path, **mqtt: str) -> Service:
    extra = ""
    if mqtt:
        extra = "mqtt: {" + ", ".join(f"{k}: {v}" for k, v in mqtt.items()) + "}"
    config = site_config(tmp / "db.sqlite3", 1502, mqtt=extra)
    return assemble(config, clock=CLOCK, drivers={})  # decide and record only: no device IO


def _valid(**fields: Any) -> dict[str, Any]:
    return {"event_id": "ok-1", "kind": "limit", "target_kw": 100.0,
            "issued_at": CLOCK.now.isoformat(), **fields}  # fmt: skip


BAD_TIMES = ["2024-05-08T17:00:00", "yesterday", "2020-01-01T00:00:00Z", "2030-01-01T00:00:00Z", 0]
BAD_FIELDS = st.one_of(
    st.fixed_dictionaries({"kind": st.sampled_from(["LIMIT", "cut", "", None, 3])}),
    st.fixed_dictionaries({"target_kw": st.sampled_from([-1, "lots", None, 1e12, True, []])}),
    st.fixed_dictionaries({"shed_kw": st.floats(min_value=1, max_value=100)}),  # both kinds
    st.fixed_dictionaries({"event_id": st.sampled_from(["", "a b", "x" * 200, 7, None])}),
    st.fixed_dictionaries(
        {
            "issued_at": st.sampled_from(
                [
                    "2024-05-08T17:00:00",
                    "yesterday",
                    "2020-01-01T00:00:00Z",
                    "2030-01-01T00:00:00Z",
                    0,
                ]
            )
        }
    ),
    st.fixed_dictionaries({"end": st.just("2024-05-08T16:00:00+00:00")}),  # already ended
    st.fixed_dictionaries({"start": st.just("2024-06-30T00:00:00+00:00")}),  # beyond 7 days
    st.fixed_dictionaries({"extra": st.integers()}),
)


@st.composite
def malformed(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.binary(max_size=200))  # not JSON (or JSON that is no object)
    if choice == 1:
        value = draw(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                  lambda c: st.lists(c, max_size=3), max_leaves=6))  # fmt: skip
        return json.dumps(value).encode()
    if choice == 2:
        return json.dumps(_valid(**draw(BAD_FIELDS))).encode()
    return json.dumps(_valid(kind="shed", target_kw=None, shed_kw=1e6)).encode()  # impossible


def test_a_storm_of_malformed_messages_is_all_rejected_and_the_service_keeps_cycling(
    tmp_path: Path,
) -> None:
    service = _service(tmp_path)
    outbox = service.outbox
    assert isinstance(outbox, MemoryOutbox)

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(payload=malformed())
    def storm(payload: bytes) -> None:
        outbox.sent.clear()
        outcome = service.intake.dispatch(payload)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "dropped":  # beyond the budget of messages no one authenticated
            assert not outbox.sent
            return
        if outcome != "rejected":  # a random byte string can be valid JSON of no use, never valid
            raise AssertionError(f"{payload!r} was {outcome}")
        (topic, ack), = outbox.sent  # fmt: skip
        assert topic == "dispatch/ack"
        assert isinstance(ack, DispatchAck)
        assert ack.status == "rejected"
        assert ack.reason

    outcomes: dict[str, int] = {}
    storm()
    # every one refused; the first burst (200) each with its ack, the rest counted and dropped
    assert set(outcomes) <= {"rejected", "dropped"}
    assert outcomes.get("rejected", 0) >= min(200, sum(outcomes.values()))
    assert service.events.live == []
    report = asyncio.run(service.shell.cycle())
    assert report.decision.site_ceiling_kw is None
    service.store.close()


# passed, or before issued_at; naive; no time at all
BAD_EXPIRIES = ["2024-05-08T16:59:00+00:00", "2024-05-08T18:00:00", "soon", 5]
GRID_BASE: dict[str, dict[str, object]] = {
    "grid/emergency": {"level": "eea1"},
    "grid/4cp": {"active": True},
}
GRID_BAD_FIELDS = st.one_of(
    st.fixed_dictionaries({"level": st.sampled_from(["EEA2", "eea4", "", None, 2, "red"])}),
    st.fixed_dictionaries({"active": st.sampled_from(["yes", "true", 1, 0, None, []])}),
    st.fixed_dictionaries({"issued_at": st.sampled_from(BAD_TIMES)}),
    st.fixed_dictionaries({"expires_at": st.sampled_from(BAD_EXPIRIES)}),
    st.fixed_dictionaries({"source": st.sampled_from(["", "x" * 65, 3, "a\nb"])}),
    st.fixed_dictionaries({"extra": st.integers()}),
)


@st.composite
def malformed_grid(draw: st.DrawFn) -> tuple[str, bytes]:
    """A grid/emergency or grid/4cp message that no site may take."""
    topic = draw(st.sampled_from(sorted(GRID_BASE)))
    if draw(st.booleans()):
        return topic, draw(malformed())  # garbage, or a dispatch message on a grid topic
    base = {**GRID_BASE[topic], "issued_at": CLOCK.now.isoformat()}
    return topic, json.dumps({**base, **draw(GRID_BAD_FIELDS)}).encode()


def test_a_storm_of_malformed_grid_messages_is_all_rejected_and_changes_nothing(
    tmp_path: Path,
) -> None:
    service = _service(tmp_path)
    outbox = service.outbox
    assert isinstance(outbox, MemoryOutbox)
    handlers = {"grid/emergency": service.grid.emergency, "grid/4cp": service.grid.peak_warning}

    @settings(max_examples=200, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(case=malformed_grid())
    def storm(case: tuple[str, bytes]) -> None:
        topic, payload = case
        outbox.sent.clear()
        outcome = handlers[topic](payload)
        if outcome != "rejected":
            raise AssertionError(f"{topic} {payload!r} was {outcome}")
        (sent_to, ack), = outbox.sent  # fmt: skip
        assert sent_to == "grid/ack"
        assert isinstance(ack, GridAck)
        assert (ack.topic, ack.status) == (topic, "rejected")
        assert ack.reason

    storm()
    assert service.snapshot.emergency == (None, None)
    assert service.snapshot.peak_warning == (None, None)
    report = asyncio.run(service.shell.cycle())
    assert report.decision.class_kw_by_name()["miners"] > 0.0
    service.store.close()


def test_signed_messages_only_when_a_secret_is_set(tmp_path: Path) -> None:
    service = _service(tmp_path, hmac_secret=KEY.decode(), replay_window_s="60")
    outbox = service.outbox
    assert isinstance(outbox, MemoryOutbox)
    message = _valid(event_id="signed-1")
    assert service.intake.dispatch(json.dumps(message).encode()) == "rejected"
    assert "unsigned" in outbox.sent[-1][1].reason  # type: ignore[union-attr]
    no_id = {**message, "signature": sign(message, KEY, "ta:dispatch")}
    assert service.intake.dispatch(json.dumps(no_id).encode()) == "rejected"
    assert "message_id" in outbox.sent[-1][1].reason  # type: ignore[union-attr]
    message["message_id"] = "m-1"
    forged = {
        **message,
        "signature": sign(message, b"other-key-of-thirty-two-bytes-at-least", "ta:dispatch"),
    }
    assert service.intake.dispatch(json.dumps(forged).encode()) == "rejected"
    good = {**message, "signature": sign(message, KEY, "ta:dispatch")}
    assert service.intake.dispatch(json.dumps(good).encode()) == "accepted"
    late = _valid(event_id="signed-2", issued_at=(CLOCK.now - timedelta(seconds=61)).isoformat())
    late["message_id"] = "m-2"
    late["signature"] = sign(late, KEY, "ta:dispatch")
    assert service.intake.dispatch(json.dumps(late).encode()) == "rejected"
    assert "replay window" in outbox.sent[-1][1].reason  # type: ignore[union-attr]
    service.store.close()


def test_overrides_are_validated_applied_and_cleared(tmp_path: Path) -> None:
    service = _service(tmp_path)
    outbox = service.outbox
    assert isinstance(outbox, MemoryOutbox)
    base = {"override_id": "o-1", "issued_at": CLOCK.now.isoformat(), "issued_by": "alice"}
    expires = (CLOCK.now + timedelta(hours=1)).isoformat()
    off = {**base, "action": "off", "expires_at": expires}
    assert service.intake.override(json.dumps({**off, "class": "nope"}).encode()) == "rejected"
    assert service.intake.override(json.dumps({**off, "class": "miners"}).encode()) == "accepted"
    report = asyncio.run(service.shell.cycle())
    assert report.decision.class_kw_by_name()["miners"] == 0.0
    assert service.intake.override(json.dumps({**base, "action": "clear"}).encode()) == "cleared"
    report = asyncio.run(service.shell.cycle())
    assert report.decision.class_kw_by_name()["miners"] > 0.0
    statuses = [m.status for t, m in outbox.sent if isinstance(m, OverrideAck)]
    # the message's outcome, then what the engine made of it, then the clear
    assert statuses == ["rejected", "accepted", "applied", "cleared"]
    service.store.close()
