"""How the VEN answers the VTN's report requests (oadrCreateReport, oadrCancelReport).

- a report openleadr serves (TELEMETRY_USAGE): handed to openleadr's report jobs;
- TELEMETRY_STATUS: served by openadr_status.StatusReports;
- METADATA: the VEN's oadrRegisterReport, sent again;
- anything else: an oadrCreatedReport with 461 (report not supported). openleadr answers such a
  request "200, pending" and then never reports, which a VTN reads as a promise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape

from openleadr import OpenADRClient

from adapters.signals.openadr_status import StatusReports, status_specifier_id
from agent.config import OpenAdrConfig

__all__ = ["answer_cancel", "answer_report_request"]

log = logging.getLogger("adapters.signals.openadr_ven")

_REPORT_NOT_SUPPORTED = 461


async def answer_report_request(
    client: OpenADRClient, payload: Mapping[str, Any], cfg: OpenAdrConfig, status: StatusReports
) -> None:
    """Route each request of an oadrCreateReport to what serves it (see the module doc)."""
    status_id = status_specifier_id(cfg)
    offered = {report.report_specifier_id for report in client.reports} - {status_id}
    served: list[Mapping[str, Any]] = []
    statuses: list[Mapping[str, Any]] = []
    metadata: list[Mapping[str, Any]] = []
    unknown: list[Mapping[str, Any]] = []
    for request in payload.get("report_requests") or []:
        specifier = request["report_specifier"]["report_specifier_id"]
        if specifier in offered:
            served.append(request)
        elif specifier == status_id:
            statuses.append(request)
        else:
            (metadata if specifier == "METADATA" else unknown).append(request)
    if served:
        await client.create_report({**payload, "report_requests": served})
    if statuses:
        await _created_report(client, payload, statuses, 200, "OK")
        for request in statuses:
            status.start(client, request)
    if metadata:
        await _created_report(client, payload, metadata, 200, "OK")
        await client.register_reports(client.reports)  # the metadata, again
    if unknown:
        names = ", ".join(r["report_specifier"]["report_specifier_id"] for r in unknown)
        log.warning("VTN asked for report(s) %s, which this VEN does not offer", names)
        await _created_report(client, payload, [], _REPORT_NOT_SUPPORTED,
                              f"not offered by this VEN: {escape(names)}")  # fmt: skip


async def answer_cancel(client: OpenADRClient, status: StatusReports, payload: Any) -> None:
    """Stop a cancelled status report (answered oadrCanceledReport); others go to openleadr."""
    request_id = str(payload.get("report_request_id"))
    if not status.cancel(request_id):
        await client.cancel_report(payload)
        return
    message = client._create_message(
        "oadrCanceledReport",
        response={"response_code": 200, "response_description": "OK",
                  "request_id": escape(str(payload.get("request_id") or ""))},
        pending_reports=[],
        ven_id=client.ven_id,
    )  # fmt: skip
    await client._perform_request("EiReport", message)  # openleadr logs a failure


async def _created_report(
    client: OpenADRClient,
    payload: Mapping[str, Any],
    pending: list[Mapping[str, Any]],
    code: int,
    description: str,
) -> None:
    """An oadrCreatedReport with our own response code (openleadr's always says 200)."""
    request_id = payload.get("request_id") or (payload.get("response") or {}).get("request_id")
    message = client._create_message(
        "oadrCreatedReport",
        response={"response_code": code, "response_description": description,
                  "request_id": request_id},
        ven_id=client.ven_id,
        pending_reports=[{"report_request_id": r["report_request_id"]} for r in pending],
    )  # fmt: skip
    await client._perform_request("EiReport", message)
