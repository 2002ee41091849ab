"""One schema-invalid event does not sink the events beside it; a sub-second poll frequency
does not sink a registration.

openleadr validates a whole incoming message against the OpenADR 2.0b schema and drops it on the
first error: an oadrDistributeEvent holding one bad event and one good one delivers neither,
and the VEN reads the silence as a lost VTN. Here such a message is taken apart: its signature
is checked on the message as received (the VTN signed all of it), then each oadrEvent is
validated on its own inside the envelope; the valid ones are parsed as openleadr would, and the
invalid ones come back with the schema's reason so the VEN can answer each with an error
(eventResponse 454 Invalid Data) instead of silence.

A VTN that asks for polling faster than a second writes a fractional duration (PT0.5S), which
the 2.0b duration type does not allow, so openleadr drops its registration answer and the VEN
never registers. salvage_registration() checks the signature, writes the duration in whole
seconds for the schema, validates and parses the rest, and returns the seconds asked for.

Parsing uses lxml without entity expansion or network access, like openleadr's own parser.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from lxml import etree
from openleadr.messaging import XML_SCHEMA, parse_message, validate_xml_signature

__all__ = [
    "INVALID_DATA",
    "RejectedEvent",
    "Salvaged",
    "rejection_responses",
    "salvage_distribute_event",
    "salvage_registration",
]

INVALID_DATA = 454  # OpenADR 2.0b response code for a message part that fails validation
_NS = {
    "oadr": "http://openadr.org/oadr-2.0b/2012/07",
    "ei": "http://docs.oasis-open.org/ns/energyinterop/201110",
    "xcal": "urn:ietf:params:xml:ns:icalendar-2.0",
}
_FRACTIONAL_SECONDS = re.compile(r"PT(\d*\.\d+)S")
_PLAIN = etree.XMLParser(resolve_entities=False, no_network=True)
_REASON_CHARS = 300  # an eventResponse description is read by people, not parsed


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """An event that failed the schema: its id and version when it has them, and why."""

    event_id: str | None
    modification_number: int
    reason: str


@dataclass(frozen=True, slots=True)
class Salvaged:
    """The valid part of an oadrDistributeEvent, parsed, and the events left out of it."""

    payload: dict[str, Any]
    rejected: tuple[RejectedEvent, ...]


def _trusted(content: bytes, vtn_fingerprint: str | None) -> Any:
    """The message as an lxml tree, if it is XML and (when a fingerprint is pinned) signed by
    the VTN; else None."""
    try:
        tree = etree.fromstring(content, _PLAIN)
    except etree.XMLSyntaxError:
        return None
    if vtn_fingerprint:
        try:
            validate_xml_signature(tree, cert_fingerprint=vtn_fingerprint)
        except Exception:  # openleadr's checks raise several types; any failure is "untrusted"
            return None
    return tree


def salvage_registration(
    content: bytes, vtn_fingerprint: str | None
) -> tuple[dict[str, Any], float] | None:
    """An oadrCreatedPartyRegistration that failed the schema only for a fractional
    oadrRequestedOadrPollFreq: its parsed payload and the poll interval asked for, in seconds."""
    tree = _trusted(content, vtn_fingerprint)
    if tree is None:
        return None
    duration = tree.find(
        "oadr:oadrSignedObject/oadr:oadrCreatedPartyRegistration/"
        "oadr:oadrRequestedOadrPollFreq/xcal:duration", _NS
    )  # fmt: skip
    match = None if duration is None else _FRACTIONAL_SECONDS.fullmatch(duration.text or "")
    if duration is None or match is None:
        return None
    asked_s = float(match.group(1))
    duration.text = f"PT{max(1, math.ceil(asked_s))}S"  # for the schema; asked_s is kept
    if not XML_SCHEMA.validate(tree):
        return None
    _message_type, payload = parse_message(etree.tostring(tree))
    return payload, asked_s


def salvage_distribute_event(content: bytes, vtn_fingerprint: str | None) -> Salvaged | None:
    """The valid events of an oadrDistributeEvent that failed the schema as a whole; None when
    nothing can be trusted: not XML, a signature that fails, another message type, or an
    envelope that is itself invalid."""
    tree = _trusted(content, vtn_fingerprint)
    if tree is None:
        return None
    distribute = tree.find("oadr:oadrSignedObject/oadr:oadrDistributeEvent", _NS)
    if distribute is None:
        return None
    events = distribute.findall("oadr:oadrEvent", _NS)
    for event in events:
        distribute.remove(event)
    if not XML_SCHEMA.validate(tree):
        return None  # the fault is outside the events: there is nothing to salvage
    kept: list[Any] = []
    rejected: list[RejectedEvent] = []
    for event in events:
        distribute.append(event)  # oadrEvent is the last element of the sequence
        if XML_SCHEMA.validate(tree):
            kept.append(event)
        else:
            rejected.append(_rejected(event, _schema_error()))
        distribute.remove(event)
    for event in kept:
        distribute.append(event)
    _message_type, payload = parse_message(etree.tostring(tree))
    return Salvaged(payload=payload, rejected=tuple(rejected))


def _rejected(event: Any, reason: str) -> RejectedEvent:
    descriptor = event.find("ei:eiEvent/ei:eventDescriptor", _NS)
    event_id = None if descriptor is None else descriptor.findtext("ei:eventID", None, _NS)
    raw_number = None if descriptor is None else descriptor.findtext("ei:modificationNumber",
                                                                     None, _NS)  # fmt: skip
    try:
        modification = int(raw_number or 0)
    except ValueError:
        modification = 0
    return RejectedEvent(event_id=event_id, modification_number=modification, reason=reason)


def _schema_error() -> str:
    error = XML_SCHEMA.error_log.last_error
    message = "fails the OpenADR 2.0b schema" if error is None else error.message
    return message[:_REASON_CHARS]


def rejection_responses(
    request_id: str, rejected: tuple[RejectedEvent, ...]
) -> list[dict[str, Any]]:
    """eventResponses for openleadr's oadrCreatedEvent template, escaped (it renders without
    autoescape, and an event id or a schema message may hold '<' or '&')."""
    return [
        {
            "response_code": INVALID_DATA,
            "response_description": escape(f"invalid event: {r.reason}"),
            "request_id": escape(request_id),
            "event_id": escape(r.event_id),
            "modification_number": r.modification_number,
            "opt_type": "optOut",
        }
        for r in rejected
        if r.event_id is not None  # an event with no id cannot be answered, only logged
    ]
