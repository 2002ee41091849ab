"""openleadr's OpenADRClient as this VEN uses it: built from the site file, offering one report.

Kept apart from the VEN's session logic (openadr_ven.py) because it is what changes when the
openleadr version does: constructor arguments and the report bookkeeping it keeps on the client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import timedelta

from openleadr import OpenADRClient, objects

from agent.config import OpenAdrConfig

__all__ = ["build_client", "offer_site_power_report", "reset_reports"]

# The sampling periods the VEN accepts for its site power report, and how much it buffers.
_REPORT_MIN_PERIOD = timedelta(seconds=1)
_REPORT_MAX_PERIOD = timedelta(hours=1)
_REPORT_BUFFER = timedelta(hours=1)


def build_client(cfg: OpenAdrConfig) -> OpenADRClient:
    """A client for the configured VTN: TLS and signatures unless the URL is plain http."""
    secure = not cfg.vtn_url.startswith("http://")
    return OpenADRClient(
        ven_name=cfg.ven_name,
        vtn_url=cfg.vtn_url,
        ven_id=cfg.ven_id,
        cert=str(cfg.cert_file) if secure and cfg.cert_file else None,
        key=str(cfg.key_file) if secure and cfg.key_file else None,
        passphrase=cfg.key_passphrase.get_secret_value() if cfg.key_passphrase else None,
        ca_file=str(cfg.ca_file) if secure and cfg.ca_file else None,
        vtn_fingerprint=cfg.vtn_fingerprint.upper() if cfg.vtn_fingerprint else None,
        show_fingerprint=False,
        disable_signature=not secure,
    )


def offer_site_power_report(
    client: OpenADRClient, cfg: OpenAdrConfig, site_kw: Callable[[], float]
) -> None:
    """Offer a TELEMETRY_USAGE report of site real power in kW, sampled from `site_kw`."""
    client.add_report(
        callback=site_kw,
        resource_id=cfg.report_resource_id,
        # the same ids at every start: a VTN keeps its report requests and data by them
        report_specifier_id=f"{cfg.ven_name}:TELEMETRY_USAGE",
        r_id=f"{cfg.report_resource_id}:realPower",
        # our own itemBase: openleadr's named one is a shared object declaring 50 Hz / 230 V
        # (its power_hertz / power_voltage arguments are not applied to a named measurement)
        measurement=objects.Measurement(
            name="powerReal",
            description="RealPower",
            unit="W",
            scale="k",  # values in kW
            power_attributes=objects.PowerAttributes(
                hertz=cfg.nominal_hz, voltage=cfg.nominal_voltage_v, ac=True
            ),
        ),
        unit="W",
        scale="k",
        report_duration=_REPORT_BUFFER,
        sampling_rate=objects.SamplingRate(
            min_period=_REPORT_MIN_PERIOD, max_period=_REPORT_MAX_PERIOD, on_change=False
        ),
    )


def reset_reports(client: OpenADRClient) -> None:
    """Drop report jobs of an earlier registration: the VTN asks afresh, and stale jobs would
    send duplicate reports under report request ids it no longer knows."""
    for request in client.report_requests or []:
        job = request.get("job")
        if job is not None:
            with contextlib.suppress(Exception):  # already removed by openleadr
                job.remove()
    client.report_requests = []
    client.incomplete_reports = {}
