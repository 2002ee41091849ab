"""The site's DNP3 outstation for its QSE (IEEE 1815, on dnp3py): the QSE's master writes base
points as analog outputs and polls the resource's telemetry as analog and binary inputs. The
point map is docs/ercot.md's; values travel as whole kW (g30v1 32-bit integers: a site of up to
2 GW at 1 kW resolution), and the outstation never blocks on the service: a write is handed to
`on_write` and answered at once (its outcome shows in the inputs on the next poll).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from dnp3.database import AnalogInputConfig, AnalogOutputConfig, BinaryInputConfig, Database
from dnp3.outstation import (
    CommandResult,
    DefaultCommandHandler,
    Outstation,
    OutstationConfig,
    OutstationTcpRunner,
)

__all__ = ["AI", "AO", "BI", "QseOutstation", "QseTelemetry"]

log = logging.getLogger("gridflex.dnp3")

MAX_KW = 10_000_000.0  # as the MQTT dispatch: a larger figure is a typo, not a site


class AO:
    """Analog outputs the QSE writes (direct operate, or select and operate), kW."""

    BASE_POINT = 0
    EMERGENCY_BASE_POINT = 1
    ECRS_DEPLOYMENT = 2  # kW of consumption to shed within 10 minutes; 0: recalled
    NSRS_DEPLOYMENT = 3  # Non-Spin: within 30 minutes; 0: recalled


class AI:
    """Analog inputs the QSE polls, whole kW (status: ERCOT's resource status code)."""

    CONSUMPTION = 0  # real power consumption, verified (site meter, else device readings)
    LPC = 1  # low power consumption: the load not curtailable now
    MPC = 2  # maximum power consumption: what the available load can draw, under the limit
    BASE_POINT = 3  # the base point followed (0: none)
    SET_POINT = 4  # where its ramp is now: what consumption should be
    HDL = 5  # high dispatch limit: MPC, or 5 minutes of normal ramp up from consumption
    LDL = 6  # low dispatch limit: LPC, or 5 minutes of normal ramp down
    STATUS = 7  # 257 ONL (on line, under control), 258 OUTL (off line)


class BI:
    FOLLOWING = 0  # a base point is being followed
    OFF_SET_POINT = 1  # the last cycle's consumption was outside the base point's tolerance
    EMERGENCY = 2  # the base point followed is an emergency one


_OUTPUTS = (AO.BASE_POINT, AO.EMERGENCY_BASE_POINT, AO.ECRS_DEPLOYMENT, AO.NSRS_DEPLOYMENT)


@dataclass(frozen=True, slots=True)
class QseTelemetry:
    consumption_kw: float
    lpc_kw: float
    mpc_kw: float
    base_point_kw: float
    set_point_kw: float
    hdl_kw: float
    ldl_kw: float
    status: int
    following: bool
    off_set_point: bool
    emergency: bool


class _Handler(DefaultCommandHandler):
    def __init__(self, on_write: Callable[[int, float], None]) -> None:
        self._on_write = on_write

    def _check(self, index: int, value: float) -> CommandResult:
        if index not in _OUTPUTS:
            return CommandResult.not_supported(f"no analog output {index}")
        if not math.isfinite(value) or not 0.0 <= value <= MAX_KW:
            return CommandResult.out_of_range(f"{value!r} kW is out of range")
        return CommandResult.success()

    def select_analog_output(self, index: int, value: float) -> CommandResult:
        return self._check(index, value)

    def operate_analog_output(self, index: int, value: float, select_sequence: int
                              ) -> CommandResult:  # fmt: skip
        return self.direct_operate_analog_output(index, value)

    def direct_operate_analog_output(self, index: int, value: float) -> CommandResult:
        result = self._check(index, value)
        if result.is_success:
            try:
                self._on_write(index, float(value))
            except Exception:  # a bug of ours must not take the outstation down
                log.exception("a DNP3 write could not be queued")
                return CommandResult.hardware_error("not queued; the site's log has why")
        return result


class QseOutstation:
    """One outstation on `host:port`: `run()` serves the QSE's master until `stop()`."""

    def __init__(self, host: str, port: int, *, address: int, master_address: int,
                 on_write: Callable[[int, float], None]) -> None:  # fmt: skip
        database = Database()
        for index in range(AI.STATUS + 1):
            database.add_analog_input(index, AnalogInputConfig())
        for index in range(BI.EMERGENCY + 1):
            database.add_binary_input(index, BinaryInputConfig())
        for index in _OUTPUTS:
            database.add_analog_output(index, AnalogOutputConfig())
        self._database = database
        outstation = Outstation(
            database=database,
            config=OutstationConfig(
                address=address, master_address=master_address, time_sync_required=False
            ),
            handler=_Handler(on_write),
        )
        self._runner = OutstationTcpRunner(outstation=outstation, host=host, port=port)

    def update(self, t: QseTelemetry) -> None:
        values = {
            AI.CONSUMPTION: t.consumption_kw, AI.LPC: t.lpc_kw, AI.MPC: t.mpc_kw,
            AI.BASE_POINT: t.base_point_kw, AI.SET_POINT: t.set_point_kw, AI.HDL: t.hdl_kw,
            AI.LDL: t.ldl_kw, AI.STATUS: t.status,
        }  # fmt: skip
        for index, kw in values.items():
            self._database.update_analog_input(index, round(kw))
        flags = {BI.FOLLOWING: t.following, BI.OFF_SET_POINT: t.off_set_point,
                 BI.EMERGENCY: t.emergency}  # fmt: skip
        for index, flag in flags.items():
            self._database.update_binary_input(index, value=flag)

    async def run(self) -> None:
        await self._runner.run()

    async def stop(self) -> None:
        await self._runner.stop()
