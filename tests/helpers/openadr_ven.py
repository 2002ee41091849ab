"""The OpenADR 2.0b VEN against a real openleadr VTN and a simulated site: its config and run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from adapters.signals.openadr_ven import OpenAdrVen
from agent.config import OpenAdrConfig
from tests.adapters.signals.openadr_rig import (
    Pki,
    SimSite,
    Vtn,
    running_with,
)
from tests.helpers.peers import free_port

FULL_KW = 250.0  # the simulated site with everything running
LEVEL_2_CEILING_KW = 120.0


def ven_config(vtn: Vtn, **overrides: object) -> OpenAdrConfig:
    fields: dict[str, object] = {
        "vtn_url": vtn.url,
        "ven_name": "small-site",
        "allow_plain_http": True,
        "poll_interval_s": 0.2,  # the default (the VTN's oadrPollFreq, 10 s) would make slow tests
        "simple_levels": {
            0: {"posture": "none"},
            1: {"shed_kw": 50},
            2: {"ceiling_kw": LEVEL_2_CEILING_KW},
            3: {"posture": "curtail_flexible"},
        },
        "load_dispatch": {"meaning": "ceiling"},
        **overrides,
    }
    return OpenAdrConfig.model_validate(fields)


Scenario = Callable[[Vtn, SimSite, OpenAdrVen], Awaitable[None]]


@contextlib.asynccontextmanager
async def running(vtn: Vtn, site: SimSite, ven: OpenAdrVen) -> AsyncIterator[None]:
    async with running_with(vtn, site, ven, ready=lambda: ven.registered):
        yield


def run(scenario: Scenario, pki: Pki | None = None, **overrides: object) -> None:
    async def main() -> None:
        vtn = Vtn(port=free_port(), pki=pki)
        site = SimSite()
        ven = OpenAdrVen(ven_config(vtn, **overrides), site)
        async with running(vtn, site, ven):
            await scenario(vtn, site, ven)

    asyncio.run(main())


def report_values(vtn: Vtn) -> list[float]:
    return [value for _, value in vtn.reports]


# The main scenario (a level-2 event shed, modified, kept across a VTN restart, cancelled) runs
# through the service in tests/service/test_openadr_service.py; these cover the VEN's own edges.
