"""Modbus TCP servers that answer as the vendors' documents say, built from address tables
written here from those documents, never from gridflex's profiles: a profile with a wrong
address reads an address the device does not have and gets Illegal Data Address.

- Janitza UMG 96RM ("Modbus-address list and Formulary", Dok. Nr. 1.040.034.b): floats (IEEE
  754, high word first) at Modbus addresses 19000 onwards, read with FC 03 or 04.
- Siemens SENTRON PAC3200 (Manual A5E01168664B-04, Table 3-6): floats at odd offsets, FC 0x03
  and 0x04; a read that starts in the second register of a value, or ends inside one, is an
  error.
- NETIO metered PDU (the Modbus/TCP table of the PowerPDU 4PS and PowerDIN 4PZ manuals, AN27):
  outputs as coils at wire addresses 101..104 (one per FC01 / FC05 request; FC15 is not in
  NETIO's function list), each output's power in W as an input register at 201..204, all
  outputs at 200. An output's power follows its relay `power_lag_s` later (metering refresh, a
  load winding down).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

__all__ = ["JANITZA_UMG96RM", "SIEMENS_PAC3200", "DocumentedMeter", "NetioPdu", "serve"]

# Janitza UMG 96RM address list, measured values type float (the ones a feeder meter needs)
JANITZA_UMG96RM = {
    19000: "Voltage L1-N", 19002: "Voltage L2-N", 19004: "Voltage L3-N",
    19012: "Current L1", 19014: "Current L2", 19016: "Current L3",
    19020: "Real power L1", 19022: "Real power L2", 19024: "Real power L3",
    19026: "Real power sum L1..L3",
}  # fmt: skip
# SENTRON PAC3200 Table 3-6 (offsets)
SIEMENS_PAC3200 = {
    1: "Voltage Va-n", 3: "Voltage Vb-n", 5: "Voltage Vc-n",
    13: "Current a", 15: "Current b", 17: "Current c",
    25: "Active Power a", 27: "Active Power b", 29: "Active Power c",
    55: "Frequency", 63: "Total Apparent Power", 65: "Total Active Power",
}  # fmt: skip
_UNUSED = 60000  # pymodbus wants every table: one cell out of the documented range


def _float_words(value: float) -> list[int]:
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low]


@dataclass
class DocumentedMeter:
    """A meter with floats at the documented addresses and nothing anywhere else."""

    table: dict[int, str]
    whole_values_only: bool = False  # the PAC3200's rule
    values: dict[str, float] = field(default_factory=dict)

    def sim_device(self) -> SimDevice:
        cells = [SimData(a, values=[0, 0], datatype=DataType.REGISTERS) for a in sorted(self.table)]
        unused = [SimData(_UNUSED, values=[False], datatype=DataType.BITS)]
        return SimDevice(0, simdata=(unused, unused, cells, list(cells)), action=self.action)

    async def action(  # noqa: PLR0917 - pymodbus's SimAction signature
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code not in (3, 4):
            return ExcCodes.ILLEGAL_FUNCTION
        starts = sorted(self.table)
        if self.whole_values_only and (
            address not in starts or (address + count - 2) not in starts
        ):
            return ExcCodes.ILLEGAL_ADDRESS
        for first in starts:
            if address <= first < address + count:
                words = _float_words(self.values.get(self.table[first], 0.0))
                offset = first - start_address
                registers[offset : offset + 2] = words
        return None


@dataclass
class NetioPdu:
    """Four outputs, each switched (coil) and metered (W); see the module doc."""

    rated_w: float = 1200.0
    power_lag_s: float = 0.3
    on: list[bool] = field(default_factory=lambda: [True] * 4)
    _moved: dict[int, tuple[float, float]] = field(default_factory=dict)  # output: (t, from W)
    requests: list[tuple[int, int]] = field(default_factory=list)  # (function code, address)

    def power_w(self, output: int) -> float:
        target = self.rated_w if self.on[output] else 0.0
        moved = self._moved.get(output)
        if moved is None:
            return target
        since_s = time.monotonic() - moved[0]
        if since_s >= self.power_lag_s:
            return target
        return moved[1] + (target - moved[1]) * since_s / self.power_lag_s

    def sim_device(self) -> SimDevice:
        coils = [SimData(101, values=list(self.on), datatype=DataType.BITS)]
        power = [SimData(200, values=[0] * 5, datatype=DataType.REGISTERS)]
        unused = [SimData(_UNUSED, values=[False], datatype=DataType.BITS)]
        unused_words = [SimData(_UNUSED, values=0, datatype=DataType.REGISTERS)]
        return SimDevice(0, simdata=(coils, unused, unused_words, power), action=self.action)

    async def action(  # noqa: PLR0917 - pymodbus's SimAction signature
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.requests.append((function_code, address))
        if function_code == 15:
            return ExcCodes.ILLEGAL_FUNCTION  # not in NETIO's list: one output per request
        if function_code == 5 and set_values is not None:
            output = address - 101
            drawing_w = self.power_w(output)
            self.on[output] = bool(set_values[0])
            self._moved[output] = (time.monotonic(), drawing_w)
        elif function_code == 4:
            watts = [round(self.power_w(k)) for k in range(4)]
            words = [sum(watts), *watts]  # 200: all outputs, then one per output
            registers[200 - start_address : 205 - start_address] = words
        return None


async def serve(device: DocumentedMeter | NetioPdu, port: int) -> ModbusTcpServer:
    server = ModbusTcpServer(device.sim_device(), address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    return server
