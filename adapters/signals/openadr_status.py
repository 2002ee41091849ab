"""The VEN's TELEMETRY_STATUS report (OpenADR 2.0b): is the site online, is an engineer's
manual override in force, and where its load stands within what it can shed.

openleadr registers a TELEMETRY_STATUS report's metadata but can only send reports whose payload
is a float (its oadrUpdateReport template), so the status report is served here: each request
from the VTN (oadrCreateReport naming this report's specifier id) starts a sender that reports
every reportBackDuration (or granularity; once when both are zero) until the VTN cancels it or
the VEN registers again. The payload is oadrPayloadResourceStatus:

- oadrOnline: the agent can act on the site (at least one device reachable);
- oadrManualOverride: an engineer's override is in force (`gridflex override`, MQTT);
- oadrLoadControlState/oadrCapacity: the site's load as a fraction of its rated capacity, the
  same fraction LOAD_CONTROL x-loadControlCapacity events use: current (verified now), min (all
  sheddable load off, protected included), max and normal 1.0.

The message is rendered from a template of our own, added to openleadr's template loader under a
name openleadr does not use, so openleadr signs and wraps it like any message it sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

from jinja2 import ChoiceLoader, DictLoader
from openleadr import OpenADRClient, enums, utils
from openleadr.messaging import TEMPLATES

from agent.config import OpenAdrConfig
from agent.ports import SiteView

__all__ = ["StatusReports", "offer_status_report", "status_specifier_id"]

log = logging.getLogger("adapters.signals.openadr_ven")

_MESSAGE = "gridflexStatusReport"  # our template's name in openleadr's loader
_MIN_EVERY_S = 1.0  # the same floor as the site power report's sampling
_TEMPLATE = """\
<oadr:oadrSignedObject xmlns:oadr="http://openadr.org/oadr-2.0b/2012/07" \
xmlns:pyld="http://docs.oasis-open.org/ns/energyinterop/201110/payloads" oadr:Id="oadrSignedObject">
  <oadr:oadrUpdateReport ei:schemaVersion="2.0b" \
xmlns:ei="http://docs.oasis-open.org/ns/energyinterop/201110">
    <pyld:requestID>{{ request_id }}</pyld:requestID>
    <oadr:oadrReport xmlns:xcal="urn:ietf:params:xml:ns:icalendar-2.0">
      <xcal:dtstart><xcal:date-time>{{ at|datetimeformat }}</xcal:date-time></xcal:dtstart>
      <strm:intervals xmlns:strm="urn:ietf:params:xml:ns:icalendar-2.0:stream">
        <ei:interval>
          <xcal:dtstart><xcal:date-time>{{ at|datetimeformat }}</xcal:date-time></xcal:dtstart>
          <xcal:duration><xcal:duration>{{ every|timedeltaformat }}</xcal:duration></xcal:duration>
          <oadr:oadrReportPayload>
            <ei:rID>{{ r_id }}</ei:rID>
            <oadr:oadrPayloadResourceStatus>
              <oadr:oadrOnline>{{ online|booleanformat }}</oadr:oadrOnline>
              <oadr:oadrManualOverride>{{ manual_override|booleanformat }}</oadr:oadrManualOverride>
              <oadr:oadrLoadControlState>
                <oadr:oadrCapacity>
                  <oadr:oadrMin>{{ capacity_min }}</oadr:oadrMin>
                  <oadr:oadrMax>1.0</oadr:oadrMax>
                  <oadr:oadrCurrent>{{ capacity_now }}</oadr:oadrCurrent>
                  <oadr:oadrNormal>1.0</oadr:oadrNormal>
                </oadr:oadrCapacity>
              </oadr:oadrLoadControlState>
            </oadr:oadrPayloadResourceStatus>
          </oadr:oadrReportPayload>
        </ei:interval>
      </strm:intervals>
      <ei:eiReportID>{{ report_id }}</ei:eiReportID>
      <ei:reportRequestID>{{ report_request_id }}</ei:reportRequestID>
      <ei:reportSpecifierID>{{ report_specifier_id }}</ei:reportSpecifierID>
      <ei:reportName>TELEMETRY_STATUS</ei:reportName>
      <ei:createdDateTime>{{ at|datetimeformat }}</ei:createdDateTime>
    </oadr:oadrReport>
    <ei:venID>{{ ven_id }}</ei:venID>
  </oadr:oadrUpdateReport>
</oadr:oadrSignedObject>
"""

if not isinstance(TEMPLATES.loader, ChoiceLoader):  # once per process, whoever imports first
    TEMPLATES.loader = ChoiceLoader([TEMPLATES.loader, DictLoader({f"{_MESSAGE}.xml": _TEMPLATE})])


def status_specifier_id(cfg: OpenAdrConfig) -> str:
    return f"{cfg.ven_name}:TELEMETRY_STATUS"


def _status_r_id(cfg: OpenAdrConfig) -> str:
    return f"{cfg.report_resource_id}:status"


def offer_status_report(client: OpenADRClient, cfg: OpenAdrConfig) -> None:
    """Declare the TELEMETRY_STATUS report in the VEN's metadata (oadrRegisterReport)."""
    client.add_report(
        callback=lambda: None,  # never sampled by openleadr: StatusReports serves it
        resource_id=cfg.report_resource_id,
        report_specifier_id=status_specifier_id(cfg),
        r_id=_status_r_id(cfg),
        report_name=enums.REPORT_NAME.TELEMETRY_STATUS,
        reading_type=enums.READING_TYPE.X_NOT_APPLICABLE,
        report_type=enums.REPORT_TYPE.X_RESOURCE_STATUS,
        report_duration=timedelta(hours=1),
        sampling_rate=timedelta(seconds=_MIN_EVERY_S),
    )


class StatusReports:
    """The status reports the VTN asked for, one sender per report request."""

    def __init__(self, cfg: OpenAdrConfig, site: SiteView) -> None:
        self._cfg = cfg
        self._site = site
        self._senders: dict[str, asyncio.Task[None]] = {}

    def start(self, client: OpenADRClient, request: Mapping[str, Any]) -> None:
        request_id = str(request["report_request_id"])
        specifier = request["report_specifier"]
        every = _every(specifier.get("report_back_duration"), specifier.get("granularity"))
        self.cancel(request_id)
        task = asyncio.get_running_loop().create_task(self._send(client, request_id, every))
        self._senders[request_id] = task

    def cancel(self, report_request_id: str) -> bool:
        task = self._senders.pop(report_request_id, None)
        if task is not None:
            task.cancel()
        return task is not None

    def stop_all(self) -> None:
        for request_id in list(self._senders):
            self.cancel(request_id)

    async def _send(self, client: OpenADRClient, request_id: str, every: timedelta | None) -> None:
        try:
            while True:
                await client._perform_request("EiReport", self._message(client, request_id, every))
                if every is None:
                    return
                await asyncio.sleep(every.total_seconds())
        finally:
            if self._senders.get(request_id) is asyncio.current_task():
                del self._senders[request_id]

    def _message(self, client: OpenADRClient, request_id: str, every: timedelta | None) -> str:
        capacity_kw = self._site.capacity_kw()
        share = (lambda kw: round(kw / capacity_kw, 4)) if capacity_kw > 0 else (lambda kw: 1.0)
        message: str = client._create_message(
            _MESSAGE,
            request_id=utils.generate_id(),
            at=datetime.now(UTC),
            every=every or timedelta(0),
            r_id=escape(_status_r_id(self._cfg)),
            online=self._site.online(),
            manual_override=self._site.manual_override(),
            capacity_min=share(self._site.floor_kw(include_protected=True)),
            capacity_now=share(self._site.site_kw()),
            report_id=utils.generate_id(),
            report_request_id=escape(request_id),
            report_specifier_id=escape(status_specifier_id(self._cfg)),
            ven_id=escape(client.ven_id or ""),
        )
        return message


def _every(back: object, granularity: object) -> timedelta | None:
    """How often to report: reportBackDuration, else granularity; None for a one-time report."""
    for value in (back, granularity):
        if isinstance(value, timedelta) and value > timedelta(0):
            return max(value, timedelta(seconds=_MIN_EVERY_S))
    return None
